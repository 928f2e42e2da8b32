//! ElevenLabs Agents Platform (Conversational AI) over its agent WebSocket.
//!
//! ```text
//!  spawn ─► [api_key?] GET signed_url_endpoint?agent_id=… (xi-api-key) ─► signed wss URL
//!        └► connect (signed URL, or url?agent_id=… for a public agent)
//!  Context ─┐
//!  socket ──┴► conversation_initiation_client_data ─► conversation_initiation_metadata
//!              (formats are set on the agent: read them here) ─► Ready{input, output}
//!  live: user_audio_chunk ► ; ◄ audio / interruption / ping (→ pong) / transcripts / error
//! ```
//!
//! The agent speaks its `first_message` by itself (the greeting): nothing to send. There
//! is no truncate: after an interruption the server trims its own history and tells us
//! with `agent_response_correction`. Late audio of an interrupted response is recognised
//! by its `event_id` and dropped here. See `turn.rs` for the per-response rules,
//! `wire.rs` for the messages and `docs/providers/elevenlabs.md` for the whole story.
//!
//! Tools cannot be declared over this socket: they are *client tools* configured on the
//! agent with the same names. `client_tool_call` → `ToolCall`, the result goes back as
//! `client_tool_result`.

pub mod turn;
pub mod wire;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::ws::{self, ProviderWs, Sink, Stream, SETUP_TIMEOUT};
use super::{
    CallContext, ProviderChannels, ProviderCommand, ProviderEvent, Speaker, ToolCall, ToolResult,
};
use crate::audio::AudioFormat;
use crate::config::{Config, ElevenLabsConfig, Route};
use turn::{AudioVerdict, Turns};
use wire::ServerEvent;

/// The signed-URL request must answer within this.
const SIGNED_URL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest HTTP error body kept for the log line.
const MAX_BODY: usize = 500;
/// Events parsed but not yet taken by the session; above this we stop reading the socket
/// (back-pressure) instead of buffering without limit.
const MAX_OUTBOX: usize = 512;
/// The server ends a conversation with no user input for 60 s (close 1002), even mid-call
/// while the caller just listens: when no caller audio went out for this long (a PBX
/// that sends nothing during silence, a held or DTX caller), silence is streamed instead,
/// one 20 ms chunk per 20 ms, until caller audio flows again.
const SILENCE_AFTER: Duration = Duration::from_millis(200);
const FRAME: Duration = Duration::from_millis(20);

/// A failure before the conversation started, as the one event the session gets.
struct SetupError {
    code: String,
    message: String,
}

impl From<SetupError> for ProviderEvent {
    fn from(e: SetupError) -> Self {
        ProviderEvent::Error {
            recoverable: false,
            code: e.code,
            message: e.message,
        }
    }
}

/// The provider task for one call (see [`super::spawn`]): runs one conversation until
/// the session closes it or the agent hangs up.
pub fn run(
    config: &Config,
    route: &Arc<Route>,
    ends: ProviderChannels,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    serve(config.providers.elevenlabs.clone(), route.clone(), ends)
}

async fn serve(config: ElevenLabsConfig, route: Arc<Route>, mut ends: ProviderChannels) {
    let mut context: Option<Arc<CallContext>> = None;
    let mut socket: Option<ProviderWs> = None;
    let connecting = open(&config);
    tokio::pin!(connecting);
    // Connect while the session waits for the metadata; set up when both are there.
    while socket.is_none() || context.is_none() {
        tokio::select! {
            result = &mut connecting, if socket.is_none() => match result {
                Ok(ws) => socket = Some(ws),
                Err(e) => {
                    let _ = ends.events.send(e.into()).await;
                    return;
                }
            },
            command = ends.commands.recv() => match command {
                None | Some(ProviderCommand::Close) => {
                    if let Some(mut ws) = socket {
                        ws::close_unsplit(&mut ws).await;
                    }
                    return;
                }
                Some(ProviderCommand::Context(c)) => context = Some(c),
                Some(other) => debug!(command = ?other, "elevenlabs: not set up yet: ignored"),
            },
        }
    }
    let (Some(socket), Some(context)) = (socket, context) else {
        return;
    };
    let (mut sink, stream) = ws::split(socket);
    let init = wire::initiation(&route, &context.vars);
    debug!(
        overrides = %init.get("conversation_config_override").map(|v| v.to_string()).unwrap_or_default(),
        "elevenlabs: conversation_initiation_client_data"
    );
    if let Err(e) = ws::send(&mut sink, Message::text(init.to_string())).await {
        let _ = ends
            .events
            .send(ProviderEvent::Closed {
                reason: format!("elevenlabs connection lost during setup: {e}"),
            })
            .await;
        return;
    }
    Live::new(&route, sink, stream).run(ends).await;
}

