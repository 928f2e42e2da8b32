//! The Gemini model turn without the socket: `serverContent` and usage in,
//! normalised [`ProviderEvent`]s out (audio items per turn, late audio of an
//! interrupted turn dropped, transcripts and usage at `turnComplete`). Time is a
//! parameter and there is no I/O, so it is unit-tested directly and the fuzz target
//! drives it exactly as the connection does.

use base64::Engine;
use bytes::Bytes;
use tracing::debug;

use super::wire;
use crate::audio::ItemId;
use crate::providers::{ProviderEvent, Speaker, Usage};

/// After `interrupted`, model audio is dropped (as late parts of the cut turn) at most
/// this long when neither `turnComplete` nor new caller speech ends the dropping first.
/// The late parts come in the same burst as `interrupted`; a new reply needs the caller
/// to finish and the model to answer, which takes longer.
pub const MAX_INTERRUPT_DROP: std::time::Duration = std::time::Duration::from_secs(2);

/// The model turn in progress: the pure part of server message handling (no I/O, no
/// clock), public so the fuzz targets can drive it exactly as the connection does.
#[derive(Debug, Default)]
pub struct Turn {
    count: u64,
    item: Option<ItemId>,
    /// `interrupted` came (at this moment): drop this turn's audio until `turnComplete`
    /// or evidence of a new turn (see [`Turn::end_dropping`]).
    dropping: Option<std::time::Instant>,
    late_parts: u64,
    /// The cut turn was closed on evidence of a new turn, so its own `turnComplete` may
    /// still come: if it does before the next model audio, it closes nothing.
    owed_turn_complete: bool,
    /// `SpeechStopped` was sent for the caller's turn under way (once per caller turn:
    /// the session counts turns by it).
    caller_turn_marked: bool,
    caller: String,
    assistant: String,
    usage: Option<wire::UsageMetadata>,
}

/// What one message's content asks of the connection, besides the events it produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ContentEffects {
    /// The caller's transcription came while no model turn was under way: it stands for
    /// the end of the caller's turn (arms the response watchdog).
    pub caller_between_turns: bool,
    /// Model audio was played (disarms the watchdog).
    pub audio: bool,
    /// An audio part's MIME type named a rate other than the documented 24 kHz.
    pub off_rate_mime: Option<String>,
}

impl Turn {
    /// The turn-level part of one server message received at `now`: its usage snapshot
    /// and its `serverContent`. Pushes the session events it produces, in order.
    pub fn on_content(
        &mut self,
        usage: Option<wire::UsageMetadata>,
        content: Option<wire::ServerContent<'_>>,
        now: std::time::Instant,
        out: &mut Vec<ProviderEvent>,
    ) -> ContentEffects {
        let mut effects = ContentEffects::default();
        if let Some(u) = usage {
            // Snapshots can repeat within a turn: keep the latest, count it at turnComplete.
            self.usage = Some(u);
        }
        let Some(sc) = content else {
            return effects;
        };
        if let Some(t) = sc.input_transcription.filter(|t| !t.text.is_empty()) {
            // The caller speaking after the interruption: whatever the model says next
            // answers that, so the cut turn is over even without its turnComplete.
            self.end_dropping("new caller speech", out);
            crate::text_cap::append_capped(
                &mut self.caller,
                &t.text,
                crate::text_cap::MAX_TURN_TEXT,
            );
            effects.caller_between_turns = self.item.is_none();
            out.push(ProviderEvent::Transcript {
                who: Speaker::Caller,
                text: t.text,
                is_final: false,
            });
            if effects.caller_between_turns && !self.caller_turn_marked {
                // Gemini signals no end of the caller's speech: the moment that arms the
                // watchdog stands for it, once per caller turn (the first fragment).
                self.caller_turn_marked = true;
                out.push(ProviderEvent::SpeechStopped);
            }
        }
        if sc.interrupted {
            // A repeated `interrupted` does not restart the time limit.
            self.dropping.get_or_insert(now);
            debug!(item = ?self.item, "gemini: interrupted");
            out.push(ProviderEvent::SpeechStarted);
        }
        if let Some(turn) = sc.model_turn {
            for part in turn.parts {
                if let Some(blob) = part.inline_data {
                    self.on_audio_part(&blob.mime_type, &blob.data, now, &mut effects, out);
                }
            }
        }
        if let Some(t) = sc.output_transcription.filter(|t| !t.text.is_empty()) {
            crate::text_cap::append_capped(
                &mut self.assistant,
                &t.text,
                crate::text_cap::MAX_TURN_TEXT,
            );
            out.push(ProviderEvent::Transcript {
                who: Speaker::Assistant,
                text: t.text,
                is_final: false,
            });
        }
        if sc.generation_complete {
            debug!("gemini: generationComplete");
        }
        if sc.turn_complete {
            if self.owed_turn_complete && self.item.is_none() {
                // The cut turn's own, late: that turn was closed already.
                self.owed_turn_complete = false;
                debug!("gemini: late turnComplete of the interrupted turn");
            } else {
                self.on_turn_complete(out);
            }
        }
        effects
    }

