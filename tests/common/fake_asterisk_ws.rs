//! A fake Asterisk `chan_websocket` channel in outgoing mode (Asterisk dials us), as
//! `channels/chan_websocket.c` and `res/res_http_websocket.c` behave:
//!
//! - the upgrade is Asterisk's own HTTP/1.1 request, byte for byte (`GET /<path>`,
//!   `Sec-WebSocket-Version: 13`, `Upgrade`, `Connection: Upgrade`, `Host`, then
//!   `Authorization: Basic` when `username`/`password` are set, then the key; no
//!   Origin, no deflate offer), and the 101 is checked as Asterisk checks it (a
//!   `Sec-WebSocket-Extensions` header or a `Connection` other than `Upgrade` fails);
//! - `MEDIA_START` is the first TEXT frame, in JSON (`f(json)`) or plain text, and
//!   caller audio may come before it (Asterisk issue #1712);
//! - caller audio goes out one frame per 20 ms tick; our audio is cut into
//!   `optimal_frame_size` frames (a remainder is dropped), queued, and one frame is
//!   played per tick; a late tick is never made up (issue #2115); at 1000 queued frames
//!   a message is ignored whole, `MEDIA_XOFF` at 900, `MEDIA_XON` once a tick finds
//!   fewer than 800;
//! - `MARK_MEDIA` is queued behind the audio and answered with `MEDIA_MARK_PROCESSED`
//!   when it reaches the head; `FLUSH_MEDIA` empties the queue, marks included, without
//!   a word; a TEXT frame over 128 bytes is ignored; `HANGUP` hangs up (Close 1000).
//!
//! Everything the daemon did is recorded with the fake's own timestamps ([`Report`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::daemon::HANG_GUARD;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// chan_websocket.c `QUEUE_LENGTH_MAX`, `_XOFF_LEVEL`, `_XON_LEVEL`.
pub const QUEUE_MAX: usize = 1000;
pub const XOFF_LEVEL: usize = 900;
pub const XON_LEVEL: usize = 800;
/// chan_websocket.c `MAX_TEXT_MESSAGE_LEN`.
pub const MAX_TEXT: usize = 128;
/// res_http_websocket.c: a frame over this closes the socket.
pub const MAX_FRAME: usize = 65_535;
const TICK: Duration = Duration::from_millis(20);

/// How the channel is set up (the `websocket_client.conf` section and dial string).
#[derive(Clone, Debug)]
pub struct AsteriskOptions {
    /// The request target: the `uri` path plus the `v()` parameters as the query.
    pub target: String,
    /// `username` / `password` of the client section.
    pub basic: Option<(String, String)>,
    /// `c()`: `ulaw`, `alaw`, `slin`, `slin16`, `slin24`.
    pub format: &'static str,
    /// `f(json)`, else the plain-text control format.
    pub json: bool,
    /// The WebSocket channel's uniqueid.
    pub channel_id: String,
    /// Caller frames sent before `MEDIA_START` (issue #1712).
    pub early_frames: usize,
    /// Sends a `MEDIA_START` whose format field says this instead (bad input).
    pub media_start_override: Option<String>,
    /// Caller audio queued from the first tick on (the channel's format).
    pub speech: Vec<u8>,
}

impl AsteriskOptions {
    pub fn new(target: impl Into<String>, format: &'static str) -> AsteriskOptions {
        AsteriskOptions {
            target: target.into(),
            basic: None,
            format,
            json: true,
            channel_id: "1733240000.17".to_owned(),
            early_frames: 0,
            media_start_override: None,
            speech: Vec::new(),
        }
    }
}

/// `optimal_frame_size` of a format (main/codec_builtin.c): bytes per 20 ms.
pub fn optimal_frame_size(format: &str) -> usize {
    match format {
        "ulaw" | "alaw" => 160,
        "slin" => 320,
        "slin16" => 640,
        "slin24" => 960,
        "slin48" => 1920,
        _ => 160,
    }
}

/// The silence byte of a format.
fn silence(format: &str) -> u8 {
    match format {
        "ulaw" => 0xFF,
        "alaw" => 0xD5,
        _ => 0,
    }
}

#[derive(Debug)]
pub enum DialError {
    /// The server answered the upgrade with this status (Asterisk fails the try).
    Refused { status: u16, response: String },
    /// The 101 was not one Asterisk accepts, or the connection failed.
    Failed(String),
}