/// The signed URL (with an api key) or the public agent URL, then the WebSocket.
async fn open(config: &ElevenLabsConfig) -> Result<ProviderWs, SetupError> {
    let key = config.api_key.expose();
    let url = if key.is_empty() {
        with_query(&config.url, "agent_id", &config.agent_id)
    } else {
        signed_url(config).await?
    };
    let shown = crate::redact::url(&url);
    info!(url = %shown, signed = !key.is_empty(), "elevenlabs: connecting");
    match ws::connect(&url, &[], &[key]).await {
        Ok(socket) => {
            info!("elevenlabs: connected");
            Ok(socket)
        }
        Err(e) => Err(SetupError {
            code: e
                .status()
                .map_or_else(|| "connect".to_owned(), |s| format!("http_{s}")),
            message: e.to_string(),
        }),
    }
}

/// `url` with `name=value` appended to its query.
fn with_query(url: &str, name: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let value = percent_encoding::utf8_percent_encode(value, UNRESERVED);
    format!("{url}{sep}{name}={value}")
}

/// One HTTP client for all calls (connection reuse to the API host).
fn http_client() -> Result<reqwest::Client, SetupError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    // reqwest is built without a crypto provider and panics if none is installed; main
    // installs ring, this only covers library users that did not.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(SIGNED_URL_TIMEOUT)
        .connect_timeout(SIGNED_URL_TIMEOUT)
        .build()
        .map_err(|e| SetupError {
            code: "connect".into(),
            message: format!("cannot build the HTTP client: {e}"),
        })?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

/// `GET {signed_url_endpoint}?agent_id=…` with `xi-api-key` → `{"signed_url":"wss://…"}`.
async fn signed_url(config: &ElevenLabsConfig) -> Result<String, SetupError> {
    let key = config.api_key.expose();
    let endpoint = with_query(&config.signed_url_endpoint, "agent_id", &config.agent_id);
    let shown = crate::redact::url(&endpoint);
    let fail = |code: String, message: String| SetupError {
        code,
        message: ws::redact(&message, &[key]),
    };
    debug!(endpoint = %shown, "elevenlabs: fetching a signed URL");
    let response = http_client()?
        .get(&endpoint)
        .header("xi-api-key", key)
        .send()
        .await
        .map_err(|e| {
            let what = if e.is_timeout() {
                format!("timed out after {} s", SIGNED_URL_TIMEOUT.as_secs())
            } else {
                e.without_url().to_string()
            };
            fail(
                "connect".into(),
                format!("signed URL request to {shown} failed: {what}"),
            )
        })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(fail(
            format!("http_{}", status.as_u16()),
            format!(
                "signed URL request to {shown} refused: HTTP {}: {}",
                status.as_u16(),
                clip(body.trim(), MAX_BODY)
            ),
        ));
    }
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match parsed["signed_url"].as_str() {
        Some(url) if !url.is_empty() => Ok(url.to_owned()),
        _ => Err(fail(
            "signed_url".into(),
            format!(
                "signed URL response from {shown} has no signed_url: {}",
                clip(body.trim(), MAX_BODY)
            ),
        )),
    }
}

fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Meaning of ElevenLabs' close codes, for the log line.
fn close_meaning(code: u16) -> &'static str {
    match code {
        1000 => "normal end or max duration",
        1002 => "operational: inactivity or LLM timeout",
        1008 => "contract/auth: rejected override or bad signed URL",
        1011 => "ElevenLabs internal error",
        _ => "unexpected",
    }
}

