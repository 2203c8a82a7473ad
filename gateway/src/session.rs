//! One WebSocket connection: a reader task that handles client frames and a writer task that
//! owns the socket's sending half.
//!
//! # Reader
//! Parses each text frame into a [`ClientFrame`]; a bad frame gets an `error` frame and the
//! connection stays usable, a frame over `max_frame_bytes` gets `too_large` and close 1009.
//! Publishes are pipelined: each is handed to the broker in the order the connection sent it
//! (its place in the room's order is fixed before the next frame is handled), and up to
//! [`PUBLISH_PIPELINE`] wait for their confirms at once; `ack` is sent only after the broker
//! confirmed durable storage, in the order of the publishes.
//!
//! # Writer and delivery state
//! The writer drains the connection's bounded outbound queue, feeding several frames to the
//! socket before one flush. It keeps, per joined room, the last seq delivered: a room message
//! with a seq at or below it is a duplicate and dropped, the next seq is sent, a later seq
//! means messages were missed and the missing range is read from the store first.
//!
//! # Join ordering
//! 1. The reader registers the membership; the first local member of a room subscribes to its
//!    fan-out and the join waits until that subscription is in effect.
//! 2. The reader then queues a join command for the writer. Room messages queued before it
//!    (the writer has no state for the room yet) are dropped: they were stored before the
//!    writer reads the store below, so the replay covers them.
//! 3. The writer reads the room's last seq `L` and sends `joined{room, seq: L}` first.
//! 4. With `since`, it then sends every stored message with a seq above `since`, read in pages
//!    of `history_page`, and remembers the last one sent; without `since` it remembers `L`.
//! 5. Live messages follow. Any message stored after step 3 arrives through fan-out (which was
//!    already in effect) with a higher seq: the duplicate filter and gap repair above make the
//!    boundary exact, with no gap and no duplicate.
//!
//! # Slow consumers
//! Fan-out never waits for a connection: a member whose queue is full is marked slow, stops
//! receiving, gets close code 4008 ("slow consumer: reconnect with since", sent within
//! `close_timeout` since its socket may be stuck) and is dropped. Memory per connection is
//! bounded by the queue capacity and the socket buffers.

use crate::auth::Claims;
use crate::rooms::{ConnId, MemberHandle};
use crate::server::Shared;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use roomcast_broker::BrokerError;
use roomcast_schemas::{
    ClientFrame, ENVELOPE_VERSION, ErrorCode, InboundEvent, ServerFrame, names,
};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Close code for a client that does not read fast enough.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close reason sent with [`CLOSE_SLOW_CONSUMER`].
pub const SLOW_CONSUMER_REASON: &str = "slow consumer: reconnect with since";
/// Close code when the gateway shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code when messages cannot be delivered without a gap (store unavailable).
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code for an idle connection or a protocol violation.
pub const CLOSE_POLICY: u16 = 1008;

/// Most queued items the writer handles before flushing the socket.
const WRITE_BATCH: usize = 128;

/// Messages of one room handed to every member at once: `(seq, message frame)` in seq order.
pub(crate) type FanoutBatch = Arc<[(u64, Utf8Bytes)]>;

/// Work for a connection's writer, in order.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame from the reader (ack, error).
    Frame(Utf8Bytes),
    /// Consecutive fan-out messages of one room, in seq order; the batch and its serialized
    /// `message` frames are shared between all members of the room.
    Fanout {
        /// Room name.
        room: Arc<str>,
        /// `(seq, frame)` of each message.
        messages: FanoutBatch,
    },
    /// Start delivering a room: send `joined`, replay after `since`.
    Join {
        /// Room name.
        room: Arc<str>,
        /// Last seq the client has seen.
        since: Option<u64>,
    },
    /// Stop delivering a room and send `left`.
    Leave {
        /// Room name.
        room: Arc<str>,
    },
    /// Fan-out may have lost messages: read the room's newer messages from the store.
    Resync {
        /// Room name.
        room: Arc<str>,
    },
    /// Send a close frame and end.
    Close {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
}

/// Why the reader stopped.
enum ReaderEnd {
    /// The client closed, the socket failed, or the writer ended.
    Done,
    /// The client sent a frame over the limit.
    TooLarge,
    /// Nothing received for `idle_timeout`.
    Idle,
}

