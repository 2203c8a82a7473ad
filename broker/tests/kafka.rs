//! Kafka-specific tests against a real Kafka-protocol broker (`ROOMCAST_TEST_KAFKA_URL`, e.g.
//! from `scripts/tansu start`): topic creation and consumer-group rebalances.
#![cfg(feature = "kafka")]

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use roomcast_broker::testkit::{
    kafka_test_url, packs_come_back_whole, parse_record, publish_concurrently, record, unique,
    with_settings,
};
use roomcast_broker::{Broker, BrokerError, Delivery, EventStream, SettingError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A client configuration for the cluster of a `kafka://` URL.
fn client_config(url: &str) -> ClientConfig {
    let bootstrap = url
        .strip_prefix("kafka://")
        .and_then(|rest| rest.split(['?', '/']).next())
        .unwrap_or_default();
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// A broker on the test cluster with a fresh prefix and one partition, plus `settings`; `None`
/// when no test cluster is configured. Returns the broker, its URL and its prefix.
async fn one_partition_broker(settings: &str) -> Option<(Arc<dyn Broker>, String, String)> {
    let url = kafka_test_url().await?;
    let prefix = unique("rc");
    let mut url = with_settings(&url, &format!("prefix={prefix}&partitions=1"));
    if !settings.is_empty() {
        url = with_settings(&url, settings);
    }
    let broker = roomcast_broker::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    Some((broker, url, prefix))
}

/// The partition counts of `topics`, read from the broker's metadata.
async fn partitions(url: &str, topics: &[String]) -> Vec<usize> {
    let config = client_config(url);
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("a metadata client");
        topics
            .iter()
            .map(|topic| {
                let metadata = consumer
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .expect("metadata");
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map_or(0, |t| t.partitions().len())
            })
            .collect()
    })
    .await
    .expect("metadata task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_with_the_configured_partitions() {
    let Some(url) = kafka_test_url().await else {
        return;
    };
    let prefix = unique("rc");
    let broker = roomcast_broker::connect(&with_settings(
        &url,
        &format!("prefix={prefix}&partitions=5&retention_ms=86400000"),
    ))
    .await
    .unwrap_or_else(|e| panic!("connect: {e}"));
    assert_eq!(broker.name(), "kafka");
    let topics: Vec<String> = ["events", "fanout", "dead-letters", "attempts"]
        .iter()
        .map(|t| format!("{prefix}.{t}"))
        .collect();
    assert_eq!(partitions(&url, &topics).await, vec![5, 5, 5, 5]);
    broker.close().await;

    // Existing topics are left as they are.
    let again = roomcast_broker::connect(&with_settings(
        &url,
        &format!("prefix={prefix}&partitions=7"),
    ))
    .await
    .unwrap_or_else(|e| panic!("connect again: {e}"));
    assert_eq!(partitions(&url, &topics[..1]).await, vec![5]);
    again.close().await;

    // Without create_topics, missing topics are a configuration error.
    let missing = roomcast_broker::connect(&with_settings(
        &url,
        &format!("prefix={}&create_topics=false", unique("rc")),
    ))
    .await;
    match missing {
        Err(BrokerError::Config(message)) => {
            assert!(message.contains("does not exist"), "{message}")
        }
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("expected a configuration error, connected"),
    }

    // Bad settings are refused before connecting.
    match roomcast_broker::connect(&with_settings(&url, "partitions=zero")).await {
        Err(BrokerError::Setting(SettingError::BadValue { key, .. })) => {
            assert_eq!(key, "partitions");
        }
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("expected a configuration error, connected"),
    }
}

/// An unreachable cluster is reported as unavailable within a bounded time, never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_is_unavailable() {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        roomcast_broker::connect("kafka://127.0.0.1:1?create_topics=false"),
    )
    .await
    .expect("connect gave up in time");
    match result {
        Err(BrokerError::Unavailable(_)) => {}
        Err(other) => panic!("expected unavailable, got {other}"),
        Ok(_) => panic!("connected to a closed port"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// What the consumers of the rebalance test saw.
#[derive(Default)]
struct Seen {
    /// Per key: the stream holding unsettled deliveries of it, and how many.
    holders: HashMap<String, (usize, usize)>,
    /// Per key: the last record acked.
    last_acked: HashMap<String, u32>,
    /// Records acked.
    acked: usize,
    /// Redeliveries (attempt > 1) seen.
    redelivered: usize,
    /// Deliveries dropped unacked with their stream.
    dropped: usize,
}

impl Seen {
    fn hold(&mut self, stream: usize, delivery: &Delivery) {
        let holder = self
            .holders
            .entry(delivery.key.clone())
            .or_insert((stream, 0));
        assert!(
            holder.1 == 0 || holder.0 == stream,
            "key {} is held by streams {} and {stream} at once",
            delivery.key,
            holder.0
        );
        *holder = (stream, holder.1 + 1);
        if delivery.attempt > 1 {
            self.redelivered += 1;
        }
    }

    fn release(&mut self, delivery: &Delivery) {
        if let Some(holder) = self.holders.get_mut(&delivery.key) {
            holder.1 -= 1;
        }
    }

    fn acked(&mut self, delivery: &Delivery) {
        let (key, n) = parse_record(&delivery.payload);
        let last = self.last_acked.entry(key.clone()).or_insert(0);
        assert_eq!(
            n,
            *last + 1,
            "key {key}: record {n} acked after record {last} (order broken or acked twice)"
        );
        *last = n;
        self.acked += 1;
    }
}

/// Consumes with `stream` until `stop` turns true; then acks half of its last batch and
/// drops the rest with the stream (unacked records must go to the other streams).
async fn consume(
    id: usize,
    mut stream: Box<dyn EventStream>,
    seen: Arc<Mutex<Seen>>,
    progress: watch::Sender<usize>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = *stop.borrow_and_update();
        let batch = if stopping {
            // One last batch, half of which is left unacked.
            match tokio::time::timeout(Duration::from_secs(5), stream.next_batch(8)).await {
                Ok(batch) => batch,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                batch = stream.next_batch(8) => batch,
                _ = stop.changed() => continue,
            }
        };
        let batch = batch.unwrap_or_else(|e| panic!("stream {id}: next_batch failed: {e}"));
        {
            let mut seen = seen.lock().expect("seen");
            for delivery in &batch {
                seen.hold(id, delivery);
            }
        }
        let keep = if stopping {
            batch.len() / 2
        } else {
            batch.len()
        };
        for (i, delivery) in batch.into_iter().enumerate() {
            if i < keep {
                seen.lock().expect("seen").release(&delivery);
                // Record the ack first: once acked, another stream may take the key.
                seen.lock().expect("seen").acked(&delivery);
                delivery
                    .ack()
                    .await
                    .unwrap_or_else(|e| panic!("stream {id}: ack failed: {e}"));
            } else {
                {
                    let mut seen = seen.lock().expect("seen");
                    seen.release(&delivery);
                    seen.dropped += 1;
                }
                drop(delivery);
            }
        }
        let acked = seen.lock().expect("seen").acked;
        progress.send_replace(acked);
        if stopping {
            return;
        }
    }
}

/// Two streams consume while records of many keys are published; one is dropped midway
/// with unacked deliveries and a third joins: every record is acked once, in order per key,
/// and no key is ever held by two streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_keep_order_and_ack_every_record_once() {
    const KEYS: usize = 24;
    const PER_KEY: u32 = 25;
    let total = KEYS * PER_KEY as usize;
    let Some(url) = kafka_test_url().await else {
        return;
    };
    let broker: Arc<dyn Broker> = roomcast_broker::connect(&with_settings(
        &url,
        &format!("prefix={}&partitions=6", unique("rc")),
    ))
    .await
    .unwrap_or_else(|e| panic!("connect: {e}"));
    let group = unique("group");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (progress, mut watched) = watch::channel(0);
    let (stop_first, stop_first_rx) = watch::channel(false);
    let (_keep_going, never) = watch::channel(false);
    let mut consumers = Vec::new();
    for id in 0..2 {
        let stream = broker
            .consume(&group)
            .await
            .unwrap_or_else(|e| panic!("consume: {e}"));
        let stop = if id == 0 {
            stop_first_rx.clone()
        } else {
            never.clone()
        };
        consumers.push(tokio::spawn(consume(
            id,
            stream,
            seen.clone(),
            progress.clone(),
            stop,
        )));
    }
    let keys: Vec<String> = (0..KEYS).map(|_| unique("room")).collect();
    let publishers: Vec<_> = keys
        .iter()
        .map(|key| {
            let broker = broker.clone();
            let key = key.clone();
            tokio::spawn(async move {
                for n in 1..=PER_KEY {
                    broker
                        .publish(&key, record(&key, n))
                        .await
                        .unwrap_or_else(|e| panic!("publish {key}#{n}: {e}"));
                }
            })
        })
        .collect();
    let wait = Duration::from_secs(120);
    tokio::time::timeout(wait, watched.wait_for(|acked| *acked >= total / 3))
        .await
        .expect("a third of the records acked in time")
        .expect("progress");
    stop_first.send_replace(true);
    tokio::time::timeout(wait, watched.wait_for(|acked| *acked >= total * 2 / 3))
        .await
        .expect("two thirds of the records acked in time")
        .expect("progress");
    let third = broker
        .consume(&group)
        .await
        .unwrap_or_else(|e| panic!("consume: {e}"));
    consumers.push(tokio::spawn(consume(
        2,
        third,
        seen.clone(),
        progress.clone(),
        never.clone(),
    )));
    tokio::time::timeout(wait, watched.wait_for(|acked| *acked >= total))
        .await
        .expect("every record acked in time")
        .expect("progress");
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    for consumer in &consumers {
        consumer.abort();
    }
    for consumer in consumers {
        if let Err(error) = consumer.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    {
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.acked, total);
        assert!(seen.last_acked.values().all(|&n| n == PER_KEY));
        eprintln!(
            "{} deliveries dropped with their stream, {} redeliveries",
            seen.dropped, seen.redelivered
        );
        assert!(
            seen.redelivered >= seen.dropped,
            "dropped deliveries came back with attempt 1"
        );
    }
    // Nothing is left for the group.
    let mut stream = broker
        .consume(&group)
        .await
        .unwrap_or_else(|e| panic!("consume: {e}"));
    if let Ok(batch) = tokio::time::timeout(Duration::from_secs(3), stream.next_batch(16)).await {
        let batch = batch.unwrap_or_else(|e| panic!("next_batch: {e}"));
        let got: Vec<_> = batch.iter().map(|d| parse_record(&d.payload)).collect();
        panic!("records delivered again after all were acked: {got:?}");
    }
    drop(stream);
    broker.close().await;
}

