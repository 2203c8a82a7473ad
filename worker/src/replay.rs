//! Replaying the inbound history from Kafka into a store: backfill and disaster recovery.
//!
//! [`replay`] reads the inbound topic `{prefix}.events` from a start point
//! ([`ReplayStart`]: the beginning, offsets, or a time) up to its end at the time the replay
//! opens (see [`roomcast_broker::HistoryReader`]), and puts every record through the live worker's path:
//! decode and validate the envelope, run the event's [handler](crate::handler), then
//! [`Store::append`] in batches, in offset order per partition (so in publish order per room).
//!
//! - **Idempotent.** The store deduplicates events by `(from, id)`: events already in the
//!   store come back as duplicates and are not stored again, so replaying twice leaves the
//!   store unchanged, and a replay into a store the live workers filled only adds what is
//!   missing.
//! - **Exact copy.** A full replay from the beginning into an empty store numbers every room
//!   1, 2, 3, … in the same order as the live workers did, so it reproduces their `messages`
//!   table (same rooms, seqs, ids, senders, payloads), provided the topic still holds the
//!   whole history and uses the same handlers. A replay from a later point, or into a store
//!   that already holds other messages of a room, appends after that room's last seq instead.
//! - **Invalid records** (not an inbound event envelope, or rejected by a handler) are
//!   counted and skipped, as the live worker dead-letters them; with
//!   [`ReplayOptions::dead_letter`] they are dead-lettered again.
//! - **No fan-out by default**: gateways are not sent the replayed history. With
//!   [`ReplayOptions::fanout`] a fan-out message is published for each event the replay
//!   stores as new.
//! - The workers' consumer group is not touched: the replay joins no group and commits
//!   nothing.

use crate::handler::{Disposition, HandlerError, Handlers};
use crate::worker::WorkerConfig;
use crate::worker::decode_event as decode;
use bytes::Bytes;
use roomcast_broker::{Broker, BrokerError};
use roomcast_broker::{ReplayRecord, open_history};
use roomcast_schemas::{DeadLetter, ENVELOPE_VERSION, InboundEvent, now_ms};
use roomcast_store::{Appended, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use roomcast_broker::ReplayStart;

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Settings of a [`replay`].
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Where each partition is read from.
    pub start: ReplayStart,
    /// Most records stored per store transaction.
    pub batch_max: usize,
    /// Publish a fan-out message for each event stored as new.
    pub fanout: bool,
    /// Dead-letter the records that are skipped as invalid or rejected.
    pub dead_letter: bool,
    /// Attempts of a failing store append or transient handler failure before the replay
    /// gives up (store appends) or skips the event (handlers), with backoff in between.
    pub max_attempts: u32,
    /// First retry backoff; it doubles with each failure.
    pub retry_initial: Duration,
    /// Longest retry backoff.
    pub retry_max: Duration,
    /// What happens to each event kind; use the live workers' handlers.
    pub handlers: Handlers,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            start: ReplayStart::Beginning,
            batch_max: 500,
            fanout: false,
            dead_letter: false,
            max_attempts: 5,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            handlers: Handlers::new(),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read from the topic.
    pub read: u64,
    /// Events stored as new messages.
    pub stored: u64,
    /// Events that were already stored (deduplicated by `(from, id)`).
    pub duplicates: u64,
    /// Records skipped: not a valid inbound event, rejected by a handler, or failing a
    /// handler on every attempt.
    pub skipped: u64,
    /// Events a handler dropped (acknowledged without storing, as the live worker does).
    pub dropped: u64,
    /// Skipped records written to the dead-letter topic (with `dead_letter`).
    pub dead_lettered: u64,
    /// Fan-out messages published (with `fanout`).
    pub fanned_out: u64,
    /// Whether every partition was read to its end (`false` when the replay was cancelled).
    pub complete: bool,
}

