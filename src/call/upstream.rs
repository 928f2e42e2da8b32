//! Caller → provider: the telephony side's events, the inbound format (URL pins, then
//! metadata before the first audio), reframing to exact 20 ms, transcoding to the
//! provider's input, the bounded queue that holds audio until the provider is ready,
//! and, with `uplink_chunk_ms` above 20, several frames gathered into one message.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use crate::audio::{scratch, AudioFormat, Channels, Codec, Reframer, Transcoder};
use crate::providers::{self, ProviderCommand};
use crate::telephony::{Metadata, TelephonyEvent};

use super::{CallEngine, EndReason, Output};

/// Caller audio kept while the provider connects (then dropped oldest-first).
pub const MAX_PENDING: Duration = Duration::from_secs(5);

/// The inbound format and which parts of it the URL fixed (metadata may set the rest,
/// if it arrives before the first audio).
pub(super) struct InboundFormat {
    pub codec: Codec,
    pub rate: u32,
    pub channels: Channels,
    pub pinned_codec: bool,
    pub pinned_rate: bool,
    pub pinned_channels: bool,
}

impl InboundFormat {
    pub fn mono(&self) -> AudioFormat {
        AudioFormat::new(self.codec, self.rate)
    }
}

/// The caller→provider direction.
#[derive(Default)]
pub(super) struct Upstream {
    pub reframer: Option<Reframer>,
    pub transcoder: Option<Transcoder>,
    /// Frames (call format) waiting for the provider to be ready.
    pub pending: VecDeque<Bytes>,
    /// Frames the provider's full queue refused (the first one is logged).
    pub provider_drops: u64,
    /// `uplink_chunk_ms` above 20: converted frames gathered into one provider message,
    /// and how many it holds (allocated at the first frame, kept at the chunk's size).
    chunk: Vec<u8>,
    chunk_frames: usize,
    metadata_seen: bool,
}

impl Upstream {
    /// Forgets a partly gathered chunk (it is in a failed provider's input format).
    pub fn drop_chunk(&mut self) {
        self.chunk.clear();
        self.chunk_frames = 0;
    }
}

impl CallEngine {
    pub(super) fn on_telephony(
        &mut self,
        now: Instant,
        event: TelephonyEvent,
    ) -> Result<(), EndReason> {
        match event {
            TelephonyEvent::Audio(data) => {
                self.stats.fs_messages_in += 1;
                self.stats.fs_bytes_in += data.len() as u64;
                self.last_audio = now;
                self.on_audio(now, &data);
            }
            TelephonyEvent::Metadata(meta) => {
                self.stats.text_in += 1;
                if self.up.metadata_seen {
                    info!("second metadata ignored");
                } else {
                    self.up.metadata_seen = true;
                    self.on_metadata(meta);
                }
            }
            TelephonyEvent::Text(text) => {
                self.stats.text_in += 1;
                info!(bytes = text.len(), text = %preview(&text), "text from FreeSWITCH (send_text)");
            }
            TelephonyEvent::Dtmf(digit) => self.on_dtmf(now, digit),
            TelephonyEvent::Played(mark) => self.on_played(now, mark),
            TelephonyEvent::HungUp(code) => return Err(EndReason::FreeswitchClosed(code)),
            TelephonyEvent::Gone => return Err(EndReason::FreeswitchGone),
            TelephonyEvent::Error(e) => return Err(EndReason::FreeswitchError(e)),
            TelephonyEvent::TooBig(e) => return Err(EndReason::FreeswitchTooBig(e)),
        }
        Ok(())
    }

    fn on_audio(&mut self, now: Instant, data: &[u8]) {
        if self.up.reframer.is_none() {
            // First audio: the inbound format is final from here on.
            self.up.reframer = Some(Reframer::new(self.inbound.mono(), self.inbound.channels));
            self.ensure_upstream_transcoder();
        }
        let mut frame = scratch::frame();
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
            self.guard_frame(now, &frame);
            self.forward_frame(&frame);
        }
    }

    /// Builds the caller→provider transcoder once both ends are known: the provider's
    /// input (at `Ready`) and the call's final format (at the first audio).
    pub(super) fn ensure_upstream_transcoder(&mut self) {
        if self.up.transcoder.is_some() || self.up.reframer.is_none() {
            return;
        }
        let Some(input) = self.provider_input else {
            return;
        };
        match Transcoder::new(self.inbound.mono(), input) {
            Ok(t) => self.up.transcoder = Some(t),
            Err(e) => tracing::error!(error = %e, "cannot convert caller audio for the provider"),
        }
    }

    pub(super) fn forward_frame(&mut self, frame: &[u8]) {
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
        let mut out = scratch::converted();
        transcoder.process(frame, &mut out);
        if out.is_empty() {
            return;
        }
        let per_chunk = (self.route.call.uplink_chunk.as_millis() / 20).max(1) as usize;
        let payload = if per_chunk == 1 {
            Bytes::copy_from_slice(&out)
        } else {
            let up = &mut self.up;
            up.chunk.extend_from_slice(&out);
            up.chunk_frames += 1;
            if up.chunk_frames < per_chunk {
                return;
            }
            up.chunk_frames = 0;
            let payload = Bytes::copy_from_slice(&up.chunk);
            up.chunk.clear();
            payload
        };
        self.stats.frames_to_provider += 1;
        self.stats.bytes_to_provider += payload.len() as u64;
        self.outputs
            .push_back(Output::Provider(ProviderCommand::Audio(payload)));
    }

    /// The provider is ready: the queued caller audio goes out first.
    pub(super) fn forward_pending(&mut self) {
        let pending = std::mem::take(&mut self.up.pending);
        if self.up.transcoder.is_some() {
            for frame in &pending {
                self.forward_frame(frame);
            }
        } else {
            self.up.pending = pending;
        }
    }

    fn on_metadata(&mut self, meta: Metadata) {
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
                let call = self.inbound.mono();
                info!(format = %call, channels = %self.inbound.channels, "call format set by the metadata");
                self.rebuild_playback(call);
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
        let mut vars: BTreeMap<String, String> = providers::template::metadata_vars(meta.vars);
        if let Some(raw) = meta.raw {
            vars.insert("metadata".to_owned(), raw);
        }
        if self.context_sent {
            info!("metadata arrived after the provider was set up: not used for its instructions");
            return;
        }
        self.send_context(vars);
    }
}

/// The start of a text for a log line (never the whole of an arbitrary-size frame).
pub(super) fn preview(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
