//! Fan-out: `S` subscribers in one room, one publisher at a fixed rate.
//!
//! The publisher (a member too) sends `rate` events per second, each with a payload of
//! `payload_bytes` carrying its index and publish time; every member records what it receives.
//! The first `warmup` seconds of events are delivered and checked but left out of the latency
//! histogram and of the measured window. The window runs from the first measured publish until
//! every member received every acknowledged event (or the drain timeout): deliveries per
//! second and per server CPU-second are taken over it.

use crate::client::{ClientConfig, Endpoint, connect_and_join, random_tag, source_addresses};
use crate::error::ScenarioError;
use crate::member::{
    AckHandler, Deliveries, JoinPlan, SharedSink, connect_members, publisher_reader, subscriber,
};
use crate::procfs::{self, ProcSample};
use crate::progress::{mib, ticker};
use crate::protocol::{Target, payload};
use crate::stats::{BitSet, Clock, LatencySummary, ShardedHistogram};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Fan-out parameters.
#[derive(Debug, Clone)]
pub struct FanoutParams {
    /// Subscribers in the room (the publisher comes on top).
    pub subscribers: usize,
    /// Events published per second.
    pub rate: f64,
    /// Length of the measured part.
    pub duration: Duration,
    /// Publishing before the measured part.
    pub warmup: Duration,
    /// Size of each event's JSON payload.
    pub payload_bytes: usize,
    /// Connections set up at once.
    pub concurrency: usize,
    /// Source addresses 127.0.0.2 … 127.0.0.{N+1} to spread connections over (1: the kernel picks).
    pub source_ips: usize,
    /// After the last publish, outstanding acks and deliveries are waited for until none
    /// arrived for this long (at most 5 minutes); what is missing then counts as lost.
    pub drain_timeout: Duration,
    /// Client socket settings.
    pub client: ClientConfig,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Default for FanoutParams {
    fn default() -> Self {
        FanoutParams {
            subscribers: 1000,
            rate: 300.0,
            duration: Duration::from_secs(20),
            warmup: Duration::from_secs(2),
            payload_bytes: 100,
            concurrency: 128,
            source_ips: 1,
            drain_timeout: Duration::from_secs(10),
            client: ClientConfig::default(),
            progress: false,
        }
    }
}

/// What a fan-out run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutResult {
    /// The server.
    pub target: Target,
    /// Subscribers.
    pub subscribers: usize,
    /// Members receiving each event (subscribers + the publisher).
    pub members: usize,
    /// Requested events per second.
    pub rate: f64,
    /// Requested measured duration, seconds.
    pub duration_secs: f64,
    /// Payload size, bytes.
    pub payload_bytes: usize,
    /// Events published (warm-up included).
    pub published: u64,
    /// Events acknowledged.
    pub acked: u64,
    /// Publishes answered with an error frame.
    pub publish_errors: u64,
    /// The first such error.
    pub first_error: Option<String>,
    /// Acknowledged events of the measured part.
    pub measured_events: u64,
    /// Deliveries of measured events (distinct member × event).
    pub deliveries: u64,
    /// Deliveries of measured events expected: measured acked events × members.
    pub expected_deliveries: u64,
    /// Acknowledged events some member never received (summed over members).
    pub lost: u64,
    /// Events a member received more than once.
    pub duplicated: u64,
    /// Messages whose seq did not follow the previous one.
    pub seq_breaks: u64,
    /// Members whose connection ended during the run.
    pub disconnected: u64,
    /// How the first of them ended.
    pub first_disconnect: Option<String>,
    /// Measured window, seconds.
    pub window_secs: f64,
    /// Achieved publish rate over the measured part.
    pub publish_rate: f64,
    /// Deliveries per second over the window.
    pub deliveries_per_sec: f64,
    /// Deliveries per second asked for: rate × members.
    pub offered_deliveries_per_sec: f64,
    /// Time from the last publish until every delivery arrived (or the drain gave up), seconds.
    pub drain_secs: f64,
    /// Server CPU seconds over the window.
    pub server_cpu_secs: f64,
    /// Server CPU use over the window (1.0 = one core).
    pub server_cpu_util: f64,
    /// Deliveries per server CPU-second.
    pub deliveries_per_server_cpu_sec: f64,
    /// Server resident memory at the end, bytes.
    pub server_rss_bytes: u64,
    /// Load generator CPU use over the window (1.0 = one core).
    pub client_cpu_util: f64,
    /// Publish → receive latency of measured events at the subscribers.
    pub latency: LatencySummary,
    /// Publish → receive latency of the publisher's own copies (it is a member too).
    #[serde(default)]
    pub publisher_echo_latency: LatencySummary,
    /// Publish → ack latency of measured events.
    pub ack_latency: LatencySummary,
    /// Time to connect and join every member, seconds.
    pub setup_secs: f64,
}

