//! OpenAI Realtime API (GA) over WebSocket.
//!
//! One socket per call: `{url}?model={model}` with `Authorization: Bearer <key>` (no
//! `OpenAI-Beta` header: that is the retired beta interface). The connection starts as
//! soon as the call is accepted; the `session.update` goes out once the server's
//! `session.created` AND the call context (template variables) are both in, and the
//! session is told `Ready` on `session.updated`.
//!
//! ```text
//!  connect ──► session.created ─┐
//!  Context ─────────────────────┴─► session.update ──► session.updated ─► Ready
//!                                                                      └► response.create (greeting)
//! ```
//!
//! Audio: `audio/pcmu` / `audio/pcma` pass G.711 through (no resampling at all for an
//! 8 kHz call), `audio/pcm` is PCM16 24 kHz. Barge-in: server VAD with
//! `interrupt_response: true`, so on `input_audio_buffer.speech_started` the server
//! cancels the response itself; we raise `SpeechStarted`, drop the late deltas of the
//! response that was in progress, and answer the session's `Truncate` with
//! `conversation.item.truncate` so the model forgets what the caller never heard.
//!
//! Tools: the route's functions are declared in `session.update`; a
//! `response.function_call_arguments.done` becomes `ToolCall`, each `ToolResult` a
//! `function_call_output` item at once, and one `response.create` follows once the
//! calling response is done and every call has its result (see `ToolTurns`).
//!
//! The wire shapes are in `docs/protocols/openai-realtime.md` (shared docs) and
//! `docs/providers/openai.md`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::ws::{self, ProviderWs};
use super::{
    template, CallContext, ProviderChannels, ProviderCommand, ProviderEvent, Speaker, ToolCall,
    ToolResult,
};
use crate::audio::{AudioFormat, ItemId};
use crate::config::{Config, OpenAiAudioFormat, OpenAiConfig, Route};
use crate::tools::ToolDecl;

/// Keepalive: the protocol has no application-level ping.
const PING_EVERY: Duration = Duration::from_secs(15);
/// From the socket being open to `session.updated`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A provider socket that accepts nothing for this long is considered dead.
const WRITE_STALL: Duration = Duration::from_secs(5);
/// How long we wait for the server's Close echo when we close.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// After `session_expired`, the server closes (1001); if it does not, we end anyway.
const EXPIRY_CLOSE_WAIT: Duration = Duration::from_secs(3);
/// OpenAI's maximum session length; a 1001 close after this long is the limit.
const SESSION_LIMIT: Duration = Duration::from_secs(59 * 60);
/// Transcription model for the caller's side (asynchronous, for logs only).
const TRANSCRIPTION_MODEL: &str = "gpt-4o-mini-transcribe";
/// The client `event_id` of our `session.update`, so an `error` that names it is known
/// to be a rejected setup (fatal) rather than a passing complaint.
const SETUP_EVENT_ID: &str = "vb_session_update";
const EXPIRED_REASON: &str = "OpenAI session reached its 60-minute limit";

/// The wire format chosen by `providers.openai.audio_format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireFormat {
    pub kind: OpenAiAudioFormat,
}

impl WireFormat {
    pub fn new(kind: OpenAiAudioFormat) -> Self {
        WireFormat { kind }
    }

    /// The `format` object of `audio.input` / `audio.output`.
    pub fn json(self) -> Value {
        match self.kind {
            OpenAiAudioFormat::Pcmu => json!({"type": "audio/pcmu"}),
            OpenAiAudioFormat::Pcma => json!({"type": "audio/pcma"}),
            OpenAiAudioFormat::Pcm24 => json!({"type": "audio/pcm", "rate": 24000}),
        }
    }

    /// The same format for the session (used for input and output alike).
    pub fn audio(self) -> AudioFormat {
        match self.kind {
            OpenAiAudioFormat::Pcmu => AudioFormat::pcmu(),
            OpenAiAudioFormat::Pcma => AudioFormat::pcma(),
            OpenAiAudioFormat::Pcm24 => AudioFormat::l16(24000),
        }
    }
}

/// Characters escaped in the `model` query value (RFC 3986 unreserved ones are kept).
const MODEL_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The socket URL: `{url}?model={model}` (or `&model=` if the URL has a query already).
pub fn endpoint(cfg: &OpenAiConfig) -> String {
    let sep = if cfg.url.contains('?') { '&' } else { '?' };
    let model: String = percent_encoding::utf8_percent_encode(&cfg.model, MODEL_ESCAPE).collect();
    format!("{}{sep}model={model}", cfg.url)
}

/// The ISO-639-1 part of a BCP-47 tag (`it-IT` → `it`), if it has one.
pub fn iso639_1(language: &str) -> Option<String> {
    let primary = language.trim().split(['-', '_']).next()?;
    (primary.len() == 2 && primary.chars().all(|c| c.is_ascii_alphabetic()))
        .then(|| primary.to_ascii_lowercase())
}

/// What the session asked for, resolved for this call.
#[derive(Clone, Debug)]
pub struct Setup {
    pub model: String,
    pub format: WireFormat,
    pub voice: String,
    pub language: Option<String>,
    pub instructions: String,
    pub greeting: String,
    /// The functions the model may call (webhook tools and enabled built-ins).
    pub tools: Vec<ToolDecl>,
}

impl Setup {
    /// Resolves voice/language/templates from the config, the route and the call's
    /// template variables.
    pub fn new(cfg: &OpenAiConfig, route: &Route, ctx: &CallContext) -> Setup {
        let voice = if route.call.voice.is_empty() {
            cfg.voice.clone()
        } else {
            route.call.voice.clone()
        };
        Setup {
            model: cfg.model.clone(),
            format: WireFormat::new(cfg.audio_format),
            voice,
            language: iso639_1(&route.call.language),
            instructions: template::render(&route.call.instructions, &ctx.vars),
            greeting: template::render(&route.call.greeting, &ctx.vars)
                .trim()
                .to_owned(),
            tools: crate::tools::declarations(&route.call),
        }
    }

