//! `roomcast-bench`: the load generator, the bare baseline server and the results tools.
//!
//! ```text
//! taskset -c 1 roomcast-bench fanout --targets roomcast,bare,socketio --runs 3 --server-cpus 0 \
//!     --subscribers 1000 --rate 300 --out bench/results/fanout-1000x300.json
//! roomcast-bench bare-server --listen 127.0.0.1:0
//! roomcast-bench plot bench/results/*.json
//! ```

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use roomcast_bench::bare::{self, BareConfig};
use roomcast_bench::client::{ClientConfig, Endpoint, TokenMinter};
use roomcast_bench::connections::{self, ConnectionsParams, OpenSpec, WorkerArgs};
use roomcast_bench::fanout::FanoutParams;
use roomcast_bench::ingest::IngestParams;
use roomcast_bench::report::Report;
use roomcast_bench::server::{Backend, Launcher};
use roomcast_bench::storm::StormArgs;
use roomcast_bench::suite::{Scenario, SuiteOptions, run_suite};
use roomcast_bench::{Target, svg};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "roomcast-bench",
    version,
    about = "Roomcast load generator and baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// S subscribers in one room, one publisher at a fixed rate.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Subscribers in the room (the publisher comes on top).
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Events published per second.
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        /// Measured seconds.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Warm-up seconds (published and checked, not measured).
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Connections set up at once.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
    },
    /// N idle authenticated connections: handshakes per second, memory per connection.
    Connections {
        #[command(flatten)]
        common: Common,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Handshakes in flight at once, per load-generator process.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Load-generator processes holding the connections (0: this one) [default: one per
        /// 15,000 connections above 15,000].
        #[arg(long)]
        client_procs: Option<usize>,
        /// Idle seconds after the ramp before the server's memory is read.
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
        /// Seconds the connections are held after the ramp.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
        /// Each connection also joins one shared room.
        #[arg(long)]
        join: bool,
    },
    /// P publishers at full speed.
    Ingest {
        #[command(flatten)]
        common: Common,
        /// Publishing connections.
        #[arg(long, default_value_t = 16)]
        publishers: usize,
        /// Publishes awaiting their ack, per publisher.
        #[arg(long, default_value_t = 32)]
        inflight: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Warm-up seconds.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
    },
    /// Replay storm: another user's publish and small-room join, quiet and under a crowd of
    /// `since=0` joiners that never read (Roomcast only).
    ReplayStorm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        storm: StormArgs,
    },
    /// Durable publishes straight into a broker through Roomcast's broker client, no gateway:
    /// the broker's own rate, the reference for `ingest` on that broker.
    BrokerPublish {
        /// Broker URL (`amqp://…`, `kafka://…`, `embedded:<dir>`).
        #[arg(long)]
        broker: String,
        /// Publishes in flight at once.
        #[arg(long, default_value_t = 512)]
        inflight: usize,
        /// Keys (rooms) to spread the publishes over.
        #[arg(long, default_value_t = 64)]
        keys: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Warm-up seconds.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Runs (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Write the results (JSON) here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The bare baseline: a minimal tokio-tungstenite broadcast server speaking Roomcast's frames.
    BareServer {
        /// Address to listen on; prints `listening on http://ADDR`.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// WebSocket read buffer per connection in bytes [default: tungstenite's, 128 KiB].
        #[arg(long)]
        read_buffer: Option<usize>,
        /// WebSocket write buffer per connection in bytes [default: tungstenite's, 128 KiB].
        #[arg(long)]
        write_buffer: Option<usize>,
        /// Frames queued per connection before it is closed as a slow consumer.
        #[arg(long, default_value_t = 1024)]
        queue: usize,
        /// Leave Nagle's algorithm on (no TCP_NODELAY on accepted sockets): a diagnostic.
        #[arg(long)]
        nagle: bool,
    },
    /// Holds a share of the `connections` scenario's connections (started by it).
    #[command(hide = true)]
    ConnectWorker {
        #[arg(long)]
        target: Target,
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        source_ips: usize,
        #[arg(long, default_value_t = 4096)]
        read_buffer: usize,
        #[arg(long, default_value_t = 4096)]
        write_buffer: usize,
        #[arg(long, default_value_t = 15)]
        timeout_secs: u64,
        #[arg(long)]
        room: Option<String>,
    },
    /// Draws SVG bar charts of results files (one per headline metric, next to each file).
    Plot {
        /// Results files.
        files: Vec<PathBuf>,
        /// Metrics to draw [default: the scenario's main figures].
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
    },
    /// Prints the Markdown table of results files.
    Table {
        /// Results files.
        files: Vec<PathBuf>,
        /// Columns [default: the scenario's headline metrics].
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
    },
}

/// Options of every scenario.
#[derive(Args)]
struct Common {
    /// Servers to run against, in order within each run: roomcast, bare, socketio.
    #[arg(long, value_delimiter = ',', default_value = "roomcast")]
    targets: Vec<Target>,
    /// Runs (each target once per run, on a fresh server).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Pin the servers to these CPUs (`taskset -c`), e.g. `0`. Run the harness itself under
    /// `taskset -c 1`.
    #[arg(long)]
    server_cpus: Option<String>,
    /// Roomcast's broker: `embedded` (roomcast serve), or a networked broker URL
    /// (amqp://…, kafka://…) served by roomcast-gateway + roomcast-worker with --store-url.
    #[arg(long, default_value = "embedded")]
    backend: String,
    /// Store URL for a networked backend.
    #[arg(long)]
    store_url: Option<String>,
    /// Directory of the roomcast binaries [default: this binary's directory].
    #[arg(long)]
    roomcast_dir: Option<PathBuf>,
    /// Extra argument for the Roomcast server (repeat), e.g. `--roomcast-arg=--outbound-queue=4096`.
    #[arg(long, allow_hyphen_values = true)]
    roomcast_arg: Vec<String>,
    /// Directory of the Socket.IO server.
    #[arg(long)]
    socketio_dir: Option<PathBuf>,
    /// Node executable.
    #[arg(long, default_value = "node")]
    node: PathBuf,
    /// Bare server read and write buffer size in bytes [default: tungstenite's 128 KiB].
    #[arg(long)]
    bare_buffer: Option<usize>,
    /// Parent directory of the servers' temporary data directories.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Spread connections over source addresses 127.0.0.2 … 127.0.0.{N+1} (1: the kernel picks 127.0.0.1).
    #[arg(long, default_value_t = 1)]
    source_ips: usize,
    /// Load-generator WebSocket read buffer per connection, bytes.
    #[arg(long)]
    client_read_buffer: Option<usize>,
    /// Load-generator WebSocket write buffer per connection, bytes.
    #[arg(long)]
    client_write_buffer: Option<usize>,
    /// At the end, wait for outstanding acks and deliveries until none arrived for this many
    /// seconds; what is missing then counts as lost.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Seconds between two servers.
    #[arg(long, default_value_t = 2.0)]
    pause: f64,
    /// Run against a server that is already running at this address (the first of --targets
    /// says what it speaks; Roomcast's HS256 secret comes from ROOMCAST_JWT_SECRET) instead of
    /// starting one per run.
    #[arg(long, requires = "attach_pid")]
    attach: Option<SocketAddr>,
    /// The attached server's process id (for its CPU time and memory).
    #[arg(long)]
    attach_pid: Vec<u32>,
    /// Record a CPU profile of every server (`perf record -p PID`) into this directory.
    #[arg(long)]
    perf_dir: Option<PathBuf>,
    /// Write the results (JSON) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

impl Common {
    fn client(&self, defaults: ClientConfig) -> ClientConfig {
        ClientConfig {
            read_buffer: self.client_read_buffer.unwrap_or(defaults.read_buffer),
            write_buffer: self.client_write_buffer.unwrap_or(defaults.write_buffer),
            ..defaults
        }
    }

    fn launcher(&self) -> Result<Launcher> {
        let exe = std::env::current_exe().context("locating roomcast-bench")?;
        let mut launcher = Launcher::new(exe);
        if let Some(dir) = &self.roomcast_dir {
            launcher.roomcast_dir = dir.clone();
        }
        if let Some(dir) = &self.socketio_dir {
            launcher.socketio_dir = dir.clone();
        }
        launcher.node = self.node.clone();
        launcher.server_cpus = self.server_cpus.clone();
        launcher.bare_buffer = self.bare_buffer;
        launcher.roomcast_args = self.roomcast_arg.clone();
        launcher.data_root = self.data_root.clone();
        launcher.perf_dir = self.perf_dir.clone();
        launcher.backend = match self.backend.as_str() {
            "embedded" => Backend::Embedded,
            url if url.contains("://") => Backend::Networked {
                broker_url: url.to_owned(),
                store_url: self
                    .store_url
                    .clone()
                    .context("a networked backend needs --store-url")?,
            },
            other => {
                bail!("unknown backend {other:?}: `embedded` or a broker URL (amqp://…, kafka://…)")
            }
        };
        Ok(launcher)
    }
}

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

async fn suite(common: Common, scenario: Scenario) -> Result<()> {
    let launcher = common.launcher()?;
    let options = SuiteOptions {
        targets: common.targets.clone(),
        runs: common.runs,
        pause: secs(common.pause),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        verbose: true,
        attach: match common.attach {
            Some(addr) => {
                let target = *common.targets.first().context("--attach needs a target")?;
                let minter = match target {
                    Target::Roomcast => Some(TokenMinter::hs256(
                        &std::env::var("ROOMCAST_JWT_SECRET")
                            .context("--attach to roomcast needs ROOMCAST_JWT_SECRET")?,
                    )),
                    _ => None,
                };
                Some(Endpoint {
                    target,
                    addr,
                    pids: common.attach_pid.clone(),
                    minter,
                })
            }
            None => None,
        },
    };
    let report = run_suite(&launcher, &scenario, &options).await;
    let json = serde_json::to_string_pretty(&report).context("encoding the results")?;
    if let Some(out) = &common.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("results written to {}", out.display());
    } else {
        println!("{json}");
    }
    println!("{}", report.markdown(&report.headline()));
    let failed = report.runs.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!(
            "{failed} of {} runs failed (see the errors above and in the results)",
            report.runs.len()
        );
    }
    Ok(())
}

