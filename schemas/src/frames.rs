//! Wire protocol v1: JSON text frames on `GET /ws`.
//!
//! Every frame is a JSON object whose `type` field names the frame. Unknown frame types and
//! unknown fields are rejected (the gateway answers `invalid_frame`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Join a room; with `since`, first receive every message with a seq greater than it.
    Join {
        /// Room name.
        room: String,
        /// Last seq the client has seen in this room; omitted for live messages only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// Leave a room.
    Leave {
        /// Room name.
        room: String,
    },
    /// Publish an event into a joined room.
    Publish {
        /// Client-chosen unique event id (1–128 chars); retries reuse it.
        id: String,
        /// Room name.
        room: String,
        /// Event name.
        event: String,
        /// Any JSON value; `null` when omitted.
        #[serde(default)]
        data: Value,
    },
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
