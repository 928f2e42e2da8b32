//! The call's counters: the end-of-call summary line, the record's `audio` block and the
//! traffic metrics all read them, so they are counted once, here.

use std::time::Duration;

use crate::call_metrics::Traffic;
use crate::providers::Usage;

/// Counters for the end-of-call summary line.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct Stats {
    pub fs_messages_in: u64,
    pub fs_bytes_in: u64,
    /// Caller audio messages to the provider: one per frame, or per `uplink_chunk_ms`.
    pub frames_to_provider: u64,
    pub bytes_to_provider: u64,
    pub frames_dropped: u64,
    pub provider_audio_events: u64,
    pub provider_bytes_in: u64,
    pub late_audio_dropped: u64,
    /// 20 ms frames of assistant audio dropped at the playback queue's cap.
    pub playback_overflow: u64,
    pub frames_to_fs: u64,
    pub bytes_to_fs: u64,
    pub text_in: u64,
    pub barge_ins: u64,
    pub first_response: Option<Duration>,
    pub usage: Usage,
    pub tool_calls: u64,
    /// Keys the caller pressed (in finished groups).
    pub dtmf_keys: u64,
}

impl Stats {
    /// Running totals of this call, for the metrics.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            fs_in_frames: self.fs_messages_in,
            fs_in_bytes: self.fs_bytes_in,
            fs_out_frames: self.frames_to_fs,
            fs_out_bytes: self.bytes_to_fs,
            to_provider_frames: self.frames_to_provider,
            to_provider_bytes: self.bytes_to_provider,
            from_provider_frames: self.provider_audio_events,
            from_provider_bytes: self.provider_bytes_in,
            dropped_to_provider: self.frames_dropped,
            late_audio: self.late_audio_dropped,
            playback_overflow: self.playback_overflow,
        }
    }

    /// The record's `audio` block.
    pub fn audio_json(&self) -> serde_json::Value {
        serde_json::json!({
            "fs_messages_in": self.fs_messages_in,
            "fs_bytes_in": self.fs_bytes_in,
            "frames_to_provider": self.frames_to_provider,
            "bytes_to_provider": self.bytes_to_provider,
            "frames_dropped": self.frames_dropped,
            "provider_audio_events": self.provider_audio_events,
            "provider_bytes_in": self.provider_bytes_in,
            "frames_to_fs": self.frames_to_fs,
            "bytes_to_fs": self.bytes_to_fs,
            "late_audio_dropped": self.late_audio_dropped,
            "playback_overflow_frames": self.playback_overflow,
        })
    }
}
