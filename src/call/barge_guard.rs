//! Who decides that the caller interrupted: by default the provider (its "caller started
//! speaking" cuts the reply at once, as it always did); with the barge-in guard
//! (`barge_in_min_ms`) or an uninterruptible greeting/goodbye, voicebridge does.
//!
//! Guarded, the provider is set up not to cut its reply by itself, and a barge-in needs
//! `barge_in_min_ms` of continuous caller speech in the audio we relay
//! (`audio::SpeechRun`), plus the provider's report where it gives one
//! (`Interruption::Reported`; Gemini reports nothing then, so our own detection
//! decides). A click or a cough never gets that far; real speech is cut within the tick
//! that confirms it, and the provider is told to stop (`Cancel`) and what was heard
//! (`Truncate`, from the same barge-in as before). While the greeting or the goodbye is
//! protected, barge-ins are ignored (the caller's audio still reaches the model).

use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::ending::Goodbye;
use super::{CallEngine, Output};
use crate::audio::speech::SpeechRun;
use crate::audio::{g711, pcm, Codec};
use crate::config::{CallConfig, Interruption};
use crate::providers::ProviderCommand;

/// Where the provider reports nothing, our own detection confirms a barge-in after at
/// least this much speech even with `barge_in_min_ms = 0` (a single loud frame is
/// never a barge-in).
const LOCAL_MIN: Duration = Duration::from_millis(120);

/// The greeting's protection: until the first reply has been played out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Greeting {
    /// Not protected (interruptible, none configured, or played out).
    Open,
    /// The first reply is being generated or played.
    Protected,
    /// Its generation is complete; protected until its audio is played out.
    PlayingOut,
}

#[derive(Debug)]
pub(super) struct BargeGuard {
    /// voicebridge decides (see the module doc); false: the provider does, as before.
    managed: bool,
    /// Speech needed before a barge-in (guarded mode).
    min_ms: u32,
    /// The provider reports the caller's speech (else our detection alone decides).
    reported: bool,
    speech: Option<SpeechRun>,
    samples: Vec<i16>,
    /// The provider said the caller started speaking; not confirmed yet.
    pending: bool,
    /// The current run of speech already caused a barge-in.
    fired: bool,
    greeting: Greeting,
    goodbye_protected: bool,
}

impl BargeGuard {
    pub fn new(call: &CallConfig) -> BargeGuard {
        let managed = call.manages_interruption();
        let reported = call.provider.info().interruption == Interruption::Reported;
        let mut min = call.barge_in_min;
        if !reported {
            min = min.max(LOCAL_MIN);
        }
        let protect_greeting = managed && !call.greeting_interruptible && !call.greeting.is_empty();
        BargeGuard {
            managed,
            min_ms: min.as_millis().try_into().unwrap_or(u32::MAX),
            reported,
            speech: managed.then(SpeechRun::default),
            samples: Vec::new(),
            pending: false,
            fired: false,
            greeting: if protect_greeting {
                Greeting::Protected
            } else {
                Greeting::Open
            },
            goodbye_protected: managed && !call.goodbye_interruptible,
        }
    }
}

impl CallEngine {
    /// The provider says the caller started speaking.
    pub(super) fn on_speech_started(&mut self, now: Instant) {
        if !self.guard.managed {
            self.barge_in(now);
            return;
        }
        if let Some(what) = self.protected_now(now) {
            if self.is_playing(now) {
                info!(
                    protected = what,
                    "caller speech during the {what}: not interrupted"
                );
            }
            return;
        }
        self.guard.pending = true;
        self.confirm_barge_in(now);
    }

    /// The provider says the caller stopped: an unconfirmed start was not a barge-in.
    pub(super) fn on_speech_stopped(&mut self) {
        if self.guard.pending {
            debug!("caller speech too short to interrupt: playback went on");
        }
        self.guard.pending = false;
    }

    /// One 20 ms caller frame in the call's format, for our own speech detection.
    pub(super) fn guard_frame(&mut self, now: Instant, frame: &[u8]) {
        let Some(speech) = self.guard.speech.as_mut() else {
            return;
        };
        let samples = &mut self.guard.samples;
        samples.clear();
        match self.inbound.codec {
            Codec::L16 => pcm::l16_to_samples(frame, samples),
            Codec::Pcmu => g711::ulaw_decode(frame, samples),
            Codec::Pcma => g711::alaw_decode(frame, samples),
        }
        if speech.push(samples) == 0 {
            self.guard.fired = false;
            return;
        }
        self.confirm_barge_in(now);
    }

    /// Guarded mode: cuts the reply once the speech run is long enough (and, where the
    /// provider reports speech, it has).
    fn confirm_barge_in(&mut self, now: Instant) {
        let g = &self.guard;
        let run = g.speech.as_ref().map_or(0, SpeechRun::run_ms);
        if g.fired || run < g.min_ms || (g.reported && !g.pending) {
            return;
        }
        if self.protected_now(now).is_some() || !self.is_playing(now) {
            return;
        }
        self.guard.fired = true;
        self.guard.pending = false;
        info!(speech_ms = run, "barge-in confirmed by the caller's speech");
        if self.barge_in(now) {
            // The provider was told not to cut its reply by itself.
            self.outputs
                .push_back(Output::Provider(ProviderCommand::Cancel));
        }
    }

    /// What is protected from barge-in at `now`, if anything.
    fn protected_now(&mut self, now: Instant) -> Option<&'static str> {
        self.guard_tick(now, false);
        if self.guard.greeting != Greeting::Open {
            return Some("greeting");
        }
        let last_words = matches!(
            self.goodbye,
            Goodbye::Saying | Goodbye::Said | Goodbye::PlayingOut
        );
        (self.guard.goodbye_protected && last_words).then_some("goodbye")
    }

    /// The provider finished a reply: the greeting's protection lasts until it is heard.
    pub(super) fn guard_reply_done(&mut self) {
        if self.guard.greeting == Greeting::Protected {
            self.guard.greeting = Greeting::PlayingOut;
        }
    }

    /// Every tick, and when the next reply's audio arrives (`next_reply`): a greeting
    /// that has been played out (or is followed by another reply) is no longer protected.
    pub(super) fn guard_tick(&mut self, now: Instant, next_reply: bool) {
        if self.guard.greeting == Greeting::PlayingOut && (next_reply || !self.is_playing(now)) {
            self.guard.greeting = Greeting::Open;
            info!("greeting played out: the caller may interrupt from now on");
        }
    }

    /// Assistant audio is queued here or still unplayed at the far end.
    pub(super) fn is_playing(&self, now: Instant) -> bool {
        self.down.pacer.queued_ms() > 0 || !self.down.pacer.buffered_ahead(now).is_zero()
    }
}
