//! A mock of ElevenLabs' agent platform: the signed-URL HTTP endpoint and the agent
//! WebSocket, speaking the real wire protocol (field names, event order, event ids).
//!
//! It validates every client message (first message = `conversation_initiation_client_data`
//! with exactly the expected overrides and dynamic variables; `user_audio_chunk` base64
//! of whole samples in the agent's input format; each `pong` echoing a ping's
//! `event_id`), records the decoded caller audio, and plays speech-like audio in bursts
//! four times faster than real time. The test scripts it through [`Cmd`]s.
//!
//! Client tools: [`Cmd::ToolCall`] makes the agent call one as ElevenLabs does
//! (`user_transcript`, optionally "let me check" speech, `client_tool_call`); the agent
//! then waits, and each `client_tool_result` (validated: known `tool_call_id` answered
//! once, `result` a string, `is_error` a bool, nothing else) is followed by an
//! `agent_response` and the audio of a new response.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use voicebridge::audio::g711;
use voicebridge::audio::signal::{sine, speech_like};

/// The token the signed URL carries; the WebSocket accepts only this one.
pub const SIGNATURE: &str = "sig-SECRET-9f8e7d6c5b4a";
/// Audio per `audio` event.
const CHUNK_MS: u64 = 100;
/// Bursts: one chunk every CHUNK_MS / SPEEDUP.
const SPEEDUP: u64 = 4;

#[derive(Clone, Debug)]
pub struct MockOptions {
    pub agent_id: String,
    /// `Some`: the HTTP endpoint requires this `xi-api-key`.
    pub api_key: Option<String>,
    /// The WebSocket accepts only `conversation_signature=SIGNATURE` (a private agent);
    /// otherwise it answers 401 with a JSON body.
    pub require_signature: bool,
    pub input_format: &'static str,
    pub output_format: &'static str,
    /// Seconds of first_message audio sent right after the metadata (0: none).
    pub greeting_secs: f64,
    pub ping_every: Duration,
    /// The exact `conversation_config_override` expected (`None`: must be absent).
    pub expect_override: Option<Value>,
    /// Entries `dynamic_variables` must have.
    pub expect_vars: Vec<(String, String)>,
    /// Instead of the metadata: an `error` event with this error_type, then this Close.
    pub close_on_init: Option<(u16, String, String)>,
}

impl MockOptions {
    pub fn new(agent_id: &str) -> MockOptions {
        MockOptions {
            agent_id: agent_id.to_owned(),
            api_key: None,
            require_signature: false,
            input_format: "pcm_16000",
            output_format: "pcm_16000",
            greeting_secs: 0.0,
            ping_every: Duration::from_secs(1),
            expect_override: None,
            expect_vars: Vec::new(),
            close_on_init: None,
        }
    }
}

/// What the test asks the agent to do.
#[derive(Debug)]
pub enum Cmd {
    /// `user_transcript` only (the caller's turn ended; no answer follows).
    Transcript(String),
    /// A turn: `user_transcript` (if given), `agent_response`, then `secs` of audio
    /// with the next event id, in bursts.
    Respond {
        transcript: Option<String>,
        secs: f64,
    },
    /// Barge-in: stop the current response, `interruption {event_id: K}`,
    /// `agent_response_correction`, then late audio (a 1 kHz tone) with event id K-1
    /// (one chunk) and K (three chunks).
    BargeIn,
    Close(u16, String),
    /// The agent calls a client tool: `user_transcript` (if given), then — if
    /// `before_secs` > 0 — `agent_response` and that much audio, then
    /// `client_tool_call`. After the client's `client_tool_result`: `agent_response` and
    /// `after_secs` of audio with the next event id.
    ToolCall {
        transcript: Option<String>,
        before_secs: f64,
        tool_name: String,
        tool_call_id: String,
        parameters: Value,
        after_secs: f64,
    },
}

/// A `client_tool_result` as received.
#[derive(Clone, Debug)]
pub struct ToolResultRecord {
    /// The whole message, parsed.
    pub msg: Value,
    pub at: Instant,
    /// The event id of the response the agent gave after it.
    pub answer_event_id: Option<i64>,
}

