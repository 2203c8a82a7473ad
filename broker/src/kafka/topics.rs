//! The backend's topics: created when missing, and their partition counts.

use super::METADATA_TIMEOUT;
use super::base_config;
use super::config::KafkaConfig;
use crate::BrokerError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};
use std::time::Duration;

/// Creates the missing topics; existing ones are left as they are.
pub(super) async fn create_topics(settings: &KafkaConfig) -> Result<(), BrokerError> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings)
        .create()
        .map_err(|e| BrokerError::Config(format!("kafka admin client: {e}")))?;
    let retention_ms = settings.retention_ms.to_string();
    let retention_bytes = settings.retention_bytes.to_string();
    let fanout_retention_ms = settings.fanout_retention_ms.to_string();
    let (events, fanout, dead_letters, attempts) = (
        settings.events_topic(),
        settings.fanout_topic(),
        settings.dead_letter_topic(),
        settings.attempts_topic(),
    );
    let replication = || TopicReplication::Fixed(settings.replication);
    let topics = [
        NewTopic::new(&events, settings.partitions, replication())
            .set("retention.ms", &retention_ms)
            .set("retention.bytes", &retention_bytes),
        NewTopic::new(&fanout, settings.partitions, replication())
            .set("retention.ms", &fanout_retention_ms),
        NewTopic::new(&dead_letters, settings.partitions, replication()).set("retention.ms", "-1"),
        NewTopic::new(&attempts, settings.partitions, replication())
            .set("cleanup.policy", "compact"),
    ];
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = tokio::time::timeout(
        METADATA_TIMEOUT * 2,
        admin.create_topics(topics.iter(), &options),
    )
    .await
    .map_err(|_| BrokerError::Unavailable("kafka: creating topics timed out".into()))?
    .map_err(|e| BrokerError::Unavailable(format!("kafka: creating topics: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BrokerError::Unavailable(format!(
                    "kafka: creating topic {topic}: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// The number of partitions of `topic`, waiting briefly for a topic just created.
pub(super) async fn partition_count(
    producer: &FutureProducer,
    topic: &str,
    settings: &KafkaConfig,
) -> Result<i32, BrokerError> {
    let deadline = tokio::time::Instant::now() + METADATA_TIMEOUT * 2;
    loop {
        let client = producer.clone();
        let name = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let metadata = client
                .client()
                .fetch_metadata(Some(&name), METADATA_TIMEOUT)
                .map_err(|e| BrokerError::Unavailable(format!("kafka metadata: {e}")))?;
            Ok::<_, BrokerError>(
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == name && t.error().is_none())
                    .map(|t| t.partitions().len()),
            )
        })
        .await
        .map_err(|e| BrokerError::Unavailable(format!("kafka metadata task: {e}")))??;
        match found {
            Some(count) if count > 0 => {
                return i32::try_from(count).map_err(|_| {
                    BrokerError::Config(format!("topic {topic}: too many partitions"))
                });
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(if settings.create_topics {
                    BrokerError::Unavailable(format!("kafka topic {topic} is not available"))
                } else {
                    BrokerError::Config(format!(
                        "kafka topic {topic} does not exist and create_topics is false"
                    ))
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
