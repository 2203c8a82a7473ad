//! Fan-out subscriptions: one exclusive, auto-delete queue per subscription, bound to the
//! fan-out exchange once per subscribed room, re-created after a reconnection; and the
//! publishing of fan-out messages to that exchange.

use super::AmqpBroker;
use super::link::{AmqpClient, Link, Session, next_delay, reconnect_delays};
use super::publish::{Outgoing, start_confirmed};
use crate::{BrokerError, FanoutEvent, FanoutPublisher, FanoutSubscription};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest AMQP routing key, hence longest room name on RabbitMQ (Roomcast's own limit,
/// `roomcast_schemas::names::MAX_ROOM_LEN`, is lower).
pub(crate) const MAX_ROUTING_KEY: usize = 255;

/// Events waiting in a subscription before its consumer waits for the gateway.
const BUFFER: usize = 4096;

/// The subscription's queue on the current connection.
struct SubLink {
    channel: Channel,
    queue: String,
}

struct Core {
    rooms: BTreeSet<String>,
    /// `None` while the subscription is being re-created.
    link: Option<SubLink>,
}

struct SubscriptionState {
    shared: Arc<AmqpClient>,
    core: tokio::sync::Mutex<Core>,
    /// The subscribed rooms, for dropping messages that arrive after an unsubscribe.
    rooms: Mutex<HashSet<Arc<str>>>,
}

/// A gateway's subscription.
pub(crate) struct AmqpSubscription {
    inner: Arc<SubscriptionState>,
    events: tokio::sync::Mutex<mpsc::Receiver<FanoutEvent>>,
    /// Cancelled when the subscription is dropped.
    stop: CancellationToken,
}

impl AmqpSubscription {
    /// Creates the subscription's queue and starts receiving.
    pub(crate) async fn open(shared: Arc<AmqpClient>) -> Result<Self, BrokerError> {
        let session = shared.session()?;
        let (link, consumer) = create(&shared, &session, &BTreeSet::new()).await?;
        let inner = Arc::new(SubscriptionState {
            shared,
            core: tokio::sync::Mutex::new(Core {
                rooms: BTreeSet::new(),
                link: Some(link),
            }),
            rooms: Mutex::new(HashSet::new()),
        });
        let (tx, rx) = mpsc::channel(BUFFER);
        let stop = CancellationToken::new();
        tokio::spawn(run(
            inner.clone(),
            consumer,
            session.generation,
            tx,
            stop.clone(),
        ));
        Ok(AmqpSubscription {
            inner,
            events: tokio::sync::Mutex::new(rx),
            stop,
        })
    }
}

impl Drop for AmqpSubscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Declares a server-named exclusive, auto-delete queue on a new channel, binds `rooms` and
/// starts consuming (without acks: fan-out is best-effort).
async fn create(
    shared: &AmqpClient,
    session: &Session,
    rooms: &BTreeSet<String>,
) -> Result<(SubLink, Consumer), BrokerError> {
    let channel = shared
        .timed(
            session,
            "opening a fan-out channel",
            session.connection.create_channel(),
        )
        .await?;
    let result = async {
        let queue = shared
            .timed(
                session,
                "declaring a fan-out queue",
                channel.queue_declare(
                    "",
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
        let queue = queue.name().as_str().to_owned();
        let exchange = shared.config.fanout_exchange();
        for room in rooms {
            shared
                .timed(
                    session,
                    "binding a fan-out queue",
                    channel.queue_bind(
                        &queue,
                        &exchange,
                        room,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
        }
        let consumer = shared
            .timed(
                session,
                "consuming a fan-out queue",
                channel.basic_consume(
                    &queue,
                    "",
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
        Ok::<_, BrokerError>((queue, consumer))
    }
    .await;
    match result {
        Ok((queue, consumer)) => Ok((SubLink { channel, queue }, consumer)),
        Err(error) => {
            let _ = channel.close(200, "fan-out setup failed").await;
            Err(error)
        }
    }
}

/// Forwards the consumer's messages; when the connection is lost, re-creates the queue with
/// every subscribed room on the next connection and reports a gap.
async fn run(
    inner: Arc<SubscriptionState>,
    consumer: Consumer,
    mut generation: u64,
    tx: mpsc::Sender<FanoutEvent>,
    stop: CancellationToken,
) {
    let shared = inner.shared.clone();
    let mut consumer = Some(consumer);
    let mut link_rx = shared.link.subscribe();
    let mut delays = reconnect_delays(&shared.config);
    let mut retry = next_delay(&mut delays, &shared.config);
    loop {
        if let Some(current) = consumer.as_mut() {
            let item = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = shared.closed.cancelled() => break,
                item = current.next() => item,
            };
            match item {
                Some(Ok(delivery)) => {
                    let event = FanoutEvent::Message {
                        room: Arc::from(delivery.routing_key.as_str()),
                        payload: Bytes::from(delivery.data),
                    };
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => break,
                        sent = tx.send(event) => if sent.is_err() { break },
                    }
                }
                _ => {
                    // The channel or the connection is gone: re-create the queue.
                    consumer = None;
                    if let Some(link) = inner.core.lock().await.link.take() {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            link.channel.close(200, "re-creating"),
                        )
                        .await;
                    }
                }
            }
            continue;
        }
        // Wait for a working connection.
        let session = match shared.session() {
            Ok(session) if session.is_up() => session,
            Err(BrokerError::Closed) => break,
            _ => {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = shared.closed.cancelled() => break,
                    _ = link_rx.changed() => {}
                    () = tokio::time::sleep(retry) => {}
                }
                retry = next_delay(&mut delays, &shared.config);
                continue;
            }
        };
        let mut core = inner.core.lock().await;
        match create(&shared, &session, &core.rooms).await {
            Ok((link, created)) => {
                core.link = Some(link);
                drop(core);
                consumer = Some(created);
                delays = reconnect_delays(&shared.config);
                retry = next_delay(&mut delays, &shared.config);
                if session.generation != generation {
                    tracing::info!("fan-out subscription re-created after a reconnection");
                }
                generation = session.generation;
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    sent = tx.send(FanoutEvent::Gap) => if sent.is_err() { break },
                }
            }
            Err(error) => {
                drop(core);
                tracing::warn!(%error, "re-creating a fan-out subscription failed");
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = shared.closed.cancelled() => break,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = next_delay(&mut delays, &shared.config);
            }
        }
    }
    // Closing the channel deletes the queue (auto-delete, exclusive).
    let link = inner.core.lock().await.link.take();
    let closing = matches!(&*shared.link.borrow(), Link::Closed);
    if let Some(link) = link
        && !closing
    {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            link.channel.close(200, "subscription closed"),
        )
        .await;
    }
}

fn check_room(room: &str) -> Result<(), BrokerError> {
    if room.is_empty() || room.len() > MAX_ROUTING_KEY {
        return Err(BrokerError::Rejected(format!(
            "room name must be 1-{MAX_ROUTING_KEY} bytes on RabbitMQ"
        )));
    }
    Ok(())
}

#[async_trait]
impl FanoutSubscription for AmqpSubscription {
    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        check_room(room)?;
        let shared = &self.inner.shared;
        if shared.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        let mut core = self.inner.core.lock().await;
        if !core.rooms.insert(room.to_owned()) {
            return Ok(());
        }
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Arc::from(room));
        if let Some(link) = &core.link {
            let bound = tokio::time::timeout(
                shared.config.op_timeout,
                link.channel.queue_bind(
                    &link.queue,
                    &shared.config.fanout_exchange(),
                    room,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await;
            match bound {
                Ok(Ok(())) => {}
                // A failed bind closes the channel: the subscription is re-created with the
                // room bound, and yields a gap.
                Ok(Err(error)) => {
                    tracing::debug!(%error, room, "fan-out bind failed; re-creating");
                }
                Err(_) => {
                    core.rooms.remove(room);
                    self.inner
                        .rooms
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(room);
                    return Err(BrokerError::Unavailable(format!(
                        "binding a fan-out queue: no answer within {:?}",
                        shared.config.op_timeout
                    )));
                }
            }
        }
        // Without a link, the subscription is being re-created: the room is bound then, and
        // a gap follows.
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError> {
        let shared = &self.inner.shared;
        if shared.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        let mut core = self.inner.core.lock().await;
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room);
        if !core.rooms.remove(room) {
            return Ok(());
        }
        if let Some(link) = &core.link {
            // A failure closes the channel: the re-created queue lacks the room anyway.
            let _ = tokio::time::timeout(
                shared.config.op_timeout,
                link.channel.queue_unbind(
                    &link.queue,
                    &shared.config.fanout_exchange(),
                    room,
                    FieldTable::default(),
                ),
            )
            .await;
        }
        Ok(())
    }

    async fn next(&self) -> Result<FanoutEvent, BrokerError> {
        let closed = self.inner.shared.closed.clone();
        let mut events = tokio::select! {
            biased;
            () = closed.cancelled() => return Err(BrokerError::Closed),
            events = self.events.lock() => events,
        };
        loop {
            let event = tokio::select! {
                biased;
                () = closed.cancelled() => return Err(BrokerError::Closed),
                event = events.recv() => event,
            };
            match event {
                Some(FanoutEvent::Message { room, payload }) => {
                    let subscribed = self
                        .inner
                        .rooms
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&room);
                    if subscribed {
                        return Ok(FanoutEvent::Message { room, payload });
                    }
                }
                Some(FanoutEvent::Gap) => return Ok(FanoutEvent::Gap),
                None => return Err(BrokerError::Closed),
            }
        }
    }
}

#[async_trait]
impl FanoutPublisher for AmqpBroker {
    /// The message's place is fixed once it is handed to the shared publishing channel.
    async fn start_publish_fanout(
        &self,
        room: &str,
        payload: Bytes,
    ) -> Result<crate::PendingPublish, BrokerError> {
        if room.is_empty() || room.len() > MAX_ROUTING_KEY {
            return Err(BrokerError::Rejected(format!(
                "room name must be 1-{} bytes on RabbitMQ",
                MAX_ROUTING_KEY
            )));
        }
        start_confirmed(
            &self.shared,
            Outgoing {
                exchange: &self.shared.config.fanout_exchange(),
                routing_key: room,
                key: None,
                records: None,
                payload: &payload,
                persistent: false,
                mandatory: false,
            },
        )
        .await
    }
}
