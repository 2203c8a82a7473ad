//! Cluster harness: real `roomcast-gateway` and `roomcast-worker` processes started with
//! `scripts/cluster` (the way people run a local cluster), a networked broker and a fresh
//! PostgreSQL database per cluster.
//!
//! - [`Cluster::start`] checks that the broker and PostgreSQL answer (with `CI=true` a test fails
//!   when they do not; otherwise it is skipped with a note), runs `scripts/cluster up` with the
//!   test's binaries, and reads the cluster's state file.
//! - Processes are killed or stopped by pid ([`Cluster::signal`]), added and restarted with
//!   `scripts/cluster add`/`restart`.
//! - [`Peer`]s are protocol clients that join a room, publish ids with a window of unanswered
//!   publishes, retry `unavailable` publishes with the same id, and reconnect (rotating over
//!   gateways) with `since` = the last seq they saw, re-publishing what was not answered. They
//!   record every frame, so tests can check exactly-once, in-order delivery.
//! - Dropping the cluster runs `scripts/cluster down`, drops the database and deletes the
//!   broker prefix's topology (RabbitMQ; a `kafka://` prefix's topics are left). When the test
//!   failed, the end of every log is printed.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use roomcast_broker::testkit::first_host;
use roomcast_gateway::auth::Minter;
use roomcast_schemas::{ClientFrame, ErrorCode, EventId, EventName, RoomName, ServerFrame};
use roomcast_store::Store;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Longest wait for any one expected event (a frame, a process start, a delivery to finish).
pub(crate) const WAIT: Duration = Duration::from_secs(25);

/// The PostgreSQL server `scripts/cluster` creates its databases on.
const POSTGRES_ADDR: &str = "127.0.0.1:5432";

/// Gateway settings for tests: limits far above what the tests send.
const TEST_ENV: &[(&str, &str)] = &[
    ("ROOMCAST_PUBLISH_RATE", "100000"),
    ("ROOMCAST_PUBLISH_BURST", "100000"),
    ("ROOMCAST_USER_PUBLISH_RATE", "100000"),
    ("ROOMCAST_USER_PUBLISH_BURST", "100000"),
    ("ROOMCAST_HANDSHAKE_RATE", "100000"),
    ("ROOMCAST_HANDSHAKE_BURST", "100000"),
];

/// A random name with a readable prefix (rooms, users, broker prefixes).
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Whether CI demands every dependency.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `what` accepts TCP connections at `address`. With `CI=true` it must (the test
/// fails); otherwise the test is skipped with a note.
pub(crate) async fn reachable(what: &str, address: &str) -> bool {
    let connected = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address)).await;
    if matches!(connected, Ok(Ok(_))) {
        return true;
    }
    if in_ci() {
        panic!("{what} is not reachable at {address} (CI=true: this test needs it)");
    }
    eprintln!("skipping: {what} is not reachable at {address}");
    false
}

/// The workspace root.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the app crate sits in the workspace")
        .to_owned()
}

/// The directory of the test's binaries, with `roomcast-worker` next to `roomcast-gateway`
/// (`cargo nextest run --workspace` builds both; a missing worker is built once).
fn bin_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let gateway = PathBuf::from(env!("CARGO_BIN_EXE_roomcast-gateway"));
            let dir = gateway.parent().expect("binary directory").to_owned();
            let worker = dir.join("roomcast-worker");
            if !worker.exists() {
                let profile_dir = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
                let target_dir = dir.parent().expect("target directory");
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
                eprintln!("building roomcast-worker into {}", dir.display());
                let mut build = Command::new(cargo);
                build
                    .current_dir(workspace_root())
                    .args([
                        "build",
                        "-p",
                        "roomcast",
                        "--bin",
                        "roomcast-worker",
                        "--target-dir",
                    ])
                    .arg(target_dir);
                if profile_dir != "debug" {
                    build.args(["--profile", profile_dir]);
                }
                let status = build
                    .status()
                    .expect("run cargo build -p roomcast --bin roomcast-worker");
                assert!(
                    status.success(),
                    "cargo build -p roomcast --bin roomcast-worker failed"
                );
                assert!(
                    worker.exists(),
                    "{} is missing after the build",
                    worker.display()
                );
            }
            dir
        })
        .clone()
}

