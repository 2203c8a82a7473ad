//! Tests of JWT verification, minting and token extraction, with real keys.

use super::*;
use axum::http::HeaderMap;
use serde_json::{Value, json};

const SECRET: &[u8] = b"test-secret-0123456789abcdef-0123456789";
const OTHER_SECRET: &[u8] = b"other-secret-0123456789abcdef-012345678";
const RSA_PRIVATE: &str = include_str!("../../tests/keys/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../../tests/keys/rsa-public.pem");
const RSA_PUBLIC_PKCS1: &str = include_str!("../../tests/keys/rsa-public-pkcs1.pem");
const RSA_OTHER_PUBLIC: &str = include_str!("../../tests/keys/rsa-other-public.pem");
const EC_PRIVATE: &str = include_str!("../../tests/keys/ec-private.pem");
const EC_PUBLIC: &str = include_str!("../../tests/keys/ec-public.pem");
const EC_OTHER_PUBLIC: &str = include_str!("../../tests/keys/ec-other-public.pem");

/// base64url(`{"alg":"none","typ":"JWT"}`).
const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
/// base64url(`{"alg":"none"}`).
const NONE_HEADER_SHORT: &str = "eyJhbGciOiJub25lIn0";

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn rooms(patterns: &[&str]) -> Vec<String> {
    patterns.iter().map(|p| (*p).to_owned()).collect()
}

fn hs256_verifier() -> Verifier {
    Verifier::new(&AuthConfig::hs256(SECRET)).expect("HS256 config")
}

fn rs256_verifier() -> Verifier {
    Verifier::new(&AuthConfig::rs256(RSA_PUBLIC)).expect("RS256 config")
}

fn es256_verifier() -> Verifier {
    Verifier::new(&AuthConfig::es256(EC_PUBLIC)).expect("ES256 config")
}

fn rs256_minter() -> Minter {
    Minter::from_pem(JwtAlgorithm::Rs256, RSA_PRIVATE).expect("RSA private key")
}

fn es256_minter() -> Minter {
    Minter::from_pem(JwtAlgorithm::Es256, EC_PRIVATE).expect("EC private key")
}

/// An HS256 token over arbitrary claims, signed with `SECRET`.
fn hs256_raw(claims: &Value) -> String {
    hs256_raw_with(SECRET, claims)
}

fn hs256_raw_with(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

fn parts(token: &str) -> (&str, &str, &str) {
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        panic!("not a three-part token: {token}");
    };
    (h, p, s)
}

fn valid_claims() -> Value {
    json!({"sub": "alice", "rooms": ["lobby"], "exp": now() + 600})
}

// ---- valid tokens ----

#[test]
fn hs256_minted_token_verifies() {
    let token = Minter::hs256(SECRET)
        .mint("alice", &rooms(&["lobby", "team-*"]), HOUR)
        .expect("mint");
    let claims = hs256_verifier().verify(&token).expect("valid token");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.rooms, rooms(&["lobby", "team-*"]));
    let expected = now() + 3600;
    assert!(
        claims.exp.abs_diff(expected) <= 2,
        "exp {} vs {expected}",
        claims.exp
    );
}

#[test]
fn rs256_minted_token_verifies() {
    let token = rs256_minter()
        .mint("bob", &rooms(&["lobby"]), HOUR)
        .expect("mint");
    let claims = rs256_verifier().verify(&token).expect("valid RS256 token");
    assert_eq!(claims.sub, "bob");
    assert_eq!(claims.rooms, rooms(&["lobby"]));
}

#[test]
fn es256_minted_token_verifies() {
    let token = es256_minter()
        .mint("carol", &rooms(&["*"]), HOUR)
        .expect("mint");
    let claims = es256_verifier().verify(&token).expect("valid ES256 token");
    assert_eq!(claims.sub, "carol");
    assert!(claims.may_access("anything"));
}

