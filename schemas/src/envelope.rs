//! Broker envelopes: the JSON documents that travel through the durable bus.
//!
//! Other services may publish [`InboundEvent`]s and consume [`FanoutMessage`]s directly. A
//! fan-out record holds one message (a JSON object) or several consecutive messages of one room
//! (a JSON array of them, in seq order); [`decode_fanout`] reads both.
//! `data` is carried as raw JSON text so that no hop re-encodes the payload.

use crate::names::{EventId, EventName, RoomName, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Version of the envelope format, carried in the `v` field.
pub const ENVELOPE_VERSION: u32 = 1;

/// An event accepted by a gateway, published durably to the inbound stream (keyed by room).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundEvent {
    /// Envelope version ([`ENVELOPE_VERSION`]).
    pub v: u32,
    /// The client's event id; `(from, id)` identifies the event for deduplication. Checked
    /// when the envelope is decoded.
    pub id: EventId,
    /// Room name; also the broker key that keeps a room's events in order. Checked when the
    /// envelope is decoded.
    pub room: RoomName,
    /// Event name. Checked when the envelope is decoded.
    pub event: EventName,
    /// The publisher's user id (the JWT `sub`). Checked when the envelope is decoded.
    pub from: UserId,
    /// When the gateway accepted the event, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The published data, as raw JSON.
    pub data: Box<RawValue>,
}

/// A stored message of a room, published by a worker for every gateway with members there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutMessage {
    /// Envelope version ([`ENVELOPE_VERSION`]).
    pub v: u32,
    /// Room name.
    pub room: String,
    /// Position in the room: 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// The publisher's event id.
    pub id: String,
    /// Event name.
    pub event: String,
    /// The publisher's user id.
    pub from: String,
    /// When the gateway accepted the event, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The published data, as raw JSON.
    pub data: Box<RawValue>,
}

/// An inbound event that could not be processed, with the reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// Envelope version ([`ENVELOPE_VERSION`]).
    pub v: u32,
    /// Why the event was dead-lettered (decode error, or the last processing error).
    pub reason: String,
    /// How many times processing was attempted.
    pub attempts: u32,
    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The broker key the event was published with.
    pub key: String,
    /// The original payload, as text (invalid UTF-8 replaced).
    pub payload: String,
}

/// Borrowing twin of `ServerFrame::Message`, so that a fan-out message is turned into its
/// wire frame without copying or re-parsing `data`.
#[derive(Serialize)]
struct MessageFrameRef<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    seq: u64,
    id: &'a str,
    event: &'a str,
    from: &'a str,
    ts: u64,
    data: &'a RawValue,
}

/// Decodes a fan-out record: one [`FanoutMessage`] (a JSON object), or several of one room in
/// seq order (a JSON array of them, as a worker publishes a room's messages of one batch).
pub fn decode_fanout(payload: &[u8]) -> Result<Vec<FanoutMessage>, serde_json::Error> {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        serde_json::from_slice(payload)
    } else {
        serde_json::from_slice(payload).map(|message| vec![message])
    }
}

impl FanoutMessage {
    /// The `message` frame delivered to room members, as JSON text: serialize once per room
    /// message and share the result between members.
    pub fn to_frame_json(&self) -> String {
        let frame = MessageFrameRef {
            kind: "message",
            room: &self.room,
            seq: self.seq,
            id: &self.id,
            event: &self.event,
            from: &self.from,
            ts: self.ts,
            data: &self.data,
        };
        // Cannot fail: no maps with non-string keys, and `data` is valid JSON by construction.
        serde_json::to_string(&frame).unwrap_or_default()
    }

    /// The fan-out message for a stored inbound event.
    pub fn from_event(event: &InboundEvent, seq: u64) -> Self {
        FanoutMessage {
            v: ENVELOPE_VERSION,
            room: event.room.as_str().to_owned(),
            seq,
            id: event.id.as_str().to_owned(),
            event: event.event.as_str().to_owned(),
            from: event.from.as_str().to_owned(),
            ts: event.ts,
            data: event.data.clone(),
        }
    }
}
