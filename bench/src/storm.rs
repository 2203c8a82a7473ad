//! Replay storm: what a crowd of history replays costs everybody else (Roomcast only).
//!
//! A long room is filled with `history` events of `history_bytes` each, a small room with
//! `small_history` events. Then, for `duration` each, two phases are measured with the same
//! probes:
//!
//! - **quiet**: only the probes run;
//! - **storm**: `storm_users` users with `storm_connections` connections each join the long
//!   room with `since=0` and never read; every connection is dropped and opened again after
//!   `storm_hold`, so that the gateway is always busy starting replays.
//!
//! The probes belong to other users: one publishes into its own room at `probe_rate` and times
//! publish → its own `message`; another joins the small room with `since=0` every
//! `join_every` (leave, then join) and times the join → its last history message.

use crate::client::{ClientConfig, Endpoint, Ws, connect, random_tag};
use crate::error::ScenarioError;
use crate::protocol::Target;
use crate::report::Metrics;
use crate::stats::{LatencySummary, new_histogram, record};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Replay-storm parameters.
#[derive(Debug, Clone)]
pub struct StormParams {
    /// Events in the long room.
    pub history: usize,
    /// Payload bytes of each of them.
    pub history_bytes: usize,
    /// Events in the small room.
    pub small_history: usize,
    /// Users of the storm.
    pub storm_users: usize,
    /// Connections per storm user.
    pub storm_connections: usize,
    /// How long a storm connection lives before it is opened again.
    pub storm_hold: Duration,
    /// Length of each phase.
    pub duration: Duration,
    /// Probe publishes per second.
    pub probe_rate: f64,
    /// Time between two probe joins of the small room.
    pub join_every: Duration,
    /// Client socket settings.
    pub client: ClientConfig,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Default for StormParams {
    fn default() -> Self {
        StormParams {
            history: 3000,
            history_bytes: 10_000,
            small_history: 20,
            storm_users: 2,
            storm_connections: 100,
            storm_hold: Duration::from_secs(12),
            duration: Duration::from_secs(20),
            probe_rate: 20.0,
            join_every: Duration::from_secs(1),
            client: ClientConfig::default(),
            progress: false,
        }
    }
}

/// The scenario's command-line options.
#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    /// Events in the long room.
    #[arg(long, default_value_t = 3000)]
    pub history: usize,
    /// Payload bytes of each of them.
    #[arg(long, default_value_t = 10_000)]
    pub history_bytes: usize,
    /// Events in the small room.
    #[arg(long, default_value_t = 20)]
    pub small_history: usize,
    /// Users of the storm.
    #[arg(long, default_value_t = 2)]
    pub storm_users: usize,
    /// Connections per storm user.
    #[arg(long, default_value_t = 100)]
    pub storm_connections: usize,
    /// Seconds a storm connection lives before it is opened again.
    #[arg(long, default_value_t = 12.0)]
    pub storm_hold: f64,
    /// Measured seconds of each phase.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Probe publishes per second.
    #[arg(long, default_value_t = 20.0)]
    pub probe_rate: f64,
    /// Seconds between two probe joins of the small room.
    #[arg(long, default_value_t = 1.0)]
    pub join_every: f64,
}

impl StormArgs {
    /// The parameters, with the client settings and progress of the run.
    pub fn params(&self, client: ClientConfig, progress: bool) -> StormParams {
        let secs = |v: f64| Duration::from_secs_f64(v.max(0.0));
        StormParams {
            history: self.history,
            history_bytes: self.history_bytes,
            small_history: self.small_history,
            storm_users: self.storm_users,
            storm_connections: self.storm_connections,
            storm_hold: secs(self.storm_hold),
            duration: secs(self.duration),
            probe_rate: self.probe_rate,
            join_every: secs(self.join_every),
            client,
            progress,
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseResult {
    /// Publish → own message of the probe user.
    pub publish_echo: LatencySummary,
    /// Probe publishes whose message did not come back within the phase (and a second).
    pub publish_missing: u64,
    /// Error frames the probes received, and the first of them.
    pub probe_errors: u64,
    /// The first error frame a probe received.
    pub first_error: Option<String>,
    /// `join` with `since=0` of the small room → its last history message.
    pub small_join: LatencySummary,
    /// Probe joins that did not complete.
    pub small_join_failed: u64,
    /// Storm connections opened in the phase.
    pub storm_opened: u64,
}

/// What a replay-storm run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormResult {
    /// The server.
    pub target: Target,
    /// Without the storm.
    pub quiet: PhaseResult,
    /// During the storm.
    pub storm: PhaseResult,
}

/// Runs the scenario against a Roomcast endpoint.
pub async fn run(endpoint: &Endpoint, params: &StormParams) -> Result<StormResult, ScenarioError> {
    if endpoint.target != Target::Roomcast {
        return Err(ScenarioError::Failed(
            "replay-storm replays Roomcast history: run it against roomcast".into(),
        ));
    }
    let tag = random_tag();
    let long = format!("storm-{tag}");
    let small = format!("small-{tag}");
    let seed_payload = serde_json::to_string(&"x".repeat(params.history_bytes))
        .map_err(|err| ScenarioError::Failed(err.to_string()))?;
    seed(endpoint, params, &long, params.history, &seed_payload).await?;
    seed(endpoint, params, &small, params.small_history, "1").await?;
    if params.progress {
        eprintln!("replay-storm: seeded {long} and {small}");
    }
    let quiet = phase(endpoint, params, &format!("{tag}-quiet"), &small, None).await?;
    if params.progress {
        eprintln!("replay-storm: quiet phase done");
    }
    let storm = phase(
        endpoint,
        params,
        &format!("{tag}-storm"),
        &small,
        Some(&long),
    )
    .await?;
    Ok(StormResult {
        target: endpoint.target,
        quiet,
        storm,
    })
}

async fn open(endpoint: &Endpoint, sub: &str, client: &ClientConfig) -> Result<Ws, ScenarioError> {
    let minter = endpoint
        .minter
        .as_ref()
        .ok_or_else(|| ScenarioError::Failed("roomcast needs a token minter".into()))?;
    let token = minter.mint(sub, Duration::from_secs(3600))?;
    Ok(connect(endpoint, None, sub, Some(&token), client).await?)
}

/// The frame that joins `room` from its first message (`since=0`).
fn replay_frame(room: &str) -> String {
    format!(r#"{{"type":"join","room":"{room}","since":0}}"#)
}

/// The next text frame as JSON.
async fn next_json(ws: &mut Ws) -> Result<serde_json::Value, ScenarioError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text)
                    .map_err(|err| ScenarioError::Failed(format!("bad frame: {err}")));
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(ScenarioError::Failed(err.to_string())),
            None => return Err(ScenarioError::Failed("connection closed".into())),
        }
    }
}

