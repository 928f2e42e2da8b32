//! A fake FreeSWITCH `mod_audio_stream` client, written by hand over a raw
//! `tokio::net::TcpStream`.
//!
//! Why by hand and not with a WebSocket library: the module's client (libwsc
//! v1.1.0) writes its handshake and frames itself, with quirks a library would
//! "fix" (no space after the header colon, a deflate offer with
//! `client_max_window_bits=9`, `Origin:` built from the target, no
//! `User-Agent`). A test against voicebridge only proves something about the
//! real module if the bytes on the wire are the module's bytes. Every quirk
//! below quotes the behaviour from `docs/protocols/freeswitch-mod_audio_stream.md`
//! (sections 2 and 3) that it reproduces.
//!
//! Shape of the API:
//! - [`FakeFreeSwitch::connect`] does TCP connect + handshake, timed.
//! - The connection sends with [`FsWriter`] and receives with [`FsReader`];
//!   [`FakeFreeSwitch::split`] hands them out so audio can be streamed from one
//!   task while playback is read in another (the module is full duplex).
//! - [`stream_audio`] / [`stream_audio_with`] pace audio like the media clock.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// The exact extension offer libwsc writes when deflate is requested (doc §2).
/// The module requests it unless `STREAM_MESSAGE_DEFLATE=true`.
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_no_context_takeover; server_no_context_takeover; client_max_window_bits=9";

/// RFC 6455 §1.3 GUID for `Sec-WebSocket-Accept`.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Doc §2: "TCP connect + handshake must complete within 1 second, or the module
/// gives up for good". Used as the default connect timeout.
pub const MODULE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Doc §3: on `stop`/hangup the module sends Close and "wait[s] 1 s for our Close
/// before tearing down".
pub const MODULE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Doc §3: heartbeat pings carry the payload `ping`.
pub const HEARTBEAT_PAYLOAD: &[u8] = b"ping";

/// Doc §3: the close the module sends is 1000 "Normal closure".
pub const NORMAL_CLOSURE: u16 = 1000;
pub const NORMAL_CLOSURE_REASON: &str = "Normal closure";

/// libwsc truncates close reasons to 123 bytes (125 minus the 2-byte code).
const MAX_CLOSE_REASON: usize = 123;

