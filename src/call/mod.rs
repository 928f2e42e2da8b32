//! The call engine: every decision of a call, with no sockets, no tasks and no clock.
//!
//! It exists so the behaviour of a call (reframing, transcoding, pacing, barge-in,
//! truncate accounting, the goodbye / `end_call` / `transfer_call` waits, idle and
//! max-duration timers, the end reason) can be tested with plain values and a fake
//! `now`, and so a new telephony side or provider changes none of it. Modelled on
//! str0m's `Rtc`: the engine owns state, the call task (`crate::call_task`) owns I/O.
//!
//! The run loop around it:
//! ```text
//! loop {
//!     let now = Instant::now();
//!     sleep until engine.poll_timeout(now)         (one timer, re-armed each turn)
//!     select! { telephony event | provider event | side work done | timer | stop }
//!     engine.handle(now, input)       (if it was an input, not the timer)
//!     engine.tick(Instant::now())     (timers and frame releases, with a fresh now)
//!     while let Some(out) = engine.poll_output() { perform it; End → finish }
//! }
//! ```
//! Caller audio: `Audio` → `Reframer` (exact 20 ms, left channel) → `Transcoder` (call
//! format → provider input) → `Provider(Audio)`; until the provider is ready, frames
//! wait in a bounded queue. Assistant audio: provider `Audio` → `Transcoder` (provider
//! output → call format) → `Pacer` (real-time release with a small lead) →
//! `Telephony(Play)`.
//!
//! Files: `input`/`output` (the two vocabularies), `upstream` (caller → provider and the
//! inbound format), `downstream` (provider → caller, barge-in), `ending` (goodbye, end
//! actions, timers), `tools` (tool calls and the caller lookup), `stats`, `end_reason`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::audio::{AudioFormat, Codec, FloodGuard};
use crate::call_metrics::Traffic;
use crate::call_record::{self, RecordBuilder};
use crate::config::{Config, Route};
use crate::providers::CallContext;
use crate::telephony::PlayoutMarks;

mod barge_guard;
mod downstream;
mod dtmf;
mod end_reason;
mod ending;
mod fallback;
mod input;
mod marks;
mod output;
mod provider_marks;
mod stats;
mod tools;
mod upstream;

#[cfg(test)]
mod guard_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_provider_marks;
#[cfg(test)]
mod tests_uplink;

pub use end_reason::EndReason;
pub use input::{Input, LookupDone, ToolDone};
pub use output::Output;
pub use stats::Stats;

use downstream::Downstream;
use ending::{EndAction, Goodbye};
use upstream::{InboundFormat, Upstream};

/// How the provider's setup waits for the metadata before going ahead without it (it
/// normally comes within milliseconds, but in a known race never).
pub const METADATA_WAIT: Duration = Duration::from_millis(500);
/// Period of the per-call housekeeping (idle check, metrics flush).
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Everything the engine needs to know at the start of a call.
pub struct EngineSetup {
    pub call_id: String,
    pub route: Arc<Route>,
    pub config: Arc<Config>,
    /// The inbound format the telephony side pinned (`None`: the route's, or metadata's).
    pub request_codec: Option<Codec>,
    pub request_rate: Option<u32>,
    pub request_channels: Option<crate::audio::Channels>,
    /// The provider's name, for metrics.
    pub provider: &'static str,
    /// The telephony side sends this many frames per message (it batches `Play`s; the
    /// engine counts a reply as heard when a batch goes out). 1 for most sides.
    pub frames_per_message: usize,
    /// How far ahead of the playout the pacer may release (the telephony side's need).
    pub pacer_lead: Duration,
    /// The telephony side can transfer this call (`transfer_call` is refused otherwise).
    pub can_transfer: bool,
    /// The telephony side reports its played position (`Mark` / `Played`).
    pub marks: Option<PlayoutMarks>,
}

impl EngineSetup {
    /// The call's format from the URL and the route, before any metadata.
    pub fn call_format(&self) -> AudioFormat {
        AudioFormat::new(
            self.request_codec.unwrap_or(self.route.codec),
            self.request_rate.unwrap_or(self.route.sample_rate),
        )
    }
}

/// A format the call cannot run in (G.711 is 8000 Hz only): the call is refused.
pub fn check_format(format: AudioFormat) -> Result<(), EndReason> {
    if format.codec != Codec::L16 && format.rate != 8000 {
        return Err(EndReason::Internal(format!(
            "{} requires rate 8000, not {}",
            format.codec, format.rate
        )));
    }
    Ok(())
}

