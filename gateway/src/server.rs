//! The HTTP side of the gateway: routes, the WebSocket handshake, and serving with graceful
//! shutdown.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /ws` | WebSocket upgrade after the per-IP handshake limit (429) and token check (401) |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the broker and the store answer, else 503 |
//! | `GET /` | the chat page |
//! | `GET /dev/token?sub=NAME[&rooms=a,b]` | a token minted with the HS256 secret; `dev_mode` only |

use crate::auth::{AuthError, Claims, Minter, Verifier, VerifyKey, token_from_request};
use crate::config::GatewayConfig;
use crate::connections::{Cap, ConnectionCounts, ConnectionGuard, Slot};
use crate::error::GatewayError;
use crate::limits::Limits;
pub use crate::listen::serve;
use crate::replay::Replays;
use crate::rooms::Rooms;
use crate::{fanout, session, ws};
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use roomcast_broker::GatewayLink;
use roomcast_store::Store;
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// The chat page served at `GET /`.
const CHAT_PAGE: &str = include_str!("../assets/chat.html");
/// How long `/readyz` waits for the broker and the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often idle rate-limit keys are forgotten.
const HOUSEKEEP_EVERY: Duration = Duration::from_secs(60);

/// State shared by every request and connection of one gateway.
pub(crate) struct GatewayState {
    pub(crate) config: GatewayConfig,
    pub(crate) verifier: Verifier,
    pub(crate) limits: Limits,
    /// The broker's parts the gateway uses: publisher, fan-out source, health.
    pub(crate) broker: GatewayLink,
    pub(crate) store: Store,
    pub(crate) rooms: Arc<Rooms>,
    /// The bounds on history replays (per user, and store reads at once).
    pub(crate) replays: Arc<Replays>,
    minter: Option<Minter>,
    /// Tracks open sessions, so that shutdown can wait for them.
    pub(crate) sessions: TaskTracker,
    /// Cancelled on shutdown: sessions close with 1001.
    pub(crate) sessions_stop: CancellationToken,
    /// Background tasks (fan-out, housekeeping).
    background: TaskTracker,
    background_stop: CancellationToken,
    next_conn: AtomicU64,
    /// Accepted connections and sessions, against `max_connections` and
    /// `max_connections_per_user`.
    pub(crate) connections: Arc<ConnectionCounts>,
    /// Connections closed as slow consumers (queue overflow or write deadline).
    slow_closed: AtomicU64,
}

impl GatewayState {
    /// Counts a session of `user` against the caps, unless one is reached; `slot` is its
    /// accepted connection's place.
    pub(crate) fn admit(&self, user: &str, slot: Option<Slot>) -> Result<ConnectionGuard, Cap> {
        self.connections
            .admit(user, self.config.max_connections_per_user, slot)
    }

