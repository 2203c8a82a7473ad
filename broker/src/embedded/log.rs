//! The durable log: one SQLite connection owned by a single writer task.
//!
//! Every write (publishes, acks, delivery counters, dead letters) travels through a channel to
//! the writer, which takes whatever is pending, commits it in one transaction (one fsync) and
//! only then confirms each caller: group commit. Reads (health, dead letters, loading the
//! window) run on the same connection between batches, which keeps the connection exclusive
//! (`locking_mode=EXCLUSIVE`: a second process cannot open the same log).

use super::queue::Stored;
use super::{Dispatch, lock};
use crate::BrokerError;
use bytes::Bytes;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteLockingMode, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Version of the log's schema, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Most rows loaded into the window by one read.
const LOAD_CHUNK: usize = 2048;

/// Reply channel of a write.
pub(super) type Done = oneshot::Sender<Result<(), BrokerError>>;

/// A durable change.
#[derive(Debug)]
pub(super) enum Write {
    /// Append a record to the inbound stream.
    Publish { key: Arc<str>, payload: Bytes },
    /// Count one more delivery of each record (ids) before the deliveries are handed out.
    Delivered(Vec<i64>),
    /// Remove an acked record.
    Ack(i64),
    /// Store a dead letter.
    DeadLetter { key: String, payload: Bytes },
}

/// A message to the writer task.
#[derive(Debug)]
pub(super) enum Op {
    /// A change, confirmed once committed.
    Write(Write, Done),
    /// `SELECT 1`.
    Ping(oneshot::Sender<Result<(), BrokerError>>),
    /// Read every dead letter.
    DeadLetters(oneshot::Sender<Result<Vec<(String, Bytes)>, BrokerError>>),
    /// Finish the pending work, close the connection and stop.
    Close(oneshot::Sender<()>),
}

/// Opens (creating when missing) the log file and prepares its schema.
pub(super) async fn open(
    file: &Path,
    busy_timeout: Duration,
) -> Result<(SqliteConnection, Option<i64>), BrokerError> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .locking_mode(SqliteLockingMode::Exclusive)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(busy_timeout);
    let mut conn = options.connect().await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut conn)
        .await?;
    if version > SCHEMA_VERSION {
        return Err(BrokerError::Config(format!(
            "{} was written by a newer version (schema {version}, this build reads {SCHEMA_VERSION})",
            file.display()
        )));
    }
    let mut tx = conn.begin().await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS inbound (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            payload BLOB NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0
        )",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS dead_letters (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            payload BLOB NOT NULL,
            created_ms INTEGER NOT NULL
        )",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let max_id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM inbound")
        .fetch_one(&mut conn)
        .await?;
    Ok((conn, max_id))
}

/// The writer task's state.
pub(super) struct Writer {
    conn: SqliteConnection,
    rx: mpsc::Receiver<Op>,
    shared: Arc<Dispatch>,
    next_id: i64,
    max_batch: usize,
}

/// A write of the current batch with its assigned record id (publishes only).
struct Pending {
    write: Write,
    id: i64,
    done: Done,
}

impl Writer {
    /// A writer for `conn`; `max_id` is the highest record id in the log.
    pub(super) fn new(
        conn: SqliteConnection,
        rx: mpsc::Receiver<Op>,
        shared: Arc<Dispatch>,
        max_id: Option<i64>,
        max_batch: usize,
    ) -> Self {
        Writer {
            conn,
            rx,
            shared,
            next_id: max_id.unwrap_or(0).saturating_add(1),
            max_batch: max_batch.max(1),
        }
    }

