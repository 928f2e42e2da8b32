//! One call's chan_websocket socket behind the telephony interface (`TelephonyLeg`):
//! binary messages are the caller's audio, TEXT frames control events (`control`), and
//! the engine's actions become binary audio in whole frames plus commands (`playout`).
//!
//! The call's format comes with `MEDIA_START`, which Asterisk can send after the first
//! audio (issue #1712, once over 1 s): audio that comes first is held (bounded in bytes
//! and time) and handed on behind the metadata, so the engine still learns the format
//! before any audio, as it does for a FreeSWITCH metadata frame that comes late.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use crate::audio::flood::{self, FloodGuard};
use crate::audio::{AudioFormat, Channels};
use crate::config::Route;
use crate::telephony::freeswitch::leg::{close_frame, close_handshake, error_event, Ws};
use crate::telephony::{
    Hangup, Metadata, PinnedFormat, PlayoutMarks, TelephonyAction, TelephonyEvent, TelephonyLeg,
};
use crate::ws_read::LastMessage;

use super::control::{self, Command, ControlFormat, Event, MediaStart};
use super::playout::{Out, Playout};
use super::request::AsteriskRequest;
use super::{MAX_BINARY_BYTES, MAX_TEXT_BYTES};

/// Audio before `MEDIA_START` is held this long at most (from the first of it), then
/// handed on in the route's format.
const EARLY_WAIT: Duration = Duration::from_secs(2);
/// ... and this much at most (2 s of slin48); beyond it the oldest goes.
const EARLY_MAX_BYTES: usize = 192_000;
/// A socket that accepts nothing for this long is dead.
const WRITE_STALL: Duration = Duration::from_secs(5);
/// A playout mark after this much released audio (the engine's `PlayoutMarks::every`).
const MARK_EVERY: Duration = Duration::from_millis(100);

/// The Asterisk side of one call.
pub struct AsteriskLeg {
    /// Not split: reads and writes happen in turn on the call's task.
    ws: Ws,
    /// The last message read, kept until the next ([`crate::ws_read`]).
    last_read: LastMessage,
    request: AsteriskRequest,
    /// The format our commands are written in: the one `MEDIA_START` came in.
    control: ControlFormat,
    start: Option<MediaStart>,
    /// Caller audio that came before `MEDIA_START`.
    early: VecDeque<Bytes>,
    early_bytes: usize,
    early_dropped: usize,
    early_deadline: Option<Instant>,
    /// Events to hand the engine before reading the socket again.
    queued: VecDeque<TelephonyEvent>,
    playout: Playout,
    lead: Duration,
    /// Commands Asterisk answered with `ERROR` (e.g. a passthrough channel) or that the
    /// XOFF hold dropped: the call went on without them.
    dropped: u64,
    /// The caller's audio format (the route's until `MEDIA_START`), for the flood guard.
    format: AudioFormat,
    /// Asterisk sends one frame per 20 ms: far more, second after second, is a broken
    /// or hostile peer, and the call ends.
    flood: FloodGuard,
    /// Caller audio dropped unread because its window was already far over real time.
    flood_dropped: Duration,
    /// We ended the call for bad input on a working socket (the engine's `Error` event
    /// means a lost connection, after which nothing is sent): `close` still hangs up.
    bad_input: Option<&'static str>,
    /// Messages decided outside `perform` (`ANSWER`, what `MEDIA_XON` releases), sent
    /// with the next flush (the call task flushes after every event).
    pending_out: VecDeque<Message>,
}

impl AsteriskLeg {
    pub fn new(ws: Ws, route: &Route, request: AsteriskRequest) -> AsteriskLeg {
        let format = AudioFormat::new(route.codec, route.sample_rate);
        AsteriskLeg {
            ws,
            last_read: LastMessage::default(),
            request,
            control: ControlFormat::Json,
            start: None,
            early: VecDeque::new(),
            early_bytes: 0,
            early_dropped: 0,
            early_deadline: None,
            queued: VecDeque::new(),
            playout: Playout::new(format.bytes_per_frame(), format.codec),
            lead: route.playback_lead,
            dropped: 0,
            format,
            flood: FloodGuard::new(),
            flood_dropped: Duration::ZERO,
            bad_input: None,
            pending_out: VecDeque::new(),
        }
    }

