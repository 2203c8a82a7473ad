//! Syntax of the names that appear in frames and tokens.
//!
//! - Room name: 1–128 characters from `A–Z a–z 0–9 _ - . :`.
//! - Room pattern (JWT `rooms` claim): a room name, or a prefix of one followed by `*`
//!   (`team-*`, or `*` alone for every room).
//! - Event name: 1–64 characters from the room-name alphabet.
//! - Event id: 1–128 printable ASCII characters without spaces (`!`–`~`), e.g. a UUID.
//! - User id (the JWT `sub`, shown as `from`): 1–256 bytes of UTF-8 with no leading or
//!   trailing white space and no invisible character: none of Unicode's control (Cc), format
//!   (Cf: zero-width characters, bidi controls such as U+202E), private-use (Co), line- or
//!   paragraph-separator (Zl, Zp) characters, nor the other default-ignorable code points
//!   (variation selectors, Hangul fillers, U+034F, U+115F, U+1160, U+17B4, U+17B5,
//!   U+180B–U+180F, U+3164, U+FFA0, U+E0100–U+E01EF). See [`check_user`].
//!
//! [`RoomName`], [`EventName`], [`EventId`] and [`UserId`] hold names that passed these checks:
//! frames, envelopes and claims are made of them, so a name is checked once, when it is parsed.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Longest room name.
pub const MAX_ROOM_LEN: usize = 128;
/// Longest event name.
pub const MAX_EVENT_LEN: usize = 64;
/// Longest event id.
pub const MAX_ID_LEN: usize = 128;
/// Longest user id, in bytes of UTF-8.
pub const MAX_USER_LEN: usize = 256;

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
    /// Bad user id.
    #[error(
        "user id must be 1-256 bytes without leading or trailing spaces and without control, format or other invisible characters"
    )]
    User,
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

/// Checks a user id: 1–[`MAX_USER_LEN`] bytes, no leading or trailing white space, and no
/// character that is invisible or changes how the text around it is shown (see the module's
/// rules), so that one user cannot pass for another in `from`.
pub fn check_user(user: &str) -> Result<(), NameError> {
    let trimmed = user.trim_matches(char::is_whitespace);
    let ok = !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && trimmed.len() == user.len()
        && !user.chars().any(is_invisible);
    if ok { Ok(()) } else { Err(NameError::User) }
}

/// Whether `c` may not appear in a user id: controls, format characters (zero-width, bidi
/// controls), private use, line and paragraph separators, and the default-ignorable code
/// points outside those categories.
fn is_invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::PrivateUse
            | GeneralCategory::Surrogate
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || matches!(
        c,
        '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Whether `room` matches a `rooms`-claim pattern: equal, or starting with the part before a
/// trailing `*`.
pub fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Defines a validated name type: a string that passed its check once, when it was made (from a
/// frame, an envelope or code), so that no later step checks it again.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident($inner:ty), $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name($inner);

        impl $name {
            /// Checks `text` and wraps it.
            pub fn new(text: impl Into<String> + AsRef<str>) -> Result<Self, NameError> {
                $check(text.as_ref())?;
                Ok($name(<$inner>::from(text.into())))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(text: String) -> Result<Self, NameError> {
                $name::new(text)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(text: &str) -> Result<Self, NameError> {
                $name::new(text)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0.to_string()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }
    };
}

name_type!(
    /// A room name that passed [`check_room`]. Cheap to clone (the text is shared), since the
    /// gateway keeps a room's name in its registry and in every member's delivery state.
    RoomName(Arc<str>),
    check_room
);

impl RoomName {
    /// The shared text of the name.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

name_type!(
    /// An event name that passed [`check_event`].
    EventName(Box<str>),
    check_event
);

name_type!(
    /// An event id that passed [`check_id`].
    EventId(Box<str>),
    check_id
);

name_type!(
    /// A user id that passed [`check_user`]: a token's `sub` and an event's `from`. Cheap to
    /// clone (the text is shared), since every publish of a connection carries it.
    UserId(Arc<str>),
    check_user
);

impl UserId {
    /// The shared text of the id.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_that_look_like_others_are_refused() {
        for good in [
            "alice",
            "Ann Lee",
            "jörg",
            "李雷",
            "user@example.com",
            "a",
            "🙂",
        ] {
            assert!(UserId::new(good).is_ok(), "{good:?}");
        }
        assert!(UserId::new("x".repeat(MAX_USER_LEN)).is_ok());
        for bad in [
            "",
            " alice",
            "alice ",
            "alice\n",
            "\u{a0}alice",
            "ali\u{1b}[31mce",
            "ali\u{200B}ce",
            "\u{202E}ecila",
            "alice\u{2066}",
            "\u{FEFF}alice",
            "ali\u{AD}ce",
            "alice\u{2028}x",
            "ali\u{E000}ce",
            "ali\u{3164}ce",
            "alice\u{FE0F}",
            "alice\u{E0100}",
            "alice\u{E0041}",
            "ali\u{180E}ce",
        ] {
            assert_eq!(UserId::new(bad), Err(NameError::User), "{bad:?}");
        }
        assert_eq!(
            UserId::new("é".repeat(MAX_USER_LEN / 2 + 1)),
            Err(NameError::User),
            "the limit is in bytes"
        );
    }
}