/// The number of records in partition 0 of `topic` (its high watermark).
async fn records_in(url: &str, topic: &str) -> i64 {
    let config = client_config(url);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("a metadata client");
        let (low, high) = consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .expect("watermarks");
        high - low
    })
    .await
    .expect("watermarks task")
}

/// Waits for `future`, failing the test after a minute.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than a minute"))
}

/// A room's concurrent publishes travel as packed Kafka records: consumers and replays get them
/// back one by one, in order; a stream lost with part of a pack acked gives the whole pack
/// back, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_concurrent_publishes_travel_packed() {
    use roomcast_broker::kafka::replay::{KafkaReplay, ReplayStart};
    let Some((broker, url, prefix)) =
        one_partition_broker("key_window=1000&pack=16&pack_window=2").await
    else {
        return;
    };
    let rooms = [unique("room-a"), unique("room-b")];
    publish_concurrently(broker.as_ref(), &rooms, 100).await;
    let stored = records_in(&url, &format!("{prefix}.events")).await;
    assert!(
        (2 * 100 / 16..=100).contains(&stored),
        "200 records went as {stored} Kafka records"
    );

    // A replay reads them one by one, in order per room.
    let mut replay = KafkaReplay::open(&url, &ReplayStart::Beginning)
        .await
        .unwrap_or_else(|e| panic!("replay: {e}"));
    let mut replayed = Vec::new();
    loop {
        let batch = within("a replay batch", replay.next_batch(64))
            .await
            .expect("replay batch");
        if batch.is_empty() {
            break;
        }
        replayed.extend(batch.into_iter().map(|r| parse_record(&r.payload)));
    }
    for key in &rooms {
        let numbers: Vec<u32> = replayed
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(numbers, (1..=100).collect::<Vec<_>>(), "replayed {key}");
    }

    packs_come_back_whole(broker.as_ref(), &rooms, 100, 16, Duration::from_secs(2)).await;
    broker.close().await;
}

