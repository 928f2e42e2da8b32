//! The one FreeSWITCH `mod_audio_stream` client that `voicebridge call` and `voicebridge
//! loadtest` share: what the module does on the wire, written once.
//!
//! - [`dial`]: the module's handshake: no subprotocol, `Origin: http://<host>:<port>`, an
//!   optional `Authorization: Bearer` (its `STREAM_EXTRA_HEADERS`), and it gives up if the
//!   upgrade takes longer than [`HANDSHAKE_TIMEOUT`].
//! - [`Leg`]: the call once connected: the metadata text frame, binary audio frames,
//!   pings, what comes back sorted into [`Inbound`] (playback audio, text such as
//!   `streamAudio`/`clearAudio`, which [`super::wire`] decodes, Close), and the two ways a
//!   call ends: our hang-up (Close 1000 "Normal closure", then up to [`CLOSE_WAIT`] for the
//!   server's Close) or the server's Close, answered.
//!
//! The media clock is the tool's own: `call` ticks one interval per call (its playback
//! simulation needs every tick), `loadtest` drives thousands of calls from one shared
//! timer wheel. Both send one frame of [`FRAME_MS`] per period through [`Leg`].
//! See `docs/protocols/freeswitch-mod_audio_stream.md`, sections 1–4. The tests' fake
//! FreeSWITCH (`tests/common/fake_freeswitch.rs`) is deliberately separate: it is the
//! byte-faithful reference this client is checked against, not a user of it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Uri};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// FreeSWITCH's media clock period (ptime), and the module's default message size
/// (`STREAM_BUFFER_SIZE`).
pub const FRAME_MS: u32 = 20;
/// The module gives up if TCP connect + upgrade take longer than this (doc §2).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the module waits for the server's Close after sending its own (doc §3).
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// tungstenite's read size for every socket of the client tools. tungstenite zeroes this
/// much before each read attempt, and its default (128 KiB) made that memset a quarter of
/// the load generator's CPU at 500 calls; the frames the tools read are 0.2–2 KiB, and a
/// larger message simply takes more reads.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The WebSocket settings of every socket the client tools open or accept (callers of
/// each protocol and the load test's mock provider).
pub fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)
}

/// The `Origin` header the module sends: built from the target, port always written.
pub fn origin(uri: &Uri) -> Option<String> {
    let host = uri.host()?;
    let default_port = if uri.scheme_str() == Some("wss") {
        443
    } else {
        80
    };
    Some(format!(
        "http://{host}:{}",
        uri.port_u16().unwrap_or(default_port)
    ))
}

/// Why no call was set up.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    BadUrl(String),
    #[error("the host cannot be used in an Origin header")]
    BadOrigin,
    #[error("the token has characters not allowed in a header")]
    BadToken,
    #[error("no WebSocket upgrade within {} ms", HANDSHAKE_TIMEOUT.as_millis())]
    Timeout,
    /// The server answered the upgrade with an HTTP error.
    #[error("upgrade refused: HTTP {status}")]
    Refused { status: u16, body: Option<Vec<u8>> },
    /// TCP, TLS or WebSocket failure. May quote the URL: scrub before printing.
    #[error("{0}")]
    Transport(tungstenite::Error),
}

/// Connects to `url` the way the module does. `bearer` is the token alone.
pub async fn dial(url: &str, origin: &str, bearer: Option<&str>) -> Result<Leg, DialError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| DialError::BadUrl(e.to_string()))?;
    let origin = HeaderValue::from_str(origin).map_err(|_| DialError::BadOrigin)?;
    request.headers_mut().insert(http::header::ORIGIN, origin);
    if let Some(token) = bearer {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| DialError::BadToken)?;
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    // `true`: Nagle off, as libwsc does; 20 ms frames must not wait for each other.
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Err(_) => Err(DialError::Timeout),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(DialError::Refused {
            status: resp.status().as_u16(),
            body: resp.body().clone(),
        }),
        Ok(Err(e)) => Err(DialError::Transport(e)),
        Ok(Ok((ws, _response))) => Ok(Leg { ws }),
    }
}

/// What the server sent, as the module's side sees it.
#[derive(Debug)]
pub enum Inbound {
    /// A binary frame: playback audio in the call's codec.
    Audio(Bytes),
    /// A text frame: `streamAudio`, `clearAudio` or anything else ([`super::wire`]).
    Text(Utf8Bytes),
    /// tungstenite queues the Pong itself and flushes it on the next read or write.
    Ping,
    Pong,
    /// The server's Close (it closed first, or echoed ours).
    Closed(Option<CloseFrame>),
    /// The connection failed.
    Lost(tungstenite::Error),
    /// The connection ended without any Close frame.
    Ended,
}

