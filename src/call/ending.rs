//! How a call ends on our side: the goodbye at `max_duration_secs`, the
//! `end_call`/`transfer_call` waits, and the one end timer they share. The rule: the
//! last words are generated, released and played out before the hang-up, but never
//! for longer than `GOODBYE_MAX`.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::providers::{self, ProviderCommand};

use super::{CallEngine, EndReason, Output};

/// Longest time the goodbye may take (generated and played) before we hang up anyway.
pub const GOODBYE_MAX: Duration = Duration::from_secs(10);
/// `end_call`/`transfer_call` after the reply was already complete: how long we wait
/// for more words from the model before acting.
pub const END_GRACE: Duration = Duration::from_secs(2);

/// The last words (the goodbye at `max_duration_secs`, or the reply before an end
/// action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Goodbye {
    NotSaid,
    /// Asked for; the provider is generating it.
    Saying,
    /// Generated; the pacer is releasing it.
    Said,
    /// Released; waiting for the far end to play its buffer out.
    PlayingOut,
}

/// What the assistant asked for with a built-in tool.
#[derive(Clone, Debug)]
pub(super) enum EndAction {
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

impl CallEngine {
    /// A goodbye is configured, and the provider is up and can be told what to say.
    fn can_say_goodbye(&self) -> bool {
        !self.route.call.goodbye.is_empty()
            && providers::can_say(self.route.call.provider)
            && self.provider_input.is_some()
    }

    /// The end timer fired.
    pub(super) fn on_deadline(&mut self, now: Instant) -> Result<(), EndReason> {
        match self.goodbye {
            Goodbye::NotSaid if self.can_say_goodbye() => {
                let empty = Default::default();
                let vars = self.context.as_ref().map_or(&empty, |c| &c.vars);
                let text = providers::template::render(&self.route.call.goodbye, vars);
                info!(goodbye = %text, "max_duration_secs reached: saying goodbye before hanging up");
                self.outputs
                    .push_back(Output::Provider(ProviderCommand::Say(text)));
                self.goodbye = Goodbye::Saying;
                self.deadline = now + GOODBYE_MAX;
                Ok(())
            }
            Goodbye::Saying if self.end_action.is_none() => {
                warn!(
                    max_secs = GOODBYE_MAX.as_secs(),
                    "goodbye not finished in time: hanging up"
                );
                Err(EndReason::MaxDuration)
            }
            _ => Err(self
                .end_action
                .as_ref()
                .map_or(EndReason::MaxDuration, EndAction::reason)),
        }
    }

    /// The last words have been generated and released: hang up once the far end has
    /// played what it holds.
    pub(super) fn check_played_out(&mut self, now: Instant) {
        if self.goodbye == Goodbye::Said
            && self.down.pacer.queued_ms() == 0
            && !self.down.pacer.has_frame()
        {
            self.deadline = now + self.down.pacer.buffered_ahead(now);
            self.goodbye = Goodbye::PlayingOut;
        }
    }

    /// `end_call`/`transfer_call`: wait for the reply in progress to finish and play
    /// out (at most `GOODBYE_MAX`), then act. If the reply was already complete, a short
    /// grace lets the model add a last sentence.
    pub(super) fn request_end(&mut self, now: Instant, action: EndAction) {
        if self.end_action.is_some() {
            debug!("the call is already ending: second end/transfer request ignored");
            return;
        }
        let idle = self.down.reply_done && self.down.pacer.queued_ms() == 0;
        let wait = if idle { END_GRACE } else { GOODBYE_MAX };
        self.end_action = Some(action);
        self.goodbye = Goodbye::Saying;
        self.deadline = now + wait;
    }

    /// The model is still talking after `end_call`/`transfer_call`: let it finish.
    pub(super) fn more_words_after_end_request(&mut self) {
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
                self.deadline = *asked + GOODBYE_MAX;
            }
        }
    }
}
