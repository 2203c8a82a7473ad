//! Tests of the rate limits on a fake clock.

use super::*;
use governor::clock::FakeRelativeClock;
use std::net::{Ipv4Addr, Ipv6Addr};

const MS: Duration = Duration::from_millis(1);

fn config(conn: (u32, u32), user: (u32, u32), ip: (u32, u32)) -> LimitsConfig {
    LimitsConfig {
        publish_per_sec: nz(conn.0),
        publish_burst: nz(conn.1),
        user_publish_per_sec: nz(user.0),
        user_publish_burst: nz(user.1),
        handshakes_per_sec_per_ip: nz(ip.0),
        handshake_burst_per_ip: nz(ip.1),
        ..LimitsConfig::DEFAULT
    }
}

fn fake(config: &LimitsConfig) -> (GatewayLimiters<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (GatewayLimiters::new(config, clock.clone()), clock)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

#[test]
fn connection_burst_then_refusal_with_plausible_retry_after() {
    // 10/s per connection (one cell per 100 ms), burst 5; the user limit is out of the way.
    let (shared, clock) = fake(&config((10, 5), (1000, 1000), (1, 1)));
    let conn = shared.connection();
    for i in 0..5 {
        conn.check_publish(&shared, "alice")
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
    }
    let refused = conn.check_publish(&shared, "alice").unwrap_err();
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= 100 * MS,
        "{refused:?}"
    );

    // Just before `retry_after` it is still refused; at `retry_after` it conforms.
    clock.advance(refused.retry_after - MS);
    let still = conn.check_publish(&shared, "alice").unwrap_err();
    assert_eq!(still.retry_after, MS);
    clock.advance(MS);
    conn.check_publish(&shared, "alice")
        .expect("conforms after retry_after");
    assert!(conn.check_publish(&shared, "alice").is_err());
}

#[test]
fn connection_refills_after_time_advances() {
    let (shared, clock) = fake(&config((10, 5), (1000, 1000), (1, 1)));
    let conn = shared.connection();
    while conn.check_publish(&shared, "alice").is_ok() {}
    clock.advance(Duration::from_millis(250));
    // 250 ms at 10/s: two cells back, not more.
    conn.check_publish(&shared, "alice")
        .expect("first refilled cell");
    conn.check_publish(&shared, "alice")
        .expect("second refilled cell");
    assert!(conn.check_publish(&shared, "alice").is_err());
    // After a long pause the whole burst, and only the burst, is back.
    clock.advance(Duration::from_secs(10));
    for _ in 0..5 {
        conn.check_publish(&shared, "alice").expect("full burst");
    }
    assert!(conn.check_publish(&shared, "alice").is_err());
}

#[test]
fn connections_of_one_user_share_the_user_limit() {
    // Generous per-connection limit; user: 2/s (one cell per 500 ms), burst 3.
    let (shared, clock) = fake(&config((1000, 1000), (2, 3), (1, 1)));
    let a = shared.connection();
    let b = shared.connection();
    a.check_publish(&shared, "alice").expect("a 1");
    a.check_publish(&shared, "alice").expect("a 2");
    b.check_publish(&shared, "alice").expect("b 1");
    let refused_b = b.check_publish(&shared, "alice").unwrap_err();
    let refused_a = a.check_publish(&shared, "alice").unwrap_err();
    assert!(refused_a.retry_after <= 500 * MS && refused_b.retry_after <= 500 * MS);
    assert!(refused_a.retry_after >= MS);

    // Another user is unaffected, on a fresh connection or on…
    let c = shared.connection();
    c.check_publish(&shared, "bob").expect("bob is independent");

    clock.advance(refused_a.retry_after);
    b.check_publish(&shared, "alice")
        .expect("one cell back for alice");
    assert!(a.check_publish(&shared, "alice").is_err(), "and only one");
}

