//! What each benchmarked server speaks, and the load generator's side of it.
//!
//! - [`Target::Roomcast`] and [`Target::Bare`]: Roomcast wire protocol v1 (JSON text frames on
//!   `GET /ws`); Roomcast verifies a JWT at the handshake, the bare server ignores it.
//! - [`Target::SocketIo`]: Engine.IO v4 / Socket.IO v5 framing over the WebSocket transport
//!   (`GET /socket.io/?EIO=4&transport=websocket`): `0{…}` open, `40` connect, `2`/`3`
//!   ping/pong, events `42["name",payload]`, acknowledged events `42<id>[…]` answered by
//!   `43<id>[…]`.
//!
//! Published events carry an index `i` (0, 1, 2, …, per publisher) and the publish time `t` in
//! their payload, so that members can count losses and duplicates and measure latency without a
//! full JSON parse on the hot path: the frames the harness builds have a fixed shape, and the
//! decoder only scans for the few numbers it needs.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A server the harness can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The Roomcast gateway (`roomcast serve`).
    Roomcast,
    /// The bare tokio-tungstenite broadcast server (`roomcast-bench bare-server`).
    Bare,
    /// The minimal Socket.IO v4 server on Node (`bench/socketio/server.js`).
    #[serde(rename = "socketio")]
    SocketIo,
}

impl Target {
    /// Every target, in report order.
    pub const ALL: [Target; 3] = [Target::Roomcast, Target::Bare, Target::SocketIo];

