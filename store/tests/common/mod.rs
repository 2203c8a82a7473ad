//! Helpers shared by the store's integration tests.
#![allow(dead_code, unreachable_pub)]

use roomcast_schemas::{ENVELOPE_VERSION, EventId, EventName, InboundEvent, RoomName, UserId};
use serde_json::value::RawValue;

// A crate's own integration tests cannot turn on its `testkit` feature: compile the module here.
#[path = "../../src/testkit.rs"]
mod testkit;
pub use testkit::PgDatabase;

/// Sends the code's tracing output to the test's output (filtered by `RUST_LOG`, off by
/// default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// A random name with a readable prefix (rooms, senders, groups).
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// An inbound event with `data` given as JSON text.
pub fn event(room: &str, from: &str, id: &str, data: &str) -> InboundEvent {
    InboundEvent {
        v: ENVELOPE_VERSION,
        id: EventId::new(id).unwrap(),
        room: RoomName::new(room).unwrap(),
        event: EventName::new("say").unwrap(),
        from: UserId::new(from).unwrap(),
        ts: 1_700_000_000_000,
        data: RawValue::from_string(data.to_owned()).expect("test data is JSON"),
    }
}
