//! Group membership: the stream consumer's configuration and its rebalance callbacks.

use super::offsets::{add_commit, decode_acked};
use super::partition::Part;
use super::*;

/// Callbacks of the stream's consumer, run on the stream's thread.
pub(super) struct Context {
    pub(super) stream: Arc<StreamShared>,
    /// Reads the delivery counters of assigned partitions.
    pub(super) reader: Mutex<Option<BaseConsumer>>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = self.events_partitions(list);
            let lost = consumer.assignment_lost();
            tracing::info!(?partitions, lost, group = %self.stream.group, "kafka: partitions revoked");
            if !lost {
                self.wait_settled(&partitions);
            }
            self.give_up(consumer, &partitions, !lost);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = self.events_partitions(list);
            tracing::info!(?partitions, group = %self.stream.group, "kafka: partitions assigned");
            if partitions.is_empty() {
                return;
            }
            let counters = self.load_attempts(&partitions);
            let skips = self.committed_acks(consumer, &partitions);
            let mut state = lock(&self.stream.state);
            let paused = state.buffered >= BUFFER_HIGH;
            for partition in &partitions {
                state.next_generation += 1;
                let part = Part {
                    generation: state.next_generation,
                    pending: VecDeque::new(),
                    delivered: BTreeMap::new(),
                    next_token: 0,
                    busy: HashMap::new(),
                    unacked: BTreeSet::new(),
                    next_fetch: None,
                    attempts: counters
                        .attempts
                        .get(partition)
                        .cloned()
                        .unwrap_or_default(),
                    durable: counters
                        .attempts
                        .get(partition)
                        .map(|c| c.keys().copied().collect())
                        .unwrap_or_default(),
                    resume: true,
                    acked: BTreeSet::new(),
                    // Acks are final, so offsets acked by any earlier owner can be skipped.
                    skip: skips
                        .get(partition)
                        .into_iter()
                        .chain(counters.acked.get(partition))
                        .flatten()
                        .copied()
                        .collect(),
                    skip_below: counters.acked_below.get(partition).copied().unwrap_or(0),
                    changed: false,
                };
                if let Some(old) = state.parts.insert(*partition, part) {
                    state.buffered -= old.pending.len();
                }
            }
            drop(state);
            if paused {
                let mut list = TopicPartitionList::new();
                for partition in &partitions {
                    list.add_partition(&self.stream.broker.events_topic, *partition);
                }
                if let Err(error) = consumer.pause(&list) {
                    tracing::warn!(%error, "kafka: pausing new partitions failed");
                }
            }
            self.stream.wake();
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "kafka: committing offsets failed; retrying");
            let mut state = lock(&self.stream.state);
            for element in offsets.elements_for_topic(&self.stream.broker.events_topic) {
                if let Some(part) = state.parts.get_mut(&element.partition()) {
                    part.changed = true;
                }
            }
        }
    }
}

impl Context {
    /// The inbound topic's partitions in a rebalance's list.
    pub(super) fn events_partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.stream.broker.events_topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// Waits until the deliveries of `partitions` are settled, the stream stops, or the
    /// revoke timeout passes.
    pub(super) fn wait_settled(&self, partitions: &[i32]) {
        let timeout = Duration::from_millis(self.stream.broker.settings.revoke_timeout_ms);
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.stream.state);
        loop {
            let unsettled = partitions.iter().any(|p| {
                state
                    .parts
                    .get(p)
                    .is_some_and(|part| !part.delivered.is_empty())
            });
            let now = Instant::now();
            if !unsettled || self.stream.should_stop() || now >= deadline {
                if unsettled && now >= deadline {
                    tracing::warn!(
                        ?partitions,
                        "kafka: revoked partitions still have unsettled deliveries after \
                         {timeout:?}; they will be delivered again by their new owner"
                    );
                }
                return;
            }
            let slice = (deadline - now).min(POLL);
            state = self
                .stream
                .settled
                .wait_timeout(state, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Drops `partitions`: commits their acked offsets (if `commit`) and records the counters
    /// of their unsettled deliveries.
    pub(super) fn give_up(&self, consumer: &BaseConsumer<Self>, partitions: &[i32], commit: bool) {
        let mut list = TopicPartitionList::new();
        let mut counters = Vec::new();
        {
            let mut state = lock(&self.stream.state);
            for partition in partitions {
                let Some(part) = state.parts.remove(partition) else {
                    continue;
                };
                let mut part = part;
                state.buffered -= part.pending.len();
                if part.changed {
                    add_commit(
                        &mut list,
                        &self.stream.broker.events_topic,
                        *partition,
                        &mut part,
                    );
                }
                // The position and the offsets acked above it, for the next owner: brokers need
                // not return commit metadata, and the commit below can fail (a rebalance under
                // way), which would otherwise make the next owner deliver acked records again.
                if let Some((position, acked)) = part.commit_entry() {
                    counters.push((
                        *partition,
                        self.stream.acked_key(*partition),
                        format!("{position}:{acked}"),
                    ));
                }
                // Records delivered and not acked (in hand, or released back to the buffer)
                // whose counter is not written yet.
                for (offset, n) in &part.attempts {
                    if !part.durable.contains(offset) {
                        counters.push((
                            *partition,
                            self.stream.attempts_key(*partition, *offset),
                            n.to_string(),
                        ));
                    }
                }
            }
        }
        self.stream.wake();
        if commit
            && list.count() > 0
            && let Err(error) = consumer.commit(&list, CommitMode::Sync)
        {
            tracing::warn!(%error, "kafka: committing revoked partitions failed");
        }
        self.record_counters(&counters);
    }

    /// Writes delivery counters (partition, key, value) and waits for them (bounded by the
    /// message timeout).
    pub(super) fn record_counters(&self, counters: &[(i32, String, String)]) {
        if counters.is_empty() {
            return;
        }
        let mut writes = Vec::new();
        for (partition, key, value) in counters {
            match self.stream.write_state(*partition, key, Some(value)) {
                Ok(write) => writes.push(write),
                Err(error) => tracing::warn!(%error, "kafka: recording a delivery counter failed"),
            }
        }
        let results = self
            .runtime
            .block_on(futures_util::future::join_all(writes));
        for result in results {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    tracing::warn!(%error, "kafka: recording a delivery counter failed");
                }
                Err(_) => tracing::warn!("kafka: recording a delivery counter was cancelled"),
            }
        }
    }

    /// The offsets acked above the committed positions of `partitions`, from the commit
    /// metadata.
    pub(super) fn committed_acks(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
    ) -> HashMap<i32, BTreeSet<i64>> {
        let topic = &self.stream.broker.events_topic;
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(topic, *partition);
        }
        let committed = match consumer.committed_offsets(list, LOAD_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "kafka: reading committed offsets failed; acked records \
                    above them may be delivered again");
                return HashMap::new();
            }
        };
        committed
            .elements_for_topic(topic)
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(position) => Some((
                    element.partition(),
                    decode_acked(position, element.metadata()),
                )),
                _ => None,
            })
            .collect()
    }
}

pub(super) fn consumer_config(broker: &KafkaClient, group: &str) -> ClientConfig {
    let settings = &broker.settings;
    let mut config = super::super::base_config(settings);
    config
        .set("group.id", settings.group_id(group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.session_timeout_ms / 10).max(100).to_string(),
        )
        .set(
            "max.poll.interval.ms",
            (settings.revoke_timeout_ms + 300_000).to_string(),
        )
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
        .set("enable.partition.eof", "false");
    config
}
