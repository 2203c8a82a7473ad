//! What fan-out hands to a connection: the types shared by the room registry, the fan-out task
//! and the session core.
//!
//! Fan-out never waits for a connection. It offers each member an [`Outbound`] item through the
//! member's [`MemberHandle`]; a member whose queue is full, or that has more than its limit of
//! messages waiting, is marked slow and closed by its session with 4008. The session takes items
//! from its [`OutboundRx`].

use axum::extract::ws::Utf8Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;

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

/// Capacity an emptied queue keeps; a larger one (left by a burst) is given back.
const KEPT_CAPACITY: usize = 4;

/// What the registry keeps of a member: the way into its outbound queue.
#[derive(Debug, Clone)]
pub(crate) struct MemberHandle {
    queue: Arc<Queue>,
}

/// The session's end of its outbound queue.
#[derive(Debug)]
pub(crate) struct OutboundRx {
    queue: Arc<Queue>,
}

/// What [`OutboundRx::recv`] hands the session.
#[derive(Debug)]
pub(crate) enum Received {
    /// The next queued item.
    Item(Outbound),
    /// The queue overflowed: close the connection as a slow consumer.
    Slow,
}

/// A member's bounded outbound queue. It allocates only while items wait (and gives a burst's
/// capacity back once drained), so an idle connection's queue costs a few words; a waiting
/// session is woken when the queue stops being empty, or when it overflows.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
    /// Most items, and most fan-out messages, queued at once.
    limit: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Outbound>,
    /// Fan-out messages in `items` (items carry batches).
    messages: usize,
    /// The queue overflowed; nothing more is queued.
    slow: bool,
    /// The session ended; nothing more is queued.
    closed: bool,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        // The state is consistent after every statement: a panicking holder leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemberHandle {
    /// A handle and the session's end of a queue that holds at most `limit` items and `limit`
    /// fan-out messages.
    pub(crate) fn new(limit: usize) -> (MemberHandle, OutboundRx) {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            limit,
        });
        (
            MemberHandle {
                queue: queue.clone(),
            },
            OutboundRx { queue },
        )
    }

    /// Queues `item` without waiting; beyond the queue's limit the member is marked as a slow
    /// consumer and what it had queued is dropped (its session closes it with 4008).
    pub(crate) fn offer(&self, item: Outbound) {
        let messages = match &item {
            Outbound::Fanout { messages, .. } => messages.len(),
            Outbound::Resync { .. } => 0,
        };
        let mut state = self.queue.state();
        if state.closed || state.slow {
            return;
        }
        let wake = if state.items.len() >= self.queue.limit
            || state.messages + messages > self.queue.limit
        {
            state.slow = true;
            state.items = VecDeque::new();
            state.messages = 0;
            true
        } else {
            state.items.push_back(item);
            state.messages += messages;
            state.items.len() == 1
        };
        drop(state);
        if wake {
            self.queue.ready.notify_one();
        }
    }

    /// Whether the member was marked as a slow consumer.
    #[cfg(test)]
    pub(crate) fn is_slow(&self) -> bool {
        self.queue.state().slow
    }
}

impl OutboundRx {
    /// The next item, waiting for one; [`Received::Slow`] once the queue overflowed.
    pub(crate) async fn recv(&self) -> Received {
        loop {
            if let Some(received) = self.take() {
                return received;
            }
            // A permit stored by an offer made since `take` makes this return at once.
            self.queue.ready.notified().await;
        }
    }

    /// The next item if one is queued (and the queue did not overflow).
    pub(crate) fn try_recv(&self) -> Option<Outbound> {
        match self.take()? {
            Received::Item(item) => Some(item),
            Received::Slow => None,
        }
    }

    fn take(&self) -> Option<Received> {
        let mut state = self.queue.state();
        if state.slow {
            return Some(Received::Slow);
        }
        let item = state.items.pop_front()?;
        if let Outbound::Fanout { messages, .. } = &item {
            state.messages -= messages.len();
        }
        if state.items.is_empty() && state.items.capacity() > KEPT_CAPACITY {
            state.items.shrink_to(KEPT_CAPACITY);
        }
        Some(Received::Item(item))
    }

    /// Ends the queue: what is queued is dropped and later offers are ignored.
    pub(crate) fn close(&self) {
        let mut state = self.queue.state();
        state.closed = true;
        state.items = VecDeque::new();
        state.messages = 0;
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fanout(room: &Arc<str>, seqs: std::ops::RangeInclusive<u64>) -> Outbound {
        let messages: Vec<RoomMessage> = seqs
            .map(|seq| RoomMessage {
                seq,
                frame: Utf8Bytes::from_static("{}"),
            })
            .collect();
        Outbound::Fanout {
            room: room.clone(),
            messages: Arc::from(messages),
        }
    }

    fn seqs(item: Outbound) -> Vec<u64> {
        match item {
            Outbound::Fanout { messages, .. } => messages.iter().map(|m| m.seq).collect(),
            Outbound::Resync { .. } => Vec::new(),
        }
    }

    #[tokio::test]
    async fn items_come_out_in_order_and_a_waiting_session_is_woken() {
        let room: Arc<str> = Arc::from("r");
        let (handle, rx) = MemberHandle::new(8);
        let waiting = tokio::spawn(async move {
            let Received::Item(first) = rx.recv().await else {
                panic!("not slow")
            };
            (seqs(first), rx)
        });
        tokio::task::yield_now().await;
        handle.offer(fanout(&room, 1..=2));
        handle.offer(fanout(&room, 3..=3));
        let (first, rx) = waiting.await.unwrap();
        assert_eq!(first, vec![1, 2]);
        assert_eq!(seqs(rx.try_recv().unwrap()), vec![3]);
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn too_many_messages_mark_the_member_slow_and_free_the_queue() {
        let room: Arc<str> = Arc::from("r");
        let (handle, rx) = MemberHandle::new(4);
        handle.offer(fanout(&room, 1..=3));
        assert!(!handle.is_slow());
        handle.offer(fanout(&room, 4..=5));
        assert!(handle.is_slow());
        assert!(matches!(rx.recv().await, Received::Slow));
        assert!(rx.try_recv().is_none());
        assert!(handle.queue.state().items.capacity() == 0);
    }

    #[tokio::test]
    async fn a_drained_queue_gives_back_a_burst_and_a_closed_one_takes_nothing() {
        let room: Arc<str> = Arc::from("r");
        let (handle, rx) = MemberHandle::new(1024);
        for seq in 1..=100 {
            handle.offer(fanout(&room, seq..=seq));
        }
        while rx.try_recv().is_some() {}
        assert!(handle.queue.state().items.capacity() <= KEPT_CAPACITY);
        rx.close();
        handle.offer(fanout(&room, 101..=101));
        assert!(rx.try_recv().is_none());
        assert!(!handle.is_slow());
    }
}