/// The set-up conversation.
struct Live {
    sink: Sink,
    stream: Stream,
    turns: Turns,
    ready: bool,
    output: Option<AudioFormat>,
    /// Parsed events not yet taken by the session (see [`MAX_OUTBOX`]).
    outbox: VecDeque<ProviderEvent>,
    /// The last `error` event, to explain the close that usually follows it.
    last_error: Option<(String, String)>,
    pings: u64,
    late_dropped: u64,
    /// Client tool calls waiting for their result.
    calls: HashSet<String>,
    /// One 20 ms chunk of silence in the agent's input format (set at ready).
    silence: Option<String>,
    /// When caller audio (or our silence) last went out.
    last_audio: Instant,
    silence_chunks: u64,
    /// Silence is being streamed (caller audio stopped): the next chunk is due 20 ms on.
    in_silence: bool,
}

/// How the live loop ended.
enum End {
    /// The session asked (or went away): close politely.
    Session,
    /// The provider side ended; this event tells the session.
    Provider(ProviderEvent),
}

impl Live {
    fn new(route: &Route, sink: Sink, stream: Stream) -> Live {
        Live {
            sink,
            stream,
            turns: Turns::new(route.call.response_timeout),
            ready: false,
            output: None,
            outbox: VecDeque::new(),
            last_error: None,
            pings: 0,
            late_dropped: 0,
            calls: HashSet::new(),
            silence: None,
            last_audio: Instant::now(),
            silence_chunks: 0,
            in_silence: false,
        }
    }

    async fn run(mut self, mut ends: ProviderChannels) {
        let end = self.serve(&mut ends).await;
        debug!(
            pings = self.pings,
            late_audio_dropped = self.late_dropped,
            silence_chunks = self.silence_chunks,
            max_event_id = self.turns.max_event_id,
            "elevenlabs: conversation over"
        );
        match end {
            End::Session => ws::close_politely(&mut self.sink, None, "call ended").await,
            End::Provider(event) => {
                let polite = !matches!(event, ProviderEvent::Closed { .. });
                self.outbox.push_back(event);
                // Whatever was parsed before the end still reaches the session, in order.
                while let Some(e) = self.outbox.pop_front() {
                    if ends.events.send(e).await.is_err() {
                        break;
                    }
                }
                if polite {
                    // We gave up (e.g. an audio format we cannot use): say so politely.
                    ws::close_politely(&mut self.sink, None, "client cannot continue").await;
                }
            }
        }
    }

