//! The Roomcast gateway.
//!
//! # Layout
//! - [`auth`]: JWT verification at the handshake (pinned algorithm) and token minting.
//! - [`limits`]: governor rate limits per connection, per user and per client IP.
//! - [`cli`]: the binaries' command-line options and their conversion into a config.
//! - [`config`]: [`GatewayConfig`], every setting with its default and validation.
//! - [`server`]: the routes (`/ws`, `/healthz`, `/readyz`, `/`, `/dev/token`), the handshake,
//!   and [`serve`] with graceful shutdown.
//! - `session`: one WebSocket connection (reader, writer, per-room delivery state).
//! - `rooms`: the sharded room registry and the fan-out subscriptions that follow it.
//! - `fanout`: the task that hands each fan-out message to the room's local members.
//! - [`app`]: whole processes: the all-in-one app and a gateway-only process.
//! - [`error`]: [`GatewayError`], why a gateway could not start.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
mod fanout;
pub mod limits;
mod rooms;
pub mod server;
mod session;

pub use app::{AppError, AppOptions, EmbeddedApp, run_embedded, run_gateway};
pub use config::GatewayConfig;
pub use error::GatewayError;
pub use server::{Gateway, serve};
pub use session::{
    CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG,
    SLOW_CONSUMER_REASON,
};
