//! The embedded broker: a durable log in SQLite inside the Roomcast process.
//!
//! # Design
//! - **Log.** One SQLite file (`<dir>/broker.db`, WAL journal, `synchronous=FULL`, exclusive
//!   locking so that one process owns it) holds the pending inbound records, their delivery
//!   counters, and the dead letters. A single writer task owns the connection and commits
//!   whatever is pending in one transaction (group commit); callers are confirmed only after
//!   the commit.
//! - **Dispatch.** Pending records live in an in-memory window (the oldest records, by default
//!   up to 16,384 records or 64 MiB of payload), grouped by key. Newer records stay in the log
//!   and are read back, in log order, when the window is half empty, so memory stays bounded
//!   with any backlog. Consumers wait on a notification, woken by commits, acks and releases;
//!   nothing polls the database.
//! - **Delivery.** A key is held by one stream at a time: the stream that took its oldest
//!   record also receives the key's later records, in order (a hot room's backlog goes out in
//!   one batch), and other streams receive none of them until all are settled. Before a batch is handed over, the delivery counters of
//!   its records are committed, so that a record that crashes the process every time still
//!   reaches the attempt count at which the worker dead-letters it. An ack releases the key at
//!   once and returns after the record's deletion is committed.
//! - **Fan-out.** In process, through a room registry (see `fanout`).
//!
//! The embedded log serves one consumer group at a time: all streams of the open group share
//! the records; opening a stream of another group while one is open is refused.
//!
//! With a window full of one key's records, records of other keys wait in the log until that
//! key drains (head-of-line blocking under a backlog larger than the window).

mod fanout;
mod log;
mod queue;

use crate::{
    Broker, BrokerError, DeadLetterSink, Delivery, EventConsumer, EventPublisher, EventStream,
    FanoutPublisher, FanoutSource, FanoutSubscription, Settle,
};
use async_trait::async_trait;
use bytes::Bytes;
use fanout::FanoutHub;
use log::{Op, Write};
use queue::{AckOutcome, Queue, Window};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

/// Settings of the embedded broker; [`Default`] suits production.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most pending records kept in memory; older ones are served first, newer ones wait in
    /// the log.
    pub window_records: usize,
    /// Most payload bytes of pending records kept in memory.
    pub window_bytes: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Capacity of the writer's queue; publishers wait when it is full.
    pub write_queue: usize,
    /// Messages buffered per fan-out subscription before it yields a gap.
    pub fanout_capacity: usize,
    /// How long opening waits for another connection to release the log file.
    pub busy_timeout: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            window_records: 16_384,
            window_bytes: 64 * 1024 * 1024,
            max_batch: 4096,
            write_queue: 16_384,
            fanout_capacity: 16_384,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of an embedded broker, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Transactions committed by the writer.
    pub commits: u64,
    /// Records published (committed).
    pub published: u64,
    /// Records acked (deletion committed).
    pub acked: u64,
    /// Pending records currently held in memory.
    pub records_in_memory: usize,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    published: AtomicU64,
    acked: AtomicU64,
}

/// State shared by the broker, its streams, deliveries and the writer.
#[derive(Debug)]
struct Dispatch {
    queue: Mutex<Queue>,
    /// Woken when keys become ready, and on close.
    ready: Notify,
    stats: Counters,
}

impl Dispatch {
    /// Wakes streams waiting for records after `keys` became ready.
    /// Wakes the waiting streams when `keys` keys got records to take. All of them: a record
    /// of an owned key can only go to its owner.
    fn wake(&self, keys: usize) {
        if keys > 0 {
            self.ready.notify_waiters();
        }
    }

    fn close(&self) {
        lock(&self.queue).close();
        self.ready.notify_waiters();
    }
}

/// Locks a mutex, ignoring poisoning (the protected state stays consistent between
/// statements that cannot panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The embedded broker. Open it with [`EmbeddedBroker::open`]; it implements [`Broker`].
pub struct EmbeddedBroker {
    shared: Arc<Dispatch>,
    writer: mpsc::Sender<Op>,
    fanout: Arc<FanoutHub>,
    dir: PathBuf,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Opens the broker stored in `dir` (created when missing) with default options.
    ///
    /// Every record that was published and not acked before (even if the process was killed)
    /// is delivered again, in order per key.
    pub async fn open(dir: &Path) -> Result<Arc<EmbeddedBroker>, BrokerError> {
        Self::open_with(dir, EmbeddedOptions::default()).await
    }

