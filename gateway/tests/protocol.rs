//! The frame protocol: joins, publishes, acks, messages, errors, deduplication and rate limits.

mod common;

use common::{TestApp, event_id, nz, room};
use roomcast_schemas::{ClientFrame, ErrorCode, RoomName, ServerFrame};
use serde_json::json;
use std::collections::HashMap;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn join_of_a_forbidden_room_is_refused() {
    let app = TestApp::start().await;
    let mut client = app.connect(&app.token("alice", &["team-*"])).await;
    let other = room();
    client
        .send(&ClientFrame::Join {
            room: RoomName::new(other.clone()).unwrap(),
            since: None,
        })
        .await;
    let frame = client.expect_error(ErrorCode::ForbiddenRoom).await;
    assert!(matches!(frame, ServerFrame::Error { room: Some(r), .. } if r == other));
    // The connection stays usable and the allowed rooms work.
    let team = format!("team-{}", room());
    assert_eq!(client.join(&team).await, 0);
    // Publishing to the forbidden room is refused too (never joined).
    client.publish("e1", &other, json!(1)).await;
    client.expect_error(ErrorCode::NotJoined).await;
}

#[tokio::test]
async fn publish_without_joining_is_not_joined() {
    let app = TestApp::start().await;
    let mut client = app.client("alice").await;
    let room = room();
    client.publish("e1", &room, json!({"x": 1})).await;
    let frame = client.expect_error(ErrorCode::NotJoined).await;
    assert!(
        matches!(&frame, ServerFrame::Error { id: Some(id), room: Some(r), .. } if id == "e1" && *r == room),
        "{frame:?}"
    );
    // Nothing was stored.
    assert_eq!(app.store.last_seq(&room).await.unwrap(), 0);
    // After leaving, publishing is refused again.
    client.join(&room).await;
    client.publish_acked("e2", &room, json!(2)).await;
    client
        .send(&ClientFrame::Leave {
            room: RoomName::new(room.clone()).unwrap(),
        })
        .await;
    client
        .recv_where(|f| matches!(f, ServerFrame::Left { room: r } if *r == room))
        .await;
    client.publish("e3", &room, json!(3)).await;
    client.expect_error(ErrorCode::NotJoined).await;
}

#[tokio::test]
async fn publish_is_acked_and_delivered_to_every_member_in_order() {
    let app = TestApp::start().await;
    let room = room();
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    let mut carol = app.client("carol").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(client.join(&room).await, 0);
    }
    for n in 1..=5u64 {
        alice
            .publish_acked(&format!("e{n}"), &room, json!({ "n": n }))
            .await;
    }
    for client in [&mut alice, &mut bob, &mut carol] {
        for n in 1..=5u64 {
            let frame = client
                .recv_where(|f| matches!(f, ServerFrame::Message { .. }))
                .await;
            let ServerFrame::Message {
                room: r,
                seq,
                id,
                event,
                from,
                ts,
                data,
            } = frame
            else {
                unreachable!()
            };
            assert_eq!(
                (r.as_str(), seq, id.as_str()),
                (room.as_str(), n, format!("e{n}").as_str())
            );
            assert_eq!((event.as_str(), from.as_str()), ("msg", "alice"));
            assert_eq!(data, json!({ "n": n }));
            assert!(ts > 0);
        }
    }
    // A later joiner starts at the room's last seq.
    let mut dave = app.client("dave").await;
    assert_eq!(dave.join(&room).await, 5);
}