/// Runs a connection until it ends.
pub(crate) async fn run(socket: WebSocket, shared: Arc<Shared>, claims: Claims, conn: ConnId) {
    let config = &shared.config;
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(config.outbound_queue);
    // Cancelled by the writer when it ends, so that the reader stops too.
    let stop = CancellationToken::new();
    let slow = CancellationToken::new();
    let backlog = Arc::new(AtomicUsize::new(0));
    let member = MemberHandle {
        tx: tx.clone(),
        slow: slow.clone(),
        backlog: backlog.clone(),
        limit: config.outbound_queue,
    };

    let writer = Writer {
        sink,
        shared: shared.clone(),
        rooms: HashMap::new(),
        close_timeout: config.close_timeout,
        backlog,
    };
    let writer_task =
        tokio::spawn(writer.run(rx, stop.clone(), slow, shared.sessions_stop.clone()));

    let mut reader = Reader {
        inflight: None,
        shared: shared.clone(),
        claims,
        conn,
        tx,
        member,
        joined: HashSet::new(),
        limiter: shared.limits.connection(),
        stop: stop.clone(),
    };
    let mut stream = stream;
    let end = reader.run(&mut stream, &stop).await;
    match end {
        ReaderEnd::TooLarge => {
            let frame = ServerFrame::error(
                ErrorCode::TooLarge,
                format!("frames are limited to {} bytes", config.max_frame_bytes),
            );
            let close = Outbound::Close {
                code: CLOSE_TOO_BIG,
                reason: "frame too large",
            };
            reader.queue_then_close(frame, close).await;
        }
        ReaderEnd::Idle => {
            let close = Outbound::Close {
                code: CLOSE_POLICY,
                reason: "idle timeout",
            };
            let _ = tokio::time::timeout(config.close_timeout, reader.tx.send(close)).await;
        }
        ReaderEnd::Done => stop.cancel(),
    }
    let Reader {
        joined, tx, member, ..
    } = reader;
    for room in joined {
        shared.rooms.leave(&room, conn).await;
    }
    // With the member gone from every room and the reader's sender dropped, the writer sees
    // the end of its queue after the last queued frame.
    drop(member);
    drop(tx);
    let grace = config.close_timeout + Duration::from_secs(1);
    let close_sent = match tokio::time::timeout(grace, writer_task).await {
        Ok(Ok(close_sent)) => close_sent,
        _ => {
            stop.cancel();
            false
        }
    };
    if close_sent {
        // Complete the closing handshake: read (and ignore) what the client still sends
        // until its close frame, so that it receives ours before the connection is dropped.
        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = tokio::time::timeout(config.close_timeout, drain).await;
    }
    tracing::debug!(conn, "connection ended");
}

/// Most publishes of one connection awaiting the broker's confirm; the next frame is read once
/// one of them is answered.
pub(crate) const PUBLISH_PIPELINE: usize = 128;

/// A publish in flight: its id, room and what the broker answered.
type Confirming = Pin<Box<dyn Future<Output = (String, String, Result<(), BrokerError>)> + Send>>;

/// What the reader does next.
enum Step {
    Stop,
    Confirmed(String, String, Result<(), BrokerError>),
    Read(Result<Option<Result<Message, axum::Error>>, tokio::time::error::Elapsed>),
}

/// The next answer of `inflight`, or `None` when nothing is in flight.
async fn next_confirmed(
    inflight: &mut Option<FuturesOrdered<Confirming>>,
) -> Option<(String, String, Result<(), BrokerError>)> {
    match inflight {
        Some(inflight) if !inflight.is_empty() => inflight.next().await,
        _ => None,
    }
}

struct Reader {
    /// Publishes handed to the broker, answered in order as their confirms arrive (created on
    /// the first publish).
    inflight: Option<FuturesOrdered<Confirming>>,
    shared: Arc<Shared>,
    claims: Claims,
    conn: ConnId,
    tx: mpsc::Sender<Outbound>,
    member: MemberHandle,
    joined: HashSet<Arc<str>>,
    limiter: crate::limits::ConnectionLimits,
    /// Cancelled when the connection is closing.
    stop: CancellationToken,
}