/// Cap on the response head, like libwsc's guard against a server that never
/// ends its header block.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// RFC 6455 opcodes, for [`FsWriter::send_raw_frame`].
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Everything that can go wrong; every public function returns it.
#[derive(Debug, thiserror::Error)]
pub enum FakeFsError {
    #[error("TCP connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The module would give up here for good (doc §2: no retry).
    #[error("TCP connect + WebSocket handshake to {addr} did not complete within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    /// The server answered the upgrade with something other than 101.
    #[error("server answered HTTP {status} {reason:?} instead of 101; body: {body:?}")]
    Rejected {
        status: u16,
        reason: String,
        headers: Vec<(String, String)>,
        body: String,
    },
    #[error("malformed handshake response: {0}")]
    BadResponse(String),
    #[error("Sec-WebSocket-Accept mismatch: expected {expected:?}, got {got:?}")]
    BadAccept {
        expected: String,
        got: Option<String>,
    },
    /// The server broke RFC 6455 (masked frame, bad opcode, bad UTF-8, ...).
    #[error("WebSocket protocol violation by the server: {0}")]
    Protocol(String),
    #[error("no server frame within {0:?}")]
    Timeout(Duration),
    /// A module-like send after the fake already sent (or echoed) a Close:
    /// libwsc refuses application frames once it is DISCONNECTING.
    #[error("the connection is closing: the module sends no data frame after its Close")]
    Closing,
    /// The write half was already shut down (close/abort).
    #[error("the connection's write side is already shut down")]
    WriteShutDown,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl FakeFsError {
    /// The HTTP status of a rejected upgrade, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            FakeFsError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The body of a rejected upgrade, if this is one.
    pub fn body(&self) -> Option<&str> {
        match self {
            FakeFsError::Rejected { body, .. } => Some(body),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, FakeFsError>;

/// How to connect, i.e. the parts of `uuid_audio_stream <uuid> start <url> ...` and
/// of the channel variables that shape the handshake.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Where to open the TCP connection.
    pub addr: SocketAddr,
    /// Request target, e.g. `/call/<uuid>?x=y` (doc §1: the module needs a `/`
    /// before a query, so it always starts with `/`).
    pub path_and_query: String,
    /// Value of `Host:`; the module writes `<host>:<port>` from the URL, always
    /// with the port, and reuses it for `Origin:http://<host>:<port>`.
    pub host_header: String,
    /// Offer permessage-deflate (the module does unless `STREAM_MESSAGE_DEFLATE=true`).
    pub offer_deflate: bool,
    /// `STREAM_EXTRA_HEADERS`, written after `Origin:` in this order as `name:value`.
    pub extra_headers: Vec<(String, String)>,
    /// Budget for TCP connect + handshake; defaults to the module's 1 s.
    pub connect_timeout: Duration,
}

impl ConnectOptions {
    /// Defaults as the module without channel variables: deflate offered, no
    /// extra header, 1 s budget, `Host:` = `addr`.
    pub fn new(addr: SocketAddr, path_and_query: impl Into<String>) -> Self {
        ConnectOptions {
            addr,
            path_and_query: path_and_query.into(),
            host_header: addr.to_string(),
            offer_deflate: true,
            extra_headers: Vec::new(),
            connect_timeout: MODULE_CONNECT_TIMEOUT,
        }
    }

    pub fn host_header(mut self, host: impl Into<String>) -> Self {
        self.host_header = host.into();
        self
    }

    /// `offer == false` is `STREAM_MESSAGE_DEFLATE=true` (what our shipped
    /// dialplan sets).
    pub fn offer_deflate(mut self, offer: bool) -> Self {
        self.offer_deflate = offer;
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_headers.push((name.into(), value.into()));
        self
    }

    /// `STREAM_EXTRA_HEADERS={"Authorization":"Bearer <token>"}` (doc §1).
    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", format!("Bearer {token}"))
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// What the handshake looked like, for assertions.
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    /// The exact request bytes sent (ASCII).
    pub request: String,
    /// The `Sec-WebSocket-Key` sent.
    pub key: String,
    /// The response status line, e.g. `HTTP/1.1 101 Switching Protocols`.
    pub status_line: String,
    /// Response headers in arrival order, names as sent, values trimmed.
    pub response_headers: Vec<(String, String)>,
    /// `Sec-WebSocket-Extensions` in the 101, if any (voicebridge must send none).
    pub extensions: Option<String>,
    /// `Sec-WebSocket-Protocol` in the 101, if any (voicebridge must send none).
    pub protocol: Option<String>,
    /// Time for the TCP connect alone.
    pub tcp_connect: Duration,
    /// Time for TCP connect + handshake up to the end of the 101's header block:
    /// what the module's 1 s budget covers.
    pub elapsed: Duration,
}

impl HandshakeInfo {
    /// First response header with this name (case-insensitive).
    pub fn response_header(&self, name: &str) -> Option<&str> {
        header_value(&self.response_headers, name)
    }
}

/// A frame (or reassembled message) from the server.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Binary(Vec<u8>),
    Text(String),
    /// Already answered with a Pong by the fake, as libwsc does.
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Code (None if the payload was empty) and reason.
    Close(Option<u16>, String),
}

impl fmt::Debug for ServerFrame {
    // Audio payloads are long; print sizes, not bytes, so assertion failures stay readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerFrame::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
            ServerFrame::Text(t) if t.len() > 200 => {
                let mut end = 200;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                write!(f, "Text({} bytes: {:?}...)", t.len(), &t[..end])
            }
            ServerFrame::Text(t) => write!(f, "Text({t:?})"),
            ServerFrame::Ping(p) => write!(f, "Ping({:?})", String::from_utf8_lossy(p)),
            ServerFrame::Pong(p) => write!(f, "Pong({:?})", String::from_utf8_lossy(p)),
            ServerFrame::Close(c, r) => write!(f, "Close({c:?}, {r:?})"),
        }
    }
}

/// Result of a module-like close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseOutcome {
    /// The server's Close arrived within the module's 1 s (or had already arrived).
    pub echoed: bool,
    /// Code of the server's Close, if it came and carried one.
    pub code: Option<u16>,
    /// Reason of the server's Close ("" if none).
    pub reason: String,
    /// How long the fake waited for it.
    pub waited: Duration,
}

/// How [`FakeFreeSwitch::abort`] drops the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortMode {
    /// Close the socket without a WebSocket Close: the peer sees FIN/EOF (what a
    /// killed FreeSWITCH process looks like).
    Fin,
    /// `SO_LINGER=0` then close: the peer sees a TCP reset.
    Reset,
}

/// What the reader has learnt about the server's side, shared with the writer
/// so that [`FsWriter::close`] can wait for the server's Close while another task
/// owns the reader (libwsc's receive path runs on its own event thread too).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerState {
    Open,
    Closed { code: Option<u16>, reason: String },
    Gone,
}

/// Work for the background control writer.
enum Control {
    /// A Pong or Close echo queued by the reader.
    Frame(Vec<u8>),
    /// Shut the write side down once every frame queued before is written.
    Shutdown(oneshot::Sender<()>),
}

struct Shared {
    /// Every frame is written whole while holding this lock, so frames from the
    /// writer, its clones and the control writer never interleave.
    write: Mutex<Option<OwnedWriteHalf>>,
    /// Set once a Close went out (ours or the echo of the server's).
    close_sent: AtomicBool,
    peer: watch::Sender<PeerState>,
    /// Queue of the control writer task (see [`FakeFreeSwitch::connect`]).
    control: mpsc::UnboundedSender<Control>,
}

