//! The Kafka backend (`kafka://` URLs), built on librdkafka through `rdkafka`.
//!
//! It uses standard Kafka APIs only (produce, fetch, consumer groups, admin), so it works on
//! Apache Kafka and on Kafka-compatible brokers.
//!
//! # URL
//! `kafka://host:port[,host:port…][?name=value&…]`, with these settings:
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `prefix` | `roomcast` | namespace of the topics and consumer groups (`[A-Za-z0-9._-]`) |
//! | `partitions` | `16` | partitions of the topics created; the unit of parallelism of a group |
//! | `replication` | `1` | replication factor of the topics created |
//! | `retention_ms` | `-1` | `retention.ms` of the inbound topic (-1: keep forever, it is the replayable history) |
//! | `retention_bytes` | `-1` | `retention.bytes` per partition of the inbound topic |
//! | `fanout_retention_ms` | `600000` | `retention.ms` of the fan-out topic (transient) |
//! | `create_topics` | `true` | create missing topics with the settings above (admin API); otherwise they must exist |
//! | `linger_ms` | `2` | producer `linger.ms` |
//! | `batch_size` | `1000000` | producer `batch.size` in bytes |
//! | `message_timeout_ms` | `10000` | producer `message.timeout.ms`: a publish fails after this long |
//! | `revoke_timeout_ms` | `15000` | how long a stream keeps revoked partitions while it has unsettled deliveries of them |
//! | `session_timeout_ms` | `10000` | consumer `session.timeout.ms`: how soon a crashed stream's partitions move |
//! | `fanout_buffer` | `4096` | messages buffered per fan-out subscription before it yields a gap |
//! | `key_window` | `64` | unsettled deliveries of one key a stream may hold (in order; see below) |
//! | `fetch_wait_ms` | `100` | consumer `fetch.wait.max.ms`: how long the broker may hold a fetch that finds no new records |
//! | `pack` | `64` | most inbound records of one room packed into one Kafka record (1: no packing) |
//! | `pack_window` | `2` | inbound Kafka records of one room awaiting their delivery reports while later ones wait to be packed |
//!
//! Values are percent-decoded. Unknown settings and out-of-range values are
//! [`BrokerError::Setting`] errors naming the setting.
//!
//! # Topology
//! - `{prefix}.events`: the inbound stream, keyed by room; a room's records share a
//!   partition, so a partition's order is the rooms' order. Retention per `retention_ms`.
//! - `{prefix}.fanout`: fan-out messages keyed by room, short retention.
//! - `{prefix}.dead-letters`: dead letters keyed by room.
//! - `{prefix}.attempts`: compacted; delivery counters (see below), one partition per inbound
//!   partition.
//! - Consumer group `{prefix}.{group}` per Roomcast consumer group.
//!
//! # Publishing
//! One idempotent producer (`enable.idempotence=true`, `acks=all`) serves every topic, with
//! any number of publishes in flight; `publish` returns once the delivery report confirms the
//! record is stored by all in-sync replicas. `linger.ms=2` lets concurrent publishes share a
//! produce request (a large `batch.size` so that batches are closed by the linger, not by
//! size) while adding at most 2 ms to a publish's latency; under load the in-flight requests
//! (up to 5 per connection with idempotence, keeping order) carry larger batches. LZ4
//! compresses batches.
//!
//! Inbound publishes are packed (`crate::pack`): a room has at most `pack_window` inbound
//! Kafka records awaiting their delivery reports; the room's records published while the
//! window is full wait and go out together, in order, as one Kafka record (up to `pack`
//! records and 512 KiB), each confirmed by that record's delivery report. An idle room's record
//! goes out at once, alone (a plain record, as other services publish). Packing cuts the
//! broker's work per event, which is largely per record. A pack says in its value how many
//! records it holds (`\0RCPACK1`, the number as 4 bytes big-endian, then each record as a
//! 4-byte big-endian length and its bytes), not in a record header: a header costs some
//! Kafka-compatible brokers a scan per record fetched (tansu 0.6 keeps headers in an unindexed
//! table), and a value starting with a zero byte is never JSON.
//!
//! A publish that cannot be stored within `message_timeout_ms` (broker
//! down, no leader) fails with [`BrokerError::Unavailable`]; it never reports a false
//! success. A record the broker refuses (too large, not authorised) is
//! [`BrokerError::Rejected`].
//!
//! # Consuming
//! Each stream is a consumer of its group (`cooperative-sticky` assignment, auto commit off,
//! `auto.offset.reset=earliest`) polled by a thread of its own, which keeps the fetched
//! records of the stream's partitions in memory (fetching pauses when many are buffered):
//! - **Packs.** A Kafka record whose value is a pack is split into its records,
//!   each a delivery of its own; its offset counts as acked once all of them are. A nack of
//!   one, or a stream lost with some of them unacked, gives all of them back (the consumer
//!   deduplicates the ones it had acked). A record whose framing does not add up is handed out
//!   whole.
//! - **Order per key.** A key's records are in one partition, which one stream owns at a
//!   time. A stream hands out a key's records in order, and at most `key_window` of them
//!   unsettled at once (a packed Kafka record counts once; so a busy room's records go through in batches; with 1, a key's next
//!   record waits for the previous one's ack). A nacked record goes back in front of its key's
//!   later records without re-fetching, together with the key's later deliveries still in
//!   hand, which can then no longer be acked (their nack is a no-op), so the key's records
//!   are handed out again in order.
//! - **Commits.** Per partition the committed offset is the lowest offset not yet acked (acks
//!   arrive in any order); commits are asynchronous, at most every 100 ms, and synchronous when
//!   partitions are revoked and when a stream ends. The offsets acked above the committed one
//!   travel in the commit's metadata (`roomcast-acked:` ranges, up to 3,500 bytes) and, when a
//!   stream gives partitions up, in a `partition/acked/group` record of `{prefix}.attempts`
//!   together with the position (for brokers that do not return commit metadata, and for a
//!   last commit that fails because a rebalance is under way); the next owner skips them and
//!   everything below that position, so an acked record is not delivered again after a
//!   rebalance or restart.
//! - **Rebalances.** When partitions are revoked, the stream stops handing out their records
//!   and waits (up to `revoke_timeout_ms`) until their deliveries are settled, so that a key is
//!   never held by two streams, then commits. After the timeout the deliveries can no longer
//!   be acked (`ack` fails with `Unavailable`); the new owner redelivers them.
//! - **Attempts.** Kafka does not count deliveries, so the stream writes a counter to
//!   `{prefix}.attempts` (key `partition/offset/group`) before handing out a record that may
//!   have been delivered before: the first record after an assignment (the resume point),
//!   redeliveries after a nack, and records that already have a counter. When a stream ends or
//!   loses partitions, it writes counters for its unsettled deliveries. A stream reads the
//!   counters of a partition when it is assigned. The common path, a record's first delivery
//!   in a running stream, costs no extra round trip. An ack deletes the record's counter
//!   (tombstone). A record that a crashed process delivered after its resume point is
//!   delivered again with an attempt count one too low.
//! - **Dropping a stream** commits what is acked, records the counters of its unsettled
//!   deliveries and leaves the group; its partitions move to the other streams. A stream of
//!   the same group opened on the same broker meanwhile waits (up to `revoke_timeout_ms`)
//!   until the dropped ones are gone: a coordinator that does not wait for a busy member to
//!   rejoin (tansu 0.6) could otherwise assign it their partitions before their last commit
//!   lands, and it would deliver acked records again.
//!
//! # Fan-out
//! Each subscription is a consumer without a group, assigned every partition of
//! `{prefix}.fanout` at the partitions' end offsets, read before `open` returns (so nothing
//! published after `open` is missed). Rooms are filtered locally. A consumer error, or a full
//! buffer (`fanout_buffer`), yields [`FanoutEvent::Gap`].

