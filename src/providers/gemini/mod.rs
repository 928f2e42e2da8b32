//! Google Gemini Live (`BidiGenerateContent`) over its WebSocket API.
//!
//! One call = one Live *session*, which may span several WebSocket *connections*: the
//! server ends a connection after about ten minutes (announced by `goAway`), and the
//! session continues on a new connection whose `setup` carries the latest
//! `sessionResumptionUpdate` handle. The switch happens in the background so the caller
//! hears nothing of it:
//!
//! ```text
//!  goAway ─► new connection (setup + handle) ─► setupComplete ─► switch
//!            │ old connection still read: its queued audio plays on     │
//!            │ caller audio buffered (≤ 5 s), flushed in order to the new one
//!            └──────────────────────────────────────────────────────────┘
//!                                         old connection: Close, read until it ends
//! ```
//! A connection that drops without `goAway` is resumed the same way (once per drop, at
//! most [`MAX_DROP_RESUMES`] per call) unless its close code says the request itself was
//! refused (1007 invalid argument, 1008 policy/auth, ...), which a retry cannot fix.
//!
//! Audio: caller PCM16 16 kHz in (`realtimeInput.audio`), assistant PCM16 24 kHz out
//! (`serverContent.modelTurn.parts[].inlineData`). Each model turn is one item,
//! `turn-<n>`; after `interrupted` the rest of that turn's audio is dropped here until
//! `turnComplete`, or until evidence of a new turn when that `turnComplete` is late or
//! never comes (new caller transcription, or [`turn::MAX_INTERRUPT_DROP`] passed): the
//! assistant never goes mute for the rest of the call. Gemini has no truncate message:
//! the server already stopped at the interruption, so `Truncate` is only logged.
//!
//! Tools: the route's declarations go in every `setup` (a resumed connection must declare
//! them again); `toolCall` → one `ToolCall` per function call, answered with
//! `toolResponse` on the connection that made the call; `toolCallCancellation` →
//! `ToolCancelled`, and results for cancelled calls are not sent.
//!
//! Three parts, as for every provider: [`wire`] (message shapes), [`turn`] (the model
//! turn, socket-free and unit-tested) and this file, the socket task (connect, setup,
//! resumption, select loop, close) and `check`. `docs/providers/gemini.md` explains
//! the choices.

pub mod turn;
pub mod wire;

// Re-exported: the fuzz target and the benches name them `gemini::...`.
pub use turn::{ContentEffects, Turn, MAX_INTERRUPT_DROP};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use super::queue;
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn, Instrument};

use super::template::render;
use super::ws::{self, ProviderWs, Sink, SETUP_TIMEOUT};
use super::{ProviderChannels, ProviderCommand, ProviderEvent, ToolCall, ToolResult};
use crate::audio::AudioFormat;
use crate::config::{Config, Route, Secret};

/// Caller audio kept while the session moves to a new connection (20 ms frames).
const MAX_SWITCH_FRAMES: usize = 5_000 / 20;
/// After a switch, the old connection is read (for audio already on its way) this long.
const RETIRE_WAIT: Duration = Duration::from_secs(2);
/// Resumptions after a connection dropped without `goAway`, per call.
const MAX_DROP_RESUMES: u32 = 3;

type Source = ws::Stream;
type WsResult = ws::Incoming;

/// Everything the provider needs from the config, resolved for one route.
#[derive(Clone)]
struct Settings {
    url: String,
    api_key: Secret,
    model: String,
    voice: String,
    language: String,
    response_timeout: Duration,
    instructions: String,
    greeting: String,
    /// `setup.tools`, built once per call (`None`: the route offers no tools).
    tools: Option<serde_json::Value>,
    /// JSON Schema keywords of the tools' parameters Gemini's subset cannot take.
    tools_dropped: Vec<String>,
    /// voicebridge decides barge-ins (`activityHandling: NO_INTERRUPTION`).
    no_interruption: bool,
}

