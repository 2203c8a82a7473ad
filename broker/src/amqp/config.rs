//! The RabbitMQ backend's settings, read from the broker URL.

use crate::url_settings::{SettingError, pairs};
use crate::{BrokerError, redact_url};
use lapin::uri::AMQPUri;
use std::str::FromStr;
use std::time::Duration;

/// The type of the durable queues (inbound shards and dead letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueType {
    /// Raft-replicated queues; they count redeliveries (`x-delivery-count`).
    Quorum,
    /// Classic durable queues; redeliveries are only flagged, not counted.
    Classic,
}

impl QueueType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Settings of one RabbitMQ broker instance.
#[derive(Debug, Clone)]
pub(crate) struct AmqpConfig {
    /// Where to connect, without Roomcast's own query parameters.
    pub(crate) uri: AMQPUri,
    /// The URL with its password hidden, for messages.
    pub(crate) redacted: String,
    /// Namespace of every exchange and queue.
    pub(crate) prefix: String,
    /// Number of inbound shard queues.
    pub(crate) shards: u16,
    /// Type of the durable queues.
    pub(crate) queue_type: QueueType,
    /// Unacked deliveries per shard consumer.
    pub(crate) prefetch: u16,
    /// Unsettled deliveries of one key that a stream hands out at once.
    pub(crate) key_window: u32,
    /// The most inbound records of one room packed into one message.
    pub(crate) pack: usize,
    /// How long a publish waits for the broker's confirm.
    pub(crate) confirm_timeout: Duration,
    /// How long an operation on the connection (connect, declare, bind) may take.
    pub(crate) op_timeout: Duration,
    /// Longest pause between reconnection attempts.
    pub(crate) reconnect_max: Duration,
}

const DEFAULT_PREFIX: &str = "roomcast";
const DEFAULT_SHARDS: u16 = 16;
const DEFAULT_PREFETCH: u16 = 64;
const DEFAULT_HEARTBEAT_S: u16 = 10;
const MAX_PREFIX_LEN: usize = 100;

impl AmqpConfig {
    /// Reads `amqp[s]://user:pass@host:port/vhost?param=value&…`.
    pub(crate) fn parse(url: &str) -> Result<Self, BrokerError> {
        let redacted = redact_url(url);
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let base = base.split('#').next().unwrap_or(base);
        let mut uri = AMQPUri::from_str(base).map_err(|e| {
            // The parser's message may quote the URL, password included.
            let reason = if e.contains(base) {
                "malformed URL".to_owned()
            } else {
                e
            };
            BrokerError::Config(format!("invalid AMQP URL `{redacted}`: {reason}"))
        })?;
        let mut config = AmqpConfig {
            uri: uri.clone(),
            redacted: redacted.clone(),
            prefix: DEFAULT_PREFIX.to_owned(),
            shards: DEFAULT_SHARDS,
            queue_type: QueueType::Quorum,
            prefetch: DEFAULT_PREFETCH,
            key_window: 64,
            pack: 64,
            confirm_timeout: Duration::from_secs(10),
            op_timeout: Duration::from_secs(15),
            reconnect_max: Duration::from_secs(10),
        };
        let query = query.split('#').next().unwrap_or(query);
        for (name, value) in pairs(query) {
            let value = value.as_str();
            let bad = |expected: &str| SettingError::BadValue {
                backend: "RabbitMQ",
                key: name.clone(),
                value: value.to_owned(),
                expected: expected.to_owned(),
            };
            match name.as_str() {
                "prefix" => {
                    let ok = !value.is_empty()
                        && value.len() <= MAX_PREFIX_LEN
                        && value
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
                        && !value.starts_with("amq.");
                    if !ok {
                        return Err(BrokerError::from(bad(
                            "1-100 characters of A-Z a-z 0-9 _ - . (not starting with `amq.`)",
                        )));
                    }
                    config.prefix = value.to_owned();
                }
                "shards" => {
                    config.shards = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| bad("a number of shard queues from 1 to 1024"))?;
                }
                "queue_type" => {
                    config.queue_type = match value {
                        "quorum" => QueueType::Quorum,
                        "classic" => QueueType::Classic,
                        _ => return Err(BrokerError::from(bad("`quorum` or `classic`"))),
                    };
                }
                "prefetch" => {
                    config.prefetch = value
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad("a prefetch count from 1 to 65535"))?;
                }
                "key_window" => {
                    config.key_window = value
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad("a positive number of deliveries"))?;
                }
                "pack" => {
                    config.pack = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=4096).contains(n))
                        .ok_or_else(|| bad("a number of records from 1 to 4096"))?;
                }
                "confirm_timeout_ms" => {
                    config.confirm_timeout = millis(value).ok_or_else(|| bad("milliseconds"))?;
                }
                "op_timeout_ms" => {
                    config.op_timeout = millis(value).ok_or_else(|| bad("milliseconds"))?;
                }
                "reconnect_max_ms" => {
                    config.reconnect_max = millis(value).ok_or_else(|| bad("milliseconds"))?;
                }
                "heartbeat" => {
                    uri.query.heartbeat =
                        Some(value.parse().map_err(|_| bad("seconds (0 disables)"))?);
                }
                "frame_max" => {
                    uri.query.frame_max = Some(value.parse().map_err(|_| bad("a frame size"))?);
                }
                "channel_max" => {
                    uri.query.channel_max =
                        Some(value.parse().map_err(|_| bad("a number of channels"))?);
                }
                "connection_timeout" => {
                    uri.query.connection_timeout =
                        Some(value.parse().map_err(|_| bad("milliseconds"))?);
                }
                "auth_mechanism" => {
                    uri.query.auth_mechanism = Some(
                        value
                            .parse()
                            .map_err(|_| bad("plain, amqplain, anonymous or external"))?,
                    );
                }
                _ => {
                    return Err(SettingError::UnknownKey {
                        backend: "RabbitMQ",
                        key: name,
                        known: "prefix, shards, queue_type, prefetch, key_window, pack, \
                                confirm_timeout_ms, op_timeout_ms, reconnect_max_ms, heartbeat, \
                                frame_max, channel_max, connection_timeout, auth_mechanism",
                    }
                    .into());
                }
            }
        }
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_S);
        }
        config.uri = uri;
        Ok(config)
    }

    /// The direct exchange of the inbound stream (routing key: shard number).
    pub(crate) fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The inbound shard queue `shard`.
    pub(crate) fn shard_queue(&self, shard: u16) -> String {
        format!("{}.events.{shard}", self.prefix)
    }

    /// The direct exchange of fan-out messages (routing key: room).
    pub(crate) fn fanout_exchange(&self) -> String {
        format!("{}.fanout", self.prefix)
    }

    /// The exchange and the queue of dead letters (same name).
    pub(crate) fn dead_letters(&self) -> String {
        format!("{}.dead-letters", self.prefix)
    }

    /// The `connection_name` client property.
    pub(crate) fn connection_name(&self) -> String {
        format!("roomcast {} pid {}", self.prefix, std::process::id())
    }

    /// The shard queue of `key`: FNV-1a (64 bits) of the key's bytes modulo the shard count.
    /// Part of the topology: every publisher of one prefix must use the same shard count.
    pub(crate) fn shard_of(&self, key: &str) -> u16 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        u16::try_from(hash % u64::from(self.shards)).unwrap_or(0)
    }
}

