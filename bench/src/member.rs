//! What a room member records: which events it received (to count losses and duplicates),
//! whether seqs came in order, and publish→receive latency.

use crate::client::{ClientConfig, ConnectError, Endpoint, Ws, connect_and_join};
use crate::protocol::{ENGINE_IO_PONG, Incoming, Target};
use crate::stats::{BitSet, Clock, ShardedHistogram};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, Stream, StreamExt};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

/// Latency samples buffered by a member before they go into the shared histogram.
const LATENCY_BATCH: usize = 64;

/// Counters shared by every member of a run.
#[derive(Debug)]
pub struct Deliveries {
    /// What the server speaks.
    pub target: Target,
    /// The harness clock that publish times are taken from.
    pub clock: Clock,
    /// Events with an index below this are warm-up: not in the latency histogram.
    pub measure_from_index: u64,
    /// Publish→receive latency in microseconds.
    pub latency: ShardedHistogram,
    /// Distinct (member, event) pairs received.
    pub unique: AtomicU64,
    /// Events received again by the same member.
    pub duplicated: AtomicU64,
    /// Messages whose seq was not the previous one + 1.
    pub seq_breaks: AtomicU64,
    /// Members whose connection ended before the run did.
    pub disconnected: AtomicU64,
    /// How the first of them ended.
    pub first_disconnect: Mutex<Option<String>>,
    /// Tells members to stop reading.
    pub stop: CancellationToken,
}

