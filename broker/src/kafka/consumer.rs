//! Inbound streams: one consumer of the group per stream, polled by a thread of its own.

use super::Shared;
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

/// What the attempts topic holds about newly assigned partitions.
#[derive(Default)]
struct Loaded {
    /// Delivery counters per partition and offset.
    attempts: HashMap<i32, HashMap<i64, u32>>,
    /// Offsets acked above the committed position, as left by the previous owner.
    acked: HashMap<i32, BTreeSet<i64>>,
    /// The previous owner's position: every offset below it is acked, even when its last
    /// commit failed (a rebalance under way, say).
    acked_below: HashMap<i32, i64>,
}

/// A fetched record.
#[derive(Clone)]
struct Record {
    offset: i64,
    key: Arc<str>,
    /// The record's payload, or the records packed into it: each is a delivery of its own,
    /// and the offset is acked with the last of them.
    payloads: Arc<[Bytes]>,
    /// The first record fetched after the partition was assigned: it may have been
    /// delivered before by another stream or process.
    resume: bool,
}

/// A partition assigned to the stream.
struct Part {
    /// Distinguishes this assignment from earlier ones of the same partition.
    generation: u64,
    /// Fetched and not handed out, in offset order (nacked records come back here).
    pending: VecDeque<Record>,
    /// Handed out and not settled, by offset.
    delivered: BTreeMap<i64, Handed>,
    /// Tells this partition's deliveries apart (a record handed out again gets a new token).
    next_token: u64,
    /// Keys with a delivery in hand (how many).
    busy: HashMap<Arc<str>, u32>,
    /// Fetched and not acked.
    unacked: BTreeSet<i64>,
    /// The offset after the last fetched record.
    next_fetch: Option<i64>,
    /// Known delivery counts.
    attempts: HashMap<i64, u32>,
    /// Offsets that may have a counter in the attempts topic.
    durable: HashSet<i64>,
    /// Whether the next fetched record is the resume point.
    resume: bool,
    /// Acked offsets at or above the position (listed in the commit's metadata so that a
    /// new owner does not deliver them again).
    acked: BTreeSet<i64>,
    /// Offsets the previous owner acked above its committed position (from the commit
    /// metadata): skipped when fetched.
    skip: BTreeSet<i64>,
    /// Offsets below this one were acked by an earlier owner: skipped when fetched.
    skip_below: i64,
    /// Whether acks happened since the last commit.
    changed: bool,
}

impl Part {
    /// The offset to commit: everything before it is acked.
    fn position(&self) -> Option<i64> {
        self.unacked.first().copied().or(self.next_fetch)
    }

    /// The commit of this partition: its position and the acked offsets above it.
    fn commit_entry(&mut self) -> Option<(i64, String)> {
        let position = self.position()?;
        self.acked = self.acked.split_off(&position);
        Some((position, encode_acked(position, &self.acked)))
    }

    fn insert_pending(&mut self, record: Record) {
        let at = self.pending.partition_point(|r| r.offset < record.offset);
        self.pending.insert(at, record);
    }

    /// Marks `record` handed out; returns the delivery's token.
    fn hand_out(&mut self, record: &Record) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        self.delivered.insert(
            record.offset,
            Handed {
                record: Record {
                    resume: false,
                    ..record.clone()
                },
                token,
                unacked: record.payloads.len(),
            },
        );
        *self.busy.entry(record.key.clone()).or_insert(0) += 1;
        token
    }

    /// Takes back the delivery `token` of `offset`; `None` if it is settled already (or the
    /// record was handed out again since).
    fn take_delivered(&mut self, offset: i64, token: u64) -> Option<Record> {
        if self.delivered.get(&offset)?.token != token {
            return None;
        }
        self.remove_delivered(offset)
    }

    /// Forgets the delivery of `offset`, whoever holds it.
    fn remove_delivered(&mut self, offset: i64) -> Option<Record> {
        let handed = self.delivered.remove(&offset)?;
        if let Some(count) = self.busy.get_mut(&handed.record.key) {
            *count -= 1;
            if *count == 0 {
                self.busy.remove(&handed.record.key);
            }
        }
        Some(handed.record)
    }

    /// Puts the delivery `token` of `offset` back in the buffer, with the later deliveries of
    /// its key (the contract's "a nack releases the key's later deliveries"), so that the key's
    /// records are handed out again in order. Returns how many records went back, 0 if the
    /// delivery was settled already.
    fn release(&mut self, offset: i64, token: u64) -> usize {
        let Some(record) = self.take_delivered(offset, token) else {
            return 0;
        };
        let later: Vec<(i64, u64)> = self
            .delivered
            .range(offset + 1..)
            .filter(|(_, handed)| handed.record.key == record.key)
            .map(|(offset, handed)| (*offset, handed.token))
            .collect();
        self.insert_pending(record);
        let mut released = 1;
        for (offset, token) in later {
            if let Some(record) = self.take_delivered(offset, token) {
                self.insert_pending(record);
                released += 1;
            }
        }
        released
    }
}

