//! The WebSocket front door: a [`Transport`] over axum's WebSocket for the session core.
//!
//! Protocol errors from the client are answered with the close code RFC 6455 §7.1.7 asks for:
//! 1007 for a text frame that is not UTF-8, 1002 for anything else the protocol forbids (a bad
//! opcode, reserved bits, a stray continuation frame, an unmasked frame), rather than by
//! dropping the TCP connection.

use crate::session::{Close, Gone, Incoming, Transport};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;

/// A WebSocket connection as a session transport.
pub(crate) struct WsTransport {
    socket: WebSocket,
}

impl WsTransport {
    /// Wraps an upgraded socket.
    pub(crate) fn new(socket: WebSocket) -> Self {
        WsTransport { socket }
    }
}

impl Transport for WsTransport {
    async fn recv(&mut self) -> Incoming {
        match self.socket.recv().await {
            None => Incoming::Closed,
            Some(Ok(Message::Text(text))) => Incoming::Text(text),
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
            // Pings are answered by the protocol layer. After the client's close frame the
            // protocol layer queued the reply; the next read sends it and reports the end.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => Incoming::Alive,
            Some(Err(err)) => classify(err),
        }
    }

    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), Gone> {
        self.socket
            .feed(Message::Text(frame))
            .await
            .map_err(|_| Gone)
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        SinkExt::flush(&mut self.socket).await.map_err(|_| Gone)
    }

    async fn ping(&mut self) -> Result<(), Gone> {
        self.socket
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(|_| Gone)
    }

    async fn close(&mut self, close: Close) -> Result<(), Gone> {
        let frame = CloseFrame {
            code: close.code,
            reason: Utf8Bytes::from_static(close.reason),
        };
        self.socket
            .send(Message::Close(Some(frame)))
            .await
            .map_err(|_| Gone)
    }

    async fn drain(&mut self) {
        while let Some(Ok(_)) = self.socket.recv().await {}
    }
}

/// What a read error means for the session.
fn classify(err: axum::Error) -> Incoming {
    use tungstenite::Error;
    match err.into_inner().downcast::<Error>() {
        Ok(err) => match *err {
            Error::Capacity(_) => Incoming::TooLarge,
            Error::Utf8(_) => Incoming::Broken(Close::INVALID_DATA),
            Error::Protocol(_) => Incoming::Broken(Close::PROTOCOL),
            _ => Incoming::Closed,
        },
        Err(_) => Incoming::Closed,
    }
}