/// What happened during the call, as the fake saw it.
#[derive(Debug, Default)]
pub struct Report {
    /// Frames handed to the core, one per tick, with the tick's time.
    pub played: Vec<(Instant, Vec<u8>)>,
    /// Every TEXT frame the daemon sent, with its arrival time.
    pub commands: Vec<(Instant, String)>,
    /// `FLUSH_MEDIA` arrivals.
    pub flushes: Vec<Instant>,
    /// `MEDIA_MARK_PROCESSED` sent: (time, id, bytes played before it).
    pub marks_processed: Vec<(Instant, String, usize)>,
    pub answered: bool,
    pub hangup_command: bool,
    /// Binary messages the daemon sent and their sizes.
    pub binary_sizes: Vec<usize>,
    pub remainder_bytes_dropped: usize,
    pub ignored_queue_full: usize,
    pub ignored_too_long: usize,
    pub xoffs: usize,
    pub max_queue: usize,
    /// The daemon's Close (code, reason).
    pub close: Option<(u16, String)>,
    /// Ticks whose frame came from an empty queue while audio had been playing.
    pub underruns: usize,
    pub error: Option<String>,
}

impl Report {
    /// All played bytes, in order.
    pub fn played_bytes(&self) -> Vec<u8> {
        self.played
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .collect()
    }
}

enum Control {
    Speak(Vec<u8>),
    Text(String),
    Binary(Vec<u8>),
    Hangup,
}

/// One call from the fake Asterisk.
pub struct FakeAsterisk {
    control: mpsc::UnboundedSender<Control>,
    task: JoinHandle<Report>,
    /// Frames played so far.
    pub played: Arc<AtomicUsize>,
    /// Caller bytes still waiting to go out.
    pub speaking: Arc<AtomicUsize>,
    /// Set once `FLUSH_MEDIA` came.
    pub flushed: Arc<AtomicBool>,
    /// Ticks so far, and binary messages received from the daemon so far.
    pub ticks: Arc<AtomicUsize>,
    pub binaries: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    pub frame_size: usize,
}

/// The request Asterisk writes (res_http_websocket.c `websocket_client_handshake`).
pub fn upgrade_request(addr: SocketAddr, opts: &AsteriskOptions, key: &str) -> String {
    let target = opts.target.trim_start_matches('/');
    let auth = match &opts.basic {
        Some((user, pass)) => format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ),
        None => String::new(),
    };
    format!(
        "GET /{target} HTTP/1.1\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nHost: {addr}\r\n{auth}Sec-WebSocket-Key: {key}\r\n\r\n"
    )
}

/// Dials the daemon as `Dial(WebSocket/...)` does and starts the channel.
pub async fn dial(addr: SocketAddr, opts: AsteriskOptions) -> Result<FakeAsterisk, DialError> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| DialError::Failed(e.to_string()))?;
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
    tcp.write_all(upgrade_request(addr, &opts, &key).as_bytes())
        .await
        .map_err(|e| DialError::Failed(e.to_string()))?;
    // Byte by byte up to the blank line: nothing of the first frame is swallowed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match tcp.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => {
                let partial = String::from_utf8_lossy(&head).into_owned();
                return match status_of(&partial) {
                    Some(status) if status != 101 => Err(DialError::Refused {
                        status,
                        response: partial,
                    }),
                    _ => Err(DialError::Failed(format!("no response: {partial:?}"))),
                };
            }
        }
        if head.len() > 16 * 1024 {
            return Err(DialError::Failed("response head too long".to_owned()));
        }
    }
    let response = String::from_utf8_lossy(&head).into_owned();
    let status = status_of(&response).ok_or_else(|| DialError::Failed(response.clone()))?;
    if status != 101 {
        // The body follows; read what comes for the test to see.
        let mut body = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut body))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let response = format!("{response}{}", String::from_utf8_lossy(&body[..n]));
        return Err(DialError::Refused { status, response });
    }
    check_101(&response, &key).map_err(DialError::Failed)?;
    let config = WebSocketConfig::default().max_frame_size(Some(MAX_FRAME));
    let ws = WebSocketStream::from_raw_socket(tcp, Role::Client, Some(config)).await;
    let played = Arc::new(AtomicUsize::new(0));
    let speaking = Arc::new(AtomicUsize::new(opts.speech.len()));
    let caller: VecDeque<u8> = opts.speech.iter().copied().collect();
    let flushed = Arc::new(AtomicBool::new(false));
    let ticks = Arc::new(AtomicUsize::new(0));
    let binaries = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(Notify::new());
    let (tx, rx) = mpsc::unbounded_channel();
    let frame_size = optimal_frame_size(opts.format);
    let channel = Channel {
        opts,
        frame_size,
        played: Arc::clone(&played),
        speaking: Arc::clone(&speaking),
        flushed: Arc::clone(&flushed),
        ticks: Arc::clone(&ticks),
        binaries: Arc::clone(&binaries),
        notify: Arc::clone(&notify),
        queue: VecDeque::new(),
        queue_len: 0,
        queue_full: false,
        caller,
        report: Report::default(),
        played_bytes: 0,
    };
    let task = tokio::spawn(channel.run(ws, rx));
    Ok(FakeAsterisk {
        control: tx,
        task,
        played,
        speaking,
        flushed,
        ticks,
        binaries,
        notify,
        frame_size,
    })
}

