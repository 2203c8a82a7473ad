//! The worker loop: consume → handle → store → fan out → settle.
//!
//! # Layout
//! - this file: [`Worker`] and its consume loop, its errors and counters.
//! - `config`: [`WorkerConfig`] and the retry backoff.
//! - `batch`: a batch of deliveries and the state of each.
//! - `decode`: decoding and checking an inbound envelope.
//! - `steps`: handle, store, dead-letter and settle a batch.
//! - `fanout`: publish the fan-out records of the stored events.
//! - `retry`: deliveries waiting out their backoff, and sleeps that end at shutdown.
//!
//! Each batch from the inbound stream goes through these steps, in batch order:
//! 1. **Decode and handle.** A payload that is not an [`InboundEvent`] (bad JSON, wrong shape,
//!    unknown envelope version, invalid names, room ≠ broker key) is dead-lettered with the
//!    reason. Otherwise the event's [`handler`](crate::handler) decides: store it, drop it,
//!    reject it (dead letter) or fail transiently (retry).
//! 2. **Store.** The events to store are appended in one transaction
//!    ([`Store::append`]): new ones get their room's next seq, repeated `(from, id)`s come
//!    back as the message stored before.
//! 3. **Fan out.** A [`FanoutMessage`] is published for every stored event, new *or
//!    duplicate*: re-publishing a duplicate repairs a crash between the store commit and the
//!    fan-out (gateways drop seqs they already delivered).
//! 4. **Dead letters** are written ([`DeadLetter`] documents).
//! 5. **Settle.** A delivery is acked only after its store commit and fan-out publish (or its
//!    dead letter) succeeded.
//!
//! # Failures
//! - An event that fails on its own (a transient handler error; a store append or fan-out
//!   publish that fails while the store and broker are healthy) is nacked after a backoff
//!   that grows with its attempt count; on its `max_attempts`-th attempt it is dead-lettered
//!   with the error as the reason. The events of its room that follow it in the batch are
//!   nacked with it, never processed ahead of it, so a room's order holds. Other rooms go on.
//! - When the store or the broker itself is unavailable (the store does not answer a ping, or
//!   the broker reports itself unhealthy), the batch is not charged: the worker holds its
//!   deliveries and retries the unfinished steps with exponential backoff until the
//!   dependency is back. An outage therefore never dead-letters good events.
//! - A delivery that arrives with an attempt count above `max_attempts` was never settled
//!   (the worker crashed or stopped while processing it every time): it is dead-lettered
//!   without processing, so a poison event cannot crash-loop the worker.
//!
//! # Shutdown
//! When the shutdown token is cancelled the worker takes no new batch, finishes and settles
//! the current one (an outage wait is cut short: its unfinished deliveries are nacked), nacks
//! deliveries waiting for their retry backoff, and returns.

mod batch;
mod config;
mod decode;
mod fanout;
mod retry;
mod steps;

pub use config::WorkerConfig;
pub(crate) use decode::decode_event;

use crate::handler::Handlers;
use batch::Batch;
use retry::{RetryQueue, sleep_unless_cancelled};
use roomcast_broker::{BrokerError, Delivery, EventStream, WorkerLink};
use roomcast_store::Store;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a worker stopped.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// The configuration is invalid.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// The broker refused the worker or shut down (not a transient outage, which is retried).
    #[error("broker failure: {0}")]
    Broker(#[from] BrokerError),
}

/// Counters of a running worker (see [`Worker::counters`]), for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Batches processed.
    pub batches: u64,
    /// Events stored as new messages.
    pub stored: u64,
    /// Events that were already stored (fan-out re-published).
    pub duplicates: u64,
    /// Events dropped by a handler.
    pub dropped: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Event failures that were scheduled for a retry.
    pub retried: u64,
    /// Times a batch waited for the store or broker to come back.
    pub outages: u64,
}

impl WorkerCounters {
    fn add(&mut self, other: &WorkerCounters) {
        self.batches += other.batches;
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.dropped += other.dropped;
        self.dead_lettered += other.dead_lettered;
        self.retried += other.retried;
        self.outages += other.outages;
    }
}

/// Consumes the inbound stream: stores events, publishes fan-out, dead-letters poison events.
pub struct Worker {
    /// The worker's parts of the broker: consumer, fan-out publisher, dead letters, health.
    broker: WorkerLink,
    store: Store,
    config: WorkerConfig,
    handlers: Handlers,
    counters: watch::Sender<WorkerCounters>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("broker", &self.broker.health.backend())
            .field("store", &self.store)
            .field("config", &self.config)
            .field("handlers", &self.handlers)
            .finish()
    }
}

impl Worker {
    /// A worker with the default handlers (every event stored and fanned out).
    pub fn new(broker: WorkerLink, store: Store, config: WorkerConfig) -> Self {
        Worker {
            broker,
            store,
            config,
            handlers: Handlers::new(),
            counters: watch::Sender::new(WorkerCounters::default()),
        }
    }

    /// Uses `handlers` to decide what happens to each event.
    pub fn with_handlers(mut self, handlers: Handlers) -> Self {
        self.handlers = handlers;
        self
    }

