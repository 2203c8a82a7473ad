//! The real `roomcast` binary as a process: restart and kill -9 keep every acknowledged event,
//! once each, in order.

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use roomcast_schemas::{ClientFrame, ServerFrame};
use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "process-test-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(20);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running `roomcast serve` process.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    async fn start(data_dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--publish-rate", "100000", "--publish-burst", "100000"])
            .args([
                "--user-publish-rate",
                "100000",
                "--user-publish-burst",
                "100000",
            ])
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn roomcast");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.strip_prefix("listening on http://") {
                    return url.to_owned();
                }
            }
            panic!("roomcast exited before listening");
        })
        .await
        .expect("roomcast did not start in time");
        // Keep draining stdout so that the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server { child, addr }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    /// SIGTERM, then wait for a clean exit.
    async fn stop(mut self) {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("roomcast did not stop after SIGTERM")
            .expect("wait");
        assert!(status.success(), "roomcast exited with {status}");
    }

    /// kill -9.
    async fn crash(mut self) {
        kill(self.pid(), Signal::SIGKILL).expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    async fn connect(&self, sub: &str) -> Ws {
        let token = roomcast_gateway::auth::Minter::hs256(SECRET.as_bytes())
            .mint(sub, &["*".to_owned()], Duration::from_secs(600))
            .expect("mint");
        let mut request = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        ws
    }
}

async fn send(ws: &mut Ws, frame: &ClientFrame) {
    let text = serde_json::to_string(frame).expect("serialize");
    ws.send(Message::text(text)).await.expect("send");
}

/// The next JSON frame, skipping pings; None when the connection ended.
async fn recv(ws: &mut Ws) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame in time")?
        {
            Ok(Message::Text(text)) => {
                return Some(serde_json::from_str(&text).expect("server frame"));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn publish(room: &str, id: &str, n: u64) -> ClientFrame {
    ClientFrame::Publish {
        id: roomcast_schemas::EventId::new(id.to_owned()).unwrap(),
        room: roomcast_schemas::RoomName::new(room.to_owned()).unwrap(),
        event: roomcast_schemas::EventName::new("chat".to_owned()).unwrap(),
        data: serde_json::value::to_raw_value(&serde_json::json!({ "n": n })).unwrap(),
    }
}

async fn join(ws: &mut Ws, room: &str, since: Option<u64>) -> u64 {
    send(
        ws,
        &ClientFrame::Join {
            room: roomcast_schemas::RoomName::new(room.to_owned()).unwrap(),
            since,
        },
    )
    .await;
    match recv(ws).await.expect("connection open") {
        ServerFrame::Joined { seq, .. } => seq,
        other => panic!("expected joined, got {other:?}"),
    }
}

/// Joins with since=0 and reads the room's messages, history then live, until every id in
/// `required` has arrived: (seq, id) in delivery order. After a restart the worker may still be
/// storing events the broker acknowledged before it, so the live part matters.
async fn read_until(server: &Server, room: &str, required: &[String]) -> Vec<(u64, String)> {
    let mut ws = server.connect("reader").await;
    join(&mut ws, room, Some(0)).await;
    let mut missing: HashSet<&str> = required.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    while !missing.is_empty() {
        match recv(&mut ws).await.expect("connection open") {
            ServerFrame::Message { seq, id, .. } => {
                missing.remove(id.as_str());
                out.push((seq, id));
            }
            other => panic!("unexpected frame during replay: {other:?}"),
        }
    }
    out
}

fn assert_gap_free(history: &[(u64, String)]) {
    for (index, (seq, _)) in history.iter().enumerate() {
        assert_eq!(
            *seq,
            index as u64 + 1,
            "seqs must be 1, 2, 3, … without gaps"
        );
    }
    let ids: HashSet<&str> = history.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), history.len(), "an event id was stored twice");
}

