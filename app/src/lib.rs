//! Roomcast's processes.
//!
//! # Layout
//! - [`cli`]: the binaries' command-line options and their conversion into configs.
//! - [`embedded`]: whole processes: the all-in-one app (embedded broker, store, worker and
//!   gateway) and a gateway-only process.
//! - [`signal`]: the shutdown signal of every binary (SIGINT or SIGTERM).
//! - [`logging`]: the tracing setup of every binary.
//!
//! The binaries: `roomcast` (`src/main.rs`), `roomcast-gateway` and `roomcast-worker`
//! (`src/bin/`).

pub mod cli;
pub mod embedded;
pub mod logging;
pub mod signal;

pub use embedded::{AppError, AppOptions, EmbeddedApp, run_embedded, run_gateway};
