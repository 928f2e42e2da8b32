//! A faithful mock of the OpenAI Realtime API (GA) WebSocket, for end-to-end tests.
//!
//! It speaks the wire protocol of `docs/protocols/openai-realtime.md`: `session.created`
//! on connect, `session.updated` after a valid `session.update`, and for every response
//! the doc's whole "typical turn" event sequence with `event_id`s (including the events
//! voicebridge ignores), audio deltas in bursts faster than real time, `response.done`
//! with usage, `rate_limits.updated`, and the caller's transcript asynchronously.
//!
//! It VALIDATES every client message (shape, fields, base64 audio of the configured
//! format and frame size, truncate bounds) and records what went wrong in
//! `MockState::problems`, so a test fails on any deviation. It is scripted from the
//! test through [`Script`] commands; [`MockOpenAi::wait`] awaits a condition on the
//! recorded state (an event, never a sleep).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use voicebridge::audio::g711;
use voicebridge::audio::signal::speech_like;

use super::daemon::HANG_GUARD;

/// The audio format the mock expects and produces (must match the daemon's
/// `providers.openai.audio_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MockFormat {
    Pcmu,
    Pcma,
    Pcm24,
}

impl MockFormat {
    pub fn rate(self) -> u32 {
        match self {
            MockFormat::Pcmu | MockFormat::Pcma => 8000,
            MockFormat::Pcm24 => 24000,
        }
    }

    fn bytes_per_ms(self) -> usize {
        match self {
            MockFormat::Pcmu | MockFormat::Pcma => 8,
            MockFormat::Pcm24 => 48,
        }
    }

    /// The `format` object the client must send.
    pub fn json(self) -> Value {
        match self {
            MockFormat::Pcmu => json!({"type": "audio/pcmu"}),
            MockFormat::Pcma => json!({"type": "audio/pcma"}),
            MockFormat::Pcm24 => json!({"type": "audio/pcm", "rate": 24000}),
        }
    }

    pub fn encode(self, samples: &[i16]) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            MockFormat::Pcmu => g711::ulaw_encode(samples, &mut out),
            MockFormat::Pcma => g711::alaw_encode(samples, &mut out),
            MockFormat::Pcm24 => out = samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }
        out
    }

    pub fn decode(self, bytes: &[u8]) -> Vec<i16> {
        let mut out = Vec::new();
        match self {
            MockFormat::Pcmu => g711::ulaw_decode(bytes, &mut out),
            MockFormat::Pcma => g711::alaw_decode(bytes, &mut out),
            MockFormat::Pcm24 => {
                out = bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect()
            }
        }
        out
    }
}

pub struct MockOptions {
    pub format: MockFormat,
    /// The key the client must present (`Authorization: Bearer <key>`).
    pub api_key: String,
    /// Refuse the upgrade with this status and body.
    pub refuse: Option<(u16, String)>,
    /// Audio (ms) answered to a client `response.create` (the greeting).
    pub greeting_ms: u64,
    /// Audio (ms) answered to a `response.create` that follows function outputs.
    pub tool_reply_ms: u64,
    /// In a response with several calls, each call after the first waits for the
    /// client's output of the previous one, so that output deterministically arrives
    /// while the response is still active (a slow model; any timing is legal).
    pub calls_wait_for_outputs: bool,
    /// Serve over TLS with this config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Each delta carries this much audio...
    pub burst_ms: u64,
    /// ...and one goes out this often (100 ms every 25 ms: 4x real time).
    pub burst_every: Duration,
    /// Answer the client's Close (false: a provider that never does; the connection
    /// is then left alone, neither read nor written, until the client drops it).
    pub answer_close: bool,
    /// 20 ms frames per caller append the daemon must send (its `uplink_chunk_ms` / 20).
    pub frames_per_append: usize,
}

impl MockOptions {
    pub fn new(format: MockFormat, api_key: &str) -> Self {
        MockOptions {
            format,
            api_key: api_key.to_owned(),
            refuse: None,
            greeting_ms: 1000,
            tool_reply_ms: 800,
            calls_wait_for_outputs: false,
            tls: None,
            burst_ms: 100,
            burst_every: Duration::from_millis(25),
            answer_close: true,
            frames_per_append: 1,
        }
    }
}

/// What the test tells the mock to do (on the current connection).
#[derive(Debug, Clone)]
pub enum Script {
    /// A response of `ms` of speech (as after a client `response.create`).
    Respond { ms: u64, seed: u64 },
    /// The doc's full typical turn: caller VAD events, the caller's item, a response of
    /// `ms`, then the caller's transcript.
    CallerTurn { ms: u64, seed: u64 },
    /// The caller talks and stops, and no response follows (for the watchdog).
    SilentTurn,
    /// `speech_started` while a response streams: the server cancels it (a couple of
    /// late deltas first, as happens on the wire).
    BargeIn,
    /// The model calls functions, as the server does: a response whose output is
    /// `function_call` items (after `speech_ms` of audio when non-zero: "let me check"),
    /// each streamed as `response.output_item.added`, argument deltas,
    /// `response.function_call_arguments.done` and `response.output_item.done`, then
    /// `response.done`. With `caller_turn`, the caller's VAD turn comes first (as when
    /// the caller asked for it). The mock then expects a `function_call_output` per call
    /// and answers a following `response.create` with `tool_reply_ms` of audio.
    FunctionCall {
        caller_turn: bool,
        speech_ms: u64,
        seed: u64,
        calls: Vec<MockCall>,
    },
    /// An `error` event.
    Error { code: String, message: String },
    /// A server-initiated Close.
    Close { code: u16, reason: String },
    /// This exact text message (a misbehaving server: oversized or malformed).
    Raw(String),
}

/// A function the mock model calls; `arguments` is the JSON text the model produces
/// (it need not be valid JSON, as with a real model).
#[derive(Debug, Clone)]
pub struct MockCall {
    pub name: String,
    pub arguments: String,
}

impl MockCall {
    pub fn new(name: &str, arguments: Value) -> MockCall {
        MockCall {
            name: name.to_owned(),
            arguments: arguments.to_string(),
        }
    }
}