#[tokio::test]
async fn rooms_are_isolated() {
    let app = TestApp::start().await;
    let (room_a, room_b) = (room(), room());
    let mut a = app.client("alice").await;
    let mut b = app.client("bob").await;
    a.join(&room_a).await;
    b.join(&room_b).await;
    // B's message is fanned out (bob sees it) before A's is even published: if alice were a
    // member of B, its frame would reach her before A's message.
    b.publish_acked("b1", &room_b, json!("for b")).await;
    assert_eq!(b.expect_message(&room_b).await.0, 1);
    a.publish_acked("a1", &room_a, json!("for a")).await;
    let (seq, id, _) = a.expect_message(&room_a).await;
    assert_eq!((seq, id.as_str()), (1, "a1"));
    a.publish_acked("a2", &room_a, json!("for a")).await;
    assert_eq!(a.expect_message(&room_a).await.0, 2);
    // Nothing but acks and A's messages ever reached alice.
    b.publish_acked("b2", &room_b, json!("for b")).await;
    assert_eq!(b.expect_message(&room_b).await.0, 2);
    a.publish_acked("a3", &room_a, json!("for a")).await;
    assert_eq!(a.expect_message(&room_a).await.0, 3);
    while let Some(frame) = a.pending_frame() {
        assert!(
            !matches!(&frame, ServerFrame::Message { room, .. } if *room == room_b),
            "{frame:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_publishers_see_one_gap_free_order() {
    let app = TestApp::start().await;
    let room = room();
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    let mut watcher = app.client("carol").await;
    for client in [&mut alice, &mut bob, &mut watcher] {
        client.join(&room).await;
    }
    const N: usize = 60;
    // Both publish without waiting for acks: the frames race each other through the gateway.
    for n in 0..N {
        alice.publish(&format!("a{n}"), &room, json!(n)).await;
        bob.publish(&format!("b{n}"), &room, json!(n)).await;
    }
    let mut orders = Vec::new();
    for client in [&mut alice, &mut bob, &mut watcher] {
        let mut order = Vec::new();
        for expected_seq in 1..=(2 * N) as u64 {
            let (seq, id, _) = client.expect_message(&room).await;
            assert_eq!(seq, expected_seq, "seqs are gap-free and in order");
            order.push(id);
        }
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
    // Each publisher's events keep the order it sent them in.
    for prefix in ["a", "b"] {
        let own: Vec<_> = orders[0]
            .iter()
            .filter(|id| id.starts_with(prefix))
            .cloned()
            .collect();
        let sent: Vec<_> = (0..N).map(|n| format!("{prefix}{n}")).collect();
        assert_eq!(own, sent);
    }
    for n in 0..N {
        alice.expect_ack(&format!("a{n}")).await;
        bob.expect_ack(&format!("b{n}")).await;
    }
}

#[tokio::test]
async fn duplicate_ids_are_acked_every_time_and_delivered_once() {
    let app = TestApp::start().await;
    let room = room();
    let mut watcher = app.client("watcher").await;
    watcher.join(&room).await;
    let id = event_id();

    let mut first = app.client("alice").await;
    first.join(&room).await;
    first.publish_acked(&id, &room, json!("original")).await;
    // A retry on the same connection.
    first.publish_acked(&id, &room, json!("retry")).await;
    // A second connection of the same user, concurrently open.
    let mut second = app.client("alice").await;
    second.join(&room).await;
    second
        .publish_acked(&id, &room, json!("second connection"))
        .await;
    // After reconnecting.
    first.close().await;
    let mut again = app.client("alice").await;
    again.join(&room).await;
    again
        .publish_acked(&id, &room, json!("after reconnect"))
        .await;
    // The same id from another user is a different event.
    let mut bob = app.client("bob").await;
    bob.join(&room).await;
    bob.publish_acked(&id, &room, json!("bob's")).await;
    let marker = event_id();
    again.publish_acked(&marker, &room, json!("marker")).await;

    let (seq, got, data) = watcher.expect_message(&room).await;
    assert_eq!(
        (seq, got.as_str(), data),
        (1, id.as_str(), json!("original"))
    );
    let (seq, got, data) = watcher.expect_message(&room).await;
    assert_eq!((seq, got.as_str(), data), (2, id.as_str(), json!("bob's")));
    let (seq, got, _) = watcher.expect_message(&room).await;
    assert_eq!((seq, got.as_str()), (3, marker.as_str()));

    // Stored once: a full replay has exactly three messages.
    assert_eq!(app.store.last_seq(&room).await.unwrap(), 3);
    let mut late = app.client("late").await;
    assert_eq!(late.join_since(&room, Some(0)).await, 3);
    let replayed: Vec<_> = [
        late.expect_message(&room).await,
        late.expect_message(&room).await,
        late.expect_message(&room).await,
    ]
    .into_iter()
    .map(|(seq, id, _)| (seq, id))
    .collect();
    assert_eq!(replayed, vec![(1, id.clone()), (2, id), (3, marker)]);
}

#[tokio::test]
async fn bad_frames_get_invalid_frame_and_the_connection_stays_usable() {
    let app = TestApp::start().await;
    let mut client = app.client("alice").await;
    let bad = [
        "not json".to_owned(),
        "{\"type\":\"join\"".to_owned(),
        json!({ "type": "dance", "room": "r" }).to_string(),
        json!({ "type": "join", "room": "r", "extra": 1 }).to_string(),
        json!({ "room": "r" }).to_string(),
        json!({ "type": "join", "room": "bad room!" }).to_string(),
        json!({ "type": "join", "room": "" }).to_string(),
        json!({ "type": "join", "room": "x".repeat(129) }).to_string(),
        json!({ "type": "join", "room": "r", "since": -1 }).to_string(),
        json!({ "type": "publish", "id": "has space", "room": "r", "event": "e" }).to_string(),
        json!({ "type": "publish", "id": "e1", "room": "r", "event": "bad event!" }).to_string(),
        "[1,2,3]".to_owned(),
    ];
    for text in &bad {
        client.send_text(text).await;
        let frame = client.expect_error(ErrorCode::InvalidFrame).await;
        let ServerFrame::Error { message, .. } = frame else {
            unreachable!()
        };
        assert!(!message.is_empty());
    }
    client.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    client.expect_error(ErrorCode::InvalidFrame).await;
    // Still usable.
    let room = room();
    assert_eq!(client.join(&room).await, 0);
    client.publish_acked("ok", &room, json!(null)).await;
    assert_eq!(client.expect_message(&room).await.0, 1);
}

#[tokio::test]
async fn invalid_names_are_never_echoed() {
    let app = TestApp::start().await;
    let mut client = app.client("alice").await;
    let frame = json!({ "type": "publish", "id": "has space", "room": "bad room!", "event": "e" });
    client.send_text(&frame.to_string()).await;
    let ServerFrame::Error { room, id, .. } = client.expect_error(ErrorCode::InvalidFrame).await
    else {
        unreachable!()
    };
    assert_eq!((room, id), (None, None), "an invalid room or id was echoed");
    let frame = json!({ "type": "publish", "id": "has space", "room": "fine", "event": "e" });
    client.send_text(&frame.to_string()).await;
    let ServerFrame::Error { room, .. } = client.expect_error(ErrorCode::InvalidFrame).await else {
        unreachable!()
    };
    assert_eq!(room.as_deref(), Some("fine"));
}

#[tokio::test]
async fn oversize_frame_gets_too_large_then_close_1009() {
    let app = TestApp::start_with(|config| config.max_frame_bytes = 4096).await;
    let mut client = app.client("alice").await;
    let room = room();
    client.join(&room).await;
    // Just over the limit: valid JSON otherwise.
    let big = json!({ "type": "publish", "id": "big", "room": room, "event": "e", "data": "x".repeat(4096) });
    client.send_text(&big.to_string()).await;
    client.expect_error(ErrorCode::TooLarge).await;
    let close = client.expect_close().await.expect("close frame");
    assert_eq!(close.code, CloseCode::Size);
    assert_eq!(app.store.last_seq(&room).await.unwrap(), 0);

    // Far over the limit (beyond what the protocol layer reads): closed with 1009 as well.
    let mut client = app.client("alice").await;
    client.send_text(&"y".repeat(64 * 1024)).await;
    let close = client.expect_close().await.expect("close frame");
    assert_eq!(close.code, CloseCode::Size);
}

#[tokio::test]
async fn too_many_rooms_is_refused() {
    let app = TestApp::start_with(|config| config.max_rooms_per_connection = 2).await;
    let mut client = app.client("alice").await;
    let rooms = [room(), room(), room()];
    client.join(&rooms[0]).await;
    client.join(&rooms[1]).await;
    // Joining a held room again is fine.
    client.join(&rooms[1]).await;
    client
        .send(&ClientFrame::Join {
            room: RoomName::new(rooms[2].clone()).unwrap(),
            since: None,
        })
        .await;
    client.expect_error(ErrorCode::TooManyRooms).await;
    // After leaving one, there is room again.
    client
        .send(&ClientFrame::Leave {
            room: RoomName::new(rooms[0].clone()).unwrap(),
        })
        .await;
    client
        .recv_where(|f| matches!(f, ServerFrame::Left { .. }))
        .await;
    client.join(&rooms[2]).await;
}

#[tokio::test]
async fn a_flooding_client_is_rate_limited_without_slowing_others() {
    let app = TestApp::start_with(|config| {
        config.limits.publish_per_sec = nz(5);
        config.limits.publish_burst = nz(5);
    })
    .await;
    let room = room();
    let mut flooder = app.client("flooder").await;
    let mut other = app.client("other").await;
    flooder.join(&room).await;
    other.join(&room).await;

    const FLOOD: usize = 40;
    for n in 0..FLOOD {
        flooder.publish(&format!("f{n}"), &room, json!(n)).await;
    }
    // Meanwhile another user is served normally.
    for n in 0..3 {
        other.publish_acked(&format!("o{n}"), &room, json!(n)).await;
    }
    let mut acked = 0;
    let mut limited = Vec::new();
    for n in 0..FLOOD {
        let id = format!("f{n}");
        let frame = flooder
            .recv_where(|f| matches!(f, ServerFrame::Ack { id: got } | ServerFrame::Error { id: Some(got), .. } if *got == id))
            .await;
        match frame {
            ServerFrame::Ack { .. } => acked += 1,
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(ms),
                room: Some(r),
                ..
            } => {
                assert_eq!(r, room);
                limited.push(ms);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(acked >= 5, "the burst is allowed (acked {acked})");
    assert!(!limited.is_empty(), "the flood was limited");
    assert!(limited.iter().all(|ms| *ms > 0));
    // The other client receives every acked message, its own included, and nothing else.
    let stored = acked as u64 + 3;
    let mut seen = HashMap::new();
    for seq in 1..=stored {
        let (got, id, _) = other.expect_message(&room).await;
        assert_eq!(got, seq);
        seen.insert(id, seq);
    }
    assert!((0..3).all(|n| seen.contains_key(&format!("o{n}"))));
    assert_eq!(app.store.last_seq(&room).await.unwrap(), stored);
    // The flooder's connection is kept: it can join, and after waiting it publishes again.
    flooder.join(&common::room()).await;
    let wait = *limited.iter().max().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(wait + 250)).await;
    flooder.publish_acked("after", &room, json!("ok")).await;
}

#[tokio::test]
async fn a_client_close_is_answered_and_frees_the_rooms() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let app = TestApp::start().await;
    let room = room();
    let mut client = app.client("alice").await;
    client.join(&room).await;
    assert_eq!(app.gateway.room_count(), 1);
    client
        .send_raw(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await;
    let reply = client
        .expect_close()
        .await
        .expect("the server answers the close");
    assert_eq!(reply.code, CloseCode::Normal);
    // The session ends and leaves its room (polling a counter: there is no event to await).
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while app.gateway.session_count() > 0 || app.gateway.room_count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "session still open");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn silent_connections_are_closed_and_listening_ones_kept() {
    let app = TestApp::start_with(|config| {
        config.ping_interval = std::time::Duration::from_millis(100);
        config.idle_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let room = room();
    let mut listening = app.client("alice").await;
    let mut silent = app.client("bob").await;
    listening.join(&room).await;
    // The listening client only reads (answering pings) for well over the idle timeout.
    let quiet =
        tokio::time::timeout(std::time::Duration::from_millis(1500), listening.next_raw()).await;
    assert!(quiet.is_err(), "no frame but pings was expected: {quiet:?}");
    listening.publish_acked("still-here", &room, json!(1)).await;
    // The silent client never read, so it never answered a ping: closed with 1008.
    let close = silent.expect_close().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
}
