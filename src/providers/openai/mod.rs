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
//! Three files: [`wire`] (message shapes), [`turn`] (the socket-free protocol state,
//! unit-tested) and this one, the socket task (connect, setup, select loop, close)
//! and `check`. `docs/providers/openai.md` explains the choices.

pub mod turn;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::ws::{self, Sink, Stream, CLOSE_WAIT, SETUP_TIMEOUT};
use super::{CallContext, ProviderChannels, ProviderCommand, ProviderEvent};
use crate::config::{Config, OpenAiConfig, Route};
use turn::EXPIRED_REASON;
// Re-exported: the benches, fuzz targets and tests name them `openai::...`.
pub use turn::{Step, TextOutcome, Turns};
use wire::ServerEvent;
pub use wire::{append_event, endpoint, iso639_1, Setup, WireFormat};

/// After `session_expired`, the server closes (1001); if it does not, we end anyway.
const EXPIRY_CLOSE_WAIT: Duration = Duration::from_secs(3);
/// OpenAI's maximum session length; a 1001 close after this long is the limit.
const SESSION_LIMIT: Duration = Duration::from_secs(59 * 60);

/// Why the connection loop stopped.
enum Exit {
    /// The session is gone or asked us to close: close politely.
    CloseRequested,
    /// Tell the session (the event is sent) and stop.
    Ended(ProviderEvent),
}

struct Connection {
    cfg: OpenAiConfig,
    route: Arc<Route>,
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

/// The provider task for one call (see [`super::spawn`]): runs until the session
/// closes it or the socket ends.
pub fn run(
    config: &Config,
    route: &Arc<Route>,
    ends: ProviderChannels,
) -> impl Future<Output = ()> + Send + 'static {
    serve(config.providers.openai.clone(), route.clone(), ends)
}

async fn serve(cfg: OpenAiConfig, route: Arc<Route>, mut ends: ProviderChannels) {
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
    let (sink, stream) = ws::split(socket);
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
        let mut ping = ws::ping_timer();
        loop {
            let deadline = self.next_deadline();
            let timer = sleep_until(deadline.unwrap_or_else(|| Instant::now() + ws::PING_EVERY));
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
                self.send_json(&wire::truncate(&item, played_ms)).await
            }
            // It never sends marks, so none come back.
            ProviderCommand::MarkPlayed(_) => Ok(()),
            ProviderCommand::Cancel => {
                // With server VAD and interrupt_response=true the server cancels the
                // response itself on speech_started, so the session never needs this
                // for barge-in. It is for the cases where the server would not: local
                // barge-in detection, manual turns, or interrupt_response=false.
                if self.turns.current_response.is_some() {
                    self.turns.cancelling();
                    self.send_json(&wire::cancel()).await
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
                    self.send_json(&wire::cancel()).await?;
                }
                self.send_json(&wire::say(&text)).await
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
            ProviderCommand::Dtmf(digits) => {
                if !self.turns.ready {
                    // The engine holds keys until Ready; a late one is not worth a reorder.
                    debug!(
                        keys = digits.len(),
                        "OpenAI: DTMF before the session is ready: dropped"
                    );
                    return Ok(());
                }
                let item = self.turns.dtmf(&digits);
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
        debug!("OpenAI: response.create after the tool results or keys");
        self.send_json(&wire::reply()).await?;
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
        self.turns.mark_setup_sent(setup.interrupt_response);
        self.setup = Some(setup);
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
                let (code, why) = ws::close_parts(frame);
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
        match ws::send(&mut self.sink, msg).await {
            Ok(()) => Ok(()),
            Err(e @ ws::SendError::Socket(_)) => Err(Exit::Ended(ProviderEvent::Closed {
                reason: self.close_reason(&format!("OpenAI {e}")),
            })),
            Err(e @ ws::SendError::Stalled) => Err(Exit::Ended(ProviderEvent::Closed {
                reason: format!("OpenAI {e}"),
            })),
        }
    }

    /// Our Close, then the server's echo (briefly): the session aborts us after 1 s.
    async fn close(&mut self, stream: &mut Stream) {
        ws::close_politely(&mut self.sink, Some(stream), "call ended").await;
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
    let (mut sink, mut stream) = ws::split(socket);
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