/// A kind of cluster process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `roomcast-gateway`.
    Gateway,
    /// `roomcast-worker`.
    Worker,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Worker => "worker",
        }
    }
}

/// One process line of the state file.
#[derive(Clone, Debug)]
pub(crate) struct Process {
    /// Gateway or worker.
    pub(crate) kind: Kind,
    /// Its number in the cluster (1, 2, …).
    pub(crate) index: usize,
    /// Its operating-system pid.
    pub(crate) pid: i32,
    /// `http://127.0.0.1:PORT` for a gateway.
    pub(crate) url: Option<String>,
}

/// The parsed state file.
#[derive(Clone, Debug, Default)]
struct State {
    broker: String,
    store: String,
    database: Option<String>,
    processes: Vec<Process>,
}

impl State {
    fn parse(text: &str) -> State {
        let mut state = State::default();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(key), rest) = (fields.next(), fields.collect::<Vec<_>>()) else {
                continue;
            };
            match (key, rest.as_slice()) {
                ("broker", [url]) => state.broker = (*url).to_owned(),
                ("store", [url]) => state.store = (*url).to_owned(),
                ("database", [name]) => state.database = Some((*name).to_owned()),
                ("gateway" | "worker", [index, pid, url @ ..]) => {
                    state.processes.push(Process {
                        kind: if key == "gateway" {
                            Kind::Gateway
                        } else {
                            Kind::Worker
                        },
                        index: index.parse().expect("process index"),
                        pid: pid.parse().expect("process pid"),
                        url: url.first().map(|u| (*u).to_owned()),
                    });
                }
                _ => {}
            }
        }
        state
    }
}

/// A running cluster; see the [module documentation](self).
pub(crate) struct Cluster {
    dir: TempDir,
    state: State,
    secret: String,
    minter: Minter,
}

impl Cluster {
    /// Starts `gateways` gateways and `workers` workers against `broker_url` and a fresh
    /// database; `None` when the test is skipped (a dependency is unreachable outside CI).
    pub(crate) async fn start(
        broker_url: &str,
        gateways: usize,
        workers: usize,
    ) -> Option<Cluster> {
        let default_port = if broker_url.starts_with("kafka") {
            9092
        } else {
            5672
        };
        if !reachable("the broker", &first_host(broker_url, default_port)).await
            || !reachable("PostgreSQL", POSTGRES_ADDR).await
        {
            return None;
        }
        let bins = tokio::task::spawn_blocking(bin_dir)
            .await
            .expect("binary directory");
        let dir = tempfile::Builder::new()
            .prefix("roomcast-cluster-")
            .tempdir()
            .expect("tempdir");
        let mut cluster = Cluster {
            dir,
            state: State::default(),
            secret: String::new(),
            minter: Minter::hs256(b"unset"),
        };
        let (gateways, workers) = (gateways.to_string(), workers.to_string());
        let bins = bins.to_str().expect("UTF-8 path").to_owned();
        cluster
            .script(&[
                "up",
                "--gateways",
                &gateways,
                "--workers",
                &workers,
                "--broker",
                broker_url,
                "--bin-dir",
                &bins,
            ])
            .await;
        cluster.secret = std::fs::read_to_string(cluster.dir.path().join("secret"))
            .expect("read the cluster's secret");
        cluster.minter = Minter::hs256(cluster.secret.as_bytes());
        cluster.reload();
        Some(cluster)
    }

