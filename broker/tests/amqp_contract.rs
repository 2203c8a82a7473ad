//! The broker contract suite, run on RabbitMQ (`ROOMCAST_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), a fresh prefix per broker. Outside CI the tests
//! skip when RabbitMQ cannot be reached; with `CI=true` they fail.
#![cfg(feature = "rabbitmq")]

mod rabbit {
    use async_trait::async_trait;
    use roomcast_broker::testkit::{BrokerFactory, test_broker_url, unique, with_settings};
    use roomcast_broker::{Broker, amqp};
    use std::sync::{Arc, Mutex};

    /// RabbitMQ on this machine, when `ROOMCAST_TEST_AMQP_URL` is not set.
    const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    /// The RabbitMQ URL of the tests, without query.
    pub(crate) fn base_url() -> String {
        std::env::var("ROOMCAST_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
    }

    /// `base_url()` with `params` added to its query.
    pub(crate) fn url_with(params: &str) -> String {
        with_settings(&base_url(), params)
    }

    /// Whether RabbitMQ accepts TCP connections; see [`test_broker_url`].
    pub(crate) async fn reachable() -> bool {
        test_broker_url("ROOMCAST_TEST_AMQP_URL", Some(DEFAULT_URL), 5672, "")
            .await
            .is_some()
    }

    /// Brokers on fresh prefixes with few shards; deletes their queues and exchanges when
    /// dropped.
    pub(crate) struct Rabbit {
        params: String,
        urls: Mutex<Vec<(usize, String)>>,
        created: Mutex<Vec<String>>,
    }

    impl Rabbit {
        pub(crate) fn new(params: &str) -> Self {
            Rabbit {
                params: params.to_owned(),
                urls: Mutex::new(Vec::new()),
                created: Mutex::new(Vec::new()),
            }
        }

        async fn open(&self, url: String) -> Arc<dyn Broker> {
            let broker = amqp::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connect to RabbitMQ: {e}"));
            let id = Arc::as_ptr(&broker).cast::<()>() as usize;
            self.urls.lock().expect("urls").push((id, url));
            broker
        }
    }

    #[async_trait]
    impl BrokerFactory for Rabbit {
        async fn fresh(&self) -> Arc<dyn Broker> {
            let url = url_with(&format!("prefix={}&{}", unique("rc-test"), self.params));
            self.created.lock().expect("created").push(url.clone());
            self.open(url).await
        }

        async fn reopen(&self, prev: Arc<dyn Broker>) -> Arc<dyn Broker> {
            let id = Arc::as_ptr(&prev).cast::<()>() as usize;
            let url = {
                let mut urls = self.urls.lock().expect("urls");
                let at = urls
                    .iter()
                    .position(|(known, _)| *known == id)
                    .expect("reopen a broker made by this factory");
                urls.remove(at).1
            };
            prev.close().await;
            drop(prev);
            self.open(url).await
        }
    }

    impl Drop for Rabbit {
        fn drop(&mut self) {
            let urls = std::mem::take(&mut *self.created.lock().expect("created"));
            if urls.is_empty() {
                return;
            }
            // Best effort, on a runtime of its own (the test's may be shutting down).
            let cleanup = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    for url in urls {
                        if let Err(e) = amqp::delete_topology(&url).await {
                            eprintln!("cleanup of {url} failed: {e}");
                        }
                    }
                });
            });
            let _ = cleanup.join();
        }
    }
}

roomcast_broker::contract_tests!({
    if !rabbit::reachable().await {
        return;
    }
    rabbit::Rabbit::new("shards=2")
});