    /// The `session.update` client event (GA shape).
    pub fn session_update(&self) -> Value {
        let format = self.format.json();
        let mut transcription = json!({"model": TRANSCRIPTION_MODEL});
        if let Some(lang) = &self.language {
            transcription["language"] = json!(lang);
        }
        let mut update = json!({
            "type": "session.update",
            "event_id": SETUP_EVENT_ID,
            "session": {
                "type": "realtime",
                "model": self.model,
                "output_modalities": ["audio"],
                "instructions": self.instructions,
                "audio": {
                    "input": {
                        "format": format,
                        "transcription": transcription,
                        "noise_reduction": {"type": "near_field"},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": 0.5,
                            "prefix_padding_ms": 300,
                            "silence_duration_ms": 500,
                            "create_response": true,
                            "interrupt_response": true
                        }
                    },
                    "output": {
                        "format": format,
                        "voice": self.voice
                    }
                }
            }
        });
        // Without tools both keys are left out, so a route without tools sends the
        // same session as before tools existed.
        if !self.tools.is_empty() {
            let tools: Vec<Value> = self
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "function",
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters
                    })
                })
                .collect();
            update["session"]["tools"] = Value::Array(tools);
            update["session"]["tool_choice"] = json!("auto");
        }
        update
    }

    /// The greeting's `response.create`, if there is a greeting.
    pub fn greeting_event(&self) -> Option<Value> {
        if self.greeting.is_empty() {
            return None;
        }
        Some(json!({
            "type": "response.create",
            "response": {
                "instructions": format!("Greet the caller by saying exactly: {}", self.greeting)
            }
        }))
    }
}

/// `{"type":"input_audio_buffer.append","audio":"<base64>"}` for one frame, in one
/// allocation: the JSON is written around the base64 in place. Public for the benches.
pub fn append_event(frame: &[u8]) -> String {
    const HEAD: &str = r#"{"type":"input_audio_buffer.append","audio":""#;
    let mut text = String::with_capacity(HEAD.len() + frame.len().div_ceil(3) * 4 + 2);
    text.push_str(HEAD);
    base64::engine::general_purpose::STANDARD.encode_string(frame, &mut text);
    text.push_str("\"}");
    text
}

// ---- server events ------------------------------------------------------------------

/// The fields of server events we use; everything else is ignored.
#[derive(Deserialize, Debug, Default)]
struct ServerEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
    delta: Option<String>,
    #[serde(default)]
    transcript: Option<String>,
    #[serde(default)]
    response: Option<ResponseObject>,
    #[serde(default)]
    error: Option<ErrorObject>,
    /// `response.function_call_arguments.done`: the function call.
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// The arguments as JSON text (the model's, not always valid JSON).
    #[serde(default)]
    arguments: Option<String>,
    /// `conversation.item.added`: to see our function outputs enter the conversation.
    #[serde(default)]
    item: Option<ItemObject>,
}

#[derive(Deserialize, Debug, Default)]
struct ItemObject {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    call_id: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
struct ResponseObject {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    usage: Option<UsageObject>,
}

#[derive(Deserialize, Debug, Default)]
struct UsageObject {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
struct ErrorObject {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    event_id: Option<String>,
}

/// What the connection must do after a server event (besides the events it emits).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// `session.updated`: audio may flow (first time only).
    Ready,
    /// The session is over (expired): wait for the close, briefly.
    Expiring,
}

/// What one server text frame did, besides the session events it pushed.
#[derive(Debug, PartialEq, Eq)]
pub struct TextOutcome {
    pub step: Step,
    /// It was `session.created`: the connection may now send its `session.update`.
    pub session_created: bool,
}

/// Protocol state that does not touch the socket: server events in, normalised events
/// out. Kept apart from the I/O so it can be tested directly, and public so the fuzz
/// targets can feed it raw server text exactly as the connection does.
#[derive(Debug)]
pub struct Turns {
    /// Our `session.update` went out: its `session.updated` makes us ready.
    setup_sent: bool,
    ready: bool,
    /// `response.created` seen, `response.done` not yet.
    current_response: Option<String>,
    /// The response that was in progress at `speech_started`: its late deltas are dropped.
    interrupted_response: Option<String>,
    late_deltas: u64,
    /// The assistant item of the last delta (reused so chunks share one `Arc`).
    item: Option<ItemId>,
    /// The caller's turn ended (speech_stopped / committed) and has not restarted.
    caller_done: bool,
    /// The caller finished a turn and no answer audio has started since (watchdog).
    awaiting_answer: bool,
    expired: bool,
    tools: ToolTurns,
    decode_buf: Vec<u8>,
}

/// Function calls in flight, and whether the model owes the caller an answer to
/// their results.
///
/// One `response.create` follows the results: only once none of the calls the model
/// made is still awaiting its result (a response may call several functions; one
/// answer covers them all) and no response is active (the server refuses a second one
/// with `conversation_already_has_active_response`).
#[derive(Debug, Default)]
struct ToolTurns {
    /// `call_id`s handed to the session whose results have not come back.
    open: Vec<String>,
    /// A result that wants an answer went out and no response has seen it yet.
    reply_owed: bool,
    /// Outputs sent that the server has not yet added to the conversation
    /// (`conversation.item.added`): a response created before that does not see them.
    unconfirmed: Vec<String>,
}

impl Default for Turns {
    fn default() -> Self {
        Turns::new()
    }
}

impl Turns {
    pub fn new() -> Self {
        Turns {
            setup_sent: false,
            ready: false,
            current_response: None,
            interrupted_response: None,
            late_deltas: 0,
            item: None,
            caller_done: false,
            awaiting_answer: false,
            expired: false,
            tools: ToolTurns::default(),
            decode_buf: Vec::with_capacity(8 * 1024),
        }
    }

    /// Our `session.update` went out: the next `session.updated` makes the session ready.
    pub fn mark_setup_sent(&mut self) {
        self.setup_sent = true;
    }