impl Shared {
    async fn write_bytes(&self, bytes: &[u8]) -> Result<()> {
        let mut guard = self.write.lock().await;
        let w = guard.as_mut().ok_or(FakeFsError::WriteShutDown)?;
        w.write_all(bytes).await?;
        Ok(())
    }

    /// Shut the write side down after the queued control replies went out, so a
    /// Pong or Close echo the reader just queued is not lost (libwsc writes them
    /// before it tears down, from its single event thread).
    async fn shutdown_write(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.control.send(Control::Shutdown(done_tx)).is_ok() && done_rx.await.is_ok() {
            return;
        }
        self.shutdown_write_now().await;
    }

    async fn shutdown_write_now(&self) {
        let taken = self.write.lock().await.take();
        if let Some(mut w) = taken {
            // Errors here mean the peer is already gone, which is fine at teardown.
            let _ = w.shutdown().await;
        }
    }
}

/// One fake module connection (one call's stream).
pub struct FakeFreeSwitch {
    writer: FsWriter,
    reader: FsReader,
    handshake: HandshakeInfo,
}

impl FakeFreeSwitch {
    /// TCP connect + handshake, as libwsc does when `uuid_audio_stream ... start`
    /// runs. The whole thing is bounded by `opts.connect_timeout` (the module's
    /// 1 s by default). A non-101 answer gives [`FakeFsError::Rejected`].
    pub async fn connect(opts: &ConnectOptions) -> Result<FakeFreeSwitch> {
        if !opts.path_and_query.starts_with('/') {
            return Err(FakeFsError::InvalidArgument(format!(
                "path_and_query must start with '/' (the module needs it before a query): {:?}",
                opts.path_and_query
            )));
        }
        let start = Instant::now();
        let deadline = start + opts.connect_timeout;
        let timed_out = || FakeFsError::ConnectTimeout {
            addr: opts.addr,
            timeout: opts.connect_timeout,
        };

        let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(opts.addr))
            .await
            .map_err(|_| timed_out())?
            .map_err(|source| FakeFsError::Connect {
                addr: opts.addr,
                source,
            })?;
        // libevent's bufferevent writes as soon as data is queued; Nagle would add
        // latency the module does not have.
        stream.set_nodelay(true)?;
        let tcp_connect = start.elapsed();

        let key = random_key();
        let request = build_request(opts, &key);
        let head = tokio::time::timeout_at(deadline, async {
            stream.write_all(request.as_bytes()).await?;
            read_response_head(&mut stream).await
        })
        .await
        .map_err(|_| timed_out())??;
        let elapsed = start.elapsed();

        let ResponseHead {
            status,
            status_line,
            reason,
            headers,
            mut leftover,
        } = head;

        if status != 101 {
            // The body is read outside the 1 s budget: the status already decided
            // the outcome, the body only explains it.
            let body = read_rejection_body(&mut stream, &headers, &mut leftover).await;
            return Err(FakeFsError::Rejected {
                status,
                reason,
                headers,
                body,
            });
        }

        let expected = accept_for(&key);
        let got = header_value(&headers, "Sec-WebSocket-Accept").map(str::to_owned);
        if got.as_deref() != Some(expected.as_str()) {
            // libwsc: "the client MUST fail the connection unless the response is
            // 101 AND Sec-WebSocket-Accept equals base64(SHA1(key + GUID))".
            return Err(FakeFsError::BadAccept { expected, got });
        }

        let handshake = HandshakeInfo {
            request,
            key,
            status_line,
            extensions: header_value(&headers, "Sec-WebSocket-Extensions").map(str::to_owned),
            protocol: header_value(&headers, "Sec-WebSocket-Protocol").map(str::to_owned),
            response_headers: headers,
            tcp_connect,
            elapsed,
        };

        let (read, write) = stream.into_split();
        let (peer, _) = watch::channel(PeerState::Open);
        // Control replies (Pong, Close echo) are written by a dedicated task fed
        // through a channel: the reader only enqueues, so `recv` never awaits a
        // write and stays cancel-safe, and replies keep their order. The task
        // holds a weak reference: it ends once every half is dropped.
        let (control, mut control_rx) = mpsc::unbounded_channel::<Control>();
        let shared = Arc::new(Shared {
            write: Mutex::new(Some(write)),
            close_sent: AtomicBool::new(false),
            peer,
            control,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some(cmd) = control_rx.recv().await {
                let Some(shared) = weak.upgrade() else { break };
                match cmd {
                    // A failed write means the connection is gone; the reader
                    // reports that on its side.
                    Control::Frame(frame) => drop(shared.write_bytes(&frame).await),
                    Control::Shutdown(done) => {
                        shared.shutdown_write_now().await;
                        let _ = done.send(());
                    }
                }
            }
        });

