//! The gateway's one fan-out task: reads the process's fan-out subscription and hands each
//! room message to the room's local members.
//!
//! Each message is parsed once and turned into its `message` frame once; members receive a
//! reference-counted handle to the same buffer. Delivery never waits for a member (a full queue
//! closes that member as a slow consumer), so one slow client cannot hold up a room.

use crate::outbound::{FanoutBatch, RoomMessage};
use crate::rooms::Rooms;
use axum::extract::ws::Utf8Bytes;
use futures_util::FutureExt;
use roomcast_broker::{BrokerError, FanoutEvent, FanoutSubscription};
use roomcast_schemas::decode_fanout;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// First and longest pause after a failed read of the subscription.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Most fan-out events taken from the subscription at once. Under load the subscription holds
/// a backlog, and each member then receives a room's messages as one queue item, written with
/// one flush; when idle, every message goes out on its own at once.
const DRAIN_MAX: usize = 32;

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
        let failure = match event {
            Ok(first) => {
                retry = RETRY_MIN;
                if lost {
                    // Messages may have been missed while the subscription failed.
                    lost = false;
                    rooms.resync_all();
                }
                let mut events = vec![first];
                let mut failure = None;
                while events.len() < DRAIN_MAX {
                    match subscription.next().now_or_never() {
                        None => break,
                        Some(Ok(event)) => events.push(event),
                        Some(Err(err)) => {
                            failure = Some(err);
                            break;
                        }
                    }
                }
                deliver(events, &rooms);
                failure
            }
            Err(err) => Some(err),
        };
        match failure {
            None => {}
            Some(BrokerError::Closed) => {
                if !stop.is_cancelled() {
                    tracing::warn!(
                        "the broker closed the fan-out subscription; no more live messages"
                    );
                }
                return;
            }
            Some(err) => {
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

/// Messages of one room collected from a drain, in order.
struct Pending {
    room: Arc<str>,
    messages: Vec<RoomMessage>,
}

/// Hands `events` to the rooms' members: each message parsed and serialized once, a room's
/// messages grouped (in order) into one shared batch.
fn deliver(events: Vec<FanoutEvent>, rooms: &Rooms) {
    let mut batches: Vec<Pending> = Vec::new();
    for event in events {
        match event {
            FanoutEvent::Message { room, payload } => {
                let frames = frames(&room, &payload);
                if frames.is_empty() {
                    continue;
                }
                match batches.iter_mut().find(|pending| *pending.room == *room) {
                    Some(pending) => pending.messages.extend(frames),
                    None => batches.push(Pending {
                        room,
                        messages: frames,
                    }),
                }
            }
            FanoutEvent::Gap => {
                // Deliver what came before the gap, then let members resync from the store.
                flush(&mut batches, rooms);
                tracing::info!("fan-out reported a gap; members resync from the store");
                rooms.resync_all();
            }
        }
    }
    flush(&mut batches, rooms);
}

fn flush(batches: &mut Vec<Pending>, rooms: &Rooms) {
    for pending in batches.drain(..) {
        let batch: FanoutBatch = pending.messages.into();
        rooms.deliver(&pending.room, &batch);
    }
}

/// The seqs and `message` frames of a fan-out record (one message, or several of the room in
/// seq order); empty (logged) when it is unusable.
fn frames(room: &str, payload: &[u8]) -> Vec<RoomMessage> {
    let messages = match decode_fanout(payload) {
        Ok(messages) => messages,
        Err(err) => {
            tracing::warn!(room, error = %err, "dropping an undecodable fan-out record");
            return Vec::new();
        }
    };
    if let Some(other) = messages.iter().find(|m| *m.room != *room) {
        tracing::warn!(room, inner = %other.room, "dropping a fan-out record for another room");
        return Vec::new();
    }
    messages
        .iter()
        .map(|message| RoomMessage {
            seq: message.seq,
            frame: Utf8Bytes::from(message.to_frame_json()),
        })
        .collect()
}
