//! Inbound streams: one consumer of the group per stream, polled by a thread of its own.
//!
//! # Layout
//! - this file: [`KafkaStream`] (picking batches, handing them over, settling deliveries)
//!   and the state its handle, deliveries and thread share.
//! - `partition`: the bookkeeping of one assigned partition (buffered, handed out, acked).
//! - `group`: group membership: the consumer's configuration and its rebalance callbacks
//!   (waiting for revoked partitions to be settled, giving them up).
//! - `attempts`: the delivery counters in `{prefix}.attempts`, written and read back.
//! - `poll`: the stream's thread, fetching records and pausing when many are buffered.
//! - `offsets`: commits, with the offsets acked above the committed one in their metadata.

mod attempts;
mod group;
mod offsets;
mod partition;
mod poll;

use group::{Context, consumer_config};
use partition::{Part, Record, State};
use poll::run;

use super::KafkaClient;
use crate::{BrokerError, Delivery, EventStream, Settle};
use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// How long one poll of the consumer waits; bounds how soon the thread notices a stop.
const POLL: Duration = Duration::from_millis(100);
/// Fetched records buffered per stream before fetching pauses.
const BUFFER_HIGH: usize = 10_000;
/// Buffered records below which fetching resumes.
const BUFFER_LOW: usize = 5_000;
/// Records looked at per partition when picking a batch.
const SCAN: usize = 4096;
/// How often acked progress is committed while the stream runs (a crash redelivers at most
/// this much acked work, which the consumer deduplicates); revocations and stops commit at once.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// How long reading the delivery counters of new partitions may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a stream's handle, its deliveries and its thread share.
pub(crate) struct StreamShared {
    broker: Arc<KafkaClient>,
    group: String,
    state: Mutex<State>,
    /// Signals settles to a thread waiting for revoked partitions to be settled.
    settled: Condvar,
    /// Signals new records to `next_batch`.
    ready: Notify,
    /// Set when the stream is dropped.
    stopping: AtomicBool,
    /// Cancelled when the stream's consumer has handed its partitions over and left the group.
    left: CancellationToken,
}

impl StreamShared {
    fn should_stop(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || self.broker.closed.is_cancelled()
    }

    fn wake(&self) {
        self.ready.notify_waiters();
        self.settled.notify_all();
    }

    fn ack(
        &self,
        partition: i32,
        generation: u64,
        offset: i64,
        token: u64,
    ) -> Result<(), BrokerError> {
        let tombstone = {
            let mut state = lock(&self.state);
            let part = owned_part(&mut state, partition, generation)?;
            match part.delivered.get_mut(&offset) {
                Some(handed) if handed.token == token => {
                    handed.unacked = handed.unacked.saturating_sub(1);
                    if handed.unacked > 0 {
                        // A packed record is acked with its last delivery.
                        return Ok(());
                    }
                }
                _ => return Err(BrokerError::Rejected("delivery already settled".into())),
            }
            part.remove_delivered(offset);
            part.unacked.remove(&offset);
            part.acked.insert(offset);
            part.changed = true;
            part.attempts.remove(&offset);
            part.durable.remove(&offset)
        };
        self.wake();
        if tombstone {
            // Best effort: a counter left behind only matters if the record is delivered
            // again, which it is not once its offset is committed.
            if let Err(error) = self.write_attempts(partition, offset, None) {
                tracing::debug!(%error, "kafka: deleting a delivery counter failed");
            }
        }
        Ok(())
    }

    fn release(
        &self,
        partition: i32,
        generation: u64,
        offset: i64,
        token: u64,
    ) -> Result<(), BrokerError> {
        {
            let mut state = lock(&self.state);
            let part = owned_part(&mut state, partition, generation)?;
            // 0 when an earlier delivery's nack released this one already.
            let released = part.release(offset, token);
            if released == 0 {
                return Ok(());
            }
            state.buffered += released;
        }
        self.wake();
        Ok(())
    }
}

