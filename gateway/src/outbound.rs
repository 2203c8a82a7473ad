//! What fan-out hands to a connection: the types shared by the room registry, the fan-out task
//! and the session core.
//!
//! Fan-out never waits for a connection. It offers each member an [`Outbound`] item through the
//! member's [`MemberHandle`]; a member whose queue is full, or that has more than its limit of
//! messages waiting, is marked slow and closed by its session with 4008.

use axum::extract::ws::Utf8Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

/// Identifies one connection of this process.
pub(crate) type ConnId = u64;

/// One stored message of a room as delivered: its seq and its `message` frame.
#[derive(Debug, Clone)]
pub(crate) struct RoomMessage {
    /// Position in the room.
    pub(crate) seq: u64,
    /// The serialized `message` frame, shared by every member.
    pub(crate) frame: Utf8Bytes,
}

/// Consecutive messages of one room in seq order, shared between all members of the room.
pub(crate) type FanoutBatch = Arc<[RoomMessage]>;

/// An item fan-out queues for a member.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Consecutive fan-out messages of one room, in seq order.
    Fanout {
        /// Room name.
        room: Arc<str>,
        /// The messages.
        messages: FanoutBatch,
    },
    /// Fan-out may have lost messages: read the room's newer messages from the store.
    Resync {
        /// Room name.
        room: Arc<str>,
    },
}

/// What the registry keeps of a member: the way into its outbound queue.
#[derive(Debug, Clone)]
pub(crate) struct MemberHandle {
    /// The connection's bounded outbound queue.
    pub(crate) tx: mpsc::Sender<Outbound>,
    /// Cancelled when the queue overflowed: the connection is closed as a slow consumer.
    pub(crate) slow: CancellationToken,
    /// Fan-out messages queued and not yet written (the session takes them off).
    pub(crate) backlog: Arc<AtomicUsize>,
    /// Most fan-out messages queued before the member counts as a slow consumer.
    pub(crate) limit: usize,
}

impl MemberHandle {
    /// A handle and the receiving end of its queue, which holds `limit` items.
    pub(crate) fn new(limit: usize) -> (MemberHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(limit);
        let handle = MemberHandle {
            tx,
            slow: CancellationToken::new(),
            backlog: Arc::new(AtomicUsize::new(0)),
            limit,
        };
        (handle, rx)
    }

    /// Queues `item` without waiting; a full queue, or more than `limit` fan-out messages
    /// waiting (items carry batches), marks the member as a slow consumer.
    pub(crate) fn offer(&self, item: Outbound) {
        let messages = match &item {
            Outbound::Fanout { messages, .. } => messages.len(),
            Outbound::Resync { .. } => 0,
        };
        if messages > 0 {
            let before = self.backlog.fetch_add(messages, Ordering::Relaxed);
            if before + messages > self.limit {
                self.backlog.fetch_sub(messages, Ordering::Relaxed);
                self.mark_slow();
                return;
            }
        }
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.backlog.fetch_sub(messages, Ordering::Relaxed);
                self.mark_slow();
            }
            // The connection is ending; it removes itself from its rooms.
            Err(TrySendError::Closed(_)) => {
                self.backlog.fetch_sub(messages, Ordering::Relaxed);
            }
        }
    }

    /// Takes `count` delivered messages off the backlog.
    pub(crate) fn taken(&self, count: usize) {
        self.backlog.fetch_sub(count, Ordering::Relaxed);
    }

    fn mark_slow(&self) {
        self.slow.cancel();
    }
}
