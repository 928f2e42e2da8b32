//! One task per call: it owns the FreeSWITCH socket, the provider handle, the audio
//! state of both directions and the call's timers, and `select!`s over them. No locks on
//! the audio path; whichever side ends first, both are closed cleanly and the task ends.
//!
//! Caller audio: WebSocket message → `Reframer` (exact 20 ms, left channel) →
//! `Transcoder` (call format → provider input) → provider. Until the provider is ready,
//! frames wait in a bounded queue.
//! Assistant audio: provider → `Transcoder` (provider output → call format) → `Pacer`
//! (real-time release with a small lead) → `Playback` (binary or streamAudio).
//!
//! With `[freeswitch.esl]`, the call id from the URL path (`/call/${uuid}`) is the
//! FreeSWITCH channel uuid the ESL commands name: `uuid_break` on barge-in
//! (`stream_audio`, `esl_files`), `uuid_broadcast` of each file the module wrote
//! (`esl_files`), `uuid_kill` when we end the call while FreeSWITCH is still there.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::audio::{AudioFormat, Channels, Codec, FloodGuard, ItemId, Pacer, Reframer, Transcoder};
use crate::call_metrics::{self, Traffic};
use crate::call_record::{self, RecordBuilder};
use crate::config::{Config, Route};
use crate::freeswitch::esl::{Esl, PlayEvent, PlayEvents};
use crate::freeswitch::{metadata, playback, Playback, StreamRequest};
use crate::providers::{
    self, CallContext, ProviderCommand, ProviderEvent, ProviderHandle, ToolCall, ToolResult, Usage,
};
use crate::records::Records;
use crate::registry::CallGuard;
use crate::tools::{self, CallInfo, Resolved};
use crate::webhook::WebhookError;

type Ws = WebSocketStream<TcpStream>;

/// Caller audio kept while the provider connects (then dropped oldest-first).
const MAX_PENDING: Duration = Duration::from_secs(5);
/// A FreeSWITCH socket that accepts nothing for this long is considered dead.
const WRITE_STALL: Duration = Duration::from_secs(5);
/// How long we wait for the other side's Close, and for the provider task to finish.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long the provider's setup waits for the metadata frame before going ahead
/// without it (it normally comes within milliseconds, but in a known race never).
const METADATA_WAIT: Duration = Duration::from_millis(500);
/// Longest time the goodbye may take (generated and played) before we hang up anyway.
const GOODBYE_MAX: Duration = Duration::from_secs(10);
/// `end_call`/`transfer_call` after the reply was already complete: how long we wait
/// for more words from the model before acting.
const END_GRACE: Duration = Duration::from_secs(2);

/// The goodbye at `max_duration_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goodbye {
    NotSaid,
    /// Asked for; the provider is generating it.
    Saying,
    /// Generated; the pacer is releasing it.
    Said,
    /// Released; waiting for FreeSWITCH to play its buffer out.
    PlayingOut,
}

/// Period of the per-call housekeeping tick (idle check, metrics flush).
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Late audio is remembered for this many interrupted items.
const MAX_INTERRUPTED: usize = 8;

/// Everything the server learned while accepting the call.
pub struct CallSetup {
    pub call_id: String,
    pub route: Route,
    pub request: StreamRequest,
    pub config: Arc<Config>,
    pub peer: SocketAddr,
    pub guard: CallGuard,
    /// The route's daily budget; dropped when the session ends, charging its time.
    pub budget: Option<crate::budget::Ticket>,
    pub stop: CancellationToken,
    /// The daemon's Event Socket, when `[freeswitch.esl]` is configured.
    pub esl: Option<Esl>,
    /// Where the call's record goes when it ends.
    pub records: Option<Records>,
}

/// Why a call ended (the summary's `end_reason`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// FreeSWITCH sent a Close (hang-up or `uuid_audio_stream stop`).
    FreeswitchClosed(Option<u16>),
    /// The TCP connection dropped without a Close.
    FreeswitchGone,
    FreeswitchError(String),
    /// A message over the size limit (a 1 MiB text frame, ...): the socket still works.
    FreeswitchTooBig(String),
    ProviderClosed(String),
    ProviderError(String),
    MaxDuration,
    IdleTimeout,
    Shutdown,
    Internal(String),
    /// The assistant called `end_call` (with the reason it gave).
    AssistantHangup(String),
    /// The assistant called `transfer_call`: the channel goes to this destination.
    Transferred(String),
    /// The provider kept sending audio far faster than real time (audio received, over
    /// how long).
    ProviderFlood {
        audio: Duration,
        over: Duration,
    },
}

impl EndReason {
    /// Short stable tag, for the summary and (later) metrics.
    pub fn tag(&self) -> &'static str {
        match self {
            EndReason::FreeswitchClosed(_) => "freeswitch_closed",
            EndReason::FreeswitchGone => "freeswitch_gone",
            EndReason::FreeswitchError(_) => "freeswitch_error",
            EndReason::FreeswitchTooBig(_) => "freeswitch_message_too_big",
            EndReason::ProviderClosed(_) => "provider_closed",
            EndReason::ProviderError(_) => "provider_error",
            EndReason::ProviderFlood { .. } => "provider_flood",
            EndReason::MaxDuration => "max_duration",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::Internal(_) => "internal_error",
            EndReason::AssistantHangup(_) => "assistant_hangup",
            EndReason::Transferred(_) => "transferred",
        }
    }

    /// Who ended the call, for the record.
    pub fn ended_by(&self) -> &'static str {
        match self {
            EndReason::FreeswitchClosed(_) => "caller",
            EndReason::FreeswitchGone
            | EndReason::FreeswitchError(_)
            | EndReason::FreeswitchTooBig(_) => "freeswitch",
            EndReason::ProviderClosed(_)
            | EndReason::ProviderError(_)
            | EndReason::ProviderFlood { .. } => "provider",
            EndReason::AssistantHangup(_) | EndReason::Transferred(_) => "assistant",
            EndReason::MaxDuration
            | EndReason::IdleTimeout
            | EndReason::Shutdown
            | EndReason::Internal(_) => "voicebridge",
        }
    }

    /// Text for the Close frame we send FreeSWITCH (it shows in `::disconnect`). It
    /// leaves the process, so it carries no URL at all, not even a redacted one.
    fn close_reason(&self) -> String {
        let mut s = crate::redact::without_urls(&self.to_string());
        // A Close reason is at most 123 bytes.
        while s.len() > 120 {
            s.pop();
        }
        s
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::FreeswitchClosed(Some(code)) => {
                write!(f, "FreeSWITCH closed the stream (code {code})")
            }
            EndReason::FreeswitchClosed(None) => write!(f, "FreeSWITCH closed the stream"),
            EndReason::FreeswitchGone => write!(f, "FreeSWITCH connection dropped without a Close"),
            EndReason::FreeswitchError(e) => write!(f, "FreeSWITCH socket error: {e}"),
            EndReason::FreeswitchTooBig(e) => write!(f, "FreeSWITCH sent a {e}"),
            EndReason::ProviderClosed(r) => write!(f, "provider ended: {r}"),
            EndReason::ProviderError(r) => write!(f, "provider error: {r}"),
            EndReason::ProviderFlood { audio, over } => write!(
                f,
                "provider sent {} s of audio in {} s, far faster than real time",
                audio.as_secs(),
                over.as_secs()
            ),
            EndReason::MaxDuration => write!(f, "max_duration_secs reached"),
            EndReason::IdleTimeout => {
                write!(f, "idle_timeout_secs reached: no audio from FreeSWITCH")
            }
            EndReason::Shutdown => write!(f, "voicebridge is shutting down"),
            EndReason::Internal(e) => write!(f, "internal error: {e}"),
            EndReason::AssistantHangup(r) if r.is_empty() => {
                write!(f, "the assistant ended the call")
            }
            EndReason::AssistantHangup(r) => write!(f, "the assistant ended the call: {r}"),
            EndReason::Transferred(to) => write!(f, "transferred to {to}"),
        }
    }
}

