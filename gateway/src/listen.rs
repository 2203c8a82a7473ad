//! Serving the gateway's routes over TCP: the accept loop, hyper's connection settings
//! (header-read timeout, upgrades), and graceful shutdown.

use crate::error::GatewayError;
use crate::server::Gateway;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Pause after an accept error that is not about one connection (out of descriptors, say),
/// so that a full descriptor table does not spin the accept loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `gateway` on `listener` until `shutdown` completes, then stops accepting, closes
/// every session with 1001, waits for them (bounded by `shutdown_grace`) and stops the
/// gateway's background tasks.
///
/// Each connection gets `header_read_timeout` to send a request's headers (slowloris
/// defence); the routes then answer within `handshake_timeout` (HTTP 408 after it).
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr().map_err(GatewayError::Serve)?;
    tracing::info!(%addr, "gateway listening");
    let config = gateway.shared.config.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.ping_interval));
    let router = gateway.router();
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Frames are small and written as soon as they are ready: no Nagle delay on acks.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "setting TCP_NODELAY failed");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("gateway shutting down");
    gateway.begin_shutdown();
    // Plain HTTP requests finish; upgraded connections are the sessions that
    // `Gateway::shutdown` closes.
    let _ = tokio::time::timeout(config.shutdown_grace, graceful.shutdown()).await;
    gateway.shutdown().await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Errors of one connection that the accept loop skips without a pause.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