impl Settings {
    fn new(config: &Config, route: &Route) -> Settings {
        let g = &config.providers.gemini;
        let call = &route.call;
        let (tools, tools_dropped) = wire::tools(&crate::tools::declarations(call));
        Settings {
            url: g.url.clone(),
            api_key: g.api_key.clone(),
            model: wire::model_path(&g.model),
            voice: if call.voice.is_empty() {
                g.voice.clone()
            } else {
                call.voice.clone()
            },
            language: call.language.clone(),
            response_timeout: call.response_timeout,
            instructions: call.instructions.clone(),
            greeting: call.greeting.clone(),
            tools,
            tools_dropped,
            no_interruption: call.manages_interruption(),
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        if self.api_key.is_empty() {
            // A `?key=` in the URL is the other documented way.
            Vec::new()
        } else {
            vec![("x-goog-api-key", self.api_key.expose().to_owned())]
        }
    }

    fn setup(&self, instructions: &str, handle: Option<&str>) -> String {
        wire::setup(&wire::SetupParams {
            model: &self.model,
            voice: &self.voice,
            language: &self.language,
            instructions,
            handle,
            tools: self.tools.as_ref(),
            no_interruption: self.no_interruption,
        })
    }
}

/// The provider task for one call (see [`super::spawn`]).
pub fn run(
    config: &Config,
    route: &Route,
    ends: ProviderChannels,
) -> impl Future<Output = ()> + Send + 'static {
    serve(Settings::new(config, route), ends)
}

/// `voicebridge check`: one real session (connect, setup, `setupComplete`), then Close.
pub async fn check(config: &Config, route: &Route) -> Result<String, String> {
    let s = Settings::new(config, route);
    let instructions = render(&s.instructions, &BTreeMap::new());
    let started = Instant::now();
    let mut ws = open(&s, &s.setup(&instructions, None)).await?;
    let ms = started.elapsed().as_millis();
    ws::close_unsplit(&mut ws).await;
    let tools = match &s.tools {
        None => String::new(),
        Some(t) => {
            let n = t[0]["functionDeclarations"].as_array().map_or(0, Vec::len);
            if s.tools_dropped.is_empty() {
                format!(", {n} tool(s)")
            } else {
                format!(
                    ", {n} tool(s); JSON Schema keywords Gemini does not take were left out: {}",
                    s.tools_dropped.join(", ")
                )
            }
        }
    };
    Ok(format!(
        "gemini: {} accepted model {} with voice {} (setupComplete in {ms} ms{tools})",
        crate::redact::url(&s.url),
        s.model,
        s.voice
    ))
}

/// Connects and completes the setup handshake of a new connection (used for
/// resumption and by `check`). Errors are log-ready and carry no secret.
async fn open(s: &Settings, setup: &str) -> Result<ProviderWs, String> {
    let secrets = [s.api_key.expose()];
    let mut ws = ws::connect(&s.url, &s.headers(), &secrets)
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::Text(setup.to_owned().into()))
        .await
        .map_err(|e| format!("sending setup: {e}"))?;
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if is_setup_complete(t.as_bytes()) => return Ok(()),
                Some(Ok(Message::Binary(b))) if is_setup_complete(&b) => return Ok(()),
                Some(Ok(Message::Close(frame))) => {
                    let (desc, _) = describe_close(frame, &secrets);
                    return Err(format!("gemini closed the connection during setup: {desc}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("connection error during setup: {e}")),
                None => return Err("connection ended before setupComplete".to_owned()),
            }
        }
    };
    match timeout(SETUP_TIMEOUT, wait).await {
        Ok(Ok(())) => Ok(ws),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "no setupComplete within {} s",
            SETUP_TIMEOUT.as_secs()
        )),
    }
}

fn is_setup_complete(frame: &[u8]) -> bool {
    std::str::from_utf8(frame)
        .ok()
        .and_then(|t| wire::parse(t).ok())
        .is_some_and(|m| m.setup_complete.is_some())
}

/// `code N: reason`, with any secret the server might echo removed.
fn describe_close(frame: Option<CloseFrame>, secrets: &[&str]) -> (String, Option<u16>) {
    match frame {
        Some(f) => {
            let code = u16::from(f.code);
            let reason = ws::redact(f.reason.as_str(), secrets);
            if reason.is_empty() {
                (format!("code {code}"), Some(code))
            } else {
                (format!("code {code}: {reason}"), Some(code))
            }
        }
        None => ("no close code".to_owned(), None),
    }
}

