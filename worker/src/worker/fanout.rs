//! Step 3: publishing the fan-out records of the stored events.

use super::batch::{Batch, State};
use super::{Failure, Worker, is_fatal};
use bytes::Bytes;
use futures_util::future::join_all;
use roomcast_broker::BrokerError;
use roomcast_schemas::FanoutMessage;
use std::collections::HashMap;

impl Worker {
    /// Step 3: publish the fan-out messages of the stored events: a room's messages of the
    /// batch go out together, up to `fanout_batch` per record (a JSON array in seq order). The
    /// publishes are started in batch order (which fixes each record's place in its room's
    /// order) and awaited together, so a batch costs one round trip to the broker, not one per
    /// event. Every event of a record shares its result, taken in batch order: an event whose
    /// publish failed holds its room, and the room's later events are nacked with it (messages that went out are
    /// re-published by the redelivery; gateways drop seqs they already delivered).
    pub(super) async fn publish(&self, batch: &mut Batch) -> Result<(), Failure> {
        // Records in start order.
        let mut records: Vec<FanoutRecord<'_>> = Vec::new();
        let mut open: HashMap<String, usize> = HashMap::new();
        let mut blocked = Vec::new();
        for (index, item) in batch.items.iter().enumerate() {
            let State::Stored(message) = &item.state else {
                continue;
            };
            if batch.held.contains(&item.delivery.key) {
                // Stored already; the redelivery re-publishes it after the earlier event.
                blocked.push(index);
                continue;
            }
            let at = match open.get(&message.room) {
                Some(&at) if records[at].messages.len() < self.config.fanout_batch => at,
                _ => {
                    records.push(FanoutRecord {
                        room: message.room.clone(),
                        events: Vec::new(),
                        messages: Vec::new(),
                    });
                    open.insert(message.room.clone(), records.len() - 1);
                    records.len() - 1
                }
            };
            records[at].events.push(RecordEvent {
                index,
                seq: message.seq,
            });
            records[at].messages.push(message);
        }
        let mut started = Vec::new();
        for FanoutRecord {
            room,
            events,
            messages,
        } in records
        {
            let encoded = if let [message] = messages.as_slice() {
                serde_json::to_vec(message)
            } else {
                serde_json::to_vec(&messages)
            };
            let result = match encoded {
                Ok(payload) => {
                    self.broker
                        .fanout
                        .start_publish_fanout(&room, Bytes::from(payload))
                        .await
                }
                Err(error) => Err(BrokerError::Rejected(format!(
                    "cannot encode the message: {error}"
                ))),
            };
            started.push((events, result));
        }
        for index in blocked {
            batch.items[index].state = State::Blocked;
        }
        let results = join_all(started.into_iter().map(|(events, result)| async move {
            let result = match result {
                Ok(pending) => pending.await,
                Err(error) => Err(error),
            };
            (events, result)
        }))
        .await;
        // Every event of a record shares its result.
        let mut outcomes: Vec<PublishOutcome> = Vec::new();
        for (events, result) in results {
            for event in events {
                let result = result.as_ref().map_err(BrokerError::clone).copied();
                outcomes.push(PublishOutcome { event, result });
            }
        }
        outcomes.sort_unstable_by_key(|outcome| outcome.event.index);
        for PublishOutcome {
            event: RecordEvent { index, seq },
            result,
        } in outcomes
        {
            let item = &mut batch.items[index];
            if batch.held.contains(&item.delivery.key) {
                item.state = State::Blocked;
                continue;
            }
            match result {
                Ok(()) => item.state = State::Done,
                Err(error) if is_fatal(&error) => return Err(Failure::Fatal(error)),
                Err(error) => {
                    if self.broker.health.check().await.is_err() {
                        return Err(Failure::Outage(format!("fan-out publish failed: {error}")));
                    }
                    let reason =
                        format!("stored as seq {seq}, but the fan-out publish failed: {error}");
                    self.fail(item, &mut batch.held, &mut batch.tally, reason);
                }
            }
        }
        Ok(())
    }
}

/// One fan-out record being built: consecutive messages of one room, with the events they
/// came from.
struct FanoutRecord<'a> {
    room: String,
    /// The events the record carries, in batch order.
    events: Vec<RecordEvent>,
    /// Their messages, in seq order.
    messages: Vec<&'a FanoutMessage>,
}

/// An event carried by a fan-out record.
#[derive(Debug, Clone, Copy)]
struct RecordEvent {
    /// Its place in the batch.
    index: usize,
    /// The seq it was stored as.
    seq: u64,
}

/// The publish result of one event (that of its record).
struct PublishOutcome {
    event: RecordEvent,
    result: Result<(), BrokerError>,
}
