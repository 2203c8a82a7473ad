//! The RabbitMQ backend (`amqp://` and `amqps://` URLs), built on `lapin`.
//!
//! # URL
//! `amqp://user:password@host:port/vhost?param=value&…` (`amqps://` for TLS with the system's
//! root certificates; the vhost `/` is written `%2f`). Parameters:
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `prefix` | `roomcast` | namespace of every exchange and queue (`A–Z a–z 0–9 _ - .`) |
//! | `shards` | 16 | inbound shard queues; every instance of one prefix must use the same number |
//! | `queue_type` | `quorum` | `quorum` or `classic`, for the shard and dead-letter queues |
//! | `prefetch` | 64 | unacked deliveries per shard consumer |
//! | `key_window` | 64 | unsettled deliveries of one room a stream hands out at once (a busy room goes to the worker in batches) |
//! | `pack` | 64 | most inbound records of one room packed into one message (1: no packing, every record its own message, pipelined) |
//! | `confirm_timeout_ms` | 10000 | longest wait for a publisher confirm |
//! | `op_timeout_ms` | 15000 | longest wait for connecting, declaring, binding |
//! | `reconnect_max_ms` | 10000 | longest pause between reconnection attempts |
//! | `heartbeat` | 10 | AMQP heartbeat in seconds |
//! | `frame_max`, `channel_max`, `connection_timeout`, `auth_mechanism` | | passed to the client |
//!
//! Values are percent-decoded; unknown parameters and bad values are [`BrokerError::Setting`]
//! errors naming the parameter. The connection's `connection_name` client
//! property is `roomcast <prefix> pid <pid>` (`rabbitmqctl list_connections pid
//! client_properties`; the management UI shows it as the connection's name).
//!
//! # Topology
//! Declared (idempotently) on every connection:
//! - `{prefix}.events`: durable direct exchange of the inbound stream. A record goes with
//!   routing key = its shard, FNV-1a of the room modulo `shards`, and its room in the
//!   `roomcast-key` header; persistent (delivery mode 2), mandatory, confirmed. A room's
//!   records published while its previous message awaits its confirm go together as one
//!   message (its number of records in the `roomcast-records` header, each record framed by
//!   a 4-byte big-endian length).
//! - `{prefix}.events.{0..shards}`: durable quorum queues with
//!   `x-single-active-consumer`, bound by shard number.
//! - `{prefix}.fanout`: durable direct exchange of fan-out messages, routing key = room,
//!   transient (delivery mode 1).
//! - `{prefix}.dead-letters`: durable fanout exchange and durable quorum queue bound to it.
//! - Per fan-out subscription: a server-named, exclusive, auto-delete queue bound to
//!   `{prefix}.fanout` once per subscribed room, so a gateway receives only rooms it has
//!   members in. RabbitMQ's routing keys hold 255 bytes; Roomcast's room names hold 128.
//!
//! # Inbound delivery
//! [`consume`](crate::EventConsumer::consume) opens a channel and registers one consumer on
//! every shard queue. Each shard queue has a single active consumer: RabbitMQ delivers a
//! shard's records to one stream at a time, in queue order, so a room is never held by two
//! streams. The other streams' consumers wait; when the active stream is dropped or its
//! connection is lost, its unacked deliveries return to the queue ahead of later records and
//! the next waiting consumer becomes active (failover). A stream registers its shards starting
//! at a rotating offset, so streams that join together become active on different shards;
//! a stream that joins later waits for another to leave (RabbitMQ 3.10 does not move an active
//! consumer), so run at least as many workers as needed for capacity and expect the first to
//! start to take the shards it reaches first.
//!
//! A packed message is split back into its records as it arrives; it is acked at RabbitMQ
//! with its last record, so a stream lost with part of a pack acked gives the whole pack back
//! (the worker's store deduplicates).
//!
//! Within a stream, deliveries wait in a buffer (up to `prefetch` per shard) and are handed out
//! in arrival order, at most `key_window` unsettled deliveries per room. An ack goes to
//! RabbitMQ; acks requested together (a batch settled at once) are coalesced into one
//! `multiple` ack for the run of delivery tags from the channel's lowest unacked one, and sent
//! one by one above a delivery still in hand, so an ack never covers an unsettled delivery and
//! never waits for one. An ack on a closed channel is an error. A nack keeps the record: it goes back to its place in the buffer, before its room's
//! later records, and is handed out again with its attempt count raised. Records stay unacked
//! at RabbitMQ until acked, so a dropped stream or a lost connection returns them all.
//!
//! [`Delivery::attempt`](crate::Delivery::attempt) is RabbitMQ's `x-delivery-count` (the number
//! of times a quorum queue took the record back: stream dropped, connection lost, restart) plus
//! one, plus the nacks of the current stream; it survives restarts, except the nacks of a stream
//! that is lost (a record prefetched but never handed out also counts a delivery when its
//! stream goes). With classic queues the count is only known as "redelivered" (attempt 2).
//!
//! # Failures and recovery
//! A supervisor task watches the connection (errors reported by the client, failed operations,
//! and a check every second). When it is lost, the backend reports itself unavailable —
//! publishes, `consume` and `health` fail at once with [`BrokerError::Unavailable`], and
//! streams end with it (the worker then calls `consume` again) — and reconnects with
//! exponential backoff (100 ms doubling up to `reconnect_max_ms`), declaring the topology
//! again. Publishes waiting for a confirm when the connection goes fail; a publish is `Ok`
//! only after RabbitMQ's positive confirm. Fan-out subscriptions survive: each re-creates its
//! queue with all its rooms on the new connection and yields [`FanoutEvent::Gap`](crate::FanoutEvent::Gap)
//! once. [`close`](crate::Broker::close) waits briefly for outstanding confirms, then closes
//! the channels and the connection; dropping the broker does the same in the background.

