//! Runs a scenario against several targets, several times, each on a freshly started server,
//! interleaving the targets within each run so that their ratios come from the same
//! conditions.

use crate::client::Endpoint;
use crate::connections::{self, ConnectionsParams};
use crate::error::ScenarioError;
use crate::fanout::{self, FanoutParams};
use crate::ingest::{self, IngestParams};
use crate::protocol::Target;
use crate::report::{Machine, Metrics, Report, RunRecord, Versions, fmt_num};
use crate::server::Launcher;
use crate::storm::{self, StormParams};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A scenario with its parameters.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// Fan-out.
    Fanout(FanoutParams),
    /// Idle connections.
    Connections(ConnectionsParams),
    /// Full-speed publishers.
    Ingest(IngestParams),
    /// A crowd of history replays.
    ReplayStorm(StormParams),
}

fn encode<R: Serialize + Metrics>(result: R) -> (serde_json::Value, BTreeMap<String, f64>) {
    let metrics = result
        .metrics()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    (
        serde_json::to_value(&result).unwrap_or(serde_json::Value::Null),
        metrics,
    )
}

impl Scenario {
    /// `fanout`, `connections`, `ingest` or `replay-storm`.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout(_) => "fanout",
            Scenario::Connections(_) => "connections",
            Scenario::Ingest(_) => "ingest",
            Scenario::ReplayStorm(_) => "replay-storm",
        }
    }

    /// The parameters as JSON, for the results file.
    pub fn params_json(&self) -> serde_json::Value {
        let secs = |d: Duration| d.as_secs_f64();
        match self {
            Scenario::Fanout(p) => serde_json::json!({
                "subscribers": p.subscribers, "rate": p.rate, "duration_secs": secs(p.duration),
                "warmup_secs": secs(p.warmup), "payload_bytes": p.payload_bytes, "concurrency": p.concurrency,
                "source_ips": p.source_ips, "client_read_buffer": p.client.read_buffer,
                "client_write_buffer": p.client.write_buffer,
            }),
            Scenario::Connections(p) => serde_json::json!({
                "connections": p.connections, "concurrency": p.concurrency, "source_ips": p.source_ips,
                "client_procs": p.client_procs, "settle_secs": secs(p.settle), "hold_secs": secs(p.hold),
                "join": p.join, "client_read_buffer": p.client.read_buffer,
                "client_write_buffer": p.client.write_buffer,
            }),
            Scenario::Ingest(p) => serde_json::json!({
                "publishers": p.publishers, "inflight": p.inflight, "duration_secs": secs(p.duration),
                "warmup_secs": secs(p.warmup), "payload_bytes": p.payload_bytes, "source_ips": p.source_ips,
            }),
            Scenario::ReplayStorm(p) => serde_json::json!({
                "history": p.history, "history_bytes": p.history_bytes, "small_history": p.small_history,
                "storm_users": p.storm_users, "storm_connections": p.storm_connections,
                "storm_hold_secs": secs(p.storm_hold), "duration_secs": secs(p.duration),
                "probe_rate": p.probe_rate, "join_every_secs": secs(p.join_every),
            }),
        }
    }

    /// Runs once against `endpoint`: the full result and its metrics.
    pub async fn run(
        &self,
        endpoint: &Endpoint,
    ) -> Result<(serde_json::Value, BTreeMap<String, f64>), ScenarioError> {
        Ok(match self {
            Scenario::Fanout(p) => encode(fanout::run(endpoint, p).await?),
            Scenario::Connections(p) => encode(connections::run(endpoint, p).await?),
            Scenario::Ingest(p) => encode(ingest::run(endpoint, p).await?),
            Scenario::ReplayStorm(p) => encode(storm::run(endpoint, p).await?),
        })
    }
}

/// How a suite runs.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Targets, in the order they run within each run.
    pub targets: Vec<Target>,
    /// Runs.
    pub runs: usize,
    /// Pause between two servers.
    pub pause: Duration,
    /// The command line, recorded in the report.
    pub command: String,
    /// Print a line per run on stderr.
    pub verbose: bool,
    /// Run against this already running server instead of starting one per run (every target
    /// in `targets` is taken to be it).
    pub attach: Option<Endpoint>,
}

