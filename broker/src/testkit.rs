//! The backend-independent contract test suite.
//!
//! A backend's tests implement [`BrokerFactory`] and invoke
//! [`contract_tests!`](crate::contract_tests!)
//! (`roomcast_broker::contract_tests!(MyFactory::new());`), which expands into one
//! `#[tokio::test]` per contract test, so that failures are reported one by one. The crate that
//! invokes it needs `tokio` (with the `macros` and `rt-multi-thread` features) among its
//! dev-dependencies.
//!
//! Every test uses random keys, groups and rooms, and waits for events with timeouts; only
//! the checks that something does *not* arrive wait for a short quiet period.

use crate::{Broker, Delivery, EventStream, FanoutEvent, FanoutSubscription};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Creates the brokers the contract tests run against.
#[async_trait]
pub trait BrokerFactory: Send + Sync {
    /// A broker on fresh, randomly named streams, queues or topics.
    async fn fresh(&self) -> Arc<dyn Broker>;
    /// A new broker instance on the same streams as `prev` (a process restart). The test has
    /// dropped its streams and subscriptions; the factory closes `prev` (see
    /// [`Broker::close`]) before opening the new instance.
    async fn reopen(&self, prev: Arc<dyn Broker>) -> Arc<dyn Broker>;
}

/// Expands into one `#[tokio::test]` per contract test, each running against brokers made by
/// `$factory` (an expression evaluated once per test, whose type implements
/// [`BrokerFactory`](crate::testkit::BrokerFactory)).
///
/// `contract_tests!(optional $factory)` takes a future of `Option<factory>` instead: a test
/// whose future yields `None` (no test broker, outside CI) returns without running.
#[macro_export]
macro_rules! contract_tests {
    (@list $mode:ident $factory:expr) => {
        $crate::contract_tests!(@each $mode $factory;
            publish_then_consume,
            next_batch_respects_max,
            per_key_order_with_concurrent_publishers,
            concurrent_publishes_all_consumed,
            competing_consumers_share_records_once,
            nack_redelivers_before_later_records,
            dropped_stream_records_are_redelivered,
            reopen_redelivers_only_unacked,
            attempts_survive_reopen,
            fanout_delivers_subscribed_rooms_in_order,
            fanout_unsubscribe_stops_delivery,
            fanout_reaches_every_subscription,
            dead_letter_and_health,
            close_ends_streams_and_subscriptions,
        );
    };
    (@each always $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $factory;
                $crate::testkit::cases::$name(&factory).await;
            }
        )*
    };
    (@each optional $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(factory) = $factory.await else { return };
                $crate::testkit::cases::$name(&factory).await;
            }
        )*
    };
    (optional $factory:expr) => {
        $crate::contract_tests!(@list optional $factory);
    };
    ($factory:expr) => {
        $crate::contract_tests!(@list always $factory);
    };
}

/// How long a test waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// How long a test waits to conclude that something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A random name with a readable prefix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `url` with `settings` (`name=value&…`) added to its query.
pub fn with_settings(url: &str, settings: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{settings}")
}

/// `host:port` of a broker URL (`scheme://user:pass@host:port,…/…?…`: the first host), with
/// `default_port` when it names none.
pub fn first_host(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', ',']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

/// The Kafka test broker's URL from `ROOMCAST_TEST_KAFKA_URL`, if it is reachable; see
/// [`test_broker_url`].
pub async fn kafka_test_url() -> Option<String> {
    test_broker_url(
        "ROOMCAST_TEST_KAFKA_URL",
        None,
        9092,
        "start a broker with `export ROOMCAST_TEST_KAFKA_URL=$(scripts/tansu start)`",
    )
    .await
}

/// The URL of a test broker from the environment variable `var` (or `default`), if its first
/// host accepts TCP connections. Otherwise the test fails with `CI=true` (a test never skips a
/// broker silently in CI) and is skipped with a note outside CI; `how` tells how to start one.
pub async fn test_broker_url(
    var: &str,
    default: Option<&str>,
    default_port: u16,
    how: &str,
) -> Option<String> {
    let url = std::env::var(var)
        .ok()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .or_else(|| default.map(str::to_owned));
    let problem = match url {
        Some(url) => {
            let address = first_host(&url, default_port);
            let connected = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(&address),
            )
            .await;
            match connected {
                Ok(Ok(_)) => return Some(url),
                Ok(Err(e)) => format!("the test broker at {address} ({var}) is unreachable: {e}"),
                Err(_) => format!("the test broker at {address} ({var}) did not answer"),
            }
        }
        None => format!("{var} is not set ({how})"),
    };
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("the test broker is required in CI: {problem}");
    }
    eprintln!("skipping: {problem}");
    None
}