impl Script {
    /// The caller asks, and the model calls `name` with `arguments` (no audio first).
    pub fn function_call(name: &str, arguments: Value) -> Script {
        Script::FunctionCall {
            caller_turn: true,
            speech_ms: 0,
            seed: 0,
            calls: vec![MockCall::new(name, arguments)],
        }
    }

    /// The model says `speech_ms` of audio, then calls `name` in the same response
    /// (a goodbye then `end_call`, "let me check" then a lookup).
    pub fn say_then_call(speech_ms: u64, seed: u64, name: &str, arguments: Value) -> Script {
        Script::FunctionCall {
            caller_turn: false,
            speech_ms,
            seed,
            calls: vec![MockCall::new(name, arguments)],
        }
    }
}

/// A function call the mock model made.
#[derive(Debug, Clone)]
pub struct IssuedCall {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
    pub response_id: String,
    pub item_id: String,
}

/// A `function_call_output` item the client created.
#[derive(Debug, Clone)]
pub struct FunctionOutput {
    pub call_id: String,
    /// The `output` string as sent.
    pub output: String,
    /// `output` parsed as JSON, when it is JSON.
    pub parsed: Option<Value>,
    /// A response was streaming when it arrived (legal: it joins the conversation).
    pub during_response: bool,
    /// Index in `client_events`, to check what came after it.
    pub event_index: usize,
    /// It passed the checks and joined the conversation (else an `error` was sent).
    pub accepted: bool,
}

/// One response the mock generated.
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub response_id: String,
    pub item_id: String,
    /// Everything the response would have said, decoded at the format's rate.
    pub samples: Vec<i16>,
    /// Bytes actually sent in deltas (late ones included).
    pub sent_bytes: usize,
    pub first_delta_at: Option<Instant>,
    pub status: String,
    /// The `call_id`s of the function calls in its output.
    pub function_calls: Vec<String>,
    /// It answered a `response.create` that followed function outputs.
    pub after_tool_output: bool,
}

impl MockResponse {
    /// Ms of audio generated (sent) so far.
    pub fn generated_ms(&self, format: MockFormat) -> u64 {
        (self.sent_bytes / format.bytes_per_ms()) as u64
    }

    /// The decoded audio that was actually sent.
    pub fn sent_samples(&self, format: MockFormat) -> &[i16] {
        let n = self.sent_bytes / (format.bytes_per_ms() / (format.rate() as usize / 1000));
        &self.samples[..n.min(self.samples.len())]
    }
}

/// What the mock saw and did.
#[derive(Debug, Default)]
pub struct MockState {
    pub connections: usize,
    /// Request path and query of the upgrade.
    pub uri: String,
    /// Upgrade request headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Every client message except appends, in order.
    pub client_events: Vec<Value>,
    pub session_update: Option<Value>,
    pub session_updated_sent: bool,
    pub appends: usize,
    pub appends_before_updated: usize,
    /// Decoded caller audio, raw wire bytes.
    pub caller_bytes: Vec<u8>,
    pub problems: Vec<String>,
    pub responses: Vec<MockResponse>,
    pub barge_in_at: Option<Instant>,
    /// Each truncate with the generated ms of its item when it arrived.
    pub truncates: Vec<(Value, u64)>,
    pub caller_transcripts_sent: usize,
    /// Function calls the mock model made, in order.
    pub function_calls: Vec<IssuedCall>,
    /// `function_call_output` items the client created, in order.
    pub function_outputs: Vec<FunctionOutput>,
    /// The `code` of every `error` event the mock sent.
    pub errors_sent: Vec<String>,
    pub client_closed: bool,
    pub connection_ended: bool,
}

impl MockState {
    pub fn client_types(&self) -> Vec<String> {
        self.client_events
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }
}

pub struct MockOpenAi {
    pub addr: SocketAddr,
    pub format: MockFormat,
    state: Arc<Mutex<MockState>>,
    notify: Arc<Notify>,
    script: mpsc::UnboundedSender<Script>,
}

impl MockOpenAi {
    pub async fn start(options: MockOptions) -> MockOpenAi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(MockState::default()));
        let notify = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let format = options.format;
        let shared = Shared {
            state: state.clone(),
            notify: notify.clone(),
            options: Arc::new(options),
            script: Arc::new(tokio::sync::Mutex::new(rx)),
        };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    match shared.options.tls.clone() {
                        Some(tls) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                            match acceptor.accept(tcp).await {
                                Ok(stream) => serve(stream, shared).await,
                                Err(e) => shared.problem(format!("TLS accept failed: {e}")),
                            }
                        }
                        None => serve(tcp, shared).await,
                    }
                });
            }
        });
        MockOpenAi {
            addr,
            format,
            state,
            notify,
            script: tx,
        }
    }

    /// `ws://127.0.0.1:PORT/v1/realtime`
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    pub fn script(&self, step: Script) {
        self.script.send(step).expect("mock script");
    }

    /// Waits until `pred` holds on the recorded state (hang guard only).
    pub async fn wait(&self, what: &str, pred: impl Fn(&MockState) -> bool) {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if pred(&self.state.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(HANG_GUARD, wait).await.is_err() {
            panic!(
                "mock: `{what}` never happened; state: {:#?}",
                Summary(&self.state.lock().unwrap())
            );
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&MockState) -> R) -> R {
        f(&self.state.lock().unwrap())
    }
}

/// A short Debug view of the state for panic messages.
struct Summary<'a>(&'a MockState);

impl std::fmt::Debug for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        f.debug_struct("MockState")
            .field("connections", &s.connections)
            .field("client_types", &s.client_types())
            .field("session_updated_sent", &s.session_updated_sent)
            .field("appends", &s.appends)
            .field("problems", &s.problems)
            .field("responses", &s.responses.len())
            .field("truncates", &s.truncates)
            .field("function_calls", &s.function_calls)
            .field("function_outputs", &s.function_outputs)
            .field("errors_sent", &s.errors_sent)
            .field("client_closed", &s.client_closed)
            .finish()
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<MockState>>,
    notify: Arc<Notify>,
    options: Arc<MockOptions>,
    script: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Script>>>,
}

