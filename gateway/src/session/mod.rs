//! The session core: one client connection, whatever its front door.
//!
//! A [`Transport`] carries text frames; the core does everything else, in one task per
//! connection: it parses client frames ([`ClientFrame`]), joins and leaves rooms, pipelines
//! publishes to the broker and acks them once durable, delivers the rooms' messages without gap
//! or duplicate, and runs the connection's timers and limits. WebSocket (`crate::ws`) is one
//! adapter over it.
//!
//! # Layout
//! - this file: [`serve`] and the event loop, writing with a deadline.
//! - `transport`: the [`Transport`] trait, what it receives ([`Incoming`]) and the close codes
//!   ([`Close`]).
//! - `commands`: client frames: join, leave, refresh, and error answers.
//! - `publish`: publishes, pipelined, answered in order.
//! - `delivery`: per-room delivery state, duplicate filter, gap fill and history replay.
//! - `token`: the token's notice, expiry and grace.
//!
//! # The loop
//! The loop waits for the first of: shutdown, slow-consumer mark, the token's timer, the idle
//! deadline, the ping timer, a publish confirm, a client frame (while fewer than
//! [`PUBLISH_PIPELINE`] publishes are in flight) and fan-out. What it handles queues frames;
//! they are then written with one flush, within `write_timeout`. A client whose socket accepts
//! no writes for that long is closed as a slow consumer (4008), whatever was being written
//! (live messages, a history replay, error frames).
//!
//! # Joins, replays and delivery
//! 1. The membership is registered; the first local member of a room subscribes to its fan-out
//!    and the join waits until that subscription is in effect.
//! 2. The core reads the room's last seq `L` and queues `joined{room, seq: L}`.
//! 3. With `since`, it then replays every stored message after `since`, read and written in
//!    pages of at most `replay_bytes`: a page is written (and flushed) before the next is read,
//!    so a replay holds one page per connection. It remembers the last seq sent; without
//!    `since` it remembers `L`.
//! 4. Fan-out queued meanwhile is handled after the join: a seq at or below the last one sent
//!    is a duplicate and dropped, the next seq is sent, a later seq means messages were missed
//!    and the missing range is replayed from the store first. The boundary between history and
//!    live messages has neither gap nor duplicate.
//!
//! # Slow consumers
//! Fan-out never waits for a connection: a member whose queue is full is marked slow, and the
//! core closes it with 4008 ("slow consumer: reconnect with since") within `close_timeout`.

mod commands;
mod delivery;
mod publish;
mod token;
mod transport;

#[cfg(test)]
mod tests;

pub(crate) use transport::{Close, Gone, Incoming, Transport};

use crate::auth::Claims;
use crate::connections::ConnectionGuard;
use crate::limits::ConnectionLimits;
use crate::outbound::{ConnId, MemberHandle, Outbound, OutboundRx, Received};
use crate::server::GatewayState;
use axum::extract::ws::Utf8Bytes;
use delivery::Delivery;
use publish::Publishes;
use roomcast_schemas::ServerFrame;
use std::sync::Arc;
use token::{TokenClock, TokenEvent, TokenTimes};
use tokio::time::Instant;

/// Most publishes of one connection awaiting the broker's confirm; the next frame is read once
/// one of them is answered.
pub(crate) const PUBLISH_PIPELINE: usize = 128;

/// Most fan-out items handled before one flush.
const WRITE_BATCH: usize = 128;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The client's side is gone: nothing more to write.
    Gone,
    /// Send this close (after the frames already queued, except for a slow consumer).
    Close(Close),
}

impl From<Gone> for End {
    fn from(_: Gone) -> End {
        End::Gone
    }
}

