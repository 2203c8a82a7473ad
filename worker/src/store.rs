//! The message store.
//!
//! Two tables, the same in both dialects (`store/sqlite.sql`, `store/postgres.sql`):
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
//! differences are the SQL text and how many statements a step takes, all in `Backend`.

use roomcast_schemas::{ENVELOPE_VERSION, FanoutMessage, InboundEvent};
use serde_json::value::RawValue;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::Mutex;

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

#[derive(Clone)]
enum Backend {
    Sqlite {
        pool: SqlitePool,
        /// Serialises this process's write transactions, so that they queue here instead of
        /// polling SQLite's busy handler (other processes still wait on `busy_timeout`).
        write: Arc<Mutex<()>>,
    },
    Postgres(PgPool),
}

/// Connections per store pool.
const MAX_CONNECTIONS: u32 = 8;
/// How long a SQLite statement waits for another process's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a pool connection before reporting the store unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// `pg_advisory_xact_lock` key that serialises schema creation ("roomcast" in ASCII).
const PG_SCHEMA_LOCK: i64 = 0x726f_6f6d_6361_7374;
/// Attempts of one append when it races with another appender on the same `(from, id)`.
const APPEND_ATTEMPTS: u32 = 3;

const SQLITE_SCHEMA: &str = include_str!("store/sqlite.sql");
const POSTGRES_SCHEMA: &str = include_str!("store/postgres.sql");

