//! Delivery counters: written to `{prefix}.attempts` before a record that may have been
//! delivered before is handed out, and read back when partitions are assigned.

use super::offsets::decode_acked;
use super::partition::Loaded;
use super::*;

impl StreamShared {
    /// The key of the counter of `offset` in `partition`.
    pub(super) fn attempts_key(&self, partition: i32, offset: i64) -> String {
        format!("{partition}/{offset}/{}", self.group)
    }

    pub(super) fn attempts_partition(&self, partition: i32) -> i32 {
        partition.rem_euclid(self.broker.attempts_partitions.max(1))
    }

    /// The key of the offsets acked above the committed position of `partition`.
    pub(super) fn acked_key(&self, partition: i32) -> String {
        format!("{partition}/acked/{}", self.group)
    }

    /// Writes the delivery counter of a record (or deletes it with `None`).
    pub(super) fn write_attempts(
        &self,
        partition: i32,
        offset: i64,
        attempts: Option<u32>,
    ) -> Result<DeliveryFuture, BrokerError> {
        let key = self.attempts_key(partition, offset);
        let value = attempts.map(|n| n.to_string());
        self.write_state(partition, &key, value.as_deref())
    }

    /// Writes a record about `partition` to the attempts topic (a tombstone with `None`).
    pub(super) fn write_state(
        &self,
        partition: i32,
        key: &str,
        value: Option<&str>,
    ) -> Result<DeliveryFuture, BrokerError> {
        let mut record = FutureRecord::to(&self.broker.attempts_topic)
            .partition(self.attempts_partition(partition))
            .key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.broker
            .producer
            .send_result::<str, str>(record)
            .map_err(|(error, _)| {
                BrokerError::Unavailable(format!("kafka: writing a delivery counter: {error}"))
            })
    }
}

impl Context {
    /// Reads the delivery counters of `partitions` of this group.
    pub(super) fn load_attempts(&self, partitions: &[i32]) -> Loaded {
        let mut counters = Loaded::default();
        let mut reader = lock(&self.reader);
        if reader.is_none() {
            match reader_config(&self.stream.broker).create::<BaseConsumer>() {
                Ok(created) => *reader = Some(created),
                Err(error) => {
                    tracing::warn!(%error, "kafka: cannot read delivery counters");
                    return counters;
                }
            }
        }
        let Some(reader) = reader.as_ref() else {
            return counters;
        };
        let topic = &self.stream.broker.attempts_topic;
        let wanted: HashSet<i32> = partitions
            .iter()
            .map(|p| self.stream.attempts_partition(*p))
            .collect();
        let mut list = TopicPartitionList::new();
        let mut remaining = HashMap::new();
        for partition in &wanted {
            match reader.fetch_watermarks(topic, *partition, LOAD_TIMEOUT) {
                Ok((low, high)) if high > low => {
                    if let Err(error) =
                        list.add_partition_offset(topic, *partition, Offset::Offset(low))
                    {
                        tracing::warn!(%error, "kafka: bad counter offset");
                        continue;
                    }
                    remaining.insert(*partition, high);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "kafka: reading delivery counters failed");
                }
            }
        }
        if remaining.is_empty() {
            return counters;
        }
        if let Err(error) = reader.assign(&list) {
            tracing::warn!(%error, "kafka: reading delivery counters failed");
            return counters;
        }
        let suffix = format!("/{}", self.stream.group);
        let deadline = Instant::now() + LOAD_TIMEOUT;
        while !remaining.is_empty() && Instant::now() < deadline {
            match reader.poll(POLL) {
                Some(Ok(message)) => {
                    if remaining
                        .get(&message.partition())
                        .is_some_and(|high| message.offset() >= high - 1)
                    {
                        remaining.remove(&message.partition());
                    }
                    let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                        continue;
                    };
                    let Some((partition, what)) = key
                        .strip_suffix(&suffix)
                        .and_then(|rest| rest.split_once('/'))
                        .and_then(|(p, what)| Some((p.parse::<i32>().ok()?, what)))
                    else {
                        continue;
                    };
                    if !partitions.contains(&partition) {
                        continue;
                    }
                    let value = message.payload().and_then(|v| std::str::from_utf8(v).ok());
                    if what == "acked" {
                        let Some((position, acked)) = value
                            .and_then(|v| v.split_once(':'))
                            .and_then(|(position, acked)| {
                                let position = position.parse::<i64>().ok()?;
                                Some((position, decode_acked(position, acked)))
                            })
                        else {
                            continue;
                        };
                        counters.acked.insert(partition, acked);
                        let below = counters.acked_below.entry(partition).or_insert(position);
                        *below = (*below).max(position);
                        continue;
                    }
                    let Ok(offset) = what.parse::<i64>() else {
                        continue;
                    };
                    let entry = counters.attempts.entry(partition).or_default();
                    match value.and_then(|v| v.parse::<u32>().ok()) {
                        Some(n) => entry.insert(offset, n),
                        None => entry.remove(&offset),
                    };
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    remaining.remove(&partition);
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "kafka: reading delivery counters failed");
                }
                None => {}
            }
        }
        if !remaining.is_empty() {
            tracing::warn!("kafka: reading delivery counters timed out; counts may be low");
        }
        if let Err(error) = reader.unassign() {
            tracing::debug!(%error, "kafka: unassigning the counter reader failed");
        }
        counters
    }
}

pub(super) fn reader_config(broker: &KafkaClient) -> ClientConfig {
    let mut config = super::super::base_config(&broker.settings);
    config
        .set(
            "group.id",
            format!("{}.attempts-reader", broker.settings.prefix),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100");
    config
}
