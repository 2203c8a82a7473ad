//! The message store.
//!
//! # Layout
//! - this file: [`Store`], its errors and the result of an append.
//! - `plan`: the dialect-independent numbering of a batch (seqs, deduplication).
//! - `history`: the read side (last seq, history pages) and the `messages` row both dialects
//!   return.
//! - `sqlite` and `postgres`: each dialect's connection, schema (`sqlite.sql`,
//!   `postgres.sql`) and append transaction.
//! - [`testkit`] (feature `testkit`): a throwaway PostgreSQL database for tests.
//!
//! Two tables, the same in both dialects:
//! - `messages(room, seq, id, sender, event, ts, data)`: primary key `(room, seq)`, unique
//!   `(sender, id)` (the deduplication key); `data` is the payload's JSON text, kept byte for
//!   byte.
//! - `rooms(room, last_seq)`: the last seq handed out per room.
//!
//! [`Store::append`] runs one transaction per batch. It looks up which events are already
//! stored, locks the rooms that receive new messages, numbers the new events in batch order
//! and inserts them. Seqs stay gap-free and unique under concurrent appenders: SQLite takes
//! the write lock at `BEGIN IMMEDIATE`; PostgreSQL locks the `rooms` rows with
//! `INSERT … ON CONFLICT DO UPDATE`, in sorted room order so that two appenders never
//! deadlock. The numbering itself is dialect-independent (`plan`); the dialect
//! differences are the SQL text and how many statements a step takes, in `sqlite` and
//! `postgres`.
//!
//! ```no_run
//! # async fn run() -> Result<(), roomcast_store::StoreError> {
//! let store = roomcast_store::Store::connect("sqlite://data/store.db").await?;
//! let last = store.last_seq("lobby").await?;
//! let page = store.history("lobby", last.saturating_sub(10), 10).await?;
//! # Ok(())
//! # }
//! ```

mod history;
mod plan;
mod postgres;
mod sqlite;
#[cfg(feature = "testkit")]
pub mod testkit;

use postgres::PostgresBackend;
use roomcast_schemas::{FanoutMessage, InboundEvent};
use sqlite::SqliteBackend;
use std::time::Duration;
use thiserror::Error;

/// A store failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The store URL is not supported.
    #[error("invalid store URL: {0}")]
    Config(String),
}

/// Result of appending one event.
#[derive(Debug, Clone)]
pub enum Appended {
    /// The event was new and is now stored as this message.
    New(FanoutMessage),
    /// An event with the same `(from, id)` was stored before, as this message.
    Duplicate(FanoutMessage),
}

impl Appended {
    /// The stored message, new or not.
    pub fn message(&self) -> &FanoutMessage {
        match self {
            Appended::New(message) | Appended::Duplicate(message) => message,
        }
    }

    /// Whether the event was stored by this append.
    pub fn is_new(&self) -> bool {
        matches!(self, Appended::New(_))
    }
}

/// The message store: SQLite (`sqlite://path`) or PostgreSQL (`postgres://…`).
///
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool options could carry credentials: show the dialect only.
        f.debug_struct("Store")
            .field("dialect", &self.dialect())
            .finish_non_exhaustive()
    }
}

/// The dialect behind a [`Store`].
#[derive(Clone)]
enum Backend {
    Sqlite(SqliteBackend),
    Postgres(PostgresBackend),
}

/// Connections per store pool.
const MAX_CONNECTIONS: u32 = 8;
/// How long to wait for a pool connection before reporting the store unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one append when it races with another appender on the same `(from, id)`.
const APPEND_ATTEMPTS: u32 = 3;

impl Store {
    /// Connects to the store at `url` and creates its tables when missing.
    ///
    /// `sqlite://path` (or `sqlite:path`; `sqlite::memory:` for a private in-memory store)
    /// creates the file and its directory when missing and runs in WAL mode with
    /// `synchronous=FULL`, so a committed append survives a power loss. `postgres://…` (or
    /// `postgresql://…`) needs an existing database.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite(SqliteBackend::connect(url).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(PostgresBackend::connect(url).await?)
        } else {
            // The URL itself is not echoed: it may carry credentials.
            return Err(StoreError::Config(
                "unsupported scheme; expected sqlite://path or postgres://…".to_owned(),
            ));
        };
        match &backend {
            Backend::Sqlite(sqlite) => sqlite.create_schema().await?,
            Backend::Postgres(postgres) => postgres.create_schema().await?,
        }
        Ok(Store { backend })
    }

    /// Appends events in one transaction, in order: each new event gets its room's next seq;
    /// an event whose `(from, id)` is already stored is not stored again.
    ///
    /// The result has one entry per event, in the same order. An event repeated within
    /// `events` is stored once; its later copies are [`Appended::Duplicate`]s.
    pub async fn append(&self, events: &[InboundEvent]) -> Result<Vec<Appended>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 1;
        loop {
            let result = match &self.backend {
                Backend::Sqlite(sqlite) => sqlite.append(events).await,
                Backend::Postgres(postgres) => postgres.append(events).await,
            };
            match result {
                Err(error) if attempt < APPEND_ATTEMPTS && is_append_race(&error) => {
                    tracing::debug!(%error, attempt, "append raced with another appender; retrying");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => {
                sqlx::query("SELECT 1").execute(&sqlite.pool).await?;
            }
            Backend::Postgres(postgres) => {
                sqlx::query("SELECT 1").execute(&postgres.pool).await?;
            }
        }
        Ok(())
    }

    /// The database dialect, for logs and readiness reports: `sqlite` or `postgres`.
    pub fn dialect(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the connection pool, waiting for connections in use to be returned. Every later
    /// call on this store (and its clones) fails.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.pool.close().await,
            Backend::Postgres(postgres) => postgres.pool.close().await,
        }
    }
}

/// Whether an append failed only because a concurrent appender stored the same `(from, id)`
/// first (unique violation) or PostgreSQL broke a lock cycle (deadlock detected): running
/// the whole transaction again then gives the right answer.
fn is_append_race(error: &StoreError) -> bool {
    match error {
        StoreError::Database(sqlx::Error::Database(db)) => {
            db.is_unique_violation() || db.code().as_deref() == Some("40P01")
        }
        _ => false,
    }
}
