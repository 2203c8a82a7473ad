//! In-memory dispatch state of the inbound stream.
//!
//! The queue holds a window of the pending records (the oldest ones, in log order), grouped
//! by key. A key is *owned* by the stream holding its unacked records, and by no stream when
//! none are handed out. An unowned key with records is *ready*: any stream may take it. The
//! owning stream receives the key's next records, in order, as soon as they exist (several in
//! one batch), and no other stream receives any of them until every handed record is settled:
//! per-key order and per-key exclusion between streams. Records newer than the window wait in
//! the log (`spilled`) and are loaded in log order as the window drains.

use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Limits of the in-memory window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Most records held in memory.
    pub(crate) max_records: usize,
    /// Most payload bytes held in memory (a single larger record is still admitted alone).
    pub(crate) max_bytes: usize,
}

/// Who holds a record: a delivery token and the stream it was handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    token: u64,
    stream: u64,
}

/// A pending record held in memory.
#[derive(Debug)]
struct Pending {
    id: i64,
    payload: Bytes,
    /// Deliveries so far, as persisted in the log.
    attempts: u32,
    holder: Option<Holder>,
}

/// A record handed to a stream.
#[derive(Debug)]
pub(crate) struct Handout {
    pub(crate) key: Arc<str>,
    pub(crate) id: i64,
    pub(crate) payload: Bytes,
    /// The attempt number of this delivery (deliveries so far, this one included).
    pub(crate) attempt: u32,
    pub(crate) token: u64,
}

/// A record read back from the log.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) id: i64,
    pub(crate) key: Arc<str>,
    pub(crate) payload: Bytes,
    pub(crate) attempts: u32,
}

/// What an ack found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckOutcome {
    /// The record was removed from memory.
    Removed,
    /// The record is no longer pending (acked through another delivery).
    Gone,
    /// The record was released and handed to another stream meanwhile.
    HeldElsewhere,
}

/// A key's pending records and who holds them.
#[derive(Debug)]
struct KeyState {
    records: VecDeque<Pending>,
    /// The first `handed` records are handed to `owner` and not settled.
    handed: usize,
    /// The stream holding the handed records (`Some` exactly when `handed > 0`).
    owner: Option<u64>,
}

/// What a stream holds.
#[derive(Debug, Default)]
struct StreamKeys {
    /// Keys it owns.
    owned: HashSet<Arc<str>>,
    /// Owned keys that may have records not handed out yet (checked when taken).
    more: VecDeque<Arc<str>>,
}

/// The dispatch state; guarded by a mutex in [`super::Dispatch`].
#[derive(Debug)]
pub(crate) struct Queue {
    keys: HashMap<Arc<str>, KeyState>,
    /// Unowned keys with records, oldest-ready first (entries are checked when taken).
    ready: VecDeque<Arc<str>>,
    /// What each open stream holds.
    streams: HashMap<u64, StreamKeys>,
    records: usize,
    bytes: usize,
    window: Window,
    /// Every record with an id up to this one is in memory or acked.
    loaded_up_to: i64,
    /// Some records newer than `loaded_up_to` are only in the log.
    spilled: bool,
    next_token: u64,
    next_stream: u64,
    /// The consumer group of the open streams, with their count.
    group: Option<(String, usize)>,
    closed: bool,
}

impl Queue {
    /// An empty queue; `spilled` tells whether the log holds records to load.
    pub(crate) fn new(window: Window, spilled: bool) -> Self {
        Queue {
            keys: HashMap::new(),
            ready: VecDeque::new(),
            streams: HashMap::new(),
            records: 0,
            bytes: 0,
            window: Window {
                max_records: window.max_records.max(1),
                max_bytes: window.max_bytes.max(1),
            },
            loaded_up_to: 0,
            spilled,
            next_token: 1,
            next_stream: 1,
            group: None,
            closed: false,
        }
    }

    /// Marks the queue closed: streams get `Closed` from now on.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Whether [`Queue::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Records held in memory.
    pub(crate) fn records_in_memory(&self) -> usize {
        self.records
    }

