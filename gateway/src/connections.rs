//! Counting connections: every accepted TCP connection holds a [`Slot`], every admitted
//! session a [`ConnectionGuard`].
//!
//! - [`serve`](crate::serve) accepts a connection only with a free slot: at most
//!   `max_connections` plus [`HEALTH_RESERVE`] connections are open at once, whatever they are
//!   (sessions, HTTP requests, connections that have not sent their headers yet). When every
//!   slot is taken the accept loop waits for one to free up, and the kernel's listen backlog
//!   holds the next connections: nothing spins, and no descriptor is spent on them.
//! - A session is admitted while the accepted connections, its own included, are at most
//!   `max_connections`: the reserve above it answers health checks and refusals (HTTP 503),
//!   never sessions. A connection accepted into the reserve gets at most
//!   [`RESERVE_HEADER_TIMEOUT`] for its headers, so that connections which send nothing cannot
//!   hold the reserve for long: a health check sends its request at once. The same cap applies
//!   to sessions on a router served some other way.
//! - The descriptor limit bounds the slots too: [`serve`](crate::serve) keeps
//!   [`FD_HEADROOM`] descriptors for the store, the broker and logs, so that accepting never
//!   runs out of descriptors and the health endpoints stay answerable.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections accepted beyond `max_connections`, to answer health checks and refusals.
pub(crate) const HEALTH_RESERVE: usize = 32;
/// The header-read timeout of a connection accepted into the reserve.
pub(crate) const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Descriptors the accept loop leaves to everything else (store, broker, logs, the runtime).
pub(crate) const FD_HEADROOM: usize = 128;

/// Open connections in total and per user.
#[derive(Debug)]
pub(crate) struct ConnectionCounts {
    /// Accepted TCP connections (each holds a [`Slot`]).
    accepted: AtomicUsize,
    /// Admitted sessions.
    sessions: AtomicUsize,
    /// Most admitted sessions: `max_connections`, lowered by [`ConnectionCounts::limit`] when
    /// the descriptor limit leaves fewer.
    session_limit: AtomicUsize,
    /// Admitted sessions per user, against `max_connections_per_user`.
    per_user: Mutex<HashMap<Arc<str>, usize>>,
}

/// Why a handshake was refused by the connection caps.
pub(crate) enum Cap {
    /// The gateway holds `max_connections`.
    Total,
    /// The user holds `max_connections_per_user`.
    User,
}

impl ConnectionCounts {
    /// Counts with at most `max_connections` sessions.
    pub(crate) fn new(max_connections: usize) -> Self {
        ConnectionCounts {
            accepted: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            session_limit: AtomicUsize::new(max_connections),
            per_user: Mutex::new(HashMap::new()),
        }
    }

    /// Lowers the session cap to `limit` (the descriptor limit leaves no more).
    pub(crate) fn limit(&self, limit: usize) {
        self.session_limit.fetch_min(limit, Ordering::AcqRel);
    }

    /// Counts a session of `user`, unless a cap is reached.
    pub(crate) fn admit(
        self: &Arc<Self>,
        user: &str,
        max_user: usize,
        slot: Option<Slot>,
    ) -> Result<ConnectionGuard, Cap> {
        let max_total = self.session_limit.load(Ordering::Acquire);
        if self.accepted.load(Ordering::Acquire) > max_total {
            return Err(Cap::Total);
        }
        if self.sessions.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.sessions.fetch_sub(1, Ordering::AcqRel);
            return Err(Cap::Total);
        }
        let mut per_user = self.per_user.lock();
        let user: Arc<str> = match per_user.get_key_value(user) {
            Some((_, &count)) if count >= max_user => {
                drop(per_user);
                self.sessions.fetch_sub(1, Ordering::AcqRel);
                return Err(Cap::User);
            }
            Some((key, _)) => key.clone(),
            None => Arc::from(user),
        };
        *per_user.entry(user.clone()).or_insert(0) += 1;
        Ok(ConnectionGuard {
            counts: self.clone(),
            user,
            _slot: slot,
        })
    }

    /// Waits for a free place among `slots`, to be taken by the next accepted connection.
    pub(crate) async fn place(slots: &Arc<Semaphore>) -> OwnedSemaphorePermit {
        slots
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the accept semaphore is never closed"))
    }

    /// Counts an accepted connection in the place `permit`.
    pub(crate) fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        self.accepted.fetch_add(1, Ordering::AcqRel);
        Slot {
            _inner: Arc::new(SlotInner {
                counts: self.clone(),
                _permit: permit,
            }),
        }
    }

    /// Admitted sessions.
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// Accepted connections of every kind.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Whether the connections accepted now reach into the reserve above the session cap.
    pub(crate) fn in_reserve(&self) -> bool {
        self.accepted() > self.session_limit.load(Ordering::Acquire)
    }
}

/// One admitted session; dropping it frees its place under the caps.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    counts: Arc<ConnectionCounts>,
    user: Arc<str>,
    /// The accepted connection's place, held until the session ends (none for a router
    /// served some other way).
    _slot: Option<Slot>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut per_user = self.counts.per_user.lock();
        if let Some(count) = per_user.get_mut(&*self.user) {
            *count -= 1;
            if *count == 0 {
                per_user.remove(&*self.user);
            }
        }
        drop(per_user);
        self.counts.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One accepted TCP connection's place; shared by the HTTP connection and, after an upgrade,
/// its session, and freed when both are gone.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    _inner: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    counts: Arc<ConnectionCounts>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.counts.accepted.fetch_sub(1, Ordering::AcqRel);
    }
}