    /// Ends the dropping that `interrupted` began on evidence of a new turn: closes the
    /// cut turn as its `turnComplete` would have, so the next model audio is a new item
    /// and is played.
    fn end_dropping(&mut self, evidence: &'static str, out: &mut Vec<ProviderEvent>) {
        if self.dropping.is_none() {
            return;
        }
        // Logged before on_turn_complete, which takes the count.
        debug!(
            evidence,
            late_parts = self.late_parts,
            "gemini: interrupted turn closed without its turnComplete"
        );
        self.on_turn_complete(out);
        self.owed_turn_complete = true;
    }

    fn on_audio_part(
        &mut self,
        mime: &str,
        data: &str,
        now: std::time::Instant,
        effects: &mut ContentEffects,
        out: &mut Vec<ProviderEvent>,
    ) {
        let Some(rate) = wire::pcm_rate(mime) else {
            debug!(mime, "gemini: non-audio inline data ignored");
            return;
        };
        if rate != wire::OUTPUT_RATE && effects.off_rate_mime.is_none() {
            effects.off_rate_mime = Some(mime.to_owned());
        }
        if let Some(since) = self.dropping {
            if now.saturating_duration_since(since) < MAX_INTERRUPT_DROP {
                self.late_parts += 1;
                return;
            }
            self.end_dropping("time limit", out);
        }
        let mut pcm = match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "gemini: audio part with bad base64 ignored");
                return;
            }
        };
        if pcm.len() % 2 == 1 {
            pcm.pop();
        }
        if pcm.is_empty() {
            return;
        }
        let item = match &self.item {
            Some(item) => item.clone(),
            None => {
                self.count += 1;
                self.caller_turn_marked = false;
                // A new model turn: any turnComplete from now on is its own.
                self.owed_turn_complete = false;
                let item: ItemId = format!("turn-{}", self.count).into();
                self.item = Some(item.clone());
                item
            }
        };
        effects.audio = true;
        out.push(ProviderEvent::Audio {
            item,
            data: Bytes::from(pcm),
        });
    }

    fn on_turn_complete(&mut self, out: &mut Vec<ProviderEvent>) {
        let caller = std::mem::take(&mut self.caller);
        let assistant = std::mem::take(&mut self.assistant);
        let usage = self.usage.take();
        let late = std::mem::take(&mut self.late_parts);
        if late > 0 {
            debug!(
                parts = late,
                "gemini: late audio of the interrupted turn dropped"
            );
        }
        self.item = None;
        self.dropping = None;
        self.caller_turn_marked = false;
        if !caller.is_empty() {
            out.push(ProviderEvent::Transcript {
                who: Speaker::Caller,
                text: caller,
                is_final: true,
            });
        }
        if !assistant.is_empty() {
            out.push(ProviderEvent::Transcript {
                who: Speaker::Assistant,
                text: assistant,
                is_final: true,
            });
        }
        if let Some(u) = usage {
            out.push(ProviderEvent::Usage(Usage {
                input_tokens: u.prompt_token_count,
                output_tokens: u.response_token_count,
            }));
        }
        out.push(ProviderEvent::ResponseDone);
    }
}

#[cfg(test)]
mod tests;
