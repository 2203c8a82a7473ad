//! The settings in a broker URL's query (`?name=value&…`): split and percent-decoded with the
//! `url` crate, each name checked against the backend's known settings.

use thiserror::Error;

/// A broker URL setting that cannot be used (see [`BrokerError::Setting`](crate::BrokerError::Setting)).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingError {
    /// The URL names a setting the backend does not have.
    #[error("unknown {backend} URL setting `{key}`; known: {known}")]
    UnknownKey {
        /// The backend whose URL it is (`RabbitMQ`, `Kafka`).
        backend: &'static str,
        /// The unknown name, percent-decoded.
        key: String,
        /// The names the backend knows, comma-separated.
        known: &'static str,
    },
    /// A setting's value is malformed or out of range.
    #[error("{backend} URL setting `{key}={value}`: expected {expected}")]
    BadValue {
        /// The backend whose URL it is (`RabbitMQ`, `Kafka`).
        backend: &'static str,
        /// The setting's name.
        key: String,
        /// The value given, percent-decoded.
        value: String,
        /// What the setting accepts.
        expected: String,
    },
}

/// The `name=value` pairs of `query` (the part after `?`, without the `#` fragment),
/// percent-decoded, in order; a name without `=` has an empty value.
#[cfg(any(feature = "rabbitmq", feature = "kafka", test))]
pub(crate) fn pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::pairs;

    #[test]
    fn values_are_percent_decoded() {
        assert_eq!(
            pairs("prefix=rc%2Etest&a%5Fb=x%20y&flag"),
            vec![
                ("prefix".to_owned(), "rc.test".to_owned()),
                ("a_b".to_owned(), "x y".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert!(pairs("").is_empty());
    }
}