impl Reader {
    async fn run(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        stop: &CancellationToken,
    ) -> ReaderEnd {
        let idle = self.shared.config.idle_timeout;
        let max = self.shared.config.max_frame_bytes;
        loop {
            let room_for_more = self
                .inflight
                .as_ref()
                .is_none_or(|f| f.len() < PUBLISH_PIPELINE);
            let step = tokio::select! {
                biased;
                _ = stop.cancelled() => Step::Stop,
                Some((id, room, result)) = next_confirmed(&mut self.inflight) => {
                    Step::Confirmed(id, room, result)
                }
                next = tokio::time::timeout(idle, stream.next()), if room_for_more => Step::Read(next),
            };
            let next = match step {
                Step::Stop => return ReaderEnd::Done,
                Step::Confirmed(id, room, result) => {
                    if !self.answer_publish(id, room, result).await {
                        return ReaderEnd::Done;
                    }
                    continue;
                }
                Step::Read(next) => next,
            };
            let message = match next {
                Err(_) => return ReaderEnd::Idle,
                Ok(None) => return ReaderEnd::Done,
                Ok(Some(Err(err))) => {
                    if is_too_large(err) {
                        return ReaderEnd::TooLarge;
                    }
                    return ReaderEnd::Done;
                }
                Ok(Some(Ok(message))) => message,
            };
            let ok = match message {
                Message::Text(text) => {
                    if text.len() > max {
                        return ReaderEnd::TooLarge;
                    }
                    // Not raced against `stop`: a join must finish (or fail) as a whole; a
                    // publish races it itself.
                    self.handle_text(text.as_str()).await
                }
                Message::Binary(_) => {
                    self.send(ServerFrame::error(
                        ErrorCode::InvalidFrame,
                        "binary frames are not supported: send JSON text frames",
                    ))
                    .await
                }
                // Pings are answered by the protocol layer; pongs only prove liveness.
                Message::Ping(_) | Message::Pong(_) => true,
                // The protocol layer queued the close reply; the next read sends it and then
                // reports the end of the stream.
                Message::Close(_) => true,
            };
            if !ok {
                return ReaderEnd::Done;
            }
        }
    }