/// One connection's state.
pub(crate) struct Session {
    /// The gateway this connection belongs to.
    gateway: Arc<GatewayState>,
    /// The verified token's claims (replaced by `refresh`).
    claims: Claims,
    /// The token's notice, expiry and grace.
    token: TokenClock,
    /// This connection's id in the room registry.
    conn: ConnId,
    /// The way into this connection's queue, as registered in its rooms.
    member: MemberHandle,
    /// Fan-out for this connection.
    rx: OutboundRx,
    /// Per joined room, the last seq delivered.
    delivery: Delivery,
    /// Publishes awaiting their confirms.
    publishes: Publishes,
    /// Publish, join and replay limits of this connection.
    limiter: ConnectionLimits,
    /// Frames waiting for the next flush.
    out: Vec<Utf8Bytes>,
}

/// Runs a connection on `transport` until it ends; `guard` counts it against the connection
/// caps until then.
pub(crate) async fn serve<T: Transport>(
    mut transport: T,
    gateway: Arc<GatewayState>,
    claims: Claims,
    conn: ConnId,
    guard: ConnectionGuard,
) {
    let mut session = Session::new(gateway, claims, conn);
    let end = session.run(&mut transport).await;
    Box::pin(session.finish(&mut transport, end)).await;
    drop(guard);
    tracing::debug!(conn, ?end, "connection ended");
}

impl Session {
    fn new(gateway: Arc<GatewayState>, claims: Claims, conn: ConnId) -> Session {
        let config = &gateway.config;
        let (member, rx) = MemberHandle::new(config.outbound_queue);
        let token = TokenClock::new(claims.exp, token_times(&gateway));
        Session {
            limiter: gateway.limits.connection(),
            token,
            claims,
            conn,
            member,
            rx,
            delivery: Delivery::default(),
            publishes: Publishes::default(),
            out: Vec::new(),
            gateway,
        }
    }

    /// The event loop; returns how the session ends.
    async fn run<T: Transport>(&mut self, transport: &mut T) -> End {
        let config = self.gateway.config.clone();
        let shutdown = self.gateway.sessions_stop.clone();
        // Created once: a fresh `cancelled()` future per turn would register a waiter each time.
        let stopping = shutdown.cancelled();
        let idle = tokio::time::sleep(config.idle_timeout);
        let ping = tokio::time::sleep(config.ping_interval);
        let token = tokio::time::sleep_until(self.token.deadline());
        tokio::pin!(stopping, idle, ping, token);
        // Moved on by every input; the idle timer looks at it when it fires, rather than being
        // reset for every frame.
        let mut last_seen = Instant::now();
        loop {
            let room_for_more = self.publishes.has_room();
            let step = tokio::select! {
                biased;
                _ = &mut stopping => return End::Close(Close::GOING_AWAY),
                _ = &mut token => self.on_token_timer(),
                _ = &mut idle => {
                    let due = last_seen + config.idle_timeout;
                    if Instant::now() >= due {
                        return End::Close(Close::IDLE);
                    }
                    idle.as_mut().reset(due);
                    Ok(())
                }
                _ = &mut ping => {
                    ping.as_mut().reset(Instant::now() + config.ping_interval);
                    self.write(transport, Write::Ping).await
                }
                Some(answer) = self.publishes.next_answer() => {
                    self.answer_publish(answer);
                    while let Some(answer) = self.publishes.ready_answer() {
                        self.answer_publish(answer);
                    }
                    Ok(())
                }
                incoming = transport.recv(), if room_for_more => {
                    last_seen = Instant::now();
                    Box::pin(self.on_incoming(transport, incoming)).await
                }
                received = self.rx.recv() => match received {
                    Received::Item(item) => self.on_fanout_items(transport, item).await,
                    Received::Slow => return self.slow_consumer(),
                },
            };
            if let Err(end) = step {
                return end;
            }
            if token.deadline() != self.token.deadline() {
                token.as_mut().reset(self.token.deadline());
            }
            if let Err(end) = self.write(transport, Write::Queued).await {
                return end;
            }
        }
    }

    /// Handles `first` and whatever else fan-out queued (up to a batch).
    async fn on_fanout_items<T: Transport>(
        &mut self,
        transport: &mut T,
        first: Outbound,
    ) -> Result<(), End> {
        self.on_fanout(transport, first).await?;
        for _ in 1..WRITE_BATCH {
            match self.rx.try_recv() {
                Some(item) => self.on_fanout(transport, item).await?,
                None => break,
            }
        }
        Ok(())
    }

