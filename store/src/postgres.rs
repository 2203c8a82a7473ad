//! The PostgreSQL dialect: connection, schema (`postgres.sql`) and the append transaction,
//! with multi-row statements (`UNNEST`) so that a batch costs a few round trips.

use crate::history::{MessageRow, to_db_seq, to_seq};
use crate::plan::{Existing, plan, rooms_to_number};
use crate::{ACQUIRE_TIMEOUT, Appended, MAX_CONNECTIONS, StoreError};
use roomcast_schemas::{FanoutMessage, InboundEvent};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::HashMap;

/// `pg_advisory_xact_lock` key that serialises schema creation ("roomcast" in ASCII).
const PG_SCHEMA_LOCK: i64 = 0x726f_6f6d_6361_7374;

const POSTGRES_SCHEMA: &str = include_str!("postgres.sql");

/// A PostgreSQL store's pool.
#[derive(Clone)]
pub(crate) struct PostgresBackend {
    pub(crate) pool: PgPool,
}

impl PostgresBackend {
    pub(crate) async fn connect(url: &str) -> Result<PostgresBackend, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(PostgresBackend { pool })
    }

    pub(crate) async fn create_schema(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PG_SCHEMA_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(POSTGRES_SCHEMA).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn append(
        &self,
        events: &[InboundEvent],
    ) -> Result<Vec<Appended>, StoreError> {
        let mut tx = self.pool.begin().await?;
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