    /// Handles one server text frame: parses it and runs [`on_event`](Self::on_event).
    /// `None` when it is not an event we understand (logged and ignored, never fatal).
    pub fn on_text(&mut self, text: &str, out: &mut Vec<ProviderEvent>) -> Option<TextOutcome> {
        let ev: ServerEvent = match serde_json::from_str(text) {
            Ok(ev) => ev,
            Err(e) => {
                let kind = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_owned));
                debug!(event = kind.as_deref().unwrap_or("?"), error = %e, "OpenAI message not understood: ignored");
                return None;
            }
        };
        let session_created = ev.kind == "session.created";
        let step = self.on_event(ev, out);
        Some(TextOutcome {
            step,
            session_created,
        })
    }

    /// Handles one server event, pushing the session events it produces.
    fn on_event(&mut self, ev: ServerEvent, out: &mut Vec<ProviderEvent>) -> Step {
        match ev.kind.as_str() {
            "session.created" => debug!("session.created"),
            "session.updated" => {
                if !self.setup_sent {
                    debug!("session.updated before our session.update: ignored");
                } else if !self.ready {
                    self.ready = true;
                    return Step::Ready;
                } else {
                    debug!("session.updated (again)");
                }
            }
            "input_audio_buffer.speech_started" => {
                self.awaiting_answer = false;
                self.caller_done = false;
                if let Some(r) = &self.current_response {
                    // interrupt_response: the server cancels it; what it still sends is late.
                    self.interrupted_response = Some(r.clone());
                }
                out.push(ProviderEvent::SpeechStarted);
            }
            "input_audio_buffer.speech_stopped" | "input_audio_buffer.committed" => {
                if ev.kind == "input_audio_buffer.speech_stopped" {
                    out.push(ProviderEvent::SpeechStopped);
                }
                // End of the caller's turn (both events come; the first counts): the
                // watchdog waits for the answer's audio.
                if !self.caller_done {
                    self.caller_done = true;
                    self.awaiting_answer = true;
                }
            }
            "response.created" => {
                self.current_response = ev.response.and_then(|r| r.id);
                // A response started after our outputs joined the conversation answers
                // them (the server started one on the caller's speech, say): asking
                // for another would make the model answer twice.
                if self.tools.unconfirmed.is_empty() {
                    self.tools.reply_owed = false;
                }
            }
            "conversation.item.added" => {
                if let Some(ItemObject {
                    kind: Some(kind),
                    call_id: Some(call_id),
                }) = &ev.item
                {
                    if kind == "function_call_output" {
                        self.tools.unconfirmed.retain(|c| c != call_id);
                    }
                }
            }
            "response.function_call_arguments.done" => self.on_function_call(ev, out),
            // Argument tokens as they stream; `.done` carries them whole.
            "response.function_call_arguments.delta" => {}
            "response.output_audio.delta" => self.on_delta(ev, out),
            "response.output_audio_transcript.done" => {
                if let Some(text) = ev.transcript {
                    out.push(ProviderEvent::Transcript {
                        who: Speaker::Assistant,
                        text,
                        is_final: true,
                    });
                }
            }
            "conversation.item.input_audio_transcription.completed" => {
                if let Some(text) = ev.transcript {
                    out.push(ProviderEvent::Transcript {
                        who: Speaker::Caller,
                        text,
                        is_final: true,
                    });
                }
            }
            "response.done" => {
                let response = ev.response.unwrap_or_default();
                let id = response.id.clone();
                if id.is_some() && id == self.interrupted_response {
                    self.interrupted_response = None;
                    if self.late_deltas > 0 {
                        info!(
                            response = id.as_deref().unwrap_or(""),
                            late_deltas = self.late_deltas,
                            "dropped late audio of the interrupted response"
                        );
                    }
                    self.late_deltas = 0;
                }
                if id.is_none() || id == self.current_response {
                    self.current_response = None;
                }
                debug!(
                    status = response.status.as_deref().unwrap_or(""),
                    "response.done"
                );
                if let Some(u) = response.usage {
                    out.push(ProviderEvent::Usage(super::Usage {
                        input_tokens: u.input_tokens.unwrap_or(0),
                        output_tokens: u.output_tokens.unwrap_or(0),
                    }));
                }
                out.push(ProviderEvent::ResponseDone);
            }
            "error" => return self.on_error(ev.error.unwrap_or_default(), out),
            other => debug!(event = other, "OpenAI event ignored"),
        }
        Step::Continue
    }

    fn on_function_call(&mut self, ev: ServerEvent, out: &mut Vec<ProviderEvent>) {
        let (Some(id), Some(name)) = (ev.call_id, ev.name) else {
            warn!("response.function_call_arguments.done without call_id or name: ignored");
            return;
        };
        if ev.response_id.is_some() && ev.response_id == self.interrupted_response {
            // The caller spoke over the response that made this call, and the server
            // cancelled it: its arguments may be cut short, and running it anyway
            // could, for end_call, hang up on a caller who is talking.
            info!(tool = %name, call_id = %id, "function call of an interrupted response not run");
            return;
        }
        let raw = ev.arguments.unwrap_or_default();
        let arguments = if raw.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(&raw).unwrap_or(Value::String(raw))
        };
        // The model answered (with a call, not audio): the watchdog re-arms when the
        // result asks for the next answer.
        self.awaiting_answer = false;
        self.tools.open.push(id.clone());
        out.push(ProviderEvent::ToolCall(ToolCall {
            id,
            name,
            arguments,
        }));
    }

    /// The `conversation.item.create` carrying a function's result. Sent at once even
    /// during a response: the item joins the conversation, and the answer to it is
    /// asked for separately (see [`reply_due`](Self::reply_due)).
    pub fn tool_result(&mut self, r: &ToolResult) -> Value {
        let before = self.tools.open.len();
        self.tools.open.retain(|c| *c != r.id);
        if self.tools.open.len() == before {
            debug!(call_id = %r.id, tool = %r.name, "result for a call_id not awaited: sent anyway");
        }
        if r.reply {
            self.tools.reply_owed = true;
        }
        self.tools.unconfirmed.push(r.id.clone());
        json!({
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": r.id,
                "output": r.output.to_string()
            }
        })
    }

    /// Whether to send `response.create` now for the results sent (true at most once
    /// per batch of results; the watchdog then waits for the answer's audio).
    pub fn reply_due(&mut self) -> bool {
        let t = &self.tools;
        if !t.reply_owed || !t.open.is_empty() || self.current_response.is_some() {
            return false;
        }
        self.tools.reply_owed = false;
        self.awaiting_answer = true;
        true
    }

    fn on_delta(&mut self, ev: ServerEvent, out: &mut Vec<ProviderEvent>) {
        if ev.response_id.is_some() && ev.response_id == self.interrupted_response {
            self.late_deltas += 1;
            return;
        }
        let (Some(item_id), Some(delta)) = (ev.item_id, ev.delta) else {
            debug!("response.output_audio.delta without item_id or delta: ignored");
            return;
        };
        self.decode_buf.clear();
        if let Err(e) = base64::engine::general_purpose::STANDARD
            .decode_vec(delta.as_bytes(), &mut self.decode_buf)
        {
            warn!(error = %e, "OpenAI audio delta is not valid base64: dropped");
            return;
        }
        if self.decode_buf.is_empty() {
            return;
        }
        self.awaiting_answer = false;
        let item = match &self.item {
            Some(i) if **i == *item_id => i.clone(),
            _ => {
                let i: ItemId = Arc::from(item_id);
                self.item = Some(i.clone());
                i
            }
        };
        out.push(ProviderEvent::Audio {
            item,
            data: Bytes::copy_from_slice(&self.decode_buf),
        });
    }

    fn on_error(&mut self, e: ErrorObject, out: &mut Vec<ProviderEvent>) -> Step {
        let code = e.code.or(e.kind).unwrap_or_else(|| "unknown".to_owned());
        let message = e.message.unwrap_or_default();
        if code == "session_expired" {
            self.expired = true;
            out.push(ProviderEvent::Error {
                recoverable: true,
                code,
                message: format!("{EXPIRED_REASON}: {message}"),
            });
            return Step::Expiring;
        }
        let setup_rejected = !self.ready && e.event_id.as_deref() == Some(SETUP_EVENT_ID);
        out.push(ProviderEvent::Error {
            recoverable: !setup_rejected,
            code,
            message: if setup_rejected {
                format!("OpenAI rejected session.update: {message}")
            } else {
                message
            },
        });
        Step::Continue
    }
}