/// Awaits `fut`, failing the test after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The next batch of `stream`, failing the test on error or after [`WAIT`].
pub async fn next_batch(stream: &mut dyn EventStream, max: usize) -> Vec<Delivery> {
    let batch = within("a delivery", stream.next_batch(max))
        .await
        .unwrap_or_else(|e| panic!("next_batch failed: {e}"));
    assert!(!batch.is_empty(), "next_batch returned an empty batch");
    assert!(
        batch.len() <= max,
        "next_batch returned {} deliveries, max was {max}",
        batch.len()
    );
    batch
}

/// The next delivery of `stream`, taking from `ready` (what earlier batches brought) first.
pub async fn next_one(
    stream: &mut dyn EventStream,
    ready: &mut std::collections::VecDeque<Delivery>,
) -> Delivery {
    if ready.is_empty() {
        ready.extend(next_batch(stream, 10).await);
    }
    ready
        .pop_front()
        .expect("next_batch returns at least one delivery")
}

/// Fails the test if `stream` delivers anything within [`QUIET`].
pub async fn assert_quiet(stream: &mut dyn EventStream, why: &str) {
    if let Ok(result) = tokio::time::timeout(QUIET, stream.next_batch(16)).await {
        let batch = result.unwrap_or_else(|e| panic!("next_batch failed: {e}"));
        let got: Vec<String> = batch.iter().map(payload_text).collect();
        panic!("expected no delivery ({why}), got {got:?}");
    }
}

/// The next fan-out event of `sub`, failing the test on error or after [`WAIT`].
pub async fn next_event(sub: &dyn FanoutSubscription) -> FanoutEvent {
    within("a fan-out event", sub.next())
        .await
        .unwrap_or_else(|e| panic!("fan-out next failed: {e}"))
}

/// The next fan-out message of `sub` as `(room, payload text)`; a gap fails the test.
pub async fn next_message(sub: &dyn FanoutSubscription) -> (String, String) {
    match next_event(sub).await {
        FanoutEvent::Message { room, payload } => (room.to_string(), text(&payload)),
        FanoutEvent::Gap => panic!("unexpected fan-out gap"),
    }
}

fn text(payload: &Bytes) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

fn payload_text(delivery: &Delivery) -> String {
    text(&delivery.payload)
}

/// A test record's payload: `<key>#<n>` wrapped in a small JSON document.
pub fn record(key: &str, n: u32) -> Bytes {
    Bytes::from(format!("{{\"key\":\"{key}\",\"n\":{n}}}"))
}

/// Parses a payload made by [`record`] into `(key, n)`.
pub fn parse_record(payload: &Bytes) -> (String, u32) {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("payload is not a test record ({e}): {}", text(payload)));
    let key = value["key"].as_str().unwrap_or_default().to_owned();
    let n = value["n"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(|| panic!("payload has no n: {}", text(payload)));
    (key, n)
}

async fn ack(delivery: Delivery) {
    within("an ack", delivery.ack())
        .await
        .unwrap_or_else(|e| panic!("ack failed: {e}"));
}

async fn nack(delivery: Delivery) {
    within("a nack", delivery.nack())
        .await
        .unwrap_or_else(|e| panic!("nack failed: {e}"));
}

async fn publish(broker: &dyn Broker, key: &str, n: u32) {
    within("a publish", broker.publish(key, record(key, n)))
        .await
        .unwrap_or_else(|e| panic!("publish {key}#{n} failed: {e}"));
}

/// Checks per-key order and exactly-once over the records seen.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// The last record number seen per key.
    pub last: HashMap<String, u32>,
    /// How many records were seen.
    pub count: usize,
}