/// Counters for the end-of-call summary line.
#[derive(Default, Debug)]
struct Stats {
    fs_messages_in: u64,
    fs_bytes_in: u64,
    frames_to_provider: u64,
    bytes_to_provider: u64,
    frames_dropped: u64,
    provider_audio_events: u64,
    provider_bytes_in: u64,
    late_audio_dropped: u64,
    /// 20 ms frames of assistant audio dropped at the playback queue's cap.
    playback_overflow: u64,
    frames_to_fs: u64,
    bytes_to_fs: u64,
    text_in: u64,
    barge_ins: u64,
    /// ESL commands that could not be queued (ESL down): the call went on without them.
    esl_dropped: u64,
    first_response: Option<Duration>,
    usage: Usage,
    tool_calls: u64,
}

/// The inbound format and which parts of it the URL fixed (metadata may set the rest,
/// if it arrives before the first audio).
struct InboundFormat {
    codec: Codec,
    rate: u32,
    channels: Channels,
    pinned_codec: bool,
    pinned_rate: bool,
    pinned_channels: bool,
}

impl InboundFormat {
    fn mono(&self) -> AudioFormat {
        AudioFormat::new(self.codec, self.rate)
    }
}

/// The caller→provider direction.
struct Upstream {
    reframer: Option<Reframer>,
    transcoder: Option<Transcoder>,
    /// Frames (call format) waiting for the provider to be ready.
    pending: VecDeque<Bytes>,
    frame: Vec<u8>,
    out: Vec<u8>,
}

/// The provider→caller direction.
struct Downstream {
    transcoder: Option<Transcoder>,
    pacer: Pacer,
    playback: Playback,
    converted: Vec<u8>,
    frame: Vec<u8>,
    /// Items interrupted by barge-in: their late audio is dropped.
    interrupted: VecDeque<ItemId>,
    /// Audio received from the provider per item, in ms of its output format, so a
    /// truncate never claims more than was generated.
    generated: VecDeque<(ItemId, u64)>,
    output_format: Option<AudioFormat>,
    /// The provider said the reply is complete (and sent no audio since): `esl_files`
    /// may then send a partial chunk, which mid-reply would just be a short file.
    reply_done: bool,
}

struct Session {
    call_id: String,
    route: Route,
    config: Arc<Config>,
    started: Instant,
    inbound: InboundFormat,
    up: Upstream,
    down: Downstream,
    provider: ProviderHandle,
    provider_input: Option<AudioFormat>,
    metadata_seen: bool,
    context_sent: bool,
    /// The template variables the provider was set up with (for the goodbye).
    vars: BTreeMap<String, String>,
    goodbye: Goodbye,
    last_audio: Instant,
    stats: Stats,
    sink: SplitSink<Ws, Message>,
    drop_warned: bool,
    /// Watches the provider's audio rate (a flood ends the call).
    flood: FloodGuard,
    /// Traffic already added to the metrics.
    flushed: Traffic,
    /// `None` without `[freeswitch.esl]` or without a call id in the URL.
    esl: Option<Esl>,
    /// `esl_files`: this channel's play events.
    play_events: Option<PlayEvents>,
    /// `esl_files`: play events of chunks with a lower `seq` were cut by a barge-in.
    break_seq: u64,
    /// From the metadata, for the lookup, tool webhooks and the record.
    caller_id: String,
    called: String,
    record: RecordBuilder,
    /// Webhook tool calls in flight; each reports here once its result is sent.
    tools: JoinSet<ToolDone>,
    /// The caller lookup in flight; its answer completes the provider's setup.
    lookup: Option<JoinHandle<LookupDone>>,
    /// Set by `end_call`/`transfer_call`: what happens once the last words are played.
    end_action: Option<EndAction>,
    /// A new deadline for the run loop's end timer (set outside the loop).
    rearm_deadline: Option<Instant>,
    records: Option<Records>,
}

/// What the assistant asked for with a built-in tool.
#[derive(Clone, Debug)]
enum EndAction {
    Hangup {
        reason: String,
        asked: Instant,
        /// More assistant audio arrived after a short grace: the full wait applies.
        extended: bool,
    },
    Transfer {
        to: String,
        asked: Instant,
        extended: bool,
    },
}

impl EndAction {
    fn reason(&self) -> EndReason {
        match self {
            EndAction::Hangup { reason, .. } => EndReason::AssistantHangup(reason.clone()),
            EndAction::Transfer { to, .. } => EndReason::Transferred(to.clone()),
        }
    }
}

/// A webhook tool call that finished (its result already went to the provider).
struct ToolDone {
    id: String,
    name: String,
    outcome: tools::Outcome,
    took: Duration,
    error: Option<String>,
}

/// The caller lookup's answer, with the metadata variables it completes.
struct LookupDone {
    vars: BTreeMap<String, String>,
    result: Result<BTreeMap<String, String>, WebhookError>,
    took: Duration,
}