fn read_report(path: &PathBuf) -> Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a results file", path.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Fanout {
            common,
            subscribers,
            rate,
            duration,
            warmup,
            payload_bytes,
            concurrency,
        } => {
            let params = FanoutParams {
                subscribers,
                rate,
                duration: secs(duration),
                warmup: secs(warmup),
                payload_bytes,
                concurrency,
                source_ips: common.source_ips,
                client: common.client(ClientConfig::default()),
                progress: !common.quiet,
                drain_timeout: secs(common.drain_timeout),
            };
            suite(common, Scenario::Fanout(params)).await
        }
        Command::Connections {
            common,
            connections,
            concurrency,
            client_procs,
            settle,
            hold,
            join,
        } => {
            let defaults = ConnectionsParams::default();
            let params = ConnectionsParams {
                connections,
                concurrency,
                source_ips: common.source_ips,
                client_procs: client_procs
                    .unwrap_or_else(|| ConnectionsParams::default_procs(connections)),
                worker_exe: Some(std::env::current_exe().context("locating roomcast-bench")?),
                settle: secs(settle),
                hold: secs(hold),
                join,
                client: common.client(defaults.client),
                progress: !common.quiet,
            };
            suite(common, Scenario::Connections(params)).await
        }
        Command::BrokerPublish {
            broker,
            inflight,
            keys,
            duration,
            warmup,
            payload_bytes,
            runs,
            out,
        } => {
            let params = roomcast_bench::direct::DirectParams {
                broker_url: broker.clone(),
                inflight,
                keys,
                duration: secs(duration),
                warmup: secs(warmup),
                payload_bytes,
            };
            let machine = roomcast_bench::report::Machine::probe();
            let mut results = Vec::new();
            for run in 1..=runs.max(1) {
                let result = roomcast_bench::direct::run(&params).await?;
                eprintln!(
                    "run {run}: {:.0} acked publishes/s, p99 {:.2} ms, {} errors",
                    result.acks_per_sec, result.ack_latency.p99_ms, result.errors
                );
                results.push(result);
            }
            let rates: Vec<f64> = results.iter().map(|r| r.acks_per_sec).collect();
            let p99s: Vec<f64> = results.iter().map(|r| r.ack_latency.p99_ms).collect();
            let median = roomcast_bench::stats::median(&rates).unwrap_or_default();
            let p99 = roomcast_bench::stats::median(&p99s).unwrap_or_default();
            println!(
                "broker-publish {}: median {median:.0} acked publishes/s, p99 {p99:.2} ms",
                roomcast_broker::redact_url(&broker)
            );
            let json = serde_json::json!({
                "scenario": "broker-publish",
                "broker": roomcast_broker::redact_url(&broker),
                "command": std::env::args().collect::<Vec<_>>().join(" "),
                "machine": machine,
                "loadavg_end": roomcast_bench::report::loadavg(),
                "median_acks_per_sec": median,
                "median_ack_latency_p99_ms": p99,
                "runs": results,
            });
            if let Some(out) = out {
                let text = serde_json::to_string_pretty(&json).context("encoding the results")?;
                std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            }
            Ok(())
        }
        Command::Ingest {
            common,
            publishers,
            inflight,
            duration,
            warmup,
            payload_bytes,
        } => {
            let params = IngestParams {
                publishers,
                inflight,
                duration: secs(duration),
                warmup: secs(warmup),
                payload_bytes,
                source_ips: common.source_ips,
                client: common.client(ClientConfig::default()),
                progress: !common.quiet,
                drain_timeout: secs(common.drain_timeout),
            };
            suite(common, Scenario::Ingest(params)).await
        }
        Command::ReplayStorm { common, storm } => {
            let params = storm.params(common.client(ClientConfig::default()), !common.quiet);
            suite(common, Scenario::ReplayStorm(params)).await
        }
        Command::BareServer {
            listen,
            read_buffer,
            write_buffer,
            queue,
            nagle,
        } => {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let addr = listener.local_addr().context("reading the bound address")?;
            println!("listening on http://{addr}");
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                if let Ok(mut term) = signal(SignalKind::terminate()) {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                } else {
                    let _ = tokio::signal::ctrl_c().await;
                }
                stop.cancel();
            });
            bare::serve(
                listener,
                BareConfig {
                    read_buffer,
                    write_buffer,
                    queue,
                    nagle,
                },
                shutdown,
            )
            .await
            .context("serving")
        }
        Command::ConnectWorker {
            target,
            addr,
            first,
            count,
            concurrency,
            source_ips,
            read_buffer,
            write_buffer,
            timeout_secs,
            room,
        } => {
            let client = ClientConfig {
                read_buffer,
                write_buffer,
                timeout: Duration::from_secs(timeout_secs),
            };
            let spec = OpenSpec {
                first,
                count,
                concurrency,
                source_ips,
                room,
                client,
            };
            connections::worker_main(WorkerArgs { target, addr, spec }).await;
            Ok(())
        }
        Command::Plot { files, metrics } => {
            for file in &files {
                let report = read_report(file)?;
                let names: Vec<String> = if metrics.is_empty() {
                    report
                        .chart_metrics()
                        .into_iter()
                        .map(str::to_owned)
                        .collect()
                } else {
                    metrics.clone()
                };
                for metric in names {
                    let Some(chart) = svg::report_chart(&report, &metric) else {
                        continue;
                    };
                    let out = file.with_extension(format!("{metric}.svg"));
                    std::fs::write(&out, chart)
                        .with_context(|| format!("writing {}", out.display()))?;
                    println!("{}", out.display());
                }
            }
            Ok(())
        }
        Command::Table { files, metrics } => {
            for file in &files {
                let report = read_report(file)?;
                let names: Vec<&str> = if metrics.is_empty() {
                    report.headline()
                } else {
                    metrics.iter().map(String::as_str).collect()
                };
                println!("{}\n\n{}", file.display(), report.markdown(&names));
            }
            Ok(())
        }
    }
}
