//! `roomcast-gateway`: a gateway-only process against a networked broker, for deployments that
//! run gateways and workers (`roomcast-worker`) as separate processes.
//!
//! The embedded broker keeps its fan-out inside one process, so it is served by the
//! all-in-one `roomcast` binary instead; this binary refuses `embedded:` URLs.

use anyhow::{Context, Result, bail};
use clap::Parser;
use roomcast::cli::gateway::GatewayArgs;
use roomcast::signal::cancel_on_signals;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "roomcast-gateway",
    version,
    about = "Roomcast gateway (workers run separately)"
)]
struct Cli {
    /// Broker URL (`amqp://…`, `kafka://…`).
    #[arg(long, env = "ROOMCAST_BROKER_URL")]
    broker_url: String,
    /// Message store the gateway reads history from (`postgres://…`, `sqlite://…`).
    #[arg(long, env = "ROOMCAST_STORE_URL")]
    store_url: String,
    #[command(flatten)]
    gateway: GatewayArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.broker_url.starts_with("embedded:") {
        bail!(
            "the embedded broker runs inside one process: use `roomcast serve` (or `roomcast dev`), \
             or give a networked broker URL"
        );
    }
    let config = cli.gateway.to_config(None, false)?;
    let listen = cli
        .gateway
        .listen_or(SocketAddr::from(([0, 0, 0, 0], 3000)));
    roomcast::logging::init();
    let descriptors = roomcast_gateway::raise_descriptor_limit();
    tracing::debug!(?descriptors, "open-file limit");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        tracing::info!(broker = %roomcast_broker::redact_url(&cli.broker_url), "starting roomcast-gateway");
        let broker = roomcast_broker::connect(&cli.broker_url).await.context("connecting to the broker")?;
        let store = roomcast_store::Store::connect(&cli.store_url).await.context("opening the store")?;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        println!("listening on http://{addr}");
        let shutdown = CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        roomcast::run_gateway(config, broker, store, listener, shutdown).await.context("serving")?;
        Ok(())
    })
}