struct Acks {
    send_ns: Arc<Vec<AtomicU64>>,
    clock: Clock,
    measure_from_index: u64,
    acked: BitSet,
    acked_count: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    first_error: Arc<Mutex<Option<String>>>,
    latency: Arc<ShardedHistogram>,
    echo: Arc<ShardedHistogram>,
}

impl AckHandler for Acks {
    fn echo_latency(&self) -> Option<Arc<ShardedHistogram>> {
        Some(self.echo.clone())
    }

    fn ack(&mut self, index: Option<u64>) {
        let Some(index) = index else { return };
        if !self.acked.insert(index) {
            return;
        }
        self.acked_count.fetch_add(1, Ordering::Relaxed);
        if index >= self.measure_from_index
            && let Some(sent) = self.send_ns.get(index as usize)
        {
            let micros = self
                .clock
                .now_ns()
                .saturating_sub(sent.load(Ordering::Relaxed))
                / 1000;
            self.latency.record(0, micros);
        }
    }

    fn error(&mut self, text: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| text.to_owned());
    }
}

/// Longest drain, whatever the progress.
const DRAIN_MAX: Duration = Duration::from_secs(300);

/// Polls `count` every 5 ms until it reaches `target`, or stops growing for `idle`, or
/// [`DRAIN_MAX`] passes; true when it reached `target`. A server that is behind but still
/// delivering is waited for; one that stopped delivering is not.
pub(crate) async fn wait_for(idle: Duration, target: u64, count: impl Fn() -> u64) -> bool {
    let start = Instant::now();
    let (mut last, mut last_change) = (count(), Instant::now());
    while last < target {
        if last_change.elapsed() >= idle || start.elapsed() >= DRAIN_MAX {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = count();
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
    true
}

/// Runs the fan-out scenario against `endpoint`.
pub async fn run(
    endpoint: &Endpoint,
    params: &FanoutParams,
) -> Result<FanoutResult, ScenarioError> {
    let target = endpoint.target;
    let tag = random_tag();
    let room = format!("fanout-{tag}");
    let sources = source_addresses(params.source_ips);
    let rate = params.rate.max(0.001);
    let warm = (rate * params.warmup.as_secs_f64()).round() as u64;
    let measured = ((rate * params.duration.as_secs_f64()).round() as u64).max(1);
    let planned = warm + measured;
    let clock = Clock::new();
    let shared = Arc::new(Deliveries::new(target, clock, warm));
    let members = params.subscribers + 1;

    // Subscribers, each read by its own task from the moment it joined.
    let setup_start = Instant::now();
    let connected = Arc::new(AtomicU64::new(0));
    let progress = {
        let connected = connected.clone();
        let total = params.subscribers;
        ticker(params.progress, Duration::from_secs(1), move |t| {
            format!(
                "[fanout {target}] {:>4.0}s connecting: {}/{total}",
                t.as_secs_f64(),
                connected.load(Ordering::Relaxed)
            )
        })
    };
    let plan = JoinPlan {
        endpoint,
        room: &room,
        sources: &sources,
        concurrency: params.concurrency,
        config: &params.client,
    };
    let subscribers = connect_members(
        &plan,
        params.subscribers,
        |i| format!("sub-{i}"),
        &connected,
        |i, ws| tokio::spawn(subscriber(ws, shared.clone(), planned, i)),
    )
    .await;
    let subscribers = match subscribers {
        Ok(handles) => handles,
        Err(failures) => {
            shared.stop.cancel();
            return Err(ScenarioError::Connections(failures));
        }
    };
    let ws = connect_and_join(endpoint, sources[0], "pub-0", &room, &params.client).await?;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    drop(progress);

    let (sink, stream) = ws.split();
    let sink: SharedSink = Arc::new(tokio::sync::Mutex::new(sink));
    let send_ns: Arc<Vec<AtomicU64>> = Arc::new((0..planned).map(|_| AtomicU64::new(0)).collect());
    let acked_count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None));
    let ack_latency = Arc::new(ShardedHistogram::new(1));
    let echo_latency = Arc::new(ShardedHistogram::new(1));
    let acks = Acks {
        send_ns: send_ns.clone(),
        clock,
        measure_from_index: warm,
        acked: BitSet::with_capacity(planned),
        acked_count: acked_count.clone(),
        errors: errors.clone(),
        first_error: first_error.clone(),
        latency: ack_latency.clone(),
        echo: echo_latency.clone(),
    };
    let reader = tokio::spawn(publisher_reader(
        stream,
        sink.clone(),
        shared.clone(),
        acks,
        planned,
        params.subscribers,
    ));

    let published = Arc::new(AtomicU64::new(0));
    let progress = {
        let (published, acked_count, shared) =
            (published.clone(), acked_count.clone(), shared.clone());
        let pids = endpoint.pids.clone();
        let mut last = procfs::sample(&pids).unwrap_or_default();
        ticker(params.progress, Duration::from_secs(1), move |t| {
            let now = procfs::sample(&pids).unwrap_or_default();
            let line = format!(
                "[fanout {target}] {:>4.0}s published {}/{planned} acked {} delivered {} dup {} disconnected {} | server cpu {:.0}% rss {}",
                t.as_secs_f64(),
                published.load(Ordering::Relaxed),
                acked_count.load(Ordering::Relaxed),
                shared.unique.load(Ordering::Relaxed),
                shared.duplicated.load(Ordering::Relaxed),
                shared.disconnected.load(Ordering::Relaxed),
                now.cpu_since(&last) * 100.0,
                mib(now.rss_bytes),
            );
            last = now;
            line
        })
    };

    // Publish on a fixed schedule.
    let interval_ns = 1e9 / rate;
    let start_ns = clock.now_ns() + 5_000_000;
    let mut window_start: Option<(Instant, ProcSample, ProcSample)> = None;
    let own = [procfs::own_pid()];
    let mut send_failed = None;
    for i in 0..planned {
        let due = start_ns + (i as f64 * interval_ns) as u64;
        tokio::time::sleep_until(clock.instant(due).into()).await;
        if i == warm {
            window_start = Some((
                Instant::now(),
                procfs::sample(&endpoint.pids)?,
                procfs::sample(&own)?,
            ));
        }
        let now = clock.now_ns();
        send_ns[i as usize].store(now, Ordering::Relaxed);
        let text = target.publish_frame(&room, &tag, i, &payload(i, now, params.payload_bytes));
        if let Err(err) = sink.lock().await.send(Message::text(text)).await {
            send_failed = Some(err.to_string());
            break;
        }
        published.fetch_add(1, Ordering::Relaxed);
    }
    let published = published.load(Ordering::Relaxed);
    let publish_end = Instant::now();

    // Drain: every publish answered, then every acknowledged event delivered to every member.
    wait_for(params.drain_timeout, published, || {
        acked_count.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed)
    })
    .await;
    let acked = acked_count.load(Ordering::Relaxed);
    let want = acked * members as u64;
    wait_for(params.drain_timeout, want, || {
        shared.unique.load(Ordering::Relaxed)
    })
    .await;
    let window_end = Instant::now();
    let server_end = procfs::sample(&endpoint.pids)?;
    let client_end = procfs::sample(&own)?;
    drop(progress);

    shared.stop.cancel();
    let mut received: Vec<BitSet> = Vec::with_capacity(members);
    for handle in subscribers {
        received.push(
            handle
                .await
                .map_err(|e| ScenarioError::Failed(format!("subscriber task: {e}")))?,
        );
    }
    let (own_received, acks) = reader
        .await
        .map_err(|e| ScenarioError::Failed(format!("publisher task: {e}")))?;
    received.push(own_received);
    if let Some(err) = send_failed {
        return Err(ScenarioError::Failed(format!(
            "publishing failed after {published} events: {err} (first disconnect: {:?})",
            shared.first_disconnect()
        )));
    }

    let (start, server_start, client_start) = window_start
        .ok_or_else(|| ScenarioError::Failed("the measured part never started".into()))?;
    let window_secs = window_end.duration_since(start).as_secs_f64().max(1e-9);
    let publish_secs = publish_end.duration_since(start).as_secs_f64().max(1e-9);
    let measured_events = acks.acked.count_from(warm);
    let deliveries: u64 = received.iter().map(|r| r.count_from(warm)).sum();
    let lost: u64 = received.iter().map(|r| acks.acked.missing_from(r)).sum();
    let server_cpu = server_end.cpu_since(&server_start);
    let first_error = first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(FanoutResult {
        target,
        subscribers: params.subscribers,
        members,
        rate: params.rate,
        duration_secs: params.duration.as_secs_f64(),
        payload_bytes: params.payload_bytes,
        published,
        acked,
        publish_errors: errors.load(Ordering::Relaxed),
        first_error,
        measured_events,
        deliveries,
        expected_deliveries: measured_events * members as u64,
        lost,
        duplicated: shared.duplicated.load(Ordering::Relaxed),
        seq_breaks: shared.seq_breaks.load(Ordering::Relaxed),
        disconnected: shared.disconnected.load(Ordering::Relaxed),
        first_disconnect: shared.first_disconnect(),
        window_secs,
        publish_rate: (published.saturating_sub(warm)) as f64 / publish_secs,
        deliveries_per_sec: deliveries as f64 / window_secs,
        offered_deliveries_per_sec: params.rate * members as f64,
        drain_secs: window_end.duration_since(publish_end).as_secs_f64(),
        server_cpu_secs: server_cpu,
        server_cpu_util: server_cpu / window_secs,
        deliveries_per_server_cpu_sec: if server_cpu > 0.0 {
            deliveries as f64 / server_cpu
        } else {
            0.0
        },
        server_rss_bytes: server_end.rss_bytes,
        client_cpu_util: client_end.cpu_since(&client_start) / window_secs,
        latency: LatencySummary::of(&shared.latency.merged()),
        ack_latency: LatencySummary::of(&ack_latency.merged()),
        publisher_echo_latency: LatencySummary::of(&echo_latency.merged()),
        setup_secs,
    })
}
