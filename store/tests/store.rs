//! Store scenarios, each run against SQLite (a file in a tempdir) and PostgreSQL (a fresh
//! database on the machine's server).

mod common;

use common::{PgDatabase, event, random_name};
use roomcast_schemas::InboundEvent;
use roomcast_store::{Appended, Store, StoreError};
use std::collections::HashMap;

/// Where a scenario's store lives; the guard removes it afterwards.
struct Target {
    url: String,
    _guard: Box<dyn std::any::Any>,
}

impl Target {
    async fn sqlite() -> Target {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        Target {
            url,
            _guard: Box::new(dir),
        }
    }

    async fn postgres() -> Target {
        let db = PgDatabase::create().await;
        Target {
            url: db.url.clone(),
            _guard: Box::new(db),
        }
    }

    async fn connect(&self) -> Store {
        Store::connect(&self.url)
            .await
            .expect("connect to the store")
    }
}

/// Runs each scenario `async fn name(target: &Target)` once per dialect.
macro_rules! on_both_dialects {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(&super::Target::sqlite().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(&super::Target::postgres().await).await;
            }
        }
    )*};
}

on_both_dialects!(
    seqs_count_from_one_per_room,
    duplicates_are_stored_once,
    history_pages_in_seq_order,
    history_pages_stop_at_a_byte_budget,
    concurrent_appenders_keep_seqs_gap_free,
    data_round_trips_exactly,
    reopening_keeps_messages_and_numbering,
);

fn seqs(appended: &[Appended]) -> Vec<(bool, u64)> {
    appended
        .iter()
        .map(|a| (a.is_new(), a.message().seq))
        .collect()
}

async fn seqs_count_from_one_per_room(target: &Target) {
    let store = target.connect().await;
    store.ping().await.expect("ping");
    let (a, b) = (random_name("a"), random_name("b"));
    assert_eq!(store.last_seq(&a).await.unwrap(), 0);

    let first = [
        event(&a, "u1", "1", "1"),
        event(&b, "u1", "2", "2"),
        event(&a, "u2", "1", "3"),
    ];
    let appended = store.append(&first).await.expect("append");
    assert_eq!(seqs(&appended), [(true, 1), (true, 1), (true, 2)]);
    for (appended, event) in appended.iter().zip(&first) {
        let message = appended.message();
        assert_eq!(
            (message.room.as_str(), message.id.as_str()),
            (event.room.as_str(), event.id.as_str())
        );
        assert_eq!(
            (message.from.as_str(), message.event.as_str()),
            (event.from.as_str(), "say")
        );
        assert_eq!(
            (message.ts, message.data.get()),
            (event.ts, event.data.get())
        );
    }

    let second: Vec<InboundEvent> = (3..=5)
        .map(|i| event(&a, "u3", &i.to_string(), "null"))
        .collect();
    let appended = store.append(&second).await.expect("append");
    assert_eq!(seqs(&appended), [(true, 3), (true, 4), (true, 5)]);

    assert_eq!(store.last_seq(&a).await.unwrap(), 5);
    assert_eq!(store.last_seq(&b).await.unwrap(), 1);
    assert_eq!(store.last_seq(&random_name("empty")).await.unwrap(), 0);
    let stored: Vec<(u64, String, String)> = store
        .history(&a, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.from, m.id))
        .collect();
    let expected: Vec<(u64, String, String)> = [
        (1, "u1", "1"),
        (2, "u2", "1"),
        (3, "u3", "3"),
        (4, "u3", "4"),
        (5, "u3", "5"),
    ]
    .into_iter()
    .map(|(seq, from, id)| (seq, from.to_owned(), id.to_owned()))
    .collect();
    assert_eq!(stored, expected);
    assert!(store.append(&[]).await.unwrap().is_empty());
}