fn classify(msg: Option<Result<Message, tungstenite::Error>>) -> Option<Inbound> {
    Some(match msg {
        Some(Ok(Message::Binary(b))) => Inbound::Audio(b),
        Some(Ok(Message::Text(t))) => Inbound::Text(t),
        Some(Ok(Message::Ping(_))) => Inbound::Ping,
        Some(Ok(Message::Pong(_))) => Inbound::Pong,
        Some(Ok(Message::Close(frame))) => Inbound::Closed(frame),
        // Raw frames are never returned by a read.
        Some(Ok(Message::Frame(_))) => return None,
        Some(Err(e)) => Inbound::Lost(e),
        None => Inbound::Ended,
    })
}

/// How our hang-up went.
#[derive(Debug)]
pub struct HangUp {
    /// Our Close went out.
    pub sent: bool,
    /// The server's Close came back: its code, and how long after ours.
    pub echo: Option<(Option<u16>, Duration)>,
    /// The connection failed (sending our Close, or while waiting for theirs).
    pub error: Option<tungstenite::Error>,
}

/// One connected call.
pub struct Leg {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Leg {
    /// A text frame: the metadata (sent verbatim).
    pub async fn send_text(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::text(text)).await
    }

    /// One binary audio message, written at once.
    pub async fn send_audio(&mut self, payload: Bytes) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::Binary(payload)).await
    }

    /// One binary audio message, queued until [`Leg::flush`] (a catch-up burst is one
    /// write, as the module's would be).
    pub async fn feed_audio(&mut self, payload: Bytes) -> Result<(), tungstenite::Error> {
        self.ws.feed(Message::Binary(payload)).await
    }

    pub async fn flush(&mut self) -> Result<(), tungstenite::Error> {
        self.ws.flush().await
    }

    /// The module's heartbeat (`STREAM_HEART_BEAT`): a ping with payload "ping".
    pub async fn ping(&mut self) -> Result<(), tungstenite::Error> {
        self.ws
            .send(Message::Ping(Bytes::from_static(b"ping")))
            .await
    }

    /// The next thing the server sent. Cancel-safe, so it can sit in a `select!`.
    pub async fn next(&mut self) -> Inbound {
        loop {
            if let Some(inbound) = classify(self.ws.next().await) {
                return inbound;
            }
        }
    }

    /// The module's hang-up: Close 1000 "Normal closure", then wait for the server's
    /// Close. What arrives within [`CLOSE_WAIT`] goes to `heard` (after that the module has
    /// torn the call down and later audio is lost); `grace` waits longer still, only to
    /// tell a late Close from none.
    pub async fn hang_up(&mut self, grace: Duration, mut heard: impl FnMut(Inbound)) -> HangUp {
        let mut out = HangUp {
            sent: false,
            echo: None,
            error: None,
        };
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "Normal closure".into(),
        };
        let sent_at = Instant::now();
        if let Err(e) = self.ws.send(Message::Close(Some(frame))).await {
            out.error = Some(e);
            return out;
        }
        out.sent = true;
        let deadline = sent_at + CLOSE_WAIT + grace;
        loop {
            let Ok(msg) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                break;
            };
            match classify(msg) {
                None => {}
                Some(Inbound::Ended) => break,
                Some(Inbound::Lost(e)) => {
                    out.error = Some(e);
                    break;
                }
                Some(Inbound::Closed(frame)) => {
                    out.echo = Some((frame.map(|f| u16::from(f.code)), sent_at.elapsed()));
                    break;
                }
                Some(inbound) if sent_at.elapsed() <= CLOSE_WAIT => heard(inbound),
                Some(_) => {}
            }
        }
        out
    }

    /// The server closed first: keep reading for up to [`CLOSE_WAIT`], so tungstenite
    /// sends its automatic Close reply as the module would; what still arrives goes to
    /// `heard`.
    pub async fn answer_close(&mut self, mut heard: impl FnMut(Inbound)) {
        let drain = async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if let Some(inbound) = classify(Some(Ok(msg))) {
                    heard(inbound);
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_is_http_host_and_port_as_the_module_writes_it() {
        let o = |u: &str| origin(&u.parse::<Uri>().unwrap());
        assert_eq!(
            o("ws://127.0.0.1:9090/call/x").as_deref(),
            Some("http://127.0.0.1:9090")
        );
        assert_eq!(
            o("ws://example.com/x").as_deref(),
            Some("http://example.com:80")
        );
        assert_eq!(
            o("wss://example.com").as_deref(),
            Some("http://example.com:443")
        );
    }
}
