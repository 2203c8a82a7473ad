//! The `roomcast-worker` binary: its refusal of the embedded broker, and `replay` against a
//! real Kafka-protocol broker (`ROOMCAST_TEST_KAFKA_URL`) and PostgreSQL server
//! (`ROOMCAST_TEST_POSTGRES_URL`). When either is unreachable the replay test fails with
//! `CI=true` and is skipped (with a message) otherwise.

use roomcast_broker::Broker;
use roomcast_broker::testkit::{self, kafka_test_url, unique as random_name, with_settings};
use roomcast_schemas::{InboundEvent, now_ms};
use roomcast_store::testkit::{PgDatabase, reachable_postgres_url};
use std::sync::Arc;
use std::time::Duration;

/// How long a test waits for something that must happen.
const WAIT: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The Kafka test broker's URL, with a fresh prefix and 3 partitions, and a check that
/// PostgreSQL answers.
async fn environment() -> Option<String> {
    let url = kafka_test_url().await?;
    reachable_postgres_url().await?;
    let prefix = random_name("replay").replace('-', ".");
    Some(with_settings(
        &url,
        &format!("prefix={prefix}&partitions=3"),
    ))
}

/// Publishes `count` events to each room, interleaving the rooms; returns them.
async fn publish_events(
    broker: &Arc<dyn Broker>,
    rooms: &[String],
    round: &str,
    count: usize,
) -> Vec<InboundEvent> {
    within(
        "the publishes",
        testkit::publish_events(&**broker, rooms, round, count),
    )
    .await
}

#[test]
fn the_binary_refuses_the_embedded_broker_and_hides_passwords() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast-worker"))
        .args([
            "--broker-url",
            "embedded:/tmp/nowhere",
            "--store-url",
            "postgres://app:hunter2@db/x?password=hunter3",
        ])
        .env("RUST_LOG", "info")
        .output()
        .expect("run roomcast-worker");
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("all-in-one `roomcast` process"),
        "stderr: {stderr}"
    );
    for secret in ["hunter2", "hunter3"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "stdout: {stdout}\nstderr: {stderr}"
        );
    }
    assert!(stderr.contains("app:***@db/x"), "stderr: {stderr}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast-worker"))
        .env_remove("ROOMCAST_BROKER_URL")
        .env_remove("ROOMCAST_STORE_URL")
        .output()
        .expect("run roomcast-worker");
    assert_eq!(
        output.status.code(),
        Some(2),
        "missing arguments are a usage error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_replays_from_a_timestamp_and_prints_the_counts() {
    let Some(url) = environment().await else {
        return;
    };
    let broker = roomcast_broker::kafka::connect(&url)
        .await
        .expect("connect to Kafka");
    let rooms: Vec<String> = (0..2).map(|i| random_name(&format!("room{i}"))).collect();
    publish_events(&broker, &rooms, "early", 3).await;
    let split = now_ms() + 1;
    while now_ms() <= split {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    publish_events(&broker, &rooms, "late", 2).await;
    broker.close().await;

    let db = PgDatabase::create().await;
    let run = |from: String| {
        let (url, store) = (url.clone(), db.url.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_roomcast-worker"))
                .args(["replay", "--broker-url", &url, "--store-url", &store])
                .args(["--from", &from])
                .env("RUST_LOG", "warn")
                .output()
                .expect("run roomcast-worker replay")
        })
    };
    let output = within("the replay command", run(format!("timestamp:{split}")))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("read 4 stored 4 duplicates 0 skipped 0"),
        "stdout: {stdout}"
    );
    let output = within("the replay command", run("beginning".to_owned()))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("read 10 stored 6 duplicates 4 skipped 0"),
        "stdout: {stdout}"
    );
}
