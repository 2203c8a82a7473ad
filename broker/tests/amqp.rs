//! RabbitMQ-specific tests: recovery from a connection closed by the operator, and fan-out
//! bindings per room. They need RabbitMQ (`ROOMCAST_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`) and `rabbitmqctl` on the same machine; outside CI
//! they skip when RabbitMQ cannot be reached, with `CI=true` they fail.
#![cfg(feature = "rabbitmq")]

use bytes::Bytes;
use roomcast_broker::testkit::{
    QUIET, next_event, packs_come_back_whole, parse_record, publish_concurrently, record,
    test_broker_url, unique, with_settings, within,
};
use roomcast_broker::{Broker, BrokerError, FanoutEvent, amqp};
use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// RabbitMQ on this machine, when `ROOMCAST_TEST_AMQP_URL` is not set.
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn base_url() -> String {
    std::env::var("ROOMCAST_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `base_url()` with `params` added to its query.
fn url_with(params: &str) -> String {
    with_settings(&base_url(), params)
}

/// Whether RabbitMQ accepts TCP connections; see [`test_broker_url`].
async fn reachable() -> bool {
    test_broker_url("ROOMCAST_TEST_AMQP_URL", Some(DEFAULT_URL), 5672, "")
        .await
        .is_some()
}

/// Deletes a prefix's queues and exchanges when dropped, also when the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let url = self.0.clone();
        // On a runtime of its own: the test's may be shutting down.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if let Err(e) = runtime.block_on(amqp::delete_topology(&url)) {
                eprintln!("cleanup failed: {e}");
            }
        });
        let _ = cleanup.join();
    }
}

/// A broker on a fresh prefix, and the guard that deletes its topology.
async fn fresh(params: &str) -> (String, Cleanup, Arc<dyn Broker>) {
    let prefix = unique("rc-test");
    let url = url_with(&format!("prefix={prefix}&{params}"));
    let broker = amqp::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to RabbitMQ: {e}"));
    (prefix, Cleanup(url), broker)
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run rabbitmqctl: {e}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Closes the connections whose `connection_name` (a client property; `rabbitmqctl`'s own
/// `name` is the peer address) is the backend's for `prefix`; returns how many.
fn close_connections(prefix: &str) -> usize {
    let listing = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    let mut closed = 0;
    for line in listing.lines() {
        let Some((pid, properties)) = line.split_once('\t') else {
            continue;
        };
        if properties.contains(&format!("roomcast {prefix} pid")) {
            rabbitmqctl(&["close_connection", pid.trim(), "test closes the connection"]);
            closed += 1;
        }
    }
    closed
}

/// `(destination, routing key)` of the bindings from `exchange`.
fn bindings_from(exchange: &str) -> Vec<(String, String)> {
    let listing = rabbitmqctl(&[
        "list_bindings",
        "-q",
        "--no-table-headers",
        "source_name",
        "destination_name",
        "routing_key",
    ]);
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (source, destination, key) = (fields.next()?, fields.next()?, fields.next()?);
            (source == exchange).then(|| (destination.to_owned(), key.to_owned()))
        })
        .collect()
}