/// A record handed out and not settled.
struct Handed {
    record: Record,
    token: u64,
    /// Its deliveries not acked yet (several for a packed record).
    unacked: usize,
}

#[derive(Default)]
struct State {
    parts: HashMap<i32, Part>,
    next_generation: u64,
    /// Rotates the partition a batch starts with.
    rotation: usize,
    /// Records in `pending` over all partitions.
    buffered: usize,
    /// A fatal consumer error.
    failure: Option<String>,
    /// The stream ended; settles fail.
    stopped: bool,
}

/// What a stream's handle, its deliveries and its thread share.
pub(crate) struct StreamShared {
    broker: Arc<Shared>,
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

    /// The key of the counter of `offset` in `partition`.
    fn attempts_key(&self, partition: i32, offset: i64) -> String {
        format!("{partition}/{offset}/{}", self.group)
    }

    fn attempts_partition(&self, partition: i32) -> i32 {
        partition.rem_euclid(self.broker.attempts_partitions.max(1))
    }

    /// The key of the offsets acked above the committed position of `partition`.
    fn acked_key(&self, partition: i32) -> String {
        format!("{partition}/acked/{}", self.group)
    }

    /// Writes the delivery counter of a record (or deletes it with `None`).
    fn write_attempts(
        &self,
        partition: i32,
        offset: i64,
        attempts: Option<u32>,
    ) -> Result<DeliveryFuture, BrokerError> {
        let key = self.attempts_key(partition, offset);
        let value = attempts.map(|n| n.to_string());
        self.write_state(partition, &key, value.as_deref())
    }

    /// Writes a record about `partition` to the attempts topic (a tombstone with `None`).
    fn write_state(
        &self,
        partition: i32,
        key: &str,
        value: Option<&str>,
    ) -> Result<DeliveryFuture, BrokerError> {
        let mut record = FutureRecord::to(&self.broker.attempts_topic)
            .partition(self.attempts_partition(partition))
            .key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.broker
            .producer
            .send_result::<str, str>(record)
            .map_err(|(error, _)| {
                BrokerError::Unavailable(format!("kafka: writing a delivery counter: {error}"))
            })
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

/// Callbacks of the stream's consumer, run on the stream's thread.
struct Context {
    stream: Arc<StreamShared>,
    /// Reads the delivery counters of assigned partitions.
    reader: Mutex<Option<BaseConsumer>>,
    runtime: tokio::runtime::Handle,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = self.events_partitions(list);
            let lost = consumer.assignment_lost();
            tracing::info!(?partitions, lost, group = %self.stream.group, "kafka: partitions revoked");
            if !lost {
                self.wait_settled(&partitions);
            }
            self.give_up(consumer, &partitions, !lost);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = self.events_partitions(list);
            tracing::info!(?partitions, group = %self.stream.group, "kafka: partitions assigned");
            if partitions.is_empty() {
                return;
            }
            let counters = self.load_attempts(&partitions);
            let skips = self.committed_acks(consumer, &partitions);
            let mut state = lock(&self.stream.state);
            let paused = state.buffered >= BUFFER_HIGH;
            for partition in &partitions {
                state.next_generation += 1;
                let part = Part {
                    generation: state.next_generation,
                    pending: VecDeque::new(),
                    delivered: BTreeMap::new(),
                    next_token: 0,
                    busy: HashMap::new(),
                    unacked: BTreeSet::new(),
                    next_fetch: None,
                    attempts: counters
                        .attempts
                        .get(partition)
                        .cloned()
                        .unwrap_or_default(),
                    durable: counters
                        .attempts
                        .get(partition)
                        .map(|c| c.keys().copied().collect())
                        .unwrap_or_default(),
                    resume: true,
                    acked: BTreeSet::new(),
                    // Acks are final, so offsets acked by any earlier owner can be skipped.
                    skip: skips
                        .get(partition)
                        .into_iter()
                        .chain(counters.acked.get(partition))
                        .flatten()
                        .copied()
                        .collect(),
                    skip_below: counters.acked_below.get(partition).copied().unwrap_or(0),
                    changed: false,
                };
                if let Some(old) = state.parts.insert(*partition, part) {
                    state.buffered -= old.pending.len();
                }
            }
            drop(state);
            if paused {
                let mut list = TopicPartitionList::new();
                for partition in &partitions {
                    list.add_partition(&self.stream.broker.events_topic, *partition);
                }
                if let Err(error) = consumer.pause(&list) {
                    tracing::warn!(%error, "kafka: pausing new partitions failed");
                }
            }
            self.stream.wake();
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "kafka: committing offsets failed; retrying");
            let mut state = lock(&self.stream.state);
            for element in offsets.elements_for_topic(&self.stream.broker.events_topic) {
                if let Some(part) = state.parts.get_mut(&element.partition()) {
                    part.changed = true;
                }
            }
        }
    }
}

