//! Connections: `N` idle authenticated connections held by one server.
//!
//! Tokens are minted before the clock starts; the connections are then opened `concurrency` at
//! a time (handshakes per second, and per server CPU-second, over that ramp), left idle for
//! `settle` (server memory per connection = RSS growth / connections), held until `hold` has
//! passed and counted again: every one must still be open.
//!
//! Every connection costs the load generator a file descriptor too. With a per-process limit
//! close to `N`, the connections are spread over `client_procs` child processes
//! (`roomcast-bench connect-worker`), each holding its share; they talk to this process with
//! JSON lines on stdin/stdout.

use crate::client::{
    ClientConfig, ConnectError, Endpoint, Ws, connect, join, random_tag, source_addresses,
};
use crate::error::ScenarioError;
use crate::member::{ConnectFailures, describe_end};
use crate::procfs;
use crate::progress::{mib, ticker};
use crate::protocol::{ENGINE_IO_PONG, Incoming, Target};
use crate::stats::{LatencySummary, add_pairs, histogram_to_pairs, new_histogram, record};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Environment variable carrying the HS256 secret to worker processes.
pub const SECRET_ENV: &str = "ROOMCAST_BENCH_JWT_SECRET";

/// Connections parameters.
#[derive(Debug, Clone)]
pub struct ConnectionsParams {
    /// Connections to open.
    pub connections: usize,
    /// Handshakes in flight at once (per process).
    pub concurrency: usize,
    /// Source addresses 127.0.0.2 … 127.0.0.{N+1} to spread connections over (1: the kernel picks).
    pub source_ips: usize,
    /// Child processes holding the connections; 0: this process holds them.
    pub client_procs: usize,
    /// The `roomcast-bench` binary, for `client_procs > 0`.
    pub worker_exe: Option<PathBuf>,
    /// Idle time after the ramp before the memory is read.
    pub settle: Duration,
    /// Total time the connections are held after the ramp (at least `settle`).
    pub hold: Duration,
    /// Each connection also joins one shared room.
    pub join: bool,
    /// Client socket settings.
    pub client: ClientConfig,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Default for ConnectionsParams {
    fn default() -> Self {
        ConnectionsParams {
            connections: 1000,
            concurrency: 64,
            source_ips: 1,
            client_procs: 0,
            worker_exe: None,
            settle: Duration::from_secs(3),
            hold: Duration::from_secs(10),
            join: false,
            client: ClientConfig {
                read_buffer: 4096,
                write_buffer: 4096,
                ..ClientConfig::default()
            },
            progress: false,
        }
    }
}

impl ConnectionsParams {
    /// The default number of load-generator processes for `connections`: one per 15,000
    /// connections above 15,000 (a process has a hard limit of about 20,000 descriptors here).
    pub fn default_procs(connections: usize) -> usize {
        if connections <= 15_000 {
            0
        } else {
            connections.div_ceil(15_000)
        }
    }
}

/// What a connections run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionsResult {
    /// The server.
    pub target: Target,
    /// Connections requested.
    pub connections: usize,
    /// Connections opened.
    pub connected: u64,
    /// Connections that failed, by kind.
    pub failures: ConnectFailures,
    /// Whether each connection also joined a room.
    pub joined_room: bool,
    /// Load-generator processes (0: the harness itself).
    pub client_procs: usize,
    /// Handshakes in flight at once, per process.
    pub concurrency: usize,
    /// Time to open them all, seconds.
    pub ramp_secs: f64,
    /// Successful handshakes per second over the ramp.
    pub handshakes_per_sec: f64,
    /// Server CPU seconds over the ramp.
    pub ramp_server_cpu_secs: f64,
    /// Server CPU use over the ramp (1.0 = one core).
    pub ramp_server_cpu_util: f64,
    /// Handshakes per server CPU-second.
    pub handshakes_per_server_cpu_sec: f64,
    /// Connect + handshake latency (+ join).
    pub handshake_latency: LatencySummary,
    /// Server resident memory before the ramp, bytes.
    pub server_rss_before_bytes: u64,
    /// Server resident memory after the ramp and `settle`, bytes.
    pub server_rss_after_bytes: u64,
    /// (after − before) / connected, bytes.
    pub rss_per_connection_bytes: f64,
    /// The same in KiB.
    pub rss_per_connection_kib: f64,
    /// Server CPU use while idle after the ramp (1.0 = one core).
    pub idle_server_cpu_util: f64,
    /// Connections still open at the end of `hold`.
    pub alive_after_hold: u64,
    /// How the first connection that ended early ended.
    pub first_disconnect: Option<String>,
    /// Seconds held after the ramp.
    pub hold_secs: f64,
    /// Load generator resident memory (all its processes), bytes.
    pub client_rss_bytes: u64,
    /// Most descriptors open in one load-generator process.
    pub client_max_open_fds: usize,
}

