//! Playback: turning paced 20 ms frames into what the configured module build plays.
//!
//! - `binary`: forks that write into the call take L16 BINARY frames at the stream rate
//!   and stop on the text `{"type":"clearAudio"}`.
//! - `stream_audio`: builds that play `{"type":"streamAudio",...}` TEXT frames. 16-bit
//!   audio goes as `raw` only at 8 or 16 kHz: FreeSWITCH plays `.r24`/`.r32` files as
//!   24/32-bit samples, so at other rates each frame is wrapped as a `wav` instead.
//!   G.711 calls get `pcmu`/`pcma`.
//! - `esl_files`: the community module only writes each `streamAudio` frame to a file
//!   and fires `mod_audio_stream::play`; the call's leg then plays it with ESL
//!   `uuid_broadcast`. Files played one after another have a small gap between them,
//!   so frames are gathered into chunks of `esl_chunk` (hundreds of ms) and the pacer
//!   runs that much further ahead. Same `.r24` rule; G.711 is decoded to `raw` 8000,
//!   the one type every build of the module writes. Each chunk carries a `seq`, which
//!   the module keeps in the event, so play events of chunks cut by a barge-in can be
//!   told apart.

use std::time::Duration;

use base64::Engine;
use tokio_tungstenite::tungstenite::Message;

use crate::audio::{g711, AudioFormat, Codec};
use crate::config::PlaybackMode;

/// The barge-in message understood by the forks that play binary frames. Other builds
/// forward unknown text as a `mod_audio_stream::json` event, so it is harmless there.
pub const CLEAR_AUDIO: &str = r#"{"type":"clearAudio"}"#;

/// The three `playback` modes, one line each, for `voicebridge check`: which one plays
/// depends on the mod_audio_stream build, and a wrong one is silent, not an error.
pub const MODES_EXPLAINED: [(&str, &str); 3] = [
    (
        "binary",
        "L16 binary frames: only the forks that write binary frames into the call play them; the stock community module ignores them (silence)",
    ),
    (
        "stream_audio",
        "streamAudio JSON frames, for builds that play them (STREAM_PLAYBACK=true); barge-in needs [freeswitch.esl]",
    ),
    (
        "esl_files",
        "the stock community module: it writes each streamAudio chunk to a file, played through [freeswitch.esl] (uuid_broadcast)",
    ),
];

/// The hint logged with the first `binary` call of the process (once: it is about the
/// module build, not the call).
pub const BINARY_HINT: &str = "playback = \"binary\" plays only on mod_audio_stream forks that write binary frames into the call; the stock community module ignores them and the caller hears nothing: use playback = \"stream_audio\" or \"esl_files\" there (voicebridge check explains the modes)";

/// True the first time it is called in this process, for the first `binary` call.
pub fn first_binary_call() -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SAID: AtomicBool = AtomicBool::new(false);
    !SAID.swap(true, Ordering::Relaxed)
}

/// Encodes playback frames for one call.
pub struct Playback {
    mode: PlaybackMode,
    format: AudioFormat,
    /// `audioDataType` and the `sampleRate` we may claim for it.
    data_type: &'static str,
    /// Reused across frames: the playback path runs 50 times a second per call.
    scratch: Vec<u8>,
    /// `esl_files`: L16 of the chunk being gathered, and its target size in bytes.
    chunk: Vec<u8>,
    chunk_bytes: usize,
    /// `esl_files`: the `seq` of the next chunk.
    seq: u64,
    decoded: Vec<i16>,
}

/// How far ahead of the playout the pacer may release in `mode`: in `esl_files` a
/// chunk is only sent once it is complete, so the lead must cover a whole chunk, plus
/// `lead` of margin for the play event and `uuid_broadcast` to come back.
pub fn pacer_lead(mode: PlaybackMode, lead: Duration, esl_chunk: Duration) -> Duration {
    match mode {
        PlaybackMode::EslFiles => lead + esl_chunk,
        PlaybackMode::Binary | PlaybackMode::StreamAudio => lead,
    }
}

/// How many paced frames make one message in `mode`: `esl_files` gathers `esl_chunk`
/// of audio per file, the other modes send every frame.
pub fn frames_per_message(mode: PlaybackMode, esl_chunk: Duration) -> usize {
    match mode {
        PlaybackMode::EslFiles => (esl_chunk.as_millis() as usize / 20).max(1),
        PlaybackMode::Binary | PlaybackMode::StreamAudio => 1,
    }
}

