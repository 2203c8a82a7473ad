//! Wire protocol v1: JSON text frames on `GET /ws`.
//!
//! Every frame is a JSON object whose `type` field names the frame. Unknown frame types and
//! unknown fields are rejected (the gateway answers `invalid_frame`).
//!
//! # Layout
//! - this file: [`ClientFrame`], [`ServerFrame`], [`ErrorCode`].
//! - `parse`: how a client frame is read ([`ClientFrame::parse`], [`FrameError`]).

mod parse;

use crate::names::{EventId, EventName, RoomName};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub use parse::FrameError;

/// A frame sent by a client.
///
/// Parse one with [`ClientFrame::parse`], which says what is wrong with a bad frame without
/// repeating the client's text and tells which of its names were valid; `Deserialize` parses the
/// same way. `data` is kept as the client wrote it (raw JSON text), so that big integers and
/// exponents reach the room's members unchanged.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Join a room; with `since`, first receive every message with a seq greater than it.
    Join {
        /// Room name.
        room: RoomName,
        /// Last seq the client has seen in this room; omitted for live messages only.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// Leave a room.
    Leave {
        /// Room name.
        room: RoomName,
    },
    /// Publish an event into a joined room.
    Publish {
        /// Client-chosen unique event id (1–128 chars); retries reuse it.
        id: EventId,
        /// Room name.
        room: RoomName,
        /// Event name.
        event: EventName,
        /// Any JSON value, verbatim; `null` when omitted.
        data: Box<RawValue>,
    },
    /// Replace the connection's token before it expires (same `sub`).
    Refresh {
        /// The new token.
        token: AccessToken,
    },
}

impl PartialEq for ClientFrame {
    fn eq(&self, other: &Self) -> bool {
        use ClientFrame::*;
        match (self, other) {
            (Join { room: a, since: x }, Join { room: b, since: y }) => a == b && x == y,
            (Leave { room: a }, Leave { room: b }) => a == b,
            (
                Publish {
                    id: a,
                    room: b,
                    event: c,
                    data: d,
                },
                Publish {
                    id: e,
                    room: f,
                    event: g,
                    data: h,
                },
            ) => a == e && b == f && c == g && d.get() == h.get(),
            (Refresh { token: a }, Refresh { token: b }) => a == b,
            _ => false,
        }
    }
}

/// A JWT as carried by a `refresh` frame. Its `Debug` output is redacted: tokens are secrets.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        AccessToken(token.into())
    }

    /// The token text, for verification.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerFrame {
    /// The client is a member of `room`; `seq` is the last seq in the room when it joined.
    Joined {
        /// Room name.
        room: String,
        /// Last seq stored in the room (0 for an empty room).
        seq: u64,
    },
    /// The client left `room`.
    Left {
        /// Room name.
        room: String,
    },
    /// The event `id` is stored durably by the broker.
    Ack {
        /// The client's event id.
        id: String,
    },
    /// A message of a room the client is a member of.
    Message {
        /// Room name.
        room: String,
        /// Position in the room: 1, 2, 3, … with no gaps.
        seq: u64,
        /// The publisher's event id.
        id: String,
        /// Event name.
        event: String,
        /// The publisher's user id (the JWT `sub`).
        from: String,
        /// When the gateway accepted the event, in milliseconds since the Unix epoch.
        ts: u64,
        /// The published data.
        data: Value,
    },
    /// The connection's token expires at `exp`: send `refresh` with a new token before then
    /// (plus the configured grace), or the connection is closed with 4001.
    TokenExpiring {
        /// The token's expiry, seconds since the Unix epoch.
        exp: u64,
    },
    /// Answers `refresh`: the new token is in effect until `exp`.
    Refreshed {
        /// The new token's expiry, seconds since the Unix epoch.
        exp: u64,
    },
    /// A request failed; non-fatal errors leave the connection usable.
    Error {
        /// Machine-readable error code.
        code: ErrorCode,
        /// The event id of the failed publish, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The room concerned, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Human-readable explanation; never contains internals.
        message: String,
        /// With `rate_limited`: how long to wait before retrying.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// Error codes of the `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, has an unknown type or field, or a bad name.
    InvalidFrame,
    /// The frame exceeds the maximum frame size; the connection is then closed (1009).
    TooLarge,
    /// The token's `rooms` claim does not allow this room.
    ForbiddenRoom,
    /// Publish into a room the connection has not joined.
    NotJoined,
    /// The connection already holds the maximum number of rooms.
    TooManyRooms,
    /// Too many publishes; retry after `retry_after_ms`.
    RateLimited,
    /// The broker could not confirm the event; retry with the same id.
    Unavailable,
    /// A join or publish after the connection's token expired; send `refresh` first.
    TokenExpired,
    /// A `refresh` token was refused (bad signature, expired, another user, …); the old token
    /// stays in effect until it expires.
    InvalidToken,
    /// An unexpected server fault; details are in the server log only.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ForbiddenRoom => "forbidden_room",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ServerFrame {
    /// An error frame without id, room or retry hint.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            code,
            id: None,
            room: None,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Serializes the frame as the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.to_owned()
        })
    }
}