impl Tally {
    /// Records `(key, n)`; a key's records must arrive as 1, 2, 3, … (panics otherwise).
    pub fn see(&mut self, key: &str, n: u32) {
        let last = self.last.entry(key.to_owned()).or_insert(0);
        assert_eq!(
            n,
            *last + 1,
            "key {key}: got record {n} after record {last} (order broken or duplicate)"
        );
        *last = n;
        self.count += 1;
    }
}

/// Consumes `total` records made by [`record`] with one stream, acking each batch; checks
/// that each key's records arrive once each, as 1, 2, 3, … (or continuing from `tally`).
pub async fn drain_in_order(stream: &mut dyn EventStream, total: usize, max: usize) -> Tally {
    drain_more(stream, Tally::default(), total, max).await
}

/// Like [`drain_in_order`], continuing from `tally` until it has counted `total` records.
pub async fn drain_more(
    stream: &mut dyn EventStream,
    mut tally: Tally,
    total: usize,
    max: usize,
) -> Tally {
    while tally.count < total {
        let batch = next_batch(stream, max).await;
        for delivery in &batch {
            let (key, n) = parse_record(&delivery.payload);
            assert_eq!(key, delivery.key, "payload published under another key");
            tally.see(&key, n);
        }
        futures_util::future::join_all(batch.into_iter().map(ack)).await;
    }
    tally
}

/// Starts the publishes `1..=per_key` of each of `keys` at once, interleaved (so a backend that
/// packs a key's concurrent publishes packs them), and waits until all are confirmed.
pub async fn publish_concurrently(broker: &dyn Broker, keys: &[String], per_key: u32) {
    let mut pending = Vec::new();
    for n in 1..=per_key {
        for key in keys {
            pending.push(
                broker
                    .start_publish(key, record(key, n))
                    .await
                    .unwrap_or_else(|e| panic!("start publish {key}#{n}: {e}")),
            );
        }
    }
    for result in within("the publishes", futures_util::future::join_all(pending)).await {
        result.unwrap_or_else(|e| panic!("a publish failed: {e}"));
    }
}

/// Checks what consumers see of what [`publish_concurrently`] published for `[a, b]`, with
/// `per_key` records each (at least 2) and `pack` the most records of one packed message: a
/// stream hands each key's records out in order, attempt 1; the stream is dropped after acking
/// all of `b` and the first half of `a`; a new stream of the group gets `a` back from the
/// start of the pack that holds `a`'s first unacked record (less than a pack early) to its
/// last, attempt 2, and nothing else within `quiet`.
pub async fn packs_come_back_whole(
    broker: &dyn Broker,
    keys: &[String; 2],
    per_key: u32,
    pack: u32,
    quiet: Duration,
) {
    let group = unique("group");
    let total = 2 * per_key as usize;
    let mut first = broker.consume(&group).await.expect("consume");
    let mut deliveries = Vec::new();
    while deliveries.len() < total {
        deliveries.extend(next_batch(first.as_mut(), total).await);
    }
    for key in keys {
        let numbers: Vec<u32> = deliveries
            .iter()
            .filter(|d| &d.key == key)
            .map(|d| {
                assert_eq!(d.attempt, 1);
                let (record_key, n) = parse_record(&d.payload);
                assert_eq!(&record_key, key);
                n
            })
            .collect();
        assert_eq!(numbers, (1..=per_key).collect::<Vec<_>>(), "{key}");
    }
    let acked = per_key / 2;
    let (a, b): (Vec<_>, Vec<_>) = deliveries.into_iter().partition(|d| d.key == keys[0]);
    let mut a = a.into_iter();
    let acks = b
        .into_iter()
        .chain(a.by_ref().take(acked as usize))
        .map(ack);
    futures_util::future::join_all(acks).await;
    drop(a);
    drop(first);

    let unacked = acked + 1;
    let mut second = broker.consume(&group).await.expect("consume");
    let mut back: Vec<u32> = Vec::new();
    while back.last() != Some(&per_key) {
        for delivery in next_batch(second.as_mut(), total).await {
            let (key, n) = parse_record(&delivery.payload);
            assert_eq!(key, keys[0], "a fully acked key came back");
            assert_eq!(delivery.attempt, 2);
            back.push(n);
            ack(delivery).await;
        }
    }
    let from = back[0];
    assert!(
        from <= unacked,
        "record {unacked} was not delivered again: {back:?}"
    );
    assert!(
        unacked - from < pack,
        "more than a pack came back early: {back:?}"
    );
    assert_eq!(back, (from..=per_key).collect::<Vec<_>>());
    assert!(
        tokio::time::timeout(quiet, second.next_batch(1))
            .await
            .is_err(),
        "a record was delivered twice"
    );
}