impl Context {
    /// The inbound topic's partitions in a rebalance's list.
    fn events_partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.stream.broker.events_topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// Waits until the deliveries of `partitions` are settled, the stream stops, or the
    /// revoke timeout passes.
    fn wait_settled(&self, partitions: &[i32]) {
        let timeout = Duration::from_millis(self.stream.broker.settings.revoke_timeout_ms);
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.stream.state);
        loop {
            let unsettled = partitions.iter().any(|p| {
                state
                    .parts
                    .get(p)
                    .is_some_and(|part| !part.delivered.is_empty())
            });
            let now = Instant::now();
            if !unsettled || self.stream.should_stop() || now >= deadline {
                if unsettled && now >= deadline {
                    tracing::warn!(
                        ?partitions,
                        "kafka: revoked partitions still have unsettled deliveries after \
                         {timeout:?}; they will be delivered again by their new owner"
                    );
                }
                return;
            }
            let slice = (deadline - now).min(POLL);
            state = self
                .stream
                .settled
                .wait_timeout(state, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Drops `partitions`: commits their acked offsets (if `commit`) and records the counters
    /// of their unsettled deliveries.
    fn give_up(&self, consumer: &BaseConsumer<Self>, partitions: &[i32], commit: bool) {
        let mut list = TopicPartitionList::new();
        let mut counters = Vec::new();
        {
            let mut state = lock(&self.stream.state);
            for partition in partitions {
                let Some(part) = state.parts.remove(partition) else {
                    continue;
                };
                let mut part = part;
                state.buffered -= part.pending.len();
                if part.changed {
                    add_commit(
                        &mut list,
                        &self.stream.broker.events_topic,
                        *partition,
                        &mut part,
                    );
                }
                // The position and the offsets acked above it, for the next owner: brokers need
                // not return commit metadata, and the commit below can fail (a rebalance under
                // way), which would otherwise make the next owner deliver acked records again.
                if let Some((position, acked)) = part.commit_entry() {
                    counters.push((
                        *partition,
                        self.stream.acked_key(*partition),
                        format!("{position}:{acked}"),
                    ));
                }
                // Records delivered and not acked (in hand, or released back to the buffer)
                // whose counter is not written yet.
                for (offset, n) in &part.attempts {
                    if !part.durable.contains(offset) {
                        counters.push((
                            *partition,
                            self.stream.attempts_key(*partition, *offset),
                            n.to_string(),
                        ));
                    }
                }
            }
        }
        self.stream.wake();
        if commit
            && list.count() > 0
            && let Err(error) = consumer.commit(&list, CommitMode::Sync)
        {
            tracing::warn!(%error, "kafka: committing revoked partitions failed");
        }
        self.record_counters(&counters);
    }

    /// Writes delivery counters (partition, key, value) and waits for them (bounded by the
    /// message timeout).
    fn record_counters(&self, counters: &[(i32, String, String)]) {
        if counters.is_empty() {
            return;
        }
        let mut writes = Vec::new();
        for (partition, key, value) in counters {
            match self.stream.write_state(*partition, key, Some(value)) {
                Ok(write) => writes.push(write),
                Err(error) => tracing::warn!(%error, "kafka: recording a delivery counter failed"),
            }
        }
        let results = self
            .runtime
            .block_on(futures_util::future::join_all(writes));
        for result in results {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    tracing::warn!(%error, "kafka: recording a delivery counter failed");
                }
                Err(_) => tracing::warn!("kafka: recording a delivery counter was cancelled"),
            }
        }
    }