#[test]
fn rsa_pkcs1_public_key_pem_is_accepted() {
    // `BEGIN RSA PUBLIC KEY` (PKCS#1) as well as `BEGIN PUBLIC KEY` (SPKI).
    let verifier = Verifier::new(&AuthConfig::rs256(RSA_PUBLIC_PKCS1)).expect("PKCS#1 public key");
    let token = rs256_minter().mint("bob", &[], HOUR).expect("mint");
    assert_eq!(verifier.verify(&token).expect("valid").sub, "bob");
}

// ---- bad signatures ----

#[test]
fn hs256_wrong_secret_is_invalid_token() {
    let token = hs256_raw_with(OTHER_SECRET, &valid_claims());
    assert_eq!(
        hs256_verifier().verify(&token).unwrap_err(),
        AuthError::InvalidToken
    );
}

#[test]
fn rs256_wrong_key_is_invalid_token() {
    let token = rs256_minter().mint("bob", &[], HOUR).expect("mint");
    let other = Verifier::new(&AuthConfig::rs256(RSA_OTHER_PUBLIC)).expect("config");
    assert_eq!(other.verify(&token).unwrap_err(), AuthError::InvalidToken);
}

#[test]
fn es256_wrong_key_is_invalid_token() {
    let token = es256_minter().mint("carol", &[], HOUR).expect("mint");
    let other = Verifier::new(&AuthConfig::es256(EC_OTHER_PUBLIC)).expect("config");
    assert_eq!(other.verify(&token).unwrap_err(), AuthError::InvalidToken);
}

#[test]
fn swapped_payload_is_invalid_token() {
    let minter = Minter::hs256(SECRET);
    let alice = minter
        .mint("alice", &rooms(&["lobby"]), HOUR)
        .expect("mint");
    let root = minter.mint("root", &rooms(&["*"]), HOUR).expect("mint");
    let (h, _, s) = parts(&alice);
    let (_, p, _) = parts(&root);
    let forged = format!("{h}.{p}.{s}");
    assert_eq!(
        hs256_verifier().verify(&forged).unwrap_err(),
        AuthError::InvalidToken
    );

    let rs = rs256_minter().mint("alice", &[], HOUR).expect("mint");
    let (h, _, s) = parts(&rs);
    let (_, p, _) = parts(&root);
    assert_eq!(
        rs256_verifier()
            .verify(&format!("{h}.{p}.{s}"))
            .unwrap_err(),
        AuthError::InvalidToken
    );
}

#[test]
fn malformed_tokens_are_invalid_token() {
    let v = hs256_verifier();
    for token in [
        "x",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "...",
        "eyJ.eyJ.",
        "Bearer x.y.z",
    ] {
        assert_eq!(
            v.verify(token).unwrap_err(),
            AuthError::InvalidToken,
            "{token:?}"
        );
    }
    assert_eq!(v.verify("").unwrap_err(), AuthError::MissingToken);
    // A readable header with an unreadable payload and someone else's signature: the signature
    // is checked before the claims are read.
    let valid = hs256_raw(&valid_claims());
    let (h, _, s) = parts(&valid);
    let garbage = format!("{h}.bm90IGpzb24.{s}");
    assert_eq!(v.verify(&garbage).unwrap_err(), AuthError::InvalidToken);
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(v.verify(&huge).unwrap_err(), AuthError::InvalidToken);
}

// ---- algorithm pinning ----

#[test]
fn alg_none_is_rejected_everywhere() {
    let valid = Minter::hs256(SECRET)
        .mint("alice", &rooms(&["*"]), HOUR)
        .expect("mint");
    let (_, payload, signature) = parts(&valid);
    let forged = [
        format!("{NONE_HEADER}.{payload}."),
        format!("{NONE_HEADER_SHORT}.{payload}."),
        format!("{NONE_HEADER}.{payload}.{signature}"),
    ];
    for verifier in [hs256_verifier(), rs256_verifier(), es256_verifier()] {
        for token in &forged {
            assert_eq!(
                verifier.verify(token).unwrap_err(),
                AuthError::InvalidToken,
                "{:?} accepted alg none",
                verifier.algorithm()
            );
        }
    }
}

