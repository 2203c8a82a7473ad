//! The bare baseline: a minimal tokio-tungstenite broadcast server speaking the same frames as
//! Roomcast (`join` → `joined`, `publish` → `ack` + `message` with a per-room `seq` to every
//! member), with no authentication, no broker and no storage. It shows what the machine can do
//! with the same WebSocket implementation and nothing else.
//!
//! Each connection has a reader (this task) and a writer task draining a bounded queue, feeding
//! up to 128 frames before one flush. A room keeps its seq and its members under its own lock;
//! a `message` frame is serialized once per publish and shared by every member. A member whose
//! queue is full is closed with 4008, like Roomcast's slow consumers.

use futures_util::{SinkExt, StreamExt};
use roomcast_schemas::{
    ClientFrame, ENVELOPE_VERSION, ErrorCode, FanoutMessage, ServerFrame, now_ms,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// Frames written before one flush.
const WRITE_BATCH: usize = 128;

/// Settings of the bare server.
#[derive(Debug, Clone, Copy)]
pub struct BareConfig {
    /// WebSocket read buffer per connection; `None`: tungstenite's default (128 KiB).
    pub read_buffer: Option<usize>,
    /// WebSocket write buffer per connection; `None`: tungstenite's default (128 KiB).
    pub write_buffer: Option<usize>,
    /// Frames queued per connection before it is closed as a slow consumer.
    pub queue: usize,
    /// Leave Nagle's algorithm on (no `TCP_NODELAY`): a diagnostic, to see what it costs.
    pub nagle: bool,
}

impl Default for BareConfig {
    fn default() -> Self {
        BareConfig {
            read_buffer: None,
            write_buffer: None,
            queue: 1024,
            nagle: false,
        }
    }
}

impl BareConfig {
    fn ws_config(&self) -> WebSocketConfig {
        let mut config = WebSocketConfig::default();
        if let Some(size) = self.read_buffer {
            config = config.read_buffer_size(size);
        }
        if let Some(size) = self.write_buffer {
            config = config.write_buffer_size(size);
        }
        config
    }
}

struct Member {
    queue: mpsc::Sender<Utf8Bytes>,
    slow: CancellationToken,
}

#[derive(Default)]
struct RoomState {
    seq: u64,
    members: HashMap<u64, Member>,
}

#[derive(Default)]
struct Room {
    state: Mutex<RoomState>,
}

impl Room {
    fn lock(&self) -> std::sync::MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct BareState {
    config: BareConfig,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    next_id: AtomicU64,
}

/// Serves connections from `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: BareConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(BareState {
        config,
        rooms: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(connection(stream, peer, shared.clone(), shutdown.clone()));
            }
            // Out of file descriptors and the like: keep serving the others.
            Err(err) => {
                eprintln!("bare-server: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    _peer: SocketAddr,
    shared: Arc<BareState>,
    shutdown: CancellationToken,
) {
    if !shared.config.nagle {
        let _ = stream.set_nodelay(true);
    }
    let Ok(ws) =
        tokio_tungstenite::accept_async_with_config(stream, Some(shared.config.ws_config())).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (queue, mut outbound) = mpsc::channel::<Utf8Bytes>(shared.config.queue.max(1));
    let slow = CancellationToken::new();
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            if sink.feed(Message::Text(frame)).await.is_err() {
                return sink;
            }
            for _ in 1..WRITE_BATCH {
                match outbound.try_recv() {
                    Ok(frame) => {
                        if sink.feed(Message::Text(frame)).await.is_err() {
                            return sink;
                        }
                    }
                    Err(_) => break,
                }
            }
            if sink.flush().await.is_err() {
                return sink;
            }
        }
        sink
    });

    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut session = Session {
        id,
        shared: &shared,
        queue: queue.clone(),
        slow: slow.clone(),
        joined: HashMap::new(),
    };
    let close = loop {
        let message = tokio::select! {
            _ = slow.cancelled() => break Some((4008, "slow consumer")),
            _ = shutdown.cancelled() => break Some((1001, "going away")),
            message = stream.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                if !session.handle(&text) {
                    break Some((4008, "slow consumer"));
                }
            }
            Some(Ok(Message::Binary(_))) => {
                session.reply(ServerFrame::error(
                    ErrorCode::InvalidFrame,
                    "binary frames are not supported",
                ));
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
            Some(Ok(_)) => {}
        }
    };
    session.leave_all();
    drop(session);
    drop(queue);
    if close.is_none() {
        writer.abort();
        return;
    }
    // Stop queueing, let the writer end, then send the close frame.
    if let Ok(mut sink) = writer.await
        && let Some((code, reason)) = close
    {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

struct Session<'a> {
    id: u64,
    shared: &'a BareState,
    queue: mpsc::Sender<Utf8Bytes>,
    slow: CancellationToken,
    joined: HashMap<String, Arc<Room>>,
}