async fn duplicates_are_stored_once(target: &Target) {
    let store = target.connect().await;
    let (room, other) = (random_name("room"), random_name("other"));

    // Within one batch: the second copy is a duplicate of the first, even with other data.
    let appended = store
        .append(&[
            event(&room, "alice", "e1", r#"{"n":1}"#),
            event(&room, "alice", "e1", r#"{"n":"changed"}"#),
            event(&room, "bob", "e1", r#"{"n":2}"#),
        ])
        .await
        .unwrap();
    assert_eq!(seqs(&appended), [(true, 1), (false, 1), (true, 2)]);
    assert_eq!(appended[1].message().data.get(), r#"{"n":1}"#);

    // Across batches, and in another room: the stored message comes back, nothing is stored.
    let appended = store
        .append(&[
            event(&room, "bob", "e1", "0"),
            event(&room, "alice", "e2", "3"),
            event(&other, "alice", "e1", "0"),
        ])
        .await
        .unwrap();
    assert_eq!(seqs(&appended), [(false, 2), (true, 3), (false, 1)]);
    assert_eq!(appended[2].message().room, room);
    assert_eq!(appended[2].message().data.get(), r#"{"n":1}"#);

    // A batch of duplicates only.
    let appended = store
        .append(&[event(&room, "alice", "e2", "9")])
        .await
        .unwrap();
    assert_eq!(seqs(&appended), [(false, 3)]);

    let stored: Vec<(u64, String, String)> = store
        .history(&room, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.from, m.data.get().to_owned()))
        .collect();
    assert_eq!(
        stored,
        [
            (1, "alice".to_owned(), r#"{"n":1}"#.to_owned()),
            (2, "bob".to_owned(), r#"{"n":2}"#.to_owned()),
            (3, "alice".to_owned(), "3".to_owned())
        ]
    );
    assert_eq!(store.last_seq(&room).await.unwrap(), 3);
    assert_eq!(store.last_seq(&other).await.unwrap(), 0);
    assert!(store.history(&other, 0, 10).await.unwrap().is_empty());
}

async fn history_pages_in_seq_order(target: &Target) {
    let store = target.connect().await;
    let room = random_name("room");
    // Interleave another room so that a page never mixes rooms.
    let events: Vec<InboundEvent> = (1..=25)
        .flat_map(|i| {
            [
                event(&room, "u", &format!("r{i}"), &i.to_string()),
                event(&random_name("noise"), "u", &format!("n{i}"), "0"),
            ]
        })
        .collect();
    store.append(&events).await.unwrap();

    let page = |after, limit| {
        let store = store.clone();
        let room = room.clone();
        async move {
            store
                .history(&room, after, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|m| {
                    assert_eq!(m.room, room);
                    assert_eq!(m.data.get(), m.seq.to_string());
                    m.seq
                })
                .collect::<Vec<u64>>()
        }
    };
    assert_eq!(page(0, 10).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(page(10, 10).await, (11..=20).collect::<Vec<_>>());
    assert_eq!(page(20, 10).await, (21..=25).collect::<Vec<_>>());
    assert_eq!(page(25, 10).await, Vec::<u64>::new());
    assert_eq!(page(3, 0).await, Vec::<u64>::new());
    assert_eq!(page(24, u32::MAX).await, [25]);
    assert_eq!(page(u64::MAX, 10).await, Vec::<u64>::new());
}

async fn history_pages_stop_at_a_byte_budget(target: &Target) {
    let store = target.connect().await;
    let room = random_name("room");
    // Payloads of exactly 100 bytes.
    let data = format!("\"{}\"", "x".repeat(98));
    let events: Vec<InboundEvent> = (1..=10)
        .map(|i| event(&room, "u", &format!("b{i}"), &data))
        .collect();
    store.append(&events).await.unwrap();
    let page = |after, limit, max_bytes| {
        let store = store.clone();
        let room = room.clone();
        async move {
            store
                .history_within(&room, after, limit, max_bytes)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.seq)
                .collect::<Vec<u64>>()
        }
    };
    // Every message but the last starts below the budget.
    assert_eq!(page(0, 100, 250).await, [1, 2, 3]);
    assert_eq!(page(0, 100, 300).await, [1, 2, 3]);
    assert_eq!(page(0, 100, 301).await, [1, 2, 3, 4]);
    // The count still bounds the page, and one message always comes.
    assert_eq!(page(0, 2, 10_000).await, [1, 2]);
    assert_eq!(page(4, 100, 0).await, [5]);
    assert_eq!(page(8, 100, usize::MAX).await, [9, 10]);
    assert_eq!(page(10, 100, 1_000).await, Vec::<u64>::new());
}

async fn concurrent_appenders_keep_seqs_gap_free(target: &Target) {
    // Two stores (two pools, like two worker processes), four appenders each.
    let stores = [target.connect().await, target.connect().await];
    let rooms: Vec<String> = (0..3).map(|_| random_name("hot")).collect();
    const BATCHES: usize = 15;
    const BATCH: usize = 6;

    let mut tasks = tokio::task::JoinSet::new();
    for appender in 0..8 {
        let store = stores[appender % 2].clone();
        let rooms = rooms.clone();
        tasks.spawn(async move {
            let mut seen = Vec::new();
            for batch in 0..BATCHES {
                // Rooms in varying order within a batch: a naive row lock order would deadlock.
                let events: Vec<InboundEvent> = (0..BATCH)
                    .map(|i| {
                        let room = &rooms[(appender + batch + i * 2) % rooms.len()];
                        event(
                            room,
                            &format!("appender{appender}"),
                            &format!("{batch}-{i}"),
                            "{}",
                        )
                    })
                    .collect();
                let appended = store.append(&events).await.expect("concurrent append");
                assert!(appended.iter().all(Appended::is_new));
                seen.extend(appended.into_iter().map(|a| {
                    let m = a.message();
                    (m.room.clone(), m.seq, m.from.clone(), m.id.clone())
                }));
            }
            seen
        });
    }
    let mut returned = Vec::new();
    while let Some(result) = tasks.join_next().await {
        returned.extend(result.expect("appender task"));
    }
    assert_eq!(returned.len(), 8 * BATCHES * BATCH);

    let mut per_room: HashMap<String, usize> = HashMap::new();
    for (room, ..) in &returned {
        *per_room.entry(room.clone()).or_default() += 1;
    }
    let mut stored_all = Vec::new();
    for room in &rooms {
        let stored = stores[0].history(room, 0, u32::MAX).await.unwrap();
        let count = per_room.get(room).copied().unwrap_or(0);
        assert_eq!(
            stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=count as u64).collect::<Vec<_>>(),
            "room {room}"
        );
        assert_eq!(stores[1].last_seq(room).await.unwrap(), count as u64);
        stored_all.extend(stored.into_iter().map(|m| (m.room, m.seq, m.from, m.id)));
    }
    // What each appender was told is exactly what is stored.
    returned.sort();
    stored_all.sort();
    assert_eq!(returned, stored_all);
}

async fn data_round_trips_exactly(target: &Target) {
    let store = target.connect().await;
    let room = random_name("room");
    let payloads = [
        r#"{ "z" : 1,  "a":[true , null,"é\u00e9\n\"q\"" ],"big": 123456789012345678901234567890, "f": 2.50 }"#,
        r#""just a string""#,
        "-0.0",
        "[]",
        r#"{"emoji":"🦀","nested":{"deep":[[[]]]},"esc":"\\/\t"}"#,
    ];
    let events: Vec<InboundEvent> = payloads
        .iter()
        .enumerate()
        .map(|(i, data)| event(&room, "u", &i.to_string(), data))
        .collect();
    let mut stamped = events.clone();
    stamped[0].ts = u64::MAX;
    stamped[1].event = roomcast_schemas::EventName::new("a.dotted-event:name").unwrap();
    let appended = store.append(&stamped).await.unwrap();
    for (appended, data) in appended.iter().zip(payloads) {
        assert_eq!(appended.message().data.get(), data);
    }
    let stored = store.history(&room, 0, 10).await.unwrap();
    assert_eq!(
        stored.iter().map(|m| m.data.get()).collect::<Vec<_>>(),
        payloads
    );
    assert_eq!(stored[0].ts, u64::MAX);
    assert_eq!(stored[1].event, "a.dotted-event:name");
    assert_eq!(stored[2].ts, events[2].ts);
    // The stored message turns into the same frame as the one fanned out on first store.
    assert_eq!(
        stored[0].to_frame_json(),
        appended[0].message().to_frame_json()
    );
}

async fn reopening_keeps_messages_and_numbering(target: &Target) {
    let room = random_name("room");
    {
        let store = target.connect().await;
        store
            .append(&[
                event(&room, "u", "1", r#"{"k":1}"#),
                event(&room, "u", "2", "2"),
            ])
            .await
            .unwrap();
        store.close().await;
        assert!(
            store.ping().await.is_err(),
            "a closed store must not answer"
        );
    }
    let store = target.connect().await;
    assert_eq!(store.last_seq(&room).await.unwrap(), 2);
    let appended = store
        .append(&[event(&room, "u", "1", "0"), event(&room, "u", "3", "3")])
        .await
        .unwrap();
    assert_eq!(seqs(&appended), [(false, 1), (true, 3)]);
    assert_eq!(appended[0].message().data.get(), r#"{"k":1}"#);
    let stored = store.history(&room, 0, 10).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|m| (m.seq, m.id.as_str()))
            .collect::<Vec<_>>(),
        [(1, "1"), (2, "2"), (3, "3")]
    );
}

#[tokio::test]
async fn sqlite_creates_missing_directories_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/store.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    assert_eq!(store.dialect(), "sqlite");
    store.append(&[event("r", "u", "1", "1")]).await.unwrap();
    assert!(path.exists());
    assert!(
        dir.path().join("nested/deeper/store.db-wal").exists(),
        "WAL journal expected"
    );
    // A second store on the same file (another process, say) sees the same rows.
    let again = Store::connect(&format!("sqlite:{}", path.display()))
        .await
        .expect("connect again");
    assert_eq!(again.last_seq("r").await.unwrap(), 1);
}

#[tokio::test]
async fn sqlite_in_memory_store_works() {
    let store = Store::connect("sqlite::memory:").await.expect("connect");
    store
        .append(&[event("r", "u", "1", "1"), event("r", "u", "2", "2")])
        .await
        .unwrap();
    assert_eq!(store.history("r", 0, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn unsupported_urls_are_config_errors_without_secrets() {
    for url in [
        "mysql://user:hunter2@db/x",
        "user:hunter2@db",
        "",
        "http://hunter2",
    ] {
        let error = Store::connect(url).await.expect_err("unsupported URL");
        assert!(matches!(error, StoreError::Config(_)), "{url}: {error:?}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
    let error = Store::connect("sqlite://").await.expect_err("no path");
    assert!(matches!(error, StoreError::Config(_)), "{error:?}");
}
