//! Contract tests of fan-out: subscribed rooms, unsubscribe, several subscriptions.

use crate::testkit::*;
use bytes::Bytes;
use std::collections::HashMap;

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