// ---- the connection -----------------------------------------------------------------

type Sink = SplitSink<ProviderWs, Message>;
type Stream = SplitStream<ProviderWs>;

/// Why the connection loop stopped.
enum Exit {
    /// The session is gone or asked us to close: close politely.
    CloseRequested,
    /// Tell the session (the event is sent) and stop.
    Ended(ProviderEvent),
}

struct Connection {
    cfg: OpenAiConfig,
    route: Route,
    response_timeout: Duration,
    ends: ProviderChannels,
    sink: Sink,
    context: Option<Arc<CallContext>>,
    created: bool,
    setup: Option<Setup>,
    turns: Turns,
    opened: Instant,
    setup_deadline: Instant,
    watchdog: Option<Instant>,
    expiry_deadline: Option<Instant>,
    events: Vec<ProviderEvent>,
}

/// Runs the OpenAI provider for one call until the session closes it or the socket ends.
pub async fn run(cfg: OpenAiConfig, route: Route, mut ends: ProviderChannels) {
    let url = endpoint(&cfg);
    let shown = crate::redact::url(&url);
    let key = cfg.api_key.expose().to_owned();
    let headers = [("authorization", format!("Bearer {key}"))];
    let mut context: Option<Arc<CallContext>> = None;

    let started = Instant::now();
    let secrets = [key.as_str()];
    let connect = ws::connect(&url, &headers, &secrets);
    tokio::pin!(connect);
    let socket = loop {
        tokio::select! {
            result = &mut connect => match result {
                Ok(s) => break s,
                Err(e) => {
                    let code = e.status().map_or_else(|| "connect".to_owned(), |s| format!("http_{s}"));
                    warn!(url = %shown, code = %code, error = %e, "OpenAI connection failed");
                    let _ = ends.events.send(ProviderEvent::Error {
                        recoverable: false,
                        code,
                        message: e.to_string(),
                    }).await;
                    return;
                }
            },
            cmd = ends.commands.recv() => match cmd {
                None | Some(ProviderCommand::Close) => return,
                Some(ProviderCommand::Context(c)) => context = Some(c),
                // The session holds audio until Ready; nothing else applies yet.
                Some(_) => {}
            },
        }
    };
    info!(
        url = %shown,
        model = %cfg.model,
        connect_ms = started.elapsed().as_millis() as u64,
        "OpenAI connected"
    );
    let (sink, stream) = socket.split();
    let opened = Instant::now();
    let mut conn = Connection {
        response_timeout: route.call.response_timeout,
        cfg,
        route,
        ends,
        sink,
        context,
        created: false,
        setup: None,
        turns: Turns::new(),
        opened,
        setup_deadline: opened + SETUP_TIMEOUT,
        watchdog: None,
        expiry_deadline: None,
        events: Vec::with_capacity(4),
    };
    conn.serve(stream).await;
}

impl Connection {
    async fn serve(&mut self, mut stream: Stream) {
        let exit = self.serve_loop(&mut stream).await;
        match exit {
            Exit::CloseRequested => self.close(&mut stream).await,
            Exit::Ended(event) => {
                if matches!(event, ProviderEvent::Error { .. }) {
                    self.close(&mut stream).await;
                } else {
                    // A server Close: tungstenite queued the echo; let it out.
                    let _ = tokio::time::timeout(CLOSE_WAIT, self.sink.flush()).await;
                }
                let _ = self.ends.events.send(event).await;
            }
        }
    }