impl Shared {
    fn update<R>(&self, f: impl FnOnce(&mut MockState) -> R) -> R {
        let r = f(&mut self.state.lock().unwrap());
        self.notify.notify_waiters();
        r
    }

    fn problem(&self, p: String) {
        eprintln!("mock_openai problem: {p}");
        self.update(|s| s.problems.push(p));
    }
}

/// A response being streamed.
struct Active {
    index: usize,
    bytes: Vec<u8>,
    pos: usize,
    transcript: String,
    caller_turn: bool,
    bursts: usize,
    /// Functions still to call once the audio (if any) is out, one per tick.
    calls: VecDeque<MockCall>,
    /// The audio item's tail went out (or there was no audio).
    audio_done: bool,
    /// Completed output items so far, for `response.done`.
    output: Vec<Value>,
    /// With `calls_wait_for_outputs`: the call whose output must come before the next.
    waiting_for: Option<String>,
}

struct Conn {
    shared: Shared,
    format: MockFormat,
    next_id: u64,
    out: Vec<Message>,
    active: Option<Active>,
    queued: VecDeque<Script>,
    caller_items: u64,
    pending_caller_transcript: Option<String>,
    /// Function outputs arrived since the last response: the next `response.create`
    /// answers them.
    outputs_since_response: bool,
}

