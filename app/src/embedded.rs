//! Whole processes: the all-in-one app (embedded broker, store, worker and gateway in one
//! process) and a gateway-only process on an external broker.
//!
//! ```no_run
//! # async fn example(config: roomcast_gateway::config::GatewayConfig) -> Result<(), roomcast::embedded::AppError> {
//! use roomcast::embedded::{AppError, run_embedded};
//! use tokio_util::sync::CancellationToken;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.map_err(AppError::Bind)?;
//! let shutdown = CancellationToken::new(); // cancel on SIGINT/SIGTERM
//! run_embedded(config, "./data".into(), None, listener, shutdown).await
//! # }
//! ```

use roomcast_broker::{
    Broker, BrokerError, EmbeddedBroker, EmbeddedOptions, GatewayLink, WorkerLink,
};
use roomcast_gateway::{Gateway, GatewayConfig, GatewayError, serve};
use roomcast_store::{Store, StoreError};
use roomcast_worker::{Worker, WorkerConfig, WorkerError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why an app could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum AppError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The listening socket could not be bound.
    #[error("cannot bind the listening socket: {0}")]
    Bind(#[source] std::io::Error),
    /// The broker could not be opened.
    #[error("opening the broker failed: {0}")]
    Broker(#[from] BrokerError),
    /// The store could not be opened.
    #[error("opening the store failed: {0}")]
    Store(#[from] StoreError),
    /// The gateway could not start or failed while serving.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The worker stopped with an error (the app then shuts down).
    #[error("the worker failed: {0}")]
    Worker(#[from] WorkerError),
    /// The worker stopped although no shutdown was requested, or its task panicked.
    #[error("the worker stopped unexpectedly: {0}")]
    WorkerStopped(String),
}

/// The store URL of the all-in-one app when none is given: `sqlite://<data_dir>/store.db`.
pub fn default_store_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("store.db").display())
}

/// Settings of the all-in-one app's broker and worker; [`Default`] suits production.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// The embedded broker's settings.
    pub broker: EmbeddedOptions,
    /// The worker's settings.
    pub worker: WorkerConfig,
}

/// The all-in-one app: embedded broker in `<data_dir>/broker`, the store, one worker and the
/// gateway, opened and ready to serve.
pub struct EmbeddedApp {
    broker: Arc<EmbeddedBroker>,
    store: Store,
    gateway: Gateway,
    worker: JoinHandle<Result<(), WorkerError>>,
    worker_stop: CancellationToken,
    worker_ended: CancellationToken,
}

impl std::fmt::Debug for EmbeddedApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedApp")
            .field("broker", &self.broker)
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl EmbeddedApp {
    /// Opens the broker and the store (`store_url`, or [`default_store_url`]), starts the
    /// worker and builds the gateway, with default [`AppOptions`]. On error everything opened
    /// so far is closed again.
    pub async fn open(
        config: GatewayConfig,
        data_dir: &Path,
        store_url: Option<&str>,
    ) -> Result<EmbeddedApp, AppError> {
        Self::open_with(config, data_dir, store_url, AppOptions::default()).await
    }

    /// [`EmbeddedApp::open`] with broker and worker `options`.
    pub async fn open_with(
        config: GatewayConfig,
        data_dir: &Path,
        store_url: Option<&str>,
        options: AppOptions,
    ) -> Result<EmbeddedApp, AppError> {
        config.validate().map_err(GatewayError::from)?;
        tokio::fs::create_dir_all(data_dir)
            .await
            .map_err(|source| AppError::DataDir {
                path: data_dir.to_path_buf(),
                source,
            })?;
        let broker = EmbeddedBroker::open_with(&data_dir.join("broker"), options.broker).await?;
        let store_url = store_url.map_or_else(|| default_store_url(data_dir), str::to_owned);
        let store = match Store::connect(&store_url).await {
            Ok(store) => store,
            Err(err) => {
                broker.close().await;
                return Err(err.into());
            }
        };
        let dyn_broker: Arc<dyn Broker> = broker.clone();
        let link = GatewayLink::from_broker(dyn_broker.clone());
        let gateway = match Gateway::new(config, link, store.clone()).await {
            Ok(gateway) => gateway,
            Err(err) => {
                broker.close().await;
                store.close().await;
                return Err(err.into());
            }
        };
        let worker_stop = CancellationToken::new();
        let worker_ended = CancellationToken::new();
        let worker = Worker::new(
            WorkerLink::from_broker(dyn_broker),
            store.clone(),
            options.worker,
        );
        let worker = {
            let stop = worker_stop.clone();
            let ended = worker_ended.clone();
            tokio::spawn(async move {
                let result = worker.run(stop).await;
                ended.cancel();
                result
            })
        };
        Ok(EmbeddedApp {
            broker,
            store,
            gateway,
            worker,
            worker_stop,
            worker_ended,
        })
    }

    /// The gateway.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The message store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The embedded broker.
    pub fn broker(&self) -> &Arc<EmbeddedBroker> {
        &self.broker
    }

    /// Serves on `listener` until `shutdown` is cancelled (or the worker stops on its own),
    /// then stops accepting, closes the sessions (1001), stops the worker and closes the
    /// broker and the store.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let EmbeddedApp {
            broker,
            store,
            gateway,
            worker,
            worker_stop,
            worker_ended,
        } = self;
        let stop_signal = {
            let worker_ended = worker_ended.clone();
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = worker_ended.cancelled() => {
                        tracing::error!("the worker stopped; shutting down");
                    }
                }
            }
        };
        let served = serve(listener, gateway, stop_signal).await;
        let unexpected = worker_ended.is_cancelled() && !worker_stop.is_cancelled();
        worker_stop.cancel();
        let worked = match worker.await {
            Ok(Ok(())) if unexpected => Err(AppError::WorkerStopped(
                "it returned without a shutdown request".to_owned(),
            )),
            Ok(result) => result.map_err(AppError::from),
            Err(err) => Err(AppError::WorkerStopped(err.to_string())),
        };
        broker.close().await;
        store.close().await;
        served?;
        worked
    }
}

/// Runs the all-in-one app until `shutdown` is cancelled: embedded broker in
/// `<data_dir>/broker`, the store at `store_url` (default `sqlite://<data_dir>/store.db`), one
/// worker, and the gateway on `listener`.
pub async fn run_embedded(
    config: GatewayConfig,
    data_dir: PathBuf,
    store_url: Option<String>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    EmbeddedApp::open(config, &data_dir, store_url.as_deref())
        .await?
        .serve(listener, shutdown)
        .await
}

/// Runs a gateway-only process on an external `broker` and `store` until `shutdown` is
/// cancelled (workers run elsewhere). The broker and store are left open for the caller.
pub async fn run_gateway(
    config: GatewayConfig,
    broker: Arc<dyn Broker>,
    store: Store,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let gateway = Gateway::new(config, GatewayLink::from_broker(broker), store).await?;
    serve(listener, gateway, shutdown.cancelled_owned()).await?;
    Ok(())
}
