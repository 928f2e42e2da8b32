//! The outbound WebSocket every AI provider uses: `wss://` with rustls and the system's
//! root certificates, custom auth headers, a connect timeout, and upgrade failures
//! turned into one readable error (status + the provider's message, never the key).
//!
//! It also holds what every provider's socket task does the same way, once: the
//! keepalive ping period, the setup and close timeouts, the split socket types, a send
//! that gives up on a stalled peer, and the polite close (our Close, then the echo).

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::socket::{self, ProviderStream};
use crate::ws_read::LastMessage;

pub type ProviderWs = WebSocketStream<ProviderStream>;
/// The write half of a provider socket.
pub type Sink = SplitSink<ProviderWs, Message>;

/// Splits a provider socket into its write half and its read half (see [`Stream`]).
pub fn split(socket: ProviderWs) -> (Sink, Stream) {
    let (sink, inner) = socket.split();
    (
        sink,
        Stream {
            inner,
            last: LastMessage::default(),
        },
    )
}

/// The read half of a provider socket: keeps the last message it gave out until the
/// next one has been read, so the read buffer can shrink again ([`crate::ws_read`]).
pub struct Stream {
    inner: SplitStream<ProviderWs>,
    last: LastMessage,
}

impl futures_util::Stream for Stream {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = std::task::ready!(this.inner.poll_next_unpin(cx));
        this.last.keep(&item);
        std::task::Poll::Ready(item)
    }
}
/// What one read of the socket gives (`None`: it ended without a Close).
pub type Incoming = Option<Result<Message, tungstenite::Error>>;

/// Keepalive: none of the provider protocols has an application-level ping, and
/// WebSocket pings keep NATs and proxies from dropping a quiet socket.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// From the socket being open to the provider's setup acknowledgement.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for the peer's Close echo (or for our Close to go out) when we
/// close; the call task aborts a provider task that takes longer than a second.
pub const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// A provider socket that accepts nothing for this long is considered dead.
pub const WRITE_STALL: Duration = Duration::from_secs(5);

/// Connect + TLS + upgrade must finish within this, or the call is ended.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest provider message accepted. Audio deltas are a few KiB to tens of KiB; the
/// largest legitimate messages are session echoes (instructions and tool schemas) and
/// tool calls, a few hundred KiB at most. Anything bigger ends the call as a provider
/// error instead of being buffered (tungstenite's own default is 64 MiB per message).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// tungstenite's read size (see `connect_with`).
const READ_BUFFER_BYTES: usize = 2 * 1024;
/// Longest provider error body kept for the log line.
const MAX_BODY: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid provider URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("connecting to {url} timed out after {} s", CONNECT_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("{url} refused the upgrade: HTTP {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot connect to {url}: {reason}")]
    Failed { url: String, reason: String },
}

impl ConnectError {
    /// The HTTP status of a refused upgrade.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Opens the provider socket. `secrets` are values that must never appear in errors
/// (they are replaced by `[redacted]` if the server echoes them).
pub async fn connect(
    url: &str,
    headers: &[(&'static str, String)],
    secrets: &[&str],
) -> Result<ProviderWs, ConnectError> {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    connect_with(url, &headers, secrets).await
}

/// [`connect`] with header names known only at run time (a backend's configured
/// extra headers).
pub async fn connect_with(
    url: &str,
    headers: &[(&str, &str)],
    secrets: &[&str],
) -> Result<ProviderWs, ConnectError> {
    let shown = crate::redact::url(url);
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::BadUrl {
            url: shown.clone(),
            reason: crate::redact::scrub(&e.to_string(), url),
        })?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(value).map_err(|_| ConnectError::BadUrl {
            url: shown.clone(),
            reason: format!("header {name} has characters not allowed in HTTP"),
        })?;
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad_header_name(&shown, name))?;
        request.headers_mut().insert(name, value);
    }
    let config = WebSocketConfig::default()
        // Allocated up front per connection, and zeroed up to this much before every
        // read attempt (the memset was 3 % of the daemon's CPU at 4 KiB): provider
        // messages are one to a few KiB, a larger one just takes more reads.
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    // Boxed: connect + TLS + upgrade is an 11 KB future; inline, every provider's
    // future would reserve it for the whole call instead of the first few milliseconds.
    let attempt = Box::pin(async move {
        let stream = socket::open(&request).await.map_err(socket_error)?;
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await
    });
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => Err(ConnectError::Timeout { url: shown }),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(ConnectError::Refused {
                url: shown,
                status,
                body: redact(
                    &crate::redact::scrub(&clip(body.trim(), MAX_BODY), url),
                    secrets,
                ),
            })
        }
        Ok(Err(e)) => Err(ConnectError::Failed {
            url: shown,
            // tungstenite's text may quote the URL it was given.
            reason: redact(&crate::redact::scrub(&e.to_string(), url), secrets),
        }),
    }
}