/// Close codes that say the request itself was refused: a resumption would fail too.
fn is_final_close(code: u16) -> bool {
    matches!(code, 1002 | 1003 | 1007 | 1008 | 1009 | 1010)
}

/// Connect at once; send the setup when both the socket and the call context are there.
async fn serve(s: Settings, ends: ProviderChannels) {
    let ProviderChannels {
        mut commands,
        events,
    } = ends;
    let mut connecting = {
        let (url, headers, key) = (s.url.clone(), s.headers(), s.api_key.clone());
        tokio::spawn(
            async move { ws::connect(&url, &headers, &[key.expose()]).await }.in_current_span(),
        )
    };
    let mut context = None;
    let mut socket: Option<ProviderWs> = None;
    while context.is_none() || socket.is_none() {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(ProviderCommand::Context(c)) => context = Some(c),
                Some(ProviderCommand::Close) | None => {
                    connecting.abort();
                    if let Some(mut ws) = socket {
                        ws::close_unsplit(&mut ws).await;
                    }
                    return;
                }
                Some(_) => debug!("gemini: command before setup ignored"),
            },
            res = &mut connecting, if socket.is_none() => match res {
                Ok(Ok(ws)) => {
                    info!(url = %crate::redact::url(&s.url), "gemini: connected");
                    socket = Some(ws);
                }
                Ok(Err(e)) => {
                    let code = e.status().map_or_else(|| "connect".to_owned(), |st| format!("http_{st}"));
                    warn!(code = %code, error = %e, "gemini: connection refused");
                    let _ = events.send(ProviderEvent::Error { recoverable: false, code, message: e.to_string() }).await;
                    return;
                }
                Err(e) => {
                    let _ = events.send(ProviderEvent::Error { recoverable: false, code: "connect".to_owned(), message: e.to_string() }).await;
                    return;
                }
            },
        }
    }
    let (Some(context), Some(ws)) = (context, socket) else {
        return;
    };
    let instructions = render(&s.instructions, &context.vars);
    let greeting = render(&s.greeting, &context.vars).trim().to_owned();
    if !s.tools_dropped.is_empty() {
        debug!(keywords = ?s.tools_dropped, "gemini: tool parameter keywords outside Gemini's schema subset left out");
    }
    let (sink, stream) = ws::split(ws);
    let mut g = Gemini {
        events,
        active: Some(Conn {
            sink,
            stream,
            number: 1,
        }),
        retiring: None,
        retire_deadline: Instant::now(),
        resume: None,
        lost: None,
        unresumable: None,
        handle: None,
        connections: 1,
        drop_resumes: 0,
        ready: false,
        setup_deadline: Instant::now() + SETUP_TIMEOUT,
        greeting,
        switch_buffer: VecDeque::new(),
        switch_dropped: 0,
        turn: Turn::default(),
        watchdog: None,
        watchdog_warned: false,
        rate_warned: false,
        calls: HashMap::new(),
        cancelled: HashSet::new(),
        orphans: Vec::new(),
        call_seq: 0,
        instructions,
        s,
    };
    let setup = g.s.setup(&g.instructions, None);
    debug!(model = %g.s.model, voice = %g.s.voice, "gemini: sending setup");
    if g.send_active(Message::Text(setup.into())).await {
        g.run(commands).await;
    } else {
        let _ = g
            .events
            .send(ProviderEvent::Closed {
                reason: "gemini connection failed while sending setup".to_owned(),
            })
            .await;
    }
}

struct Conn {
    sink: Sink,
    stream: Source,
    /// 1 for the first connection of the call, then 2, 3... per resumption.
    number: u32,
}

/// A new connection being opened in the background to continue the session.
struct Resume {
    task: JoinHandle<Result<ProviderWs, String>>,
    cause: &'static str,
    started: Instant,
}

/// The task ends (the session has been told why, or it asked us to close).
struct Stop;
type Step = Result<(), Stop>;