/// One call's state. See the module doc for the run loop.
pub struct CallEngine {
    call_id: String,
    route: Arc<Route>,
    config: Arc<Config>,
    provider: &'static str,
    can_transfer: bool,
    started: Instant,
    inbound: InboundFormat,
    up: Upstream,
    down: Downstream,
    /// Set at the provider's `Ready`.
    provider_input: Option<AudioFormat>,
    context_sent: bool,
    /// The template variables the provider was set up with (for the goodbye).
    context: Option<Arc<CallContext>>,
    goodbye: Goodbye,
    /// The end timer: max duration, then the goodbye / end-action waits.
    deadline: Instant,
    metadata_deadline: Instant,
    next_housekeeping: Instant,
    last_audio: Instant,
    stats: Stats,
    /// Watches the provider's audio rate (a flood ends the call).
    flood: FloodGuard,
    /// Traffic already added to the metrics.
    flushed: Traffic,
    /// From the metadata, for the lookup, tool webhooks and the record.
    caller_id: String,
    called: String,
    record: RecordBuilder,
    tools_in_flight: usize,
    /// Set by `end_call`/`transfer_call`: what happens once the last words are played.
    end_action: Option<EndAction>,
    outputs: VecDeque<Output>,
    ended: bool,
    /// The caller's key presses, grouped; groups wait here until the provider is ready.
    dtmf: dtmf::DtmfGroups,
    dtmf_waiting: Vec<String>,
    /// Who decides a barge-in, and the greeting/goodbye protection.
    guard: barge_guard::BargeGuard,
    /// The route's fallback providers not tried yet, and what failed so far.
    fallback: fallback::Fallback,
}

impl CallEngine {
    pub fn new(setup: EngineSetup, now: Instant) -> CallEngine {
        let inbound = InboundFormat {
            codec: setup.request_codec.unwrap_or(setup.route.codec),
            rate: setup.request_rate.unwrap_or(setup.route.sample_rate),
            channels: setup.request_channels.unwrap_or(setup.route.channels),
            pinned_codec: setup.request_codec.is_some(),
            pinned_rate: setup.request_rate.is_some(),
            pinned_channels: setup.request_channels.is_some(),
        };
        let down = Downstream::new(
            &setup.config,
            inbound.mono(),
            setup.frames_per_message,
            setup.pacer_lead,
            setup.marks,
        );
        let transcripts = setup.config.log.transcripts;
        let dtmf = dtmf::DtmfGroups::new(setup.route.call.dtmf_group);
        let guard = barge_guard::BargeGuard::new(&setup.route.call);
        let fallback = fallback::Fallback::new(&setup.route.call.fallback);
        CallEngine {
            deadline: now + setup.route.call.max_duration,
            call_id: setup.call_id,
            route: setup.route,
            config: setup.config,
            provider: setup.provider,
            can_transfer: setup.can_transfer,
            started: now,
            inbound,
            up: Upstream::default(),
            down,
            provider_input: None,
            context_sent: false,
            context: None,
            goodbye: Goodbye::NotSaid,
            metadata_deadline: now + METADATA_WAIT,
            next_housekeeping: now + HOUSEKEEPING,
            last_audio: now,
            stats: Stats::default(),
            flood: FloodGuard::new(),
            flushed: Traffic::default(),
            caller_id: String::new(),
            called: String::new(),
            record: RecordBuilder::new(now, transcripts),
            tools_in_flight: 0,
            end_action: None,
            outputs: VecDeque::new(),
            ended: false,
            dtmf,
            dtmf_waiting: Vec::new(),
            fallback,
            guard,
        }
    }