/// A response as sent: its event id, the reference samples (output rate), when its
/// first audio event went out.
#[derive(Clone, Debug)]
pub struct SentResponse {
    pub event_id: i64,
    pub samples: Vec<i16>,
    pub first_at: Option<Instant>,
}

#[derive(Default, Debug)]
pub struct Recorded {
    /// Validation failures; a test asserts this is empty.
    pub errors: Vec<String>,
    pub http_requests: usize,
    pub http_key_ok: usize,
    pub ws_connections: usize,
    pub ws_refused: usize,
    pub init: Option<Value>,
    /// Caller audio as the mock decoded it (input rate), and the raw bytes.
    pub caller: Vec<i16>,
    pub caller_raw: Vec<u8>,
    pub chunks_in: usize,
    pub pings_sent: Vec<i64>,
    pub pongs: Vec<Value>,
    pub responses: Vec<SentResponse>,
    pub late_events_sent: usize,
    pub barge_at: Option<Instant>,
    pub interruption_id: Option<i64>,
    pub client_closed: Option<Option<u16>>,
    /// `tool_call_id`s of the `client_tool_call`s sent.
    pub tool_calls: Vec<String>,
    pub tool_results: Vec<ToolResultRecord>,
    /// `user_message` texts (the caller's key presses), in order.
    pub user_messages: Vec<String>,
}

pub struct MockEleven {
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: Arc<Mutex<Recorded>>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
}

pub fn encode(format: &str, samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    if format == "ulaw_8000" {
        g711::ulaw_encode(samples, &mut out);
    } else {
        out = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    }
    out
}

pub fn decode(format: &str, bytes: &[u8]) -> Vec<i16> {
    let mut out = Vec::new();
    if format == "ulaw_8000" {
        g711::ulaw_decode(bytes, &mut out);
    } else {
        out = bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
    }
    out
}

pub fn rate_of(format: &str) -> u32 {
    format
        .rsplit('_')
        .next()
        .and_then(|r| r.parse().ok())
        .expect("format with a rate")
}

fn bytes_per_sample(format: &str) -> usize {
    if format == "ulaw_8000" {
        1
    } else {
        2
    }
}