#[test]
fn hs256_signed_with_rsa_public_key_is_rejected_when_rs256_configured() {
    // The classic confusion attack: the attacker knows the public key and uses it as an HMAC
    // secret.
    let minter = Minter::hs256(RSA_PUBLIC.as_bytes());
    let token = minter.mint("mallory", &rooms(&["*"]), HOUR).expect("mint");
    assert_eq!(
        rs256_verifier().verify(&token).unwrap_err(),
        AuthError::InvalidToken
    );

    let minter = Minter::hs256(EC_PUBLIC.as_bytes());
    let token = minter.mint("mallory", &rooms(&["*"]), HOUR).expect("mint");
    assert_eq!(
        es256_verifier().verify(&token).unwrap_err(),
        AuthError::InvalidToken
    );
}

#[test]
fn other_configured_algorithms_are_rejected() {
    let rs = rs256_minter().mint("bob", &[], HOUR).expect("mint");
    let es = es256_minter().mint("bob", &[], HOUR).expect("mint");
    let hs = Minter::hs256(SECRET).mint("bob", &[], HOUR).expect("mint");
    assert_eq!(
        es256_verifier().verify(&rs).unwrap_err(),
        AuthError::InvalidToken
    );
    assert_eq!(
        rs256_verifier().verify(&es).unwrap_err(),
        AuthError::InvalidToken
    );
    assert_eq!(
        hs256_verifier().verify(&rs).unwrap_err(),
        AuthError::InvalidToken
    );
    assert_eq!(
        hs256_verifier().verify(&es).unwrap_err(),
        AuthError::InvalidToken
    );
    assert_eq!(
        es256_verifier().verify(&hs).unwrap_err(),
        AuthError::InvalidToken
    );
}

#[test]
fn hs384_with_the_right_secret_is_rejected() {
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &valid_claims(),
        &EncodingKey::from_secret(SECRET),
    )
    .expect("encode");
    assert_eq!(
        hs256_verifier().verify(&token).unwrap_err(),
        AuthError::InvalidToken
    );
}

// ---- times ----

#[test]
fn expired_token() {
    let token = hs256_raw(&json!({"sub": "alice", "exp": now() - 60}));
    assert_eq!(
        hs256_verifier().verify(&token).unwrap_err(),
        AuthError::TokenExpired
    );
    assert_eq!(AuthError::TokenExpired.code(), "token_expired");
}

#[test]
fn expired_within_leeway_is_accepted() {
    let token = hs256_raw(&json!({"sub": "alice", "exp": now() - 2}));
    hs256_verifier()
        .verify(&token)
        .expect("within the 5 s leeway");
    let strict = Verifier::new(&AuthConfig::hs256(SECRET).with_leeway_secs(0)).expect("config");
    let token = hs256_raw(&json!({"sub": "alice", "exp": now() - 2}));
    assert_eq!(strict.verify(&token).unwrap_err(), AuthError::TokenExpired);
}

#[test]
fn nbf_in_the_future_beyond_leeway() {
    let token = hs256_raw(&json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 60}));
    assert_eq!(
        hs256_verifier().verify(&token).unwrap_err(),
        AuthError::TokenNotYetValid
    );
}

#[test]
fn nbf_in_the_future_within_leeway_is_accepted() {
    let token = hs256_raw(&json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 2}));
    hs256_verifier()
        .verify(&token)
        .expect("within the 5 s leeway");
    let past = hs256_raw(&json!({"sub": "alice", "exp": now() + 600, "nbf": now() - 600}));
    hs256_verifier().verify(&past).expect("nbf in the past");
}

#[test]
fn missing_or_malformed_exp_is_invalid_claims() {
    let v = hs256_verifier();
    let no_exp = hs256_raw(&json!({"sub": "alice", "rooms": ["lobby"]}));
    assert_eq!(v.verify(&no_exp).unwrap_err(), AuthError::InvalidClaims);
    let string_exp = hs256_raw(&json!({"sub": "alice", "exp": "tomorrow"}));
    assert_eq!(v.verify(&string_exp).unwrap_err(), AuthError::InvalidClaims);
    let exp = now() + 600;
    let float_exp = hs256_raw(&json!({"sub": "alice", "exp": exp as f64}));
    assert_eq!(v.verify(&float_exp).expect("float exp").exp, exp);
}

