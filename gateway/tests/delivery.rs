//! Delivery: resuming with `since`, slow consumers, and recovery from lost fan-out messages.

mod common;

use common::{TestApp, event_id, room};
use roomcast_broker::EmbeddedOptions;
use roomcast_schemas::{EventId, EventName, RoomName, ServerFrame};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}-{i}-{}", event_id()))
        .collect()
}

#[tokio::test]
async fn join_with_since_replays_then_goes_live_without_gap_or_duplicate() {
    let app = TestApp::start_with(|config| config.history_page = 4).await;
    let room = room();
    let mut publisher = app.client("publisher").await;
    publisher.join(&room).await;
    let before = ids("before", 20);
    for answer in publisher.publish_all(&room, &before, json!("before")).await {
        assert!(matches!(answer, ServerFrame::Ack { .. }), "{answer:?}");
    }
    for n in 1..=20u64 {
        assert_eq!(publisher.expect_message(&room).await.0, n);
    }
    // Keep publishing while the new member joins.
    let during = ids("during", 30);
    let live = {
        let room = room.clone();
        let during = during.clone();
        tokio::spawn(async move {
            let answers = publisher.publish_all(&room, &during, json!("during")).await;
            assert!(answers.iter().all(|a| matches!(a, ServerFrame::Ack { .. })));
            publisher
        })
    };
    let mut late = app.client("late").await;
    // `joined` comes before any message of the room (join_since checks it is the first frame
    // about the room).
    let joined = late.join_since(&room, Some(7)).await;
    assert!((20..=50).contains(&joined), "joined at {joined}");
    for expected in 8..=50u64 {
        let (seq, _, _) = late.expect_message(&room).await;
        assert_eq!(seq, expected);
    }
    let mut publisher = live.await.unwrap();
    publisher
        .publish_acked("after", &room, json!("after"))
        .await;
    let (seq, id, _) = late.expect_message(&room).await;
    assert_eq!((seq, id.as_str()), (51, "after"));
    // Nothing else (no duplicate) was queued before it.
    while let Some(frame) = late.pending_frame() {
        assert!(!matches!(frame, ServerFrame::Message { .. }), "{frame:?}");
    }
}

#[tokio::test]
async fn since_zero_replays_everything_and_since_beyond_the_end_resumes_at_the_end() {
    let app = TestApp::start().await;
    let room = room();
    let mut publisher = app.client("publisher").await;
    publisher.join(&room).await;
    for n in 1..=3 {
        publisher
            .publish_acked(&format!("e{n}"), &room, json!(n))
            .await;
    }
    // Acked means durable in the broker; the message is in the store once it is fanned out.
    for n in 1..=3u64 {
        assert_eq!(publisher.expect_message(&room).await.0, n);
    }
    let mut all = app.client("all").await;
    assert_eq!(all.join_since(&room, Some(0)).await, 3);
    for n in 1..=3u64 {
        let (seq, id, data) = all.expect_message(&room).await;
        assert_eq!((seq, id, data), (n, format!("e{n}"), json!(n)));
    }
    let mut ahead = app.client("ahead").await;
    assert_eq!(ahead.join_since(&room, Some(100)).await, 3);
    publisher.publish_acked("e4", &room, json!(4)).await;
    assert_eq!(ahead.expect_message(&room).await.0, 4);
    assert_eq!(all.expect_message(&room).await.0, 4);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_with_4008_while_others_get_everything() {
    let app = TestApp::start_with(|config| {
        config.outbound_queue = 64;
        // Long enough for the test to start reading the stuck socket after the flood.
        config.close_timeout = Duration::from_secs(60);
    })
    .await;
    let room = room();
    let mut slow = app.connect_small_buffer(&app.token("slow", &["*"])).await;
    slow.join(&room).await;
    let mut normal = app.client("normal").await;
    normal.join(&room).await;

    // The readers stay at most one chunk (well under the bound) behind, so only the client
    // that never reads can exceed it, however slowly this process is scheduled.
    const CHUNK: usize = 16;
    const CHUNKS: usize = 50;
    let total = (CHUNK * CHUNKS) as u64;
    let mut publisher = app.client("publisher").await;
    publisher.join(&room).await;
    let payload = json!("x".repeat(4096));
    for chunk in 0..CHUNKS {
        let answers = publisher
            .publish_all(&room, &ids(&format!("c{chunk}"), CHUNK), payload.clone())
            .await;
        assert!(
            answers.iter().all(|a| matches!(a, ServerFrame::Ack { .. })),
            "all acked"
        );
        for n in 1..=CHUNK as u64 {
            let expected = (chunk * CHUNK) as u64 + n;
            assert_eq!(normal.expect_message(&room).await.0, expected);
            assert_eq!(publisher.expect_message(&room).await.0, expected);
        }
    }
    // Only now does the slow client read: what was buffered, then the close frame.
    let close = slow.expect_close().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Library(4008));
    assert_eq!(
        close.reason.as_str(),
        roomcast_gateway::SLOW_CONSUMER_REASON
    );
    assert!(app.gateway.slow_consumers_closed() >= 1);
    assert_eq!(app.store.last_seq(&room).await.unwrap(), total);
    // The slow client resumes with `since` and gets the rest.
    let mut resumed = app.client("slow").await;
    assert_eq!(resumed.join_since(&room, Some(total - 2)).await, total);
    assert_eq!(resumed.expect_message(&room).await.0, total - 1);
    assert_eq!(resumed.expect_message(&room).await.0, total);
}