impl MockEleven {
    pub async fn start(opts: MockOptions) -> MockEleven {
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_addr = ws.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Recorded::default()));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let opts = Arc::new(opts);
        tokio::spawn(serve_http(http, ws_addr, opts.clone(), state.clone()));
        tokio::spawn(serve_ws(ws, opts, state.clone(), cmd_rx));
        MockEleven {
            ws_addr,
            http_addr,
            state,
            cmd_tx,
        }
    }

    /// `providers.elevenlabs.url` pointing here.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/convai/conversation", self.ws_addr)
    }

    /// `providers.elevenlabs.signed_url_endpoint` pointing here.
    pub fn signed_url_endpoint(&self) -> String {
        format!(
            "http://{}/v1/convai/conversation/get-signed-url",
            self.http_addr
        )
    }

    pub fn send(&self, cmd: Cmd) {
        self.cmd_tx.send(cmd).expect("mock running");
    }

    pub fn recorded<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// Waits (hang guard 30 s) until `pred` holds on the recorded state.
    pub async fn wait(&self, what: &str, pred: impl Fn(&Recorded) -> bool) {
        let wait = async {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                if pred(&self.state.lock().unwrap()) {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .is_err()
        {
            panic!(
                "mock: {what} never happened: {:?}",
                self.state.lock().unwrap().errors
            );
        }
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

// ---- the signed-URL endpoint: a tiny HTTP/1.1 responder ---------------------------------

async fn serve_http(
    listener: TcpListener,
    ws_addr: SocketAddr,
    opts: Arc<MockOptions>,
    state: Arc<Mutex<Recorded>>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (opts, state) = (opts.clone(), state.clone());
        tokio::spawn(async move { http_one(stream, ws_addr, &opts, &state).await });
    }
}

async fn http_one(
    mut stream: TcpStream,
    ws_addr: SocketAddr,
    opts: &MockOptions,
    state: &Mutex<Recorded>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut key = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("xi-api-key") {
                key = Some(value.trim().to_owned());
            }
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let agent = query_param(query, "agent_id");
    let (status, body) = {
        let mut s = state.lock().unwrap();
        s.http_requests += 1;
        if !request_line.starts_with("GET ") || path != "/v1/convai/conversation/get-signed-url" {
            s.errors
                .push(format!("http: unexpected request {request_line}"));
            (404, json!({"detail": "Not Found"}))
        } else if agent != Some(opts.agent_id.as_str()) {
            s.errors.push(format!("http: agent_id {agent:?}"));
            (
                422,
                json!({"detail": {"status": "invalid_agent", "message": "agent_id"}}),
            )
        } else if key.is_none() || key.as_deref() != opts.api_key.as_deref() {
            (
                401,
                json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}),
            )
        } else {
            s.http_key_ok += 1;
            (
                200,
                json!({"signed_url": format!(
                    "ws://{ws_addr}/v1/convai/conversation?agent_id={}&conversation_signature={SIGNATURE}",
                    opts.agent_id
                )}),
            )
        }
    };
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Unprocessable Entity",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---- the agent WebSocket ----------------------------------------------------------------

// tungstenite's handshake callback returns its own (large) error type.
#[allow(clippy::result_large_err)]
async fn serve_ws(
    listener: TcpListener,
    opts: Arc<MockOptions>,
    state: Arc<Mutex<Recorded>>,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let check = {
            let opts = opts.clone();
            let state = state.clone();
            move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                let uri = req.uri();
                let query = uri.query().unwrap_or("");
                let mut s = state.lock().unwrap();
                if uri.path() != "/v1/convai/conversation"
                    || query_param(query, "agent_id") != Some(opts.agent_id.as_str())
                {
                    s.errors.push(format!("ws: unexpected target {uri}"));
                }
                if opts.require_signature
                    && query_param(query, "conversation_signature") != Some(SIGNATURE)
                {
                    s.ws_refused += 1;
                    let mut r = ErrorResponse::new(Some(
                        json!({"detail": {"status": "auth_error", "message": "This agent requires authentication"}})
                            .to_string(),
                    ));
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    return Err(r);
                }
                s.ws_connections += 1;
                Ok(resp)
            }
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
            continue;
        };
        // One conversation at a time: the test's commands go to the live one.
        conversation(ws, &opts, &state, &mut cmd_rx).await;
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

struct Conv<'a> {
    opts: &'a MockOptions,
    state: &'a Mutex<Recorded>,
    queue: VecDeque<Out>,
    next_audio: Instant,
    event_id: i64,
    ping_id: i64,
    started: bool,
    /// Client tool calls waiting for a result: id → (name, seconds of the answer).
    tools: HashMap<String, (String, f64)>,
}

/// A queued server message; audio is paced, the rest goes at once.
enum Out {
    Text(String),
    Audio { event_id: i64, b64: String },
}