    /// Takes one input that happened at `now`. Call `tick` right after with a fresh
    /// `now`: the frames due are released there (processing an input, e.g. resampling
    /// a long piece of audio, takes time, and a stale `now` would release early).
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.ended {
            return;
        }
        let result = match input {
            Input::Telephony(event) => self.on_telephony(now, event),
            Input::Provider(event) => self
                .on_provider_event(now, event)
                .or_else(|reason| self.try_fallback(now, reason)),
            Input::ProviderGone => self.try_fallback(
                now,
                EndReason::ProviderClosed("provider task ended".to_owned()),
            ),
            Input::AudioNotSent { bytes, full } => {
                self.on_audio_not_sent(bytes, full);
                Ok(())
            }
            Input::LookupDone(done) => {
                self.on_lookup(done);
                Ok(())
            }
            Input::ToolDone(done) => {
                self.on_tool_done(done);
                Ok(())
            }
            Input::Shutdown => Err(EndReason::Shutdown),
        };
        if let Err(reason) = result {
            self.end(reason);
        }
    }

    /// Fires what is due at `now`: the end timer, the metadata wait, housekeeping, frame
    /// releases (audio that became due is sent in this same turn, not a timer tick
    /// later), and a released goodbye starts its play-out wait. Cheap when nothing is due.
    pub fn tick(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if let Err(reason) = self.on_tick(now) {
            return self.end(reason);
        }
        self.release_due(now);
        self.answer_marks(now);
        self.guard_tick(now, false);
        self.check_played_out(now);
    }

    fn on_tick(&mut self, now: Instant) -> Result<(), EndReason> {
        if now >= self.deadline {
            self.on_deadline(now)?;
        }
        if !self.context_sent && now >= self.metadata_deadline {
            info!("no metadata yet: provider set up from the URL alone");
            self.send_context(BTreeMap::new());
        }
        if let Some(digits) = self.dtmf.tick(now) {
            self.on_dtmf_group(now, digits);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.flush_metrics();
            let idle = self.route.call.idle_timeout;
            if !idle.is_zero() && now.saturating_duration_since(self.last_audio) >= idle {
                return Err(EndReason::IdleTimeout);
            }
        }
        Ok(())
    }

    fn end(&mut self, reason: EndReason) {
        self.ended = true;
        self.outputs.push_back(Output::End(reason));
    }

    /// The next thing the call task must do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `tick` must run next (`None` once the call has ended).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let mut at = self.deadline.min(self.next_housekeeping);
        if !self.context_sent {
            at = at.min(self.metadata_deadline);
        }
        if let Some(release) = self.down.pacer.next_release(now) {
            at = at.min(release);
        }
        if let Some(played) = self.down.next_mark_played(now) {
            at = at.min(played);
        }
        if let Some(group_end) = self.dtmf.due() {
            at = at.min(group_end);
        }
        Some(at)
    }

    pub fn has_ended(&self) -> bool {
        self.ended
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    // ---- the end (called by the task's finish) ------------------------------------

    /// Tool calls still running are of no use any more.
    pub fn abandon_tools(&mut self) {
        self.record.abandon_running();
    }

    /// Adds the traffic since the last flush to the metrics.
    pub fn flush_metrics(&mut self) {
        let now = self.stats.traffic();
        Traffic::flush_delta(&now, &self.flushed);
        self.flushed = now;
    }

    /// No record sink will take this call's record: keep nothing that only the record
    /// needs (transcript, per-turn list, tool entries), so the call's memory does not
    /// grow with the conversation. Call it right after `new`.
    pub fn without_record(&mut self) {
        self.record = RecordBuilder::disabled(self.started);
    }

    /// The call record, for a configured sink.
    pub fn build_record(&self, reason: &EndReason, now: Instant) -> serde_json::Value {
        let s = &self.stats;
        let price = self.config.prices.of(self.route.call.provider);
        let cost = price.cost(
            s.usage.input_tokens,
            s.usage.output_tokens,
            now.saturating_duration_since(self.started),
        );
        let transfer_to = match reason {
            EndReason::Transferred(to) => Some(to.as_str()),
            _ => None,
        };
        self.record.build(&call_record::Ending {
            call_id: &self.call_id,
            route: &self.route.name,
            provider: self.provider,
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
            audio: s.audio_json(),
        })
    }

    /// Counted as sent when emitted; corrected here when the task could not queue it.
    fn on_audio_not_sent(&mut self, bytes: u64, full: bool) {
        self.stats.frames_to_provider = self.stats.frames_to_provider.saturating_sub(1);
        self.stats.bytes_to_provider = self.stats.bytes_to_provider.saturating_sub(bytes);
        if full {
            self.up.provider_drops += 1;
            self.stats.frames_dropped += 1;
            if self.up.provider_drops == 1 {
                warn!("provider is not keeping up: caller audio frames dropped (counted in the summary)");
            }
        }
    }
}
