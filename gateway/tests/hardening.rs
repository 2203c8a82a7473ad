//! Attacks on the session's inputs, with real clients: tokens issued in the future, user ids
//! that pass for another user's, poison `data`, refresh floods and DNS rebinding of the dev
//! token endpoint.

mod common;

use common::{TestApp, now, refresh, room, signed, wait_until};
use roomcast_schemas::{ClientFrame, ErrorCode, ServerFrame};
use serde_json::{Value, json};
use std::time::Duration;

async fn refused(app: &TestApp, token: &str) -> Value {
    let (status, body) = app
        .try_connect(app.request_with_header(token))
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 401, "{body}");
    body
}

#[tokio::test]
async fn a_future_iat_cannot_dodge_the_maximum_lifetime() {
    let app = TestApp::start_with(|config| {
        config.max_token_lifetime = Some(Duration::from_secs(3600));
    })
    .await;
    let ten_years = now() + 10 * 365 * 24 * 3600;
    let dodge = json!({"sub": "mallory", "rooms": ["*"], "iat": ten_years, "exp": ten_years});
    let body = refused(&app, &signed(&dodge)).await;
    assert_eq!(body["error"], "token_not_yet_valid", "{body}");

    // An `iat` a little ahead but within the leeway is clock skew, and is accepted; the
    // lifetime then counts from now, so `exp` an hour and a minute away is too long.
    let skewed = json!({"sub": "ann", "rooms": ["*"], "iat": now() + 2, "exp": now() + 1800});
    let mut client = app.connect(&signed(&skewed)).await;
    let stretched = json!({"sub": "ann", "rooms": ["*"], "iat": now() + 4, "exp": now() + 3660});
    let body = refused(&app, &signed(&stretched)).await;
    assert_eq!(body["error"], "token_lifetime_too_long", "{body}");

    // `refresh` applies the same rules, and the old token stays in effect.
    client
        .send(&refresh(signed(
            &json!({"sub": "ann", "rooms": ["*"], "iat": ten_years, "exp": ten_years}),
        )))
        .await;
    client.expect_error(ErrorCode::InvalidToken).await;
    client.join(&room()).await;
}

#[tokio::test]
async fn user_ids_with_invisible_characters_are_refused_everywhere() {
    let app = TestApp::start_with(|config| config.dev_mode = true).await;
    for sub in [
        "ali\u{200B}ce",
        "\u{202E}ecila",
        "alice\u{2066}",
        "\u{FEFF}alice",
        "alice ",
        "ali\u{3164}ce",
    ] {
        let claims = json!({"sub": sub, "rooms": ["*"], "exp": now() + 600});
        let body = refused(&app, &signed(&claims)).await;
        assert_eq!(body["error"], "invalid_claims", "{sub:?}: {body}");
        assert!(!body.to_string().contains(sub), "{body}");

        // The dev endpoint trims surrounding spaces; it refuses the rest.
        if sub.trim() == sub {
            let query: String = sub.bytes().map(|b| format!("%{b:02X}")).collect();
            let reply = app.get(&format!("/dev/token?sub={query}")).await;
            assert_eq!(reply.status, 400, "{sub:?}: {}", reply.body);
            assert_eq!(reply.json()["error"], "bad_request");
        }
    }
    // What looks alike but is a real name is a user of its own.
    let claims = json!({"sub": "Ann Lee", "rooms": ["*"], "exp": now() + 600});
    app.connect(&signed(&claims)).await.close().await;
}

