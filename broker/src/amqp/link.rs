//! The connection to RabbitMQ: opening it with its topology, watching it, and reconnecting.

use super::config::{AmqpConfig, QueueType};
use crate::BrokerError;
use futures_util::StreamExt;
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, Event, ExchangeKind};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// One connection with its topology declared and its publishing channel.
pub(crate) struct Session {
    /// Counts connections: 1 for the first, +1 per reconnection.
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    /// The shared channel of every publish, in confirm mode.
    pub(crate) publisher: Channel,
    /// Woken when the connection or the publishing channel failed.
    lost: Arc<Notify>,
    /// Ends the task that watches the connection's events.
    done: CancellationToken,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

impl Session {
    /// Whether the connection and the publishing channel are up.
    pub(crate) fn is_up(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// Asks the supervisor to check the connection (after an operation failed).
    pub(crate) fn suspect(&self) {
        self.lost.notify_one();
    }
}

/// The state of the link to RabbitMQ.
#[derive(Clone)]
pub(crate) enum Link {
    /// Connected.
    Up(Arc<Session>),
    /// Reconnecting; the last failure.
    Down(Arc<str>),
    /// [`Broker::close`](crate::Broker::close) was called, or the broker was dropped.
    Closed,
}

/// What every part of the backend shares.
pub(crate) struct AmqpClient {
    pub(crate) config: AmqpConfig,
    pub(crate) link: watch::Sender<Link>,
    /// Cancelled by `close()` or when the broker is dropped.
    pub(crate) closed: CancellationToken,
    streams: AtomicU64,
}

impl AmqpClient {
    pub(crate) fn new(config: AmqpConfig, first: Arc<Session>) -> Self {
        AmqpClient {
            config,
            link: watch::Sender::new(Link::Up(first)),
            closed: CancellationToken::new(),
            streams: AtomicU64::new(u64::from(std::process::id())),
        }
    }

    /// The current session, or why there is none.
    pub(crate) fn session(&self) -> Result<Arc<Session>, BrokerError> {
        if self.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        match &*self.link.borrow() {
            Link::Up(session) => Ok(session.clone()),
            Link::Down(reason) => Err(BrokerError::Unavailable(format!(
                "RabbitMQ connection is down ({reason}); reconnecting"
            ))),
            Link::Closed => Err(BrokerError::Closed),
        }
    }

    /// A number per consumer stream, to rotate the order of its shard registrations.
    pub(crate) fn next_stream(&self) -> u64 {
        self.streams.fetch_add(1, Ordering::Relaxed)
    }

    /// Maps an error of an operation on `session`, and has the connection checked.
    pub(crate) fn failed(&self, session: &Session, what: &str, error: lapin::Error) -> BrokerError {
        if self.closed.is_cancelled() {
            return BrokerError::Closed;
        }
        session.suspect();
        map_error(what, error)
    }

    /// Runs `fut` (an operation of `what`) with the operation timeout.
    pub(crate) async fn timed<T>(
        &self,
        session: &Session,
        what: &str,
        fut: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.config.op_timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.failed(session, what, error)),
            Err(_) => {
                session.suspect();
                Err(BrokerError::Unavailable(format!(
                    "{what}: no answer from RabbitMQ within {:?}",
                    self.config.op_timeout
                )))
            }
        }
    }
}

/// Maps a lapin error: refusals of the configuration (access, vhost, queue arguments) are
/// [`BrokerError::Config`]; everything else is [`BrokerError::Unavailable`].
pub(crate) fn map_error(what: &str, error: lapin::Error) -> BrokerError {
    if let lapin::ErrorKind::ProtocolError(amqp) = error.kind() {
        // 403 access refused, 406 precondition failed (queue exists with other arguments),
        // 530 not allowed (vhost).
        if matches!(amqp.get_id(), 403 | 406 | 530) {
            return BrokerError::Config(format!("{what}: RabbitMQ refused: {amqp}"));
        }
    }
    BrokerError::Unavailable(format!("{what}: {error}"))
}

/// Connects, declares the topology and opens the publishing channel.
pub(crate) async fn open_session(
    config: &AmqpConfig,
    generation: u64,
) -> Result<Arc<Session>, BrokerError> {
    let connect = async {
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current())
            .with_connection_name(LongString::from(config.connection_name()));
        let connection = Connection::connect_uri(config.uri.clone(), properties)
            .await
            .map_err(|e| {
                map_error(
                    &format!("connecting to RabbitMQ at `{}`", config.redacted),
                    e,
                )
            })?;
        let lost = Arc::new(Notify::new());
        let done = CancellationToken::new();
        let mut events = connection.events_listener();
        let (on_error, watching) = (lost.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = watching.cancelled() => break,
                    event = events.next() => event,
                };
                match event {
                    Some(Event::Error(error)) => {
                        tracing::warn!(%error, "RabbitMQ connection failed");
                        on_error.notify_one();
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        });
        let result = async {
            let publisher = connection
                .create_channel()
                .await
                .map_err(|e| map_error("opening a channel", e))?;
            declare_topology(&publisher, config).await?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| map_error("enabling publisher confirms", e))?;
            Ok::<_, BrokerError>(publisher)
        }
        .await;
        match result {
            Ok(publisher) => Ok(Arc::new(Session {
                generation,
                connection,
                publisher,
                lost,
                done,
            })),
            Err(error) => {
                done.cancel();
                let _ = connection.close(200, "setup failed").await;
                Err(error)
            }
        }
    };
    match tokio::time::timeout(config.op_timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::Unavailable(format!(
            "connecting to RabbitMQ at `{}`: no answer within {:?}",
            config.redacted, config.op_timeout
        ))),
    }
}

