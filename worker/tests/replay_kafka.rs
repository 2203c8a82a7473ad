//! Replaying the Kafka inbound topic into stores, against a real Kafka-protocol broker
//! (`ROOMCAST_TEST_KAFKA_URL`, e.g. `export ROOMCAST_TEST_KAFKA_URL=$(scripts/tansu start)`)
//! and a real PostgreSQL server (`ROOMCAST_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`).
//!
//! When either is unreachable the tests fail with `CI=true` and are skipped (with a message)
//! otherwise.

mod common;

use bytes::Bytes;
use common::{PgDatabase, random_name};
use roomcast_broker::kafka::replay::{KafkaReplay, ReplayStart};
use roomcast_broker::testkit::{self, kafka_test_url, with_settings};
use roomcast_broker::{Broker, WorkerLink};
use roomcast_schemas::{InboundEvent, now_ms};
use roomcast_store::Store;
use roomcast_store::testkit::reachable_postgres_url;
use roomcast_worker::replay::{ReplayOptions, ReplayReport, replay};
use roomcast_worker::{Worker, WorkerConfig};
use sqlx::{Connection, PgConnection};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that must happen (a consumer group join on a fresh
/// topic takes a few seconds).
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
    common::init_tracing();
    let prefix = random_name("replay").replace('-', ".");
    Some(with_settings(
        &url,
        &format!("prefix={prefix}&partitions=3"),
    ))
}