/// A record from another producer that says it is packed but whose framing does not add up
/// is handed out whole, as one record (the worker then dead-letters it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_pack_is_handed_out_whole() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Some((broker, url, prefix)) = one_partition_broker("").await else {
        return;
    };
    let producer: FutureProducer = client_config(&url).create().expect("a producer");
    // A pack's body: "\0RCPACK1", the number of records (4 bytes, big-endian), then each record
    // as a 4-byte big-endian length and its bytes. These say 3 but hold 1, and hold no number.
    let bodies: [&[u8]; 2] = [
        b"\0RCPACK1\x00\x00\x00\x03\x00\x00\x00\x02{}",
        b"\0RCPACK1\x00\x03",
    ];
    for body in bodies {
        producer
            .send(
                FutureRecord::to(&format!("{prefix}.events"))
                    .key("lobby")
                    .payload(body),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    let mut stream = broker.consume(&unique("group")).await.expect("consume");
    let mut deliveries = Vec::new();
    while deliveries.len() < 2 {
        deliveries.extend(
            within("deliveries", stream.next_batch(10))
                .await
                .expect("next_batch"),
        );
    }
    assert_eq!(deliveries.len(), 2, "each record is one delivery");
    for (delivery, body) in deliveries.into_iter().zip(bodies) {
        assert_eq!(delivery.key, "lobby");
        assert_eq!(&delivery.payload[..], body);
        delivery.ack().await.expect("ack");
    }
    drop(stream);
    broker.close().await;
}

/// A room's concurrent large events are packed within the producer's message size limit
/// (librdkafka's default `message.max.bytes`, 1,000,000): none is refused, all arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_are_packed_within_the_message_size_limit() {
    let Some((broker, _, _)) = one_partition_broker("pack=64").await else {
        return;
    };
    let room = unique("room");
    let pad = "x".repeat(48 * 1024);
    let mut pending = Vec::new();
    for n in 1..=48u32 {
        let payload = format!("{{\"key\":\"{room}\",\"n\":{n},\"pad\":\"{pad}\"}}");
        pending.push(
            broker
                .start_publish(&room, payload.into())
                .await
                .expect("start publish"),
        );
    }
    for (n, result) in within("the publishes", futures_util::future::join_all(pending))
        .await
        .into_iter()
        .enumerate()
    {
        result.unwrap_or_else(|e| panic!("publish {} of 48 failed: {e}", n + 1));
    }
    let mut stream = broker.consume(&unique("group")).await.expect("consume");
    let mut numbers = Vec::new();
    while numbers.len() < 48 {
        for delivery in within("deliveries", stream.next_batch(64))
            .await
            .expect("next_batch")
        {
            numbers.push(parse_record(&delivery.payload).1);
            delivery.ack().await.expect("ack");
        }
    }
    assert_eq!(numbers, (1..=48).collect::<Vec<_>>());
    drop(stream);
    broker.close().await;
}