    /// Runs `scripts/cluster ARGS --dir DIR`; panics (with its output) when it fails.
    async fn script(&self, args: &[&str]) -> String {
        let mut command = tokio::process::Command::new(workspace_root().join("scripts/cluster"));
        command
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .envs(TEST_ENV.iter().copied())
            .env_remove("ROOMCAST_JWT_SECRET")
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let output = tokio::time::timeout(Duration::from_secs(90), command.output())
            .await
            .unwrap_or_else(|_| panic!("scripts/cluster {args:?} did not finish in time"))
            .expect("run scripts/cluster");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "scripts/cluster {args:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn reload(&mut self) {
        let text =
            std::fs::read_to_string(self.dir.path().join("state")).expect("read the state file");
        self.state = State::parse(&text);
    }

    /// The broker URL (with the cluster's prefix).
    pub(crate) fn broker_url(&self) -> &str {
        &self.state.broker
    }

    /// The store URL.
    pub(crate) fn store_url(&self) -> &str {
        &self.state.store
    }

    /// The cluster's directory (state, logs).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The processes of the state file.
    pub(crate) fn processes(&self) -> &[Process] {
        &self.state.processes
    }

    /// Process `index` of `kind`.
    pub(crate) fn process(&self, kind: Kind, index: usize) -> &Process {
        self.state
            .processes
            .iter()
            .find(|p| p.kind == kind && p.index == index)
            .unwrap_or_else(|| panic!("no {} {index} in the cluster", kind.name()))
    }

