//! JWT authentication at the WebSocket handshake, and token minting.
//!
//! # Verification
//! A deployment accepts exactly one algorithm, pinned by [`AuthConfig::algorithm`]: HS256 with
//! a shared secret, or RS256 / ES256 with a public key in PEM. A token whose header names any
//! other algorithm is rejected before its signature is looked at, which defeats `alg: none`
//! and the classic confusion attack (an HS256 token "signed" with the RSA public key as the
//! HMAC secret).
//!
//! Claims:
//! - `exp` is required; `nbf` is honoured when present; both with [`AuthConfig::leeway_secs`]
//!   of clock skew (default [`DEFAULT_LEEWAY_SECS`]).
//! - `iss` and `aud` are checked only when configured, and are then required. Without a
//!   configured audience an `aud` claim is ignored.
//! - `sub` (a non-empty string) is the user id.
//! - `rooms` is a list of room patterns (a room name, or a prefix followed by `*`, see
//!   [`roomcast_schemas::names::room_matches`]); a missing `rooms` claim grants no room.
//!
//! A failure is an [`AuthError`], answered with HTTP 401 and
//! `{"error": "<code>", "message": "<short text>"}`; the message never contains the token or
//! key material.
//!
//! # Performance
//! [`Verifier::new`] builds the decoding key and the validation rules once; [`Verifier`] is
//! cheap to clone (one `Arc`) and [`Verifier::verify`] does no setup work.

use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use roomcast_schemas::names::{check_room, room_matches};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

#[cfg(test)]
mod tests;

/// Default leeway for `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;
/// Largest accepted leeway, in seconds (one hour).
pub const MAX_LEEWAY_SECS: u64 = 3600;
/// Shortest accepted HS256 secret, in bytes.
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// Longest accepted token, in bytes; longer tokens are rejected as `invalid_token` unread.
pub const MAX_TOKEN_LEN: usize = 32 * 1024;

/// The one JWT algorithm a deployment accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    Hs256,
    /// RSA PKCS#1 v1.5 SHA-256 with a public key (PEM).
    Rs256,
    /// ECDSA P-256 SHA-256 with a public key (PEM).
    Es256,
}

impl JwtAlgorithm {
    /// The JOSE name: `HS256`, `RS256` or `ES256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }

    fn jose(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = AuthConfigError;

    /// Parses `HS256`, `RS256` or `ES256` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Hs256, Self::Rs256, Self::Es256]
            .into_iter()
            .find(|alg| alg.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| AuthConfigError::new("algorithm must be one of HS256, RS256, ES256"))
    }
}

/// Key material for verification.
#[derive(Clone)]
pub enum VerifyKey {
    /// Shared secret (HS256).
    Secret(Vec<u8>),
    /// Public key in PEM (RS256, ES256).
    PublicPem(String),
}

/// How tokens are verified.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The pinned algorithm.
    pub algorithm: JwtAlgorithm,
    /// The key matching `algorithm`.
    pub key: VerifyKey,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Leeway for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifyKey(<redacted>)")
    }
}

impl AuthConfig {
    /// HS256 with `secret`, no issuer or audience, default leeway.
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Self {
        Self::with_key(JwtAlgorithm::Hs256, VerifyKey::Secret(secret.into()))
    }

    /// RS256 with an RSA public key in PEM (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`), no
    /// issuer or audience, default leeway.
    pub fn rs256(public_key_pem: impl Into<String>) -> Self {
        Self::public_key(JwtAlgorithm::Rs256, public_key_pem)
    }

    /// ES256 with a P-256 public key in PEM (`BEGIN PUBLIC KEY`), no issuer or audience,
    /// default leeway.
    pub fn es256(public_key_pem: impl Into<String>) -> Self {
        Self::public_key(JwtAlgorithm::Es256, public_key_pem)
    }

    /// `algorithm` with a public key in PEM, no issuer or audience, default leeway.
    /// ([`Verifier::new`] refuses it for HS256, which needs a secret.)
    pub fn public_key(algorithm: JwtAlgorithm, public_key_pem: impl Into<String>) -> Self {
        Self::with_key(algorithm, VerifyKey::PublicPem(public_key_pem.into()))
    }

    fn with_key(algorithm: JwtAlgorithm, key: VerifyKey) -> Self {
        Self {
            algorithm,
            key,
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }

    /// Requires `iss` to equal `issuer`.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires `aud` to be (or contain) `audience`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Sets the leeway for `exp` and `nbf`.
    pub fn with_leeway_secs(mut self, leeway_secs: u64) -> Self {
        self.leeway_secs = leeway_secs;
        self
    }

    /// Checks that a [`Verifier`] can be built from this configuration.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        Verifier::new(self).map(drop)
    }
}

