//! Decoding and checking an inbound delivery; a failure is the reason of its dead letter.

use roomcast_broker::Delivery;
use roomcast_schemas::{ENVELOPE_VERSION, InboundEvent};

/// Decodes and validates a delivery's payload; the error is the dead letter's reason.
pub(super) fn decode(delivery: &Delivery) -> Result<InboundEvent, String> {
    decode_event(&delivery.key, &delivery.payload)
}

/// Decodes and checks an inbound event published under broker key `key`; the error is the
/// dead-letter reason. Decoding checks the names (an invalid room, event name or id is an
/// undecodable payload); the sender, the version and the key are checked here.
pub(crate) fn decode_event(key: &str, payload: &[u8]) -> Result<InboundEvent, String> {
    let event: InboundEvent =
        serde_json::from_slice(payload).map_err(|error| format!("undecodable payload: {error}"))?;
    if event.v != ENVELOPE_VERSION {
        return Err(format!(
            "unsupported envelope version {} (expected {ENVELOPE_VERSION})",
            event.v
        ));
    }
    if event.from.is_empty() || event.from.chars().any(char::is_control) {
        return Err("invalid event: `from` is empty or holds control characters".to_owned());
    }
    if event.room != key {
        return Err(format!(
            "the event's room `{}` differs from its broker key `{key}`",
            event.room
        ));
    }
    Ok(event)
}