mod acks;
mod config;
mod fanout;
mod inbound;
mod link;
mod publish;

use crate::pack::{Outbound, Packer, Sender};
use crate::{
    Broker, BrokerError, DeadLetterSink, EventConsumer, EventPublisher, EventStream, FanoutSource,
    FanoutSubscription,
};
use async_trait::async_trait;
use bytes::Bytes;
use config::AmqpConfig;
use inbound::AmqpStream;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use link::{AmqpClient, open_session};
use publish::{Outgoing, publish_confirmed, start_confirmed};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Connects to the RabbitMQ broker named by `url` and declares its topology.
///
/// Fails with [`BrokerError::Config`] for an invalid URL, refused credentials or queues that
/// exist with other arguments, and with [`BrokerError::Unavailable`] when RabbitMQ cannot be
/// reached. Once connected, the backend reconnects on its own.
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>, BrokerError> {
    let broker: Arc<dyn Broker> = Arc::new(AmqpBroker::connect(url).await?);
    Ok(broker)
}

/// Deletes every exchange and queue of the prefix named by `url`, messages included (for
/// tests and decommissioning). Queues that do not exist are skipped.
pub async fn delete_topology(url: &str) -> Result<(), BrokerError> {
    let config = AmqpConfig::parse(url)?;
    let session = open_session(&config, 0).await?;
    let result = async {
        let mut queues: Vec<String> = (0..config.shards).map(|s| config.shard_queue(s)).collect();
        queues.push(config.dead_letters());
        for queue in &queues {
            // A missing queue closes the channel: use a channel per deletion.
            let channel = session
                .connection
                .create_channel()
                .await
                .map_err(|e| link::map_error("opening a channel", e))?;
            if channel
                .queue_delete(queue, QueueDeleteOptions::default())
                .await
                .is_ok()
            {
                let _ = channel.close(200, "deleted").await;
            }
        }
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(|e| link::map_error("opening a channel", e))?;
        for exchange in [
            config.events_exchange(),
            config.fanout_exchange(),
            config.dead_letters(),
        ] {
            channel
                .exchange_delete(&exchange, ExchangeDeleteOptions::default())
                .await
                .map_err(|e| link::map_error(&format!("deleting exchange {exchange}"), e))?;
        }
        let _ = channel.close(200, "deleted").await;
        Ok(())
    }
    .await;
    let _ = session.connection.close(200, "topology deleted").await;
    result
}