/// The verified claims of a connection.
#[derive(Debug, Clone)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Room patterns the user may join and publish to.
    pub rooms: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch, when the token says.
    pub iat: Option<u64>,
}

impl Claims {
    /// Whether the token allows `room`.
    pub fn may_access(&self, room: &str) -> bool {
        self.rooms.iter().any(|pattern| room_matches(pattern, room))
    }
}

/// A failed authentication; answered with HTTP 401 and `{"error": code, "message": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No token in the request.
    #[error("no access token: send `Authorization: Bearer <token>` or `?access_token=<token>`")]
    MissingToken,
    /// Any other verification failure: malformed token, bad signature, algorithm other than
    /// the configured one.
    #[error("invalid token")]
    InvalidToken,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    TokenExpired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet")]
    TokenNotYetValid,
    /// `aud` is missing or does not name this deployment.
    #[error("token audience is not accepted")]
    InvalidAudience,
    /// `iss` is missing or not the configured issuer.
    #[error("token issuer is not accepted")]
    InvalidIssuer,
    /// Required claims missing or malformed: `exp`, `sub` (a non-empty string) or `rooms` (a list
    /// of room patterns).
    #[error(
        "invalid token claims: `exp` must be a number, `sub` a non-empty string and `rooms` a list of room patterns"
    )]
    InvalidClaims,
    /// The token lives longer (`exp` − `iat`) than the configured maximum, or has no `iat`
    /// while a maximum is configured.
    #[error("token lifetime (exp - iat) is longer than this server accepts, or iat is missing")]
    LifetimeTooLong,
}

impl AuthError {
    /// The stable code of the 401 body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::TokenNotYetValid => "token_not_yet_valid",
            Self::InvalidAudience => "invalid_audience",
            Self::InvalidIssuer => "invalid_issuer",
            Self::InvalidClaims => "invalid_claims",
            Self::LifetimeTooLong => "token_lifetime_too_long",
        }
    }

    /// The HTTP status of the answer: always 401.
    pub fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::ExpiredSignature => Self::TokenExpired,
            ErrorKind::ImmatureSignature => Self::TokenNotYetValid,
            ErrorKind::InvalidAudience => Self::InvalidAudience,
            ErrorKind::InvalidIssuer => Self::InvalidIssuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Self::InvalidAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Self::InvalidIssuer,
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                Self::InvalidClaims
            }
            _ => Self::InvalidToken,
        }
    }
}

/// The JSON body of a 401 answer.
#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: String,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
        };
        let challenge = [(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))];
        (self.status(), challenge, axum::Json(body)).into_response()
    }
}

/// Configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid auth configuration: {0}")]
pub struct AuthConfigError(pub String);

impl AuthConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Longest accepted `sub`, in bytes.
pub const MAX_SUB_LEN: usize = 256;

/// Whether `sub` can be a user id: 1–[`MAX_SUB_LEN`] bytes without control characters (it
/// appears as `from` in every message the user publishes, and in logs).
fn is_user_id(sub: &str) -> bool {
    !sub.is_empty() && sub.len() <= MAX_SUB_LEN && !sub.chars().any(char::is_control)
}

/// Verifies tokens with the configured algorithm and key.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.inner.algorithm)
            .field("key", &"<redacted>")
            .field("issuer", &self.inner.validation.iss)
            .field("audience", &self.inner.validation.aud)
            .field("leeway_secs", &self.inner.validation.leeway)
            .finish()
    }
}

/// Claims as they arrive: every field tolerates any JSON so that a wrong type is reported as
/// `invalid_claims` (after the signature and times were checked) rather than as a parse error.
#[derive(Deserialize)]
struct WireClaims {
    #[serde(default)]
    sub: Option<Loose<String>>,
    #[serde(default)]
    rooms: Option<Loose<Vec<String>>>,
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    iat: Option<NumericDate>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Loose<T> {
    Good(T),
    Bad(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumericDate {
    Int(u64),
    Float(f64),
    Bad(IgnoredAny),
}

impl NumericDate {
    /// Seconds, read the way the validation reads them (a float is rounded).
    fn seconds(&self) -> Option<u64> {
        match *self {
            Self::Int(secs) => Some(secs),
            Self::Float(secs) if secs.is_finite() && secs >= 0.0 && secs < u64::MAX as f64 => {
                Some(secs.round() as u64)
            }
            Self::Float(_) | Self::Bad(_) => None,
        }
    }
}

/// Whether `pattern` is a valid `rooms`-claim pattern: a room name, or a (possibly empty) prefix
/// of one followed by `*`.
fn is_room_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => check_room(prefix).is_ok(),
        None => check_room(pattern).is_ok(),
    }
}

/// Makes sure the RustCrypto backend is the process's JWT crypto provider. A no-op when a
/// provider is already installed (by this function or by the embedding program).
fn install_crypto_provider() {
    // An `Err` only means a provider is already installed, which is all that is needed.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

impl Verifier {
    /// Builds a verifier; fails on a key that does not parse for the algorithm, an HS256 secret
    /// shorter than [`MIN_HS256_SECRET_LEN`] bytes, an empty issuer or audience, or a leeway
    /// above [`MAX_LEEWAY_SECS`].
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        install_crypto_provider();
        let algorithm = config.algorithm;
        let key = decoding_key(algorithm, &config.key)?;

        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthConfigError::new(format!(
                "leeway must be at most {MAX_LEEWAY_SECS} seconds"
            )));
        }
        let mut validation = Validation::new(algorithm.jose());
        validation.leeway = config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match config.issuer.as_deref() {
            Some("") => return Err(AuthConfigError::new("issuer must not be empty")),
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match config.audience.as_deref() {
            Some("") => return Err(AuthConfigError::new("audience must not be empty")),
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.validate_aud = true;
                required.push("aud");
            }
            None => {
                // Without a configured audience, an `aud` claim is not ours to judge.
                validation.aud = None;
                validation.validate_aud = false;
            }
        }
        validation.set_required_spec_claims(&required);

