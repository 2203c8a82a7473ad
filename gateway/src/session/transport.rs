//! What the session core needs from a front door, and the close codes it may end with.
//!
//! A transport carries text frames both ways and knows how to keep its connection alive and how
//! to close it; everything else (limits, rooms, publishes, delivery, timers) is the core's.

use axum::extract::ws::Utf8Bytes;
use std::future::Future;

/// The client's side went away: nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

/// A close code with its reason, as sent in a WebSocket close frame (other transports carry
/// the same pair in their own way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    /// The close code (RFC 6455 §7.4, or one of Roomcast's 4xxx codes).
    pub(crate) code: u16,
    /// A short human-readable reason.
    pub(crate) reason: &'static str,
}

impl Close {
    /// The gateway is shutting down.
    pub(crate) const GOING_AWAY: Close = Close {
        code: 1001,
        reason: "server shutting down",
    };
    /// The client broke the WebSocket protocol (bad opcode, RSV bits, stray continuation…).
    pub(crate) const PROTOCOL: Close = Close {
        code: 1002,
        reason: "protocol error",
    };
    /// A text frame was not valid UTF-8.
    pub(crate) const INVALID_DATA: Close = Close {
        code: 1007,
        reason: "invalid UTF-8 in a text frame",
    };
    /// Nothing was received for the idle timeout.
    pub(crate) const IDLE: Close = Close {
        code: 1008,
        reason: "idle timeout",
    };
    /// A frame was larger than the limit.
    pub(crate) const TOO_BIG: Close = Close {
        code: 1009,
        reason: "frame too large",
    };
    /// Stored messages could not be read, so delivery cannot go on without a gap.
    pub(crate) const INTERNAL: Close = Close {
        code: 1011,
        reason: "history unavailable: reconnect with since",
    };
    /// The token expired and was not refreshed within the grace period.
    pub(crate) const TOKEN_EXPIRED: Close = Close {
        code: 4001,
        reason: "token expired: reconnect with a new token",
    };
    /// The client does not read fast enough.
    pub(crate) const SLOW_CONSUMER: Close = Close {
        code: 4008,
        reason: "slow consumer: reconnect with since",
    };
}

/// What a transport received from the client.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A text frame: one client frame's JSON.
    Text(Utf8Bytes),
    /// A binary frame (not part of the protocol).
    Binary,
    /// Anything else that proves the client is there (ping, pong, its close frame).
    Alive,
    /// A frame over the transport's size limit.
    TooLarge,
    /// The client broke the transport's protocol: close with this code.
    Broken(Close),
    /// The client closed, or the connection dropped.
    Closed,
}

/// A front door's connection, as the session core drives it.
///
/// Writes are two-step so that the core can write a batch of frames with one flush. The core
/// bounds every write with its write deadline, so an implementation may simply wait while its
/// client does not read.
pub(crate) trait Transport: Send {
    /// Waits for the client's next input. Cancel-safe: dropping the future loses nothing.
    fn recv(&mut self) -> impl Future<Output = Incoming> + Send;
    /// Hands a text frame to the transport; it is written by [`flush`](Self::flush) at the
    /// latest.
    fn feed(&mut self, frame: Utf8Bytes) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Writes everything fed so far.
    fn flush(&mut self) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Sends a keep-alive (a WebSocket ping) and flushes.
    fn ping(&mut self) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Sends the close and flushes; nothing is written after it.
    fn close(&mut self, close: Close) -> impl Future<Output = Result<(), Gone>> + Send;
    /// After [`close`](Self::close): reads until the client's side ends, so that the client
    /// receives the close before the connection is dropped.
    fn drain(&mut self) -> impl Future<Output = ()> + Send;
}
