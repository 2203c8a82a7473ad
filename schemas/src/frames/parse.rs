//! Reading a client frame.
//!
//! A frame is read in two steps: its fields are collected as raw JSON text (an unknown or
//! repeated field, or a document that is not an object, stops here), then the `type` decides
//! which fields it must and may have, and each is checked. Every message is Roomcast's own
//! text: a field, type or value the client sent is never repeated back to it. The names that
//! were valid (`id`, `room`) are kept with the error, so that the answer can carry them.

use super::{AccessToken, ClientFrame};
use crate::names::{EventId, EventName, NameError, RoomName};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// Why a client frame was refused, with the names of it that were valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// What is wrong, for the client; never contains the client's text.
    pub message: String,
    /// The frame's event id, when the frame is a publish whose id is valid.
    pub id: Option<EventId>,
    /// The frame's room, when it names a valid room.
    pub room: Option<RoomName>,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    fn new(message: impl Into<String>) -> Self {
        FrameError {
            message: message.into(),
            id: None,
            room: None,
        }
    }
}

/// The fields a client frame may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Type,
    Room,
    Since,
    Id,
    Event,
    Data,
    Token,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Type => "type",
            Field::Room => "room",
            Field::Since => "since",
            Field::Id => "id",
            Field::Event => "event",
            Field::Data => "data",
            Field::Token => "token",
        }
    }

    fn from_key(key: &str) -> Option<Field> {
        Some(match key {
            "type" => Field::Type,
            "room" => Field::Room,
            "since" => Field::Since,
            "id" => Field::Id,
            "event" => Field::Event,
            "data" => Field::Data,
            "token" => Field::Token,
            _ => return None,
        })
    }
}

/// A field name as read: one of ours, or another (whose text is dropped).
struct Key(Option<Field>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(Key(Field::from_key(key)))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A frame's fields as raw JSON text, borrowed from the frame.
#[derive(Default)]
struct Fields<'a> {
    values: [Option<&'a RawValue>; 7],
}

impl<'a> Fields<'a> {
    fn get(&self, field: Field) -> Option<&'a RawValue> {
        self.values[field as usize]
    }
}

/// The messages of the first step; matched again in [`read_fields`] to tell them from serde's.
const NOT_AN_OBJECT: &str = "a frame must be a JSON object";
const UNKNOWN_FIELD: &str = "unknown field: see the protocol for the fields of each frame type";

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
                let mut fields = Fields::default();
                while let Some(Key(field)) = map.next_key::<Key>()? {
                    let Some(field) = field else {
                        return Err(de::Error::custom(UNKNOWN_FIELD));
                    };
                    let value: &'de RawValue = map.next_value()?;
                    let slot = &mut fields.values[field as usize];
                    if slot.is_some() {
                        return Err(de::Error::custom(format!(
                            "duplicate field `{}`",
                            field.name()
                        )));
                    }
                    *slot = Some(value);
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(FieldsVisitor(std::marker::PhantomData))
    }
}

/// Step one: the fields, or what keeps the text from being a frame at all.
fn read_fields(text: &str) -> Result<Fields<'_>, FrameError> {
    serde_json::from_str::<Fields<'_>>(text).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => FrameError::new("not valid JSON"),
            Category::Data => {
                // Only our own messages are passed on: serde's name the client's text.
                let text = err.to_string();
                let ours = text.starts_with(UNKNOWN_FIELD) || text.starts_with("duplicate field");
                match (ours, text.rfind(" at line ")) {
                    (true, Some(index)) => FrameError::new(&text[..index]),
                    (true, None) => FrameError::new(text),
                    (false, _) => FrameError::new(NOT_AN_OBJECT),
                }
            }
        }
    })
}

/// The frame types and the fields each must (`true`) or may (`false`) have besides `type`.
const SHAPES: [(&str, &[(Field, bool)]); 4] = [
    ("join", &[(Field::Room, true), (Field::Since, false)]),
    ("leave", &[(Field::Room, true)]),
    (
        "publish",
        &[
            (Field::Id, true),
            (Field::Room, true),
            (Field::Event, true),
            (Field::Data, false),
        ],
    ),
    ("refresh", &[(Field::Token, true)]),
];

