//! Starting and stopping the servers under test as child processes, optionally pinned to CPUs
//! with `taskset`.
//!
//! Every server prints `listening on http://ADDR` on stdout once it accepts connections; its
//! stderr goes to `server.log` in a temporary directory whose tail is shown when it fails.

use crate::client::{Endpoint, TokenMinter};
use crate::protocol::Target;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Rate limits high enough never to throttle a benchmark.
const UNLIMITED: &str = "1000000000";

/// A server that could not be started or stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A program or directory is missing.
    #[error("{0}")]
    Missing(String),
    /// The process could not be spawned.
    #[error("spawning {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It exited or did not announce its address in time.
    #[error("{name} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Start {
        /// Which server.
        name: String,
        /// What happened.
        reason: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// Other I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// Where the Roomcast gateway stores events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded durable log, all in one `roomcast serve` process.
    Embedded,
    /// A networked broker (`amqp://…`, `kafka://…`): `roomcast-gateway` and `roomcast-worker`
    /// processes, whose CPU and memory are summed.
    Networked {
        /// Broker URL.
        broker_url: String,
        /// Store URL.
        store_url: String,
    },
}

impl Backend {
    /// Name in results: `embedded`, or the broker URL's scheme.
    pub fn name(&self) -> String {
        match self {
            Backend::Embedded => "embedded".to_owned(),
            Backend::Networked { broker_url, .. } => broker_url
                .split("://")
                .next()
                .unwrap_or("networked")
                .to_owned(),
        }
    }
}

/// How to start each server.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// Directory holding the `roomcast` (and `roomcast-gateway`, `roomcast-worker`) binaries.
    pub roomcast_dir: PathBuf,
    /// The `roomcast-bench` binary (runs `bare-server`).
    pub bench_bin: PathBuf,
    /// Directory of the Socket.IO server (`server.js`, `node_modules`).
    pub socketio_dir: PathBuf,
    /// The Node executable.
    pub node: PathBuf,
    /// CPU list for `taskset -c` (e.g. `0`); `None`: not pinned.
    pub server_cpus: Option<String>,
    /// Roomcast's broker.
    pub backend: Backend,
    /// Bare server read/write buffer size; `None`: tungstenite's defaults.
    pub bare_buffer: Option<usize>,
    /// Extra arguments for `roomcast serve` / `roomcast-gateway`.
    pub roomcast_args: Vec<String>,
    /// Parent directory for the servers' temporary data; `None`: the system's.
    pub data_root: Option<PathBuf>,
    /// How long a server gets to announce its address.
    pub start_timeout: Duration,
    /// Record a CPU profile of each server with `perf record -p PID` into this directory
    /// (`{target}-{pid}.perf.data`).
    pub perf_dir: Option<PathBuf>,
    /// Arguments of `perf record` before `-p PID -o FILE`.
    pub perf_args: Vec<String>,
}