    /// Handles one text frame; `false` when the writer is gone.
    async fn handle_text(&mut self, text: &str) -> bool {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(err) => {
                let message = format!("invalid frame: {}", describe_json_error(&err));
                return self
                    .send(ServerFrame::error(ErrorCode::InvalidFrame, message))
                    .await;
            }
        };
        match frame {
            ClientFrame::Join { room, since } => self.join(room, since).await,
            ClientFrame::Leave { room } => self.leave(room).await,
            ClientFrame::Publish {
                id,
                room,
                event,
                data,
            } => self.publish(id, room, event, data).await,
        }
    }

    /// Answers a frame with an invalid name with `invalid_frame`; `id` and `room` are echoed
    /// only when they are themselves valid.
    async fn invalid_name(
        &mut self,
        id: Option<String>,
        room: Option<String>,
        err: names::NameError,
    ) -> bool {
        self.send(room_error(
            ErrorCode::InvalidFrame,
            id,
            room,
            err.to_string(),
        ))
        .await
    }

    async fn join(&mut self, room: String, since: Option<u64>) -> bool {
        if let Err(err) = names::check_room(&room) {
            return self.invalid_name(None, None, err).await;
        }
        if !self.claims.may_access(&room) {
            let message = "the token does not allow this room".to_owned();
            return self
                .send(room_error(
                    ErrorCode::ForbiddenRoom,
                    None,
                    Some(room),
                    message,
                ))
                .await;
        }
        let room: Arc<str> = match self.joined.get(room.as_str()) {
            // Joining again restarts delivery: `joined`, then the replay after `since`.
            Some(existing) => existing.clone(),
            None => {
                let limit = self.shared.config.max_rooms_per_connection;
                if self.joined.len() >= limit {
                    let message = format!("a connection may hold at most {limit} rooms");
                    return self
                        .send(room_error(
                            ErrorCode::TooManyRooms,
                            None,
                            Some(room),
                            message,
                        ))
                        .await;
                }
                let room: Arc<str> = Arc::from(room);
                // Recorded before the registry call so that cleanup covers a partial join.
                self.joined.insert(room.clone());
                if let Err(err) = self
                    .shared
                    .rooms
                    .join(&room, self.conn, self.member.clone())
                    .await
                {
                    self.joined.remove(&room);
                    tracing::warn!(room = &*room, error = %err, "fan-out subscribe failed");
                    let message = "the room cannot be joined right now; try again".to_owned();
                    return self
                        .send(room_error(
                            ErrorCode::Unavailable,
                            None,
                            Some(room.to_string()),
                            message,
                        ))
                        .await;
                }
                room
            }
        };
        self.tx.send(Outbound::Join { room, since }).await.is_ok()
    }

    async fn leave(&mut self, room: String) -> bool {
        if let Err(err) = names::check_room(&room) {
            return self.invalid_name(None, None, err).await;
        }
        let room = match self.joined.take(room.as_str()) {
            Some(room) => {
                self.shared.rooms.leave(&room, self.conn).await;
                room
            }
            None => Arc::from(room),
        };
        // Leaving a room that is not joined is answered with `left` too (idempotent).
        self.tx.send(Outbound::Leave { room }).await.is_ok()
    }

    async fn publish(
        &mut self,
        id: String,
        room: String,
        event: String,
        data: serde_json::Value,
    ) -> bool {
        if let Err(err) = names::check_id(&id) {
            // Echo the room only when it is a valid name: invalid names are never echoed.
            let room = names::check_room(&room).is_ok().then_some(room);
            return self.invalid_name(None, room, err).await;
        }
        if let Err(err) = names::check_room(&room) {
            return self.invalid_name(Some(id), None, err).await;
        }
        if let Err(err) = names::check_event(&event) {
            return self.invalid_name(Some(id), Some(room), err).await;
        }
        if !self.joined.contains(room.as_str()) {
            let message = "join the room before publishing to it".to_owned();
            return self
                .send(room_error(
                    ErrorCode::NotJoined,
                    Some(id),
                    Some(room),
                    message,
                ))
                .await;
        }
        if let Err(limited) = self
            .limiter
            .check_publish(&self.shared.limits, &self.claims.sub)
        {
            let retry_after_ms = limited.retry_after_ms().max(1);
            let frame = ServerFrame::Error {
                code: ErrorCode::RateLimited,
                id: Some(id),
                room: Some(room),
                message: "too many publishes; retry later".to_owned(),
                retry_after_ms: Some(retry_after_ms),
            };
            return self.send(frame).await;
        }
        let payload = match encode_event(id.clone(), room.clone(), event, &self.claims.sub, &data) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(error = %err, "encoding an inbound event failed");
                let message = "the event could not be encoded".to_owned();
                return self
                    .send(room_error(
                        ErrorCode::Internal,
                        Some(id),
                        Some(room),
                        message,
                    ))
                    .await;
            }
        };
        let started = tokio::select! {
            biased;
            // The connection is closing: no answer (never an ack for an unconfirmed event).
            _ = self.stop.cancelled() => return false,
            started = self.shared.broker.start_publish(&room, payload) => started,
        };
        match started {
            Ok(pending) => {
                // Its place in the room's order is fixed; the ack waits for durability while
                // the next frames are read.
                let confirming: Confirming = Box::pin(async move { (id, room, pending.await) });
                self.inflight
                    .get_or_insert_with(FuturesOrdered::new)
                    .push_back(confirming);
                true
            }
            Err(err) => self.answer_publish(id, room, Err(err)).await,
        }
    }

    /// Answers a publish: `ack` once it is durable, `unavailable` otherwise.
    async fn answer_publish(
        &mut self,
        id: String,
        room: String,
        result: Result<(), BrokerError>,
    ) -> bool {
        match result {
            Ok(()) => self.send(ServerFrame::Ack { id }).await,
            Err(err) => {
                tracing::warn!(room, error = %err, "publishing an event failed");
                let message = "the event could not be stored; retry with the same id".to_owned();
                self.send(room_error(
                    ErrorCode::Unavailable,
                    Some(id),
                    Some(room),
                    message,
                ))
                .await
            }
        }
    }

    /// Queues a frame for the writer; `false` when the writer is gone.
    async fn send(&mut self, frame: ServerFrame) -> bool {
        self.tx
            .send(Outbound::Frame(Utf8Bytes::from(frame.to_json())))
            .await
            .is_ok()
    }

    async fn queue_then_close(&mut self, frame: ServerFrame, close: Outbound) {
        let timeout = self.shared.config.close_timeout;
        let _ = tokio::time::timeout(timeout, async {
            if self.send(frame).await {
                let _ = self.tx.send(close).await;
            }
        })
        .await;
    }
}