    /// Verifies a token as the handshake does: signature, times, claims, and the configured
    /// maximum lifetime.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verifier.verify(token)?;
        if let Some(max) = self.config.max_token_lifetime {
            // Measured from `iat`, or from now if that is earlier (the verifier refused an
            // `iat` further ahead than the leeway): a token never has longer left than `max`.
            let now = roomcast_schemas::now_ms() / 1000;
            let lifetime = claims
                .iat
                .map(|iat| claims.exp.saturating_sub(iat.min(now)));
            match lifetime {
                Some(lifetime) if lifetime <= max.as_secs() => {}
                _ => return Err(AuthError::LifetimeTooLong),
            }
        }
        Ok(claims)
    }

    /// Counts a connection closed as a slow consumer.
    pub(crate) fn count_slow_consumer(&self) {
        self.slow_closed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for GatewayState {
    fn drop(&mut self) {
        // The last handle is gone: stop the fan-out and housekeeping tasks.
        self.background_stop.cancel();
    }
}

/// A running gateway: routes, sessions, the fan-out task. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<GatewayState>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("broker", &self.shared.broker.health.backend())
            .field("sessions", &self.shared.sessions.len())
            .field("rooms", &self.shared.rooms.room_count())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Validates `config`, opens the fan-out subscription of `broker` and starts the fan-out
    /// task. Serve it with [`serve`] (or mount [`Gateway::router`] yourself and call
    /// [`Gateway::shutdown`]).
    pub async fn new(
        config: GatewayConfig,
        broker: GatewayLink,
        store: Store,
    ) -> Result<Gateway, GatewayError> {
        config.validate()?;
        let verifier = Verifier::new(&config.auth)?;
        let minter = match (&config.dev_mode, &config.auth.key) {
            (true, VerifyKey::Secret(secret)) => Some(Minter::hs256(secret)),
            _ => None,
        };
        let limits = Limits::new(&config.limits);
        let subscription: Arc<dyn roomcast_broker::FanoutSubscription> =
            Arc::from(broker.fanout.open().await?);
        let rooms = Arc::new(Rooms::new(subscription.clone()));
        let connections = Arc::new(ConnectionCounts::new(config.max_connections));
        let replays = Replays::new(
            config.replay_reads,
            config.replays_per_user,
            config.max_replays,
        );
        let shared = Arc::new(GatewayState {
            config,
            verifier,
            limits,
            broker,
            store,
            rooms: rooms.clone(),
            replays,
            minter,
            sessions: TaskTracker::new(),
            sessions_stop: CancellationToken::new(),
            background: TaskTracker::new(),
            background_stop: CancellationToken::new(),
            next_conn: AtomicU64::new(1),
            connections,
            slow_closed: AtomicU64::new(0),
        });
        shared.background.spawn(fanout::run(
            subscription,
            rooms,
            shared.background_stop.clone(),
        ));
        let housekeeping = Arc::downgrade(&shared);
        let stop = shared.background_stop.clone();
        shared.background.spawn(async move {
            let mut every = tokio::time::interval(HOUSEKEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                match housekeeping.upgrade() {
                    Some(shared) => {
                        shared.limits.housekeep();
                        shared.replays.housekeep();
                    }
                    None => return,
                }
            }
        });
        Ok(Gateway { shared })
    }

    /// The gateway's routes. Serve them with [`serve`](crate::serve), or yourself with
    /// connect info (`into_make_service_with_connect_info::<SocketAddr>()`): the handshake
    /// limit is per client IP.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws", get(ws_handler))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/", get(chat_page))
            .route("/dev/token", get(dev_token))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                self.shared.config.handshake_timeout,
            ))
            .layer(
                // Spans carry the path only: the query of `/ws` may hold `access_token`.
                TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
                }),
            )
            .with_state(self.shared.clone())
    }

    /// Number of open WebSocket sessions.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Number of rooms with local members.
    pub fn room_count(&self) -> usize {
        self.shared.rooms.room_count()
    }

    /// History replays running now (joins with `since`, gap fills).
    pub fn replay_count(&self) -> usize {
        self.shared.replays.running()
    }

    /// How many connections were closed as slow consumers (their queue overflowed, or their
    /// socket accepted no writes for `write_timeout`).
    pub fn slow_consumers_closed(&self) -> u64 {
        self.shared.slow_closed.load(Ordering::Relaxed)
    }

    /// Open client sessions (counted against `max_connections`).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.sessions()
    }

    /// Open TCP connections accepted by [`serve`](crate::serve), of every kind: sessions,
    /// HTTP requests, connections that have not sent their headers yet.
    pub fn accepted_count(&self) -> usize {
        self.shared.connections.accepted()
    }

    /// Starts closing: new handshakes get 503 and every open session is sent close 1001.
    pub fn begin_shutdown(&self) {
        self.shared.sessions.close();
        self.shared.sessions_stop.cancel();
    }

    /// Closes every session (1001), waits for them up to `shutdown_grace`, then stops the
    /// fan-out task. Idempotent.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        let grace = self.shared.config.shutdown_grace;
        if tokio::time::timeout(grace, self.shared.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.shared.sessions.len(),
                "sessions still open after the shutdown grace period"
            );
        }
        self.shared.background.close();
        self.shared.background_stop.cancel();
        let _ = tokio::time::timeout(grace, self.shared.background.wait()).await;
    }
}

fn json_error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": error, "message": message.into() })),
    )
        .into_response()
}

