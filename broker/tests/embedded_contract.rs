//! The broker contract suite, run on the embedded broker (a fresh directory per broker).

use async_trait::async_trait;
use roomcast_broker::testkit::BrokerFactory;
use roomcast_broker::{Broker, EmbeddedBroker, EmbeddedOptions};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

/// Opens embedded brokers in temporary directories, remembering which broker uses which.
struct Embedded {
    options: EmbeddedOptions,
    dirs: Mutex<Vec<(usize, TempDir)>>,
}

impl Embedded {
    fn new(options: EmbeddedOptions) -> Self {
        Embedded {
            options,
            dirs: Mutex::new(Vec::new()),
        }
    }

    async fn open(&self, dir: TempDir) -> Arc<dyn Broker> {
        let broker: Arc<dyn Broker> = EmbeddedBroker::open_with(dir.path(), self.options.clone())
            .await
            .expect("open the embedded broker");
        let id = Arc::as_ptr(&broker).cast::<()>() as usize;
        self.dirs.lock().expect("dirs").push((id, dir));
        broker
    }
}

#[async_trait]
impl BrokerFactory for Embedded {
    async fn fresh(&self) -> Arc<dyn Broker> {
        let dir = tempfile::tempdir().expect("temporary directory");
        self.open(dir).await
    }

    async fn reopen(&self, prev: Arc<dyn Broker>) -> Arc<dyn Broker> {
        let id = Arc::as_ptr(&prev).cast::<()>() as usize;
        let dir = {
            let mut dirs = self.dirs.lock().expect("dirs");
            let at = dirs
                .iter()
                .position(|(known, _)| *known == id)
                .expect("reopen a broker made by this factory");
            dirs.remove(at).1
        };
        prev.close().await;
        drop(prev);
        self.open(dir).await
    }
}

/// Production settings.
mod default_window {
    use super::*;
    roomcast_broker::contract_tests!(Embedded::new(EmbeddedOptions::default()));
}

/// A window of a few records, so that most records go through the log before delivery.
mod small_window {
    use super::*;
    roomcast_broker::contract_tests!(Embedded::new(EmbeddedOptions {
        window_records: 4,
        window_bytes: 4096,
        ..EmbeddedOptions::default()
    }));
}