// ---- issuer and audience ----

#[test]
fn audience_checked_when_configured() {
    let v = Verifier::new(&AuthConfig::hs256(SECRET).with_audience("roomcast")).expect("config");
    let exp = now() + 600;
    let ok = hs256_raw(&json!({"sub": "a", "exp": exp, "aud": "roomcast"}));
    v.verify(&ok).expect("matching aud");
    let ok_list = hs256_raw(&json!({"sub": "a", "exp": exp, "aud": ["other", "roomcast"]}));
    v.verify(&ok_list).expect("aud list containing ours");
    let wrong = hs256_raw(&json!({"sub": "a", "exp": exp, "aud": "other"}));
    assert_eq!(v.verify(&wrong).unwrap_err(), AuthError::InvalidAudience);
    let missing = hs256_raw(&json!({"sub": "a", "exp": exp}));
    assert_eq!(v.verify(&missing).unwrap_err(), AuthError::InvalidAudience);
    assert_eq!(AuthError::InvalidAudience.code(), "invalid_audience");
}

#[test]
fn audience_ignored_when_not_configured() {
    let exp = now() + 600;
    for aud in [json!("someone"), json!(["a", "b"]), json!([])] {
        let token = hs256_raw(&json!({"sub": "a", "exp": exp, "aud": aud}));
        hs256_verifier()
            .verify(&token)
            .expect("aud without configured audience");
    }
}

#[test]
fn issuer_checked_when_configured() {
    let v = Verifier::new(&AuthConfig::hs256(SECRET).with_issuer("https://id.example"))
        .expect("config");
    let exp = now() + 600;
    let ok = hs256_raw(&json!({"sub": "a", "exp": exp, "iss": "https://id.example"}));
    v.verify(&ok).expect("matching iss");
    let wrong = hs256_raw(&json!({"sub": "a", "exp": exp, "iss": "https://evil.example"}));
    assert_eq!(v.verify(&wrong).unwrap_err(), AuthError::InvalidIssuer);
    let missing = hs256_raw(&json!({"sub": "a", "exp": exp}));
    assert_eq!(v.verify(&missing).unwrap_err(), AuthError::InvalidIssuer);
    // Without a configured issuer any `iss` is fine.
    hs256_verifier().verify(&wrong).expect("iss not configured");
}

#[test]
fn minter_issuer_and_audience_round_trip() {
    let minter = es256_minter()
        .with_issuer("roomcast-dev")
        .with_audience("roomcast");
    let config = AuthConfig::es256(EC_PUBLIC)
        .with_issuer("roomcast-dev")
        .with_audience("roomcast");
    let token = minter.mint("dave", &rooms(&["lobby"]), HOUR).expect("mint");
    Verifier::new(&config)
        .expect("config")
        .verify(&token)
        .expect("valid");
    let verifier = Verifier::new(&config).expect("config");
    let no_iss = es256_minter().with_audience("roomcast");
    let token = no_iss.mint("dave", &[], HOUR).expect("mint");
    assert_eq!(
        verifier.verify(&token).unwrap_err(),
        AuthError::InvalidIssuer
    );
    let no_aud = es256_minter().with_issuer("roomcast-dev");
    let token = no_aud.mint("dave", &[], HOUR).expect("mint");
    assert_eq!(
        verifier.verify(&token).unwrap_err(),
        AuthError::InvalidAudience
    );
    let neither = es256_minter().mint("dave", &[], HOUR).expect("mint");
    let err = verifier.verify(&neither).unwrap_err();
    assert!(
        matches!(err, AuthError::InvalidIssuer | AuthError::InvalidAudience),
        "{err:?}"
    );
}

// ---- sub and rooms ----