#[tokio::test]
async fn lost_fan_out_messages_are_recovered_from_the_store() {
    // A one-message fan-out buffer: the worker stores a batch (one event per room) and
    // publishes its fan-out messages back to back, so the broker drops some and reports a gap.
    // Members must still see every seq of every room once, in order.
    let options = EmbeddedOptions {
        fanout_capacity: 1,
        ..EmbeddedOptions::default()
    };
    let app = TestApp::start_full(|_| {}, options).await;
    const ROOMS: usize = 4;
    const EACH: usize = 60;
    let rooms: Vec<String> = (0..ROOMS).map(|_| room()).collect();
    let mut readers = Vec::new();
    for w in 0..2 {
        let mut watcher = app.client(&format!("watcher-{w}")).await;
        for room in &rooms {
            watcher.join(room).await;
        }
        let rooms = rooms.clone();
        readers.push(tokio::spawn(async move {
            let mut last: HashMap<String, u64> = rooms.iter().map(|r| (r.clone(), 0)).collect();
            while last.values().any(|seq| *seq < EACH as u64) {
                let frame = watcher.recv().await;
                if let ServerFrame::Message { room, seq, .. } = frame {
                    let previous = last.get_mut(&room).expect("a joined room");
                    assert_eq!(seq, *previous + 1, "room {room}: every seq once, in order");
                    *previous = seq;
                }
            }
            watcher
        }));
    }
    let mut tasks = Vec::new();
    for (p, room) in rooms.iter().enumerate() {
        let mut publisher = app.client(&format!("publisher-{p}")).await;
        publisher.join(room).await;
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let answers = publisher
                .publish_all(&room, &ids(&format!("p{p}"), EACH), json!(p))
                .await;
            assert!(answers.iter().all(|a| matches!(a, ServerFrame::Ack { .. })));
            publisher
        }));
    }
    let mut publishers = Vec::new();
    for task in tasks {
        publishers.push(task.await.unwrap());
    }
    let mut watchers = Vec::new();
    for reader in readers {
        watchers.push(reader.await.unwrap());
    }
    // One more live message after the storm arrives with the next seq.
    publishers[0]
        .publish_acked("last", &rooms[0], json!("last"))
        .await;
    for watcher in &mut watchers {
        assert_eq!(watcher.expect_message(&rooms[0]).await.0, EACH as u64 + 1);
    }
}

#[tokio::test]
async fn a_seq_gap_without_a_gap_report_is_filled_from_the_store() {
    let app = TestApp::start().await;
    let room = room();
    let mut member = app.client("member").await;
    member.join(&room).await;
    member.publish_acked("e1", &room, json!(1)).await;
    assert_eq!(member.expect_message(&room).await.0, 1);
    // An event stored without its fan-out message (as if fan-out lost it silently).
    let event = roomcast_schemas::InboundEvent {
        v: roomcast_schemas::ENVELOPE_VERSION,
        id: EventId::new("silent").unwrap(),
        room: RoomName::new(room.clone()).unwrap(),
        event: EventName::new("msg").unwrap(),
        from: roomcast_schemas::UserId::new("elsewhere").unwrap(),
        ts: 1,
        data: serde_json::value::to_raw_value(&json!("stored only")).unwrap(),
    };
    app.store.append(&[event]).await.unwrap();
    // The next live message carries seq 3: the member gets 2 from the store first.
    member.publish_acked("e3", &room, json!(3)).await;
    let (seq, id, data) = member.expect_message(&room).await;
    assert_eq!(
        (seq, id.as_str(), data),
        (2, "silent", json!("stored only"))
    );
    let (seq, id, _) = member.expect_message(&room).await;
    assert_eq!((seq, id.as_str()), (3, "e3"));
}
