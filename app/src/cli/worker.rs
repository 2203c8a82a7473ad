//! The command line of `roomcast-worker`, a standalone worker for a networked broker.
//!
//! ```text
//! roomcast-worker --broker-url amqp://… --store-url postgres://…
//! roomcast-worker replay --broker-url kafka://… --store-url postgres://… [--from …]
//! ```
//!
//! Without a subcommand (or with `run`) it runs the worker. `replay` re-processes the Kafka
//! inbound topic's history into a store (backfill, disaster recovery; see
//! [`roomcast_worker::replay`]) and exits.
//!
//! The embedded broker's fan-out lives in memory inside the all-in-one `roomcast` process, so
//! it cannot be shared with a separate worker process: with an `embedded:` URL this binary
//! exits with an error.

use crate::signal::cancel_on_signals;
use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use roomcast_broker::{WorkerLink, redact_url};
use roomcast_store::Store;
use roomcast_worker::replay::{ReplayOptions, ReplayStart};
use roomcast_worker::{Worker, WorkerConfig};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `roomcast-worker`: consumes Roomcast's inbound stream: stores events with per-room sequence numbers,
/// publishes fan-out messages, dead-letters poison events.
#[derive(Debug, Parser)]
#[command(
    name = "roomcast-worker",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct WorkerCli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Option<Args>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the worker (the default when no subcommand is given).
    Run(Args),
    /// Re-processes the Kafka inbound topic's history into a store, idempotently, then
    /// exits: backfill and disaster recovery.
    Replay(ReplayArgs),
}

/// The worker's options.
#[derive(Debug, clap::Args)]
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
    /// Most messages of one room published as one fan-out record (a JSON array in seq order);
    /// 1 publishes one message per record.
    #[arg(long, env = "ROOMCAST_WORKER_FANOUT_BATCH", default_value_t = 64)]
    fanout_batch: usize,
}

/// The options of `replay`.
#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Kafka broker URL (kafka://…, with the live cluster's prefix); other backends keep no
    /// history to replay.
    #[arg(long, env = "ROOMCAST_BROKER_URL", hide_env_values = true)]
    broker_url: String,
    /// Store to replay into (postgres://… or sqlite://path), e.g. a new, empty database.
    #[arg(long)]
    store_url: String,
    /// Where to start: `beginning`, `offset:N` (every partition), `offset:P=N,P=N…` (only
    /// those partitions), or `timestamp:T` (RFC 3339 date-time or Unix milliseconds).
    #[arg(long, default_value = "beginning", value_parser = parse_start)]
    from: ReplayStart,
    /// Most events stored per transaction.
    #[arg(long, default_value_t = 500)]
    batch_max: usize,
    /// Publish a fan-out message for each event the replay stores as new (off: gateways are
    /// not sent the replayed history).
    #[arg(long)]
    fanout: bool,
    /// Dead-letter the records skipped as invalid (off: they are counted and skipped; the
    /// live workers dead-lettered them already).
    #[arg(long)]
    dead_letter: bool,
    /// Attempts of a failing store append before the replay stops.
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
}

fn parse_start(text: &str) -> Result<ReplayStart, String> {
    text.parse().map_err(|error| format!("{error}"))
}

impl WorkerCli {
    /// Runs the command line's command: the worker (until SIGINT or SIGTERM) or a replay.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            None => match self.run {
                Some(args) => run(args).await,
                None => WorkerCli::command()
                    .error(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        "--broker-url and --store-url are required",
                    )
                    .exit(),
            },
            Some(Command::Run(args)) => run(args).await,
            Some(Command::Replay(args)) => replay(args).await,
        }
    }
}

/// Runs the worker until SIGINT or SIGTERM.
async fn run(args: Args) -> anyhow::Result<()> {
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
        fanout_batch: args.fanout_batch,
    };
    let broker = roomcast_broker::connect(&args.broker_url)
        .await
        .with_context(|| format!("cannot open the broker at {broker_url}"))?;
    let store = Store::connect(&args.store_url)
        .await
        .with_context(|| format!("cannot open the store at {store_url}"))?;

    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let result = Worker::new(
        WorkerLink::from_broker(broker.clone()),
        store.clone(),
        config,
    )
    .run(shutdown)
    .await;
    broker.close().await;
    store.close().await;
    result.context("the worker failed")
}

/// Replays the Kafka inbound topic into a store, prints the counts, and exits.
async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let broker_url = redacted(&args.broker_url);
    let store_url = redacted(&args.store_url);
    tracing::info!(broker = %broker_url, store = %store_url, from = %args.from, "roomcast-worker replay starting");
    let options = ReplayOptions {
        start: args.from,
        batch_max: args.batch_max,
        fanout: args.fanout,
        dead_letter: args.dead_letter,
        max_attempts: args.max_attempts,
        ..ReplayOptions::default()
    };
    let store = Store::connect(&args.store_url)
        .await
        .with_context(|| format!("cannot open the store at {store_url}"))?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let result =
        roomcast_worker::replay::replay(&args.broker_url, &store, &options, &shutdown).await;
    store.close().await;
    let report = result.context("the replay failed")?;
    println!(
        "read {} stored {} duplicates {} skipped {} dropped {} dead-lettered {} fanned-out {}",
        report.read,
        report.stored,
        report.duplicates,
        report.skipped,
        report.dropped,
        report.dead_lettered,
        report.fanned_out
    );
    if !report.complete {
        bail!(
            "the replay was interrupted before it reached the end of the topic; rerun it (it only stores what is missing)"
        );
    }
    Ok(())
}

/// `url` for logs: without its password, nor its query (which may carry one).
fn redacted(url: &str) -> String {
    let url = redact_url(url);
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url,
    }
}