impl Playback {
    /// `esl_chunk` is only used by `esl_files`.
    pub fn new(mode: PlaybackMode, format: AudioFormat, esl_chunk: Duration) -> Playback {
        let data_type = match (mode, format.codec, format.rate) {
            (PlaybackMode::EslFiles, Codec::Pcmu | Codec::Pcma, _) => "raw",
            (_, Codec::Pcmu, _) => "pcmu",
            (_, Codec::Pcma, _) => "pcma",
            (_, Codec::L16, 8000 | 16000) => "raw",
            (_, Codec::L16, _) => "wav",
        };
        // Chunks are L16 at the call rate (G.711 decoded), whole 20 ms frames.
        let frame_bytes = format.rate as usize / 50 * 2;
        let frames = (esl_chunk.as_millis() as usize / 20).max(1);
        Playback {
            mode,
            format,
            data_type,
            scratch: Vec::new(),
            chunk: Vec::new(),
            chunk_bytes: frame_bytes * frames,
            seq: 0,
            decoded: Vec::new(),
        }
    }

    pub fn mode(&self) -> PlaybackMode {
        self.mode
    }

    /// The message carrying one frame (`frame` is in the call's format); in `esl_files`
    /// a message only when the frame completes a chunk.
    pub fn frame(&mut self, frame: &[u8]) -> Option<Message> {
        Some(match self.mode {
            PlaybackMode::Binary => Message::binary(frame.to_vec()),
            PlaybackMode::EslFiles => {
                match self.format.codec {
                    Codec::L16 => self.chunk.extend_from_slice(frame),
                    Codec::Pcmu | Codec::Pcma => {
                        self.decoded.clear();
                        if self.format.codec == Codec::Pcmu {
                            g711::ulaw_decode(frame, &mut self.decoded);
                        } else {
                            g711::alaw_decode(frame, &mut self.decoded);
                        }
                        self.chunk
                            .extend(self.decoded.iter().flat_map(|s| s.to_le_bytes()));
                    }
                }
                if self.chunk.len() < self.chunk_bytes {
                    return None;
                }
                return self.flush_chunk();
            }
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
        })
    }