impl Launcher {
    /// Defaults around `bench_bin`: the Roomcast binaries next to it, `node` from `PATH`,
    /// `bench/socketio` of this source tree.
    pub fn new(bench_bin: PathBuf) -> Self {
        let roomcast_dir = bench_bin
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Launcher {
            roomcast_dir,
            bench_bin,
            socketio_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("socketio"),
            node: PathBuf::from("node"),
            server_cpus: None,
            backend: Backend::Embedded,
            bare_buffer: None,
            roomcast_args: Vec::new(),
            data_root: None,
            start_timeout: Duration::from_secs(30),
            perf_dir: None,
            perf_args: [
                "-e",
                "cpu-clock",
                "-F",
                "250",
                "--call-graph",
                "dwarf,16384",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }

    /// The `roomcast` binary.
    pub fn roomcast_bin(&self) -> PathBuf {
        self.roomcast_dir.join("roomcast")
    }

    fn command(&self, program: &Path) -> Command {
        match &self.server_cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpus).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// Starts the server for `target` and waits until it listens.
    pub async fn start(&self, target: Target) -> Result<RunningServer, ServerError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("roomcast-bench-");
        let dir = match &self.data_root {
            Some(root) => builder.tempdir_in(root),
            None => builder.tempdir(),
        }
        .map_err(io("creating a temporary directory"))?;
        let log = dir.path().join("server.log");
        let mut server = RunningServer {
            profiler: None,
            target,
            children: Vec::new(),
            addr: None,
            minter: None,
            log,
            _dir: dir,
        };
        match target {
            Target::Roomcast => self.start_roomcast(&mut server).await?,
            Target::Bare => {
                let mut command = self.command(&self.bench_bin);
                command.args(["bare-server", "--listen", "127.0.0.1:0"]);
                if let Some(size) = self.bare_buffer {
                    command.arg("--read-buffer").arg(size.to_string());
                    command.arg("--write-buffer").arg(size.to_string());
                }
                server
                    .spawn("bare-server", command, true, self.start_timeout)
                    .await?;
            }
            Target::SocketIo => {
                let script = self.socketio_dir.join("server.js");
                if !self
                    .socketio_dir
                    .join("node_modules")
                    .join("socket.io")
                    .is_dir()
                {
                    return Err(ServerError::Missing(format!(
                        "{}/node_modules is missing: run `npm ci` in {} first",
                        self.socketio_dir.display(),
                        self.socketio_dir.display()
                    )));
                }
                let mut command = self.command(&self.node);
                command
                    .arg(script)
                    .env("ROOMCAST_BENCH_LISTEN", "127.0.0.1:0");
                server
                    .spawn("socketio server", command, true, self.start_timeout)
                    .await?;
            }
        }
        if let Some(dir) = &self.perf_dir {
            server.attach_perf(dir, &self.perf_args)?;
        }
        Ok(server)
    }

    fn limit_args(command: &mut Command) {
        for flag in [
            "--publish-rate",
            "--publish-burst",
            "--user-publish-rate",
            "--user-publish-burst",
            "--handshake-rate",
            "--handshake-burst",
        ] {
            command.args([flag, UNLIMITED]);
        }
    }

    async fn start_roomcast(&self, server: &mut RunningServer) -> Result<(), ServerError> {
        let secret = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        server.minter = Some(TokenMinter::hs256(&secret));
        let data_dir = server._dir.path().join("data");
        match &self.backend {
            Backend::Embedded => {
                let bin = self.roomcast_bin();
                ensure_exists(&bin)?;
                let mut command = self.command(&bin);
                command
                    .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                    .arg(&data_dir);
                Self::limit_args(&mut command);
                command.args(&self.roomcast_args);
                command
                    .env("ROOMCAST_JWT_SECRET", &secret)
                    .env("RUST_LOG", "warn");
                server
                    .spawn("roomcast", command, true, self.start_timeout)
                    .await
            }
            Backend::Networked {
                broker_url,
                store_url,
            } => {
                let worker = self.roomcast_dir.join("roomcast-worker");
                let gateway = self.roomcast_dir.join("roomcast-gateway");
                ensure_exists(&worker)?;
                ensure_exists(&gateway)?;
                let mut command = self.command(&worker);
                command
                    .env("ROOMCAST_BROKER_URL", broker_url)
                    .env("ROOMCAST_STORE_URL", store_url)
                    .env("RUST_LOG", "warn");
                server
                    .spawn("roomcast-worker", command, false, self.start_timeout)
                    .await?;
                let mut command = self.command(&gateway);
                command.args(["--listen", "127.0.0.1:0"]);
                Self::limit_args(&mut command);
                command.args(&self.roomcast_args);
                command
                    .env("ROOMCAST_BROKER_URL", broker_url)
                    .env("ROOMCAST_STORE_URL", store_url)
                    .env("ROOMCAST_JWT_SECRET", &secret)
                    .env("RUST_LOG", "warn");
                server
                    .spawn("roomcast-gateway", command, true, self.start_timeout)
                    .await
            }
        }
    }
}

fn ensure_exists(bin: &Path) -> Result<(), ServerError> {
    if bin.is_file() {
        Ok(())
    } else {
        Err(ServerError::Missing(format!(
            "{} does not exist: build it first (cargo build --release -p roomcast), \
             or point --roomcast-dir at the directory that holds it",
            bin.display()
        )))
    }
}

/// The last `lines` lines of the file at `path`.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A started server; stop it with [`RunningServer::stop`] (dropping it kills it).
#[derive(Debug)]
pub struct RunningServer {
    target: Target,
    children: Vec<Child>,
    addr: Option<SocketAddr>,
    minter: Option<TokenMinter>,
    log: PathBuf,
    profiler: Option<Child>,
    _dir: tempfile::TempDir,
}

impl RunningServer {
    async fn spawn(
        &mut self,
        name: &str,
        mut command: Command,
        announces: bool,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("opening {}", self.log.display())))?;
        command.stdout(if announces {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        command
            .stderr(Stdio::from(log))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let program = command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned();
        let mut child = command
            .spawn()
            .map_err(|source| ServerError::Spawn { program, source })?;
        let stdout = child.stdout.take();
        self.children.push(child);
        let Some(stdout) = stdout else { return Ok(()) };
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(timeout, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                    return addr
                        .parse::<SocketAddr>()
                        .map_err(|_| format!("bad address line {line:?}"));
                }
            }
            Err("exited before listening".to_owned())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no `listening on` line within {timeout:?}")));
        match found {
            Ok(addr) => {
                self.addr = Some(addr);
                // Keep draining stdout so that the server never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                Ok(())
            }
            Err(reason) => Err(ServerError::Start {
                name: name.to_owned(),
                reason,
                log: self.log.display().to_string(),
                tail: tail(&self.log, 20),
            }),
        }
    }

