//! Client frames: what `join`, `leave` and `refresh` do, and the error answers.
//!
//! Names arrive validated ([`RoomName`], [`EventId`]): a frame whose names are bad never gets
//! here, and its error echoes only the names that were valid.

use super::{End, Session, Transport};
use crate::auth::Claims;
use roomcast_schemas::{
    AccessToken, ClientFrame, ErrorCode, EventId, FrameError, RoomName, ServerFrame,
};
use std::sync::Arc;

/// An error frame about `room` (and a publish's `id`).
pub(super) fn room_error(
    code: ErrorCode,
    id: Option<&EventId>,
    room: Option<&RoomName>,
    message: impl Into<String>,
) -> ServerFrame {
    ServerFrame::Error {
        code,
        id: id.map(|id| id.to_string()),
        room: room.map(|room| room.to_string()),
        message: message.into(),
        retry_after_ms: None,
    }
}

/// The answer to a binary frame.
pub(super) fn binary_frame() -> ServerFrame {
    ServerFrame::error(
        ErrorCode::InvalidFrame,
        "binary frames are not supported: send JSON text frames",
    )
}

/// The answer to a frame over `max` bytes (the connection is then closed with 1009).
pub(super) fn too_large(max: usize) -> ServerFrame {
    ServerFrame::error(
        ErrorCode::TooLarge,
        format!("frames are limited to {max} bytes"),
    )
}

fn invalid(err: FrameError) -> ServerFrame {
    room_error(
        ErrorCode::InvalidFrame,
        err.id.as_ref(),
        err.room.as_ref(),
        format!("invalid frame: {}", err.message),
    )
}

/// The answer to a join or publish after the token expired.
pub(super) fn token_expired(id: Option<&EventId>, room: &RoomName) -> ServerFrame {
    room_error(
        ErrorCode::TokenExpired,
        id,
        Some(room),
        "the token has expired: send refresh with a new token",
    )
}

impl Session {
    /// Queues an error frame.
    pub(super) fn queue_error(&mut self, frame: ServerFrame) {
        self.queue(&frame);
    }

    /// Handles one text frame.
    pub(super) async fn on_text<T: Transport>(
        &mut self,
        transport: &mut T,
        text: &str,
    ) -> Result<(), End> {
        match ClientFrame::parse(text) {
            Err(err) => {
                self.queue_error(invalid(err));
                Ok(())
            }
            Ok(ClientFrame::Join { room, since }) => self.join(transport, room, since).await,
            Ok(ClientFrame::Leave { room }) => self.leave(room).await,
            Ok(ClientFrame::Publish {
                id,
                room,
                event,
                data,
            }) => self.publish(id, room, event, data).await,
            Ok(ClientFrame::Refresh { token }) => {
                self.refresh(&token).await;
                Ok(())
            }
        }
    }

