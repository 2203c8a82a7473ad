//! Command-line options shared by the `roomcast` and `roomcast-gateway` binaries, and their
//! conversion into a validated [`GatewayConfig`].
//!
//! Every option can also come from an environment variable (`ROOMCAST_…`, shown by `--help`);
//! a flag wins over the variable. Secret values are never printed, not even by `--help`.

use clap::Args;
use roomcast_gateway::auth::{AuthConfig, JwtAlgorithm, Minter, random_secret};
use roomcast_gateway::config::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_USER, DEFAULT_MAX_DATA_DEPTH,
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_REPLAYS, DEFAULT_MAX_ROOMS_PER_CONNECTION,
    DEFAULT_OUTBOUND_QUEUE, DEFAULT_REPLAY_BYTES, DEFAULT_REPLAY_READS, DEFAULT_REPLAYS_PER_USER,
    GatewayConfig,
};
use roomcast_gateway::limits::LimitsConfig;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// A command line that cannot work.
#[derive(Debug, Error)]
pub enum CliError {
    /// The options contradict each other or miss something required.
    #[error("{0}")]
    Invalid(String),
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// How handshake tokens are verified.
#[derive(Args, Clone)]
pub struct AuthArgs {
    /// The one JWT algorithm accepted: HS256, RS256 or ES256. Tokens signed any other way are
    /// rejected.
    #[arg(long, env = "ROOMCAST_JWT_ALG", default_value = "HS256")]
    pub jwt_alg: JwtAlgorithm,
    /// HS256 shared secret (at least 32 bytes).
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256/ES256 public key, a PEM file.
    #[arg(long, env = "ROOMCAST_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "ROOMCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "ROOMCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    #[arg(long, env = "ROOMCAST_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,
}

impl AuthArgs {
    /// The verification settings; `fallback_secret` is used for HS256 when no secret is given
    /// (dev mode only).
    pub fn to_config(&self, fallback_secret: Option<&str>) -> Result<AuthConfig, CliError> {
        let mut config = match self.jwt_alg {
            JwtAlgorithm::Hs256 => {
                if self.jwt_public_key_file.is_some() {
                    return Err(CliError::Invalid(
                        "--jwt-public-key-file goes with RS256 or ES256; HS256 uses --jwt-secret"
                            .into(),
                    ));
                }
                let secret = self
                    .jwt_secret
                    .as_deref()
                    .or(fallback_secret)
                    .ok_or_else(|| {
                        CliError::Invalid(
                            "HS256 needs a secret: set ROOMCAST_JWT_SECRET or --jwt-secret".into(),
                        )
                    })?;
                AuthConfig::hs256(secret.as_bytes().to_vec())
            }
            alg => {
                let path = self.jwt_public_key_file.as_ref().ok_or_else(|| {
                    CliError::Invalid(format!(
                        "{alg} needs a public key: set ROOMCAST_JWT_PUBLIC_KEY_FILE or --jwt-public-key-file"
                    ))
                })?;
                if self.jwt_secret.is_some() {
                    return Err(CliError::Invalid(format!(
                        "--jwt-secret goes with HS256; {alg} verifies with a public key"
                    )));
                }
                let pem = std::fs::read_to_string(path).map_err(|source| CliError::ReadKey {
                    path: path.clone(),
                    source,
                })?;
                AuthConfig::public_key(alg, pem)
            }
        };
        if let Some(iss) = &self.jwt_issuer {
            config = config.with_issuer(iss.clone());
        }
        if let Some(aud) = &self.jwt_audience {
            config = config.with_audience(aud.clone());
        }
        config = config.with_leeway_secs(self.jwt_leeway_secs);
        config
            .validate()
            .map_err(|err| CliError::Invalid(err.to_string()))?;
        Ok(config)
    }
}

/// Gateway options common to every serving command.
#[derive(Args, Clone)]
pub struct GatewayArgs {
    /// Address to listen on [default: 127.0.0.1:3000 for `dev`, 0.0.0.0:3000 otherwise].
    #[arg(long, env = "ROOMCAST_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Largest client frame in bytes; a larger one gets `too_large` and close 1009.
    #[arg(long, env = "ROOMCAST_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Most rooms one connection may hold at once.
    #[arg(long, env = "ROOMCAST_MAX_ROOMS", default_value_t = DEFAULT_MAX_ROOMS_PER_CONNECTION)]
    pub max_rooms: usize,
    /// Frames a connection may have queued before it is closed as a slow consumer (4008).
    #[arg(long, env = "ROOMCAST_OUTBOUND_QUEUE", default_value_t = DEFAULT_OUTBOUND_QUEUE)]
    pub outbound_queue: usize,
    /// Publishes per second per connection.
    #[arg(long, env = "ROOMCAST_PUBLISH_RATE", default_value_t = LimitsConfig::DEFAULT.publish_per_sec)]
    pub publish_rate: NonZeroU32,
    /// Publish burst per connection.
    #[arg(long, env = "ROOMCAST_PUBLISH_BURST", default_value_t = LimitsConfig::DEFAULT.publish_burst)]
    pub publish_burst: NonZeroU32,
    /// Publishes per second per user, across all of the user's connections.
    #[arg(long, env = "ROOMCAST_USER_PUBLISH_RATE", default_value_t = LimitsConfig::DEFAULT.user_publish_per_sec)]
    pub user_publish_rate: NonZeroU32,
    /// Publish burst per user.
    #[arg(long, env = "ROOMCAST_USER_PUBLISH_BURST", default_value_t = LimitsConfig::DEFAULT.user_publish_burst)]
    pub user_publish_burst: NonZeroU32,
    /// WebSocket handshakes per second per client IP (HTTP 429 beyond).
    #[arg(long, env = "ROOMCAST_HANDSHAKE_RATE", default_value_t = LimitsConfig::DEFAULT.handshakes_per_sec_per_ip)]
    pub handshake_rate: NonZeroU32,
    /// Handshake burst per client IP.
    #[arg(long, env = "ROOMCAST_HANDSHAKE_BURST", default_value_t = LimitsConfig::DEFAULT.handshake_burst_per_ip)]
    pub handshake_burst: NonZeroU32,
    /// Joins per second per connection.
    #[arg(long, env = "ROOMCAST_JOIN_RATE", default_value_t = LimitsConfig::DEFAULT.join_per_sec)]
    pub join_rate: NonZeroU32,
    /// Join burst per connection.
    #[arg(long, env = "ROOMCAST_JOIN_BURST", default_value_t = LimitsConfig::DEFAULT.join_burst)]
    pub join_burst: NonZeroU32,
    /// Joins with `since` (history replays) per second per connection.
    #[arg(long, env = "ROOMCAST_REPLAY_RATE", default_value_t = LimitsConfig::DEFAULT.replay_per_sec)]
    pub replay_rate: NonZeroU32,
    /// Replay burst per connection.
    #[arg(long, env = "ROOMCAST_REPLAY_BURST", default_value_t = LimitsConfig::DEFAULT.replay_burst)]
    pub replay_burst: NonZeroU32,
    /// `refresh` frames per minute per connection (refused ones count).
    #[arg(long, env = "ROOMCAST_REFRESH_RATE", default_value_t = LimitsConfig::DEFAULT.refresh_per_min)]
    pub refresh_rate: NonZeroU32,
    /// Refresh burst per connection.
    #[arg(long, env = "ROOMCAST_REFRESH_BURST", default_value_t = LimitsConfig::DEFAULT.refresh_burst)]
    pub refresh_burst: NonZeroU32,
    /// `refresh` frames per second per user, across all of the user's connections.
    #[arg(long, env = "ROOMCAST_USER_REFRESH_RATE", default_value_t = LimitsConfig::DEFAULT.user_refresh_per_sec)]
    pub user_refresh_rate: NonZeroU32,
    /// Refresh burst per user.
    #[arg(long, env = "ROOMCAST_USER_REFRESH_BURST", default_value_t = LimitsConfig::DEFAULT.user_refresh_burst)]
    pub user_refresh_burst: NonZeroU32,
    /// History pages read from the store at once, across all replays.
    #[arg(long, env = "ROOMCAST_REPLAY_READS", default_value_t = DEFAULT_REPLAY_READS)]
    pub replay_reads: usize,
    /// Replays (joins with `since`, gap fills) of one user running at once.
    #[arg(long, env = "ROOMCAST_REPLAYS_PER_USER", default_value_t = DEFAULT_REPLAYS_PER_USER)]
    pub replays_per_user: usize,
    /// Replays running at once on the gateway, whoever's.
    #[arg(long, env = "ROOMCAST_MAX_REPLAYS", default_value_t = DEFAULT_MAX_REPLAYS)]
    pub max_replays: usize,
    /// Deepest nesting of arrays and objects in a publish's `data` (at most 100).
    #[arg(long, env = "ROOMCAST_MAX_DATA_DEPTH", default_value_t = DEFAULT_MAX_DATA_DEPTH)]
    pub max_data_depth: usize,
    /// A socket that accepts no write for this long is closed as a slow consumer (4008).
    #[arg(long, env = "ROOMCAST_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// History bytes a replay sends before it waits for the socket to take them.
    #[arg(long, env = "ROOMCAST_REPLAY_BYTES", default_value_t = DEFAULT_REPLAY_BYTES)]
    pub replay_bytes: usize,
    /// How long before the token's `exp` the client gets `token_expiring`.
    #[arg(long, env = "ROOMCAST_TOKEN_NOTICE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub token_notice: Duration,
    /// After `exp`, how long a `refresh` is still accepted before the close with 4001.
    #[arg(long, env = "ROOMCAST_TOKEN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub token_grace: Duration,
    /// Longest accepted token lifetime (`exp` − `iat`), e.g. `24h` [default: no maximum].
    #[arg(long, env = "ROOMCAST_MAX_TOKEN_LIFETIME", value_parser = humantime::parse_duration)]
    pub max_token_lifetime: Option<Duration>,
    /// Most open client connections (HTTP 503 beyond).
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most open client connections per user (HTTP 429 beyond).
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS_PER_USER", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_USER)]
    pub max_connections_per_user: usize,
    /// Time a client gets to send a request's headers.
    #[arg(long, env = "ROOMCAST_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Longest time from a request's headers to its answer (HTTP 408 after it).
    #[arg(long, env = "ROOMCAST_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Token verification.
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl GatewayArgs {
    /// The validated gateway settings. `dev_mode` enables `GET /dev/token`; it is only ever
    /// set by the `dev` command.
    pub fn to_config(
        &self,
        fallback_secret: Option<&str>,
        dev_mode: bool,
    ) -> Result<GatewayConfig, CliError> {
        let mut config = GatewayConfig::new(self.auth.to_config(fallback_secret)?);
        config.max_frame_bytes = self.max_frame_bytes;
        config.max_rooms_per_connection = self.max_rooms;
        config.outbound_queue = self.outbound_queue;
        config.limits = LimitsConfig {
            publish_per_sec: self.publish_rate,
            publish_burst: self.publish_burst,
            user_publish_per_sec: self.user_publish_rate,
            user_publish_burst: self.user_publish_burst,
            handshakes_per_sec_per_ip: self.handshake_rate,
            handshake_burst_per_ip: self.handshake_burst,
            join_per_sec: self.join_rate,
            join_burst: self.join_burst,
            replay_per_sec: self.replay_rate,
            replay_burst: self.replay_burst,
            refresh_per_min: self.refresh_rate,
            refresh_burst: self.refresh_burst,
            user_refresh_per_sec: self.user_refresh_rate,
            user_refresh_burst: self.user_refresh_burst,
        };
        config.max_data_depth = self.max_data_depth;
        config.replay_reads = self.replay_reads;
        config.replays_per_user = self.replays_per_user;
        config.max_replays = self.max_replays;
        config.write_timeout = self.write_timeout;
        config.replay_bytes = self.replay_bytes;
        config.token_notice = self.token_notice;
        config.token_grace = self.token_grace;
        config.max_token_lifetime = self.max_token_lifetime;
        config.max_connections = self.max_connections;
        config.max_connections_per_user = self.max_connections_per_user;
        config.header_read_timeout = self.header_read_timeout;
        config.handshake_timeout = self.handshake_timeout;
        config.dev_mode = dev_mode;
        config
            .validate()
            .map_err(|err| CliError::Invalid(err.to_string()))?;
        Ok(config)
    }

    /// The listening address, or `default`.
    pub fn listen_or(&self, default: SocketAddr) -> SocketAddr {
        self.listen.unwrap_or(default)
    }
}

/// Where the all-in-one process keeps its data.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Directory of the embedded broker's log and the default SQLite store.
    #[arg(long, env = "ROOMCAST_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Message store: `sqlite://PATH` or `postgres://…` [default: sqlite://DATA_DIR/store.db].
    #[arg(long, env = "ROOMCAST_STORE_URL")]
    pub store_url: Option<String>,
}

/// Options of the `token` command.
#[derive(Args, Clone)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Comma-separated room patterns: names, or prefixes ending in `*` (`lobby,team-*`).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub rooms: Vec<String>,
    /// Lifetime, e.g. `30m`, `12h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Signing algorithm: HS256 (with the secret) or RS256/ES256 (with --private-key-file).
    #[arg(long, env = "ROOMCAST_JWT_ALG", default_value = "HS256")]
    pub alg: JwtAlgorithm,
    /// HS256 shared secret.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// RS256/ES256 private key, a PEM file.
    #[arg(long)]
    pub private_key_file: Option<PathBuf>,
    /// `iss` claim to write.
    #[arg(long, env = "ROOMCAST_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// `aud` claim to write.
    #[arg(long, env = "ROOMCAST_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

impl TokenArgs {
    /// Mints the token.
    pub fn mint(&self) -> Result<String, CliError> {
        let minter = match self.alg {
            JwtAlgorithm::Hs256 => {
                let secret = self.secret.as_deref().ok_or_else(|| {
                    CliError::Invalid(
                        "HS256 needs the secret: set ROOMCAST_JWT_SECRET or --secret".into(),
                    )
                })?;
                Minter::hs256(secret.as_bytes())
            }
            alg => {
                let path = self
                    .private_key_file
                    .as_ref()
                    .ok_or_else(|| CliError::Invalid(format!("{alg} needs --private-key-file")))?;
                let pem = std::fs::read_to_string(path).map_err(|source| CliError::ReadKey {
                    path: path.clone(),
                    source,
                })?;
                Minter::from_pem(alg, &pem).map_err(|err| CliError::Invalid(err.to_string()))?
            }
        };
        let minter = match &self.issuer {
            Some(iss) => minter.with_issuer(iss.clone()),
            None => minter,
        };
        let minter = match &self.audience {
            Some(aud) => minter.with_audience(aud.clone()),
            None => minter,
        };
        minter
            .mint(&self.sub, &self.rooms, self.ttl)
            .map_err(|err| CliError::Invalid(err.to_string()))
    }
}

/// A fresh secret for a dev-mode process that was given none.
pub fn dev_secret() -> String {
    random_secret()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        gateway: GatewayArgs,
    }