/// The contract tests; [`contract_tests!`](crate::contract_tests!) calls each of them from its
/// own test.
pub mod cases {
    use super::*;

    /// A published record is consumed with its key and payload, attempt 1, and is gone once
    /// acked.
    pub async fn publish_then_consume(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let key = unique("room");
        let payload = record(&key, 1);
        within("publish", broker.publish(&key, payload.clone()))
            .await
            .unwrap_or_else(|e| panic!("publish failed: {e}"));
        let mut stream = broker
            .consume(&unique("group"))
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        let mut batch = next_batch(&mut *stream, 10).await;
        assert_eq!(batch.len(), 1, "one record was published");
        let delivery = batch.remove(0);
        assert_eq!(delivery.key, key);
        assert_eq!(delivery.payload, payload);
        assert_eq!(delivery.attempt, 1);
        ack(delivery).await;
        assert_quiet(&mut *stream, "the only record was acked").await;
    }

    /// `next_batch(max)` returns at most `max` deliveries, and every record comes once.
    pub async fn next_batch_respects_max(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let keys: Vec<String> = (0..10).map(|_| unique("room")).collect();
        for key in &keys {
            publish(&*broker, key, 1).await;
        }
        let mut stream = broker
            .consume(&unique("group"))
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        let tally = drain_in_order(&mut *stream, keys.len(), 3).await;
        assert_eq!(tally.last.len(), keys.len());
        assert_quiet(&mut *stream, "every record was acked").await;
    }

    /// Several concurrent publishers, many keys: each key's records are consumed in publish
    /// order, each once, while publishing is still going on.
    pub async fn per_key_order_with_concurrent_publishers(factory: &dyn BrokerFactory) {
        const PUBLISHERS: usize = 4;
        const KEYS_EACH: usize = 5;
        const PER_KEY: u32 = 25;
        let broker = factory.fresh().await;
        let mut stream = broker
            .consume(&unique("group"))
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        let mut publishers = Vec::new();
        for _ in 0..PUBLISHERS {
            let broker = broker.clone();
            let keys: Vec<String> = (0..KEYS_EACH).map(|_| unique("room")).collect();
            publishers.push(tokio::spawn(async move {
                for n in 1..=PER_KEY {
                    for key in &keys {
                        publish(&*broker, key, n).await;
                    }
                }
            }));
        }
        let total = PUBLISHERS * KEYS_EACH * PER_KEY as usize;
        let tally = drain_in_order(&mut *stream, total, 64).await;
        for publisher in publishers {
            within("a publisher", publisher)
                .await
                .unwrap_or_else(|e| panic!("publisher failed: {e}"));
        }
        assert_eq!(tally.last.len(), PUBLISHERS * KEYS_EACH);
        assert!(tally.last.values().all(|&n| n == PER_KEY));
        assert_quiet(&mut *stream, "every record was acked").await;
    }

    /// Many publishes in flight at once are all confirmed and all consumed once.
    pub async fn concurrent_publishes_all_consumed(factory: &dyn BrokerFactory) {
        const RECORDS: usize = 500;
        let broker = factory.fresh().await;
        let keys: Vec<String> = (0..50).map(|_| unique("room")).collect();
        let publishes = (0..RECORDS).map(|i| {
            let key = keys[i % keys.len()].clone();
            let n = u32::try_from(i / keys.len() + 1).unwrap_or(u32::MAX);
            let broker = broker.clone();
            async move { broker.publish(&key, record(&key, n)).await }
        });
        let results = within(
            "concurrent publishes",
            futures_util::future::join_all(publishes),
        )
        .await;
        for result in results {
            result.unwrap_or_else(|e| panic!("publish failed: {e}"));
        }
        let mut stream = broker
            .consume(&unique("group"))
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        let mut seen = HashSet::new();
        while seen.len() < RECORDS {
            let batch = next_batch(&mut *stream, 128).await;
            for delivery in batch {
                let (key, n) = parse_record(&delivery.payload);
                assert!(seen.insert((key, n)), "record delivered twice");
                ack(delivery).await;
            }
        }
        assert_quiet(&mut *stream, "every record was acked").await;
    }