    async fn serve(&mut self, ends: &mut ProviderChannels) -> End {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            // The turn state keeps std time (it is pure); the timers want tokio's.
            let done_at = self.turns.done_deadline().map(Instant::from_std);
            let watchdog_at = self.turns.watchdog_deadline().map(Instant::from_std);
            let silence_at = self.silence.as_ref().map(|_| {
                self.last_audio
                    + if self.in_silence {
                        FRAME
                    } else {
                        SILENCE_AFTER
                    }
            });
            tokio::select! {
                biased;
                command = ends.commands.recv() => {
                    let Some(command) = command else { return End::Session };
                    if let Some(end) = self.on_command(command).await {
                        return end;
                    }
                }
                msg = self.stream.next(), if self.outbox.len() < MAX_OUTBOX => {
                    if let Some(end) = self.on_message(msg).await {
                        return end;
                    }
                }
                permit = ends.events.reserve(), if !self.outbox.is_empty() => {
                    let Ok(permit) = permit else { return End::Session };
                    if let Some(e) = self.outbox.pop_front() {
                        permit.send(e);
                    }
                }
                _ = sleep_until(done_at.unwrap_or(far)), if done_at.is_some() => {
                    if self.turns.on_done_due(std::time::Instant::now()) {
                        self.outbox.push_back(ProviderEvent::ResponseDone);
                    }
                }
                _ = sleep_until(silence_at.unwrap_or(far)), if silence_at.is_some() => {
                    if let Some(end) = self.send_silence().await {
                        return end;
                    }
                }
                _ = sleep_until(watchdog_at.unwrap_or(far)), if watchdog_at.is_some() => {
                    if let Some(w) = self.turns.on_watchdog_due(std::time::Instant::now()) {
                        self.outbox.push_back(ProviderEvent::Warning(w));
                    }
                }
            }
        }
    }

    /// No caller audio for a while: one chunk of silence, paced like the caller's.
    async fn send_silence(&mut self) -> Option<End> {
        let chunk = self.silence.clone()?;
        if self.silence_chunks == 0 {
            debug!("elevenlabs: no caller audio: streaming silence so the agent does not time out");
        }
        self.silence_chunks += 1;
        self.in_silence = true;
        self.last_audio = Instant::now();
        if let Err(e) = ws::send(&mut self.sink, Message::text(chunk)).await {
            return Some(self.lost(e));
        }
        None
    }

    async fn on_command(&mut self, command: ProviderCommand) -> Option<End> {
        match command {
            ProviderCommand::Audio(frame) => {
                if !self.ready {
                    return None;
                }
                if let Err(e) =
                    ws::send(&mut self.sink, Message::text(wire::audio_chunk(&frame))).await
                {
                    return Some(self.lost(e));
                }
                self.last_audio = Instant::now();
                self.in_silence = false;
            }
            ProviderCommand::Truncate { item, played_ms } => {
                // No truncate in this protocol: the server cuts its own history and says
                // what it kept with agent_response_correction.
                debug!(%item, played_ms, "elevenlabs: barge-in (server trims its own history)");
            }
            ProviderCommand::Cancel => debug!("elevenlabs: cancel has no equivalent: ignored"),
            // The agent cannot be told what to say; the session does not ask.
            // It never sends marks, so none come back.
            ProviderCommand::Context(_)
            | ProviderCommand::Say(_)
            | ProviderCommand::MarkPlayed(_) => {}
            ProviderCommand::ToolResult(r) => return self.on_tool_result(*r).await,
            ProviderCommand::Dtmf(digits) => {
                if !self.ready {
                    return None;
                }
                let msg = wire::user_message(&super::dtmf_text(&digits));
                if let Err(e) = ws::send(&mut self.sink, Message::text(msg)).await {
                    return Some(self.lost(e));
                }
            }
            ProviderCommand::Close => return Some(End::Session),
        }
        None
    }

    async fn on_tool_result(&mut self, r: ToolResult) -> Option<End> {
        if !self.calls.remove(&r.id) {
            warn!(tool = %r.name, tool_call_id = %r.id, "elevenlabs: result for a call the agent did not make (or already answered): not sent");
            return None;
        }
        debug!(tool = %r.name, tool_call_id = %r.id, is_error = r.is_error, "elevenlabs: client_tool_result");
        if let Err(e) = ws::send(&mut self.sink, Message::text(wire::client_tool_result(&r))).await
        {
            return Some(self.lost(e));
        }
        self.turns
            .on_tool_result(r.reply, std::time::Instant::now());
        None
    }

    fn lost(&self, e: impl std::fmt::Display) -> End {
        let mut reason = format!("elevenlabs connection lost: {e}");
        if let Some((tag, message)) = &self.last_error {
            reason.push_str(&format!(" (after error event: {tag}: {message})"));
        }
        End::Provider(ProviderEvent::Closed { reason })
    }

    async fn on_message(&mut self, msg: ws::Incoming) -> Option<End> {
        let msg = match msg {
            None => {
                return Some(End::Provider(ProviderEvent::Closed {
                    reason: "elevenlabs connection ended without a close frame".into(),
                }))
            }
            Some(Err(e)) => return Some(self.lost(e)),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Close(frame) => {
                let (code, why) = crate::providers::ws::close_parts(frame);
                // The provider's own words first: the Close to FreeSWITCH keeps 120 bytes.
                let mut reason = format!(
                    "elevenlabs close code {code}: {why} [{}]",
                    close_meaning(code)
                );
                if let Some((tag, message)) = &self.last_error {
                    if why.contains(message.as_str()) {
                        reason.push_str(&format!(" (error event: {tag})"));
                    } else {
                        reason.push_str(&format!(" (error event: {tag}: {message})"));
                    }
                }
                info!(code, reason = %why, "elevenlabs: close received");
                Some(End::Provider(ProviderEvent::Closed { reason }))
            }
            Message::Binary(b) => {
                debug!(
                    bytes = b.len(),
                    "elevenlabs: unexpected binary message ignored"
                );
                None
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<End> {
        let event = match wire::parse(text) {
            Ok(e) => e,
            Err(e) => {
                debug!(error = %e, "elevenlabs: malformed message ignored");
                return None;
            }
        };
        let now = std::time::Instant::now();
        match event {
            ServerEvent::Ping { event_id, ping_ms } => {
                // Answered at once, ahead of anything queued for the session.
                self.pings += 1;
                if let Err(e) = ws::send(&mut self.sink, Message::text(wire::pong(&event_id))).await
                {
                    return Some(self.lost(e));
                }
                debug!(%event_id, ping_ms, "elevenlabs: ping answered");
            }
            ServerEvent::Audio {
                event_id,
                audio_base_64,
            } => {
                if !self.ready {
                    debug!(event_id, "elevenlabs: audio before the metadata: ignored");
                    return None;
                }
                match self.turns.on_audio(event_id, now) {
                    AudioVerdict::Drop => {
                        self.late_dropped += 1;
                        debug!(
                            event_id,
                            "elevenlabs: late audio of an interrupted response dropped"
                        );
                    }
                    AudioVerdict::Play(item) => {
                        match base64::engine::general_purpose::STANDARD
                            .decode(audio_base_64.as_bytes())
                        {
                            Ok(mut data) => {
                                if let Some(f) = self.output {
                                    // Never a half sample.
                                    data.truncate(data.len() - data.len() % f.bytes_per_sample());
                                }
                                if !data.is_empty() {
                                    self.outbox.push_back(ProviderEvent::Audio {
                                        item,
                                        data: Bytes::from(data),
                                    });
                                }
                            }
                            Err(e) => {
                                warn!(event_id, error = %e, "elevenlabs: audio is not base64: dropped")
                            }
                        }
                    }
                }
            }
            ServerEvent::Interruption { event_id } => {
                info!(event_id, "elevenlabs: interruption");
                self.turns.on_interruption(event_id);
                self.outbox.push_back(ProviderEvent::SpeechStarted);
            }
            ServerEvent::UserTranscript(text) => {
                if self.turns.on_user_transcript(now) {
                    self.outbox.push_back(ProviderEvent::ResponseDone);
                }
                // The final transcript is the earliest end-of-turn signal every agent
                // sends (`vad_score` and tentative transcripts are optional events).
                self.outbox.push_back(ProviderEvent::SpeechStopped);
                self.outbox.push_back(ProviderEvent::Transcript {
                    who: Speaker::Caller,
                    text,
                    is_final: true,
                });
            }
            ServerEvent::AgentResponse(text) => {
                self.turns.on_agent_response();
                self.outbox.push_back(ProviderEvent::Transcript {
                    who: Speaker::Assistant,
                    text,
                    is_final: true,
                });
            }
            ServerEvent::AgentResponseCorrection {
                original,
                corrected,
            } => {
                debug!(
                    original_chars = original.len(),
                    corrected_chars = corrected.len(),
                    "elevenlabs: assistant response corrected after the interruption"
                );
                // Not final: the session logs it at debug (when transcripts are on).
                self.outbox.push_back(ProviderEvent::Transcript {
                    who: Speaker::Assistant,
                    text: format!("(corrected after barge-in) {corrected}"),
                    is_final: false,
                });
            }
            ServerEvent::Metadata {
                conversation_id,
                output,
                input,
            } => {
                if self.ready {
                    debug!("elevenlabs: second conversation_initiation_metadata ignored");
                    return None;
                }
                let (Some(input_format), Some(output_format)) =
                    (wire::parse_format(&input), wire::parse_format(&output))
                else {
                    let bad = if wire::parse_format(&input).is_none() {
                        format!("user_input_audio_format {input:?}")
                    } else {
                        format!("agent_output_audio_format {output:?}")
                    };
                    return Some(End::Provider(ProviderEvent::Error {
                        recoverable: false,
                        code: "audio_format".into(),
                        message: format!(
                            "the agent's {bad} is not supported: set the agent's audio to \
                             ulaw_8000 (best for telephony) or pcm_8000..pcm_48000"
                        ),
                    }));
                };
                info!(
                    conversation_id = %conversation_id,
                    input = %input,
                    output = %output,
                    "elevenlabs: conversation started"
                );
                self.ready = true;
                self.output = Some(output_format);
                let bytes = input_format.bytes_per_sec() * FRAME.as_millis() as usize / 1000;
                let chunk = vec![input_format.codec.silence_byte(); bytes];
                self.silence = Some(wire::audio_chunk(&chunk));
                self.last_audio = Instant::now();
                self.outbox.push_back(ProviderEvent::Ready {
                    input: input_format,
                    output: output_format,
                });
            }
            ServerEvent::ClientToolCall {
                id,
                name,
                parameters,
            } => {
                info!(tool = %name, tool_call_id = %id, "elevenlabs: client tool call");
                self.turns.on_tool_call();
                self.calls.insert(id.clone());
                self.outbox
                    .push_back(ProviderEvent::ToolCall(Box::new(ToolCall {
                        id,
                        name,
                        arguments: parameters,
                    })));
            }
            ServerEvent::Error {
                code,
                error_type,
                message,
            } => {
                let tag = if error_type.is_empty() {
                    code.clone()
                } else {
                    error_type
                };
                warn!(code = %code, error_type = %tag, detail = %message, "elevenlabs: error event");
                self.last_error = Some((tag.clone(), message.clone()));
                self.outbox.push_back(ProviderEvent::Error {
                    recoverable: true,
                    code: tag,
                    message: format!("code {code}: {message}"),
                });
            }
            ServerEvent::Other(kind) => debug!(kind = %kind, "elevenlabs: event ignored"),
        }
        None
    }
}

/// `voicebridge check`: starts a real conversation with the agent (signed URL if a key
/// is set), sends the setup, waits for its metadata, closes.
pub async fn check(config: &Config, route: &Route) -> Result<String, String> {
    let cfg = &config.providers.elevenlabs;
    let mut socket = open(cfg)
        .await
        .map_err(|e| format!("{}: {}", e.code, e.message))?;
    let init = wire::initiation(route, &Default::default());
    let result = tokio::time::timeout(SETUP_TIMEOUT, async {
        socket
            .send(Message::text(init.to_string()))
            .await
            .map_err(|e| format!("sending the setup failed: {e}"))?;
        while let Some(msg) = socket.next().await {
            let msg = msg.map_err(|e| format!("connection lost: {e}"))?;
            match msg {
                Message::Text(t) => match wire::parse(t.as_str()) {
                    Ok(ServerEvent::Metadata {
                        conversation_id,
                        output,
                        input,
                    }) => {
                        for (what, f) in [("user_input", &input), ("agent_output", &output)] {
                            if wire::parse_format(f).is_none() {
                                return Err(format!(
                                    "the agent's {what}_audio_format {f:?} is not supported"
                                ));
                            }
                        }
                        return Ok(format!(
                            "elevenlabs agent {} answered (conversation {conversation_id}, \
                             input {input}, output {output})",
                            cfg.agent_id
                        ));
                    }
                    Ok(ServerEvent::Ping { event_id, .. }) => {
                        let _ = socket.send(Message::text(wire::pong(&event_id))).await;
                    }
                    Ok(ServerEvent::Error {
                        code,
                        error_type,
                        message,
                    }) => {
                        return Err(format!("error {code} {error_type}: {message}"));
                    }
                    _ => {}
                },
                Message::Close(frame) => {
                    let (code, why) = crate::providers::ws::close_parts(frame);
                    return Err(format!(
                        "closed with code {code} ({}): {why}",
                        close_meaning(code)
                    ));
                }
                _ => {}
            }
        }
        Err("connection ended before the conversation started".to_owned())
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "no conversation_initiation_metadata within {} s",
            SETUP_TIMEOUT.as_secs()
        ))
    });
    ws::close_unsplit(&mut socket).await;
    result.map_err(|e| ws::redact(&e, &[cfg.api_key.expose()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_appended() {
        assert_eq!(
            with_query("wss://h/v1/convai/conversation", "agent_id", "agent_1"),
            "wss://h/v1/convai/conversation?agent_id=agent_1"
        );
        assert_eq!(
            with_query("http://h/x?a=b", "agent_id", "a b"),
            "http://h/x?a=b&agent_id=a%20b"
        );
    }
}