        Ok(Self {
            inner: Arc::new(VerifierInner {
                algorithm,
                key,
                validation,
            }),
        })
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.inner.algorithm
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken);
        }
        let inner = &*self.inner;
        let data = jsonwebtoken::decode::<WireClaims>(token, &inner.key, &inner.validation)
            .map_err(|error| match error.kind() {
                // JSON fails either in the header (checked first, before the signature) or in
                // the claims (read only after the signature verified): a readable header
                // means a signed token whose claims are not what we accept.
                ErrorKind::Json(_) if jsonwebtoken::decode_header(token).is_ok() => {
                    AuthError::InvalidClaims
                }
                _ => AuthError::from_jwt(&error),
            })?;
        let wire = data.claims;

        let sub = match wire.sub {
            Some(Loose::Good(sub)) if is_user_id(&sub) => sub,
            _ => return Err(AuthError::InvalidClaims),
        };
        let rooms = match wire.rooms {
            None => Vec::new(),
            Some(Loose::Good(rooms)) if rooms.iter().all(|p| is_room_pattern(p)) => rooms,
            Some(_) => return Err(AuthError::InvalidClaims),
        };
        let exp = wire
            .exp
            .as_ref()
            .and_then(NumericDate::seconds)
            .ok_or(AuthError::InvalidClaims)?;
        let iat = match &wire.iat {
            None => None,
            Some(date) => Some(date.seconds().ok_or(AuthError::InvalidClaims)?),
        };
        Ok(Claims {
            sub,
            rooms,
            exp,
            iat,
        })
    }
}

fn decoding_key(algorithm: JwtAlgorithm, key: &VerifyKey) -> Result<DecodingKey, AuthConfigError> {
    match (algorithm, key) {
        (JwtAlgorithm::Hs256, VerifyKey::Secret(secret)) => {
            check_hs256_secret(secret)?;
            Ok(DecodingKey::from_secret(secret))
        }
        (JwtAlgorithm::Hs256, VerifyKey::PublicPem(_)) => Err(AuthConfigError::new(
            "HS256 needs a shared secret, not a PEM key",
        )),
        (JwtAlgorithm::Rs256 | JwtAlgorithm::Es256, VerifyKey::Secret(_)) => {
            Err(AuthConfigError::new(format!(
                "{algorithm} needs a public key in PEM, not a shared secret"
            )))
        }
        (JwtAlgorithm::Rs256 | JwtAlgorithm::Es256, VerifyKey::PublicPem(pem)) => {
            if pem.contains("PRIVATE KEY") {
                return Err(AuthConfigError::new(format!(
                    "{algorithm} verification needs the public key, not the private key"
                )));
            }
            public_decoding_key(algorithm, pem)
        }
    }
}

fn public_decoding_key(algorithm: JwtAlgorithm, pem: &str) -> Result<DecodingKey, AuthConfigError> {
    match algorithm {
        JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|_| AuthConfigError::new("RS256 key is not an RSA public key in PEM")),
        JwtAlgorithm::Es256 | JwtAlgorithm::Hs256 => {
            let bad = || AuthConfigError::new("ES256 key is not a P-256 public key in PEM");
            let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|_| bad())?;
            // Building a verifier parses the curve point: this rejects keys on other curves and
            // points that are not on P-256. (The empty signature itself just fails to verify.)
            jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256).map_err(|_| bad())?;
            Ok(key)
        }
    }
}

