//! Minting tokens: the `token` subcommand and the dev-mode endpoint.

use super::verify::{install_crypto_provider, is_room_pattern};
use super::*;

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
        if let Err(error) = UserId::new(sub) {
            return Err(AuthConfigError::new(format!("invalid sub: {error}")));
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