    /// One inbound message as an event (`None`: nothing for the engine).
    fn event(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<TelephonyEvent> {
        self.last_read.keep(&msg);
        let msg = match msg {
            None => return Some(TelephonyEvent::Gone),
            Some(Err(e)) => return Some(error_event(e)),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Binary(data) if data.len() > MAX_BINARY_BYTES => {
                Some(TelephonyEvent::TooBig(format!(
                    "binary message of {} bytes (Asterisk sends at most {MAX_BINARY_BYTES})",
                    data.len()
                )))
            }
            Message::Binary(data) => {
                let audio = Duration::from_micros(
                    data.len() as u64 * 1_000_000 / self.format.bytes_per_sec().max(1) as u64,
                );
                if self.flood.on_audio(std::time::Instant::now(), audio) {
                    self.bad_input = Some("caller audio flood");
                    return Some(TelephonyEvent::Error(format!(
                        "caller audio floods: {} ms in {} s, over {}x real time \
                         ({} ms of it dropped unprocessed)",
                        self.flood.flood_audio().as_millis(),
                        (flood::WINDOW * flood::HOT_WINDOWS).as_secs(),
                        flood::RATIO,
                        self.flood_dropped.as_millis()
                    )));
                }
                if self.flood.window_full() {
                    // Read (so the flood is measured and the socket keeps moving) but
                    // not decoded: a busy daemon must not fall behind on this call's
                    // socket, or on the others, while the flood builds up.
                    self.flood_dropped += audio;
                    return None;
                }
                if self.start.is_none() {
                    self.hold_early(data);
                    return None;
                }
                Some(TelephonyEvent::Audio(data))
            }
            Message::Text(text) if text.len() > MAX_TEXT_BYTES => {
                Some(TelephonyEvent::TooBig(format!(
                    "control message of {} bytes (limit {MAX_TEXT_BYTES})",
                    text.len()
                )))
            }
            Message::Text(text) => self.control_event(text.as_str()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
            Message::Close(frame) => Some(TelephonyEvent::HungUp(frame.map(|f| u16::from(f.code)))),
        }
    }

    fn hold_early(&mut self, data: Bytes) {
        if self.early_deadline.is_none() {
            self.early_deadline = Some(Instant::now() + EARLY_WAIT);
            debug!("audio before MEDIA_START: held until it comes");
        }
        self.early_bytes += data.len();
        self.early.push_back(data);
        while self.early_bytes > EARLY_MAX_BYTES {
            let Some(old) = self.early.pop_front() else {
                break;
            };
            self.early_bytes -= old.len();
            self.early_dropped += 1;
        }
    }

    /// No `MEDIA_START` within `EARLY_WAIT` of the first audio: go on without it.
    fn give_up_waiting(&mut self) {
        warn!(
            wait_ms = EARLY_WAIT.as_millis() as u64,
            "no MEDIA_START: caller audio taken in the route's format"
        );
        self.start = Some(MediaStart::default());
        self.release_early();
    }

    fn release_early(&mut self) {
        if self.early_dropped > 0 {
            warn!(
                messages = self.early_dropped,
                "audio before MEDIA_START over the hold limit was dropped"
            );
        }
        self.early_deadline = None;
        self.early_bytes = 0;
        self.queued
            .extend(self.early.drain(..).map(TelephonyEvent::Audio));
    }

    fn control_event(&mut self, text: &str) -> Option<TelephonyEvent> {
        let (event, format) = match control::parse(text) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.bad_input = Some("bad control message");
                return Some(TelephonyEvent::Error(format!("bad control message: {e}")));
            }
        };
        match event {
            Event::MediaStart(start) => return self.on_media_start(start, format),
            Event::DtmfEnd(digit) => return Some(TelephonyEvent::Dtmf(digit)),
            Event::MarkProcessed(id) => match id.parse::<u64>() {
                Ok(id) => return Some(TelephonyEvent::Played(id)),
                Err(_) => debug!(id = %id, "MEDIA_MARK_PROCESSED for a mark that is not ours"),
            },
            Event::Xoff => {
                info!("MEDIA_XOFF: Asterisk's queue is full; holding our audio");
                self.playout.xoff();
            }
            Event::Xon => {
                debug!("MEDIA_XON");
                for out in self.playout.xon() {
                    self.queue_out(out);
                }
            }
            Event::Error(text) => {
                self.dropped += 1;
                warn!(error = %control::preview(&text), "Asterisk reports an error for one of our commands");
            }
            Event::QueueDrained | Event::BufferingCompleted(_) | Event::Status(_) => {}
            Event::Other(name) => info!(event = %name, "unknown chan_websocket event ignored"),
        }
        None
    }