    /// The pids of every process of the state file.
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.state.processes.iter().map(|p| p.pid).collect()
    }

    /// `ws://127.0.0.1:PORT/ws` of gateway `index`.
    pub(crate) fn ws_url(&self, index: usize) -> String {
        let url = self
            .process(Kind::Gateway, index)
            .url
            .as_deref()
            .expect("gateway URL");
        format!("{}/ws", url.replacen("http://", "ws://", 1))
    }

    /// `http://127.0.0.1:PORT` of gateway `index`.
    pub(crate) fn http_url(&self, index: usize) -> String {
        self.process(Kind::Gateway, index)
            .url
            .clone()
            .expect("gateway URL")
    }

    /// Sends `signal` to process `index` of `kind`; for SIGKILL, waits until it is gone.
    pub(crate) async fn signal(&self, kind: Kind, index: usize, signal: Signal) {
        let pid = self.process(kind, index).pid;
        kill(Pid::from_raw(pid), signal)
            .unwrap_or_else(|e| panic!("{signal} to {} {index}: {e}", kind.name()));
        if signal == Signal::SIGKILL {
            self.wait_gone(kind, index).await;
        }
    }

    /// Waits until process `index` of `kind` has exited.
    pub(crate) async fn wait_gone(&self, kind: Kind, index: usize) {
        let pid = self.process(kind, index).pid;
        let deadline = Instant::now() + WAIT;
        while !gone(pid) {
            assert!(
                Instant::now() < deadline,
                "{} {index} (pid {pid}) did not exit",
                kind.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a line of process `index`'s log satisfies `pred` (`what` names it in the
    /// failure message).
    pub(crate) async fn wait_log(
        &self,
        kind: Kind,
        index: usize,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) {
        let log = self.dir.path().join(format!("{}-{index}.log", kind.name()));
        let deadline = Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(&pred) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} {index} did not log {what}:\n{}",
                kind.name(),
                self.log_tails(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts one more process of `kind` (`scripts/cluster add`); returns its index.
    pub(crate) async fn add(&mut self, kind: Kind) -> usize {
        let line = self.script(&["add", kind.name()]).await;
        self.reload();
        line.split_whitespace()
            .nth(1)
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output of scripts/cluster add: {line}"))
    }

    /// Restarts process `index` of `kind` (`scripts/cluster restart`; a gateway keeps its port).
    pub(crate) async fn restart(&mut self, kind: Kind, index: usize) {
        self.script(&["restart", kind.name(), &index.to_string()])
            .await;
        self.reload();
    }

    /// Whether gateway `index` answers `/readyz` with 200.
    pub(crate) async fn ready(&self, index: usize) -> bool {
        let url = self.http_url(index);
        let address = url.trim_start_matches("http://").to_owned();
        let check = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = TcpStream::connect(&address).await.ok()?;
            let request =
                format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.ok()?;
            Some(reply.starts_with(b"HTTP/1.1 200"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), check).await,
            Ok(Some(true))
        )
    }

    /// Waits until gateway `index` answers `/readyz` with 200.
    pub(crate) async fn wait_ready(&self, index: usize) {
        let deadline = Instant::now() + WAIT;
        while !self.ready(index).await {
            assert!(
                Instant::now() < deadline,
                "gateway {index} did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A token for `sub` allowing every room.
    pub(crate) fn token(&self, sub: &str) -> String {
        self.minter
            .mint(sub, &["*".to_owned()], Duration::from_secs(3600))
            .expect("mint a token")
    }

    /// A client of `sub` connected to gateway `index`.
    pub(crate) async fn client(&self, index: usize, sub: &str) -> Client {
        Client::connect(&self.ws_url(index), &self.token(sub))
            .await
            .unwrap_or_else(|e| panic!("connect to gateway {index}: {e}"))
    }

    /// The cluster's store.
    pub(crate) async fn store(&self) -> Store {
        Store::connect(self.store_url())
            .await
            .unwrap_or_else(|e| panic!("open the cluster's store: {e}"))
    }

    /// Every stored message of `room`, in seq order: `(seq, from, id)`.
    pub(crate) async fn stored(&self, room: &str) -> Vec<(u64, String, String)> {
        let store = self.store().await;
        let mut out = Vec::new();
        loop {
            let after = out.last().map_or(0, |(seq, _, _)| *seq);
            let page = store
                .history(room, after, 1000)
                .await
                .unwrap_or_else(|e| panic!("read the store: {e}"));
            if page.is_empty() {
                break;
            }
            out.extend(page.into_iter().map(|m| (m.seq, m.from, m.id)));
        }
        store.close().await;
        out
    }

    /// Starts `specs` as peers; see [`Swarm`].
    pub(crate) async fn swarm(&self, specs: Vec<PeerSpec>) -> Swarm {
        Swarm::start(self, specs).await
    }

    /// The last `lines` lines of every log of the cluster.
    pub(crate) fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return out;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("==> {} <==\n", log.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster logs:\n{}", self.log_tails(40));
        }
        let down = Command::new(workspace_root().join("scripts/cluster"))
            .args(["down", "--grace", "10", "--dir"])
            .arg(self.dir.path())
            .output();
        match down {
            Ok(output) if output.status.success() => {}
            other => eprintln!("scripts/cluster down failed: {other:?}"),
        }
        if let Some(database) = &self.state.database {
            let dropped = Command::new("dropdb")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "--if-exists",
                    "--force",
                ])
                .arg(database)
                .output();
            if !matches!(&dropped, Ok(o) if o.status.success()) {
                eprintln!("could not drop database {database}: {dropped:?}");
            }
        }
        let broker = self.state.broker.clone();
        if broker.starts_with("amqp") {
            // On a runtime of its own: the test's may be shutting down.
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime
                    .block_on(roomcast_broker::amqp::delete_topology(&broker))
                    .err()
            });
            if let Ok(Some(error)) = cleanup.join() {
                eprintln!("could not delete the broker topology: {error}");
            }
        }
        // A `kafka://` prefix's topics are left: they are never reused, and deleting a topic
        // on tansu 0.6 (`tansu topic delete`) removes every topic of the broker.
    }
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket client speaking the Roomcast protocol.
pub(crate) struct Client {
    ws: Ws,
}

impl Client {
    /// Connects to `ws_url` with `token` in the `Authorization` header.
    pub(crate) async fn connect(ws_url: &str, token: &str) -> Result<Client, String> {
        let mut request = ws_url.into_client_request().map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
        request.headers_mut().insert("authorization", value);
        let address = first_host(ws_url, 80);
        let connect = async {
            let stream = TcpStream::connect(&address)
                .await
                .map_err(|e| e.to_string())?;
            let (ws, _) = tokio_tungstenite::client_async(request, stream)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Client { ws })
        };
        tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| "handshake timed out".to_owned())?
    }

    /// Sends a client frame; `false` when the connection is gone.
    pub(crate) async fn send(&mut self, frame: &ClientFrame) -> bool {
        let text = serde_json::to_string(frame).expect("serialize a frame");
        self.ws.send(Message::text(text)).await.is_ok()
    }

    /// The next server frame within [`WAIT`]; `None` when the connection ended.
    pub(crate) async fn recv(&mut self) -> Option<ServerFrame> {
        tokio::time::timeout(WAIT, self.recv_untimed())
            .await
            .expect("no frame in time")
    }

    async fn recv_untimed(&mut self) -> Option<ServerFrame> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(
                        serde_json::from_str(text.as_str())
                            .unwrap_or_else(|e| panic!("bad server frame ({e}): {text}")),
                    );
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Joins `room` with `since`; the `joined` seq, or the error frame.
    pub(crate) async fn join(
        &mut self,
        room: &str,
        since: Option<u64>,
    ) -> Result<u64, Option<ServerFrame>> {
        let join = ClientFrame::Join {
            room: RoomName::new(room).expect("valid room"),
            since,
        };
        if !self.send(&join).await {
            return Err(None);
        }
        match self.recv().await {
            Some(ServerFrame::Joined { seq, .. }) => Ok(seq),
            other => Err(other),
        }
    }
}

