//! Gateway settings.
//!
//! [`GatewayConfig::new`] takes the one setting without a sensible default (how tokens are
//! verified) and fills every other field with its documented default; adjust fields directly,
//! then call [`GatewayConfig::validate`] (the gateway does so itself on start).

use crate::auth::{AuthConfig, JwtAlgorithm, VerifyKey};
use crate::limits::LimitsConfig;
pub use roomcast_schemas::data::{DEFAULT_MAX_DATA_DEPTH, MAX_DATA_DEPTH};
use std::time::Duration;
use thiserror::Error;

/// Default largest accepted client text frame: 64 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
/// Default largest number of rooms one connection may hold.
pub const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 100;
/// Default capacity of a connection's outbound queue, in frames.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
/// Default WebSocket read buffer per connection, in bytes: every connection holds it for its
/// whole life, and it is the most one read takes (a larger frame gets a buffer of its size).
pub const DEFAULT_WS_READ_BUFFER: usize = 1024;
/// Default WebSocket write buffer per connection, in bytes.
pub const DEFAULT_WS_WRITE_BUFFER: usize = 4096;
/// Default number of stored messages read per history page (join with `since`, gap repair).
pub const DEFAULT_HISTORY_PAGE: u32 = 500;
/// Default time granted to open sessions to close on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default interval of the server's WebSocket pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Default time without any frame from the client after which the connection is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time allowed for sending a close frame to a client that stopped reading.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time a client's socket may refuse writes before it is closed as a slow consumer.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bytes of history replayed before the connection's socket must take them.
pub const DEFAULT_REPLAY_BYTES: usize = 256 * 1024;
/// Default time before a token's `exp` at which `token_expiring` is sent.
pub const DEFAULT_TOKEN_NOTICE: Duration = Duration::from_secs(60);
/// Default time after a token's expiry during which `refresh` is still accepted.
pub const DEFAULT_TOKEN_GRACE: Duration = Duration::from_secs(30);
/// Default most open client connections per gateway.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Default most open client connections per user (`sub`) per gateway.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 100;
/// Default time a client gets to send a request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time the gateway takes at most to answer a request (the WebSocket handshake too).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of history pages read at once: half of the store's connection pool.
pub const DEFAULT_REPLAY_READS: usize = 4;
/// Default number of replays of one user running at once.
pub const DEFAULT_REPLAYS_PER_USER: usize = 2;
/// Default number of replays running at once (at most 64 MiB of frames at the default
/// `replay_bytes`).
pub const DEFAULT_MAX_REPLAYS: usize = 256;
/// Default lifetime of tokens minted by `GET /dev/token`.
pub const DEFAULT_DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Smallest accepted `max_frame_bytes`: room for any well-formed control frame.
const MIN_FRAME_BYTES: usize = 1024;
/// Largest accepted `max_frame_bytes`.
const MAX_FRAME_BYTES_LIMIT: usize = 16 * 1024 * 1024;

