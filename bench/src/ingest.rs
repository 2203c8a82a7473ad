//! Ingest: `P` publishers at full speed, each in its own room, each with up to `inflight`
//! publishes awaiting their ack.
//!
//! Acknowledged publishes per second (and per server CPU-second) are counted over the measured
//! part, after `warmup`; ack latency is recorded for publishes sent during it. Each publisher is
//! the only member of its room, so it also checks that it receives every acknowledged event
//! exactly once.

use crate::client::{ClientConfig, Endpoint, random_tag, source_addresses};
use crate::error::ScenarioError;
use crate::fanout::wait_for;
use crate::member::{
    AckHandler, Deliveries, JoinPlan, SharedSink, connect_members, publisher_reader,
};
use crate::procfs::{self, ProcSample};
use crate::progress::{mib, ticker};
use crate::protocol::{Target, payload};
use crate::stats::{BitSet, Clock, LatencySummary, ShardedHistogram};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Ingest parameters.
#[derive(Debug, Clone)]
pub struct IngestParams {
    /// Publishing connections (each with its own user id and room).
    pub publishers: usize,
    /// Publishes awaiting an ack per publisher.
    pub inflight: usize,
    /// Length of the measured part.
    pub duration: Duration,
    /// Publishing before the measured part.
    pub warmup: Duration,
    /// Size of each event's JSON payload.
    pub payload_bytes: usize,
    /// Source addresses 127.0.0.2 … 127.0.0.{N+1} to spread connections over (1: the kernel picks).
    pub source_ips: usize,
    /// At the end, outstanding acks and deliveries are waited for until none arrived for this
    /// long (at most 5 minutes); what is missing then counts as lost.
    pub drain_timeout: Duration,
    /// Client socket settings.
    pub client: ClientConfig,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Default for IngestParams {
    fn default() -> Self {
        IngestParams {
            publishers: 16,
            inflight: 32,
            duration: Duration::from_secs(20),
            warmup: Duration::from_secs(2),
            payload_bytes: 100,
            source_ips: 1,
            drain_timeout: Duration::from_secs(10),
            client: ClientConfig::default(),
            progress: false,
        }
    }
}

/// What an ingest run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestResult {
    /// The server.
    pub target: Target,
    /// Publishers.
    pub publishers: usize,
    /// Publishes in flight per publisher.
    pub inflight: usize,
    /// Requested measured duration, seconds.
    pub duration_secs: f64,
    /// Payload size, bytes.
    pub payload_bytes: usize,
    /// Publishes sent (warm-up and drain included).
    pub sent: u64,
    /// Publishes acknowledged (all).
    pub acked: u64,
    /// Publishes acknowledged during the measured part.
    pub measured_acks: u64,
    /// Publishes answered with an error frame.
    pub publish_errors: u64,
    /// The first such error.
    pub first_error: Option<String>,
    /// Acknowledged events their publisher never received back.
    pub lost: u64,
    /// Events a publisher received more than once.
    pub duplicated: u64,
    /// Messages whose seq did not follow the previous one.
    pub seq_breaks: u64,
    /// Publishers whose connection ended during the run.
    pub disconnected: u64,
    /// How the first of them ended.
    pub first_disconnect: Option<String>,
    /// Time from the last publish until every acknowledged event came back (or the drain
    /// gave up), seconds: how far delivery lags behind acknowledgement.
    #[serde(default)]
    pub drain_secs: f64,
    /// Acknowledged events delivered per second, from the first publish to the last delivery:
    /// the rate the whole pipeline sustains.
    #[serde(default)]
    pub delivered_per_sec: f64,
    /// Measured part, seconds.
    pub window_secs: f64,
    /// Acknowledged publishes per second.
    pub acks_per_sec: f64,
    /// Server CPU seconds over the measured part.
    pub server_cpu_secs: f64,
    /// Server CPU use (1.0 = one core).
    pub server_cpu_util: f64,
    /// Acknowledged publishes per server CPU-second.
    pub acks_per_server_cpu_sec: f64,
    /// Server resident memory at the end, bytes.
    pub server_rss_bytes: u64,
    /// Load generator CPU use (1.0 = one core).
    pub client_cpu_util: f64,
    /// Publish → ack latency of publishes sent during the measured part.
    pub ack_latency: LatencySummary,
    /// Publish → delivery (back to the publisher) latency of every event.
    pub delivery_latency: LatencySummary,
}

