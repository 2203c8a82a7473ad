//! Roomcast's durable bus.
//!
//! # Layout
//! - this file: the traits every backend implements, with the delivery contract in their
//!   documentation, and [`BrokerError`].
//! - [`embedded`]: the default backend, a durable log in SQLite inside the Roomcast process.
//! - `amqp` (feature `rabbitmq`) and `kafka` (feature `kafka`): the networked backends; both
//!   features are on by default, and a build without one refuses its URLs with
//!   [`BrokerError::MissingBackend`].
//! - `testkit` (feature `testkit`): the contract test suite that every backend must pass.
//! - [`connect`]: opens the backend named by a broker URL.
//! - `links`: [`GatewayLink`] and [`WorkerLink`], the parts of a [`Broker`] each side uses.
//! - `history`: [`open_history`], replaying the inbound stream's retained history (Kafka).
//!
//! # Delivery contract
//! There are two streams.
//!
//! **Inbound** (gateway → worker) carries [`InboundEvent`](roomcast_schemas::InboundEvent)s,
//! durable and at-least-once:
//! 1. [`EventPublisher::publish`] returns `Ok` only after the broker has stored the record
//!    durably (committed to disk, or confirmed by the broker). An `Err` means the record may or
//!    may not be stored: the caller must not report success and may retry with the same record.
//! 2. Records are consumed by competing consumers of one group ([`EventConsumer::consume`]).
//!    A record stays in the stream until a consumer acks it; a record delivered but never acked
//!    (nack, consumer dropped, process crash, restart) is delivered again. Consumers must
//!    therefore be idempotent (the worker deduplicates by event id). A backend may store
//!    several records of one key as one broker message (RabbitMQ and Kafka pack a room's
//!    concurrent publishes); such a message leaves the stream once all its records are acked,
//!    so when a stream is lost with only some of them acked, all of them are delivered again,
//!    in order (on Kafka also when one of them is nacked).
//! 3. Order per key: records published with the same key (the room) are delivered in publish
//!    order, and a key is held by one stream at a time: while a stream has unacked deliveries
//!    of a key, no other stream of the group receives any of that key's records. The holding
//!    stream may receive the key's later records before the earlier ones are acked (in order,
//!    several in one batch), so a busy room is processed in batches. A nacked delivery, or an
//!    unacked one of a dropped stream, is delivered again before the key's later records; a
//!    consumer that nacks a delivery nacks its later deliveries of the same key with it (it
//!    must not ack a key's record after nacking an earlier one).
//! 4. [`Delivery::attempt`] counts deliveries of the record (1 on the first), so consumers can
//!    dead-letter records that keep failing ([`DeadLetterSink`]).
//!
//! **Fan-out** (worker → gateways) carries [`FanoutMessage`](roomcast_schemas::FanoutMessage)s,
//! transient and best-effort: a subscriber receives the messages of the rooms it subscribed to,
//! per room in publish order, while it is subscribed. Messages may be lost on overload or
//! reconnection; the subscription then yields [`FanoutEvent::Gap`] and the gateway recovers
//! the missed messages from the store. Durability lives in the inbound stream and the store,
//! never in fan-out.

#[cfg(feature = "rabbitmq")]
pub mod amqp;
mod connect;
pub mod embedded;
mod history;
#[cfg(feature = "kafka")]
pub mod kafka;
mod links;
#[cfg(any(feature = "rabbitmq", feature = "kafka"))]
mod pack;
#[cfg(feature = "testkit")]
pub mod testkit;
mod url_settings;

use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use thiserror::Error;

pub use connect::{connect, redact_url};
pub use embedded::{EmbeddedBroker, EmbeddedOptions, EmbeddedStats};
pub use history::{HistoryReader, ReplayRange, ReplayRecord, ReplayStart, open_history};
pub use links::{GatewayLink, WorkerLink};
pub use url_settings::SettingError;