    /// The offsets acked above the committed positions of `partitions`, from the commit
    /// metadata.
    fn committed_acks(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
    ) -> HashMap<i32, BTreeSet<i64>> {
        let topic = &self.stream.broker.events_topic;
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(topic, *partition);
        }
        let committed = match consumer.committed_offsets(list, LOAD_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "kafka: reading committed offsets failed; acked records \
                    above them may be delivered again");
                return HashMap::new();
            }
        };
        committed
            .elements_for_topic(topic)
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(position) => Some((
                    element.partition(),
                    decode_acked(position, element.metadata()),
                )),
                _ => None,
            })
            .collect()
    }

    /// Reads the delivery counters of `partitions` of this group.
    fn load_attempts(&self, partitions: &[i32]) -> Loaded {
        let mut counters = Loaded::default();
        let mut reader = lock(&self.reader);
        if reader.is_none() {
            match reader_config(&self.stream.broker).create::<BaseConsumer>() {
                Ok(created) => *reader = Some(created),
                Err(error) => {
                    tracing::warn!(%error, "kafka: cannot read delivery counters");
                    return counters;
                }
            }
        }
        let Some(reader) = reader.as_ref() else {
            return counters;
        };
        let topic = &self.stream.broker.attempts_topic;
        let wanted: HashSet<i32> = partitions
            .iter()
            .map(|p| self.stream.attempts_partition(*p))
            .collect();
        let mut list = TopicPartitionList::new();
        let mut remaining = HashMap::new();
        for partition in &wanted {
            match reader.fetch_watermarks(topic, *partition, LOAD_TIMEOUT) {
                Ok((low, high)) if high > low => {
                    if let Err(error) =
                        list.add_partition_offset(topic, *partition, Offset::Offset(low))
                    {
                        tracing::warn!(%error, "kafka: bad counter offset");
                        continue;
                    }
                    remaining.insert(*partition, high);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "kafka: reading delivery counters failed");
                }
            }
        }
        if remaining.is_empty() {
            return counters;
        }
        if let Err(error) = reader.assign(&list) {
            tracing::warn!(%error, "kafka: reading delivery counters failed");
            return counters;
        }
        let suffix = format!("/{}", self.stream.group);
        let deadline = Instant::now() + LOAD_TIMEOUT;
        while !remaining.is_empty() && Instant::now() < deadline {
            match reader.poll(POLL) {
                Some(Ok(message)) => {
                    if remaining
                        .get(&message.partition())
                        .is_some_and(|high| message.offset() >= high - 1)
                    {
                        remaining.remove(&message.partition());
                    }
                    let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                        continue;
                    };
                    let Some((partition, what)) = key
                        .strip_suffix(&suffix)
                        .and_then(|rest| rest.split_once('/'))
                        .and_then(|(p, what)| Some((p.parse::<i32>().ok()?, what)))
                    else {
                        continue;
                    };
                    if !partitions.contains(&partition) {
                        continue;
                    }
                    let value = message.payload().and_then(|v| std::str::from_utf8(v).ok());
                    if what == "acked" {
                        let Some((position, acked)) = value
                            .and_then(|v| v.split_once(':'))
                            .and_then(|(position, acked)| {
                                let position = position.parse::<i64>().ok()?;
                                Some((position, decode_acked(position, acked)))
                            })
                        else {
                            continue;
                        };
                        counters.acked.insert(partition, acked);
                        let below = counters.acked_below.entry(partition).or_insert(position);
                        *below = (*below).max(position);
                        continue;
                    }
                    let Ok(offset) = what.parse::<i64>() else {
                        continue;
                    };
                    let entry = counters.attempts.entry(partition).or_default();
                    match value.and_then(|v| v.parse::<u32>().ok()) {
                        Some(n) => entry.insert(offset, n),
                        None => entry.remove(&offset),
                    };
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    remaining.remove(&partition);
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "kafka: reading delivery counters failed");
                }
                None => {}
            }
        }
        if !remaining.is_empty() {
            tracing::warn!("kafka: reading delivery counters timed out; counts may be low");
        }
        if let Err(error) = reader.unassign() {
            tracing::debug!(%error, "kafka: unassigning the counter reader failed");
        }
        counters
    }
}

