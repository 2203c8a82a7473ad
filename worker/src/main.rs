//! `roomcast-worker`: a standalone worker for a networked broker.
//!
//! ```text
//! roomcast-worker --broker-url amqp://… --store-url postgres://…
//! ```
//!
//! The embedded broker's fan-out lives in memory inside the all-in-one `roomcast` process, so
//! it cannot be shared with a separate worker process: with an `embedded:` URL this binary
//! exits with an error.

use anyhow::{Context, bail};
use clap::Parser;
use roomcast_broker::redact_url;
use roomcast_worker::{Store, Worker, WorkerConfig};
use std::io::IsTerminal;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Consumes Roomcast's inbound stream: stores events with per-room sequence numbers,
/// publishes fan-out messages, dead-letters poison events.
#[derive(Debug, Parser)]
#[command(name = "roomcast-worker", version, about)]
struct Args {
    /// Broker URL (amqp://…, kafka://…).
    #[arg(long, env = "ROOMCAST_BROKER_URL", hide_env_values = true)]
    broker_url: String,
    /// Message store URL (postgres://… or sqlite://path).
    #[arg(long, env = "ROOMCAST_STORE_URL", hide_env_values = true)]
    store_url: String,
    /// Consumer group; the workers of one group share the stream.
    #[arg(
        long,
        env = "ROOMCAST_WORKER_GROUP",
        default_value = "roomcast-workers"
    )]
    group: String,
    /// Most events handled (and stored in one transaction) per batch.
    #[arg(long, env = "ROOMCAST_WORKER_BATCH_MAX", default_value_t = 256)]
    batch_max: usize,
    /// Processing attempts per event before it is dead-lettered.
    #[arg(long, env = "ROOMCAST_WORKER_MAX_ATTEMPTS", default_value_t = 5)]
    max_attempts: u32,
    /// First retry backoff in milliseconds (doubles per failure).
    #[arg(long, env = "ROOMCAST_WORKER_RETRY_INITIAL_MS", default_value_t = 100)]
    retry_initial_ms: u64,
    /// Longest retry backoff in milliseconds.
    #[arg(long, env = "ROOMCAST_WORKER_RETRY_MAX_MS", default_value_t = 30_000)]
    retry_max_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let args = Args::parse();
    let broker_url = redacted(&args.broker_url);
    let store_url = redacted(&args.store_url);
    tracing::info!(broker = %broker_url, store = %store_url, "roomcast-worker starting");

    if args
        .broker_url
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("embedded:")
    {
        bail!(
            "the embedded broker ({broker_url}) runs inside the all-in-one `roomcast` process \
             only (its fan-out is in memory); run `roomcast`, which includes the worker, or \
             point --broker-url at a networked broker (amqp://…, kafka://…)"
        );
    }
    let config = WorkerConfig {
        group: args.group,
        batch_max: args.batch_max,
        max_attempts: args.max_attempts,
        retry_initial: Duration::from_millis(args.retry_initial_ms),
        retry_max: Duration::from_millis(args.retry_max_ms),
    };
    let broker = roomcast_broker::connect(&args.broker_url)
        .await
        .with_context(|| format!("cannot open the broker at {broker_url}"))?;
    let store = Store::connect(&args.store_url)
        .await
        .with_context(|| format!("cannot open the store at {store_url}"))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = Worker::new(broker.clone(), store.clone(), config)
        .run(shutdown)
        .await;
    broker.close().await;
    store.close().await;
    result.context("the worker failed")
}

/// `url` for logs: without its password, nor its query (which may carry one).
fn redacted(url: &str) -> String {
    let url = redact_url(url);
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url,
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the worker");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested; finishing the current batch");
    shutdown.cancel();
}
