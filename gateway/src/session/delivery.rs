//! Delivery of the joined rooms' messages: per room the last seq delivered, the duplicate
//! filter, gap fill, and history replay paced by bytes.

use super::{Close, End, Session, Transport};
use crate::outbound::{Outbound, RoomMessage};
use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// Per joined room, the last seq delivered.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    rooms: HashMap<Arc<str>, u64>,
}

/// What to do with a room message of seq `seq`, given the last seq delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Already delivered: drop it.
    Drop,
    /// The next one: send it.
    Send,
    /// Messages are missing before it: replay up to `to` from the store first.
    Fill {
        /// The last missing seq.
        to: u64,
    },
}

/// The decision for `seq` after `last`.
pub(super) fn next(last: u64, seq: u64) -> Next {
    if seq <= last {
        Next::Drop
    } else if seq == last + 1 {
        Next::Send
    } else {
        Next::Fill { to: seq - 1 }
    }
}

impl Delivery {
    /// Whether `room` is joined.
    pub(super) fn contains(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Number of joined rooms.
    pub(super) fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Delivers `room` from after `last` on (a join restarts delivery).
    pub(super) fn start(&mut self, room: Arc<str>, last: u64) {
        self.rooms.insert(room, last);
    }

    /// Stops delivering `room`; whether it was joined.
    pub(super) fn remove(&mut self, room: &Arc<str>) -> bool {
        self.rooms.remove(room).is_some()
    }

    /// The joined rooms.
    pub(super) fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms.keys().cloned().collect()
    }

    fn last(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).copied()
    }

    fn set(&mut self, room: &str, seq: u64) {
        if let Some(last) = self.rooms.get_mut(room) {
            *last = seq;
        }
    }
}

impl Session {
    /// Handles one fan-out item.
    pub(super) async fn on_fanout<T: Transport>(
        &mut self,
        transport: &mut T,
        item: Outbound,
    ) -> Result<(), End> {
        match item {
            Outbound::Fanout { room, messages } => {
                for message in messages.iter() {
                    self.deliver(transport, &room, message).await?;
                }
                Ok(())
            }
            Outbound::Resync { room } => {
                if self.delivery.contains(&room) {
                    Box::pin(self.catch_up(transport, &room, None)).await?;
                }
                Ok(())
            }
        }
    }

    /// Delivers one fan-out message: drops a seq already delivered, fills a gap from the store
    /// first, and never delivers a room that is not joined (a join's replay covers it).
    async fn deliver<T: Transport>(
        &mut self,
        transport: &mut T,
        room: &Arc<str>,
        message: &RoomMessage,
    ) -> Result<(), End> {
        let Some(last) = self.delivery.last(room) else {
            return Ok(());
        };
        match next(last, message.seq) {
            Next::Drop => return Ok(()),
            Next::Send => {}
            Next::Fill { to } => {
                Box::pin(self.catch_up(transport, room, Some(to))).await?;
                let Some(last) = self.delivery.last(room) else {
                    return Ok(());
                };
                match next(last, message.seq) {
                    Next::Drop => return Ok(()),
                    Next::Send => {}
                    Next::Fill { .. } => {
                        // The store lacks seqs that fan-out already announced: deliver rather
                        // than stall, and leave a trace of the inconsistency.
                        tracing::error!(
                            room = &**room,
                            seq = message.seq,
                            last,
                            "store is missing messages announced by fan-out"
                        );
                    }
                }
            }
        }
        self.delivery.set(room, message.seq);
        self.out.push(message.frame.clone());
        Ok(())
    }

    /// Sends the stored messages of `room` after its last delivered seq until `target` is
    /// delivered (or, without a target, the store has no more). The store cuts each page at
    /// `history_page` messages or `replay_bytes` of payload (plus one message), and a page is
    /// written (and flushed, within the write deadline) before the next is read: a replay
    /// holds about `replay_bytes` per connection.
    ///
    /// A replay waits for its user's turn, and reads each page under a store-read permit that
    /// it gives back before writing the page (see [`crate::replay`]).
    pub(super) async fn catch_up<T: Transport>(
        &mut self,
        transport: &mut T,
        room: &Arc<str>,
        target: Option<u64>,
    ) -> Result<(), End> {
        let page = self.gateway.config.history_page;
        let budget = self.gateway.config.replay_bytes;
        let replays = self.gateway.replays.clone();
        let _turn = replays.turn(self.claims.sub.as_arc()).await;
        loop {
            let Some(last) = self.delivery.last(room) else {
                return Ok(());
            };
            if target.is_some_and(|target| last >= target) {
                return Ok(());
            }
            let read = replays.read().await;
            let store = &self.gateway.store;
            let messages = match store.history_within(room, last, page, budget).await {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(room = &**room, error = %err, "reading room history failed");
                    return Err(End::Close(Close::INTERNAL));
                }
            };
            let count = messages.len();
            let mut payload = 0;
            let mut delivered = last;
            for message in messages {
                payload += message.data.get().len();
                if message.seq <= delivered {
                    continue;
                }
                self.out.push(Utf8Bytes::from(message.to_frame_json()));
                delivered = message.seq;
            }
            drop(read);
            self.delivery.set(room, delivered);
            if delivered == last {
                return Ok(());
            }
            // Cut by count or by bytes: there may be more.
            let more = count >= page as usize || payload >= budget;
            if !more {
                return Ok(());
            }
            self.write(transport, super::Write::Queued).await?;
        }
    }
}