        Ok(FakeFreeSwitch {
            writer: FsWriter {
                shared: Arc::clone(&shared),
            },
            reader: FsReader {
                read,
                // libwsc: "Drain HTTP headers only (leave any WS frames)": bytes
                // after the 101's header block are the first frames.
                buf: leftover,
                fragment: None,
                eof: false,
                shared,
            },
            handshake,
        })
    }

    pub fn handshake(&self) -> &HandshakeInfo {
        &self.handshake
    }

    /// Writer half (cloneable, usable from several tasks) and reader half.
    pub fn split(self) -> (FsWriter, FsReader) {
        (self.writer, self.reader)
    }

    pub fn writer(&self) -> &FsWriter {
        &self.writer
    }

    pub fn reader(&mut self) -> &mut FsReader {
        &mut self.reader
    }

    pub async fn send_audio(&self, pcm: &[u8]) -> Result<()> {
        self.writer.send_audio(pcm).await
    }

    pub async fn send_text(&self, text: &str) -> Result<()> {
        self.writer.send_text(text).await
    }

    pub async fn send_ping(&self, payload: &[u8]) -> Result<()> {
        self.writer.send_ping(payload).await
    }

    pub async fn send_raw_frame(
        &self,
        opcode: u8,
        fin: bool,
        payload: &[u8],
        masked: bool,
    ) -> Result<()> {
        self.writer
            .send_raw_frame(opcode, fin, payload, masked)
            .await
    }

    pub async fn recv(&mut self) -> Result<Option<ServerFrame>> {
        self.reader.recv().await
    }

    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<ServerFrame>> {
        self.reader.recv_timeout(timeout).await
    }

    /// Module-like close: send Close 1000 "Normal closure", read (and drop) what
    /// the server still sends for at most 1 s until its Close arrives, then shut
    /// the TCP connection down.
    pub async fn close(mut self) -> Result<CloseOutcome> {
        let start = Instant::now();
        self.writer.send_module_close().await?;
        let deadline = start + MODULE_CLOSE_WAIT;
        loop {
            if !matches!(*self.reader.shared.peer.borrow(), PeerState::Open) {
                break;
            }
            match tokio::time::timeout_at(deadline, self.reader.recv()).await {
                Err(_) | Ok(Ok(None)) => break,
                Ok(Ok(Some(_))) => continue,
                Ok(Err(e)) => {
                    self.writer.shared.shutdown_write().await;
                    return Err(e);
                }
            }
        }
        let outcome = outcome_from(&self.reader.shared.peer.borrow(), start.elapsed());
        self.writer.shared.shutdown_write().await;
        Ok(outcome)
    }

    /// Drop the TCP connection with no WebSocket Close (hangup of a crashed or
    /// killed FreeSWITCH).
    pub async fn abort(self, mode: AbortMode) -> Result<()> {
        self.reader.abort(&self.writer, mode).await
    }
}

/// Sending side. Clone it to send from several tasks (e.g. audio + heartbeat);
/// each frame is written atomically.
///
/// Not cancel-safe: dropping a send future in the middle of a large frame can
/// leave half a frame on the wire (like a crash mid-write would).
#[derive(Clone)]
pub struct FsWriter {
    shared: Arc<Shared>,
}

impl FsWriter {
    /// One binary message of L16 audio (doc §3: no header, no sequence number).
    pub async fn send_audio(&self, pcm: &[u8]) -> Result<()> {
        self.send_module_frame(opcode::BINARY, pcm).await
    }

    /// One text message: the metadata string verbatim, or `send_text`/`stop <text>`.
    pub async fn send_text(&self, text: &str) -> Result<()> {
        self.send_module_frame(opcode::TEXT, text.as_bytes()).await
    }

    /// A Ping (use [`HEARTBEAT_PAYLOAD`] for the module's heartbeat).
    pub async fn send_ping(&self, payload: &[u8]) -> Result<()> {
        if payload.len() > 125 {
            // libwsc refuses control frames over 125 bytes ("Control frame too large").
            return Err(FakeFsError::InvalidArgument(format!(
                "ping payload of {} bytes exceeds 125",
                payload.len()
            )));
        }
        self.send_module_frame(opcode::PING, payload).await
    }

    /// The heartbeat ping the module sends every `STREAM_HEART_BEAT` seconds.
    pub async fn send_heartbeat(&self) -> Result<()> {
        self.send_ping(HEARTBEAT_PAYLOAD).await
    }

    /// Any frame, bypassing every module rule (FIN, opcode, size, masking, state):
    /// for robustness tests (1 MiB text, invalid UTF-8, fragmentation, unmasked).
    pub async fn send_raw_frame(
        &self,
        opcode: u8,
        fin: bool,
        payload: &[u8],
        masked: bool,
    ) -> Result<()> {
        let mask = masked.then(random_mask);
        self.shared
            .write_bytes(&encode_frame(opcode, fin, payload, mask))
            .await
    }

