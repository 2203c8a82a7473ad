//! The session's lifetime with real clients: token expiry and in-band refresh, connection
//! caps, header and handshake timeouts, join limits, and WebSocket protocol errors.

mod common;

use common::{TestApp, WAIT, nz, refresh, room, wait_until};
use roomcast_gateway::auth::{AuthConfig, Minter};
use roomcast_schemas::{ClientFrame, ErrorCode, RoomName, ServerFrame};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Zero leeway: a token ends exactly at its `exp`.
fn strict_auth() -> AuthConfig {
    AuthConfig::hs256(common::SECRET).with_leeway_secs(0)
}

fn token_for(sub: &str, rooms: &[&str], ttl: Duration) -> String {
    let rooms: Vec<String> = rooms.iter().map(|r| (*r).to_owned()).collect();
    Minter::hs256(common::SECRET.as_bytes())
        .mint(sub, &rooms, ttl)
        .unwrap()
}

#[tokio::test]
async fn an_expiring_token_is_announced_and_a_refresh_keeps_the_session() {
    let app = TestApp::start_with(|config| {
        config.auth = strict_auth();
        config.token_notice = Duration::from_secs(60);
    })
    .await;
    let room = room();
    // Expires within the notice window: the notice comes at once.
    let mut client = app
        .connect(&token_for("ana", &["*"], Duration::from_secs(30)))
        .await;
    let notice = client
        .recv_where(|f| matches!(f, ServerFrame::TokenExpiring { .. }))
        .await;
    let ServerFrame::TokenExpiring { exp } = notice else {
        unreachable!()
    };
    let fresh = token_for("ana", &["*"], Duration::from_secs(3600));
    client.send(&refresh(fresh)).await;
    let answer = client
        .recv_where(|f| matches!(f, ServerFrame::Refreshed { .. }))
        .await;
    let ServerFrame::Refreshed { exp: new_exp } = answer else {
        unreachable!()
    };
    assert!(
        new_exp > exp + 3000,
        "the new token's exp: {new_exp} vs {exp}"
    );
    client.join(&room).await;
    client
        .publish_acked(&common::event_id(), &room, json!("still here"))
        .await;
}

#[tokio::test]
async fn a_token_that_is_not_refreshed_closes_with_4001_after_the_grace() {
    let app = TestApp::start_with(|config| {
        config.auth = strict_auth();
        config.token_grace = Duration::from_secs(1);
        // Long enough for the test to read the close frame.
        config.close_timeout = Duration::from_secs(30);
    })
    .await;
    let room = room();
    let mut client = app
        .connect(&token_for("ben", &["*"], Duration::from_secs(2)))
        .await;
    client.join(&room).await;
    let close = client.expect_close().await.expect("a close frame");
    assert_eq!(
        close.code,
        CloseCode::Library(roomcast_gateway::CLOSE_TOKEN_EXPIRED)
    );
    // Nothing was acked after the token's end: the room holds no event.
    assert_eq!(app.store.last_seq(&room).await.unwrap(), 0);
}

#[tokio::test]
async fn after_exp_publishes_are_refused_until_a_refresh() {
    let app = TestApp::start_with(|config| {
        config.auth = strict_auth();
        config.token_grace = Duration::from_secs(60);
    })
    .await;
    let room = room();
    let mut client = app
        .connect(&token_for("cy", &["*"], Duration::from_secs(1)))
        .await;
    client.join(&room).await;
    let ServerFrame::TokenExpiring { exp } = client
        .recv_where(|f| matches!(f, ServerFrame::TokenExpiring { .. }))
        .await
    else {
        unreachable!()
    };
    // Nothing signals the moment `exp` passes: wait for the wall clock to reach it.
    let left = Duration::from_millis((exp * 1000 + 50).saturating_sub(roomcast_schemas::now_ms()));
    tokio::time::sleep(left).await;
    let id = common::event_id();
    client.publish(&id, &room, json!(1)).await;
    let ServerFrame::Error { code: refused, .. } =
        client.expect_error(ErrorCode::TokenExpired).await
    else {
        unreachable!()
    };
    assert_eq!(refused, ErrorCode::TokenExpired);
    client
        .send(&refresh(token_for("cy", &["*"], Duration::from_secs(3600))))
        .await;
    client
        .recv_where(|f| matches!(f, ServerFrame::Refreshed { .. }))
        .await;
    client
        .publish_acked(&common::event_id(), &room, json!(2))
        .await;
}

