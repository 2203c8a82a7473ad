//! Reading the history of the inbound topic, for replays (backfill, disaster recovery).
//!
//! A [`KafkaReplay`] is a consumer without a group: it is assigned every partition of
//! `{prefix}.events` (or the partitions named by [`ReplayStart::Offsets`]) at a start point,
//! joins no group and commits nothing, so it never disturbs the workers' consumer group. It
//! reads each partition up to the high watermark captured when the replay opened, so a replay
//! ends even while gateways keep publishing; records published after that are left for the
//! live workers.
//!
//! Records come in offset order per partition. A room's records share a partition, so per
//! room they come in publish order; records of different partitions interleave arbitrarily.
//!
//! ```no_run
//! # async fn run() -> Result<(), roomcast_broker::BrokerError> {
//! use roomcast_broker::ReplayStart;
//! use roomcast_broker::kafka::replay::KafkaReplay;
//!
//! let start: ReplayStart = "timestamp:2026-01-31T00:00:00Z".parse()?;
//! let mut replay = KafkaReplay::open("kafka://127.0.0.1:9092?prefix=roomcast", &start).await?;
//! loop {
//!     let records = replay.next_batch(500).await?;
//!     if records.is_empty() {
//!         break; // every partition reached its end
//!     }
//!     for record in records {
//!         println!("{}/{} {}", record.partition, record.offset, record.key);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use super::METADATA_TIMEOUT;
use super::config::KafkaConfig;
use crate::{BrokerError, redact_url};
/// The backend-neutral replay types, also at the crate root.
pub use crate::{ReplayRange, ReplayRecord, ReplayStart};
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one poll waits for records.
const POLL: Duration = Duration::from_millis(100);
/// How long a replay waits without receiving anything from a partition that is not finished
/// before it reports the broker unavailable.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the inbound topic's records from a start point to the end captured when it opened.
/// See the module documentation.
pub struct KafkaReplay {
    consumer: Arc<BaseConsumer>,
    topic: String,
    ranges: Vec<ReplayRange>,
    /// The partitions not finished yet.
    remaining: HashMap<i32, Remaining>,
    /// Set while a [`KafkaReplay::next_batch`] runs: still set afterwards when the call was
    /// cancelled, whose records are lost.
    interrupted: bool,
}

impl fmt::Debug for KafkaReplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaReplay")
            .field("topic", &self.topic)
            .field("ranges", &self.ranges)
            .field("remaining", &self.remaining.len())
            .finish_non_exhaustive()
    }
}