    /// Arbitrary bytes on the socket (e.g. a frame with RSV bits set).
    pub async fn send_raw_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.shared.write_bytes(bytes).await
    }

    /// Send a Close with any code/reason (marks the connection as closing).
    pub async fn send_close_frame(&self, code: u16, reason: &str) -> Result<()> {
        self.shared.close_sent.store(true, Ordering::SeqCst);
        let frame = encode_frame(
            opcode::CLOSE,
            true,
            &close_payload(code, reason),
            Some(random_mask()),
        );
        self.shared.write_bytes(&frame).await
    }

    /// Module-like close from the writer half: send Close 1000 "Normal closure",
    /// wait at most 1 s for the server's Close, then shut the write side down.
    ///
    /// The server's Close is seen by the [`FsReader`], so the reader must be
    /// driven (`recv` in a loop) by some task meanwhile, as libwsc's event thread
    /// is; otherwise this reports `echoed == false` after 1 s.
    pub async fn close(&self) -> Result<CloseOutcome> {
        let start = Instant::now();
        let mut peer = self.shared.peer.subscribe();
        self.send_module_close().await?;
        // Either outcome of the wait is read back from the shared state below; the
        // watch sender lives in `Shared`, so the wait cannot fail with a closed
        // channel while `self` exists. The guard is dropped before any await.
        let _ = tokio::time::timeout(MODULE_CLOSE_WAIT, async {
            peer.wait_for(|s| !matches!(s, PeerState::Open))
                .await
                .map(|_| ())
        })
        .await;
        let outcome = outcome_from(&self.shared.peer.borrow(), start.elapsed());
        self.shared.shutdown_write().await;
        Ok(outcome)
    }

    /// Shut down the write side with no Close frame (the peer reads EOF). The
    /// socket itself closes when the [`FsReader`] is dropped; use
    /// [`FsReader::abort`] for a reset.
    pub async fn abort(&self) {
        self.shared.shutdown_write().await;
    }

    /// Whether a Close went out (ours or the echo of the server's).
    pub fn close_sent(&self) -> bool {
        self.shared.close_sent.load(Ordering::SeqCst)
    }

    async fn send_module_close(&self) -> Result<()> {
        // libwsc: "If we already sent CLOSE, nothing else to do."
        if self.shared.close_sent.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let frame = encode_frame(
            opcode::CLOSE,
            true,
            &close_payload(NORMAL_CLOSURE, NORMAL_CLOSURE_REASON),
            Some(random_mask()),
        );
        self.shared.write_bytes(&frame).await
    }

    async fn send_module_frame(&self, op: u8, payload: &[u8]) -> Result<()> {
        if self.shared.close_sent.load(Ordering::SeqCst) {
            return Err(FakeFsError::Closing);
        }
        // libwsc: every frame FIN, masked with a fresh random key; deflate is
        // never applied because voicebridge must not negotiate it.
        let frame = encode_frame(op, true, payload, Some(random_mask()));
        self.shared.write_bytes(&frame).await
    }
}

/// Receiving side.
///
/// **Cancel-safe**: `recv` only awaits reading into an internal buffer (frames
/// are parsed synchronously from it, fragmentation state lives in the struct,
/// and Pong/Close replies are handed to a background writer), so dropping a
/// `recv` future — in `tokio::select!` or via [`FsReader::recv_timeout`] — never
/// loses or duplicates a frame.
pub struct FsReader {
    read: OwnedReadHalf,
    buf: BytesMut,
    /// Opcode and payload of a fragmented message in progress.
    fragment: Option<(u8, Vec<u8>)>,
    eof: bool,
    shared: Arc<Shared>,
}

impl FsReader {
    /// Next frame (data frames reassembled), `Ok(None)` at end of stream.
    pub async fn recv(&mut self) -> Result<Option<ServerFrame>> {
        loop {
            if let Some(frame) = self.decode_buffered()? {
                return Ok(Some(frame));
            }
            if self.eof {
                if !self.buf.is_empty() || self.fragment.is_some() {
                    let buffered = self.buf.len();
                    self.buf.clear();
                    self.fragment = None;
                    return Err(FakeFsError::Protocol(format!(
                        "connection ended inside a frame or fragmented message ({buffered} bytes buffered)"
                    )));
                }
                return Ok(None);
            }
            let n = self.read.read_buf(&mut self.buf).await?;
            if n == 0 {
                self.eof = true;
                self.shared.peer.send_if_modified(|s| {
                    if matches!(s, PeerState::Open) {
                        *s = PeerState::Gone;
                        true
                    } else {
                        false
                    }
                });
            }
        }
    }