/// Publishes `count` events of `data` into `room`, 64 at a time, and waits for every ack.
async fn seed(
    endpoint: &Endpoint,
    params: &StormParams,
    room: &str,
    count: usize,
    data: &str,
) -> Result<(), ScenarioError> {
    let mut ws = open(endpoint, &format!("seeder-{room}"), &params.client).await?;
    ws.send(Message::text(Target::Roomcast.join_frame(room)))
        .await
        .map_err(fail)?;
    let mut sent = 0;
    let mut acked = 0;
    while acked < count {
        while sent < count && sent - acked < 64 {
            let frame = Target::Roomcast.publish_frame(room, "seed", sent as u64, data);
            ws.send(Message::text(frame)).await.map_err(fail)?;
            sent += 1;
        }
        let frame = next_json(&mut ws).await?;
        match frame["type"].as_str() {
            Some("ack") => acked += 1,
            Some("error") => return Err(ScenarioError::Failed(format!("seeding: {frame}"))),
            _ => {}
        }
    }
    Ok(())
}

fn fail(err: impl std::fmt::Display) -> ScenarioError {
    ScenarioError::Failed(err.to_string())
}

/// One phase: the probes, and the storm on `long` when given.
async fn phase(
    endpoint: &Endpoint,
    params: &StormParams,
    tag: &str,
    small: &str,
    long: Option<&str>,
) -> Result<PhaseResult, ScenarioError> {
    let stop = CancellationToken::new();
    let mut storm = Vec::new();
    if let Some(long) = long {
        for user in 0..params.storm_users {
            for k in 0..params.storm_connections {
                let (endpoint, client, stop) = (endpoint.clone(), params.client, stop.clone());
                let (sub, room, hold) =
                    (format!("storm-{user}"), long.to_owned(), params.storm_hold);
                // Staggered, so that replays keep starting all through the phase.
                let delay = hold.mul_f64(k as f64 / params.storm_connections.max(1) as f64);
                storm.push(tokio::spawn(async move {
                    storm_connection(&endpoint, &client, &sub, &room, hold, delay, stop).await
                }));
            }
        }
        // Let the first wave hit before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let publisher = probe_publishes(endpoint, params, tag, stop.clone());
    let joiner = probe_joins(endpoint, params, small, stop.clone());
    let stopper = async {
        tokio::time::sleep(params.duration).await;
        stop.cancel();
    };
    let (published, joined, ()) = tokio::join!(publisher, joiner, stopper);
    let (publish_echo, publish_missing, errors) = published?;
    let (small_join, small_join_failed) = joined?;
    let mut storm_opened = 0;
    for task in storm {
        storm_opened += task.await.unwrap_or(0);
    }
    Ok(PhaseResult {
        publish_echo: LatencySummary::of(&publish_echo),
        publish_missing,
        probe_errors: errors.count,
        first_error: errors.first,
        small_join: LatencySummary::of(&small_join),
        small_join_failed,
        storm_opened,
    })
}

/// Joins `room` with `since=0` and reads nothing, again every `hold`; returns how many
/// connections it opened.
async fn storm_connection(
    endpoint: &Endpoint,
    client: &ClientConfig,
    sub: &str,
    room: &str,
    hold: Duration,
    delay: Duration,
    stop: CancellationToken,
) -> u64 {
    let mut opened = 0;
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = stop.cancelled() => return opened,
    }
    while !stop.is_cancelled() {
        if let Ok(mut ws) = open(endpoint, sub, client).await {
            opened += 1;
            let _ = ws.send(Message::text(replay_frame(room))).await;
            tokio::select! {
                () = tokio::time::sleep(hold) => {}
                () = stop.cancelled() => {}
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = stop.cancelled() => {}
            }
        }
    }
    opened
}