/// Runs `scenario` as `options` say; failed runs are recorded with their error.
pub async fn run_suite(launcher: &Launcher, scenario: &Scenario, options: &SuiteOptions) -> Report {
    let mut report = Report {
        scenario: scenario.name().to_owned(),
        command: options.command.clone(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        backend: launcher.backend.name(),
        server_cpus: launcher.server_cpus.clone(),
        client_cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        machine: Machine::probe(),
        versions: Versions::probe(launcher, &options.targets),
        params: scenario.params_json(),
        runs: Vec::new(),
        summary: BTreeMap::new(),
        ratios: BTreeMap::new(),
    };
    let headline = report.headline();
    for run in 1..=options.runs.max(1) {
        for &target in &options.targets {
            if !report.runs.is_empty() {
                tokio::time::sleep(options.pause).await;
            }
            let record = match &options.attach {
                Some(endpoint) => run_attached(endpoint, scenario, run).await,
                None => run_once(launcher, scenario, target, run).await,
            };
            if options.verbose {
                match &record.error {
                    Some(err) => eprintln!("run {run} {target}: FAILED: {err}"),
                    None => {
                        let figures: Vec<String> = headline
                            .iter()
                            .filter_map(|m| {
                                record
                                    .metrics
                                    .get(*m)
                                    .map(|v| format!("{m}={}", fmt_num(*v)))
                            })
                            .collect();
                        eprintln!("run {run} {target}: {}", figures.join(" "));
                    }
                }
                if let Some(stop) = &record.server_stop {
                    eprintln!("run {run} {target}: server stop: {stop}");
                }
            }
            report.runs.push(record);
        }
    }
    report.machine.loadavg_end = crate::report::loadavg();
    let binary_now = crate::report::binary_fingerprint(&launcher.roomcast_bin());
    if options.targets.contains(&Target::Roomcast) && binary_now != report.versions.roomcast_binary
    {
        eprintln!(
            "warning: the roomcast binary changed during the suite: {:?} -> {binary_now:?}",
            report.versions.roomcast_binary
        );
        report.versions.roomcast_binary = Some(format!(
            "CHANGED DURING THE SUITE: {} -> {}",
            report.versions.roomcast_binary.as_deref().unwrap_or("?"),
            binary_now.as_deref().unwrap_or("?")
        ));
    }
    report.summarise();
    report
}

async fn run_attached(endpoint: &Endpoint, scenario: &Scenario, run: usize) -> RunRecord {
    let mut record = RunRecord {
        run,
        target: endpoint.target,
        error: None,
        server_stop: None,
        metrics: BTreeMap::new(),
        result: None,
    };
    match scenario.run(endpoint).await {
        Ok((result, metrics)) => {
            record.result = Some(result);
            record.metrics = metrics;
        }
        Err(err) => record.error = Some(err.to_string()),
    }
    record
}

async fn run_once(
    launcher: &Launcher,
    scenario: &Scenario,
    target: Target,
    run: usize,
) -> RunRecord {
    let mut record = RunRecord {
        run,
        target,
        error: None,
        server_stop: None,
        metrics: BTreeMap::new(),
        result: None,
    };
    let mut server = match launcher.start(target).await {
        Ok(server) => server,
        Err(err) => {
            record.error = Some(err.to_string());
            return record;
        }
    };
    let outcome = match server.endpoint() {
        Ok(endpoint) => scenario.run(&endpoint).await,
        Err(err) => Err(err.into()),
    };
    let alive = server.check_alive();
    match outcome {
        Ok((result, metrics)) => {
            record.result = Some(result);
            record.metrics = metrics;
        }
        Err(err) => record.error = Some(err.to_string()),
    }
    if let Err(exited) = alive {
        record.error = Some(match record.error.take() {
            Some(err) => format!("{err}; {exited}"),
            None => exited,
        });
    }
    record.server_stop = server.stop(Duration::from_secs(20)).await;
    record
}
