//! Unit tests of the dispatch state.

use super::*;

fn queue(max_records: usize) -> Queue {
    Queue::new(
        Window {
            max_records,
            max_bytes: usize::MAX,
        },
        false,
    )
}

fn commit(q: &mut Queue, key: &str, id: i64) -> bool {
    q.committed(Arc::from(key), id, Bytes::from(format!("{key}{id}")))
}

#[test]
fn a_stream_takes_a_keys_records_in_order() {
    let mut q = queue(100);
    commit(&mut q, "a", 1);
    commit(&mut q, "a", 2);
    commit(&mut q, "b", 3);
    let s = q.open_stream("g").unwrap();
    let first = q.take(s, 10);
    let ids: Vec<i64> = first.iter().map(|h| h.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(q.take(s, 10).is_empty());
    // A record committed to a key the stream owns goes to it next.
    assert!(commit(&mut q, "a", 4));
    let next = q.take(s, 10);
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].id, next[0].attempt), (4, 1));
}

#[test]
fn another_stream_waits_until_every_handed_record_is_acked() {
    let mut q = queue(100);
    commit(&mut q, "a", 1);
    commit(&mut q, "a", 2);
    let s1 = q.open_stream("g").unwrap();
    let s2 = q.open_stream("g").unwrap();
    let h = q.take(s1, 1);
    assert_eq!(h[0].id, 1);
    assert!(q.take(s2, 10).is_empty(), "a is owned by s1");
    assert_eq!(q.ack("a", 1, h[0].token), (AckOutcome::Removed, true));
    // Released: whichever stream asks first takes it.
    let h = q.take(s2, 10);
    assert_eq!(h[0].id, 2);
    assert!(q.take(s1, 10).is_empty());
}

#[test]
fn take_respects_max_and_continues_the_key() {
    let mut q = queue(100);
    for id in 1..=5 {
        commit(&mut q, "a", id);
    }
    let s = q.open_stream("g").unwrap();
    let ids: Vec<i64> = q.take(s, 2).iter().map(|h| h.id).collect();
    assert_eq!(ids, vec![1, 2]);
    let ids: Vec<i64> = q.take(s, 10).iter().map(|h| h.id).collect();
    assert_eq!(ids, vec![3, 4, 5]);
}

#[test]
fn release_redelivers_before_later_records() {
    let mut q = queue(100);
    commit(&mut q, "a", 1);
    commit(&mut q, "a", 2);
    let s = q.open_stream("g").unwrap();
    let mut handed = q.take(s, 10);
    assert_eq!(handed.len(), 2);
    let h = handed.remove(0);
    // Releasing the first releases the later one too.
    assert!(q.release("a", h.id, h.token, false));
    assert!(!q.release("a", handed[0].id, handed[0].token, false));
    let again = q.take(s, 10);
    assert_eq!(again.len(), 2);
    assert_eq!((again[0].id, again[0].attempt), (1, 2));
    assert_eq!((again[1].id, again[1].attempt), (2, 2));
    // The stale token no longer settles anything.
    assert_eq!(q.ack("a", 1, h.token).0, AckOutcome::HeldElsewhere);
}

#[test]
fn closing_a_stream_releases_its_records() {
    let mut q = queue(100);
    commit(&mut q, "a", 1);
    let s1 = q.open_stream("g").unwrap();
    let s2 = q.open_stream("g").unwrap();
    assert_eq!(q.take(s1, 10).len(), 1);
    assert!(q.take(s2, 10).is_empty());
    assert_eq!(q.close_stream(s1), 1);
    let h = q.take(s2, 10);
    assert_eq!((h[0].id, h[0].attempt), (1, 2));
}

#[test]
fn another_group_is_refused_while_one_is_open() {
    let mut q = queue(100);
    let s = q.open_stream("g").unwrap();
    assert!(q.open_stream("h").is_err());
    q.close_stream(s);
    assert!(q.open_stream("h").is_ok());
}

#[test]
fn window_spills_and_loads_in_order() {
    let mut q = queue(2);
    commit(&mut q, "a", 1);
    commit(&mut q, "a", 2);
    commit(&mut q, "a", 3);
    assert_eq!(q.records_in_memory(), 2);
    assert!(!q.needs_load());
    let s = q.open_stream("g").unwrap();
    let h = q.take(s, 1).remove(0);
    q.ack("a", h.id, h.token);
    assert!(q.needs_load());
    assert_eq!(q.load_range(100), (2, 1));
    let row = Stored {
        id: 3,
        key: Arc::from("a"),
        payload: Bytes::from_static(b"a3"),
        attempts: 4,
    };
    assert_eq!(q.loaded(vec![row], true), (1, 0));
    assert!(!q.needs_load());
    // A record committed now stays in memory behind the loaded ones once there is room.
    let h = q.take(s, 1).remove(0);
    assert_eq!(h.id, 2);
    q.ack("a", 2, h.token);
    assert!(!commit(&mut q, "a", 4));
    let h = q.take(s, 1).remove(0);
    assert_eq!((h.id, h.attempt), (3, 5));
}
