//! Latency histograms (HDR), delivery bitsets and medians.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Highest latency recorded, in microseconds (larger values are clamped): 5 minutes.
const MAX_MICROS: u64 = 300_000_000;

/// A fresh latency histogram in microseconds, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 ≤ low, high ≥ 2 × low, sigfig ≤ 5): this cannot fail.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Records `micros` into `histogram`, clamped to the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// A histogram shared by many tasks: one lock per shard, a task picks its shard by its index,
/// so that tasks on different threads rarely meet.
#[derive(Debug)]
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl ShardedHistogram {
    /// `shards` histograms (at least one).
    pub fn new(shards: usize) -> Self {
        ShardedHistogram {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    fn shard(&self, key: usize) -> MutexGuard<'_, Histogram<u64>> {
        self.shards[key % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `micros` into the shard of `key`.
    pub fn record(&self, key: usize, micros: u64) {
        record(&mut self.shard(key), micros);
    }

    /// Records a batch of values into the shard of `key` under one lock.
    pub fn record_all(&self, key: usize, micros: &[u64]) {
        let mut shard = self.shard(key);
        for &value in micros {
            record(&mut shard, value);
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            // Same bounds: adding cannot fail.
            let _ = all.add(&*shard);
        }
        all
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram recorded in microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// A histogram as `(value, count)` pairs, to pass between processes.
pub fn histogram_to_pairs(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds `(value, count)` pairs into `histogram`.
pub fn add_pairs(histogram: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        let _ = histogram.record_n(value.clamp(1, MAX_MICROS), count);
    }
}

/// A growable set of small integers.
#[derive(Debug, Clone, Default)]
pub struct BitSet {
    words: Vec<u64>,
    len: u64,
}

impl BitSet {
    /// An empty set with room for `0..capacity` without growing.
    pub fn with_capacity(capacity: u64) -> Self {
        BitSet {
            words: Vec::with_capacity(capacity.div_ceil(64) as usize),
            len: 0,
        }
    }

    /// Inserts `value`; false when it was already present.
    pub fn insert(&mut self, value: u64) -> bool {
        let word = (value / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (value % 64);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.len += u64::from(fresh);
        fresh
    }

    /// Whether `value` is present.
    pub fn contains(&self, value: u64) -> bool {
        self.words
            .get((value / 64) as usize)
            .is_some_and(|w| w & (1u64 << (value % 64)) != 0)
    }

    /// Number of values present.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of values of `self` missing from `other`.
    pub fn missing_from(&self, other: &BitSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| u64::from((w & !other.words.get(i).copied().unwrap_or(0)).count_ones()))
            .sum()
    }

    /// Number of values present that are at least `from`.
    pub fn count_from(&self, from: u64) -> u64 {
        let first = (from / 64) as usize;
        self.words
            .iter()
            .enumerate()
            .skip(first)
            .map(|(i, w)| {
                let w = if i == first {
                    w & (!0u64 << (from % 64))
                } else {
                    *w
                };
                u64::from(w.count_ones())
            })
            .sum()
    }
}

/// The median of `values` (the mean of the two middle ones for an even count); `None` when
/// empty or when a value is not a number.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.to_vec();
    if sorted.is_empty() || sorted.iter().any(|v| v.is_nan()) {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// The harness's clock: nanoseconds since a process-wide epoch (monotonic).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The instant `ns` nanoseconds after the epoch.
    pub fn instant(&self, ns: u64) -> Instant {
        self.epoch + std::time::Duration::from_nanos(ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitset_counts_insertions_missing_and_suffixes() {
        let mut a = BitSet::default();
        assert!(a.insert(3));
        assert!(!a.insert(3));
        assert!(a.insert(130));
        assert_eq!(a.len(), 2);
        let mut b = BitSet::with_capacity(10);
        b.insert(3);
        assert_eq!(a.missing_from(&b), 1);
        assert_eq!(b.missing_from(&a), 0);
        assert_eq!(a.count_from(4), 1);
        assert_eq!(a.count_from(3), 2);
        assert_eq!(a.count_from(131), 0);
        assert!(a.contains(130) && !a.contains(129));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn sharded_histogram_merges_and_summarises() {
        let h = ShardedHistogram::new(4);
        for key in 0..100u64 {
            h.record(key as usize, 1000 + key);
        }
        h.record_all(1, &[5_000]);
        let summary = LatencySummary::of(&h.merged());
        assert_eq!(summary.count, 101);
        assert!((summary.max_ms - 5.0).abs() < 0.01, "{summary:?}");
        let mut copy = new_histogram();
        add_pairs(&mut copy, &histogram_to_pairs(&h.merged()));
        assert_eq!(copy.len(), 101);
    }
}