/// What a [`Peer`] does.
#[derive(Clone, Debug)]
pub(crate) struct PeerSpec {
    /// Its user (`sub`).
    pub(crate) sub: String,
    /// The room it joins.
    pub(crate) room: String,
    /// Gateway WebSocket URLs: it connects to the first, and after a lost connection to the
    /// next one (round robin).
    pub(crate) urls: Vec<String>,
    /// The ids it publishes, in this order.
    pub(crate) ids: Vec<String>,
    /// Most publishes without an answer at once.
    pub(crate) window: usize,
    /// Pause between two publishes (load shaping).
    pub(crate) interval: Duration,
    /// It is done once all its ids are acked and it received the message with this seq.
    pub(crate) until_seq: u64,
}

impl PeerSpec {
    /// A member of `room` that publishes nothing and reads until `until_seq`.
    pub(crate) fn member(sub: &str, room: &str, urls: Vec<String>, until_seq: u64) -> PeerSpec {
        PeerSpec {
            sub: sub.to_owned(),
            room: room.to_owned(),
            urls,
            ids: Vec::new(),
            window: 16,
            interval: Duration::ZERO,
            until_seq,
        }
    }

    /// A member that also publishes `count` events (ids `SUB-0`, `SUB-1`, …), one per
    /// `interval`.
    pub(crate) fn publisher(
        sub: &str,
        room: &str,
        urls: Vec<String>,
        count: usize,
        interval: Duration,
        until_seq: u64,
    ) -> PeerSpec {
        PeerSpec {
            ids: (0..count).map(|i| format!("{sub}-{i}")).collect(),
            interval,
            ..PeerSpec::member(sub, room, urls, until_seq)
        }
    }
}

/// What a [`Peer`] saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerReport {
    /// Its user.
    pub(crate) sub: String,
    /// The `joined` seq of each join (one per connection).
    pub(crate) joined: Vec<u64>,
    /// Every `message` received, in arrival order: `(seq, from, id)`.
    pub(crate) messages: Vec<(u64, String, String)>,
    /// The ids acked, each once, in the order of their first ack.
    pub(crate) acked: Vec<String>,
    /// Acks of an id that was acked before (after a re-publish); allowed.
    pub(crate) reacked: usize,
    /// `unavailable` answers to publishes.
    pub(crate) unavailable: usize,
    /// Unavailable answers to joins, and lost connections.
    pub(crate) reconnects: usize,
    /// Other error frames (none are expected).
    pub(crate) errors: Vec<String>,
    /// Whether it finished (all acked, `until_seq` seen) before its deadline.
    pub(crate) finished: bool,
    /// The last seq it saw.
    pub(crate) last_seq: u64,
}

