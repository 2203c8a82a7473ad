//! Fair replays: history reads share the store and the CPU with live traffic.
//!
//! A replay (a `join` with `since`, a gap fill, a resync) reads pages of a room's history and
//! writes them to one connection. Left alone, a crowd of replays (many `since=0` joiners of a
//! long room, readers or not) would take every store connection and both cores, and another
//! user's publish would wait behind them. Two bounds keep them fair:
//!
//! - **Per user**: at most `replays_per_user` replays of one user run at once on a gateway;
//!   the user's next replay waits for one of them to end. A user who opens a hundred
//!   connections and replays on all of them competes with the others as a few.
//! - **Globally**: at most `max_replays` replays run at once on the gateway (each holds up to
//!   `replay_bytes` of frames while its socket drains, so this bounds their memory), and at
//!   most `replay_reads` history pages are read from the store at once. A
//!   replay holds a read permit only while its page is read and turned into frames, never
//!   while it waits for its socket, so a client that does not read holds none. The rest of
//!   the store pool stays free for live traffic: joins, and the worker's writes when it
//!   shares the store.
//!
//! Live fan-out never waits here: it reads no history (a gap fill is a replay).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// The replay bounds of one gateway.
#[derive(Debug)]
pub(crate) struct Replays {
    /// Permits for history pages being read at once.
    reads: Semaphore,
    /// Per user with a replay running or waiting, that user's places.
    users: Mutex<HashMap<Arc<str>, Arc<Semaphore>>>,
    /// Places per user.
    per_user: usize,
    /// Places for replays running at once, whoever's.
    all: Arc<Semaphore>,
    /// Replays running (holding a place).
    running: AtomicUsize,
}

impl Replays {
    /// At most `reads` pages read at once, `per_user` replays of one user and `max` replays
    /// in all at once.
    pub(crate) fn new(reads: usize, per_user: usize, max: usize) -> Arc<Self> {
        Arc::new(Replays {
            reads: Semaphore::new(reads),
            users: Mutex::new(HashMap::new()),
            per_user,
            all: Arc::new(Semaphore::new(max)),
            running: AtomicUsize::new(0),
        })
    }

    /// Waits for a place for one replay of `user` (among the user's first, then among all);
    /// the places are held until the turn is dropped.
    pub(crate) async fn turn(self: &Arc<Self>, user: &Arc<str>) -> ReplayTurn {
        let places = self
            .users
            .lock()
            .entry(user.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_user)))
            .clone();
        let permit = places
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("replay places are never closed"));
        // The turn exists from here on: if the wait below is given up, its drop cleans up.
        let mut turn = ReplayTurn {
            replays: self.clone(),
            user: user.clone(),
            places,
            permit: Some(permit),
            global: None,
        };
        turn.global = Some(
            self.all
                .clone()
                .acquire_owned()
                .await
                .unwrap_or_else(|_| unreachable!("replay places are never closed")),
        );
        self.running.fetch_add(1, Ordering::AcqRel);
        turn
    }

    /// Waits for a permit to read one history page.
    pub(crate) async fn read(&self) -> SemaphorePermit<'_> {
        self.reads
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("replay reads are never closed"))
    }

    /// Forgets users whose last waiting replay was given up (its connection ended while it
    /// waited); call periodically.
    pub(crate) fn housekeep(&self) {
        self.users
            .lock()
            .retain(|_, places| Arc::strong_count(places) > 1);
    }

    /// Replays running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Users with a replay running or waiting.
    #[cfg(test)]
    fn users(&self) -> usize {
        self.users.lock().len()
    }
}

/// One replay's place among its user's; dropping it lets the user's next replay run.
#[derive(Debug)]
pub(crate) struct ReplayTurn {
    replays: Arc<Replays>,
    user: Arc<str>,
    places: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    /// The place among all replays; `None` while it is waited for.
    global: Option<OwnedSemaphorePermit>,
}

impl Drop for ReplayTurn {
    fn drop(&mut self) {
        if self.global.take().is_some() {
            self.replays.running.fetch_sub(1, Ordering::AcqRel);
        }
        drop(self.permit.take());
        let mut users = self.replays.users.lock();
        // Every running or waiting replay of the user holds a clone, taken under this lock:
        // the map's and this one are the last two, so nobody needs the entry any more.
        if Arc::strong_count(&self.places) == 2 {
            users.remove(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_users_replays_wait_for_their_turn_and_others_do_not() {
        let replays = Replays::new(4, 2, 8);
        let ann: Arc<str> = Arc::from("ann");
        let bob: Arc<str> = Arc::from("bob");
        let first = replays.turn(&ann).await;
        let second = replays.turn(&ann).await;
        let mut third = Box::pin(replays.turn(&ann));
        assert!((&mut third).now_or_never().is_none(), "ann has two running");
        let bobs = replays
            .turn(&bob)
            .now_or_never()
            .expect("bob is not held up");
        drop(first);
        let third = third.await;
        assert_eq!(replays.users(), 2);
        drop((second, third, bobs));
        assert_eq!(replays.users(), 0, "idle users are forgotten");
    }

    #[tokio::test]
    async fn page_reads_are_bounded() {
        let replays = Replays::new(2, 8, 8);
        let a = replays.read().await;
        let _b = replays.read().await;
        assert!(replays.read().now_or_never().is_none());
        drop(a);
        assert!(replays.read().now_or_never().is_some());
    }

    #[tokio::test]
    async fn replays_in_all_are_bounded_whoever_runs_them() {
        let replays = Replays::new(4, 2, 2);
        let users: Vec<Arc<str>> = ["a", "b", "c"].into_iter().map(Arc::from).collect();
        let first = replays.turn(&users[0]).await;
        let _second = replays.turn(&users[1]).await;
        let mut third = Box::pin(replays.turn(&users[2]));
        assert!((&mut third).now_or_never().is_none(), "two run at once");
        assert_eq!(replays.running(), 2);
        drop(first);
        let third = third.await;
        assert_eq!(replays.running(), 2);
        drop(third);
        // A turn given up while it waited leaves nothing behind.
        let _blocker = replays.turn(&users[2]).await;
        let mut waiting = Box::pin(replays.turn(&users[0]));
        assert!((&mut waiting).now_or_never().is_none());
        drop(waiting);
        assert_eq!(replays.running(), 2);
        assert_eq!(replays.users(), 2, "the given-up user is forgotten");
    }
}