#[tokio::test]
async fn a_refresh_for_another_user_is_refused_and_the_session_stays() {
    let app = TestApp::start().await;
    let room = room();
    let mut client = app.client("dee").await;
    client.join(&room).await;
    client.send(&refresh(app.token("mallory", &["*"]))).await;
    client.expect_error(ErrorCode::InvalidToken).await;
    client.send(&refresh("not a token".to_owned())).await;
    client.expect_error(ErrorCode::InvalidToken).await;
    client
        .publish_acked(&common::event_id(), &room, json!("ok"))
        .await;
}

#[tokio::test]
async fn a_refresh_with_fewer_rooms_leaves_the_rooms_it_no_longer_allows() {
    let app = TestApp::start().await;
    let kept = format!("keep-{}", room());
    let lost = format!("lose-{}", room());
    let mut client = app.connect(&app.token("eve", &["keep-*", "lose-*"])).await;
    client.join(&kept).await;
    client.join(&lost).await;
    client.send(&refresh(app.token("eve", &["keep-*"]))).await;
    let left = client
        .recv_where(|f| matches!(f, ServerFrame::Left { .. }))
        .await;
    assert_eq!(left, ServerFrame::Left { room: lost.clone() });
    client
        .recv_where(|f| matches!(f, ServerFrame::Refreshed { .. }))
        .await;
    client.publish(&common::event_id(), &lost, json!(1)).await;
    client.expect_error(ErrorCode::NotJoined).await;
    client
        .publish_acked(&common::event_id(), &kept, json!(2))
        .await;
}

#[tokio::test]
async fn a_token_living_longer_than_the_maximum_is_refused_at_the_handshake() {
    let app = TestApp::start_with(|config| {
        config.max_token_lifetime = Some(Duration::from_secs(600));
    })
    .await;
    let long = token_for("fay", &["*"], Duration::from_secs(3600));
    let (status, body) = app
        .try_connect(app.request_with_header(&long))
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 401);
    assert_eq!(body["error"], "token_lifetime_too_long", "{body}");
    let short = token_for("fay", &["*"], Duration::from_secs(300));
    app.connect(&short).await.close().await;
}

#[tokio::test]
async fn a_sub_with_control_characters_or_absurd_length_is_refused() {
    let app = TestApp::start().await;
    for sub in ["ann\u{1b}[31m".to_owned(), "x".repeat(10_000)] {
        let token = common::signed(&json!({"sub": sub, "rooms": ["*"], "exp": common::now() + 60}));
        let (status, body) = app
            .try_connect(app.request_with_header(&token))
            .await
            .err()
            .expect("refused");
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_claims", "{body}");
        assert!(!body.to_string().contains("ann\u{1b}"), "{body}");
    }
}

#[tokio::test]
async fn connection_caps_answer_before_the_upgrade_and_free_on_close() {
    let app = TestApp::start_with(|config| {
        config.max_connections = 3;
        config.max_connections_per_user = 2;
    })
    .await;
    let first = app.client("gus").await;
    let second = app.client("gus").await;
    let (status, body) = app
        .try_connect(app.request_with_header(&app.token("gus", &["*"])))
        .await
        .err()
        .expect("over the per-user cap");
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_connections"))
    );
    let other = app.client("hal").await;
    let (status, body) = app
        .try_connect(app.request_with_header(&app.token("ivy", &["*"])))
        .await
        .err()
        .expect("over the total cap");
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    assert_eq!(app.gateway.connection_count(), 3);
    first.close().await;
    // The slot is free once the session has ended; the handshake can be retried at once.
    let mut admitted = None;
    for _ in 0..1000 {
        match app
            .try_connect(app.request_with_header(&app.token("gus", &["*"])))
            .await
        {
            Ok(client) => {
                admitted = Some(client);
                break;
            }
            Err((status, _)) => assert!(status == 429 || status == 503),
        }
        tokio::task::yield_now().await;
    }
    assert!(admitted.is_some(), "a closed connection frees its slot");
    drop((second, other));
}

