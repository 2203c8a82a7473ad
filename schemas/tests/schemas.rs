//! The JSON Schema files, the serde types and the protocol document describe the same frames.
//!
//! - Every example (in the schema files and in `docs/protocol.md`) validates against its schema,
//!   uses valid names, and round-trips through its serde type to an equivalent JSON value.
//! - Invalid documents are rejected by the schema and by the Rust side (serde, or the name
//!   checks of `roomcast_schemas::names`, since serde accepts any string as a name).
//! - The name patterns in the schemas agree with `names.rs` character by character.
//! - The places where the schema and serde knowingly differ are pinned, so that a change on
//!   either side is noticed.

use jsonschema::Validator;
use roomcast_schemas::names::{
    self, MAX_EVENT_LEN, MAX_ID_LEN, MAX_ROOM_LEN, NameError, check_event, check_id, check_room,
};
use roomcast_schemas::{
    ClientFrame, DeadLetter, ENVELOPE_VERSION, ErrorCode, FanoutMessage, InboundEvent, ServerFrame,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;

const ROOM_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,128}$";
const EVENT_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,64}$";
const ID_PATTERN: &str = "^[!-~]{1,128}$";

/// The documents that have a schema file and a serde type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ClientFrame,
    ServerFrame,
    InboundEvent,
    FanoutMessage,
    DeadLetter,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::ClientFrame,
        Kind::ServerFrame,
        Kind::InboundEvent,
        Kind::FanoutMessage,
        Kind::DeadLetter,
    ];

    /// The schema file's stem, also the marker name in `docs/protocol.md`.
    fn name(self) -> &'static str {
        match self {
            Kind::ClientFrame => "client-frame",
            Kind::ServerFrame => "server-frame",
            Kind::InboundEvent => "inbound-event",
            Kind::FanoutMessage => "fanout-message",
            Kind::DeadLetter => "dead-letter",
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn schema(self) -> Value {
        let path = manifest_dir()
            .join("json")
            .join(format!("{}.json", self.name()));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
    }

    fn validator(self) -> Validator {
        jsonschema::draft202012::new(&self.schema())
            .unwrap_or_else(|e| panic!("{}.json is not a valid schema: {e}", self.name()))
    }

    /// Deserializes `text` into the serde type and serializes it back.
    fn serde_round_trip(self, text: &str) -> Result<Value, serde_json::Error> {
        let out = match self {
            Kind::ClientFrame => {
                serde_json::to_string(&serde_json::from_str::<ClientFrame>(text)?)?
            }
            Kind::ServerFrame => {
                serde_json::to_string(&serde_json::from_str::<ServerFrame>(text)?)?
            }
            Kind::InboundEvent => {
                serde_json::to_string(&serde_json::from_str::<InboundEvent>(text)?)?
            }
            Kind::FanoutMessage => {
                serde_json::to_string(&serde_json::from_str::<FanoutMessage>(text)?)?
            }
            Kind::DeadLetter => serde_json::to_string(&serde_json::from_str::<DeadLetter>(text)?)?,
        };
        serde_json::from_str(&out)
    }

    /// Applies the `names.rs` checks to the names in a document that serde accepted.
    fn check_names(self, doc: &Value) -> Result<(), NameError> {
        let field = |name: &str| doc.get(name).and_then(Value::as_str);
        if self == Kind::DeadLetter {
            // `key` is whatever the publisher used: dead letters keep undecodable records too.
            return Ok(());
        }
        if let Some(room) = field("room") {
            check_room(room)?;
        }
        if let Some(event) = field("event") {
            check_event(event)?;
        }
        if let Some(id) = field("id") {
            check_id(id)?;
        }
        Ok(())
    }

    /// The JSON the serde type produces for a valid `doc`: `doc` itself, except that an omitted
    /// `data` of a publish frame is `null`.
    fn canonical(self, doc: &Value) -> Value {
        let mut doc = doc.clone();
        if self == Kind::ClientFrame
            && doc["type"] == "publish"
            && let Some(map) = doc.as_object_mut()
        {
            map.entry("data").or_insert(Value::Null);
        }
        doc
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Asserts that `doc` is a valid, well-named `kind` document that round-trips through serde.
fn assert_valid(kind: Kind, validator: &Validator, doc: &Value, origin: &str) {
    let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{origin}: {doc} does not validate against {}.json: {errors:?}",
        kind.name()
    );
    let text = doc.to_string();
    let back = kind
        .serde_round_trip(&text)
        .unwrap_or_else(|e| panic!("{origin}: {text} does not deserialize as {kind:?}: {e}"));
    assert_eq!(
        back,
        kind.canonical(doc),
        "{origin}: {kind:?} round trip changed the document"
    );
    kind.check_names(doc)
        .unwrap_or_else(|e| panic!("{origin}: {doc}: {e}"));
}

/// Asserts that `doc` is rejected by the schema and by the Rust side (serde or the name checks).
fn assert_rejected(kind: Kind, validator: &Validator, doc: &Value, why: &str) {
    assert!(
        !validator.is_valid(doc),
        "{why}: {}.json accepts {doc}",
        kind.name()
    );
    let text = doc.to_string();
    if kind.serde_round_trip(&text).is_ok() {
        assert!(
            kind.check_names(doc).is_err(),
            "{why}: serde accepts {text} as {kind:?} and its names pass names.rs"
        );
    }
}

/// The examples of a schema file.
fn schema_examples(kind: Kind) -> Vec<Value> {
    match kind.schema().get("examples") {
        Some(Value::Array(examples)) => examples.clone(),
        _ => panic!("{}.json has no `examples` array", kind.name()),
    }
}

/// The JSON examples of `docs/protocol.md`: each ```json block must directly follow a marker
/// line `<!-- example: <schema name> -->`, and holds one or more JSON documents.
fn doc_examples() -> Vec<(Kind, Value, String)> {
    let path = manifest_dir().join("../docs/protocol.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(rest) = line.strip_prefix("<!-- example:") {
            let name = rest.trim_end_matches("-->").trim();
            let kind = Kind::from_name(name)
                .unwrap_or_else(|| panic!("protocol.md:{}: unknown example kind {name:?}", i + 1));
            assert_eq!(
                lines.get(i + 1).map(|l| l.trim()),
                Some("```json"),
                "protocol.md:{}: an example marker must be followed by a ```json block",
                i + 1
            );
            let start = i + 2;
            let len = lines[start..]
                .iter()
                .position(|l| l.trim() == "```")
                .unwrap_or_else(|| panic!("protocol.md:{}: unterminated block", i + 2));
            let block = lines[start..start + len].join("\n");
            let mut count = 0;
            for doc in serde_json::Deserializer::from_str(&block).into_iter::<Value>() {
                let doc =
                    doc.unwrap_or_else(|e| panic!("protocol.md:{}: bad JSON: {e}", start + 1));
                out.push((kind, doc, format!("protocol.md:{}", start + 1)));
                count += 1;
            }
            assert!(count > 0, "protocol.md:{}: empty example block", start + 1);
            i = start + len + 1;
        } else {
            assert!(
                line != "```json",
                "protocol.md:{}: ```json block without an `<!-- example: … -->` marker",
                i + 1
            );
            i += 1;
        }
    }
    out
}