#[test]
fn missing_or_bad_sub_is_invalid_claims() {
    let v = hs256_verifier();
    let exp = now() + 600;
    for claims in [
        json!({"exp": exp, "rooms": ["lobby"]}),
        json!({"sub": "", "exp": exp}),
        json!({"sub": null, "exp": exp}),
        json!({"sub": 42, "exp": exp}),
        json!({"sub": ["alice"], "exp": exp}),
        json!({"sub": {"id": "alice"}, "exp": exp}),
        json!(["alice", exp]),
        json!("alice"),
    ] {
        let token = hs256_raw(&claims);
        assert_eq!(
            v.verify(&token).unwrap_err(),
            AuthError::InvalidClaims,
            "{claims}"
        );
    }
    assert_eq!(AuthError::InvalidClaims.code(), "invalid_claims");
}

#[test]
fn room_patterns() {
    let v = hs256_verifier();
    let exp = now() + 600;
    let token = hs256_raw(&json!({"sub": "a", "exp": exp, "rooms": ["lobby", "team-*"]}));
    let claims = v.verify(&token).expect("valid");
    assert!(claims.may_access("lobby"));
    assert!(!claims.may_access("lobby2"));
    assert!(!claims.may_access("lobb"));
    assert!(claims.may_access("team-"));
    assert!(claims.may_access("team-red"));
    assert!(!claims.may_access("team"));
    assert!(!claims.may_access("other"));

    let all = hs256_raw(&json!({"sub": "a", "exp": exp, "rooms": ["*"]}));
    let claims = v.verify(&all).expect("valid");
    assert!(claims.may_access("lobby") && claims.may_access("x:y.z"));

    let none = hs256_raw(&json!({"sub": "a", "exp": exp}));
    let claims = v.verify(&none).expect("valid");
    assert!(claims.rooms.is_empty());
    assert!(!claims.may_access("lobby"));

    let empty = hs256_raw(&json!({"sub": "a", "exp": exp, "rooms": []}));
    assert!(!v.verify(&empty).expect("valid").may_access("lobby"));
}

#[test]
fn bad_rooms_are_invalid_claims() {
    let v = hs256_verifier();
    let exp = now() + 600;
    for rooms in [
        json!("lobby"),
        json!(["lobby", 3]),
        json!(["bad room"]),
        json!(["a*b"]),
        json!(["**"]),
        json!([""]),
        json!(["x".repeat(129)]),
        json!({"lobby": true}),
    ] {
        let token = hs256_raw(&json!({"sub": "a", "exp": exp, "rooms": rooms}));
        assert_eq!(
            v.verify(&token).unwrap_err(),
            AuthError::InvalidClaims,
            "{rooms}"
        );
    }
}

#[test]
fn minter_refuses_what_the_verifier_would_refuse() {
    let minter = Minter::hs256(SECRET);
    assert!(minter.mint("", &[], HOUR).is_err());
    let err = minter.mint("a", &rooms(&["bad room"]), HOUR).unwrap_err();
    assert!(err.0.contains("room pattern"), "{err}");
}

#[test]
fn mint_rounds_ttl_up_to_whole_seconds() {
    let token = Minter::hs256(SECRET)
        .mint("a", &[], Duration::from_millis(1500))
        .expect("mint");
    let wire: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(&token)
        .expect("decode")
        .claims;
    let iat = wire["iat"].as_u64().expect("iat");
    assert_eq!(wire["exp"].as_u64(), Some(iat + 2));
    assert_eq!(wire["sub"], "a");
    assert_eq!(wire["rooms"], json!([]));
    assert!(wire.get("iss").is_none() && wire.get("aud").is_none());
}

// ---- configuration ----

#[test]
fn hs256_secret_rules() {
    let empty = Verifier::new(&AuthConfig::hs256(Vec::new())).unwrap_err();
    assert!(empty.0.contains("empty"), "{empty}");
    let short =
        Verifier::new(&AuthConfig::hs256(&b"0123456789abcdef0123456789abcde"[..])).unwrap_err();
    assert!(short.0.contains("at least 32 bytes"), "{short}");
    Verifier::new(&AuthConfig::hs256(&b"0123456789abcdef0123456789abcdef"[..])).expect("32 bytes");
}

