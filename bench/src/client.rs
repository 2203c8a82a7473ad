//! Client connections: TCP from a chosen 127.0.0.x source address, the WebSocket handshake
//! (with a JWT for Roomcast), the Socket.IO connect, and joining a room.

use crate::protocol::{ENGINE_IO_PONG, Incoming, Target};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// What the server speaks.
    pub target: Target,
    /// Its address.
    pub addr: SocketAddr,
    /// Process ids whose CPU time and memory are the server's.
    pub pids: Vec<u32>,
    /// Signs Roomcast handshake tokens; `None` for servers without authentication.
    pub minter: Option<TokenMinter>,
}

/// Mints HS256 tokens like `roomcast token` does.
#[derive(Clone)]
pub struct TokenMinter {
    key: EncodingKey,
    secret: std::sync::Arc<str>,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenMinter(<redacted>)")
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    rooms: [&'a str; 1],
    iat: u64,
    exp: u64,
}

impl TokenMinter {
    /// Signs with the HS256 `secret`.
    pub fn hs256(secret: &str) -> Self {
        // An `Err` only means a provider is already installed.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        TokenMinter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            secret: secret.into(),
        }
    }

    /// The secret, to hand to a load-generator child process (through its environment).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// A token for `sub` allowing every room, valid for `ttl`.
    pub fn mint(&self, sub: &str, ttl: Duration) -> Result<String, ConnectError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub,
            rooms: ["*"],
            iat,
            exp: iat + ttl.as_secs().max(1),
        };
        jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .map_err(|err| ConnectError::Token(err.to_string()))
    }
}

/// Client socket settings.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// WebSocket read buffer per connection, in bytes.
    pub read_buffer: usize,
    /// WebSocket write buffer per connection, in bytes.
    pub write_buffer: usize,
    /// Longest time for TCP connect + WebSocket (+ Socket.IO) handshake + join.
    pub timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            read_buffer: 8 * 1024,
            write_buffer: 8 * 1024,
            timeout: Duration::from_secs(15),
        }
    }
}

impl ClientConfig {
    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(self.write_buffer)
            .max_write_buffer_size(usize::MAX)
    }
}

/// A connection that could not be set up.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("tcp: {0}")]
    Tcp(#[from] std::io::Error),
    /// The server refused the WebSocket upgrade with this HTTP status.
    #[error("http {0}")]
    Http(u16),
    /// A WebSocket error during the handshake or the join.
    #[error("websocket: {0}")]
    Ws(String),
    /// The server answered with something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server closed the connection during setup.
    #[error("closed during setup")]
    Closed,
    /// Setup took longer than the configured timeout.
    #[error("timed out")]
    Timeout,
    /// A token could not be minted.
    #[error("token: {0}")]
    Token(String),
}

impl ConnectError {
    /// A short label for counting failures by kind.
    pub fn kind(&self) -> String {
        match self {
            ConnectError::Tcp(err) => format!("tcp {:?}", err.kind()),
            ConnectError::Http(status) => format!("http {status}"),
            ConnectError::Ws(_) => "websocket".to_owned(),
            ConnectError::Protocol(_) => "protocol".to_owned(),
            ConnectError::Closed => "closed".to_owned(),
            ConnectError::Timeout => "timeout".to_owned(),
            ConnectError::Token(_) => "token".to_owned(),
        }
    }
}

impl From<tungstenite::Error> for ConnectError {
    fn from(err: tungstenite::Error) -> Self {
        match err {
            tungstenite::Error::Http(response) => ConnectError::Http(response.status().as_u16()),
            tungstenite::Error::Io(err) => ConnectError::Tcp(err),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                ConnectError::Closed
            }
            other => ConnectError::Ws(other.to_string()),
        }
    }
}

/// Source addresses to spread connections over: `127.0.0.2` … `127.0.0.{N+1}`, each with its
/// own range of ephemeral ports (`None` for `n ≤ 1`: the kernel picks, which is `127.0.0.1`
/// towards a loopback server, shared with everything else on the machine).
pub fn source_addresses(n: usize) -> Vec<Option<IpAddr>> {
    if n <= 1 {
        return vec![None];
    }
    (2..=n.min(253) + 1)
        .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8))))
        .collect()
}

/// Opens a TCP connection from `source` and completes the WebSocket handshake (and for
/// Socket.IO the namespace connect), within `config.timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    sub: &str,
    token: Option<&str>,
    config: &ClientConfig,
) -> Result<Ws, ConnectError> {
    tokio::time::timeout(
        config.timeout,
        connect_inner(endpoint, source, sub, token, config),
    )
    .await
    .map_err(|_| ConnectError::Timeout)?
}

async fn connect_inner(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    sub: &str,
    token: Option<&str>,
    config: &ClientConfig,
) -> Result<Ws, ConnectError> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(endpoint.addr).await?;
    stream.set_nodelay(true)?;
    // Close with a reset: the load generator's closed sockets leave no TIME_WAIT behind to
    // hold ephemeral ports that the next run needs.
    stream.set_zero_linger()?;
    let url = format!("ws://{}{}", endpoint.addr, endpoint.target.ws_path());
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ConnectError::Token("token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config.ws_config()))
            .await?;
    if let Some(packet) = endpoint.target.connect_packet(sub) {
        await_frame(&mut ws, endpoint.target, |f| matches!(f, Incoming::Open)).await?;
        ws.send(Message::text(packet)).await?;
        await_frame(&mut ws, endpoint.target, |f| {
            matches!(f, Incoming::Connected)
        })
        .await?;
    }
    Ok(ws)
}

/// Reads frames until one satisfies `wanted` (answering Socket.IO pings on the way); an error
/// frame or the end of the connection fails.
pub async fn await_frame(
    ws: &mut Ws,
    target: Target,
    wanted: impl Fn(&Incoming) -> bool,
) -> Result<Incoming, ConnectError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame = target.decode(&text);
                if wanted(&frame) {
                    return Ok(frame);
                }
                match frame {
                    Incoming::Ping => ws.send(Message::text(ENGINE_IO_PONG)).await?,
                    Incoming::Error(text) => return Err(ConnectError::Protocol(text)),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(_))) | None => return Err(ConnectError::Closed),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
        }
    }
}

/// Joins `room` and waits for the answer, within `timeout`.
pub async fn join(
    ws: &mut Ws,
    target: Target,
    room: &str,
    timeout: Duration,
) -> Result<(), ConnectError> {
    tokio::time::timeout(timeout, async {
        ws.send(Message::text(target.join_frame(room))).await?;
        await_frame(ws, target, |f| matches!(f, Incoming::Joined))
            .await
            .map(|_| ())
    })
    .await
    .map_err(|_| ConnectError::Timeout)?
}

/// Connects and joins `room` in one go.
pub async fn connect_and_join(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    sub: &str,
    room: &str,
    config: &ClientConfig,
) -> Result<Ws, ConnectError> {
    let token = match &endpoint.minter {
        Some(minter) => Some(minter.mint(sub, Duration::from_secs(3600))?),
        None => None,
    };
    let mut ws = connect(endpoint, source, sub, token.as_deref(), config).await?;
    join(&mut ws, endpoint.target, room, config.timeout).await?;
    Ok(ws)
}

/// A random lowercase hex tag (room names, event id prefixes).
pub fn random_tag() -> String {
    let bytes: [u8; 4] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
