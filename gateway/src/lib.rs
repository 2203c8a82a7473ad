//! The Roomcast gateway.
//!
//! # Layout
//! - [`auth`]: JWT verification at the handshake (pinned algorithm) and token minting.
//! - [`limits`]: governor rate limits per connection, per user and per client IP.
//! - [`config`]: [`GatewayConfig`], every setting with its default and validation.
//! - [`server`]: the routes (`/ws`, `/healthz`, `/readyz`, `/`, `/dev/token`) and the handshake.
//! - `listen`: [`serve`], the accept loop with hyper's timeouts and graceful shutdown.
//! - `connections`: the places of accepted connections and the caps on sessions.
//! - `session`: the session core, one connection whatever its front door: frames, joins,
//!   pipelined publishes, delivery without gap or duplicate, limits and timers.
//! - `ws`: the WebSocket front door, a transport for the session core.
//! - `outbound`: what fan-out hands to a connection (the member handle and its queue items).
//! - `replay`: the bounds that keep history replays fair to live traffic.
//! - `rooms`: the sharded room registry and the fan-out subscriptions that follow it.
//! - `fanout`: the task that hands each fan-out message to the room's local members.
//! - [`error`]: [`GatewayError`], why a gateway could not start.

pub mod auth;
pub mod config;
mod connections;
pub mod error;
mod fanout;
pub mod limits;
mod listen;
mod outbound;
mod replay;
mod rooms;
pub mod server;
mod session;
mod ws;

pub use config::GatewayConfig;
pub use error::GatewayError;
pub use listen::{raise_descriptor_limit, serve};
pub use server::Gateway;

/// Close code when the gateway shuts down.
pub const CLOSE_GOING_AWAY: u16 = session::Close::GOING_AWAY.code;
/// Close code for a WebSocket protocol violation (bad opcode, reserved bits, …).
pub const CLOSE_PROTOCOL: u16 = session::Close::PROTOCOL.code;
/// Close code for a text frame that is not valid UTF-8.
pub const CLOSE_INVALID_DATA: u16 = session::Close::INVALID_DATA.code;
/// Close code for an idle connection.
pub const CLOSE_POLICY: u16 = session::Close::IDLE.code;
/// Close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = session::Close::TOO_BIG.code;
/// Close code when messages cannot be delivered without a gap (store unavailable).
pub const CLOSE_INTERNAL: u16 = session::Close::INTERNAL.code;
/// Close code for a token that expired without a `refresh`: reconnect with a new token.
pub const CLOSE_TOKEN_EXPIRED: u16 = session::Close::TOKEN_EXPIRED.code;
/// Close code for a client that does not read fast enough.
pub const CLOSE_SLOW_CONSUMER: u16 = session::Close::SLOW_CONSUMER.code;
/// Close reason sent with [`CLOSE_SLOW_CONSUMER`].
pub const SLOW_CONSUMER_REASON: &str = session::Close::SLOW_CONSUMER.reason;
