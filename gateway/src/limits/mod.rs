//! Rate limits (governor's GCRA): per connection, per user and per client IP.
//!
//! - Every connection has its own direct limiters for publishes, for joins and leaves, for
//!   joins with `since` (history replays) and for `refresh` ([`ConnectionLimits`]).
//! - Every user has a publish limiter and a refresh limiter shared by all of the user's
//!   connections on this gateway, keyed by user id.
//! - Every client IP has a limiter for WebSocket handshakes.
//!
//! A refusal is a [`RateLimited`] whose `retry_after` is the time until the request would
//! conform, rounded up to whole milliseconds and never zero.
//!
//! The keyed limiters live in concurrent sharded maps (no global lock); call
//! [`Limits::housekeep`] periodically (e.g. every minute) so that keys which have been idle long
//! enough to be back at full burst are forgotten.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[cfg(test)]
mod tests;

/// Rate limit settings.
///
/// A rate is the sustained number of requests per second; a burst is how many may arrive at once
/// after a quiet period. [`LimitsConfig::default`] gives the production defaults listed on each
/// field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Publishes per second per connection. Default 50.
    pub publish_per_sec: NonZeroU32,
    /// Publish burst per connection. Default 100.
    pub publish_burst: NonZeroU32,
    /// Publishes per second per user, across all of the user's connections. Default 200.
    pub user_publish_per_sec: NonZeroU32,
    /// Publish burst per user. Default 400.
    pub user_publish_burst: NonZeroU32,
    /// WebSocket handshakes per second per client IP. Default 100.
    pub handshakes_per_sec_per_ip: NonZeroU32,
    /// Handshake burst per client IP. Default 200.
    pub handshake_burst_per_ip: NonZeroU32,
    /// Joins and leaves per second per connection. Default 10.
    pub join_per_sec: NonZeroU32,
    /// Join and leave burst per connection; enough for a reconnect that rejoins every room.
    /// Default 100.
    pub join_burst: NonZeroU32,
    /// Joins with `since` (history replays) per second per connection. Default 2.
    pub replay_per_sec: NonZeroU32,
    /// Replay burst per connection. Default 100.
    pub replay_burst: NonZeroU32,
    /// `refresh` frames per minute per connection, refused ones included (each is a full
    /// signature check). Default 6.
    pub refresh_per_min: NonZeroU32,
    /// Refresh burst per connection. Default 3.
    pub refresh_burst: NonZeroU32,
    /// `refresh` frames per second per user, across all of the user's connections. Default 10.
    pub user_refresh_per_sec: NonZeroU32,
    /// Refresh burst per user; enough for every connection of a user to refresh at once
    /// (`max_connections_per_user`'s default). Default 100.
    pub user_refresh_burst: NonZeroU32,
}

/// `n` as a `NonZeroU32`, checked at compile time.
const fn nz(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("zero rate limit constant"),
    }
}

impl LimitsConfig {
    /// The production defaults (see the fields).
    pub const DEFAULT: Self = Self {
        publish_per_sec: nz(50),
        publish_burst: nz(100),
        user_publish_per_sec: nz(200),
        user_publish_burst: nz(400),
        handshakes_per_sec_per_ip: nz(100),
        handshake_burst_per_ip: nz(200),
        join_per_sec: nz(10),
        join_burst: nz(100),
        replay_per_sec: nz(2),
        replay_burst: nz(100),
        refresh_per_min: nz(6),
        refresh_burst: nz(3),
        user_refresh_per_sec: nz(10),
        user_refresh_burst: nz(100),
    };

    fn connection_quota(&self) -> Quota {
        Quota::per_second(self.publish_per_sec).allow_burst(self.publish_burst)
    }

    fn join_quota(&self) -> Quota {
        Quota::per_second(self.join_per_sec).allow_burst(self.join_burst)
    }

    fn replay_quota(&self) -> Quota {
        Quota::per_second(self.replay_per_sec).allow_burst(self.replay_burst)
    }

    fn refresh_quota(&self) -> Quota {
        Quota::per_minute(self.refresh_per_min).allow_burst(self.refresh_burst)
    }

