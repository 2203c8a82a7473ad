//! Waiting for deliveries and fan-out messages, test records, and draining streams in order.

use super::{QUIET, WAIT, unique};
use crate::{Broker, Delivery, EventStream, FanoutEvent, FanoutSubscription};
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

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

pub(crate) fn text(payload: &Bytes) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

pub(crate) fn payload_text(delivery: &Delivery) -> String {
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

pub(crate) async fn ack(delivery: Delivery) {
    within("an ack", delivery.ack())
        .await
        .unwrap_or_else(|e| panic!("ack failed: {e}"));
}

pub(crate) async fn nack(delivery: Delivery) {
    within("a nack", delivery.nack())
        .await
        .unwrap_or_else(|e| panic!("nack failed: {e}"));
}

pub(crate) async fn publish(broker: &dyn Broker, key: &str, n: u32) {
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
