//! Provider fallback: when the provider serving a call fails before the caller has
//! heard anything from it (refused or failed connect, 401/403/429/5xx, a setup timeout,
//! a close before ready), the same call goes on with the route's next provider
//! (`fallback = ["gemini", "echo"]`). The caller's audio waits in the usual bounded
//! pre-ready queue meanwhile, and the new provider says the greeting.
//!
//! Never once the conversation has started: a provider that already spoke to the caller
//! carries context a new one does not have, so a failure after that ends the call as
//! before.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use super::barge_guard::BargeGuard;
use super::{CallEngine, EndReason, Output};
use crate::call_metrics;
use crate::config::ProviderKind;
use crate::providers::ProviderCommand;

/// The route's fallback providers not tried yet.
#[derive(Debug, Default)]
pub(super) struct Fallback {
    next: VecDeque<ProviderKind>,
    /// The provider has been given the call's context (so a new one must be too).
    pub context_given: bool,
}

impl Fallback {
    pub fn new(kinds: &[ProviderKind]) -> Fallback {
        Fallback {
            next: kinds.iter().copied().collect(),
            context_given: false,
        }
    }
}

impl CallEngine {
    /// The provider failed with `reason`: moves the call to the next fallback provider
    /// when the caller has heard nothing yet, else gives the reason back (the call ends).
    pub(super) fn try_fallback(
        &mut self,
        now: Instant,
        reason: EndReason,
    ) -> Result<(), EndReason> {
        let provider_failed = matches!(
            reason,
            EndReason::ProviderClosed(_) | EndReason::ProviderError(_)
        );
        let heard = self.stats.frames_to_fs > 0;
        if !provider_failed || heard || self.end_action.is_some() {
            return Err(reason);
        }
        let Some(next) = self.fallback.next.pop_front() else {
            return Err(reason);
        };
        let from = self.provider;
        let detail = reason.to_string();
        warn!(
            from,
            to = next.name(),
            reason = %detail,
            "provider failed before the caller heard it: the call goes on with the fallback"
        );
        call_metrics::provider_fallback(&self.route.name, from, next.name());
        self.record.provider_failed(from, &detail);

        // Nothing of the failed provider is kept: its formats, converters and any audio
        // it queued but the caller never heard.
        self.down.pacer.flush(now);
        self.provider_input = None;
        self.down.output_format = None;
        self.down.transcoder = None;
        self.up.transcoder = None;
        self.up.drop_chunk();
        // Copy-on-write: the config's route stays as it is for the other calls.
        Arc::make_mut(&mut self.route).call.provider = next;
        self.provider = next.name();
        // The new provider's own interruption rules; its greeting is protected anew.
        self.guard = BargeGuard::new(&self.route.call);
        self.outputs
            .push_back(Output::SwitchProvider(self.route.clone()));
        if let Some(context) = self.context.clone().filter(|_| self.fallback.context_given) {
            self.outputs
                .push_back(Output::Provider(ProviderCommand::Context(context)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{audio, drain, end_of, engine, feed, item, plays, ready};
    use super::super::{EndReason, Input, Output};
    use crate::config::ProviderKind;
    use crate::providers::{ProviderCommand, ProviderEvent};

    fn closed(reason: &str) -> Input {
        Input::Provider(ProviderEvent::Closed {
            reason: reason.to_owned(),
        })
    }

    fn switched_to(outputs: &[Output]) -> Option<ProviderKind> {
        outputs.iter().find_map(|o| match o {
            Output::SwitchProvider(route) => Some(route.call.provider),
            _ => None,
        })
    }

    const TOML: &str = "[call]\nprovider = \"openai\"\nfallback = [\"gemini\", \"echo\"]\n\
                        [providers.gemini]\napi_key = \"g-test-key\"\n";

    #[test]
    fn a_setup_failure_moves_the_call_down_the_list_then_ends_it() {
        let (mut e, t0) = engine(TOML);
        // The metadata: the context goes to the first provider.
        feed(
            &mut e,
            t0,
            Input::Telephony(crate::telephony::TelephonyEvent::Metadata(
                crate::telephony::Metadata::default(),
            )),
        );
        let first = drain(&mut e);
        assert!(first
            .iter()
            .any(|o| matches!(o, Output::Provider(ProviderCommand::Context(_)))));

        feed(&mut e, t0, closed("upgrade refused: HTTP 401"));
        let out = drain(&mut e);
        assert_eq!(switched_to(&out), Some(ProviderKind::Gemini));
        assert!(end_of(&out).is_none(), "the call goes on");
        // The new provider gets the context again, after its switch.
        let switch = out
            .iter()
            .position(|o| matches!(o, Output::SwitchProvider(_)))
            .unwrap();
        let context = out
            .iter()
            .position(|o| matches!(o, Output::Provider(ProviderCommand::Context(_))))
            .expect("the context again");
        assert!(context > switch);

        feed(&mut e, t0, Input::ProviderGone);
        assert_eq!(switched_to(&drain(&mut e)), Some(ProviderKind::Echo));
        feed(&mut e, t0, closed("setup timed out"));
        let out = drain(&mut e);
        assert_eq!(
            end_of(&out),
            Some(&EndReason::ProviderClosed("setup timed out".to_owned())),
            "the list is exhausted"
        );
        let record = e.build_record(&EndReason::ProviderClosed("setup timed out".to_owned()), t0);
        assert_eq!(record["provider"], "echo");
        assert_eq!(record["provider_failures"][0]["provider"], "test");
        assert_eq!(
            record["provider_failures"][0]["reason"],
            "provider ended: upgrade refused: HTTP 401"
        );
        assert_eq!(record["provider_failures"][1]["provider"], "gemini");
    }

    #[test]
    fn no_fallback_once_the_caller_heard_the_assistant() {
        let (mut e, t0) = engine(TOML);
        ready(&mut e, t0);
        feed(&mut e, t0, audio(&item("a"), 200));
        let mut now = t0;
        let mut played = 0;
        while played == 0 {
            now += Duration::from_millis(20);
            feed(&mut e, now, Input::Provider(ProviderEvent::ResponseDone));
            played += plays(&drain(&mut e));
        }
        feed(&mut e, now, closed("server went away"));
        let out = drain(&mut e);
        assert!(switched_to(&out).is_none());
        assert_eq!(
            end_of(&out),
            Some(&EndReason::ProviderClosed("server went away".to_owned()))
        );
    }

    #[test]
    fn unheard_audio_of_the_failed_provider_is_dropped() {
        let (mut e, t0) = engine(TOML);
        ready(&mut e, t0);
        // 200 ms queued (released on the next tick), then the provider fails at once.
        e.handle(t0, audio(&item("a"), 200));
        e.handle(t0, closed("closed mid-setup"));
        let mut out = drain(&mut e);
        assert_eq!(switched_to(&out), Some(ProviderKind::Gemini));
        for ms in [0, 20, 100, 300] {
            e.tick(t0 + Duration::from_millis(ms));
            out.extend(drain(&mut e));
        }
        assert_eq!(plays(&out), 0, "nothing of the failed provider is played");
    }
}
