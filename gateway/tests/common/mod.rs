//! Test harness: a gateway and a worker in-process on an embedded broker and a SQLite store
//! in a tempdir, listening on 127.0.0.1:0, with a known HS256 secret, token minting, and a
//! WebSocket client wrapper.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use roomcast_broker::{EmbeddedBroker, EmbeddedOptions, GatewayLink, WorkerLink};
use roomcast_gateway::auth::{AuthConfig, Minter};
use roomcast_gateway::config::GatewayConfig;
use roomcast_gateway::{Gateway, GatewayError, serve};
use roomcast_schemas::{ClientFrame, ErrorCode, EventId, EventName, RoomName, ServerFrame};
use roomcast_store::Store;
use roomcast_worker::{Worker, WorkerConfig};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

/// The HS256 secret of test apps.
pub(crate) const SECRET: &str = "roomcast-test-secret-0123456789abcdef";
/// How long a test waits for any expected frame.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with exactly `claims`, signed with the test apps' secret (for claims that the
/// minter refuses to write).
pub(crate) fn signed(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A `refresh` frame carrying `token`.
pub(crate) fn refresh(token: String) -> ClientFrame {
    ClientFrame::Refresh {
        token: roomcast_schemas::AccessToken::new(token),
    }
}

/// A fresh random room name.
pub(crate) fn room() -> String {
    format!("room-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh random event id.
pub(crate) fn event_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// The test apps' default configuration: HS256 with [`SECRET`], limits far above what tests
/// need (the tests that exercise limits lower them).
pub(crate) fn test_config() -> GatewayConfig {
    let mut config = GatewayConfig::new(AuthConfig::hs256(SECRET));
    config.limits.publish_per_sec = nz(10_000);
    config.limits.publish_burst = nz(10_000);
    config.limits.user_publish_per_sec = nz(10_000);
    config.limits.user_publish_burst = nz(10_000);
    config.limits.handshakes_per_sec_per_ip = nz(10_000);
    config.limits.handshake_burst_per_ip = nz(10_000);
    config
}

/// The store URL of a test app: `sqlite://<dir>/store.db`.
pub(crate) fn store_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("store.db").display())
}

/// A running app.
pub(crate) struct TestApp {
    pub(crate) addr: SocketAddr,
    pub(crate) dir: TempDir,
    pub(crate) store: Store,
    pub(crate) gateway: Gateway,
    minter: Minter,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

impl TestApp {
    /// The app with [`test_config`].
    pub(crate) async fn start() -> TestApp {
        Self::start_with(|_| {}).await
    }

    /// The app with [`test_config`] changed by `adjust`.
    pub(crate) async fn start_with(adjust: impl FnOnce(&mut GatewayConfig)) -> TestApp {
        Self::start_full(adjust, EmbeddedOptions::default()).await
    }

    /// The app with [`test_config`] changed by `adjust`, and broker `options`.
    pub(crate) async fn start_full(
        adjust: impl FnOnce(&mut GatewayConfig),
        options: EmbeddedOptions,
    ) -> TestApp {
        let mut config = test_config();
        adjust(&mut config);
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let broker = EmbeddedBroker::open_with(&dir.path().join("broker"), options)
            .await
            .unwrap();
        let store = Store::connect(&store_url(dir.path())).await.unwrap();
        let gateway = Gateway::new(
            config,
            GatewayLink::from_broker(broker.clone()),
            store.clone(),
        )
        .await
        .unwrap();
        let shutdown = CancellationToken::new();
        let worker = Worker::new(
            WorkerLink::from_broker(broker.clone()),
            store.clone(),
            WorkerConfig::default(),
        );
        let worker = tokio::spawn(worker.run(shutdown.child_token()));
        let task = {
            let (gateway, store, shutdown) = (gateway.clone(), store.clone(), shutdown.clone());
            tokio::spawn(async move {
                let served = serve(listener, gateway, shutdown.cancelled_owned()).await;
                worker
                    .await
                    .expect("the worker task")
                    .expect("the worker stops cleanly");
                broker.close().await;
                store.close().await;
                served
            })
        };
        TestApp {
            addr,
            dir,
            store,
            gateway,
            minter: Minter::hs256(SECRET.as_bytes()),
            shutdown,
            task: Some(task),
        }
    }

    /// A token for `sub` allowing `rooms`, valid for an hour.
    pub(crate) fn token(&self, sub: &str, rooms: &[&str]) -> String {
        let rooms: Vec<String> = rooms.iter().map(|r| (*r).to_owned()).collect();
        self.minter
            .mint(sub, &rooms, Duration::from_secs(3600))
            .unwrap()
    }

    /// `ws://…/ws`.
    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A client of `sub` allowed every room.
    pub(crate) async fn client(&self, sub: &str) -> Client {
        self.connect(&self.token(sub, &["*"])).await
    }

    /// Connects with `token` in the `Authorization` header; panics unless upgraded.
    pub(crate) async fn connect(&self, token: &str) -> Client {
        let request = self.request_with_header(token);
        self.try_connect(request)
            .await
            .unwrap_or_else(|(status, body)| panic!("handshake failed: {status} {body}"))
    }

    /// Connects with `token` in the `access_token` query parameter; panics unless upgraded.
    pub(crate) async fn connect_query(&self, token: &str) -> Client {
        let request = format!("{}?access_token={token}", self.ws_url())
            .into_client_request()
            .unwrap();
        self.try_connect(request)
            .await
            .unwrap_or_else(|(status, body)| panic!("handshake failed: {status} {body}"))
    }

    /// A handshake request carrying `Authorization: Bearer <token>`.
    pub(crate) fn request_with_header(&self, token: &str) -> Request {
        let mut request = self.ws_url().into_client_request().unwrap();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        request.headers_mut().insert("authorization", value);
        request
    }

    /// Runs the handshake: the client, or the refusal's HTTP status and JSON body.
    pub(crate) async fn try_connect(&self, request: Request) -> Result<Client, (u16, Value)> {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        Client::handshake(request, stream).await
    }

    /// Connects a client whose socket has a tiny receive buffer (to make it slow on purpose).
    pub(crate) async fn connect_small_buffer(&self, token: &str) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        Client::handshake(self.request_with_header(token), stream)
            .await
            .unwrap_or_else(|(status, body)| panic!("handshake failed: {status} {body}"))
    }

    /// A plain `GET path` (HTTP/1.1, `Connection: close`): status, headers text, body.
    pub(crate) async fn get(&self, path: &str) -> HttpReply {
        self.get_for_host(path, &self.addr.to_string()).await
    }

    /// `GET path` with `host` as the `Host` header.
    pub(crate) async fn get_for_host(&self, path: &str, host: &str) -> HttpReply {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        HttpReply {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    /// Cancels the app's shutdown token and waits for it to stop.
    pub(crate) async fn stop(mut self) -> Result<(), GatewayError> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("app did not stop")
            .unwrap()
    }

    /// Cancels the app's shutdown token without waiting.
    pub(crate) fn begin_stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct HttpReply {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl HttpReply {
    /// The body as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// A header's value (case-insensitive name).
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

/// A WebSocket client speaking the Roomcast protocol.
pub(crate) struct Client {
    ws: WebSocketStream<TcpStream>,
    /// Frames received while waiting for another one.
    pending: VecDeque<ServerFrame>,
}

impl Client {
    async fn handshake(request: Request, stream: TcpStream) -> Result<Client, (u16, Value)> {
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((ws, response)) => {
                assert_eq!(response.status().as_u16(), 101);
                Ok(Client {
                    ws,
                    pending: VecDeque::new(),
                })
            }
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response.body().clone().unwrap_or_default();
                let json = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&body) }));
                Err((status, json))
            }
            Err(err) => panic!("handshake failed: {err}"),
        }
    }

    /// Sends a client frame.
    pub(crate) async fn send(&mut self, frame: &ClientFrame) {
        self.send_text(&serde_json::to_string(frame).unwrap()).await;
    }

    /// Sends a JSON value as a text frame.
    pub(crate) async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a raw text frame.
    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends a raw message.
    pub(crate) async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// The next protocol message (pings and pongs skipped), with a timeout.
    pub(crate) async fn next_raw(&mut self) -> Option<Message> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match next {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
            }
        }
    }

    /// The next server frame; panics on timeout, close or an unparsable frame.
    pub(crate) async fn recv(&mut self) -> ServerFrame {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        self.recv_network().await
    }

    async fn recv_network(&mut self) -> ServerFrame {
        match self.next_raw().await {
            Some(Message::Text(text)) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|e| panic!("bad server frame ({e}): {text}")),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The first frame matching `pred`; frames before it stay queued for [`Client::recv`].
    pub(crate) async fn recv_where(&mut self, pred: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        if let Some(index) = self.pending.iter().position(&pred) {
            return self.pending.remove(index).unwrap();
        }
        loop {
            let frame = self.recv_network().await;
            if pred(&frame) {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    /// A frame already received and not yet taken, if any.
    pub(crate) fn pending_frame(&mut self) -> Option<ServerFrame> {
        self.pending.pop_front()
    }

    /// Joins `room` (optionally with `since`) and returns the `joined` seq.
    pub(crate) async fn join(&mut self, room: &str) -> u64 {
        self.join_since(room, None).await
    }

    /// Joins `room` with `since` and returns the `joined` seq; `joined` must be the next frame
    /// about the room.
    pub(crate) async fn join_since(&mut self, room: &str, since: Option<u64>) -> u64 {
        self.send(&ClientFrame::Join {
            room: RoomName::new(room).expect("valid room"),
            since,
        })
        .await;
        let frame = self.recv_where(|f| frame_room(f) == Some(room)).await;
        match frame {
            ServerFrame::Joined { room: r, seq } if r == room => seq,
            other => panic!("expected joined for {room}, got {other:?}"),
        }
    }

    /// Publishes 200 events of 60 KiB into `room` (joined), 20 in flight at once, each acked:
    /// far more history than the socket buffers of both ends hold.
    pub(crate) async fn publish_long_history(&mut self, room: &str) {
        let payload = json!("y".repeat(60 * 1024));
        let ids: Vec<String> = (0..200).map(|n| format!("h{n}")).collect();
        for chunk in ids.chunks(20) {
            let answers = self.publish_all(room, chunk, payload.clone()).await;
            assert!(answers.iter().all(|a| matches!(a, ServerFrame::Ack { .. })));
        }
    }

    /// Sends a publish frame.
    pub(crate) async fn publish(&mut self, id: &str, room: &str, data: Value) {
        let frame = publish_frame(id, room, &data);
        self.send(&frame).await;
    }

    /// Waits for the ack of `id` (failing on an error frame for it).
    pub(crate) async fn expect_ack(&mut self, id: &str) {
        let frame = self
            .recv_where(|f| match f {
                ServerFrame::Ack { id: got } => got == id,
                ServerFrame::Error { id: Some(got), .. } => got == id,
                _ => false,
            })
            .await;
        assert!(
            matches!(frame, ServerFrame::Ack { .. }),
            "expected ack of {id}, got {frame:?}"
        );
    }

    /// Publishes and waits for the ack.
    pub(crate) async fn publish_acked(&mut self, id: &str, room: &str, data: Value) {
        self.publish(id, room, data).await;
        self.expect_ack(id).await;
    }

    /// Waits for the next error frame and checks its code.
    pub(crate) async fn expect_error(&mut self, code: ErrorCode) -> ServerFrame {
        let frame = self
            .recv_where(|f| matches!(f, ServerFrame::Error { .. }))
            .await;
        match &frame {
            ServerFrame::Error { code: got, .. } => assert_eq!(*got, code, "{frame:?}"),
            _ => unreachable!(),
        }
        frame
    }

    /// The next `message` frame of `room`: `(seq, id, data)`.
    pub(crate) async fn expect_message(&mut self, room: &str) -> (u64, String, Value) {
        match self
            .recv_where(|f| matches!(f, ServerFrame::Message { room: r, .. } if r == room))
            .await
        {
            ServerFrame::Message { seq, id, data, .. } => (seq, id, data),
            _ => unreachable!(),
        }
    }

    /// Reads until the connection closes and returns the close frame, if one came. Frames
    /// before it are discarded.
    pub(crate) async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close")
            {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                None => return None,
                Some(Err(err)) => {
                    eprintln!("connection failed instead of closing: {err}");
                    return None;
                }
            }
        }
    }

    /// Publishes one event per id (event `msg`, `data`) without waiting in between, reading
    /// concurrently so the client never stalls the server; returns once every id got its ack
    /// or error. Frames other than those answers are kept for [`Client::recv`].
    pub(crate) async fn publish_all(
        &mut self,
        room: &str,
        ids: &[String],
        data: Value,
    ) -> Vec<ServerFrame> {
        let (mut sink, mut stream) = (&mut self.ws).split();
        let frames: Vec<Message> = ids
            .iter()
            .map(|id| {
                let frame = publish_frame(id, room, &data);
                Message::text(serde_json::to_string(&frame).unwrap())
            })
            .collect();
        let send = async move {
            for frame in frames {
                sink.send(frame).await.unwrap();
            }
        };
        let receive = async {
            let mut answers = Vec::new();
            let mut others = Vec::new();
            while answers.len() < ids.len() {
                let next = tokio::time::timeout(WAIT, stream.next())
                    .await
                    .expect("timed out waiting for acks");
                let text = match next {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("connection ended while publishing: {other:?}"),
                };
                let frame: ServerFrame = serde_json::from_str(text.as_str()).unwrap();
                match frame {
                    ServerFrame::Ack { .. } | ServerFrame::Error { id: Some(_), .. } => {
                        answers.push(frame)
                    }
                    frame => others.push(frame),
                }
            }
            (answers, others)
        };
        let ((), (answers, others)) = tokio::join!(send, receive);
        self.pending.extend(others);
        answers
    }

    /// Closes the connection cleanly.
    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The room a frame is about.
pub(crate) fn frame_room(frame: &ServerFrame) -> Option<&str> {
    match frame {
        ServerFrame::Joined { room, .. }
        | ServerFrame::Left { room }
        | ServerFrame::Message { room, .. } => Some(room),
        ServerFrame::Error { room, .. } => room.as_deref(),
        ServerFrame::Ack { .. }
        | ServerFrame::TokenExpiring { .. }
        | ServerFrame::Refreshed { .. } => None,
    }
}

/// A publish frame of event `msg`.
pub(crate) fn publish_frame(id: &str, room: &str, data: &Value) -> ClientFrame {
    ClientFrame::Publish {
        id: EventId::new(id).expect("valid id"),
        room: RoomName::new(room).expect("valid room"),
        event: EventName::new("msg").expect("valid event"),
        data: serde_json::value::to_raw_value(data).expect("JSON"),
    }
}

/// Waits (up to [`WAIT`]) until `done` holds; the gateway exposes no event for what these
/// tests watch, only counters.
pub(crate) async fn wait_until(done: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the gateway's counters reach the expected state");
}