fn config(settings: &KafkaConfig) -> ClientConfig {
    let mut config = super::base_config(settings);
    // librdkafka needs a group id for manual assignments; the group is never joined and
    // nothing is committed.
    config
        .set("group.id", format!("{}.replay-reader", settings.prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
        .set("queued.max.messages.kbytes", "65536");
    config
}

fn unavailable(what: &str, error: &KafkaError) -> BrokerError {
    BrokerError::Unavailable(format!("kafka replay: {what}: {error}"))
}

impl KafkaReplay {
    /// Opens a replay of the inbound topic of the cluster at `url` (a `kafka://` URL, see
    /// the [module](super) documentation; topics are never created) from `start`.
    ///
    /// Fails with [`BrokerError::Config`] when the URL is not a Kafka URL or the topic does
    /// not exist, [`BrokerError::Unavailable`] when the cluster does not answer.
    pub async fn open(url: &str, start: &ReplayStart) -> Result<KafkaReplay, BrokerError> {
        let settings = KafkaConfig::parse(url)?;
        let consumer: BaseConsumer = config(&settings).create().map_err(|e| {
            BrokerError::Config(format!(
                "kafka replay consumer for {}: {e}",
                redact_url(url)
            ))
        })?;
        let consumer = Arc::new(consumer);
        let topic = settings.events_topic();
        let planning = consumer.clone();
        let not_before = match start {
            ReplayStart::Timestamp(ms) => Some(*ms),
            _ => None,
        };
        let start = start.clone();
        let planned_topic = topic.clone();
        let ranges = tokio::task::spawn_blocking(move || plan(&planning, &planned_topic, &start))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("kafka replay task: {e}")))??;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = HashMap::new();
        for range in ranges.iter().filter(|range| !range.is_empty()) {
            assignment
                .add_partition_offset(&topic, range.partition, Offset::Offset(range.start))
                .map_err(|e| unavailable("assigning partitions", &e))?;
            remaining.insert(
                range.partition,
                Remaining {
                    end: range.end,
                    not_before,
                },
            );
        }
        if !remaining.is_empty() {
            consumer
                .assign(&assignment)
                .map_err(|e| unavailable("assigning partitions", &e))?;
        }
        tracing::info!(
            topic = %topic,
            partitions = ranges.len(),
            records = ranges.iter().map(ReplayRange::len).sum::<u64>(),
            "kafka replay opened"
        );
        Ok(KafkaReplay {
            consumer,
            topic,
            ranges,
            remaining,
            interrupted: false,
        })
    }

    /// The inbound topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The range read per partition, in partition order (empty ranges included).
    pub fn ranges(&self) -> &[ReplayRange] {
        &self.ranges
    }

    /// Whether every partition has been read to its end.
    pub fn is_done(&self) -> bool {
        self.remaining.is_empty() && !self.interrupted
    }

    /// The next records, about `max` of them (a packed Kafka record's records come together),
    /// in offset order per partition; empty once every partition has been read to its end.
    ///
    /// Fails with [`BrokerError::Unavailable`] when a partition that is not finished yields
    /// nothing for a minute, or with the consumer's fatal errors.
    ///
    /// Not cancel-safe: the records a cancelled call was reading are lost, and later calls
    /// fail with [`BrokerError::Closed`] (open a new replay to go on).
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<ReplayRecord>, BrokerError> {
        if self.interrupted {
            return Err(BrokerError::Closed);
        }
        if self.remaining.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let mut remaining = self.remaining.clone();
        self.interrupted = true;
        let (records, remaining) = tokio::task::spawn_blocking(move || {
            let records = poll_batch(&consumer, &topic, &mut remaining, max);
            (records, remaining)
        })
        .await
        .map_err(|e| BrokerError::Unavailable(format!("kafka replay task: {e}")))?;
        self.interrupted = false;
        self.remaining = remaining;
        records
    }
}

/// The ranges to read: every partition of `topic` (or those `start` names), from `start` to
/// the current high watermark.
fn plan(
    consumer: &BaseConsumer,
    topic: &str,
    start: &ReplayStart,
) -> Result<Vec<ReplayRange>, BrokerError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| unavailable("reading metadata", &e))?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(BrokerError::Config(format!(
            "kafka replay: topic {topic} does not exist (check the URL's prefix)"
        )));
    }
    if let ReplayStart::Offsets(offsets) = start {
        if let Some(missing) = offsets.keys().find(|p| !partitions.contains(p)) {
            return Err(BrokerError::Config(format!(
                "kafka replay: topic {topic} has no partition {missing} (it has {})",
                partitions.len()
            )));
        }
        partitions.retain(|p| offsets.contains_key(p));
    }
    let mut watermarks = BTreeMap::new();
    for &partition in &partitions {
        let marks = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(|e| unavailable("reading watermarks", &e))?;
        watermarks.insert(partition, marks);
    }
    let by_time = match start {
        ReplayStart::Timestamp(ms) => {
            let mut list = TopicPartitionList::new();
            for &partition in &partitions {
                list.add_partition_offset(topic, partition, Offset::Offset(*ms))
                    .map_err(|e| unavailable("looking up offsets by time", &e))?;
            }
            let found = consumer
                .offsets_for_times(list, METADATA_TIMEOUT)
                .map_err(|e| unavailable("looking up offsets by time", &e))?;
            let mut by_time = HashMap::new();
            for element in found.elements_for_topic(topic) {
                if let Err(error) = element.error() {
                    return Err(unavailable("looking up offsets by time", &error));
                }
                by_time.insert(element.partition(), element.offset());
            }
            by_time
        }
        _ => HashMap::new(),
    };
    let mut ranges = Vec::with_capacity(partitions.len());
    for (partition, (low, high)) in watermarks {
        let wanted = match start {
            ReplayStart::Beginning => low,
            ReplayStart::Offset(offset) => *offset,
            ReplayStart::Offsets(offsets) => offsets.get(&partition).copied().unwrap_or(low),
            ReplayStart::Timestamp(_) => match by_time.get(&partition) {
                Some(Offset::Offset(offset)) => *offset,
                // No record at or after the time (the lookup answers with the end).
                _ => high,
            },
        };
        let start = wanted.clamp(low, high.max(low));
        ranges.push(ReplayRange {
            partition,
            start,
            end: high.max(start),
        });
    }
    Ok(ranges)
}