#[tokio::test]
async fn poison_data_is_refused_before_the_broker() {
    let app = TestApp::start().await;
    let room = room();
    let mut client = app.client("pat").await;
    client.join(&room).await;
    let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let poison = [
        ("p-deep", deep(10_000), "deeper than 64 levels"),
        ("p-65", deep(65), "deeper than 64 levels"),
        (
            "p-lone",
            r#"{"text":"\ud800"}"#.to_owned(),
            "unpaired surrogate",
        ),
        (
            "p-low",
            r#"["\udc00\ud800"]"#.to_owned(),
            "unpaired surrogate",
        ),
    ];
    for (id, data, rule) in &poison {
        let frame = format!(
            r#"{{"type":"publish","id":"{id}","room":"{room}","event":"e","data":{data}}}"#
        );
        client.send_text(&frame).await;
        let ServerFrame::Error {
            code,
            id: error_id,
            message,
            ..
        } = client.expect_error(ErrorCode::InvalidFrame).await
        else {
            unreachable!()
        };
        assert_eq!(code, ErrorCode::InvalidFrame);
        assert_eq!(error_id.as_deref(), Some(*id));
        assert!(message.contains(rule), "{id}: {message}");
    }
    // The limit itself, and surrogate pairs, are fine; the connection stays usable.
    let fine = format!(
        r#"{{"type":"publish","id":"p-64","room":"{room}","event":"e","data":[{},"\ud83d\ude00"]}}"#,
        deep(63)
    );
    client.send_text(&fine).await;
    client.expect_ack("p-64").await;
    let (seq, id, _) = client.expect_message(&room).await;
    assert_eq!(
        (seq, id.as_str()),
        (1, "p-64"),
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn a_stricter_data_depth_is_a_setting() {
    let app = TestApp::start_with(|config| config.max_data_depth = 2).await;
    let room = room();
    let mut client = app.client("quinn").await;
    client.join(&room).await;
    client.publish("ok", &room, json!({"a": [1]})).await;
    client.expect_ack("ok").await;
    client.publish("deep", &room, json!({"a": [[1]]})).await;
    let error = client.expect_error(ErrorCode::InvalidFrame).await;
    assert!(
        format!("{error:?}").contains("deeper than 2 levels"),
        "{error:?}"
    );
}

#[tokio::test]
async fn refresh_floods_are_rate_limited_and_failures_count() {
    let app = TestApp::start().await;
    let mut client = app.client("rita").await;
    // Three refused refreshes use up the connection's burst ...
    for _ in 0..3 {
        client.send(&refresh("not-a-token".to_owned())).await;
        client.expect_error(ErrorCode::InvalidToken).await;
    }
    // ... so a fourth, even with a good token, is not checked at all.
    client.send(&refresh(app.token("rita", &["*"]))).await;
    let ServerFrame::Error { retry_after_ms, .. } =
        client.expect_error(ErrorCode::RateLimited).await
    else {
        unreachable!()
    };
    let retry = retry_after_ms.expect("retry_after_ms");
    assert!((1..=10_000).contains(&retry), "{retry}");
    // The connection is untouched: joins and publishes go on under the old token.
    let room = room();
    client.join(&room).await;
    client.publish_acked("r-1", &room, json!(1)).await;
}

#[tokio::test]
async fn refreshes_are_limited_per_user_across_connections() {
    let app = TestApp::start_with(|config| {
        config.limits.user_refresh_burst = common::nz(4);
        config.limits.user_refresh_per_sec = common::nz(1);
    })
    .await;
    let mut first = app.client("sam").await;
    let mut second = app.client("sam").await;
    let mut other = app.client("tess").await;
    for _ in 0..2 {
        first.send(&refresh(app.token("sam", &["*"]))).await;
        first
            .recv_where(|f| matches!(f, ServerFrame::Refreshed { .. }))
            .await;
        second.send(&refresh(app.token("sam", &["*"]))).await;
        second
            .recv_where(|f| matches!(f, ServerFrame::Refreshed { .. }))
            .await;
    }
    second.send(&refresh(app.token("sam", &["*"]))).await;
    second.expect_error(ErrorCode::RateLimited).await;
    other.send(&refresh(app.token("tess", &["*"]))).await;
    other
        .recv_where(|f| matches!(f, ServerFrame::Refreshed { .. }))
        .await;
}

#[tokio::test]
async fn dev_tokens_are_served_only_to_loopback_hosts() {
    let app = TestApp::start_with(|config| config.dev_mode = true).await;
    let port = app.addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
    ] {
        let reply = app.get_for_host("/dev/token?sub=uma", &host).await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.body);
    }
    for host in [
        format!("rebind.example:{port}"),
        format!("127.0.0.1.rebind.example:{port}"),
        format!("localhost.rebind.example:{port}"),
        format!("192.168.1.20:{port}"),
    ] {
        let reply = app.get_for_host("/dev/token?sub=uma", &host).await;
        assert_eq!(reply.status, 403, "{host}: {}", reply.body);
        assert_eq!(reply.json()["error"], "forbidden", "{host}");
        assert!(!reply.body.contains("token\""), "{}", reply.body);
    }
}