/// In tungstenite's terms, as its own connect reported them (one error type for the
/// whole connect).
fn socket_error(e: socket::StreamError) -> tungstenite::Error {
    use tungstenite::error::{TlsError, UrlError};
    match e {
        socket::StreamError::NoHost => tungstenite::Error::Url(UrlError::NoHostName),
        socket::StreamError::Scheme => tungstenite::Error::Url(UrlError::UnsupportedUrlScheme),
        socket::StreamError::ServerName(_) => tungstenite::Error::Tls(TlsError::InvalidDnsName),
        socket::StreamError::Io(e) => tungstenite::Error::Io(e),
        e @ socket::StreamError::NoRoots => tungstenite::Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            e.to_string(),
        )),
    }
}

fn bad_header_name(url: &str, name: &str) -> ConnectError {
    ConnectError::BadUrl {
        url: url.to_owned(),
        reason: format!("{name:?} is not a valid HTTP header name"),
    }
}

/// Code and reason of a received Close frame; 1005 ("no status received", RFC 6455)
/// when the peer sent none.
pub fn close_parts(
    frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> (u16, String) {
    frame
        .map(|f| (u16::from(f.code), f.reason.to_string()))
        .unwrap_or((1005, String::new()))
}

/// The keepalive timer: first tick one period from now; late ticks are not bunched.
pub fn ping_timer() -> Interval {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping
}

/// A send that failed: the socket is gone, or the peer stopped reading.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("socket error on send: {0}")]
    Socket(#[from] tungstenite::Error),
    #[error("socket accepted nothing for {} s", WRITE_STALL.as_secs())]
    Stalled,
}

/// Sends one message, giving up after [`WRITE_STALL`] (a peer that stops reading must
/// not hold the provider task, and with it the call, forever).
pub async fn send(sink: &mut Sink, msg: Message) -> Result<(), SendError> {
    match tokio::time::timeout(WRITE_STALL, sink.send(msg)).await {
        Ok(result) => result.map_err(SendError::from),
        Err(_) => Err(SendError::Stalled),
    }
}

/// Our Close (code 1000 with `reason`), then, when `stream` is given, the peer's echo;
/// all within [`CLOSE_WAIT`]. Errors are moot: the call is ending either way.
pub async fn close_politely(sink: &mut Sink, stream: Option<&mut Stream>, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if sink.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        let Some(stream) = stream else { return };
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
}

/// Closes an unsplit socket (setup failures, `check`) within [`CLOSE_WAIT`].
pub async fn close_unsplit(ws: &mut ProviderWs) {
    let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(None)).await;
}

/// Replaces every occurrence of each non-empty secret.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s, "[redacted]");
    }
    out
}

fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_text() {
        assert_eq!(
            redact("bad key sk-abcdef given", &["sk-abcdef", ""]),
            "bad key [redacted] given"
        );
    }

    #[tokio::test]
    async fn refused_upgrade_reports_status_and_body() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let body = r#"{"error":{"message":"Incorrect API key provided: sk-test-123"}}"#;
            let resp = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                body.len(),
                body
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        });
        let url = format!("ws://{addr}/v1/realtime?model=x");
        let err = connect(
            &url,
            &[("authorization", "Bearer sk-test-123".into())],
            &["sk-test-123"],
        )
        .await
        .unwrap_err();
        assert_eq!(err.status(), Some(401));
        let text = err.to_string();
        assert!(text.contains("Incorrect API key"), "{text}");
        assert!(!text.contains("sk-test-123"), "{text}");
    }

    /// `send` then `close_politely` against a real loopback WebSocket: the peer sees the
    /// message, then our Close with code 1000 and the reason, and we read its echo.
    #[tokio::test]
    async fn send_then_polite_close_reach_the_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut seen = Vec::new();
            // tungstenite answers the Close itself; the stream then ends.
            while let Some(Ok(m)) = ws.next().await {
                seen.push(m);
            }
            seen
        });
        let socket = connect(&format!("ws://{addr}/"), &[], &[]).await.unwrap();
        let (mut sink, mut stream) = split(socket);
        send(&mut sink, Message::text("hello")).await.unwrap();
        close_politely(&mut sink, Some(&mut stream), "call ended").await;
        let seen = peer.await.unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], Message::text("hello"));
        let Message::Close(Some(frame)) = &seen[1] else {
            panic!("expected a Close frame, got {:?}", seen[1]);
        };
        assert_eq!(u16::from(frame.code), 1000);
        assert_eq!(frame.reason.as_str(), "call ended");
        // Our side read the echo, so nothing is left to read.
        assert!(stream.next().await.is_none());
    }
}
