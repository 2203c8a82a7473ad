//! Packing: a room's concurrent inbound publishes travel as one broker message.
//!
//! Each room has at most `window` inbound messages awaiting the broker's confirmation. Records
//! published for the room while the window is full wait, in publish order, and go out together
//! as the next message once a confirmation arrives (up to `pack` records and
//! [`MAX_PACK_BYTES`]); every one of them is confirmed by that message's confirmation. An idle
//! room's record goes out at once, alone, so packing costs no latency at low rates, while under
//! load the broker stores, delivers and acknowledges one message per pack instead of one per
//! record.
//!
//! A message of one record is a plain message: its body is the record. A message of several
//! holds each record as a 4-byte big-endian length followed by its bytes, and says how many it
//! holds: on RabbitMQ in the [`RECORDS_HEADER`] header; on Kafka in the body itself, which
//! then starts with [`PACK_MAGIC`] and the number ([`tag`]), since a record header costs some
//! Kafka-compatible brokers a scan per record fetched. Consumers split it back into records (a
//! message whose framing does not add up is handed out whole, as one record).

use crate::{BrokerError, PendingPublish};
use bytes::{BufMut, Bytes};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, oneshot};

/// The header that gives the number of records packed into a message.
pub(crate) const RECORDS_HEADER: &str = "roomcast-records";

/// The first bytes of a pack that says in its body how many records it holds: a zero byte,
/// which no JSON text starts with, then `RCPACK1`.
pub(crate) const PACK_MAGIC: &[u8; 8] = b"\0RCPACK1";

/// The most bytes of records (with their 4-byte lengths) packed into one message; a larger
/// record travels alone. Well under librdkafka's default `message.max.bytes` (1,000,000) and
/// Kafka's default `max.message.bytes` (1 MiB and 12 bytes), so that a pack is never refused
/// for its size where its records one by one would not be.
pub(crate) const MAX_PACK_BYTES: usize = 512 * 1024;

/// One message for the broker: a single record, or several packed.
pub(crate) struct Outbound {
    /// The room.
    pub(crate) key: Arc<str>,
    /// The number of records packed into `body`, when several.
    pub(crate) records: Option<u32>,
    /// The record, or the packed records.
    pub(crate) body: Bytes,
}

/// Hands a message to the broker connection: resolves once the message's place in its key's
/// order is fixed, with the wait for the broker's confirmation.
pub(crate) type Sender =
    Arc<dyn Fn(Outbound) -> BoxFuture<'static, Result<PendingPublish, BrokerError>> + Send + Sync>;

/// A record waiting for its room's next message.
struct Waiting {
    payload: Bytes,
    done: oneshot::Sender<Result<(), BrokerError>>,
}

/// A room with messages in flight or records waiting; present while its pump runs.
struct Room {
    waiting: VecDeque<Waiting>,
    /// Wakes the pump when a record arrives.
    arrived: Arc<Notify>,
}

/// The rooms being published, and their waiting records.
pub(crate) struct Packer {
    rooms: Mutex<HashMap<Arc<str>, Room>>,
    max_records: usize,
    window: usize,
    send: Sender,
}

impl Packer {
    /// A packer that puts up to `max_records` records into one message and keeps up to
    /// `window` messages of a room in flight.
    pub(crate) fn new(max_records: usize, window: usize, send: Sender) -> Self {
        Packer {
            rooms: Mutex::new(HashMap::new()),
            max_records: max_records.max(1),
            window: window.max(1),
            send,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Room>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a record of `key` (its place in the room's order is fixed on return) and returns
    /// the wait for the confirmation of the message that carries it.
    pub(crate) fn start(self: &Arc<Self>, key: &str, payload: Bytes) -> PendingPublish {
        let (done, confirmed) = oneshot::channel();
        let waiting = Waiting { payload, done };
        let mut rooms = self.lock();
        if let Some(room) = rooms.get_mut(key) {
            room.waiting.push_back(waiting);
            room.arrived.notify_one();
        } else {
            let key: Arc<str> = Arc::from(key);
            let arrived = Arc::new(Notify::new());
            if let Entry::Vacant(vacant) = rooms.entry(key.clone()) {
                vacant.insert(Room {
                    waiting: VecDeque::from([waiting]),
                    arrived: arrived.clone(),
                });
            }
            tokio::spawn(pump(self.clone(), key, arrived));
        }
        drop(rooms);
        Box::pin(async move {
            confirmed.await.unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(
                    "the publish was abandoned before its confirmation".into(),
                ))
            })
        })
    }