    fn parse(args: &[&str]) -> Result<GatewayConfig, CliError> {
        let mut argv = vec!["roomcast"];
        argv.extend_from_slice(args);
        let harness =
            Harness::try_parse_from(argv).map_err(|e| CliError::Invalid(e.to_string()))?;
        harness.gateway.to_config(None, false)
    }

    const SECRET: &str = "--jwt-secret=0123456789abcdef0123456789abcdef";

    #[test]
    fn hs256_needs_a_secret() {
        let err = Harness::try_parse_from(["roomcast", "--jwt-alg", "HS256"])
            .expect("parses")
            .gateway
            .to_config(None, false);
        if std::env::var_os("ROOMCAST_JWT_SECRET").is_none() {
            assert!(err.is_err_and(|e| e.to_string().contains("needs a secret")));
        }
    }

    #[test]
    fn short_secret_is_rejected() {
        let err = parse(&["--jwt-secret", "short"]).expect_err("short secret rejected");
        assert!(err.to_string().contains("32"), "{err}");
    }

    #[test]
    fn public_key_algorithms_need_a_key_file() {
        let err = parse(&["--jwt-alg", "RS256"]).expect_err("no key file");
        assert!(err.to_string().contains("public key"), "{err}");
        let err = parse(&["--jwt-alg", "ES256", SECRET]).expect_err("secret with ES256");
        assert!(err.to_string().contains("public key"), "{err}");
    }

