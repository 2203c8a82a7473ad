//! The inbound consumer stream: one consumer of every shard queue.

use super::acks::Acks;
use super::config::QueueType;
use super::link::AmqpClient;
use super::publish::KEY_HEADER;
use crate::pack::{self, RECORDS_HEADER};
use crate::{BrokerError, Delivery, EventStream, Settle};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, StreamExt};
use lapin::acker::Acker;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// A RabbitMQ message received and not yet acked: acked at RabbitMQ once each of its records
/// is.
struct Message {
    /// The channel's delivery tag.
    tag: u64,
    acker: Acker,
    /// Its records not acked yet.
    unacked: AtomicUsize,
}

/// A record received and not yet settled.
struct Entry {
    key: String,
    payload: Bytes,
    attempt: u32,
    message: Arc<Message>,
}

/// The deliveries of a stream, shared with their settle handles.
#[derive(Default)]
struct Buffer {
    /// Received, not handed out, by arrival order (a nacked delivery goes back to its place).
    ready: BTreeMap<u64, Entry>,
    /// Handed-out, unsettled deliveries per key.
    held: HashMap<String, u32>,
    next_seq: u64,
}

struct StreamState {
    buffer: Mutex<Buffer>,
    /// Woken when a settle makes a buffered delivery ready.
    settled: Notify,
    key_window: u32,
    acks: Acks,
}

impl StreamState {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, buffer: &mut Buffer, key: &str) {
        if let Some(count) = buffer.held.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                buffer.held.remove(key);
            }
        }
        self.settled.notify_one();
    }
}

/// One consumer of every shard queue, on its own channel.
pub(crate) struct AmqpStream {
    shared: Arc<AmqpClient>,
    channel: Channel,
    consumers: SelectAll<Consumer>,
    state: Arc<StreamState>,
    failed: Option<String>,
}

impl AmqpStream {
    /// Opens a channel and registers a consumer on every shard queue, starting at a rotating
    /// shard so that streams opened together become active on different shards.
    pub(crate) async fn open(shared: Arc<AmqpClient>, group: &str) -> Result<Self, BrokerError> {
        if group.is_empty() || group.len() > 128 {
            return Err(BrokerError::Config(
                "consumer group name must be 1-128 bytes".into(),
            ));
        }
        let session = shared.session()?;
        let channel = shared
            .timed(
                &session,
                "opening a consumer channel",
                session.connection.create_channel(),
            )
            .await?;
        let stream_no = shared.next_stream();
        let opened = async {
            shared
                .timed(
                    &session,
                    "setting the prefetch",
                    channel.basic_qos(shared.config.prefetch, BasicQosOptions { global: false }),
                )
                .await?;
            let shards = shared.config.shards;
            let first = u16::try_from(stream_no % u64::from(shards)).unwrap_or(0);
            let mut consumers = SelectAll::new();
            for i in 0..shards {
                let shard = (first + i) % shards;
                let tag = format!("{group}/{}/{stream_no}/{shard}", std::process::id());
                let consumer = shared
                    .timed(
                        &session,
                        "consuming a shard queue",
                        channel.basic_consume(
                            &shared.config.shard_queue(shard),
                            &tag,
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        ),
                    )
                    .await?;
                consumers.push(consumer);
            }
            Ok::<_, BrokerError>(consumers)
        }
        .await;
        match opened {
            Ok(consumers) => Ok(AmqpStream {
                state: Arc::new(StreamState {
                    buffer: Mutex::new(Buffer::default()),
                    settled: Notify::new(),
                    key_window: shared.config.key_window,
                    acks: Acks::start(),
                }),
                shared,
                channel,
                consumers,
                failed: None,
            }),
            Err(error) => {
                let _ = channel.close(200, "consumer setup failed").await;
                Err(error)
            }
        }
    }