const ALL_FIELDS: [Field; 6] = [
    Field::Room,
    Field::Since,
    Field::Id,
    Field::Event,
    Field::Data,
    Field::Token,
];

/// A JSON string field's text.
fn string(field: Field, raw: &RawValue) -> Result<String, String> {
    serde_json::from_str::<String>(raw.get())
        .map_err(|_| format!("field `{}` must be a string", field.name()))
}

fn name<T>(
    field: Field,
    raw: &RawValue,
    make: fn(String) -> Result<T, NameError>,
) -> Result<T, String> {
    make(string(field, raw)?).map_err(|err| err.to_string())
}

impl ClientFrame {
    /// Reads a client frame from its JSON text.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let fields = read_fields(text)?;
        let kind = fields
            .get(Field::Type)
            .ok_or_else(|| FrameError::new("missing field `type`"))?;
        let kind = serde_json::from_str::<&str>(kind.get()).ok();
        let Some((kind, shape)) = SHAPES.iter().find(|(name, _)| Some(*name) == kind) else {
            return Err(FrameError::new(
                "unknown frame type: expected join, leave, publish or refresh",
            ));
        };
        // The names that are valid travel with any error below.
        let room = fields
            .get(Field::Room)
            .and_then(|raw| name(Field::Room, raw, RoomName::try_from).ok());
        let id = match *kind {
            "publish" => fields
                .get(Field::Id)
                .and_then(|raw| name(Field::Id, raw, EventId::try_from).ok()),
            _ => None,
        };
        let fail = |message: String| FrameError {
            message,
            id: id.clone(),
            room: room.clone(),
        };
        for field in ALL_FIELDS {
            let allowed = shape.iter().find(|(f, _)| *f == field);
            if let (Some((_, true)), None) = (allowed, fields.get(field)) {
                return Err(fail(format!("missing field `{}`", field.name())));
            }
            if allowed.is_none() && fields.get(field).is_some() {
                return Err(fail(format!(
                    "field `{}` is not allowed in a `{kind}` frame",
                    field.name()
                )));
            }
        }
        let required = |field: Field| {
            fields
                .get(field)
                .ok_or_else(|| fail(format!("missing field `{}`", field.name())))
        };
        let frame = match *kind {
            "join" => ClientFrame::Join {
                room: name(Field::Room, required(Field::Room)?, RoomName::try_from)
                    .map_err(fail)?,
                since: match fields.get(Field::Since) {
                    None => None,
                    Some(raw) => Some(serde_json::from_str::<u64>(raw.get()).map_err(|_| {
                        fail("field `since` must be an integer from 0 to 2^64-1".to_owned())
                    })?),
                },
            },
            "leave" => ClientFrame::Leave {
                room: name(Field::Room, required(Field::Room)?, RoomName::try_from)
                    .map_err(fail)?,
            },
            "publish" => {
                // The id is checked first: without a valid one the error cannot name the event.
                let id = name(Field::Id, required(Field::Id)?, EventId::try_from).map_err(fail)?;
                let room =
                    name(Field::Room, required(Field::Room)?, RoomName::try_from).map_err(fail)?;
                let event = name(Field::Event, required(Field::Event)?, EventName::try_from)
                    .map_err(fail)?;
                let data = match fields.get(Field::Data) {
                    Some(raw) => raw.to_owned(),
                    None => RawValue::NULL.to_owned(),
                };
                ClientFrame::Publish {
                    id,
                    room,
                    event,
                    data,
                }
            }
            _ => ClientFrame::Refresh {
                token: AccessToken::new(
                    string(Field::Token, required(Field::Token)?).map_err(fail)?,
                ),
            },
        };
        Ok(frame)
    }
}