fn owned_part(
    state: &mut State,
    partition: i32,
    generation: u64,
) -> Result<&mut Part, BrokerError> {
    if state.stopped {
        return Err(BrokerError::Unavailable(
            "the stream ended; the record will be delivered again".into(),
        ));
    }
    match state.parts.get_mut(&partition) {
        Some(part) if part.generation == generation => Ok(part),
        _ => Err(BrokerError::Unavailable(
            "the record's partition moved to another stream; it will be delivered again".into(),
        )),
    }
}

/// A stream of the inbound topic for one consumer group.
pub(crate) struct KafkaStream {
    shared: Arc<StreamShared>,
}

impl KafkaStream {
    /// Creates the stream's consumer, subscribes it and starts its thread.
    pub(crate) fn start(broker: Arc<KafkaClient>, group: &str) -> Result<KafkaStream, BrokerError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| BrokerError::Config(format!("kafka streams need a Tokio runtime: {e}")))?;
        let shared = Arc::new(StreamShared {
            broker: broker.clone(),
            group: group.to_owned(),
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            ready: Notify::new(),
            stopping: AtomicBool::new(false),
            left: CancellationToken::new(),
        });
        let context = Context {
            stream: shared.clone(),
            reader: Mutex::new(None),
            runtime,
        };
        let consumer: BaseConsumer<Context> = consumer_config(&broker, group)
            .create_with_context(context)
            .map_err(|e| BrokerError::Config(format!("kafka consumer: {e}")))?;
        consumer
            .subscribe(&[&broker.events_topic])
            .map_err(|e| BrokerError::Unavailable(format!("kafka subscribe: {e}")))?;
        let token = broker.streams.token();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("roomcast-kafka-stream".into())
            .spawn(move || run(consumer, thread_shared, token))
            .map_err(|e| BrokerError::Unavailable(format!("kafka: starting a stream: {e}")))?;
        Ok(KafkaStream { shared })
    }

    /// Picks records of up to `max` deliveries to hand out (a packed record is several; one
    /// larger than `max` is picked alone), marking them delivered.
    fn pick(&self, max: usize) -> Result<Vec<Picked>, BrokerError> {
        let mut state = lock(&self.shared.state);
        if let Some(failure) = &state.failure {
            return Err(BrokerError::Unavailable(failure.clone()));
        }
        let mut partitions: Vec<i32> = state
            .parts
            .iter()
            .filter(|(_, part)| !part.pending.is_empty())
            .map(|(p, _)| *p)
            .collect();
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        partitions.sort_unstable();
        state.rotation = state.rotation.wrapping_add(1);
        let start = state.rotation % partitions.len();
        partitions.rotate_left(start);
        let window = self.shared.broker.settings.key_window;
        let mut picked = Vec::new();
        let mut deliveries = 0;
        for partition in partitions {
            if deliveries >= max {
                break;
            }
            let Some(part) = state.parts.get_mut(&partition) else {
                continue;
            };
            let mut blocked: HashSet<Arc<str>> = HashSet::new();
            let mut index = 0;
            while index < part.pending.len().min(SCAN) && deliveries < max {
                let key = &part.pending[index].key;
                let busy = part.busy.get(key).copied().unwrap_or(0);
                if busy >= window || blocked.contains(key) {
                    blocked.insert(key.clone());
                    index += 1;
                    continue;
                }
                let size = part.pending[index].payloads.len();
                if deliveries > 0 && deliveries + size > max {
                    // Too large for this batch; so are the key's later records.
                    blocked.insert(key.clone());
                    index += 1;
                    continue;
                }
                deliveries += size;
                let Some(record) = part.pending.remove(index) else {
                    break;
                };
                let previous = part.attempts.get(&record.offset).copied().unwrap_or(0);
                let attempt = previous.saturating_add(1);
                let write = record.resume || attempt > 1;
                part.attempts.insert(record.offset, attempt);
                if write {
                    part.durable.insert(record.offset);
                }
                let token = part.hand_out(&record);
                if part.busy.get(&record.key).copied().unwrap_or(0) >= window {
                    blocked.insert(record.key.clone());
                }
                picked.push(Picked {
                    partition,
                    generation: part.generation,
                    token,
                    previous,
                    attempt,
                    write,
                    record,
                });
            }
        }
        state.buffered -= picked.len();
        Ok(picked)
    }
}

