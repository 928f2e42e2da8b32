//! Playback: turning paced 20 ms frames into what the configured module build plays.
//!
//! - `binary`: forks that write into the call take L16 BINARY frames at the stream rate
//!   and stop on the text `{"type":"clearAudio"}`.
//! - `stream_audio`: builds that play `{"type":"streamAudio",...}` TEXT frames. 16-bit
//!   audio goes as `raw` only at 8 or 16 kHz: FreeSWITCH plays `.r24`/`.r32` files as
//!   24/32-bit samples, so at other rates each frame is wrapped as a `wav` instead.
//!   G.711 calls get `pcmu`/`pcma`.

use base64::Engine;
use tokio_tungstenite::tungstenite::Message;

use crate::audio::{AudioFormat, Codec};
use crate::config::PlaybackMode;

/// The barge-in message understood by the forks that play binary frames. Other builds
/// forward unknown text as a `mod_audio_stream::json` event, so it is harmless there.
pub const CLEAR_AUDIO: &str = r#"{"type":"clearAudio"}"#;

#[derive(Debug, thiserror::Error)]
pub enum PlaybackError {
    #[error("playback mode esl_files is not available yet: use binary or stream_audio")]
    EslFilesUnsupported,
}

/// Encodes playback frames for one call.
pub struct Playback {
    mode: PlaybackMode,
    format: AudioFormat,
    /// `audioDataType` and the `sampleRate` we may claim for it.
    data_type: &'static str,
    /// Reused across frames: the playback path runs 50 times a second per call.
    scratch: Vec<u8>,
}

impl Playback {
    pub fn new(mode: PlaybackMode, format: AudioFormat) -> Result<Playback, PlaybackError> {
        let data_type = match (format.codec, format.rate) {
            (Codec::Pcmu, _) => "pcmu",
            (Codec::Pcma, _) => "pcma",
            (Codec::L16, 8000 | 16000) => "raw",
            (Codec::L16, _) => "wav",
        };
        if mode == PlaybackMode::EslFiles {
            return Err(PlaybackError::EslFilesUnsupported);
        }
        Ok(Playback {
            mode,
            format,
            data_type,
            scratch: Vec::new(),
        })
    }

    pub fn mode(&self) -> PlaybackMode {
        self.mode
    }

    /// The message carrying one frame (`frame` is in the call's format).
    pub fn frame(&mut self, frame: &[u8]) -> Message {
        match self.mode {
            PlaybackMode::Binary | PlaybackMode::EslFiles => Message::binary(frame.to_vec()),
            PlaybackMode::StreamAudio => {
                let payload: &[u8] = if self.data_type == "wav" {
                    self.scratch.clear();
                    write_wav_header(&mut self.scratch, self.format.rate, frame.len());
                    self.scratch.extend_from_slice(frame);
                    &self.scratch
                } else {
                    frame
                };
                let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
                Message::text(format!(
                    r#"{{"type":"streamAudio","data":{{"audioDataType":"{}","sampleRate":{},"audioData":"{}"}}}}"#,
                    self.data_type, self.format.rate, b64
                ))
            }
        }
    }

    /// The message that stops FreeSWITCH's own playback buffer on barge-in.
    pub fn clear(&self) -> Message {
        Message::text(CLEAR_AUDIO)
    }
}

/// A canonical 44-byte RIFF header for 16-bit mono PCM.
fn write_wav_header(out: &mut Vec<u8>, rate: u32, data_len: usize) {
    let data_len = data_len as u32;
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(m: Message) -> serde_json::Value {
        match m {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn binary_mode_sends_the_frame_as_is() {
        let mut p = Playback::new(PlaybackMode::Binary, AudioFormat::l16(8000)).unwrap();
        assert_eq!(p.frame(&[1, 2, 3, 4]), Message::binary(vec![1, 2, 3, 4]));
        assert_eq!(p.clear(), Message::text(CLEAR_AUDIO));
    }

    #[test]
    fn stream_audio_labels_raw_with_the_call_rate() {
        let mut p = Playback::new(PlaybackMode::StreamAudio, AudioFormat::l16(16000)).unwrap();
        let v = json(p.frame(&[0, 1, 2, 3]));
        assert_eq!(v["type"], "streamAudio");
        assert_eq!(v["data"]["audioDataType"], "raw");
        assert_eq!(v["data"]["sampleRate"], 16000);
        assert_eq!(v["data"]["audioData"], "AAECAw==");
    }

    #[test]
    fn stream_audio_g711_and_the_r24_trap() {
        let mut p = Playback::new(PlaybackMode::StreamAudio, AudioFormat::pcmu()).unwrap();
        assert_eq!(json(p.frame(&[0xff; 160]))["data"]["audioDataType"], "pcmu");
        let mut p = Playback::new(PlaybackMode::StreamAudio, AudioFormat::pcma()).unwrap();
        assert_eq!(json(p.frame(&[0xd5; 160]))["data"]["audioDataType"], "pcma");

        // 16-bit at 24 kHz must never be labelled raw: it goes as a WAV.
        let mut p = Playback::new(PlaybackMode::StreamAudio, AudioFormat::l16(24000)).unwrap();
        let v = json(p.frame(&[0u8; 960]));
        assert_eq!(v["data"]["audioDataType"], "wav");
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data"]["audioData"].as_str().unwrap())
            .unwrap();
        assert_eq!(&data[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(data[24..28].try_into().unwrap()), 24000);
        assert_eq!(data.len(), 44 + 960);
    }

    #[test]
    fn esl_files_is_refused_clearly() {
        assert!(Playback::new(PlaybackMode::EslFiles, AudioFormat::l16(8000)).is_err());
    }
}
