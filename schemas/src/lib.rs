//! Roomcast's contract with clients and with other services.
//!
//! # Layout
//! - [`frames`]: wire protocol v1, the JSON text frames exchanged on `GET /ws`
//!   ([`ClientFrame`], [`ServerFrame`], [`ErrorCode`]).
//! - [`envelope`]: what travels through the durable broker: the inbound event a gateway
//!   publishes ([`InboundEvent`]), the fan-out message a worker publishes ([`FanoutMessage`])
//!   and the dead letter of an event that could not be processed ([`DeadLetter`]).
//! - [`data`]: what an event's `data` may hold beyond being JSON (a nesting limit, paired
//!   surrogate escapes).
//! - [`names`]: the syntax of room names, room patterns, event names, event ids and user ids,
//!   and the validated [`RoomName`], [`EventName`], [`EventId`] and [`UserId`].
//!
//! Every type here has a JSON Schema file under `schemas/json/`; the tests prove that the
//! documented examples validate against the schema and round-trip through the type.

pub mod data;
pub mod envelope;
pub mod frames;
pub mod names;

pub use data::{DataError, check_data};
pub use envelope::{DeadLetter, ENVELOPE_VERSION, FanoutMessage, InboundEvent, decode_fanout};
pub use frames::{AccessToken, ClientFrame, ErrorCode, FrameError, ServerFrame};
pub use names::{EventId, EventName, NameError, RoomName, UserId};

/// Milliseconds since the Unix epoch: the clock of every envelope's `ts` and of every
/// timestamp Roomcast writes (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