    /// The worker's counters, updated after every batch; stays readable after the worker
    /// stopped.
    pub fn counters(&self) -> watch::Receiver<WorkerCounters> {
        self.counters.subscribe()
    }

    /// Runs until `shutdown` is cancelled (then returns `Ok` once the current batch is
    /// settled), or until the broker refuses the worker or closes.
    ///
    /// Store and broker outages are retried with backoff, never returned.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        self.config.validate()?;
        tracing::info!(
            group = %self.config.group,
            broker = self.broker.health.backend(),
            store = self.store.dialect(),
            batch_max = self.config.batch_max,
            max_attempts = self.config.max_attempts,
            "worker started"
        );
        let mut retries = RetryQueue::new(shutdown.child_token());
        let result = self.consume(&shutdown, &mut retries).await;
        retries.flush().await;
        let counters = *self.counters.borrow();
        match &result {
            Ok(()) => tracing::info!(?counters, "worker stopped"),
            Err(error) => tracing::error!(%error, ?counters, "worker stopped on an error"),
        }
        result
    }

    async fn consume(
        &self,
        shutdown: &CancellationToken,
        retries: &mut RetryQueue,
    ) -> Result<(), WorkerError> {
        let mut stream: Option<Box<dyn EventStream>> = None;
        let mut failures = 0;
        let mut delays = self.config.retry_delays();
        loop {
            retries.reap();
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let current = match &mut stream {
                Some(current) => current,
                None => {
                    let joined = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        joined = self.broker.consumer.consume(&self.config.group) => joined,
                    };
                    match joined {
                        Ok(joined) => stream.insert(joined),
                        Err(error) if is_fatal(&error) => {
                            return self.broker_failed(shutdown, error);
                        }
                        Err(error) => {
                            failures += 1;
                            let delay = delays.next().unwrap_or(self.config.retry_max);
                            if !self
                                .wait_for_broker(shutdown, failures, delay, &error)
                                .await
                            {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                }
            };
            let batch = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                batch = current.next_batch(self.config.batch_max) => batch,
            };
            match batch {
                Ok(deliveries) => {
                    failures = 0;
                    delays = self.config.retry_delays();
                    if self.process(deliveries, shutdown, retries).await? == Flow::Stop {
                        return Ok(());
                    }
                }
                Err(error) if is_fatal(&error) => return self.broker_failed(shutdown, error),
                Err(error) => {
                    // Start over with a new stream; the old one's deliveries are released.
                    stream = None;
                    failures += 1;
                    let delay = delays.next().unwrap_or(self.config.retry_max);
                    if !self
                        .wait_for_broker(shutdown, failures, delay, &error)
                        .await
                    {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A fatal broker error ends the worker, unless it is the broker closing during shutdown.
    fn broker_failed(
        &self,
        shutdown: &CancellationToken,
        error: BrokerError,
    ) -> Result<(), WorkerError> {
        if shutdown.is_cancelled() && matches!(error, BrokerError::Closed) {
            Ok(())
        } else {
            Err(WorkerError::Broker(error))
        }
    }

    /// Backs off after the broker failed to serve the stream; `false` on shutdown.
    async fn wait_for_broker(
        &self,
        shutdown: &CancellationToken,
        failures: u32,
        delay: Duration,
        error: &BrokerError,
    ) -> bool {
        tracing::warn!(%error, failures, retry_in_ms = delay.as_millis(), "inbound stream failed; retrying");
        self.counters.send_modify(|c| c.outages += 1);
        sleep_unless_cancelled(shutdown, delay).await
    }

    async fn process(
        &self,
        deliveries: Vec<Delivery>,
        shutdown: &CancellationToken,
        retries: &mut RetryQueue,
    ) -> Result<Flow, WorkerError> {
        let mut batch = Batch::new(deliveries);
        self.handle(&mut batch).await;
        let mut outages = 0;
        let mut delays = self.config.retry_delays();
        let flow = loop {
            match self.advance(&mut batch).await {
                Ok(()) => break Ok(Flow::Continue),
                Err(Failure::Fatal(error)) => break Err(WorkerError::Broker(error)),
                Err(Failure::Outage(reason)) => {
                    outages += 1;
                    self.counters.send_modify(|c| c.outages += 1);
                    let delay = delays.next().unwrap_or(self.config.retry_max);
                    tracing::warn!(
                        %reason,
                        failures = outages,
                        retry_in_ms = delay.as_millis(),
                        "store or broker unavailable; holding the batch"
                    );
                    if !sleep_unless_cancelled(shutdown, delay).await {
                        break Ok(Flow::Stop);
                    }
                }
            }
        };
        self.settle(batch, retries).await;
        flow
    }
}

/// Whether a broker error ends the worker instead of being retried.
fn is_fatal(error: &BrokerError) -> bool {
    matches!(
        error,
        BrokerError::Closed | BrokerError::Config(_) | BrokerError::Rejected(_)
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

enum Failure {
    /// The store or broker is unavailable: hold the batch and retry.
    Outage(String),
    /// The broker closed or refused: stop the worker.
    Fatal(BrokerError),
}
