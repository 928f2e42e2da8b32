//! Provider → caller: the provider's events, assistant audio through the transcoder into
//! the pacer, paced release as `Play` actions, and barge-in (flush, `Clear`, `Truncate`
//! with what the caller really heard, late audio of the cut item dropped) in the same
//! `handle` call that reports the caller's speech.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, error, info, warn};

use crate::audio::{scratch, AudioFormat, Codec, ItemId, Pacer, Transcoder};
use crate::call_metrics;
use crate::config::Config;
use crate::providers::{CallContext, ProviderCommand, ProviderEvent};
use crate::telephony::{PlayoutMarks, TelephonyAction};

use super::ending::Goodbye;
use super::marks::Marks;
use super::provider_marks::ProviderMarks;
use super::{CallEngine, EndReason, Output};

/// Late audio is remembered for this many interrupted items.
const MAX_INTERRUPTED: usize = 8;

/// The provider→caller direction.
pub(super) struct Downstream {
    pub transcoder: Option<Transcoder>,
    pub pacer: Pacer,
    /// Items interrupted by barge-in: their late audio is dropped.
    interrupted: VecDeque<ItemId>,
    /// The item whose audio went into the transcoder last (its tail is flushed at the
    /// end of the reply).
    last_item: Option<ItemId>,
    /// Audio received from the provider per item, in ms of its output format, so a
    /// truncate never claims more than was generated.
    generated: VecDeque<(ItemId, u64)>,
    pub output_format: Option<AudioFormat>,
    /// The provider said the reply is complete (and sent no audio since): a side that
    /// batches frames may then send a partial batch, which mid-reply would be too short.
    pub reply_done: bool,
    /// Frames per telephony message, and how many of the current batch were played.
    frames_per_message: usize,
    batched: usize,
    /// The pacer's lead (the telephony side's), kept for a rebuild.
    lead: Duration,
    /// The side's played-position reports, when it has them.
    playout: Option<PlayoutMarks>,
    marks: Option<Marks>,
    /// The provider's own marks, waiting for their audio to play.
    provider_marks: ProviderMarks,
}

fn new_pacer(
    lead: Duration,
    config: &Config,
    call: AudioFormat,
    playout: Option<PlayoutMarks>,
) -> Pacer {
    let pacer = Pacer::new(call, lead).with_max_queue(config.freeswitch.playback_max_queue);
    match playout {
        Some(p) => pacer.with_max_unplayed(p.max_unplayed),
        None => pacer,
    }
}

/// The law of `output` when what the pacer gets is exactly its decoded samples (G.711
/// at the pacer's rate): the pacer may then keep the codes (half the memory).
fn decoded_law(output: AudioFormat, pacer: AudioFormat) -> Option<Codec> {
    (matches!(output.codec, Codec::Pcmu | Codec::Pcma) && output.rate == pacer.rate)
        .then_some(output.codec)
}

fn new_marks(playout: Option<PlayoutMarks>, call: AudioFormat) -> Option<Marks> {
    playout.map(|p| Marks::new(call.bytes_per_sec() as u64 * p.every.as_millis() as u64 / 1000))
}

impl Downstream {
    pub fn new(
        config: &Config,
        call: AudioFormat,
        frames_per_message: usize,
        lead: Duration,
        playout: Option<PlayoutMarks>,
    ) -> Downstream {
        Downstream {
            transcoder: None,
            pacer: new_pacer(lead, config, call, playout),
            playout,
            marks: new_marks(playout, call),
            provider_marks: ProviderMarks::default(),
            interrupted: VecDeque::new(),
            last_item: None,
            generated: VecDeque::new(),
            output_format: None,
            reply_done: false,
            frames_per_message: frames_per_message.max(1),
            batched: 0,
            lead,
        }
    }
}

impl Downstream {
    /// When the oldest provider mark will have played (`None`: none pending, or its
    /// audio is still queued and the release timer will wake the engine first).
    pub fn next_mark_played(&self, now: Instant) -> Option<Instant> {
        let position = self.provider_marks.next()?;
        self.pacer.played_at(now, position).map(|at| at.max(now))
    }
}