    /// Takes a received delivery into the buffer; `Err` when the stream failed.
    fn receive(&mut self, item: Option<lapin::Result<lapin::message::Delivery>>) {
        match item {
            Some(Ok(delivery)) => {
                let headers = delivery.properties.headers().as_ref();
                let key = headers
                    .and_then(|h| h.inner().get(KEY_HEADER))
                    .and_then(|v| match v {
                        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes())),
                        AMQPValue::ShortString(s) => Some(s.as_str().into()),
                        _ => None,
                    })
                    .map(|k| k.into_owned())
                    .unwrap_or_default();
                let attempt = match self.shared.config.queue_type {
                    QueueType::Quorum => headers
                        .and_then(|h| h.inner().get("x-delivery-count"))
                        .and_then(amqp_count)
                        .unwrap_or(0)
                        .saturating_add(1),
                    QueueType::Classic => {
                        if delivery.redelivered {
                            2
                        } else {
                            1
                        }
                    }
                };
                let body = Bytes::from(delivery.data);
                let records = match headers
                    .and_then(|h| h.inner().get(RECORDS_HEADER))
                    .and_then(amqp_count)
                {
                    None => vec![body],
                    Some(count) => pack::split(&body, count).unwrap_or_else(|| {
                        tracing::warn!(
                            key = %key,
                            count,
                            bytes = body.len(),
                            "a packed message's framing does not add up; handing it out whole"
                        );
                        vec![body]
                    }),
                };
                let message = Arc::new(Message {
                    tag: delivery.delivery_tag,
                    acker: delivery.acker,
                    unacked: AtomicUsize::new(records.len()),
                });
                self.state.acks.tags().received(delivery.delivery_tag);
                let mut buffer = self.state.lock();
                for payload in records {
                    let seq = buffer.next_seq;
                    buffer.next_seq += 1;
                    buffer.ready.insert(
                        seq,
                        Entry {
                            key: key.clone(),
                            payload,
                            attempt,
                            message: message.clone(),
                        },
                    );
                }
            }
            Some(Err(error)) => {
                self.failed = Some(format!("consumer failed: {error}"));
            }
            None => {
                self.failed = Some("the consumers were cancelled".into());
            }
        }
    }

    /// Hands out up to `max` buffered deliveries whose key is not held beyond the window,
    /// each key's in order.
    fn take_ready(&self, max: usize) -> Vec<Delivery> {
        let mut buffer = self.state.lock();
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut taken = Vec::new();
        for (seq, entry) in &buffer.ready {
            if taken.len() == max {
                break;
            }
            let key = entry.key.as_str();
            if blocked.contains(key) {
                continue;
            }
            let held = buffer.held.get(key).copied().unwrap_or(0)
                + u32::try_from(taken.iter().filter(|(_, k)| *k == key).count())
                    .unwrap_or(u32::MAX);
            if held >= self.state.key_window {
                blocked.insert(key);
                continue;
            }
            taken.push((*seq, key));
        }
        let seqs: Vec<u64> = taken.into_iter().map(|(seq, _)| seq).collect();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(entry) = buffer.ready.remove(&seq) {
                *buffer.held.entry(entry.key.clone()).or_insert(0) += 1;
                out.push(Delivery::new(
                    entry.key.clone(),
                    entry.payload.clone(),
                    entry.attempt,
                    Box::new(AmqpSettle {
                        state: self.state.clone(),
                        seq,
                        entry,
                    }),
                ));
            }
        }
        out
    }

    fn check(&self) -> Result<(), BrokerError> {
        if self.shared.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        match &self.failed {
            Some(reason) => Err(BrokerError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }
}

/// An `x-delivery-count` header's value.
fn amqp_count(value: &AMQPValue) -> Option<u32> {
    let n: i64 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    };
    u32::try_from(n).ok()
}

#[async_trait]
impl EventStream for AmqpStream {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let max = max.max(1);
        loop {
            self.check()?;
            // Take in whatever has arrived, without waiting.
            while self.failed.is_none() {
                match self.consumers.next().now_or_never() {
                    Some(item) => self.receive(item),
                    None => break,
                }
            }
            self.check()?;
            let batch = self.take_ready(max);
            if !batch.is_empty() {
                return Ok(batch);
            }
            let state = self.state.clone();
            tokio::select! {
                biased;
                () = self.shared.closed.cancelled() => return Err(BrokerError::Closed),
                () = state.settled.notified() => {}
                item = self.consumers.next() => self.receive(item),
            }
        }
    }
}

impl Drop for AmqpStream {
    /// Closing the channel returns every unacked delivery of the stream to its queue (and
    /// hands the shards to the next waiting consumer).
    fn drop(&mut self) {
        self.state.lock().ready.clear();
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = channel.close(200, "stream dropped").await;
            });
        }
    }
}

/// Settles one delivery: an ack goes to RabbitMQ; a nack puts the delivery back into its
/// stream at its place (before the key's later records), with its attempt count raised.
struct AmqpSettle {
    state: Arc<StreamState>,
    seq: u64,
    entry: Entry,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        let AmqpSettle { state, entry, .. } = *self;
        let message = &entry.message;
        // The message is acked with its last record. Queued before the first await, so that
        // the acks of a batch settled together coalesce.
        let result = if message.unacked.fetch_sub(1, Ordering::AcqRel) == 1 {
            state.acks.ack(message.tag, message.acker.clone()).await
        } else {
            Ok(())
        };
        let mut buffer = state.lock();
        state.release(&mut buffer, &entry.key);
        result
    }

    async fn nack(self: Box<Self>) -> Result<(), BrokerError> {
        let AmqpSettle {
            state,
            seq,
            mut entry,
        } = *self;
        let mut buffer = state.lock();
        state.release(&mut buffer, &entry.key);
        entry.attempt = entry.attempt.saturating_add(1);
        buffer.ready.insert(seq, entry);
        Ok(())
    }
}