impl Conv<'_> {
    fn err(&self, e: String) {
        self.state.lock().unwrap().errors.push(e);
    }

    fn queue_response(&mut self, secs: f64) {
        self.event_id += 1;
        let rate = rate_of(self.opts.output_format);
        let samples = speech_like(rate, secs, 100 + self.event_id as u64);
        self.state.lock().unwrap().responses.push(SentResponse {
            event_id: self.event_id,
            samples: samples.clone(),
            first_at: None,
        });
        let per_chunk = rate as usize * CHUNK_MS as usize / 1000;
        for c in samples.chunks(per_chunk) {
            let b64 = base64::engine::general_purpose::STANDARD
                .encode(encode(self.opts.output_format, c));
            self.queue.push_back(Out::Audio {
                event_id: self.event_id,
                b64,
            });
        }
    }

    fn audio_msg(event_id: i64, b64: &str) -> String {
        json!({"type": "audio", "audio_event": {"audio_base_64": b64, "event_id": event_id}})
            .to_string()
    }

    fn on_client(&mut self, text: &str) -> Option<(u16, String)> {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.err(format!("client sent non-JSON ({e}): {text:.100}"));
                return None;
            }
        };
        if !self.started {
            self.started = true;
            return self.on_init(v);
        }
        if let Some(b64) = v.get("user_audio_chunk") {
            if v.as_object().map(|o| o.len()) != Some(1) {
                self.err(format!("user_audio_chunk has other fields: {text:.100}"));
            }
            let Some(bytes) = b64
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            else {
                self.err("user_audio_chunk is not base64".into());
                return None;
            };
            let bps = bytes_per_sample(self.opts.input_format);
            let frame = rate_of(self.opts.input_format) as usize / 50 * bps;
            // Whole samples, at most two 20 ms frames (the resampler may hold one back).
            if bytes.is_empty() || bytes.len() % bps != 0 || bytes.len() > 2 * frame {
                self.err(format!("user_audio_chunk of {} bytes", bytes.len()));
            }
            if bps == 1 && bytes.len() != frame {
                self.err(format!("ulaw_8000 chunk of {} bytes, not 160", bytes.len()));
            }
            let mut s = self.state.lock().unwrap();
            s.chunks_in += 1;
            s.caller.extend(decode(self.opts.input_format, &bytes));
            s.caller_raw.extend_from_slice(&bytes);
            return None;
        }
        match v["type"].as_str() {
            Some("pong") => {
                let mut s = self.state.lock().unwrap();
                let expected = s.pings_sent.get(s.pongs.len()).copied();
                if v.as_object().map(|o| o.len()) != Some(2)
                    || v["event_id"].as_i64().is_none()
                    || v["event_id"].as_i64() != expected
                {
                    s.errors
                        .push(format!("pong {text} does not echo ping {expected:?}"));
                }
                s.pongs.push(v["event_id"].clone());
            }
            Some("client_tool_result") => self.on_tool_result(v),
            Some("user_activity") | Some("contextual_update") => {}
            Some("user_message") => match v["text"].as_str() {
                Some(t) if v.as_object().map(|o| o.len()) == Some(2) => {
                    self.state.lock().unwrap().user_messages.push(t.to_owned());
                }
                _ => self.err(format!("user_message without a text: {text:.200}")),
            },
            _ => self.err(format!("unexpected client message {text:.200}")),
        }
        None
    }

    fn on_tool_result(&mut self, v: Value) {
        let mut problems = Vec::new();
        if let Some(o) = v.as_object() {
            for k in o.keys() {
                if !["type", "tool_call_id", "result", "is_error"].contains(&k.as_str()) {
                    problems.push(format!("unknown field {k}"));
                }
            }
        }
        if !v["result"].is_string() {
            problems.push(format!("result is not a string: {}", v["result"]));
        }
        if !v["is_error"].is_boolean() {
            problems.push(format!("is_error is not a bool: {}", v["is_error"]));
        }
        let id = v["tool_call_id"].as_str().unwrap_or("").to_owned();
        let answer = self.tools.remove(&id);
        if answer.is_none() {
            let sent = self.state.lock().unwrap().tool_calls.contains(&id);
            problems.push(if sent {
                format!("second result for {id}")
            } else {
                format!("tool_call_id {id:?} was never called")
            });
        }
        for p in problems {
            self.err(format!("client_tool_result: {p}"));
        }
        let answer_event_id = answer.map(|(_, secs)| {
            self.queue.push_back(Out::Text(
                json!({"type": "agent_response", "agent_response_event": {"agent_response": "All done."}})
                    .to_string(),
            ));
            self.queue_response(secs);
            self.event_id
        });
        self.state
            .lock()
            .unwrap()
            .tool_results
            .push(ToolResultRecord {
                msg: v,
                at: Instant::now(),
                answer_event_id,
            });
    }

    fn on_init(&mut self, v: Value) -> Option<(u16, String)> {
        if v["type"] != "conversation_initiation_client_data" {
            self.err(format!("first message is not the initiation: {v}"));
        }
        if v.get("conversation_config_override") != self.opts.expect_override.as_ref() {
            self.err(format!(
                "conversation_config_override {:?}, expected {:?}",
                v.get("conversation_config_override"),
                self.opts.expect_override
            ));
        }
        match v["dynamic_variables"].as_object() {
            None => self.err("dynamic_variables missing".into()),
            Some(vars) => {
                if vars.values().any(|x| !x.is_string()) {
                    self.err(format!("dynamic_variables not all strings: {vars:?}"));
                }
                for (k, want) in &self.opts.expect_vars {
                    if vars.get(k).and_then(|x| x.as_str()) != Some(want.as_str()) {
                        self.err(format!("dynamic_variables[{k}] = {:?}", vars.get(k)));
                    }
                }
            }
        }
        if let Some(o) = v.as_object() {
            for k in o.keys() {
                if ![
                    "type",
                    "conversation_config_override",
                    "dynamic_variables",
                    "custom_llm_extra_body",
                    "user_id",
                ]
                .contains(&k.as_str())
                {
                    self.err(format!("unknown initiation field {k}"));
                }
            }
        }
        self.state.lock().unwrap().init = Some(v.clone());
        if let Some((code, reason, error_type)) = self.opts.close_on_init.clone() {
            self.queue.push_back(Out::Text(
                json!({"type": "error", "error_event": {
                    "code": code, "message": reason, "error_type": error_type,
                    "reason": reason}})
                .to_string(),
            ));
            return Some((code, reason));
        }
        self.queue.push_back(Out::Text(
            json!({"type": "conversation_initiation_metadata",
                   "conversation_initiation_metadata_event": {
                       "conversation_id": "conv_mock_1",
                       "agent_output_audio_format": self.opts.output_format,
                       "user_input_audio_format": self.opts.input_format}})
            .to_string(),
        ));
        // Optional events a client must ignore.
        self.queue.push_back(Out::Text(
            json!({"type": "context_usage", "context_usage_event": {"used": 12}}).to_string(),
        ));
        if self.opts.greeting_secs > 0.0 {
            let text = v["conversation_config_override"]["agent"]["first_message"]
                .as_str()
                .unwrap_or("Hello from the agent")
                .to_owned();
            self.queue.push_back(Out::Text(
                json!({"type": "agent_response", "agent_response_event": {"agent_response": text}})
                    .to_string(),
            ));
            self.queue_response(self.opts.greeting_secs);
        }
        None
    }

    fn on_cmd(&mut self, cmd: Cmd) -> Option<(u16, String)> {
        match cmd {
            Cmd::Transcript(t) => self.queue.push_back(Out::Text(transcript(&t))),
            Cmd::Respond {
                transcript: t,
                secs,
            } => {
                if let Some(t) = t {
                    self.queue.push_back(Out::Text(
                        json!({"type": "vad_score", "vad_score_event": {"vad_score": 0.93}})
                            .to_string(),
                    ));
                    self.queue.push_back(Out::Text(transcript(&t)));
                }
                self.queue.push_back(Out::Text(
                    json!({"type": "internal_tentative_agent_response",
                           "tentative_agent_response_internal_event": {"tentative_agent_response": "Sure"}})
                    .to_string(),
                ));
                self.queue.push_back(Out::Text(
                    json!({"type": "agent_response", "agent_response_event": {"agent_response": "Sure, here it is."}})
                        .to_string(),
                ));
                self.queue_response(secs);
            }
            Cmd::BargeIn => {
                // The rest of the response is never sent.
                self.queue.retain(|o| !matches!(o, Out::Audio { .. }));
                let k = self.event_id;
                let rate = rate_of(self.opts.output_format);
                let tone = sine(rate, 1000.0, -6.0, rate as usize / 10);
                let b64 = base64::engine::general_purpose::STANDARD
                    .encode(encode(self.opts.output_format, &tone));
                let mut msgs = vec![
                    json!({"type": "interruption", "interruption_event": {"event_id": k}})
                        .to_string(),
                    json!({"type": "agent_response_correction", "agent_response_correction_event": {
                        "original_agent_response": "Sure, here it is.",
                        "corrected_agent_response": "Sure"}})
                    .to_string(),
                ];
                for id in [k - 1, k, k, k] {
                    msgs.push(Self::audio_msg(id, &b64));
                }
                let mut s = self.state.lock().unwrap();
                s.barge_at = Some(Instant::now());
                s.interruption_id = Some(k);
                s.late_events_sent += 4;
                drop(s);
                // Ahead of anything queued: the interruption goes now.
                for m in msgs.into_iter().rev() {
                    self.queue.push_front(Out::Text(m));
                }
            }
            Cmd::Close(code, reason) => return Some((code, reason)),
            Cmd::ToolCall {
                transcript: t,
                before_secs,
                tool_name,
                tool_call_id,
                parameters,
                after_secs,
            } => {
                if let Some(t) = t {
                    self.queue.push_back(Out::Text(transcript(&t)));
                }
                if before_secs > 0.0 {
                    self.queue.push_back(Out::Text(
                        json!({"type": "agent_response", "agent_response_event": {"agent_response": "Let me check."}})
                            .to_string(),
                    ));
                    self.queue_response(before_secs);
                }
                // Queued behind the speech: sent once it has gone out.
                self.queue.push_back(Out::Text(
                    json!({"type": "client_tool_call", "client_tool_call": {
                        "tool_name": tool_name, "tool_call_id": tool_call_id,
                        "parameters": parameters}})
                    .to_string(),
                ));
                self.state
                    .lock()
                    .unwrap()
                    .tool_calls
                    .push(tool_call_id.clone());
                self.tools.insert(tool_call_id, (tool_name, after_secs));
            }
        }
        None
    }
}

