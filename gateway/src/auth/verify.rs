//! Token verification: the pinned algorithm, the claims and their checks.

use super::*;

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
pub(super) fn is_room_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => check_room(prefix).is_ok(),
        None => check_room(pattern).is_ok(),
    }
}

/// Makes sure the RustCrypto backend is the process's JWT crypto provider. A no-op when a
/// provider is already installed (by this function or by the embedding program).
pub(super) fn install_crypto_provider() {
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

        // `sub` appears as `from` in every message the user publishes, and in logs.
        let sub = match wire.sub {
            Some(Loose::Good(sub)) => UserId::new(sub).map_err(|_| AuthError::InvalidClaims)?,
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
        // A token cannot be issued in the future: an `iat` ahead of the clock would also
        // shorten its apparent lifetime (`exp` − `iat`) under a configured maximum.
        if iat.is_some_and(|iat| {
            iat > (roomcast_schemas::now_ms() / 1000).saturating_add(inner.validation.leeway)
        }) {
            return Err(AuthError::TokenNotYetValid);
        }
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