struct Gemini {
    s: Settings,
    instructions: String,
    greeting: String,
    events: queue::Sender<ProviderEvent>,
    /// The connection caller audio goes to; `None` only while a dropped connection is
    /// being resumed.
    active: Option<Conn>,
    /// The previous connection after a switch: Close sent, still read for late audio.
    retiring: Option<Conn>,
    retire_deadline: Instant,
    resume: Option<Resume>,
    /// Why the active connection went away while a resumption is under way.
    lost: Option<String>,
    /// Why the session cannot continue when the active connection closes.
    unresumable: Option<String>,
    handle: Option<String>,
    connections: u32,
    drop_resumes: u32,
    /// The first `setupComplete` came (and `Ready` was sent).
    ready: bool,
    setup_deadline: Instant,
    switch_buffer: VecDeque<Bytes>,
    switch_dropped: u64,
    turn: Turn,
    watchdog: Option<Instant>,
    watchdog_warned: bool,
    rate_warned: bool,
    /// Tool calls waiting for their result, by the id the session knows.
    calls: HashMap<String, PendingCall>,
    /// Ids Gemini withdrew whose results have not come yet (they are not sent).
    cancelled: HashSet<String>,
    /// Results of calls made on an earlier connection, as text turns waiting for the
    /// connection being opened.
    orphans: Vec<String>,
    /// For function calls that came without an id.
    call_seq: u64,
}

/// A tool call the model is waiting on.
struct PendingCall {
    /// The connection that made it: only that one can take its `toolResponse`.
    conn: u32,
    /// The id as Gemini sent it (empty if it sent none; the session sees a local one).
    wire_id: String,
}

async fn next_message(conn: &mut Option<Conn>) -> WsResult {
    match conn {
        Some(c) => c.stream.next().await,
        None => std::future::pending().await,
    }
}

async fn resumed(
    resume: &mut Option<Resume>,
) -> Result<Result<ProviderWs, String>, tokio::task::JoinError> {
    match resume {
        Some(r) => (&mut r.task).await,
        None => std::future::pending().await,
    }
}