/// Publishers, a consumer stream and a fan-out subscription live through a connection closed
/// by the operator: no publish is `Ok` unless stored, publishes fail while the connection is
/// down and succeed again after the automatic reconnection, the stream ends with
/// `Unavailable` and `consume` works again, the subscription yields a gap and then receives
/// its room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_a_closed_connection() {
    if !reachable().await {
        return;
    }
    let (prefix, _cleanup, broker) = fresh("shards=2&reconnect_max_ms=500").await;
    let room = unique("room");
    let sub = broker.open().await.expect("open");
    within("subscribe", sub.subscribe(&room))
        .await
        .expect("subscribe");
    broker
        .publish_fanout(&room, Bytes::from_static(b"before"))
        .await
        .expect("publish_fanout");
    match next_event(&*sub).await {
        FanoutEvent::Message { payload, .. } => assert_eq!(&payload[..], b"before"),
        FanoutEvent::Gap => panic!("gap before the connection was closed"),
    }
    let mut stream = broker.consume(&unique("group")).await.expect("consume");

    // Publishers: each publishes its key's records 1, 2, 3, … and retries a failed one.
    #[derive(Default)]
    struct Seen {
        confirmed: HashSet<(String, u32)>,
        unavailable: usize,
        ok_after_failure: usize,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut publishers = Vec::new();
    for _ in 0..4 {
        let (broker, seen, stop) = (broker.clone(), seen.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let key = unique("room");
            let mut n = 1;
            let mut failed = false;
            while !stop.is_cancelled() {
                let batch = (n..n + 8).map(|i| broker.publish(&key, record(&key, i)));
                let results = futures_util::future::join_all(batch).await;
                {
                    let mut seen = seen.lock().expect("seen");
                    for (i, result) in (n..).zip(results) {
                        match result {
                            Ok(()) => {
                                seen.confirmed.insert((key.clone(), i));
                                if failed {
                                    seen.ok_after_failure += 1;
                                }
                            }
                            Err(BrokerError::Unavailable(_)) => {
                                seen.unavailable += 1;
                                failed = true;
                            }
                            Err(e) => panic!("publish failed with {e}"),
                        }
                    }
                }
                n += 8;
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    within("publishes before the close", async {
        while seen.lock().expect("seen").confirmed.len() < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        close_connections(&prefix) >= 1,
        "no connection named after {prefix}"
    );

    // The stream ends with Unavailable (after whatever was delivered before).
    within("the stream to fail", async {
        loop {
            match stream.next_batch(256).await {
                Ok(batch) => drop(batch),
                Err(BrokerError::Unavailable(_)) => break,
                Err(e) => panic!("next_batch failed with {e}"),
            }
        }
    })
    .await;
    drop(stream);
    within("publishes to fail and then succeed again", async {
        loop {
            {
                let seen = seen.lock().expect("seen");
                if seen.unavailable > 0 && seen.ok_after_failure >= 50 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.cancel();
    for publisher in publishers {
        within("a publisher", publisher).await.expect("publisher");
    }
    within("health", broker.health())
        .await
        .expect("healthy after reconnecting");

    // The subscription reports a gap, then receives its room again.
    within("a gap", async {
        loop {
            match next_event(&*sub).await {
                FanoutEvent::Gap => break,
                FanoutEvent::Message { .. } => {}
            }
        }
    })
    .await;
    broker
        .publish_fanout(&room, Bytes::from_static(b"after"))
        .await
        .expect("publish_fanout after reconnecting");
    match next_event(&*sub).await {
        FanoutEvent::Message { room: got, payload } => {
            assert_eq!(&*got, room.as_str());
            assert_eq!(&payload[..], b"after");
        }
        FanoutEvent::Gap => panic!("a second gap"),
    }

    // Every confirmed record is stored.
    let confirmed = {
        let mut seen = seen.lock().expect("seen");
        eprintln!(
            "{} publishes confirmed, {} unavailable, {} confirmed after a failure",
            seen.confirmed.len(),
            seen.unavailable,
            seen.ok_after_failure
        );
        std::mem::take(&mut seen.confirmed)
    };
    let mut stream = within("consume after reconnecting", async {
        loop {
            match broker.consume(&unique("group")).await {
                Ok(stream) => break stream,
                Err(BrokerError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("consume failed with {e}"),
            }
        }
    })
    .await;
    let mut stored = HashSet::new();
    within("every confirmed record", async {
        while !confirmed.is_subset(&stored) {
            for delivery in stream.next_batch(256).await.expect("next_batch") {
                stored.insert(parse_record(&delivery.payload));
                delivery.ack().await.expect("ack");
            }
        }
    })
    .await;
    drop(stream);
    broker.close().await;
}

/// A subscription's queue is bound to the rooms it subscribed, and only those; unsubscribe
/// removes the binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_receive_only_their_rooms() {
    if !reachable().await {
        return;
    }
    let (prefix, _cleanup, broker) = fresh("shards=1").await;
    let exchange = format!("{prefix}.fanout");
    let (a, b) = (unique("room"), unique("room"));
    let first = broker.open().await.expect("open");
    let second = broker.open().await.expect("open");
    first.subscribe(&a).await.expect("subscribe");
    second.subscribe(&b).await.expect("subscribe");
    let bindings = bindings_from(&exchange);
    assert_eq!(bindings.len(), 2, "bindings: {bindings:?}");
    let queue_a: Vec<&String> = bindings
        .iter()
        .filter(|(_, k)| *k == a)
        .map(|(q, _)| q)
        .collect();
    let queue_b: Vec<&String> = bindings
        .iter()
        .filter(|(_, k)| *k == b)
        .map(|(q, _)| q)
        .collect();
    assert_eq!((queue_a.len(), queue_b.len()), (1, 1), "{bindings:?}");
    assert_ne!(queue_a[0], queue_b[0], "one queue per subscription");

    for (room, body) in [(&a, "a1"), (&b, "b1")] {
        broker
            .publish_fanout(room, Bytes::from(body))
            .await
            .expect("publish_fanout");
    }
    for (sub, room, body) in [(&first, &a, "a1"), (&second, &b, "b1")] {
        match next_event(&**sub).await {
            FanoutEvent::Message { room: got, payload } => {
                assert_eq!((&*got, &payload[..]), (room.as_str(), body.as_bytes()));
            }
            FanoutEvent::Gap => panic!("unexpected gap"),
        }
        assert!(
            tokio::time::timeout(QUIET, sub.next()).await.is_err(),
            "a subscription received another room"
        );
    }

    first.unsubscribe(&a).await.expect("unsubscribe");
    let bindings = bindings_from(&exchange);
    assert!(
        bindings.iter().all(|(_, k)| *k != a),
        "binding left after unsubscribe: {bindings:?}"
    );
    drop((first, second));
    broker.close().await;
}

/// Records of one room come back in order after their stream is dropped with several of
/// them unacked (quorum queues return them ahead of later records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_stream_returns_records_in_order() {
    if !reachable().await {
        return;
    }
    let (_, _cleanup, broker) = fresh("shards=1&key_window=100").await;
    let key = unique("room");
    for n in 1..=20 {
        broker
            .publish(&key, record(&key, n))
            .await
            .expect("publish");
    }
    let group = unique("group");
    let mut first = broker.consume(&group).await.expect("consume");
    let mut held = Vec::new();
    while held.len() < 20 {
        held.extend(
            within("deliveries", first.next_batch(5))
                .await
                .expect("next_batch"),
        );
    }
    // Ack the first five, leave the rest unacked.
    let rest = held.split_off(5);
    for delivery in held {
        delivery.ack().await.expect("ack");
    }
    drop(rest);
    drop(first);
    let mut second = broker.consume(&group).await.expect("consume");
    let mut next = 6;
    while next <= 20 {
        for delivery in within("redeliveries", second.next_batch(20))
            .await
            .expect("next_batch")
        {
            assert_eq!(parse_record(&delivery.payload), (key.clone(), next));
            assert_eq!(delivery.attempt, 2);
            next += 1;
            delivery.ack().await.expect("ack");
        }
    }
    assert!(
        tokio::time::timeout(QUIET, second.next_batch(1))
            .await
            .is_err()
    );
    drop(second);
    broker.close().await;
}

/// A stream's acks of one batch are coalesced into `multiple` acks; a delivery still held
/// (nacked for a retry, or not yet settled) in the middle of the channel's tags must not be
/// covered by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_settled_together_never_cover_a_held_delivery() {
    if !reachable().await {
        return;
    }
    let (_, _cleanup, broker) = fresh("shards=1&key_window=100").await;
    let rooms = [unique("room-a"), unique("room-b"), unique("room-c")];
    let held_room = &rooms[1];
    for n in 1..=30 {
        let key = &rooms[n as usize % 3];
        broker.publish(key, record(key, n)).await.expect("publish");
    }
    let group = unique("group");
    let mut first = broker.consume(&group).await.expect("consume");
    let mut deliveries = Vec::new();
    while deliveries.len() < 30 {
        deliveries.extend(
            within("deliveries", first.next_batch(30))
                .await
                .expect("next_batch"),
        );
    }
    let (held, done): (Vec<_>, Vec<_>) = deliveries
        .into_iter()
        .partition(|delivery| &delivery.key == held_room);
    assert_eq!(held.len(), 10);
    let mut held = held.into_iter();
    // The room's first record is nacked (kept for a retry), the others stay unsettled.
    held.next()
        .expect("a held delivery")
        .nack()
        .await
        .expect("nack");
    for result in futures_util::future::join_all(done.into_iter().map(|d| d.ack())).await {
        result.expect("ack");
    }
    drop(held);
    drop(first);

    // Only the held room's records come back, all of them, in order.
    let mut second = broker.consume(&group).await.expect("consume");
    let mut back = Vec::new();
    while back.len() < 10 {
        back.extend(
            within("redeliveries", second.next_batch(30))
                .await
                .expect("next_batch"),
        );
    }
    let numbers: Vec<u32> = back
        .iter()
        .map(|delivery| {
            let (key, n) = parse_record(&delivery.payload);
            assert_eq!(&key, held_room, "an acked record came back");
            n
        })
        .collect();
    assert_eq!(numbers, (1..=30).filter(|n| n % 3 == 1).collect::<Vec<_>>());
    assert!(
        tokio::time::timeout(QUIET, second.next_batch(1))
            .await
            .is_err(),
        "a record was delivered twice"
    );
    for result in futures_util::future::join_all(back.into_iter().map(|d| d.ack())).await {
        result.expect("ack");
    }
    drop(second);

    // Every record is acked now.
    let mut third = broker.consume(&group).await.expect("consume");
    assert!(
        tokio::time::timeout(QUIET, third.next_batch(1))
            .await
            .is_err(),
        "an acked record came back"
    );
    drop(third);
    broker.close().await;
}

/// A plain lapin connection to RabbitMQ, as another service would open.
async fn raw_connection() -> lapin::Connection {
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    lapin::Connection::connect(&base_url(), properties)
        .await
        .expect("connect to RabbitMQ")
}

/// The messages waiting in `queue` (a passive declare on a connection of its own).
async fn queued_messages(queue: &str) -> u32 {
    use lapin::options::QueueDeclareOptions;
    let connection = raw_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("passive declare");
    let _ = connection.close(200, "done").await;
    declared.message_count()
}

/// Publishes started together for one room travel packed into few messages, and come out as
/// the same records in the same order; a pack is acked at RabbitMQ with its last record, so a
/// dropped stream gives back its room's unacked records (and their pack-mates), in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_concurrent_publishes_travel_packed() {
    if !reachable().await {
        return;
    }
    let (prefix, _cleanup, broker) = fresh("shards=1&key_window=1000&pack=16").await;
    let rooms = [unique("room-a"), unique("room-b")];
    publish_concurrently(broker.as_ref(), &rooms, 100).await;
    let messages = queued_messages(&format!("{prefix}.events.0")).await;
    assert!(
        (2 * 100 / 16..=100).contains(&messages),
        "200 records went as {messages} messages"
    );

    packs_come_back_whole(broker.as_ref(), &rooms, 100, 16, QUIET).await;
    broker.close().await;
}

/// A message from another publisher that says it is packed but whose framing does not add up
/// is handed out whole, as one record (the worker then dead-letters it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_pack_is_handed_out_whole() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    if !reachable().await {
        return;
    }
    let (prefix, _cleanup, broker) = fresh("shards=1").await;
    let connection = raw_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let mut headers = FieldTable::default();
    headers.insert(
        "roomcast-key".into(),
        AMQPValue::LongString(LongString::from("lobby")),
    );
    headers.insert("roomcast-records".into(), AMQPValue::LongUInt(3));
    let body = b"\x00\x00\x00\x02{}not three records";
    channel
        .basic_publish(
            &format!("{prefix}.events"),
            "0",
            BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let _ = connection.close(200, "done").await;

    let mut stream = broker.consume(&unique("group")).await.expect("consume");
    let batch = within("the delivery", stream.next_batch(10))
        .await
        .expect("next_batch");
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].key, "lobby");
    assert_eq!(&batch[0].payload[..], body);
    for delivery in batch {
        delivery.ack().await.expect("ack");
    }
    drop(stream);
    broker.close().await;
}
