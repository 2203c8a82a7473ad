//! The Roomcast worker.
//!
//! # Layout
//! - [`handler`]: what happens to each event kind; by default every event is stored and
//!   fanned out to its room.
//! - [`worker`]: the consume → store → fan-out → ack loop, with retries and dead letters.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use roomcast_broker::WorkerLink;
//! use roomcast_store::Store;
//! use roomcast_worker::{Worker, WorkerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let broker = roomcast_broker::EmbeddedBroker::open("data/broker".as_ref()).await?;
//! let store = Store::connect("sqlite://data/store.db").await?;
//! let shutdown = CancellationToken::new();
//! let link = WorkerLink::from_broker(broker);
//! Worker::new(link, store, WorkerConfig::default()).run(shutdown).await?;
//! # Ok(())
//! # }
//! ```

pub mod handler;
pub mod replay;
pub mod worker;

pub use handler::{Disposition, EventHandler, HandlerError, Handlers};
pub use worker::{Worker, WorkerConfig, WorkerCounters, WorkerError};