impl<'de> Deserialize<'de> for ClientFrame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Box::<RawValue>::deserialize(deserializer)?;
        ClientFrame::parse(text.get()).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for AccessToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(AccessToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> FrameError {
        ClientFrame::parse(text).expect_err(text)
    }

    #[test]
    fn data_is_kept_verbatim() {
        let text = r#"{"type":"publish","id":"a","room":"r","event":"e","data":{"n":123456789012345678901234567890,"x":1E2, "s":"\u00e9"}}"#;
        let ClientFrame::Publish { data, .. } = ClientFrame::parse(text).unwrap() else {
            panic!("publish")
        };
        assert_eq!(
            data.get(),
            r#"{"n":123456789012345678901234567890,"x":1E2, "s":"\u00e9"}"#
        );
        let ClientFrame::Publish { data, .. } =
            ClientFrame::parse(r#"{"type":"publish","id":"a","room":"r","event":"e"}"#).unwrap()
        else {
            panic!("publish")
        };
        assert_eq!(data.get(), "null");
    }

    #[test]
    fn errors_never_repeat_the_clients_text() {
        for text in [
            r#"{"type":"<script>","room":"r"}"#,
            r#"{"type":"join","<script>":1,"room":"r"}"#,
            r#"{"type":"join","room":"<script>"}"#,
            r#"{"type":"join","room":"r","since":"<script>"}"#,
            r#""<script>""#,
            r#"["<script>"]"#,
            r#"{"type":"publish","id":"<script> x","room":"r","event":"e"}"#,
            r#"{"type":"publish","id":"a","room":"r","event":"<script>"}"#,
            "<script>",
        ] {
            let err = error(text);
            assert!(!err.message.contains("script"), "{text}: {}", err.message);
            assert!(
                !err.message.contains(" at line "),
                "{text}: {}",
                err.message
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(error("{").message, "not valid JSON");
        assert_eq!(error("[1]").message, NOT_AN_OBJECT);
        assert_eq!(error(r#"{"room":"r"}"#).message, "missing field `type`");
        assert!(
            error(r#"{"type":"nope"}"#)
                .message
                .starts_with("unknown frame type")
        );
        assert_eq!(error(r#"{"type":"join"}"#).message, "missing field `room`");
        assert_eq!(
            error(r#"{"type":"leave","room":"r","since":1}"#).message,
            "field `since` is not allowed in a `leave` frame"
        );
        assert_eq!(
            error(r#"{"type":"join","room":"r","room":"s"}"#).message,
            "duplicate field `room`"
        );
        assert_eq!(error(r#"{"type":"join","x":1}"#).message, UNKNOWN_FIELD);
        assert_eq!(
            error(r#"{"type":"join","room":5}"#).message,
            "field `room` must be a string"
        );
        assert!(
            error(r#"{"type":"join","room":"r","since":-1}"#)
                .message
                .contains("since")
        );
    }

    #[test]
    fn errors_keep_the_valid_names() {
        let err = error(r#"{"type":"publish","id":"p-1","room":"bad room","event":"e"}"#);
        assert_eq!(err.id.as_deref(), Some("p-1"));
        assert_eq!(err.room, None);
        let err = error(r#"{"type":"publish","id":"bad id","room":"lobby","event":"e"}"#);
        assert_eq!(err.id, None);
        assert_eq!(err.room.as_deref(), Some("lobby"));
        let err = error(r#"{"type":"publish","id":"p-2","room":"lobby","event":"bad event"}"#);
        assert_eq!(err.id.as_deref(), Some("p-2"));
        assert_eq!(err.room.as_deref(), Some("lobby"));
        assert!(err.message.starts_with("event name"));
    }

    #[test]
    fn refresh_tokens_are_redacted_in_debug() {
        let frame = ClientFrame::parse(r#"{"type":"refresh","token":"secret.jwt.text"}"#).unwrap();
        assert!(!format!("{frame:?}").contains("secret"));
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            r#"{"type":"refresh","token":"secret.jwt.text"}"#
        );
    }
}