/// A broker failure. Messages are for logs; clients only ever see `unavailable`.
///
/// `Clone`, so that one failure can end each of several operations (the records of a pack,
/// the events of a fan-out record).
#[derive(Debug, Clone, Error)]
pub enum BrokerError {
    /// The broker could not be reached or the connection was lost.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the operation (negative confirm, quota, bad name).
    #[error("broker rejected the operation: {0}")]
    Rejected(String),
    /// The backend's storage failed.
    #[error("broker storage error: {0}")]
    Storage(#[source] Arc<sqlx::Error>),
    /// The broker URL or settings are invalid.
    #[error("invalid broker configuration: {0}")]
    Config(String),
    /// A setting in the broker URL's query is unknown or has a bad value.
    #[error("invalid broker URL: {0}")]
    Setting(#[from] SettingError),
    /// The URL names a backend this build was compiled without.
    #[error("this build has no {backend} support; rebuild with the `{feature}` feature")]
    MissingBackend {
        /// The backend's name (`RabbitMQ`, `Kafka`).
        backend: &'static str,
        /// The Cargo feature of `roomcast-broker` that includes it.
        feature: &'static str,
    },
    /// The backend named by the URL keeps no history of the inbound stream to replay.
    #[error(
        "`{url}` keeps no history: replays read a Kafka inbound topic and this is not a kafka:// \
         URL (the embedded and RabbitMQ backends delete events once they are processed)"
    )]
    NoHistory {
        /// The URL, its password hidden.
        url: String,
    },
    /// The broker, stream or subscription was closed.
    #[error("broker closed")]
    Closed,
}

impl From<sqlx::Error> for BrokerError {
    fn from(error: sqlx::Error) -> Self {
        BrokerError::Storage(Arc::new(error))
    }
}

/// A publish whose place in its key's order is fixed and whose durability is still pending:
/// resolves like [`EventPublisher::publish`] once the record is durable (or not).
pub type PendingPublish = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// Durable publishing of inbound events (the gateway's side of the inbound stream).
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Starts a publish of `payload` under `key` (the room): returns once the record's place
    /// in its key's order is fixed, with a future that resolves when it is durable (with
    /// [`publish`](Self::publish)'s meaning). Records started by one caller one after another,
    /// each start awaited, keep that order per key, however their durability futures are
    /// awaited; so a caller keeps many publishes in flight (pipelined) without losing its
    /// order.
    ///
    /// Many calls may be in flight at once; a backend batches them (group commit, pipelined
    /// confirms) but confirms each only after it is durable.
    async fn start_publish(&self, key: &str, payload: Bytes)
    -> Result<PendingPublish, BrokerError>;

    /// Stores `payload` under `key` (the room) and returns once it is durable: starts the
    /// publish and awaits its confirm. Records published by one caller one after another,
    /// each awaited, keep their order per key.
    async fn publish(&self, key: &str, payload: Bytes) -> Result<(), BrokerError> {
        self.start_publish(key, payload).await?.await
    }
}

/// Competing-consumer consumption of the inbound stream (the worker's side).
#[async_trait]
pub trait EventConsumer: Send + Sync {
    /// Joins the consumer group `group` and returns a stream of deliveries. Several streams of
    /// one group share the records between them; each record goes to one stream at a time.
    async fn consume(&self, group: &str) -> Result<Box<dyn EventStream>, BrokerError>;
}

/// A consumer's stream of deliveries. Dropping it releases its unacked deliveries for
/// redelivery.
#[async_trait]
pub trait EventStream: Send {
    /// Waits for at least one delivery and returns up to `max` that are ready, in order.
    ///
    /// Cancel-safe: dropping the future before it completes (e.g. in a `select!` with a
    /// shutdown signal) loses no record; whatever it had picked is delivered again.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BrokerError>;
}

/// How a delivery is settled; implemented by each backend.
#[async_trait]
pub trait Settle: Send + Sync {
    /// The record is processed: remove it from the stream.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// The record was not processed: deliver it again (before the key's later records, whose
    /// deliveries to this stream are released with it).
    async fn nack(self: Box<Self>) -> Result<(), BrokerError>;
}

