//! The room registry: which local connections are members of which room.
//!
//! Rooms are spread over a fixed number of shards by hash, each behind its own short-lived
//! mutex, so joins, leaves and deliveries of different rooms rarely touch the same lock and no
//! lock is ever held across an `await`.
//!
//! The registry also owns the room's fan-out subscription: the first local member of a room
//! subscribes (and its join waits until the subscription is in effect), the last one to leave
//! unsubscribes. Subscribe and unsubscribe calls of one room are serialized by a per-room async
//! mutex that also records whether the subscription is active; a room's entry is only removed
//! once it has no member and its subscription is cancelled, so a join racing a leave either
//! keeps the subscription or re-creates it after the unsubscribe, never loses it.

use crate::outbound::{ConnId, FanoutBatch, MemberHandle, Outbound};
use roomcast_broker::{BrokerError, FanoutSubscription};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

/// Number of shards; a power of two well above the core count.
const SHARDS: usize = 64;

struct RoomEntry {
    members: HashMap<ConnId, MemberHandle>,
    /// Serializes (un)subscribe calls for the room; `true` while the subscription is active.
    subscription: Arc<tokio::sync::Mutex<bool>>,
}

type Shard = Mutex<HashMap<Arc<str>, RoomEntry>>;

/// Local room membership and the fan-out subscriptions that follow it.
pub(crate) struct Rooms {
    shards: Box<[Shard]>,
    hasher: RandomState,
    fanout: Arc<dyn FanoutSubscription>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("rooms", &self.room_count())
            .finish_non_exhaustive()
    }
}

impl Rooms {
    /// An empty registry that (un)subscribes rooms on `fanout`.
    pub(crate) fn new(fanout: Arc<dyn FanoutSubscription>) -> Self {
        Rooms {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            fanout,
        }
    }

    fn shard(&self, room: &str) -> MutexGuard<'_, HashMap<Arc<str>, RoomEntry>> {
        let index = (self.hasher.hash_one(room) as usize) % SHARDS;
        // A poisoned shard only means another thread panicked while holding it; the map
        // itself is still consistent (every mutation is a single insert or remove).
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `conn` to `room` and returns once the room's fan-out subscription is in effect, so
    /// that every message stored afterwards reaches the member. On error the member is removed
    /// again.
    pub(crate) async fn join(
        &self,
        room: &Arc<str>,
        conn: ConnId,
        member: MemberHandle,
    ) -> Result<(), BrokerError> {
        let subscription = {
            let mut shard = self.shard(room);
            let entry = shard.entry(room.clone()).or_insert_with(|| RoomEntry {
                members: HashMap::new(),
                subscription: Arc::new(tokio::sync::Mutex::new(false)),
            });
            entry.members.insert(conn, member);
            entry.subscription.clone()
        };
        // The entry cannot be removed while this connection is a member, so `subscription`
        // stays the room's current one.
        let mut active = subscription.lock().await;
        if !*active {
            if let Err(err) = self.fanout.subscribe(room).await {
                drop(active);
                self.leave(room, conn).await;
                return Err(err);
            }
            *active = true;
        }
        Ok(())
    }

    /// Removes `conn` from `room`; the last member out cancels the subscription.
    pub(crate) async fn leave(&self, room: &str, conn: ConnId) {
        let subscription = {
            let mut shard = self.shard(room);
            let Some(entry) = shard.get_mut(room) else {
                return;
            };
            entry.members.remove(&conn);
            if !entry.members.is_empty() {
                return;
            }
            entry.subscription.clone()
        };
        let mut active = subscription.lock().await;
        // Someone may have joined, or another leaver may have cleaned up, meanwhile.
        if !self.is_idle(room, &subscription) {
            return;
        }
        if *active {
            if let Err(err) = self.fanout.unsubscribe(room).await {
                // Messages of the room may keep arriving; with no member they are dropped.
                tracing::warn!(room, error = %err, "fan-out unsubscribe failed");
            }
            *active = false;
        }
        let mut shard = self.shard(room);
        let idle = shard.get(room).is_some_and(|entry| {
            entry.members.is_empty() && Arc::ptr_eq(&entry.subscription, &subscription)
        });
        if idle {
            shard.remove(room);
        }
    }

    fn is_idle(&self, room: &str, subscription: &Arc<tokio::sync::Mutex<bool>>) -> bool {
        self.shard(room).get(room).is_some_and(|entry| {
            entry.members.is_empty() && Arc::ptr_eq(&entry.subscription, subscription)
        })
    }

