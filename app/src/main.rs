//! `roomcast`: the all-in-one binary.
//!
//! - `roomcast dev`: local development — gateway, worker and the embedded broker in one process
//!   on 127.0.0.1:3000, with `GET /dev/token` so that the chat page can sign in.
//! - `roomcast serve`: the same process for production: a JWT secret or public key is required
//!   and `GET /dev/token` does not exist.
//! - `roomcast token`: mints a token for scripts and curl.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use roomcast::EmbeddedApp;
use roomcast::cli::gateway::{DataArgs, GatewayArgs, TokenArgs, dev_secret};
use roomcast_gateway::GatewayConfig;
use std::io::Write;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "roomcast",
    version,
    about = "Real-time event gateway on a durable broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Local development: everything in one process, and `GET /dev/token` for the chat page.
    Dev {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Production, all in one process on the embedded broker (needs a JWT secret or key).
    Serve {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Mints a token, e.g. `roomcast token --sub alice --rooms 'lobby,team-*'`.
    Token(TokenArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(args) => {
            println!("{}", args.mint()?);
            Ok(())
        }
        Command::Dev { gateway, data } => {
            let generated = dev_secret();
            let config = gateway.to_config(Some(&generated), true)?;
            let listen = gateway.listen_or(SocketAddr::from(([127, 0, 0, 1], 3000)));
            run(config, listen, data, true)
        }
        Command::Serve { gateway, data } => {
            let config = gateway.to_config(None, false)?;
            let listen = gateway.listen_or(SocketAddr::from(([0, 0, 0, 0], 3000)));
            run(config, listen, data, false)
        }
    }
}

fn run(config: GatewayConfig, listen: SocketAddr, data: DataArgs, dev: bool) -> Result<()> {
    roomcast::logging::init();
    let descriptors = roomcast_gateway::raise_descriptor_limit();
    tracing::debug!(?descriptors, "open-file limit");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        tracing::info!(?config, data_dir = %data.data_dir.display(), "starting roomcast");
        let app = EmbeddedApp::open(config, &data.data_dir, data.store_url.as_deref())
            .await
            .context("opening the broker and the store")?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        announce(addr, dev);
        if dev && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "dev mode listens beyond loopback: anyone who reaches this address can connect; /dev/token still answers only requests for localhost, 127.0.0.1 or [::1]"
            );
        }
        let shutdown = CancellationToken::new();
        roomcast::signal::cancel_on_signals(shutdown.clone());
        app.serve(listener, shutdown).await.context("serving")?;
        Ok(())
    })
}

/// Prints where the server listens: `listening on http://ADDR` (scripts and tests read this
/// line), and in dev mode how to open the chat.
fn announce(addr: SocketAddr, dev: bool) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    if dev {
        let _ = writeln!(
            out,
            "chat: open http://localhost:{} in two browser tabs (dev mode: /dev/token is enabled)",
            addr.port()
        );
    }
    let _ = out.flush();
}