/// What is left to read of a partition.
#[derive(Debug, Clone, Copy)]
struct Remaining {
    /// The offset after the last record to read.
    end: i64,
    /// For a start at a time: records before the first one at or after this time
    /// (milliseconds) are skipped. The broker's offset lookup finds that record; this also
    /// holds when a broker answers an earlier offset (some Kafka-compatible brokers answer
    /// the partition's start when no record is that recent).
    not_before: Option<i64>,
}

/// Polls up to `max` records of the partitions in `remaining`, removing the partitions that
/// reach their end.
fn poll_batch(
    consumer: &BaseConsumer,
    topic: &str,
    remaining: &mut HashMap<i32, Remaining>,
    max: usize,
) -> Result<Vec<ReplayRecord>, BrokerError> {
    let mut records = Vec::new();
    let mut last_progress = Instant::now();
    while !remaining.is_empty() && records.len() < max {
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                let offset = message.offset();
                let Some(left) = remaining.get_mut(&partition) else {
                    continue;
                };
                let end = left.end;
                if offset >= end {
                    finish(consumer, topic, remaining, partition);
                    continue;
                }
                let timestamp = message.timestamp().to_millis();
                if let Some(not_before) = left.not_before {
                    if timestamp.is_some_and(|ts| ts < not_before) {
                        if offset + 1 >= end {
                            finish(consumer, topic, remaining, partition);
                        }
                        continue;
                    }
                    left.not_before = None;
                }
                let key = message
                    .key()
                    .map(|key| String::from_utf8_lossy(key).into_owned())
                    .unwrap_or_default();
                let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
                for payload in super::unpack(&key, payload) {
                    records.push(ReplayRecord {
                        partition,
                        offset,
                        timestamp,
                        key: key.clone(),
                        payload,
                    });
                }
                if offset + 1 >= end {
                    finish(consumer, topic, remaining, partition);
                }
            }
            // The partition's log ends here: everything below the captured end was read.
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                last_progress = Instant::now();
                finish(consumer, topic, remaining, partition);
            }
            Some(Err(error)) => {
                let fatal = matches!(
                    error.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::Fatal
                            | RDKafkaErrorCode::TopicAuthorizationFailed
                            | RDKafkaErrorCode::UnknownTopicOrPartition
                    )
                );
                if fatal {
                    return Err(unavailable("reading", &error));
                }
                tracing::debug!(%error, "kafka replay: consumer error");
            }
            None => {
                // Hand over what is there rather than wait for a full batch.
                if !records.is_empty() {
                    break;
                }
            }
        }
        if records.is_empty() && last_progress.elapsed() >= STALL_TIMEOUT {
            return Err(BrokerError::Unavailable(format!(
                "kafka replay: nothing read from {topic} for {} s while {} partition(s) are \
                 not finished",
                STALL_TIMEOUT.as_secs(),
                remaining.len()
            )));
        }
    }
    Ok(records)
}

/// Marks `partition` finished and stops fetching it.
fn finish(
    consumer: &BaseConsumer,
    topic: &str,
    remaining: &mut HashMap<i32, Remaining>,
    partition: i32,
) {
    if remaining.remove(&partition).is_none() {
        return;
    }
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    if let Err(error) = consumer.pause(&list) {
        tracing::debug!(%error, partition, "kafka replay: pausing a finished partition failed");
    }
}

#[async_trait::async_trait]
impl crate::HistoryReader for KafkaReplay {
    fn source(&self) -> &str {
        self.topic()
    }

    fn ranges(&self) -> &[ReplayRange] {
        KafkaReplay::ranges(self)
    }

    fn is_done(&self) -> bool {
        KafkaReplay::is_done(self)
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<ReplayRecord>, BrokerError> {
        KafkaReplay::next_batch(self, max).await
    }
}