/// Reads until the server ends the connection; returns what it sent and how long it took.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> (Vec<u8>, Duration) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, stream.read_to_end(&mut got))
        .await
        .expect("the server ended the connection");
    (got, started.elapsed())
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let app = TestApp::start_with(|config| config.header_read_timeout = timeout).await;
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (got, took) = read_until_closed(&mut silent).await;
    assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
    assert!(
        got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn a_kept_alive_connection_that_goes_quiet_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeout = Duration::from_millis(300);
    let app = TestApp::start_with(|config| config.header_read_timeout = timeout).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The connection stays open for another request, but not for ever.
    let (_, took) = read_until_closed(&mut stream).await;
    assert!(took < common::WAIT, "{took:?}");
}

#[tokio::test]
async fn http2_without_tls_is_not_spoken() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::start().await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (got, _) = read_until_closed(&mut stream).await;
    // No HTTP/2 SETTINGS frame comes back: an HTTP/1.1 error, or nothing.
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn connections_that_send_nothing_count_and_health_stays_answerable() {
    let app = TestApp::start_with(|config| {
        config.max_connections = 4;
        config.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    wait_until(|| app.gateway.accepted_count() == 4).await;
    // Four connections are open, none of them a session: a handshake is one too many ...
    let (status, body) = app
        .try_connect(app.request_with_header(&app.token("vic", &["*"])))
        .await
        .err()
        .expect("over max_connections");
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    // ... but the health endpoints answer from the reserve.
    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);
    drop(idle);
    wait_until(|| app.gateway.accepted_count() == 0).await;
    app.client("vic").await.close().await;
}

#[tokio::test]
async fn a_users_replays_take_turns_while_other_users_go_ahead() {
    let write_timeout = Duration::from_secs(2);
    let app = TestApp::start_with(|config| {
        config.replays_per_user = 1;
        config.write_timeout = write_timeout;
        config.close_timeout = Duration::from_secs(3);
    })
    .await;
    let (big, small) = (room(), room());
    // Far more history in `big` than the socket buffers of both ends hold.
    let mut publisher = app.client("publisher").await;
    publisher.join(&big).await;
    publisher.join(&small).await;
    publisher.publish_long_history(&big).await;
    for n in 1..=3 {
        publisher
            .publish_acked(&format!("s{n}"), &small, json!(n))
            .await;
    }
    drop(publisher);
    wait_until(|| app.gateway.connection_count() == 0).await;

    // Mallory replays `big` and reads nothing: her replay holds her only turn.
    let mut stuck = app
        .connect_small_buffer(&app.token("mallory", &["*"]))
        .await;
    stuck
        .send(&ClientFrame::Join {
            room: roomcast_schemas::RoomName::new(big.clone()).unwrap(),
            since: Some(0),
        })
        .await;
    wait_until(|| app.gateway.replay_count() == 1).await;

    // Another user's replay is not held up by hers.
    let mut bob = app.client("bob").await;
    bob.join_since(&small, Some(0)).await;
    for seq in 1..=3 {
        assert_eq!(bob.expect_message(&small).await.0, seq);
    }
    assert_eq!(app.gateway.slow_consumers_closed(), 0, "bob went first");

    // Her second connection's replay waits until the stuck one is cut off.
    let started = std::time::Instant::now();
    let mut second = app.client("mallory").await;
    second.join_since(&small, Some(0)).await;
    assert_eq!(second.expect_message(&small).await.0, 1);
    assert!(
        started.elapsed() >= write_timeout / 2,
        "replayed after {:?}, while her other replay still ran",
        started.elapsed()
    );
    wait_until(|| app.gateway.slow_consumers_closed() == 1).await;
    drop(stuck);
}
