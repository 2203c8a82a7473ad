//! Contract tests of the broker's lifecycle: close, dead letters, health.

use crate::testkit::*;
use bytes::Bytes;

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