/// Runs the call to its end. Never panics on input; always closes both sides.
pub async fn run(ws: Ws, setup: CallSetup) {
    let CallSetup {
        call_id,
        route,
        request,
        config,
        peer: _,
        guard,
        budget,
        stop,
        esl,
        records,
    } = setup;
    let inbound = InboundFormat {
        codec: request.codec.unwrap_or(route.codec),
        rate: request.rate.unwrap_or(route.sample_rate),
        channels: request.channels.unwrap_or(route.channels),
        pinned_codec: request.codec.is_some(),
        pinned_rate: request.rate.is_some(),
        pinned_channels: request.channels.is_some(),
    };
    let call_format = inbound.mono();
    if call_format.codec != Codec::L16 && call_format.rate != 8000 {
        let (mut sink, stream) = ws.split();
        let reason = EndReason::Internal(format!(
            "{} requires rate 8000, not {}",
            call_format.codec, call_format.rate
        ));
        error!(reason = %reason, "call refused");
        close_freeswitch(&mut sink, stream, &reason, false).await;
        return;
    }
    let playback = Playback::new(route.playback, call_format, config.freeswitch.esl_chunk);
    // ESL commands name the channel by the URL's call id; a made-up id names nothing.
    let esl = esl.filter(|_| request.call_id.is_some());
    let play_events = match (&esl, route.playback) {
        (Some(esl), crate::config::PlaybackMode::EslFiles) => Some(esl.subscribe(&call_id)),
        (None, crate::config::PlaybackMode::EslFiles) => {
            warn!("esl_files playback without a call id in the URL (/call/<uuid>): nothing can be played");
            None
        }
        _ => None,
    };
    // Connect the provider now, in parallel with the first audio, to save first-turn latency.
    let provider = providers::spawn(&config, &route, call_format);
    guard.update(|e| e.provider = provider.name);
    let (sink, mut stream) = ws.split();
    let now = Instant::now();
    let config_transcripts = config.log.transcripts;
    let mut s = Session {
        down: Downstream {
            transcoder: None,
            pacer: Pacer::new(
                call_format,
                playback::pacer_lead(
                    route.playback,
                    route.playback_lead,
                    config.freeswitch.esl_chunk,
                ),
            )
            .with_max_queue(config.freeswitch.playback_max_queue),
            playback,
            converted: Vec::new(),
            frame: Vec::new(),
            interrupted: VecDeque::new(),
            generated: VecDeque::new(),
            output_format: None,
            reply_done: false,
        },
        up: Upstream {
            reframer: None,
            transcoder: None,
            pending: VecDeque::new(),
            frame: Vec::new(),
            out: Vec::new(),
        },
        call_id,
        route,
        config,
        started: now,
        inbound,
        provider,
        provider_input: None,
        metadata_seen: false,
        context_sent: false,
        vars: BTreeMap::new(),
        goodbye: Goodbye::NotSaid,
        last_audio: now,
        stats: Stats::default(),
        sink,
        drop_warned: false,
        flood: FloodGuard::new(),
        flushed: Traffic::default(),
        esl,
        play_events,
        break_seq: 0,
        caller_id: String::new(),
        called: String::new(),
        record: RecordBuilder::new(now.into_std(), config_transcripts),
        tools: JoinSet::new(),
        lookup: None,
        end_action: None,
        rearm_deadline: None,
        records,
    };
    info!(
        provider = s.provider.name,
        format = %call_format,
        channels = %s.inbound.channels,
        playback = ?s.route.playback,
        "call started"
    );
    if s.route.playback == crate::config::PlaybackMode::Binary
        && crate::freeswitch::playback::first_binary_call()
    {
        info!("{}", crate::freeswitch::playback::BINARY_HINT);
    }

    let reason = s.run_loop(&mut stream, &stop).await;
    s.finish(stream, reason, (guard, budget)).await;
}

