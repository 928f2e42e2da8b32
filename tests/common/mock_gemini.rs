//! A mock Gemini Live server (`BidiGenerateContent`) that speaks the wire protocol of
//! `docs/protocols/gemini-live.md`: camelCase JSON, server messages in binary frames (as
//! the real service sends them), the whole order of a typical turn (input transcription,
//! `modelTurn` parts in bursts, output transcription, `generationComplete`,
//! `turnComplete` + `usageMetadata`, `sessionResumptionUpdate`), `interrupted`,
//! `goAway`, close codes, refused upgrades.
//!
//! It validates every client message (recorded as violations, which tests assert empty)
//! and records the decoded caller audio per connection. The test scripts it: play a turn,
//! interrupt it, issue a resumption handle, send `goAway`, close with a code, call a
//! function (`toolCall`, optionally after some audio of the same turn; the model then
//! waits for the `toolResponse` and goes on with audio and `turnComplete`), cancel calls
//! (`toolCallCancellation`).
//!
//! Tools are checked as Google checks them: declarations in `setup.tools[].
//! functionDeclarations` with `parameters` in the OpenAPI subset (upper-case types, no
//! `additionalProperties`, an OBJECT's `properties` non-empty); every `toolResponse`
//! answers a call issued on that connection, not cancelled, not answered before, with
//! the call's name and a `response` object.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::daemon::HANG_GUARD;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
pub const MOCK_PATH: &str =
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

/// How the mock behaves on its own (everything else is scripted by the test).
#[derive(Clone)]
pub struct MockOptions {
    /// The API key the `x-goog-api-key` header must carry.
    pub key: String,
    /// Refuse every upgrade with this status and JSON body.
    pub refuse: Option<(u16, String)>,
    /// How long the server "thinks" before `setupComplete` (caller audio is already
    /// flowing at FreeSWITCH: none of it may arrive before).
    pub setup_delay: Duration,
    /// The same for a connection that resumes a session (real resumptions are slower
    /// than a fresh setup; a long one shows whether the old connection kept playing).
    pub resume_setup_delay: Duration,
    /// 24 kHz audio answered to the greeting instruction (once per call).
    pub greeting_reply: Option<Vec<i16>>,
    /// `languageCode` the setup must carry (`None`: must be absent).
    pub language: Option<String>,
    pub voice: String,
}

impl MockOptions {
    pub fn new(key: &str) -> Self {
        MockOptions {
            key: key.to_owned(),
            refuse: None,
            setup_delay: Duration::from_millis(300),
            resume_setup_delay: Duration::from_millis(300),
            greeting_reply: None,
            language: None,
            voice: "Kore".to_owned(),
        }
    }
}

/// What one connection received.
#[derive(Default, Clone, Debug)]
pub struct ConnRecord {
    pub key_header: Option<String>,
    pub path: String,
    pub setup: Option<Value>,
    /// The resumption handle its setup carried.
    pub resumed_with: Option<String>,
    pub ready_at: Option<Instant>,
    /// Decoded caller audio (PCM16 16 kHz) in arrival order.
    pub caller: Vec<i16>,
    pub caller_bytes: usize,
    pub audio_messages: usize,
    /// Text turns: the greeting, the goodbye, key presses (`clientContent` or
    /// `realtimeInput.text`).
    pub greetings: Vec<Value>,
    pub closed: bool,
}

/// A function call the mock model made.
#[derive(Clone, Debug)]
pub struct IssuedCall {
    pub conn: usize,
    pub id: String,
    pub name: String,
    pub cancelled: bool,
}

/// One `functionResponses[]` entry of a client `toolResponse`, as received.
#[derive(Clone, Debug)]
pub struct ToolResponseRecord {
    pub conn: usize,
    pub id: String,
    pub name: String,
    /// `response` (`{"output": ...}` or `{"error": ...}`).
    pub response: Value,
    /// `scheduling` (NON_BLOCKING calls of 3.x models), when sent.
    pub scheduling: Option<String>,
    pub at: Instant,
}

/// A model turn that calls functions: `caller_text` (input transcription), `before`
/// (audio of the turn before the call, may be empty), `toolCall` with `calls`, then —
/// once every call not cancelled has its `toolResponse` — `after` as the rest of the
/// turn, ending with `generationComplete` / `turnComplete`.
#[derive(Clone)]
pub struct ToolTurn {
    pub caller_text: Option<String>,
    pub before: Vec<i16>,
    /// (id, name, args)
    pub calls: Vec<(String, String, Value)>,
    pub after: Vec<i16>,
    pub after_text: String,
    pub speed: f64,
}