    /// [`FsReader::recv`] bounded in time; [`FakeFsError::Timeout`] if nothing came.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<ServerFrame>> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| FakeFsError::Timeout(timeout))?
    }

    /// Next Text/Binary/Close (Pings and Pongs skipped; Pings are still answered).
    pub async fn recv_data_timeout(&mut self, timeout: Duration) -> Result<Option<ServerFrame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.recv())
                .await
                .map_err(|_| FakeFsError::Timeout(timeout))??;
            match next {
                Some(ServerFrame::Ping(_)) | Some(ServerFrame::Pong(_)) => continue,
                other => return Ok(other),
            }
        }
    }

    /// Drop the connection with no Close; see [`AbortMode`]. Takes the write
    /// side away from every [`FsWriter`] clone (their sends then fail).
    pub async fn abort(self, writer: &FsWriter, mode: AbortMode) -> Result<()> {
        let write = writer.shared.write.lock().await.take();
        match write {
            Some(write) => {
                let stream = self.read.reunite(write).map_err(|_| {
                    FakeFsError::InvalidArgument(
                        "writer and reader of different connections".into(),
                    )
                })?;
                if mode == AbortMode::Reset {
                    stream.set_zero_linger()?;
                }
                drop(stream);
            }
            // Write side already shut down: dropping the read half closes the socket.
            None => drop(self.read),
        }
        Ok(())
    }

    /// Parse as many complete frames as the buffer holds until one yields
    /// something to return.
    fn decode_buffered(&mut self) -> Result<Option<ServerFrame>> {
        loop {
            let Some(raw) = parse_frame(&mut self.buf)? else {
                return Ok(None);
            };
            if let Some(frame) = self.handle_frame(raw)? {
                return Ok(Some(frame));
            }
        }
    }

    fn handle_frame(&mut self, raw: RawFrame) -> Result<Option<ServerFrame>> {
        let RawFrame {
            fin,
            opcode: op,
            payload,
        } = raw;
        match op {
            opcode::CONTINUATION => {
                let Some((first_op, mut data)) = self.fragment.take() else {
                    return Err(FakeFsError::Protocol(
                        "continuation frame without a fragmented message in progress".into(),
                    ));
                };
                data.extend_from_slice(&payload);
                if fin {
                    data_frame(first_op, data).map(Some)
                } else {
                    self.fragment = Some((first_op, data));
                    Ok(None)
                }
            }
            opcode::TEXT | opcode::BINARY => {
                if self.fragment.is_some() {
                    return Err(FakeFsError::Protocol(
                        "new data frame while a fragmented message is unfinished".into(),
                    ));
                }
                if fin {
                    data_frame(op, payload).map(Some)
                } else {
                    self.fragment = Some((op, payload));
                    Ok(None)
                }
            }
            opcode::PING => {
                // libwsc answers every Ping with a Pong carrying the same payload.
                let pong = encode_frame(opcode::PONG, true, &payload, Some(random_mask()));
                let _ = self.shared.control.send(Control::Frame(pong));
                Ok(Some(ServerFrame::Ping(payload)))
            }
            opcode::PONG => Ok(Some(ServerFrame::Pong(payload))),
            opcode::CLOSE => {
                let (code, reason) = parse_close_payload(&payload)?;
                // libwsc (onRxClose): if it has not sent a Close yet, it answers
                // with a Close carrying the server's code and reason.
                if !self.shared.close_sent.swap(true, Ordering::SeqCst) {
                    let echo = encode_frame(opcode::CLOSE, true, &payload, Some(random_mask()));
                    let _ = self.shared.control.send(Control::Frame(echo));
                }
                self.shared.peer.send_replace(PeerState::Closed {
                    code,
                    reason: reason.clone(),
                });
                Ok(Some(ServerFrame::Close(code, reason)))
            }
            other => Err(FakeFsError::Protocol(format!("reserved opcode {other:#x}"))),
        }
    }
}

/// Pacing and extras for [`stream_audio_with`].
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// Bytes per binary message: 20 ms by default (320 B at 8k mono, 640 B at 16k
    /// mono, 1280 B at 16k stereo), N ms with `STREAM_BUFFER_SIZE=N`.
    pub bytes_per_message: usize,
    /// Media clock period (20 ms, or 40 ms with `STREAM_BUFFER_SIZE=40`).
    pub interval: Duration,
    /// Pace by the clock (true) or send as fast as possible (false).
    pub realtime: bool,
    /// Send these many messages at once before pacing starts: libwsc queues audio
    /// while CONNECTING and flushes the queue in one go on open.
    pub initial_burst: usize,
    /// `(n, text)`: send `text` right after the n-th audio message (0 = before any
    /// audio). Doc §3: metadata can arrive AFTER the first audio frames.
    pub metadata_after: Option<(usize, String)>,
    /// Send a `ping` heartbeat each period (`STREAM_HEART_BEAT`), checked between
    /// messages.
    pub heartbeat: Option<Duration>,
}

impl StreamPlan {
    pub fn new(bytes_per_message: usize, interval: Duration, realtime: bool) -> Self {
        StreamPlan {
            bytes_per_message,
            interval,
            realtime,
            initial_burst: 0,
            metadata_after: None,
            heartbeat: None,
        }
    }

    pub fn metadata_after(mut self, audio_messages: usize, metadata: impl Into<String>) -> Self {
        self.metadata_after = Some((audio_messages, metadata.into()));
        self
    }

    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    pub fn initial_burst(mut self, messages: usize) -> Self {
        self.initial_burst = messages;
        self
    }
}