fn millis(value: &str) -> Option<Duration> {
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_parameters() {
        let config = AmqpConfig::parse("amqp://u:secret@h:5672/%2f").expect("parse");
        assert_eq!(config.prefix, "roomcast");
        assert_eq!(config.shards, 16);
        assert_eq!(config.queue_type, QueueType::Quorum);
        assert_eq!(config.uri.vhost, "/");
        assert_eq!(config.uri.query.heartbeat, Some(10));
        assert_eq!(config.pack, 64);
        let config = AmqpConfig::parse(
            "amqp://u:p@h/v?prefix=rc-1&shards=4&queue_type=classic&prefetch=8&heartbeat=5&pack=1",
        )
        .expect("parse");
        assert_eq!(config.prefix, "rc-1");
        assert_eq!(config.shard_queue(3), "rc-1.events.3");
        assert_eq!(config.shards, 4);
        assert_eq!(config.queue_type, QueueType::Classic);
        assert_eq!(config.prefetch, 8);
        assert_eq!(config.pack, 1);
        assert_eq!(config.uri.query.heartbeat, Some(5));
        assert_eq!(config.uri.vhost, "v");
    }

    #[test]
    fn rejects_bad_parameters_without_leaking_the_password() {
        for (url, name) in [
            ("amqp://u:secret@h/?shards=0", "shards"),
            ("amqp://u:secret@h/?shards=x", "shards"),
            ("amqp://u:secret@h/?queue_type=stream", "queue_type"),
            ("amqp://u:secret@h/?prefix=amq.x", "prefix"),
            ("amqp://u:secret@h/?prefix=a%20b", "prefix"),
            ("amqp://u:secret@h/?prefetch=0", "prefetch"),
            ("amqp://u:secret@h/?pack=0", "pack"),
            ("amqp://u:secret@h/?pack=4097", "pack"),
        ] {
            match AmqpConfig::parse(url) {
                Err(BrokerError::Setting(error @ SettingError::BadValue { .. })) => {
                    assert!(matches!(&error, SettingError::BadValue { key, .. } if key == name));
                    assert!(!error.to_string().contains("secret"), "{error}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        match AmqpConfig::parse("http://u:secret@h/") {
            Err(BrokerError::Config(message)) => assert!(!message.contains("secret"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_unknown_parameters_by_name() {
        match AmqpConfig::parse("amqp://u:secret@h/?prefix=x&bog%75s=1") {
            Err(BrokerError::Setting(SettingError::UnknownKey { key, .. })) => {
                assert_eq!(key, "bogus");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parameters_are_percent_decoded() {
        let config = AmqpConfig::parse("amqp://u:p@h/%2f?prefix=rc%2E1&queue%5Ftype=classic")
            .expect("parse");
        assert_eq!(config.prefix, "rc.1");
        assert_eq!(config.queue_type, QueueType::Classic);
        assert_eq!(config.uri.vhost, "/");
    }

    #[test]
    fn shards_are_stable() {
        let config = AmqpConfig::parse("amqp://h/?shards=16").expect("parse");
        assert_eq!(config.shard_of("room-a"), config.shard_of("room-a"));
        let spread: std::collections::HashSet<u16> = (0..200)
            .map(|i| config.shard_of(&format!("room-{i}")))
            .collect();
        assert_eq!(spread.len(), 16);
    }
}
