//! The `broker-publish` scenario: durable publishes straight into a broker through Roomcast's
//! broker client ([`roomcast_broker::EventPublisher`]), with no gateway in between. It measures
//! what the broker itself sustains (RabbitMQ with publisher confirms, Kafka with `acks=all`,
//! the embedded log's group commit), the reference for the `ingest` scenario's acked publishes
//! per second on the same broker.

use crate::error::ScenarioError;
use crate::stats::{LatencySummary, ShardedHistogram};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Settings of the scenario.
#[derive(Debug, Clone)]
pub struct DirectParams {
    /// Broker URL (`amqp://…`, `kafka://…`, `embedded:<dir>`).
    pub broker_url: String,
    /// Publishes in flight at once (each task awaits its confirm before the next).
    pub inflight: usize,
    /// Keys (rooms) the publishes are spread over.
    pub keys: usize,
    /// Measured part.
    pub duration: Duration,
    /// Published before measuring.
    pub warmup: Duration,
    /// Payload size in bytes.
    pub payload_bytes: usize,
}

/// What one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DirectResult {
    /// Publishes confirmed during the measured window.
    pub acked: u64,
    /// Publishes that failed during the whole run.
    pub errors: u64,
    /// Measured seconds.
    pub window_secs: f64,
    /// Confirmed publishes per second.
    pub acks_per_sec: f64,
    /// Publish → confirm latency of measured publishes.
    pub ack_latency: LatencySummary,
}

/// Runs the scenario once.
pub async fn run(params: &DirectParams) -> Result<DirectResult, ScenarioError> {
    let broker = roomcast_broker::connect(&params.broker_url)
        .await
        .map_err(|e| ScenarioError::Failed(format!("connecting to the broker: {e}")))?;
    let payload =
        Bytes::from(serde_json::json!({ "data": "x".repeat(params.payload_bytes) }).to_string());
    let tag = crate::client::random_tag();
    let keys: Arc<[String]> = (0..params.keys.max(1))
        .map(|i| format!("bench-{tag}-{i}"))
        .collect();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(ShardedHistogram::new(params.inflight.clamp(1, 64)));
    let mut tasks = Vec::new();
    for task in 0..params.inflight.max(1) {
        let (broker, payload, keys) = (broker.clone(), payload.clone(), keys.clone());
        let (measuring, stop, acked, errors, latency) = (
            measuring.clone(),
            stop.clone(),
            acked.clone(),
            errors.clone(),
            latency.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = task;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[n % keys.len()];
                n += 1;
                let start = Instant::now();
                match broker.publish(key, payload.clone()).await {
                    Ok(()) => {
                        if measuring.load(Ordering::Relaxed) {
                            acked.fetch_add(1, Ordering::Relaxed);
                            let micros = start.elapsed().as_micros();
                            latency.record(task, u64::try_from(micros).unwrap_or(u64::MAX));
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(params.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(params.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let window_secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    broker.close().await;
    let acked = acked.load(Ordering::Relaxed);
    Ok(DirectResult {
        acked,
        errors: errors.load(Ordering::Relaxed),
        window_secs,
        acks_per_sec: acked as f64 / window_secs.max(1e-9),
        ack_latency: LatencySummary::of(&latency.merged()),
    })
}