impl CallEngine {
    /// The metadata changed the call's format before any audio flowed: the playback
    /// side (pacer, telephony encoder, assistant→caller transcoder) follows it.
    pub(super) fn rebuild_playback(&mut self, call: AudioFormat) {
        // Positions restart with the new pacer: what marks wait for is gone.
        self.answer_all_marks();
        self.down.pacer = new_pacer(self.down.lead, &self.config, call, self.down.playout);
        if let Some(output) = self.down.output_format {
            self.down.pacer.source_law(decoded_law(output, call));
        }
        if let Some(marks) = self.down.marks.as_mut() {
            marks.restart();
        }
        self.down.batched = 0;
        self.outputs
            .push_back(Output::Telephony(TelephonyAction::SetFormat(call)));
        if let Some(output) = self.down.output_format {
            match Transcoder::new(output, call) {
                Ok(t) => self.down.transcoder = Some(t),
                Err(e) => {
                    error!(error = %e, "cannot convert assistant audio to the metadata's format")
                }
            }
        }
    }

    pub(super) fn on_provider_event(
        &mut self,
        now: Instant,
        event: ProviderEvent,
    ) -> Result<(), EndReason> {
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
                let law = decoded_law(output, self.down.pacer.format());
                self.down.pacer.source_law(law);
                if self.up.reframer.is_some() {
                    self.ensure_upstream_transcoder();
                    if self.up.transcoder.is_none() {
                        return Err(EndReason::Internal(format!(
                            "caller audio {call} cannot be sent as {input}"
                        )));
                    }
                }
                self.forward_pending();
                self.send_waiting_dtmf();
            }
            ProviderEvent::Audio { item, data } => self.on_assistant_audio(now, item, &data)?,
            ProviderEvent::SpeechStopped => {
                self.record.caller_turn_ended(now);
                self.on_speech_stopped();
            }
            ProviderEvent::ToolCall(call) => self.on_tool_call(now, *call),
            ProviderEvent::ToolCancelled(ids) => {
                for id in &ids {
                    info!(tool_call_id = %id, "tool call cancelled by the provider");
                    self.record
                        .tool_finished(id, "cancelled", Duration::ZERO, None);
                }
            }
            ProviderEvent::SpeechStarted => self.on_speech_started(now),
            ProviderEvent::Mark(name) => self.on_provider_mark(name),
            ProviderEvent::ResponseDone => {
                self.record.assistant_turn_done();
                if self.goodbye == Goodbye::Saying {
                    self.goodbye = Goodbye::Said;
                }
                self.flush_reply_tail();
                self.down.pacer.finish();
                self.guard_reply_done();
                self.down.reply_done = true;
                if !self.down.pacer.has_frame()
                    && self.flush_partial_batch()
                    && self.stats.first_response.is_none()
                {
                    self.stats.first_response = Some(now.saturating_duration_since(self.started));
                }
            }
            ProviderEvent::Transcript {
                who,
                text,
                is_final,
            } => {
                let text = crate::text_cap::clip(&text, crate::text_cap::MAX_TURN_TEXT);
                if is_final {
                    self.record.transcript(who, &text, now);
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
                call_metrics::provider_error(self.provider, &code);
                warn!(code = %code, detail = %message, "provider error (call continues)");
            }
            ProviderEvent::Error {
                recoverable: false,
                code,
                message,
            } => {
                call_metrics::provider_error(self.provider, &code);
                return Err(EndReason::ProviderError(format!("{code}: {message}")));
            }
            ProviderEvent::Closed { reason } => return Err(EndReason::ProviderClosed(reason)),
        }
        Ok(())
    }

    /// Gives the provider the template variables it sets itself up with.
    pub(super) fn provide_context(&mut self, vars: std::collections::BTreeMap<String, String>) {
        self.fallback.context_given = true;
        // One copy, shared with the provider (the goodbye and a fallback read it here).
        let context = Arc::new(CallContext {
            call_id: self.call_id.clone(),
            route: self.route.name.clone(),
            vars,
        });
        self.context = Some(context.clone());
        self.outputs
            .push_back(Output::Provider(ProviderCommand::Context(context)));
    }

    fn on_assistant_audio(
        &mut self,
        now: Instant,
        item: ItemId,
        data: &[u8],
    ) -> Result<(), EndReason> {
        self.stats.provider_audio_events += 1;
        if let Some(format) = self.down.output_format {
            let audio = Duration::from_micros(
                data.len() as u64 * 1_000_000 / format.bytes_per_sec().max(1) as u64,
            );
            if self.flood.on_audio(now, audio) {
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
        self.more_words_after_end_request();
        self.stats.provider_bytes_in += data.len() as u64;
        if self.down.interrupted.contains(&item) {
            self.stats.late_audio_dropped += 1;
            return Ok(());
        }
        if self.down.transcoder.is_none() {
            warn!("provider sent audio before it was ready: dropped");
            return Ok(());
        }
        if let Some(format) = self.down.output_format {
            let ms = (data.len() as u64 * 1000) / format.bytes_per_sec().max(1) as u64;
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
        if self.down.last_item.is_none() {
            // The first audio after a reply's end: a new reply.
            self.guard_tick(now, true);
        }
        let Some(transcoder) = self.down.transcoder.as_mut() else {
            return Ok(());
        };
        match self.down.pacer.held_law() {
            // The queue keeps the provider's own G.711 codes (decoded, they are exactly
            // what the transcoder would give: see `decoded_law`): nothing to convert.
            Some(law) if law == transcoder.from().codec => {
                let overflow = self.down.pacer.push_codes(&item, law, data);
                self.count_overflow(overflow);
            }
            _ => {
                let mut converted = scratch::converted();
                transcoder.process(data, &mut converted);
                self.queue_converted(&item, &converted);
            }
        }
        self.down.last_item = Some(item);
        self.down.reply_done = false;
        Ok(())
    }

    /// The reply is complete: what the resampler still holds of it (its filter delay,
    /// ≈ 2.4 ms) is queued now, behind the rest of the reply, so no fragment of
    /// it is heard at the start of the next one.
    fn flush_reply_tail(&mut self) {
        let (Some(transcoder), Some(item)) =
            (self.down.transcoder.as_mut(), self.down.last_item.take())
        else {
            return;
        };
        let mut converted = scratch::converted();
        transcoder.flush(&mut converted);
        if !self.down.interrupted.contains(&item) {
            self.queue_converted(&item, &converted);
        }
    }

    /// Queues the converted audio of `item` for playback; an overflow is counted.
    fn queue_converted(&mut self, item: &ItemId, converted: &[u8]) {
        if converted.is_empty() {
            return;
        }
        let overflow = self.down.pacer.push(item, converted);
        self.count_overflow(overflow);
    }

    /// `overflow` frames of assistant audio did not fit the playback queue.
    fn count_overflow(&mut self, overflow: u64) {
        if overflow > 0 {
            if self.stats.playback_overflow == 0 {
                warn!(
                    max_queue_ms = self.config.freeswitch.playback_max_queue.as_millis() as u64,
                    "playback queue full (provider sends faster than real time): assistant audio dropped (counted)"
                );
            }
            self.stats.playback_overflow += overflow;
        }
    }

    /// Releases every frame that is due at `now`, as one batch of `Play` actions.
    pub(super) fn release_due(&mut self, now: Instant) {
        let mut sent = 0;
        let mut frame = scratch::frame();
        loop {
            frame.clear();
            if !self.down.pacer.pop_due(now, &mut frame) {
                break;
            }
            self.stats.frames_to_fs += 1;
            self.stats.bytes_to_fs += frame.len() as u64;
            self.outputs
                .push_back(Output::Telephony(TelephonyAction::Play(
                    Bytes::copy_from_slice(&frame),
                )));
            self.down.batched += 1;
            if self.down.batched >= self.down.frames_per_message {
                self.down.batched = 0;
                sent += 1;
            }
        }
        drop(frame);
        let reply_end = self.down.reply_done && !self.down.pacer.has_frame();
        if reply_end && self.flush_partial_batch() {
            sent += 1;
        }
        self.send_mark(reply_end);
        if sent > 0 {
            if self.stats.first_response.is_none() {
                let latency = now.saturating_duration_since(self.started);
                self.stats.first_response = Some(latency);
                call_metrics::first_response(self.provider, latency);
            }
            if let Some(latency) = self.record.audio_played(now) {
                call_metrics::turn_latency(self.provider, latency);
            }
        }
    }

    /// Sends a playout mark if one is due (after what was just released).
    fn send_mark(&mut self, reply_end: bool) {
        let released = self.down.pacer.released_total();
        if let Some(id) = self
            .down
            .marks
            .as_mut()
            .and_then(|m| m.due(released, reply_end))
        {
            self.outputs
                .push_back(Output::Telephony(TelephonyAction::Mark(id)));
        }
    }

    /// The far end played up to mark `id`: its clock re-anchors the pacer's playhead.
    pub(super) fn on_played(&mut self, now: Instant, id: u64) {
        match self.down.marks.as_mut().and_then(|m| m.played(id)) {
            Some(position) => self.down.pacer.played_to(now, position),
            None => debug!(
                mark = id,
                "played-position report for a void or unknown mark"
            ),
        }
    }

    /// The provider placed a mark after the audio it sent so far.
    fn on_provider_mark(&mut self, name: String) {
        let position = self.down.pacer.pushed_total();
        if let Some(early) = self.down.provider_marks.push(name, position) {
            if self.down.provider_marks.answered_early == 1 {
                warn!(
                    max = super::provider_marks::MAX_PENDING,
                    "provider sends marks far ahead of playback: the oldest answered early"
                );
            }
            self.outputs
                .push_back(Output::Provider(ProviderCommand::MarkPlayed(early)));
        }
    }

    /// Answers every provider mark whose audio has played by `now`.
    pub(super) fn answer_marks(&mut self, now: Instant) {
        while let Some(position) = self.down.provider_marks.next() {
            match self.down.pacer.played_at(now, position) {
                Some(at) if at <= now => {}
                _ => break,
            }
            if let Some(name) = self.down.provider_marks.pop() {
                self.outputs
                    .push_back(Output::Provider(ProviderCommand::MarkPlayed(name)));
            }
        }
    }

    fn answer_all_marks(&mut self) {
        let names: Vec<String> = self.down.provider_marks.drain().collect();
        for name in names {
            self.outputs
                .push_back(Output::Provider(ProviderCommand::MarkPlayed(name)));
        }
    }

    /// A side that batches frames sends what it holds once the reply is fully released
    /// (waiting for more would hold its last words back). True if a batch was pending.
    fn flush_partial_batch(&mut self) -> bool {
        if self.down.batched == 0 {
            return false;
        }
        self.down.batched = 0;
        self.outputs
            .push_back(Output::Telephony(TelephonyAction::FlushPlayback));
        true
    }

    /// Barge-in: in this same call, empty our queue, clear the far end's buffer and
    /// tell the provider how much of the item the caller actually got. False when
    /// nothing was playing (nothing to cut).
    pub(super) fn barge_in(&mut self, now: Instant) -> bool {
        if !self.is_playing(now) {
            debug!("caller speech started while nothing was playing");
            return false;
        }
        let flushed = self.down.pacer.flush(now);
        // The audio the provider's marks waited for is gone: they are answered now, in
        // order (as Twilio does at a `clear`).
        self.answer_all_marks();
        if let Some(marks) = self.down.marks.as_mut() {
            marks.void(self.down.pacer.released_total());
        }
        self.stats.barge_ins += 1;
        // The resampler still holds the tail of the interrupted reply: start the next
        // reply from a clean filter instead of playing that tail first.
        if let Some(t) = self.down.transcoder.as_ref() {
            if let Ok(fresh) = Transcoder::new(t.from(), t.to()) {
                self.down.transcoder = Some(fresh);
            }
        }
        self.down.batched = 0;
        self.outputs
            .push_back(Output::Telephony(TelephonyAction::Clear));
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
            self.outputs
                .push_back(Output::Provider(ProviderCommand::Truncate {
                    item,
                    played_ms,
                }));
        } else {
            info!(
                dropped_ms = flushed.dropped_ms,
                "barge-in: playback flushed"
            );
        }
        true
    }
}
