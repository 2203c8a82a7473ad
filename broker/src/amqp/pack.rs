//! Packing: a room's concurrent inbound publishes travel as one RabbitMQ message.
//!
//! Each room has at most one inbound message awaiting its confirm. Records published for the
//! room meanwhile wait, in publish order, and go out together as the next message once the
//! confirm arrives (up to `pack` records and [`MAX_PACK_BYTES`]); every one of them is
//! confirmed by that message's confirm. An idle room's record goes out at once, alone, so packing
//! costs no latency at low rates, while under load RabbitMQ stores, delivers and acks one
//! message per pack instead of one per record (its work is per message, not per byte).
//!
//! A message of one record is a plain message: its body is the record. A message of several
//! carries their number in the [`RECORDS_HEADER`] header and holds each record as a 4-byte
//! big-endian length followed by its bytes. Consumers split it back into records (a message
//! whose framing does not add up is handed out whole, as one record).

use super::inbound::{Outgoing, start_confirmed};
use super::link::Shared;
use crate::BrokerError;
use bytes::{BufMut, Bytes};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The header that gives the number of records packed into a message.
pub(crate) const RECORDS_HEADER: &str = "roomcast-records";

/// The most bytes of records packed into one message (a larger record travels alone).
pub(crate) const MAX_PACK_BYTES: usize = 1 << 20;

/// A record waiting for its room's next message.
struct Waiting {
    payload: Bytes,
    done: oneshot::Sender<Result<(), BrokerError>>,
}

/// The rooms with an inbound message in flight, and the records waiting behind it. A room is
/// present while its pump runs.
pub(crate) struct Packer {
    rooms: Mutex<HashMap<String, VecDeque<Waiting>>>,
    max_records: usize,
}

impl Packer {
    /// A packer that puts up to `max_records` records into one message (1: no packing).
    pub(crate) fn new(max_records: usize) -> Self {
        Packer {
            rooms: Mutex::new(HashMap::new()),
            max_records: max_records.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Waiting>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a record of `key` (its place in the room's order is fixed on return) and returns
    /// the wait for the confirm of the message that carries it.
    pub(crate) fn start(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        key: &str,
        payload: Bytes,
    ) -> Result<crate::PendingPublish, BrokerError> {
        // Fail at once while the connection is down.
        shared.session()?;
        let (done, confirmed) = oneshot::channel();
        let waiting = Waiting { payload, done };
        let idle = match self.lock().entry(key.to_owned()) {
            Entry::Occupied(mut room) => {
                room.get_mut().push_back(waiting);
                false
            }
            Entry::Vacant(room) => {
                room.insert(VecDeque::from([waiting]));
                true
            }
        };
        if idle {
            tokio::spawn(pump(self.clone(), shared.clone(), key.to_owned()));
        }
        Ok(Box::pin(async move {
            confirmed.await.unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(
                    "the publish was abandoned before its confirm".into(),
                ))
            })
        }))
    }

    /// The next pack of `key`'s waiting records; `None` (and the room removed) when none wait.
    fn next_pack(&self, key: &str) -> Option<Vec<Waiting>> {
        let mut rooms = self.lock();
        let room = rooms.get_mut(key)?;
        let mut pack = Vec::new();
        let mut bytes = 0;
        while let Some(next) = room.front() {
            let size = next.payload.len() + 4;
            if !pack.is_empty() && (pack.len() == self.max_records || bytes + size > MAX_PACK_BYTES)
            {
                break;
            }
            bytes += size;
            pack.extend(room.pop_front());
        }
        if pack.is_empty() {
            rooms.remove(key);
            None
        } else {
            Some(pack)
        }
    }
}

/// Publishes `key`'s waiting records, one message at a time, until none wait.
async fn pump(packer: Arc<Packer>, shared: Arc<Shared>, key: String) {
    let exchange = shared.config.events_exchange();
    let shard = shared.config.shard_of(&key).to_string();
    while let Some(pack) = packer.next_pack(&key) {
        let records = u32::try_from(pack.len()).unwrap_or(u32::MAX);
        let body = if let [one] = pack.as_slice() {
            one.payload.clone()
        } else {
            encode(pack.iter().map(|w| &w.payload))
        };
        let out = Outgoing {
            exchange: &exchange,
            routing_key: &shard,
            key: Some(&key),
            records: (records > 1).then_some(records),
            payload: &body,
            persistent: true,
            mandatory: true,
        };
        let result = match start_confirmed(&shared, out).await {
            Ok(pending) => pending.await,
            Err(error) => Err(error),
        };
        for waiting in pack {
            let _ = waiting.done.send(match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(copy_error(error)),
            });
        }
    }
}

/// The same failure for each record of a pack.
fn copy_error(error: &BrokerError) -> BrokerError {
    match error {
        BrokerError::Unavailable(m) => BrokerError::Unavailable(m.clone()),
        BrokerError::Rejected(m) => BrokerError::Rejected(m.clone()),
        BrokerError::Config(m) => BrokerError::Config(m.clone()),
        BrokerError::Closed => BrokerError::Closed,
        BrokerError::Storage(e) => BrokerError::Unavailable(e.to_string()),
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
    fn packs_respect_the_record_and_byte_limits() {
        let packer = Packer::new(3);
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
        packer.lock().insert("room".into(), queue);
        let sizes = |pack: Vec<Waiting>| pack.iter().map(|w| w.payload.len()).collect::<Vec<_>>();
        assert_eq!(packer.next_pack("room").map(sizes), Some(vec![10, 10, 10]));
        assert_eq!(packer.next_pack("room").map(sizes), Some(vec![10]));
        assert_eq!(
            packer.next_pack("room").map(sizes),
            Some(vec![MAX_PACK_BYTES])
        );
        assert_eq!(packer.next_pack("room").map(sizes), Some(vec![10]));
        assert!(packer.next_pack("room").is_none());
        assert!(packer.lock().is_empty(), "an idle room is removed");
    }
}