impl ToolTurn {
    pub fn new(id: &str, name: &str, args: Value, after: Vec<i16>) -> ToolTurn {
        ToolTurn {
            caller_text: Some("I would like an appointment on Monday.".to_owned()),
            before: Vec::new(),
            calls: vec![(id.to_owned(), name.to_owned(), args)],
            after,
            after_text: "You are booked for Monday at ten.".to_owned(),
            speed: 4.0,
        }
    }
}

#[derive(Default)]
pub struct Log {
    pub conns: Vec<ConnRecord>,
    pub violations: Vec<String>,
    /// When the first `modelTurn` message of each played turn was sent.
    pub turn_starts: Vec<Instant>,
    pub interrupted_at: Vec<Instant>,
    /// The latest handle issued by `sessionResumptionUpdate`.
    pub latest_handle: Option<String>,
    pub upgrades_refused: usize,
    pub tool_calls: Vec<IssuedCall>,
    pub tool_responses: Vec<ToolResponseRecord>,
}

enum Out {
    Json(Value),
    Close(u16, String),
}

struct Shared {
    opts: MockOptions,
    log: Mutex<Log>,
    /// Writers of the connections, by index (`None` once closed).
    writers: Mutex<Vec<Option<mpsc::UnboundedSender<Out>>>>,
    changed: Notify,
    greeted: AtomicBool,
    handles: Mutex<u32>,
}

#[derive(Clone)]
pub struct MockGemini {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Which connection a scripted message goes to.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The newest connection whose setup is complete, looked up at every message (so a
    /// turn being played follows the session to a resumed connection).
    Latest,
    Index(usize),
}

/// A model turn to play.
#[derive(Clone)]
pub struct TurnSpec {
    /// 24 kHz PCM16.
    pub audio: Vec<i16>,
    /// Real-time factor of the bursts (4.0: a second of audio every 250 ms).
    pub speed: f64,
    pub caller_text: Option<String>,
    pub assistant_text: String,
    /// End with generationComplete / turnComplete / sessionResumptionUpdate.
    pub complete: bool,
    pub target: Target,
}

impl TurnSpec {
    pub fn new(audio: Vec<i16>) -> Self {
        TurnSpec {
            audio,
            speed: 4.0,
            caller_text: Some("Can you hear me?".to_owned()),
            assistant_text: "Yes, I can hear you.".to_owned(),
            complete: true,
            target: Target::Latest,
        }
    }
}

/// A turn being played in the background.
pub struct Playing {
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
    mock: MockGemini,
}

impl Playing {
    /// Waits for the whole turn to be sent.
    pub async fn finish(self) {
        tokio::time::timeout(HANG_GUARD, self.task)
            .await
            .expect("turn finished")
            .expect("turn task");
    }

    /// Barge-in as Gemini does it: generation stops, `interrupted: true`, then (on
    /// purpose) a few late audio parts of the same turn, then `turnComplete`.
    pub async fn interrupt(self, late: &[i16]) {
        self.interrupt_with(late, true).await
    }

    /// [`Playing::interrupt`], with the `turnComplete` left out when `complete` is
    /// false (late or lost, as peers of Gemini have seen).
    pub async fn interrupt_with(self, late: &[i16], complete: bool) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(HANG_GUARD, self.task)
            .await
            .expect("turn stopped")
            .expect("turn task");
        let m = self.mock;
        m.shared
            .log
            .lock()
            .unwrap()
            .interrupted_at
            .push(Instant::now());
        m.send(
            Target::Latest,
            json!({"serverContent": {"interrupted": true}}),
        );
        for chunk in late.chunks(2400) {
            m.send(Target::Latest, audio_message(&[chunk]));
        }
        if !complete {
            return;
        }
        m.send(
            Target::Latest,
            json!({"serverContent": {"turnComplete": true}}),
        );
    }
}

pub fn audio_message(parts: &[&[i16]]) -> Value {
    let parts: Vec<Value> = parts
        .iter()
        .map(|p| {
            let bytes: Vec<u8> = p.iter().flat_map(|s| s.to_le_bytes()).collect();
            json!({"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": B64.encode(bytes)}})
        })
        .collect();
    json!({"serverContent": {"modelTurn": {"parts": parts}}})
}

