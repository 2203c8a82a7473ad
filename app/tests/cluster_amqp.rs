//! A cluster of real `roomcast-gateway` and `roomcast-worker` processes on RabbitMQ and
//! PostgreSQL, started with `scripts/cluster`: delivery across gateways, a worker and a gateway
//! killed with SIGKILL, connections closed by RabbitMQ, fan-out bindings per room.
//!
//! They need RabbitMQ (`ROOMCAST_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`)
//! with `rabbitmqctl` on this machine, and PostgreSQL on 127.0.0.1:5432 (user `postgres`,
//! `createdb`/`dropdb`). Outside CI they skip when RabbitMQ or PostgreSQL cannot be reached; with
//! `CI=true` they fail. Each test uses its own broker prefix and database.

mod cluster;

use cluster::{
    Cluster, Kind, PeerSpec, check_acked, check_delivery, check_publisher_order, check_store,
    summaries, unique,
};
use nix::sys::signal::Signal;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

fn base_url() -> String {
    std::env::var("ROOMCAST_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The broker URL of a fresh prefix: `(url, prefix)`.
fn broker_url() -> (String, String) {
    let prefix = unique("rc-cluster");
    let base = base_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    (format!("{base}{separator}prefix={prefix}"), prefix)
}

async fn start(gateways: usize, workers: usize) -> Option<(Cluster, String)> {
    let (url, prefix) = broker_url();
    let cluster = Cluster::start(&url, gateways, workers).await?;
    Some((cluster, prefix))
}

/// Whether `rabbitmqctl` is on the `PATH`. With `CI=true` it must be (the test fails);
/// otherwise the test is skipped with a note.
fn rabbitmqctl_present() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("rabbitmqctl").is_file()));
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("rabbitmqctl is not on the PATH (CI=true: this test needs it)");
        }
        eprintln!("skipping: rabbitmqctl is not on the PATH");
    }
    found
}

/// `rabbitmqctl -q ARGS` (listings without their header): its tab-separated lines.
async fn rabbitmqctl(args: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    if args
        .first()
        .is_some_and(|command| command.starts_with("list_"))
    {
        args.insert(1, "--no-table-headers".to_owned());
    }
    tokio::task::spawn_blocking(move || {
        let output = Command::new("rabbitmqctl")
            .arg("-q")
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("run rabbitmqctl: {e}"));
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    })
    .await
    .expect("rabbitmqctl task")
}