    /// The next pack of `key`'s waiting records. When none wait, `None`, and the room is
    /// removed if `idle` (its pump has nothing in flight and stops).
    fn next_pack(&self, key: &str, idle: bool) -> Option<Vec<Waiting>> {
        let mut rooms = self.lock();
        let room = rooms.get_mut(key)?;
        let mut pack = Vec::new();
        let mut bytes = 0;
        while let Some(next) = room.waiting.front() {
            let size = next.payload.len() + 4;
            if !pack.is_empty() && (pack.len() == self.max_records || bytes + size > MAX_PACK_BYTES)
            {
                break;
            }
            bytes += size;
            pack.extend(room.waiting.pop_front());
        }
        if !pack.is_empty() {
            Some(pack)
        } else {
            if idle {
                rooms.remove(key);
            }
            None
        }
    }
}

/// A message in flight: its confirmation, and the records it carries.
type Settling = BoxFuture<
    'static,
    (
        Result<(), BrokerError>,
        Vec<oneshot::Sender<Result<(), BrokerError>>>,
    ),
>;

/// Publishes `key`'s waiting records, up to the packer's window of messages at a time, until
/// none wait and none are in flight.
async fn pump(packer: Arc<Packer>, key: Arc<str>, arrived: Arc<Notify>) {
    let mut in_flight: FuturesOrdered<Settling> = FuturesOrdered::new();
    loop {
        while in_flight.len() < packer.window {
            let Some(pack) = packer.next_pack(&key, in_flight.is_empty()) else {
                if in_flight.is_empty() {
                    return;
                }
                break;
            };
            let records = u32::try_from(pack.len()).unwrap_or(u32::MAX);
            let body = if let [one] = pack.as_slice() {
                one.payload.clone()
            } else {
                encode(pack.iter().map(|w| &w.payload))
            };
            let dones: Vec<_> = pack.into_iter().map(|w| w.done).collect();
            let out = Outbound {
                key: key.clone(),
                records: (records > 1).then_some(records),
                body,
            };
            match (packer.send)(out).await {
                Ok(pending) => in_flight.push_back(Box::pin(async move { (pending.await, dones) })),
                Err(error) => {
                    in_flight.push_back(Box::pin(std::future::ready((Err(error), dones))))
                }
            }
        }
        let room_for_more = in_flight.len() < packer.window;
        tokio::select! {
            Some((result, dones)) = in_flight.next() => {
                for done in dones {
                    let _ = done.send(match &result {
                        Ok(()) => Ok(()),
                        Err(error) => Err(error.clone()),
                    });
                }
            }
            () = arrived.notified(), if room_for_more => {}
        }
    }
}

/// The body of a message of several records.
pub(crate) fn encode<'a>(records: impl Iterator<Item = &'a Bytes>) -> Bytes {
    let mut body = Vec::new();
    for record in records {
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        body.put_u32(len);
        body.extend_from_slice(record);
    }
    Bytes::from(body)
}

/// A pack that says in its body how many records it holds: [`PACK_MAGIC`], `records` as a
/// 4-byte big-endian number, then `framed` (made by [`encode`]).
pub(crate) fn tag(records: u32, framed: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(PACK_MAGIC.len() + 4 + framed.len());
    body.extend_from_slice(PACK_MAGIC);
    body.put_u32(records);
    body.extend_from_slice(framed);
    Bytes::from(body)
}

/// The records of a message body made by [`tag`]; `None` when the body does not start with
/// [`PACK_MAGIC`] (a plain record), `Some(None)` when it does but its framing does not add up.
pub(crate) fn untag(body: &Bytes) -> Option<Option<Vec<Bytes>>> {
    let rest = body.strip_prefix(&PACK_MAGIC[..])?;
    let Some((count, _)) = rest.split_first_chunk::<4>() else {
        return Some(None);
    };
    let framed = body.slice(PACK_MAGIC.len() + 4..);
    Some(split(&framed, u32::from_be_bytes(*count)))
}

