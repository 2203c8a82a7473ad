//! Results files: every run of every target, medians, same-run ratios, the machine and the
//! versions; and their Markdown tables.

use crate::connections::ConnectionsResult;
use crate::fanout::FanoutResult;
use crate::ingest::IngestResult;
use crate::protocol::Target;
use crate::stats::median;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Named numbers of a result, for medians, ratios and tables.
pub trait Metrics {
    /// `(name, value)` pairs; the first ones are the headline figures.
    fn metrics(&self) -> Vec<(&'static str, f64)>;
}

const MIB: f64 = 1024.0 * 1024.0;

impl Metrics for FanoutResult {
    fn metrics(&self) -> Vec<(&'static str, f64)> {
        vec![
            (
                "deliveries_per_server_cpu_sec",
                self.deliveries_per_server_cpu_sec,
            ),
            ("deliveries_per_sec", self.deliveries_per_sec),
            (
                "offered_deliveries_per_sec",
                self.offered_deliveries_per_sec,
            ),
            ("drain_secs", self.drain_secs),
            ("server_cpu_util", self.server_cpu_util),
            ("latency_p50_ms", self.latency.p50_ms),
            ("latency_p99_ms", self.latency.p99_ms),
            ("latency_p999_ms", self.latency.p999_ms),
            ("ack_latency_p50_ms", self.ack_latency.p50_ms),
            ("ack_latency_p99_ms", self.ack_latency.p99_ms),
            (
                "publisher_echo_latency_p50_ms",
                self.publisher_echo_latency.p50_ms,
            ),
            (
                "publisher_echo_latency_p99_ms",
                self.publisher_echo_latency.p99_ms,
            ),
            ("lost", self.lost as f64),
            ("duplicated", self.duplicated as f64),
            ("disconnected", self.disconnected as f64),
            ("seq_breaks", self.seq_breaks as f64),
            ("publish_errors", self.publish_errors as f64),
            ("publish_rate", self.publish_rate),
            ("server_rss_mib", self.server_rss_bytes as f64 / MIB),
            ("client_cpu_util", self.client_cpu_util),
        ]
    }
}

impl Metrics for ConnectionsResult {
    fn metrics(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("rss_per_connection_kib", self.rss_per_connection_kib),
            ("handshakes_per_sec", self.handshakes_per_sec),
            (
                "handshakes_per_server_cpu_sec",
                self.handshakes_per_server_cpu_sec,
            ),
            ("ramp_server_cpu_util", self.ramp_server_cpu_util),
            ("handshake_latency_p50_ms", self.handshake_latency.p50_ms),
            ("handshake_latency_p99_ms", self.handshake_latency.p99_ms),
            ("connected", self.connected as f64),
            ("failed", self.failures.total as f64),
            ("alive_after_hold", self.alive_after_hold as f64),
            (
                "server_rss_after_mib",
                self.server_rss_after_bytes as f64 / MIB,
            ),
            ("idle_server_cpu_util", self.idle_server_cpu_util),
            ("client_max_open_fds", self.client_max_open_fds as f64),
        ]
    }
}

impl Metrics for IngestResult {
    fn metrics(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("acks_per_sec", self.acks_per_sec),
            ("acks_per_server_cpu_sec", self.acks_per_server_cpu_sec),
            ("delivered_per_sec", self.delivered_per_sec),
            ("drain_secs", self.drain_secs),
            ("server_cpu_util", self.server_cpu_util),
            ("ack_latency_p50_ms", self.ack_latency.p50_ms),
            ("ack_latency_p99_ms", self.ack_latency.p99_ms),
            ("ack_latency_p999_ms", self.ack_latency.p999_ms),
            ("lost", self.lost as f64),
            ("duplicated", self.duplicated as f64),
            ("publish_errors", self.publish_errors as f64),
            ("disconnected", self.disconnected as f64),
            ("server_rss_mib", self.server_rss_bytes as f64 / MIB),
            ("client_cpu_util", self.client_cpu_util),
        ]
    }
}

/// The machine the figures come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Online CPUs (`nproc`).
    pub nproc: usize,
    /// CPU model (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// Total memory in MiB (`/proc/meminfo`).
    pub mem_total_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// This process's open-file limit (soft).
    pub open_files_limit: Option<u64>,
    /// `/proc/loadavg` when the suite started (other work on the machine shows here).
    pub loadavg_start: String,
    /// `/proc/loadavg` when the suite ended.
    pub loadavg_end: String,
}

/// The text of `/proc/loadavg`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

