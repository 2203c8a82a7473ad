//! The worker against the real embedded broker (in a tempdir) and a real store.

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use common::{PgDatabase, event, random_name};
use roomcast_broker::testkit::{next_message, within};
use roomcast_broker::{
    EmbeddedBroker, EventPublisher, FanoutSource, FanoutSubscription, WorkerLink,
};
use roomcast_schemas::{DeadLetter, EventName, FanoutMessage, InboundEvent, decode_fanout};
use roomcast_store::Store;
use roomcast_worker::handler::{Disposition, EventHandler, HandlerError, Handlers};
use roomcast_worker::{Worker, WorkerConfig, WorkerCounters, WorkerError};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A broker and a store in one tempdir (or the store on PostgreSQL).
struct Setup {
    dir: tempfile::TempDir,
    broker: Arc<EmbeddedBroker>,
    store_url: String,
    store: Store,
}

impl Setup {
    async fn sqlite() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_url = format!("sqlite://{}", dir.path().join("store.db").display());
        Setup::with_store_url(dir, store_url).await
    }

    async fn with_store_url(dir: tempfile::TempDir, store_url: String) -> Setup {
        common::init_tracing();
        let broker = EmbeddedBroker::open(&dir.path().join("broker"))
            .await
            .expect("open broker");
        let store = Store::connect(&store_url).await.expect("connect store");
        Setup {
            dir,
            broker,
            store_url,
            store,
        }
    }

    /// The worker's parts of the broker.
    fn link(&self) -> WorkerLink {
        WorkerLink::from_broker(self.broker.clone())
    }

    fn worker(&self, config: WorkerConfig) -> Worker {
        Worker::new(self.link(), self.store.clone(), config)
    }

    async fn publish(&self, event: &InboundEvent) {
        self.publish_raw(&event.room, serde_json::to_vec(event).expect("encode"))
            .await;
    }

    async fn publish_raw(&self, key: &str, payload: impl Into<Bytes>) {
        within("a publish", self.broker.publish(key, payload.into()))
            .await
            .expect("publish");
    }

    async fn subscribe(&self, rooms: &[&str]) -> Fanned {
        let sub = FanoutSource::open(&*self.broker)
            .await
            .expect("open a fan-out subscription");
        for room in rooms {
            sub.subscribe(room).await.expect("subscribe");
        }
        Fanned {
            sub,
            ready: VecDeque::new(),
        }
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.broker
            .dead_letters()
            .await
            .expect("read dead letters")
            .into_iter()
            .map(|(key, payload)| {
                let letter: DeadLetter =
                    serde_json::from_slice(&payload).expect("a DeadLetter document");
                assert_eq!(letter.key, key);
                letter
            })
            .collect()
    }

    /// Asserts that every record published since the broker opened was acked.
    fn assert_all_acked(&self) {
        let stats = self.broker.stats();
        assert_eq!(
            stats.acked, stats.published,
            "unacked records left: {stats:?}"
        );
        self.assert_nothing_pending();
    }

    /// Asserts that the inbound stream holds no record.
    fn assert_nothing_pending(&self) {
        let stats = self.broker.stats();
        assert_eq!(stats.records_in_memory, 0, "records left: {stats:?}");
    }
}

/// A worker running in a task.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), WorkerError>>,
    counters: watch::Receiver<WorkerCounters>,
}

impl Running {
    fn spawn(worker: Worker) -> Running {
        let shutdown = CancellationToken::new();
        let counters = worker.counters();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        Running {
            shutdown,
            task,
            counters,
        }
    }

    async fn wait_for(
        &mut self,
        what: &str,
        condition: impl FnMut(&WorkerCounters) -> bool,
    ) -> WorkerCounters {
        *within(what, self.counters.wait_for(condition))
            .await
            .expect("worker counters")
    }

    async fn stop(self) -> WorkerCounters {
        self.shutdown.cancel();
        within("the worker to stop", self.task)
            .await
            .expect("worker task")
            .expect("worker result");
        *self.counters.borrow()
    }
}