    /// Two streams of one group together receive every record exactly once, never hold
    /// unacked records of one key at the same time, and keep each key's order.
    pub async fn competing_consumers_share_records_once(factory: &dyn BrokerFactory) {
        const KEYS: usize = 15;
        const PER_KEY: u32 = 20;
        let total = KEYS * PER_KEY as usize;
        let broker = factory.fresh().await;
        let group = unique("group");
        let keys: Vec<String> = (0..KEYS).map(|_| unique("room")).collect();
        let mut streams = Vec::new();
        for _ in 0..2 {
            streams.push(
                broker
                    .consume(&group)
                    .await
                    .unwrap_or_else(|e| panic!("consume failed: {e}")),
            );
        }
        #[derive(Default)]
        struct State {
            /// Per key: the stream holding its unacked records, and how many it holds.
            in_flight: HashMap<String, (usize, usize)>,
            tally: Tally,
            /// Acks that returned: the consumers stop only when every record is acked.
            acked: usize,
        }
        let state = Arc::new(Mutex::new(State::default()));
        let done = Arc::new(tokio::sync::Notify::new());
        let mut consumers = Vec::new();
        for (me, mut stream) in streams.into_iter().enumerate() {
            let state = state.clone();
            let done = done.clone();
            consumers.push(tokio::spawn(async move {
                loop {
                    let batch = match stream.next_batch(8).await {
                        Ok(batch) => batch,
                        Err(e) => panic!("next_batch failed: {e}"),
                    };
                    for delivery in &batch {
                        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                        let holder = state
                            .in_flight
                            .entry(delivery.key.clone())
                            .or_insert((me, 0));
                        assert_eq!(
                            holder.0, me,
                            "two streams hold unacked records of key {} at once",
                            delivery.key
                        );
                        holder.1 += 1;
                    }
                    tokio::task::yield_now().await;
                    for delivery in batch {
                        let (key, n) = parse_record(&delivery.payload);
                        {
                            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                            state.tally.see(&key, n);
                            if let Some(holder) = state.in_flight.get_mut(&delivery.key) {
                                holder.1 -= 1;
                                if holder.1 == 0 {
                                    state.in_flight.remove(&delivery.key);
                                }
                            }
                        }
                        ack(delivery).await;
                        let finished = {
                            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                            state.acked += 1;
                            state.acked == total
                        };
                        if finished {
                            done.notify_one();
                        }
                    }
                }
            }));
        }
        let notified = done.notified();
        let publishers = keys.iter().map(|key| {
            let broker = broker.clone();
            async move {
                for n in 1..=PER_KEY {
                    publish(&*broker, key, n).await;
                }
            }
        });
        within("publishing", futures_util::future::join_all(publishers)).await;
        within("every record to be consumed", async {
            tokio::select! {
                () = notified => {}
                (result, _, _) = futures_util::future::select_all(consumers.iter_mut()) => {
                    panic!("a consumer stopped early: {result:?}");
                }
            }
        })
        .await;
        for consumer in consumers {
            consumer.abort();
            let _ = consumer.await;
        }
        {
            let state = state.lock().unwrap_or_else(|e| e.into_inner());
            assert_eq!(state.tally.count, total);
            assert!(state.tally.last.values().all(|&n| n == PER_KEY));
        }
        let mut stream = broker
            .consume(&group)
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        assert_quiet(&mut *stream, "every record was acked").await;
    }