/// The envelope published for a client's event.
fn encode_event(
    id: String,
    room: String,
    event: String,
    from: &str,
    data: &serde_json::Value,
) -> Result<Bytes, serde_json::Error> {
    let envelope = InboundEvent {
        v: ENVELOPE_VERSION,
        id,
        room,
        event,
        from: from.to_owned(),
        ts: now_ms(),
        data: serde_json::value::to_raw_value(data)?,
    };
    serde_json::to_vec(&envelope).map(Bytes::from)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn room_error(
    code: ErrorCode,
    id: Option<String>,
    room: Option<String>,
    message: String,
) -> ServerFrame {
    ServerFrame::Error {
        code,
        id,
        room,
        message,
        retry_after_ms: None,
    }
}

/// What went wrong in a client's JSON, without echoing the input.
fn describe_json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => "not valid JSON".to_owned(),
        // Unknown type, unknown or missing field, wrong value type: serde names the field.
        Category::Data => {
            let text = err.to_string();
            match text.rfind(" at line ") {
                Some(index) => text[..index].to_owned(),
                None => text,
            }
        }
    }
}

/// Whether a read error is a message over the protocol layer's size limit.
fn is_too_large(err: axum::Error) -> bool {
    match err.into_inner().downcast::<tungstenite::Error>() {
        Ok(err) => matches!(*err, tungstenite::Error::Capacity(_)),
        Err(_) => false,
    }
}

/// Why the writer stopped early.
enum WriterStop {
    /// The socket failed or the connection is over: nothing more to send.
    Gone,
    /// Send this close frame, then end.
    Close(u16, &'static str),
    /// A close frame was sent (`true`) or could not be sent (`false`): end.
    Closed(bool),
}

struct Writer {
    sink: SplitSink<WebSocket, Message>,
    shared: Arc<Shared>,
    /// Per joined room, the last seq delivered.
    rooms: HashMap<Arc<str>, u64>,
    close_timeout: Duration,
    /// Fan-out messages queued for this connection (see [`MemberHandle`]).
    backlog: Arc<AtomicUsize>,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Outbound>,
        stop: CancellationToken,
        slow: CancellationToken,
        shutdown: CancellationToken,
    ) -> bool {
        let ping_every = self.shared.config.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Created once: a fresh `cancelled()` future per message would register and drop a
        // waiter on each token every time the writer wakes.
        let stopped = stop.cancelled();
        let too_slow = slow.cancelled();
        let shutting_down = shutdown.cancelled();
        tokio::pin!(stopped, too_slow, shutting_down);
        let outcome = loop {
            let step = tokio::select! {
                biased;
                _ = &mut stopped => Err(WriterStop::Gone),
                _ = &mut too_slow => Err(WriterStop::Close(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)),
                _ = &mut shutting_down => Err(WriterStop::Close(CLOSE_GOING_AWAY, "server shutting down")),
                item = rx.recv() => item.ok_or(WriterStop::Gone).map(Some),
                _ = ping.tick() => Ok(None),
            };
            let work = match step {
                Err(outcome) => break outcome,
                Ok(Some(first)) => Some(first),
                Ok(None) => None,
            };
            let result = tokio::select! {
                biased;
                _ = &mut stopped => Err(WriterStop::Gone),
                _ = &mut too_slow => Err(WriterStop::Close(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)),
                _ = &mut shutting_down => Err(WriterStop::Close(CLOSE_GOING_AWAY, "server shutting down")),
                result = async {
                    match work {
                        Some(first) => self.write_batch(first, &mut rx).await,
                        None => self.sink.send(Message::Ping(Bytes::new())).await.map_err(|_| WriterStop::Gone),
                    }
                } => result,
            };
            if let Err(outcome) = result {
                break outcome;
            }
        };
        // Free the queued frames before a possibly long wait on a stuck socket.
        drop(rx);
        let close_sent = match outcome {
            WriterStop::Gone => false,
            WriterStop::Closed(sent) => sent,
            WriterStop::Close(code, reason) => {
                if code == CLOSE_SLOW_CONSUMER {
                    tracing::info!("closing a slow consumer");
                }
                self.close(code, reason).await
            }
        };
        stop.cancel();
        close_sent
    }

    /// Sends a close frame within `close_timeout`; whether it was sent.
    async fn close(&mut self, code: u16, reason: &'static str) -> bool {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let send = self.sink.send(Message::Close(Some(frame)));
        matches!(
            tokio::time::timeout(self.close_timeout, send).await,
            Ok(Ok(()))
        )
    }