impl Store {
    /// Connects to the store at `url` and creates its tables when missing.
    ///
    /// `sqlite://path` (or `sqlite:path`; `sqlite::memory:` for a private in-memory store)
    /// creates the file and its directory when missing and runs in WAL mode with
    /// `synchronous=FULL`, so a committed append survives a power loss. `postgres://…` (or
    /// `postgresql://…`) needs an existing database.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let backend = if url.starts_with("sqlite:") {
            Backend::connect_sqlite(url).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::connect_postgres(url).await?
        } else {
            // The URL itself is not echoed: it may carry credentials.
            return Err(StoreError::Config(
                "unsupported scheme; expected sqlite://path or postgres://…".to_owned(),
            ));
        };
        backend.create_schema().await?;
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
            match self.backend.append(events).await {
                Err(error) if attempt < APPEND_ATTEMPTS && is_append_race(&error) => {
                    tracing::debug!(%error, attempt, "append raced with another appender; retrying");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// The last seq of `room` (0 when the room has no message).
    pub async fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
        let last: Option<i64> = match &self.backend {
            Backend::Sqlite { pool, .. } => {
                sqlx::query_scalar("SELECT last_seq FROM rooms WHERE room = ?1")
                    .bind(room)
                    .fetch_optional(pool)
                    .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT last_seq FROM rooms WHERE room = $1")
                    .bind(room)
                    .fetch_optional(pool)
                    .await?
            }
        };
        last.map_or(Ok(0), to_seq)
    }

    /// Up to `limit` messages of `room` with seq greater than `after`, in seq order.
    pub async fn history(
        &self,
        room: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<FanoutMessage>, StoreError> {
        self.history_within(room, after, limit, usize::MAX).await
    }

    /// Like [`Store::history`], and the page stops once its payloads (`data`) reach
    /// `max_bytes`: every message but the last starts below that total, so a page holds at
    /// most `max_bytes` plus one message. The first message is always returned. The database
    /// does the cut: messages beyond it never reach this process.
    pub async fn history_within(
        &self,
        room: &str,
        after: u64,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<FanoutMessage>, StoreError> {
        // Seqs beyond i64::MAX cannot exist: nothing comes after such a position.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let max_bytes = i64::try_from(max_bytes.max(1)).unwrap_or(i64::MAX);
        // The innermost query bounds the rows the window looks at; the window sums the
        // payload bytes before each row.
        let rows: Vec<MessageRow> = match &self.backend {
            Backend::Sqlite { pool, .. } => {
                sqlx::query_as(
                    "SELECT room, seq, id, sender, event, ts, data FROM ( \
                       SELECT room, seq, id, sender, event, ts, data, \
                         COALESCE(SUM(LENGTH(CAST(data AS BLOB))) OVER (ORDER BY seq \
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before \
                       FROM (SELECT room, seq, id, sender, event, ts, data FROM messages \
                             WHERE room = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3) \
                     ) WHERE before < ?4 ORDER BY seq",
                )
                .bind(room)
                .bind(after)
                .bind(i64::from(limit))
                .bind(max_bytes)
                .fetch_all(pool)
                .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT room, seq, id, sender, event, ts, data FROM ( \
                       SELECT room, seq, id, sender, event, ts, data, \
                         COALESCE(SUM(octet_length(data)) OVER (ORDER BY seq \
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before \
                       FROM (SELECT room, seq, id, sender, event, ts, data FROM messages \
                             WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3) page \
                     ) sized WHERE before < $4 ORDER BY seq",
                )
                .bind(room)
                .bind(after)
                .bind(i64::from(limit))
                .bind(max_bytes)
                .fetch_all(pool)
                .await?
            }
        };
        rows.into_iter().map(MessageRow::into_message).collect()
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite { pool, .. } => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// The database dialect, for logs and readiness reports: `sqlite` or `postgres`.
    pub fn dialect(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the connection pool, waiting for connections in use to be returned. Every later
    /// call on this store (and its clones) fails.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { pool, .. } => pool.close().await,
            Backend::Postgres(pool) => pool.close().await,
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

impl Backend {
    async fn connect_sqlite(url: &str) -> Result<Backend, StoreError> {
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
        Ok(Backend::Sqlite {
            pool,
            write: Arc::new(Mutex::new(())),
        })
    }

    async fn connect_postgres(url: &str) -> Result<Backend, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(Backend::Postgres(pool))
    }

    async fn create_schema(&self) -> Result<(), StoreError> {
        match self {
            Backend::Sqlite { pool, write } => {
                let _write = write.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::raw_sql(SQLITE_SCHEMA).execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PG_SCHEMA_LOCK)
                    .execute(&mut *tx)
                    .await?;
                sqlx::raw_sql(POSTGRES_SCHEMA).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn append(&self, events: &[InboundEvent]) -> Result<Vec<Appended>, StoreError> {
        match self {
            Backend::Sqlite { pool, write } => {
                let _write = write.lock().await;
                // IMMEDIATE takes the write lock now: no other writer can number the same
                // rooms between our reads and our writes.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let mut existing = Existing::new();
                for event in events {
                    if existing.contains_key(&(event.from.as_str(), event.id.as_str())) {
                        continue;
                    }
                    let row: Option<MessageRow> = sqlx::query_as(
                        "SELECT room, seq, id, sender, event, ts, data FROM messages \
                         WHERE sender = ?1 AND id = ?2",
                    )
                    .bind(&event.from)
                    .bind(&event.id)
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
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let (senders, ids): (Vec<&str>, Vec<&str>) = events
                    .iter()
                    .map(|e| (e.from.as_str(), e.id.as_str()))
                    .unzip();
                let rows: Vec<MessageRow> = sqlx::query_as(
                    "SELECT m.room, m.seq, m.id, m.sender, m.event, m.ts, m.data \
                     FROM messages m JOIN UNNEST($1::text[], $2::text[]) AS k(sender, id) \
                     ON m.sender = k.sender AND m.id = k.id",
                )
                .bind(&senders)
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
                // Key by the batch's strings, which outlive the plan.
                let index: HashMap<(&str, &str), usize> = senders
                    .iter()
                    .copied()
                    .zip(ids.iter().copied())
                    .enumerate()
                    .map(|(i, key)| (key, i))
                    .collect();
                let mut existing = Existing::new();
                for row in rows {
                    let message = row.into_message()?;
                    let found = index
                        .get(&(message.from.as_str(), message.id.as_str()))
                        .copied();
                    if let Some(event) = found.and_then(|i| events.get(i)) {
                        existing.insert((event.from.as_str(), event.id.as_str()), message);
                    }
                }
                let mut rooms: Vec<&str> = rooms_to_number(events, &existing).into_iter().collect();
                if rooms.is_empty() {
                    // Duplicates only: nothing to write.
                    tx.commit().await?;
                    return Ok(plan(events, existing, HashMap::new()).results);
                }
                // Lock the rooms' rows (creating missing ones) in one global order, so that
                // two appenders with overlapping rooms queue instead of deadlocking.
                rooms.sort_unstable();
                let locked: Vec<(String, i64)> = sqlx::query_as(
                    "INSERT INTO rooms (room, last_seq) \
                     SELECT r, 0 FROM UNNEST($1::text[]) WITH ORDINALITY AS t(r, o) ORDER BY o \
                     ON CONFLICT (room) DO UPDATE SET last_seq = rooms.last_seq \
                     RETURNING room, last_seq",
                )
                .bind(&rooms)
                .fetch_all(&mut *tx)
                .await?;
                let mut last_seqs = HashMap::new();
                for (room, last) in locked {
                    if let Ok(index) = rooms.binary_search(&room.as_str()) {
                        last_seqs.insert(rooms[index], to_seq(last)?);
                    }
                }
                let plan = plan(events, existing, last_seqs);
                let mut columns = MessageColumns::default();
                for message in plan.new_messages() {
                    columns.push(message)?;
                }
                sqlx::query(
                    "INSERT INTO messages (room, seq, id, sender, event, ts, data) \
                     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], \
                     $5::text[], $6::int8[], $7::text[])",
                )
                .bind(&columns.rooms)
                .bind(&columns.seqs)
                .bind(&columns.ids)
                .bind(&columns.senders)
                .bind(&columns.events)
                .bind(&columns.ts)
                .bind(&columns.data)
                .execute(&mut *tx)
                .await?;
                let (rooms, lasts): (Vec<&str>, Vec<i64>) = plan
                    .last_seqs
                    .iter()
                    .map(|(room, last)| Ok((*room, to_db_seq(*last)?)))
                    .collect::<Result<Vec<_>, StoreError>>()?
                    .into_iter()
                    .unzip();
                sqlx::query(
                    "UPDATE rooms SET last_seq = u.last_seq \
                     FROM UNNEST($1::text[], $2::int8[]) AS u(room, last_seq) \
                     WHERE rooms.room = u.room",
                )
                .bind(&rooms)
                .bind(&lasts)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(plan.results)
            }
        }
    }
}

/// Messages already stored, by `(from, id)`.
type Existing<'a> = HashMap<(&'a str, &'a str), FanoutMessage>;

/// Rooms of the events that are not known duplicates: the rooms that may get new seqs.
fn rooms_to_number<'a>(events: &'a [InboundEvent], existing: &Existing<'a>) -> HashSet<&'a str> {
    events
        .iter()
        .filter(|e| !existing.contains_key(&(e.from.as_str(), e.id.as_str())))
        .map(|e| e.room.as_str())
        .collect()
}

/// The outcome of numbering a batch.
struct Plan<'a> {
    /// One entry per event, in batch order.
    results: Vec<Appended>,
    /// The rooms that got new messages, with their new last seq.
    last_seqs: HashMap<&'a str, u64>,
}

impl Plan<'_> {
    fn new_messages(&self) -> impl Iterator<Item = &FanoutMessage> {
        self.results.iter().filter_map(|appended| match appended {
            Appended::New(message) => Some(message),
            Appended::Duplicate(_) => None,
        })
    }
}

/// Numbers a batch, in order: a known `(from, id)` (stored before or earlier in the batch)
/// is a duplicate of its stored message; any other event takes its room's next seq.
/// `last_seqs` holds the current last seq of every room that may get a new message.
fn plan<'a>(
    events: &'a [InboundEvent],
    existing: Existing<'a>,
    mut last_seqs: HashMap<&'a str, u64>,
) -> Plan<'a> {
    let mut results: Vec<Appended> = Vec::with_capacity(events.len());
    let mut changed = HashMap::new();
    // Events stored by this batch, by key: the index of their result.
    let mut batch: HashMap<(&str, &str), usize> = HashMap::new();
    for event in events {
        let key = (event.from.as_str(), event.id.as_str());
        let stored = match batch.get(&key) {
            Some(&index) => results.get(index).map(Appended::message),
            None => existing.get(&key),
        };
        if let Some(stored) = stored {
            results.push(Appended::Duplicate(stored.clone()));
            continue;
        }
        let last = last_seqs.entry(event.room.as_str()).or_insert(0);
        *last += 1;
        changed.insert(event.room.as_str(), *last);
        batch.insert(key, results.len());
        results.push(Appended::New(FanoutMessage::from_event(event, *last)));
    }
    Plan {
        results,
        last_seqs: changed,
    }
}

/// The column arrays of a PostgreSQL multi-row insert (`UNNEST`).
#[derive(Default)]
struct MessageColumns<'a> {
    rooms: Vec<&'a str>,
    seqs: Vec<i64>,
    ids: Vec<&'a str>,
    senders: Vec<&'a str>,
    events: Vec<&'a str>,
    ts: Vec<i64>,
    data: Vec<&'a str>,
}

impl<'a> MessageColumns<'a> {
    fn push(&mut self, message: &'a FanoutMessage) -> Result<(), StoreError> {
        self.rooms.push(&message.room);
        self.seqs.push(to_db_seq(message.seq)?);
        self.ids.push(&message.id);
        self.senders.push(&message.from);
        self.events.push(&message.event);
        self.ts.push(message.ts.cast_signed());
        self.data.push(message.data.get());
        Ok(())
    }
}

/// A `messages` row as both dialects return it.
#[derive(sqlx::FromRow)]
struct MessageRow {
    room: String,
    seq: i64,
    id: String,
    sender: String,
    event: String,
    ts: i64,
    data: String,
}

impl MessageRow {
    fn into_message(self) -> Result<FanoutMessage, StoreError> {
        let data = RawValue::from_string(self.data).map_err(decode_error)?;
        Ok(FanoutMessage {
            v: ENVELOPE_VERSION,
            room: self.room,
            seq: to_seq(self.seq)?,
            id: self.id,
            event: self.event,
            from: self.sender,
            // Stored bit for bit: timestamps past i64::MAX round-trip too.
            ts: self.ts.cast_unsigned(),
            data,
        })
    }
}

/// A seq as read from the database (never negative by the schema's CHECK).
fn to_seq(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(decode_error)
}

/// A seq as written to the database.
fn to_db_seq(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|error| StoreError::Database(sqlx::Error::Encode(Box::new(error))))
}

fn decode_error(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(Box::new(error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, from: &str, id: &str) -> InboundEvent {
        InboundEvent {
            v: ENVELOPE_VERSION,
            id: id.to_owned(),
            room: room.to_owned(),
            event: "say".to_owned(),
            from: from.to_owned(),
            ts: 1,
            data: RawValue::from_string("{}".to_owned()).unwrap(),
        }
    }

    #[test]
    fn plan_numbers_rooms_independently_and_dedups_within_the_batch() {
        let events = [
            event("a", "u", "1"),
            event("b", "u", "2"),
            event("a", "u", "3"),
            event("a", "u", "1"),
            event("a", "v", "1"),
        ];
        let last_seqs = HashMap::from([("a", 4), ("b", 0)]);
        let plan = plan(&events, Existing::new(), last_seqs);
        let seqs: Vec<(bool, u64)> = plan
            .results
            .iter()
            .map(|a| (a.is_new(), a.message().seq))
            .collect();
        assert_eq!(
            seqs,
            [(true, 5), (true, 1), (true, 6), (false, 5), (true, 7)]
        );
        assert_eq!(plan.last_seqs, HashMap::from([("a", 7), ("b", 1)]));
    }

    #[test]
    fn plan_reports_stored_events_as_duplicates_and_changes_no_room() {
        let events = [event("a", "u", "1")];
        let mut stored = FanoutMessage::from_event(&events[0], 9);
        stored.event = "original".to_owned();
        let existing = Existing::from([(("u", "1"), stored)]);
        let plan = plan(&events, existing, HashMap::new());
        assert!(
            matches!(&plan.results[..], [Appended::Duplicate(m)] if m.seq == 9 && m.event == "original")
        );
        assert!(plan.last_seqs.is_empty());
    }
}
