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
//! - `exp` is required; `nbf` is honoured when present; an `iat` in the future is refused
//!   (`token_not_yet_valid`); all with [`AuthConfig::leeway_secs`] of clock skew (default
//!   [`DEFAULT_LEEWAY_SECS`]).
//! - `iss` and `aud` are checked only when configured, and are then required. Without a
//!   configured audience an `aud` claim is ignored.
//! - `sub` is the user id: a [`UserId`] (1–256 bytes, no leading or trailing white space, no
//!   control, format or other invisible characters; see [`roomcast_schemas::names`]).
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
use roomcast_schemas::UserId;
use roomcast_schemas::names::{check_room, room_matches};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

mod mint;
mod request;
#[cfg(test)]
mod tests;
mod verify;

pub use mint::{Minter, random_secret};
pub use request::token_from_request;
pub use verify::Verifier;

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
    pub sub: UserId,
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
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("token is not valid yet")]
    TokenNotYetValid,
    /// `aud` is missing or does not name this deployment.
    #[error("token audience is not accepted")]
    InvalidAudience,
    /// `iss` is missing or not the configured issuer.
    #[error("token issuer is not accepted")]
    InvalidIssuer,
    /// Required claims missing or malformed: `exp`, `sub` (a [`UserId`]) or `rooms` (a list of
    /// room patterns).
    #[error(
        "invalid token claims: `exp` must be a number, `sub` a user id (1-256 bytes, no surrounding spaces, no control or invisible characters) and `rooms` a list of room patterns"
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