    /// What the harness connects to.
    pub fn endpoint(&self) -> Result<Endpoint, ServerError> {
        let addr = self
            .addr
            .ok_or_else(|| ServerError::Missing("the server has no address".into()))?;
        Ok(Endpoint {
            target: self.target,
            addr,
            pids: self.pids(),
            minter: self.minter.clone(),
        })
    }

    /// The server's process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether every process still runs; `Err` names the one that exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for child in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} server exited: {status}\n{}",
                    self.target,
                    tail(&self.log, 20)
                ));
            }
        }
        Ok(())
    }

    /// Starts `perf record` on the serving process (the last one started).
    fn attach_perf(&mut self, dir: &Path, args: &[String]) -> Result<(), ServerError> {
        let pid = self
            .children
            .last()
            .and_then(Child::id)
            .ok_or_else(|| ServerError::Missing("no server process to profile".into()))?;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let out = dir.join(format!("{}-{pid}.perf.data", self.target));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("opening {}", self.log.display())))?;
        let child = Command::new("perf")
            .arg("record")
            .args(args)
            .arg("-p")
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ServerError::Spawn {
                program: "perf".into(),
                source,
            })?;
        eprintln!(
            "profiling {} (pid {pid}) into {}",
            self.target,
            out.display()
        );
        self.profiler = Some(child);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns a description of unclean exits.
    pub async fn stop(mut self, grace: Duration) -> Option<String> {
        let mut problems = Vec::new();
        if let Some(mut perf) = self.profiler.take() {
            if let Some(pid) = perf.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
            }
            if tokio::time::timeout(Duration::from_secs(120), perf.wait())
                .await
                .is_err()
            {
                let _ = perf.kill().await;
                problems.push("perf record did not finish writing within 120 s".to_owned());
            }
        }
        // Stop the gateway (announcing process, last started) before the worker.
        while let Some(mut child) = self.children.pop() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => problems.push(format!("{} exited with {status}", self.target)),
                Ok(Err(err)) => problems.push(format!("{}: wait failed: {err}", self.target)),
                Err(_) => {
                    let _ = child.kill().await;
                    problems.push(format!(
                        "{} did not stop within {grace:?} of SIGTERM; killed",
                        self.target
                    ));
                }
            }
        }
        if problems.is_empty() {
            None
        } else {
            Some(format!(
                "{}\n--- last lines of the server log ---\n{}",
                problems.join("; "),
                tail(&self.log, 20)
            ))
        }
    }
}
