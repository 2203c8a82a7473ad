//! Publishes: checked, handed to the broker in the order the connection sent them, and
//! answered in that order once the broker confirmed (or refused) durable storage.
//!
//! A publish's place in its room's order is fixed when the broker's `start_publish` returns;
//! its confirm is then awaited while the connection's next frames are read, up to
//! [`PUBLISH_PIPELINE`] at once. `ack` is sent only after the confirm: never for an event that
//! may not be stored.

use super::commands::{room_error, token_expired};
use super::{Close, End, PUBLISH_PIPELINE, Session};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use roomcast_broker::BrokerError;
use roomcast_schemas::{
    ENVELOPE_VERSION, ErrorCode, EventId, EventName, InboundEvent, RoomName, ServerFrame,
    check_data, now_ms,
};
use serde_json::value::RawValue;
use std::future::Future;
use std::pin::Pin;

/// What the broker answered for a publish.
pub(super) struct PublishAnswer {
    /// The client's event id.
    id: EventId,
    /// The event's room.
    room: RoomName,
    /// `Ok` once durable.
    result: Result<(), BrokerError>,
}

type Confirming = Pin<Box<dyn Future<Output = PublishAnswer> + Send>>;

/// The publishes of a connection awaiting their confirms, in publish order.
#[derive(Default)]
pub(super) struct Publishes {
    /// Created on the first publish: most connections never publish.
    inflight: Option<FuturesOrdered<Confirming>>,
}

impl Publishes {
    /// Whether another publish may be started.
    pub(super) fn has_room(&self) -> bool {
        self.inflight
            .as_ref()
            .is_none_or(|inflight| inflight.len() < PUBLISH_PIPELINE)
    }

    /// The next answer in publish order; pending forever when nothing is in flight.
    pub(super) async fn next_answer(&mut self) -> Option<PublishAnswer> {
        match &mut self.inflight {
            Some(inflight) if !inflight.is_empty() => inflight.next().await,
            _ => std::future::pending().await,
        }
    }

    /// The next answer if it is ready now.
    pub(super) fn ready_answer(&mut self) -> Option<PublishAnswer> {
        self.next_answer().now_or_never().flatten()
    }

    fn push(&mut self, confirming: Confirming) {
        self.inflight
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(confirming);
    }
}

impl Session {
    /// `publish`: checks, then hands the event to the broker; its answer comes later.
    pub(super) async fn publish(
        &mut self,
        id: EventId,
        room: RoomName,
        event: EventName,
        data: Box<RawValue>,
    ) -> Result<(), End> {
        if !self.token.allows() {
            self.queue_error(token_expired(Some(&id), &room));
            return Ok(());
        }
        if !self.delivery.contains(&room) {
            self.queue_error(room_error(
                ErrorCode::NotJoined,
                Some(&id),
                Some(&room),
                "join the room before publishing to it",
            ));
            return Ok(());
        }
        if let Err(error) = check_data(data.get(), self.gateway.config.max_data_depth) {
            self.queue_error(room_error(
                ErrorCode::InvalidFrame,
                Some(&id),
                Some(&room),
                format!("invalid frame: {error}"),
            ));
            return Ok(());
        }
        if let Err(limited) = self
            .limiter
            .check_publish(&self.gateway.limits, &self.claims.sub)
        {
            self.queue_error(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                id: Some(id.to_string()),
                room: Some(room.to_string()),
                message: "too many publishes; retry later".to_owned(),
                retry_after_ms: Some(limited.retry_after_ms().max(1)),
            });
            return Ok(());
        }
        let envelope = InboundEvent {
            v: ENVELOPE_VERSION,
            id: id.clone(),
            room: room.clone(),
            event,
            from: self.claims.sub.clone(),
            ts: now_ms(),
            data,
        };
        let payload = match serde_json::to_vec(&envelope) {
            Ok(payload) => Bytes::from(payload),
            Err(err) => {
                tracing::error!(error = %err, "encoding an inbound event failed");
                self.queue_error(room_error(
                    ErrorCode::Internal,
                    Some(&id),
                    Some(&room),
                    "the event could not be encoded",
                ));
                return Ok(());
            }
        };
        let stopping = self.gateway.sessions_stop.clone();
        let started = tokio::select! {
            biased;
            // Shutting down: no answer (never an ack for an unconfirmed event).
            _ = stopping.cancelled() => return Err(End::Close(Close::GOING_AWAY)),
            started = self.gateway.broker.publisher.start_publish(&room, payload) => started,
        };
        match started {
            Ok(pending) => {
                self.publishes.push(Box::pin(async move {
                    let result = pending.await;
                    PublishAnswer { id, room, result }
                }));
            }
            Err(err) => self.answer_publish(PublishAnswer {
                id,
                room,
                result: Err(err),
            }),
        }
        Ok(())
    }

    /// Queues the answer to a publish: `ack` once it is durable, `unavailable` otherwise.
    pub(super) fn answer_publish(&mut self, answer: PublishAnswer) {
        match answer.result {
            Ok(()) => self.queue(&ServerFrame::Ack {
                id: answer.id.to_string(),
            }),
            Err(err) => {
                tracing::warn!(room = %answer.room, error = %err, "publishing an event failed");
                self.queue_error(room_error(
                    ErrorCode::Unavailable,
                    Some(&answer.id),
                    Some(&answer.room),
                    "the event could not be stored; retry with the same id",
                ));
            }
        }
    }
}
