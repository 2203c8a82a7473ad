//! In-process fan-out: a registry of subscriptions per room.
//!
//! Publishing looks the room up under a read lock and offers the message to each subscribed
//! mailbox (a bounded queue per subscription). The message is shared, not copied: the room
//! name is an `Arc<str>` and the payload `Bytes`, so each subscriber costs two refcount bumps.
//! A full mailbox drops the message and flags the subscription, which then yields
//! [`FanoutEvent::Gap`] before anything published after the loss.

use super::lock;
use crate::{BrokerError, FanoutEvent, FanoutSubscription};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

type Item = (Arc<str>, Bytes);

/// One subscription's queue.
#[derive(Debug)]
struct Mailbox {
    id: u64,
    tx: mpsc::Sender<Item>,
    lagged: AtomicBool,
}

/// The room registry.
#[derive(Debug)]
pub(super) struct FanoutHub {
    rooms: RwLock<HashMap<Arc<str>, Vec<Arc<Mailbox>>>>,
    closed: CancellationToken,
    capacity: usize,
    next_id: AtomicU64,
}

impl FanoutHub {
    /// A hub whose subscriptions buffer up to `capacity` messages each.
    pub(super) fn new(capacity: usize) -> Self {
        FanoutHub {
            rooms: RwLock::new(HashMap::new()),
            closed: CancellationToken::new(),
            capacity: capacity.max(1),
            next_id: AtomicU64::new(1),
        }
    }

    /// Shuts fan-out down: every subscription yields `Closed`.
    pub(super) fn close(&self) {
        self.closed.cancel();
        self.rooms
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Offers a message to the room's subscriptions.
    pub(super) fn publish(&self, room: &str, payload: Bytes) -> Result<(), BrokerError> {
        if self.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        let rooms = self.rooms.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((name, mailboxes)) = rooms.get_key_value(room) {
            for mailbox in mailboxes {
                match mailbox.tx.try_send((name.clone(), payload.clone())) {
                    Ok(()) | Err(TrySendError::Closed(_)) => {}
                    Err(TrySendError::Full(_)) => mailbox.lagged.store(true, Ordering::SeqCst),
                }
            }
        }
        Ok(())
    }

    /// Opens a subscription with no rooms.
    pub(super) fn subscribe(self: &Arc<Self>) -> Result<Subscription, BrokerError> {
        if self.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        let (tx, rx) = mpsc::channel(self.capacity);
        Ok(Subscription {
            hub: self.clone(),
            mailbox: Arc::new(Mailbox {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                tx,
                lagged: AtomicBool::new(false),
            }),
            rx: tokio::sync::Mutex::new(rx),
            rooms: Mutex::new(HashSet::new()),
        })
    }

    fn remove(&self, room: &str, id: u64) {
        let mut rooms = self.rooms.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(mailboxes) = rooms.get_mut(room) {
            mailboxes.retain(|m| m.id != id);
            if mailboxes.is_empty() {
                rooms.remove(room);
            }
        }
    }
}

/// A fan-out subscription of the embedded broker.
#[derive(Debug)]
pub(super) struct Subscription {
    hub: Arc<FanoutHub>,
    mailbox: Arc<Mailbox>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Item>>,
    /// Subscribed rooms; also serialises subscribe/unsubscribe of this subscription.
    rooms: Mutex<HashSet<Arc<str>>>,
}

#[async_trait]
impl FanoutSubscription for Subscription {
    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        if self.hub.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        let mut rooms = lock(&self.rooms);
        if rooms.contains(room) {
            return Ok(());
        }
        let room: Arc<str> = Arc::from(room);
        rooms.insert(room.clone());
        self.hub
            .rooms
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(room)
            .or_default()
            .push(self.mailbox.clone());
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError> {
        let mut rooms = lock(&self.rooms);
        if rooms.remove(room) {
            self.hub.remove(room, self.mailbox.id);
        }
        Ok(())
    }

    async fn next(&self) -> Result<FanoutEvent, BrokerError> {
        let mut rx = self.rx.lock().await;
        loop {
            if self.mailbox.lagged.swap(false, Ordering::SeqCst) {
                return Ok(FanoutEvent::Gap);
            }
            let item = tokio::select! {
                biased;
                () = self.hub.closed.cancelled() => return Err(BrokerError::Closed),
                item = rx.recv() => item,
            };
            let Some((room, payload)) = item else {
                return Err(BrokerError::Closed);
            };
            // Skip what was queued before an unsubscribe.
            if lock(&self.rooms).contains(&room) {
                return Ok(FanoutEvent::Message { room, payload });
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let rooms = std::mem::take(&mut *lock(&self.rooms));
        for room in rooms {
            self.hub.remove(&room, self.mailbox.id);
        }
    }
}