impl Session<'_> {
    /// Queues a frame for this connection; false when its queue is full.
    fn reply(&self, frame: ServerFrame) -> bool {
        self.queue
            .try_send(Utf8Bytes::from(frame.to_json()))
            .is_ok()
    }

    /// Handles one client frame; false when the connection must close as a slow consumer.
    fn handle(&mut self, text: &str) -> bool {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(_) => {
                return self.reply(ServerFrame::error(ErrorCode::InvalidFrame, "invalid frame"));
            }
        };
        match frame {
            ClientFrame::Join { room, since: _ } => {
                let room = room.to_string();
                let handle = {
                    let mut rooms = self
                        .shared
                        .rooms
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    rooms.entry(room.clone()).or_default().clone()
                };
                let mut state = handle.lock();
                state.members.insert(
                    self.id,
                    Member {
                        queue: self.queue.clone(),
                        slow: self.slow.clone(),
                    },
                );
                // Queued under the room's lock: `joined` precedes every message of the room.
                let ok = self.reply(ServerFrame::Joined {
                    room: room.clone(),
                    seq: state.seq,
                });
                drop(state);
                self.joined.insert(room, handle);
                ok
            }
            ClientFrame::Leave { room } => {
                let room = room.to_string();
                if let Some(handle) = self.joined.remove(&room) {
                    handle.lock().members.remove(&self.id);
                }
                self.reply(ServerFrame::Left { room })
            }
            ClientFrame::Publish {
                id,
                room,
                event,
                data,
            } => {
                let (id, room, event) = (id.to_string(), room.to_string(), event.to_string());
                let Some(handle) = self.joined.get(&room).cloned() else {
                    return self.reply(ServerFrame::Error {
                        code: ErrorCode::NotJoined,
                        id: Some(id),
                        room: Some(room),
                        message: "join the room before publishing".into(),
                        retry_after_ms: None,
                    });
                };
                let ack_ok = self.reply(ServerFrame::Ack { id: id.clone() });
                let mut state = handle.lock();
                state.seq += 1;
                let message = FanoutMessage {
                    v: ENVELOPE_VERSION,
                    room,
                    seq: state.seq,
                    id,
                    event,
                    from: "anonymous".into(),
                    ts: now_ms(),
                    data,
                };
                let frame = Utf8Bytes::from(message.to_frame_json());
                state
                    .members
                    .retain(|_, member| match member.queue.try_send(frame.clone()) {
                        Ok(()) => true,
                        Err(_) => {
                            member.slow.cancel();
                            false
                        }
                    });
                ack_ok
            }
            ClientFrame::Refresh { .. } => {
                self.reply(ServerFrame::error(ErrorCode::InvalidFrame, "not supported"))
            }
        }
    }

    fn leave_all(&mut self) {
        for (_, handle) in self.joined.drain() {
            handle.lock().members.remove(&self.id);
        }
    }
}
