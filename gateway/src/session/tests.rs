//! The session core without sockets: a channel transport drives it, with a real embedded
//! broker and a real SQLite store; time-based rules run under `tokio::time::pause()`.

use super::delivery::{Next, next};
use super::*;
use crate::auth::{AuthConfig, Minter};
use crate::config::GatewayConfig;
use crate::outbound::RoomMessage;
use crate::server::Gateway;
use roomcast_broker::{Broker, EmbeddedBroker, EventConsumer, GatewayLink};
use roomcast_schemas::{EventId, EventName, FanoutMessage, InboundEvent, RoomName, UserId, now_ms};
use roomcast_store::Store;
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// What the session wrote.
#[derive(Debug, Clone, PartialEq)]
enum Written {
    Frame(Value),
    Flush,
    Ping,
    Close(u16),
}

/// A transport made of channels; `stuck` makes every write wait forever (a client that does
/// not read).
struct ChannelTransport {
    incoming: UnboundedReceiver<Incoming>,
    written: UnboundedSender<Written>,
    stuck: Arc<AtomicBool>,
}

impl ChannelTransport {
    async fn write(&mut self, what: Written) -> Result<(), Gone> {
        if self.stuck.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.written.send(what).map_err(|_| Gone)
    }
}

impl Transport for ChannelTransport {
    async fn recv(&mut self) -> Incoming {
        self.incoming.recv().await.unwrap_or(Incoming::Closed)
    }
    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), Gone> {
        let value = serde_json::from_str(frame.as_str()).expect("frames are JSON");
        self.write(Written::Frame(value)).await
    }
    async fn flush(&mut self) -> Result<(), Gone> {
        self.write(Written::Flush).await
    }
    async fn ping(&mut self) -> Result<(), Gone> {
        self.write(Written::Ping).await
    }
    async fn close(&mut self, close: Close) -> Result<(), Gone> {
        self.write(Written::Close(close.code)).await
    }
    async fn drain(&mut self) {
        while let Some(incoming) = self.incoming.recv().await {
            if matches!(incoming, Incoming::Closed) {
                return;
            }
        }
    }
}

struct Env {
    gateway: Gateway,
    store: Store,
    broker: Arc<EmbeddedBroker>,
    _dir: TempDir,
}

async fn env(adjust: impl FnOnce(&mut GatewayConfig)) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(&dir.path().join("broker"))
        .await
        .expect("broker");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Store::connect(&url).await.expect("store");
    let mut config = GatewayConfig::new(AuthConfig::hs256(SECRET.to_vec()));
    adjust(&mut config);
    let dyn_broker: Arc<dyn Broker> = broker.clone();
    let gateway = Gateway::new(config, GatewayLink::from_broker(dyn_broker), store.clone())
        .await
        .expect("gateway");
    Env {
        gateway,
        store,
        broker,
        _dir: dir,
    }
}

fn claims(sub: &str, rooms: &[&str], ttl: Duration) -> Claims {
    Claims {
        sub: UserId::new(sub).unwrap(),
        rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        exp: now_ms() / 1000 + ttl.as_secs(),
        iat: Some(now_ms() / 1000),
    }
}

