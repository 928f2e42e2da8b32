//! FreeSWITCH's Event Socket (ESL): the call-control side channel.
//!
//! `mod_audio_stream` only carries audio; stopping FreeSWITCH's own playback
//! (`uuid_break`), playing the files the community module writes (`uuid_broadcast`),
//! hanging up (`uuid_kill`) and handing over (`uuid_transfer`) go over ESL.
//!
//! One inbound connection per daemon (TCP to `[freeswitch.esl]`, `auth <password>`,
//! `event json DTMF CUSTOM mod_audio_stream::play`), owned by one task that reconnects with
//! exponential backoff (0.5 s → 30 s) and logs each outage once: one warn (or one error
//! for a refused password) when it goes down, one info when it is back.
//!
//! Sessions hold a cheap [`Esl`] clone. Its methods never wait: a command goes into a
//! bounded channel, and while ESL is down (or the channel is full) it is dropped and
//! counted; the call carries on without it. Commands still queued when a connection
//! drops are dropped too: a `uuid_break` from seconds ago must not cut a later reply.
//! `mod_audio_stream::play` and `DTMF` events are routed to the call by `Unique-ID`,
//! which is the call id from the URL path (`/call/${uuid}`).
//!
//! Why not the `freeswitch-esl-tokio` crate: see `docs/esl.md` (it is maintained and
//! capable, but has no reconnect, keeps its frame parser private, and brings a large
//! typed API for four commands and one event).

pub mod frame;

use crate::call_metrics;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::EslConfig;
use frame::{classify, is_safe_arg, parse_channel_event, parse_frame, Frame, FrameError, Message};
pub use frame::{ChannelEvent, PlayEvent};

/// Commands waiting for the connection task; beyond this they are dropped.
const COMMAND_QUEUE: usize = 256;
/// Channel events (plays, key presses) waiting for one call's leg.
const EVENT_QUEUE: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// TCP connect, and each step of the login.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// A FreeSWITCH that accepts no bytes for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const SUBSCRIBE: &str = "event json DTMF CUSTOM mod_audio_stream::play";