fn durable_queue_arguments(config: &AmqpConfig) -> FieldTable {
    let mut arguments = FieldTable::default();
    if config.queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(config.queue_type.as_str().into()),
        );
    }
    arguments
}

const DURABLE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

/// Declares (idempotently) every exchange, queue and binding of the prefix.
async fn declare_topology(channel: &Channel, config: &AmqpConfig) -> Result<(), BrokerError> {
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let events = config.events_exchange();
    channel
        .exchange_declare(
            &events,
            ExchangeKind::Direct,
            DURABLE,
            FieldTable::default(),
        )
        .await
        .map_err(|e| map_error(&format!("declaring exchange {events}"), e))?;
    for shard in 0..config.shards {
        let queue = config.shard_queue(shard);
        let mut arguments = durable_queue_arguments(config);
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        channel
            .queue_declare(&queue, queue_options, arguments)
            .await
            .map_err(|e| {
                map_error(
                    &format!(
                        "declaring queue {queue} ({} queue, single active consumer; an \
                         existing queue with other arguments must be deleted or another \
                         prefix used)",
                        config.queue_type.as_str()
                    ),
                    e,
                )
            })?;
        channel
            .queue_bind(
                &queue,
                &events,
                &shard.to_string(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| map_error(&format!("binding queue {queue}"), e))?;
    }
    let fanout = config.fanout_exchange();
    channel
        .exchange_declare(
            &fanout,
            ExchangeKind::Direct,
            DURABLE,
            FieldTable::default(),
        )
        .await
        .map_err(|e| map_error(&format!("declaring exchange {fanout}"), e))?;
    let dead = config.dead_letters();
    channel
        .exchange_declare(&dead, ExchangeKind::Fanout, DURABLE, FieldTable::default())
        .await
        .map_err(|e| map_error(&format!("declaring exchange {dead}"), e))?;
    channel
        .queue_declare(&dead, queue_options, durable_queue_arguments(config))
        .await
        .map_err(|e| map_error(&format!("declaring queue {dead}"), e))?;
    channel
        .queue_bind(
            &dead,
            &dead,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| map_error(&format!("binding queue {dead}"), e))?;
    Ok(())
}

/// Watches the current session and replaces it when it fails, until the broker is closed;
/// then closes the connection gracefully.
pub(crate) async fn supervise(shared: Arc<AmqpClient>, mut session: Arc<Session>) {
    const CHECK: Duration = Duration::from_secs(1);
    loop {
        // Wait for a failure (reported, or seen by the periodic check) or for close.
        loop {
            tokio::select! {
                biased;
                () = shared.closed.cancelled() => {
                    shutdown(&shared, &session).await;
                    return;
                }
                () = session.lost.notified() => {}
                () = tokio::time::sleep(CHECK) => {}
            }
            if !session.is_up() {
                break;
            }
        }
        let reason: Arc<str> = Arc::from("connection lost");
        tracing::warn!(
            generation = session.generation,
            "RabbitMQ connection lost; reconnecting"
        );
        shared.link.send_replace(Link::Down(reason));
        if session.connection.status().connected() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                session.connection.close(320, "reconnecting"),
            )
            .await;
        }
        let generation = session.generation + 1;
        let mut delays = reconnect_delays(&shared.config);
        let mut delay = next_delay(&mut delays, &shared.config);
        session = loop {
            tokio::select! {
                biased;
                () = shared.closed.cancelled() => {
                    shared.link.send_replace(Link::Closed);
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
            match open_session(&shared.config, generation).await {
                Ok(session) => break session,
                Err(error) => {
                    tracing::warn!(%error, "reconnecting to RabbitMQ failed");
                    shared
                        .link
                        .send_replace(Link::Down(Arc::from(error.to_string())));
                    delay = next_delay(&mut delays, &shared.config);
                }
            }
        };
        if shared.closed.is_cancelled() {
            shutdown(&shared, &session).await;
            return;
        }
        tracing::info!(generation, "reconnected to RabbitMQ");
        shared.link.send_replace(Link::Up(session.clone()));
    }
}

/// Waits for unconfirmed publishes (briefly), then closes the channel and the connection.
async fn shutdown(shared: &AmqpClient, session: &Session) {
    shared.link.send_replace(Link::Closed);
    let grace = Duration::from_secs(5);
    let _ = tokio::time::timeout(grace, session.publisher.wait_for_confirms()).await;
    let _ = tokio::time::timeout(grace, session.publisher.close(200, "closing")).await;
    let _ = tokio::time::timeout(grace, session.connection.close(200, "closing")).await;
}

/// The pauses between attempts to reconnect (or to re-create what a reconnection lost):
/// 100 ms, doubling up to `reconnect_max`, for as long as it takes.
pub(crate) fn reconnect_delays(config: &AmqpConfig) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(config.reconnect_max.max(Duration::from_millis(100)))
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// The next pause of `delays`.
pub(crate) fn next_delay(delays: &mut backon::ExponentialBackoff, config: &AmqpConfig) -> Duration {
    delays.next().unwrap_or(config.reconnect_max)
}