    /// Handles `first` and whatever else is queued (up to a batch), then flushes once.
    async fn write_batch(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), WriterStop> {
        self.handle(first).await?;
        for _ in 1..WRITE_BATCH {
            match rx.try_recv() {
                Ok(item) => self.handle(item).await?,
                Err(_) => break,
            }
        }
        self.sink.flush().await.map_err(|_| WriterStop::Gone)
    }

    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), WriterStop> {
        self.sink
            .feed(Message::Text(frame))
            .await
            .map_err(|_| WriterStop::Gone)
    }

    async fn handle(&mut self, item: Outbound) -> Result<(), WriterStop> {
        match item {
            Outbound::Frame(frame) => self.feed(frame).await,
            Outbound::Fanout { room, messages } => {
                self.backlog.fetch_sub(messages.len(), Ordering::Relaxed);
                for (seq, frame) in messages.iter() {
                    self.deliver(&room, *seq, frame).await?;
                }
                Ok(())
            }
            Outbound::Join { room, since } => self.join(room, since).await,
            Outbound::Leave { room } => {
                self.rooms.remove(&room);
                let frame = ServerFrame::Left {
                    room: room.to_string(),
                };
                self.feed(Utf8Bytes::from(frame.to_json())).await
            }
            Outbound::Resync { room } => {
                if self.rooms.contains_key(&room) {
                    self.catch_up(&room, None).await?;
                }
                Ok(())
            }
            Outbound::Close { code, reason } => {
                Err(WriterStop::Closed(self.close(code, reason).await))
            }
        }
    }

    /// Delivers one fan-out message: drops a seq already delivered, fills a gap from the store
    /// first, and never delivers a room the writer is not (yet) delivering.
    async fn deliver(
        &mut self,
        room: &Arc<str>,
        seq: u64,
        frame: &Utf8Bytes,
    ) -> Result<(), WriterStop> {
        let Some(&last) = self.rooms.get(room) else {
            // Not delivering this room (yet): a join's replay covers it.
            return Ok(());
        };
        if seq <= last {
            return Ok(());
        }
        if seq > last + 1 {
            self.catch_up(room, Some(seq - 1)).await?;
        }
        let Some(last) = self.rooms.get_mut(room) else {
            return Ok(());
        };
        if seq > *last + 1 {
            // The store lacks seqs that fan-out already announced: deliver rather than
            // stall, and leave a trace of the inconsistency.
            tracing::error!(
                room = &**room,
                seq,
                last = *last,
                "store is missing messages announced by fan-out"
            );
        } else if seq <= *last {
            return Ok(());
        }
        *last = seq;
        self.feed(frame.clone()).await
    }

    async fn join(&mut self, room: Arc<str>, since: Option<u64>) -> Result<(), WriterStop> {
        // Delivery of the room restarts from the store's state.
        self.rooms.remove(&room);
        let last = match self.shared.store.last_seq(&room).await {
            Ok(last) => last,
            Err(err) => {
                tracing::warn!(room = &*room, error = %err, "reading the room's last seq failed");
                let frame = room_error(
                    ErrorCode::Unavailable,
                    None,
                    Some(room.to_string()),
                    "the room's messages cannot be read right now; join again".to_owned(),
                );
                return self.feed(Utf8Bytes::from(frame.to_json())).await;
            }
        };
        let joined = ServerFrame::Joined {
            room: room.to_string(),
            seq: last,
        };
        self.feed(Utf8Bytes::from(joined.to_json())).await?;
        match since {
            None => {
                self.rooms.insert(room, last);
            }
            Some(since) => {
                // A `since` beyond the store's end (e.g. a reset store) resumes from the end.
                self.rooms.insert(room.clone(), since.min(last));
                self.catch_up(&room, None).await?;
            }
        }
        Ok(())
    }

    /// Sends the stored messages of `room` after its last delivered seq, page by page, until
    /// `target` is delivered (or, without a target, the store has no more).
    async fn catch_up(&mut self, room: &Arc<str>, target: Option<u64>) -> Result<(), WriterStop> {
        let page = self.shared.config.history_page;
        loop {
            let Some(&last) = self.rooms.get(room) else {
                return Ok(());
            };
            if target.is_some_and(|target| last >= target) {
                return Ok(());
            }
            let messages = match self.shared.store.history(room, last, page).await {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(room = &**room, error = %err, "reading room history failed");
                    return Err(WriterStop::Close(
                        CLOSE_INTERNAL,
                        "history unavailable: reconnect with since",
                    ));
                }
            };
            let full_page = messages.len() >= page as usize;
            let mut delivered = last;
            for message in messages {
                if message.seq <= delivered {
                    continue;
                }
                self.feed(Utf8Bytes::from(message.to_frame_json())).await?;
                delivered = message.seq;
            }
            self.rooms.insert(room.clone(), delivered);
            if !full_page || delivered == last {
                return Ok(());
            }
        }
    }
}
