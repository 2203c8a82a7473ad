//! A batch of deliveries and the state of each on its way through the steps.

use super::WorkerCounters;
use roomcast_broker::Delivery;
use roomcast_schemas::{FanoutMessage, InboundEvent};
use roomcast_store::Appended;
use std::collections::HashSet;

/// Where a delivery is in its processing.
pub(super) enum State {
    /// Not looked at yet.
    Received,
    /// Accepted by its handler; to be stored.
    Pending(InboundEvent),
    /// Stored (new or duplicate); its fan-out message is to be published.
    Stored(FanoutMessage),
    /// To be dead-lettered with this reason, then acked.
    DeadLetter(String),
    /// Finished: ack.
    Done,
    /// Failed on its own: nack after a backoff.
    Retry,
    /// An earlier event of its room is retried: nack with it.
    Blocked,
}

/// One delivery of a batch and where it is.
pub(super) struct Item {
    pub(super) delivery: Delivery,
    pub(super) state: State,
}

/// The deliveries of one `next_batch`, processed together.
pub(super) struct Batch {
    pub(super) items: Vec<Item>,
    /// Rooms with a retried event in this batch: their later events wait for it.
    pub(super) held: HashSet<String>,
    /// What this batch adds to the worker's counters.
    pub(super) tally: WorkerCounters,
}

impl Batch {
    pub(super) fn new(deliveries: Vec<Delivery>) -> Self {
        Batch {
            items: deliveries
                .into_iter()
                .map(|delivery| Item {
                    delivery,
                    state: State::Received,
                })
                .collect(),
            held: HashSet::new(),
            tally: WorkerCounters {
                batches: 1,
                ..WorkerCounters::default()
            },
        }
    }

    pub(super) fn stored(&mut self, index: usize, appended: Appended) {
        let message = match appended {
            Appended::New(message) => {
                self.tally.stored += 1;
                message
            }
            Appended::Duplicate(message) => {
                tracing::debug!(room = %message.room, seq = message.seq, "duplicate event; re-publishing its fan-out");
                self.tally.duplicates += 1;
                message
            }
        };
        self.items[index].state = State::Stored(message);
    }
}