/// Why a replay failed. Rerunning it is safe: it only stores what is missing.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The request is invalid (e.g. not a Kafka URL).
    #[error("invalid replay: {0}")]
    Config(String),
    /// Reading the topic, or publishing fan-out or dead letters, failed.
    #[error("broker failure during the replay: {0}")]
    Broker(#[from] BrokerError),
    /// The store failed on every attempt.
    #[error("store failure during the replay: {0}")]
    Store(#[from] StoreError),
}

/// Replays the inbound topic of the Kafka cluster at `broker_url` into `store`; see the module
/// documentation. Stops early, with [`ReplayReport::complete`] false, when `shutdown` is
/// cancelled (after storing the current batch).
pub async fn replay(
    broker_url: &str,
    store: &Store,
    options: &ReplayOptions,
    shutdown: &CancellationToken,
) -> Result<ReplayReport, ReplayError> {
    if options.batch_max == 0 || options.max_attempts == 0 {
        return Err(ReplayError::Config(
            "batch_max and max_attempts must be at least 1".to_owned(),
        ));
    }
    let mut reader = match open_history(broker_url, &options.start).await {
        Ok(reader) => reader,
        Err(error @ BrokerError::NoHistory { .. }) => {
            return Err(ReplayError::Config(error.to_string()));
        }
        Err(error) => return Err(error.into()),
    };
    // Fan-out and dead letters go through the ordinary backend.
    let publisher = if options.fanout || options.dead_letter {
        Some(roomcast_broker::connect(broker_url).await?)
    } else {
        None
    };
    let mut run = Run {
        store,
        options,
        retry: WorkerConfig {
            max_attempts: options.max_attempts,
            retry_initial: options.retry_initial,
            retry_max: options.retry_max.max(options.retry_initial),
            ..WorkerConfig::default()
        },
        publisher: publisher.clone(),
        report: ReplayReport::default(),
    };
    let total: u64 = reader.ranges().iter().map(|range| range.len()).sum();
    tracing::info!(
        topic = reader.source(),
        start = %options.start,
        records = total,
        "replay started"
    );
    let mut logged = Instant::now();
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let records = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            records = reader.next_batch(options.batch_max) => records,
        };
        let records = match records {
            Ok(records) => records,
            Err(error) => break Err(ReplayError::Broker(error)),
        };
        if records.is_empty() {
            run.report.complete = reader.is_done();
            break Ok(());
        }
        if let Err(error) = run.process(records).await {
            break Err(error);
        }
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            let report = run.report;
            tracing::info!(
                read = report.read,
                of = total,
                stored = report.stored,
                duplicates = report.duplicates,
                skipped = report.skipped,
                "replaying"
            );
        }
    };
    if let Some(publisher) = publisher {
        publisher.close().await;
    }
    let report = run.report;
    match &result {
        Ok(()) => tracing::info!(?report, "replay finished"),
        Err(error) => tracing::error!(%error, ?report, "replay failed"),
    }
    result.map(|()| report)
}

/// A replay in progress.
struct Run<'a> {
    store: &'a Store,
    options: &'a ReplayOptions,
    /// The retry backoff settings.
    retry: WorkerConfig,
    publisher: Option<Arc<dyn Broker>>,
    report: ReplayReport,
}