impl Machine {
    /// Reads `/proc`.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_ascii_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_files_limit = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_ascii_whitespace().nth(3))
            .and_then(|v| v.parse().ok());
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
                .max(
                    cpuinfo
                        .lines()
                        .filter(|l| l.starts_with("processor"))
                        .count(),
                ),
            cpu_model,
            mem_total_mib: mem_kib / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            open_files_limit,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

/// Versions of what was measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Versions {
    /// `roomcast --version`.
    pub roomcast: Option<String>,
    /// The `roomcast` binary measured: path, size and modification time.
    #[serde(default)]
    pub roomcast_binary: Option<String>,
    /// The source tree's commit (`git describe --always --dirty`).
    pub commit: Option<String>,
    /// `node --version`.
    pub node: Option<String>,
    /// The installed `socket.io` package.
    pub socket_io: Option<String>,
    /// The load generator and bare server.
    pub roomcast_bench: String,
    /// The WebSocket library of the load generator and the bare server.
    pub tokio_tungstenite: String,
}

fn command_output(program: &Path, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `PATH (N bytes, modified at UNIX seconds)`.
pub fn binary_fingerprint(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(format!(
        "{} ({} bytes, modified at {modified})",
        path.display(),
        meta.len()
    ))
}

impl Versions {
    /// Asks the binaries and package files.
    pub fn probe(launcher: &crate::server::Launcher, targets: &[Target]) -> Self {
        let socket_io = || {
            let text = std::fs::read_to_string(
                launcher
                    .socketio_dir
                    .join("node_modules/socket.io/package.json"),
            )
            .ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            value["version"].as_str().map(str::to_owned)
        };
        let uses_node = targets.contains(&Target::SocketIo);
        Versions {
            roomcast: command_output(&launcher.roomcast_bin(), &["--version"]),
            roomcast_binary: binary_fingerprint(&launcher.roomcast_bin()),
            commit: command_output(
                Path::new("git"),
                &[
                    "-C",
                    env!("CARGO_MANIFEST_DIR"),
                    "describe",
                    "--always",
                    "--dirty",
                ],
            ),
            node: if uses_node {
                command_output(&launcher.node, &["--version"])
            } else {
                None
            },
            socket_io: if uses_node { socket_io() } else { None },
            roomcast_bench: env!("CARGO_PKG_VERSION").to_owned(),
            tokio_tungstenite: "0.29".to_owned(),
        }
    }
}

/// Median, minimum and maximum of one metric over runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Number of runs.
    pub n: usize,
}

impl Stat {
    /// Over `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Stat> {
        Some(Stat {
            median: median(values)?,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: values.len(),
        })
    }
}

/// One run of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run number, from 1.
    pub run: usize,
    /// The server.
    pub target: Target,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// Anything wrong when stopping the server.
    pub server_stop: Option<String>,
    /// Headline metrics.
    pub metrics: BTreeMap<String, f64>,
    /// The full result.
    pub result: Option<serde_json::Value>,
}

/// A results file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `fanout`, `connections` or `ingest`.
    pub scenario: String,
    /// The command line that produced it.
    pub command: String,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Roomcast's broker backend.
    pub backend: String,
    /// CPUs the servers were pinned to.
    pub server_cpus: Option<String>,
    /// CPUs the load generator could run on.
    pub client_cpus: usize,
    /// The machine.
    pub machine: Machine,
    /// Versions.
    pub versions: Versions,
    /// Scenario parameters.
    pub params: serde_json::Value,
    /// Every run.
    pub runs: Vec<RunRecord>,
    /// Per target, per metric, over successful runs.
    pub summary: BTreeMap<Target, BTreeMap<String, Stat>>,
    /// Same-run ratios `roomcast/bare` and `roomcast/socketio` per metric (median over runs).
    pub ratios: BTreeMap<String, BTreeMap<String, Stat>>,
}

impl Report {
    /// Computes `summary` and `ratios` from `runs`.
    pub fn summarise(&mut self) {
        let mut by_target: BTreeMap<Target, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
        for run in self.runs.iter().filter(|r| r.error.is_none()) {
            let metrics = by_target.entry(run.target).or_default();
            for (name, value) in &run.metrics {
                metrics.entry(name.clone()).or_default().push(*value);
            }
        }
        self.summary = by_target
            .into_iter()
            .map(|(target, metrics)| {
                (
                    target,
                    metrics
                        .into_iter()
                        .filter_map(|(name, values)| Some((name, Stat::of(&values)?)))
                        .collect(),
                )
            })
            .collect();

        self.ratios.clear();
        for other in [Target::Bare, Target::SocketIo] {
            let mut ratios: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for run in self
                .runs
                .iter()
                .filter(|r| r.error.is_none() && r.target == Target::Roomcast)
            {
                let Some(peer) = self
                    .runs
                    .iter()
                    .find(|r| r.error.is_none() && r.target == other && r.run == run.run)
                else {
                    continue;
                };
                for (name, value) in &run.metrics {
                    if let Some(base) = peer.metrics.get(name)
                        && *base != 0.0
                    {
                        ratios.entry(name.clone()).or_default().push(value / base);
                    }
                }
            }
            let stats: BTreeMap<String, Stat> = ratios
                .into_iter()
                .filter_map(|(name, values)| Some((name, Stat::of(&values)?)))
                .collect();
            if !stats.is_empty() {
                self.ratios.insert(format!("roomcast/{other}"), stats);
            }
        }
    }