/// One record handed to a consumer; settle it with [`Delivery::ack`] or [`Delivery::nack`].
pub struct Delivery {
    /// The key it was published with (the room).
    pub key: String,
    /// The payload as published.
    pub payload: Bytes,
    /// How many times this record has been delivered, this delivery included (1 at first).
    pub attempt: u32,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("key", &self.key)
            .field("payload_len", &self.payload.len())
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Delivery {
    /// Builds a delivery; for backend implementations.
    pub fn new(key: String, payload: Bytes, attempt: u32, settle: Box<dyn Settle>) -> Self {
        Delivery {
            key,
            payload,
            attempt,
            settle,
        }
    }

    /// Acknowledges the record: it will not be delivered again.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.settle.ack().await
    }

    /// Rejects the record for now: it will be delivered again.
    pub async fn nack(self) -> Result<(), BrokerError> {
        self.settle.nack().await
    }
}

/// Where events that cannot be processed go, with the reason.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Stores a [`DeadLetter`](roomcast_schemas::DeadLetter) document durably.
    async fn dead_letter(&self, key: &str, payload: Bytes) -> Result<(), BrokerError>;
}

/// Publishing of fan-out messages (the worker's side of fan-out).
#[async_trait]
pub trait FanoutPublisher: Send + Sync {
    /// Starts a fan-out publish of `payload` for the subscribers of `room`: returns once the
    /// message's place in its room's order is fixed, with a future that resolves when the
    /// broker accepted it, so a worker publishes a batch's messages pipelined, in order.
    async fn start_publish_fanout(
        &self,
        room: &str,
        payload: Bytes,
    ) -> Result<PendingPublish, BrokerError>;

    /// Publishes `payload` for the subscribers of `room`; returns once the broker accepted it
    /// (starts the publish and awaits its acceptance).
    async fn publish_fanout(&self, room: &str, payload: Bytes) -> Result<(), BrokerError> {
        self.start_publish_fanout(room, payload).await?.await
    }
}

/// What a fan-out subscription yields.
#[derive(Debug, Clone)]
pub enum FanoutEvent {
    /// A message of a subscribed room.
    Message {
        /// Room name.
        room: Arc<str>,
        /// The [`FanoutMessage`](roomcast_schemas::FanoutMessage) as published.
        payload: Bytes,
    },
    /// Messages may have been missed (overload, reconnection): recover from the store.
    Gap,
}

/// A gateway's subscription to fan-out messages, by room.
#[async_trait]
pub trait FanoutSubscription: Send + Sync {
    /// Starts receiving `room`'s messages; returns once the subscription is in effect, so
    /// that every message published afterwards is received. Idempotent.
    async fn subscribe(&self, room: &str) -> Result<(), BrokerError>;
    /// Stops receiving `room`'s messages. Idempotent.
    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError>;
    /// Waits for the next event. `Err(Closed)` when the broker shut down.
    ///
    /// Cancel-safe: dropping the future before it completes loses no event (gateways poll it
    /// once without waiting to drain whatever is ready).
    async fn next(&self) -> Result<FanoutEvent, BrokerError>;
}

/// Opening fan-out subscriptions.
#[async_trait]
pub trait FanoutSource: Send + Sync {
    /// Opens a new subscription with no rooms.
    async fn open(&self) -> Result<Box<dyn FanoutSubscription>, BrokerError>;
}

/// A complete backend: both streams, dead letters and a health check.
#[async_trait]
pub trait Broker:
    EventPublisher + EventConsumer + DeadLetterSink + FanoutPublisher + FanoutSource
{
    /// The backend's name, for logs and `/readyz` (`embedded`, `rabbitmq`, `kafka`).
    fn name(&self) -> &'static str;
    /// Checks that the broker is reachable.
    async fn health(&self) -> Result<(), BrokerError>;
    /// Shuts the broker down gracefully: finishes pending writes, releases the backend's
    /// resources, and makes streams, subscriptions and later calls return
    /// [`BrokerError::Closed`]. The default does nothing.
    async fn close(&self) {}
}

/// Checking that the broker is reachable (for `/readyz`); the links' health check of a
/// [`Broker`] (see [`GatewayLink`]).
#[async_trait]
pub trait Health: Send + Sync {
    /// The backend's name, for logs and `/readyz` (`embedded`, `rabbitmq`, `kafka`).
    fn backend(&self) -> &'static str;
    /// Checks that the broker is reachable.
    async fn check(&self) -> Result<(), BrokerError>;
}
