//! Numbering a batch, the same in both dialects: which events are new, and which seq each
//! new one takes.

use crate::Appended;
use roomcast_schemas::{FanoutMessage, InboundEvent};
use std::collections::{HashMap, HashSet};

/// Messages already stored, by `(from, id)`.
pub(crate) type Existing<'a> = HashMap<(&'a str, &'a str), FanoutMessage>;

/// Rooms of the events that are not known duplicates: the rooms that may get new seqs.
pub(crate) fn rooms_to_number<'a>(
    events: &'a [InboundEvent],
    existing: &Existing<'a>,
) -> HashSet<&'a str> {
    events
        .iter()
        .filter(|e| !existing.contains_key(&(e.from.as_str(), e.id.as_str())))
        .map(|e| e.room.as_str())
        .collect()
}

/// The outcome of numbering a batch.
pub(crate) struct Plan<'a> {
    /// One entry per event, in batch order.
    pub(crate) results: Vec<Appended>,
    /// The rooms that got new messages, with their new last seq.
    pub(crate) last_seqs: HashMap<&'a str, u64>,
}

impl Plan<'_> {
    pub(crate) fn new_messages(&self) -> impl Iterator<Item = &FanoutMessage> {
        self.results.iter().filter_map(|appended| match appended {
            Appended::New(message) => Some(message),
            Appended::Duplicate(_) => None,
        })
    }
}

/// Numbers a batch, in order: a known `(from, id)` (stored before or earlier in the batch)
/// is a duplicate of its stored message; any other event takes its room's next seq.
/// `last_seqs` holds the current last seq of every room that may get a new message.
pub(crate) fn plan<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_schemas::{ENVELOPE_VERSION, EventId, EventName, RoomName, UserId};
    use serde_json::value::RawValue;

    fn event(room: &str, from: &str, id: &str) -> InboundEvent {
        InboundEvent {
            v: ENVELOPE_VERSION,
            id: EventId::new(id).unwrap(),
            room: RoomName::new(room).unwrap(),
            event: EventName::new("say").unwrap(),
            from: UserId::new(from).unwrap(),
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