    /// The target's name on the command line and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Roomcast => "roomcast",
            Target::Bare => "bare",
            Target::SocketIo => "socketio",
        }
    }

    /// The WebSocket path (with query) to connect to.
    pub fn ws_path(self) -> &'static str {
        match self {
            Target::Roomcast | Target::Bare => "/ws",
            Target::SocketIo => "/socket.io/?EIO=4&transport=websocket",
        }
    }

    /// The frame that joins `room`.
    pub fn join_frame(self, room: &str) -> String {
        match self {
            Target::Roomcast | Target::Bare => format!(r#"{{"type":"join","room":"{room}"}}"#),
            // Ack id 0 is reserved for the join; publishes use their index + 1.
            Target::SocketIo => format!(r#"420["join",{{"room":"{room}"}}]"#),
        }
    }

    /// The frame that publishes event number `index` (id `{tag}-{index}`) with `data` (a JSON
    /// value) into `room`.
    pub fn publish_frame(self, room: &str, tag: &str, index: u64, data: &str) -> String {
        match self {
            Target::Roomcast | Target::Bare => format!(
                r#"{{"type":"publish","id":"{tag}-{index}","room":"{room}","event":"bench","data":{data}}}"#
            ),
            Target::SocketIo => format!(
                r#"42{ack}["publish",{{"id":"{tag}-{index}","room":"{room}","event":"bench","data":{data}}}]"#,
                ack = index + 1
            ),
        }
    }

    /// The Socket.IO namespace connect packet, carrying the user id; `None` for the others.
    pub fn connect_packet(self, sub: &str) -> Option<String> {
        match self {
            Target::SocketIo => Some(format!(r#"40{{"sub":"{sub}"}}"#)),
            Target::Roomcast | Target::Bare => None,
        }
    }

    /// Decodes a text frame received from the server.
    pub fn decode(self, text: &str) -> Incoming {
        match self {
            Target::Roomcast | Target::Bare => decode_v1(text),
            Target::SocketIo => decode_socketio(text),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown target name.
#[derive(Debug, thiserror::Error)]
#[error("unknown target {0:?}: expected roomcast, bare or socketio")]
pub struct UnknownTarget(String);

impl FromStr for Target {
    type Err = UnknownTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "roomcast" => Ok(Target::Roomcast),
            "bare" => Ok(Target::Bare),
            "socketio" | "socket.io" => Ok(Target::SocketIo),
            _ => Err(UnknownTarget(s.to_owned())),
        }
    }
}

/// A decoded server frame, reduced to what the scenarios need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A room message; `index` and `sent_ns` come from a payload built by [`payload`].
    Message {
        /// The room seq, when the server numbers messages.
        seq: Option<u64>,
        /// The publisher's event index.
        index: Option<u64>,
        /// When it was published, in nanoseconds since the harness's clock epoch.
        sent_ns: Option<u64>,
    },
    /// A publish was acknowledged.
    Ack {
        /// The publisher's event index, when the id has the harness's shape.
        index: Option<u64>,
    },
    /// A join was answered.
    Joined,
    /// Socket.IO namespace connect answered (`40{"sid":…}`).
    Connected,
    /// Engine.IO open packet (`0{…}`).
    Open,
    /// Engine.IO ping: answer [`ENGINE_IO_PONG`].
    Ping,
    /// An error frame, verbatim.
    Error(String),
    /// Anything else.
    Other,
}

/// The Engine.IO pong packet.
pub const ENGINE_IO_PONG: &str = "3";

/// The unsigned integer right after the first occurrence of `key` in `text`, starting at `from`.
fn number_after(text: &str, from: usize, key: &str) -> Option<u64> {
    let rest = text.get(from..)?;
    let start = rest.find(key)? + key.len();
    leading_number(&rest[start..])
}

fn leading_number(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text.get(..digits)?.parse().ok()
}

/// The index of an id shaped `{tag}-{index}`.
fn id_index(text: &str) -> Option<u64> {
    let start = text.find(r#""id":""#)? + 6;
    let rest = &text[start..];
    let end = rest.find('"')?;
    let id = &rest[..end];
    leading_number(&id[id.rfind('-')? + 1..])
}

/// Index and publish time of a payload inside `text` (after `data_from`).
fn payload_fields(text: &str, data_from: usize) -> (Option<u64>, Option<u64>) {
    (
        number_after(text, data_from, r#""i":"#),
        number_after(text, data_from, r#""t":"#),
    )
}

fn decode_v1(text: &str) -> Incoming {
    let Some(kind) = text
        .find(r#""type":""#)
        .and_then(|at| text.get(at + 8..))
        .and_then(|rest| rest.split('"').next())
    else {
        return Incoming::Other;
    };
    match kind {
        "message" => {
            let data_from = text.find(r#""data":"#).unwrap_or(0);
            let (index, sent_ns) = payload_fields(text, data_from);
            Incoming::Message {
                seq: number_after(text, 0, r#""seq":"#),
                index,
                sent_ns,
            }
        }
        "ack" => Incoming::Ack {
            index: id_index(text),
        },
        "joined" => Incoming::Joined,
        "error" => Incoming::Error(text.to_owned()),
        _ => Incoming::Other,
    }
}

fn decode_socketio(text: &str) -> Incoming {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(b'0') => Incoming::Open,
        Some(b'2') => Incoming::Ping,
        Some(b'4') => match bytes.get(1) {
            Some(b'0') => Incoming::Connected,
            Some(b'2') => {
                if text.starts_with(r#"42["message","#) {
                    let data_from = text.find(r#""data":"#).unwrap_or(0);
                    let (index, sent_ns) = payload_fields(text, data_from);
                    Incoming::Message {
                        seq: number_after(text, 0, r#""seq":"#),
                        index,
                        sent_ns,
                    }
                } else {
                    Incoming::Other
                }
            }
            Some(b'3') => match leading_number(&text[2..]) {
                Some(0) => Incoming::Joined,
                Some(ack) => Incoming::Ack {
                    index: Some(ack - 1),
                },
                None => Incoming::Other,
            },
            Some(b'4') => Incoming::Error(text.to_owned()),
            _ => Incoming::Other,
        },
        _ => Incoming::Other,
    }
}

/// A JSON object of exactly `size` bytes (at least its fixed part) carrying the event index `i`
/// and the publish time `t`, padded with `p`.
pub fn payload(index: u64, sent_ns: u64, size: usize) -> String {
    let mut text = format!(r#"{{"i":{index},"t":{sent_ns},"p":""#);
    let fixed = text.len() + 2;
    text.extend(std::iter::repeat_n('x', size.saturating_sub(fixed)));
    text.push_str("\"}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_schemas::{ClientFrame, ServerFrame};

    #[test]
    fn payload_has_the_requested_size_and_round_trips() {
        let p = payload(42, 1_234_567_890, 100);
        assert_eq!(p.len(), 100);
        let value: serde_json::Value = serde_json::from_str(&p).expect("json");
        assert_eq!(value["i"], 42);
        assert_eq!(value["t"], 1_234_567_890u64);
    }

    #[test]
    fn v1_frames_are_valid_client_frames() {
        let join: ClientFrame =
            serde_json::from_str(&Target::Roomcast.join_frame("r-1")).expect("join");
        assert_eq!(
            join,
            ClientFrame::Join {
                room: "r-1".try_into().unwrap(),
                since: None
            }
        );
        let text = Target::Roomcast.publish_frame("r-1", "ab", 7, &payload(7, 9, 100));
        let publish: ClientFrame = serde_json::from_str(&text).expect("publish");
        assert!(matches!(publish, ClientFrame::Publish { ref id, .. } if id == "ab-7"));
    }

    #[test]
    fn v1_server_frames_decode() {
        let message = ServerFrame::Message {
            room: "r-1".into(),
            seq: 12,
            id: "ab-7".into(),
            event: "bench".into(),
            from: "pub-0".into(),
            ts: 1_767_225_600_000,
            data: serde_json::from_str(&payload(7, 99, 100)).expect("json"),
        };
        assert_eq!(
            Target::Roomcast.decode(&message.to_json()),
            Incoming::Message {
                seq: Some(12),
                index: Some(7),
                sent_ns: Some(99)
            }
        );
        let ack = ServerFrame::Ack {
            id: "x-y-31".into(),
        }
        .to_json();
        assert_eq!(Target::Bare.decode(&ack), Incoming::Ack { index: Some(31) });
        let joined = ServerFrame::Joined {
            room: "r".into(),
            seq: 3,
        }
        .to_json();
        assert_eq!(Target::Roomcast.decode(&joined), Incoming::Joined);
        let error = ServerFrame::error(roomcast_schemas::ErrorCode::Internal, "x").to_json();
        assert!(matches!(
            Target::Roomcast.decode(&error),
            Incoming::Error(_)
        ));
    }

    #[test]
    fn socketio_frames_decode() {
        let t = Target::SocketIo;
        assert_eq!(
            t.decode(r#"0{"sid":"a","pingInterval":25000}"#),
            Incoming::Open
        );
        assert_eq!(t.decode(r#"40{"sid":"b"}"#), Incoming::Connected);
        assert_eq!(t.decode("2"), Incoming::Ping);
        assert_eq!(t.decode(r#"430[{"seq":0}]"#), Incoming::Joined);
        assert_eq!(t.decode("4313[]"), Incoming::Ack { index: Some(12) });
        let message = format!(
            r#"42["message",{{"room":"r","seq":5,"id":"ab-4","from":"p","data":{}}}]"#,
            payload(4, 77, 100)
        );
        assert_eq!(
            t.decode(&message),
            Incoming::Message {
                seq: Some(5),
                index: Some(4),
                sent_ns: Some(77)
            }
        );
        assert!(matches!(
            t.decode(r#"44{"message":"no"}"#),
            Incoming::Error(_)
        ));
        assert_eq!(
            t.publish_frame("r", "ab", 0, "1"),
            r#"421["publish",{"id":"ab-0","room":"r","event":"bench","data":1}]"#
        );
    }
}