    /// Queues consecutive messages of `room` for every local member, as one item each; returns
    /// how many members there are. The batch is shared, not copied. Members whose queue is full
    /// are marked slow.
    pub(crate) fn deliver(&self, room: &str, messages: &FanoutBatch) -> usize {
        let shard = self.shard(room);
        let Some((name, entry)) = shard.get_key_value(room) else {
            return 0;
        };
        for member in entry.members.values() {
            let item = Outbound::Fanout {
                room: name.clone(),
                messages: messages.clone(),
            };
            member.offer(item);
        }
        entry.members.len()
    }

    /// Asks every member of every room to re-read its rooms from the store (after fan-out
    /// messages may have been lost).
    pub(crate) fn resync_all(&self) {
        for index in 0..SHARDS {
            let shard = self.shards[index]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (name, entry) in shard.iter() {
                for member in entry.members.values() {
                    member.offer(Outbound::Resync { room: name.clone() });
                }
            }
        }
    }

    /// Number of rooms with at least one local member (or a pending unsubscribe).
    pub(crate) fn room_count(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::OutboundRx;
    use bytes::Bytes;
    use roomcast_broker::{EmbeddedBroker, FanoutEvent, FanoutPublisher, FanoutSource};
    use std::time::Duration;

    fn member() -> (MemberHandle, OutboundRx) {
        MemberHandle::new(4)
    }

    /// Whether `subscription` receives messages of `room`: publishes one to `room`, then one to
    /// `control` (which is subscribed), and looks at what arrives first. The embedded
    /// subscription keeps publish order across rooms.
    async fn receives(
        broker: &EmbeddedBroker,
        subscription: &dyn FanoutSubscription,
        room: &str,
        control: &str,
    ) -> bool {
        broker
            .publish_fanout(room, Bytes::from_static(b"probe"))
            .await
            .unwrap();
        broker
            .publish_fanout(control, Bytes::from_static(b"control"))
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .unwrap()
            .unwrap();
        let FanoutEvent::Message { room: got, .. } = first else {
            panic!("unexpected gap")
        };
        if &*got == control {
            return false;
        }
        assert_eq!(&*got, room);
        let second = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(second, FanoutEvent::Message { room, .. } if &*room == control));
        true
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_joins_and_leaves_keep_the_subscription_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::open(dir.path()).await.unwrap();
        let subscription: Arc<dyn FanoutSubscription> = Arc::from(broker.open().await.unwrap());
        let rooms = Arc::new(Rooms::new(subscription.clone()));
        let room: Arc<str> = Arc::from("r");
        let control: Arc<str> = Arc::from("control");
        let (control_member, _control_rx) = member();
        rooms.join(&control, 0, control_member).await.unwrap();
        for round in 0..30u64 {
            let mut tasks = Vec::new();
            for conn in 1..=8u64 {
                let rooms = rooms.clone();
                let room = room.clone();
                tasks.push(tokio::spawn(async move {
                    let id = round * 100 + conn;
                    let (handle, rx) = member();
                    rooms.join(&room, id, handle).await.unwrap();
                    if conn % 2 == 0 {
                        rooms.leave(&room, id).await;
                    }
                    rx
                }));
            }
            let mut receivers = Vec::new();
            for task in tasks {
                receivers.push(task.await.unwrap());
            }
            assert!(
                receives(&broker, &*subscription, "r", "control").await,
                "round {round}: members remain"
            );
            let leavers: Vec<_> = (1..=8u64)
                .filter(|conn| conn % 2 == 1)
                .map(|conn| {
                    let rooms = rooms.clone();
                    let room = room.clone();
                    tokio::spawn(async move { rooms.leave(&room, round * 100 + conn).await })
                })
                .collect();
            for task in leavers {
                task.await.unwrap();
            }
            assert!(
                !receives(&broker, &*subscription, "r", "control").await,
                "round {round}: room empty"
            );
            assert_eq!(rooms.room_count(), 1, "only the control room is left");
        }
        broker.close().await;
    }

    #[tokio::test]
    async fn full_queue_marks_member_slow() {
        use axum::extract::ws::Utf8Bytes;
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::open(dir.path()).await.unwrap();
        let rooms = Rooms::new(Arc::from(broker.open().await.unwrap()));
        let room: Arc<str> = Arc::from("r");
        let (handle, _rx) = member();
        rooms.join(&room, 1, handle.clone()).await.unwrap();
        let batch = |seq: u64| -> FanoutBatch {
            Arc::from([crate::outbound::RoomMessage {
                seq,
                frame: Utf8Bytes::from_static("{}"),
            }])
        };
        for seq in 1..=4 {
            assert_eq!(rooms.deliver("r", &batch(seq)), 1);
        }
        assert!(!handle.is_slow());
        rooms.deliver("r", &batch(5));
        assert!(handle.is_slow());
        assert_eq!(rooms.deliver("other", &batch(1)), 0);
        broker.close().await;
    }
}