mod config;
mod consumer;
mod fanout;
pub mod replay;
mod topics;

use crate::pack::{self, Outbound, Packer, Sender};
use crate::{
    Broker, BrokerError, DeadLetterSink, EventConsumer, EventPublisher, EventStream, FanoutSource,
    FanoutSubscription,
};
use async_trait::async_trait;
use bytes::Bytes;
use config::KafkaConfig;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topics::{create_topics, partition_count};

/// How long metadata requests (health, topic checks) may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the Kafka cluster named by `url`, creating the topics if they are missing (and
/// `create_topics` is on).
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>, BrokerError> {
    let broker: Arc<dyn Broker> = KafkaBroker::connect(url).await?;
    Ok(broker)
}

/// What the broker, its streams and subscriptions share.
pub(crate) struct KafkaClient {
    settings: KafkaConfig,
    producer: FutureProducer,
    events_topic: String,
    fanout_topic: String,
    dead_letter_topic: String,
    attempts_topic: String,
    /// Partitions of the attempts topic.
    attempts_partitions: i32,
    /// Cancelled by [`Broker::close`].
    closed: CancellationToken,
    /// The threads of the streams, awaited by [`Broker::close`].
    streams: TaskTracker,
    /// Dropped streams still handing their partitions over, by group: cancelled once gone.
    leaving: std::sync::Mutex<Vec<(String, CancellationToken)>>,
}

impl KafkaClient {
    /// Notes that a stream of `group` was dropped; `left` is cancelled once it is gone.
    pub(crate) fn leaving(&self, group: &str, left: CancellationToken) {
        let mut leaving = self.leaving.lock().unwrap_or_else(|e| e.into_inner());
        leaving.retain(|(_, left)| !left.is_cancelled());
        leaving.push((group.to_owned(), left));
    }