    fn on_media_start(
        &mut self,
        start: MediaStart,
        format: ControlFormat,
    ) -> Option<TelephonyEvent> {
        if self.start.as_ref().is_some_and(|s| !s.format.is_empty()) {
            info!("second MEDIA_START ignored");
            return None;
        }
        let Some(audio) = control::audio_format(&start.format) else {
            self.bad_input = Some("unsupported format");
            return Some(TelephonyEvent::Error(format!(
                "MEDIA_START format {:?} is not one voicebridge carries ({}): set c() in the dial string",
                control::preview(&start.format),
                control::FORMAT_NAMES
            )));
        };
        self.control = format;
        self.format = audio;
        self.playout
            .set_format(start.optimal_frame_size, audio.codec);
        info!(
            channel = %start.channel,
            channel_id = %start.channel_id,
            format = %start.format,
            optimal_frame_size = start.optimal_frame_size,
            control = format.name(),
            early_messages = self.early.len(),
            "MEDIA_START"
        );
        let meta = self.metadata(&start, audio);
        self.start = Some(start);
        if self.request.answer {
            let answer = control::encode(&Command::Answer, self.control);
            self.queue_out(Out::Text(answer));
        }
        self.release_early();
        Some(TelephonyEvent::Metadata(meta))
    }

    /// The call's metadata: the format from `MEDIA_START`, the call data from the URL's
    /// `v()` parameters, the channel's variables as template variables.
    fn metadata(&self, start: &MediaStart, audio: AudioFormat) -> Metadata {
        let mut vars = start.channel_variables.clone();
        vars.extend(self.request.vars.clone());
        vars.insert("channel".to_owned(), start.channel.clone());
        vars.insert("channel_id".to_owned(), start.channel_id.clone());
        Metadata {
            call_id: Some(start.channel_id.clone()).filter(|id| !id.is_empty()),
            caller_id: self.request.caller_id.clone(),
            called: self.request.called.clone(),
            codec: Some(audio.codec),
            sample_rate: Some(audio.rate),
            channels: Some(Channels::Mono),
            vars,
            raw: None,
        }
    }

    /// Feeds an outbound message (sent at the next flush).
    fn queue_out(&mut self, out: Out) {
        let msg = match out {
            Out::Audio(b) => Message::Binary(b),
            Out::Text(t) => Message::Text(t.into()),
        };
        self.pending_out.push_back(msg);
    }

    fn command(&self, command: &Command) -> String {
        control::encode(command, self.control)
    }