    /// `join`: membership (subscription in effect), `joined`, then the replay after `since`.
    async fn join<T: Transport>(
        &mut self,
        transport: &mut T,
        room: RoomName,
        since: Option<u64>,
    ) -> Result<(), End> {
        if !self.token.allows() {
            self.queue_error(token_expired(None, &room));
            return Ok(());
        }
        if !self.claims.may_access(&room) {
            let frame = room_error(
                ErrorCode::ForbiddenRoom,
                None,
                Some(&room),
                "the token does not allow this room",
            );
            self.queue_error(frame);
            return Ok(());
        }
        let rejoin = self.delivery.contains(&room);
        let limit = self.gateway.config.max_rooms_per_connection;
        if !rejoin && self.delivery.len() >= limit {
            let message = format!("a connection may hold at most {limit} rooms");
            self.queue_error(room_error(
                ErrorCode::TooManyRooms,
                None,
                Some(&room),
                message,
            ));
            return Ok(());
        }
        let limited = self
            .limiter
            .check_join(since.is_some())
            .map_err(|limited| limited.retry_after_ms().max(1));
        if let Err(retry_after_ms) = limited {
            self.queue_error(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                id: None,
                room: Some(room.to_string()),
                message: "too many joins; retry later".to_owned(),
                retry_after_ms: Some(retry_after_ms),
            });
            return Ok(());
        }
        let name: Arc<str> = room.as_arc().clone();
        if !rejoin {
            let joined = self
                .gateway
                .rooms
                .join(&name, self.conn, self.member.clone())
                .await;
            if let Err(err) = joined {
                tracing::warn!(room = %room, error = %err, "fan-out subscribe failed");
                self.queue_error(room_error(
                    ErrorCode::Unavailable,
                    None,
                    Some(&room),
                    "the room cannot be joined right now; try again",
                ));
                return Ok(());
            }
        }
        let last = match self.gateway.store.last_seq(&room).await {
            Ok(last) => last,
            Err(err) => {
                tracing::warn!(room = %room, error = %err, "reading the room's last seq failed");
                self.delivery.remove(&name);
                self.gateway.rooms.leave(&name, self.conn).await;
                self.queue_error(room_error(
                    ErrorCode::Unavailable,
                    None,
                    Some(&room),
                    "the room's messages cannot be read right now; join again",
                ));
                return Ok(());
            }
        };
        self.queue(&ServerFrame::Joined {
            room: room.to_string(),
            seq: last,
        });
        match since {
            None => self.delivery.start(name, last),
            Some(since) => {
                // A `since` beyond the store's end (e.g. a reset store) resumes from the end.
                self.delivery.start(name.clone(), since.min(last));
                Box::pin(self.catch_up(transport, &name, None)).await?;
            }
        }
        Ok(())
    }

    /// `leave`: answered with `left` also for a room that is not joined (idempotent).
    async fn leave(&mut self, room: RoomName) -> Result<(), End> {
        if let Err(limited) = self.limiter.check_join(false) {
            self.queue_error(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                id: None,
                room: Some(room.to_string()),
                message: "too many joins and leaves; retry later".to_owned(),
                retry_after_ms: Some(limited.retry_after_ms().max(1)),
            });
            return Ok(());
        }
        if self.delivery.remove(room.as_arc()) {
            self.gateway.rooms.leave(&room, self.conn).await;
        }
        self.queue(&ServerFrame::Left {
            room: room.to_string(),
        });
        Ok(())
    }

    /// `refresh`: a new token for the same user, verified like the handshake's; its `rooms`
    /// then apply, and joined rooms it no longer allows are left.
    async fn refresh(&mut self, token: &AccessToken) {
        // Charged before the signature check, so that refused tokens count too.
        if let Err(limited) = self
            .limiter
            .check_refresh(&self.gateway.limits, &self.claims.sub)
        {
            self.queue_error(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                id: None,
                room: None,
                message: "too many refreshes; retry later".to_owned(),
                retry_after_ms: Some(limited.retry_after_ms().max(1)),
            });
            return;
        }
        let claims = match self.gateway.verify(token.expose()) {
            Ok(claims) => claims,
            Err(err) => {
                self.queue_error(refused(err.to_string()));
                return;
            }
        };
        if claims.sub != self.claims.sub {
            self.queue_error(refused("the token is for another user"));
            return;
        }
        let lost: Vec<Arc<str>> = self
            .delivery
            .rooms()
            .into_iter()
            .filter(|room| !claims.may_access(room))
            .collect();
        for room in lost {
            self.delivery.remove(&room);
            self.gateway.rooms.leave(&room, self.conn).await;
            self.queue(&ServerFrame::Left {
                room: room.to_string(),
            });
        }
        let exp = claims.exp;
        self.set_claims(claims);
        self.queue(&ServerFrame::Refreshed { exp });
    }

    fn set_claims(&mut self, claims: Claims) {
        self.token = super::TokenClock::new(claims.exp, super::token_times(&self.gateway));
        self.claims = claims;
    }
}

/// The answer to a refused `refresh` (the old token stays in effect).
fn refused(message: impl Into<String>) -> ServerFrame {
    ServerFrame::error(ErrorCode::InvalidToken, message)
}