/// Every error code, from an exhaustive match so that a new variant does not go unnoticed.
fn all_error_codes() -> Vec<ErrorCode> {
    let all = [
        ErrorCode::InvalidFrame,
        ErrorCode::TooLarge,
        ErrorCode::ForbiddenRoom,
        ErrorCode::NotJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::TokenExpired,
        ErrorCode::InvalidToken,
        ErrorCode::Internal,
    ];
    for code in all {
        match code {
            ErrorCode::InvalidFrame
            | ErrorCode::TooLarge
            | ErrorCode::ForbiddenRoom
            | ErrorCode::NotJoined
            | ErrorCode::TooManyRooms
            | ErrorCode::RateLimited
            | ErrorCode::Unavailable
            | ErrorCode::TokenExpired
            | ErrorCode::InvalidToken
            | ErrorCode::Internal => {} // Add a new variant to `all` above too.
        }
    }
    all.to_vec()
}

#[test]
fn schema_files_are_valid_2020_12_schemas_with_metadata() {
    for kind in Kind::ALL {
        let schema = kind.schema();
        let name = kind.name();
        if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
            panic!("{name}.json violates the 2020-12 meta-schema: {e}");
        }
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        let id = schema["$id"].as_str().unwrap_or_default();
        assert!(
            id.starts_with("https://") && id.ends_with(&format!("/{name}.json")),
            "{name}: $id {id:?}"
        );
        for key in ["title", "description"] {
            let value = schema[key].as_str().unwrap_or_default();
            assert!(!value.trim().is_empty(), "{name}.json needs a `{key}`");
        }
        assert!(
            !schema_examples(kind).is_empty(),
            "{name}.json needs examples"
        );
    }
}