    /// A Markdown table of the medians (min–max) of `metrics`, one row per target, then the
    /// same-run ratios.
    pub fn markdown(&self, metrics: &[&str]) -> String {
        let mut out = String::new();
        let _ = write!(out, "| target |");
        for m in metrics {
            let _ = write!(out, " {m} |");
        }
        let _ = write!(out, "\n|---|");
        for _ in metrics {
            let _ = write!(out, "---:|");
        }
        out.push('\n');
        for (target, stats) in &self.summary {
            let _ = write!(out, "| {target} |");
            for m in metrics {
                match stats.get(*m) {
                    Some(s) if s.n > 1 => {
                        let _ = write!(
                            out,
                            " {} ({}–{}) |",
                            fmt_num(s.median),
                            fmt_num(s.min),
                            fmt_num(s.max)
                        );
                    }
                    Some(s) => {
                        let _ = write!(out, " {} |", fmt_num(s.median));
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        for (name, stats) in &self.ratios {
            let _ = write!(out, "| *{name}* |");
            for m in metrics {
                match stats.get(*m) {
                    Some(s) => {
                        let _ = write!(out, " *{:.2}×* |", s.median);
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out
    }

    /// The metrics worth a chart.
    pub fn chart_metrics(&self) -> Vec<&'static str> {
        match self.scenario.as_str() {
            "fanout" => vec!["deliveries_per_server_cpu_sec", "latency_p99_ms"],
            "connections" => vec![
                "rss_per_connection_kib",
                "handshakes_per_sec",
                "handshakes_per_server_cpu_sec",
            ],
            "ingest" => vec![
                "acks_per_sec",
                "acks_per_server_cpu_sec",
                "ack_latency_p99_ms",
            ],
            _ => Vec::new(),
        }
    }

    /// The default headline metrics of the scenario.
    pub fn headline(&self) -> Vec<&'static str> {
        match self.scenario.as_str() {
            "fanout" => vec![
                "deliveries_per_server_cpu_sec",
                "server_cpu_util",
                "latency_p50_ms",
                "latency_p99_ms",
                "latency_p999_ms",
                "ack_latency_p50_ms",
                "publisher_echo_latency_p99_ms",
                "lost",
                "duplicated",
            ],
            "connections" => vec![
                "connected",
                "rss_per_connection_kib",
                "handshakes_per_sec",
                "handshakes_per_server_cpu_sec",
                "handshake_latency_p99_ms",
                "alive_after_hold",
            ],
            "ingest" => vec![
                "acks_per_sec",
                "acks_per_server_cpu_sec",
                "delivered_per_sec",
                "server_cpu_util",
                "ack_latency_p50_ms",
                "ack_latency_p99_ms",
                "lost",
                "duplicated",
            ],
            "replay-storm" => vec![
                "quiet_publish_p50_ms",
                "quiet_publish_p99_ms",
                "storm_publish_p50_ms",
                "storm_publish_p99_ms",
                "quiet_join_p50_ms",
                "storm_join_p50_ms",
                "storm_join_max_ms",
                "storm_opened",
            ],
            _ => Vec::new(),
        }
    }
}

/// A number with sensible precision for tables.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v == v.trunc() && a < 1e15 {
        group(v as i64)
    } else if a >= 1000.0 {
        group(v.round() as i64)
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn group(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(run: usize, target: Target, value: f64) -> RunRecord {
        RunRecord {
            run,
            target,
            error: None,
            server_stop: None,
            metrics: [("x".to_owned(), value)].into_iter().collect(),
            result: None,
        }
    }

    #[test]
    fn summary_takes_medians_and_same_run_ratios() {
        let mut report = Report {
            scenario: "fanout".into(),
            command: String::new(),
            started_unix: 0,
            backend: "embedded".into(),
            server_cpus: None,
            client_cpus: 1,
            machine: Machine::default(),
            versions: Versions::default(),
            params: serde_json::Value::Null,
            runs: vec![
                run(1, Target::Roomcast, 10.0),
                run(1, Target::Bare, 20.0),
                run(2, Target::Roomcast, 30.0),
                run(2, Target::Bare, 30.0),
                run(3, Target::Roomcast, 20.0),
            ],
            summary: BTreeMap::new(),
            ratios: BTreeMap::new(),
        };
        report.summarise();
        assert_eq!(report.summary[&Target::Roomcast]["x"].median, 20.0);
        assert_eq!(report.summary[&Target::Bare]["x"].n, 2);
        let ratio = report.ratios["roomcast/bare"]["x"];
        assert_eq!((ratio.n, ratio.median), (2, 0.75));
        let table = report.markdown(&["x"]);
        assert!(table.contains("| roomcast | 20 (10–30) |"), "{table}");
        assert!(table.contains("*0.75×*"), "{table}");
    }

    #[test]
    fn numbers_format_for_tables() {
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.2345), "1.23");
        assert_eq!(fmt_num(0.01234), "0.012");
    }
}