/// What one process needs to open its share of connections.
#[derive(Debug, Clone)]
pub struct OpenSpec {
    /// Index of the first connection (user ids `idle-{first + i}`).
    pub first: usize,
    /// Number of connections.
    pub count: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Source addresses to spread over.
    pub source_ips: usize,
    /// Room every connection joins, if any.
    pub room: Option<String>,
    /// Client socket settings.
    pub client: ClientConfig,
}

/// Idle connections held open; dropping it closes them.
#[derive(Debug)]
pub struct Holder {
    alive: Arc<AtomicU64>,
    first_end: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Holder {
    /// Connections still open.
    pub fn alive(&self) -> u64 {
        self.alive.load(Ordering::Relaxed)
    }

    /// How the first connection that ended early ended.
    pub fn first_end(&self) -> Option<String> {
        self.first_end
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Closes every connection (without a close handshake) and waits for the tasks.
    pub async fn close(mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The result of opening one process's share.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Opened {
    /// Connections opened.
    pub connected: u64,
    /// Failures.
    pub failures: ConnectFailures,
    /// Time taken, seconds.
    pub elapsed_secs: f64,
    /// Handshake latency histogram as (µs, count) pairs.
    pub latency: Vec<(u64, u64)>,
}

async fn idle(
    mut ws: Ws,
    target: Target,
    stop: CancellationToken,
    alive: Arc<AtomicU64>,
    first_end: Arc<Mutex<Option<String>>>,
) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut stopped => return,
            item = ws.next() => item,
        };
        match item {
            Some(Ok(Message::Text(text))) => {
                if target.decode(&text) == Incoming::Ping
                    && ws.send(Message::text(ENGINE_IO_PONG)).await.is_err()
                {
                    break;
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                first_end
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert_with(|| describe_end(item));
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    alive.fetch_sub(1, Ordering::Relaxed);
}

/// Opens `spec.count` idle connections; `progress` counts them as they open.
pub async fn open_idle(
    endpoint: &Endpoint,
    spec: &OpenSpec,
    progress: &AtomicU64,
) -> Result<(Holder, Opened), ConnectError> {
    let tokens: Vec<Option<String>> = match &endpoint.minter {
        Some(minter) => (0..spec.count)
            .map(|i| {
                minter
                    .mint(
                        &format!("idle-{}", spec.first + i),
                        Duration::from_secs(3600),
                    )
                    .map(Some)
            })
            .collect::<Result<_, _>>()?,
        None => vec![None; spec.count],
    };
    let sources = source_addresses(spec.source_ips);
    let holder = Holder {
        alive: Arc::new(AtomicU64::new(0)),
        first_end: Arc::new(Mutex::new(None)),
        stop: CancellationToken::new(),
        tasks: Vec::with_capacity(spec.count),
    };
    let start = Instant::now();
    let attempts = futures_util::stream::iter(tokens.into_iter().enumerate())
        .map(|(i, token)| {
            let source = sources[(spec.first + i) % sources.len()];
            async move {
                let begun = Instant::now();
                let sub = format!("idle-{}", spec.first + i);
                let mut ws =
                    connect(endpoint, source, &sub, token.as_deref(), &spec.client).await?;
                if let Some(room) = &spec.room {
                    join(&mut ws, endpoint.target, room, spec.client.timeout).await?;
                }
                Ok::<_, ConnectError>((ws, begun.elapsed()))
            }
        })
        .buffer_unordered(spec.concurrency.max(1));
    tokio::pin!(attempts);
    let mut latency = new_histogram();
    let mut failures = ConnectFailures::default();
    let mut holder = holder;
    while let Some(result) = attempts.next().await {
        match result {
            Ok((ws, took)) => {
                record(&mut latency, took.as_micros() as u64);
                holder.alive.fetch_add(1, Ordering::Relaxed);
                progress.fetch_add(1, Ordering::Relaxed);
                holder.tasks.push(tokio::spawn(idle(
                    ws,
                    endpoint.target,
                    holder.stop.clone(),
                    holder.alive.clone(),
                    holder.first_end.clone(),
                )));
            }
            Err(err) => failures.add(&err),
        }
    }
    let opened = Opened {
        connected: holder.tasks.len() as u64,
        failures,
        elapsed_secs: start.elapsed().as_secs_f64(),
        latency: histogram_to_pairs(&latency),
    };
    Ok((holder, opened))
}

/// A message from a worker process to the harness (one JSON line on its stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Tokens minted; waiting for `go`.
    Ready,
    /// Connections opened so far.
    Progress {
        /// Count.
        connected: u64,
    },
    /// The share is open (or failed).
    Opened(Opened),
    /// Answer to `status`.
    Status {
        /// Connections still open.
        alive: u64,
        /// How the first connection that ended early ended.
        first_end: Option<String>,
        /// The worker's resident memory.
        rss_bytes: u64,
        /// The worker's open descriptors.
        open_fds: usize,
    },
    /// The worker could not do its job.
    Failed {
        /// Why.
        error: String,
    },
}

/// Everything a worker process needs (besides the secret, which comes in [`SECRET_ENV`]).
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// What the server speaks.
    pub target: Target,
    /// Its address.
    pub addr: SocketAddr,
    /// The share to open.
    pub spec: OpenSpec,
}

fn emit(event: &WorkerEvent) {
    if let Ok(line) = serde_json::to_string(event) {
        println!("{line}");
    }
}

/// The `connect-worker` process: reads `go`, `status` and `quit` lines on stdin, answers
/// [`WorkerEvent`] lines on stdout.
pub async fn worker_main(args: WorkerArgs) {
    let minter = std::env::var(SECRET_ENV)
        .ok()
        .map(|s| crate::client::TokenMinter::hs256(&s));
    let endpoint = Endpoint {
        target: args.target,
        addr: args.addr,
        pids: Vec::new(),
        minter,
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    emit(&WorkerEvent::Ready);
    let mut holder = None;
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "go" => {
                let progress = Arc::new(AtomicU64::new(0));
                let reporter = {
                    let progress = progress.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            emit(&WorkerEvent::Progress {
                                connected: progress.load(Ordering::Relaxed),
                            });
                        }
                    })
                };
                let opened = open_idle(&endpoint, &args.spec, &progress).await;
                reporter.abort();
                match opened {
                    Ok((held, opened)) => {
                        holder = Some(held);
                        emit(&WorkerEvent::Opened(opened));
                    }
                    Err(err) => emit(&WorkerEvent::Failed {
                        error: err.to_string(),
                    }),
                }
            }
            "status" => {
                let own = procfs::sample(&[procfs::own_pid()]).unwrap_or_default();
                emit(&WorkerEvent::Status {
                    alive: holder.as_ref().map_or(0, Holder::alive),
                    first_end: holder.as_ref().and_then(Holder::first_end),
                    rss_bytes: own.rss_bytes,
                    open_fds: procfs::own_open_fds().unwrap_or(0),
                });
            }
            "quit" => break,
            _ => {}
        }
    }
    if let Some(holder) = holder {
        holder.close().await;
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

impl Worker {
    async fn send(&mut self, line: &str) -> Result<(), ScenarioError> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| ScenarioError::Failed(format!("writing to a connect worker: {e}")))
    }
}