fn reader_config(broker: &Shared) -> ClientConfig {
    let mut config = super::base_config(&broker.settings);
    config
        .set(
            "group.id",
            format!("{}.attempts-reader", broker.settings.prefix),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100");
    config
}

fn consumer_config(broker: &Shared, group: &str) -> ClientConfig {
    let settings = &broker.settings;
    let mut config = super::base_config(settings);
    config
        .set("group.id", settings.group_id(group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.session_timeout_ms / 10).max(100).to_string(),
        )
        .set(
            "max.poll.interval.ms",
            (settings.revoke_timeout_ms + 300_000).to_string(),
        )
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
        .set("enable.partition.eof", "false");
    config
}

/// A stream of the inbound topic for one consumer group.
pub(crate) struct KafkaStream {
    shared: Arc<StreamShared>,
}

impl KafkaStream {
    /// Creates the stream's consumer, subscribes it and starts its thread.
    pub(crate) fn start(broker: Arc<Shared>, group: &str) -> Result<KafkaStream, BrokerError> {
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

/// The stream's thread: polls the consumer, buffers records, commits, stops.
fn run(consumer: BaseConsumer<Context>, shared: Arc<StreamShared>, token: TaskTrackerToken) {
    let topic = shared.broker.events_topic.clone();
    let mut paused = false;
    let mut last_commit = Instant::now();
    while !shared.should_stop() {
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                let partition = message.partition();
                let offset = message.offset();
                let key: Arc<str> = match message.key() {
                    Some(key) => Arc::from(String::from_utf8_lossy(key).as_ref()),
                    None => Arc::from(""),
                };
                let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
                let payloads: Arc<[Bytes]> = super::unpack(&key, payload).into();
                drop(message);
                let mut state = lock(&shared.state);
                let Some(part) = state.parts.get_mut(&partition) else {
                    continue;
                };
                if part.next_fetch.is_some_and(|next| offset < next) {
                    continue;
                }
                if part.skip.remove(&offset) || offset < part.skip_below {
                    // Acked by the previous owner: stays acked.
                    part.next_fetch = Some(offset + 1);
                    part.acked.insert(offset);
                    continue;
                }
                let resume = std::mem::take(&mut part.resume);
                part.next_fetch = Some(offset + 1);
                part.unacked.insert(offset);
                part.pending.push_back(Record {
                    offset,
                    key,
                    payloads,
                    resume,
                });
                state.buffered += 1;
                drop(state);
                shared.ready.notify_waiters();
            }
            Some(Err(error)) => {
                let fatal = matches!(
                    error.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::Fatal
                            | RDKafkaErrorCode::GroupAuthorizationFailed
                            | RDKafkaErrorCode::TopicAuthorizationFailed
                    )
                );
                if fatal {
                    lock(&shared.state).failure = Some(format!("kafka consumer: {error}"));
                    shared.wake();
                } else {
                    tracing::debug!(%error, "kafka consumer error");
                }
            }
            None => {}
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            commit_progress(&consumer, &shared, &topic, CommitMode::Async);
            last_commit = Instant::now();
        }
        paused = flow_control(&consumer, &shared, paused);
    }
    // Stop: commit what is acked, record the counters of unsettled deliveries, leave.
    let partitions: Vec<i32> = lock(&shared.state).parts.keys().copied().collect();
    let lost = consumer.assignment_lost();
    consumer.context().give_up(&consumer, &partitions, !lost);
    {
        let mut state = lock(&shared.state);
        state.stopped = true;
        state.parts.clear();
        state.buffered = 0;
    }
    shared.wake();
    drop(consumer);
    shared.left.cancel();
    drop(token);
}

/// Commits the acked progress of every partition that advanced.
fn commit_progress(
    consumer: &BaseConsumer<Context>,
    shared: &StreamShared,
    topic: &str,
    mode: CommitMode,
) {
    let mut list = TopicPartitionList::new();
    {
        let mut state = lock(&shared.state);
        for (partition, part) in &mut state.parts {
            if part.changed {
                add_commit(&mut list, topic, *partition, part);
            }
        }
    }
    if list.count() > 0
        && let Err(error) = consumer.commit(&list, mode)
    {
        tracing::debug!(%error, "kafka: committing offsets failed");
        let mut state = lock(&shared.state);
        for element in list.elements() {
            if let Some(part) = state.parts.get_mut(&element.partition()) {
                part.changed = true;
            }
        }
    }
}