impl Conn {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{:05}", self.next_id)
    }

    /// Queues a server event with a fresh `event_id`.
    fn emit(&mut self, mut ev: Value) {
        let id = self.id("event");
        ev["event_id"] = json!(id);
        self.out.push(Message::text(ev.to_string()));
    }

    fn error(&mut self, code: &str, message: &str, client_event_id: Option<&str>) {
        self.shared.update(|s| s.errors_sent.push(code.to_owned()));
        self.emit(json!({
            "type": "error",
            "error": {"type": "invalid_request_error", "code": code, "message": message,
                      "param": null, "event_id": client_event_id}
        }));
    }

    fn session_object(&self, model: &str) -> Value {
        json!({
            "type": "realtime", "object": "realtime.session", "id": "sess_mock0001",
            "model": model, "output_modalities": ["audio"],
            "instructions": "Your knowledge cutoff is 2023-10.",
            "tools": [], "tool_choice": "auto", "max_output_tokens": "inf",
            "tracing": null, "prompt": null, "expires_at": 0, "include": null,
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": null,
                          "noise_reduction": null,
                          "turn_detection": {"type": "server_vad", "threshold": 0.5,
                              "prefix_padding_ms": 300, "silence_duration_ms": 200,
                              "idle_timeout_ms": null, "create_response": true,
                              "interrupt_response": true}},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin",
                           "speed": 1.0}
            }
        })
    }

    // ---- client messages ---------------------------------------------------------

    fn on_client(&mut self, text: &str) {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.shared
                    .problem(format!("client sent invalid JSON ({e}): {text:.200}"));
                self.error("invalid_json", "Invalid JSON", None);
                return;
            }
        };
        let kind = v["type"].as_str().unwrap_or("").to_owned();
        let event_id = v["event_id"].as_str().map(str::to_owned);
        if let Some(eid) = v.get("event_id") {
            if !eid.is_string() {
                self.shared
                    .problem(format!("client event_id is not a string: {v}"));
            }
        }
        match kind.as_str() {
            "input_audio_buffer.append" => self.on_append(&v),
            "session.update" => {
                self.shared.update(|s| s.client_events.push(v.clone()));
                let problems = validate_session_update(&v, self.format);
                let model = v["session"]["model"].as_str().unwrap_or("").to_owned();
                if problems.is_empty() {
                    let mut session = self.session_object(&model);
                    merge(&mut session, &v["session"]);
                    self.emit(json!({"type": "session.updated", "session": session}));
                    self.shared.update(|s| {
                        s.session_update = Some(v.clone());
                        s.session_updated_sent = true;
                    });
                } else {
                    for p in &problems {
                        self.shared.problem(format!("session.update: {p}"));
                    }
                    self.error("invalid_value", &problems.join("; "), event_id.as_deref());
                }
            }
            "response.create" => {
                self.shared.update(|s| s.client_events.push(v.clone()));
                if let Some(r) = v.get("response") {
                    if !r.is_object() {
                        self.shared
                            .problem(format!("response.create: response is not an object: {v}"));
                    } else if r.get("instructions").is_some_and(|i| !i.is_string()) {
                        self.shared.problem(format!(
                            "response.create: instructions is not a string: {v}"
                        ));
                    }
                }
                if let Some(active) = &self.active {
                    // The real server allows one response at a time.
                    let (response_id, _) = self.ids(active.index);
                    self.shared.problem(format!(
                        "response.create while {response_id} is active: {v}"
                    ));
                    self.error(
                        "conversation_already_has_active_response",
                        &format!(
                            "Conversation already has an active response in progress: \
                             {response_id}. Wait until the response is finished before \
                             creating a new one."
                        ),
                        event_id.as_deref(),
                    );
                    return;
                }
                if std::mem::take(&mut self.outputs_since_response) {
                    let ms = self.shared.options.tool_reply_ms;
                    self.start_response(ms, 202, false, Vec::new());
                    let index = self.active.as_ref().map(|a| a.index);
                    self.shared.update(|s| {
                        if let Some(i) = index {
                            s.responses[i].after_tool_output = true;
                        }
                    });
                } else {
                    let ms = self.shared.options.greeting_ms;
                    self.start_or_queue(Script::Respond { ms, seed: 101 });
                }
            }
            "conversation.item.truncate" => self.on_truncate(&v, event_id.as_deref()),
            "response.cancel" => {
                self.shared.update(|s| s.client_events.push(v.clone()));
                if self.active.is_some() {
                    self.cancel_active(0);
                } else {
                    self.error(
                        "response_cancel_not_active",
                        "Cancellation failed: no active response found",
                        event_id.as_deref(),
                    );
                }
            }
            "conversation.item.create" if v["item"]["type"] == "function_call_output" => {
                self.on_function_output(&v, event_id.as_deref())
            }
            "conversation.item.create" if v["item"]["type"] == "message" => {
                self.shared.update(|s| s.client_events.push(v.clone()));
                let item = &v["item"];
                let content_ok = item["content"].as_array().is_some_and(|c| {
                    c.iter()
                        .all(|p| p["type"] == "input_text" && p["text"].is_string())
                });
                if item["role"] != "user" || !content_ok {
                    self.shared
                        .problem(format!("user message item malformed: {v}"));
                }
                let id = match item["id"].as_str() {
                    Some(id) if id.len() <= 32 => id.to_owned(),
                    Some(id) => {
                        self.shared.problem(format!("item id over 32 chars: {id}"));
                        id.to_owned()
                    }
                    None => self.id("item"),
                };
                let mut added = item.clone();
                added["id"] = json!(id);
                added["status"] = json!("completed");
                self.emit(json!({"type": "conversation.item.added", "previous_item_id": null, "item": added}));
            }
            "input_audio_buffer.commit"
            | "input_audio_buffer.clear"
            | "conversation.item.create"
            | "conversation.item.delete"
            | "conversation.item.retrieve"
            | "output_audio_buffer.clear" => {
                self.shared.update(|s| s.client_events.push(v.clone()));
            }
            other => {
                self.shared.update(|s| s.client_events.push(v.clone()));
                self.shared
                    .problem(format!("unknown client event type {other:?}: {text:.200}"));
                self.error(
                    "invalid_value",
                    &format!("Invalid value: '{other}'"),
                    event_id.as_deref(),
                );
            }
        }
    }

    fn on_append(&mut self, v: &Value) {
        let Some(audio) = v["audio"].as_str() else {
            self.shared
                .problem(format!("append without audio string: {v:.200}"));
            return;
        };
        let extra: Vec<&String> = v
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| !["type", "audio", "event_id"].contains(&k.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if !extra.is_empty() {
            self.shared
                .problem(format!("append has unexpected fields {extra:?}"));
        }
        let bytes = match base64::engine::general_purpose::STANDARD.decode(audio) {
            Ok(b) => b,
            Err(e) => {
                self.shared
                    .problem(format!("append audio is not base64: {e}"));
                return;
            }
        };
        // G.711 passes through in exact 20 ms frames (or exactly `frames_per_append` of
        // them). PCM16 24 kHz comes out of a resampler, whose first outputs are a few
        // samples short of 20 ms (its filter delay): whole 16-bit samples, at most one
        // frame (or chunk), is what the wire requires.
        let frame = self.format.bytes_per_ms() * 20 * self.shared.options.frames_per_append;
        let ok = match self.format {
            MockFormat::Pcmu | MockFormat::Pcma => bytes.len() == frame,
            MockFormat::Pcm24 => bytes.len() % 2 == 0 && !bytes.is_empty() && bytes.len() <= frame,
        };
        if !ok {
            self.shared.problem(format!(
                "append of {} bytes; {} frame(s) of 20 ms of {:?} are {frame}",
                bytes.len(),
                self.shared.options.frames_per_append,
                self.format
            ));
        }
        self.shared.update(|s| {
            if !s.session_updated_sent {
                s.appends_before_updated += 1;
            }
            s.appends += 1;
            s.caller_bytes.extend_from_slice(&bytes);
        });
        if !self.shared.state.lock().unwrap().session_updated_sent {
            self.shared
                .problem("audio appended before session.updated".into());
        }
    }

    /// A function's result: checked as the server would, recorded, and added to the
    /// conversation (`conversation.item.added` / `.done`).
    fn on_function_output(&mut self, v: &Value, event_id: Option<&str>) {
        let item = &v["item"];
        let during_response = self.active.is_some();
        let call_id = item["call_id"].as_str().unwrap_or("").to_owned();
        let mut bad = Vec::new();
        let extra: Vec<&String> = item
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| !["type", "call_id", "output", "id"].contains(&k.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if !extra.is_empty() {
            bad.push(format!("unexpected fields {extra:?}"));
        }
        let output = item["output"].as_str().map(str::to_owned);
        if output.is_none() {
            bad.push(format!("output must be a string: {}", item["output"]));
        }
        let (issued, answered) = self.shared.update(|s| {
            (
                s.function_calls.iter().any(|c| c.call_id == call_id),
                s.function_outputs
                    .iter()
                    .any(|o| o.accepted && o.call_id == call_id),
            )
        });
        if answered {
            bad.push(format!("a second output for {call_id:?}"));
        }
        let accepted = issued && bad.is_empty();
        let output = output.unwrap_or_default();
        let parsed = serde_json::from_str(&output).ok();
        self.shared.update(|s| {
            s.client_events.push(v.clone());
            let event_index = s.client_events.len() - 1;
            s.function_outputs.push(FunctionOutput {
                call_id: call_id.clone(),
                output: output.clone(),
                parsed,
                during_response,
                event_index,
                accepted,
            });
        });
        if !issued {
            self.shared.problem(format!(
                "function_call_output for a call_id the model never issued: {v}"
            ));
            self.error(
                "invalid_tool_call_id",
                &format!("Tool call ID '{call_id}' not found in conversation."),
                event_id,
            );
            return;
        }
        if !bad.is_empty() {
            for b in &bad {
                self.shared.problem(format!("function_call_output: {b}"));
            }
            self.error("invalid_value", &bad.join("; "), event_id);
            return;
        }
        self.outputs_since_response = true;
        if let Some(active) = self.active.as_mut() {
            if active.waiting_for.as_deref() == Some(call_id.as_str()) {
                active.waiting_for = None;
            }
        }
        let item_id = self.id("item");
        let item = json!({"id": item_id, "type": "function_call_output", "object": "realtime.item",
                          "status": "completed", "call_id": call_id, "output": output});
        self.emit(
            json!({"type": "conversation.item.added", "previous_item_id": null, "item": item}),
        );
        self.emit(
            json!({"type": "conversation.item.done", "previous_item_id": null, "item": item}),
        );
    }

    fn on_truncate(&mut self, v: &Value, event_id: Option<&str>) {
        let item = v["item_id"].as_str().unwrap_or("").to_owned();
        let content_index = v["content_index"].as_u64();
        let end = v["audio_end_ms"].as_u64();
        let generated = self.shared.update(|s| {
            s.client_events.push(v.clone());
            s.responses
                .iter()
                .find(|r| r.item_id == item)
                .map(|r| r.generated_ms(self.format))
        });
        let mut bad = Vec::new();
        if content_index != Some(0) {
            bad.push(format!("content_index must be 0: {v}"));
        }
        match (generated, end) {
            (None, _) => bad.push(format!("truncate of unknown item {item:?}")),
            (_, None) => bad.push(format!("audio_end_ms missing or not an integer: {v}")),
            (Some(g), Some(e)) if e > g => bad.push(format!(
                "audio_end_ms {e} exceeds the {g} ms generated for {item}"
            )),
            _ => {}
        }
        self.shared
            .update(|s| s.truncates.push((v.clone(), generated.unwrap_or(0))));
        if bad.is_empty() {
            self.emit(
                json!({"type": "conversation.item.truncated", "item_id": item,
                             "content_index": 0, "audio_end_ms": end}),
            );
        } else {
            for b in &bad {
                self.shared.problem(format!("truncate: {b}"));
            }
            self.error("invalid_value", &bad.join("; "), event_id);
        }
    }

    // ---- scripted server behaviour -----------------------------------------------

    fn start_or_queue(&mut self, step: Script) {
        let busy = self.active.is_some();
        match step {
            Script::Respond { .. }
            | Script::CallerTurn { .. }
            | Script::SilentTurn
            | Script::FunctionCall { .. }
                if busy =>
            {
                self.queued.push_back(step)
            }
            Script::Respond { ms, seed } => self.start_response(ms, seed, false, Vec::new()),
            Script::CallerTurn { ms, seed } => {
                self.caller_vad_turn();
                self.start_response(ms, seed, true, Vec::new());
            }
            Script::FunctionCall {
                caller_turn,
                speech_ms,
                seed,
                calls,
            } => {
                if caller_turn {
                    self.caller_vad_turn();
                }
                self.start_response(speech_ms, seed, caller_turn, calls);
            }
            Script::SilentTurn => self.caller_vad_turn(),
            Script::BargeIn => self.barge_in(),
            Script::Error { code, message } => self.error(&code, &message, None),
            Script::Raw(text) => self.out.push(Message::text(text)),
            Script::Close { .. } => unreachable!("handled by the connection loop"),
        }
    }

    /// speech_started .. committed and the caller's item, as the server sends them.
    fn caller_vad_turn(&mut self) {
        self.caller_items += 1;
        let item = format!("item_caller_{:03}", self.caller_items);
        self.emit(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000, "item_id": item}));
        self.emit(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2500, "item_id": item}));
        self.emit(json!({"type": "input_audio_buffer.committed", "previous_item_id": null, "item_id": item}));
        let user_item = json!({"id": item, "type": "message", "object": "realtime.item",
                               "status": "completed", "role": "user",
                               "content": [{"type": "input_audio", "transcript": null}]});
        self.emit(
            json!({"type": "conversation.item.added", "previous_item_id": null, "item": user_item}),
        );
        self.emit(
            json!({"type": "conversation.item.done", "previous_item_id": null, "item": user_item}),
        );
        self.pending_caller_transcript = Some(item);
    }

    fn start_response(&mut self, ms: u64, seed: u64, caller_turn: bool, calls: Vec<MockCall>) {
        let rate = self.format.rate();
        let samples_wanted = rate as usize * ms as usize / 1000;
        let speech = speech_like(rate, ms as f64 / 1000.0, seed);
        let mut speech = speech[..samples_wanted.min(speech.len())].to_vec();
        speech.resize(samples_wanted, 0);
        let bytes = self.format.encode(&speech);
        let samples = self.format.decode(&bytes);
        let response_id = self.id("resp");
        let item_id = self.id("item");
        let index = self.shared.update(|s| {
            s.responses.push(MockResponse {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                samples,
                sent_bytes: 0,
                first_delta_at: None,
                status: "in_progress".into(),
                function_calls: Vec::new(),
                after_tool_output: false,
            });
            s.responses.len() - 1
        });
        let item = json!({"id": item_id, "type": "message", "object": "realtime.item",
                          "status": "in_progress", "role": "assistant", "content": []});
        self.emit(json!({"type": "response.created", "response": {
            "id": response_id, "object": "realtime.response", "status": "in_progress",
            "status_details": null, "output": [], "conversation_id": "conv_mock",
            "output_modalities": ["audio"], "max_output_tokens": "inf",
            "audio": {"output": {"format": self.format.json(), "voice": "marin"}},
            "usage": null, "metadata": null}}));
        if ms > 0 {
            self.emit(
                json!({"type": "response.output_item.added", "response_id": response_id,
                             "output_index": 0, "item": item}),
            );
            self.emit(
                json!({"type": "conversation.item.added", "previous_item_id": null, "item": item}),
            );
            self.emit(
                json!({"type": "response.content_part.added", "response_id": response_id,
                             "item_id": item_id, "output_index": 0, "content_index": 0,
                             "part": {"type": "audio", "transcript": ""}}),
            );
        }
        self.outputs_since_response = false;
        self.active = Some(Active {
            index,
            bytes,
            pos: 0,
            transcript: format!("Mock answer number {}.", index + 1),
            caller_turn,
            bursts: 0,
            calls: calls.into(),
            audio_done: ms == 0,
            output: Vec::new(),
            waiting_for: None,
        });
    }

    fn ids(&self, index: usize) -> (String, String) {
        let s = self.shared.state.lock().unwrap();
        (
            s.responses[index].response_id.clone(),
            s.responses[index].item_id.clone(),
        )
    }

    /// Sends the next burst of the active response; finishes it at the end.
    fn burst(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.audio_done {
            self.next_call();
            return;
        }
        let n = self.shared.options.burst_ms as usize * self.format.bytes_per_ms();
        let end = (active.pos + n).min(active.bytes.len());
        let chunk = active.bytes[active.pos..end].to_vec();
        active.pos = end;
        active.bursts += 1;
        let index = active.index;
        let word = active.bursts % 2 == 1;
        let done = active.pos >= active.bytes.len();
        self.send_delta(index, &chunk);
        if word {
            let (response_id, item_id) = self.ids(index);
            self.emit(json!({"type": "response.output_audio_transcript.delta",
                             "response_id": response_id, "item_id": item_id,
                             "output_index": 0, "content_index": 0, "delta": "Mock "}));
        }
        if done {
            self.finish_audio("completed");
            if self.active.as_ref().is_some_and(|a| a.calls.is_empty()) {
                self.finish_active("completed");
            }
        }
    }

    /// Streams the next function call of the active response (one per tick); the
    /// response is done after the last.
    fn next_call(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.waiting_for.is_some() {
            return;
        }
        let Some(call) = active.calls.pop_front() else {
            self.finish_active("completed");
            return;
        };
        let index = active.index;
        let output_index = active.output.len();
        let (response_id, _) = self.ids(index);
        let item = self.function_call_item(&response_id, output_index, &call);
        let call_id = item["call_id"].as_str().unwrap_or("").to_owned();
        self.shared
            .update(|s| s.responses[index].function_calls.push(call_id.clone()));
        let wait = self.shared.options.calls_wait_for_outputs;
        if let Some(active) = self.active.as_mut() {
            active.output.push(item);
            if active.calls.is_empty() {
                self.finish_active("completed");
            } else if wait {
                active.waiting_for = Some(call_id);
            }
        }
    }

    fn send_delta(&mut self, index: usize, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let (response_id, item_id) = self.ids(index);
        let now = Instant::now();
        self.shared.update(|s| {
            let r = &mut s.responses[index];
            r.sent_bytes += chunk.len();
            r.first_delta_at.get_or_insert(now);
        });
        self.emit(
            json!({"type": "response.output_audio.delta", "response_id": response_id,
                         "item_id": item_id, "output_index": 0, "content_index": 0,
                         "delta": base64::engine::general_purpose::STANDARD.encode(chunk)}),
        );
    }

    /// The audio item's tail, from output_audio.done to conversation.item.done.
    fn finish_audio(&mut self, status: &str) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.audio_done {
            return;
        }
        active.audio_done = true;
        let transcript = active.transcript.clone();
        let index = active.index;
        let (response_id, item_id) = self.ids(index);
        let item_status = if status == "completed" {
            "completed"
        } else {
            "incomplete"
        };
        let item = json!({"id": item_id, "type": "message", "object": "realtime.item",
                          "status": item_status, "role": "assistant",
                          "content": [{"type": "output_audio", "transcript": transcript}]});
        let ids = json!({"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0});
        let with = |kind: &str, extra: Value| {
            let mut v = ids.clone();
            v["type"] = json!(kind);
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                for (k, x) in e {
                    o.insert(k.clone(), x.clone());
                }
            }
            v
        };
        self.emit(with("response.output_audio.done", json!({})));
        self.emit(with(
            "response.output_audio_transcript.done",
            json!({"transcript": transcript}),
        ));
        self.emit(with(
            "response.content_part.done",
            json!({"part": {"type": "audio", "transcript": transcript}}),
        ));
        self.emit(
            json!({"type": "response.output_item.done", "response_id": response_id,
                         "output_index": 0, "item": item}),
        );
        self.emit(
            json!({"type": "conversation.item.done", "previous_item_id": null, "item": item}),
        );
        if let Some(active) = self.active.as_mut() {
            active.output.push(item);
        }
    }

    /// The end of a response: the audio tail if it was cut short, `response.done` and
    /// `rate_limits.updated` (a cancelled response never gets to its remaining calls).
    fn finish_active(&mut self, status: &str) {
        self.finish_audio(status);
        let Some(active) = self.active.take() else {
            return;
        };
        let (response_id, _) = self.ids(active.index);
        let output = active.output;
        let (input_tokens, output_tokens) = usage_of(active.index);
        self.emit(json!({"type": "response.done", "response": {
            "id": response_id, "object": "realtime.response", "status": status,
            "status_details": if status == "completed" { Value::Null } else { json!({"type": status, "reason": "turn_detected"}) },
            "output": output, "conversation_id": "conv_mock", "output_modalities": ["audio"],
            "max_output_tokens": "inf", "metadata": null,
            "audio": {"output": {"format": self.format.json(), "voice": "marin"}},
            "usage": {"total_tokens": input_tokens + output_tokens, "input_tokens": input_tokens,
                      "output_tokens": output_tokens,
                      "input_token_details": {"text_tokens": 40, "audio_tokens": input_tokens - 40,
                          "image_tokens": 0, "cached_tokens": 0,
                          "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
                      "output_token_details": {"text_tokens": 10, "audio_tokens": output_tokens - 10}}}}));
        self.emit(json!({"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60},
            {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 60}]}));
        let status_owned = status.to_owned();
        self.shared
            .update(|s| s.responses[active.index].status = status_owned);
        if active.caller_turn {
            if let Some(item) = self.pending_caller_transcript.take() {
                self.emit(
                    json!({"type": "conversation.item.input_audio_transcription.completed",
                                 "item_id": item, "content_index": 0,
                                 "transcript": "Caller said something in the mock.",
                                 "usage": {"type": "duration", "seconds": 2}}),
                );
                self.shared.update(|s| s.caller_transcripts_sent += 1);
            }
        }
    }

    /// One `function_call` output item, streamed as the server does; returns the
    /// completed item for `response.done`.
    fn function_call_item(
        &mut self,
        response_id: &str,
        output_index: usize,
        call: &MockCall,
    ) -> Value {
        let item_id = self.id("item");
        let call_id = format!("call_{}", self.id("fc"));
        let mut item = json!({"id": item_id, "type": "function_call", "object": "realtime.item",
                              "status": "in_progress", "name": call.name, "call_id": call_id,
                              "arguments": ""});
        self.emit(
            json!({"type": "response.output_item.added", "response_id": response_id,
                         "output_index": output_index, "item": item}),
        );
        self.emit(
            json!({"type": "conversation.item.added", "previous_item_id": null, "item": item}),
        );
        // The arguments stream in a few pieces (split on char boundaries).
        let chars: Vec<char> = call.arguments.chars().collect();
        for piece in chars.chunks(8) {
            let delta: String = piece.iter().collect();
            self.emit(json!({"type": "response.function_call_arguments.delta",
                             "response_id": response_id, "item_id": item_id,
                             "output_index": output_index, "call_id": call_id, "delta": delta}));
        }
        self.emit(json!({"type": "response.function_call_arguments.done",
                         "response_id": response_id, "item_id": item_id,
                         "output_index": output_index, "call_id": call_id,
                         "name": call.name, "arguments": call.arguments}));
        item["status"] = json!("completed");
        item["arguments"] = json!(call.arguments);
        self.emit(
            json!({"type": "response.output_item.done", "response_id": response_id,
                         "output_index": output_index, "item": item}),
        );
        self.emit(
            json!({"type": "conversation.item.done", "previous_item_id": null, "item": item}),
        );
        self.shared.update(|s| {
            s.function_calls.push(IssuedCall {
                call_id: call_id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                response_id: response_id.to_owned(),
                item_id: item_id.clone(),
            })
        });
        item
    }

    /// The server cancels the active response after `late` more deltas.
    fn cancel_active(&mut self, late: usize) {
        for _ in 0..late {
            let Some(active) = self.active.as_mut() else {
                break;
            };
            let n = self.shared.options.burst_ms as usize * self.format.bytes_per_ms();
            let end = (active.pos + n).min(active.bytes.len());
            let chunk = active.bytes[active.pos..end].to_vec();
            active.pos = end;
            let index = active.index;
            self.send_delta(index, &chunk);
        }
        self.finish_active("cancelled");
    }

    fn barge_in(&mut self) {
        if self.active.is_none() {
            self.shared
                .problem("BargeIn scripted while no response was streaming".into());
        }
        self.caller_items += 1;
        let item = format!("item_caller_{:03}", self.caller_items);
        self.shared.update(|s| s.barge_in_at = Some(Instant::now()));
        self.emit(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 4000, "item_id": item}));
        let interrupts = self.shared.update(|s| {
            s.session_update.as_ref().is_none_or(|u| {
                u["session"]["audio"]["input"]["turn_detection"]["interrupt_response"] != false
            })
        });
        if !interrupts {
            // interrupt_response: false: the reply goes on; the client cancels it if it
            // decides the caller really interrupted. The caller is still talking.
            return;
        }
        // interrupt_response: the server cancels; a couple of deltas were already in flight.
        self.cancel_active(2);
        self.emit(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 4800, "item_id": item}));
        self.emit(json!({"type": "input_audio_buffer.committed", "previous_item_id": null, "item_id": item}));
    }
}