    /// A nacked record comes again with attempt 2 before its key's later records (which the
    /// consumer, holding them too, nacks with it), while another key's record is delivered
    /// meanwhile.
    pub async fn nack_redelivers_before_later_records(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let (k, o) = (unique("room"), unique("room"));
        publish(&*broker, &k, 1).await;
        publish(&*broker, &k, 2).await;
        publish(&*broker, &o, 1).await;
        let mut stream = broker
            .consume(&unique("group"))
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        // Until both keys' first records are held; k#2 may come along (after k#1).
        let mut held: Vec<Delivery> = Vec::new();
        let mut tally = Tally::default();
        while !(tally.last.contains_key(&k) && tally.last.contains_key(&o)) {
            for delivery in next_batch(&mut *stream, 10).await {
                let (key, n) = parse_record(&delivery.payload);
                tally.see(&key, n);
                assert_eq!(delivery.attempt, 1);
                held.push(delivery);
            }
        }
        let mut k_held = Vec::new();
        let mut other = None;
        for delivery in held {
            if delivery.key == k {
                k_held.push(delivery);
            } else {
                other = Some(delivery);
            }
        }
        let k2_delivered = k_held.len() == 2;
        for delivery in k_held {
            nack(delivery).await;
        }
        // k#1 again first, then k#2 (in the same batch or after k#1's ack).
        let mut ready = std::collections::VecDeque::new();
        let first = next_one(&mut *stream, &mut ready).await;
        assert_eq!(parse_record(&first.payload), (k.clone(), 1));
        assert_eq!(first.attempt, 2);
        ack(first).await;
        let second = next_one(&mut *stream, &mut ready).await;
        assert_eq!(parse_record(&second.payload), (k.clone(), 2));
        assert_eq!(second.attempt, if k2_delivered { 2 } else { 1 });
        ack(second).await;
        assert!(ready.is_empty(), "only k's two records were ready");
        ack(other.expect("o's record")).await;
        assert_quiet(&mut *stream, "every record was acked").await;
    }

    /// The unacked records of a dropped stream are delivered to another stream of the group,
    /// in order, and not before the stream is dropped.
    pub async fn dropped_stream_records_are_redelivered(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let group = unique("group");
        let key = unique("room");
        publish(&*broker, &key, 1).await;
        publish(&*broker, &key, 2).await;
        let mut first = broker
            .consume(&group)
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        let batch = next_batch(&mut *first, 10).await;
        assert_eq!(parse_record(&batch[0].payload), (key.clone(), 1));
        let both = batch.len() == 2;
        let mut second = broker
            .consume(&group)
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        assert_quiet(
            &mut *second,
            "the key's records are held by the other stream",
        )
        .await;
        drop(batch);
        drop(first);
        let mut ready = std::collections::VecDeque::new();
        let again = next_one(&mut *second, &mut ready).await;
        assert_eq!(parse_record(&again.payload), (key.clone(), 1));
        assert_eq!(again.attempt, 2);
        ack(again).await;
        let next = next_one(&mut *second, &mut ready).await;
        assert_eq!(parse_record(&next.payload), (key.clone(), 2));
        if both {
            assert_eq!(next.attempt, 2);
        } else {
            // A backend that had prefetched it may count that delivery.
            assert!((1..=2).contains(&next.attempt), "attempt {}", next.attempt);
        }
        ack(next).await;
        assert!(ready.is_empty(), "only the key's two records were ready");
        assert_quiet(&mut *second, "every record was acked").await;
    }

    /// After a restart, acked records are not delivered again; unacked ones are, in order.
    pub async fn reopen_redelivers_only_unacked(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let group = unique("group");
        let (k, j) = (unique("room"), unique("room"));
        for n in 1..=5 {
            publish(&*broker, &k, n).await;
        }
        for n in 1..=3 {
            publish(&*broker, &j, n).await;
        }
        let mut stream = broker
            .consume(&group)
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        let mut acked = 0;
        let mut unacked = Vec::new();
        while acked < 2 {
            for delivery in next_batch(&mut *stream, 10).await {
                let (key, n) = parse_record(&delivery.payload);
                if key == k && acked < 2 {
                    assert_eq!(n, acked + 1);
                    ack(delivery).await;
                    acked += 1;
                } else {
                    unacked.push(delivery);
                }
            }
        }
        drop(unacked);
        drop(stream);
        let broker = factory.reopen(broker).await;
        let mut stream = broker
            .consume(&group)
            .await
            .unwrap_or_else(|e| panic!("consume after reopen failed: {e}"));
        let mut tally = Tally::default();
        tally.last.insert(k.clone(), 2);
        while tally.count < 6 {
            for delivery in next_batch(&mut *stream, 10).await {
                let (key, n) = parse_record(&delivery.payload);
                tally.see(&key, n);
                ack(delivery).await;
            }
        }
        assert_eq!(tally.last.get(&k), Some(&5));
        assert_eq!(tally.last.get(&j), Some(&3));
        assert_quiet(&mut *stream, "every record was acked").await;
    }

