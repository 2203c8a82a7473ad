//! Choosing and opening a backend from a broker URL.

use crate::{Broker, BrokerError, EmbeddedBroker};
use std::path::Path;
use std::sync::Arc;

/// Opens the broker named by `url`:
/// - `embedded:<dir>` (also `embedded://<dir>`): the embedded broker stored in `<dir>`,
///   e.g. `embedded:./data/broker`;
/// - `amqp://…`, `amqps://…`: RabbitMQ (`crate::amqp`, feature `rabbitmq`);
/// - `kafka://…`: Kafka (`crate::kafka`, feature `kafka`).
///
/// A build without a backend's feature answers its URLs with
/// [`BrokerError::MissingBackend`].
///
/// Errors never contain the URL's password.
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>, BrokerError> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(BrokerError::Config(format!(
            "broker URL `{}` has no scheme; expected embedded:<dir>, amqp://… or kafka://…",
            redact_url(url)
        )));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "embedded" => {
            let dir = rest.strip_prefix("//").unwrap_or(rest);
            if dir.is_empty() {
                return Err(BrokerError::Config(
                    "embedded broker URL needs a directory: embedded:<dir>".into(),
                ));
            }
            let broker: Arc<dyn Broker> = EmbeddedBroker::open(Path::new(dir)).await?;
            Ok(broker)
        }
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => crate::amqp::connect(url).await,
        #[cfg(not(feature = "rabbitmq"))]
        "amqp" | "amqps" => Err(BrokerError::MissingBackend {
            backend: "RabbitMQ",
            feature: "rabbitmq",
        }),
        #[cfg(feature = "kafka")]
        "kafka" => crate::kafka::connect(url).await,
        #[cfg(not(feature = "kafka"))]
        "kafka" => Err(BrokerError::MissingBackend {
            backend: "Kafka",
            feature: "kafka",
        }),
        other => Err(BrokerError::Config(format!(
            "unknown broker scheme `{other}` in `{}`; expected embedded:<dir>, amqp://… or kafka://…",
            redact_url(url)
        ))),
    }
}

/// `url` with the password of its `scheme://user:password@host` part replaced by `***`, for
/// logs. URLs without credentials come back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_len = url[start..]
        .find(['/', '?', '#'])
        .unwrap_or(url.len() - start);
    let authority = &url[start..start + authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..start],
        &userinfo[..colon],
        &url[start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[cfg(not(feature = "kafka"))]
    #[tokio::test]
    async fn a_build_without_kafka_says_so() {
        match super::connect("kafka://127.0.0.1:9092").await {
            Err(error @ crate::BrokerError::MissingBackend { .. }) => {
                assert!(
                    error
                        .to_string()
                        .contains("rebuild with the `kafka` feature")
                );
            }
            Err(other) => panic!("expected MissingBackend, got {other}"),
            Ok(_) => panic!("expected MissingBackend, got a broker"),
        }
    }

    #[cfg(not(feature = "rabbitmq"))]
    #[tokio::test]
    async fn a_build_without_rabbitmq_says_so() {
        match super::connect("amqp://127.0.0.1:5672/%2f").await {
            Err(error @ crate::BrokerError::MissingBackend { .. }) => {
                assert!(error.to_string().contains(
                    "this build has no RabbitMQ support; rebuild with the `rabbitmq` feature"
                ));
            }
            Err(other) => panic!("expected MissingBackend, got {other}"),
            Ok(_) => panic!("expected MissingBackend, got a broker"),
        }
    }

    #[test]
    fn hides_passwords_only() {
        assert_eq!(
            redact_url("amqp://user:s3cret@rabbit:5672/vhost"),
            "amqp://user:***@rabbit:5672/vhost"
        );
        assert_eq!(
            redact_url("kafka://u:p@ss@b1:9092,b2:9092"),
            "kafka://u:***@b1:9092,b2:9092"
        );
        assert_eq!(redact_url("amqp://user@rabbit/"), "amqp://user@rabbit/");
        assert_eq!(redact_url("amqp://rabbit/x@y"), "amqp://rabbit/x@y");
        assert_eq!(redact_url("embedded:./data"), "embedded:./data");
        assert_eq!(redact_url("amqp://:pw@h"), "amqp://:***@h");
    }
}
