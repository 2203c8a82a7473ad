//! The gateway's one fan-out task: reads the process's fan-out subscription and hands each
//! room message to the room's local members.
//!
//! Each message is parsed once and turned into its `message` frame once; members receive a
//! reference-counted handle to the same buffer. Delivery never waits for a member (a full queue
//! closes that member as a slow consumer), so one slow client cannot hold up a room.

use crate::rooms::Rooms;
use axum::extract::ws::Utf8Bytes;
use roomcast_broker::{BrokerError, FanoutEvent, FanoutSubscription};
use roomcast_schemas::FanoutMessage;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// First and longest pause after a failed read of the subscription.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled or the broker closes the subscription.
pub(crate) async fn run(
    subscription: Arc<dyn FanoutSubscription>,
    rooms: Arc<Rooms>,
    stop: CancellationToken,
) {
    let mut retry = RETRY_MIN;
    let mut lost = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            event = subscription.next() => event,
        };
        match event {
            Ok(event) => {
                retry = RETRY_MIN;
                if lost {
                    // Messages may have been missed while the subscription failed.
                    lost = false;
                    rooms.resync_all();
                }
                handle(event, &rooms);
            }
            Err(BrokerError::Closed) => {
                if !stop.is_cancelled() {
                    tracing::warn!(
                        "the broker closed the fan-out subscription; no more live messages"
                    );
                }
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?retry, "reading fan-out failed");
                lost = true;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

fn handle(event: FanoutEvent, rooms: &Rooms) {
    match event {
        FanoutEvent::Message { room, payload } => {
            let message: FanoutMessage = match serde_json::from_slice(&payload) {
                Ok(message) => message,
                Err(err) => {
                    tracing::warn!(room = &*room, error = %err, "dropping an undecodable fan-out message");
                    return;
                }
            };
            if *message.room != *room {
                tracing::warn!(room = &*room, inner = %message.room, "dropping a fan-out message for another room");
                return;
            }
            let frame = Utf8Bytes::from(message.to_frame_json());
            rooms.deliver(&room, message.seq, &frame);
        }
        FanoutEvent::Gap => {
            tracing::info!("fan-out reported a gap; members resync from the store");
            rooms.resync_all();
        }
    }
}