fn quick_retries(max_attempts: u32) -> WorkerConfig {
    WorkerConfig {
        max_attempts,
        retry_initial: Duration::from_millis(1),
        retry_max: Duration::from_millis(4),
        ..WorkerConfig::default()
    }
}

/// A fan-out subscription read one message at a time (a record may hold several).
struct Fanned {
    sub: Box<dyn FanoutSubscription>,
    ready: VecDeque<FanoutMessage>,
}

impl Fanned {
    async fn next(&mut self) -> FanoutMessage {
        while self.ready.is_empty() {
            let (room, text) = next_message(&*self.sub).await;
            let messages = decode_fanout(text.as_bytes()).expect("a fan-out record");
            let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
            assert!(
                seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "a record holds consecutive seqs: {seqs:?}"
            );
            for message in messages {
                assert_eq!(message.room, room);
                self.ready.push_back(message);
            }
        }
        self.ready.pop_front().expect("a message")
    }
}

/// Events of two rooms are stored with seqs 1..n per room and fanned out in seq order.
async fn stores_and_fans_out_in_order(setup: &Setup) {
    let (a, b) = (random_name("a"), random_name("b"));
    let mut sub = setup.subscribe(&[&a, &b]).await;
    let mut running = Running::spawn(setup.worker(WorkerConfig {
        batch_max: 8,
        ..WorkerConfig::default()
    }));

    let mut published: HashMap<&str, Vec<InboundEvent>> = HashMap::new();
    for i in 0..30 {
        let room = if i % 3 == 0 { &b } else { &a };
        let event = event(
            room,
            "alice",
            &format!("e{i}"),
            &format!(r#"{{"i": {i}, "text":"héllo"}}"#),
        );
        setup.publish(&event).await;
        published.entry(room).or_default().push(event);
    }

    let mut fanned: HashMap<String, Vec<FanoutMessage>> = HashMap::new();
    for _ in 0..30 {
        let message = sub.next().await;
        fanned
            .entry(message.room.clone())
            .or_default()
            .push(message);
    }
    for (room, events) in &published {
        let messages = &fanned[*room];
        let expected: Vec<(u64, &str, &str)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e.id.as_str(), e.data.get()))
            .collect();
        let got: Vec<(u64, &str, &str)> = messages
            .iter()
            .map(|m| (m.seq, m.id.as_str(), m.data.get()))
            .collect();
        assert_eq!(got, expected, "fan-out of room {room}");
        let stored = setup.store.history(room, 0, 100).await.expect("history");
        let stored: Vec<(u64, &str, &str)> = stored
            .iter()
            .map(|m| (m.seq, m.id.as_str(), m.data.get()))
            .collect();
        assert_eq!(stored, expected, "store of room {room}");
    }
    let counters = running
        .wait_for("all events counted", |c| c.stored == 30)
        .await;
    assert_eq!(
        (
            counters.duplicates,
            counters.dead_lettered,
            counters.retried
        ),
        (0, 0, 0)
    );
    running.stop().await;
    setup.assert_all_acked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_and_fanned_out_in_seq_order() {
    stores_and_fans_out_in_order(&Setup::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_and_fanned_out_in_seq_order_on_postgres() {
    let db = PgDatabase::create().await;
    let setup = Setup::with_store_url(tempfile::tempdir().expect("tempdir"), db.url.clone()).await;
    stores_and_fans_out_in_order(&setup).await;
    setup.store.close().await;
}

/// A room's messages of one batch go out as records of up to `fanout_batch` messages (JSON
/// arrays), in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_messages_of_one_batch_share_fan_out_records() {
    let setup = Setup::sqlite().await;
    let room = random_name("room");
    let sub = setup.subscribe(&[&room]).await;
    // Published before the worker starts, so that one batch holds all ten.
    for i in 1..=10 {
        setup
            .publish(&event(&room, "alice", &format!("e{i}"), "{}"))
            .await;
    }
    let running = Running::spawn(setup.worker(WorkerConfig {
        fanout_batch: 4,
        ..WorkerConfig::default()
    }));
    let mut sizes = Vec::new();
    let mut seqs = Vec::new();
    while seqs.len() < 10 {
        let (_, text) = next_message(&*sub.sub).await;
        let messages = decode_fanout(text.as_bytes()).expect("a fan-out record");
        sizes.push(messages.len());
        seqs.extend(messages.iter().map(|m| m.seq));
    }
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
    assert_eq!(
        sizes,
        [4, 4, 2],
        "one batch: records of 4, 4 and 2 messages"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_is_stored_once_and_its_fanout_republished() {
    let setup = Setup::sqlite().await;
    let room = random_name("room");
    let mut sub = setup.subscribe(&[&room]).await;
    let running = Running::spawn(setup.worker(WorkerConfig::default()));

    setup
        .publish(&event(&room, "alice", "e1", r#"{"v":1}"#))
        .await;
    let first = sub.next().await;
    assert_eq!((first.seq, first.data.get()), (1, r#"{"v":1}"#));

    // The gateway retried the publish (same from + id), then a new event follows.
    setup
        .publish(&event(&room, "alice", "e1", r#"{"v":"retry"}"#))
        .await;
    setup
        .publish(&event(&room, "alice", "e2", r#"{"v":2}"#))
        .await;
    let again = sub.next().await;
    assert_eq!(
        (again.seq, again.id.as_str(), again.data.get()),
        (1, "e1", r#"{"v":1}"#)
    );
    let second = sub.next().await;
    assert_eq!((second.seq, second.id.as_str()), (2, "e2"));

    let counters = running.stop().await;
    assert_eq!((counters.stored, counters.duplicates), (2, 1));
    let stored = setup.store.history(&room, 0, 10).await.expect("history");
    assert_eq!(
        stored
            .iter()
            .map(|m| (m.seq, m.id.as_str()))
            .collect::<Vec<_>>(),
        [(1, "e1"), (2, "e2")]
    );
    setup.assert_all_acked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_payloads_are_dead_lettered_and_the_stream_moves_on() {
    let setup = Setup::sqlite().await;
    let room = random_name("room");
    let mut sub = setup.subscribe(&[&room]).await;
    let mut running = Running::spawn(setup.worker(WorkerConfig::default()));

    let mut wrong_version = event(&room, "alice", "v2", "{}");
    wrong_version.v = 2;
    let other_room = event(&random_name("elsewhere"), "alice", "moved", "{}");
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"not json at all".to_vec(), "undecodable payload"),
        (br#"{"v":1,"id":"x"}"#.to_vec(), "undecodable payload"),
        (vec![0xff, 0xfe, b'{'], "undecodable payload"),
        (
            serde_json::to_vec(&wrong_version).unwrap(),
            "unsupported envelope version 2",
        ),
        (
            // Another service's envelope with an id no gateway would accept.
            serde_json::to_string(&event(&room, "alice", "bad-id", "{}"))
                .unwrap()
                .replace(r#""bad-id""#, r#""has space""#)
                .into_bytes(),
            "undecodable payload: event id must be",
        ),
        (
            serde_json::to_vec(&other_room).unwrap(),
            "differs from its broker key",
        ),
        (
            // A sender that passes for another user.
            serde_json::to_string(&event(&room, "alice", "look-alike", "{}"))
                .unwrap()
                .replace(r#""alice""#, r#""ali\u200bce""#)
                .into_bytes(),
            "undecodable payload: user id must be",
        ),
        (
            // Nested deeper than any gateway accepts: it would reach every member and replay.
            serde_json::to_vec(&event(
                &room,
                "alice",
                "deep",
                &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            ))
            .unwrap(),
            "invalid event: `data` nests arrays and objects deeper than 100 levels",
        ),
        (
            serde_json::to_vec(&event(&room, "alice", "lone", r#"{"t":"\ud800"}"#)).unwrap(),
            "invalid event: `data` holds a string with an unpaired surrogate",
        ),
    ];
    for (payload, _) in &poison {
        setup.publish_raw(&room, payload.clone()).await;
    }
    setup
        .publish(&event(&room, "alice", "good", r#"{"ok":true}"#))
        .await;

    let message = sub.next().await;
    assert_eq!((message.seq, message.id.as_str()), (1, "good"));
    running
        .wait_for("the dead letters", |c| {
            c.dead_lettered == poison.len() as u64
        })
        .await;

    let letters = setup.dead_letters().await;
    assert_eq!(letters.len(), poison.len());
    for (letter, (payload, reason)) in letters.iter().zip(&poison) {
        assert!(
            letter.reason.contains(reason),
            "reason {:?} should mention {reason:?}",
            letter.reason
        );
        assert_eq!(letter.payload, String::from_utf8_lossy(payload));
        assert_eq!(
            (letter.key.as_str(), letter.attempts, letter.v),
            (room.as_str(), 1, 1)
        );
        assert!(letter.ts > 0);
    }
    let counters = running.stop().await;
    assert_eq!(counters.stored, 1);
    assert_eq!(
        setup
            .store
            .history(&room, 0, 10)
            .await
            .expect("history")
            .len(),
        1
    );
    setup.assert_all_acked();
}

/// Always fails with a transient error; counts its calls.
struct Flaky {
    calls: Arc<AtomicU32>,
}

#[async_trait]
impl EventHandler for Flaky {
    async fn handle(&self, event: &InboundEvent) -> Result<Disposition, HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Err(HandlerError::Transient(format!(
            "downstream busy (call {call} for {})",
            event.id
        )))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_dead_lettered_after_max_attempts() {
    let setup = Setup::sqlite().await;
    let (room, other) = (random_name("room"), random_name("other"));
    let mut sub = setup.subscribe(&[&room, &other]).await;
    let calls = Arc::new(AtomicU32::new(0));
    let handlers = Handlers::new().on(
        "flaky",
        Flaky {
            calls: calls.clone(),
        },
    );
    let mut running = Running::spawn(setup.worker(quick_retries(3)).with_handlers(handlers));

    let mut flaky = event(&room, "alice", "f1", "{}");
    flaky.event = EventName::new("flaky").unwrap();
    setup.publish(&flaky).await;
    setup.publish(&event(&room, "alice", "after", "{}")).await;
    setup
        .publish(&event(&other, "bob", "meanwhile", "{}"))
        .await;

    // The room's next event waits for the flaky one, then takes seq 1.
    let mut seen = HashMap::new();
    for _ in 0..2 {
        let message = sub.next().await;
        seen.insert(message.room.clone(), (message.seq, message.id));
    }
    assert_eq!(seen[&room], (1, "after".to_owned()));
    assert_eq!(seen[&other], (1, "meanwhile".to_owned()));
    let counters = running
        .wait_for("the dead letter", |c| c.dead_lettered == 1)
        .await;
    assert_eq!(counters.retried, 2, "{counters:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "one handler call per attempt"
    );

    let letters = setup.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert!(
        letters[0].reason.contains("failed 3 times"),
        "{}",
        letters[0].reason
    );
    assert!(
        letters[0]
            .reason
            .contains("downstream busy (call 3 for f1)"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        serde_json::from_str::<InboundEvent>(&letters[0].payload)
            .expect("original payload")
            .id,
        "f1"
    );
    running.stop().await;
    setup.assert_all_acked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_store_refuses_is_retried_alone_then_dead_lettered() {
    let setup = Setup::sqlite().await;
    // The store refuses one event (a real trigger in the real database), while it stays up.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&setup.store_url)
        .await
        .expect("connect to the store file");
    sqlx::Executor::execute(
        &mut conn,
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages WHEN NEW.id LIKE 'poison%' \
         BEGIN SELECT RAISE(ABORT, 'poison event refused'); END",
    )
    .await
    .expect("create trigger");
    drop(conn);

    let rooms: Vec<String> = (0..3).map(|_| random_name("room")).collect();
    let mut sub = setup
        .subscribe(&rooms.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    setup
        .publish(&event(&rooms[0], "frank", "poison-1", "{}"))
        .await;
    setup
        .publish(&event(&rooms[0], "frank", "after", "{}"))
        .await;
    setup.publish(&event(&rooms[1], "frank", "b1", "{}")).await;
    setup.publish(&event(&rooms[2], "frank", "c1", "{}")).await;
    // Published before the worker starts, so that the first batch holds all three rooms.
    let mut running = Running::spawn(setup.worker(quick_retries(3)));

    let mut first: HashMap<String, (u64, String)> = HashMap::new();
    for _ in 0..3 {
        let message = sub.next().await;
        first
            .entry(message.room.clone())
            .or_insert((message.seq, message.id));
    }
    assert_eq!(
        first[&rooms[0]],
        (1, "after".to_owned()),
        "the refused event takes no seq"
    );
    assert_eq!(first[&rooms[1]], (1, "b1".to_owned()));
    assert_eq!(first[&rooms[2]], (1, "c1".to_owned()));
    let counters = running
        .wait_for("the dead letter", |c| c.dead_lettered == 1 && c.stored == 3)
        .await;
    assert_eq!(counters.retried, 2, "{counters:?}");
    let letters = setup.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].key.as_str(), letters[0].attempts),
        (rooms[0].as_str(), 3)
    );
    assert!(
        letters[0].reason.contains("poison event refused"),
        "{}",
        letters[0].reason
    );
    assert!(
        letters[0].reason.contains("failed 3 times"),
        "{}",
        letters[0].reason
    );
    running.stop().await;
    setup.assert_all_acked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_can_reject_or_drop_an_event_kind() {
    let setup = Setup::sqlite().await;
    let room = random_name("room");
    let mut sub = setup.subscribe(&[&room]).await;
    let handlers = Handlers::new()
        .on_fn("typing", |_| Ok(Disposition::Drop))
        .on_fn("shout", |e| {
            Err(HandlerError::Permanent(format!("{} may not shout", e.from)))
        });
    let mut running = Running::spawn(
        setup
            .worker(WorkerConfig::default())
            .with_handlers(handlers),
    );

    for (id, kind) in [("1", "typing"), ("2", "shout"), ("3", "chat")] {
        let mut event = event(&room, "carol", id, "{}");
        event.event = EventName::new(kind).unwrap();
        setup.publish(&event).await;
    }
    let message = sub.next().await;
    assert_eq!(
        (message.seq, message.id.as_str(), message.event.as_str()),
        (1, "3", "chat")
    );
    let counters = running
        .wait_for("all three events", |c| {
            c.dead_lettered + c.dropped + c.stored == 3
        })
        .await;
    assert_eq!(counters.dead_lettered, 1);
    assert_eq!((counters.dropped, counters.stored), (1, 1));

    let letters = setup.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1, "a permanent error is not retried");
    assert!(
        letters[0]
            .reason
            .contains("rejected by the `shout` handler: carol may not shout"),
        "{}",
        letters[0].reason
    );
    running.stop().await;
    assert_eq!(
        setup
            .store
            .history(&room, 0, 10)
            .await
            .expect("history")
            .len(),
        1
    );
    setup.assert_all_acked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_continues_and_stores_every_event_once() {
    const PER_ROOM: usize = 60;
    let setup = Setup::sqlite().await;
    let rooms: Vec<String> = (0..3).map(|_| random_name("room")).collect();
    for i in 0..PER_ROOM {
        for room in &rooms {
            setup
                .publish(&event(room, "dave", &format!("{room}-{i}"), &i.to_string()))
                .await;
        }
    }

    // First run: stop after some of the events.
    {
        let mut sub = setup
            .subscribe(&rooms.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
        let running = Running::spawn(setup.worker(WorkerConfig {
            batch_max: 4,
            ..WorkerConfig::default()
        }));
        for _ in 0..20 {
            sub.next().await;
        }
        let counters = running.stop().await;
        assert!(
            counters.stored >= 20 && counters.stored < (PER_ROOM * rooms.len()) as u64,
            "{counters:?}"
        );
    }
    let acked_before = setup.broker.stats().acked;

    // Restart the process: close the broker and the store, reopen both.
    let Setup {
        dir,
        broker,
        store_url,
        store,
    } = setup;
    broker.close().await;
    drop(broker);
    store.close().await;
    let broker = EmbeddedBroker::open(&dir.path().join("broker"))
        .await
        .expect("reopen broker");
    let store = Store::connect(&store_url).await.expect("reopen store");
    let setup = Setup {
        dir,
        broker,
        store_url,
        store,
    };

    let mut sub = setup
        .subscribe(&rooms.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let running = Running::spawn(setup.worker(WorkerConfig::default()));
    let mut last: HashMap<String, u64> = HashMap::new();
    while rooms
        .iter()
        .any(|room| last.get(room).copied().unwrap_or(0) < PER_ROOM as u64)
    {
        let message = sub.next().await;
        let previous = last.insert(message.room.clone(), message.seq).unwrap_or(0);
        assert!(
            message.seq > previous,
            "room {}: seq {} after {previous}",
            message.room,
            message.seq
        );
    }
    running.stop().await;

    for room in &rooms {
        let stored = setup.store.history(room, 0, 1_000).await.expect("history");
        let got: Vec<(u64, String)> = stored.into_iter().map(|m| (m.seq, m.id)).collect();
        let expected: Vec<(u64, String)> = (0..PER_ROOM)
            .map(|i| (i as u64 + 1, format!("{room}-{i}")))
            .collect();
        assert_eq!(got, expected, "room {room}");
    }
    setup.assert_nothing_pending();
    assert_eq!(
        acked_before + setup.broker.stats().acked,
        (PER_ROOM * rooms.len()) as u64
    );
    assert!(setup.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_holds_events_without_dead_lettering_them() {
    let setup = Setup::sqlite().await;
    let room = random_name("room");
    let down = Store::connect(&setup.store_url).await.expect("connect");
    down.close().await;
    let worker = Worker::new(setup.link(), down, quick_retries(2));
    let mut running = Running::spawn(worker);
    setup.publish(&event(&room, "erin", "e1", "{}")).await;

    // Far more outage retries than max_attempts, and nothing dead-lettered.
    let counters = running.wait_for("outage retries", |c| c.outages >= 5).await;
    assert_eq!((counters.stored, counters.dead_lettered), (0, 0));
    running.stop().await;
    assert!(setup.dead_letters().await.is_empty());

    // The store is back: the event is stored.
    let mut sub = setup.subscribe(&[&room]).await;
    let running = Running::spawn(setup.worker(quick_retries(2)));
    let message = sub.next().await;
    assert_eq!((message.seq, message.id.as_str()), (1, "e1"));
    running.stop().await;
    setup.assert_all_acked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_or_a_closed_broker_stops_the_worker_with_an_error() {
    let setup = Setup::sqlite().await;
    let bad = setup.worker(WorkerConfig {
        batch_max: 0,
        ..WorkerConfig::default()
    });
    assert!(matches!(
        bad.run(CancellationToken::new()).await,
        Err(WorkerError::Config(_))
    ));

    let running = Running::spawn(setup.worker(WorkerConfig::default()));
    setup.broker.close().await;
    let result = within("the worker to notice", running.task)
        .await
        .expect("worker task");
    assert!(matches!(result, Err(WorkerError::Broker(_))), "{result:?}");
}
