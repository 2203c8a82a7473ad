//! The broker contract suite, run on the Kafka backend against a real Kafka-protocol broker
//! (`ROOMCAST_TEST_KAFKA_URL`, e.g. from `scripts/tansu start`), with fresh topics per broker.
#![cfg(feature = "kafka")]

use async_trait::async_trait;
use roomcast_broker::Broker;
use roomcast_broker::testkit::{BrokerFactory, kafka_test_url, unique, with_settings};
use std::sync::{Arc, Mutex};

/// Connects Kafka brokers on randomly prefixed topics, remembering which broker uses which.
struct Kafka {
    /// `None` when no broker is reachable (outside CI): every test then returns early.
    url: Option<String>,
    /// Settings appended to every broker URL.
    extra: &'static str,
    prefixes: Mutex<Vec<(usize, String)>>,
}

impl Kafka {
    fn new() -> Self {
        Kafka {
            url: None,
            extra: "",
            prefixes: Mutex::new(Vec::new()),
        }
    }

    async fn open(&self, url: &str, prefix: String) -> Arc<dyn Broker> {
        let broker = roomcast_broker::connect(&with_settings(
            url,
            &format!("prefix={prefix}&partitions=3{}", self.extra),
        ))
        .await
        .unwrap_or_else(|e| panic!("connect to kafka: {e}"));
        let id = Arc::as_ptr(&broker).cast::<()>() as usize;
        self.prefixes.lock().expect("prefixes").push((id, prefix));
        broker
    }
}

#[async_trait]
impl BrokerFactory for Kafka {
    async fn fresh(&self) -> Arc<dyn Broker> {
        let url = self.url.as_deref().expect("a reachable broker");
        self.open(url, unique("rc")).await
    }

    async fn reopen(&self, prev: Arc<dyn Broker>) -> Arc<dyn Broker> {
        let url = self.url.as_deref().expect("a reachable broker");
        let id = Arc::as_ptr(&prev).cast::<()>() as usize;
        let prefix = {
            let mut prefixes = self.prefixes.lock().expect("prefixes");
            let at = prefixes
                .iter()
                .position(|(known, _)| *known == id)
                .expect("reopen a broker made by this factory");
            prefixes.remove(at).1
        };
        prev.close().await;
        drop(prev);
        self.open(url, prefix).await
    }
}

// Each contract test runs, or is skipped (outside CI) when no broker is reachable; with the
// default `key_window` (a room's records go out in batches) and with one record per room.
roomcast_broker::contract_tests!(optional async {
    kafka_test_url().await.map(|url| Kafka {
        url: Some(url),
        ..Kafka::new()
    })
});

mod key_window_1 {
    use super::Kafka;
    use roomcast_broker::testkit::kafka_test_url;

    roomcast_broker::contract_tests!(optional async {
        kafka_test_url().await.map(|url| Kafka {
            url: Some(url),
            extra: "&key_window=1",
            ..Kafka::new()
        })
    });
}