    /// Whether a key is ready to be handed out.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    fn fits(&self, len: usize) -> bool {
        self.records == 0
            || (self.records < self.window.max_records
                && self.bytes.saturating_add(len) <= self.window.max_bytes)
    }

    /// Appends a record at the end of its key; returns whether a stream can take it now.
    fn push(&mut self, key: Arc<str>, id: i64, payload: Bytes, attempts: u32) -> bool {
        self.records += 1;
        self.bytes = self.bytes.saturating_add(payload.len());
        self.loaded_up_to = id;
        let pending = Pending {
            id,
            payload,
            attempts,
            holder: None,
        };
        match self.keys.get_mut(&key) {
            Some(state) => {
                let was_exhausted = state.handed == state.records.len();
                state.records.push_back(pending);
                match state.owner {
                    // The owner takes it next.
                    Some(owner) if was_exhausted => {
                        if let Some(stream) = self.streams.get_mut(&owner) {
                            stream.more.push_back(key);
                        }
                        true
                    }
                    // Already listed as taking more, or ready.
                    _ => false,
                }
            }
            None => {
                let mut records = VecDeque::with_capacity(1);
                records.push_back(pending);
                self.keys.insert(
                    key.clone(),
                    KeyState {
                        records,
                        handed: 0,
                        owner: None,
                    },
                );
                self.ready.push_back(key);
                true
            }
        }
    }

    /// A record was committed to the log: keep it in memory if the window allows and no
    /// older record waits in the log. Returns whether its key became ready.
    pub(crate) fn committed(&mut self, key: Arc<str>, id: i64, payload: Bytes) -> bool {
        if !self.spilled && self.fits(payload.len()) {
            self.push(key, id, payload, 0)
        } else {
            self.spilled = true;
            false
        }
    }

    /// Records newer than the window may be in the log: read them back before admitting new
    /// ones into memory.
    pub(crate) fn mark_spilled(&mut self) {
        self.spilled = true;
    }

    /// Whether records should be loaded from the log (the window is at most half full).
    pub(crate) fn needs_load(&self) -> bool {
        self.spilled
            && (self.records == 0
                || (self.records.saturating_mul(2) <= self.window.max_records
                    && self.bytes.saturating_mul(2) <= self.window.max_bytes))
    }

    /// Where to load from: records after this id, at most `limit` of them.
    pub(crate) fn load_range(&self, cap: usize) -> (i64, usize) {
        let room = self.window.max_records.saturating_sub(self.records).max(1);
        (self.loaded_up_to, room.min(cap.max(1)))
    }

    /// Appends records read from the log after `loaded_up_to`, in id order, as far as the
    /// window allows. `exhausted` says the read returned every remaining record. Returns
    /// (records appended, keys that became ready).
    pub(crate) fn loaded(&mut self, rows: Vec<Stored>, exhausted: bool) -> (usize, usize) {
        let total = rows.len();
        let mut appended = 0;
        let mut became_ready = 0;
        for row in rows {
            if row.id <= self.loaded_up_to {
                // Already in memory (cannot happen with a single writer; kept for safety).
                appended += 1;
                continue;
            }
            if !self.fits(row.payload.len()) {
                break;
            }
            if self.push(row.key, row.id, row.payload, row.attempts) {
                became_ready += 1;
            }
            appended += 1;
        }
        if exhausted && appended == total {
            self.spilled = false;
        }
        (appended, became_ready)
    }

    /// Registers a stream of `group`. Errors when another group has open streams.
    pub(crate) fn open_stream(&mut self, group: &str) -> Result<u64, String> {
        match &mut self.group {
            Some((active, count)) if *count > 0 => {
                if active != group {
                    return Err(format!(
                        "the embedded broker serves one consumer group at a time: \
                         `{active}` has open streams, `{group}` was requested"
                    ));
                }
                *count += 1;
            }
            _ => self.group = Some((group.to_owned(), 1)),
        }
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(id, StreamKeys::default());
        Ok(id)
    }

    /// Unregisters a stream and releases its unacked records; returns how many keys became
    /// ready.
    pub(crate) fn close_stream(&mut self, stream: u64) -> usize {
        if let Some((_, count)) = &mut self.group {
            *count = count.saturating_sub(1);
        }
        let Some(held) = self.streams.remove(&stream) else {
            return 0;
        };
        let mut released = 0;
        for key in held.owned {
            if let Some(state) = self.keys.get_mut(&key)
                && state.owner == Some(stream)
            {
                for record in state.records.iter_mut().take(state.handed) {
                    record.holder = None;
                }
                state.handed = 0;
                state.owner = None;
                self.ready.push_back(key);
                released += 1;
            }
        }
        released
    }

    /// Hands out up to `max` records of `key` (owned by `stream`, or unowned) from its first
    /// record not handed out yet; returns whether records remain to hand out.
    fn hand_out(
        &mut self,
        key: &Arc<str>,
        stream: u64,
        max: usize,
        out: &mut Vec<Handout>,
    ) -> bool {
        let Some(state) = self.keys.get_mut(key) else {
            return false;
        };
        let end = state.records.len().min(state.handed + max);
        for record in state.records.range_mut(state.handed..end) {
            let token = self.next_token;
            self.next_token += 1;
            record.holder = Some(Holder { token, stream });
            record.attempts = record.attempts.saturating_add(1);
            out.push(Handout {
                key: key.clone(),
                id: record.id,
                payload: record.payload.clone(),
                attempt: record.attempts,
                token,
            });
        }
        if end > state.handed {
            state.handed = end;
            if state.owner.is_none() {
                state.owner = Some(stream);
                self.streams
                    .entry(stream)
                    .or_default()
                    .owned
                    .insert(key.clone());
            }
        }
        state.handed < state.records.len()
    }

    /// Hands up to `max` records to `stream`: first the next records of keys it owns, then
    /// ready keys' records (a key's records in order, several of one key at once).
    pub(crate) fn take(&mut self, stream: u64, max: usize) -> Vec<Handout> {
        let mut out = Vec::with_capacity(max.min(self.records));
        while out.len() < max {
            let Some(key) = self
                .streams
                .get_mut(&stream)
                .and_then(|s| s.more.pop_front())
            else {
                break;
            };
            let owned = self
                .keys
                .get(&key)
                .is_some_and(|state| state.owner == Some(stream));
            if owned
                && self.hand_out(&key, stream, max - out.len(), &mut out)
                && let Some(s) = self.streams.get_mut(&stream)
            {
                s.more.push_front(key);
            }
        }
        while out.len() < max {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let takeable = self
                .keys
                .get(&key)
                .is_some_and(|state| state.owner.is_none() && !state.records.is_empty());
            if takeable
                && self.hand_out(&key, stream, max - out.len(), &mut out)
                && let Some(s) = self.streams.get_mut(&stream)
            {
                s.more.push_back(key);
            }
        }
        out
    }

    /// Acks a delivery: removes the record; when it was the key's last handed record, the key
    /// is released (and ready if it has more). Returns the outcome and whether a key became
    /// ready.
    pub(crate) fn ack(&mut self, key: &str, id: i64, token: u64) -> (AckOutcome, bool) {
        let Some((key_arc, state)) = self.keys.get_key_value(key) else {
            return (AckOutcome::Gone, false);
        };
        let key_arc = key_arc.clone();
        let Some(at) = state.records.iter().position(|r| r.id == id) else {
            return (AckOutcome::Gone, false);
        };
        let holder = state.records[at].holder;
        if holder.is_some_and(|h| h.token != token) {
            return (AckOutcome::HeldElsewhere, false);
        }
        let Some(state) = self.keys.get_mut(key) else {
            return (AckOutcome::Gone, false);
        };
        let Some(removed) = state.records.remove(at) else {
            return (AckOutcome::Gone, false);
        };
        self.records = self.records.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(removed.payload.len());
        let mut became_ready = false;
        if at < state.handed {
            state.handed -= 1;
            if state.handed == 0 {
                if let Some(owner) = state.owner.take()
                    && let Some(s) = self.streams.get_mut(&owner)
                {
                    s.owned.remove(key);
                }
                if !state.records.is_empty() {
                    self.ready.push_back(key_arc);
                    became_ready = true;
                }
            }
        }
        // A record acked while released (not handed out) leaves stale list entries behind,
        // which are skipped when taken.
        if state.records.is_empty() {
            self.keys.remove(key);
        }
        (AckOutcome::Removed, became_ready)
    }

    /// Releases a delivery (nack, or a batch that was not handed over): the record, and the
    /// key's later records handed to the same stream, become takeable again, before the key's
    /// other records. `uncount` takes these deliveries back from the attempt counts (they
    /// were never recorded). Returns whether records became takeable.
    pub(crate) fn release(&mut self, key: &str, id: i64, token: u64, uncount: bool) -> bool {
        let Some((key_arc, state)) = self.keys.get_key_value(key) else {
            return false;
        };
        let key_arc = key_arc.clone();
        let Some(at) = state
            .records
            .iter()
            .take(state.handed)
            .position(|r| r.id == id)
        else {
            return false;
        };
        if state.records[at].holder.is_none_or(|h| h.token != token) {
            return false;
        }
        let Some(state) = self.keys.get_mut(key) else {
            return false;
        };
        let handed = state.handed;
        for record in state.records.range_mut(at..handed) {
            record.holder = None;
            if uncount {
                record.attempts = record.attempts.saturating_sub(1);
            }
        }
        state.handed = at;
        let owner = state.owner;
        if at == 0 {
            state.owner = None;
            if let Some(owner) = owner
                && let Some(s) = self.streams.get_mut(&owner)
            {
                s.owned.remove(key);
            }
            self.ready.push_front(key_arc);
        } else if let Some(owner) = owner
            && let Some(s) = self.streams.get_mut(&owner)
        {
            s.more.push_front(key_arc);
        }
        true
    }
}

#[cfg(test)]
mod tests;