/// Pauses fetching while many records are buffered; returns whether it is paused.
fn flow_control(consumer: &BaseConsumer<Context>, shared: &StreamShared, paused: bool) -> bool {
    let buffered = lock(&shared.state).buffered;
    let want_paused = if paused {
        buffered > BUFFER_LOW
    } else {
        buffered >= BUFFER_HIGH
    };
    if want_paused == paused {
        return paused;
    }
    let Ok(assignment) = consumer.assignment() else {
        return paused;
    };
    let result = if want_paused {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => want_paused,
        Err(error) => {
            tracing::warn!(%error, "kafka: pausing or resuming fetching failed");
            paused
        }
    }
}

/// Adds `part`'s commit to `list` and marks it committed.
fn add_commit(list: &mut TopicPartitionList, topic: &str, partition: i32, part: &mut Part) {
    let Some((position, metadata)) = part.commit_entry() else {
        return;
    };
    if list
        .add_partition_offset(topic, partition, Offset::Offset(position))
        .is_err()
    {
        return;
    }
    if let Some(mut element) = list.find_partition(topic, partition) {
        element.set_metadata(metadata);
    }
    part.changed = false;
}

/// Marks commit metadata written by this backend.
const ACKED_TAG: &str = "roomcast-acked:";
/// Longest commit metadata written (brokers limit it, Kafka to 4096 bytes by default).
const ACKED_MAX: usize = 3500;

/// Encodes offsets acked above `position` as comma-separated ranges of distances from it
/// (`3,5-9`); offsets that do not fit are left out (they are delivered again).
fn encode_acked(position: i64, acked: &BTreeSet<i64>) -> String {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for offset in acked.range(position..) {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == *offset => *end = *offset,
            _ => ranges.push((*offset, *offset)),
        }
    }
    let mut out = String::new();
    if ranges.is_empty() {
        return out;
    }
    out.push_str(ACKED_TAG);
    for (i, (start, end)) in ranges.iter().enumerate() {
        let item = if start == end {
            format!("{}", start - position)
        } else {
            format!("{}-{}", start - position, end - position)
        };
        if out.len() + item.len() + 1 > ACKED_MAX {
            break;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out
}

/// Decodes [`encode_acked`]'s metadata; anything else means no offsets.
fn decode_acked(position: i64, metadata: &str) -> BTreeSet<i64> {
    let mut acked = BTreeSet::new();
    let Some(ranges) = metadata.strip_prefix(ACKED_TAG) else {
        return acked;
    };
    for item in ranges.split(',').filter(|item| !item.is_empty()) {
        let (start, end) = match item.split_once('-') {
            Some((start, end)) => (start.parse::<i64>(), end.parse::<i64>()),
            None => (item.parse::<i64>(), item.parse::<i64>()),
        };
        let (Ok(start), Ok(end)) = (start, end) else {
            return BTreeSet::new();
        };
        if start < 0 || end < start || end - start > 1_000_000 {
            return BTreeSet::new();
        }
        acked.extend((start..=end).map(|d| position + d));
    }
    acked
}

#[cfg(test)]
mod tests {
    use super::{decode_acked, encode_acked};
    use std::collections::BTreeSet;

    #[test]
    fn acked_offsets_round_trip_through_commit_metadata() {
        let acked: BTreeSet<i64> = [101, 102, 103, 107, 110, 111].into_iter().collect();
        let metadata = encode_acked(100, &acked);
        assert_eq!(metadata, "roomcast-acked:1-3,7,10-11");
        assert_eq!(decode_acked(100, &metadata), acked);
        assert_eq!(encode_acked(100, &BTreeSet::new()), "");
        assert!(decode_acked(5, "").is_empty());
        assert!(decode_acked(5, "something else").is_empty());
        assert!(decode_acked(5, "roomcast-acked:3-1").is_empty());
        let many: BTreeSet<i64> = (0..5000).map(|i| 1000 + 2 * i).collect();
        assert!(encode_acked(999, &many).len() <= 3500);
    }
}