impl MockGemini {
    pub async fn start(opts: MockOptions) -> MockGemini {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            opts,
            log: Mutex::new(Log::default()),
            writers: Mutex::new(Vec::new()),
            changed: Notify::new(),
            greeted: AtomicBool::new(false),
            handles: Mutex::new(0),
        });
        let mock = MockGemini { addr, shared };
        let m = mock.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let m = m.clone();
                tokio::spawn(async move { m.serve(tcp).await });
            }
        });
        mock
    }

    /// The URL for `VOICEBRIDGE__PROVIDERS__GEMINI__URL`.
    pub fn url(&self) -> String {
        format!("ws://{}{MOCK_PATH}", self.addr)
    }

    pub fn log<R>(&self, f: impl FnOnce(&Log) -> R) -> R {
        f(&self.shared.log.lock().unwrap())
    }

    pub fn violations(&self) -> Vec<String> {
        self.log(|l| l.violations.clone())
    }

    pub fn conns(&self) -> Vec<ConnRecord> {
        self.log(|l| l.conns.clone())
    }

    fn violation(&self, v: String) {
        eprintln!("mock gemini violation: {v}");
        self.shared.log.lock().unwrap().violations.push(v);
    }

    /// Waits until `pred` holds on the log (an event, not a sleep).
    pub async fn wait(&self, what: &str, pred: impl Fn(&Log) -> bool) {
        let wait = async {
            loop {
                let notified = self.shared.changed.notified();
                if self.log(&pred) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(HANG_GUARD, wait).await.is_err() {
            panic!("mock gemini: {what} never happened");
        }
    }

    /// Waits until `n` connections completed their setup.
    pub async fn wait_ready(&self, n: usize) {
        self.wait(&format!("{n} ready connection(s)"), |l| {
            l.conns.iter().filter(|c| c.ready_at.is_some()).count() >= n
        })
        .await;
    }

    /// Waits until connection `i` is closed.
    pub async fn wait_closed(&self, i: usize) {
        self.wait(&format!("connection {i} closed"), |l| {
            l.conns.get(i).is_some_and(|c| c.closed)
        })
        .await;
    }

    fn resolve(&self, target: Target) -> Option<usize> {
        match target {
            Target::Index(i) => Some(i),
            Target::Latest => self.log(|l| {
                l.conns
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, c)| c.ready_at.is_some() && !c.closed)
                    .map(|(i, _)| i)
            }),
        }
    }

    /// Sends one server message (JSON in a binary frame, as Gemini does).
    pub fn send(&self, target: Target, msg: Value) {
        self.out(target, Out::Json(msg));
    }

    fn out(&self, target: Target, out: Out) {
        let Some(i) = self.resolve(target) else {
            panic!("mock gemini: no connection for {target:?}");
        };
        if let Some(Some(w)) = self.shared.writers.lock().unwrap().get(i) {
            let _ = w.send(out);
        }
    }

    /// Closes a connection with a WebSocket close code (Gemini's only error channel).
    pub fn close(&self, target: Target, code: u16, reason: &str) {
        self.out(target, Out::Close(code, reason.to_owned()));
    }

    /// Issues a new resumption handle on the latest connection; returns it.
    pub fn resumption_update(&self) -> String {
        let n = {
            let mut h = self.shared.handles.lock().unwrap();
            *h += 1;
            *h
        };
        let handle = format!("handle-{n}-{}", self.addr.port());
        self.shared.log.lock().unwrap().latest_handle = Some(handle.clone());
        self.send(
            Target::Latest,
            json!({"sessionResumptionUpdate": {"newHandle": handle, "resumable": true}}),
        );
        handle
    }

    /// The model calls functions: `{"toolCall":{"functionCalls":[{"id","name","args"}]}}`
    /// on `target` (its connection owns the ids). Returns the connection index.
    pub fn tool_call(&self, target: Target, calls: &[(&str, &str, Value)]) -> usize {
        let Some(conn) = self.resolve(target) else {
            panic!("mock gemini: no connection for {target:?}");
        };
        let functions: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| json!({"id": id, "name": name, "args": args}))
            .collect();
        {
            let mut log = self.shared.log.lock().unwrap();
            for (id, name, _) in calls {
                log.tool_calls.push(IssuedCall {
                    conn,
                    id: (*id).to_owned(),
                    name: (*name).to_owned(),
                    cancelled: false,
                });
            }
        }
        self.send(
            Target::Index(conn),
            json!({"toolCall": {"functionCalls": functions}}),
        );
        conn
    }

    /// `{"toolCallCancellation":{"ids":[...]}}` on the connection that made the calls.
    pub fn cancel_tool_calls(&self, ids: &[&str]) {
        let conn = {
            let mut log = self.shared.log.lock().unwrap();
            let mut conn = None;
            for c in log
                .tool_calls
                .iter_mut()
                .filter(|c| ids.contains(&c.id.as_str()))
            {
                c.cancelled = true;
                conn = Some(c.conn);
            }
            conn.expect("cancelling calls that were made")
        };
        self.shared.changed.notify_waiters();
        self.send(
            Target::Index(conn),
            json!({"toolCallCancellation": {"ids": ids}}),
        );
    }

    pub fn tool_responses(&self) -> Vec<ToolResponseRecord> {
        self.log(|l| l.tool_responses.clone())
    }

    /// Waits for the client's response to call `id`.
    pub async fn wait_tool_response(&self, id: &str) -> ToolResponseRecord {
        self.wait(&format!("toolResponse for {id}"), |l| {
            l.tool_responses.iter().any(|r| r.id == id)
        })
        .await;
        self.log(|l| l.tool_responses.iter().find(|r| r.id == id).cloned())
            .expect("recorded")
    }

    /// Plays a turn that calls functions (see [`ToolTurn`]) on the latest connection, in
    /// the background; the task returns the responses to its calls.
    pub fn play_tool_turn(&self, turn: ToolTurn) -> JoinHandle<Vec<ToolResponseRecord>> {
        let m = self.clone();
        tokio::spawn(async move {
            let conn = m.resolve(Target::Latest).expect("a ready connection");
            let t = Target::Index(conn);
            if let Some(text) = &turn.caller_text {
                m.send(
                    t,
                    json!({"serverContent": {"inputTranscription": {"text": text}}}),
                );
            }
            if !turn.before.is_empty() {
                let mut spec = TurnSpec::new(turn.before.clone());
                spec.caller_text = None;
                spec.assistant_text = "Let me check that for you.".to_owned();
                spec.complete = false;
                spec.speed = turn.speed;
                spec.target = t;
                m.play_turn(spec, Arc::new(AtomicBool::new(false))).await;
            }
            let calls: Vec<(&str, &str, Value)> = turn
                .calls
                .iter()
                .map(|(id, name, args)| (id.as_str(), name.as_str(), args.clone()))
                .collect();
            m.tool_call(t, &calls);
            let ids: Vec<String> = turn.calls.iter().map(|c| c.0.clone()).collect();
            // The model waits for every call it still wants.
            m.wait("tool responses", |l| {
                ids.iter().all(|id| {
                    l.tool_responses.iter().any(|r| &r.id == id)
                        || l.tool_calls.iter().any(|c| &c.id == id && c.cancelled)
                })
            })
            .await;
            let responses: Vec<ToolResponseRecord> = m.log(|l| {
                l.tool_responses
                    .iter()
                    .filter(|r| ids.contains(&r.id))
                    .cloned()
                    .collect()
            });
            if responses.is_empty() {
                // Everything was withdrawn (barge-in): the turn does not go on.
                return responses;
            }
            let mut spec = TurnSpec::new(turn.after.clone());
            spec.caller_text = None;
            spec.assistant_text = turn.after_text.clone();
            spec.speed = turn.speed;
            spec.target = t;
            m.play_turn(spec, Arc::new(AtomicBool::new(false))).await;
            responses
        })
    }

    pub fn go_away(&self, time_left: &str) {
        self.send(Target::Latest, json!({"goAway": {"timeLeft": time_left}}));
    }

    /// Plays a model turn in the background.
    pub fn play(&self, spec: TurnSpec) -> Playing {
        let stop = Arc::new(AtomicBool::new(false));
        let m = self.clone();
        let flag = stop.clone();
        let task = tokio::spawn(async move { m.play_turn(spec, flag).await });
        Playing {
            stop,
            task,
            mock: self.clone(),
        }
    }

    async fn play_turn(&self, spec: TurnSpec, stop: Arc<AtomicBool>) {
        let t = spec.target;
        if let Some(text) = &spec.caller_text {
            self.send(
                t,
                json!({"serverContent": {"inputTranscription": {"text": text}}}),
            );
        }
        // Parts of 40, 60 and 100 ms; 1-3 parts per message.
        let sizes = [960usize, 1440, 2400];
        let words: Vec<&str> = spec.assistant_text.split_inclusive(' ').collect();
        let mut pos = 0;
        let mut msg_no = 0usize;
        let mut clock = Instant::now();
        while pos < spec.audio.len() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let mut parts: Vec<&[i16]> = Vec::new();
            for k in 0..=(msg_no % 3) {
                if pos >= spec.audio.len() {
                    break;
                }
                let n = sizes[(msg_no + k) % 3].min(spec.audio.len() - pos);
                parts.push(&spec.audio[pos..pos + n]);
                pos += n;
            }
            let samples: usize = parts.iter().map(|p| p.len()).sum();
            if msg_no == 0 {
                self.shared
                    .log
                    .lock()
                    .unwrap()
                    .turn_starts
                    .push(Instant::now());
            }
            self.send(t, audio_message(&parts));
            if let Some(w) = words.get(msg_no) {
                self.send(
                    t,
                    json!({"serverContent": {"outputTranscription": {"text": w}}}),
                );
            }
            msg_no += 1;
            clock += Duration::from_secs_f64(samples as f64 / 24000.0 / spec.speed);
            tokio::time::sleep_until(clock).await;
        }
        if !spec.complete {
            return;
        }
        self.send(t, json!({"serverContent": {"generationComplete": true}}));
        self.send(
            t,
            json!({"serverContent": {"turnComplete": true},
                   "usageMetadata": {"promptTokenCount": 100, "responseTokenCount": 40, "totalTokenCount": 140,
                       "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 40}]}}),
        );
        self.resumption_update();
    }

    // ---- the server side of one connection ------------------------------------------

    async fn serve(self, tcp: TcpStream) {
        let opts = self.shared.opts.clone();
        let (req_tx, req_rx) = std::sync::mpsc::channel();
        let refuse = opts.refuse.clone();
        // The signature is tungstenite's; its error type is an HTTP response.
        #[allow(clippy::result_large_err)]
        let callback = move |req: &Request, resp: Response| {
            let key = req
                .headers()
                .get("x-goog-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let path = req.uri().to_string();
            let _ = req_tx.send((key, path));
            match refuse {
                Some((status, body)) => {
                    let mut r = ErrorResponse::new(Some(body));
                    *r.status_mut() = StatusCode::from_u16(status).unwrap();
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Err(r)
                }
                None => Ok(resp),
            }
        };
        let ws = tokio_tungstenite::accept_hdr_async(tcp, callback).await;
        let (key, path) = req_rx.try_recv().unwrap_or_default();
        let ws = match ws {
            Ok(ws) => ws,
            Err(_) => {
                self.shared.log.lock().unwrap().upgrades_refused += 1;
                self.shared.changed.notify_waiters();
                return;
            }
        };
        if key.as_deref() != Some(opts.key.as_str()) {
            self.violation(format!("x-goog-api-key header is {key:?}"));
        }
        if path != MOCK_PATH {
            self.violation(format!("unexpected path {path}"));
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
        let index = {
            let mut log = self.shared.log.lock().unwrap();
            let mut writers = self.shared.writers.lock().unwrap();
            log.conns.push(ConnRecord {
                key_header: key,
                path,
                ..ConnRecord::default()
            });
            writers.push(Some(tx.clone()));
            log.conns.len() - 1
        };
        let (mut sink, mut stream) = ws.split();
        let writer = tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let msg = match out {
                    Out::Json(v) => Message::Binary(v.to_string().into()),
                    Out::Close(code, reason) => Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    })),
                };
                let close = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() || close {
                    break;
                }
            }
        });
        let mut first = true;
        let ready = Arc::new(AtomicBool::new(false));
        while let Some(Ok(msg)) = stream.next().await {
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Binary(_) => {
                    self.violation(format!("conn {index}: binary frame from the client"));
                    continue;
                }
                Message::Close(_) => break,
                _ => continue,
            };
            let v: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    self.violation(format!("conn {index}: not JSON ({e}): {text:.100}"));
                    continue;
                }
            };
            if first {
                first = false;
                self.on_setup(index, &v, &tx, ready.clone()).await;
                continue;
            }
            self.on_client_message(index, &v, ready.load(Ordering::SeqCst));
        }
        {
            let mut log = self.shared.log.lock().unwrap();
            log.conns[index].closed = true;
            self.shared.writers.lock().unwrap()[index] = None;
        }
        self.shared.changed.notify_waiters();
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }

    async fn on_setup(
        &self,
        index: usize,
        v: &Value,
        tx: &mpsc::UnboundedSender<Out>,
        ready: Arc<AtomicBool>,
    ) {
        let Some(setup) = v.get("setup").filter(|_| one_key(v)) else {
            self.violation(format!(
                "conn {index}: first message is not setup: {v:.200}"
            ));
            let _ = tx.send(Out::Close(
                1007,
                "Request contains an invalid argument.".into(),
            ));
            return;
        };
        let mut problems = Vec::new();
        check_camel(setup, "setup", &mut problems);
        let o = &self.shared.opts;
        let model = setup["model"].as_str().unwrap_or("");
        if !model.starts_with("models/") || model.len() <= 7 {
            problems.push(format!("model {model:?} is not models/<id>"));
        }
        let g = &setup["generationConfig"];
        if g["responseModalities"] != json!(["AUDIO"]) {
            problems.push("generationConfig.responseModalities is not [AUDIO]".into());
        }
        let speech = &g["speechConfig"];
        if speech["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"] != json!(o.voice) {
            problems.push(format!("voiceName is {}", speech["voiceConfig"]));
        }
        match &o.language {
            Some(l) if speech["languageCode"] != json!(l) => {
                problems.push(format!("languageCode is {}", speech["languageCode"]))
            }
            None if speech.get("languageCode").is_some() => {
                problems.push("languageCode sent without a language".into())
            }
            _ => {}
        }
        for misplaced in ["responseModalities", "speechConfig"] {
            if setup.get(misplaced).is_some() {
                problems.push(format!(
                    "{misplaced} at setup level (belongs in generationConfig)"
                ));
            }
        }
        for misplaced in [
            "realtimeInputConfig",
            "sessionResumption",
            "contextWindowCompression",
        ] {
            if g.get(misplaced).is_some() {
                problems.push(format!("{misplaced} inside generationConfig"));
            }
        }
        let ric = &setup["realtimeInputConfig"];
        if !ric["automaticActivityDetection"].is_object()
            || ric["automaticActivityDetection"]["disabled"] == json!(true)
        {
            problems.push("automaticActivityDetection missing or disabled".into());
        }
        // The two documented values voicebridge uses: the server cuts its reply on the
        // caller's speech, or (barge-in guard) never does.
        if ric["activityHandling"] != "START_OF_ACTIVITY_INTERRUPTS"
            && ric["activityHandling"] != "NO_INTERRUPTION"
        {
            problems.push(
                "activityHandling is neither START_OF_ACTIVITY_INTERRUPTS nor NO_INTERRUPTION"
                    .into(),
            );
        }
        for empty in ["inputAudioTranscription", "outputAudioTranscription"] {
            if setup[empty] != json!({}) {
                problems.push(format!("{empty} is not {{}}"));
            }
        }
        if !setup["contextWindowCompression"]["slidingWindow"].is_object() {
            problems.push("contextWindowCompression.slidingWindow missing".into());
        }
        if !setup["systemInstruction"]["parts"][0]["text"].is_string() {
            problems.push("systemInstruction.parts[0].text missing".into());
        }
        if let Some(tools) = setup.get("tools") {
            check_tools(tools, &mut problems);
        }
        let resumption = &setup["sessionResumption"];
        let handle = match resumption {
            Value::Object(m) if m.is_empty() => None,
            Value::Object(m) => m.get("handle").and_then(Value::as_str).map(str::to_owned),
            _ => {
                problems.push("sessionResumption missing".into());
                None
            }
        };
        for p in problems {
            self.violation(format!("conn {index}: setup: {p}"));
        }
        let latest = self.log(|l| l.latest_handle.clone());
        {
            let mut log = self.shared.log.lock().unwrap();
            log.conns[index].setup = Some(setup.clone());
            log.conns[index].resumed_with = handle.clone();
        }
        if handle.is_some() && handle != latest {
            // Only the latest handle resumes the session.
            self.violation(format!(
                "conn {index}: resumption handle {handle:?}, latest is {latest:?}"
            ));
            let _ = tx.send(Out::Close(
                1007,
                "Invalid session resumption handle.".into(),
            ));
            return;
        }
        let delay = if handle.is_some() {
            o.resume_setup_delay
        } else {
            o.setup_delay
        };
        let tx = tx.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The flag first: the client cannot answer before it receives the message.
            ready.store(true, Ordering::SeqCst);
            let _ = tx.send(Out::Json(json!({"setupComplete": {}})));
            // Then `Target::Latest` may pick this connection: scripted messages queue
            // behind setupComplete.
            shared.log.lock().unwrap().conns[index].ready_at = Some(Instant::now());
            shared.changed.notify_waiters();
        });
    }

    fn on_client_message(&self, index: usize, v: &Value, ready: bool) {
        if !one_key(v) {
            self.violation(format!("conn {index}: not exactly one member: {v:.200}"));
            return;
        }
        if let Some(ri) = v.get("realtimeInput") {
            if !ready {
                self.violation(format!("conn {index}: realtimeInput before setupComplete"));
            }
            if let Some(audio) = ri.get("audio") {
                self.on_audio(index, audio);
            } else if let Some(text) = ri.get("text") {
                self.on_greeting(index, json!({"realtimeInput": {"text": text}}));
            } else {
                self.violation(format!("conn {index}: unexpected realtimeInput {ri:.200}"));
            }
            return;
        }
        if let Some(cc) = v.get("clientContent") {
            if !ready {
                self.violation(format!("conn {index}: clientContent before setupComplete"));
            }
            let turn = &cc["turns"][0];
            if turn["role"] != "user"
                || !turn["parts"][0]["text"].is_string()
                || cc["turnComplete"] != json!(true)
            {
                self.violation(format!("conn {index}: bad clientContent {cc}"));
            }
            self.on_greeting(index, v.clone());
            return;
        }
        if v.get("setup").is_some() {
            self.violation(format!("conn {index}: second setup"));
            return;
        }
        if let Some(tr) = v.get("toolResponse") {
            if !ready {
                self.violation(format!("conn {index}: toolResponse before setupComplete"));
            }
            self.on_tool_response(index, tr);
            return;
        }
        self.violation(format!("conn {index}: unknown client message {v:.200}"));
    }

    fn on_audio(&self, index: usize, audio: &Value) {
        if audio["mimeType"] != "audio/pcm;rate=16000" {
            self.violation(format!(
                "conn {index}: audio mimeType {}",
                audio["mimeType"]
            ));
        }
        let bytes = match B64.decode(audio["data"].as_str().unwrap_or("")) {
            Ok(b) => b,
            Err(e) => {
                self.violation(format!("conn {index}: audio data is not base64: {e}"));
                return;
            }
        };
        if bytes.len() % 2 != 0 || bytes.is_empty() {
            self.violation(format!("conn {index}: audio of {} bytes", bytes.len()));
        }
        let mut log = self.shared.log.lock().unwrap();
        let c = &mut log.conns[index];
        c.audio_messages += 1;
        c.caller_bytes += bytes.len();
        c.caller.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
        drop(log);
        self.shared.changed.notify_waiters();
    }

    fn on_tool_response(&self, index: usize, tr: &Value) {
        let list = match tr.get("functionResponses").and_then(Value::as_array) {
            Some(l) if !l.is_empty() && tr.as_object().is_some_and(|o| o.len() == 1) => l,
            _ => {
                self.violation(format!(
                    "conn {index}: toolResponse is not {{functionResponses: [..]}}: {tr:.200}"
                ));
                return;
            }
        };
        for fr in list {
            let mut problems = Vec::new();
            if let Some(o) = fr.as_object() {
                for k in o.keys() {
                    if !["id", "name", "response", "willContinue", "scheduling"]
                        .contains(&k.as_str())
                    {
                        problems.push(format!("unknown field {k}"));
                    }
                }
            }
            let id = fr["id"].as_str().unwrap_or("").to_owned();
            let name = fr["name"].as_str().unwrap_or("").to_owned();
            let response = fr["response"].clone();
            if !response.is_object() {
                problems.push(format!("response is not an object: {response}"));
            }
            let scheduling = fr
                .get("scheduling")
                .map(|v| v.as_str().unwrap_or("").to_owned());
            if let Some(sc) = &scheduling {
                if !["SILENT", "WHEN_IDLE", "INTERRUPT"].contains(&sc.as_str()) {
                    problems.push(format!(
                        "scheduling {sc:?} is not SILENT, WHEN_IDLE or INTERRUPT"
                    ));
                }
            }
            {
                let log = self.shared.log.lock().unwrap();
                match log
                    .tool_calls
                    .iter()
                    .find(|c| c.id == id && c.conn == index)
                {
                    None => problems.push(format!("id {id:?} was not issued on this connection")),
                    Some(c) => {
                        if c.cancelled {
                            problems.push(format!("response to cancelled call {id}"));
                        }
                        if c.name != name {
                            problems.push(format!("name {name:?}, the call was {:?}", c.name));
                        }
                        if log.tool_responses.iter().any(|r| r.id == id) {
                            problems.push(format!("second response to {id}"));
                        }
                    }
                }
            }
            for p in problems {
                self.violation(format!("conn {index}: toolResponse: {p}"));
            }
            self.shared
                .log
                .lock()
                .unwrap()
                .tool_responses
                .push(ToolResponseRecord {
                    conn: index,
                    id,
                    name,
                    response,
                    scheduling,
                    at: Instant::now(),
                });
        }
        self.shared.changed.notify_waiters();
    }

    fn on_greeting(&self, index: usize, msg: Value) {
        let resumed = {
            let mut log = self.shared.log.lock().unwrap();
            log.conns[index].greetings.push(msg);
            log.conns[index].resumed_with.is_some()
        };
        self.shared.changed.notify_waiters();
        if resumed {
            self.violation(format!(
                "conn {index}: greeting sent again on a resumed session"
            ));
            return;
        }
        if self.shared.greeted.swap(true, Ordering::SeqCst) {
            self.violation("greeting sent twice".to_owned());
            return;
        }
        if let Some(reply) = self.shared.opts.greeting_reply.clone() {
            let mut spec = TurnSpec::new(reply);
            spec.caller_text = None;
            spec.assistant_text = "Hello, how can I help?".to_owned();
            spec.target = Target::Index(index);
            self.play(spec);
        }
    }
}

