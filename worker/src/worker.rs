//! The worker loop: consume → handle → store → fan out → settle.
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

use crate::handler::{Disposition, HandlerError, Handlers};
use crate::store::{Appended, Store};
use bytes::Bytes;
use futures_util::future::join_all;
use rand::Rng;
use roomcast_broker::{Broker, BrokerError, Delivery, EventStream};
use roomcast_schemas::{DeadLetter, ENVELOPE_VERSION, FanoutMessage, InboundEvent, names};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Settings of a [`Worker`]; [`Default`] suits production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Consumer group to join; workers of one group share the inbound stream.
    pub group: String,
    /// Most deliveries processed (and stored in one transaction) per batch.
    pub batch_max: usize,
    /// Processing attempts per event before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry backoff; it doubles with each failure, with jitter.
    pub retry_initial: Duration,
    /// Longest retry backoff.
    pub retry_max: Duration,
    /// Most messages of one room published as one fan-out record (a JSON array); 1 publishes
    /// every message on its own.
    pub fanout_batch: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            group: "roomcast-workers".to_owned(),
            batch_max: 256,
            max_attempts: 5,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            fanout_batch: 64,
        }
    }
}

impl WorkerConfig {
    fn validate(&self) -> Result<(), WorkerError> {
        if self.group.is_empty() {
            return Err(WorkerError::Config("group must not be empty".to_owned()));
        }
        if self.batch_max == 0 {
            return Err(WorkerError::Config(
                "batch_max must be at least 1".to_owned(),
            ));
        }
        if self.fanout_batch == 0 {
            return Err(WorkerError::Config(
                "fanout_batch must be at least 1".to_owned(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(WorkerError::Config(
                "max_attempts must be at least 1".to_owned(),
            ));
        }
        if self.retry_initial > self.retry_max {
            return Err(WorkerError::Config(
                "retry_initial must not exceed retry_max".to_owned(),
            ));
        }
        Ok(())
    }

    /// The backoff before retry number `failures` (1 for the first): `retry_initial`
    /// doubled `failures - 1` times, capped at `retry_max`, then jittered down by up to half
    /// ("equal jitter"), so that many workers retrying at once spread out.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let full = self
            .retry_initial
            .saturating_mul(1 << doublings)
            .min(self.retry_max);
        let half = full / 2;
        half + rand::rng().random_range(Duration::ZERO..=full - half)
    }
}

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
    broker: Arc<dyn Broker>,
    store: Store,
    config: WorkerConfig,
    handlers: Handlers,
    counters: watch::Sender<WorkerCounters>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("broker", &self.broker.name())
            .field("store", &self.store)
            .field("config", &self.config)
            .field("handlers", &self.handlers)
            .finish()
    }
}