#[tokio::test]
async fn joins_beyond_the_join_limit_are_rate_limited() {
    let app = TestApp::start_with(|config| {
        config.limits.join_per_sec = nz(1);
        config.limits.join_burst = nz(3);
    })
    .await;
    let mut client = app.client("jo").await;
    for _ in 0..3 {
        client.join(&room()).await;
    }
    client
        .send(&ClientFrame::Join {
            room: RoomName::new(room()).unwrap(),
            since: None,
        })
        .await;
    let refused = client.expect_error(ErrorCode::RateLimited).await;
    let ServerFrame::Error { retry_after_ms, .. } = refused else {
        unreachable!()
    };
    assert!(retry_after_ms.is_some_and(|ms| ms > 0));
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_off() {
    let app = TestApp::start_with(|config| {
        config.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: roomcast\r\nX-Slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // The server ends the connection (with or without a 408); it never waits forever.
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("the server cut the connection off");
    assert!(read.is_err() || !String::from_utf8_lossy(&rest).contains("200 OK"));
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let app = TestApp::start().await;
    let mut socket = RawSocket::open(app.addr, &app.token("kim", &["*"])).await;
    socket.send_frame(0x81, &[0xc3, 0x28]).await;
    assert_eq!(socket.close_code().await, Some(1007));
}

#[tokio::test]
async fn reserved_bits_bad_opcodes_and_stray_continuations_close_with_1002() {
    let app = TestApp::start().await;
    let token = app.token("lee", &["*"]);
    // RSV1 set without an extension; opcode 0x3 is reserved; a continuation with no start.
    for first_byte in [0xc1, 0x83, 0x80] {
        let mut socket = RawSocket::open(app.addr, &token).await;
        socket.send_frame(first_byte, b"{}").await;
        assert_eq!(
            socket.close_code().await,
            Some(1002),
            "first byte {first_byte:#x}"
        );
    }
}

/// A WebSocket connection driven frame by frame, for frames no well-behaved client sends.
struct RawSocket {
    stream: TcpStream,
}

impl RawSocket {
    /// Connects and completes the upgrade with `token` in the `Authorization` header.
    async fn open(addr: SocketAddr, token: &str) -> RawSocket {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
                .await
                .expect("upgrade answer")
                .unwrap();
            assert_eq!(n, 1, "connection closed during the upgrade");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawSocket { stream }
    }

    /// Sends one masked frame whose first byte (FIN, RSV bits, opcode) is `first_byte`.
    async fn send_frame(&mut self, first_byte: u8, payload: &[u8]) {
        assert!(payload.len() < 126);
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first_byte, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Reads server frames until a close frame and returns its code; `None` if the
    /// connection ended without one.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let mut header = [0u8; 2];
            let read = tokio::time::timeout(WAIT, self.stream.read_exact(&mut header))
                .await
                .expect("a frame or the end of the connection");
            read.ok()?;
            let len = match header[1] & 0x7f {
                126 => {
                    let mut ext = [0u8; 2];
                    self.stream.read_exact(&mut ext).await.ok()?;
                    usize::from(u16::from_be_bytes(ext))
                }
                127 => {
                    let mut ext = [0u8; 8];
                    self.stream.read_exact(&mut ext).await.ok()?;
                    usize::try_from(u64::from_be_bytes(ext)).ok()?
                }
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.ok()?;
            if header[0] & 0x0f == 0x8 {
                return payload
                    .get(..2)
                    .map(|code| u16::from_be_bytes([code[0], code[1]]));
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_during_replay_is_cut_off() {
    let app = TestApp::start_with(|config| {
        config.write_timeout = Duration::from_secs(1);
        // The close frame waits behind megabytes of unread history: bound that wait.
        config.close_timeout = Duration::from_secs(3);
    })
    .await;
    let room = room();
    // Far more history than the socket buffers of both ends hold.
    let mut publisher = app.client("publisher").await;
    publisher.join(&room).await;
    publisher.publish_long_history(&room).await;
    // The publisher, a member of the room, would not read its own fan-out either.
    drop(publisher);
    wait_until(|| app.gateway.connection_count() == 0).await;
    let mut stuck = app.connect_small_buffer(&app.token("stuck", &["*"])).await;
    stuck
        .send(&ClientFrame::Join {
            room: RoomName::new(room.clone()).unwrap(),
            since: Some(0),
        })
        .await;
    // The client reads nothing. The gateway gives up on it after the write deadline, tries
    // the close frame for `close_timeout` and then drops the connection: its slot is freed.
    // (Whether the client then sees 4008 or a reset depends on what its kernel still holds;
    // the core's tests check the close frame itself.)
    wait_until(|| app.gateway.slow_consumers_closed() == 1 && app.gateway.connection_count() == 0)
        .await;
    // Others are unaffected.
    let mut other = app.client("other").await;
    other.join(&room).await;
    other.publish_acked("after", &room, json!("x")).await;
    drop(stuck);
}