impl Gemini {
    async fn run(mut self, mut commands: queue::Receiver<ProviderCommand>) {
        let mut ping = ws::ping_timer();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let watchdog_at = self.watchdog.unwrap_or(far);
            let setup_at = if self.ready { far } else { self.setup_deadline };
            let retire_at = if self.retiring.is_some() {
                self.retire_deadline
            } else {
                far
            };
            let step = tokio::select! {
                cmd = commands.recv() => self.on_command(cmd).await,
                msg = next_message(&mut self.active) => self.on_active(msg).await,
                msg = next_message(&mut self.retiring) => self.on_retiring(msg).await,
                res = resumed(&mut self.resume) => self.on_resumed(res).await,
                _ = ping.tick() => self.ping().await,
                _ = sleep_until(watchdog_at), if self.watchdog.is_some() => self.on_watchdog().await,
                _ = sleep_until(setup_at), if !self.ready => {
                    let message = format!("no setupComplete from gemini within {} s", SETUP_TIMEOUT.as_secs());
                    let _ = self.emit(ProviderEvent::Error { recoverable: false, code: "setup_timeout".to_owned(), message }).await;
                    Err(Stop)
                }
                _ = sleep_until(retire_at), if self.retiring.is_some() => {
                    debug!("gemini: old connection did not finish closing: dropped");
                    self.retiring = None;
                    Ok(())
                }
            };
            if step.is_err() {
                break;
            }
        }
        self.shutdown().await;
    }

    async fn emit(&self, event: ProviderEvent) -> Step {
        self.events.send(event).await.map_err(|_| Stop)
    }

    /// Sends on the active connection; false if there is none or it failed (its read
    /// side then reports why).
    async fn send_active(&mut self, msg: Message) -> bool {
        let Some(conn) = self.active.as_mut() else {
            return false;
        };
        match ws::send(&mut conn.sink, msg).await {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "gemini: send failed");
                false
            }
        }
    }

    // ---- session → Gemini -----------------------------------------------------------

    async fn on_command(&mut self, cmd: Option<ProviderCommand>) -> Step {
        match cmd {
            None | Some(ProviderCommand::Close) => return Err(Stop),
            Some(ProviderCommand::Audio(frame)) => self.on_caller_audio(frame).await,
            Some(ProviderCommand::Truncate { item, played_ms }) => {
                debug!(%item, played_ms, "gemini: no truncate in this protocol (the server stopped at the interruption)");
            }
            Some(ProviderCommand::Cancel) => debug!("gemini: cancel ignored"),
            // It never sends marks, so none come back.
            Some(ProviderCommand::MarkPlayed(_)) => {}
            Some(ProviderCommand::Say(text)) => {
                let msg = wire::instruct(
                    &self.s.model,
                    &format!("Say exactly this to the caller, then stop: {text}"),
                );
                self.send_active(Message::Text(msg.into())).await;
            }
            Some(ProviderCommand::Context(_)) => debug!("gemini: second context ignored"),
            Some(ProviderCommand::ToolResult(r)) => self.on_tool_result(*r).await,
            Some(ProviderCommand::Dtmf(digits)) => {
                // A user text turn, in the form the model's generation takes (as the
                // greeting); the model answers it like a spoken turn.
                let msg = wire::instruct(&self.s.model, &super::dtmf_text(&digits));
                self.send_active(Message::Text(msg.into())).await;
            }
        }
        Ok(())
    }

    async fn on_caller_audio(&mut self, frame: Bytes) {
        if !self.ready {
            return;
        }
        if self.resume.is_some() || self.active.is_none() {
            if self.switch_buffer.len() >= MAX_SWITCH_FRAMES {
                self.switch_buffer.pop_front();
                self.switch_dropped += 1;
            }
            self.switch_buffer.push_back(frame);
            return;
        }
        let msg = wire::audio(&frame);
        self.send_active(Message::Text(msg.into())).await;
    }

    async fn ping(&mut self) -> Step {
        self.send_active(Message::Ping(Bytes::new())).await;
        Ok(())
    }

    async fn on_watchdog(&mut self) -> Step {
        self.watchdog = None;
        self.watchdog_warned = true;
        let secs = self.s.response_timeout.as_secs_f64();
        self.emit(ProviderEvent::Warning(format!(
            "provider silent: no response {secs} s after the caller finished"
        )))
        .await
    }

    // ---- Gemini → session -----------------------------------------------------------

    async fn on_active(&mut self, msg: WsResult) -> Step {
        let secrets = [self.s.api_key.expose()];
        match msg {
            Some(Ok(Message::Text(t))) => self.on_message(t.as_str(), false).await,
            Some(Ok(Message::Binary(b))) => match std::str::from_utf8(&b) {
                Ok(t) => self.on_message(t, false).await,
                Err(_) => {
                    debug!(bytes = b.len(), "gemini: non-UTF-8 binary frame ignored");
                    Ok(())
                }
            },
            Some(Ok(Message::Close(frame))) => {
                let (desc, code) = describe_close(frame, &secrets);
                self.on_active_lost(desc, code).await
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                let desc = ws::redact(&format!("connection error: {e}"), &secrets);
                self.on_active_lost(desc, None).await
            }
            None => {
                self.on_active_lost("connection ended without a close frame".to_owned(), None)
                    .await
            }
        }
    }

    async fn on_retiring(&mut self, msg: WsResult) -> Step {
        match msg {
            Some(Ok(Message::Text(t))) => self.on_message(t.as_str(), true).await,
            Some(Ok(Message::Binary(b))) => match std::str::from_utf8(&b) {
                Ok(t) => self.on_message(t, true).await,
                Err(_) => Ok(()),
            },
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                debug!("gemini: old connection closed");
                self.retiring = None;
                Ok(())
            }
            Some(Ok(_)) => Ok(()),
        }
    }

    /// One server message. `retired`: it came on the connection we switched away from
    /// (its audio and transcripts still count; its control messages do not).
    async fn on_message(&mut self, text: &str, retired: bool) -> Step {
        let msg = match wire::parse(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "gemini: unparseable message ignored");
                return Ok(());
            }
        };
        if msg.setup_complete.is_some() && !retired && !self.ready {
            self.ready = true;
            info!("gemini: setupComplete");
            self.emit(ProviderEvent::Ready {
                input: AudioFormat::l16(wire::INPUT_RATE),
                output: AudioFormat::l16(wire::OUTPUT_RATE),
            })
            .await?;
            if !self.greeting.is_empty() {
                // Exactly once per call: a resumed session never greets again.
                let greeting = std::mem::take(&mut self.greeting);
                let msg = wire::greeting(&self.s.model, &greeting);
                self.send_active(Message::Text(msg.into())).await;
            }
        }
        self.on_content(msg.usage_metadata, msg.server_content)
            .await?;
        if retired {
            if msg.tool_call.is_some() {
                // That connection's session was handed over: an answer could not reach
                // the model that asked, and the tool's side effects would be unknown to
                // the one the caller now talks to.
                warn!("gemini: toolCall on the connection being retired: not run");
            }
            return Ok(());
        }
        if let Some(u) = msg.session_resumption_update {
            if u.resumable && !u.new_handle.is_empty() {
                debug!("gemini: new session resumption handle");
                self.handle = Some(u.new_handle);
            }
        }
        if let Some(go) = msg.go_away {
            self.on_go_away(go.time_left.as_deref()).await?;
        }
        if let Some(c) = msg.tool_call_cancellation {
            self.on_tool_cancellation(c.ids).await?;
        }
        if let Some(tc) = msg.tool_call {
            self.on_tool_call(tc.function_calls).await?;
        }
        Ok(())
    }

    // ---- tools ------------------------------------------------------------------------

    async fn on_tool_call(&mut self, calls: Vec<wire::FunctionCall>) -> Step {
        let conn = self.active.as_ref().map_or(0, |c| c.number);
        // The model answered with a call: no "provider silent" while the tool runs.
        self.watchdog = None;
        for f in calls {
            if f.name.is_empty() {
                warn!("gemini: function call without a name ignored");
                continue;
            }
            let id = if f.id.is_empty() {
                self.call_seq += 1;
                format!("gemini-call-{}", self.call_seq)
            } else {
                f.id.clone()
            };
            info!(tool = %f.name, tool_call_id = %id, connection = conn, "gemini: tool call");
            self.calls.insert(
                id.clone(),
                PendingCall {
                    conn,
                    wire_id: f.id,
                },
            );
            self.emit(ProviderEvent::ToolCall(Box::new(ToolCall {
                id,
                name: f.name,
                arguments: f.args,
            })))
            .await?;
        }
        Ok(())
    }

    async fn on_tool_cancellation(&mut self, ids: Vec<String>) -> Step {
        if ids.is_empty() {
            return Ok(());
        }
        for id in &ids {
            self.calls.remove(id);
            self.cancelled.insert(id.clone());
        }
        info!(ids = ?ids, "gemini: tool calls cancelled");
        self.emit(ProviderEvent::ToolCancelled(ids)).await
    }

    async fn on_tool_result(&mut self, r: ToolResult) {
        let Some(call) = self.calls.remove(&r.id) else {
            if self.cancelled.remove(&r.id) {
                info!(tool = %r.name, tool_call_id = %r.id, "gemini: result of a cancelled call not sent");
            } else {
                warn!(tool = %r.name, tool_call_id = %r.id, "gemini: result for a call gemini did not make (or already answered): not sent");
            }
            return;
        };
        let active = self.active.as_ref().map(|c| c.number);
        if active == Some(call.conn) {
            let msg = wire::tool_response(&self.s.model, &call.wire_id, &r);
            debug!(tool = %r.name, tool_call_id = %r.id, is_error = r.is_error, "gemini: toolResponse");
            if self.send_active(Message::Text(msg.into())).await && r.reply {
                self.arm_watchdog();
            }
            return;
        }
        // The call was made on a connection the session has left (resumption): the new
        // one never issued this id, and a toolResponse naming it would be refused. Its
        // handle predates the call too (Gemini issues no resumable handle while a
        // function call is open), so the model there is still waiting for the caller:
        // give it the outcome as a text turn so it can go on.
        warn!(
            tool = %r.name,
            tool_call_id = %r.id,
            connection = call.conn,
            "gemini: result of a call made before the session moved to a new connection: passed to the model as text"
        );
        if !r.reply {
            return;
        }
        let msg = wire::instruct(&self.s.model, &wire::orphan_result_text(&r));
        if self.active.is_some() {
            if self.send_active(Message::Text(msg.into())).await {
                self.arm_watchdog();
            }
        } else {
            self.orphans.push(msg);
        }
    }

    /// Applies the turn-level part of a message (pure, in [`Turn::on_content`]), then
    /// sends its events in order and does what it asks of the connection.
    async fn on_content(
        &mut self,
        usage: Option<wire::UsageMetadata>,
        content: Option<wire::ServerContent<'_>>,
    ) -> Step {
        let mut events = Vec::new();
        let now = Instant::now().into_std();
        let effects = self.turn.on_content(usage, content, now, &mut events);
        if let Some(mime) = &effects.off_rate_mime {
            if !self.rate_warned {
                self.rate_warned = true;
                warn!(
                    mime = mime.as_str(),
                    "gemini: assistant audio is not 24 kHz as documented: it will play at the wrong speed"
                );
            }
        }
        if effects.caller_between_turns {
            self.arm_watchdog();
        }
        if effects.audio {
            // Model audio answers the caller: disarm, and allow a warning next turn.
            self.watchdog = None;
            self.watchdog_warned = false;
        }
        for event in events {
            self.emit(event).await?;
        }
        Ok(())
    }

    /// No explicit end-of-user-turn event exists: the caller's transcription arriving
    /// while no model turn is under way stands for it, and model audio disarms it.
    fn arm_watchdog(&mut self) {
        if self.s.response_timeout.is_zero() || self.watchdog_warned {
            return;
        }
        self.watchdog = Some(Instant::now() + self.s.response_timeout);
    }

    // ---- connections: goAway, resumption, loss --------------------------------------

    async fn on_go_away(&mut self, time_left: Option<&str>) -> Step {
        let left = time_left.and_then(wire::parse_duration);
        let left_ms = left.map(|d| d.as_millis() as u64);
        if self.resume.is_some() {
            debug!(time_left_ms = ?left_ms, "gemini: goAway while already resuming");
            return Ok(());
        }
        match self.handle.clone() {
            Some(handle) => {
                info!(time_left_ms = ?left_ms, "gemini: goAway: continuing the session on a new connection");
                self.start_resume(handle, "goAway");
                Ok(())
            }
            None => {
                let why = "goAway received but no session resumption handle was known";
                warn!(time_left_ms = ?left_ms, "gemini: {why}: the call ends when this connection closes");
                self.unresumable = Some(why.to_owned());
                self.emit(ProviderEvent::Warning(format!(
                    "gemini: {why} (time left {})",
                    time_left.unwrap_or("unknown")
                )))
                .await
            }
        }
    }

    fn start_resume(&mut self, handle: String, cause: &'static str) {
        let setup = self.s.setup(&self.instructions, Some(&handle));
        let s = self.s.clone();
        let task = tokio::spawn(async move { open(&s, &setup).await }.in_current_span());
        self.resume = Some(Resume {
            task,
            cause,
            started: Instant::now(),
        });
    }

    async fn on_resumed(
        &mut self,
        res: Result<Result<ProviderWs, String>, tokio::task::JoinError>,
    ) -> Step {
        let Some(resume) = self.resume.take() else {
            return Ok(());
        };
        let res = res.unwrap_or_else(|e| Err(format!("resumption task failed: {e}")));
        let ws = match res {
            Ok(ws) => ws,
            Err(e) => return self.on_resume_failed(resume.cause, e).await,
        };
        self.connections += 1;
        let number = self.connections;
        if let Some(mut old) = self.active.take() {
            // What the old connection already delivered plays first.
            while let Some(Some(msg)) = old.stream.next().now_or_never() {
                match msg {
                    Ok(Message::Text(t)) => self.on_message(t.as_str(), true).await?,
                    Ok(Message::Binary(b)) => {
                        if let Ok(t) = std::str::from_utf8(&b) {
                            self.on_message(t, true).await?;
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            ws::close_politely(&mut old.sink, None, "session resumed on a new connection").await;
            self.retiring = Some(old);
            self.retire_deadline = Instant::now() + RETIRE_WAIT;
        }
        let (sink, stream) = ws::split(ws);
        self.active = Some(Conn {
            sink,
            stream,
            number,
        });
        self.lost = None;
        self.unresumable = None;
        let buffered = self.switch_buffer.len();
        let dropped = std::mem::take(&mut self.switch_dropped);
        while let Some(frame) = self.switch_buffer.pop_front() {
            let msg = wire::audio(&frame);
            if !self.send_active(Message::Text(msg.into())).await {
                self.switch_buffer.clear();
                break;
            }
        }
        for msg in std::mem::take(&mut self.orphans) {
            if self.send_active(Message::Text(msg.into())).await {
                self.arm_watchdog();
            }
        }
        let switch_ms = resume.started.elapsed().as_millis() as u64;
        info!(
            connection = number,
            switch_ms,
            buffered_frames = buffered,
            dropped_frames = dropped,
            cause = resume.cause,
            "gemini: session resumed on a new connection"
        );
        self.emit(ProviderEvent::Warning(format!(
            "gemini: resumed session on connection #{number} after {} ({switch_ms} ms, {buffered} caller frames buffered, {dropped} dropped)",
            resume.cause
        )))
        .await
    }

    async fn on_resume_failed(&mut self, cause: &'static str, error: String) -> Step {
        warn!(error = %error, cause, "gemini: session resumption failed");
        if self.active.is_some() {
            // The old connection still works: keep using it until it closes.
            self.unresumable = Some(format!("session resumption after {cause} failed: {error}"));
            let frames: Vec<Bytes> = self.switch_buffer.drain(..).collect();
            for frame in frames {
                let msg = wire::audio(&frame);
                self.send_active(Message::Text(msg.into())).await;
            }
            return self
                .emit(ProviderEvent::Warning(format!(
                    "gemini: session resumption after {cause} failed: {error}; staying on the current connection until it closes"
                )))
                .await;
        }
        let lost = self
            .lost
            .take()
            .unwrap_or_else(|| "gemini connection lost".to_owned());
        let _ = self
            .emit(ProviderEvent::Closed {
                reason: format!("{lost}; session resumption failed: {error}"),
            })
            .await;
        Err(Stop)
    }

    async fn on_active_lost(&mut self, desc: String, code: Option<u16>) -> Step {
        let number = self.active.as_ref().map_or(0, |c| c.number);
        if let Some(mut conn) = self.active.take() {
            // Flushes the echo of the server's Close.
            let _ = timeout(Duration::from_millis(200), conn.sink.close()).await;
        }
        let reason = format!("gemini closed the connection: {desc}");
        if !self.ready {
            warn!(connection = number, reason = %reason, "gemini: closed during setup");
            let code = code.map_or_else(|| "closed".to_owned(), |c| format!("close_{c}"));
            let _ = self
                .emit(ProviderEvent::Error {
                    recoverable: false,
                    code,
                    message: format!("{reason} (during setup)"),
                })
                .await;
            return Err(Stop);
        }
        if self.resume.is_some() {
            info!(connection = number, reason = %reason, "gemini: connection closed while the session moves to a new one");
            self.lost = Some(reason);
            return Ok(());
        }
        if let Some(why) = self.unresumable.take() {
            warn!(connection = number, reason = %reason, "gemini: connection closed; {why}");
            let _ = self
                .emit(ProviderEvent::Closed {
                    reason: format!("{reason}; {why}"),
                })
                .await;
            return Err(Stop);
        }
        let retry = !code.is_some_and(is_final_close) && self.drop_resumes < MAX_DROP_RESUMES;
        if let (true, Some(handle)) = (retry, self.handle.clone()) {
            self.drop_resumes += 1;
            warn!(connection = number, reason = %reason, "gemini: connection closed without goAway: resuming the session");
            self.lost = Some(reason.clone());
            self.start_resume(handle, "an unexpected close");
            return self
                .emit(ProviderEvent::Warning(format!(
                    "{reason} without goAway: resuming the session"
                )))
                .await;
        }
        warn!(connection = number, reason = %reason, "gemini: connection closed");
        let _ = self.emit(ProviderEvent::Closed { reason }).await;
        Err(Stop)
    }

    /// Politely closes whatever is open; quick, since the session waits 1 s at most.
    async fn shutdown(mut self) {
        if let Some(r) = self.resume.take() {
            r.task.abort();
        }
        for conn in [self.active.take(), self.retiring.take()]
            .into_iter()
            .flatten()
        {
            let Conn {
                mut sink,
                mut stream,
                ..
            } = conn;
            ws::close_politely(&mut sink, Some(&mut stream), "call ended").await;
        }
    }
}

#[cfg(test)]
mod tests;