    #[test]
    fn limits_and_sizes_reach_the_config() {
        let config =
            parse(&[SECRET, "--publish-rate", "7", "--max-frame-bytes", "2048"]).expect("valid");
        assert_eq!(config.limits.publish_per_sec.get(), 7);
        assert_eq!(config.max_frame_bytes, 2048);
        assert!(!config.dev_mode);
        let err = parse(&[SECRET, "--outbound-queue", "0"]).expect_err("zero queue");
        assert!(err.to_string().contains("outbound_queue"), "{err}");
    }

    #[test]
    fn minted_tokens_verify() {
        let secret = "0123456789abcdef0123456789abcdef";
        let args = TokenArgs {
            sub: "alice".into(),
            rooms: vec!["lobby".into(), "team-*".into()],
            ttl: Duration::from_secs(60),
            alg: JwtAlgorithm::Hs256,
            secret: Some(secret.into()),
            private_key_file: None,
            issuer: None,
            audience: None,
        };
        let token = args.mint().expect("mints");
        let verifier =
            roomcast_gateway::auth::Verifier::new(&AuthConfig::hs256(secret.as_bytes().to_vec()))
                .expect("ok");
        let claims = verifier.verify(&token).expect("verifies");
        assert_eq!(claims.sub, "alice");
        assert!(claims.may_access("team-red"));
        assert!(!claims.may_access("other"));
    }
}