/// The RabbitMQ connections of `prefix`: connection pid → operating-system pid of the process
/// (from the `connection_name` client property, `roomcast <prefix> pid <pid>`).
async fn connections(prefix: &str) -> HashMap<String, i32> {
    let marker = format!("roomcast {prefix} pid ");
    rabbitmqctl(&["list_connections", "pid", "client_properties"])
        .await
        .into_iter()
        .filter_map(|line| {
            let (connection, properties) = line.split_once('\t')?;
            let start = properties.find(&marker)? + marker.len();
            let digits: String = properties[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some((connection.trim().to_owned(), digits.parse().ok()?))
        })
        .collect()
}

/// Closes `connections` at RabbitMQ (side by side).
async fn close_connections(connections: &[String]) {
    let closes: Vec<_> = connections
        .iter()
        .map(|connection| {
            let connection = connection.clone();
            tokio::spawn(async move {
                rabbitmqctl(&[
                    "close_connection",
                    &connection,
                    "cluster test: broker outage",
                ])
                .await
            })
        })
        .collect();
    for close in closes {
        close.await.expect("close_connection task");
    }
}

/// Waits until every process in `pids` has a connection of `prefix`; returns the connections.
async fn wait_connected(prefix: &str, pids: &[i32]) -> Vec<String> {
    let deadline = Instant::now() + cluster::WAIT;
    loop {
        let open = connections(prefix).await;
        let connected: BTreeSet<i32> = open.values().copied().collect();
        if pids.iter().all(|pid| connected.contains(pid)) {
            return open.into_keys().collect();
        }
        assert!(
            Instant::now() < deadline,
            "not every process is connected to RabbitMQ: {connected:?} of {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The rooms the fan-out queue of each process of `prefix` is bound to: os pid → rooms.
async fn fanout_rooms(prefix: &str) -> HashMap<i32, BTreeSet<String>> {
    let (processes, queues, bindings) = tokio::join!(
        connections(prefix),
        rabbitmqctl(&["list_queues", "name", "owner_pid"]),
        rabbitmqctl(&[
            "list_bindings",
            "source_name",
            "destination_name",
            "routing_key",
        ]),
    );
    let owners: HashMap<String, String> = queues
        .into_iter()
        .filter_map(|line| {
            let (queue, owner) = line.split_once('\t')?;
            Some((queue.to_owned(), owner.trim().to_owned()))
        })
        .collect();
    let exchange = format!("{prefix}.fanout");
    let mut rooms: HashMap<i32, BTreeSet<String>> = HashMap::new();
    for line in bindings {
        let fields: Vec<&str> = line.split('\t').collect();
        let [source, queue, key] = fields.as_slice() else {
            continue;
        };
        if *source != exchange {
            continue;
        }
        let pid = owners
            .get(*queue)
            .and_then(|owner| processes.get(owner))
            .copied()
            .unwrap_or(-1);
        rooms.entry(pid).or_default().insert((*key).to_owned());
    }
    rooms
}

/// Two gateways, two workers: members spread over both gateways, publishers on both; every
/// member gets every message once, all in the same order, seqs 1..N; every publish is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_deliver_every_message_once_in_one_order() {
    let Some((cluster, _prefix)) = start(2, 2).await else {
        return;
    };
    let room = unique("room");
    let (g1, g2) = (cluster.ws_url(1), cluster.ws_url(2));
    let per_publisher = 150;
    let publishers = 4;
    let total = (per_publisher * publishers) as u64;
    let mut specs = Vec::new();
    for i in 0..publishers {
        let url = if i % 2 == 0 { &g1 } else { &g2 };
        specs.push(PeerSpec::publisher(
            &format!("pub{i}"),
            &room,
            vec![url.clone()],
            per_publisher,
            Duration::from_millis(3),
            total,
        ));
    }
    for i in 0..4 {
        let url = if i % 2 == 0 { &g1 } else { &g2 };
        specs.push(PeerSpec::member(
            &format!("member{i}"),
            &room,
            vec![url.clone()],
            total,
        ));
    }
    let reports = cluster.swarm(specs.clone()).await.finish().await;
    let order = check_delivery(&reports, total);
    check_acked(&reports, &specs, &order);
    check_publisher_order(&specs, &order);
    check_store(&cluster, &room, &order).await;
    assert!(
        reports
            .iter()
            .all(|r| r.unavailable == 0 && r.reconnects == 0 && r.errors.is_empty()),
        "no failure was expected:\n{}",
        summaries(&reports)
    );
}

/// A worker killed with SIGKILL while events stream in: the standby worker takes over; no acked
/// event is lost, none is stored or delivered twice, members see seqs 1..N in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_stream_loses_and_repeats_nothing() {
    let Some((mut cluster, _prefix)) = start(2, 1).await else {
        return;
    };
    // Worker 1 holds every shard (it started alone); worker 2 waits as the standby.
    let standby = cluster.add(Kind::Worker).await;
    assert_eq!(standby, 2);
    let room = unique("room");
    let (g1, g2) = (cluster.ws_url(1), cluster.ws_url(2));
    let per_publisher = 200;
    let publishers = 3;
    let total = (per_publisher * publishers) as u64;
    let mut specs = Vec::new();
    for i in 0..publishers {
        let url = if i % 2 == 0 { &g1 } else { &g2 };
        specs.push(PeerSpec::publisher(
            &format!("pub{i}"),
            &room,
            vec![url.clone()],
            per_publisher,
            Duration::from_millis(5),
            total,
        ));
    }
    for i in 0..3 {
        let url = if i % 2 == 0 { &g2 } else { &g1 };
        specs.push(PeerSpec::member(
            &format!("member{i}"),
            &room,
            vec![url.clone()],
            total,
        ));
    }
    let mut swarm = cluster.swarm(specs.clone()).await;
    swarm.acked_at_least(150).await;
    cluster.signal(Kind::Worker, 1, Signal::SIGKILL).await;
    let acked_at_kill = swarm.acks();
    assert!(
        acked_at_kill < total as usize,
        "the kill came after the stream ({acked_at_kill} acks)"
    );
    let reports = swarm.finish().await;
    let order = check_delivery(&reports, total);
    check_acked(&reports, &specs, &order);
    check_publisher_order(&specs, &order);
    check_store(&cluster, &room, &order).await;
}

/// A gateway killed with SIGKILL: its clients reconnect to the other gateway with `since` = the
/// last seq they saw and get every missed message once, while publishing goes on; publishers
/// re-publish their unanswered events with the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_clients_resume_on_the_other_gateway() {
    let Some((cluster, _prefix)) = start(2, 2).await else {
        return;
    };
    let room = unique("room");
    let (g1, g2) = (cluster.ws_url(1), cluster.ws_url(2));
    let first = vec![g1.clone(), g2.clone()];
    let second = vec![g2.clone(), g1.clone()];
    let per_publisher = 250;
    let total = (per_publisher * 2) as u64;
    let specs = vec![
        PeerSpec::publisher(
            "pub-g1",
            &room,
            first.clone(),
            per_publisher,
            Duration::from_millis(5),
            total,
        ),
        PeerSpec::publisher(
            "pub-g2",
            &room,
            second.clone(),
            per_publisher,
            Duration::from_millis(5),
            total,
        ),
        PeerSpec::member("member-g1", &room, first.clone(), total),
        PeerSpec::member("member-g2a", &room, second.clone(), total),
        PeerSpec::member("member-g2b", &room, second.clone(), total),
    ];
    let mut swarm = cluster.swarm(specs.clone()).await;
    swarm.acked_at_least(100).await;
    cluster.signal(Kind::Gateway, 2, Signal::SIGKILL).await;
    let acked_at_kill = swarm.acks();
    assert!(
        acked_at_kill < total as usize,
        "the kill came after the stream ({acked_at_kill} acks)"
    );
    let reports = swarm.finish().await;
    for report in &reports {
        let on_second = report.sub.contains("g2");
        if on_second {
            assert!(
                report.joined.len() >= 2,
                "{} did not reconnect:\n{}",
                report.sub,
                summaries(&reports)
            );
        } else {
            assert_eq!(
                report.joined.len(),
                1,
                "{} lost its connection to the surviving gateway:\n{}",
                report.sub,
                summaries(&reports)
            );
        }
    }
    let order = check_delivery(&reports, total);
    check_acked(&reports, &specs, &order);
    check_store(&cluster, &room, &order).await;
}

/// RabbitMQ closes the Roomcast processes' connections (RabbitMQ itself keeps running for the
/// other tests): publishes are acked only when stored, otherwise answered `unavailable`; the
/// processes reconnect by themselves, publishing resumes, and every acked event is stored and
/// delivered once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_closed_processes_recover_without_false_acks() {
    if !rabbitmqctl_present() {
        return;
    }
    let Some((cluster, prefix)) = start(2, 2).await else {
        return;
    };
    let room = unique("room");
    let (g1, g2) = (cluster.ws_url(1), cluster.ws_url(2));
    // About 10 s of publishing: the first outage (rabbitmqctl, one Erlang VM per connection
    // closed, several seconds on a loaded machine) must come before the end of the stream.
    let per_publisher = 600;
    let publishers = 4;
    let total = (per_publisher * publishers) as u64;
    let mut specs = Vec::new();
    for i in 0..publishers {
        let urls = if i % 2 == 0 {
            vec![g1.clone(), g2.clone()]
        } else {
            vec![g2.clone(), g1.clone()]
        };
        specs.push(PeerSpec::publisher(
            &format!("pub{i}"),
            &room,
            urls,
            per_publisher,
            Duration::from_millis(16),
            total,
        ));
    }
    specs.push(PeerSpec::member(
        "member-g1",
        &room,
        vec![g1.clone(), g2.clone()],
        total,
    ));
    specs.push(PeerSpec::member(
        "member-g2",
        &room,
        vec![g2.clone(), g1.clone()],
        total,
    ));
    let pids = cluster.pids();
    let open = wait_connected(&prefix, &pids).await;
    let mut swarm = cluster.swarm(specs.clone()).await;
    swarm.acked_at_least(100).await;
    close_connections(&open).await;
    let acked_at_close = swarm.acks();
    // Once more, on the connections the processes opened again.
    let reopened = wait_connected(&prefix, &pids).await;
    close_connections(&reopened).await;
    wait_connected(&prefix, &pids).await;
    cluster.wait_ready(1).await;
    cluster.wait_ready(2).await;
    let reports = swarm.finish().await;
    eprintln!(
        "acked when the connections were closed: {acked_at_close} of {total}\n{}",
        summaries(&reports)
    );
    assert!(
        acked_at_close < total as usize,
        "the outage came after the stream"
    );
    assert!(
        reports.iter().map(|r| r.unavailable).sum::<usize>() > 0,
        "no publish was answered `unavailable` while the connections were closed:\n{}",
        summaries(&reports)
    );
    let order = check_delivery(&reports, total);
    check_acked(&reports, &specs, &order);
    check_store(&cluster, &room, &order).await;
    assert!(
        reports.iter().all(|r| r.errors.is_empty()),
        "unexpected errors:\n{}",
        summaries(&reports)
    );
}

