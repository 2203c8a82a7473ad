//! The read side: a room's last seq and its history pages, and the `messages` row both
//! dialects return.

use crate::{Backend, Store, StoreError};
use roomcast_schemas::{ENVELOPE_VERSION, FanoutMessage};
use serde_json::value::RawValue;

impl Store {
    /// The last seq of `room` (0 when the room has no message).
    pub async fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
        let last: Option<i64> = match &self.backend {
            Backend::Sqlite(sqlite) => {
                sqlx::query_scalar("SELECT last_seq FROM rooms WHERE room = ?1")
                    .bind(room)
                    .fetch_optional(&sqlite.pool)
                    .await?
            }
            Backend::Postgres(postgres) => {
                sqlx::query_scalar("SELECT last_seq FROM rooms WHERE room = $1")
                    .bind(room)
                    .fetch_optional(&postgres.pool)
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
    /// does the cut: messages beyond it never reach this process, and their payloads are not
    /// even read (the cut is found from payload lengths alone, which both databases know
    /// without loading the text).
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
        // The innermost query bounds the rows the window looks at and reads only their
        // lengths; the window sums the payload bytes before each row, which gives the last seq
        // of the page; only then are the page's rows read whole.
        let rows: Vec<MessageRow> = match &self.backend {
            Backend::Sqlite(sqlite) => {
                sqlx::query_as(
                    "SELECT room, seq, id, sender, event, ts, data FROM messages \
                     WHERE room = ?1 AND seq > ?2 AND seq <= ( \
                       SELECT MAX(seq) FROM ( \
                         SELECT seq, COALESCE(SUM(len) OVER (ORDER BY seq \
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before \
                         FROM (SELECT seq, octet_length(data) AS len FROM messages \
                               WHERE room = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3) \
                       ) WHERE before < ?4) \
                     ORDER BY seq",
                )
                .bind(room)
                .bind(after)
                .bind(i64::from(limit))
                .bind(max_bytes)
                .fetch_all(&sqlite.pool)
                .await?
            }
            Backend::Postgres(postgres) => {
                sqlx::query_as(
                    "SELECT room, seq, id, sender, event, ts, data FROM messages \
                     WHERE room = $1 AND seq > $2 AND seq <= ( \
                       SELECT MAX(seq) FROM ( \
                         SELECT seq, COALESCE(SUM(len) OVER (ORDER BY seq \
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before \
                         FROM (SELECT seq, octet_length(data) AS len FROM messages \
                               WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3) page \
                       ) sized WHERE before < $4) \
                     ORDER BY seq",
                )
                .bind(room)
                .bind(after)
                .bind(i64::from(limit))
                .bind(max_bytes)
                .fetch_all(&postgres.pool)
                .await?
            }
        };
        rows.into_iter().map(MessageRow::into_message).collect()
    }
}

/// A `messages` row as both dialects return it.
#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    room: String,
    seq: i64,
    id: String,
    sender: String,
    event: String,
    ts: i64,
    data: String,
}

impl MessageRow {
    pub(crate) fn into_message(self) -> Result<FanoutMessage, StoreError> {
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
pub(crate) fn to_seq(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(decode_error)
}

/// A seq as written to the database.
pub(crate) fn to_db_seq(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|error| StoreError::Database(sqlx::Error::Encode(Box::new(error))))
}

fn decode_error(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(Box::new(error)))
}