async fn publish(broker: &Arc<dyn Broker>, key: &str, payload: Vec<u8>) {
    within("a publish", broker.publish(key, Bytes::from(payload)))
        .await
        .expect("publish");
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

/// A messages table (room, seq, id, sender, event, ts, data) and rooms table, sorted.
type Rows = (
    Vec<(String, i64, String, String, String, i64, String)>,
    Vec<(String, i64)>,
);

async fn tables(url: &str) -> Rows {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let messages = sqlx::query_as(
        "SELECT room, seq, id, sender, event, ts, data FROM messages ORDER BY room, seq",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read messages");
    let rooms = sqlx::query_as("SELECT room, last_seq FROM rooms ORDER BY room")
        .fetch_all(&mut conn)
        .await
        .expect("read rooms");
    let _ = conn.close().await;
    (messages, rooms)
}

async fn replay_into(url: &str, store: &Store, start: ReplayStart) -> ReplayReport {
    let options = ReplayOptions {
        start,
        batch_max: 7,
        ..ReplayOptions::default()
    };
    within(
        "a replay",
        replay(url, store, &options, &CancellationToken::new()),
    )
    .await
    .expect("replay")
}

/// Runs the live worker into `store` until it has processed `stored` new events,
/// `duplicates` duplicates and `dead_lettered` dead letters in all.
async fn run_worker(
    broker: &Arc<dyn Broker>,
    store: &Store,
    group: &str,
    (stored, duplicates, dead_lettered): (u64, u64, u64),
) {
    let worker = Worker::new(
        WorkerLink::from_broker(broker.clone()),
        store.clone(),
        WorkerConfig {
            group: group.to_owned(),
            ..WorkerConfig::default()
        },
    );
    let mut counters = worker.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    let reached = within(
        "the live worker to process every event",
        counters.wait_for(|c| {
            c.stored >= stored && c.duplicates >= duplicates && c.dead_lettered >= dead_lettered
        }),
    )
    .await
    .map(|c| *c)
    .expect("worker counters");
    shutdown.cancel();
    within("the worker to stop", task)
        .await
        .expect("worker task")
        .expect("worker result");
    assert_eq!(
        (reached.stored, reached.duplicates, reached.dead_lettered),
        (stored, duplicates, dead_lettered),
        "{reached:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reproduces_the_live_store_and_is_idempotent() {
    let Some(url) = environment().await else {
        return;
    };
    let broker = roomcast_broker::kafka::connect(&url)
        .await
        .expect("connect to Kafka");
    let rooms: Vec<String> = (0..5).map(|i| random_name(&format!("room{i}"))).collect();

    // History: 5 rooms × 12 events, a retried publish (same sender and id) and a record that
    // is not an inbound event.
    let first = publish_events(&broker, &rooms, "first", 12).await;
    let retried = first[7].clone();
    publish(
        &broker,
        &retried.room,
        serde_json::to_vec(&retried).expect("encode"),
    )
    .await;
    publish(&broker, &rooms[2], b"{not an event".to_vec()).await;
    let total = first.len() as u64;

    // The live worker fills store A.
    let a = PgDatabase::create().await;
    let store_a = Store::connect(&a.url).await.expect("store A");
    run_worker(&broker, &store_a, &random_name("workers"), (total, 1, 1)).await;
    let live = tables(&a.url).await;
    assert_eq!(live.0.len() as u64, total);

    // A full replay into an empty store B reproduces A.
    let b = PgDatabase::create().await;
    let store_b = Store::connect(&b.url).await.expect("store B");
    let report = replay_into(&url, &store_b, ReplayStart::Beginning).await;
    assert_eq!(
        report,
        ReplayReport {
            read: total + 2,
            stored: total,
            duplicates: 1,
            skipped: 1,
            complete: true,
            ..ReplayReport::default()
        }
    );
    assert_eq!(tables(&b.url).await, live, "the replayed store differs");

    // Replaying again changes nothing.
    let again = replay_into(&url, &store_b, ReplayStart::Beginning).await;
    assert_eq!((again.read, again.stored), (total + 2, 0), "{again:?}");
    assert_eq!(
        (again.duplicates, again.skipped),
        (total + 1, 1),
        "{again:?}"
    );
    assert_eq!(
        tables(&b.url).await,
        live,
        "a second replay changed the store"
    );

    // Later events: a replay from a time between the two rounds reads only the later ones.
    let split = now_ms() + 1;
    while now_ms() <= split {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let second = publish_events(&broker, &rooms[..3], "second", 4).await;
    let later = second.len() as u64;
    let c = PgDatabase::create().await;
    let store_c = Store::connect(&c.url).await.expect("store C");
    let report = replay_into(&url, &store_c, ReplayStart::Timestamp(split as i64)).await;
    assert_eq!(
        (
            report.read,
            report.stored,
            report.duplicates,
            report.skipped
        ),
        (later, later, 0, 0),
        "{report:?}"
    );
    let (messages, _) = tables(&c.url).await;
    let ids: Vec<&str> = messages.iter().map(|m| m.2.as_str()).collect();
    assert!(ids.iter().all(|id| id.starts_with("second-")), "{ids:?}");
    for room in &rooms[..3] {
        let seqs: Vec<i64> = messages
            .iter()
            .filter(|m| &m.0 == room)
            .map(|m| m.1)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4], "room {room}");
    }

    // A replay into B picks up only the events it misses, after the rooms' last seqs; it then
    // matches the live store again once the live worker has caught up.
    let caught_up = replay_into(&url, &store_b, ReplayStart::Beginning).await;
    assert_eq!(
        (caught_up.stored, caught_up.duplicates),
        (later, total + 1),
        "{caught_up:?}"
    );
    run_worker(
        &broker,
        &store_a,
        &random_name("workers"),
        (later, total + 1, 1),
    )
    .await;
    assert_eq!(tables(&b.url).await, tables(&a.url).await);

    store_a.close().await;
    store_b.close().await;
    store_c.close().await;
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_starts_at_offsets_and_ends_at_the_captured_end() {
    let Some(url) = environment().await else {
        return;
    };
    let broker = roomcast_broker::kafka::connect(&url)
        .await
        .expect("connect to Kafka");
    let rooms: Vec<String> = (0..4).map(|i| random_name(&format!("room{i}"))).collect();
    let events = publish_events(&broker, &rooms, "one", 5).await;

    let mut reader = within(
        "opening a replay",
        KafkaReplay::open(&url, &ReplayStart::Beginning),
    )
    .await
    .expect("open a replay");
    let ranges = reader.ranges().to_vec();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert_eq!(
        ranges.iter().map(|r| r.len()).sum::<u64>(),
        events.len() as u64
    );
    // Published after the replay opened: not read by it.
    publish_events(&broker, &rooms[..1], "late", 2).await;
    let mut read = Vec::new();
    loop {
        let batch = within("a replay batch", reader.next_batch(3))
            .await
            .expect("next batch");
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 3);
        read.extend(batch);
    }
    assert!(reader.is_done());
    assert_eq!(read.len(), events.len());
    for range in &ranges {
        let offsets: Vec<i64> = read
            .iter()
            .filter(|r| r.partition == range.partition)
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, (range.start..range.end).collect::<Vec<_>>());
    }
    // Per room, the publish order.
    for room in &rooms {
        let ids: Vec<String> = read
            .iter()
            .filter(|r| &r.key == room)
            .map(|r| {
                serde_json::from_slice::<InboundEvent>(&r.payload)
                    .expect("an event")
                    .id
                    .to_string()
            })
            .collect();
        let published: Vec<String> = events
            .iter()
            .filter(|e| e.room == room.as_str())
            .map(|e| e.id.to_string())
            .collect();
        assert_eq!(ids, published);
    }

    // From an offset of one partition: only that partition, from there.
    let busiest = ranges
        .iter()
        .max_by_key(|r| r.len())
        .copied()
        .expect("a partition");
    let start = ReplayStart::Offsets([(busiest.partition, busiest.start + 2)].into());
    let mut reader = within("opening a replay", KafkaReplay::open(&url, &start))
        .await
        .expect("open a replay");
    assert_eq!(reader.ranges().len(), 1);
    let mut offsets = Vec::new();
    loop {
        let batch = within("a replay batch", reader.next_batch(100))
            .await
            .expect("next batch");
        if batch.is_empty() {
            break;
        }
        assert!(batch.iter().all(|r| r.partition == busiest.partition));
        offsets.extend(batch.iter().map(|r| r.offset));
    }
    let end = reader.ranges()[0].end;
    assert_eq!(offsets, (busiest.start + 2..end).collect::<Vec<_>>());

    // Past the end everywhere: nothing to read.
    let mut reader = within(
        "opening a replay",
        KafkaReplay::open(&url, &ReplayStart::Offset(1_000_000)),
    )
    .await
    .expect("open a replay");
    assert!(reader.is_done());
    assert!(reader.next_batch(10).await.expect("next batch").is_empty());

    // A time after every record: nothing to read, whatever offset the broker's lookup
    // answers for a partition without such a record.
    let future = ReplayStart::Timestamp(i64::try_from(now_ms()).expect("ms") + 3_600_000);
    let mut reader = within("opening a replay", KafkaReplay::open(&url, &future))
        .await
        .expect("open a replay");
    let batch = within("a replay batch", reader.next_batch(100))
        .await
        .expect("next batch");
    assert!(batch.is_empty(), "{batch:?}");
    assert!(reader.is_done());

    // A topic that does not exist is a configuration error, not a wait.
    let missing = url.replace("prefix=", "prefix=missing.");
    let error = KafkaReplay::open(&missing, &ReplayStart::Beginning)
        .await
        .expect_err("no such topic");
    assert!(error.to_string().contains("does not exist"), "{error}");
    broker.close().await;
}