/// Shared by every publisher of a run.
struct Totals {
    clock: Clock,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Sends at or after this harness time are measured (`u64::MAX` until the warm-up ends).
    measure_from_ns: AtomicU64,
    /// Sends before this harness time are measured (`u64::MAX` until the measured part ends).
    measure_to_ns: AtomicU64,
    ack_latency: ShardedHistogram,
}

struct Acks {
    totals: Arc<Totals>,
    send_ns: Arc<Mutex<HashMap<u64, u64>>>,
    permits: Arc<Semaphore>,
    acked: BitSet,
    key: usize,
}

impl AckHandler for Acks {
    fn ack(&mut self, index: Option<u64>) {
        self.permits.add_permits(1);
        let Some(index) = index else { return };
        let sent = self
            .send_ns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&index);
        if !self.acked.insert(index) {
            return;
        }
        self.totals.acked.fetch_add(1, Ordering::Relaxed);
        if let Some(sent) = sent
            && sent >= self.totals.measure_from_ns.load(Ordering::Relaxed)
            && sent < self.totals.measure_to_ns.load(Ordering::Relaxed)
        {
            let micros = self.totals.clock.now_ns().saturating_sub(sent) / 1000;
            self.totals.ack_latency.record(self.key, micros);
        }
    }

    fn error(&mut self, text: &str) {
        self.permits.add_permits(1);
        self.totals.errors.fetch_add(1, Ordering::Relaxed);
        self.totals
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| text.to_owned());
    }
}