#[tokio::test]
async fn restart_keeps_every_message_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let room = format!("restart-{}", uuid::Uuid::new_v4().simple());
    let server = Server::start(dir.path()).await;
    let mut ws = server.connect("alice").await;
    join(&mut ws, &room, None).await;
    let n = 50;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("r-{i}");
        send(&mut ws, &publish(&room, &id, i)).await;
        loop {
            match recv(&mut ws).await.expect("open") {
                ServerFrame::Ack { id: acked } if acked == id => break,
                ServerFrame::Message { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        ids.push(id);
    }
    drop(ws);
    server.stop().await;

    let server = Server::start(dir.path()).await;
    let replayed = read_until(&server, &room, &ids).await;
    assert_gap_free(&replayed);
    let replayed_ids: Vec<String> = replayed.into_iter().map(|(_, id)| id).collect();
    assert_eq!(replayed_ids, ids, "every message once, in publish order");
    server.stop().await;
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_event_and_duplicates_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let room = format!("crash-{}", uuid::Uuid::new_v4().simple());
    let server = Server::start(dir.path()).await;
    let mut ws = server.connect("bob").await;
    join(&mut ws, &room, None).await;

    // Publish a pipelined stream; kill the process once enough acks came back, mid-stream.
    let total = 5_000u64;
    let kill_after = 300usize;
    let mut acked: Vec<String> = Vec::new();
    let (mut sink, mut stream) = ws.split();
    let room_for_sender = room.clone();
    let sender = tokio::spawn(async move {
        for i in 0..total {
            let text = serde_json::to_string(&publish(&room_for_sender, &format!("c-{i}"), i))
                .expect("json");
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
    });
    let mut server = Some(server);
    loop {
        let frame = match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("no frame in time")
        {
            Some(Ok(Message::Text(text))) => {
                serde_json::from_str::<ServerFrame>(&text).expect("frame")
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        if let ServerFrame::Ack { id } = frame {
            acked.push(id);
            if acked.len() == kill_after
                && let Some(server) = server.take()
            {
                server.crash().await;
            }
        }
    }
    let _ = sender.await;
    assert!(
        acked.len() >= kill_after,
        "only {} acks before the connection ended",
        acked.len()
    );
    assert!(
        (acked.len() as u64) < total,
        "the kill came after the whole stream"
    );

    let server = Server::start(dir.path()).await;
    // The client retries everything it sent without an ack, with the same ids.
    let mut ws = server.connect("bob").await;
    join(&mut ws, &room, None).await;
    let acked_set: HashSet<&str> = acked.iter().map(String::as_str).collect();
    let retry: Vec<u64> = (0..total)
        .filter(|i| !acked_set.contains(format!("c-{i}").as_str()))
        .take(200)
        .collect();
    for i in &retry {
        let id = format!("c-{i}");
        send(&mut ws, &publish(&room, &id, *i)).await;
        loop {
            match recv(&mut ws).await.expect("open") {
                ServerFrame::Ack { id: got } if got == id => break,
                ServerFrame::Message { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    // The retried events were published after the restart, so once they arrive every event
    // the broker held for the room before them has been stored too (per-room order).
    let mut required = acked.clone();
    required.extend(retry.iter().map(|i| format!("c-{i}")));
    let replayed = read_until(&server, &room, &required).await;
    assert_gap_free(&replayed);
    let stored: HashSet<&str> = replayed.iter().map(|(_, id)| id.as_str()).collect();
    for id in &acked {
        assert!(
            stored.contains(id.as_str()),
            "acknowledged event {id} was lost"
        );
    }
    for i in &retry {
        assert!(
            stored.contains(format!("c-{i}").as_str()),
            "retried event c-{i} missing"
        );
    }
    // Per-connection order: a client's events keep their relative order in the room.
    let numbers: Vec<u64> = replayed
        .iter()
        .filter_map(|(_, id)| id.strip_prefix("c-")?.parse().ok())
        .filter(|n| !retry.contains(n))
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "events of one connection reordered"
    );
    server.stop().await;
}