/// Splits the body of a message that says it holds `count` records; `None` when the framing
/// does not add up (a wrong count, a length past the end, bytes left over).
pub(crate) fn split(body: &Bytes, count: u32) -> Option<Vec<Bytes>> {
    if count == 0 {
        return None;
    }
    // Each record takes at least its 4-byte length.
    let count = usize::try_from(count).ok()?;
    if count > body.len() / 4 {
        return None;
    }
    let mut records = Vec::with_capacity(count);
    let mut at = 0usize;
    for _ in 0..count {
        let len_bytes: [u8; 4] = body.get(at..at + 4)?.try_into().ok()?;
        let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
        let start = at + 4;
        let end = start.checked_add(len)?;
        if end > body.len() {
            return None;
        }
        records.push(body.slice(start..end));
        at = end;
    }
    (at == body.len()).then_some(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn records(items: &[&str]) -> Vec<Bytes> {
        items
            .iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn packed_records_split_back_in_order() {
        let items = records(&["{\"a\":1}", "", "{\"b\":[2,3]}"]);
        let body = encode(items.iter());
        assert_eq!(body.len(), 3 * 4 + 7 + 11);
        assert_eq!(split(&body, 3), Some(items));
    }

    #[test]
    fn framing_that_does_not_add_up_is_refused() {
        let body = encode(records(&["one", "two"]).iter());
        assert_eq!(split(&body, 0), None, "zero records");
        assert_eq!(split(&body, 1), None, "bytes left over");
        assert_eq!(split(&body, 3), None, "fewer records than counted");
        assert_eq!(split(&body.slice(..body.len() - 1), 2), None, "truncated");
        assert_eq!(split(&Bytes::from_static(b"\xff\xff\xff\xffab"), 1), None);
        assert_eq!(split(&Bytes::from_static(b"{}"), 1), None, "plain JSON");
        assert_eq!(split(&Bytes::new(), u32::MAX), None);
    }

    #[test]
    fn tagged_packs_say_how_many_records_they_hold() {
        let items = records(&["{\"a\":1}", "{\"b\":2}"]);
        let body = tag(2, &encode(items.iter()));
        assert!(body.starts_with(PACK_MAGIC));
        assert_eq!(untag(&body), Some(Some(items)));
        // A plain record, JSON or anything else without the magic, is not a pack.
        assert_eq!(untag(&Bytes::from_static(b"{\"a\":1}")), None);
        assert_eq!(untag(&Bytes::new()), None);
        // A pack whose count or framing does not add up.
        let framed = encode(records(&["one", "two"]).iter());
        assert_eq!(untag(&tag(3, &framed)), Some(None), "wrong count");
        assert_eq!(untag(&tag(0, &[])), Some(None), "empty");
        assert_eq!(
            untag(&Bytes::from_static(b"\0RCPACK1\0\0")),
            Some(None),
            "no count"
        );
    }

    fn never_sends() -> Sender {
        Arc::new(|_| Box::pin(async { Err(BrokerError::Closed) }))
    }

    #[test]
    fn packs_respect_the_record_and_byte_limits() {
        let packer = Packer::new(3, 1, never_sends());
        let mut queue = VecDeque::new();
        let mut receivers = Vec::new();
        for size in [10, 10, 10, 10, MAX_PACK_BYTES, 10] {
            let (done, confirmed) = oneshot::channel();
            receivers.push(confirmed);
            queue.push_back(Waiting {
                payload: Bytes::from(vec![b'x'; size]),
                done,
            });
        }
        packer.lock().insert(
            Arc::from("room"),
            Room {
                waiting: queue,
                arrived: Arc::new(Notify::new()),
            },
        );
        let sizes = |pack: Vec<Waiting>| pack.iter().map(|w| w.payload.len()).collect::<Vec<_>>();
        assert_eq!(
            packer.next_pack("room", true).map(sizes),
            Some(vec![10, 10, 10])
        );
        assert_eq!(packer.next_pack("room", true).map(sizes), Some(vec![10]));
        assert_eq!(
            packer.next_pack("room", true).map(sizes),
            Some(vec![MAX_PACK_BYTES])
        );
        assert_eq!(packer.next_pack("room", true).map(sizes), Some(vec![10]));
        assert!(packer.next_pack("room", false).is_none());
        assert!(
            !packer.lock().is_empty(),
            "a room with messages in flight stays"
        );
        assert!(packer.next_pack("room", true).is_none());
        assert!(packer.lock().is_empty(), "an idle room is removed");
    }

    /// A message the gated broker received: its record count, body and confirmation.
    type Sent = (Option<u32>, Bytes, oneshot::Sender<Result<(), BrokerError>>);

    /// A broker whose confirmations the test releases one message at a time.
    struct Gated {
        sent: Mutex<Vec<Sent>>,
        count: AtomicUsize,
        sent_one: Notify,
    }

    impl Gated {
        fn sender(self: &Arc<Self>) -> Sender {
            let gated = self.clone();
            Arc::new(move |out: Outbound| {
                let gated = gated.clone();
                Box::pin(async move {
                    let (confirm, confirmed) = oneshot::channel();
                    gated
                        .sent
                        .lock()
                        .unwrap()
                        .push((out.records, out.body, confirm));
                    gated.count.fetch_add(1, Ordering::SeqCst);
                    gated.sent_one.notify_one();
                    let pending: PendingPublish =
                        Box::pin(
                            async move { confirmed.await.unwrap_or(Err(BrokerError::Closed)) },
                        );
                    Ok(pending)
                })
            })
        }

        async fn wait_sent(&self, n: usize) {
            while self.count.load(Ordering::SeqCst) < n {
                self.sent_one.notified().await;
            }
        }

        fn confirm(&self, index: usize, result: Result<(), BrokerError>) {
            let mut sent = self.sent.lock().unwrap();
            let (_, _, confirm) = &mut sent[index];
            let (replacement, _) = oneshot::channel();
            let confirm = std::mem::replace(confirm, replacement);
            let _ = confirm.send(result);
        }

        fn message(&self, index: usize) -> (Option<u32>, Bytes) {
            let sent = self.sent.lock().unwrap();
            (sent[index].0, sent[index].1.clone())
        }
    }

    #[tokio::test]
    async fn a_rooms_records_wait_for_the_window_and_travel_packed_in_order() {
        let gated = Arc::new(Gated {
            sent: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            sent_one: Notify::new(),
        });
        let packer = Arc::new(Packer::new(64, 2, gated.sender()));
        let mut pending = Vec::new();
        // The first two records go out alone and fill the window of two messages.
        for i in 0..2 {
            pending.push(packer.start("room", Bytes::from(format!("r{i}"))));
            gated.wait_sent(i + 1).await;
        }
        // The next four wait.
        for i in 2..6 {
            pending.push(packer.start("room", Bytes::from(format!("r{i}"))));
        }
        tokio::task::yield_now().await;
        assert_eq!(gated.count.load(Ordering::SeqCst), 2);
        assert_eq!(gated.message(0), (None, Bytes::from("r0")));
        assert_eq!(gated.message(1), (None, Bytes::from("r1")));
        gated.confirm(1, Err(BrokerError::Unavailable("lost".into())));
        gated.confirm(0, Ok(()));
        // Confirmations settle in order; the waiting four go out as one pack.
        gated.wait_sent(3).await;
        let (records, body) = gated.message(2);
        assert_eq!(records, Some(4));
        assert_eq!(split(&body, 4), Some(records_of(2..6)));
        let first = pending.remove(0).await;
        let second = pending.remove(0).await;
        assert!(first.is_ok());
        assert!(matches!(second, Err(BrokerError::Unavailable(_))));
        // A record of an idle room goes out at once even while another room is busy.
        let other = packer.start("other", Bytes::from("o0"));
        gated.wait_sent(4).await;
        assert_eq!(gated.message(3), (None, Bytes::from("o0")));
        gated.confirm(3, Ok(()));
        other.await.unwrap();
        gated.confirm(2, Err(BrokerError::Rejected("too large".into())));
        for record in pending {
            assert!(matches!(record.await, Err(BrokerError::Rejected(_))));
        }
        // The pumps remove their rooms once they have nothing left.
        for _ in 0..100 {
            if packer.lock().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(packer.lock().is_empty(), "both rooms are idle again");
    }

    fn records_of(range: std::ops::Range<usize>) -> Vec<Bytes> {
        range.map(|i| Bytes::from(format!("r{i}"))).collect()
    }
}