fn status_of(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut parts = line.split(' ');
    // Asterisk wants HTTP/1.1 exactly.
    if parts.next()? != "HTTP/1.1" {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The checks `websocket_client_handshake_get_response` makes.
fn check_101(response: &str, key: &str) -> Result<(), String> {
    let header = |name: &str| {
        response.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if header("Upgrade").is_none_or(|v| !v.eq_ignore_ascii_case("websocket")) {
        return Err(format!("bad Upgrade header: {response:?}"));
    }
    if header("Connection").is_none_or(|v| !v.eq_ignore_ascii_case("upgrade")) {
        return Err(format!("Connection is not exactly Upgrade: {response:?}"));
    }
    if header("Sec-WebSocket-Extensions").is_some() {
        return Err("extensions in the 101 (Asterisk offers none)".to_owned());
    }
    if header("Sec-WebSocket-Protocol").is_some() {
        return Err("a subprotocol Asterisk did not offer".to_owned());
    }
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    if header("Sec-WebSocket-Accept").as_deref() != Some(accept.as_str()) {
        return Err("wrong Sec-WebSocket-Accept".to_owned());
    }
    Ok(())
}

impl FakeAsterisk {
    /// Queues caller audio (the channel's format); it goes out one frame per tick.
    pub fn speak(&self, audio: &[u8]) {
        self.speaking.fetch_add(audio.len(), Ordering::SeqCst);
        let _ = self.control.send(Control::Speak(audio.to_vec()));
    }

    /// Sends a raw TEXT frame (a `DTMF_END`, or garbage).
    pub fn send_text(&self, text: impl Into<String>) {
        let _ = self.control.send(Control::Text(text.into()));
    }

    /// Sends a raw BINARY frame now (outside the tick).
    pub fn send_binary(&self, data: Vec<u8>) {
        let _ = self.control.send(Control::Binary(data));
    }

    /// The caller presses a key: `DTMF_END` in the channel's format.
    pub fn dtmf(&self, digit: char, json: bool, channel_id: &str) {
        let text = if json {
            format!(r#"{{"event":"DTMF_END","channel_id":"{channel_id}","digit":"{digit}"}}"#)
        } else {
            format!("DTMF_END digit:{digit} channel_id:{channel_id}")
        };
        self.send_text(text);
    }

    /// Waits until `n` frames have been played.
    pub async fn wait_played(&self, n: usize) {
        self.wait(|| self.played.load(Ordering::SeqCst) >= n, "frames played")
            .await;
    }

    /// Waits until a `FLUSH_MEDIA` has come.
    pub async fn wait_flushed(&self) {
        self.wait(|| self.flushed.load(Ordering::SeqCst), "FLUSH_MEDIA")
            .await;
    }

    /// Waits until `n` more ticks have passed (the fake's own clock).
    pub async fn wait_ticks(&self, n: usize) {
        let until = self.ticks.load(Ordering::SeqCst) + n;
        self.wait(|| self.ticks.load(Ordering::SeqCst) >= until, "ticks")
            .await;
    }

    /// Waits until the daemon has sent more than `n` binary messages in all.
    pub async fn wait_binaries(&self, n: usize) {
        self.wait(
            || self.binaries.load(Ordering::SeqCst) > n,
            "binary messages",
        )
        .await;
    }

    /// Waits until all queued caller audio has gone out.
    pub async fn wait_spoken(&self) {
        self.wait(
            || self.speaking.load(Ordering::SeqCst) == 0,
            "caller audio sent",
        )
        .await;
    }

    async fn wait(&self, done: impl Fn() -> bool, what: &str) {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if done() || self.task.is_finished() {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(HANG_GUARD, wait).await.is_err() {
            panic!("fake Asterisk: {what} not reached");
        }
    }

    /// The call has ended (the daemon closed, or the connection went).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// The caller hangs up: Close 1000, then the daemon's echo.
    pub async fn hangup(self) -> Report {
        let _ = self.control.send(Control::Hangup);
        self.finished().await
    }

    /// Waits for the call to end (the daemon closes or hangs up).
    pub async fn finished(self) -> Report {
        match tokio::time::timeout(HANG_GUARD, self.task).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => panic!("fake Asterisk task failed: {e}"),
            Err(_) => panic!("fake Asterisk: the call did not end"),
        }
    }
}

enum Queued {
    Frame(Vec<u8>),
    /// A control frame (`MEDIA_MARK_PROCESSED`), sent when it reaches the head.
    Option(String, String),
}

struct Channel {
    opts: AsteriskOptions,
    frame_size: usize,
    played: Arc<AtomicUsize>,
    speaking: Arc<AtomicUsize>,
    flushed: Arc<AtomicBool>,
    ticks: Arc<AtomicUsize>,
    binaries: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    queue: VecDeque<Queued>,
    /// Audio frames in the queue (controls are not counted, as in the driver).
    queue_len: usize,
    queue_full: bool,
    caller: VecDeque<u8>,
    report: Report,
    played_bytes: usize,
}

type Ws = WebSocketStream<TcpStream>;

impl Channel {
    async fn run(mut self, mut ws: Ws, mut control: mpsc::UnboundedReceiver<Control>) -> Report {
        let mut early = self.opts.early_frames;
        if early == 0 {
            self.send_media_start(&mut ws).await;
        }
        let mut timer = tokio::time::interval(TICK);
        // The driver's timer is never made up (issue #2115).
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut hanging_up = false;
        loop {
            tokio::select! {
                _ = timer.tick(), if !hanging_up => {
                    if let Err(e) = self.tick(&mut ws).await {
                        self.report.error = Some(e);
                        break;
                    }
                    if early > 0 {
                        early -= 1;
                        if early == 0 {
                            self.send_media_start(&mut ws).await;
                        }
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Binary(data))) => self.on_binary(&mut ws, &data).await,
                    Some(Ok(Message::Text(text))) => {
                        if self.on_text(&mut ws, text.as_str()).await {
                            hanging_up = true;
                            let _ = ws.send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Normal,
                                reason: "".into(),
                            }))).await;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        self.report.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                        // tungstenite queued the echo; flush it and read to the end.
                        let _ = ws.flush().await;
                        while let Some(Ok(_)) = ws.next().await {}
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        if !hanging_up {
                            self.report.error = Some(e.to_string());
                        }
                        break;
                    }
                    None => break,
                },
                c = control.recv(), if !hanging_up => match c {
                    Some(Control::Speak(audio)) => self.caller.extend(audio),
                    Some(Control::Text(t)) => { let _ = ws.send(Message::Text(t.into())).await; }
                    Some(Control::Binary(b)) => {
                        if let Err(e) = ws.send(Message::Binary(b.into())).await {
                            self.report.error = Some(e.to_string());
                        }
                    }
                    Some(Control::Hangup) | None => {
                        hanging_up = true;
                        let _ = ws.send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        }))).await;
                    }
                },
            }
        }
        self.notify.notify_waiters();
        self.report
    }

    async fn send_media_start(&mut self, ws: &mut Ws) {
        let o = &self.opts;
        let format = o.media_start_override.as_deref().unwrap_or(o.format);
        let text = if o.json {
            format!(
                r#"{{"event":"MEDIA_START","connection_id":"voicebridge","channel":"WebSocket/voicebridge-00000001","channel_id":"{}","format":"{format}","optimal_frame_size":{},"ptime":20,"channel_variables":{{"__TENANT":"acme"}}}}"#,
                o.channel_id, self.frame_size
            )
        } else {
            format!(
                "MEDIA_START connection_id:voicebridge channel:WebSocket/voicebridge-00000001 channel_id:{} format:{format} optimal_frame_size:{} ptime:20",
                o.channel_id, self.frame_size
            )
        };
        let _ = ws.send(Message::Text(text.into())).await;
    }

    /// One 20 ms tick: the driver's read timer (XON check, queued controls, one frame
    /// to the core), then the caller's frame from the core.
    async fn tick(&mut self, ws: &mut Ws) -> Result<(), String> {
        let now = Instant::now();
        if self.queue_full && self.queue_len < XON_LEVEL {
            self.queue_full = false;
            self.send_event(ws, "MEDIA_XON").await;
        }
        loop {
            match self.queue.pop_front() {
                Some(Queued::Option(id, text)) => {
                    ws.send(Message::Text(text.into()))
                        .await
                        .map_err(|e| e.to_string())?;
                    self.report
                        .marks_processed
                        .push((now, id, self.played_bytes));
                }
                Some(Queued::Frame(frame)) => {
                    self.queue_len -= 1;
                    self.played_bytes += frame.len();
                    self.report.played.push((now, frame));
                    self.played.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                None => {
                    if !self.report.played.is_empty() {
                        self.report.underruns += 1;
                    }
                    break;
                }
            }
        }
        let n = self.frame_size.min(self.caller.len());
        let mut frame: Vec<u8> = self.caller.drain(..n).collect();
        if n > 0 {
            self.speaking.fetch_sub(n, Ordering::SeqCst);
        }
        frame.resize(self.frame_size, silence(self.opts.format));
        ws.send(Message::Binary(frame.into()))
            .await
            .map_err(|e| e.to_string())?;
        self.ticks.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        Ok(())
    }

    async fn send_event(&mut self, ws: &mut Ws, name: &str) {
        let text = if self.opts.json {
            format!(
                r#"{{"event":"{name}","channel_id":"{}"}}"#,
                self.opts.channel_id
            )
        } else {
            name.to_owned()
        };
        let _ = ws.send(Message::Text(text.into())).await;
    }

    async fn on_binary(&mut self, ws: &mut Ws, data: &[u8]) {
        self.report.binary_sizes.push(data.len());
        self.binaries.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        if self.queue_len >= QUEUE_MAX {
            self.report.ignored_queue_full += 1;
            return;
        }
        let mut chunks = data.chunks_exact(self.frame_size);
        for frame in chunks.by_ref() {
            self.queue.push_back(Queued::Frame(frame.to_vec()));
            self.queue_len += 1;
            self.report.max_queue = self.report.max_queue.max(self.queue_len);
            if !self.queue_full && self.queue_len >= XOFF_LEVEL {
                self.queue_full = true;
                self.report.xoffs += 1;
                self.send_event(ws, "MEDIA_XOFF").await;
            }
        }
        self.report.remainder_bytes_dropped += chunks.remainder().len();
    }

    /// A TEXT frame from the daemon; true when it hung the channel up.
    async fn on_text(&mut self, ws: &mut Ws, text: &str) -> bool {
        let now = Instant::now();
        self.report.commands.push((now, text.to_owned()));
        if text.len() > MAX_TEXT {
            self.report.ignored_too_long += 1;
            return false;
        }
        let text = text.trim();
        let (command, id) = if self.opts.json {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                self.send_error(ws, "Unable to parse JSON command").await;
                return false;
            };
            (
                v["command"].as_str().unwrap_or("").to_owned(),
                v["correlation_id"].as_str().unwrap_or("").to_owned(),
            )
        } else {
            let (c, id) = text.split_once(' ').unwrap_or((text, ""));
            (c.to_owned(), id.to_owned())
        };
        match command.as_str() {
            "ANSWER" => self.report.answered = true,
            "HANGUP" => {
                self.report.hangup_command = true;
                return true;
            }
            "MARK_MEDIA" => {
                let event = if self.opts.json {
                    format!(
                        r#"{{"event":"MEDIA_MARK_PROCESSED","channel_id":"{}","correlation_id":"{id}"}}"#,
                        self.opts.channel_id
                    )
                } else if id.is_empty() {
                    "MEDIA_MARK_PROCESSED".to_owned()
                } else {
                    format!("MEDIA_MARK_PROCESSED {id}")
                };
                self.queue.push_back(Queued::Option(id, event));
            }
            "FLUSH_MEDIA" => {
                self.queue.clear();
                self.queue_len = 0;
                self.report.flushes.push(now);
                self.flushed.store(true, Ordering::SeqCst);
            }
            // Unknown commands are only logged by Asterisk.
            _ => {}
        }
        false
    }

    async fn send_error(&mut self, ws: &mut Ws, text: &str) {
        let event = if self.opts.json {
            format!(
                r#"{{"event":"ERROR","channel_id":"{}","error_text":"{text}"}}"#,
                self.opts.channel_id
            )
        } else {
            format!(
                "ERROR channel_id:{} error_text:{text}",
                self.opts.channel_id
            )
        };
        let _ = ws.send(Message::Text(event.into())).await;
    }
}