impl PeerReport {
    fn summary(&self) -> String {
        format!(
            "{}: finished={} joined={:?} messages={} last_seq={} acked={} reacked={} \
             unavailable={} reconnects={} errors={:?}",
            self.sub,
            self.finished,
            self.joined,
            self.messages.len(),
            self.last_seq,
            self.acked.len(),
            self.reacked,
            self.unavailable,
            self.reconnects,
            self.errors
        )
    }
}

/// Peers running together: every peer joins first, then all start publishing at once.
pub(crate) struct Swarm {
    tasks: Vec<JoinHandle<PeerReport>>,
    acks: watch::Receiver<usize>,
}

impl Swarm {
    async fn start(cluster: &Cluster, specs: Vec<PeerSpec>) -> Swarm {
        let (acks_tx, acks) = watch::channel(0usize);
        let acks_tx = Arc::new(acks_tx);
        let (go_tx, go) = watch::channel(false);
        let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel(specs.len().max(1));
        let count = specs.len();
        let tasks = specs
            .into_iter()
            .map(|spec| {
                let peer = Peer {
                    token: cluster.token(&spec.sub),
                    spec,
                    acks: acks_tx.clone(),
                    go: go.clone(),
                    joined: Some(joined_tx.clone()),
                };
                tokio::spawn(peer.run())
            })
            .collect();
        for _ in 0..count {
            tokio::time::timeout(WAIT, joined_rx.recv())
                .await
                .expect("every peer joins in time")
                .expect("a peer failed before joining");
        }
        go_tx.send_replace(true);
        // The peers hold the receivers; the sender may go.
        drop(go_tx);
        Swarm { tasks, acks }
    }

    /// Waits until the peers together got `n` acks.
    pub(crate) async fn acked_at_least(&mut self, n: usize) {
        let reached = tokio::time::timeout(WAIT, self.acks.wait_for(|acks| *acks >= n))
            .await
            .map(|result| result.is_ok());
        assert!(
            matches!(reached, Ok(true)),
            "fewer than {n} acks in time ({})",
            *self.acks.borrow()
        );
    }

    /// Acks so far.
    pub(crate) fn acks(&self) -> usize {
        *self.acks.borrow()
    }

    /// Waits for every peer to finish; panics with every peer's summary unless all did.
    pub(crate) async fn finish(self) -> Vec<PeerReport> {
        let mut reports = Vec::new();
        for task in self.tasks {
            reports.push(task.await.expect("peer task"));
        }
        assert!(
            reports.iter().all(|r| r.finished),
            "peers did not finish:\n{}",
            summaries(&reports)
        );
        reports
    }
}