async fn ws_handler(
    State(shared): State<Arc<GatewayState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<Extension<Slot>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if shared.sessions_stop.is_cancelled() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server is shutting down",
        );
    }
    if let Err(limited) = shared.limits.check_handshake(peer.ip()) {
        let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut response = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many connection attempts from this address; retry later",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return response;
    }
    let Some(token) = token_from_request(&headers, query.as_deref()) else {
        tracing::debug!(peer = %peer.ip(), "handshake without token");
        return AuthError::MissingToken.into_response();
    };
    let claims = match shared.verify(&token) {
        Ok(claims) => claims,
        Err(err) => {
            tracing::debug!(peer = %peer.ip(), error = %err, "handshake with a rejected token");
            return err.into_response();
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let config = &shared.config;
    let guard = match shared.admit(&claims.sub, slot.map(|Extension(slot)| slot)) {
        Ok(guard) => guard,
        Err(Cap::Total) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is at its connection limit; retry later or elsewhere",
            );
        }
        Err(Cap::User) => {
            return json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "this user has too many open connections",
            );
        }
    };
    let max_message = config.ws_max_message_size();
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(conn, user = %claims.sub, peer = %peer.ip(), "connection accepted");
    let session_shared = shared.clone();
    upgrade
        .read_buffer_size(config.ws_read_buffer)
        .write_buffer_size(config.ws_write_buffer)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_failed_upgrade(|err| tracing::debug!(error = %err, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            let sessions = session_shared.sessions.clone();
            let transport = ws::WsTransport::new(socket);
            sessions.track_future(session::serve(
                transport,
                session_shared,
                claims,
                conn,
                guard,
            ))
        })
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(shared): State<Arc<GatewayState>>) -> Response {
    if shared.sessions_stop.is_cancelled() {
        let body = json!({ "status": "shutting_down" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let broker = match tokio::time::timeout(READY_TIMEOUT, shared.broker.health.check()).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "broker health check failed");
            false
        }
        Err(_) => {
            tracing::warn!("broker health check timed out");
            false
        }
    };
    let store = match tokio::time::timeout(READY_TIMEOUT, shared.store.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "store health check failed");
            false
        }
        Err(_) => {
            tracing::warn!("store health check timed out");
            false
        }
    };
    let state = |ok: bool| if ok { "ok" } else { "unavailable" };
    let body = json!({
        "status": state(broker && store),
        "broker": { "backend": shared.broker.health.backend(), "status": state(broker) },
        "store": { "status": state(store) },
    });
    let status = if broker && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn chat_page() -> Html<&'static str> {
    Html(CHAT_PAGE)
}

/// Query of `GET /dev/token`.
#[derive(Debug, Deserialize)]
struct DevTokenQuery {
    sub: String,
    rooms: Option<String>,
}

/// Whether a request's `Host` (or HTTP/2 `:authority`) names this machine's loopback:
/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port. A page that rebinds its own
/// DNS name to 127.0.0.1 still sends its own name, so it is told apart from the chat page.
fn is_loopback_host(host: &str) -> bool {
    // `name` is the host without brackets, `rest` what follows it: nothing, or `:PORT`.
    let (name, rest, bracketed) = match host.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((name, rest)) => (name, rest, true),
            None => return false,
        },
        None => match host.split_once(':') {
            Some((name, _)) => (name, &host[name.len()..], false),
            None => (host, "", false),
        },
    };
    let loopback = match bracketed {
        true => name == "::1",
        false => name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1",
    };
    let port = rest.strip_prefix(':');
    let port_ok = rest.is_empty()
        || port.is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    loopback && port_ok
}

async fn dev_token(
    State(shared): State<Arc<GatewayState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    query: Result<Query<DevTokenQuery>, QueryRejection>,
) -> Response {
    let Some(minter) = &shared.minter else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "not found");
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()));
    if !host.is_some_and(is_loopback_host) {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "dev tokens are served only to requests for localhost, 127.0.0.1 or [::1]",
        );
    }
    let Ok(Query(query)) = query else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected ?sub=NAME[&rooms=a,b]",
        );
    };
    let sub = match roomcast_schemas::UserId::new(query.sub.trim()) {
        Ok(sub) => sub,
        Err(error) => return json_error(StatusCode::BAD_REQUEST, "bad_request", error.to_string()),
    };
    let rooms: Vec<String> = match &query.rooms {
        None => vec!["*".to_owned()],
        Some(list) => list
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
    };
    if rooms.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "rooms must list at least one room pattern",
        );
    }
    // With the HS256 secret, minting only fails on a bad `sub` or room pattern.
    match minter.mint(&sub, &rooms, shared.config.dev_token_ttl) {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(err) => json_error(StatusCode::BAD_REQUEST, "bad_request", err.0),
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_are_dev_hosts() {
        for ok in [
            "localhost",
            "localhost:3000",
            "LOCALHOST:3000",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:3000",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:3000",
            "localhost.evil.example",
            "127.0.0.1.nip.io:3000",
            "127.0.0.2:3000",
            "[::2]:3000",
            "[::1",
            "localhost:",
            "localhost:30a0",
            "[::1]3000",
            "0.0.0.0:3000",
            "192.168.1.5:3000",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