    fn user_refresh_quota(&self) -> Quota {
        Quota::per_second(self.user_refresh_per_sec).allow_burst(self.user_refresh_burst)
    }

    fn user_quota(&self) -> Quota {
        Quota::per_second(self.user_publish_per_sec).allow_burst(self.user_publish_burst)
    }

    fn handshake_quota(&self) -> Quota {
        Quota::per_second(self.handshakes_per_sec_per_ip).allow_burst(self.handshake_burst_per_ip)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A request over its limit; retry after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// How long until the request would be allowed (at least 1 ms, whole milliseconds).
    pub retry_after: Duration,
}

impl RateLimited {
    /// `retry_after` in whole milliseconds (at least 1), e.g. for a `retry_after_ms` field.
    pub fn retry_after_ms(&self) -> u64 {
        u64::try_from(self.retry_after.as_millis()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited; retry after {} ms", self.retry_after_ms())
    }
}

impl std::error::Error for RateLimited {}

/// The gateway's shared limiters (per user, per IP).
pub struct Limits {
    shared: GatewayLimiters<DefaultClock>,
}

/// One connection's limiter, also charging the user's shared limit.
pub struct ConnectionLimits {
    conn: ConnectionCore<DefaultClock>,
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.shared.config)
            .field("tracked_users", &self.shared.users.len())
            .field("tracked_refreshers", &self.shared.user_refreshes.len())
            .field("tracked_ips", &self.shared.ips.len())
            .finish()
    }
}

impl fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("user", &self.conn.user.get())
            .finish()
    }
}

impl Limits {
    /// Builds the shared limiters.
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            shared: GatewayLimiters::new(config, DefaultClock::default()),
        }
    }

    /// The settings these limiters were built with.
    pub fn config(&self) -> &LimitsConfig {
        &self.shared.config
    }

    /// Charges one handshake to `ip`.
    pub fn check_handshake(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.shared.check_handshake(ip)
    }

    /// A new connection's limiter.
    pub fn connection(&self) -> ConnectionLimits {
        ConnectionLimits {
            conn: self.shared.connection(),
        }
    }

    /// Forgets idle keys; call periodically.
    ///
    /// A key is forgotten once its limiter is indistinguishable from a fresh one (its whole
    /// burst has been replenished), so forgetting never grants extra requests.
    pub fn housekeep(&self) {
        self.shared.housekeep();
    }

    /// How many users currently have limiter state (an estimate, for metrics).
    pub fn tracked_users(&self) -> usize {
        self.shared.users.len()
    }

    /// How many client IPs currently have limiter state (an estimate, for metrics).
    pub fn tracked_ips(&self) -> usize {
        self.shared.ips.len()
    }
}

impl ConnectionLimits {
    /// Charges one publish to this connection and to `user`.
    ///
    /// The connection's limiter is charged first, then the user's. When the user's limiter
    /// refuses, the connection's cell stays spent: a connection hitting its user's limit also
    /// drains its own allowance a little faster, which only makes it back off sooner.
    ///
    /// A connection belongs to one user: the first `user` is remembered so that later calls
    /// do not allocate a key.
    pub fn check_publish(&self, limits: &Limits, user: &str) -> Result<(), RateLimited> {
        self.conn.check_publish(&limits.shared, user)
    }

    /// Charges one join or leave to this connection; a join with `since` (`replay`) is also
    /// charged to the connection's replay limit.
    pub fn check_join(&self, replay: bool) -> Result<(), RateLimited> {
        self.conn.check_join(replay)
    }

    /// Charges one `refresh` to this connection and to `user`, before its token is looked at:
    /// a refused token costs a signature check too.
    pub fn check_refresh(&self, limits: &Limits, user: &str) -> Result<(), RateLimited> {
        self.conn.check_refresh(&limits.shared, user)
    }
}

type DirectLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type KeyedLimiter<K, C> =
    RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The shared limiters, generic over the clock (tests use a fake clock).
struct GatewayLimiters<C: Clock> {
    config: LimitsConfig,
    connection_quota: Quota,
    join_quota: Quota,
    replay_quota: Quota,
    refresh_quota: Quota,
    users: KeyedLimiter<Arc<str>, C>,
    user_refreshes: KeyedLimiter<Arc<str>, C>,
    ips: KeyedLimiter<IpAddr, C>,
    clock: C,
}

