//! `roomcast-worker`: a standalone worker for a networked broker (see
//! [`roomcast::cli::worker`]).

use anyhow::Context;
use clap::Parser;
use roomcast::cli::worker::WorkerCli;

fn main() -> anyhow::Result<()> {
    let cli = WorkerCli::parse();
    roomcast::logging::init();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(cli.run())
}