/// A record picked for a batch.
struct Picked {
    partition: i32,
    generation: u64,
    token: u64,
    /// The delivery count before this delivery.
    previous: u32,
    attempt: u32,
    /// Whether the counter must be written before the record is handed out.
    write: bool,
    record: Record,
}

/// Puts picked records back if the batch is not handed over (cancelled or failed).
struct Handover<'a> {
    shared: &'a StreamShared,
    picked: Vec<Picked>,
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        if self.picked.is_empty() {
            return;
        }
        {
            let mut state = lock(&self.shared.state);
            let mut restored = 0;
            for picked in self.picked.drain(..) {
                let Ok(part) = owned_part(&mut state, picked.partition, picked.generation) else {
                    continue;
                };
                if part
                    .take_delivered(picked.record.offset, picked.token)
                    .is_none()
                {
                    continue;
                }
                if picked.previous == 0 {
                    part.attempts.remove(&picked.record.offset);
                } else {
                    part.attempts.insert(picked.record.offset, picked.previous);
                }
                part.insert_pending(picked.record);
                restored += 1;
            }
            state.buffered += restored;
        }
        self.shared.wake();
    }
}

#[async_trait]
impl EventStream for KafkaStream {
    /// Cancel-safe: if the future is dropped while it writes delivery counters, the records it
    /// picked go back in front of the stream's buffer.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        loop {
            if self.shared.broker.closed.is_cancelled() {
                return Err(BrokerError::Closed);
            }
            let notified = self.shared.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let picked = self.pick(max)?;
            if !picked.is_empty() {
                let mut handover = Handover {
                    shared: &self.shared,
                    picked,
                };
                let mut writes = Vec::new();
                for picked in handover.picked.iter().filter(|p| p.write) {
                    writes.push(self.shared.write_attempts(
                        picked.partition,
                        picked.record.offset,
                        Some(picked.attempt),
                    )?);
                }
                for result in futures_util::future::join_all(writes).await {
                    match result {
                        Ok(Ok(_)) => {}
                        Ok(Err((error, _))) => {
                            return Err(BrokerError::Unavailable(format!(
                                "kafka: writing a delivery counter: {error}"
                            )));
                        }
                        Err(_) => return Err(BrokerError::Closed),
                    }
                }
                let picked = std::mem::take(&mut handover.picked);
                let mut deliveries = Vec::new();
                for picked in picked {
                    let Picked {
                        partition,
                        generation,
                        token,
                        attempt,
                        record,
                        ..
                    } = picked;
                    for payload in record.payloads.iter() {
                        deliveries.push(Delivery::new(
                            record.key.to_string(),
                            payload.clone(),
                            attempt,
                            Box::new(KafkaSettle {
                                stream: self.shared.clone(),
                                partition,
                                generation,
                                offset: record.offset,
                                token,
                                settled: false,
                            }),
                        ));
                    }
                }
                return Ok(deliveries);
            }
            tokio::select! {
                () = notified => {}
                () = self.shared.broker.closed.cancelled() => return Err(BrokerError::Closed),
            }
        }
    }
}

impl Drop for KafkaStream {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared
            .broker
            .leaving(&self.shared.group, self.shared.left.clone());
        self.shared.wake();
    }
}

/// Settles one delivery; dropping it unsettled releases the record for redelivery.
struct KafkaSettle {
    stream: Arc<StreamShared>,
    partition: i32,
    generation: u64,
    offset: i64,
    token: u64,
    settled: bool,
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        if std::mem::replace(&mut self.settled, true) {
            return Err(BrokerError::Rejected("delivery already settled".into()));
        }
        self.stream
            .ack(self.partition, self.generation, self.offset, self.token)
    }

    async fn nack(mut self: Box<Self>) -> Result<(), BrokerError> {
        if std::mem::replace(&mut self.settled, true) {
            return Err(BrokerError::Rejected("delivery already settled".into()));
        }
        self.stream
            .release(self.partition, self.generation, self.offset, self.token)
    }
}

impl Drop for KafkaSettle {
    fn drop(&mut self) {
        if !std::mem::replace(&mut self.settled, true) {
            let _ = self
                .stream
                .release(self.partition, self.generation, self.offset, self.token);
        }
    }
}
