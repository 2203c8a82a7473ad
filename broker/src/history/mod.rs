//! The retained history of the inbound stream, for replays (backfill, disaster recovery).
//!
//! Only some backends keep it: Kafka's inbound topic is the history (retention permitting),
//! while the embedded and RabbitMQ backends delete an event once it is processed.
//! [`open_history`] opens a [`HistoryReader`] on a backend that keeps one, and answers
//! [`BrokerError::NoHistory`] for the others, without connecting to them.
//!
//! ```no_run
//! # async fn run() -> Result<(), roomcast_broker::BrokerError> {
//! use roomcast_broker::{ReplayStart, open_history};
//!
//! let start: ReplayStart = "timestamp:2026-01-31T00:00:00Z".parse()?;
//! let mut replay = open_history("kafka://127.0.0.1:9092?prefix=roomcast", &start).await?;
//! loop {
//!     let records = replay.next_batch(500).await?;
//!     if records.is_empty() {
//!         break; // every partition reached its end
//!     }
//!     for record in records {
//!         println!("{}/{} {}", record.partition, record.offset, record.key);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod start;

pub use start::ReplayStart;

use crate::{BrokerError, redact_url};
use async_trait::async_trait;
use bytes::Bytes;

/// A record of the inbound stream's history read by a replay. The records a gateway packed
/// into one broker record are read as records of their own, in their order, with that
/// record's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRecord {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its broker timestamp in milliseconds since the Unix epoch, when it has one.
    pub timestamp: Option<i64>,
    /// Its key (the room); invalid UTF-8 is replaced.
    pub key: String,
    /// Its payload (an inbound event envelope, unless something else published it).
    pub payload: Bytes,
}

/// The range of one partition a replay reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRange {
    /// The partition.
    pub partition: i32,
    /// The first offset read (for a start at a time, the offset the broker's lookup
    /// answered; records before the first one at that time are skipped).
    pub start: i64,
    /// The offset after the last one read: the high watermark when the replay opened.
    pub end: i64,
}

impl ReplayRange {
    /// At most how many records the range holds (fewer when offsets are skipped, e.g. by
    /// transaction markers or compaction).
    pub fn len(&self) -> u64 {
        u64::try_from(self.end - self.start).unwrap_or(0)
    }

    /// Whether the range holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads the inbound stream's history from a start point to its end when the reader opened
/// (records published later are left for the live workers).
///
/// Records come in offset order per partition. A room's records share a partition, so per
/// room they come in publish order; records of different partitions interleave arbitrarily.
#[async_trait]
pub trait HistoryReader: Send {
    /// What is read, for logs (Kafka: the inbound topic).
    fn source(&self) -> &str;

    /// The range read per partition, in partition order (empty ranges included).
    fn ranges(&self) -> &[ReplayRange];

    /// Whether every partition has been read to its end.
    fn is_done(&self) -> bool;

    /// The next records, about `max` of them (a packed record's records come together); empty
    /// once every partition has been read to its end.
    ///
    /// Not cancel-safe: the records a cancelled call was reading are lost, and later calls
    /// fail with [`BrokerError::Closed`] (open a new reader to go on).
    async fn next_batch(&mut self, max: usize) -> Result<Vec<ReplayRecord>, BrokerError>;
}

/// Opens a reader of the history kept by the backend named by `url`, from `start`.
///
/// Backends without retained history (embedded, RabbitMQ, and URLs naming no backend) fail with
/// [`BrokerError::NoHistory`] before connecting to anything; a Kafka URL in a build without the
/// `kafka` feature fails with [`BrokerError::MissingBackend`].
pub async fn open_history(
    url: &str,
    start: &ReplayStart,
) -> Result<Box<dyn HistoryReader>, BrokerError> {
    let url = url.trim();
    let is_kafka = url
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("kafka"));
    if !is_kafka {
        return Err(BrokerError::NoHistory {
            url: redact_url(url),
        });
    }
    #[cfg(feature = "kafka")]
    {
        let reader = crate::kafka::replay::KafkaReplay::open(url, start).await?;
        Ok(Box::new(reader))
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = start;
        Err(BrokerError::MissingBackend {
            backend: "Kafka",
            feature: "kafka",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{ReplayStart, open_history};
    use crate::BrokerError;

    #[tokio::test]
    async fn backends_without_history_say_so_without_connecting() {
        for url in [
            "amqp://guest:s3cret@127.0.0.1:1/%2f",
            "embedded:/nonexistent/roomcast-history-test",
            "",
        ] {
            match open_history(url, &ReplayStart::Beginning).await {
                Err(error @ BrokerError::NoHistory { .. }) => {
                    let message = error.to_string();
                    assert!(message.contains("not a kafka:// URL"), "{message}");
                    assert!(!message.contains("s3cret"), "{message}");
                }
                Err(other) => panic!("{url}: expected NoHistory, got {other}"),
                Ok(_) => panic!("{url}: expected NoHistory, got a reader"),
            }
        }
        assert!(!std::path::Path::new("/nonexistent/roomcast-history-test").exists());
    }
}