#[test]
fn user_refusal_spends_the_connection_cell() {
    // Documented behaviour: the connection is charged before the user.
    let (shared, _clock) = fake(&config((1, 3), (1, 1), (1, 1)));
    let conn = shared.connection();
    conn.check_publish(&shared, "alice").expect("first");
    // Refused by the user limiter, but the connection's cells are spent.
    assert!(conn.check_publish(&shared, "alice").is_err());
    assert!(conn.check_publish(&shared, "alice").is_err());
    // Now the connection itself is exhausted: a different user's key would not help.
    let refused = conn.check_publish(&shared, "bob").unwrap_err();
    assert!(refused.retry_after > 500 * MS, "{refused:?}");
}

#[test]
fn different_users_are_independent() {
    let (shared, _clock) = fake(&config((1000, 1000), (1, 2), (1, 1)));
    let alice = shared.connection();
    let bob = shared.connection();
    alice.check_publish(&shared, "alice").expect("alice 1");
    alice.check_publish(&shared, "alice").expect("alice 2");
    assert!(alice.check_publish(&shared, "alice").is_err());
    bob.check_publish(&shared, "bob").expect("bob 1");
    bob.check_publish(&shared, "bob").expect("bob 2");
    assert!(bob.check_publish(&shared, "bob").is_err());
    assert_eq!(shared.users.len(), 2);
}

#[test]
fn handshakes_are_limited_per_ip() {
    // 1 handshake per second per IP, burst 3.
    let (shared, clock) = fake(&config((1, 1), (1, 1), (1, 3)));
    for _ in 0..3 {
        shared.check_handshake(ip(1)).expect("within burst");
    }
    let refused = shared.check_handshake(ip(1)).unwrap_err();
    assert!(
        refused.retry_after > 900 * MS && refused.retry_after <= 1000 * MS,
        "{refused:?}"
    );

    shared
        .check_handshake(ip(2))
        .expect("another IP is independent");
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    shared.check_handshake(v6).expect("IPv6");

    clock.advance(refused.retry_after);
    shared.check_handshake(ip(1)).expect("refilled");
    assert!(shared.check_handshake(ip(1)).is_err());
}

#[test]
fn housekeep_forgets_only_idle_keys() {
    let (shared, clock) = fake(&config((100, 100), (10, 10), (10, 10)));
    let conn = shared.connection();
    for user in ["alice", "bob"] {
        let conn = shared.connection();
        conn.check_publish(&shared, user).expect("publish");
    }
    shared.check_handshake(ip(1)).expect("handshake");
    assert_eq!((shared.users.len(), shared.ips.len()), (2, 1));

    // Not yet replenished: nothing is forgotten.
    shared.housekeep();
    assert_eq!((shared.users.len(), shared.ips.len()), (2, 1));

    // Long after: everything is back to full burst and forgotten, except a key used just now.
    clock.advance(Duration::from_secs(60));
    conn.check_publish(&shared, "carol").expect("publish");
    shared.housekeep();
    assert_eq!((shared.users.len(), shared.ips.len()), (1, 0));
}

#[test]
fn a_connection_keeps_its_first_user_key() {
    let (shared, _clock) = fake(&config((1000, 1000), (1, 1), (1, 1)));
    let conn = shared.connection();
    conn.check_publish(&shared, "alice").expect("alice");
    assert_eq!(conn.user.get().map(|k| &**k), Some("alice"));
    // A different user on the same connection (not expected) is still charged to that user.
    conn.check_publish(&shared, "bob")
        .expect("bob has his own limit");
    assert!(conn.check_publish(&shared, "bob").is_err());
    assert_eq!(conn.user.get().map(|k| &**k), Some("alice"));
}

#[test]
fn retry_after_is_rounded_up_and_never_zero() {
    assert_eq!(round_up_to_millis(Duration::ZERO), MS);
    assert_eq!(round_up_to_millis(Duration::from_nanos(1)), MS);
    assert_eq!(round_up_to_millis(MS), MS);
    assert_eq!(round_up_to_millis(MS + Duration::from_nanos(1)), 2 * MS);
    assert_eq!(
        round_up_to_millis(Duration::from_secs(3)),
        Duration::from_secs(3)
    );
    let limited = RateLimited {
        retry_after: 250 * MS,
    };
    assert_eq!(limited.retry_after_ms(), 250);
    assert_eq!(limited.to_string(), "rate limited; retry after 250 ms");
}

