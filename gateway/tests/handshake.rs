//! The WebSocket handshake: every bad token is refused with HTTP 401 and a JSON body, before
//! any upgrade; good tokens upgrade, from the header or the `access_token` query parameter.

mod common;

use common::{TestApp, room};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomcast_gateway::auth::{AuthConfig, JwtAlgorithm, Minter};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RSA_PUBLIC: &str = include_str!("keys/rsa-public.pem");
const RSA_PRIVATE: &str = include_str!("keys/rsa-private.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn valid_claims() -> Value {
    json!({ "sub": "alice", "rooms": ["*"], "exp": now() + 600 })
}

/// Asserts a refused handshake: 401, JSON body with `error` and `message`.
async fn assert_refused(app: &TestApp, token: Option<&str>, expected_error: &str) {
    let request = match token {
        Some(token) => app.request_with_header(token),
        None => {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            app.ws_url().into_client_request().unwrap()
        }
    };
    let Err((status, body)) = app.try_connect(request).await else {
        panic!("handshake with {expected_error} was upgraded");
    };
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], expected_error, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(!body.to_string().contains(SECRET_MARKER));
}

/// No part of the secret may appear in a refusal.
const SECRET_MARKER: &str = "0123456789abcdef";

#[tokio::test]
async fn missing_token_is_refused() {
    let app = TestApp::start().await;
    assert_refused(&app, None, "missing_token").await;
    // The query parameter, empty, counts as missing too.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = format!("{}?access_token=", app.ws_url())
        .into_client_request()
        .unwrap();
    let Err((status, body)) = app.try_connect(request).await else {
        panic!("upgraded")
    };
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
}

#[tokio::test]
async fn bad_signature_is_refused() {
    let app = TestApp::start().await;
    let token = hs256(b"another-secret-another-secret-0123456", &valid_claims());
    assert_refused(&app, Some(&token), "invalid_token").await;
    // A tampered payload with the original signature.
    let good = app.token("alice", &["*"]);
    let parts: Vec<&str> = good.split('.').collect();
    let forged = {
        use base64_like::encode;
        encode(&json!({ "sub": "mallory", "rooms": ["*"], "exp": now() + 600 }).to_string())
    };
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    assert_refused(&app, Some(&tampered), "invalid_token").await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let app = TestApp::start().await;
    let header = base64_like::encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64_like::encode(&valid_claims().to_string());
    assert_refused(&app, Some(&format!("{header}.{payload}.")), "invalid_token").await;
    assert_refused(&app, Some(&format!("{header}.{payload}")), "invalid_token").await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused_by_an_rs256_server() {
    let app = TestApp::start_with(|config| config.auth = AuthConfig::rs256(RSA_PUBLIC)).await;
    // The classic confusion attack: the public key's PEM used as an HMAC secret.
    let forged = hs256(RSA_PUBLIC.as_bytes(), &valid_claims());
    assert_refused(&app, Some(&forged), "invalid_token").await;
    // The same server accepts a real RS256 token.
    let minter = Minter::from_pem(JwtAlgorithm::Rs256, RSA_PRIVATE).unwrap();
    let token = minter
        .mint("alice", &["*".to_owned()], Duration::from_secs(600))
        .unwrap();
    let mut client = app.connect(&token).await;
    assert_eq!(client.join(&room()).await, 0);
}

#[tokio::test]
async fn expired_token_is_refused() {
    let app = TestApp::start().await;
    let claims = json!({ "sub": "alice", "rooms": ["*"], "exp": now() - 3600 });
    assert_refused(
        &app,
        Some(&hs256(common::SECRET.as_bytes(), &claims)),
        "token_expired",
    )
    .await;
}

#[tokio::test]
async fn wrong_audience_and_issuer_are_refused() {
    let app = TestApp::start_with(|config| {
        config.auth = AuthConfig::hs256(common::SECRET)
            .with_issuer("https://issuer.example")
            .with_audience("roomcast");
    })
    .await;
    let secret = common::SECRET.as_bytes();
    let base = |iss: &str, aud: &str| json!({ "sub": "alice", "rooms": ["*"], "exp": now() + 600, "iss": iss, "aud": aud });
    assert_refused(
        &app,
        Some(&hs256(secret, &base("https://issuer.example", "other"))),
        "invalid_audience",
    )
    .await;
    assert_refused(
        &app,
        Some(&hs256(secret, &base("https://evil.example", "roomcast"))),
        "invalid_issuer",
    )
    .await;
    // Both right: upgraded.
    let good = hs256(secret, &base("https://issuer.example", "roomcast"));
    let mut client = app.connect(&good).await;
    assert_eq!(client.join(&room()).await, 0);
}

#[tokio::test]
async fn valid_token_upgrades_via_header_and_query() {
    let app = TestApp::start().await;
    let token = app.token("alice", &["*"]);
    let mut by_header = app.connect(&token).await;
    let mut by_query = app.connect_query(&token).await;
    let room = room();
    assert_eq!(by_header.join(&room).await, 0);
    assert_eq!(by_query.join(&room).await, 0);
}

/// Unpadded base64url, to hand-craft JWT parts.
mod base64_like {
    use base64::Engine;

    pub(crate) fn encode(text: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    // The test runtime is single-threaded: every task of the app logs here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = TestApp::start().await;
    let good = app.token("alice", &["*"]);
    let mut client = app.connect_query(&good).await;
    client.join(&room()).await;
    let bad = hs256(b"another-secret-another-secret-0123456", &valid_claims());
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = format!("{}?access_token={bad}", app.ws_url())
        .into_client_request()
        .unwrap();
    assert!(app.try_connect(request).await.is_err());
    assert_refused(&app, Some(&bad), "invalid_token").await;
    drop(client);
    app.stop().await.unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("/ws"), "requests were logged: {text}");
    for token in [&good, &bad] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !text.contains(signature),
            "a token reached the logs:\n{text}"
        );
    }
    assert!(
        !text.contains("access_token"),
        "the query reached the logs:\n{text}"
    );
}
