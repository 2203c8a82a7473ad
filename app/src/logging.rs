//! The one tracing setup of every binary.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Logs to stderr, so that stdout carries only what scripts read (`listening on …`, tokens,
/// replay counts); `RUST_LOG` filters (default `info`). Colours only on a terminal: logs
/// redirected to a file stay plain text.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