    /// Delivery counts survive a restart: a record delivered once and never settled comes
    /// back with attempt 2.
    pub async fn attempts_survive_reopen(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let group = unique("group");
        let key = unique("room");
        publish(&*broker, &key, 1).await;
        let mut stream = broker
            .consume(&group)
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        let batch = next_batch(&mut *stream, 10).await;
        assert_eq!(batch[0].attempt, 1);
        drop(batch);
        drop(stream);
        let broker = factory.reopen(broker).await;
        let mut stream = broker
            .consume(&group)
            .await
            .unwrap_or_else(|e| panic!("consume after reopen failed: {e}"));
        let mut batch = next_batch(&mut *stream, 10).await;
        let delivery = batch.remove(0);
        assert_eq!(parse_record(&delivery.payload), (key.clone(), 1));
        assert_eq!(delivery.attempt, 2, "the first delivery was forgotten");
        nack(delivery).await;
        let mut batch = next_batch(&mut *stream, 10).await;
        let delivery = batch.remove(0);
        assert_eq!(delivery.attempt, 3);
        ack(delivery).await;
    }

    /// A subscription receives its rooms' messages in order and nothing of other rooms.
    pub async fn fanout_delivers_subscribed_rooms_in_order(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let (a, b, c) = (unique("room"), unique("room"), unique("room"));
        let sub = broker
            .open()
            .await
            .unwrap_or_else(|e| panic!("open failed: {e}"));
        within("subscribe", sub.subscribe(&a))
            .await
            .unwrap_or_else(|e| panic!("subscribe failed: {e}"));
        within("subscribe", sub.subscribe(&b))
            .await
            .unwrap_or_else(|e| panic!("subscribe failed: {e}"));
        // Idempotent.
        within("subscribe", sub.subscribe(&a))
            .await
            .unwrap_or_else(|e| panic!("subscribe failed: {e}"));
        let mut expected = Vec::new();
        for n in 1..=20 {
            for room in [&a, &c, &b] {
                let body = format!("{room}#{n}");
                broker
                    .publish_fanout(room, Bytes::from(body.clone()))
                    .await
                    .unwrap_or_else(|e| panic!("publish_fanout failed: {e}"));
                if room != &c {
                    expected.push((room.clone(), body));
                }
            }
        }
        let sentinel = format!("{a}#end");
        broker
            .publish_fanout(&a, Bytes::from(sentinel.clone()))
            .await
            .unwrap_or_else(|e| panic!("publish_fanout failed: {e}"));
        expected.push((a.clone(), sentinel));
        let mut got: HashMap<String, Vec<String>> = HashMap::new();
        for _ in 0..expected.len() {
            let (room, body) = next_message(&*sub).await;
            assert_ne!(room, c, "received a message of a room not subscribed to");
            assert!(
                body.starts_with(&room),
                "message {body} arrived under room {room}"
            );
            got.entry(room).or_default().push(body);
        }
        for room in [&a, &b] {
            let want: Vec<String> = expected
                .iter()
                .filter(|(r, _)| r == room)
                .map(|(_, body)| body.clone())
                .collect();
            assert_eq!(
                got.get(room.as_str()),
                Some(&want),
                "room {room} out of order"
            );
        }
    }