#[test]
fn keys_that_do_not_fit_the_algorithm_are_refused() {
    let cases = [
        AuthConfig::rs256("not a pem"),
        AuthConfig::rs256(EC_PUBLIC),
        AuthConfig::rs256(RSA_PRIVATE),
        AuthConfig::rs256(""),
        AuthConfig::es256("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        AuthConfig::es256(RSA_PUBLIC),
        AuthConfig::es256(EC_PRIVATE),
        AuthConfig::public_key(JwtAlgorithm::Hs256, RSA_PUBLIC),
        AuthConfig {
            key: VerifyKey::Secret(SECRET.to_vec()),
            ..AuthConfig::rs256(RSA_PUBLIC)
        },
        AuthConfig {
            key: VerifyKey::Secret(SECRET.to_vec()),
            ..AuthConfig::es256(EC_PUBLIC)
        },
    ];
    for config in cases {
        let err = Verifier::new(&config).unwrap_err();
        assert!(config.validate().is_err());
        // No key material in the message.
        assert!(!err.0.contains("BEGIN") && !err.0.contains("MII"), "{err}");
    }
}

#[test]
fn es256_key_on_another_curve_is_refused() {
    // A P-384 public key.
    let p384 = "-----BEGIN PUBLIC KEY-----\n\
        MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEC1uWSXj2czCDwMTLWV5BFmwxdM6PX9p+\n\
        Pk9Yf9rIf374m5XP1U8q79dBhLSIuaGKC39cyUqw5gOjpAm7F/5h4EVLGp0wWoZj\n\
        zPT6XYHfJbeMfK6TKYzBKXbdrCSuwcs2\n\
        -----END PUBLIC KEY-----\n";
    assert!(Verifier::new(&AuthConfig::es256(p384)).is_err());
}

#[test]
fn empty_issuer_audience_and_huge_leeway_are_refused() {
    assert!(
        AuthConfig::hs256(SECRET)
            .with_issuer("")
            .validate()
            .is_err()
    );
    assert!(
        AuthConfig::hs256(SECRET)
            .with_audience("")
            .validate()
            .is_err()
    );
    assert!(
        AuthConfig::hs256(SECRET)
            .with_leeway_secs(u64::MAX)
            .validate()
            .is_err()
    );
    AuthConfig::hs256(SECRET)
        .with_leeway_secs(MAX_LEEWAY_SECS)
        .validate()
        .expect("max leeway");
}

#[test]
fn minter_from_pem_checks_the_key() {
    assert!(Minter::from_pem(JwtAlgorithm::Hs256, RSA_PRIVATE).is_err());
    assert!(Minter::from_pem(JwtAlgorithm::Rs256, "garbage").is_err());
    assert!(Minter::from_pem(JwtAlgorithm::Rs256, RSA_PUBLIC).is_err());
    assert!(Minter::from_pem(JwtAlgorithm::Rs256, EC_PRIVATE).is_err());
    assert!(Minter::from_pem(JwtAlgorithm::Es256, RSA_PRIVATE).is_err());
    assert!(Minter::from_pem(JwtAlgorithm::Es256, EC_PUBLIC).is_err());
    assert_eq!(rs256_minter().algorithm(), JwtAlgorithm::Rs256);
    assert_eq!(es256_minter().algorithm(), JwtAlgorithm::Es256);
}

#[test]
fn algorithm_names() {
    for alg in [
        JwtAlgorithm::Hs256,
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Es256,
    ] {
        assert_eq!(alg.as_str().parse::<JwtAlgorithm>().expect("parse"), alg);
        assert_eq!(
            alg.as_str()
                .to_lowercase()
                .parse::<JwtAlgorithm>()
                .expect("parse"),
            alg
        );
        assert_eq!(alg.to_string(), alg.as_str());
    }
    assert!("none".parse::<JwtAlgorithm>().is_err());
    assert!("HS384".parse::<JwtAlgorithm>().is_err());
}

#[test]
fn debug_output_redacts_secrets() {
    let config = AuthConfig::hs256(SECRET);
    let verifier = Verifier::new(&config).expect("config");
    let minter = Minter::hs256(SECRET);
    let rsa = rs256_minter();
    let secret = String::from_utf8_lossy(SECRET).into_owned();
    for text in [
        format!("{config:?}"),
        format!("{verifier:?}"),
        format!("{minter:?}"),
        format!("{rsa:?}"),
    ] {
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains("MII"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
    let pem = format!("{:?}", AuthConfig::rs256(RSA_PUBLIC));
    assert!(!pem.contains("BEGIN"), "{pem}");
}

#[test]
fn random_secrets_are_long_distinct_and_usable() {
    let a = random_secret();
    let b = random_secret();
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
    AuthConfig::hs256(a.clone())
        .validate()
        .expect("usable secret");
    let token = Minter::hs256(a.as_bytes())
        .mint("dev", &rooms(&["*"]), HOUR)
        .expect("mint");
    Verifier::new(&AuthConfig::hs256(a))
        .expect("config")
        .verify(&token)
        .expect("valid");
}

// ---- token extraction ----

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).expect("header value"));
    }
    map
}