fn transcript(t: &str) -> String {
    json!({"type": "user_transcript", "user_transcription_event": {"user_transcript": t}})
        .to_string()
}

async fn conversation(
    mut ws: Ws,
    opts: &MockOptions,
    state: &Mutex<Recorded>,
    cmd_rx: &mut mpsc::UnboundedReceiver<Cmd>,
) {
    let mut c = Conv {
        opts,
        state,
        queue: VecDeque::new(),
        next_audio: Instant::now(),
        event_id: 0,
        ping_id: 0,
        started: false,
        tools: HashMap::new(),
    };
    let mut ping = tokio::time::interval(opts.ping_every);
    ping.tick().await;
    let gap = Duration::from_millis(CHUNK_MS / SPEEDUP);
    let close: Option<(u16, String)> = loop {
        let due = c.queue.front().map(|o| match o {
            Out::Text(_) => Instant::now(),
            Out::Audio { .. } => c.next_audio,
        });
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Some(cl) = c.on_client(t.as_str()) {
                        // Flush what the init queued (the error event), then close.
                        while let Some(Out::Text(m)) = c.queue.pop_front() {
                            let _ = ws.send(Message::text(m)).await;
                        }
                        break Some(cl);
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    state.lock().unwrap().client_closed = Some(f.map(|f| u16::from(f.code)));
                    break None;
                }
                Some(Ok(Message::Binary(_))) => c.err("client sent a binary message".into()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    state.lock().unwrap().client_closed = Some(None);
                    break None;
                }
            },
            cmd = cmd_rx.recv() => match cmd {
                Some(cmd) => if let Some(cl) = c.on_cmd(cmd) { break Some(cl) },
                None => break Some((1000, "test over".into())),
            },
            _ = ping.tick(), if c.started => {
                c.ping_id += 1;
                state.lock().unwrap().pings_sent.push(c.ping_id);
                let m = json!({"type": "ping", "ping_event": {"event_id": c.ping_id, "ping_ms": 42}});
                let _ = ws.send(Message::text(m.to_string())).await;
            }
            _ = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                match c.queue.pop_front() {
                    Some(Out::Text(m)) => { let _ = ws.send(Message::text(m)).await; }
                    Some(Out::Audio { event_id, b64 }) => {
                        let now = Instant::now();
                        {
                            let mut s = state.lock().unwrap();
                            if let Some(r) = s.responses.iter_mut().find(|r| r.event_id == event_id) {
                                r.first_at.get_or_insert(now);
                            }
                        }
                        let _ = ws.send(Message::text(Conv::audio_msg(event_id, &b64))).await;
                        c.next_audio = now + gap;
                    }
                    None => {}
                }
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = ws.send(Message::Close(Some(frame))).await;
        // Drain until the client's Close echo / EOF.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}