/// Deterministic token counts per response, so the summary's sums can be checked.
pub fn usage_of(index: usize) -> (u64, u64) {
    (100 + 10 * index as u64, 50 + 5 * index as u64)
}

/// Shallow-merges the client's session fields over the defaults (as `session.updated`
/// reflects the effective session).
fn merge(base: &mut Value, update: &Value) {
    if let (Some(b), Some(u)) = (base.as_object_mut(), update.as_object()) {
        for (k, v) in u {
            b.insert(k.clone(), v.clone());
        }
    }
}

/// Everything wrong with a `session.update` (empty when it is the GA shape we expect).
pub fn validate_session_update(v: &Value, format: MockFormat) -> Vec<String> {
    let mut p = Vec::new();
    let s = &v["session"];
    if !s.is_object() {
        return vec![format!("no session object: {v}")];
    }
    let mut check = |cond: bool, what: &str| {
        if !cond {
            p.push(what.to_owned());
        }
    };
    check(s["type"] == "realtime", "session.type must be \"realtime\"");
    check(s["model"].is_string(), "session.model must be a string");
    check(
        s["output_modalities"] == json!(["audio"]),
        "output_modalities must be [\"audio\"]",
    );
    check(
        s["instructions"].is_string(),
        "instructions must be a string",
    );
    for beta in [
        "temperature",
        "modalities",
        "input_audio_format",
        "output_audio_format",
        "input_audio_transcription",
        "turn_detection",
        "voice",
    ] {
        check(
            s.get(beta).is_none(),
            &format!("session.{beta} is not a GA session field"),
        );
    }
    let input = &s["audio"]["input"];
    let output = &s["audio"]["output"];
    check(
        input["format"] == format.json(),
        &format!("audio.input.format must be {}", format.json()),
    );
    check(
        output["format"] == format.json(),
        &format!("audio.output.format must be {}", format.json()),
    );
    check(
        output["voice"].as_str().is_some_and(|v| !v.is_empty()),
        "audio.output.voice must be a voice name",
    );
    let t = &input["transcription"];
    check(
        ["whisper-1", "gpt-4o-mini-transcribe", "gpt-4o-transcribe"]
            .contains(&t["model"].as_str().unwrap_or("")),
        "audio.input.transcription.model must be a transcription model",
    );
    if let Some(lang) = t.get("language") {
        check(
            lang.as_str()
                .is_some_and(|l| l.len() == 2 && l.chars().all(|c| c.is_ascii_lowercase())),
            "transcription.language must be ISO-639-1",
        );
    }
    check(
        input["noise_reduction"]["type"] == "near_field"
            || input["noise_reduction"]["type"] == "far_field",
        "noise_reduction.type must be near_field|far_field",
    );
    let td = &input["turn_detection"];
    check(
        td["type"] == "server_vad",
        "turn_detection.type must be server_vad",
    );
    check(
        td["threshold"]
            .as_f64()
            .is_some_and(|x| (0.0..=1.0).contains(&x)),
        "turn_detection.threshold in 0..1",
    );
    check(
        td["prefix_padding_ms"].is_u64(),
        "turn_detection.prefix_padding_ms integer",
    );
    check(
        td["silence_duration_ms"].is_u64(),
        "turn_detection.silence_duration_ms integer",
    );
    check(
        td["create_response"].is_boolean(),
        "turn_detection.create_response boolean",
    );
    check(
        td["interrupt_response"].is_boolean(),
        "turn_detection.interrupt_response boolean",
    );
    if let Some(idle) = td.get("idle_timeout_ms") {
        check(
            idle.as_u64()
                .is_some_and(|ms| (5000..=30_000).contains(&ms)),
            "turn_detection.idle_timeout_ms integer in 5000..30000",
        );
    }
    p.extend(validate_tools(s));
    p
}