/// Where the connections live: here, or in worker processes.
enum Clients {
    Here {
        holder: Option<Holder>,
        opened: Option<Opened>,
    },
    Workers {
        workers: Vec<Worker>,
        events: mpsc::Receiver<(usize, WorkerEvent)>,
    },
}

impl Clients {
    async fn start(
        endpoint: &Endpoint,
        params: &ConnectionsParams,
        room: Option<String>,
    ) -> Result<Clients, ScenarioError> {
        if params.client_procs == 0 {
            return Ok(Clients::Here {
                holder: None,
                opened: None,
            });
        }
        let exe = params.worker_exe.clone().ok_or_else(|| {
            ScenarioError::Failed("client_procs > 0 needs the roomcast-bench binary".into())
        })?;
        let (tx, events) = mpsc::channel(1024);
        let mut workers = Vec::new();
        let per = params.connections.div_ceil(params.client_procs);
        for w in 0..params.client_procs {
            let first = w * per;
            let count = per.min(params.connections.saturating_sub(first));
            let mut command = Command::new(&exe);
            command
                .arg("connect-worker")
                .args(["--target", endpoint.target.as_str()])
                .args(["--addr", &endpoint.addr.to_string()])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--concurrency", &params.concurrency.to_string()])
                .args(["--source-ips", &params.source_ips.to_string()])
                .args(["--read-buffer", &params.client.read_buffer.to_string()])
                .args(["--write-buffer", &params.client.write_buffer.to_string()])
                .args([
                    "--timeout-secs",
                    &params.client.timeout.as_secs().to_string(),
                ]);
            if let Some(room) = &room {
                command.args(["--room", room]);
            }
            if let Some(minter) = &endpoint.minter {
                command.env(SECRET_ENV, minter.secret());
            }
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = command.spawn().map_err(|e| {
                ScenarioError::Failed(format!("spawning {} connect-worker: {e}", exe.display()))
            })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(ScenarioError::Failed("connect worker without pipes".into()));
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(event) = serde_json::from_str::<WorkerEvent>(&line)
                        && tx.send((w, event)).await.is_err()
                    {
                        return;
                    }
                }
                let _ = tx
                    .send((
                        w,
                        WorkerEvent::Failed {
                            error: "connect worker exited".into(),
                        },
                    ))
                    .await;
            });
            workers.push(Worker { child, stdin });
        }
        let mut clients = Clients::Workers { workers, events };
        let mut ready = 0;
        while ready < params.client_procs {
            match clients.next_event().await? {
                (_, WorkerEvent::Ready) => ready += 1,
                (w, WorkerEvent::Failed { error }) => {
                    return Err(ScenarioError::Failed(format!(
                        "connect worker {w}: {error}"
                    )));
                }
                _ => {}
            }
        }
        Ok(clients)
    }

    async fn next_event(&mut self) -> Result<(usize, WorkerEvent), ScenarioError> {
        match self {
            Clients::Workers { events, .. } => {
                tokio::time::timeout(Duration::from_secs(600), events.recv())
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        ScenarioError::Failed("connect workers stopped answering".into())
                    })
            }
            Clients::Here { .. } => Err(ScenarioError::Failed("no workers".into())),
        }
    }

    /// Sends `line` to every worker; returns how many there are.
    async fn send_all(&mut self, line: &str) -> Result<usize, ScenarioError> {
        match self {
            Clients::Workers { workers, .. } => {
                for worker in workers.iter_mut() {
                    worker.send(line).await?;
                }
                Ok(workers.len())
            }
            Clients::Here { .. } => Err(ScenarioError::Failed("no workers".into())),
        }
    }

    /// Opens every connection; `progress` counts them as they open.
    async fn open(
        &mut self,
        endpoint: &Endpoint,
        params: &ConnectionsParams,
        room: Option<String>,
        progress: &Arc<AtomicU64>,
    ) -> Result<Opened, ScenarioError> {
        if let Clients::Here { holder, opened } = self {
            let spec = OpenSpec {
                first: 0,
                count: params.connections,
                concurrency: params.concurrency,
                source_ips: params.source_ips,
                room,
                client: params.client,
            };
            let (held, result) = open_idle(endpoint, &spec, progress).await?;
            *holder = Some(held);
            *opened = Some(result.clone());
            return Ok(result);
        }
        let n = self.send_all("go").await?;
        let mut latest = vec![0u64; n];
        let mut total = Opened::default();
        let mut done = 0;
        while done < n {
            match self.next_event().await? {
                (w, WorkerEvent::Progress { connected }) => {
                    latest[w] = connected;
                    progress.store(latest.iter().sum(), Ordering::Relaxed);
                }
                (w, WorkerEvent::Opened(opened)) => {
                    latest[w] = opened.connected;
                    progress.store(latest.iter().sum(), Ordering::Relaxed);
                    total.connected += opened.connected;
                    total.failures.merge(&opened.failures);
                    total.elapsed_secs = total.elapsed_secs.max(opened.elapsed_secs);
                    total.latency.extend(opened.latency);
                    done += 1;
                }
                (w, WorkerEvent::Failed { error }) => {
                    return Err(ScenarioError::Failed(format!(
                        "connect worker {w}: {error}"
                    )));
                }
                _ => {}
            }
        }
        Ok(total)
    }

    /// (alive, first early end, client RSS, most open descriptors in one process).
    async fn status(&mut self) -> Result<(u64, Option<String>, u64, usize), ScenarioError> {
        if let Clients::Here { holder, .. } = self {
            let own = procfs::sample(&[procfs::own_pid()])?;
            let fds = procfs::own_open_fds()?;
            return Ok((
                holder.as_ref().map_or(0, Holder::alive),
                holder.as_ref().and_then(Holder::first_end),
                own.rss_bytes,
                fds,
            ));
        }
        let n = self.send_all("status").await?;
        let (mut alive, mut first, mut rss, mut fds) = (0, None, 0, 0);
        let mut answered = 0;
        while answered < n {
            match self.next_event().await? {
                (
                    _,
                    WorkerEvent::Status {
                        alive: a,
                        first_end,
                        rss_bytes,
                        open_fds,
                    },
                ) => {
                    alive += a;
                    first = first.or(first_end);
                    rss += rss_bytes;
                    fds = fds.max(open_fds);
                    answered += 1;
                }
                (w, WorkerEvent::Failed { error }) => {
                    return Err(ScenarioError::Failed(format!(
                        "connect worker {w}: {error}"
                    )));
                }
                _ => {}
            }
        }
        Ok((alive, first, rss, fds))
    }

    async fn close(self) {
        match self {
            Clients::Here { holder, .. } => {
                if let Some(holder) = holder {
                    holder.close().await;
                }
            }
            Clients::Workers { mut workers, .. } => {
                for worker in &mut workers {
                    let _ = worker.send("quit").await;
                }
                for worker in &mut workers {
                    if tokio::time::timeout(Duration::from_secs(30), worker.child.wait())
                        .await
                        .is_err()
                    {
                        let _ = worker.child.kill().await;
                    }
                }
            }
        }
    }
}