/// Why a connection attempt or a connection failed. Messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum EslError {
    #[error("cannot connect: {0} (is FreeSWITCH running, mod_event_socket loaded, and listening on this host:port?)")]
    Connect(std::io::Error),
    #[error("timed out after {secs}s waiting for FreeSWITCH ({0})", secs = STEP_TIMEOUT.as_secs())]
    Timeout(&'static str),
    #[error("FreeSWITCH refused the password ({0}): set freeswitch.esl.password or FREESWITCH_ESL_PASSWORD to event_socket.conf.xml's password")]
    Auth(String),
    #[error("FreeSWITCH refused `{SUBSCRIBE}` ({0})")]
    Subscribe(String),
    #[error("unexpected message {0:?}: is this FreeSWITCH's Event Socket port?")]
    Unexpected(String),
    #[error("connection closed by FreeSWITCH")]
    Closed,
    #[error("FreeSWITCH disconnected us: {0}")]
    Disconnected(String),
    #[error("socket error: {0}")]
    Io(std::io::Error),
    #[error("FreeSWITCH accepted no bytes for {}s", WRITE_TIMEOUT.as_secs())]
    WriteStalled,
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl EslError {
    /// Outages are logged once per kind, so a password problem still shows up after a
    /// period of "connection refused" without a line per retry.
    fn kind(&self) -> u8 {
        match self {
            EslError::Auth(_) => 1,
            _ => 0,
        }
    }
}

struct Shared {
    commands: mpsc::Sender<String>,
    up: AtomicBool,
    dropped: AtomicU64,
    /// Sessions subscribed to play events, by channel uuid, with a token so an older
    /// subscription for a reused uuid cannot remove a newer one.
    calls: DashMap<String, (u64, mpsc::Sender<ChannelEvent>)>,
    next_token: AtomicU64,
}

/// The daemon's ESL connection, as a call sees it. Clone freely.
#[derive(Clone)]
pub struct Esl {
    shared: Arc<Shared>,
}

impl Esl {
    /// Starts the connection task; it runs until `stop` is cancelled.
    pub fn spawn(config: &EslConfig, stop: CancellationToken) -> Esl {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let shared = Arc::new(Shared {
            commands: tx,
            up: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            calls: DashMap::new(),
            next_token: AtomicU64::new(0),
        });
        tokio::spawn(run(config.clone(), Arc::clone(&shared), rx, stop));
        Esl { shared }
    }

    /// Connected and logged in.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Commands dropped since start (ESL down, queue full, unsafe argument).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Stops whatever FreeSWITCH is playing to the channel (barge-in).
    pub fn uuid_break(&self, uuid: &str) -> bool {
        self.api(&["uuid_break", uuid, "all"])
    }

    /// Plays `file` to the caller (`esl_files` playback); queued after what is playing.
    pub fn uuid_broadcast(&self, uuid: &str, file: &str) -> bool {
        self.api(&["uuid_broadcast", uuid, file, "aleg"])
    }

    /// Hangs the channel up.
    pub fn uuid_kill(&self, uuid: &str) -> bool {
        self.api(&["uuid_kill", uuid])
    }

    /// Sends the channel to `destination`: `EXT [DIALPLAN [CONTEXT]]`, as
    /// `uuid_transfer` takes it (the route's `transfer_to`).
    pub fn uuid_transfer(&self, uuid: &str, destination: &str) -> bool {
        let mut words = vec!["uuid_transfer", uuid];
        words.extend(destination.split_whitespace());
        self.api(&words)
    }

    /// Detaches `mod_audio_stream` from the channel. Closing our socket alone leaves its
    /// media bug attached, so before a transfer we stop it explicitly.
    pub fn uuid_audio_stream_stop(&self, uuid: &str) -> bool {
        self.api(&["uuid_audio_stream", uuid, "stop"])
    }

    /// Queues `api <words...>` without waiting. False when it was dropped.
    fn api(&self, words: &[&str]) -> bool {
        if !words.iter().all(|w| is_safe_arg(w)) {
            // The protocol has no quoting: a space or newline would change the command.
            debug!(
                command = words.first().copied().unwrap_or(""),
                "ESL command with an unsafe argument: not sent"
            );
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if !self.is_up() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let line = format!("api {}\n\n", words.join(" "));
        match self.shared.commands.try_send(line) {
            Ok(()) => true,
            Err(_) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Receives this channel's `mod_audio_stream::play` and `DTMF` events until the
    /// returned value is dropped.
    pub fn subscribe(&self, uuid: &str) -> ChannelEvents {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        self.shared.calls.insert(uuid.to_owned(), (token, tx));
        ChannelEvents {
            rx,
            uuid: uuid.to_owned(),
            token,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// One call's channel events.
pub struct ChannelEvents {
    rx: mpsc::Receiver<ChannelEvent>,
    uuid: String,
    token: u64,
    shared: Arc<Shared>,
}

impl ChannelEvents {
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        self.rx.recv().await
    }
}

impl Drop for ChannelEvents {
    fn drop(&mut self) {
        self.shared
            .calls
            .remove_if(&self.uuid, |_, (token, _)| *token == self.token);
    }
}

/// The connection task: connect, serve, and on failure back off and retry, forever.
async fn run(
    config: EslConfig,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<String>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    // The kind of failure already logged for the current outage.
    let mut logged: Option<u8> = None;
    let (host, port) = (config.host.as_str(), config.port);
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            a = login(&config) => a,
        };
        match attempt {
            Ok(conn) => {
                // Anything queued before this connection is stale (see module doc).
                let mut stale = 0;
                while commands.try_recv().is_ok() {
                    stale += 1;
                }
                shared.dropped.fetch_add(stale, Ordering::Relaxed);
                shared.up.store(true, Ordering::Relaxed);
                call_metrics::esl_up(true);
                info!(host, port, "ESL connected");
                backoff = BACKOFF_MIN;
                let result = serve(conn, &shared, &mut commands, &stop).await;
                shared.up.store(false, Ordering::Relaxed);
                call_metrics::esl_up(false);
                match result {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(host, port, reason = %e, "ESL unavailable: commands are dropped until it is back; calls continue");
                        logged = Some(e.kind());
                    }
                }
            }
            Err(e) => {
                if logged != Some(e.kind()) {
                    logged = Some(e.kind());
                    if matches!(e, EslError::Auth(_)) {
                        error!(host, port, reason = %e, "ESL authentication failed");
                    } else {
                        warn!(host, port, reason = %e, retry_max_secs = BACKOFF_MAX.as_secs(), "ESL unavailable: retrying in the background; calls continue without it");
                    }
                } else {
                    debug!(reason = %e, "ESL still unavailable");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A logged-in connection, with the bytes already read past the login.
struct Conn {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl Conn {
    /// The next complete message, reading as needed.
    async fn next_frame(&mut self) -> Result<Frame, EslError> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), EslError> {
        let mut chunk = [0u8; 8192];
        let n = self.reader.read(&mut chunk).await.map_err(EslError::Io)?;
        if n == 0 {
            return Err(EslError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn send(&mut self, line: &str) -> Result<(), EslError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(line.as_bytes())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EslError::Io(e)),
            Err(_) => Err(EslError::WriteStalled),
        }
    }

    /// The next reply during the login (events cannot come yet: none subscribed).
    async fn step(&mut self, what: &'static str) -> Result<Message, EslError> {
        let frame = tokio::time::timeout(STEP_TIMEOUT, self.next_frame())
            .await
            .map_err(|_| EslError::Timeout(what))??;
        Ok(classify(&frame))
    }
}

async fn login(config: &EslConfig) -> Result<Conn, EslError> {
    let connect = TcpStream::connect((config.host.as_str(), config.port));
    let stream = tokio::time::timeout(STEP_TIMEOUT, connect)
        .await
        .map_err(|_| EslError::Timeout("TCP connect"))?
        .map_err(EslError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut conn = Conn {
        reader,
        writer,
        buf: Vec::new(),
    };
    match conn.step("auth/request").await? {
        Message::AuthRequest => {}
        other => return Err(EslError::Unexpected(summary(&other))),
    }
    // The one place the password is used; it never goes into an error or a log line.
    let auth = format!("auth {}\n\n", config.password.expose());
    conn.send(&auth).await?;
    match conn.step("auth reply").await {
        Ok(Message::CommandReply { ok: true, .. }) => {}
        Ok(Message::CommandReply { ok: false, text }) => return Err(EslError::Auth(text)),
        // FreeSWITCH closes right after a refusal; a close here is a refusal too.
        Ok(Message::DisconnectNotice(_)) | Err(EslError::Closed) => {
            return Err(EslError::Auth("connection closed".to_owned()))
        }
        Ok(other) => return Err(EslError::Unexpected(summary(&other))),
        Err(e) => return Err(e),
    }
    conn.send(&format!("{SUBSCRIBE}\n\n")).await?;
    match conn.step("event subscription reply").await? {
        Message::CommandReply { ok: true, .. } => Ok(conn),
        Message::CommandReply { ok: false, text } => Err(EslError::Subscribe(text)),
        other => Err(EslError::Unexpected(summary(&other))),
    }
}

/// Runs a logged-in connection: writes queued commands, routes events, reads replies.
/// `Ok` only when told to stop.
async fn serve(
    mut conn: Conn,
    shared: &Shared,
    commands: &mut mpsc::Receiver<String>,
    stop: &CancellationToken,
) -> Result<(), EslError> {
    // Commands sent and not yet answered, oldest first (FreeSWITCH answers in order).
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut full_warned = false;
    loop {
        // Whatever is already buffered first: one read may hold several messages.
        while let Some((frame, used)) = parse_frame(&conn.buf)? {
            conn.buf.drain(..used);
            match classify(&frame) {
                Message::ApiResponse { ok, body } | Message::CommandReply { ok, text: body } => {
                    let command = pending.pop_front().unwrap_or_default();
                    if ok {
                        debug!(command = %command, reply = %body, "ESL reply");
                    } else {
                        // Usually a channel that hung up meanwhile: not worth a warning.
                        debug!(command = %command, reply = %body, "ESL command failed");
                    }
                }
                Message::Event(event) => {
                    let Some(channel_event) = parse_channel_event(&event) else {
                        continue;
                    };
                    let Some(call) = shared.calls.get(channel_event.uuid()) else {
                        debug!(uuid = %channel_event.uuid(), "event for a channel we do not serve");
                        continue;
                    };
                    if call.1.try_send(channel_event).is_err() && !full_warned {
                        full_warned = true;
                        warn!("a call is not taking its ESL events: some were dropped");
                    }
                }
                Message::DisconnectNotice(text) => return Err(EslError::Disconnected(text)),
                Message::BadEvent(why) => debug!(why = %why, "ESL event ignored"),
                Message::AuthRequest | Message::Other(_) => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            line = commands.recv() => {
                let Some(line) = line else { return Ok(()) };
                conn.send(&line).await?;
                // "api uuid_break <uuid> all" → "uuid_break <uuid>", for debug logs.
                pending.push_back(line.split_whitespace().skip(1).take(2).collect::<Vec<_>>().join(" "));
                if pending.len() > COMMAND_QUEUE * 4 {
                    pending.pop_front();
                }
            }
            read = conn.read_more() => read?,
        }
    }
}

fn summary(m: &Message) -> String {
    match m {
        Message::AuthRequest => "auth/request".to_owned(),
        Message::CommandReply { text, .. } => format!("command/reply {text}"),
        Message::ApiResponse { body, .. } => {
            format!("api/response {}", body.chars().take(80).collect::<String>())
        }
        Message::Event(e) => format!("event {}", e.name),
        Message::DisconnectNotice(t) => format!("disconnect-notice {t}"),
        Message::BadEvent(why) => format!("bad event: {why}"),
        Message::Other(ct) => format!("Content-Type {ct}"),
    }
}
