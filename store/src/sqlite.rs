//! The SQLite dialect (the default store): connection, schema (`sqlite.sql`) and the append
//! transaction.

use crate::history::{MessageRow, to_db_seq, to_seq};
use crate::plan::{Existing, plan, rooms_to_number};
use crate::{ACQUIRE_TIMEOUT, Appended, MAX_CONNECTIONS, StoreError};
use roomcast_schemas::InboundEvent;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a SQLite statement waits for another process's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SQLITE_SCHEMA: &str = include_str!("sqlite.sql");

/// A SQLite store's pool.
#[derive(Clone)]
pub(crate) struct SqliteBackend {
    pub(crate) pool: SqlitePool,
    /// Serialises this process's write transactions, so that they queue here instead of
    /// polling SQLite's busy handler (other processes still wait on `busy_timeout`).
    write: Arc<Mutex<()>>,
}

impl SqliteBackend {
    pub(crate) async fn connect(url: &str) -> Result<SqliteBackend, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|error| StoreError::Config(format!("bad SQLite URL: {error}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool_options = if in_memory {
            // Every connection would see its own in-memory database: keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            let path = options.get_filename();
            if path.as_os_str().is_empty() {
                return Err(StoreError::Config(
                    "the SQLite URL has no file path".to_owned(),
                ));
            }
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(sqlx::Error::Io)?;
            }
            SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS)
        };
        let pool = pool_options
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(SqliteBackend {
            pool,
            write: Arc::new(Mutex::new(())),
        })
    }

    pub(crate) async fn create_schema(&self) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(SQLITE_SCHEMA).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn append(
        &self,
        events: &[InboundEvent],
    ) -> Result<Vec<Appended>, StoreError> {
        let _write = self.write.lock().await;
        // IMMEDIATE takes the write lock now: no other writer can number the same
        // rooms between our reads and our writes.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut existing = Existing::new();
        for event in events {
            if existing.contains_key(&(event.from.as_str(), event.id.as_str())) {
                continue;
            }
            let row: Option<MessageRow> = sqlx::query_as(
                "SELECT room, seq, id, sender, event, ts, data FROM messages \
                 WHERE sender = ?1 AND id = ?2",
            )
            .bind(event.from.as_str())
            .bind(event.id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                existing.insert(
                    (event.from.as_str(), event.id.as_str()),
                    row.into_message()?,
                );
            }
        }
        let mut last_seqs = HashMap::new();
        for room in rooms_to_number(events, &existing) {
            let last: Option<i64> =
                sqlx::query_scalar("SELECT last_seq FROM rooms WHERE room = ?1")
                    .bind(room)
                    .fetch_optional(&mut *tx)
                    .await?;
            last_seqs.insert(room, last.map_or(Ok(0), to_seq)?);
        }
        let plan = plan(events, existing, last_seqs);
        for message in plan.new_messages() {
            sqlx::query(
                "INSERT INTO messages (room, seq, id, sender, event, ts, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(&message.room)
            .bind(to_db_seq(message.seq)?)
            .bind(&message.id)
            .bind(&message.from)
            .bind(&message.event)
            .bind(message.ts.cast_signed())
            .bind(message.data.get())
            .execute(&mut *tx)
            .await?;
        }
        for (room, last) in &plan.last_seqs {
            sqlx::query(
                "INSERT INTO rooms (room, last_seq) VALUES (?1, ?2) \
                 ON CONFLICT (room) DO UPDATE SET last_seq = excluded.last_seq",
            )
            .bind(room)
            .bind(to_db_seq(*last)?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(plan.results)
    }
}