impl Worker {
    /// A worker with the default handlers (every event stored and fanned out).
    pub fn new(broker: Arc<dyn Broker>, store: Store, config: WorkerConfig) -> Self {
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
            broker = self.broker.name(),
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
                        joined = self.broker.consume(&self.config.group) => joined,
                    };
                    match joined {
                        Ok(joined) => stream.insert(joined),
                        Err(error) if is_fatal(&error) => {
                            return self.broker_failed(shutdown, error);
                        }
                        Err(error) => {
                            failures += 1;
                            if !self.wait_for_broker(shutdown, failures, &error).await {
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
                    if self.process(deliveries, shutdown, retries).await? == Flow::Stop {
                        return Ok(());
                    }
                }
                Err(error) if is_fatal(&error) => return self.broker_failed(shutdown, error),
                Err(error) => {
                    // Start over with a new stream; the old one's deliveries are released.
                    stream = None;
                    failures += 1;
                    if !self.wait_for_broker(shutdown, failures, &error).await {
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
        error: &BrokerError,
    ) -> bool {
        let delay = self.config.backoff(failures);
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
        let mut batch = Batch {
            items: deliveries
                .into_iter()
                .map(|delivery| Item {
                    delivery,
                    state: State::Received,
                })
                .collect(),
            held: HashSet::new(),
            tally: WorkerCounters {
                batches: 1,
                ..WorkerCounters::default()
            },
        };
        self.handle(&mut batch).await;
        let mut outages = 0;
        let flow = loop {
            match self.advance(&mut batch).await {
                Ok(()) => break Ok(Flow::Continue),
                Err(Failure::Fatal(error)) => break Err(WorkerError::Broker(error)),
                Err(Failure::Outage(reason)) => {
                    outages += 1;
                    self.counters.send_modify(|c| c.outages += 1);
                    let delay = self.config.backoff(outages);
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

    /// Step 1: decode each delivery and run its handler.
    async fn handle(&self, batch: &mut Batch) {
        let max_attempts = self.config.max_attempts;
        for item in &mut batch.items {
            let attempt = item.delivery.attempt;
            if batch.held.contains(&item.delivery.key) {
                item.state = State::Blocked;
            } else if attempt > max_attempts {
                item.state = State::DeadLetter(format!(
                    "delivered {attempt} times without being settled (max_attempts is \
                     {max_attempts}); the worker stopped or crashed while processing it"
                ));
            } else {
                match decode(&item.delivery) {
                    Err(reason) => item.state = State::DeadLetter(reason),
                    Ok(event) => match self.handlers.handle(&event).await {
                        Ok(Disposition::Deliver) => item.state = State::Pending(event),
                        Ok(Disposition::Drop) => {
                            batch.tally.dropped += 1;
                            item.state = State::Done;
                        }
                        Err(HandlerError::Permanent(reason)) => {
                            item.state = State::DeadLetter(format!(
                                "rejected by the `{}` handler: {reason}",
                                event.event
                            ));
                        }
                        Err(HandlerError::Transient(reason)) => {
                            let reason = format!("the `{}` handler failed: {reason}", event.event);
                            self.fail(item, &mut batch.held, &mut batch.tally, reason);
                        }
                    },
                }
            }
        }
    }

    /// Steps 2–4, resumable: each step only works on the items the previous run left.
    async fn advance(&self, batch: &mut Batch) -> Result<(), Failure> {
        self.append(batch).await?;
        self.publish(batch).await?;
        self.dead_letter(batch).await
    }

    /// Step 2: store the pending events, in one transaction when possible.
    async fn append(&self, batch: &mut Batch) -> Result<(), Failure> {
        let pending: Vec<usize> = (0..batch.items.len())
            .filter(|&i| matches!(batch.items[i].state, State::Pending(_)))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        // Move the events out for the append; they go back on failure.
        let mut events = Vec::with_capacity(pending.len());
        for &i in &pending {
            if let State::Pending(event) =
                std::mem::replace(&mut batch.items[i].state, State::Received)
            {
                events.push(event);
            }
        }
        let error = match self.store.append(&events).await {
            Ok(results) => {
                for (&i, appended) in pending.iter().zip(results) {
                    batch.stored(i, appended);
                }
                return Ok(());
            }
            Err(error) => error,
        };
        for (&i, event) in pending.iter().zip(events) {
            batch.items[i].state = State::Pending(event);
        }
        self.check_store(&error).await?;
        if pending.len() == 1 {
            let reason = format!("storing the event failed: {error}");
            self.fail(
                &mut batch.items[pending[0]],
                &mut batch.held,
                &mut batch.tally,
                reason,
            );
            return Ok(());
        }
        // The store answers, so one of the events is at fault: store them one by one so that
        // only that event (and its room's later events) is retried.
        tracing::warn!(%error, events = pending.len(), "batch append failed; appending one by one");
        for i in pending {
            if batch.held.contains(&batch.items[i].delivery.key) {
                batch.items[i].state = State::Blocked;
                continue;
            }
            let State::Pending(event) = &batch.items[i].state else {
                continue;
            };
            match self.store.append(std::slice::from_ref(event)).await {
                Ok(mut results) => match results.pop() {
                    Some(appended) => batch.stored(i, appended),
                    None => {
                        let reason = "the store returned no result".to_owned();
                        self.fail(
                            &mut batch.items[i],
                            &mut batch.held,
                            &mut batch.tally,
                            reason,
                        );
                    }
                },
                Err(error) => {
                    self.check_store(&error).await?;
                    let reason = format!("storing the event failed: {error}");
                    self.fail(
                        &mut batch.items[i],
                        &mut batch.held,
                        &mut batch.tally,
                        reason,
                    );
                }
            }
        }
        Ok(())
    }

    /// An outage when the store does not answer a ping after `error`.
    async fn check_store(&self, error: &crate::StoreError) -> Result<(), Failure> {
        match self.store.ping().await {
            Ok(()) => Ok(()),
            Err(_) => Err(Failure::Outage(format!("store unavailable: {error}"))),
        }
    }

    /// Step 3: publish the fan-out messages of the stored events: a room's messages of the
    /// batch go out together, up to `fanout_batch` per record (a JSON array in seq order). The
    /// publishes are started in batch order (which fixes each record's place in its room's
    /// order) and awaited together, so a batch costs one round trip to the broker, not one per
    /// event. Every event of a record shares its result, taken in batch order: an event whose
    /// publish failed holds its room, and the room's later events are nacked with it (messages that went out are
    /// re-published by the redelivery; gateways drop seqs they already delivered).
    async fn publish(&self, batch: &mut Batch) -> Result<(), Failure> {
        // Records in start order.
        let mut records: Vec<FanoutRecord<'_>> = Vec::new();
        let mut open: HashMap<String, usize> = HashMap::new();
        let mut blocked = Vec::new();
        for (index, item) in batch.items.iter().enumerate() {
            let State::Stored(message) = &item.state else {
                continue;
            };
            if batch.held.contains(&item.delivery.key) {
                // Stored already; the redelivery re-publishes it after the earlier event.
                blocked.push(index);
                continue;
            }
            let at = match open.get(&message.room) {
                Some(&at) if records[at].2.len() < self.config.fanout_batch => at,
                _ => {
                    records.push((message.room.clone(), Vec::new(), Vec::new()));
                    open.insert(message.room.clone(), records.len() - 1);
                    records.len() - 1
                }
            };
            records[at].1.push((index, message.seq));
            records[at].2.push(message);
        }
        let mut started = Vec::new();
        for (room, items, messages) in records {
            let encoded = if let [message] = messages.as_slice() {
                serde_json::to_vec(message)
            } else {
                serde_json::to_vec(&messages)
            };
            let result = match encoded {
                Ok(payload) => {
                    self.broker
                        .start_publish_fanout(&room, Bytes::from(payload))
                        .await
                }
                Err(error) => Err(BrokerError::Rejected(format!(
                    "cannot encode the message: {error}"
                ))),
            };
            started.push((items, result));
        }
        for index in blocked {
            batch.items[index].state = State::Blocked;
        }
        let results = join_all(started.into_iter().map(|(items, result)| async move {
            let result = match result {
                Ok(pending) => pending.await,
                Err(error) => Err(error),
            };
            (items, result)
        }))
        .await;
        // Every event of a record shares its result.
        let mut outcomes: Vec<(usize, u64, Result<(), BrokerError>)> = Vec::new();
        for (items, result) in results {
            for (index, seq) in items {
                let result = result.as_ref().map_err(BrokerError::clone).copied();
                outcomes.push((index, seq, result));
            }
        }
        outcomes.sort_unstable_by_key(|(index, _, _)| *index);
        for (index, seq, result) in outcomes {
            let item = &mut batch.items[index];
            if batch.held.contains(&item.delivery.key) {
                item.state = State::Blocked;
                continue;
            }
            match result {
                Ok(()) => item.state = State::Done,
                Err(error) if is_fatal(&error) => return Err(Failure::Fatal(error)),
                Err(error) => {
                    if self.broker.health().await.is_err() {
                        return Err(Failure::Outage(format!("fan-out publish failed: {error}")));
                    }
                    let reason =
                        format!("stored as seq {seq}, but the fan-out publish failed: {error}");
                    self.fail(item, &mut batch.held, &mut batch.tally, reason);
                }
            }
        }
        Ok(())
    }

    /// Step 4: write the dead letters.
    async fn dead_letter(&self, batch: &mut Batch) -> Result<(), Failure> {
        for item in &mut batch.items {
            let State::DeadLetter(reason) = &item.state else {
                continue;
            };
            let delivery = &item.delivery;
            let letter = DeadLetter {
                v: ENVELOPE_VERSION,
                reason: reason.clone(),
                attempts: delivery.attempt,
                ts: now_ms(),
                key: delivery.key.clone(),
                payload: String::from_utf8_lossy(&delivery.payload).into_owned(),
            };
            let payload = serde_json::to_vec(&letter).map_err(|error| {
                Failure::Outage(format!("cannot encode a dead letter: {error}"))
            })?;
            match self
                .broker
                .dead_letter(&delivery.key, Bytes::from(payload))
                .await
            {
                Ok(()) => {
                    tracing::error!(
                        key = %delivery.key,
                        attempts = delivery.attempt,
                        %reason,
                        "event dead-lettered"
                    );
                    batch.tally.dead_lettered += 1;
                    item.state = State::Done;
                }
                Err(error) if is_fatal(&error) => return Err(Failure::Fatal(error)),
                Err(error) => {
                    return Err(Failure::Outage(format!(
                        "dead-letter write failed: {error}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// An event failed on its own: retry it (holding its room) or, on its last attempt,
    /// dead-letter it.
    fn fail(
        &self,
        item: &mut Item,
        held: &mut HashSet<String>,
        tally: &mut WorkerCounters,
        reason: String,
    ) {
        let attempt = item.delivery.attempt;
        let max_attempts = self.config.max_attempts;
        if attempt >= max_attempts {
            item.state = State::DeadLetter(format!("failed {attempt} times; last error: {reason}"));
        } else {
            tracing::warn!(key = %item.delivery.key, attempt, max_attempts, %reason, "event failed; it will be retried");
            tally.retried += 1;
            held.insert(item.delivery.key.clone());
            item.state = State::Retry;
        }
    }

    /// Step 5: ack what is done, nack the rest (after a backoff for retried events).
    async fn settle(&self, batch: Batch, retries: &mut RetryQueue) {
        let Batch { items, held, tally } = batch;
        let mut acks = Vec::new();
        let mut now = Vec::new();
        let mut later = Vec::new();
        let mut retry_attempt = 0;
        for item in items {
            match item.state {
                State::Done => acks.push(item.delivery),
                State::Retry => {
                    retry_attempt = retry_attempt.max(item.delivery.attempt);
                    later.push(item.delivery);
                }
                // A held room's deliveries are nacked together, in order.
                _ if held.contains(&item.delivery.key) => later.push(item.delivery),
                // Unfinished: the batch was abandoned on shutdown or a fatal broker error.
                _ => now.push(item.delivery),
            }
        }
        let failed_acks = join_all(acks.into_iter().map(Delivery::ack))
            .await
            .into_iter()
            .filter_map(Result::err)
            .inspect(|error| tracing::debug!(%error, "ack failed"))
            .count();
        if failed_acks > 0 {
            tracing::warn!(
                failed_acks,
                "acks failed; those events will be redelivered and deduplicated"
            );
        }
        for delivery in now {
            if let Err(error) = delivery.nack().await {
                tracing::debug!(%error, "nack failed; the delivery is released when the stream closes");
            }
        }
        if !later.is_empty() {
            retries.schedule(later, self.config.backoff(retry_attempt.max(1)));
        }
        self.counters.send_modify(|counters| counters.add(&tally));
    }
}

/// Whether a broker error ends the worker instead of being retried.
fn is_fatal(error: &BrokerError) -> bool {
    matches!(
        error,
        BrokerError::Closed | BrokerError::Config(_) | BrokerError::Rejected(_)
    )
}

/// Decodes and validates a delivery's payload; the error is the dead letter's reason.
fn decode(delivery: &Delivery) -> Result<InboundEvent, String> {
    decode_event(&delivery.key, &delivery.payload)
}

/// Decodes and checks an inbound event published under broker key `key`; the error is the
/// dead-letter reason.
pub(crate) fn decode_event(key: &str, payload: &[u8]) -> Result<InboundEvent, String> {
    let event: InboundEvent =
        serde_json::from_slice(payload).map_err(|error| format!("undecodable payload: {error}"))?;
    if event.v != ENVELOPE_VERSION {
        return Err(format!(
            "unsupported envelope version {} (expected {ENVELOPE_VERSION})",
            event.v
        ));
    }
    let invalid = |error: names::NameError| format!("invalid event: {error}");
    names::check_room(&event.room).map_err(invalid)?;
    names::check_event(&event.event).map_err(invalid)?;
    names::check_id(&event.id).map_err(invalid)?;
    if event.from.is_empty() || event.from.chars().any(char::is_control) {
        return Err("invalid event: `from` is empty or holds control characters".to_owned());
    }
    if event.room != key {
        return Err(format!(
            "the event's room `{}` differs from its broker key `{key}`",
            event.room
        ));
    }
    Ok(event)
}

pub(crate) fn now_ms() -> u64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// Sleeps for `delay`; `false` when `shutdown` was cancelled first.
async fn sleep_unless_cancelled(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
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

/// Where a delivery is in its processing.
enum State {
    /// Not looked at yet.
    Received,
    /// Accepted by its handler; to be stored.
    Pending(InboundEvent),
    /// Stored (new or duplicate); its fan-out message is to be published.
    Stored(FanoutMessage),
    /// To be dead-lettered with this reason, then acked.
    DeadLetter(String),
    /// Finished: ack.
    Done,
    /// Failed on its own: nack after a backoff.
    Retry,
    /// An earlier event of its room is retried: nack with it.
    Blocked,
}

struct Item {
    delivery: Delivery,
    state: State,
}

struct Batch {
    items: Vec<Item>,
    /// Rooms with a retried event in this batch: their later events wait for it.
    held: HashSet<String>,
    tally: WorkerCounters,
}

impl Batch {
    fn stored(&mut self, index: usize, appended: Appended) {
        let message = match appended {
            Appended::New(message) => {
                self.tally.stored += 1;
                message
            }
            Appended::Duplicate(message) => {
                tracing::debug!(room = %message.room, seq = message.seq, "duplicate event; re-publishing its fan-out");
                self.tally.duplicates += 1;
                message
            }
        };
        self.items[index].state = State::Stored(message);
    }
}

/// One fan-out record being built: its room, its events (batch index, seq) and their messages.
type FanoutRecord<'a> = (String, Vec<(usize, u64)>, Vec<&'a FanoutMessage>);

/// Deliveries waiting for their retry backoff before being nacked; cancelling the token
/// nacks them at once.
struct RetryQueue {
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl RetryQueue {
    fn new(cancel: CancellationToken) -> Self {
        RetryQueue {
            tasks: JoinSet::new(),
            cancel,
        }
    }

    /// Nacks `deliveries`, in order, after `delay`.
    fn schedule(&mut self, deliveries: Vec<Delivery>, delay: Duration) {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(delay) => {}
            }
            for delivery in deliveries {
                if let Err(error) = delivery.nack().await {
                    tracing::debug!(%error, "nack failed; the delivery is released when the stream closes");
                }
            }
        });
    }

    /// Forgets the finished tasks.
    fn reap(&mut self) {
        while let Some(result) = self.tasks.try_join_next() {
            if let Err(error) = result {
                tracing::warn!(%error, "a retry task failed");
            }
        }
    }

    /// Nacks every waiting delivery now and waits until that is done.
    async fn flush(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(initial_ms: u64, max_ms: u64) -> WorkerConfig {
        WorkerConfig {
            retry_initial: Duration::from_millis(initial_ms),
            retry_max: Duration::from_millis(max_ms),
            ..WorkerConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_equal_jitter() {
        let config = config(100, 1_000);
        for (failures, full) in [
            (0, 100),
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (60, 1_000),
        ] {
            for _ in 0..50 {
                let delay = config.backoff(failures).as_millis();
                assert!(
                    (full / 2..=full).contains(&delay),
                    "failure {failures}: {delay}ms not in {full}/2..={full}"
                );
            }
        }
        assert_eq!(self::config(0, 0).backoff(3), Duration::ZERO);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let bad = [
            WorkerConfig {
                group: String::new(),
                ..WorkerConfig::default()
            },
            WorkerConfig {
                batch_max: 0,
                ..WorkerConfig::default()
            },
            WorkerConfig {
                max_attempts: 0,
                ..WorkerConfig::default()
            },
            config(10, 5),
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(WorkerError::Config(_))),
                "{config:?}"
            );
        }
        assert!(WorkerConfig::default().validate().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_end_on_time_or_at_shutdown() {
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        assert!(sleep_unless_cancelled(&shutdown, Duration::from_secs(30)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(30));

        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            cancel.cancel();
        });
        let start = tokio::time::Instant::now();
        assert!(!sleep_unless_cancelled(&shutdown, Duration::from_secs(3_600)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_sequence_sums_as_expected_under_paused_time() {
        // Five consecutive failures with the default policy wait between 0.75 s and 1.5 s
        // in total (100 + 200 + 400 + 800 ms at most, before the fifth).
        let config = WorkerConfig::default();
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        for failures in 1..=4 {
            assert!(sleep_unless_cancelled(&shutdown, config.backoff(failures)).await);
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(750) && waited <= Duration::from_millis(1_500),
            "{waited:?}"
        );
    }
}
