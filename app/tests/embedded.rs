//! The all-in-one app's wiring: the embedded broker, the store, the worker and the gateway in
//! one process.

use roomcast::{AppError, AppOptions, EmbeddedApp};
use roomcast_gateway::GatewayConfig;
use roomcast_gateway::auth::AuthConfig;
use roomcast_worker::WorkerConfig;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "roomcast-test-secret-0123456789abcdef";

#[tokio::test]
async fn the_app_stops_with_an_error_when_the_worker_stops() {
    let dir = tempfile::tempdir().unwrap();
    let options = AppOptions {
        worker: WorkerConfig {
            batch_max: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let config = GatewayConfig::new(AuthConfig::hs256(SECRET));
    let app = EmbeddedApp::open_with(config, dir.path(), None, options)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let result = tokio::time::timeout(Duration::from_secs(15), app.serve(listener, shutdown))
        .await
        .expect("the app stopped");
    assert!(matches!(result, Err(AppError::Worker(_))), "{result:?}");
}