/// Runs the ingest scenario against `endpoint`.
pub async fn run(
    endpoint: &Endpoint,
    params: &IngestParams,
) -> Result<IngestResult, ScenarioError> {
    let target = endpoint.target;
    let tag = random_tag();
    let sources = source_addresses(params.source_ips);
    let clock = Clock::new();
    let shared = Arc::new(Deliveries::new(target, clock, 0));
    let totals = Arc::new(Totals {
        clock,
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        measure_from_ns: AtomicU64::new(u64::MAX),
        measure_to_ns: AtomicU64::new(u64::MAX),
        ack_latency: ShardedHistogram::new(16),
    });
    let stop_sending = CancellationToken::new();
    let guess = 1 << 16;

    // Every publisher joins its own room: connect them one room at a time.
    let connected = AtomicU64::new(0);
    let mut connections = Vec::with_capacity(params.publishers);
    for k in 0..params.publishers {
        let room = format!("ingest-{tag}-{k}");
        let plan = JoinPlan {
            endpoint,
            room: &room,
            sources: &sources[k % sources.len()..=k % sources.len()],
            concurrency: 1,
            config: &params.client,
        };
        let mut ws = connect_members(&plan, 1, |_| format!("ing-{k}"), &connected, |_, ws| ws)
            .await
            .map_err(ScenarioError::Connections)?;
        if let Some(ws) = ws.pop() {
            connections.push((room, ws));
        }
    }

    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (k, (room, ws)) in connections.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let sink: SharedSink = Arc::new(tokio::sync::Mutex::new(sink));
        let permits = Arc::new(Semaphore::new(params.inflight.max(1)));
        let send_ns = Arc::new(Mutex::new(HashMap::new()));
        let acks = Acks {
            totals: totals.clone(),
            send_ns: send_ns.clone(),
            permits: permits.clone(),
            acked: BitSet::with_capacity(guess),
            key: k,
        };
        readers.push(tokio::spawn(publisher_reader(
            stream,
            sink.clone(),
            shared.clone(),
            acks,
            guess,
            k,
        )));
        let (totals, stop, tag, bytes) = (
            totals.clone(),
            stop_sending.clone(),
            tag.clone(),
            params.payload_bytes,
        );
        writers.push(tokio::spawn(async move {
            let mut index = 0u64;
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    permit = permits.acquire() => permit,
                };
                let Ok(permit) = permit else { return Ok(()) };
                permit.forget();
                let now = totals.clock.now_ns();
                send_ns
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(index, now);
                let text = target.publish_frame(&room, &tag, index, &payload(index, now, bytes));
                sink.lock()
                    .await
                    .send(Message::text(text))
                    .await
                    .map_err(|e| e.to_string())?;
                totals.sent.fetch_add(1, Ordering::Relaxed);
                index += 1;
            }
        }));
    }

    let progress = {
        let (totals, shared) = (totals.clone(), shared.clone());
        let pids = endpoint.pids.clone();
        let mut last = (procfs::sample(&pids).unwrap_or_default(), 0u64);
        ticker(params.progress, Duration::from_secs(1), move |t| {
            let now = (
                procfs::sample(&pids).unwrap_or_default(),
                totals.acked.load(Ordering::Relaxed),
            );
            let line = format!(
                "[ingest {target}] {:>4.0}s sent {} acked {} ({}/s) delivered {} errors {} disconnected {} | server cpu {:.0}% rss {}",
                t.as_secs_f64(),
                totals.sent.load(Ordering::Relaxed),
                now.1,
                now.1 - last.1,
                shared.unique.load(Ordering::Relaxed),
                totals.errors.load(Ordering::Relaxed),
                shared.disconnected.load(Ordering::Relaxed),
                now.0.cpu_since(&last.0) * 100.0,
                mib(now.0.rss_bytes),
            );
            last = now;
            line
        })
    };

    let own = [procfs::own_pid()];
    let sending_start = Instant::now();
    tokio::time::sleep(params.warmup).await;
    totals
        .measure_from_ns
        .store(clock.now_ns(), Ordering::Relaxed);
    let start: (Instant, ProcSample, ProcSample, u64) = (
        Instant::now(),
        procfs::sample(&endpoint.pids)?,
        procfs::sample(&own)?,
        totals.acked.load(Ordering::Relaxed),
    );
    tokio::time::sleep(params.duration).await;
    let end_acked = totals.acked.load(Ordering::Relaxed);
    let window_secs = start.0.elapsed().as_secs_f64().max(1e-9);
    let server_end = procfs::sample(&endpoint.pids)?;
    let client_end = procfs::sample(&own)?;
    // Ack latency is only recorded for publishes sent within the window.
    totals
        .measure_to_ns
        .store(clock.now_ns(), Ordering::Relaxed);
    stop_sending.cancel();
    let mut send_failed = None;
    for writer in writers {
        match writer.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => send_failed = send_failed.or(Some(err)),
            Err(err) => send_failed = send_failed.or(Some(err.to_string())),
        }
    }
    let sent = totals.sent.load(Ordering::Relaxed);
    let sending_end = Instant::now();
    wait_for(params.drain_timeout, sent, || {
        totals.acked.load(Ordering::Relaxed) + totals.errors.load(Ordering::Relaxed)
    })
    .await;
    let acked = totals.acked.load(Ordering::Relaxed);
    wait_for(params.drain_timeout, acked, || {
        shared.unique.load(Ordering::Relaxed)
    })
    .await;
    let delivered_end = Instant::now();
    drop(progress);
    shared.stop.cancel();
    let mut lost = 0;
    for reader in readers {
        let (received, acks) = reader
            .await
            .map_err(|e| ScenarioError::Failed(format!("publisher task: {e}")))?;
        lost += acks.acked.missing_from(&received);
    }
    if let Some(err) = send_failed {
        return Err(ScenarioError::Failed(format!(
            "publishing failed: {err} (first disconnect: {:?})",
            shared.first_disconnect()
        )));
    }
    let measured_acks = end_acked - start.3;
    let server_cpu = server_end.cpu_since(&start.1);
    let first_error = totals
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(IngestResult {
        target,
        publishers: params.publishers,
        inflight: params.inflight,
        duration_secs: params.duration.as_secs_f64(),
        payload_bytes: params.payload_bytes,
        sent,
        acked,
        measured_acks,
        publish_errors: totals.errors.load(Ordering::Relaxed),
        first_error,
        lost,
        duplicated: shared.duplicated.load(Ordering::Relaxed),
        seq_breaks: shared.seq_breaks.load(Ordering::Relaxed),
        disconnected: shared.disconnected.load(Ordering::Relaxed),
        first_disconnect: shared.first_disconnect(),
        window_secs,
        drain_secs: delivered_end.duration_since(sending_end).as_secs_f64(),
        delivered_per_sec: acked as f64
            / delivered_end
                .duration_since(sending_start)
                .as_secs_f64()
                .max(1e-9),
        acks_per_sec: measured_acks as f64 / window_secs,
        server_cpu_secs: server_cpu,
        server_cpu_util: server_cpu / window_secs,
        acks_per_server_cpu_sec: if server_cpu > 0.0 {
            measured_acks as f64 / server_cpu
        } else {
            0.0
        },
        server_rss_bytes: server_end.rss_bytes,
        client_cpu_util: client_end.cpu_since(&start.2) / window_secs,
        ack_latency: LatencySummary::of(&totals.ack_latency.merged()),
        delivery_latency: LatencySummary::of(&shared.latency.merged()),
    })
}