    /// `esl_files`: the chunk gathered so far, if any, as a message (the queue ran dry
    /// or the reply ended: holding it back would only delay it).
    pub fn flush_chunk(&mut self) -> Option<Message> {
        if self.chunk.is_empty() {
            return None;
        }
        let payload: &[u8] = if self.data_type == "wav" {
            self.scratch.clear();
            write_wav_header(&mut self.scratch, self.format.rate, self.chunk.len());
            self.scratch.extend_from_slice(&self.chunk);
            &self.scratch
        } else {
            &self.chunk
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
        let msg = Message::text(format!(
            r#"{{"type":"streamAudio","data":{{"audioDataType":"{}","sampleRate":{},"audioData":"{}","seq":{}}}}}"#,
            self.data_type, self.format.rate, b64, self.seq
        ));
        self.chunk.clear();
        self.seq += 1;
        Some(msg)
    }

    /// `esl_files`: the `seq` the next chunk will carry; play events below it belong
    /// to chunks sent before a barge-in.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// The message that stops FreeSWITCH's own playback buffer on barge-in; the chunk
    /// being gathered is dropped too.
    pub fn clear(&mut self) -> Message {
        self.chunk.clear();
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

    #[test]
    fn only_esl_files_batches_frames() {
        let chunk = Duration::from_millis(200);
        assert_eq!(frames_per_message(PlaybackMode::EslFiles, chunk), 10);
        assert_eq!(
            frames_per_message(PlaybackMode::EslFiles, Duration::from_millis(5)),
            1
        );
        assert_eq!(frames_per_message(PlaybackMode::Binary, chunk), 1);
        assert_eq!(frames_per_message(PlaybackMode::StreamAudio, chunk), 1);
    }

    fn json(m: Option<Message>) -> serde_json::Value {
        match m {
            Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    const CHUNK: Duration = Duration::from_millis(500);

    fn new(mode: PlaybackMode, format: AudioFormat) -> Playback {
        Playback::new(mode, format, CHUNK)
    }

    #[test]
    fn binary_mode_sends_the_frame_as_is() {
        let mut p = new(PlaybackMode::Binary, AudioFormat::l16(8000));
        assert_eq!(
            p.frame(&[1, 2, 3, 4]),
            Some(Message::binary(vec![1, 2, 3, 4]))
        );
        assert_eq!(p.clear(), Message::text(CLEAR_AUDIO));
    }

    #[test]
    fn stream_audio_labels_raw_with_the_call_rate() {
        let mut p = new(PlaybackMode::StreamAudio, AudioFormat::l16(16000));
        let v = json(p.frame(&[0, 1, 2, 3]));
        assert_eq!(v["type"], "streamAudio");
        assert_eq!(v["data"]["audioDataType"], "raw");
        assert_eq!(v["data"]["sampleRate"], 16000);
        assert_eq!(v["data"]["audioData"], "AAECAw==");
    }

    #[test]
    fn stream_audio_g711_and_the_r24_trap() {
        let mut p = new(PlaybackMode::StreamAudio, AudioFormat::pcmu());
        assert_eq!(json(p.frame(&[0xff; 160]))["data"]["audioDataType"], "pcmu");
        let mut p = new(PlaybackMode::StreamAudio, AudioFormat::pcma());
        assert_eq!(json(p.frame(&[0xd5; 160]))["data"]["audioDataType"], "pcma");

        // 16-bit at 24 kHz must never be labelled raw: it goes as a WAV.
        let mut p = new(PlaybackMode::StreamAudio, AudioFormat::l16(24000));
        let v = json(p.frame(&[0u8; 960]));
        assert_eq!(v["data"]["audioDataType"], "wav");
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data"]["audioData"].as_str().unwrap())
            .unwrap();
        assert_eq!(&data[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(data[24..28].try_into().unwrap()), 24000);
        assert_eq!(data.len(), 44 + 960);
    }

    fn audio(v: &serde_json::Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(v["data"]["audioData"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn esl_files_gathers_whole_chunks_with_a_seq() {
        let mut p = new(PlaybackMode::EslFiles, AudioFormat::l16(16000));
        let frame = [7u8; 640];
        for _ in 0..24 {
            assert_eq!(p.frame(&frame), None);
        }
        let v = json(p.frame(&frame));
        assert_eq!(v["data"]["audioDataType"], "raw");
        assert_eq!(v["data"]["sampleRate"], 16000);
        assert_eq!(v["data"]["seq"], 0);
        assert_eq!(audio(&v).len(), 25 * 640);
        // A partial chunk goes out when flushed; a barge-in drops it instead.
        assert_eq!(p.frame(&frame), None);
        let v = json(p.flush_chunk());
        assert_eq!(audio(&v).len(), 640);
        assert_eq!(v["data"]["seq"], 1);
        assert_eq!(p.flush_chunk(), None);
        assert_eq!(p.frame(&frame), None);
        assert_eq!(p.clear(), Message::text(CLEAR_AUDIO));
        assert_eq!(p.flush_chunk(), None);
        assert_eq!(p.next_seq(), 2);
    }

    #[test]
    fn esl_files_r24_trap_and_g711() {
        let mut p = new(PlaybackMode::EslFiles, AudioFormat::l16(24000));
        let v = json(p.frame(&[0u8; 960 * 25]));
        assert_eq!(v["data"]["audioDataType"], "wav");
        assert_eq!(&audio(&v)[..4], b"RIFF");
        // G.711 is decoded: raw 8000 is what every build of the module writes.
        let mut p = new(PlaybackMode::EslFiles, AudioFormat::pcmu());
        let v = json(p.frame(&[0xff; 160 * 25]));
        assert_eq!(v["data"]["audioDataType"], "raw");
        assert_eq!(v["data"]["sampleRate"], 8000);
        assert_eq!(audio(&v), vec![0u8; 320 * 25]);
    }

    #[test]
    fn the_pacer_covers_a_chunk_in_esl_files() {
        let lead = Duration::from_millis(60);
        assert_eq!(pacer_lead(PlaybackMode::Binary, lead, CHUNK), lead);
        assert_eq!(
            pacer_lead(PlaybackMode::EslFiles, lead, CHUNK),
            Duration::from_millis(560)
        );
    }
}
