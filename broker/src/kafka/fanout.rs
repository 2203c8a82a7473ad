//! Fan-out: publishing to `{prefix}.fanout`, and subscriptions (a consumer without a group per
//! subscription, filtering rooms locally).

use super::{KafkaBroker, KafkaClient, METADATA_TIMEOUT};
use crate::{BrokerError, FanoutEvent, FanoutPublisher, FanoutSubscription};
use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Rooms = Arc<RwLock<HashSet<Arc<str>>>>;

fn subscribed(rooms: &Rooms, room: &str) -> bool {
    rooms
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(room)
}

/// One gateway's subscription.
pub(crate) struct KafkaSubscription {
    rooms: Rooms,
    events: tokio::sync::Mutex<mpsc::Receiver<FanoutEvent>>,
    closed: CancellationToken,
    /// Stops the receiving task when the subscription is dropped.
    stop: CancellationToken,
}

fn config(shared: &KafkaClient) -> ClientConfig {
    let mut config = super::base_config(&shared.settings);
    // librdkafka needs a group id for manual assignments; the group is never joined and
    // nothing is committed.
    config
        .set(
            "group.id",
            format!("{}.fanout-reader", shared.settings.prefix),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest")
        .set("enable.partition.eof", "false")
        .set(
            "fetch.wait.max.ms",
            shared.settings.fetch_wait_ms.to_string(),
        )
        .set("queued.max.messages.kbytes", "8192");
    config
}

impl KafkaSubscription {
    /// Assigns every fan-out partition at its current end, then starts receiving.
    pub(crate) async fn open(shared: Arc<KafkaClient>) -> Result<KafkaSubscription, BrokerError> {
        let consumer: StreamConsumer = config(&shared)
            .create()
            .map_err(|e| BrokerError::Config(format!("kafka fan-out consumer: {e}")))?;
        let consumer = Arc::new(consumer);
        let topic = shared.fanout_topic.clone();
        let assigning = consumer.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = assigning
                .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                .map_err(|e| BrokerError::Unavailable(format!("kafka metadata: {e}")))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(BrokerError::Unavailable(format!(
                    "kafka topic {topic} has no partitions"
                )));
            }
            let mut list = TopicPartitionList::new();
            for partition in partitions {
                let (_, high) = assigning
                    .fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
                    .map_err(|e| BrokerError::Unavailable(format!("kafka watermarks: {e}")))?;
                list.add_partition_offset(&topic, partition, Offset::Offset(high))
                    .map_err(|e| BrokerError::Unavailable(format!("kafka offsets: {e}")))?;
            }
            assigning
                .assign(&list)
                .map_err(|e| BrokerError::Unavailable(format!("kafka assign: {e}")))
        })
        .await
        .map_err(|e| BrokerError::Unavailable(format!("kafka fan-out task: {e}")))??;
        let rooms: Rooms = Arc::default();
        let (tx, rx) = mpsc::channel(shared.settings.fanout_buffer);
        let stop = CancellationToken::new();
        tokio::spawn(receive(
            consumer,
            rooms.clone(),
            tx,
            shared.closed.clone(),
            stop.clone(),
        ));
        Ok(KafkaSubscription {
            rooms,
            events: tokio::sync::Mutex::new(rx),
            closed: shared.closed.clone(),
            stop,
        })
    }
}

/// Receives fan-out messages, keeps the subscribed rooms' ones, and turns losses into gaps.
async fn receive(
    consumer: Arc<StreamConsumer>,
    rooms: Rooms,
    events: mpsc::Sender<FanoutEvent>,
    closed: CancellationToken,
    stop: CancellationToken,
) {
    // Set when a message was lost; a gap is sent before the next message.
    let mut gap = false;
    loop {
        let received = tokio::select! {
            () = closed.cancelled() => return,
            () = stop.cancelled() => return,
            received = consumer.recv() => received,
        };
        let event = match received {
            Ok(message) => {
                let Some(room) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                if !subscribed(&rooms, room) {
                    continue;
                }
                FanoutEvent::Message {
                    room: Arc::from(room),
                    payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                }
            }
            Err(error) => {
                tracing::debug!(%error, "kafka fan-out consumer error; reporting a gap");
                gap = true;
                continue;
            }
        };
        if gap {
            match events.try_send(FanoutEvent::Gap) {
                Ok(()) => gap = false,
                Err(mpsc::error::TrySendError::Full(_)) => continue,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => gap = true,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl FanoutSubscription for KafkaSubscription {
    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        if self.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        self.rooms
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Arc::from(room));
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError> {
        if self.closed.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        self.rooms
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(room);
        Ok(())
    }

    /// Cancel-safe: events wait in a channel until a call takes them.
    async fn next(&self) -> Result<FanoutEvent, BrokerError> {
        let mut events = tokio::select! {
            biased;
            () = self.closed.cancelled() => return Err(BrokerError::Closed),
            events = self.events.lock() => events,
        };
        loop {
            let event = tokio::select! {
                biased;
                () = self.closed.cancelled() => return Err(BrokerError::Closed),
                event = events.recv() => event,
            };
            match event {
                Some(FanoutEvent::Message { room, .. }) if !subscribed(&self.rooms, &room) => {}
                Some(event) => return Ok(event),
                None => return Err(BrokerError::Closed),
            }
        }
    }
}

#[async_trait]
impl FanoutPublisher for KafkaBroker {
    async fn start_publish_fanout(
        &self,
        room: &str,
        payload: Bytes,
    ) -> Result<crate::PendingPublish, BrokerError> {
        self.check_open()?;
        let topic = self.shared.fanout_topic.clone();
        self.shared.start_produce(topic, room, None, payload).await
    }
}
