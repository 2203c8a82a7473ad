//! Parsing and validating `kafka://` URLs.

use crate::url_settings::{SettingError, pairs};
use crate::{BrokerError, redact_url};
use std::time::Duration;

/// The settings of a Kafka broker URL; see the module documentation for their meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub(crate) bootstrap: String,
    pub(crate) prefix: String,
    pub(crate) partitions: i32,
    pub(crate) replication: i32,
    pub(crate) retention_ms: i64,
    pub(crate) retention_bytes: i64,
    pub(crate) fanout_retention_ms: i64,
    pub(crate) create_topics: bool,
    pub(crate) linger_ms: u64,
    pub(crate) batch_size: u64,
    pub(crate) message_timeout_ms: u64,
    pub(crate) revoke_timeout_ms: u64,
    pub(crate) session_timeout_ms: u64,
    pub(crate) fanout_buffer: usize,
    pub(crate) key_window: u32,
    pub(crate) fetch_wait_ms: u64,
    pub(crate) pack: usize,
    pub(crate) pack_window: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: String::new(),
            prefix: "roomcast".to_owned(),
            partitions: 16,
            replication: 1,
            retention_ms: -1,
            retention_bytes: -1,
            fanout_retention_ms: 600_000,
            create_topics: true,
            linger_ms: 2,
            batch_size: 1_000_000,
            message_timeout_ms: 10_000,
            revoke_timeout_ms: 15_000,
            session_timeout_ms: 10_000,
            fanout_buffer: 4096,
            key_window: 64,
            fetch_wait_ms: 100,
            pack: 64,
            pack_window: 2,
        }
    }
}

impl KafkaConfig {
    /// Parses `kafka://host:port[,host:port…][/][?name=value&…]`.
    pub(crate) fn parse(url: &str) -> Result<KafkaConfig, BrokerError> {
        let shown = redact_url(url);
        let rest = url
            .split_once("://")
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("kafka"))
            .map(|(_, rest)| rest)
            .ok_or_else(|| {
                BrokerError::Config(format!(
                    "`{shown}` is not a Kafka URL; expected kafka://host:port[,host:port…]?…"
                ))
            })?;
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, query),
            None => (rest, ""),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains('@') {
            return Err(BrokerError::Config(format!(
                "`{shown}`: credentials in Kafka URLs are not supported"
            )));
        }
        if authority.contains('/') {
            return Err(BrokerError::Config(format!(
                "`{shown}`: a Kafka URL has no path; settings go in the query (?prefix=…)"
            )));
        }
        let mut hosts = Vec::new();
        for host in authority.split(',') {
            let valid = host
                .rsplit_once(':')
                .is_some_and(|(name, port)| !name.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(BrokerError::Config(format!(
                    "`{shown}`: `{host}` is not host:port"
                )));
            }
            hosts.push(host);
        }
        let mut settings = KafkaConfig {
            bootstrap: hosts.join(","),
            ..KafkaConfig::default()
        };
        // The bootstrap list is not one host, so only the query goes through the `url` crate.
        let query = query.split('#').next().unwrap_or(query);
        for (name, value) in pairs(query) {
            settings.set(&name, &value)?;
        }
        Ok(settings)
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), SettingError> {
        match name {
            "prefix" => {
                let valid = !value.is_empty()
                    && value.len() <= 180
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !valid {
                    return Err(bad(name, value, "1 to 180 characters of [A-Za-z0-9._-]"));
                }
                self.prefix = value.to_owned();
            }
            "partitions" => self.partitions = number(name, value, 1, 100_000)?,
            "replication" => self.replication = number(name, value, 1, 100)?,
            "retention_ms" => self.retention_ms = limit(name, value)?,
            "retention_bytes" => self.retention_bytes = limit(name, value)?,
            "fanout_retention_ms" => {
                self.fanout_retention_ms = number(name, value, 1000, i64::MAX)?;
            }
            "create_topics" => {
                self.create_topics = match value {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(bad(name, value, "true or false")),
                }
            }
            "linger_ms" => self.linger_ms = number(name, value, 0, 1000)?,
            "batch_size" => self.batch_size = number(name, value, 1, 2_147_483_647)?,
            "message_timeout_ms" => self.message_timeout_ms = number(name, value, 1000, 900_000)?,
            "revoke_timeout_ms" => self.revoke_timeout_ms = number(name, value, 0, 3_600_000)?,
            "session_timeout_ms" => {
                self.session_timeout_ms = number(name, value, 1000, 3_600_000)?;
            }
            "fanout_buffer" => self.fanout_buffer = number(name, value, 1, 10_000_000)?,
            "key_window" => self.key_window = number(name, value, 1, 100_000)?,
            "fetch_wait_ms" => self.fetch_wait_ms = number(name, value, 1, 60_000)?,
            "pack" => self.pack = number(name, value, 1, 4096)?,
            "pack_window" => self.pack_window = number(name, value, 1, 1024)?,
            _ => {
                return Err(SettingError::UnknownKey {
                    backend: "Kafka",
                    key: name.to_owned(),
                    known: KNOWN,
                });
            }
        }
        Ok(())
    }

    /// The inbound topic.
    pub(crate) fn events_topic(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The fan-out topic.
    pub(crate) fn fanout_topic(&self) -> String {
        format!("{}.fanout", self.prefix)
    }

    /// The dead-letter topic.
    pub(crate) fn dead_letter_topic(&self) -> String {
        format!("{}.dead-letters", self.prefix)
    }

    /// The compacted topic of delivery counters.
    pub(crate) fn attempts_topic(&self) -> String {
        format!("{}.attempts", self.prefix)
    }

    /// The Kafka consumer group of the Roomcast group `group`.
    pub(crate) fn group_id(&self, group: &str) -> String {
        format!("{}.{group}", self.prefix)
    }

    /// How long a publish may take before it fails.
    pub(crate) fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
    }
}