fn one_key(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.len() == 1)
}

/// The API's JSON is camelCase: a snake_case key would be silently ignored by Google.
/// Property names of a tool's parameters are the user's, not the API's.
fn check_camel(v: &Value, path: &str, problems: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k.contains('_') {
                    problems.push(format!("{path}.{k} is not camelCase"));
                }
                if k == "properties" {
                    if let Value::Object(props) = child {
                        for (name, schema) in props {
                            check_camel(schema, &format!("{path}.{k}.{name}"), problems);
                        }
                        continue;
                    }
                }
                if k == "enum" {
                    continue;
                }
                check_camel(child, &format!("{path}.{k}"), problems);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                check_camel(child, &format!("{path}[{i}]"), problems);
            }
        }
        _ => {}
    }
}

/// `setup.tools` as the Live API takes it.
fn check_tools(tools: &Value, problems: &mut Vec<String>) {
    let Some(list) = tools.as_array().filter(|l| !l.is_empty()) else {
        problems.push(format!("tools is not a non-empty array: {tools}"));
        return;
    };
    for (i, tool) in list.iter().enumerate() {
        let Some(decls) = tool
            .get("functionDeclarations")
            .and_then(Value::as_array)
            .filter(|_| one_key(tool))
        else {
            problems.push(format!("tools[{i}] is not {{functionDeclarations: [..]}}"));
            continue;
        };
        for (j, d) in decls.iter().enumerate() {
            let at = format!("tools[{i}].functionDeclarations[{j}]");
            let name = d["name"].as_str().unwrap_or("");
            let name_ok = name.len() <= 64
                && name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
            if !name_ok {
                problems.push(format!("{at}.name {name:?} is not a valid function name"));
            }
            if !d["description"].is_string() {
                problems.push(format!("{at}.description missing"));
            }
            if d.get("parametersJsonSchema").is_some() {
                problems.push(format!(
                    "{at}.parametersJsonSchema: the Live API calls such functions with empty args"
                ));
            }
            if let Some(o) = d.as_object() {
                for k in o.keys() {
                    if !["name", "description", "parameters", "behavior"].contains(&k.as_str()) {
                        problems.push(format!("{at}.{k} unexpected"));
                    }
                }
            }
            if let Some(p) = d.get("parameters") {
                if p["type"] != "OBJECT" {
                    problems.push(format!("{at}.parameters.type is not OBJECT"));
                }
                check_schema(p, &format!("{at}.parameters"), problems);
            }
        }
    }
}

