//! Roomcast load generator.
//!
//! Drives many WebSocket connections from one process against three servers, on the same
//! machine and in the same run:
//!
//! - **roomcast**: the gateway (`roomcast serve`, embedded broker; networked brokers later),
//!   with HS256 tokens minted here;
//! - **bare**: [`bare`], a minimal tokio-tungstenite broadcast server speaking the same frames,
//!   with no authentication, broker or storage: the practical limit of the machine;
//! - **socketio**: a minimal Socket.IO v4 server on Node (`bench/socketio/server.js`), spoken to
//!   in Engine.IO v4 / Socket.IO v5 framing over its WebSocket transport.
//!
//! Scenarios: [`fanout`] (one publisher, many subscribers: deliveries per second and per server
//! CPU-second, publish→receive latency, lost and duplicated messages), [`connections`] (idle
//! authenticated connections: handshakes per second, server memory per connection) and
//! [`ingest`] (publishers at full speed: acknowledged publishes per second, ack latency) and
//! [`storm`] (a crowd of history replays: another user's publish and join latency, quiet and
//! under the storm).
//! Server CPU time and memory come from `/proc` ([`procfs`]). [`suite`] runs a scenario against
//! several targets several times and writes a [`report::Report`] (JSON); [`svg`] draws it.

pub mod bare;
pub mod client;
pub mod connections;
pub mod direct;
pub mod error;
pub mod fanout;
pub mod ingest;
pub mod member;
pub mod procfs;
pub mod progress;
pub mod protocol;
pub mod report;
pub mod server;
pub mod stats;
pub mod storm;
pub mod suite;
pub mod svg;

pub use error::ScenarioError;
pub use protocol::Target;