fn check_hs256_secret(secret: &[u8]) -> Result<(), AuthConfigError> {
    if secret.is_empty() {
        return Err(AuthConfigError::new("HS256 secret is empty"));
    }
    if secret.len() < MIN_HS256_SECRET_LEN {
        return Err(AuthConfigError::new(format!(
            "HS256 secret is {} bytes; it must be at least {MIN_HS256_SECRET_LEN} bytes",
            secret.len()
        )));
    }
    Ok(())
}

/// The token of a handshake: `Authorization: Bearer …` or the `access_token` query parameter.
///
/// The scheme is matched case-insensitively; the query parameter is percent-decoded. A bearer
/// token in the header wins over the query. Empty tokens count as absent.
pub fn token_from_request(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get_all(AUTHORIZATION)
        .iter()
        .find_map(|value| bearer_token(value.to_str().ok()?))
        .map(str::to_owned)
        .or_else(|| query.and_then(query_token))
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn query_token(query: &str) -> Option<String> {
    if !query.contains("access_token") {
        return None;
    }
    // axum's `Query` extractor does the `application/x-www-form-urlencoded` decoding.
    let uri = Uri::try_from(format!("/?{query}")).ok()?;
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?;
    pairs
        .into_iter()
        .find(|(name, _)| name == "access_token")
        .map(|(_, token)| token)
        .filter(|t| !t.is_empty())
}

/// Mints tokens (the `token` subcommand and the dev-mode endpoint).
#[derive(Clone)]
pub struct Minter {
    algorithm: JwtAlgorithm,
    key: EncodingKey,
    header: Header,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// The claims a [`Minter`] writes.
#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    rooms: &'a [String],
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl Minter {
    /// HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        install_crypto_provider();
        Self::with_key(JwtAlgorithm::Hs256, EncodingKey::from_secret(secret))
    }

    /// RS256 or ES256 with a private key in PEM: RSA as PKCS#1 (`BEGIN RSA PRIVATE KEY`) or
    /// PKCS#8 (`BEGIN PRIVATE KEY`); P-256 as PKCS#8 (`BEGIN PRIVATE KEY`).
    pub fn from_pem(
        algorithm: JwtAlgorithm,
        private_key_pem: &str,
    ) -> Result<Self, AuthConfigError> {
        install_crypto_provider();
        let pem = private_key_pem.as_bytes();
        let key = match algorithm {
            JwtAlgorithm::Hs256 => {
                return Err(AuthConfigError::new(
                    "HS256 signs with a shared secret, not a PEM key",
                ));
            }
            JwtAlgorithm::Rs256 => EncodingKey::from_rsa_pem(pem),
            JwtAlgorithm::Es256 => EncodingKey::from_ec_pem(pem),
        };
        let bad = || {
            AuthConfigError::new(match algorithm {
                JwtAlgorithm::Rs256 => {
                    "RS256 key is not an RSA private key in PEM (PKCS#1 or PKCS#8)"
                }
                _ => "ES256 key is not a P-256 private key in PEM (PKCS#8)",
            })
        };
        let key = key.map_err(|_| bad())?;
        // Deriving the public key parses the private key completely.
        Jwk::from_encoding_key(&key, algorithm.jose()).map_err(|_| bad())?;
        Ok(Self::with_key(algorithm, key))
    }

    fn with_key(algorithm: JwtAlgorithm, key: EncodingKey) -> Self {
        Self {
            algorithm,
            key,
            header: Header::new(algorithm.jose()),
            issuer: None,
            audience: None,
        }
    }

    /// Also writes `iss: issuer` into every token.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Also writes `aud: audience` into every token.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The algorithm tokens are signed with.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Mints a token for `sub` with room patterns `rooms`, valid for `ttl` (whole seconds,
    /// rounded up). Fails on an empty `sub` or an invalid room pattern, so that every minted
    /// token passes verification.
    pub fn mint(
        &self,
        sub: &str,
        rooms: &[String],
        ttl: Duration,
    ) -> Result<String, AuthConfigError> {
        if sub.is_empty() {
            return Err(AuthConfigError::new("sub must not be empty"));
        }
        if let Some(bad) = rooms.iter().find(|p| !is_room_pattern(p)) {
            return Err(AuthConfigError::new(format!(
                "invalid room pattern {bad:?}: a room name, or a prefix followed by `*`"
            )));
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| AuthConfigError::new("system clock is before 1970"))?
            .as_secs();
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let claims = MintClaims {
            sub,
            rooms,
            iat,
            exp: iat.saturating_add(ttl_secs),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|_| {
            AuthConfigError::new(format!(
                "cannot sign a {} token with this key",
                self.algorithm
            ))
        })
    }
}

/// A fresh random HS256 secret for development: 32 random bytes, hex-encoded (64 characters).
pub fn random_secret() -> String {
    use std::fmt::Write as _;
    let bytes: [u8; 32] = rand::random();
    bytes
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            // Writing to a `String` cannot fail.
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}