    /// After unsubscribe, a room's messages no longer arrive; other rooms' still do.
    pub async fn fanout_unsubscribe_stops_delivery(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let (a, b) = (unique("room"), unique("room"));
        let sub = broker
            .open()
            .await
            .unwrap_or_else(|e| panic!("open failed: {e}"));
        for room in [&a, &b] {
            within("subscribe", sub.subscribe(room))
                .await
                .unwrap_or_else(|e| panic!("subscribe failed: {e}"));
        }
        broker
            .publish_fanout(&a, Bytes::from_static(b"a1"))
            .await
            .unwrap_or_else(|e| panic!("publish_fanout failed: {e}"));
        assert_eq!(next_message(&*sub).await, (a.clone(), "a1".to_owned()));
        within("unsubscribe", sub.unsubscribe(&a))
            .await
            .unwrap_or_else(|e| panic!("unsubscribe failed: {e}"));
        within("unsubscribe", sub.unsubscribe(&a))
            .await
            .unwrap_or_else(|e| panic!("second unsubscribe failed: {e}"));
        broker
            .publish_fanout(&a, Bytes::from_static(b"a2"))
            .await
            .unwrap_or_else(|e| panic!("publish_fanout failed: {e}"));
        broker
            .publish_fanout(&b, Bytes::from_static(b"b1"))
            .await
            .unwrap_or_else(|e| panic!("publish_fanout failed: {e}"));
        assert_eq!(
            next_message(&*sub).await,
            (b.clone(), "b1".to_owned()),
            "a message of an unsubscribed room arrived"
        );
    }

    /// Two subscriptions of one room both receive its messages.
    pub async fn fanout_reaches_every_subscription(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let room = unique("room");
        let mut subs = Vec::new();
        for _ in 0..2 {
            let sub = broker
                .open()
                .await
                .unwrap_or_else(|e| panic!("open failed: {e}"));
            within("subscribe", sub.subscribe(&room))
                .await
                .unwrap_or_else(|e| panic!("subscribe failed: {e}"));
            subs.push(sub);
        }
        for n in 1..=3 {
            broker
                .publish_fanout(&room, Bytes::from(format!("m{n}")))
                .await
                .unwrap_or_else(|e| panic!("publish_fanout failed: {e}"));
        }
        for sub in &subs {
            for n in 1..=3 {
                assert_eq!(next_message(&**sub).await, (room.clone(), format!("m{n}")));
            }
        }
    }

    /// After `close`, a waiting stream and a waiting subscription end with `Closed`, and so
    /// do publishes.
    pub async fn close_ends_streams_and_subscriptions(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        let mut stream = broker
            .consume(&unique("group"))
            .await
            .unwrap_or_else(|e| panic!("consume failed: {e}"));
        let waiting = tokio::spawn(async move { stream.next_batch(1).await.map(|b| b.len()) });
        let sub = broker
            .open()
            .await
            .unwrap_or_else(|e| panic!("open failed: {e}"));
        within("subscribe", sub.subscribe(&unique("room")))
            .await
            .unwrap_or_else(|e| panic!("subscribe failed: {e}"));
        let listening = tokio::spawn(async move { sub.next().await.map(|_| ()) });
        within("close", broker.close()).await;
        let stream_end = within("the stream to end", waiting)
            .await
            .unwrap_or_else(|e| panic!("stream task failed: {e}"));
        assert!(
            matches!(stream_end, Err(crate::BrokerError::Closed)),
            "next_batch after close: {stream_end:?}"
        );
        let sub_end = within("the subscription to end", listening)
            .await
            .unwrap_or_else(|e| panic!("subscription task failed: {e}"));
        assert!(
            matches!(sub_end, Err(crate::BrokerError::Closed)),
            "next after close: {sub_end:?}"
        );
        let key = unique("room");
        let published = broker.publish(&key, record(&key, 1)).await;
        assert!(
            matches!(published, Err(crate::BrokerError::Closed)),
            "publish after close: {published:?}"
        );
    }

    /// Dead letters are accepted, the health check passes, the backend has a name.
    pub async fn dead_letter_and_health(factory: &dyn BrokerFactory) {
        let broker = factory.fresh().await;
        assert!(!broker.name().is_empty());
        within("health", broker.health())
            .await
            .unwrap_or_else(|e| panic!("health failed: {e}"));
        let key = unique("room");
        let letter = roomcast_schemas::DeadLetter {
            v: roomcast_schemas::ENVELOPE_VERSION,
            reason: "contract test".into(),
            attempts: 5,
            ts: 1,
            key: key.clone(),
            payload: String::from_utf8_lossy(&record(&key, 1)).into_owned(),
        };
        let letter =
            serde_json::to_vec(&letter).unwrap_or_else(|e| panic!("serialize a dead letter: {e}"));
        within("dead_letter", broker.dead_letter(&key, Bytes::from(letter)))
            .await
            .unwrap_or_else(|e| panic!("dead_letter failed: {e}"));
    }
}
