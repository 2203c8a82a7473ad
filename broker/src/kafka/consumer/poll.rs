//! The stream's thread: polls the consumer, buffers records, commits, stops.

use super::offsets::commit_progress;
use super::*;

/// The stream's thread: polls the consumer, buffers records, commits, stops.
pub(super) fn run(
    consumer: BaseConsumer<Context>,
    shared: Arc<StreamShared>,
    token: TaskTrackerToken,
) {
    let topic = shared.broker.events_topic.clone();
    let mut paused = false;
    let mut last_commit = Instant::now();
    while !shared.should_stop() {
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                let partition = message.partition();
                let offset = message.offset();
                let key: Arc<str> = match message.key() {
                    Some(key) => Arc::from(String::from_utf8_lossy(key).as_ref()),
                    None => Arc::from(""),
                };
                let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
                let payloads: Arc<[Bytes]> = super::super::unpack(&key, payload).into();
                drop(message);
                let mut state = lock(&shared.state);
                let Some(part) = state.parts.get_mut(&partition) else {
                    continue;
                };
                if part.next_fetch.is_some_and(|next| offset < next) {
                    continue;
                }
                if part.skip.remove(&offset) || offset < part.skip_below {
                    // Acked by the previous owner: stays acked.
                    part.next_fetch = Some(offset + 1);
                    part.acked.insert(offset);
                    continue;
                }
                let resume = std::mem::take(&mut part.resume);
                part.next_fetch = Some(offset + 1);
                part.unacked.insert(offset);
                part.pending.push_back(Record {
                    offset,
                    key,
                    payloads,
                    resume,
                });
                state.buffered += 1;
                drop(state);
                shared.ready.notify_waiters();
            }
            Some(Err(error)) => {
                let fatal = matches!(
                    error.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::Fatal
                            | RDKafkaErrorCode::GroupAuthorizationFailed
                            | RDKafkaErrorCode::TopicAuthorizationFailed
                    )
                );
                if fatal {
                    lock(&shared.state).failure = Some(format!("kafka consumer: {error}"));
                    shared.wake();
                } else {
                    tracing::debug!(%error, "kafka consumer error");
                }
            }
            None => {}
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            commit_progress(&consumer, &shared, &topic, CommitMode::Async);
            last_commit = Instant::now();
        }
        paused = flow_control(&consumer, &shared, paused);
    }
    // Stop: commit what is acked, record the counters of unsettled deliveries, leave.
    let partitions: Vec<i32> = lock(&shared.state).parts.keys().copied().collect();
    let lost = consumer.assignment_lost();
    consumer.context().give_up(&consumer, &partitions, !lost);
    {
        let mut state = lock(&shared.state);
        state.stopped = true;
        state.parts.clear();
        state.buffered = 0;
    }
    shared.wake();
    drop(consumer);
    shared.left.cancel();
    drop(token);
}

/// Pauses fetching while many records are buffered; returns whether it is paused.
pub(super) fn flow_control(
    consumer: &BaseConsumer<Context>,
    shared: &StreamShared,
    paused: bool,
) -> bool {
    let buffered = lock(&shared.state).buffered;
    let want_paused = if paused {
        buffered > BUFFER_LOW
    } else {
        buffered >= BUFFER_HIGH
    };
    if want_paused == paused {
        return paused;
    }
    let Ok(assignment) = consumer.assignment() else {
        return paused;
    };
    let result = if want_paused {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => want_paused,
        Err(error) => {
            tracing::warn!(%error, "kafka: pausing or resuming fetching failed");
            paused
        }
    }
}