/// Everything wrong with `session.tools` / `session.tool_choice` (GA function tools are
/// flat: `{"type":"function","name","description","parameters"}`, not the Chat
/// Completions `{"type":"function","function":{...}}`).
pub fn validate_tools(session: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let Some(tools) = session.get("tools") else {
        if session.get("tool_choice").is_some() {
            p.push("tool_choice without tools".to_owned());
        }
        return p;
    };
    let Some(tools) = tools.as_array() else {
        return vec![format!("tools must be an array: {tools}")];
    };
    let mut names = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let mut check = |cond: bool, what: &str| {
            if !cond {
                p.push(format!("tools[{i}]: {what}: {t}"));
            }
        };
        check(t["type"] == "function", "type must be \"function\"");
        let name = t["name"].as_str().unwrap_or("");
        check(
            !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "name must match ^[a-zA-Z0-9_-]{1,64}$",
        );
        check(!names.contains(&name), "duplicate name");
        names.push(name);
        check(
            t["description"].as_str().is_some_and(|d| !d.is_empty()),
            "description must be a non-empty string",
        );
        check(
            t["parameters"]["type"] == "object",
            "parameters must be a JSON Schema object",
        );
        check(
            t["parameters"]
                .get("properties")
                .is_none_or(|props| props.is_object()),
            "parameters.properties must be an object",
        );
        let extra: Vec<&String> = t
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| {
                        !["type", "name", "description", "parameters"].contains(&k.as_str())
                    })
                    .collect()
            })
            .unwrap_or_default();
        check(extra.is_empty(), &format!("unexpected fields {extra:?}"));
    }
    let choice_ok = match session.get("tool_choice") {
        None => true,
        Some(Value::String(c)) => ["auto", "none", "required"].contains(&c.as_str()),
        Some(c) => {
            c["type"] == "function" && c["name"].as_str().is_some_and(|n| names.contains(&n))
        }
    };
    if !choice_ok {
        p.push(format!(
            "tool_choice must be auto|none|required or name a declared function: {}",
            session["tool_choice"]
        ));
    }
    p
}