/// A client of the session: what it sends, what it sees.
struct Client {
    tx: UnboundedSender<Incoming>,
    rx: UnboundedReceiver<Written>,
    stuck: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Client {
    fn send(&self, frame: Value) {
        let text = Utf8Bytes::from(frame.to_string());
        self.tx.send(Incoming::Text(text)).expect("session runs");
    }

    /// The next frame written (flushes and pings skipped).
    async fn frame(&mut self) -> Value {
        loop {
            match self.written().await {
                Written::Frame(value) => return value,
                Written::Flush | Written::Ping => {}
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    async fn written(&mut self) -> Written {
        tokio::time::timeout(Duration::from_secs(600), self.rx.recv())
            .await
            .expect("the session writes something")
            .expect("the session is running")
    }

    /// Frames until (and with) the next one of type `kind`.
    async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let frame = self.frame().await;
            let done = frame["type"] == kind;
            seen.push(frame);
            if done {
                return seen;
            }
        }
    }
}

fn connect(env: &Env, claims: Claims) -> Client {
    let (tx, incoming) = unbounded_channel();
    let (written, rx) = unbounded_channel();
    let stuck = Arc::new(AtomicBool::new(false));
    let transport = ChannelTransport {
        incoming,
        written,
        stuck: stuck.clone(),
    };
    let state = env.gateway.shared.clone();
    let guard = state.admit(&claims.sub, None).ok().expect("under the caps");
    let task = tokio::spawn(serve(transport, state, claims, 1, guard));
    Client {
        tx,
        rx,
        stuck,
        task,
    }
}

/// Stores `count` events in `room` and returns their fan-out messages. Every event gets an id
/// of its own (a repeated id would be deduplicated by the store).
async fn store_events(store: &Store, room: &str, count: usize, size: usize) -> Vec<FanoutMessage> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let text = serde_json::to_string(&"x".repeat(size)).unwrap();
    let events: Vec<InboundEvent> = (0..count)
        .map(|_| InboundEvent {
            v: 1,
            id: EventId::new(format!("e-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))).unwrap(),
            room: RoomName::new(room).unwrap(),
            event: EventName::new("chat").unwrap(),
            from: UserId::new("bob").unwrap(),
            ts: now_ms(),
            data: RawValue::from_string(text.clone()).unwrap(),
        })
        .collect();
    let appended = store.append(&events).await.expect("append");
    appended.iter().map(|a| a.message().clone()).collect()
}

fn batch(messages: &[FanoutMessage]) -> crate::outbound::FanoutBatch {
    messages
        .iter()
        .map(|m| RoomMessage {
            seq: m.seq,
            frame: Utf8Bytes::from(m.to_frame_json()),
        })
        .collect::<Vec<_>>()
        .into()
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn delivery_decisions() {
    assert_eq!(next(5, 5), Next::Drop);
    assert_eq!(next(5, 2), Next::Drop);
    assert_eq!(next(5, 6), Next::Send);
    assert_eq!(next(5, 9), Next::Fill { to: 8 });
    assert_eq!(next(0, 1), Next::Send);
}

#[tokio::test]
async fn replay_and_live_meet_without_gap_or_duplicate() {
    let env = env(|_| {}).await;
    let history = store_events(&env.store, "r", 5, 10).await;
    let mut client = connect(&env, claims("alice", &["*"], Duration::from_secs(3600)));
    client.send(serde_json::json!({"type": "join", "room": "r", "since": 2}));
    let joined = client.until("joined").await;
    assert_eq!(joined.last().unwrap()["seq"], 5);
    // Fan-out of 4, 5 (already replayed) and 6 is queued while the replay goes on.
    let mut live = history[3..].to_vec();
    live.extend(store_events(&env.store, "r", 1, 10).await);
    assert_eq!(env.gateway.shared.rooms.deliver("r", &batch(&live)), 1);
    let mut got = Vec::new();
    while got.last() != Some(&6) {
        got.extend(seqs(&[client.frame().await]));
    }
    assert_eq!(got, vec![3, 4, 5, 6]);

    // A later seq fills the gap from the store first; a repeated one is dropped.
    let more = store_events(&env.store, "r", 2, 10).await;
    env.gateway.shared.rooms.deliver("r", &batch(&more[1..]));
    env.gateway.shared.rooms.deliver("r", &batch(&more));
    let mut got = Vec::new();
    while got.last() != Some(&8) {
        got.extend(seqs(&[client.frame().await]));
    }
    assert_eq!(got, vec![7, 8]);
    client.send(serde_json::json!({"type": "leave", "room": "r"}));
    assert_eq!(client.frame().await["type"], "left", "nothing after 8");
    env.broker.close().await;
}

#[tokio::test]
async fn history_replay_is_written_in_pages_of_replay_bytes() {
    let env = env(|c| {
        c.max_frame_bytes = 1024;
        c.replay_bytes = 1024;
    })
    .await;
    store_events(&env.store, "r", 40, 200).await;
    let mut client = connect(&env, claims("alice", &["*"], Duration::from_secs(3600)));
    client.send(serde_json::json!({"type": "join", "room": "r", "since": 0}));
    // Messages written between two flushes.
    let mut groups = vec![0usize];
    let mut seen = Vec::new();
    while seen.last() != Some(&40) {
        match client.written().await {
            Written::Flush => groups.push(0),
            Written::Frame(frame) => {
                let seqs = seqs(&[frame]);
                *groups.last_mut().unwrap() += seqs.len();
                seen.extend(seqs);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    // 200-byte payloads and a 1 KiB budget: pages of 6 (each starts below 1 KiB), each
    // written before the next is read.
    assert!(groups.iter().all(|&n| n <= 6), "{groups:?}");
    assert!(groups.len() >= 7, "{groups:?}");
    env.broker.close().await;
}

#[tokio::test]
async fn an_overflowing_queue_closes_the_slow_consumer() {
    let env = env(|c| c.outbound_queue = 2).await;
    let messages = store_events(&env.store, "r", 3, 10).await;
    let mut client = connect(&env, claims("alice", &["*"], Duration::from_secs(3600)));
    client.send(serde_json::json!({"type": "join", "room": "r"}));
    client.until("joined").await;
    for message in &messages {
        env.gateway
            .shared
            .rooms
            .deliver("r", &batch(std::slice::from_ref(message)));
    }
    loop {
        match client.written().await {
            Written::Close(code) => {
                assert_eq!(code, 4008);
                break;
            }
            Written::Frame(frame) => panic!("nothing is delivered after the overflow: {frame}"),
            _ => {}
        }
    }
    client.task.await.unwrap();
    assert_eq!(env.gateway.slow_consumers_closed(), 1);
    assert_eq!(env.gateway.room_count(), 0, "the member left its room");
    env.broker.close().await;
}

#[tokio::test]
async fn a_socket_that_accepts_no_writes_is_closed_after_the_write_timeout() {
    let env = env(|_| {}).await;
    let client = connect(&env, claims("alice", &["*"], Duration::from_secs(3600)));
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    client.stuck.store(true, Ordering::SeqCst);
    // An error answer is what waits on the socket here.
    client.send(serde_json::json!({"type": "nope"}));
    client.task.await.unwrap();
    let config = &env.gateway.shared.config;
    let took = started.elapsed();
    assert!(
        took >= config.write_timeout && took <= config.write_timeout + config.close_timeout * 3,
        "closed after {took:?}"
    );
    assert_eq!(env.gateway.slow_consumers_closed(), 1);
    assert_eq!(env.gateway.connection_count(), 0);
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_with_1008() {
    let env = env(|_| {}).await;
    let mut client = connect(&env, claims("alice", &["*"], Duration::from_secs(3600)));
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    assert_eq!(client.written().await, Written::Ping);
    assert_eq!(client.written().await, Written::Ping);
    // Activity moves the deadline on.
    client.tx.send(Incoming::Alive).unwrap();
    let mut pings = 0;
    let close = loop {
        match client.written().await {
            Written::Ping => pings += 1,
            Written::Close(code) => break code,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(close, 1008);
    assert!(pings >= 2, "{pings}");
    assert!(
        started.elapsed() >= Duration::from_secs(100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_expiring_token_is_noticed_refused_then_closed_with_4001() {
    let env = env(|c| {
        c.idle_timeout = Duration::from_secs(10_000);
        c.ping_interval = Duration::from_secs(5_000);
        c.auth.leeway_secs = 0;
    })
    .await;
    let mut client = connect(&env, claims("alice", &["*"], Duration::from_secs(120)));
    client.send(serde_json::json!({"type": "join", "room": "r"}));
    client.until("joined").await;
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let notice = client.frame().await;
    assert_eq!(notice["type"], "token_expiring");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(55) && waited <= Duration::from_secs(61),
        "{waited:?}"
    );
    tokio::time::advance(Duration::from_secs(62)).await;
    client.send(serde_json::json!({"type": "publish", "id": "p-1", "room": "r", "event": "e"}));
    let refused = client.frame().await;
    assert_eq!(refused["code"], "token_expired", "{refused}");
    assert_eq!(refused["id"], "p-1");
    loop {
        match client.written().await {
            Written::Close(code) => {
                assert_eq!(code, 4001);
                break;
            }
            Written::Flush => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_secs(148),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn refresh_renews_the_token_and_leaves_rooms_it_no_longer_allows() {
    let env = env(|_| {}).await;
    let mut client = connect(
        &env,
        claims("alice", &["a", "b"], Duration::from_secs(3600)),
    );
    for room in ["a", "b"] {
        client.send(serde_json::json!({"type": "join", "room": room}));
        client.until("joined").await;
    }
    let minter = Minter::hs256(SECRET);
    let other = minter
        .mint("mallory", &["a".to_owned()], Duration::from_secs(7200))
        .unwrap();
    client.send(serde_json::json!({"type": "refresh", "token": other}));
    let refused = client.frame().await;
    assert_eq!(refused["code"], "invalid_token");
    assert!(!refused.to_string().contains("mallory"));
    client.send(serde_json::json!({"type": "refresh", "token": "not.a.token"}));
    assert_eq!(client.frame().await["code"], "invalid_token");

    let renewed = minter
        .mint("alice", &["a".to_owned()], Duration::from_secs(7200))
        .unwrap();
    client.send(serde_json::json!({"type": "refresh", "token": renewed}));
    let frames = client.until("refreshed").await;
    assert_eq!(frames[0], serde_json::json!({"type": "left", "room": "b"}));
    assert!(frames[1]["exp"].as_u64().unwrap() >= now_ms() / 1000 + 7000);
    client.send(serde_json::json!({"type": "publish", "id": "p", "room": "b", "event": "e"}));
    assert_eq!(client.frame().await["code"], "not_joined");
    client.send(serde_json::json!({"type": "join", "room": "b"}));
    assert_eq!(client.frame().await["code"], "forbidden_room");
    env.broker.close().await;
}

#[tokio::test]
async fn joins_beyond_the_rate_are_refused_with_retry_after() {
    let env = env(|c| {
        c.limits.join_burst = std::num::NonZeroU32::new(3).unwrap();
        c.limits.join_per_sec = std::num::NonZeroU32::new(1).unwrap();
    })
    .await;
    let mut client = connect(&env, claims("alice", &["*"], Duration::from_secs(3600)));
    for room in ["a", "b", "c"] {
        client.send(serde_json::json!({"type": "join", "room": room}));
        client.until("joined").await;
    }
    client.send(serde_json::json!({"type": "join", "room": "d"}));
    let refused = client.frame().await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(refused["room"], "d");
    assert!(refused["retry_after_ms"].as_u64().unwrap() >= 1);
    env.broker.close().await;
}

#[tokio::test]
async fn publishes_are_acked_in_order_after_the_broker_stored_them() {
    let env = env(|_| {}).await;
    let mut client = connect(&env, claims("alice", &["*"], Duration::from_secs(3600)));
    client.send(serde_json::json!({"type": "join", "room": "r"}));
    client.until("joined").await;
    let text = r#"{"type":"publish","id":"p-1","room":"r","event":"e","data":{"n":12345678901234567890123,"x":1E2}}"#;
    client
        .tx
        .send(Incoming::Text(Utf8Bytes::from_static(text)))
        .unwrap();
    for i in 2..=20 {
        client.send(serde_json::json!({"type": "publish", "id": format!("p-{i}"), "room": "r", "event": "e"}));
    }
    for i in 1..=20 {
        let ack = client.frame().await;
        assert_eq!(
            ack,
            serde_json::json!({"type": "ack", "id": format!("p-{i}")})
        );
    }
    // The envelope carries `data` as the client wrote it.
    let mut stream = env.broker.consume("g").await.unwrap();
    let first = stream.next_batch(1).await.unwrap().remove(0);
    let envelope = String::from_utf8(first.payload.to_vec()).unwrap();
    assert!(
        envelope.contains(r#""data":{"n":12345678901234567890123,"x":1E2}"#),
        "{envelope}"
    );
    env.broker.close().await;
}

/// The connection's task holds the session's future for its whole life: it must stay small
/// (joins, replays and the close are boxed, as they are rare and their futures large).
#[tokio::test]
async fn a_connection_future_stays_small() {
    let env = env(|_| {}).await;
    let (_tx, incoming) = unbounded_channel();
    let (written, _rx) = unbounded_channel();
    let transport = ChannelTransport {
        incoming,
        written,
        stuck: Arc::new(AtomicBool::new(false)),
    };
    let state = env.gateway.shared.clone();
    let claims = claims("ann", &["*"], Duration::from_secs(60));
    let guard = state.admit(&claims.sub, None).ok().expect("under the caps");
    let future = serve(transport, state, claims, 1, guard);
    let size = std::mem::size_of_val(&future);
    assert!(size <= 2560, "the session future takes {size} bytes");
}
