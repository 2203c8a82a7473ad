//! Commits: the lowest unacked offset, with the offsets acked above it in the metadata.

use super::partition::Part;
use super::*;

/// Commits the acked progress of every partition that advanced.
pub(super) fn commit_progress(
    consumer: &BaseConsumer<Context>,
    shared: &StreamShared,
    topic: &str,
    mode: CommitMode,
) {
    let mut list = TopicPartitionList::new();
    {
        let mut state = lock(&shared.state);
        for (partition, part) in &mut state.parts {
            if part.changed {
                add_commit(&mut list, topic, *partition, part);
            }
        }
    }
    if list.count() > 0
        && let Err(error) = consumer.commit(&list, mode)
    {
        tracing::debug!(%error, "kafka: committing offsets failed");
        let mut state = lock(&shared.state);
        for element in list.elements() {
            if let Some(part) = state.parts.get_mut(&element.partition()) {
                part.changed = true;
            }
        }
    }
}

/// Adds `part`'s commit to `list` and marks it committed.
pub(super) fn add_commit(
    list: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    part: &mut Part,
) {
    let Some((position, metadata)) = part.commit_entry() else {
        return;
    };
    if list
        .add_partition_offset(topic, partition, Offset::Offset(position))
        .is_err()
    {
        return;
    }
    if let Some(mut element) = list.find_partition(topic, partition) {
        element.set_metadata(metadata);
    }
    part.changed = false;
}

/// Marks commit metadata written by this backend.
pub(super) const ACKED_TAG: &str = "roomcast-acked:";
/// Longest commit metadata written (brokers limit it, Kafka to 4096 bytes by default).
pub(super) const ACKED_MAX: usize = 3500;

/// Encodes offsets acked above `position` as comma-separated ranges of distances from it
/// (`3,5-9`); offsets that do not fit are left out (they are delivered again).
pub(super) fn encode_acked(position: i64, acked: &BTreeSet<i64>) -> String {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for offset in acked.range(position..) {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == *offset => *end = *offset,
            _ => ranges.push((*offset, *offset)),
        }
    }
    let mut out = String::new();
    if ranges.is_empty() {
        return out;
    }
    out.push_str(ACKED_TAG);
    for (i, (start, end)) in ranges.iter().enumerate() {
        let item = if start == end {
            format!("{}", start - position)
        } else {
            format!("{}-{}", start - position, end - position)
        };
        if out.len() + item.len() + 1 > ACKED_MAX {
            break;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out
}

/// Decodes [`encode_acked`]'s metadata; anything else means no offsets.
pub(super) fn decode_acked(position: i64, metadata: &str) -> BTreeSet<i64> {
    let mut acked = BTreeSet::new();
    let Some(ranges) = metadata.strip_prefix(ACKED_TAG) else {
        return acked;
    };
    for item in ranges.split(',').filter(|item| !item.is_empty()) {
        let (start, end) = match item.split_once('-') {
            Some((start, end)) => (start.parse::<i64>(), end.parse::<i64>()),
            None => (item.parse::<i64>(), item.parse::<i64>()),
        };
        let (Ok(start), Ok(end)) = (start, end) else {
            return BTreeSet::new();
        };
        if start < 0 || end < start || end - start > 1_000_000 {
            return BTreeSet::new();
        }
        acked.extend((start..=end).map(|d| position + d));
    }
    acked
}

#[cfg(test)]
mod tests {
    use super::{decode_acked, encode_acked};
    use std::collections::BTreeSet;

    #[test]
    fn acked_offsets_round_trip_through_commit_metadata() {
        let acked: BTreeSet<i64> = [101, 102, 103, 107, 110, 111].into_iter().collect();
        let metadata = encode_acked(100, &acked);
        assert_eq!(metadata, "roomcast-acked:1-3,7,10-11");
        assert_eq!(decode_acked(100, &metadata), acked);
        assert_eq!(encode_acked(100, &BTreeSet::new()), "");
        assert!(decode_acked(5, "").is_empty());
        assert!(decode_acked(5, "something else").is_empty());
        assert!(decode_acked(5, "roomcast-acked:3-1").is_empty());
        let many: BTreeSet<i64> = (0..5000).map(|i| 1000 + 2 * i).collect();
        assert!(encode_acked(999, &many).len() <= 3500);
    }
}