#[test]
fn token_from_authorization_header() {
    for value in [
        "Bearer a.b.c",
        "bearer a.b.c",
        "BEARER a.b.c",
        "Bearer   a.b.c  ",
        "Bearer\ta.b.c",
    ] {
        let h = headers(&[("authorization", value)]);
        assert_eq!(
            token_from_request(&h, None).as_deref(),
            Some("a.b.c"),
            "{value:?}"
        );
    }
}

#[test]
fn header_wins_over_query() {
    let h = headers(&[("authorization", "Bearer from.header.x")]);
    assert_eq!(
        token_from_request(&h, Some("access_token=from.query.x")).as_deref(),
        Some("from.header.x")
    );
}

#[test]
fn token_from_query_is_percent_decoded() {
    let h = HeaderMap::new();
    assert_eq!(
        token_from_request(&h, Some("access_token=a.b.c")).as_deref(),
        Some("a.b.c")
    );
    assert_eq!(
        token_from_request(
            &h,
            Some("room=lobby&access_token=eyJ%2Ehdr.p%2Dq%5Fr.s&since=4")
        )
        .as_deref(),
        Some("eyJ.hdr.p-q_r.s")
    );
    assert_eq!(
        token_from_request(&h, Some("access_token=first&access_token=second")).as_deref(),
        Some("first")
    );
}

#[test]
fn no_token() {
    let empty = HeaderMap::new();
    assert_eq!(token_from_request(&empty, None), None);
    assert_eq!(token_from_request(&empty, Some("")), None);
    assert_eq!(token_from_request(&empty, Some("room=lobby&since=3")), None);
    assert_eq!(token_from_request(&empty, Some("access_token=")), None);
    assert_eq!(token_from_request(&empty, Some("my_access_token=x")), None);
    for value in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer   ",
        "Token a.b.c",
        "Bearera.b.c",
    ] {
        let h = headers(&[("authorization", value)]);
        assert_eq!(token_from_request(&h, None), None, "{value:?}");
    }
    // A non-bearer header does not hide a query token.
    let basic = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
    assert_eq!(
        token_from_request(&basic, Some("access_token=q.q.q")).as_deref(),
        Some("q.q.q")
    );
}

// ---- error answers ----

#[tokio::test]
async fn auth_errors_answer_401_with_code_and_message() {
    let all = [
        (AuthError::MissingToken, "missing_token"),
        (AuthError::InvalidToken, "invalid_token"),
        (AuthError::TokenExpired, "token_expired"),
        (AuthError::TokenNotYetValid, "token_not_yet_valid"),
        (AuthError::InvalidAudience, "invalid_audience"),
        (AuthError::InvalidIssuer, "invalid_issuer"),
        (AuthError::InvalidClaims, "invalid_claims"),
    ];
    for (error, code) in all {
        assert_eq!(error.code(), code);
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&body).expect("JSON body");
        assert_eq!(body["error"], code);
        assert_eq!(body["message"], error.to_string());
        assert_eq!(body.as_object().map(|o| o.len()), Some(2));
    }
}