/// Everything the gateway needs besides its broker and store.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How handshake tokens are verified (algorithm, key, issuer, audience). Its `Debug`
    /// output redacts the key.
    pub auth: AuthConfig,
    /// Publish and handshake rate limits.
    pub limits: LimitsConfig,
    /// Largest client text frame, in bytes; a larger one gets `too_large` and close 1009.
    pub max_frame_bytes: usize,
    /// Deepest nesting of arrays and objects in a publish's `data`; deeper gets
    /// `invalid_frame`. At most [`MAX_DATA_DEPTH`] (what workers accept from any producer).
    pub max_data_depth: usize,
    /// Most rooms one connection may hold at once; one more gets `too_many_rooms`.
    pub max_rooms_per_connection: usize,
    /// Capacity of each connection's outbound queue, in frames. A client that lets it fill is
    /// closed with 4008 and resumes with `since`.
    pub outbound_queue: usize,
    /// WebSocket read buffer per connection, in bytes: held for the connection's life, and the
    /// most one read system call takes.
    pub ws_read_buffer: usize,
    /// WebSocket write buffer per connection, in bytes (frames are written once it fills, and
    /// on every flush).
    pub ws_write_buffer: usize,
    /// Stored messages read per store query when replaying `since` or repairing a gap.
    pub history_page: u32,
    /// Enables `GET /dev/token`, which mints tokens with the HS256 secret. Development only.
    pub dev_mode: bool,
    /// Lifetime of tokens minted by `GET /dev/token`.
    pub dev_token_ttl: Duration,
    /// On shutdown, how long open sessions get to receive their close frame (1001) and end.
    pub shutdown_grace: Duration,
    /// Interval of the server's WebSocket pings (keeps idle connections alive through proxies).
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// How long the gateway tries to send a close frame to a client that stopped reading
    /// (slow consumer, shutdown) before dropping the connection.
    pub close_timeout: Duration,
    /// A connection whose socket accepts no writes for this long (live messages, a history
    /// replay, error frames alike) is closed as a slow consumer (4008).
    pub write_timeout: Duration,
    /// History pages read from the store at once, across all replays of the gateway (joins
    /// with `since`, gap fills): the rest of the store pool stays free for live traffic.
    pub replay_reads: usize,
    /// Replays of one user running at once on the gateway; the user's next one waits.
    pub replays_per_user: usize,
    /// Replays running at once on the gateway, whoever's (each holds up to `replay_bytes`
    /// while its socket drains); the next one waits.
    pub max_replays: usize,
    /// Bytes of history frames a replay (`join` with `since`, gap repair) queues before it
    /// waits for the socket to take them: the most a replay holds per connection.
    pub replay_bytes: usize,
    /// How long before the token's `exp` the connection is sent `token_expiring`.
    pub token_notice: Duration,
    /// After the token expired (plus `auth.leeway_secs`), how long the connection may still
    /// `refresh` before it is closed with 4001. Joins and publishes are refused meanwhile.
    pub token_grace: Duration,
    /// Longest accepted token lifetime (`exp` − `iat`); longer tokens, and tokens without
    /// `iat`, are refused at the handshake and in `refresh`. `None`: no maximum.
    pub max_token_lifetime: Option<Duration>,
    /// Most open client connections; a handshake beyond it gets HTTP 503.
    pub max_connections: usize,
    /// Most open client connections of one user (`sub`); beyond it HTTP 429.
    pub max_connections_per_user: usize,
    /// Time a client gets to send the headers of a request (slowloris defence); the
    /// connection is closed without an answer after it.
    pub header_read_timeout: Duration,
    /// Longest time from a request's headers to its answer (the WebSocket upgrade
    /// included); HTTP 408 after it. Upgraded sessions and streamed bodies are not bound
    /// by it.
    pub handshake_timeout: Duration,
}