/// Publishes into the probe's own room at `probe_rate`; times publish → own message.
async fn probe_publishes(
    endpoint: &Endpoint,
    params: &StormParams,
    tag: &str,
    stop: CancellationToken,
) -> Result<(Histogram<u64>, u64, Errors), ScenarioError> {
    let room = format!("probe-{tag}");
    let mut ws = open(endpoint, "probe-publisher", &params.client).await?;
    ws.send(Message::text(Target::Roomcast.join_frame(&room)))
        .await
        .map_err(fail)?;
    let mut histogram = new_histogram();
    let mut errors = Errors::default();
    let mut acks = 0u64;
    let mut sent: std::collections::HashMap<String, Instant> = Default::default();
    let mut every =
        tokio::time::interval(Duration::from_secs_f64(1.0 / params.probe_rate.max(0.1)));
    let mut index = 0u64;
    let deadline = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = every.tick(), if !stop.is_cancelled() => {
                // Ids are unique per user across rooms: `(from, id)` identifies an event.
                sent.insert(format!("{room}-{index}"), Instant::now());
                let frame = Target::Roomcast.publish_frame(&room, &room, index, "0");
                index += 1;
                ws.send(Message::text(frame)).await.map_err(fail)?;
            }
            () = stop.cancelled(), if !stop.is_cancelled() => {
                deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            () = &mut deadline => break,
            frame = next_json(&mut ws) => {
                let frame = frame?;
                if frame["type"] == "message"
                    && let Some(at) = frame["id"].as_str().and_then(|id| sent.remove(id))
                {
                    record(&mut histogram, at.elapsed().as_micros() as u64);
                }
                if frame["type"] == "error" {
                    errors.note(&frame);
                }
                if frame["type"] == "ack" {
                    acks += 1;
                }
                if stop.is_cancelled() && sent.is_empty() {
                    break;
                }
            }
        }
    }
    if params.progress {
        eprintln!("replay-storm: probe publisher: {index} sent, {acks} acked");
    }
    Ok((histogram, sent.len() as u64, errors))
}

/// Error frames a probe received.
#[derive(Debug, Default)]
struct Errors {
    count: u64,
    first: Option<String>,
}

impl Errors {
    fn note(&mut self, frame: &serde_json::Value) {
        self.count += 1;
        self.first.get_or_insert_with(|| frame.to_string());
    }
}

/// Joins the small room with `since=0` every `join_every`; times join → last history message.
async fn probe_joins(
    endpoint: &Endpoint,
    params: &StormParams,
    small: &str,
    stop: CancellationToken,
) -> Result<(Histogram<u64>, u64), ScenarioError> {
    let mut ws = open(endpoint, "probe-joiner", &params.client).await?;
    let mut histogram = new_histogram();
    let mut failed = 0;
    let last = params.small_history as u64;
    while !stop.is_cancelled() {
        let started = Instant::now();
        ws.send(Message::text(replay_frame(small)))
            .await
            .map_err(fail)?;
        let done = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let frame = next_json(&mut ws).await?;
                if frame["type"] == "message" && frame["seq"].as_u64() == Some(last) {
                    return Ok::<_, ScenarioError>(());
                }
                if frame["type"] == "error" {
                    return Err(ScenarioError::Failed(format!("probe join: {frame}")));
                }
            }
        })
        .await;
        match done {
            Ok(Ok(())) => record(&mut histogram, started.elapsed().as_micros() as u64),
            _ => failed += 1,
        }
        let leave = format!(r#"{{"type":"leave","room":"{small}"}}"#);
        ws.send(Message::text(leave)).await.map_err(fail)?;
        tokio::select! {
            () = tokio::time::sleep(params.join_every) => {}
            () = stop.cancelled() => {}
        }
    }
    Ok((histogram, failed))
}

impl Metrics for StormResult {
    fn metrics(&self) -> Vec<(&'static str, f64)> {
        let (q, s) = (&self.quiet, &self.storm);
        vec![
            ("quiet_publish_p50_ms", q.publish_echo.p50_ms),
            ("quiet_publish_p99_ms", q.publish_echo.p99_ms),
            ("storm_publish_p50_ms", s.publish_echo.p50_ms),
            ("storm_publish_p99_ms", s.publish_echo.p99_ms),
            ("quiet_join_p50_ms", q.small_join.p50_ms),
            ("quiet_join_max_ms", q.small_join.max_ms),
            ("storm_join_p50_ms", s.small_join.p50_ms),
            ("storm_join_max_ms", s.small_join.max_ms),
            ("storm_opened", s.storm_opened as f64),
            (
                "publish_missing",
                (q.publish_missing + s.publish_missing) as f64,
            ),
            (
                "join_failed",
                (q.small_join_failed + s.small_join_failed) as f64,
            ),
        ]
    }
}
