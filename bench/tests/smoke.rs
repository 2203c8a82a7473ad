//! Seconds-long smoke runs of every scenario against the real `roomcast` binary, the bare
//! baseline and the Socket.IO baseline: the harness works end to end, and nothing is lost or
//! duplicated. No timing assertions.
//!
//! The `roomcast` binary belongs to another package, so it is built here (`cargo build -p
//! roomcast --bin roomcast`, a no-op when up to date) into the target directory and
//! profile this test runs from; set `ROOMCAST_BIN_DIR` to use binaries from elsewhere. The
//! Socket.IO runs need `npm ci` in `bench/socketio`.

use roomcast_bench::client::{ClientConfig, Endpoint, TokenMinter};
use roomcast_bench::connections::{self, ConnectionsParams};
use roomcast_bench::fanout::{self, FanoutParams};
use roomcast_bench::ingest::{self, IngestParams};
use roomcast_bench::server::{Launcher, RunningServer};
use roomcast_bench::storm::{self, StormParams};
use roomcast_bench::suite::{Scenario, SuiteOptions, run_suite};
use roomcast_bench::{Target, svg};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The directory holding an up-to-date `roomcast` binary.
fn roomcast_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("ROOMCAST_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // This test runs from <target>/[<triple>/]<profile>/deps/smoke-<hash>.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("<profile>/deps layout")
            .to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let target_dir = profile_dir
            .ancestors()
            .skip(1)
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .unwrap_or_else(|| profile_dir.parent().expect("target directory"))
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "roomcast", "--bin", "roomcast"]);
        if profile != "debug" {
            build.args(["--profile", &profile]);
        }
        build
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let status = build
            .status()
            .expect("running cargo to build the roomcast binary");
        assert!(
            status.success(),
            "building the roomcast binary failed ({status}): the smoke tests run against it; \
             fix the build or set ROOMCAST_BIN_DIR to a directory holding `roomcast`"
        );
        assert!(
            profile_dir.join("roomcast").is_file(),
            "no roomcast binary in {}",
            profile_dir.display()
        );
        profile_dir
    })
}

fn launcher() -> Launcher {
    let mut launcher = Launcher::new(PathBuf::from(env!("CARGO_BIN_EXE_roomcast-bench")));
    launcher.roomcast_dir = roomcast_dir().to_path_buf();
    launcher
}

async fn start(target: Target) -> RunningServer {
    launcher()
        .start(target)
        .await
        .unwrap_or_else(|err| panic!("starting the {target} server: {err}"))
}

async fn stop(mut server: RunningServer) {
    if let Err(exited) = server.check_alive() {
        panic!("{exited}");
    }
    if let Some(problem) = server.stop(Duration::from_secs(20)).await {
        panic!("the server did not stop cleanly: {problem}");
    }
}

fn fanout_params() -> FanoutParams {
    FanoutParams {
        subscribers: 20,
        rate: 100.0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        concurrency: 8,
        drain_timeout: Duration::from_secs(10),
        ..FanoutParams::default()
    }
}

async fn fanout_smoke(target: Target) {
    let server = start(target).await;
    let endpoint = server.endpoint().expect("endpoint");
    let result = fanout::run(&endpoint, &fanout_params())
        .await
        .unwrap_or_else(|err| panic!("fanout: {err}"));
    assert_eq!(result.members, 21);
    assert_eq!(result.published, 120, "{result:?}");
    assert_eq!(
        result.acked, result.published,
        "every publish acknowledged: {result:?}"
    );
    assert_eq!(result.publish_errors, 0, "{:?}", result.first_error);
    assert_eq!(result.lost, 0, "{result:?}");
    assert_eq!(result.duplicated, 0, "{result:?}");
    assert_eq!(result.disconnected, 0, "{:?}", result.first_disconnect);
    assert_eq!(
        result.seq_breaks, 0,
        "seqs 1, 2, 3, … per member: {result:?}"
    );
    assert_eq!(result.deliveries, result.expected_deliveries, "{result:?}");
    assert_eq!(
        result.latency.count + result.publisher_echo_latency.count,
        result.deliveries,
        "one latency sample per measured delivery"
    );
    assert_eq!(
        result.publisher_echo_latency.count, result.measured_events,
        "{result:?}"
    );
    assert!(
        result.server_cpu_secs >= 0.0 && result.server_rss_bytes > 0,
        "{result:?}"
    );
    stop(server).await;
}

