//! Inbound events for tests: building them and publishing rounds of them.

use crate::Broker;
use bytes::Bytes;
use roomcast_schemas::{ENVELOPE_VERSION, EventId, EventName, InboundEvent, RoomName, UserId};
use serde_json::value::RawValue;

/// An inbound event (`say`, a fixed timestamp) with `data` given as JSON text.
pub fn inbound_event(room: &str, from: &str, id: &str, data: &str) -> InboundEvent {
    InboundEvent {
        v: ENVELOPE_VERSION,
        id: EventId::new(id).expect("a valid test id"),
        room: RoomName::new(room).expect("a valid test room"),
        event: EventName::new("say").expect("a valid event name"),
        from: UserId::new(from).expect("a valid test user"),
        ts: 1_700_000_000_000,
        data: RawValue::from_string(data.to_owned()).expect("test data is JSON"),
    }
}

/// Publishes `count` events to each of `rooms`, interleaving the rooms, from three senders;
/// ids and data name the `round`. Returns the events in publish order; panics when a publish
/// fails (callers bound the wait).
pub async fn publish_events(
    broker: &dyn Broker,
    rooms: &[String],
    round: &str,
    count: usize,
) -> Vec<InboundEvent> {
    let mut events = Vec::new();
    for i in 0..count {
        for (r, room) in rooms.iter().enumerate() {
            let from = format!("user{}", (i + r) % 3);
            let id = format!("{round}-{room}-{i}");
            let data = format!(r#"{{"n":{i},"round":"{round}","text":"héllo {r}"}}"#);
            let event = inbound_event(room, &from, &id, &data);
            let payload = serde_json::to_vec(&event).expect("encode");
            broker
                .publish(room, Bytes::from(payload))
                .await
                .expect("publish");
            events.push(event);
        }
    }
    events
}