// The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
#[allow(clippy::result_large_err)]
async fn serve<S>(stream: S, shared: Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let options = shared.options.clone();
    let record = shared.clone();
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let uri = req.uri().to_string();
        record.update(|s| {
            s.connections += 1;
            s.uri = uri.clone();
            s.headers = headers.clone();
        });
        if let Some((status, body)) = &options.refuse {
            let r = http::Response::builder()
                .status(*status)
                .header("content-type", "application/json")
                .body(Some(body.clone()))
                .unwrap();
            return Err(r);
        }
        let auth = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str());
        let expected = format!("Bearer {}", options.api_key);
        if auth != Some(expected.as_str()) {
            record.problem(format!("bad Authorization header: {auth:?}"));
        }
        if headers.iter().any(|(k, _)| k == "openai-beta") {
            record.problem("OpenAI-Beta header sent: that is the retired beta interface".into());
        }
        if req.uri().path() != "/v1/realtime" {
            record.problem(format!("unexpected path {uri}"));
        }
        if !req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv.starts_with("model=") && kv.len() > 6)
        {
            record.problem(format!("no model= in the query: {uri}"));
        }
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        Err(e) => {
            if shared.options.refuse.is_none() {
                shared.problem(format!("mock handshake failed: {e}"));
            }
            return;
        }
    };
    let (mut sink, mut source) = ws.split();
    let mut script = shared.script.lock().await;
    let mut conn = Conn {
        format: shared.options.format,
        shared: shared.clone(),
        next_id: 0,
        out: Vec::new(),
        active: None,
        queued: VecDeque::new(),
        caller_items: 0,
        pending_caller_transcript: None,
        outputs_since_response: false,
    };
    let session = conn.session_object("gpt-realtime");
    conn.emit(json!({"type": "session.created", "session": session}));
    let mut tick = tokio::time::interval(shared.options.burst_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    let mut script_done = false;
    loop {
        for m in conn.out.drain(..) {
            if sink.send(m).await.is_err() {
                shared.update(|s| s.connection_ended = true);
                return;
            }
        }
        if conn.active.is_none() {
            if let Some(next) = conn.queued.pop_front() {
                conn.start_or_queue(next);
                continue;
            }
        }
        tokio::select! {
            msg = source.next() => match msg {
                Some(Ok(Message::Text(t))) => conn.on_client(t.as_str()),
                Some(Ok(Message::Binary(b))) => shared.problem(format!("client sent a binary message ({} bytes)", b.len())),
                Some(Ok(Message::Close(_))) => {
                    if !closing {
                        shared.update(|s| s.client_closed = true);
                        if !shared.options.answer_close {
                            // Reading or writing would send tungstenite's automatic
                            // reply: hold the connection untouched instead.
                            tokio::time::sleep(HANG_GUARD).await;
                            break;
                        }
                        let _ = sink.send(Message::Close(None)).await;
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            step = script.recv(), if !closing && !script_done => match step {
                Some(Script::Close { code, reason }) => {
                    closing = true;
                    conn.active = None;
                    for m in conn.out.drain(..) {
                        let _ = sink.send(m).await;
                    }
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                }
                Some(step) => conn.start_or_queue(step),
                None => script_done = true,
            },
            _ = tick.tick(), if conn.active.is_some() && !closing => conn.burst(),
        }
    }
    shared.update(|s| s.connection_ended = true);
}