#[test]
fn schema_examples_validate_and_round_trip() {
    for kind in Kind::ALL {
        let validator = kind.validator();
        for (i, doc) in schema_examples(kind).iter().enumerate() {
            assert_valid(
                kind,
                &validator,
                doc,
                &format!("{}.json examples[{i}]", kind.name()),
            );
        }
    }
}

#[test]
fn protocol_doc_examples_validate_and_round_trip() {
    let examples = doc_examples();
    let kinds: BTreeSet<Kind> = examples.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(
        kinds.len(),
        Kind::ALL.len(),
        "protocol.md must show every document kind: {kinds:?}"
    );
    for (kind, doc, origin) in &examples {
        assert_valid(*kind, &kind.validator(), doc, origin);
    }
    // Every frame type and every error code is shown.
    let shown = |kind: Kind, field: &str| -> BTreeSet<String> {
        examples
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .filter_map(|(_, doc, _)| doc.get(field).and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    let client_types = shown(Kind::ClientFrame, "type");
    assert_eq!(
        client_types,
        ["join", "leave", "publish", "refresh"]
            .map(String::from)
            .into()
    );
    let server_types = shown(Kind::ServerFrame, "type");
    assert_eq!(
        server_types,
        [
            "ack",
            "error",
            "joined",
            "left",
            "message",
            "refreshed",
            "token_expiring",
        ]
        .map(String::from)
        .into()
    );
    let codes: BTreeSet<String> = all_error_codes()
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(
        shown(Kind::ServerFrame, "code"),
        codes,
        "every error code needs an example in protocol.md"
    );
}

#[test]
fn protocol_doc_documents_every_error_code_and_close_code() {
    let text =
        std::fs::read_to_string(manifest_dir().join("../docs/protocol.md")).expect("protocol.md");
    for code in all_error_codes() {
        let row = format!("| `{}`", code.as_str());
        assert!(
            text.contains(&row),
            "protocol.md has no table row for error code {}",
            code.as_str()
        );
    }
    for http in [
        "missing_token",
        "invalid_token",
        "token_expired",
        "token_not_yet_valid",
        "invalid_audience",
        "invalid_issuer",
        "invalid_claims",
    ] {
        assert!(
            text.contains(&format!("| `{http}`")),
            "protocol.md has no row for HTTP error {http}"
        );
    }
    for close in [
        "1000", "1001", "1002", "1007", "1008", "1009", "1011", "4001", "4008",
    ] {
        assert!(
            text.contains(&format!("| {close} |")),
            "protocol.md has no row for close code {close}"
        );
    }
}

#[test]
fn error_codes_agree_between_schema_serde_and_as_str() {
    let schema = Kind::ServerFrame.schema();
    let in_schema: BTreeSet<String> = schema["$defs"]["errorCode"]["enum"]
        .as_array()
        .expect("errorCode enum")
        .iter()
        .map(|v| v.as_str().expect("string code").to_owned())
        .collect();
    let codes = all_error_codes();
    let in_rust: BTreeSet<String> = codes.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(in_schema, in_rust);
    for code in codes {
        assert_eq!(
            serde_json::to_value(code).expect("serialize code"),
            json!(code.as_str())
        );
        let frame = ServerFrame::error(code, "x");
        let doc: Value = serde_json::from_str(&frame.to_json()).expect("frame JSON");
        assert_valid(
            Kind::ServerFrame,
            &Kind::ServerFrame.validator(),
            &doc,
            "ServerFrame::error",
        );
    }
    // Every error code also has an example in the schema file.
    let in_examples: BTreeSet<String> = schema_examples(Kind::ServerFrame)
        .iter()
        .filter_map(|doc| doc.get("code").and_then(Value::as_str).map(str::to_owned))
        .collect();
    assert_eq!(
        in_examples, in_rust,
        "server-frame.json needs an example per error code"
    );
}

#[test]
fn name_patterns_are_the_canonical_ones_everywhere() {
    fn walk(node: &Value, file: &str, found: &mut usize) {
        match node {
            Value::Object(map) => {
                if let Some(pattern) = map.get("pattern").and_then(Value::as_str) {
                    let max = match pattern {
                        ROOM_PATTERN => MAX_ROOM_LEN,
                        EVENT_PATTERN => MAX_EVENT_LEN,
                        ID_PATTERN => MAX_ID_LEN,
                        other => panic!("{file}: unexpected pattern {other:?}"),
                    };
                    assert_eq!(map.get("minLength"), Some(&json!(1)), "{file}: {pattern}");
                    assert_eq!(map.get("maxLength"), Some(&json!(max)), "{file}: {pattern}");
                    *found += 1;
                }
                map.values().for_each(|v| walk(v, file, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, file, found)),
            _ => {}
        }
    }
    for kind in Kind::ALL {
        let mut found = 0;
        walk(&kind.schema(), kind.name(), &mut found);
        let expected = match kind {
            Kind::DeadLetter => 0,
            _ => 3,
        };
        assert_eq!(
            found,
            expected,
            "{}.json: number of name patterns",
            kind.name()
        );
    }
}

/// Candidate names: every ASCII character and some non-ASCII ones in the middle and at the
/// ends of a name, trailing newlines, and the length boundaries.
fn name_candidates(max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for c in (0u8..=127)
        .map(char::from)
        .chain(['é', 'ß', '€', '\u{a0}', '\u{2028}', '😀'])
    {
        out.push(format!("a{c}b"));
        out.push(c.to_string());
        out.push(format!("lobby{c}"));
    }
    out.extend(["", "lobby\n", "\nlobby", "lobby\r\n", "a\nb"].map(String::from));
    for len in [1, max - 1, max, max + 1, 2 * max] {
        out.push("x".repeat(len));
    }
    out.push(format!("{}é", "x".repeat(max - 2))); // max bytes, max - 1 chars
    out
}

#[test]
fn schema_name_patterns_agree_with_names_rs() {
    let validator = Kind::ClientFrame.validator();
    for room in name_candidates(MAX_ROOM_LEN) {
        let doc = json!({"type": "join", "room": room});
        assert_eq!(
            validator.is_valid(&doc),
            check_room(&room).is_ok(),
            "room {room:?}"
        );
    }
    for event in name_candidates(MAX_EVENT_LEN) {
        let doc = json!({"type": "publish", "id": "e-1", "room": "lobby", "event": event});
        assert_eq!(
            validator.is_valid(&doc),
            check_event(&event).is_ok(),
            "event {event:?}"
        );
    }
    for id in name_candidates(MAX_ID_LEN) {
        let doc = json!({"type": "publish", "id": id, "room": "lobby", "event": "chat"});
        assert_eq!(validator.is_valid(&doc), check_id(&id).is_ok(), "id {id:?}");
    }
    // The id alphabet is exactly `!`..=`~`.
    assert!(check_id("!").is_ok() && check_id("~").is_ok());
    assert!(check_id(" ").is_err() && check_id("\u{7f}").is_err());
    // Room patterns (the JWT `rooms` claim) are room names with an optional trailing `*`.
    assert!(names::room_matches("*", "lobby"));
    assert!(names::room_matches("team-7:*", "team-7:general"));
    assert!(!names::room_matches("team-7:*", "team-8:general"));
    assert!(!names::room_matches("lobby", "lobby2"));
}

fn publish(id: &str, room: &str, event: &str) -> Value {
    json!({"type": "publish", "id": id, "room": room, "event": event, "data": {"text": "x"}})
}

fn message() -> Value {
    json!({"type": "message", "room": "lobby", "seq": 42, "id": "m-1", "event": "chat", "from": "alice", "ts": 1, "data": {}})
}

fn with(mut doc: Value, key: &str, value: Value) -> Value {
    doc[key] = value;
    doc
}

fn without(mut doc: Value, key: &str) -> Value {
    if let Some(map) = doc.as_object_mut() {
        map.remove(key);
    }
    doc
}

fn inbound() -> Value {
    schema_examples(Kind::InboundEvent)[0].clone()
}

fn fanout() -> Value {
    schema_examples(Kind::FanoutMessage)[0].clone()
}

fn dead_letter() -> Value {
    schema_examples(Kind::DeadLetter)[0].clone()
}

#[test]
fn invalid_documents_are_rejected_by_schema_and_rust() {
    let long_id = "i".repeat(MAX_ID_LEN + 1);
    let long_room = "r".repeat(MAX_ROOM_LEN + 1);
    let long_event = "e".repeat(MAX_EVENT_LEN + 1);
    let cases: Vec<(Kind, Value, &str)> = vec![
        // Client frames.
        (
            Kind::ClientFrame,
            json!({"type": "subscribe", "room": "lobby"}),
            "unknown type",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "JOIN", "room": "lobby"}),
            "type is case-sensitive",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "joined", "room": "lobby", "seq": 1}),
            "server frame from a client",
        ),
        (Kind::ClientFrame, json!({"room": "lobby"}), "missing type"),
        (
            Kind::ClientFrame,
            json!({"type": null, "room": "lobby"}),
            "null type",
        ),
        (
            Kind::ClientFrame,
            json!([{"type": "join", "room": "lobby"}]),
            "array instead of object",
        ),
        (Kind::ClientFrame, json!("join"), "string instead of object"),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby", "extra": 1}),
            "unknown field in join",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "leave", "room": "lobby", "since": 1}),
            "since on leave",
        ),
        (
            Kind::ClientFrame,
            with(publish("p-1", "lobby", "chat"), "ttl", json!(5)),
            "unknown field in publish",
        ),
        (Kind::ClientFrame, json!({"type": "join"}), "missing room"),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby", "since": null}),
            "null since",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "refresh"}),
            "refresh without a token",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "refresh", "token": "t", "room": "lobby"}),
            "refresh with a room",
        ),
        (
            Kind::ClientFrame,
            without(publish("p-1", "lobby", "chat"), "id"),
            "publish without id",
        ),
        (
            Kind::ClientFrame,
            without(publish("p-1", "lobby", "chat"), "event"),
            "publish without event",
        ),
        (
            Kind::ClientFrame,
            without(publish("p-1", "lobby", "chat"), "room"),
            "publish without room",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": 42}),
            "numeric room",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby", "since": "5"}),
            "since as a string",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby", "since": 1.5}),
            "fractional since",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby", "since": true}),
            "boolean since",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby", "since": -1}),
            "negative since",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby", "since": 18_446_744_073_709_551_616_f64}),
            "since beyond u64",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby", "since": 1e300}),
            "huge since",
        ),
        (
            Kind::ClientFrame,
            with(publish("p-1", "lobby", "chat"), "id", json!(7)),
            "numeric id",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby room"}),
            "room with a space",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": ""}),
            "empty room",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "café"}),
            "non-ASCII room",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "team/7"}),
            "room with a slash",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": "lobby*"}),
            "pattern instead of a room",
        ),
        (
            Kind::ClientFrame,
            json!({"type": "join", "room": long_room}),
            "over-long room",
        ),
        (
            Kind::ClientFrame,
            publish(&long_id, "lobby", "chat"),
            "over-long id",
        ),
        (Kind::ClientFrame, publish("", "lobby", "chat"), "empty id"),
        (
            Kind::ClientFrame,
            publish("two words", "lobby", "chat"),
            "id with a space",
        ),
        (
            Kind::ClientFrame,
            publish("naïve", "lobby", "chat"),
            "non-ASCII id",
        ),
        (
            Kind::ClientFrame,
            publish("p-1", "lobby", &long_event),
            "over-long event",
        ),
        (
            Kind::ClientFrame,
            publish("p-1", "lobby", "chat/x"),
            "event with a slash",
        ),
        (
            Kind::ClientFrame,
            publish("p-1", "lobby", ""),
            "empty event",
        ),
        (
            Kind::ClientFrame,
            publish("p-1", "bad room", "chat"),
            "publish into a bad room",
        ),
        // Server frames.
        (Kind::ServerFrame, json!({"type": "hello"}), "unknown type"),
        (
            Kind::ServerFrame,
            json!({"type": "join", "room": "lobby"}),
            "client frame from the server",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": "teapot", "message": "x"}),
            "unknown error code",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": "Internal", "message": "x"}),
            "error code case",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": 500, "message": "x"}),
            "numeric error code",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": "internal"}),
            "error without message",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "message": "x"}),
            "error without code",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": "internal", "message": "x", "detail": "y"}),
            "unknown field in error",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": "rate_limited", "message": "x", "retry_after_ms": -5}),
            "negative retry_after_ms",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": "rate_limited", "message": "x", "retry_after_ms": "5"}),
            "retry_after_ms as a string",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": "forbidden_room", "room": "no room", "message": "x"}),
            "error with a bad room",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": "unavailable", "id": long_id, "message": "x"}),
            "error with an over-long id",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "joined", "room": "lobby"}),
            "joined without seq",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "joined", "room": "lobby", "seq": -1}),
            "negative joined seq",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "left", "room": "lobby", "seq": 1}),
            "unknown field in left",
        ),
        (
            Kind::ServerFrame,
            json!({"type": "left", "room": "a b"}),
            "left with a bad room",
        ),
        (Kind::ServerFrame, json!({"type": "ack"}), "ack without id"),
        (
            Kind::ServerFrame,
            json!({"type": "ack", "id": long_id}),
            "ack with an over-long id",
        ),
        (
            Kind::ServerFrame,
            without(message(), "data"),
            "message without data",
        ),
        (
            Kind::ServerFrame,
            without(message(), "from"),
            "message without from",
        ),
        (
            Kind::ServerFrame,
            without(message(), "ts"),
            "message without ts",
        ),
        (
            Kind::ServerFrame,
            with(message(), "seq", json!("42")),
            "seq as a string",
        ),
        (
            Kind::ServerFrame,
            with(message(), "seq", json!(-42)),
            "negative seq",
        ),
        (
            Kind::ServerFrame,
            with(message(), "ts", json!(1.25)),
            "fractional ts",
        ),
        (
            Kind::ServerFrame,
            with(message(), "from", json!(7)),
            "numeric from",
        ),
        (
            Kind::ServerFrame,
            with(message(), "v", json!(1)),
            "envelope field in a message frame",
        ),
        (
            Kind::ServerFrame,
            with(message(), "event", json!("x".repeat(65))),
            "message with an over-long event",
        ),
        // Inbound events.
        (
            Kind::InboundEvent,
            without(inbound(), "data"),
            "inbound without data",
        ),
        (
            Kind::InboundEvent,
            without(inbound(), "from"),
            "inbound without from",
        ),
        (
            Kind::InboundEvent,
            without(inbound(), "v"),
            "inbound without v",
        ),
        (
            Kind::InboundEvent,
            with(inbound(), "type", json!("publish")),
            "unknown field in inbound",
        ),
        (
            Kind::InboundEvent,
            with(inbound(), "ts", json!(-1)),
            "negative ts",
        ),
        (
            Kind::InboundEvent,
            with(inbound(), "ts", json!("now")),
            "ts as a string",
        ),
        (
            Kind::InboundEvent,
            with(inbound(), "v", json!("1")),
            "v as a string",
        ),
        (
            Kind::InboundEvent,
            with(inbound(), "room", json!("lobby!")),
            "inbound with a bad room",
        ),
        (
            Kind::InboundEvent,
            with(inbound(), "id", json!(long_id)),
            "inbound with an over-long id",
        ),
        (
            Kind::InboundEvent,
            with(inbound(), "event", json!("a b")),
            "inbound with a bad event",
        ),
        // Fan-out messages.
        (
            Kind::FanoutMessage,
            without(fanout(), "seq"),
            "fan-out without seq",
        ),
        (
            Kind::FanoutMessage,
            with(fanout(), "seq", json!(-3)),
            "negative fan-out seq",
        ),
        (
            Kind::FanoutMessage,
            with(fanout(), "type", json!("message")),
            "frame field in a fan-out message",
        ),
        (
            Kind::FanoutMessage,
            with(fanout(), "room", json!("")),
            "fan-out with an empty room",
        ),
        (
            Kind::FanoutMessage,
            with(fanout(), "id", json!(long_id)),
            "fan-out with an over-long id",
        ),
        // Dead letters.
        (
            Kind::DeadLetter,
            without(dead_letter(), "reason"),
            "dead letter without reason",
        ),
        (
            Kind::DeadLetter,
            without(dead_letter(), "payload"),
            "dead letter without payload",
        ),
        (
            Kind::DeadLetter,
            with(dead_letter(), "attempts", json!(-1)),
            "negative attempts",
        ),
        (
            Kind::DeadLetter,
            with(dead_letter(), "attempts", json!(4_294_967_296_u64)),
            "attempts beyond u32",
        ),
        (
            Kind::DeadLetter,
            with(dead_letter(), "payload", json!({"v": 1})),
            "payload as an object",
        ),
        (
            Kind::DeadLetter,
            with(dead_letter(), "room", json!("lobby")),
            "unknown field in a dead letter",
        ),
    ];
    for (kind, doc, why) in &cases {
        assert_rejected(*kind, &kind.validator(), doc, why);
    }
}