    fn on_token_timer(&mut self) -> Result<(), End> {
        match self.token.fire() {
            TokenEvent::Notice => {
                let exp = self.token.exp();
                self.queue(&ServerFrame::TokenExpiring { exp });
                Ok(())
            }
            TokenEvent::Expired => Ok(()),
            TokenEvent::Close => Err(End::Close(Close::TOKEN_EXPIRED)),
        }
    }

    /// Handles what the transport received.
    async fn on_incoming<T: Transport>(
        &mut self,
        transport: &mut T,
        incoming: Incoming,
    ) -> Result<(), End> {
        match incoming {
            Incoming::Text(text) => {
                if text.len() > self.gateway.config.max_frame_bytes {
                    return Err(self.too_large());
                }
                self.on_text(transport, text.as_str()).await
            }
            Incoming::Binary => {
                self.queue_error(commands::binary_frame());
                Ok(())
            }
            Incoming::Alive => Ok(()),
            Incoming::TooLarge => Err(self.too_large()),
            Incoming::Broken(close) => Err(End::Close(close)),
            Incoming::Closed => Err(End::Gone),
        }
    }

    fn too_large(&mut self) -> End {
        self.queue_error(commands::too_large(self.gateway.config.max_frame_bytes));
        End::Close(Close::TOO_BIG)
    }

    fn slow_consumer(&mut self) -> End {
        // What is still queued would only wait on a socket that does not drain.
        self.out.clear();
        tracing::info!(conn = self.conn, "closing a slow consumer");
        End::Close(Close::SLOW_CONSUMER)
    }

    /// Queues a server frame for the next flush.
    fn queue(&mut self, frame: &ServerFrame) {
        self.out.push(Utf8Bytes::from(frame.to_json()));
    }

    /// Writes the queued frames (or a ping) with one flush, within `write_timeout`.
    async fn write<T: Transport>(&mut self, transport: &mut T, what: Write) -> Result<(), End> {
        if what == Write::Queued && self.out.is_empty() {
            return Ok(());
        }
        let deadline = self.gateway.config.write_timeout;
        let out = &mut self.out;
        let written = tokio::time::timeout(deadline, async {
            for frame in out.drain(..) {
                transport.feed(frame).await?;
            }
            match what {
                Write::Queued => transport.flush().await,
                Write::Ping => transport.ping().await,
            }
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Gone)) => Err(End::Gone),
            Err(_) => Err(self.slow_consumer()),
        }
    }

    /// Leaves every room, then sends the close (after the queued frames) within
    /// `close_timeout` and waits as long again for the client's close.
    async fn finish<T: Transport>(&mut self, transport: &mut T, end: End) {
        for room in self.delivery.rooms() {
            self.gateway.rooms.leave(&room, self.conn).await;
        }
        // Free queued fan-out before a possibly long wait on a stuck socket.
        self.rx.close();
        let End::Close(close) = end else {
            return;
        };
        if close.code == Close::SLOW_CONSUMER.code {
            self.gateway.count_slow_consumer();
        }
        let timeout = self.gateway.config.close_timeout;
        let out = &mut self.out;
        let sent = tokio::time::timeout(timeout, async {
            for frame in out.drain(..) {
                transport.feed(frame).await?;
            }
            transport.close(close).await
        })
        .await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = tokio::time::timeout(timeout, transport.drain()).await;
        }
    }
}

/// What [`Session::write`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// The queued frames.
    Queued,
    /// The queued frames and a keep-alive.
    Ping,
}

fn token_times(gateway: &GatewayState) -> TokenTimes {
    TokenTimes {
        notice: gateway.config.token_notice,
        leeway: std::time::Duration::from_secs(gateway.config.auth.leeway_secs),
        grace: gateway.config.token_grace,
    }
}