    async fn serve_loop(&mut self, stream: &mut Stream) -> Exit {
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.next_deadline();
            let timer = sleep_until(deadline.unwrap_or_else(|| Instant::now() + PING_EVERY));
            tokio::select! {
                cmd = self.ends.commands.recv() => {
                    let Some(cmd) = cmd else { return Exit::CloseRequested };
                    if let Err(exit) = self.on_command(cmd).await {
                        return exit;
                    }
                }
                msg = stream.next() => {
                    if let Err(exit) = self.on_message(msg).await {
                        return exit;
                    }
                }
                _ = ping.tick() => {
                    if let Err(exit) = self.send(Message::Ping(Bytes::new())).await {
                        return exit;
                    }
                }
                _ = timer, if deadline.is_some() => {
                    if let Err(exit) = self.on_timer().await {
                        return exit;
                    }
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let setup = (!self.turns.ready).then_some(self.setup_deadline);
        [setup, self.watchdog, self.expiry_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    async fn on_timer(&mut self) -> Result<(), Exit> {
        let now = Instant::now();
        if self.expiry_deadline.is_some_and(|d| now >= d) {
            return Err(Exit::Ended(ProviderEvent::Closed {
                reason: format!("{EXPIRED_REASON} (no close from the server)"),
            }));
        }
        if !self.turns.ready && now >= self.setup_deadline {
            let waiting = if !self.created {
                "session.created"
            } else if self.setup.is_none() {
                "the call context"
            } else {
                "session.updated"
            };
            return Err(Exit::Ended(ProviderEvent::Error {
                recoverable: false,
                code: "setup_timeout".to_owned(),
                message: format!(
                    "OpenAI session not ready after {} s (waiting for {waiting})",
                    SETUP_TIMEOUT.as_secs()
                ),
            }));
        }
        if self.watchdog.is_some_and(|d| now >= d) {
            self.watchdog = None;
            self.turns.awaiting_answer = false;
            self.emit(ProviderEvent::Warning(format!(
                "provider silent: no response {} s after the caller finished",
                self.response_timeout.as_secs_f64()
            )))
            .await?;
        }
        Ok(())
    }

    async fn on_command(&mut self, cmd: ProviderCommand) -> Result<(), Exit> {
        match cmd {
            ProviderCommand::Audio(frame) => {
                if !self.turns.ready {
                    return Ok(());
                }
                self.send(Message::text(append_event(&frame))).await
            }
            ProviderCommand::Truncate { item, played_ms } => {
                info!(item = %item, audio_end_ms = played_ms, "OpenAI: truncating the interrupted item");
                let ev = json!({
                    "type": "conversation.item.truncate",
                    "item_id": &*item,
                    "content_index": 0,
                    "audio_end_ms": played_ms
                });
                self.send_json(&ev).await
            }
            ProviderCommand::Cancel => {
                // With server VAD and interrupt_response=true the server cancels the
                // response itself on speech_started, so the session never needs this
                // for barge-in. It is for the cases where the server would not: local
                // barge-in detection, manual turns, or interrupt_response=false.
                if self.turns.current_response.is_some() {
                    self.send_json(&json!({"type": "response.cancel"})).await
                } else {
                    Ok(())
                }
            }
            ProviderCommand::Say(text) => {
                if !self.turns.ready {
                    return Ok(());
                }
                // One response at a time: whatever is being said gives way to this.
                if self.turns.current_response.is_some() {
                    self.send_json(&json!({"type": "response.cancel"})).await?;
                }
                self.send_json(&json!({
                    "type": "response.create",
                    "response": {"instructions": format!("Say exactly this to the caller, then stop: {text}")}
                }))
                .await
            }
            ProviderCommand::Context(ctx) => {
                if self.context.is_none() {
                    self.context = Some(ctx);
                    self.maybe_setup().await?;
                }
                Ok(())
            }
            ProviderCommand::ToolResult(r) => {
                let item = self.turns.tool_result(&r);
                self.send_json(&item).await?;
                self.maybe_reply().await
            }
            ProviderCommand::Close => Err(Exit::CloseRequested),
        }
    }

    /// Asks the model to answer the tool results, when they are all in and it is idle.
    async fn maybe_reply(&mut self) -> Result<(), Exit> {
        if !self.turns.reply_due() {
            return Ok(());
        }
        debug!("OpenAI: response.create after the tool results");
        self.send_json(&json!({"type": "response.create"})).await?;
        self.update_watchdog();
        Ok(())
    }

    /// Sends `session.update` once the socket is set up and the context is known.
    async fn maybe_setup(&mut self) -> Result<(), Exit> {
        if self.setup.is_some() || !self.created {
            return Ok(());
        }
        let Some(ctx) = self.context.clone() else {
            return Ok(());
        };
        let setup = Setup::new(&self.cfg, &self.route, &ctx);
        info!(
            model = %setup.model,
            voice = %setup.voice,
            format = ?setup.format.kind,
            language = setup.language.as_deref().unwrap_or(""),
            greeting = !setup.greeting.is_empty(),
            "OpenAI: sending session.update"
        );
        let update = setup.session_update();
        self.setup = Some(setup);
        self.turns.mark_setup_sent();
        self.send_json(&update).await
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), Exit> {
        let msg = match msg {
            None => {
                return Err(Exit::Ended(ProviderEvent::Closed {
                    reason: self.close_reason("OpenAI connection dropped without a Close"),
                }))
            }
            Some(Err(e)) => {
                return Err(Exit::Ended(ProviderEvent::Closed {
                    reason: self.close_reason(&format!("OpenAI socket error: {e}")),
                }))
            }
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Close(frame) => {
                let (code, why) = super::ws::close_parts(frame);
                let at_limit = code == 1001 && self.opened.elapsed() >= SESSION_LIMIT;
                if at_limit {
                    self.turns.expired = true;
                }
                let detail = format!("close code {code}: {why}");
                let reason = if self.turns.expired {
                    format!("{EXPIRED_REASON} ({detail})")
                } else {
                    format!("OpenAI closed the connection ({detail})")
                };
                Err(Exit::Ended(ProviderEvent::Closed { reason }))
            }
            Message::Binary(b) => {
                debug!(bytes = b.len(), "binary message from OpenAI ignored");
                Ok(())
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    fn close_reason(&self, what: &str) -> String {
        if self.turns.expired {
            format!("{EXPIRED_REASON} ({what})")
        } else {
            what.to_owned()
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Exit> {
        let Some(TextOutcome {
            step,
            session_created: is_created,
        }) = self.turns.on_text(text, &mut self.events)
        else {
            return Ok(());
        };
        let mut events = std::mem::take(&mut self.events);
        let mut result = Ok(());
        for event in events.drain(..) {
            if let ProviderEvent::Error {
                recoverable: false, ..
            } = event
            {
                result = Err(Exit::Ended(event));
                break;
            }
            if result.is_ok() {
                result = self.emit(event).await;
            }
        }
        self.events = events;
        result?;
        self.update_watchdog();
        // After a `response.done`, results that came in during the response are due.
        self.maybe_reply().await?;
        if is_created {
            self.created = true;
            self.maybe_setup().await?;
        }
        match step {
            Step::Continue => Ok(()),
            Step::Expiring => {
                self.expiry_deadline = Some(Instant::now() + EXPIRY_CLOSE_WAIT);
                Ok(())
            }
            Step::Ready => {
                let Some(setup) = &self.setup else {
                    return Ok(());
                };
                let format = setup.format.audio();
                let greeting = setup.greeting_event();
                info!(
                    setup_ms = self.opened.elapsed().as_millis() as u64,
                    "OpenAI session ready"
                );
                self.emit(ProviderEvent::Ready {
                    input: format,
                    output: format,
                })
                .await?;
                if let Some(greeting) = greeting {
                    self.send_json(&greeting).await?;
                }
                Ok(())
            }
        }
    }

    fn update_watchdog(&mut self) {
        if self.response_timeout.is_zero() {
            return;
        }
        match (self.turns.awaiting_answer, self.watchdog) {
            (true, None) => self.watchdog = Some(Instant::now() + self.response_timeout),
            (false, Some(_)) => self.watchdog = None,
            _ => {}
        }
    }

    async fn emit(&mut self, event: ProviderEvent) -> Result<(), Exit> {
        self.ends
            .events
            .send(event)
            .await
            .map_err(|_| Exit::CloseRequested)
    }

    async fn send_json(&mut self, value: &Value) -> Result<(), Exit> {
        self.send(Message::text(value.to_string())).await
    }

    async fn send(&mut self, msg: Message) -> Result<(), Exit> {
        match tokio::time::timeout(WRITE_STALL, self.sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Exit::Ended(ProviderEvent::Closed {
                reason: self.close_reason(&format!("OpenAI socket error on send: {e}")),
            })),
            Err(_) => Err(Exit::Ended(ProviderEvent::Closed {
                reason: format!(
                    "OpenAI socket accepted nothing for {} s",
                    WRITE_STALL.as_secs()
                ),
            })),
        }
    }

    /// Our Close, then the server's echo (briefly): the session aborts us after 1 s.
    async fn close(&mut self, stream: &mut Stream) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "call ended".into(),
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            if self.sink.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(m)) = stream.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            }
        })
        .await;
    }
}

// ---- `voicebridge check` --------------------------------------------------------------

/// Opens a real session (connect, `session.update`, `session.updated`) and closes it.
pub async fn check(config: &Config, route: &Route) -> Result<String, String> {
    let cfg = &config.providers.openai;
    let url = endpoint(cfg);
    let shown = crate::redact::url(&url);
    let key = cfg.api_key.expose();
    if key.is_empty() {
        return Err("no API key: set OPENAI_API_KEY".to_owned());
    }
    let headers = [("authorization", format!("Bearer {key}"))];
    let started = Instant::now();
    let socket = ws::connect(&url, &headers, &[key])
        .await
        .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = socket.split();
    let ctx = CallContext {
        call_id: "check".to_owned(),
        route: route.name.clone(),
        vars: Default::default(),
    };
    let setup = Setup::new(cfg, route, &ctx);
    let result = tokio::time::timeout(SETUP_TIMEOUT, async {
        let mut sent = false;
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|e| format!("{shown}: {e}"))?;
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(f) => {
                    let f = f.map(|f| format!("close code {}: {}", u16::from(f.code), f.reason));
                    return Err(format!(
                        "{shown} closed the session: {}",
                        f.unwrap_or_default()
                    ));
                }
                _ => continue,
            };
            let ev: ServerEvent = match serde_json::from_str(text.as_str()) {
                Ok(ev) => ev,
                Err(_) => continue,
            };
            match ev.kind.as_str() {
                "session.created" if !sent => {
                    sent = true;
                    sink.send(Message::text(setup.session_update().to_string()))
                        .await
                        .map_err(|e| format!("{shown}: {e}"))?;
                }
                "session.updated" => return Ok(()),
                "error" => {
                    let e = ev.error.unwrap_or_default();
                    return Err(format!(
                        "OpenAI error {}: {}",
                        e.code.or(e.kind).unwrap_or_default(),
                        e.message.unwrap_or_default()
                    ));
                }
                _ => {}
            }
        }
        Err(format!("{shown} closed the connection during setup"))
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "{shown}: no session.updated within {} s",
            SETUP_TIMEOUT.as_secs()
        ))
    });
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(None))).await;
    result?;
    Ok(format!(
        "OK: {shown} model {} voice {} audio {} (session.updated in {} ms)",
        setup.model,
        setup.voice,
        setup.format.audio(),
        started.elapsed().as_millis()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ev(v: Value) -> ServerEvent {
        serde_json::from_value(v).unwrap()
    }

    fn setup_for(toml: &str) -> Setup {
        let config = Config::from_toml_str(toml, Vec::<(String, String)>::new()).unwrap();
        let ctx = CallContext {
            call_id: "c1".into(),
            route: "call".into(),
            vars: [("caller_id".to_owned(), "+39 02".to_owned())].into(),
        };
        Setup::new(&config.providers.openai, config.default_route(), &ctx)
    }

    #[test]
    fn endpoint_appends_the_model() {
        let config = Config::from_toml_str("", Vec::<(String, String)>::new()).unwrap();
        assert_eq!(
            endpoint(&config.providers.openai),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
    }

    #[test]
    fn language_is_reduced_to_iso_639_1() {
        assert_eq!(iso639_1("it-IT").as_deref(), Some("it"));
        assert_eq!(iso639_1("EN").as_deref(), Some("en"));
        assert_eq!(iso639_1("pt_BR").as_deref(), Some("pt"));
        assert_eq!(iso639_1(""), None);
        assert_eq!(iso639_1("yue-HK"), None);
    }

    #[test]
    fn session_update_has_the_ga_shape() {
        let s = setup_for(
            r#"
[call]
instructions = "Help {{caller_id}}."
greeting = "Hello {{caller_id}}"
language = "it-IT"
voice = "cedar"
[providers.openai]
audio_format = "pcm24"
"#,
        );
        let v = s.session_update();
        assert_eq!(v["type"], "session.update");
        let session = &v["session"];
        assert_eq!(session["type"], "realtime");
        assert_eq!(session["model"], "gpt-realtime");
        assert_eq!(session["output_modalities"], json!(["audio"]));
        assert_eq!(session["instructions"], "Help +39 02.");
        assert!(session.get("temperature").is_none());
        let input = &session["audio"]["input"];
        assert_eq!(input["format"], json!({"type": "audio/pcm", "rate": 24000}));
        assert_eq!(
            input["transcription"],
            json!({"model": "gpt-4o-mini-transcribe", "language": "it"})
        );
        assert_eq!(input["turn_detection"]["type"], "server_vad");
        assert_eq!(input["turn_detection"]["interrupt_response"], true);
        assert_eq!(session["audio"]["output"]["voice"], "cedar");
        assert_eq!(
            s.greeting_event().unwrap()["response"]["instructions"],
            "Greet the caller by saying exactly: Hello +39 02"
        );
        assert_eq!(s.format.audio(), AudioFormat::l16(24000));
    }

    #[test]
    fn no_greeting_and_no_language_when_unset() {
        let s = setup_for("");
        assert!(s.greeting_event().is_none());
        let v = s.session_update();
        assert!(v["session"]["audio"]["input"]["transcription"]
            .get("language")
            .is_none());
        assert_eq!(
            v["session"]["audio"]["output"]["format"],
            json!({"type": "audio/pcmu"})
        );
        assert_eq!(v["session"]["audio"]["output"]["voice"], "marin");
    }

    #[test]
    fn late_deltas_of_an_interrupted_response_are_dropped() {
        let mut t = Turns::new();
        let mut out = Vec::new();
        assert_eq!(
            t.on_event(ev(json!({"type":"session.updated"})), &mut out),
            Step::Continue,
            "not ours: no session.update was sent yet"
        );
        t.setup_sent = true;
        assert_eq!(
            t.on_event(ev(json!({"type":"session.updated"})), &mut out),
            Step::Ready
        );
        t.on_event(
            ev(json!({"type":"response.created","response":{"id":"r1","status":"in_progress"}})),
            &mut out,
        );
        let delta = |r: &str, i: &str| {
            ev(
                json!({"type":"response.output_audio.delta","response_id":r,"item_id":i,
                       "output_index":0,"content_index":0,"delta":"//8="}),
            )
        };
        t.on_event(delta("r1", "i1"), &mut out);
        t.on_event(ev(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":10,"item_id":"u2"})), &mut out);
        t.on_event(delta("r1", "i1"), &mut out);
        t.on_event(
            ev(
                json!({"type":"response.done","response":{"id":"r1","status":"cancelled",
                       "usage":{"input_tokens":7,"output_tokens":3}}}),
            ),
            &mut out,
        );
        t.on_event(
            ev(json!({"type":"response.created","response":{"id":"r2"}})),
            &mut out,
        );
        t.on_event(delta("r2", "i2"), &mut out);
        let kinds: Vec<String> = out
            .iter()
            .map(|e| match e {
                ProviderEvent::Audio { item, data } => format!("audio {item} {}", data.len()),
                ProviderEvent::Usage(u) => format!("usage {} {}", u.input_tokens, u.output_tokens),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "audio i1 2",
                "SpeechStarted",
                "usage 7 3",
                "ResponseDone",
                "audio i2 2"
            ]
        );
    }

    #[test]
    fn errors_are_classified() {
        let mut t = Turns::new();
        let mut out = Vec::new();
        t.on_event(
            ev(json!({"type":"error","error":{"type":"invalid_request_error","code":"invalid_value",
                       "message":"bad voice","param":"session.audio.output.voice","event_id":SETUP_EVENT_ID}})),
            &mut out,
        );
        assert!(
            matches!(&out[0], ProviderEvent::Error { recoverable: false, code, .. } if code == "invalid_value")
        );
        t.ready = true;
        out.clear();
        t.on_event(
            ev(json!({"type":"error","error":{"type":"invalid_request_error","code":"item_truncate_invalid",
                       "message":"x","param":null,"event_id":null}})),
            &mut out,
        );
        assert!(matches!(
            &out[0],
            ProviderEvent::Error {
                recoverable: true,
                ..
            }
        ));
        out.clear();
        let step = t.on_event(
            ev(json!({"type":"error","error":{"type":"invalid_request_error","code":"session_expired",
                       "message":"Your session hit the maximum duration of 60 minutes."}})),
            &mut out,
        );
        assert_eq!(step, Step::Expiring);
        assert!(t.expired);
    }

    #[test]
    fn raw_text_goes_through_the_same_handling() {
        let mut t = Turns::new();
        let mut out = Vec::new();
        assert_eq!(t.on_text("not json", &mut out), None);
        assert_eq!(t.on_text(r#"{"no_type":1}"#, &mut out), None);
        assert_eq!(
            t.on_text(r#"{"type":"session.created","session":{}}"#, &mut out),
            Some(TextOutcome {
                step: Step::Continue,
                session_created: true
            })
        );
        let updated = r#"{"type":"session.updated","session":{}}"#;
        assert_eq!(
            t.on_text(updated, &mut out).map(|o| o.step),
            Some(Step::Continue)
        );
        t.mark_setup_sent();
        assert_eq!(
            t.on_text(updated, &mut out).map(|o| o.step),
            Some(Step::Ready)
        );
        assert!(out.is_empty());
        t.on_text(
            r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"AAEC"}"#,
            &mut out,
        );
        assert!(matches!(&out[..], [ProviderEvent::Audio { data, .. }] if data[..] == [0, 1, 2]));
    }

    #[test]
    fn tools_are_declared_as_functions_with_auto_choice() {
        let s = setup_for(
            r#"
[call]
end_call = true
[[call.tools]]
name = "lookup_order"
description = "Find an order."
parameters = '{"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}'
url = "http://127.0.0.1:9/orders"
"#,
        );
        let v = s.session_update();
        let tools = v["session"]["tools"].as_array().unwrap();
        assert_eq!(
            tools[0],
            json!({"type": "function", "name": "lookup_order", "description": "Find an order.",
                   "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                                  "required": ["order_id"]}})
        );
        assert_eq!(tools[1]["type"], "function");
        assert_eq!(tools[1]["name"], "end_call");
        assert_eq!(tools[1]["parameters"]["type"], "object");
        assert_eq!(tools.len(), 2);
        assert_eq!(v["session"]["tool_choice"], "auto");

        let none = setup_for("").session_update();
        assert!(none["session"].get("tools").is_none());
        assert!(none["session"].get("tool_choice").is_none());
    }

    fn ready_turns() -> Turns {
        let mut t = Turns::new();
        t.setup_sent = true;
        t.ready = true;
        t
    }

    fn function_call_response(t: &mut Turns, out: &mut Vec<ProviderEvent>, calls: &[(&str, &str)]) {
        t.on_event(
            ev(json!({"type":"response.created","response":{"id":"r1","status":"in_progress"}})),
            out,
        );
        for (i, (call_id, args)) in calls.iter().enumerate() {
            let item = json!({"id": format!("fc{i}"), "type": "function_call", "status": "in_progress",
                              "call_id": call_id, "name": "lookup_order", "arguments": ""});
            t.on_event(
                ev(json!({"type":"response.output_item.added","response_id":"r1","output_index":i,"item":item})),
                out,
            );
            t.on_event(
                ev(json!({"type":"response.function_call_arguments.delta","response_id":"r1",
                          "item_id":format!("fc{i}"),"output_index":i,"call_id":call_id,"delta":"{\""})),
                out,
            );
            t.on_event(
                ev(json!({"type":"response.function_call_arguments.done","event_id":"e1","response_id":"r1",
                          "item_id":format!("fc{i}"),"output_index":i,"call_id":call_id,
                          "name":"lookup_order","arguments":args})),
                out,
            );
        }
    }

    fn result(id: &str, reply: bool) -> ToolResult {
        ToolResult {
            id: id.into(),
            name: "lookup_order".into(),
            output: json!({"status": "shipped", "eta": "tomorrow"}),
            is_error: false,
            reply,
        }
    }

    #[test]
    fn function_calls_become_tool_calls_and_not_audio() {
        let mut t = ready_turns();
        let mut out = Vec::new();
        t.on_event(
            ev(json!({"type":"input_audio_buffer.speech_stopped","audio_end_ms":900,"item_id":"u1"})),
            &mut out,
        );
        assert!(matches!(&out[..], [ProviderEvent::SpeechStopped]));
        assert!(t.awaiting_answer);
        out.clear();
        function_call_response(
            &mut t,
            &mut out,
            &[("call_a", r#"{"order_id":"A42"}"#), ("call_b", "{not json")],
        );
        assert_eq!(
            out.iter()
                .map(|e| match e {
                    ProviderEvent::ToolCall(c) => c.clone(),
                    other => panic!("only tool calls expected, got {other:?}"),
                })
                .collect::<Vec<_>>(),
            [
                ToolCall {
                    id: "call_a".into(),
                    name: "lookup_order".into(),
                    arguments: json!({"order_id": "A42"})
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "lookup_order".into(),
                    arguments: json!("{not json")
                },
            ]
        );
        assert!(!t.awaiting_answer, "a call is an answer: no watchdog");
        assert_eq!(t.current_response.as_deref(), Some("r1"));
        out.clear();
        t.on_event(
            ev(
                json!({"type":"response.done","response":{"id":"r1","status":"completed",
                      "output":[{"type":"function_call","call_id":"call_a"}],
                      "usage":{"input_tokens":5,"output_tokens":2}}}),
            ),
            &mut out,
        );
        assert!(matches!(
            &out[..],
            [ProviderEvent::Usage(_), ProviderEvent::ResponseDone]
        ));
        assert!(t.current_response.is_none());
        assert!(t.item.is_none(), "no audio item came of it");
    }

    #[test]
    fn one_response_create_after_the_last_result_and_the_response_done() {
        let mut t = ready_turns();
        let mut out = Vec::new();
        function_call_response(
            &mut t,
            &mut out,
            &[("call_a", "{}"), ("call_b", r#"{"x":1}"#)],
        );
        let item = t.tool_result(&result("call_a", true));
        assert_eq!(
            item,
            json!({"type": "conversation.item.create", "item": {"type": "function_call_output",
                   "call_id": "call_a", "output": r#"{"eta":"tomorrow","status":"shipped"}"#}})
        );
        let output: Value = serde_json::from_str(item["item"]["output"].as_str().unwrap()).unwrap();
        assert_eq!(output, json!({"status": "shipped", "eta": "tomorrow"}));
        assert!(!t.reply_due(), "response active and call_b open");
        t.on_event(
            ev(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})),
            &mut out,
        );
        assert!(!t.reply_due(), "call_b still open");
        t.tool_result(&result("call_b", true));
        assert!(t.reply_due());
        assert!(t.awaiting_answer, "the watchdog waits for the answer");
        assert!(!t.reply_due(), "one response.create per batch");
    }

    #[test]
    fn results_without_reply_never_ask_for_one() {
        let mut t = ready_turns();
        let mut out = Vec::new();
        function_call_response(&mut t, &mut out, &[("call_end", "{}")]);
        t.on_event(
            ev(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})),
            &mut out,
        );
        t.tool_result(&result("call_end", false));
        assert!(!t.reply_due());
        // A result nobody asked for still goes out, and does not block later replies.
        let item = t.tool_result(&result("call_unknown", true));
        assert_eq!(item["item"]["call_id"], "call_unknown");
        assert!(t.reply_due());
    }

    #[test]
    fn a_response_started_after_the_output_joined_answers_it() {
        let mut t = ready_turns();
        let mut out = Vec::new();
        function_call_response(&mut t, &mut out, &[("call_a", "{}")]);
        t.on_event(
            ev(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})),
            &mut out,
        );
        // The caller talks while the webhook runs: the result arrives during the
        // server's own response, which started before the output was added.
        t.on_event(
            ev(json!({"type":"response.created","response":{"id":"r2"}})),
            &mut out,
        );
        t.tool_result(&result("call_a", true));
        t.on_event(
            ev(json!({"type":"conversation.item.added","previous_item_id":null,
                      "item":{"id":"o1","type":"function_call_output","call_id":"call_a","output":"{}"}})),
            &mut out,
        );
        assert!(!t.reply_due(), "r2 is active");
        t.on_event(
            ev(json!({"type":"response.done","response":{"id":"r2","status":"completed"}})),
            &mut out,
        );
        assert!(t.reply_due(), "r2 did not see the result");

        // Now a server response created after the output was added does see it.
        function_call_response(&mut t, &mut out, &[("call_c", "{}")]);
        t.on_event(
            ev(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})),
            &mut out,
        );
        t.tool_result(&result("call_c", true));
        t.on_event(
            ev(json!({"type":"conversation.item.added","previous_item_id":null,
                      "item":{"id":"o2","type":"function_call_output","call_id":"call_c","output":"{}"}})),
            &mut out,
        );
        t.on_event(
            ev(json!({"type":"response.created","response":{"id":"r3"}})),
            &mut out,
        );
        t.on_event(
            ev(json!({"type":"response.done","response":{"id":"r3","status":"completed"}})),
            &mut out,
        );
        assert!(!t.reply_due(), "r3 answered the result already");
    }

    #[test]
    fn calls_of_an_interrupted_response_are_not_run() {
        let mut t = ready_turns();
        let mut out = Vec::new();
        t.on_event(
            ev(json!({"type":"response.created","response":{"id":"r1"}})),
            &mut out,
        );
        t.on_event(
            ev(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":10,"item_id":"u2"})),
            &mut out,
        );
        t.on_event(
            ev(json!({"type":"response.function_call_arguments.done","response_id":"r1","item_id":"fc",
                      "output_index":0,"call_id":"call_x","name":"end_call","arguments":"{\"rea"})),
            &mut out,
        );
        assert!(matches!(&out[..], [ProviderEvent::SpeechStarted]));
        assert!(t.tools.open.is_empty());
    }

    #[test]
    fn unknown_events_are_ignored() {
        let mut t = Turns::new();
        let mut out = Vec::new();
        t.on_event(
            ev(json!({"type":"rate_limits.updated","rate_limits":[]})),
            &mut out,
        );
        t.on_event(ev(json!({"type":"something.new","x":1})), &mut out);
        assert!(out.is_empty());
    }
}
