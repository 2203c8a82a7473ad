//! Decoding and checking an inbound delivery; a failure is the reason of its dead letter.

use roomcast_broker::Delivery;
use roomcast_schemas::{ENVELOPE_VERSION, InboundEvent, names};

/// Decodes and validates a delivery's payload; the error is the dead letter's reason.
pub(super) fn decode(delivery: &Delivery) -> Result<InboundEvent, String> {
    decode_event(&delivery.key, &delivery.payload)
}

/// Decodes and checks an inbound event published under broker key `key`; the error is the
/// dead-letter reason.
pub(crate) fn decode_event(key: &str, payload: &[u8]) -> Result<InboundEvent, String> {
    let event: InboundEvent =
        serde_json::from_slice(payload).map_err(|error| format!("undecodable payload: {error}"))?;
    if event.v != ENVELOPE_VERSION {
        return Err(format!(
            "unsupported envelope version {} (expected {ENVELOPE_VERSION})",
            event.v
        ));
    }
    let invalid = |error: names::NameError| format!("invalid event: {error}");
    names::check_room(&event.room).map_err(invalid)?;
    names::check_event(&event.event).map_err(invalid)?;
    names::check_id(&event.id).map_err(invalid)?;
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