    /// Sends what is pending, bounded by `WRITE_STALL`.
    async fn send_pending(&mut self) -> Result<(), TelephonyEvent> {
        if self.pending_out.is_empty() {
            return Ok(());
        }
        let ws = &mut self.ws;
        let pending = &mut self.pending_out;
        let send = async move {
            while let Some(msg) = pending.pop_front() {
                ws.feed(msg).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(WRITE_STALL, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(error_event(e)),
            Err(_) => Err(TelephonyEvent::Error(format!(
                "socket accepted nothing for {} s",
                WRITE_STALL.as_secs()
            ))),
        }
    }
}

impl TelephonyLeg for AsteriskLeg {
    fn start(&mut self) {}

    /// Nothing is pinned by the URL: `MEDIA_START` sets the format (the leg holds any
    /// audio that comes before it). Always mono.
    fn pinned_format(&self) -> PinnedFormat {
        PinnedFormat {
            channels: Some(Channels::Mono),
            ..PinnedFormat::default()
        }
    }

    fn frames_per_message(&self) -> usize {
        1
    }

    /// Asterisk's queue is drained by a 20 ms timer that never makes up a late tick, so
    /// whatever lead we keep becomes latency for good; a tick that finds it empty is a
    /// gap for good too. The route's `playback_lead_ms` (60 ms by default) covers both.
    fn pacer_lead(&self) -> Duration {
        self.lead
    }

    fn can_transfer(&self) -> bool {
        false
    }

    /// `MARK_MEDIA` every 100 ms; unplayed audio bounded to the lead plus two mark
    /// intervals and two frames of slack. A mark comes back only once the lead before
    /// it is played, so with one interval the bound held releases just before each
    /// report and Asterisk's queue ran dry every ~11 ticks (measured with the fake);
    /// each empty tick is a gap the caller hears.
    fn playout_marks(&self) -> Option<PlayoutMarks> {
        Some(PlayoutMarks {
            every: MARK_EVERY,
            max_unplayed: self.lead + 2 * MARK_EVERY + Duration::from_millis(40),
        })
    }

    async fn next_event(&mut self) -> Option<TelephonyEvent> {
        if let Some(event) = self.queued.pop_front() {
            return Some(event);
        }
        let msg = match self.early_deadline {
            Some(deadline) => tokio::select! {
                msg = self.ws.next() => msg,
                _ = tokio::time::sleep_until(deadline) => {
                    self.give_up_waiting();
                    return self.queued.pop_front();
                }
            },
            None => self.ws.next().await,
        };
        self.event(msg)
    }

    async fn perform(&mut self, action: TelephonyAction) -> Result<(), TelephonyEvent> {
        let out = match action {
            TelephonyAction::Play(frame) => self.playout.audio(&frame),
            TelephonyAction::FlushPlayback => self.playout.finish(),
            TelephonyAction::Clear => {
                // In the same batch as the decision: nothing of ours still waiting here
                // goes, and Asterisk drops its queue (and the marks in it, silently).
                self.playout.clear();
                self.pending_out.retain(|m| !m.is_binary());
                Some(Out::Text(self.command(&Command::FlushMedia)))
            }
            TelephonyAction::Mark(id) => {
                let mark = self.command(&Command::MarkMedia(id));
                self.playout.in_line(mark)
            }
            TelephonyAction::SetFormat(format) => {
                // The metadata's format: `MEDIA_START` already set the frame size.
                if self
                    .start
                    .as_ref()
                    .is_none_or(|s| s.optimal_frame_size == 0)
                {
                    self.playout
                        .set_format(format.bytes_per_frame(), format.codec);
                }
                None
            }
        };
        if let Some(out) = out {
            self.queue_out(out);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), TelephonyEvent> {
        self.send_pending().await
    }

    /// `HANGUP` first when we end the call (Asterisk hangs the channel up on our Close
    /// as well, but the command says it was a normal end), then the close handshake.
    async fn close(&mut self, hangup: &Hangup) {
        let ours;
        let hangup = match (hangup, self.bad_input) {
            (Hangup::Lost, Some(why)) => {
                ours = Hangup::Ours {
                    cause: crate::telephony::HangupCause::Error,
                    text: why.to_owned(),
                    hang_up_channel: true,
                };
                &ours
            }
            _ => hangup,
        };
        if let Hangup::Ours {
            hang_up_channel: true,
            ..
        } = hangup
        {
            if self.start.is_some() {
                let text = self.command(&Command::Hangup);
                self.pending_out.push_back(Message::Text(text.into()));
            }
        }
        if !matches!(hangup, Hangup::Lost) {
            let _ = self.send_pending().await;
        }
        let Some(frame) = close_frame(hangup) else {
            return;
        };
        close_handshake(&mut self.ws, frame).await;
    }

    fn release_channel(&mut self, _hangup: &Hangup) {}

    fn control_dropped(&self) -> u64 {
        self.dropped + self.playout.dropped
    }
}