impl Deliveries {
    /// Fresh counters.
    pub fn new(target: Target, clock: Clock, measure_from_index: u64) -> Self {
        Deliveries {
            target,
            clock,
            measure_from_index,
            latency: ShardedHistogram::new(16),
            unique: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            seq_breaks: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            first_disconnect: Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    /// Records that a member's connection ended early, and how.
    pub fn disconnect(&self, how: String) {
        self.disconnected.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_disconnect
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert(how);
    }

    /// How the first early disconnect happened.
    pub fn first_disconnect(&self) -> Option<String> {
        self.first_disconnect
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One member's view of the room.
#[derive(Debug)]
pub struct MemberState {
    /// Event indexes received.
    pub received: BitSet,
    last_seq: Option<u64>,
    latency_batch: Vec<u64>,
    key: usize,
    /// Where latency goes instead of the shared histogram (the publisher's own copies).
    latency_sink: Option<Arc<ShardedHistogram>>,
}

impl MemberState {
    /// A member expecting about `expected` events; `key` spreads members over histogram shards.
    pub fn new(expected: u64, key: usize) -> Self {
        MemberState {
            received: BitSet::with_capacity(expected),
            last_seq: None,
            latency_batch: Vec::new(),
            key,
            latency_sink: None,
        }
    }

    /// Records latency into `sink` rather than the shared histogram.
    pub fn with_latency_sink(mut self, sink: Option<Arc<ShardedHistogram>>) -> Self {
        self.latency_sink = sink;
        self
    }

    /// Records a received message.
    pub fn on_message(
        &mut self,
        shared: &Deliveries,
        seq: Option<u64>,
        index: Option<u64>,
        sent_ns: Option<u64>,
    ) {
        if let Some(seq) = seq {
            if self.last_seq.is_some_and(|last| seq != last + 1) {
                shared.seq_breaks.fetch_add(1, Ordering::Relaxed);
            }
            self.last_seq = Some(seq);
        }
        let Some(index) = index else { return };
        if !self.received.insert(index) {
            shared.duplicated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shared.unique.fetch_add(1, Ordering::Relaxed);
        if index >= shared.measure_from_index
            && let Some(sent) = sent_ns
        {
            let micros = shared.clock.now_ns().saturating_sub(sent) / 1000;
            self.latency_batch.push(micros);
            if self.latency_batch.len() >= LATENCY_BATCH {
                self.flush(shared);
            }
        }
    }

    /// Moves buffered latency samples into the shared histogram.
    pub fn flush(&mut self, shared: &Deliveries) {
        if !self.latency_batch.is_empty() {
            let sink = self.latency_sink.as_deref().unwrap_or(&shared.latency);
            sink.record_all(self.key, &self.latency_batch);
            self.latency_batch.clear();
        }
    }
}

/// Describes how a connection ended.
pub fn describe_end(item: Option<Result<Message, tungstenite::Error>>) -> String {
    match item {
        Some(Ok(Message::Close(Some(frame)))) => {
            format!("close {} {}", u16::from(frame.code), frame.reason)
        }
        Some(Ok(Message::Close(None))) => "close without code".to_owned(),
        Some(Err(err)) => format!("error: {err}"),
        None => "connection ended".to_owned(),
        Some(Ok(other)) => format!("unexpected {other:?}"),
    }
}

/// Reads a subscriber's connection until `shared.stop`; returns the events it received.
pub async fn subscriber(mut ws: Ws, shared: Arc<Deliveries>, expected: u64, key: usize) -> BitSet {
    let mut state = MemberState::new(expected, key);
    let stop = shared.stop.clone();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut stopped => break,
            item = ws.next() => item,
        };
        match item {
            Some(Ok(Message::Text(text))) => match shared.target.decode(&text) {
                Incoming::Message {
                    seq,
                    index,
                    sent_ns,
                } => state.on_message(&shared, seq, index, sent_ns),
                Incoming::Ping => {
                    if let Err(err) = ws.send(Message::text(ENGINE_IO_PONG)).await {
                        shared.disconnect(format!("pong failed: {err}"));
                        break;
                    }
                }
                Incoming::Error(text) => shared.disconnect(format!("error frame: {text}")),
                _ => {}
            },
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                shared.disconnect(describe_end(item));
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    state.flush(&shared);
    state.received
}

/// A publisher's sending half, shared with its reader (which answers Socket.IO pings).
pub type SharedSink = Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>;

/// What a publisher's reader hears about its publishes.
pub trait AckHandler: Send {
    /// Event `index` was acknowledged (`None`: the id did not parse).
    fn ack(&mut self, index: Option<u64>);
    /// The server answered a publish with an error frame.
    fn error(&mut self, text: &str);

    /// Where the publisher's own copies record their latency; `None`: with every member's.
    fn echo_latency(&self) -> Option<Arc<ShardedHistogram>> {
        None
    }
}

/// Reads a publisher's connection: acks go to `acks`, its own room messages are recorded like
/// a subscriber's. Returns the events it received.
pub async fn publisher_reader<S, A>(
    mut stream: S,
    sink: SharedSink,
    shared: Arc<Deliveries>,
    mut acks: A,
    expected: u64,
    key: usize,
) -> (BitSet, A)
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    A: AckHandler,
{
    let mut state = MemberState::new(expected, key).with_latency_sink(acks.echo_latency());
    let stop = shared.stop.clone();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut stopped => break,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(Message::Text(text))) => match shared.target.decode(&text) {
                Incoming::Message {
                    seq,
                    index,
                    sent_ns,
                } => state.on_message(&shared, seq, index, sent_ns),
                Incoming::Ack { index } => acks.ack(index),
                Incoming::Error(text) => acks.error(&text),
                Incoming::Ping => {
                    let _ = sink.lock().await.send(Message::text(ENGINE_IO_PONG)).await;
                }
                _ => {}
            },
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                shared.disconnect(describe_end(item));
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    state.flush(&shared);
    (state.received, acks)
}

/// Where and how members connect.
#[derive(Debug, Clone, Copy)]
pub struct JoinPlan<'a> {
    /// The server.
    pub endpoint: &'a Endpoint,
    /// The room every member joins.
    pub room: &'a str,
    /// Source addresses, used round-robin.
    pub sources: &'a [Option<IpAddr>],
    /// Connections set up at once.
    pub concurrency: usize,
    /// Client socket settings.
    pub config: &'a ClientConfig,
}

/// Connects `count` members (user ids from `sub`) as `plan` says; each connection is handed
/// to `spawn` as soon as it joined, and `connected` counts them. Fails with the failures
/// counted by kind and the first one's text when any connection fails.
pub async fn connect_members<T, F>(
    plan: &JoinPlan<'_>,
    count: usize,
    sub: impl Fn(usize) -> String,
    connected: &AtomicU64,
    mut spawn: F,
) -> Result<Vec<T>, ConnectFailures>
where
    F: FnMut(usize, Ws) -> T,
{
    let attempts = futures_util::stream::iter(0..count)
        .map(|i| {
            let sub = sub(i);
            let source = plan
                .sources
                .get(i % plan.sources.len().max(1))
                .copied()
                .flatten();
            async move {
                let result =
                    connect_and_join(plan.endpoint, source, &sub, plan.room, plan.config).await;
                if result.is_ok() {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                (i, result)
            }
        })
        .buffer_unordered(plan.concurrency.max(1));
    tokio::pin!(attempts);
    let mut out = Vec::with_capacity(count);
    let mut failures = ConnectFailures::default();
    while let Some((i, result)) = attempts.next().await {
        match result {
            Ok(ws) => out.push(spawn(i, ws)),
            Err(err) => failures.add(&err),
        }
    }
    if failures.total > 0 {
        Err(failures)
    } else {
        Ok(out)
    }
}

/// Connection failures, counted by kind.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectFailures {
    /// Number of failures.
    pub total: u64,
    /// Failures per kind (`http 429`, `timeout`, …).
    pub by_kind: BTreeMap<String, u64>,
    /// The first failure's text.
    pub first: Option<String>,
}

impl ConnectFailures {
    /// Counts one failure.
    pub fn add(&mut self, err: &ConnectError) {
        self.total += 1;
        *self.by_kind.entry(err.kind()).or_default() += 1;
        self.first.get_or_insert_with(|| err.to_string());
    }

    /// Adds another set of failures.
    pub fn merge(&mut self, other: &ConnectFailures) {
        self.total += other.total;
        for (kind, n) in &other.by_kind {
            *self.by_kind.entry(kind.clone()).or_default() += n;
        }
        if self.first.is_none() {
            self.first.clone_from(&other.first);
        }
    }
}

impl std::fmt::Display for ConnectFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} connection(s) failed {:?}", self.total, self.by_kind)?;
        if let Some(first) = &self.first {
            write!(f, "; first: {first}")?;
        }
        Ok(())
    }
}