#[test]
fn boundary_values_are_accepted_by_both() {
    let client = Kind::ClientFrame.validator();
    let server = Kind::ServerFrame.validator();
    let max_room = "r".repeat(MAX_ROOM_LEN);
    let max_id = "~".repeat(MAX_ID_LEN);
    let max_event = "e".repeat(MAX_EVENT_LEN);
    let cases = [
        (
            Kind::ClientFrame,
            &client,
            json!({"type": "join", "room": max_room, "since": u64::MAX}),
        ),
        (
            Kind::ClientFrame,
            &client,
            publish(&max_id, &max_room, &max_event),
        ),
        (
            Kind::ClientFrame,
            &client,
            json!({"type": "publish", "id": "a", "room": "a", "event": "a"}),
        ),
        (
            Kind::ClientFrame,
            &client,
            with(
                publish("p-1", "lobby", "chat"),
                "data",
                json!("<b>bold</b>"),
            ),
        ),
        (
            Kind::ServerFrame,
            &server,
            json!({"type": "joined", "room": "_.:-", "seq": u64::MAX}),
        ),
        (
            Kind::ServerFrame,
            &server,
            with(with(message(), "ts", json!(u64::MAX)), "from", json!("")),
        ),
        (
            Kind::ServerFrame,
            &server,
            with(
                message(),
                "data",
                json!({"nested": [1, "two", null, {"x": false}]}),
            ),
        ),
    ];
    for (kind, validator, doc) in &cases {
        assert_valid(*kind, validator, doc, "boundary");
    }
    // Publish without `data` means `data: null`.
    let frame: ClientFrame =
        serde_json::from_str(r#"{"type":"publish","id":"a","room":"a","event":"a"}"#)
            .expect("publish");
    assert_eq!(
        frame,
        ClientFrame::Publish {
            id: "a".try_into().unwrap(),
            room: "a".try_into().unwrap(),
            event: "a".try_into().unwrap(),
            data: serde_json::value::RawValue::NULL.to_owned(),
        }
    );
}

/// Where the schema and serde knowingly disagree. The schema is the stricter description of
/// what a correct peer sends; the Rust side is deliberately lenient where it is harmless, and
/// serde's integer parsing is stricter than JSON Schema's notion of an integer.
#[test]
fn known_differences_between_schema_and_serde() {
    let rust_accepts = |kind: Kind, doc: &Value| {
        kind.serde_round_trip(&doc.to_string()).is_ok() && kind.check_names(doc).is_ok()
    };
    // Stricter in the schema: null for an omitted optional field of a server frame (serde reads
    // it as omitted; client frames refuse it, as the schema does),
    // a message seq of 0 (seqs start at 1), and envelope versions other than 1 (serde reads any
    // version so that a consumer can report an unsupported one).
    let schema_only: Vec<(Kind, Value)> = vec![
        (
            Kind::ServerFrame,
            json!({"type": "error", "code": "internal", "message": "x", "id": null}),
        ),
        (Kind::ServerFrame, with(message(), "seq", json!(0))),
        (Kind::FanoutMessage, with(fanout(), "seq", json!(0))),
        (
            Kind::InboundEvent,
            with(inbound(), "v", json!(ENVELOPE_VERSION + 1)),
        ),
        (Kind::FanoutMessage, with(fanout(), "v", json!(0))),
        (Kind::DeadLetter, with(dead_letter(), "v", json!(2))),
    ];
    for (kind, doc) in &schema_only {
        assert!(
            !kind.validator().is_valid(doc),
            "{}.json now accepts {doc}",
            kind.name()
        );
        assert!(rust_accepts(*kind, doc), "serde now rejects {doc}");
    }
    // Stricter in serde: JSON Schema counts 41.0 and 4.1e1 as integers, serde's u64 does not.
    // The protocol writes integers without fraction or exponent, so serde is right.
    for since in ["41.0", "4.1e1"] {
        let text = format!(r#"{{"type":"join","room":"lobby","since":{since}}}"#);
        let doc: Value = serde_json::from_str(&text).expect("JSON");
        assert!(
            Kind::ClientFrame.validator().is_valid(&doc),
            "client-frame.json now rejects {text}"
        );
        assert!(
            serde_json::from_str::<ClientFrame>(&text).is_err(),
            "serde now accepts {text}"
        );
    }
}

#[test]
fn to_frame_json_is_the_message_frame() {
    let server = Kind::ServerFrame.validator();
    let mut fanouts: Vec<Value> = schema_examples(Kind::FanoutMessage);
    fanouts.extend(
        doc_examples()
            .into_iter()
            .filter(|(k, _, _)| *k == Kind::FanoutMessage)
            .map(|(_, d, _)| d),
    );
    for doc in fanouts {
        let fanout: FanoutMessage =
            serde_json::from_str(&doc.to_string()).expect("fan-out example");
        let text = fanout.to_frame_json();
        let frame_doc: Value = serde_json::from_str(&text).expect("frame JSON");
        let expected = ServerFrame::Message {
            room: fanout.room.clone(),
            seq: fanout.seq,
            id: fanout.id.clone(),
            event: fanout.event.clone(),
            from: fanout.from.clone(),
            ts: fanout.ts,
            data: serde_json::from_str(fanout.data.get()).expect("data"),
        };
        assert_eq!(
            frame_doc,
            serde_json::to_value(&expected).expect("serialize frame")
        );
        assert_eq!(
            serde_json::from_str::<ServerFrame>(&text).expect("parse frame"),
            expected
        );
        assert_valid(Kind::ServerFrame, &server, &frame_doc, "to_frame_json");
    }
}

#[test]
fn data_travels_verbatim_from_inbound_event_to_frame() {
    // Key order, spacing and number spelling of `data` survive every hop untouched.
    let data = r#"{"z": 1, "a": [1.50, "é\u00e9"], "m": {"y": null}}"#;
    let text = format!(
        r#"{{"v":1,"id":"e-1","room":"lobby","event":"chat","from":"alice","ts":5,"data":{data}}}"#
    );
    let event: InboundEvent = serde_json::from_str(&text).expect("inbound");
    assert_eq!(event.data.get(), data);
    let fanout = FanoutMessage::from_event(&event, 7);
    assert_eq!(fanout.v, ENVELOPE_VERSION);
    assert_eq!(
        (fanout.seq, fanout.id.as_str(), fanout.from.as_str()),
        (7, "e-1", "alice")
    );
    let fanout_json = serde_json::to_string(&fanout).expect("fan-out");
    assert!(fanout_json.contains(data), "{fanout_json}");
    let fanout_doc: Value = serde_json::from_str(&fanout_json).expect("fan-out JSON");
    assert_valid(
        Kind::FanoutMessage,
        &Kind::FanoutMessage.validator(),
        &fanout_doc,
        "from_event",
    );
    let frame = fanout.to_frame_json();
    assert!(frame.contains(data), "{frame}");
    assert!(frame.starts_with(r#"{"type":"message","#), "{frame}");
}

#[test]
fn a_fanout_record_may_hold_several_messages_of_a_room() {
    let schema = Kind::FanoutMessage.validator();
    let first = fanout();
    let second = with(with(fanout(), "seq", json!(2)), "id", json!("m-2"));
    let batch = json!([first.clone(), second.clone()]);
    assert!(
        schema.is_valid(&batch),
        "an array of messages is a fan-out record"
    );
    assert!(schema.is_valid(&first), "so is one message");
    assert!(!schema.is_valid(&json!([])), "an empty array is not");
    assert!(
        !schema.is_valid(&json!([first.clone(), {"v": 1}])),
        "every element is a whole message"
    );
    let decoded = roomcast_schemas::decode_fanout(batch.to_string().as_bytes()).expect("batch");
    assert_eq!(
        decoded.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [first["seq"].as_u64().unwrap(), 2]
    );
    let one = roomcast_schemas::decode_fanout(first.to_string().as_bytes()).expect("one");
    assert_eq!(one.len(), 1);
    assert!(roomcast_schemas::decode_fanout(b"[{\"v\": 1}]").is_err());
}
