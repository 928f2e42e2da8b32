//! Everything the receiving side of `voicebridge call` counts: playback audio (binary or
//! `streamAudio`) into the simulated buffer, `clearAudio`, other texts (the last few kept,
//! each capped), playback errors, pings, and the two latencies.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use voicebridge::audio::Codec;

use super::playback::PlaybackSim;
use super::target::WireFormat;
use crate::client::core::Inbound;
use crate::client::wire::{decode_payload, parse_server_text, PlaybackError, ServerText};

/// How many "other" text frames (and playback errors) the summary keeps.
const KEEP_LAST: usize = 5;
/// Longest text kept per message in the summary, so a huge frame cannot flood it.
pub(super) const KEEP_CHARS: usize = 300;

/// Everything the receive side accumulates.
pub(super) struct Receiver {
    pub(super) codec: Codec,
    pub(super) rate: u32,
    pub(super) playback: PlaybackSim,
    pub(super) frames: u64,
    pub(super) bytes: u64,
    pub(super) samples: u64,
    pub(super) texts: u64,
    pub(super) stream_audio: u64,
    pub(super) clears: u64,
    pub(super) others: u64,
    pub(super) last_others: VecDeque<String>,
    pub(super) raw_mismatches: u64,
    pub(super) bad_playback: u64,
    pub(super) errors: Vec<String>,
    pub(super) pings: u64,
    pub(super) pongs: u64,
    pub(super) first_audio_sent: Option<Instant>,
    pub(super) first_audio_latency: Option<Duration>,
    pub(super) speech_end_sent: Option<Instant>,
    pub(super) speech_end_latency: Option<Duration>,
}

pub(super) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl Receiver {
    pub(super) fn new(format: WireFormat, tick_ms: u32) -> Self {
        Receiver {
            codec: format.codec,
            rate: format.rate,
            playback: PlaybackSim::new(format.rate, tick_ms),
            frames: 0,
            bytes: 0,
            samples: 0,
            texts: 0,
            stream_audio: 0,
            clears: 0,
            others: 0,
            last_others: VecDeque::new(),
            raw_mismatches: 0,
            bad_playback: 0,
            errors: Vec::new(),
            pings: 0,
            pongs: 0,
            first_audio_sent: None,
            first_audio_latency: None,
            speech_end_sent: None,
            speech_end_latency: None,
        }
    }

    fn playback_error(&mut self, e: PlaybackError) {
        tracing::warn!(error = %e, "unplayable playback message");
        if matches!(e, PlaybackError::RawRateMismatch { .. }) {
            self.raw_mismatches += 1;
        } else {
            self.bad_playback += 1;
        }
        if self.errors.len() < KEEP_LAST {
            self.errors.push(e.to_string());
        }
    }

    fn audio(&mut self, payload_bytes: usize, samples: &[i16], now: Instant) {
        self.frames += 1;
        self.bytes += payload_bytes as u64;
        self.samples += samples.len() as u64;
        if self.first_audio_latency.is_none() {
            if let Some(t) = self.first_audio_sent {
                self.first_audio_latency = Some(now.saturating_duration_since(t));
            }
        }
        if self.speech_end_latency.is_none() {
            if let Some(t) = self.speech_end_sent {
                self.speech_end_latency = Some(now.saturating_duration_since(t));
            }
        }
        self.playback.push(samples);
    }

    /// Handles what the server sent; Close and connection ends are the caller's (they
    /// change the call's state), so they are ignored here.
    pub(super) fn on_inbound(&mut self, inbound: Inbound, now: Instant) {
        match inbound {
            Inbound::Audio(b) => match decode_payload(&b, self.codec) {
                Ok(samples) => self.audio(b.len(), &samples, now),
                Err(e) => self.playback_error(e),
            },
            Inbound::Text(t) => {
                self.texts += 1;
                match parse_server_text(t.as_str(), self.rate) {
                    ServerText::StreamAudio(a) => {
                        self.stream_audio += 1;
                        self.audio(a.payload_bytes, &a.samples, now);
                    }
                    ServerText::BadAudio(e) => {
                        self.stream_audio += 1;
                        self.playback_error(e);
                    }
                    ServerText::ClearAudio => {
                        self.clears += 1;
                        self.playback.clear();
                    }
                    ServerText::Other => {
                        self.others += 1;
                        if self.last_others.len() == KEEP_LAST {
                            self.last_others.pop_front();
                        }
                        self.last_others
                            .push_back(truncate_chars(t.as_str(), KEEP_CHARS));
                    }
                }
            }
            Inbound::Ping => self.pings += 1,
            Inbound::Pong => self.pongs += 1,
            Inbound::Closed(_) | Inbound::Lost(_) | Inbound::Ended => {}
        }
    }
}
