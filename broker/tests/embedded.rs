//! Embedded-broker behaviour beyond the shared contract: the in-memory window, group commit,
//! a real crash, shutdown, dead letters, exclusive access, fan-out overrun and `connect`.

use bytes::Bytes;
use roomcast_broker::testkit::{
    Tally, assert_quiet, drain_in_order, drain_more, next_batch, next_event, next_message,
    parse_record, record, unique, within,
};
use roomcast_broker::{
    Broker, BrokerError, DeadLetterSink, EmbeddedBroker, EmbeddedOptions, EventConsumer,
    EventPublisher, FanoutEvent, FanoutPublisher, FanoutSource, connect,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

fn small_window(records: usize) -> EmbeddedOptions {
    EmbeddedOptions {
        window_records: records,
        ..EmbeddedOptions::default()
    }
}

/// Publishes records 1..=per_key for each key, keys concurrently, each key in order.
async fn publish_backlog(broker: &Arc<EmbeddedBroker>, keys: &[String], per_key: u32) {
    let tasks = keys.iter().cloned().map(|key| {
        let broker = broker.clone();
        tokio::spawn(async move {
            for n in 1..=per_key {
                broker
                    .publish(&key, record(&key, n))
                    .await
                    .expect("publish");
            }
        })
    });
    for task in within("publishing", futures_util::future::join_all(tasks)).await {
        task.expect("publisher task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_larger_than_window_is_consumed_in_order_across_restart() {
    const WINDOW: usize = 16;
    const PER_KEY: u32 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<String> = (0..5).map(|_| unique("room")).collect();
    let total = keys.len() * PER_KEY as usize;

    let broker = EmbeddedBroker::open_with(dir.path(), small_window(WINDOW))
        .await
        .expect("open");
    publish_backlog(&broker, &keys, PER_KEY).await;
    assert_eq!(broker.stats().published, total as u64);
    assert!(
        broker.stats().records_in_memory <= WINDOW,
        "the window holds {} records",
        broker.stats().records_in_memory
    );

    let mut stream = broker.consume("workers").await.expect("consume");
    let mut tally = Tally::default();
    while tally.count < total / 2 {
        tally = drain_more(&mut *stream, tally.clone(), tally.count + 1, 8).await;
        assert!(broker.stats().records_in_memory <= WINDOW);
    }
    drop(stream);
    broker.close().await;
    drop(broker);

    // The rest, after a restart with the same small window.
    let broker = EmbeddedBroker::open_with(dir.path(), small_window(WINDOW))
        .await
        .expect("reopen");
    assert!(broker.stats().records_in_memory <= WINDOW);
    let mut stream = broker.consume("workers").await.expect("consume");
    let tally = drain_more(&mut *stream, tally, total, 8).await;
    assert_eq!(tally.count, total);
    assert!(tally.last.values().all(|&n| n == PER_KEY));
    assert_eq!(tally.last.len(), keys.len());
    assert_quiet(&mut *stream, "the backlog is consumed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_limited_by_bytes_still_delivers_large_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedOptions {
        window_bytes: 1000,
        ..EmbeddedOptions::default()
    };
    let broker = EmbeddedBroker::open_with(dir.path(), options)
        .await
        .expect("open");
    let key = unique("room");
    // Each record is larger than the whole window.
    let big = |n: u32| Bytes::from(format!("{n:>4}{}", "x".repeat(3000)));
    for n in 1..=5 {
        broker.publish(&key, big(n)).await.expect("publish");
    }
    assert_eq!(broker.stats().records_in_memory, 1);
    let mut stream = broker.consume("workers").await.expect("consume");
    for n in 1..=5 {
        let mut batch = next_batch(&mut *stream, 10).await;
        assert_eq!(batch.len(), 1);
        let delivery = batch.remove(0);
        assert_eq!(delivery.payload, big(n));
        delivery.ack().await.expect("ack");
    }
    assert_quiet(&mut *stream, "every record was acked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_confirms_2000_concurrent_publishes() {
    const RECORDS: usize = 2000;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(dir.path()).await.expect("open");
    let keys: Vec<String> = (0..40).map(|_| unique("room")).collect();
    let tasks: Vec<_> = (0..RECORDS)
        .map(|i| {
            let broker = broker.clone();
            let key = keys[i % keys.len()].clone();
            tokio::spawn(async move {
                // A unique payload per publish; order between concurrent publishes is free.
                broker
                    .publish(&key, Bytes::from(format!("{key}/{i}")))
                    .await
            })
        })
        .collect();
    for task in within("2000 publishes", futures_util::future::join_all(tasks)).await {
        task.expect("publish task").expect("publish confirmed");
    }
    let stats = broker.stats();
    assert_eq!(stats.published, RECORDS as u64);
    assert!(
        stats.commits < (RECORDS / 4) as u64,
        "{} commits for {RECORDS} concurrent publishes: not grouped",
        stats.commits
    );

    let mut streams = vec![
        broker.consume("workers").await.expect("consume"),
        broker.consume("workers").await.expect("consume"),
    ];
    let mut seen = HashSet::new();
    let mut turn = 0;
    while seen.len() < RECORDS {
        turn += 1;
        let stream = &mut streams[turn % 2];
        let Ok(batch) =
            tokio::time::timeout(Duration::from_millis(200), stream.next_batch(64)).await
        else {
            continue;
        };
        for delivery in batch.expect("next_batch") {
            let text = String::from_utf8_lossy(&delivery.payload).into_owned();
            assert!(
                text.starts_with(&delivery.key),
                "payload under the wrong key"
            );
            assert!(seen.insert(text), "record delivered twice");
            delivery.ack().await.expect("ack");
        }
    }
    for stream in &mut streams {
        assert_quiet(&mut **stream, "every record was acked").await;
    }
    assert_eq!(broker.stats().acked, RECORDS as u64);
}

/// Environment variable that turns [`crash_child`] into the child process of
/// [`killed_process_loses_no_record`].
const CRASH_DIR: &str = "ROOMCAST_BROKER_CRASH_DIR";

/// The child of [`killed_process_loses_no_record`]: publishes, acks some records, holds others
/// unacked, reports, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of killed_process_loses_no_record"]
async fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR) else {
        return;
    };
    let broker = EmbeddedBroker::open(Path::new(&dir)).await.expect("open");
    for n in 1..=20 {
        for key in ["a", "b", "c"] {
            broker.publish(key, record(key, n)).await.expect("publish");
        }
    }
    let mut stream = broker.consume("workers").await.expect("consume");
    let mut held = Vec::new();
    let mut acked = 0;
    while acked < 10 {
        for delivery in next_batch(&mut *stream, 64).await {
            let (key, n) = parse_record(&delivery.payload);
            if key == "a" && acked < 10 {
                delivery.ack().await.expect("ack");
                acked += 1;
            } else {
                println!("HELD {key} {n} {}", delivery.attempt);
                held.push(delivery);
            }
        }
    }
    println!("READY");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_loses_no_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = tokio::process::Command::new(exe)
        .args(["crash_child", "--exact", "--ignored", "--nocapture"])
        .env(CRASH_DIR, dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut held = HashMap::new();
    within("the child to get ready", async {
        while let Some(line) = lines.next_line().await.expect("read the child") {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["READY"] => return,
                ["HELD", key, n, attempt] => {
                    let n: u32 = n.parse().expect("n");
                    assert_eq!(*attempt, "1");
                    held.insert(((*key).to_owned(), n), ());
                }
                _ => {}
            }
        }
        panic!("the child exited before it was ready");
    })
    .await;
    // SIGKILL: no destructor, no flush.
    child.kill().await.expect("kill the child");
    assert!(!held.is_empty(), "the child held deliveries");

    let broker = EmbeddedBroker::open(dir.path()).await.expect("reopen");
    let mut stream = broker.consume("workers").await.expect("consume");
    let mut tally = Tally::default();
    tally.last.insert("a".to_owned(), 10);
    while tally.count < 50 {
        for delivery in next_batch(&mut *stream, 16).await {
            let (key, n) = parse_record(&delivery.payload);
            let expected = if held.contains_key(&(key.clone(), n)) {
                2
            } else {
                1
            };
            assert_eq!(
                delivery.attempt, expected,
                "attempt of {key}#{n} after the crash"
            );
            tally.see(&key, n);
            delivery.ack().await.expect("ack");
        }
    }
    assert_eq!(tally.last.get("a"), Some(&20));
    assert_eq!(tally.last.get("b"), Some(&20));
    assert_eq!(tally.last.get("c"), Some(&20));
    assert_quiet(&mut *stream, "every record was acked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_everything_and_releases_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(dir.path()).await.expect("open");
    let mut stream = broker.consume("workers").await.expect("consume");
    let waiting = tokio::spawn(async move { stream.next_batch(1).await.map(|b| b.len()) });
    let sub = broker.open().await.expect("subscription");
    sub.subscribe("room").await.expect("subscribe");
    let listening = tokio::spawn(async move { sub.next().await.map(|_| ()) });
    broker.close().await;
    broker.close().await;
    assert!(matches!(
        within("the stream to end", waiting).await.expect("task"),
        Err(BrokerError::Closed)
    ));
    assert!(matches!(
        within("the subscription to end", listening)
            .await
            .expect("task"),
        Err(BrokerError::Closed)
    ));
    assert!(matches!(
        broker.publish("room", Bytes::from_static(b"x")).await,
        Err(BrokerError::Closed)
    ));
    assert!(matches!(
        broker
            .publish_fanout("room", Bytes::from_static(b"x"))
            .await,
        Err(BrokerError::Closed)
    ));
    assert!(matches!(broker.health().await, Err(BrokerError::Closed)));
    assert!(matches!(
        broker.consume("workers").await.err(),
        Some(BrokerError::Closed)
    ));
    assert!(matches!(
        broker.open().await.err(),
        Some(BrokerError::Closed)
    ));
    // The file is released at once: a fast-failing open succeeds.
    let options = EmbeddedOptions {
        busy_timeout: Duration::from_millis(10),
        ..EmbeddedOptions::default()
    };
    let again = EmbeddedBroker::open_with(dir.path(), options)
        .await
        .expect("reopen after close");
    again.health().await.expect("health");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_is_opened_by_one_broker_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(dir.path()).await.expect("open");
    let options = EmbeddedOptions {
        busy_timeout: Duration::from_millis(50),
        ..EmbeddedOptions::default()
    };
    let second = EmbeddedBroker::open_with(dir.path(), options).await;
    assert!(
        matches!(second, Err(BrokerError::Storage(_))),
        "a second broker opened the same log: {second:?}"
    );
    broker.health().await.expect("the first broker still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_after_the_broker_is_dropped_are_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(dir.path()).await.expect("open");
    let key = unique("room");
    broker
        .publish(&key, record(&key, 1))
        .await
        .expect("publish");
    broker
        .publish(&key, record(&key, 2))
        .await
        .expect("publish");
    let mut stream = broker.consume("workers").await.expect("consume");
    let mut batch = next_batch(&mut *stream, 10).await;
    drop(broker);
    assert!(matches!(
        stream.next_batch(10).await,
        Err(BrokerError::Closed)
    ));
    batch
        .remove(0)
        .ack()
        .await
        .expect("ack after the broker was dropped");
    // The last handles: the writer closes the log once they are gone.
    drop(batch);
    drop(stream);

    let broker = EmbeddedBroker::open(dir.path()).await.expect("reopen");
    let mut stream = broker.consume("workers").await.expect("consume");
    let mut batch = next_batch(&mut *stream, 10).await;
    let delivery = batch.remove(0);
    assert_eq!(parse_record(&delivery.payload), (key.clone(), 2));
    delivery.ack().await.expect("ack");
    assert_quiet(&mut *stream, "every record was acked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_stored_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(dir.path()).await.expect("open");
    assert!(broker.dead_letters().await.expect("list").is_empty());
    let letters = [
        ("room-1", Bytes::from_static(b"{\"reason\":\"one\"}")),
        ("room-2", Bytes::from_static(b"{\"reason\":\"two\"}")),
    ];
    for (key, payload) in &letters {
        broker
            .dead_letter(key, payload.clone())
            .await
            .expect("dead letter");
    }
    broker.close().await;
    let broker = EmbeddedBroker::open(dir.path()).await.expect("reopen");
    let stored = broker.dead_letters().await.expect("list");
    let expected: Vec<(String, Bytes)> = letters
        .iter()
        .map(|(k, p)| ((*k).to_owned(), p.clone()))
        .collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_consumer_group_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(dir.path()).await.expect("open");
    let first = broker.consume("workers").await.expect("consume");
    let _same = broker.consume("workers").await.expect("same group");
    assert!(matches!(
        broker.consume("others").await.err(),
        Some(BrokerError::Config(_))
    ));
    drop(first);
    drop(_same);
    broker
        .consume("others")
        .await
        .expect("once the group is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_next_batch_loses_no_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(dir.path()).await.expect("open");
    let key = unique("room");
    broker
        .publish(&key, record(&key, 1))
        .await
        .expect("publish");
    let mut stream = broker.consume("workers").await.expect("consume");
    {
        let mut pending = stream.next_batch(10);
        // One poll picks the record and starts persisting its delivery counter.
        let first = futures_util::poll!(pending.as_mut());
        assert!(
            first.is_pending(),
            "the delivery counter is committed first"
        );
    }
    let mut batch = next_batch(&mut *stream, 10).await;
    let delivery = batch.remove(0);
    assert_eq!(parse_record(&delivery.payload), (key.clone(), 1));
    delivery.ack().await.expect("ack");
    assert_quiet(&mut *stream, "every record was acked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_overrun_yields_a_gap_then_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedOptions {
        fanout_capacity: 4,
        ..EmbeddedOptions::default()
    };
    let broker = EmbeddedBroker::open_with(dir.path(), options)
        .await
        .expect("open");
    let room = unique("room");
    let sub = broker.open().await.expect("subscription");
    sub.subscribe(&room).await.expect("subscribe");
    for n in 1..=10 {
        broker
            .publish_fanout(&room, Bytes::from(format!("m{n}")))
            .await
            .expect("publish_fanout");
    }
    assert!(matches!(next_event(&*sub).await, FanoutEvent::Gap));
    for n in 1..=4 {
        assert_eq!(next_message(&*sub).await, (room.clone(), format!("m{n}")));
    }
    broker
        .publish_fanout(&room, Bytes::from_static(b"m11"))
        .await
        .expect("publish_fanout");
    assert_eq!(next_message(&*sub).await, (room.clone(), "m11".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_opens_the_embedded_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("embedded:{}", dir.path().join("broker").display());
    let broker = connect(&url).await.expect("connect");
    assert_eq!(broker.name(), "embedded");
    broker.health().await.expect("health");
    let key = unique("room");
    broker
        .publish(&key, record(&key, 1))
        .await
        .expect("publish");
    let mut stream = broker.consume("workers").await.expect("consume");
    let tally = drain_in_order(&mut *stream, 1, 4).await;
    assert_eq!(tally.last.get(&key), Some(&1));
    drop(stream);
    broker.close().await;
    assert!(dir.path().join("broker").join("broker.db").exists());
}

#[tokio::test]
async fn connect_rejects_unavailable_and_unknown_backends() {
    for url in [
        "amqp://roomcast:hunter2@localhost:5672/%2f?no_such_setting=1",
        "amqps://roomcast:hunter2@localhost?shards=0",
        "kafka://roomcast:hunter2@localhost:9092?no_such_setting=1",
        "redis://roomcast:hunter2@localhost",
        "no-scheme-here",
        "embedded:",
    ] {
        match connect(url).await {
            // A backend left out of the build is refused before its URL is read.
            Err(
                error @ (BrokerError::Config(_)
                | BrokerError::Setting(_)
                | BrokerError::MissingBackend { .. }),
            ) => {
                let message = error.to_string();
                assert!(!message.contains("hunter2"), "{message} leaks the password");
            }
            Err(other) => panic!("{url}: expected a configuration error, got {other}"),
            Ok(_) => panic!("{url}: connected"),
        }
    }
}