/// A gateway receives only the rooms it has members in: its fan-out queue is bound to those
/// rooms only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_fanout_queue_is_bound_to_its_members_rooms_only() {
    if !rabbitmqctl_present() {
        return;
    }
    let Some((cluster, prefix)) = start(2, 1).await else {
        return;
    };
    let (room_a, room_b) = (unique("room-a"), unique("room-b"));
    let mut alice = cluster.client(1, "alice").await;
    let mut bob = cluster.client(2, "bob").await;
    alice.join(&room_a, None).await.expect("join A");
    bob.join(&room_b, None).await.expect("join B");

    let gateway1 = cluster.process(Kind::Gateway, 1).pid;
    let gateway2 = cluster.process(Kind::Gateway, 2).pid;
    let expected: HashMap<i32, BTreeSet<String>> = HashMap::from([
        (gateway1, BTreeSet::from([room_a.clone()])),
        (gateway2, BTreeSet::from([room_b.clone()])),
    ]);
    wait_bindings(&prefix, &expected).await;

    // Traffic of B reaches bob, and alice (in A only) gets nothing of it.
    let publish = roomcast_schemas::ClientFrame::Publish {
        id: roomcast_schemas::EventId::new("b-1".to_owned()).unwrap(),
        room: roomcast_schemas::RoomName::new(room_b.clone()).unwrap(),
        event: roomcast_schemas::EventName::new("test".to_owned()).unwrap(),
        data: serde_json::value::to_raw_value(&serde_json::json!(1)).unwrap(),
    };
    assert!(bob.send(&publish).await);
    let mut got_message = false;
    let mut got_ack = false;
    while !(got_message && got_ack) {
        match bob.recv().await.expect("bob's connection") {
            roomcast_schemas::ServerFrame::Ack { .. } => got_ack = true,
            roomcast_schemas::ServerFrame::Message { room, .. } if room == room_b => {
                got_message = true;
            }
            other => panic!("unexpected frame for bob: {other:?}"),
        }
    }
    let publish_a = roomcast_schemas::ClientFrame::Publish {
        id: roomcast_schemas::EventId::new("a-1".to_owned()).unwrap(),
        room: roomcast_schemas::RoomName::new(room_a.clone()).unwrap(),
        event: roomcast_schemas::EventName::new("test".to_owned()).unwrap(),
        data: serde_json::value::to_raw_value(&serde_json::json!(1)).unwrap(),
    };
    assert!(alice.send(&publish_a).await);
    // A's message comes after B's was stored and fanned out: alice's next frames are about A.
    let mut got_message = false;
    let mut got_ack = false;
    while !(got_message && got_ack) {
        match alice.recv().await.expect("alice's connection") {
            roomcast_schemas::ServerFrame::Ack { .. } => got_ack = true,
            roomcast_schemas::ServerFrame::Message { room, .. } => {
                assert_eq!(room, room_a, "alice received another room's message");
                got_message = true;
            }
            other => panic!("unexpected frame for alice: {other:?}"),
        }
    }

    // The last member leaving unbinds the room.
    let leave = roomcast_schemas::ClientFrame::Leave {
        room: roomcast_schemas::RoomName::new(room_a.clone()).unwrap(),
    };
    assert!(alice.send(&leave).await);
    match alice.recv().await.expect("alice's connection") {
        roomcast_schemas::ServerFrame::Left { room } => assert_eq!(room, room_a),
        other => panic!("expected left, got {other:?}"),
    }
    let expected = HashMap::from([(gateway2, BTreeSet::from([room_b.clone()]))]);
    wait_bindings(&prefix, &expected).await;
}

/// Waits until the fan-out bindings of `prefix` by process are `expected`.
async fn wait_bindings(prefix: &str, expected: &HashMap<i32, BTreeSet<String>>) {
    let deadline = Instant::now() + cluster::WAIT;
    loop {
        let rooms = fanout_rooms(prefix).await;
        if &rooms == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fan-out bindings by gateway pid: {rooms:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
