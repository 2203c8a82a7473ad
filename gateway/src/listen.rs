//! Serving the gateway's routes over TCP: the accept loop with its connection slots, hyper's
//! HTTP/1.1 connection settings (header-read timeout, upgrades), and graceful shutdown.
//!
//! Every accepted connection must send a request's headers within `header_read_timeout` of
//! being accepted, also between the requests of a kept-alive connection: hyper's HTTP/1.1
//! timer runs from the moment it starts reading a request, and no protocol detection comes
//! before it. HTTP/2 without TLS (h2c) is not offered: WebSocket upgrades are HTTP/1.1, and an
//! h2c connection would have no header-read timeout at all.

use crate::connections::{ConnectionCounts, FD_HEADROOM, HEALTH_RESERVE, RESERVE_HEADER_TIMEOUT};
use crate::error::GatewayError;
use crate::server::Gateway;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Pause after an accept error that is not about one connection (out of descriptors, say),
/// so that a full descriptor table does not spin the accept loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `gateway` on `listener` until `shutdown` completes, then stops accepting, closes
/// every session with 1001, waits for them (bounded by `shutdown_grace`) and stops the
/// gateway's background tasks.
///
/// Each connection gets `header_read_timeout` from its accept to send a request's headers
/// (slowloris defence, connections that never send a byte included); the routes then answer
/// within `handshake_timeout` (HTTP 408 after it). At most `max_connections` plus a small
/// reserve for health checks are open at once, fewer when the process's descriptor limit
/// leaves fewer (a warning says so).
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr().map_err(GatewayError::Serve)?;
    tracing::info!(%addr, "gateway listening");
    let config = gateway.shared.config.clone();
    let counts = gateway.shared.connections.clone();
    let slots = accept_slots(config.max_connections, descriptor_limit());
    counts.limit(slots - HEALTH_RESERVE.min(slots - 1));
    let slots = Arc::new(Semaphore::new(slots));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let mut reserve = builder.clone();
    reserve.header_read_timeout(config.header_read_timeout.min(RESERVE_HEADER_TIMEOUT));
    let router = gateway.router();
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A place first: when all are taken, the next connections wait in the listen backlog.
        let place = tokio::select! {
            place = ConnectionCounts::place(&slots) => place,
            () = &mut shutdown => break,
        };
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
        let slot = counts.slot(place);
        // Frames are small and written as soon as they are ready: no Nagle delay on acks.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "setting TCP_NODELAY failed");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            // The slot travels with the request, so that an upgraded session keeps it.
            request.extensions_mut().insert(slot.clone());
            router.clone().oneshot(request)
        });
        let builder = if counts.in_reserve() {
            &reserve
        } else {
            &builder
        };
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, error = %error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("gateway shutting down");
    gateway.begin_shutdown();
    // Plain HTTP requests finish; upgraded connections are the sessions that
    // `Gateway::shutdown` closes.
    stop.cancel();
    connections.close();
    let _ = tokio::time::timeout(config.shutdown_grace, connections.wait()).await;
    gateway.shutdown().await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// How many connections may be open at once: `max_connections` and the health reserve, or
/// what the descriptor limit leaves after [`FD_HEADROOM`] (at least one).
fn accept_slots(max_connections: usize, descriptors: Option<u64>) -> usize {
    let wanted = max_connections.saturating_add(HEALTH_RESERVE);
    let Some(descriptors) = descriptors else {
        return wanted;
    };
    let room = usize::try_from(descriptors)
        .unwrap_or(usize::MAX)
        .saturating_sub(FD_HEADROOM)
        .max(1);
    if room < wanted {
        tracing::warn!(
            max_connections,
            descriptor_limit = descriptors,
            open_at_most = room,
            "the process may open fewer files than max_connections needs: at most {room} connections are accepted at once, {} of them sessions; raise the descriptor limit (ulimit -n) or lower max_connections",
            room - HEALTH_RESERVE.min(room - 1)
        );
    }
    wanted.min(room)
}

/// The process's soft limit on open files, if it can be read.
fn descriptor_limit() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises the process's soft limit on open files to its hard limit, and returns the soft limit
/// then in force. Binaries call it at start, before serving.
pub fn raise_descriptor_limit() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_max_connections_and_the_descriptor_limit() {
        assert_eq!(accept_slots(100, None), 100 + HEALTH_RESERVE);
        assert_eq!(accept_slots(100, Some(1_000_000)), 100 + HEALTH_RESERVE);
        // 512 descriptors: the headroom is kept, the rest are slots.
        assert_eq!(accept_slots(50_000, Some(512)), 512 - FD_HEADROOM);
        assert_eq!(accept_slots(50_000, Some(10)), 1);
    }
}