    /// Waits (up to `revoke_timeout_ms`) until the dropped streams of `group` have handed their
    /// partitions over: a stream opened meanwhile could be assigned them before their last
    /// commit and the records for the next owner are stored, and deliver acked records again.
    async fn left(&self, group: &str) {
        let pending: Vec<CancellationToken> = {
            let mut leaving = self.leaving.lock().unwrap_or_else(|e| e.into_inner());
            leaving.retain(|(_, left)| !left.is_cancelled());
            leaving
                .iter()
                .filter(|(g, _)| g == group)
                .map(|(_, left)| left.clone())
                .collect()
        };
        if pending.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(pending.iter().map(|left| left.cancelled()));
        let wait = Duration::from_millis(self.settings.revoke_timeout_ms);
        if tokio::time::timeout(wait, all).await.is_err() {
            tracing::warn!(
                group,
                "kafka: a dropped stream did not leave its group within {wait:?}"
            );
        }
    }
}

/// The Kafka backend; see the module documentation.
pub struct KafkaBroker {
    shared: Arc<KafkaClient>,
    /// Packs a room's concurrent inbound publishes; `None` with `pack=1`.
    packer: Option<Arc<Packer>>,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("bootstrap", &self.shared.settings.bootstrap)
            .field("prefix", &self.shared.settings.prefix)
            .finish()
    }
}

impl KafkaBroker {
    /// Connects to the cluster named by `url` (see the module documentation).
    pub async fn connect(url: &str) -> Result<Arc<KafkaBroker>, BrokerError> {
        let settings = KafkaConfig::parse(url)?;
        let producer: FutureProducer = producer_config(&settings)
            .create()
            .map_err(|e| BrokerError::Config(format!("kafka producer: {e}")))?;
        let events_topic = settings.events_topic();
        let fanout_topic = settings.fanout_topic();
        let dead_letter_topic = settings.dead_letter_topic();
        let attempts_topic = settings.attempts_topic();
        if settings.create_topics {
            create_topics(&settings).await?;
        }
        let mut partitions = Vec::new();
        for topic in [
            &events_topic,
            &fanout_topic,
            &dead_letter_topic,
            &attempts_topic,
        ] {
            partitions.push(partition_count(&producer, topic, &settings).await?);
        }
        let shared = Arc::new(KafkaClient {
            attempts_partitions: partitions[3],
            settings,
            producer,
            events_topic,
            fanout_topic,
            dead_letter_topic,
            attempts_topic,
            closed: CancellationToken::new(),
            streams: TaskTracker::new(),
            leaving: std::sync::Mutex::new(Vec::new()),
        });
        let packer = (shared.settings.pack > 1).then(|| {
            Arc::new(Packer::new(
                shared.settings.pack,
                shared.settings.pack_window,
                packed_sender(&shared),
            ))
        });
        Ok(Arc::new(KafkaBroker { shared, packer }))
    }

    /// [`BrokerError::Closed`] once [`Broker::close`] has begun.
    fn check_open(&self) -> Result<(), BrokerError> {
        if self.shared.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        Ok(())
    }

    async fn produce(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), BrokerError> {
        self.check_open()?;
        self.shared.produce(topic, key, payload).await
    }
}

impl KafkaClient {
    /// Queues a record in the producer and returns the wait for its delivery report; when the
    /// producer's queue is full, waits for room first (keeping the caller's order). `records`
    /// is the number of records packed into `payload`, when several.
    async fn start_produce(
        &self,
        topic: String,
        key: &str,
        records: Option<u32>,
        payload: Bytes,
    ) -> Result<crate::PendingPublish, BrokerError> {
        let payload = match records {
            Some(records) => pack::tag(records, &payload),
            None => payload,
        };
        let record = || FutureRecord::to(&topic).key(key).payload(&payload[..]);
        match self.producer.send_result(record()) {
            Ok(delivery) => Ok(Box::pin(async move {
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(produce_error(&topic, &error)),
                    Err(_) => Err(BrokerError::Unavailable(
                        "the Kafka producer dropped a publish".into(),
                    )),
                }
            })),
            Err(_) => match self
                .producer
                .send(record(), self.settings.message_timeout())
                .await
            {
                Ok(_) => Ok(Box::pin(std::future::ready(Ok(())))),
                Err((error, _)) => Err(produce_error(&topic, &error)),
            },
        }
    }

    /// Produces one record and waits for its delivery report.
    async fn produce(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), BrokerError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match self
            .producer
            .send(record, self.settings.message_timeout())
            .await
        {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(produce_error(topic, &error)),
        }
    }
}

