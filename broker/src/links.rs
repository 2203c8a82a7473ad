//! What each side of the broker uses: a gateway publishes inbound events and reads fan-out, a
//! worker consumes inbound events and publishes fan-out and dead letters. Each link holds
//! only its side's parts of one [`Broker`], so a component's signature says what it touches
//! and a test can hand it doubles of just those parts.

use crate::{
    Broker, BrokerError, DeadLetterSink, EventConsumer, EventPublisher, FanoutPublisher,
    FanoutSource, Health,
};
use async_trait::async_trait;
use std::sync::Arc;

/// A broker's [`Broker::health`] as a [`Health`].
struct BrokerHealth(Arc<dyn Broker>);

#[async_trait]
impl Health for BrokerHealth {
    fn backend(&self) -> &'static str {
        self.0.name()
    }

    async fn check(&self) -> Result<(), BrokerError> {
        self.0.health().await
    }
}

/// The gateway's side of the broker: publishing inbound events, reading fan-out, health.
#[derive(Clone)]
pub struct GatewayLink {
    /// Publishes the events clients send (acked to the client once durable).
    pub publisher: Arc<dyn EventPublisher>,
    /// Opens the fan-out subscription that delivers room messages to local members.
    pub fanout: Arc<dyn FanoutSource>,
    /// Answers `/readyz`.
    pub health: Arc<dyn Health>,
    /// The whole broker, kept only to [`close`](Self::close) it.
    broker: Arc<dyn Broker>,
}

impl GatewayLink {
    /// The gateway's parts of `broker`.
    pub fn from_broker(broker: Arc<dyn Broker>) -> Self {
        GatewayLink {
            publisher: broker.clone(),
            fanout: broker.clone(),
            health: Arc::new(BrokerHealth(broker.clone())),
            broker,
        }
    }

    /// Shuts the broker down gracefully (see [`Broker::close`]).
    pub async fn close(&self) {
        self.broker.close().await;
    }
}

impl std::fmt::Debug for GatewayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayLink")
            .field("backend", &self.health.backend())
            .finish_non_exhaustive()
    }
}

/// The worker's side of the broker: consuming inbound events, publishing fan-out and dead
/// letters, health.
#[derive(Clone)]
pub struct WorkerLink {
    /// Joins the worker's consumer group on the inbound stream.
    pub consumer: Arc<dyn EventConsumer>,
    /// Publishes the fan-out messages of the stored events.
    pub fanout: Arc<dyn FanoutPublisher>,
    /// Takes the events that cannot be processed, with the reason.
    pub dead_letters: Arc<dyn DeadLetterSink>,
    /// Answers the worker's readiness check.
    pub health: Arc<dyn Health>,
    /// The whole broker, kept only to [`close`](Self::close) it.
    broker: Arc<dyn Broker>,
}

impl WorkerLink {
    /// The worker's parts of `broker`.
    pub fn from_broker(broker: Arc<dyn Broker>) -> Self {
        WorkerLink {
            consumer: broker.clone(),
            fanout: broker.clone(),
            dead_letters: broker.clone(),
            health: Arc::new(BrokerHealth(broker.clone())),
            broker,
        }
    }

    /// Shuts the broker down gracefully (see [`Broker::close`]).
    pub async fn close(&self) {
        self.broker.close().await;
    }
}

impl std::fmt::Debug for WorkerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLink")
            .field("backend", &self.health.backend())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{GatewayLink, WorkerLink};
    use crate::{Broker, BrokerError, EmbeddedBroker, FanoutEvent};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_links_carry_one_broker_from_gateway_to_worker_and_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker: Arc<dyn Broker> = EmbeddedBroker::open(dir.path()).await.expect("open");
        let gateway = GatewayLink::from_broker(broker.clone());
        let worker = WorkerLink::from_broker(broker);
        assert_eq!(gateway.health.backend(), "embedded");
        gateway.health.check().await.expect("healthy");
        worker.health.check().await.expect("healthy");

        let subscription = gateway.fanout.open().await.expect("subscribe");
        subscription.subscribe("lobby").await.expect("subscribe");
        gateway
            .publisher
            .publish("lobby", Bytes::from_static(b"{}"))
            .await
            .expect("publish");
        let mut stream = worker.consumer.consume("workers").await.expect("consume");
        let mut batch = tokio::time::timeout(Duration::from_secs(10), stream.next_batch(10))
            .await
            .expect("a delivery in time")
            .expect("next_batch");
        let delivery = batch.remove(0);
        assert_eq!(delivery.key, "lobby");
        worker
            .fanout
            .publish_fanout("lobby", Bytes::from_static(b"m"))
            .await
            .expect("fan-out");
        worker
            .dead_letters
            .dead_letter("lobby", Bytes::from_static(b"{}"))
            .await
            .expect("dead letter");
        delivery.ack().await.expect("ack");
        match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
            Ok(Ok(FanoutEvent::Message { room, payload })) => {
                assert_eq!((&*room, &payload[..]), ("lobby", &b"m"[..]));
            }
            other => panic!("expected the fan-out message, got {other:?}"),
        }
        drop(stream);
        gateway.close().await;
        assert!(matches!(
            worker.consumer.consume("workers").await,
            Err(BrokerError::Closed)
        ));
        worker.close().await;
    }
}