    /// Opens the broker stored in `dir` with `options`.
    pub async fn open_with(
        dir: &Path,
        options: EmbeddedOptions,
    ) -> Result<Arc<EmbeddedBroker>, BrokerError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| BrokerError::from(sqlx::Error::Io(e)))?;
        let (conn, max_id) = log::open(&dir.join("broker.db"), options.busy_timeout).await?;
        let window = Window {
            max_records: options.window_records,
            max_bytes: options.window_bytes,
        };
        let shared = Arc::new(Dispatch {
            queue: Mutex::new(Queue::new(window, max_id.is_some())),
            ready: Notify::new(),
            stats: Counters::default(),
        });
        let (tx, rx) = mpsc::channel(options.write_queue.max(1));
        let mut writer = log::Writer::new(conn, rx, shared.clone(), max_id, options.max_batch);
        writer.load().await?;
        tokio::spawn(writer.run());
        Ok(Arc::new(EmbeddedBroker {
            shared,
            writer: tx,
            fanout: Arc::new(FanoutHub::new(options.fanout_capacity)),
            dir: dir.to_path_buf(),
        }))
    }

    /// The directory holding the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shuts the broker down: commits the writes already queued, closes the log file, and
    /// makes every stream, subscription and later call return [`BrokerError::Closed`].
    /// Idempotent.
    pub async fn close(&self) {
        self.shared.close();
        self.fanout.close();
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Op::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Every dead letter stored so far, oldest first, as `(key, payload)`.
    pub async fn dead_letters(&self) -> Result<Vec<(String, Bytes)>, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::DeadLetters(tx)).await?;
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    /// Current counters.
    pub fn stats(&self) -> EmbeddedStats {
        let counters = &self.shared.stats;
        EmbeddedStats {
            commits: counters.commits.load(Ordering::Relaxed),
            published: counters.published.load(Ordering::Relaxed),
            acked: counters.acked.load(Ordering::Relaxed),
            records_in_memory: lock(&self.shared.queue).records_in_memory(),
        }
    }

    fn is_closed(&self) -> bool {
        lock(&self.shared.queue).is_closed()
    }

    async fn send(&self, op: Op) -> Result<(), BrokerError> {
        if self.is_closed() {
            return Err(BrokerError::Closed);
        }
        self.writer.send(op).await.map_err(|_| BrokerError::Closed)
    }

    async fn write(&self, write: Write) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Write(write, tx)).await?;
        rx.await.map_err(|_| BrokerError::Closed)?
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // Streams and subscriptions end; deliveries still in hand can be acked until they are
        // dropped, after which the writer stops and closes the log.
        self.shared.close();
        self.fanout.close();
    }
}

/// Sends a write to the writer task and waits for its commit.
async fn write_through(writer: &mpsc::Sender<Op>, write: Write) -> Result<(), BrokerError> {
    let (tx, rx) = oneshot::channel();
    writer
        .send(Op::Write(write, tx))
        .await
        .map_err(|_| BrokerError::Closed)?;
    rx.await.map_err(|_| BrokerError::Closed)?
}

#[async_trait]
impl EventPublisher for EmbeddedBroker {
    /// The record's place is fixed once the writer task has it (its queue is FIFO).
    async fn start_publish(
        &self,
        key: &str,
        payload: Bytes,
    ) -> Result<crate::PendingPublish, BrokerError> {
        let (tx, rx) = oneshot::channel();
        let write = Write::Publish {
            key: Arc::from(key),
            payload,
        };
        self.send(Op::Write(write, tx)).await?;
        Ok(Box::pin(async move {
            rx.await.map_err(|_| BrokerError::Closed)?
        }))
    }
}

#[async_trait]
impl EventConsumer for EmbeddedBroker {
    async fn consume(&self, group: &str) -> Result<Box<dyn EventStream>, BrokerError> {
        let id = {
            let mut queue = lock(&self.shared.queue);
            if queue.is_closed() {
                return Err(BrokerError::Closed);
            }
            queue.open_stream(group).map_err(BrokerError::Config)?
        };
        Ok(Box::new(Stream {
            shared: self.shared.clone(),
            writer: self.writer.clone(),
            id,
        }))
    }
}