/// The records of a fetched record: the record itself, or the records packed into it when its
/// body is a pack ([`pack::tag`]; a pack whose framing does not add up is handed out whole).
fn unpack(key: &str, payload: Bytes) -> Vec<Bytes> {
    match pack::untag(&payload) {
        None => vec![payload],
        Some(Some(records)) => records,
        Some(None) => {
            tracing::warn!(
                key,
                bytes = payload.len(),
                "a packed record's framing does not add up; handing it out whole"
            );
            vec![payload]
        }
    }
}

/// Maps a produce failure: refusals of the record itself are `Rejected`, the rest (timeouts,
/// lost connections, no leader) `Unavailable`.
fn produce_error(topic: &str, error: &KafkaError) -> BrokerError {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::PolicyViolation,
        ) => BrokerError::Rejected(format!("kafka refused a record for {topic}: {error}")),
        _ => BrokerError::Unavailable(format!("kafka produce to {topic}: {error}")),
    }
}

fn base_config(settings: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap)
        .set("client.id", format!("roomcast-{}", settings.prefix))
        .set("socket.keepalive.enable", "true")
        .set("log_level", "3");
    config
}

fn producer_config(settings: &KafkaConfig) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", settings.linger_ms.to_string())
        .set("batch.size", settings.batch_size.to_string())
        .set("compression.type", "lz4")
        .set(
            "message.timeout.ms",
            settings.message_timeout_ms.to_string(),
        )
        .set(
            "request.timeout.ms",
            settings.message_timeout_ms.min(30_000).to_string(),
        )
        .set("queue.buffering.max.messages", "1000000");
    config
}

#[async_trait]
impl EventPublisher for KafkaBroker {
    /// The record's place is fixed once it is queued for its room's next message (or, with
    /// `pack=1`, in the producer's queue of its partition: the idempotent producer keeps that
    /// order); the future waits for the delivery report of the message that carries it.
    async fn start_publish(
        &self,
        key: &str,
        payload: Bytes,
    ) -> Result<crate::PendingPublish, BrokerError> {
        self.check_open()?;
        if let Some(packer) = &self.packer {
            return Ok(packer.start(key, payload));
        }
        let topic = self.shared.events_topic.clone();
        self.shared.start_produce(topic, key, None, payload).await
    }
}

/// Produces the packer's messages to the inbound topic.
fn packed_sender(shared: &Arc<KafkaClient>) -> Sender {
    let shared = Arc::downgrade(shared);
    Arc::new(move |out: Outbound| {
        let shared = shared.upgrade();
        Box::pin(async move {
            let shared = shared.ok_or(BrokerError::Closed)?;
            let topic = shared.events_topic.clone();
            shared
                .start_produce(topic, &out.key, out.records, out.body)
                .await
        })
    })
}

#[async_trait]
impl EventConsumer for KafkaBroker {
    async fn consume(&self, group: &str) -> Result<Box<dyn EventStream>, BrokerError> {
        self.check_open()?;
        if group.is_empty() {
            return Err(BrokerError::Config(
                "consumer group must not be empty".into(),
            ));
        }
        self.shared.left(group).await;
        let stream = consumer::KafkaStream::start(self.shared.clone(), group)?;
        Ok(Box::new(stream))
    }
}

#[async_trait]
impl DeadLetterSink for KafkaBroker {
    async fn dead_letter(&self, key: &str, payload: Bytes) -> Result<(), BrokerError> {
        self.produce(&self.shared.dead_letter_topic, key, &payload)
            .await
    }
}

#[async_trait]
impl FanoutSource for KafkaBroker {
    async fn open(&self) -> Result<Box<dyn FanoutSubscription>, BrokerError> {
        self.check_open()?;
        let subscription = fanout::KafkaSubscription::open(self.shared.clone()).await?;
        Ok(Box::new(subscription))
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn health(&self) -> Result<(), BrokerError> {
        self.check_open()?;
        let producer = self.shared.producer.clone();
        let topic = self.shared.events_topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| BrokerError::Unavailable(format!("kafka metadata: {e}")))
        })
        .await
        .map_err(|e| BrokerError::Unavailable(format!("kafka health task: {e}")))?
    }

    async fn close(&self) {
        self.shared.closed.cancel();
        self.shared.streams.close();
        let producer = self.shared.producer.clone();
        let timeout = self.shared.settings.message_timeout();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout));
        if let Ok(Err(error)) = flushed.await {
            tracing::warn!(%error, "kafka: flushing the producer on close failed");
        }
        let wait = Duration::from_millis(self.shared.settings.session_timeout_ms) * 2;
        if tokio::time::timeout(wait, self.shared.streams.wait())
            .await
            .is_err()
        {
            tracing::warn!("kafka: streams did not stop within {wait:?} of close");
        }
    }
}