#[test]
fn defaults() {
    let d = LimitsConfig::default();
    assert_eq!(d, config((50, 100), (200, 400), (100, 200)));
}

#[test]
fn public_api_on_the_real_clock() {
    // 1/s with small bursts: the refill (1 s) is far longer than this test's few calls.
    let limits = Limits::new(&config((1, 2), (1, 3), (1, 2)));
    let conn = limits.connection();
    conn.check_publish(&limits, "alice").expect("1");
    conn.check_publish(&limits, "alice").expect("2");
    let refused = conn.check_publish(&limits, "alice").unwrap_err();
    assert!(
        refused.retry_after >= MS && refused.retry_after <= Duration::from_secs(1),
        "{refused:?}"
    );

    let other = limits.connection();
    other
        .check_publish(&limits, "alice")
        .expect("third cell of alice's burst of 3");
    assert!(other.check_publish(&limits, "alice").is_err());

    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    limits.check_handshake(client).expect("1");
    limits.check_handshake(client).expect("2");
    assert!(limits.check_handshake(client).is_err());
    assert_eq!((limits.tracked_users(), limits.tracked_ips()), (1, 1));
    limits.housekeep();
    assert_eq!(limits.tracked_users(), 1, "alice is not idle yet");
    assert_eq!(limits.config().user_publish_burst, nz(3));
    let text = format!("{limits:?} {conn:?}");
    assert!(
        text.contains("tracked_users") && text.contains("alice"),
        "{text}"
    );
}

#[test]
fn joins_and_replays_are_limited_per_connection() {
    let mut limits = config((1000, 1000), (1000, 1000), (1, 1));
    limits.join_per_sec = nz(10);
    limits.join_burst = nz(4);
    limits.replay_per_sec = nz(1);
    limits.replay_burst = nz(2);
    let (shared, clock) = fake(&limits);
    let conn = shared.connection();
    // Two replays spend the replay burst; joins without `since` still go until their burst.
    conn.check_join(true).expect("replay 1");
    conn.check_join(true).expect("replay 2");
    let refused = conn.check_join(true).unwrap_err();
    assert!(refused.retry_after <= Duration::from_secs(1), "{refused:?}");
    conn.check_join(false).expect("join 4 of the burst");
    assert!(conn.check_join(false).is_err(), "join burst spent");
    // Another connection has its own allowance.
    shared
        .connection()
        .check_join(true)
        .expect("other connection");
    clock.advance(Duration::from_secs(1));
    conn.check_join(true)
        .expect("replay allowed again after a second");
}

#[test]
fn refreshes_are_limited_per_connection_and_per_user() {
    // Per connection: 6/min (one every 10 s), burst 3; per user: 10/s, burst 4.
    let config = LimitsConfig {
        user_refresh_burst: nz(4),
        ..LimitsConfig::DEFAULT
    };
    let (shared, clock) = fake(&config);
    let a = shared.connection();
    for i in 0..3 {
        a.check_refresh(&shared, "alice")
            .unwrap_or_else(|e| panic!("refresh {i}: {e}"));
    }
    let refused = a.check_refresh(&shared, "alice").unwrap_err();
    assert!(
        refused.retry_after > 9 * 1000 * MS && refused.retry_after <= 10 * 1000 * MS,
        "{refused:?}"
    );
    // Another connection of the same user has its own allowance, but the user's burst (4)
    // is one away: it gets one refresh, then the user limit answers (100 ms a cell).
    let b = shared.connection();
    b.check_refresh(&shared, "alice")
        .expect("the user's last cell");
    let by_user = b.check_refresh(&shared, "alice").unwrap_err();
    assert!(by_user.retry_after <= 100 * MS, "{by_user:?}");
    // Other users are not affected; publishes are counted apart.
    shared
        .connection()
        .check_refresh(&shared, "bob")
        .expect("bob refreshes");
    a.check_publish(&shared, "alice")
        .expect("publishes still go");
    clock.advance(refused.retry_after);
    a.check_refresh(&shared, "alice")
        .expect("a cell back after 10 s");
}
