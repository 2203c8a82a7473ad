//! Contract tests of the inbound stream: order, competing consumers, redelivery, attempts.

use crate::testkit::*;
use crate::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

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