/// The settings a Kafka URL may carry.
const KNOWN: &str = "prefix, partitions, replication, retention_ms, retention_bytes, \
    fanout_retention_ms, create_topics, linger_ms, batch_size, message_timeout_ms, \
    revoke_timeout_ms, session_timeout_ms, fanout_buffer, key_window, fetch_wait_ms, pack, \
    pack_window";

fn bad(name: &str, value: &str, expected: impl Into<String>) -> SettingError {
    SettingError::BadValue {
        backend: "Kafka",
        key: name.to_owned(),
        value: value.to_owned(),
        expected: expected.into(),
    }
}

fn number<T>(name: &str, value: &str, min: T, max: T) -> Result<T, SettingError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match value.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(bad(name, value, format!("a number from {min} to {max}"))),
    }
}

/// A retention limit: -1 (none) or a positive number.
fn limit(name: &str, value: &str) -> Result<i64, SettingError> {
    match value.parse::<i64>() {
        Ok(n) if n == -1 || n > 0 => Ok(n),
        _ => Err(bad(name, value, "-1 (no limit) or a positive number")),
    }
}

#[cfg(test)]
mod tests {
    use super::KafkaConfig;
    use crate::{BrokerError, SettingError};

    #[test]
    fn parses_hosts_and_settings() {
        let settings = KafkaConfig::parse(
            "kafka://a:9092,b:9093/?prefix=rc.test&partitions=3&retention_ms=86400000\
             &create_topics=false&linger_ms=0",
        )
        .expect("valid URL");
        assert_eq!(settings.bootstrap, "a:9092,b:9093");
        assert_eq!(settings.prefix, "rc.test");
        assert_eq!(settings.partitions, 3);
        assert_eq!(settings.retention_ms, 86_400_000);
        assert!(!settings.create_topics);
        assert_eq!(settings.linger_ms, 0);
        assert_eq!(settings.events_topic(), "rc.test.events");
        assert_eq!(settings.group_id("workers"), "rc.test.workers");
        let defaults = KafkaConfig::parse("kafka://localhost:9092").expect("valid URL");
        assert_eq!(defaults.prefix, "roomcast");
        assert_eq!(defaults.partitions, 16);
        assert_eq!(defaults.retention_ms, -1);
        assert_eq!((defaults.pack, defaults.pack_window), (64, 2));
        let packing = KafkaConfig::parse("kafka://h:1?pack=1&pack_window=16").expect("valid URL");
        assert_eq!((packing.pack, packing.pack_window), (1, 16));
    }

    #[test]
    fn settings_are_percent_decoded() {
        let settings =
            KafkaConfig::parse("kafka://h:1?prefix=rc%2Dtest&partitions=%33").expect("valid URL");
        assert_eq!(settings.prefix, "rc-test");
        assert_eq!(settings.partitions, 3);
    }

    #[test]
    fn refuses_unknown_settings_by_name() {
        match KafkaConfig::parse("kafka://h:1?prefix=x&col%6Fur=blue") {
            Err(BrokerError::Setting(SettingError::UnknownKey { key, .. })) => {
                assert_eq!(key, "colour");
            }
            other => panic!("expected an unknown-setting error, got {other:?}"),
        }
    }

    #[test]
    fn refuses_bad_values_by_name() {
        for (url, name) in [
            ("kafka://h:1?partitions=0", "partitions"),
            ("kafka://h:1?partitions=x", "partitions"),
            ("kafka://h:1?prefix=a%2Fb", "prefix"),
            ("kafka://h:1?retention_ms=0", "retention_ms"),
            ("kafka://h:1?create_topics=maybe", "create_topics"),
            ("kafka://h:1?pack=0", "pack"),
            ("kafka://h:1?pack=4097", "pack"),
            ("kafka://h:1?pack_window=0", "pack_window"),
        ] {
            match KafkaConfig::parse(url) {
                Err(BrokerError::Setting(SettingError::BadValue { key, .. })) => {
                    assert_eq!(key, name, "{url}");
                }
                other => panic!("{url}: expected a bad-value error, got {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        for (url, needle) in [
            ("kafka://", "is not host:port"),
            ("kafka://host", "is not host:port"),
            ("kafka://u:secret@h:1", "credentials"),
            ("amqp://h:1", "not a Kafka URL"),
        ] {
            match KafkaConfig::parse(url) {
                Err(BrokerError::Config(message)) => {
                    assert!(message.contains(needle), "{url}: {message}");
                    assert!(!message.contains("secret"), "{url}: {message}");
                }
                other => panic!("{url}: expected a configuration error, got {other:?}"),
            }
        }
    }
}