impl Run<'_> {
    /// Decodes, handles and stores one batch of records.
    async fn process(&mut self, records: Vec<ReplayRecord>) -> Result<(), ReplayError> {
        self.report.read += records.len() as u64;
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            let reason = match decode(&record.key, &record.payload) {
                Err(reason) => reason,
                Ok(event) => match self.handle(&event).await {
                    Ok(Disposition::Deliver) => {
                        events.push(event);
                        continue;
                    }
                    Ok(Disposition::Drop) => {
                        self.report.dropped += 1;
                        continue;
                    }
                    Err(reason) => reason,
                },
            };
            self.skip(&record, reason).await?;
        }
        let appended = self.append(&events).await?;
        for result in appended {
            match result {
                Appended::New(message) => {
                    self.report.stored += 1;
                    if self.options.fanout
                        && let Some(publisher) = &self.publisher
                    {
                        let payload = serde_json::to_vec(&message).map_err(|error| {
                            BrokerError::Rejected(format!("cannot encode a message: {error}"))
                        })?;
                        publisher
                            .publish_fanout(&message.room, Bytes::from(payload))
                            .await?;
                        self.report.fanned_out += 1;
                    }
                }
                Appended::Duplicate(_) => self.report.duplicates += 1,
            }
        }
        Ok(())
    }

    /// Runs the event's handler, retrying transient failures; the error is the reason to
    /// skip the event.
    async fn handle(&self, event: &InboundEvent) -> Result<Disposition, String> {
        let mut attempt = 1;
        loop {
            match self.options.handlers.handle(event).await {
                Ok(disposition) => return Ok(disposition),
                Err(HandlerError::Permanent(reason)) => {
                    return Err(format!(
                        "rejected by the `{}` handler: {reason}",
                        event.event
                    ));
                }
                Err(HandlerError::Transient(reason)) if attempt >= self.options.max_attempts => {
                    return Err(format!(
                        "the `{}` handler failed {attempt} times; last error: {reason}",
                        event.event
                    ));
                }
                Err(HandlerError::Transient(reason)) => {
                    tracing::warn!(room = %event.room, id = %event.id, attempt, %reason, "handler failed during the replay; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Appends `events` in one transaction, retrying with backoff.
    async fn append(&self, events: &[InboundEvent]) -> Result<Vec<Appended>, ReplayError> {
        let mut attempt = 1;
        loop {
            match self.store.append(events).await {
                Ok(appended) => return Ok(appended),
                Err(error) if attempt >= self.options.max_attempts => {
                    return Err(ReplayError::Store(error));
                }
                Err(error) => {
                    let delay = self.retry.backoff(attempt);
                    tracing::warn!(%error, attempt, retry_in_ms = delay.as_millis(), "store append failed during the replay; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Counts a skipped record and dead-letters it when asked to.
    async fn skip(&mut self, record: &ReplayRecord, reason: String) -> Result<(), ReplayError> {
        self.report.skipped += 1;
        tracing::debug!(
            partition = record.partition,
            offset = record.offset,
            key = %record.key,
            %reason,
            "replay skipped a record"
        );
        if !self.options.dead_letter {
            return Ok(());
        }
        let Some(publisher) = &self.publisher else {
            return Ok(());
        };
        let letter = DeadLetter {
            v: ENVELOPE_VERSION,
            reason: format!(
                "replay of partition {} offset {}: {reason}",
                record.partition, record.offset
            ),
            attempts: 1,
            ts: now_ms(),
            key: record.key.clone(),
            payload: String::from_utf8_lossy(&record.payload).into_owned(),
        };
        let payload = serde_json::to_vec(&letter).map_err(|error| {
            BrokerError::Rejected(format!("cannot encode a dead letter: {error}"))
        })?;
        publisher
            .dead_letter(&record.key, Bytes::from(payload))
            .await?;
        self.report.dead_lettered += 1;
        Ok(())
    }
}

/// Decodes and validates a record as the live worker does; the error is the reason to skip it.
#[cfg(test)]
mod tests {
    use super::{ReplayError, ReplayOptions, decode, replay};
    use roomcast_store::Store;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn decodes_like_the_live_worker() {
        let good =
            br#"{"v":1,"id":"e1","room":"lobby","event":"say","from":"ann","ts":5,"data":{"x":1}}"#;
        let event = decode("lobby", good).expect("a valid event");
        assert_eq!((event.room.as_str(), event.id.as_str()), ("lobby", "e1"));
        assert_eq!(event.data.get(), r#"{"x":1}"#);
        assert!(decode("other", good).unwrap_err().contains("broker key"));
        assert!(
            decode("lobby", b"not json")
                .unwrap_err()
                .contains("undecodable")
        );
        let old = br#"{"v":9,"id":"e1","room":"lobby","event":"say","from":"ann","ts":5,"data":1}"#;
        assert!(decode("lobby", old).unwrap_err().contains("version 9"));
        let anonymous =
            br#"{"v":1,"id":"e1","room":"lobby","event":"say","from":"","ts":5,"data":1}"#;
        assert!(
            decode("lobby", anonymous)
                .unwrap_err()
                .contains("user id must be")
        );
    }

    #[tokio::test]
    async fn refuses_brokers_without_a_replayable_history() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        for url in [
            "amqp://guest:s3cret@127.0.0.1:5672/%2f",
            "embedded:/tmp/broker",
            "",
        ] {
            let result = replay(
                url,
                &store,
                &ReplayOptions::default(),
                &CancellationToken::new(),
            )
            .await;
            match result {
                Err(ReplayError::Config(message)) => {
                    assert!(message.contains("not a kafka:// URL"), "{message}");
                    assert!(!message.contains("s3cret"), "{message}");
                }
                other => panic!("{url}: expected a configuration error, got {other:?}"),
            }
        }
    }
}