#[async_trait]
impl DeadLetterSink for EmbeddedBroker {
    async fn dead_letter(&self, key: &str, payload: Bytes) -> Result<(), BrokerError> {
        self.write(Write::DeadLetter {
            key: key.to_owned(),
            payload,
        })
        .await
    }
}

#[async_trait]
impl FanoutPublisher for EmbeddedBroker {
    /// In memory: the message is handed to the subscribers at once.
    async fn start_publish_fanout(
        &self,
        room: &str,
        payload: Bytes,
    ) -> Result<crate::PendingPublish, BrokerError> {
        self.fanout.publish(room, payload)?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }
}

#[async_trait]
impl FanoutSource for EmbeddedBroker {
    async fn open(&self) -> Result<Box<dyn FanoutSubscription>, BrokerError> {
        Ok(Box::new(self.fanout.subscribe()?))
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn health(&self) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Ping(tx)).await?;
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    async fn close(&self) {
        EmbeddedBroker::close(self).await;
    }
}

/// A consumer stream of the embedded broker.
struct Stream {
    shared: Arc<Dispatch>,
    writer: mpsc::Sender<Op>,
    id: u64,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let released = lock(&self.shared.queue).close_stream(self.id);
        self.shared.wake(released);
    }
}

/// Releases handed-out records if a batch is not handed over (cancelled or failed).
struct Handover<'a> {
    shared: &'a Dispatch,
    records: Vec<(Arc<str>, i64, u64)>,
    /// Whether the delivery counters were sent to the writer (else the in-memory counters
    /// are rolled back on release).
    sent: bool,
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let mut released = 0;
        {
            let mut queue = lock(&self.shared.queue);
            for (key, id, token) in self.records.drain(..) {
                if queue.release(&key, id, token, !self.sent) {
                    released += 1;
                }
            }
        }
        self.shared.wake(released);
    }
}

#[async_trait]
impl EventStream for Stream {
    /// Cancel-safe: if the future is dropped before it completes, the records it picked are
    /// released for redelivery.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let handouts = loop {
            let notified = self.shared.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut queue = lock(&self.shared.queue);
                if queue.is_closed() {
                    return Err(BrokerError::Closed);
                }
                let handouts = queue.take(self.id, max);
                if !handouts.is_empty() {
                    if queue.has_ready() {
                        // Let another waiting stream pick up what this batch left.
                        self.shared.ready.notify_one();
                    }
                    break handouts;
                }
            }
            notified.await;
        };
        let mut handover = Handover {
            shared: &self.shared,
            records: handouts
                .iter()
                .map(|h| (h.key.clone(), h.id, h.token))
                .collect(),
            sent: false,
        };
        let ids = handouts.iter().map(|h| h.id).collect();
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Op::Write(Write::Delivered(ids), tx))
            .await
            .map_err(|_| BrokerError::Closed)?;
        // From here on the counters may be committed even if this future is dropped.
        handover.sent = true;
        rx.await.map_err(|_| BrokerError::Closed)??;
        handover.records.clear();
        Ok(handouts
            .into_iter()
            .map(|h| {
                let settle = Box::new(Settlement {
                    shared: self.shared.clone(),
                    writer: self.writer.clone(),
                    key: h.key.clone(),
                    id: h.id,
                    token: h.token,
                });
                Delivery::new(h.key.to_string(), h.payload, h.attempt, settle)
            })
            .collect())
    }
}

/// Settles one delivery of the embedded broker.
struct Settlement {
    shared: Arc<Dispatch>,
    writer: mpsc::Sender<Op>,
    key: Arc<str>,
    id: i64,
    token: u64,
}

#[async_trait]
impl Settle for Settlement {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        let (outcome, became_ready) = lock(&self.shared.queue).ack(&self.key, self.id, self.token);
        if became_ready {
            self.shared.wake(1);
        }
        if outcome == AckOutcome::HeldElsewhere {
            return Err(BrokerError::Rejected(
                "the delivery was released (its stream was dropped) and handed out again".into(),
            ));
        }
        write_through(&self.writer, Write::Ack(self.id)).await?;
        self.shared.stats.acked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), BrokerError> {
        let became_ready = lock(&self.shared.queue).release(&self.key, self.id, self.token, false);
        if became_ready {
            self.shared.wake(1);
        }
        Ok(())
    }
}