fn connections_params(client_procs: usize) -> ConnectionsParams {
    ConnectionsParams {
        connections: 60,
        concurrency: 8,
        client_procs,
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_roomcast-bench"))),
        settle: Duration::from_millis(300),
        hold: Duration::from_millis(600),
        source_ips: 2,
        ..ConnectionsParams::default()
    }
}

async fn connections_smoke(target: Target, client_procs: usize) {
    let server = start(target).await;
    let endpoint = server.endpoint().expect("endpoint");
    let params = connections_params(client_procs);
    let result = connections::run(&endpoint, &params)
        .await
        .unwrap_or_else(|err| panic!("connections: {err}"));
    assert_eq!(result.failures.total, 0, "{:?}", result.failures);
    assert_eq!(result.connected, 60);
    assert_eq!(result.alive_after_hold, 60, "{:?}", result.first_disconnect);
    assert_eq!(result.handshake_latency.count, 60);
    assert!(
        result.server_rss_after_bytes > 0 && result.client_max_open_fds > 0,
        "{result:?}"
    );
    stop(server).await;
}

fn ingest_params() -> IngestParams {
    IngestParams {
        publishers: 3,
        inflight: 8,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(20),
        ..IngestParams::default()
    }
}

async fn ingest_smoke(target: Target) {
    let server = start(target).await;
    let endpoint = server.endpoint().expect("endpoint");
    let result = ingest::run(&endpoint, &ingest_params())
        .await
        .unwrap_or_else(|err| panic!("ingest: {err}"));
    assert!(result.measured_acks > 0, "{result:?}");
    assert_eq!(
        result.acked, result.sent,
        "every publish acknowledged: {result:?}"
    );
    assert_eq!(result.publish_errors, 0, "{:?}", result.first_error);
    assert_eq!(result.lost, 0, "{result:?}");
    assert_eq!(result.duplicated, 0, "{result:?}");
    assert_eq!(result.disconnected, 0, "{:?}", result.first_disconnect);
    assert_eq!(result.seq_breaks, 0, "{result:?}");
    assert!(result.ack_latency.count > 0, "{result:?}");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_storm_roomcast() {
    let server = start(Target::Roomcast).await;
    let endpoint = server.endpoint().expect("endpoint");
    let params = StormParams {
        history: 200,
        history_bytes: 2000,
        small_history: 5,
        storm_users: 2,
        storm_connections: 5,
        storm_hold: Duration::from_millis(500),
        duration: Duration::from_secs(2),
        join_every: Duration::from_millis(200),
        ..StormParams::default()
    };
    let result = storm::run(&endpoint, &params)
        .await
        .unwrap_or_else(|err| panic!("replay-storm: {err}"));
    for phase in [&result.quiet, &result.storm] {
        assert!(phase.publish_echo.count > 0, "{result:?}");
        assert!(phase.small_join.count > 0, "{result:?}");
        assert_eq!(
            (phase.publish_missing, phase.small_join_failed),
            (0, 0),
            "{result:?}"
        );
    }
    assert_eq!(result.quiet.storm_opened, 0, "{result:?}");
    assert!(result.storm.storm_opened >= 10, "{result:?}");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_roomcast() {
    fanout_smoke(Target::Roomcast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_bare() {
    fanout_smoke(Target::Bare).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_socketio() {
    fanout_smoke(Target::SocketIo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_roomcast_in_process() {
    connections_smoke(Target::Roomcast, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_roomcast_in_two_worker_processes() {
    connections_smoke(Target::Roomcast, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_bare() {
    connections_smoke(Target::Bare, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_socketio() {
    connections_smoke(Target::SocketIo, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_roomcast() {
    ingest_smoke(Target::Roomcast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_bare() {
    ingest_smoke(Target::Bare).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_socketio() {
    ingest_smoke(Target::SocketIo).await;
}

/// Roomcast refuses tokens signed with another secret, and the harness reports them by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roomcast_rejects_foreign_tokens_and_failures_are_counted() {
    let server = start(Target::Roomcast).await;
    let endpoint = server.endpoint().expect("endpoint");
    let forged = Endpoint {
        minter: Some(TokenMinter::hs256("another-secret-0123456789abcdef0123")),
        ..endpoint
    };
    let params = ConnectionsParams {
        connections: 5,
        settle: Duration::ZERO,
        hold: Duration::ZERO,
        client: ClientConfig {
            timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        },
        ..connections_params(0)
    };
    let result = connections::run(&forged, &params)
        .await
        .expect("the run itself completes");
    assert_eq!(result.connected, 0);
    assert_eq!(
        result.failures.by_kind.get("http 401"),
        Some(&5),
        "{:?}",
        result.failures
    );
    stop(server).await;
}

/// A suite over the three targets writes medians, same-run ratios and charts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_compares_targets_in_one_run() {
    let scenario = Scenario::Fanout(FanoutParams {
        subscribers: 5,
        ..fanout_params()
    });
    let options = SuiteOptions {
        targets: Target::ALL.to_vec(),
        runs: 1,
        pause: Duration::ZERO,
        command: "smoke".into(),
        verbose: false,
        attach: None,
    };
    let report = run_suite(&launcher(), &scenario, &options).await;
    for run in &report.runs {
        assert!(
            run.error.is_none(),
            "{} failed: {:?}",
            run.target,
            run.error
        );
        assert!(
            run.server_stop.is_none(),
            "{}: {:?}",
            run.target,
            run.server_stop
        );
        assert_eq!(run.metrics.get("lost"), Some(&0.0), "{}", run.target);
        assert_eq!(run.metrics.get("duplicated"), Some(&0.0), "{}", run.target);
    }
    assert_eq!(report.summary.len(), 3);
    assert!(
        report.ratios.contains_key("roomcast/bare")
            && report.ratios.contains_key("roomcast/socketio")
    );
    assert!(
        report.versions.socket_io.is_some() && report.versions.roomcast.is_some(),
        "{:?}",
        report.versions
    );
    let chart = svg::report_chart(&report, "deliveries_per_server_cpu_sec").expect("chart");
    assert_eq!(
        chart.matches(">roomcast<").count() + chart.matches(">bare<").count(),
        2
    );
    let json = serde_json::to_string(&report).expect("encode");
    let back: roomcast_bench::report::Report = serde_json::from_str(&json).expect("decode");
    assert_eq!(back.runs.len(), 3);
}

/// Publishes straight into the embedded broker and into RabbitMQ (the machine's, at
/// `ROOMCAST_TEST_AMQP_URL`; skipped outside CI when it is unreachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_publish_smoke() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut urls = vec![format!("embedded:{}", dir.path().display())];
    let amqp = std::env::var("ROOMCAST_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    if std::net::TcpStream::connect("127.0.0.1:5672").is_ok()
        || std::env::var("CI").is_ok_and(|v| v == "true")
    {
        let prefix = format!("bench-smoke-{}", roomcast_bench::client::random_tag());
        let sep = if amqp.contains('?') { '&' } else { '?' };
        urls.push(format!("{amqp}{sep}prefix={prefix}&shards=2"));
    } else {
        eprintln!("skipping the RabbitMQ part: nothing listens on 127.0.0.1:5672");
    }
    for url in urls {
        let params = roomcast_bench::direct::DirectParams {
            broker_url: url.clone(),
            inflight: 16,
            keys: 4,
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(200),
            payload_bytes: 100,
        };
        let result = roomcast_bench::direct::run(&params)
            .await
            .unwrap_or_else(|e| panic!("broker-publish on {url}: {e}"));
        assert!(result.acked > 0, "nothing was confirmed on {url}");
        assert_eq!(result.errors, 0, "publishes failed on {url}");
        if url.starts_with("amqp") {
            roomcast_broker::amqp::delete_topology(&url)
                .await
                .unwrap_or_else(|e| panic!("deleting the test topology: {e}"));
        }
    }
}
