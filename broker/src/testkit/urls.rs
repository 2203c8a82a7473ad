//! Test broker URLs from the environment, and random names.

use std::time::Duration;

/// A random name with a readable prefix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `url` with `settings` (`name=value&…`) added to its query.
pub fn with_settings(url: &str, settings: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{settings}")
}

/// `host:port` of a broker URL (`scheme://user:pass@host:port,…/…?…`: the first host), with
/// `default_port` when it names none.
pub fn first_host(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', ',']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

/// The Kafka test broker's URL from `ROOMCAST_TEST_KAFKA_URL`, if it is reachable; see
/// [`test_broker_url`].
pub async fn kafka_test_url() -> Option<String> {
    test_broker_url(
        "ROOMCAST_TEST_KAFKA_URL",
        None,
        9092,
        "start a broker with `export ROOMCAST_TEST_KAFKA_URL=$(scripts/tansu start)`",
    )
    .await
}

/// The URL of a test broker from the environment variable `var` (or `default`), if its first
/// host accepts TCP connections. Otherwise the test fails with `CI=true` (a test never skips a
/// broker silently in CI) and is skipped with a note outside CI; `how` tells how to start one.
pub async fn test_broker_url(
    var: &str,
    default: Option<&str>,
    default_port: u16,
    how: &str,
) -> Option<String> {
    let url = std::env::var(var)
        .ok()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .or_else(|| default.map(str::to_owned));
    let problem = match url {
        Some(url) => {
            let address = first_host(&url, default_port);
            let connected = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(&address),
            )
            .await;
            match connected {
                Ok(Ok(_)) => return Some(url),
                Ok(Err(e)) => format!("the test broker at {address} ({var}) is unreachable: {e}"),
                Err(_) => format!("the test broker at {address} ({var}) did not answer"),
            }
        }
        None => format!("{var} is not set ({how})"),
    };
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("the test broker is required in CI: {problem}");
    }
    eprintln!("skipping: {problem}");
    None
}
