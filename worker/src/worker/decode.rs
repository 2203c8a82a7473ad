//! Decoding and checking an inbound delivery; a failure is the reason of its dead letter.

use roomcast_broker::Delivery;
use roomcast_schemas::data::MAX_DATA_DEPTH;
use roomcast_schemas::{ENVELOPE_VERSION, InboundEvent, check_data};

/// Decodes and validates a delivery's payload; the error is the dead letter's reason.
pub(super) fn decode(delivery: &Delivery) -> Result<InboundEvent, String> {
    decode_event(&delivery.key, &delivery.payload)
}

/// Decodes and checks an inbound event published under broker key `key`; the error is the
/// dead-letter reason. Decoding checks the names (an invalid room, event name, id or sender is
/// an undecodable payload); the version and the key are checked here.
pub(crate) fn decode_event(key: &str, payload: &[u8]) -> Result<InboundEvent, String> {
    let event: InboundEvent =
        serde_json::from_slice(payload).map_err(|error| format!("undecodable payload: {error}"))?;
    if event.v != ENVELOPE_VERSION {
        return Err(format!(
            "unsupported envelope version {} (expected {ENVELOPE_VERSION})",
            event.v
        ));
    }
    // What a gateway refuses to accept, another producer may have sent: it would reach every
    // member and every replay.
    check_data(event.data.get(), MAX_DATA_DEPTH)
        .map_err(|error| format!("invalid event: {error}"))?;
    if event.room != key {
        return Err(format!(
            "the event's room `{}` differs from its broker key `{key}`",
            event.room
        ));
    }
    Ok(event)
}