/// The OpenAPI subset of `Schema`: what Google refuses with 1007 is a violation here.
fn check_schema(s: &Value, at: &str, problems: &mut Vec<String>) {
    const KEYS: [&str; 18] = [
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "properties",
        "required",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "pattern",
        "anyOf",
        "propertyOrdering",
    ];
    let Some(o) = s.as_object() else {
        problems.push(format!("{at} is not an object"));
        return;
    };
    for k in o.keys() {
        if !KEYS.contains(&k.as_str()) {
            problems.push(format!("{at}.{k} is not in Gemini's schema subset"));
        }
    }
    if let Some(t) = o.get("type") {
        let ok = ["OBJECT", "STRING", "INTEGER", "NUMBER", "BOOLEAN", "ARRAY"]
            .iter()
            .any(|x| t == x);
        if !ok {
            problems.push(format!("{at}.type {t} is not a Gemini Type"));
        }
    }
    if o.get("type").is_some_and(|t| t == "OBJECT") {
        match o.get("properties").and_then(Value::as_object) {
            Some(p) if !p.is_empty() => {}
            // Google: "properties: should be non-empty for OBJECT type" (nested free-form
            // objects without properties are taken).
            _ if !at.contains(".properties.") => problems.push(format!(
                "{at}.properties should be non-empty for OBJECT type"
            )),
            _ => {}
        }
    }
    if let Some(e) = o.get("enum") {
        if !e.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            problems.push(format!("{at}.enum is not a list of strings"));
        }
    }
    if let Some(req) = o.get("required") {
        let props = o.get("properties").and_then(Value::as_object);
        for r in req.as_array().into_iter().flatten() {
            let name = r.as_str().unwrap_or("");
            if !props.is_some_and(|p| p.contains_key(name)) {
                problems.push(format!("{at}.required names {r}, which is not a property"));
            }
        }
    }
    if let Some(p) = o.get("properties").and_then(Value::as_object) {
        for (name, child) in p {
            check_schema(child, &format!("{at}.properties.{name}"), problems);
        }
    }
    if let Some(items) = o.get("items") {
        check_schema(items, &format!("{at}.items"), problems);
    }
    for (i, alt) in o
        .get("anyOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        check_schema(alt, &format!("{at}.anyOf[{i}]"), problems);
    }
}
