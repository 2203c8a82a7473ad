//! The bookkeeping of one partition assigned to a stream, and the stream's state.

use super::offsets::encode_acked;
use super::*;

/// What the attempts topic holds about newly assigned partitions.
#[derive(Default)]
pub(super) struct Loaded {
    /// Delivery counters per partition and offset.
    pub(super) attempts: HashMap<i32, HashMap<i64, u32>>,
    /// Offsets acked above the committed position, as left by the previous owner.
    pub(super) acked: HashMap<i32, BTreeSet<i64>>,
    /// The previous owner's position: every offset below it is acked, even when its last
    /// commit failed (a rebalance under way, say).
    pub(super) acked_below: HashMap<i32, i64>,
}

/// A fetched record.
#[derive(Clone)]
pub(super) struct Record {
    pub(super) offset: i64,
    pub(super) key: Arc<str>,
    /// The record's payload, or the records packed into it: each is a delivery of its own,
    /// and the offset is acked with the last of them.
    pub(super) payloads: Arc<[Bytes]>,
    /// The first record fetched after the partition was assigned: it may have been
    /// delivered before by another stream or process.
    pub(super) resume: bool,
}

/// A partition assigned to the stream.
pub(super) struct Part {
    /// Distinguishes this assignment from earlier ones of the same partition.
    pub(super) generation: u64,
    /// Fetched and not handed out, in offset order (nacked records come back here).
    pub(super) pending: VecDeque<Record>,
    /// Handed out and not settled, by offset.
    pub(super) delivered: BTreeMap<i64, Handed>,
    /// Tells this partition's deliveries apart (a record handed out again gets a new token).
    pub(super) next_token: u64,
    /// Keys with a delivery in hand (how many).
    pub(super) busy: HashMap<Arc<str>, u32>,
    /// Fetched and not acked.
    pub(super) unacked: BTreeSet<i64>,
    /// The offset after the last fetched record.
    pub(super) next_fetch: Option<i64>,
    /// Known delivery counts.
    pub(super) attempts: HashMap<i64, u32>,
    /// Offsets that may have a counter in the attempts topic.
    pub(super) durable: HashSet<i64>,
    /// Whether the next fetched record is the resume point.
    pub(super) resume: bool,
    /// Acked offsets at or above the position (listed in the commit's metadata so that a
    /// new owner does not deliver them again).
    pub(super) acked: BTreeSet<i64>,
    /// Offsets the previous owner acked above its committed position (from the commit
    /// metadata): skipped when fetched.
    pub(super) skip: BTreeSet<i64>,
    /// Offsets below this one were acked by an earlier owner: skipped when fetched.
    pub(super) skip_below: i64,
    /// Whether acks happened since the last commit.
    pub(super) changed: bool,
}

impl Part {
    /// The offset to commit: everything before it is acked.
    pub(super) fn position(&self) -> Option<i64> {
        self.unacked.first().copied().or(self.next_fetch)
    }

    /// The commit of this partition: its position and the acked offsets above it.
    pub(super) fn commit_entry(&mut self) -> Option<(i64, String)> {
        let position = self.position()?;
        self.acked = self.acked.split_off(&position);
        Some((position, encode_acked(position, &self.acked)))
    }

    pub(super) fn insert_pending(&mut self, record: Record) {
        let at = self.pending.partition_point(|r| r.offset < record.offset);
        self.pending.insert(at, record);
    }

    /// Marks `record` handed out; returns the delivery's token.
    pub(super) fn hand_out(&mut self, record: &Record) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        self.delivered.insert(
            record.offset,
            Handed {
                record: Record {
                    resume: false,
                    ..record.clone()
                },
                token,
                unacked: record.payloads.len(),
            },
        );
        *self.busy.entry(record.key.clone()).or_insert(0) += 1;
        token
    }

    /// Takes back the delivery `token` of `offset`; `None` if it is settled already (or the
    /// record was handed out again since).
    pub(super) fn take_delivered(&mut self, offset: i64, token: u64) -> Option<Record> {
        if self.delivered.get(&offset)?.token != token {
            return None;
        }
        self.remove_delivered(offset)
    }

    /// Forgets the delivery of `offset`, whoever holds it.
    pub(super) fn remove_delivered(&mut self, offset: i64) -> Option<Record> {
        let handed = self.delivered.remove(&offset)?;
        if let Some(count) = self.busy.get_mut(&handed.record.key) {
            *count -= 1;
            if *count == 0 {
                self.busy.remove(&handed.record.key);
            }
        }
        Some(handed.record)
    }

    /// Puts the delivery `token` of `offset` back in the buffer, with the later deliveries of
    /// its key (the contract's "a nack releases the key's later deliveries"), so that the key's
    /// records are handed out again in order. Returns how many records went back, 0 if the
    /// delivery was settled already.
    pub(super) fn release(&mut self, offset: i64, token: u64) -> usize {
        let Some(record) = self.take_delivered(offset, token) else {
            return 0;
        };
        let later: Vec<(i64, u64)> = self
            .delivered
            .range(offset + 1..)
            .filter(|(_, handed)| handed.record.key == record.key)
            .map(|(offset, handed)| (*offset, handed.token))
            .collect();
        self.insert_pending(record);
        let mut released = 1;
        for (offset, token) in later {
            if let Some(record) = self.take_delivered(offset, token) {
                self.insert_pending(record);
                released += 1;
            }
        }
        released
    }
}

/// A record handed out and not settled.
pub(super) struct Handed {
    pub(super) record: Record,
    pub(super) token: u64,
    /// Its deliveries not acked yet (several for a packed record).
    pub(super) unacked: usize,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) parts: HashMap<i32, Part>,
    pub(super) next_generation: u64,
    /// Rotates the partition a batch starts with.
    pub(super) rotation: usize,
    /// Records in `pending` over all partitions.
    pub(super) buffered: usize,
    /// A fatal consumer error.
    pub(super) failure: Option<String>,
    /// The stream ended; settles fail.
    pub(super) stopped: bool,
}