/// Runs the connections scenario against `endpoint`.
pub async fn run(
    endpoint: &Endpoint,
    params: &ConnectionsParams,
) -> Result<ConnectionsResult, ScenarioError> {
    let target = endpoint.target;
    let room = params.join.then(|| format!("idle-{}", random_tag()));
    let mut clients = Clients::start(endpoint, params, room.clone()).await?;

    let before = procfs::sample(&endpoint.pids)?;
    let progress = Arc::new(AtomicU64::new(0));
    let ticker_guard = {
        let progress = progress.clone();
        let pids = endpoint.pids.clone();
        let total = params.connections;
        let mut last = (before, 0u64);
        ticker(params.progress, Duration::from_secs(1), move |t| {
            let now = (
                procfs::sample(&pids).unwrap_or_default(),
                progress.load(Ordering::Relaxed),
            );
            let line = format!(
                "[connections {target}] {:>4.0}s connected {}/{total} ({}/s) | server cpu {:.0}% rss {}",
                t.as_secs_f64(),
                now.1,
                now.1.saturating_sub(last.1),
                now.0.cpu_since(&last.0) * 100.0,
                mib(now.0.rss_bytes),
            );
            last = now;
            line
        })
    };
    let ramp_start = Instant::now();
    let opened = clients.open(endpoint, params, room, &progress).await;
    let ramp_secs = ramp_start.elapsed().as_secs_f64().max(1e-9);
    drop(ticker_guard);
    let opened = match opened {
        Ok(opened) => opened,
        Err(err) => {
            clients.close().await;
            return Err(err);
        }
    };
    let after_ramp = procfs::sample(&endpoint.pids)?;
    tokio::time::sleep(params.settle).await;
    let settled = procfs::sample(&endpoint.pids)?;
    let idle_secs = params.settle.as_secs_f64().max(1e-9);
    tokio::time::sleep(params.hold.saturating_sub(params.settle)).await;
    let (alive, first_disconnect, client_rss, client_fds) = clients.status().await?;
    let hold_secs = params.hold.max(params.settle).as_secs_f64();
    clients.close().await;

    let mut latency: Histogram<u64> = new_histogram();
    add_pairs(&mut latency, &opened.latency);
    let ramp_cpu = after_ramp.cpu_since(&before);
    let grown = settled.rss_bytes.saturating_sub(before.rss_bytes) as f64;
    let per_conn = if opened.connected > 0 {
        grown / opened.connected as f64
    } else {
        0.0
    };
    Ok(ConnectionsResult {
        target,
        connections: params.connections,
        connected: opened.connected,
        failures: opened.failures,
        joined_room: params.join,
        client_procs: params.client_procs,
        concurrency: params.concurrency,
        ramp_secs,
        handshakes_per_sec: opened.connected as f64 / ramp_secs,
        ramp_server_cpu_secs: ramp_cpu,
        ramp_server_cpu_util: ramp_cpu / ramp_secs,
        handshakes_per_server_cpu_sec: if ramp_cpu > 0.0 {
            opened.connected as f64 / ramp_cpu
        } else {
            0.0
        },
        handshake_latency: LatencySummary::of(&latency),
        server_rss_before_bytes: before.rss_bytes,
        server_rss_after_bytes: settled.rss_bytes,
        rss_per_connection_bytes: per_conn,
        rss_per_connection_kib: per_conn / 1024.0,
        idle_server_cpu_util: settled.cpu_since(&after_ramp) / idle_secs,
        alive_after_hold: alive,
        first_disconnect,
        hold_secs,
        client_rss_bytes: client_rss,
        client_max_open_fds: client_fds,
    })
}
