//! The HTTP routes: health, readiness, the chat page, dev tokens, the per-IP handshake limit,
//! and graceful shutdown.

mod common;

use common::{TestApp, nz, room};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let app = TestApp::start().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["broker"]["backend"], "embedded");
    assert_eq!(body["store"]["status"], "ok");
}

#[tokio::test]
async fn readyz_answers_503_when_the_broker_is_closed() {
    // A gateway-only process (no worker) on an embedded broker and a SQLite store.
    let dir = tempfile::tempdir().unwrap();
    let broker = roomcast_broker::EmbeddedBroker::open(&dir.path().join("broker"))
        .await
        .unwrap();
    let store = roomcast_store::Store::connect(&common::store_url(dir.path()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = roomcast_gateway::Gateway::new(
        common::test_config(),
        roomcast_broker::GatewayLink::from_broker(broker.clone()),
        store,
    )
    .await
    .unwrap();
    let task = tokio::spawn(roomcast_gateway::serve(
        listener,
        gateway,
        shutdown.clone().cancelled_owned(),
    ));
    let reply = raw_get(addr, "/readyz").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    broker.close().await;
    let reply = raw_get(addr, "/readyz").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.contains(r#""broker":{"backend":"embedded","status":"unavailable"}"#),
        "{reply}"
    );
    assert!(!reply.contains("closed"), "no internals: {reply}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(common::WAIT, stream.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    raw
}

#[tokio::test]
async fn the_chat_page_is_served_as_html() {
    let app = TestApp::start().await;
    let page = app.get("/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.to_ascii_lowercase().contains("<html"));
}

#[tokio::test]
async fn dev_token_is_404_unless_dev_mode() {
    let app = TestApp::start().await;
    assert_eq!(app.get("/dev/token?sub=alice").await.status, 404);
}

#[tokio::test]
async fn dev_token_mints_working_tokens_in_dev_mode() {
    let app = TestApp::start_with(|config| config.dev_mode = true).await;
    let reply = app.get("/dev/token?sub=alice").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let token = reply.json()["token"].as_str().unwrap().to_owned();
    let mut client = app.connect(&token).await;
    assert_eq!(client.join(&room()).await, 0);

    // With `rooms`, only those rooms.
    let reply = app.get("/dev/token?sub=bob&rooms=lobby,team-*").await;
    let token = reply.json()["token"].as_str().unwrap().to_owned();
    let mut bob = app.connect(&token).await;
    bob.join("lobby").await;
    bob.join("team-red").await;
    bob.send(&roomcast_schemas::ClientFrame::Join {
        room: roomcast_schemas::RoomName::new("elsewhere").unwrap(),
        since: None,
    })
    .await;
    bob.expect_error(roomcast_schemas::ErrorCode::ForbiddenRoom)
        .await;

    // Bad input is a 400 with a JSON body.
    for path in [
        "/dev/token",
        "/dev/token?sub=",
        "/dev/token?sub=a&rooms=bad%20room",
    ] {
        let reply = app.get(path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert_eq!(reply.json()["error"], "bad_request");
    }
}

#[tokio::test]
async fn handshake_flood_from_one_ip_gets_429() {
    let app = TestApp::start_with(|config| {
        config.limits.handshakes_per_sec_per_ip = nz(1);
        config.limits.handshake_burst_per_ip = nz(3);
    })
    .await;
    let token = app.token("alice", &["*"]);
    let mut refused = None;
    for _ in 0..10 {
        match app.try_connect(app.request_with_header(&token)).await {
            Ok(client) => drop(client),
            Err(answer) => {
                refused = Some(answer);
                break;
            }
        }
    }
    let (status, body) = refused.expect("a handshake was refused");
    assert_eq!(status, 429);
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().is_some());
    // The limit applies before the token is looked at, and says when to retry.
    let reply = app.get("/ws").await;
    assert_eq!(reply.status, 429);
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    // Other routes are not limited.
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let app = TestApp::start().await;
    let room = room();
    let mut client = app.client("alice").await;
    client.join(&room).await;
    client.publish_acked("e1", &room, json!(1)).await;
    app.begin_stop();
    let close = client.expect_close().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);
    let addr = app.addr;
    app.stop().await.unwrap();
    // No longer accepting.
    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
}