/// The RabbitMQ backend; see the [module documentation](self).
struct AmqpBroker {
    shared: Arc<AmqpClient>,
    packer: Arc<Packer>,
    supervisor: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl AmqpBroker {
    async fn connect(url: &str) -> Result<Self, BrokerError> {
        let config = AmqpConfig::parse(url)?;
        let config_pack = config.pack;
        let session = open_session(&config, 1).await?;
        let shared = Arc::new(AmqpClient::new(config, session.clone()));
        let supervisor = tokio::spawn(link::supervise(shared.clone(), session));
        Ok(AmqpBroker {
            packer: Arc::new(Packer::new(config_pack, 1, packed_sender(&shared))),
            shared,
            supervisor: tokio::sync::Mutex::new(Some(supervisor)),
        })
    }
}

/// Publishes the packer's messages on the shared confirm channel.
fn packed_sender(shared: &Arc<AmqpClient>) -> Sender {
    let shared = shared.clone();
    Arc::new(move |out: Outbound| {
        let shared = shared.clone();
        Box::pin(async move {
            let exchange = shared.config.events_exchange();
            let shard = shared.config.shard_of(&out.key).to_string();
            start_confirmed(
                &shared,
                Outgoing {
                    exchange: &exchange,
                    routing_key: &shard,
                    key: Some(&out.key),
                    records: out.records,
                    payload: &out.body,
                    persistent: true,
                    mandatory: true,
                },
            )
            .await
        })
    })
}

impl Drop for AmqpBroker {
    /// The supervisor closes the connection.
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

#[async_trait]
impl EventPublisher for AmqpBroker {
    /// The record's place is fixed once it is queued for its room's next message.
    async fn start_publish(
        &self,
        key: &str,
        payload: Bytes,
    ) -> Result<crate::PendingPublish, BrokerError> {
        if self.shared.config.pack > 1 {
            // Fail at once while the connection is down.
            self.shared.session()?;
            return Ok(self.packer.start(key, payload));
        }
        // No packing: every record is a message of its own, pipelined on the channel.
        let shard = self.shared.config.shard_of(key).to_string();
        start_confirmed(
            &self.shared,
            Outgoing {
                exchange: &self.shared.config.events_exchange(),
                routing_key: &shard,
                key: Some(key),
                records: None,
                payload: &payload,
                persistent: true,
                mandatory: true,
            },
        )
        .await
    }
}

#[async_trait]
impl EventConsumer for AmqpBroker {
    async fn consume(&self, group: &str) -> Result<Box<dyn EventStream>, BrokerError> {
        Ok(Box::new(
            AmqpStream::open(self.shared.clone(), group).await?,
        ))
    }
}

#[async_trait]
impl DeadLetterSink for AmqpBroker {
    async fn dead_letter(&self, key: &str, payload: Bytes) -> Result<(), BrokerError> {
        publish_confirmed(
            &self.shared,
            Outgoing {
                exchange: &self.shared.config.dead_letters(),
                routing_key: "",
                key: Some(key),
                records: None,
                payload: &payload,
                persistent: true,
                mandatory: true,
            },
        )
        .await
    }
}

#[async_trait]
impl FanoutSource for AmqpBroker {
    async fn open(&self) -> Result<Box<dyn FanoutSubscription>, BrokerError> {
        Ok(Box::new(
            fanout::AmqpSubscription::open(self.shared.clone()).await?,
        ))
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    async fn health(&self) -> Result<(), BrokerError> {
        let session = self.shared.session()?;
        if session.is_up() {
            Ok(())
        } else {
            session.suspect();
            Err(BrokerError::Unavailable(
                "RabbitMQ connection is down; reconnecting".into(),
            ))
        }
    }

    async fn close(&self) {
        self.shared.closed.cancel();
        if let Some(supervisor) = self.supervisor.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), supervisor).await;
        }
    }
}