impl GatewayConfig {
    /// A configuration with `auth` and every other field at its default.
    pub fn new(auth: AuthConfig) -> Self {
        GatewayConfig {
            auth,
            limits: LimitsConfig::default(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_data_depth: DEFAULT_MAX_DATA_DEPTH,
            max_rooms_per_connection: DEFAULT_MAX_ROOMS_PER_CONNECTION,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            ws_read_buffer: DEFAULT_WS_READ_BUFFER,
            ws_write_buffer: DEFAULT_WS_WRITE_BUFFER,
            history_page: DEFAULT_HISTORY_PAGE,
            dev_mode: false,
            dev_token_ttl: DEFAULT_DEV_TOKEN_TTL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            ping_interval: DEFAULT_PING_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            replay_bytes: DEFAULT_REPLAY_BYTES,
            replay_reads: DEFAULT_REPLAY_READS,
            replays_per_user: DEFAULT_REPLAYS_PER_USER,
            max_replays: DEFAULT_MAX_REPLAYS,
            token_notice: DEFAULT_TOKEN_NOTICE,
            token_grace: DEFAULT_TOKEN_GRACE,
            max_token_lifetime: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_user: DEFAULT_MAX_CONNECTIONS_PER_USER,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Checks that the settings can work together; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_bytes < MIN_FRAME_BYTES || self.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
            return Err(ConfigError(format!(
                "max_frame_bytes must be between {MIN_FRAME_BYTES} and {MAX_FRAME_BYTES_LIMIT} (got {})",
                self.max_frame_bytes
            )));
        }
        if self.max_data_depth == 0 || self.max_data_depth > MAX_DATA_DEPTH {
            return Err(ConfigError(format!(
                "max_data_depth must be between 1 and {MAX_DATA_DEPTH} (got {})",
                self.max_data_depth
            )));
        }
        if self.max_rooms_per_connection == 0 {
            return Err(ConfigError(
                "max_rooms_per_connection must be at least 1".into(),
            ));
        }
        if self.outbound_queue == 0 {
            return Err(ConfigError(
                "outbound_queue must be at least 1 frame".into(),
            ));
        }
        if self.ws_read_buffer < 256 {
            return Err(ConfigError(format!(
                "ws_read_buffer must be at least 256 bytes (got {})",
                self.ws_read_buffer
            )));
        }
        if self.history_page == 0 {
            return Err(ConfigError("history_page must be at least 1".into()));
        }
        if self.ping_interval.is_zero() {
            return Err(ConfigError(
                "ping_interval must be greater than zero".into(),
            ));
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(ConfigError(format!(
                "idle_timeout ({:?}) must be longer than ping_interval ({:?}), or clients that only listen are disconnected",
                self.idle_timeout, self.ping_interval
            )));
        }
        if self.close_timeout.is_zero() {
            return Err(ConfigError(
                "close_timeout must be greater than zero".into(),
            ));
        }
        let positive = [
            ("write_timeout", self.write_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
            return Err(ConfigError(format!("{name} must be greater than zero")));
        }
        if self.replay_bytes < self.max_frame_bytes {
            return Err(ConfigError(format!(
                "replay_bytes ({}) must be at least max_frame_bytes ({})",
                self.replay_bytes, self.max_frame_bytes
            )));
        }
        if self.replay_reads == 0 || self.replays_per_user == 0 || self.max_replays == 0 {
            return Err(ConfigError(
                "replay_reads, replays_per_user and max_replays must be at least 1".into(),
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_user == 0 {
            return Err(ConfigError(
                "max_connections and max_connections_per_user must be at least 1".into(),
            ));
        }
        if self.max_token_lifetime.is_some_and(|max| max.is_zero()) {
            return Err(ConfigError(
                "max_token_lifetime must be greater than zero (or unset)".into(),
            ));
        }
        if self.dev_mode {
            let hs256_secret = matches!(
                (&self.auth.algorithm, &self.auth.key),
                (JwtAlgorithm::Hs256, VerifyKey::Secret(s)) if !s.is_empty()
            );
            if !hs256_secret {
                return Err(ConfigError(
                    "dev_mode mints tokens with the HS256 secret: it needs HS256 auth with a secret".into(),
                ));
            }
            if self.dev_token_ttl.is_zero() {
                return Err(ConfigError(
                    "dev_token_ttl must be greater than zero".into(),
                ));
            }
            if let Some(max) = self
                .max_token_lifetime
                .filter(|max| self.dev_token_ttl > *max)
            {
                return Err(ConfigError(format!(
                    "dev_token_ttl ({:?}) must not exceed max_token_lifetime ({max:?}), or the dev tokens are refused",
                    self.dev_token_ttl
                )));
            }
        }
        Ok(())
    }

    /// The WebSocket message size limit handed to the protocol layer: a little above
    /// `max_frame_bytes`, so that a frame just over the limit is still read and answered with
    /// `too_large` instead of failing the connection in the protocol layer.
    pub(crate) fn ws_max_message_size(&self) -> usize {
        self.max_frame_bytes + self.max_frame_bytes / 4 + 1024
    }
}

/// A gateway setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid gateway configuration: {0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GatewayConfig {
        GatewayConfig::new(AuthConfig {
            algorithm: JwtAlgorithm::Hs256,
            key: VerifyKey::Secret(b"0123456789abcdef0123456789abcdef".to_vec()),
            issuer: None,
            audience: None,
            leeway_secs: 0,
        })
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn rejects_zero_queue_and_tiny_frames() {
        let mut c = config();
        c.outbound_queue = 0;
        assert!(c.validate().unwrap_err().0.contains("outbound_queue"));
        let mut c = config();
        c.max_frame_bytes = 10;
        assert!(c.validate().unwrap_err().0.contains("max_frame_bytes"));
    }

    #[test]
    fn dev_mode_needs_hs256() {
        let mut c = config();
        c.dev_mode = true;
        assert_eq!(c.validate(), Ok(()));
        c.auth.algorithm = JwtAlgorithm::Rs256;
        c.auth.key = VerifyKey::PublicPem("-----BEGIN PUBLIC KEY-----".into());
        assert!(c.validate().unwrap_err().0.contains("dev_mode"));
    }

    #[test]
    fn lifetime_settings_are_checked() {
        let mut c = config();
        c.write_timeout = Duration::ZERO;
        assert!(c.validate().unwrap_err().0.contains("write_timeout"));
        let mut c = config();
        c.replay_bytes = c.max_frame_bytes - 1;
        assert!(c.validate().unwrap_err().0.contains("replay_bytes"));
        let mut c = config();
        c.max_connections_per_user = 0;
        assert!(c.validate().unwrap_err().0.contains("max_connections"));
        let mut c = config();
        c.dev_mode = true;
        c.max_token_lifetime = Some(Duration::from_secs(600));
        assert!(c.validate().unwrap_err().0.contains("max_token_lifetime"));
        c.dev_token_ttl = Duration::from_secs(600);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn debug_redacts_the_secret() {
        let text = format!("{:?}", config());
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }
}
