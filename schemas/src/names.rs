//! Syntax of the names that appear in frames and tokens.
//!
//! - Room name: 1–128 characters from `A–Z a–z 0–9 _ - . :`.
//! - Room pattern (JWT `rooms` claim): a room name, or a prefix of one followed by `*`
//!   (`team-*`, or `*` alone for every room).
//! - Event name: 1–64 characters from the room-name alphabet.
//! - Event id: 1–128 printable ASCII characters without spaces (`!`–`~`), e.g. a UUID.

use thiserror::Error;

/// Longest room name.
pub const MAX_ROOM_LEN: usize = 128;
/// Longest event name.
pub const MAX_EVENT_LEN: usize = 64;
/// Longest event id.
pub const MAX_ID_LEN: usize = 128;

/// A name that breaks the syntax rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// Bad room name.
    #[error("room name must be 1-128 characters of A-Z a-z 0-9 _ - . :")]
    Room,
    /// Bad event name.
    #[error("event name must be 1-64 characters of A-Z a-z 0-9 _ - . :")]
    Event,
    /// Bad event id.
    #[error("event id must be 1-128 printable ASCII characters without spaces")]
    Id,
}

fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':')
}

/// Checks a room name.
pub fn check_room(room: &str) -> Result<(), NameError> {
    let ok = !room.is_empty() && room.len() <= MAX_ROOM_LEN && room.bytes().all(name_char);
    if ok { Ok(()) } else { Err(NameError::Room) }
}

/// Checks an event name.
pub fn check_event(event: &str) -> Result<(), NameError> {
    let ok = !event.is_empty() && event.len() <= MAX_EVENT_LEN && event.bytes().all(name_char);
    if ok { Ok(()) } else { Err(NameError::Event) }
}

/// Checks an event id.
pub fn check_id(id: &str) -> Result<(), NameError> {
    let ok =
        !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|c| (0x21..=0x7e).contains(&c));
    if ok { Ok(()) } else { Err(NameError::Id) }
}

/// Whether `room` matches a `rooms`-claim pattern: equal, or starting with the part before a
/// trailing `*`.
pub fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}
