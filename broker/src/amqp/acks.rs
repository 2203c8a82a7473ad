//! A stream's acks, coalesced into `multiple` acks where that is safe.
//!
//! RabbitMQ numbers a channel's deliveries 1, 2, 3, … (the delivery tag). An ack with
//! `multiple` set acks every unacked delivery of the channel up to its tag, so it may only be
//! sent when every such delivery has been received by the stream and its ack requested: a
//! delivery still buffered, handed out, nacked (kept for a retry) or not yet taken from the
//! client library's queue must not be covered.
//!
//! Acks requested together (a worker settles a batch at once) are queued to one task, which
//! takes every queued request, sends one `multiple` ack for the longest safe run from the
//! lowest unacked tag, and single acks for the rest. Nothing is held back to wait for later
//! requests, so an ack is never delayed behind a delivery that is being retried.

use crate::BrokerError;
use lapin::acker::Acker;
use lapin::options::BasicAckOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

/// The delivery tags a stream has received and not acked.
#[derive(Default)]
pub(crate) struct Tags {
    /// Every tag up to this one has been received.
    contiguous: u64,
    /// Received tags above `contiguous + 1`.
    above: BTreeSet<u64>,
    /// Received and not acked.
    unacked: BTreeSet<u64>,
}

impl Tags {
    /// Notes a received delivery.
    pub(crate) fn received(&mut self, tag: u64) {
        self.unacked.insert(tag);
        if tag == self.contiguous + 1 {
            self.contiguous = tag;
            while self.above.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        } else if tag > self.contiguous {
            self.above.insert(tag);
        }
    }

    /// The highest tag that a `multiple` ack may carry for these requests: every unacked tag
    /// up to it is requested and every tag up to it has been received.
    fn coverable<T>(&self, requested: &BTreeMap<u64, T>) -> Option<u64> {
        let mut top = None;
        for &tag in &self.unacked {
            if tag > self.contiguous || !requested.contains_key(&tag) {
                break;
            }
            top = Some(tag);
        }
        top
    }

    fn acked(&mut self, tags: impl Iterator<Item = u64>) {
        for tag in tags {
            self.unacked.remove(&tag);
        }
    }
}

struct Request {
    tag: u64,
    acker: Acker,
    done: oneshot::Sender<Result<(), BrokerError>>,
}

/// The sending side of a stream's ack task; the task ends when every clone is dropped.
#[derive(Clone)]
pub(crate) struct Acks {
    tags: Arc<Mutex<Tags>>,
    queue: mpsc::UnboundedSender<Request>,
}

impl Acks {
    /// Starts the ack task of one stream (on the current runtime).
    pub(crate) fn start() -> Self {
        let tags = Arc::new(Mutex::new(Tags::default()));
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(requests, tags.clone()));
        Acks { tags, queue }
    }

    /// The stream's received, unacked tags.
    pub(crate) fn tags(&self) -> MutexGuard<'_, Tags> {
        lock(&self.tags)
    }

    /// Queues the ack of a delivery; the returned wait ends when the ack was handed to the
    /// connection (or failed).
    pub(crate) fn ack(
        &self,
        tag: u64,
        acker: Acker,
    ) -> impl Future<Output = Result<(), BrokerError>> + use<> {
        let (done, result) = oneshot::channel();
        let queued = self.queue.send(Request { tag, acker, done }).is_ok();
        async move {
            if !queued {
                return Err(unavailable("the stream's ack task has ended"));
            }
            result
                .await
                .unwrap_or_else(|_| Err(unavailable("the stream's ack task has ended")))
        }
    }
}

fn lock(tags: &Mutex<Tags>) -> MutexGuard<'_, Tags> {
    tags.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(reason: &str) -> BrokerError {
    BrokerError::Unavailable(format!(
        "ack failed (the record will be delivered again): {reason}"
    ))
}

/// Sends one ack; `Err` says why it was not sent.
async fn send(acker: &Acker, multiple: bool) -> Result<(), String> {
    match acker.ack(BasicAckOptions { multiple }).await {
        Ok(true) => Ok(()),
        // lapin sends nothing once the channel is closed.
        Ok(false) => Err("the channel is closed".into()),
        Err(error) => Err(error.to_string()),
    }
}

fn reply(requests: impl IntoIterator<Item = Request>, result: &Result<(), String>) {
    for request in requests {
        let _ = request.done.send(
            result
                .as_ref()
                .map_err(|reason| unavailable(reason))
                .copied(),
        );
    }
}

async fn run(mut queue: mpsc::UnboundedReceiver<Request>, tags: Arc<Mutex<Tags>>) {
    let mut taken = Vec::new();
    while queue.recv_many(&mut taken, 4096).await > 0 {
        let mut requested: BTreeMap<u64, Request> = taken
            .drain(..)
            .map(|request| (request.tag, request))
            .collect();
        let top = lock(&tags).coverable(&requested);
        if let Some(top) = top {
            let rest = requested.split_off(&(top + 1));
            let run = std::mem::replace(&mut requested, rest);
            let multiple = run.len() > 1;
            let result = match run.get(&top) {
                Some(last) => send(&last.acker, multiple).await,
                None => Ok(()),
            };
            if result.is_ok() {
                lock(&tags).acked(run.keys().copied());
            }
            reply(run.into_values(), &result);
        }
        // The rest sit above a delivery that is not settled: ack them one by one, now.
        let singles = futures_util::future::join_all(
            requested
                .into_values()
                .map(|request| async move { (send(&request.acker, false).await, request) }),
        )
        .await;
        for (result, request) in singles {
            if result.is_ok() {
                lock(&tags).acked(std::iter::once(request.tag));
            }
            reply(std::iter::once(request), &result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested(tags: &[u64]) -> BTreeMap<u64, ()> {
        tags.iter().map(|&t| (t, ())).collect()
    }

    #[test]
    fn a_run_from_the_lowest_unacked_tag_is_coverable() {
        let mut tags = Tags::default();
        for tag in 1..=5 {
            tags.received(tag);
        }
        assert_eq!(tags.coverable(&requested(&[1, 2, 3])), Some(3));
        assert_eq!(
            tags.coverable(&requested(&[2, 3])),
            None,
            "1 is not settled"
        );
        tags.acked([1, 2].into_iter());
        assert_eq!(
            tags.coverable(&requested(&[3, 5])),
            Some(3),
            "4 is not settled"
        );
    }

    #[test]
    fn a_tag_not_yet_received_stops_the_run() {
        let mut tags = Tags::default();
        tags.received(1);
        tags.received(3);
        assert_eq!(tags.coverable(&requested(&[1, 3])), Some(1));
        tags.received(2);
        assert_eq!(tags.coverable(&requested(&[1, 2, 3])), Some(3));
    }

    #[test]
    fn tags_received_out_of_order_close_the_gap() {
        let mut tags = Tags::default();
        for tag in [2, 4, 3, 1] {
            tags.received(tag);
        }
        assert_eq!(tags.contiguous, 4);
        assert!(tags.above.is_empty());
    }
}