impl Session {
    async fn run_loop(
        &mut self,
        stream: &mut SplitStream<Ws>,
        stop: &CancellationToken,
    ) -> EndReason {
        let max_deadline = self.started + self.route.call.max_duration;
        let idle = self.route.call.idle_timeout;
        let idle_enabled = !idle.is_zero();
        let far_future = self.started + Duration::from_secs(86_400 * 365);
        // One slow timer per call for everything that needs no precision (idle check,
        // metrics flush), instead of timers per frame.
        let mut housekeeping = tokio::time::interval_at(self.started + HOUSEKEEPING, HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Created once: `cancelled()` registers a waiter under the token's lock, too
        // costly to redo on every wake-up of every call (it showed in the profile).
        let stopped = stop.cancelled();
        let max_timer = sleep_until(max_deadline);
        let tick = sleep_until(far_future);
        let metadata_timer = sleep_until(self.started + METADATA_WAIT);
        tokio::pin!(stopped, max_timer, tick, metadata_timer);
        let mut tick_armed_for: Option<Instant> = None;

        loop {
            if let Some(at) = self.rearm_deadline.take() {
                max_timer.as_mut().reset(at);
            }
            // The goodbye has been generated and released: hang up once FreeSWITCH has
            // played what it holds.
            if self.goodbye == Goodbye::Said
                && self.down.pacer.queued_ms() == 0
                && !self.down.pacer.has_frame()
            {
                let rest = self.down.pacer.buffered_ahead(Instant::now().into_std());
                max_timer.as_mut().reset(Instant::now() + rest);
                self.goodbye = Goodbye::PlayingOut;
            }
            let next = self
                .down
                .pacer
                .next_release(Instant::now().into_std())
                .map(Instant::from_std);
            if next != tick_armed_for {
                if let Some(at) = next {
                    tick.as_mut().reset(at);
                }
                tick_armed_for = next;
            }
            tokio::select! {
                biased;
                _ = &mut max_timer => {
                    match self.goodbye {
                        Goodbye::NotSaid if self.can_say_goodbye() => {
                            let text = providers::template::render(&self.route.call.goodbye, &self.vars);
                            info!(goodbye = %text, "max_duration_secs reached: saying goodbye before hanging up");
                            let _ = self.provider.commands.try_send(ProviderCommand::Say(text));
                            self.goodbye = Goodbye::Saying;
                            max_timer.as_mut().reset(Instant::now() + GOODBYE_MAX);
                        }
                        Goodbye::Saying if self.end_action.is_none() => {
                            warn!(max_secs = GOODBYE_MAX.as_secs(), "goodbye not finished in time: hanging up");
                            return EndReason::MaxDuration;
                        }
                        _ => {
                            return self
                                .end_action
                                .as_ref()
                                .map_or(EndReason::MaxDuration, EndAction::reason)
                        }
                    }
                }
                _ = &mut tick, if tick_armed_for.is_some() => {
                    tick_armed_for = None;
                    if let Err(r) = self.release_due().await {
                        return r;
                    }
                }
                event = self.provider.events.recv() => {
                    let Some(event) = event else {
                        return EndReason::ProviderClosed("provider task ended".to_owned());
                    };
                    if let Err(r) = self.on_provider_event(event).await {
                        return r;
                    }
                    // Audio into an empty queue is due now: send it in this same wake-up
                    // rather than a timer tick later (≈1 ms of added latency otherwise).
                    let now = Instant::now();
                    if self.down.pacer.next_release(now.into_std()).is_some_and(|at| at <= now.into_std()) {
                        if let Err(r) = self.release_due().await {
                            return r;
                        }
                    }
                }
                msg = stream.next() => {
                    if let Err(r) = self.on_freeswitch(msg).await {
                        return r;
                    }
                }
                Some(done) = self.tools.join_next(), if !self.tools.is_empty() => {
                    match done {
                        Ok(done) => self.on_tool_done(done),
                        Err(e) => warn!(error = %e, "tool call task failed"),
                    }
                }
                done = recv_lookup(&mut self.lookup), if self.lookup.is_some() => {
                    self.lookup = None;
                    self.on_lookup(done).await;
                }
                play = recv_play(&mut self.play_events) => self.on_play(play),
                _ = &mut metadata_timer, if !self.context_sent => {
                    info!("no metadata yet: provider set up from the URL alone");
                    self.send_context(BTreeMap::new()).await;
                }
                _ = housekeeping.tick() => {
                    self.flush_metrics();
                    if idle_enabled && self.last_audio.elapsed() >= idle {
                        return EndReason::IdleTimeout;
                    }
                }
                // Last: `biased` polls branches in order and stops at the first ready
                // one, so the token (whose poll takes a lock) is only polled when
                // nothing else woke the call.
                _ = &mut stopped => return EndReason::Shutdown,
            }
        }
    }

    // ---- FreeSWITCH → provider ------------------------------------------------------

    async fn on_freeswitch(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), EndReason> {
        let msg = match msg {
            None => return Err(EndReason::FreeswitchGone),
            Some(Err(e)) => return Err(freeswitch_error(e)),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Binary(data) => {
                self.stats.fs_messages_in += 1;
                self.stats.fs_bytes_in += data.len() as u64;
                self.last_audio = Instant::now();
                self.on_audio(&data);
                Ok(())
            }
            Message::Text(text) => {
                self.stats.text_in += 1;
                if !self.metadata_seen {
                    self.metadata_seen = true;
                    self.on_metadata(text.as_str()).await;
                } else {
                    info!(bytes = text.len(), text = %preview(text.as_str()), "text from FreeSWITCH (send_text)");
                }
                Ok(())
            }
            // tungstenite queues the Pong itself; it goes out with the next read or write.
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(frame) => Err(EndReason::FreeswitchClosed(
                frame.map(|f| u16::from(f.code)),
            )),
            Message::Frame(_) => Ok(()),
        }
    }

    fn on_audio(&mut self, data: &[u8]) {
        if self.up.reframer.is_none() {
            // First audio: the inbound format is final from here on.
            self.up.reframer = Some(Reframer::new(self.inbound.mono(), self.inbound.channels));
            self.ensure_upstream_transcoder();
        }
        let mut frame = std::mem::take(&mut self.up.frame);
        if let Some(reframer) = self.up.reframer.as_mut() {
            reframer.push(data);
        }
        loop {
            frame.clear();
            let Some(reframer) = self.up.reframer.as_mut() else {
                break;
            };
            if !reframer.pop_frame(&mut frame) {
                break;
            }
            self.forward_frame(&frame);
        }
        self.up.frame = frame;
    }

    /// The metadata changed the call's format before any audio flowed: the playback
    /// side (pacer, encoder, assistant→caller transcoder) follows it.
    fn rebuild_playback(&mut self) {
        let call = self.inbound.mono();
        info!(format = %call, channels = %self.inbound.channels, "call format set by the metadata");
        let esl_chunk = self.config.freeswitch.esl_chunk;
        let lead = playback::pacer_lead(self.route.playback, self.route.playback_lead, esl_chunk);
        self.down.pacer =
            Pacer::new(call, lead).with_max_queue(self.config.freeswitch.playback_max_queue);
        self.down.playback = Playback::new(self.route.playback, call, esl_chunk);
        if let Some(output) = self.down.output_format {
            match Transcoder::new(output, call) {
                Ok(t) => self.down.transcoder = Some(t),
                Err(e) => {
                    error!(error = %e, "cannot convert assistant audio to the metadata's format")
                }
            }
        }
    }

    /// Builds the caller→provider transcoder once both ends are known: the provider's
    /// input (at `Ready`) and the call's final format (at the first audio).
    fn ensure_upstream_transcoder(&mut self) {
        if self.up.transcoder.is_some() || self.up.reframer.is_none() {
            return;
        }
        let Some(input) = self.provider_input else {
            return;
        };
        match Transcoder::new(self.inbound.mono(), input) {
            Ok(t) => self.up.transcoder = Some(t),
            Err(e) => error!(error = %e, "cannot convert caller audio for the provider"),
        }
    }

    fn forward_frame(&mut self, frame: &[u8]) {
        let Some(transcoder) = self.up.transcoder.as_mut() else {
            // Provider not ready yet: keep a bounded backlog.
            let max = (MAX_PENDING.as_millis() / 20) as usize;
            if self.up.pending.len() >= max {
                self.up.pending.pop_front();
                self.stats.frames_dropped += 1;
            }
            self.up.pending.push_back(Bytes::copy_from_slice(frame));
            return;
        };
        self.up.out.clear();
        transcoder.process(frame, &mut self.up.out);
        if self.up.out.is_empty() {
            return;
        }
        let payload = Bytes::copy_from_slice(&self.up.out);
        let len = payload.len() as u64;
        match self
            .provider
            .commands
            .try_send(ProviderCommand::Audio(payload))
        {
            Ok(()) => {
                self.stats.frames_to_provider += 1;
                self.stats.bytes_to_provider += len;
            }
            Err(TrySendError::Full(_)) => {
                self.stats.frames_dropped += 1;
                if !self.drop_warned {
                    self.drop_warned = true;
                    warn!("provider is not keeping up: caller audio frames dropped (counted in the summary)");
                }
            }
            // The provider's Closed event (or the end of its channel) ends the call.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    async fn on_metadata(&mut self, text: &str) {
        let (meta, warnings) = metadata::parse(text);
        for w in &warnings {
            warn!(warning = %w, "metadata");
        }
        let nothing_played = self.stats.frames_to_fs == 0 && self.down.pacer.queued_ms() == 0;
        if self.up.reframer.is_none() && nothing_played {
            let before = (self.inbound.mono(), self.inbound.channels);
            let i = &mut self.inbound;
            if let (Some(c), false) = (meta.codec, i.pinned_codec) {
                i.codec = c;
            }
            if let (Some(r), false) = (meta.sample_rate, i.pinned_rate) {
                i.rate = r;
            }
            if let (Some(c), false) = (meta.channels, i.pinned_channels) {
                i.channels = c;
            }
            let f = self.inbound.mono();
            if f.codec != Codec::L16 && f.rate != 8000 {
                warn!(format = %f, "metadata format is impossible (G.711 is 8000 Hz); using L16");
                self.inbound.codec = Codec::L16;
            }
            if (self.inbound.mono(), self.inbound.channels) != before {
                self.rebuild_playback();
            }
        } else if meta.codec.is_some_and(|c| c != self.inbound.codec)
            || meta.sample_rate.is_some_and(|r| r != self.inbound.rate)
            || meta.channels.is_some_and(|c| c != self.inbound.channels)
        {
            warn!(
                format = %self.inbound.mono(),
                "metadata names a different audio format but arrived after the audio: keeping the URL/route format"
            );
        }
        if meta.call_id.as_deref().is_some_and(|id| id != self.call_id) {
            info!(
                metadata_call_id = meta.call_id.as_deref().unwrap_or(""),
                "metadata carries another call id; the URL's is kept"
            );
        }
        info!(
            caller_id = meta.caller_id.as_deref().unwrap_or(""),
            called = meta.called.as_deref().unwrap_or(""),
            keys = meta.vars.len(),
            raw = meta.raw.is_some(),
            "metadata received"
        );
        self.caller_id = meta.caller_id.clone().unwrap_or_default();
        self.called = meta.called.clone().unwrap_or_default();
        let mut vars = providers::template::metadata_vars(meta.vars);
        if let Some(raw) = meta.raw {
            vars.insert("metadata".to_owned(), raw);
        }
        if self.context_sent {
            info!("metadata arrived after the provider was set up: not used for its instructions");
            return;
        }
        self.send_context(vars).await;
    }

    /// A goodbye is configured, and the provider is up and can be told what to say.
    fn can_say_goodbye(&self) -> bool {
        !self.route.call.goodbye.is_empty()
            && providers::can_say(self.route.call.provider)
            && self.provider_input.is_some()
    }

    /// Gives the provider the template variables it sets itself up with (once), after
    /// the route's caller lookup if it has one.
    async fn send_context(&mut self, mut vars: BTreeMap<String, String>) {
        self.context_sent = true;
        providers::template::set_built_ins(&mut vars, &self.call_id, &self.route.name);
        if let Some(cfg) = self.route.call.context.clone() {
            let info = self.call_info();
            let secret = self.config.webhooks.secret.clone();
            let max_body = self.config.webhooks.max_response_bytes;
            let started = Instant::now();
            self.lookup = Some(tokio::spawn(
                async move {
                    let result = crate::lookup::lookup(&cfg, &info, &vars, &secret, max_body).await;
                    LookupDone {
                        vars,
                        result,
                        took: started.elapsed(),
                    }
                }
                .in_current_span(),
            ));
            return;
        }
        self.provide_context(vars).await;
    }

    /// The lookup answered (or failed): the provider is set up either way.
    async fn on_lookup(&mut self, done: Result<LookupDone, tokio::task::JoinError>) {
        let Ok(LookupDone {
            mut vars,
            result,
            took,
        }) = done
        else {
            warn!("caller lookup task failed: the call proceeds with the defaults");
            self.record.lookup = "error";
            call_metrics::context_lookup(&self.route.name, "error");
            return self.provide_context(BTreeMap::new()).await;
        };
        let outcome = crate::lookup::outcome(&result);
        self.record.lookup = outcome;
        call_metrics::context_lookup(&self.route.name, outcome);
        let took_ms = took.as_millis() as u64;
        match result {
            Ok(found) => {
                info!(fields = found.len(), took_ms, "caller lookup answered");
                providers::template::merge_lookup(&mut vars, found);
            }
            Err(e) => {
                warn!(error = %e, took_ms, "caller lookup failed: the call proceeds with the defaults")
            }
        }
        self.provide_context(vars).await;
    }

    async fn provide_context(&mut self, vars: BTreeMap<String, String>) {
        self.vars = vars.clone();
        let context = CallContext {
            call_id: self.call_id.clone(),
            route: self.route.name.clone(),
            vars,
        };
        let _ = self
            .provider
            .commands
            .send(ProviderCommand::Context(Arc::new(context)))
            .await;
    }

    // ---- tools ----------------------------------------------------------------------

    fn call_info(&self) -> CallInfo {
        CallInfo {
            call_id: self.call_id.clone(),
            route: self.route.name.clone(),
            caller_id: self.caller_id.clone(),
            called: self.called.clone(),
        }
    }

    /// The model calls a function. Webhook tools run in their own task (the call's
    /// audio never waits for a webhook); everything else is answered at once.
    fn on_tool_call(&mut self, call: ToolCall) {
        let now = Instant::now();
        self.stats.tool_calls += 1;
        self.record
            .tool_started(&call.id, &call.name, &call.arguments, now.into_std());
        match tools::resolve(&self.route.call, &call.name) {
            Resolved::Webhook(_)
                if self.tools.len() >= self.config.webhooks.max_tool_calls_in_flight =>
            {
                let limit = self.config.webhooks.max_tool_calls_in_flight;
                warn!(tool = %call.name, tool_call_id = %call.id, limit, "too many tool calls in flight: answered with an error at once");
                let result = tools::busy(&call, limit);
                call_metrics::tool_call(&self.route.name, &call.name, "busy");
                self.record
                    .tool_finished(&call.id, "busy", Duration::ZERO, result.error_message());
                self.send_command(ProviderCommand::ToolResult(result));
            }
            Resolved::Webhook(spec) => {
                info!(tool = %call.name, tool_call_id = %call.id, "tool call: asking the webhook");
                let spec = spec.clone();
                let info = self.call_info();
                let secret = self.config.webhooks.secret.clone();
                let max_body = self.config.webhooks.max_response_bytes;
                let commands = self.provider.commands.clone();
                self.tools.spawn(
                    async move {
                        let (result, outcome, took) =
                            tools::run_webhook(&spec, &call, &info, &secret, max_body).await;
                        let error = result.error_message().map(str::to_owned);
                        let _ = commands.send(ProviderCommand::ToolResult(result)).await;
                        ToolDone {
                            id: call.id,
                            name: call.name,
                            outcome,
                            took,
                            error,
                        }
                    }
                    .in_current_span(),
                );
            }
            Resolved::EndCall => {
                let reason = reason_argument(&call.arguments);
                info!(tool = %call.name, reason = %reason, "the assistant ends the call once its last words are played");
                self.answer_builtin(
                    &call,
                    tools::ok(
                        &call,
                        serde_json::json!({"status": "ending", "note": "The call ends as soon as what you said has been played. Say nothing more."}),
                    ),
                );
                self.request_end(EndAction::Hangup {
                    reason,
                    asked: now,
                    extended: false,
                });
            }
            Resolved::TransferCall if self.esl.is_none() => {
                warn!(tool = %call.name, "transfer_call needs the Event Socket and a call id in the URL (/call/<uuid>): refused");
                self.answer_builtin(
                    &call,
                    tools::error(&call, "transferring is not possible on this line right now; offer to take a message instead"),
                );
            }
            Resolved::TransferCall => {
                let to = self.route.call.transfer_to.clone();
                info!(tool = %call.name, destination = %to, reason = %reason_argument(&call.arguments), "the assistant transfers the call once its last words are played");
                self.answer_builtin(
                    &call,
                    tools::ok(
                        &call,
                        serde_json::json!({"status": "transferring", "note": "The caller is put through as soon as what you said has been played. Say nothing more."}),
                    ),
                );
                self.request_end(EndAction::Transfer {
                    to,
                    asked: now,
                    extended: false,
                });
            }
            Resolved::Unknown => {
                warn!(tool = %call.name, "the model called a tool this route does not offer: answered with an error");
                self.answer_builtin(
                    &call,
                    tools::error(&call, format!("there is no tool called {:?}", call.name)),
                );
            }
        }
    }

    /// Answers a call that needs no webhook, and records it as finished.
    fn answer_builtin(&mut self, call: &ToolCall, mut result: ToolResult) {
        let builtin = matches!(call.name.as_str(), tools::END_CALL | tools::TRANSFER_CALL);
        if builtin && !result.is_error {
            // The model has said its last words: a new response would be cut off.
            result.reply = false;
        }
        let outcome = if !result.is_error {
            "ok"
        } else if builtin {
            "error"
        } else {
            "unknown"
        };
        let label = if outcome == "unknown" {
            "unknown"
        } else {
            call.name.as_str()
        };
        call_metrics::tool_call(&self.route.name, label, outcome);
        self.record
            .tool_finished(&call.id, outcome, Duration::ZERO, result.error_message());
        self.send_command(ProviderCommand::ToolResult(result));
    }

    fn on_tool_done(&mut self, done: ToolDone) {
        let took_ms = done.took.as_millis() as u64;
        match &done.error {
            None => {
                info!(tool = %done.name, tool_call_id = %done.id, took_ms, "tool call answered")
            }
            Some(e) => {
                warn!(tool = %done.name, tool_call_id = %done.id, took_ms, error = %e, "tool call failed: the model was told")
            }
        }
        call_metrics::tool_call(&self.route.name, &done.name, done.outcome.name());
        call_metrics::tool_duration(&done.name, done.took);
        self.record.tool_finished(
            &done.id,
            done.outcome.name(),
            done.took,
            done.error.as_deref(),
        );
    }

    /// A command that must not be lost and must not stall the call: queued at once if
    /// there is room, else from a task of its own.
    fn send_command(&self, command: ProviderCommand) {
        match self.provider.commands.try_send(command) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(command)) => {
                let commands = self.provider.commands.clone();
                tokio::spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
        }
    }

    /// `end_call`/`transfer_call`: wait for the reply in progress to finish and play
    /// out (at most `GOODBYE_MAX`), then act. If the reply was already complete, a short
    /// grace lets the model add a last sentence.
    fn request_end(&mut self, action: EndAction) {
        if self.end_action.is_some() {
            debug!("the call is already ending: second end/transfer request ignored");
            return;
        }
        let idle = self.down.reply_done && self.down.pacer.queued_ms() == 0;
        let wait = if idle { END_GRACE } else { GOODBYE_MAX };
        self.end_action = Some(action);
        self.goodbye = Goodbye::Saying;
        self.rearm_deadline = Some(Instant::now() + wait);
    }

    // ---- provider → FreeSWITCH ------------------------------------------------------

    async fn on_provider_event(&mut self, event: ProviderEvent) -> Result<(), EndReason> {
        match event {
            ProviderEvent::Ready { input, output } => {
                info!(input = %input, output = %output, "provider ready");
                self.provider_input = Some(input);
                self.down.output_format = Some(output);
                let call = self.inbound.mono();
                self.down.transcoder = Some(Transcoder::new(output, call).map_err(|e| {
                    EndReason::Internal(format!(
                        "assistant audio {output} cannot be played to a {call} call: {e}"
                    ))
                })?);
                if self.up.reframer.is_some() {
                    self.ensure_upstream_transcoder();
                    if self.up.transcoder.is_none() {
                        return Err(EndReason::Internal(format!(
                            "caller audio {call} cannot be sent as {input}"
                        )));
                    }
                }
                let pending = std::mem::take(&mut self.up.pending);
                if self.up.transcoder.is_some() {
                    for frame in &pending {
                        self.forward_frame(frame);
                    }
                } else {
                    self.up.pending = pending;
                }
            }
            ProviderEvent::Audio { item, data } => self.on_assistant_audio(item, &data)?,
            ProviderEvent::SpeechStopped => {
                self.record.caller_turn_ended(Instant::now().into_std())
            }
            ProviderEvent::ToolCall(call) => self.on_tool_call(call),
            ProviderEvent::ToolCancelled(ids) => {
                for id in &ids {
                    info!(tool_call_id = %id, "tool call cancelled by the provider");
                    self.record
                        .tool_finished(id, "cancelled", Duration::ZERO, None);
                }
            }
            ProviderEvent::SpeechStarted => self.barge_in().await?,
            ProviderEvent::ResponseDone => {
                self.record.assistant_turn_done();
                if self.goodbye == Goodbye::Saying {
                    self.goodbye = Goodbye::Said;
                }
                self.down.pacer.finish();
                self.down.reply_done = true;
                if !self.down.pacer.has_frame() && self.send_partial_chunk().await? {
                    if self.stats.first_response.is_none() {
                        self.stats.first_response = Some(self.started.elapsed());
                    }
                    self.flush_sink().await?;
                }
            }
            ProviderEvent::Transcript {
                who,
                text,
                is_final,
            } => {
                let text = crate::text_cap::clip(&text, crate::text_cap::MAX_TURN_TEXT);
                if is_final {
                    self.record
                        .transcript(who, &text, Instant::now().into_std());
                }
                if self.config.log.transcripts && is_final {
                    info!(who = who.name(), text = %text, "transcript");
                } else if self.config.log.transcripts {
                    debug!(who = who.name(), text = %text, "partial transcript");
                }
            }
            ProviderEvent::Usage(u) => {
                self.stats.usage.input_tokens += u.input_tokens;
                self.stats.usage.output_tokens += u.output_tokens;
            }
            ProviderEvent::Warning(w) => warn!(warning = %w, "provider warning"),
            ProviderEvent::Error {
                recoverable: true,
                code,
                message,
            } => {
                call_metrics::provider_error(self.provider.name, &code);
                warn!(code = %code, detail = %message, "provider error (call continues)");
            }
            ProviderEvent::Error {
                recoverable: false,
                code,
                message,
            } => {
                call_metrics::provider_error(self.provider.name, &code);
                return Err(EndReason::ProviderError(format!("{code}: {message}")));
            }
            ProviderEvent::Closed { reason } => return Err(EndReason::ProviderClosed(reason)),
        }
        Ok(())
    }

    fn on_assistant_audio(&mut self, item: ItemId, data: &[u8]) -> Result<(), EndReason> {
        self.stats.provider_audio_events += 1;
        if let Some(format) = self.down.output_format {
            let audio = Duration::from_micros(
                data.len() as u64 * 1_000_000 / format.bytes_per_sec().max(1) as u64,
            );
            if self.flood.on_audio(Instant::now().into_std(), audio) {
                let over = crate::audio::flood::WINDOW * crate::audio::flood::HOT_WINDOWS;
                let audio = self.flood.flood_audio();
                error!(
                    audio_secs = audio.as_secs(),
                    over_secs = over.as_secs(),
                    "provider floods assistant audio far faster than real time: ending the call"
                );
                return Err(EndReason::ProviderFlood { audio, over });
            }
        }
        // The model is still talking after end_call/transfer_call: let it finish.
        if let Some(
            EndAction::Hangup {
                asked, extended, ..
            }
            | EndAction::Transfer {
                asked, extended, ..
            },
        ) = self.end_action.as_mut()
        {
            if !*extended && self.goodbye == Goodbye::Saying {
                *extended = true;
                self.rearm_deadline = Some(*asked + GOODBYE_MAX);
            }
        }
        self.stats.provider_bytes_in += data.len() as u64;
        if self.down.interrupted.contains(&item) {
            self.stats.late_audio_dropped += 1;
            return Ok(());
        }
        let Some(transcoder) = self.down.transcoder.as_mut() else {
            warn!("provider sent audio before it was ready: dropped");
            return Ok(());
        };
        if let Some(format) = self.down.output_format {
            let ms = (data.len() as u64 * 1000) / format.bytes_per_sec() as u64;
            match self.down.generated.iter_mut().find(|(i, _)| *i == item) {
                Some((_, total)) => *total += ms,
                None => {
                    if self.down.generated.len() >= MAX_INTERRUPTED {
                        self.down.generated.pop_front();
                    }
                    self.down.generated.push_back((item.clone(), ms));
                }
            }
        }
        self.down.converted.clear();
        transcoder.process(data, &mut self.down.converted);
        let overflow = self.down.pacer.push(&item, &self.down.converted);
        if overflow > 0 {
            if self.stats.playback_overflow == 0 {
                warn!(
                    max_queue_ms = self.config.freeswitch.playback_max_queue.as_millis() as u64,
                    "playback queue full (provider sends faster than real time): assistant audio dropped (counted)"
                );
            }
            self.stats.playback_overflow += overflow;
        }
        self.down.reply_done = false;
        Ok(())
    }

    /// Releases every frame that is due, in one write batch.
    async fn release_due(&mut self) -> Result<(), EndReason> {
        let now = Instant::now().into_std();
        let mut sent = 0;
        let mut frame = std::mem::take(&mut self.down.frame);
        loop {
            frame.clear();
            if !self.down.pacer.pop_due(now, &mut frame) {
                break;
            }
            let msg = self.down.playback.frame(&frame);
            self.stats.frames_to_fs += 1;
            self.stats.bytes_to_fs += frame.len() as u64;
            let Some(msg) = msg else {
                continue;
            };
            sent += 1;
            if let Err(e) = self.sink.feed(msg).await {
                self.down.frame = frame;
                return Err(freeswitch_error(e));
            }
        }
        self.down.frame = frame;
        if self.down.reply_done && !self.down.pacer.has_frame() && self.send_partial_chunk().await?
        {
            sent += 1;
        }
        if sent > 0 {
            if self.stats.first_response.is_none() {
                let latency = self.started.elapsed();
                self.stats.first_response = Some(latency);
                call_metrics::first_response(self.provider.name, latency);
            }
            if let Some(latency) = self.record.audio_played(Instant::now().into_std()) {
                call_metrics::turn_latency(self.provider.name, latency);
            }
            self.flush_sink().await?;
        }
        Ok(())
    }

    /// `esl_files`: sends the chunk gathered so far, once the reply is fully released
    /// (waiting for more would hold its last words back). True if one was sent.
    async fn send_partial_chunk(&mut self) -> Result<bool, EndReason> {
        let Some(msg) = self.down.playback.flush_chunk() else {
            return Ok(false);
        };
        self.sink.feed(msg).await.map_err(freeswitch_error)?;
        Ok(true)
    }

    /// Barge-in: in this same tick, empty our queue, stop FreeSWITCH's buffer and tell
    /// the provider how much of the item the caller actually got.
    async fn barge_in(&mut self) -> Result<(), EndReason> {
        let event_at = Instant::now();
        let now = event_at.into_std();
        let playing =
            self.down.pacer.queued_ms() > 0 || !self.down.pacer.buffered_ahead(now).is_zero();
        if !playing {
            debug!("caller speech started while nothing was playing");
            return Ok(());
        }
        let flushed = self.down.pacer.flush(now);
        self.stats.barge_ins += 1;
        // The resampler still holds the tail of the interrupted reply: start the next
        // reply from a clean filter instead of playing that tail first.
        if let Some(t) = self.down.transcoder.as_ref() {
            if let Ok(fresh) = Transcoder::new(t.from(), t.to()) {
                self.down.transcoder = Some(fresh);
            }
        }
        let clear = self.down.playback.clear();
        if let Err(e) = self.sink.feed(clear).await {
            return Err(freeswitch_error(e));
        }
        // Builds that play streamAudio or files have their own buffer, which only ESL
        // can stop; the binary-frame forks honour clearAudio.
        if self.route.playback != crate::config::PlaybackMode::Binary {
            self.break_seq = self.down.playback.next_seq();
            if let Some(esl) = &self.esl {
                if !esl.uuid_break(&self.call_id) {
                    self.stats.esl_dropped += 1;
                }
            }
        }
        self.flush_sink().await?;
        call_metrics::barge_in(self.provider.name, event_at.elapsed());
        if let Some(item) = flushed.item.clone() {
            let generated = self
                .down
                .generated
                .iter()
                .find(|(i, _)| *i == item)
                .map_or(flushed.released_ms, |(_, ms)| *ms);
            let played_ms = flushed.released_ms.min(generated);
            if self.down.interrupted.len() >= MAX_INTERRUPTED {
                self.down.interrupted.pop_front();
            }
            self.down.interrupted.push_back(item.clone());
            info!(item = %item, played_ms, dropped_ms = flushed.dropped_ms, "barge-in: playback flushed");
            let _ = self
                .provider
                .commands
                .try_send(ProviderCommand::Truncate { item, played_ms });
        } else {
            info!(
                dropped_ms = flushed.dropped_ms,
                "barge-in: playback flushed"
            );
        }
        Ok(())
    }

    /// `esl_files`: the module wrote one of our chunks to a file; play it, unless a
    /// barge-in cut that chunk.
    fn on_play(&mut self, play: Option<PlayEvent>) {
        let Some(play) = play else {
            self.play_events = None;
            return;
        };
        if play.seq.is_some_and(|seq| seq < self.break_seq) {
            debug!(file = %play.file, "play event of a chunk cut by barge-in: not played");
            return;
        }
        if let Some(esl) = &self.esl {
            if !esl.uuid_broadcast(&self.call_id, &play.file) {
                self.stats.esl_dropped += 1;
            }
        }
    }

    async fn flush_sink(&mut self) -> Result<(), EndReason> {
        match tokio::time::timeout(WRITE_STALL, self.sink.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(freeswitch_error(e)),
            Err(_) => Err(EndReason::FreeswitchError(format!(
                "socket accepted nothing for {} s",
                WRITE_STALL.as_secs()
            ))),
        }
    }

    /// Running totals of this call, for the metrics.
    fn traffic(&self) -> Traffic {
        let s = &self.stats;
        Traffic {
            fs_in_frames: s.fs_messages_in,
            fs_in_bytes: s.fs_bytes_in,
            fs_out_frames: s.frames_to_fs,
            fs_out_bytes: s.bytes_to_fs,
            to_provider_frames: s.frames_to_provider,
            to_provider_bytes: s.bytes_to_provider,
            from_provider_frames: s.provider_audio_events,
            from_provider_bytes: s.provider_bytes_in,
            dropped_to_provider: s.frames_dropped,
            late_audio: s.late_audio_dropped,
            playback_overflow: s.playback_overflow,
        }
    }

    fn flush_metrics(&mut self) {
        let now = self.traffic();
        Traffic::flush_delta(&now, &self.flushed);
        self.flushed = now;
    }

    // ---- the end --------------------------------------------------------------------

    fn build_record(&self, reason: &EndReason) -> serde_json::Value {
        let s = &self.stats;
        let price = self.config.prices.of(self.route.call.provider);
        let cost = price.cost(
            s.usage.input_tokens,
            s.usage.output_tokens,
            self.started.elapsed(),
        );
        let transfer_to = match reason {
            EndReason::Transferred(to) => Some(to.as_str()),
            _ => None,
        };
        self.record.build(&call_record::Ending {
            call_id: &self.call_id,
            route: &self.route.name,
            provider: self.provider.name,
            caller_id: &self.caller_id,
            called: &self.called,
            end_reason: reason.tag(),
            end_detail: reason.to_string(),
            ended_by: reason.ended_by(),
            transfer_to,
            barge_ins: s.barge_ins,
            first_response: s.first_response,
            usage: s.usage,
            cost,
            currency: &self.config.prices.currency,
            audio: serde_json::json!({
                "fs_messages_in": s.fs_messages_in,
                "fs_bytes_in": s.fs_bytes_in,
                "frames_to_provider": s.frames_to_provider,
                "bytes_to_provider": s.bytes_to_provider,
                "frames_dropped": s.frames_dropped,
                "provider_audio_events": s.provider_audio_events,
                "provider_bytes_in": s.provider_bytes_in,
                "frames_to_fs": s.frames_to_fs,
                "bytes_to_fs": s.bytes_to_fs,
                "late_audio_dropped": s.late_audio_dropped,
                "playback_overflow_frames": s.playback_overflow,
            }),
        })
    }

    /// `slots`: the call's registry entry and budget ticket, released just before the
    /// summary line, so whoever reads "call ended" sees the slot free and the time charged.
    async fn finish(
        mut self,
        stream: SplitStream<Ws>,
        reason: EndReason,
        slots: (CallGuard, Option<crate::budget::Ticket>),
    ) {
        let fs_initiated = matches!(reason, EndReason::FreeswitchClosed(_));
        let fs_alive = !matches!(
            reason,
            EndReason::FreeswitchGone | EndReason::FreeswitchError(_)
        );
        // The provider first: it must stop billing even if FreeSWITCH is slow to close.
        let _ = self.provider.commands.try_send(ProviderCommand::Close);
        if fs_alive {
            close_freeswitch(&mut self.sink, stream, &reason, fs_initiated).await;
        }
        // Tool calls still running are of no use any more.
        self.tools.abort_all();
        self.record.abandon_running();
        if let Some(lookup) = self.lookup.take() {
            lookup.abort();
        }
        // We ended a call FreeSWITCH still has: without a hang-up the media bug stays
        // attached and the caller sits in silence. Not on shutdown: a daemon going
        // away does not hang up calls wholesale; the dialplan decides what follows.
        // A transfer detaches the stream and sends the channel on instead.
        if let EndReason::Transferred(to) = &reason {
            if let Some(esl) = &self.esl {
                let stopped = esl.uuid_audio_stream_stop(&self.call_id);
                if !esl.uuid_transfer(&self.call_id, to) {
                    self.stats.esl_dropped += 1;
                    error!(destination = %to, "transfer failed: the Event Socket did not take uuid_transfer");
                } else if !stopped {
                    self.stats.esl_dropped += 1;
                }
            }
        } else if fs_alive && !fs_initiated && reason != EndReason::Shutdown {
            if let Some(esl) = &self.esl {
                if !esl.uuid_kill(&self.call_id) {
                    self.stats.esl_dropped += 1;
                }
            }
        }
        self.flush_metrics();
        call_metrics::call_ended(&self.route.name, self.provider.name, reason.tag());
        call_metrics::esl_dropped(self.stats.esl_dropped);
        drop(slots);
        let record = self.build_record(&reason);
        if let Some(records) = &self.records {
            records.submit(record);
        }
        // The close handshake is done: close FreeSWITCH's TCP connection now. The
        // module's hang-up (libwsc `disconnect()`) blocks until it sees the TCP close,
        // and must not wait for the provider's own close (up to 500 ms) below.
        drop(self.sink);
        let mut task = self.provider.task;
        if tokio::time::timeout(CLOSE_WAIT, &mut task).await.is_err() {
            task.abort();
            warn!("provider did not close within 1 s: aborted");
        }
        let s = &self.stats;
        let level_is_error = matches!(
            reason,
            EndReason::ProviderError(_)
                | EndReason::Internal(_)
                | EndReason::FreeswitchError(_)
                | EndReason::FreeswitchTooBig(_)
        );
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let first_response_ms = s.first_response.map(|d| d.as_millis() as u64);

        macro_rules! summary {
            ($level:ident) => {
                $level!(
                    route = %self.route.name,
                    provider = self.provider.name,
                    duration_ms,
                    fs_messages_in = s.fs_messages_in,
                    fs_bytes_in = s.fs_bytes_in,
                    frames_to_provider = s.frames_to_provider,
                    bytes_to_provider = s.bytes_to_provider,
                    frames_dropped = s.frames_dropped,
                    provider_audio_events = s.provider_audio_events,
                    provider_bytes_in = s.provider_bytes_in,
                    late_audio_dropped = s.late_audio_dropped,
                    playback_overflow_frames = s.playback_overflow,
                    frames_to_fs = s.frames_to_fs,
                    bytes_to_fs = s.bytes_to_fs,
                    text_in = s.text_in,
                    first_response_ms,
                    barge_ins = s.barge_ins,
                    esl_dropped = s.esl_dropped,
                    input_tokens = s.usage.input_tokens,
                    output_tokens = s.usage.output_tokens,
                    tool_calls = s.tool_calls,
                    ended_by = reason.ended_by(),
                    end_reason = reason.tag(),
                    end_detail = %reason,
                    "call ended"
                )
            };
        }
        if level_is_error {
            summary!(error);
        } else {
            summary!(info);
        }
    }
}

/// Closes the FreeSWITCH side properly: our Close (or the echo of theirs, which
/// tungstenite queued), flushed at once because the module waits only 1 s, then the
/// rest of their side until the TCP stream ends.
async fn close_freeswitch(
    sink: &mut SplitSink<Ws, Message>,
    mut stream: SplitStream<Ws>,
    reason: &EndReason,
    fs_initiated: bool,
) {
    let result = tokio::time::timeout(CLOSE_WAIT, async {
        if fs_initiated {
            // The echo is queued; any read or write flushes it.
            let _ = sink.flush().await;
        } else {
            let code = match reason {
                EndReason::Shutdown => CloseCode::Away,
                EndReason::Internal(_) | EndReason::ProviderError(_) => CloseCode::Error,
                EndReason::FreeswitchTooBig(_) => CloseCode::Size,
                _ => CloseCode::Normal,
            };
            let frame = CloseFrame {
                code,
                reason: reason.close_reason().into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    if result.is_err() {
        debug!("FreeSWITCH did not finish the close handshake within 1 s");
    }
}

fn freeswitch_error(e: tungstenite::Error) -> EndReason {
    use tungstenite::error::{CapacityError, Error, ProtocolError};
    match e {
        Error::ConnectionClosed | Error::AlreadyClosed => EndReason::FreeswitchClosed(None),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => EndReason::FreeswitchGone,
        Error::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            EndReason::FreeswitchGone
        }
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            EndReason::FreeswitchTooBig(format!(
                "message of {size} bytes, larger than the {max_size}-byte limit"
            ))
        }
        other => EndReason::FreeswitchError(other.to_string()),
    }
}

/// The lookup's answer, or never when none is running.
async fn recv_lookup(
    lookup: &mut Option<JoinHandle<LookupDone>>,
) -> Result<LookupDone, tokio::task::JoinError> {
    match lookup {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// The `reason` argument of a built-in tool, if the model gave one.
fn reason_argument(args: &serde_json::Value) -> String {
    args.get("reason")
        .and_then(|r| r.as_str())
        .map(|r| preview(r).to_owned())
        .unwrap_or_default()
}

/// The next play event, or never when the call has no play events.
async fn recv_play(events: &mut Option<PlayEvents>) -> Option<PlayEvent> {
    match events {
        Some(e) => e.recv().await,
        None => std::future::pending().await,
    }
}

/// The start of a text for a log line (never the whole of an arbitrary-size frame).
fn preview(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