    /// Runs until closed or until every sender is gone.
    pub(super) async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch.min(1024));
        let mut reads = Vec::new();
        loop {
            let Some(first) = self.rx.recv().await else {
                // Every handle is gone.
                if let Err(e) = self.conn.close().await {
                    tracing::warn!(error = %e, "closing the embedded broker log failed");
                }
                return;
            };
            let mut close = None;
            let mut op = Some(first);
            while let Some(next) = op.take() {
                match next {
                    Op::Write(write, done) => {
                        let id = match write {
                            Write::Publish { .. } => {
                                let id = self.next_id;
                                self.next_id += 1;
                                id
                            }
                            _ => 0,
                        };
                        batch.push(Pending { write, id, done });
                    }
                    Op::Close(done) => {
                        close = Some(done);
                        break;
                    }
                    read => reads.push(read),
                }
                if batch.len() + reads.len() < self.max_batch {
                    op = self.rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch).await;
            }
            for read in reads.drain(..) {
                self.read(read).await;
            }
            if let Some(done) = close {
                self.rx.close();
                if let Err(e) = self.conn.close().await {
                    tracing::warn!(error = %e, "closing the embedded broker log failed");
                }
                let _ = done.send(());
                return;
            }
            if let Err(e) = self.load().await {
                tracing::error!(error = %e, "loading records from the embedded broker log failed");
            }
        }
    }

    /// Commits a batch of writes in one transaction and confirms each caller.
    async fn commit(&mut self, batch: &mut Vec<Pending>) {
        match self.write(batch).await {
            Ok(()) => {
                let shared = &self.shared;
                shared.stats.commits.fetch_add(1, Ordering::Relaxed);
                let mut published = 0u64;
                let mut became_ready = 0usize;
                {
                    let mut queue = lock(&shared.queue);
                    for pending in batch.iter() {
                        if let Write::Publish { key, payload } = &pending.write {
                            published += 1;
                            if queue.committed(key.clone(), pending.id, payload.clone()) {
                                became_ready += 1;
                            }
                        }
                    }
                }
                shared
                    .stats
                    .published
                    .fetch_add(published, Ordering::Relaxed);
                shared.wake(became_ready);
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "embedded broker commit failed");
                if batch
                    .iter()
                    .any(|p| matches!(p.write, Write::Publish { .. }))
                {
                    // The outcome of a failed commit is uncertain: should the records have
                    // reached the file after all, they are read back in log order.
                    lock(&self.shared.queue).mark_spilled();
                }
                let message = format!("embedded log commit failed: {e}");
                for pending in batch.drain(..) {
                    let _ = pending
                        .done
                        .send(Err(BrokerError::Unavailable(message.clone())));
                }
            }
        }
    }

    async fn write(&mut self, batch: &[Pending]) -> Result<(), sqlx::Error> {
        // Within a batch no two writes depend on each other (a record is delivered only after
        // its insert committed, and acked only after its delivery counter committed), so the
        // writes are grouped by kind into multi-row statements.
        let mut records = Vec::new();
        let mut delivered: Vec<i64> = Vec::new();
        let mut acked = Vec::new();
        let mut letters = Vec::new();
        for pending in batch {
            match &pending.write {
                Write::Publish { key, payload } => {
                    records.push((pending.id, &**key, payload.as_ref()));
                }
                Write::Delivered(ids) => delivered.extend_from_slice(ids),
                Write::Ack(id) => acked.push(*id),
                Write::DeadLetter { key, payload } => {
                    letters.push((key.as_str(), payload.as_ref()))
                }
            }
        }
        let mut tx = self.conn.begin().await?;
        for chunk in chunks(&records) {
            let mut builder: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new("INSERT INTO inbound (id, key, payload, attempts) ");
            builder.push_values(chunk, |mut row, &(id, key, payload)| {
                row.push_bind(id)
                    .push_bind(key)
                    .push_bind(payload)
                    .push_bind(0i64);
            });
            builder.build().persistent(true).execute(&mut *tx).await?;
        }
        // A record handed out twice in one batch (a cancelled hand-out) counts twice.
        delivered.sort_unstable();
        let mut increments: Vec<(i64, i64)> = Vec::with_capacity(delivered.len());
        for id in delivered {
            match increments.last_mut() {
                Some((last, count)) if *last == id => *count += 1,
                _ => increments.push((id, 1)),
            }
        }
        let mut by = 1;
        while !increments.is_empty() {
            let (now, later): (Vec<_>, Vec<_>) =
                increments.into_iter().partition(|&(_, count)| count == by);
            let ids: Vec<i64> = now.into_iter().map(|(id, _)| id).collect();
            for chunk in chunks(&ids) {
                let mut builder: QueryBuilder<'_, Sqlite> =
                    QueryBuilder::new("UPDATE inbound SET attempts = attempts + ");
                builder.push_bind(by).push(" WHERE id IN (");
                let mut list = builder.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                builder.push(")");
                builder.build().persistent(true).execute(&mut *tx).await?;
            }
            increments = later;
            by += 1;
        }
        for chunk in chunks(&acked) {
            let mut builder: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new("DELETE FROM inbound WHERE id IN (");
            let mut list = builder.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            builder.push(")");
            builder.build().persistent(true).execute(&mut *tx).await?;
        }
        // Milliseconds since the Unix epoch, as SQLite stores them.
        let now = i64::try_from(roomcast_schemas::now_ms()).unwrap_or(i64::MAX);
        for (key, payload) in letters {
            sqlx::query("INSERT INTO dead_letters (key, payload, created_ms) VALUES (?1, ?2, ?3)")
                .bind(key)
                .bind(payload)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    async fn read(&mut self, op: Op) {
        match op {
            Op::Ping(done) => {
                let result = sqlx::query("SELECT 1")
                    .execute(&mut self.conn)
                    .await
                    .map(|_| ())
                    .map_err(BrokerError::from);
                let _ = done.send(result);
            }
            Op::DeadLetters(done) => {
                let result = sqlx::query_as::<_, (String, Vec<u8>)>(
                    "SELECT key, payload FROM dead_letters ORDER BY id",
                )
                .fetch_all(&mut self.conn)
                .await
                .map(|rows| {
                    rows.into_iter()
                        .map(|(key, payload)| (key, Bytes::from(payload)))
                        .collect()
                })
                .map_err(BrokerError::from);
                let _ = done.send(result);
            }
            Op::Write(..) | Op::Close(_) => {}
        }
    }

    /// Loads records from the log into the window while it is at most half full.
    pub(super) async fn load(&mut self) -> Result<(), sqlx::Error> {
        loop {
            let (after, limit) = {
                let queue = lock(&self.shared.queue);
                if !queue.needs_load() {
                    return Ok(());
                }
                queue.load_range(LOAD_CHUNK)
            };
            let rows = sqlx::query_as::<_, (i64, String, Vec<u8>, i64)>(
                "SELECT id, key, payload, attempts FROM inbound WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut self.conn)
            .await?;
            let exhausted = rows.len() < limit;
            let rows = rows
                .into_iter()
                .map(|(id, key, payload, attempts)| Stored {
                    id,
                    key: Arc::from(key),
                    payload: Bytes::from(payload),
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                })
                .collect();
            let (appended, became_ready) = lock(&self.shared.queue).loaded(rows, exhausted);
            self.shared.wake(became_ready);
            if appended == 0 {
                return Ok(());
            }
        }
    }
}

/// Sizes of multi-row statements: powers of two, so that few distinct statements get
/// prepared (and cached).
const CHUNKS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// Splits `items` into chunks whose sizes are taken from [`CHUNKS`].
fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let size = CHUNKS
            .iter()
            .copied()
            .find(|&c| c <= items.len())
            .unwrap_or(1);
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}