impl<C: Clock + Clone> GatewayLimiters<C> {
    fn new(config: &LimitsConfig, clock: C) -> Self {
        Self {
            config: config.clone(),
            connection_quota: config.connection_quota(),
            join_quota: config.join_quota(),
            replay_quota: config.replay_quota(),
            refresh_quota: config.refresh_quota(),
            users: RateLimiter::dashmap_with_clock(config.user_quota(), clock.clone()),
            user_refreshes: RateLimiter::dashmap_with_clock(
                config.user_refresh_quota(),
                clock.clone(),
            ),
            ips: RateLimiter::dashmap_with_clock(config.handshake_quota(), clock.clone()),
            clock,
        }
    }

    fn check_handshake(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.ips
            .check_key(&ip)
            .map_err(|not_until| limited(&not_until, &self.clock))
    }

    fn connection(&self) -> ConnectionCore<C> {
        ConnectionCore {
            limiter: RateLimiter::direct_with_clock(self.connection_quota, self.clock.clone()),
            joins: RateLimiter::direct_with_clock(self.join_quota, self.clock.clone()),
            replays: RateLimiter::direct_with_clock(self.replay_quota, self.clock.clone()),
            refreshes: RateLimiter::direct_with_clock(self.refresh_quota, self.clock.clone()),
            user: OnceLock::new(),
        }
    }

    fn housekeep(&self) {
        self.users.retain_recent();
        self.users.shrink_to_fit();
        self.user_refreshes.retain_recent();
        self.user_refreshes.shrink_to_fit();
        self.ips.retain_recent();
        self.ips.shrink_to_fit();
    }
}

/// One connection's limiter and its user's key.
struct ConnectionCore<C: Clock> {
    limiter: DirectLimiter<C>,
    joins: DirectLimiter<C>,
    replays: DirectLimiter<C>,
    refreshes: DirectLimiter<C>,
    user: OnceLock<Arc<str>>,
}

impl<C: Clock> ConnectionCore<C> {
    fn check_join(&self, replay: bool) -> Result<(), RateLimited> {
        self.joins
            .check()
            .map_err(|not_until| limited(&not_until, self.joins.clock()))?;
        if replay {
            self.replays
                .check()
                .map_err(|not_until| limited(&not_until, self.replays.clock()))?;
        }
        Ok(())
    }

    fn check_publish(&self, shared: &GatewayLimiters<C>, user: &str) -> Result<(), RateLimited> {
        self.limiter
            .check()
            .map_err(|not_until| limited(&not_until, self.limiter.clock()))?;
        self.check_user(&shared.users, &shared.clock, user)
    }

    fn check_refresh(&self, shared: &GatewayLimiters<C>, user: &str) -> Result<(), RateLimited> {
        self.refreshes
            .check()
            .map_err(|not_until| limited(&not_until, self.refreshes.clock()))?;
        self.check_user(&shared.user_refreshes, &shared.clock, user)
    }

    /// Charges `user`'s key in `limiter`, without allocating a key for the connection's own
    /// user after the first call.
    fn check_user(
        &self,
        limiter: &KeyedLimiter<Arc<str>, C>,
        clock: &C,
        user: &str,
    ) -> Result<(), RateLimited> {
        let key = self.user.get_or_init(|| Arc::from(user));
        let outcome = if **key == *user {
            limiter.check_key(key)
        } else {
            limiter.check_key(&Arc::from(user))
        };
        outcome.map_err(|not_until| limited(&not_until, clock))
    }
}

fn limited<C: Clock>(not_until: &NotUntil<C::Instant>, clock: &C) -> RateLimited {
    RateLimited {
        retry_after: round_up_to_millis(not_until.wait_time_from(clock.now())),
    }
}

/// `wait` rounded up to whole milliseconds, at least 1 ms.
fn round_up_to_millis(wait: Duration) -> Duration {
    let millis = wait.as_nanos().div_ceil(1_000_000).max(1);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}
