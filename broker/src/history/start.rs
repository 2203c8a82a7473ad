//! Where a replay starts: [`ReplayStart`], parsed from the text of the command line.

use crate::BrokerError;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Where a replay starts reading each partition.
///
/// Parsed from text by [`FromStr`]:
/// - `beginning`: the oldest record each partition still holds;
/// - `offset:N`: offset `N` of every partition;
/// - `offset:P=N,P=N…`: offset `N` of partition `P`, only the partitions listed;
/// - `timestamp:T`: the first record of each partition whose timestamp is at or after `T`,
///   an RFC 3339 date-time (`2026-01-31T12:00:00Z`, `…+02:00`) or milliseconds since the
///   Unix epoch.
///
/// A start before a partition's oldest record starts at the oldest record (retention may have
/// deleted the ones before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStart {
    /// The oldest record of every partition.
    Beginning,
    /// The same offset in every partition.
    Offset(i64),
    /// An offset per partition; partitions not listed are not read.
    Offsets(BTreeMap<i32, i64>),
    /// The first record at or after this time (milliseconds since the Unix epoch, compared
    /// with the records' Kafka timestamps).
    Timestamp(i64),
}

impl fmt::Display for ReplayStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayStart::Beginning => f.write_str("beginning"),
            ReplayStart::Offset(offset) => write!(f, "offset:{offset}"),
            ReplayStart::Offsets(offsets) => {
                f.write_str("offset:")?;
                for (i, (partition, offset)) in offsets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{partition}={offset}")?;
                }
                Ok(())
            }
            ReplayStart::Timestamp(ms) => write!(f, "timestamp:{ms}"),
        }
    }
}

impl FromStr for ReplayStart {
    type Err = BrokerError;

    fn from_str(text: &str) -> Result<ReplayStart, BrokerError> {
        let text = text.trim();
        let invalid = |why: &str| {
            BrokerError::Config(format!(
                "replay start `{text}`: {why}; expected beginning, offset:N, \
                 offset:P=N[,P=N…] or timestamp:(RFC 3339 date-time | Unix milliseconds)"
            ))
        };
        if text.eq_ignore_ascii_case("beginning") {
            return Ok(ReplayStart::Beginning);
        }
        let Some((kind, value)) = text.split_once(':') else {
            return Err(invalid("unknown start"));
        };
        match kind.to_ascii_lowercase().as_str() {
            "offset" if value.contains('=') => {
                let mut offsets = BTreeMap::new();
                for item in value.split(',') {
                    let parsed = item.split_once('=').and_then(|(partition, offset)| {
                        Some((
                            partition.trim().parse::<i32>().ok()?,
                            offset.trim().parse::<i64>().ok()?,
                        ))
                    });
                    match parsed {
                        Some((partition, offset)) if partition >= 0 && offset >= 0 => {
                            if offsets.insert(partition, offset).is_some() {
                                return Err(invalid("a partition is listed twice"));
                            }
                        }
                        _ => return Err(invalid("`P=N` needs a partition and an offset ≥ 0")),
                    }
                }
                Ok(ReplayStart::Offsets(offsets))
            }
            "offset" => match value.trim().parse::<i64>() {
                Ok(offset) if offset >= 0 => Ok(ReplayStart::Offset(offset)),
                _ => Err(invalid("the offset must be a number ≥ 0")),
            },
            "timestamp" => {
                let value = value.trim();
                if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                    return value
                        .parse::<i64>()
                        .map(ReplayStart::Timestamp)
                        .map_err(|_| invalid("the timestamp is out of range"));
                }
                let time = time::OffsetDateTime::parse(
                    value,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|_| invalid("the timestamp is neither RFC 3339 nor Unix milliseconds"))?;
                let ms = time.unix_timestamp_nanos() / 1_000_000;
                match i64::try_from(ms) {
                    Ok(ms) if ms >= 0 => Ok(ReplayStart::Timestamp(ms)),
                    _ => Err(invalid("the timestamp is before 1970")),
                }
            }
            _ => Err(invalid("unknown start")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReplayStart;
    use crate::BrokerError;
    use std::collections::BTreeMap;

    #[test]
    fn parses_every_kind_of_start() {
        let parse = |text: &str| text.parse::<ReplayStart>();
        assert_eq!(parse("beginning").ok(), Some(ReplayStart::Beginning));
        assert_eq!(parse(" Beginning ").ok(), Some(ReplayStart::Beginning));
        assert_eq!(parse("offset:0").ok(), Some(ReplayStart::Offset(0)));
        assert_eq!(parse("offset:1200").ok(), Some(ReplayStart::Offset(1200)));
        assert_eq!(
            parse("offset:0=10, 3=7").ok(),
            Some(ReplayStart::Offsets(BTreeMap::from([(0, 10), (3, 7)])))
        );
        assert_eq!(
            parse("timestamp:1769817600000").ok(),
            Some(ReplayStart::Timestamp(1_769_817_600_000))
        );
        assert_eq!(
            parse("timestamp:2026-01-31T00:00:00Z").ok(),
            Some(ReplayStart::Timestamp(1_769_817_600_000))
        );
        assert_eq!(
            parse("timestamp:2026-01-31T02:00:00.250+02:00").ok(),
            Some(ReplayStart::Timestamp(1_769_817_600_250))
        );
        for start in [
            ReplayStart::Beginning,
            ReplayStart::Offset(5),
            ReplayStart::Offsets(BTreeMap::from([(1, 2), (4, 0)])),
            ReplayStart::Timestamp(1_769_817_600_000),
        ] {
            assert_eq!(parse(&start.to_string()).ok(), Some(start));
        }
    }

    #[test]
    fn rejects_bad_starts_clearly() {
        for (text, needle) in [
            ("", "unknown start"),
            ("end", "unknown start"),
            ("latest:5", "unknown start"),
            ("offset:", "offset must be"),
            ("offset:-1", "offset must be"),
            ("offset:x", "offset must be"),
            ("offset:0=1,0=2", "listed twice"),
            ("offset:0=-1", "P=N"),
            ("offset:a=1", "P=N"),
            ("timestamp:", "neither RFC 3339"),
            ("timestamp:yesterday", "neither RFC 3339"),
            ("timestamp:2026-01-31", "neither RFC 3339"),
            ("timestamp:99999999999999999999", "out of range"),
            ("timestamp:1960-01-01T00:00:00Z", "before 1970"),
        ] {
            match text.parse::<ReplayStart>() {
                Err(BrokerError::Config(message)) => {
                    assert!(message.contains(needle), "{text}: {message}");
                    assert!(message.contains("expected beginning"), "{text}: {message}");
                }
                other => panic!("{text}: expected a configuration error, got {other:?}"),
            }
        }
    }
}