/// What [`stream_audio_with`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    pub audio_messages: usize,
    pub audio_bytes: usize,
    pub metadata_sent: bool,
    pub heartbeats: usize,
    pub elapsed: Duration,
}

/// Send `pcm` as the module does: one binary message of `bytes_per_message` per
/// `interval` tick (the last one may be shorter), or as fast as possible when
/// `realtime` is false.
pub async fn stream_audio(
    writer: &FsWriter,
    pcm: &[u8],
    bytes_per_message: usize,
    interval: Duration,
    realtime: bool,
) -> Result<StreamReport> {
    stream_audio_with(
        writer,
        pcm,
        &StreamPlan::new(bytes_per_message, interval, realtime),
    )
    .await
}

/// [`stream_audio`] with metadata placement, heartbeat and initial burst.
pub async fn stream_audio_with(
    writer: &FsWriter,
    pcm: &[u8],
    plan: &StreamPlan,
) -> Result<StreamReport> {
    if plan.bytes_per_message == 0 {
        return Err(FakeFsError::InvalidArgument(
            "bytes_per_message must be > 0".into(),
        ));
    }
    if plan.realtime && plan.interval.is_zero() {
        return Err(FakeFsError::InvalidArgument(
            "a realtime stream needs a non-zero interval".into(),
        ));
    }
    let start = Instant::now();
    // The media bug fires on FreeSWITCH's media clock: a late tick is followed by
    // catch-up ticks, never by a shifted schedule — that is `Burst`.
    let mut clock = plan.realtime.then(|| {
        let mut clock = tokio::time::interval(plan.interval);
        clock.set_missed_tick_behavior(MissedTickBehavior::Burst);
        clock
    });
    let mut next_heartbeat = plan.heartbeat.map(|every| start + every);
    let mut report = StreamReport {
        audio_messages: 0,
        audio_bytes: 0,
        metadata_sent: false,
        heartbeats: 0,
        elapsed: Duration::ZERO,
    };

    let send_metadata = |sent: usize| match &plan.metadata_after {
        Some((n, text)) if *n == sent => Some(text.as_str()),
        _ => None,
    };

    if let Some(text) = send_metadata(0) {
        writer.send_text(text).await?;
        report.metadata_sent = true;
    }
    for chunk in pcm.chunks(plan.bytes_per_message) {
        if let Some(clock) = clock.as_mut() {
            if report.audio_messages >= plan.initial_burst {
                clock.tick().await;
            }
        }
        if let (Some(due), Some(every)) = (next_heartbeat, plan.heartbeat) {
            if Instant::now() >= due {
                writer.send_heartbeat().await?;
                report.heartbeats += 1;
                next_heartbeat = Some(due + every);
            }
        }
        writer.send_audio(chunk).await?;
        report.audio_messages += 1;
        report.audio_bytes += chunk.len();
        if let Some(text) = send_metadata(report.audio_messages) {
            writer.send_text(text).await?;
            report.metadata_sent = true;
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Ping `ping` every `every` (first one after `every`) until a send fails (e.g.
/// after close) or the handle is aborted.
pub fn spawn_heartbeat(writer: FsWriter, every: Duration) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
        let mut sent = 0;
        loop {
            ticker.tick().await;
            if writer.send_heartbeat().await.is_err() {
                return sent;
            }
            sent += 1;
        }
    })
}

/// Little-endian bytes of 16-bit samples (L16, doc §3).
pub fn l16_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Bytes per message for a rate, channel count and frame duration: the sizes the
/// module produces (20 ms at 8 kHz mono = 320 B).
pub fn bytes_per_message(sample_rate: u32, channels: u32, ms: u32) -> usize {
    (sample_rate as usize / 1000) * ms as usize * channels as usize * 2
}

/// Encode one client->server frame (RSV bits clear). `mask: None` sends it
/// unmasked, which a server must reject.
pub fn encode_frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    // libwsc picks the shortest of the 7/16/64-bit length encodings.
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The exact request libwsc writes (doc §2): `name:value` with no space, in this
/// order, no `User-Agent`, no `Sec-WebSocket-Protocol`.
fn build_request(opts: &ConnectOptions, key: &str) -> String {
    let mut r = String::with_capacity(512);
    r.push_str(&format!("GET {} HTTP/1.1\r\n", opts.path_and_query));
    r.push_str(&format!("Host:{}\r\n", opts.host_header));
    r.push_str("Upgrade:websocket\r\n");
    r.push_str("Connection:upgrade\r\n");
    r.push_str(&format!("Sec-WebSocket-Key:{key}\r\n"));
    r.push_str("Sec-WebSocket-Version:13\r\n");
    if opts.offer_deflate {
        r.push_str(&format!("Sec-WebSocket-Extensions:{DEFLATE_OFFER}\r\n"));
    }
    r.push_str(&format!("Origin:http://{}\r\n", opts.host_header));
    for (name, value) in &opts.extra_headers {
        r.push_str(&format!("{name}:{value}\r\n"));
    }
    r.push_str("\r\n");
    r
}

struct ResponseHead {
    status: u16,
    status_line: String,
    reason: String,
    headers: Vec<(String, String)>,
    leftover: BytesMut,
}

async fn read_response_head(stream: &mut TcpStream) -> Result<ResponseHead> {
    let mut buf = BytesMut::with_capacity(1024);
    let head_len = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(FakeFsError::BadResponse(format!(
                "no end of header block within {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(FakeFsError::BadResponse(format!(
                "connection closed during the handshake after {} bytes: {:?}",
                buf.len(),
                String::from_utf8_lossy(&buf)
            )));
        }
    };
    let head = buf.split_to(head_len);
    let text = std::str::from_utf8(&head)
        .map_err(|_| FakeFsError::BadResponse("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(FakeFsError::BadResponse(format!(
            "bad status line {status_line:?}"
        )));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| FakeFsError::BadResponse(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| FakeFsError::BadResponse(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(ResponseHead {
        status,
        status_line,
        reason,
        headers,
        leftover: buf,
    })
}

/// Body of a non-101 answer: `Content-Length` bytes, or up to EOF, bounded by
/// the module's 1 s so a server that keeps the socket open cannot hang a test.
/// A chunked body is returned undecoded.
async fn read_rejection_body(
    stream: &mut TcpStream,
    headers: &[(String, String)],
    buf: &mut BytesMut,
) -> String {
    let want: Option<usize> = header_value(headers, "Content-Length").and_then(|v| v.parse().ok());
    let _ = tokio::time::timeout(MODULE_CONNECT_TIMEOUT, async {
        loop {
            if want.is_some_and(|n| buf.len() >= n) {
                break;
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    let end = want.map_or(buf.len(), |n| n.min(buf.len()));
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

struct RawFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Take one complete server frame off the front of `buf`, or `None` if it is not
/// all there yet (nothing is consumed then).
fn parse_frame(buf: &mut BytesMut) -> Result<Option<RawFrame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let op = b0 & 0x0F;
    if b0 & 0x70 != 0 {
        // No extension is negotiated (voicebridge must not accept deflate), so
        // RSV bits set are a violation.
        return Err(FakeFsError::Protocol(format!(
            "RSV bits set ({:#04x}) without a negotiated extension",
            b0 & 0x70
        )));
    }
    if b1 & 0x80 != 0 {
        return Err(FakeFsError::Protocol(
            "server frame is masked (RFC 6455 §5.1: a server MUST NOT mask)".into(),
        ));
    }
    let (len, header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if op & 0x08 != 0 && (len > 125 || !fin) {
        return Err(FakeFsError::Protocol(format!(
            "control frame {op:#x} with length {len} / fin {fin}"
        )));
    }
    let len = usize::try_from(len)
        .map_err(|_| FakeFsError::Protocol(format!("frame length {len} too large")))?;
    if buf.len() < header + len {
        buf.reserve(header + len - buf.len());
        return Ok(None);
    }
    buf.advance(header);
    let payload = buf.split_to(len).to_vec();
    Ok(Some(RawFrame {
        fin,
        opcode: op,
        payload,
    }))
}

fn data_frame(op: u8, payload: Vec<u8>) -> Result<ServerFrame> {
    if op == opcode::TEXT {
        // Doc §4: text frames must be valid UTF-8 (libwsc fails with 1007).
        String::from_utf8(payload)
            .map(ServerFrame::Text)
            .map_err(|_| FakeFsError::Protocol("text message is not valid UTF-8".into()))
    } else {
        Ok(ServerFrame::Binary(payload))
    }
}

fn parse_close_payload(payload: &[u8]) -> Result<(Option<u16>, String)> {
    match payload.len() {
        0 => Ok((None, String::new())),
        1 => Err(FakeFsError::Protocol("close payload of 1 byte".into())),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| FakeFsError::Protocol("close reason is not UTF-8".into()))?;
            Ok((Some(code), reason.to_owned()))
        }
    }
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

fn outcome_from(state: &PeerState, waited: Duration) -> CloseOutcome {
    match state {
        PeerState::Closed { code, reason } => CloseOutcome {
            echoed: true,
            code: *code,
            reason: reason.clone(),
            waited,
        },
        PeerState::Open | PeerState::Gone => CloseOutcome {
            echoed: false,
            code: None,
            reason: String::new(),
            waited,
        },
    }
}

/// 16 random bytes, base64: the module draws its nonce from `random_device`.
fn random_key() -> String {
    let mut nonce = [0u8; 16];
    fastrand::fill(&mut nonce);
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// A fresh mask per frame, as libwsc does.
fn random_mask() -> [u8; 4] {
    fastrand::u32(..).to_ne_bytes()
}