/// One line per peer.
pub(crate) fn summaries(reports: &[PeerReport]) -> String {
    reports
        .iter()
        .map(PeerReport::summary)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A protocol client that survives lost connections; see the [module documentation](self).
struct Peer {
    spec: PeerSpec,
    token: String,
    acks: Arc<watch::Sender<usize>>,
    go: watch::Receiver<bool>,
    joined: Option<tokio::sync::mpsc::Sender<()>>,
}

/// Longest time a peer runs.
const PEER_DEADLINE: Duration = Duration::from_secs(60);
/// Pause before re-publishing an `unavailable` id.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

impl Peer {
    async fn run(mut self) -> PeerReport {
        let spec = self.spec.clone();
        let mut report = PeerReport {
            sub: spec.sub.clone(),
            ..PeerReport::default()
        };
        let deadline = Instant::now() + PEER_DEADLINE;
        let mut acked: HashSet<String> = HashSet::new();
        // Ids to send, in order; sent ids without an answer, by their position.
        let mut queue: VecDeque<(usize, Instant)> = VecDeque::new();
        let mut in_flight: BTreeSet<usize> = BTreeSet::new();
        let positions: HashMap<&str, usize> = spec
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut next_new = 0usize;
        let mut last_seq: Option<u64> = None;
        let mut attempt = 0usize;
        let mut backoff = Duration::from_millis(100);

        'connections: while Instant::now() < deadline {
            let url = &spec.urls[attempt % spec.urls.len()];
            attempt += 1;
            let mut client = match Client::connect(url, &self.token).await {
                Ok(client) => client,
                Err(_) => {
                    report.reconnects += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            match client.join(&spec.room, last_seq).await {
                Ok(seq) => {
                    report.joined.push(seq);
                    if last_seq.is_none() {
                        last_seq = Some(seq);
                    }
                }
                Err(frame) => {
                    report.reconnects += 1;
                    if let Some(frame) = frame
                        && !matches!(
                            frame,
                            ServerFrame::Error {
                                code: ErrorCode::Unavailable,
                                ..
                            }
                        )
                    {
                        report.errors.push(format!("join: {frame:?}"));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
            backoff = Duration::from_millis(100);
            if let Some(joined) = self.joined.take() {
                let _ = joined.send(()).await;
                let _ = self.go.wait_for(|go| *go).await;
            }
            // Unanswered publishes of the lost connection go first, in their order.
            let now = Instant::now();
            for &position in in_flight.iter().rev() {
                queue.push_front((position, now));
            }
            in_flight.clear();
            let mut next_send = Instant::now();

            loop {
                let seen = last_seq.unwrap_or(0);
                if acked.len() == spec.ids.len() && seen >= spec.until_seq {
                    report.finished = true;
                    break 'connections;
                }
                // What to send next, and when.
                let candidate = if in_flight.len() >= spec.window {
                    None
                } else if let Some(&(position, at)) = queue.front() {
                    Some((position, at.max(next_send), true))
                } else if next_new < spec.ids.len() {
                    Some((next_new, next_send, false))
                } else {
                    None
                };
                let send_at = candidate.map(|(_, at, _)| at);
                tokio::select! {
                    frame = client.recv_untimed() => {
                        let Some(frame) = frame else {
                            report.reconnects += 1;
                            continue 'connections;
                        };
                        match frame {
                            ServerFrame::Message { seq, from, id, .. } => {
                                last_seq = Some(seen.max(seq));
                                report.messages.push((seq, from, id));
                            }
                            ServerFrame::Ack { id } => {
                                if let Some(&position) = positions.get(id.as_str()) {
                                    in_flight.remove(&position);
                                }
                                if acked.insert(id.clone()) {
                                    report.acked.push(id);
                                    self.acks.send_modify(|n| *n += 1);
                                } else {
                                    report.reacked += 1;
                                }
                            }
                            ServerFrame::Error { code: ErrorCode::Unavailable, id: Some(id), .. } => {
                                report.unavailable += 1;
                                if let Some(&position) = positions.get(id.as_str())
                                    && in_flight.remove(&position)
                                    && !acked.contains(&id)
                                {
                                    queue.push_back((position, Instant::now() + RETRY_PAUSE));
                                }
                            }
                            other => report.errors.push(format!("{other:?}")),
                        }
                    }
                    () = sleep_until_opt(send_at) => {
                        let Some((position, _, retry)) = candidate else { continue };
                        if retry {
                            queue.pop_front();
                        } else {
                            next_new += 1;
                        }
                        in_flight.insert(position);
                        next_send = Instant::now() + spec.interval;
                        let frame = ClientFrame::Publish {
                            id: EventId::new(spec.ids[position].clone()).expect("valid id"),
                            room: RoomName::new(spec.room.clone()).expect("valid room"),
                            event: EventName::new("test").expect("valid event"),
                            data: serde_json::value::to_raw_value(&position).expect("JSON"),
                        };
                        if !client.send(&frame).await {
                            report.reconnects += 1;
                            continue 'connections;
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => break 'connections,
                }
            }
        }
        report.last_seq = last_seq.unwrap_or(0);
        report
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Checks that every peer received the messages `1..=total` exactly once, in seq order, and
/// that all agree on which event has which seq; returns that order: `(from, id)` by seq.
pub(crate) fn check_delivery(reports: &[PeerReport], total: u64) -> Vec<(String, String)> {
    let mut canonical: Option<Vec<(String, String)>> = None;
    for report in reports {
        let seqs: Vec<u64> = report.messages.iter().map(|(seq, _, _)| *seq).collect();
        let first = report.joined.first().copied().unwrap_or(0);
        let expected: Vec<u64> = (first + 1..=total).collect();
        if seqs != expected {
            let duplicates = seqs.len() - seqs.iter().collect::<HashSet<_>>().len();
            panic!(
                "{} received seqs {}..{} ({} messages, {duplicates} repeated), expected {}..={total} \
                 once each in order; first difference at position {:?}",
                report.sub,
                seqs.first().copied().unwrap_or(0),
                seqs.last().copied().unwrap_or(0),
                seqs.len(),
                first + 1,
                seqs.iter().zip(&expected).position(|(a, b)| a != b)
            );
        }
        let events: Vec<(String, String)> = report
            .messages
            .iter()
            .map(|(_, from, id)| (from.clone(), id.clone()))
            .collect();
        match &canonical {
            None if first == 0 => canonical = Some(events),
            Some(order) => {
                let offset = usize::try_from(first).expect("seq fits");
                assert_eq!(
                    &order[offset..],
                    events.as_slice(),
                    "{} saw another order than the other members",
                    report.sub
                );
            }
            None => {}
        }
    }
    let order = canonical.expect("a peer that joined the empty room");
    let distinct: HashSet<&(String, String)> = order.iter().collect();
    assert_eq!(distinct.len(), order.len(), "an event was stored twice");
    order
}

/// Checks that the store holds `room`'s messages `1..=total`, each `(from, id)` once, in the
/// order the members saw (`order`).
pub(crate) async fn check_store(cluster: &Cluster, room: &str, order: &[(String, String)]) {
    let stored = cluster.stored(room).await;
    let seqs: Vec<u64> = stored.iter().map(|(seq, _, _)| *seq).collect();
    let expected: Vec<u64> = (1..=order.len() as u64).collect();
    assert_eq!(seqs, expected, "stored seqs are not 1..={}", order.len());
    let events: Vec<(String, String)> =
        stored.into_iter().map(|(_, from, id)| (from, id)).collect();
    assert_eq!(events, order, "the store and the members disagree");
}

/// Checks that each publisher got every one of its ids acked, and that all of them are stored
/// (`order` is the room's content).
pub(crate) fn check_acked(reports: &[PeerReport], specs: &[PeerSpec], order: &[(String, String)]) {
    let stored: HashSet<(&str, &str)> = order
        .iter()
        .map(|(from, id)| (from.as_str(), id.as_str()))
        .collect();
    for (report, spec) in reports.iter().zip(specs) {
        assert_eq!(
            report.acked.len(),
            spec.ids.len(),
            "{}: not every publish was acked",
            spec.sub
        );
        for id in &report.acked {
            assert!(
                stored.contains(&(spec.sub.as_str(), id.as_str())),
                "{}: {id} was acked but is not stored (a false ack)",
                spec.sub
            );
        }
    }
}

/// Checks that each publisher's events are stored in the order it published them.
pub(crate) fn check_publisher_order(specs: &[PeerSpec], order: &[(String, String)]) {
    for spec in specs.iter().filter(|s| !s.ids.is_empty()) {
        let theirs: Vec<&str> = order
            .iter()
            .filter(|(from, _)| *from == spec.sub)
            .map(|(_, id)| id.as_str())
            .collect();
        let published: Vec<&str> = spec.ids.iter().map(String::as_str).collect();
        assert_eq!(theirs, published, "{}'s events were reordered", spec.sub);
    }
}
