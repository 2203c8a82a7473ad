//! The worker's settings and its retry backoff.

use super::WorkerError;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// Settings of a [`Worker`]; [`Default`] suits production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Consumer group to join; workers of one group share the inbound stream.
    pub group: String,
    /// Most deliveries processed (and stored in one transaction) per batch.
    pub batch_max: usize,
    /// Processing attempts per event before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry backoff; it doubles with each failure, with jitter.
    pub retry_initial: Duration,
    /// Longest retry backoff.
    pub retry_max: Duration,
    /// Most messages of one room published as one fan-out record (a JSON array); 1 publishes
    /// every message on its own.
    pub fanout_batch: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            group: "roomcast-workers".to_owned(),
            batch_max: 256,
            max_attempts: 5,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            fanout_batch: 64,
        }
    }
}

impl WorkerConfig {
    pub(super) fn validate(&self) -> Result<(), WorkerError> {
        if self.group.is_empty() {
            return Err(WorkerError::Config("group must not be empty".to_owned()));
        }
        if self.batch_max == 0 {
            return Err(WorkerError::Config(
                "batch_max must be at least 1".to_owned(),
            ));
        }
        if self.fanout_batch == 0 {
            return Err(WorkerError::Config(
                "fanout_batch must be at least 1".to_owned(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(WorkerError::Config(
                "max_attempts must be at least 1".to_owned(),
            ));
        }
        if self.retry_initial > self.retry_max {
            return Err(WorkerError::Config(
                "retry_initial must not exceed retry_max".to_owned(),
            ));
        }
        Ok(())
    }

    /// The delays between successive retries: `retry_initial`, doubling with each failure up
    /// to `retry_max`, each jittered down by up to half ("equal jitter"), so that many
    /// workers retrying at once spread out. Never ends.
    pub fn retry_delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        // backon's jitter adds up to the delay itself: start from half the delays to land in
        // `delay/2 ..= delay`.
        ExponentialBuilder::new()
            .with_min_delay(self.retry_initial / 2)
            .with_max_delay(self.retry_max / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The backoff before retry number `failures` (1 for the first) of [`retry_delays`].
    ///
    /// [`retry_delays`]: WorkerConfig::retry_delays
    pub fn backoff(&self, failures: u32) -> Duration {
        // Past 64 doublings every delay is capped at `retry_max`.
        let index = failures.saturating_sub(1).min(64) as usize;
        self.retry_delays().nth(index).unwrap_or(self.retry_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::retry::sleep_unless_cancelled;
    use tokio_util::sync::CancellationToken;

    fn config(initial_ms: u64, max_ms: u64) -> WorkerConfig {
        WorkerConfig {
            retry_initial: Duration::from_millis(initial_ms),
            retry_max: Duration::from_millis(max_ms),
            ..WorkerConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_equal_jitter() {
        let config = config(100, 1_000);
        for (failures, full) in [
            (0, 100),
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (60, 1_000),
        ] {
            for _ in 0..50 {
                let delay = config.backoff(failures).as_millis();
                assert!(
                    (full / 2..=full).contains(&delay),
                    "failure {failures}: {delay}ms not in {full}/2..={full}"
                );
            }
        }
        assert_eq!(self::config(0, 0).backoff(3), Duration::ZERO);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let bad = [
            WorkerConfig {
                group: String::new(),
                ..WorkerConfig::default()
            },
            WorkerConfig {
                batch_max: 0,
                ..WorkerConfig::default()
            },
            WorkerConfig {
                max_attempts: 0,
                ..WorkerConfig::default()
            },
            config(10, 5),
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(WorkerError::Config(_))),
                "{config:?}"
            );
        }
        assert!(WorkerConfig::default().validate().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_sequence_sums_as_expected_under_paused_time() {
        // Five consecutive failures with the default policy wait between 0.75 s and 1.5 s
        // in total (100 + 200 + 400 + 800 ms at most, before the fifth).
        let config = WorkerConfig::default();
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        for failures in 1..=4 {
            assert!(sleep_unless_cancelled(&shutdown, config.backoff(failures)).await);
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(750) && waited <= Duration::from_millis(1_500),
            "{waited:?}"
        );
    }
}
