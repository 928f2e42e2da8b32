//! What the daemon sends a FreeSWITCH client, decoded: binary playback in the call's codec,
//! `streamAudio` JSON (base64 audio with its type and rate) and `clearAudio`.
//!
//! Pure and synchronous, so it is unit-tested here and fuzzed as it is
//! (`fuzz/fuzz_targets/call_client_text.rs` includes this very file): the client tools
//! must never panic on what a server sends. It only names the `voicebridge` library (for
//! the codecs), so it compiles the same inside the binary and inside the fuzz crate.

use base64::Engine as _;
use serde::Deserialize;
use voicebridge::audio::{g711, Codec};

/// The barge-in message, as the daemon writes it (byte for byte).
pub const CLEAR_AUDIO: &str = r#"{"type":"clearAudio"}"#;

/// Decodes L16 little-endian bytes; an odd length is a sender bug, reported as such.
pub fn decode_l16(bytes: &[u8]) -> Result<Vec<i16>, PlaybackError> {
    if !bytes.len().is_multiple_of(2) {
        return Err(PlaybackError::OddLength(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

/// Decodes a playback payload in the given codec to linear samples.
pub fn decode_payload(bytes: &[u8], codec: Codec) -> Result<Vec<i16>, PlaybackError> {
    match codec {
        Codec::L16 => decode_l16(bytes),
        Codec::Pcmu => {
            let mut out = Vec::with_capacity(bytes.len());
            g711::ulaw_decode(bytes, &mut out);
            Ok(out)
        }
        Codec::Pcma => {
            let mut out = Vec::with_capacity(bytes.len());
            g711::alaw_decode(bytes, &mut out);
            Ok(out)
        }
    }
}

/// A playback message the simulation cannot play, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlaybackError {
    #[error(
        "streamAudio raw at {got} Hz on a {call} Hz call: FreeSWITCH plays raw files by \
         extension (.r{}), so this is wrong-rate or wrong-width audio (the .r24 trap)",
        got / 1000
    )]
    RawRateMismatch { got: u32, call: u32 },
    #[error("streamAudio audioData is not valid base64: {0}")]
    BadBase64(String),
    #[error("malformed streamAudio message: {0}")]
    Malformed(String),
    #[error("streamAudio audioDataType {0:?} is not simulated (raw, pcmu and pcma are)")]
    Unsupported(String),
    #[error("streamAudio {kind} on a {call} Hz call: G.711 is 8000 Hz only")]
    G711Rate { kind: String, call: u32 },
    #[error("L16 playback payload of odd length ({0} bytes)")]
    OddLength(usize),
}

/// A decoded `streamAudio` message.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAudio {
    pub audio_data_type: String,
    pub sample_rate: u32,
    /// Bytes of the decoded payload (before conversion to samples).
    pub payload_bytes: usize,
    pub samples: Vec<i16>,
}

/// What a TEXT frame from the server means to the caller's side.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerText {
    StreamAudio(StreamAudio),
    /// A `streamAudio` message that cannot be played.
    BadAudio(PlaybackError),
    /// `{"type":"clearAudio"}`: barge-in, drop what is buffered.
    ClearAudio,
    /// Anything else (transcripts, events, non-JSON).
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamAudioData {
    audio_data_type: String,
    sample_rate: Option<u32>,
    audio_data: String,
}

/// Interprets a TEXT frame from the server; never panics on bad input.
pub fn parse_server_text(text: &str, call_rate: u32) -> ServerText {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return ServerText::Other;
    };
    match value.get("type").and_then(|t| t.as_str()) {
        Some("clearAudio") => ServerText::ClearAudio,
        Some("streamAudio") => match decode_stream_audio(&value, call_rate) {
            Ok(a) => ServerText::StreamAudio(a),
            Err(e) => ServerText::BadAudio(e),
        },
        _ => ServerText::Other,
    }
}

fn decode_stream_audio(
    value: &serde_json::Value,
    call_rate: u32,
) -> Result<StreamAudio, PlaybackError> {
    let data = value
        .get("data")
        .ok_or_else(|| PlaybackError::Malformed("no \"data\" object".into()))?;
    let data: StreamAudioData = serde_json::from_value(data.clone())
        .map_err(|e| PlaybackError::Malformed(e.to_string()))?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(data.audio_data.as_bytes())
        .map_err(|e| PlaybackError::BadBase64(e.to_string()))?;
    let kind = data.audio_data_type;
    let (codec, rate) = match kind.as_str() {
        "raw" => {
            let rate = data.sample_rate.ok_or_else(|| {
                PlaybackError::Malformed("raw audio without \"sampleRate\"".into())
            })?;
            if rate != call_rate {
                return Err(PlaybackError::RawRateMismatch {
                    got: rate,
                    call: call_rate,
                });
            }
            (Codec::L16, rate)
        }
        "pcmu" | "pcma" => {
            // We cannot resample yet, so G.711 is only playable on an 8 kHz call.
            if call_rate != 8000 {
                return Err(PlaybackError::G711Rate {
                    kind,
                    call: call_rate,
                });
            }
            let codec = if kind == "pcmu" {
                Codec::Pcmu
            } else {
                Codec::Pcma
            };
            (codec, 8000)
        }
        _ => return Err(PlaybackError::Unsupported(kind)),
    };
    let samples = decode_payload(&payload, codec)?;
    Ok(StreamAudio {
        audio_data_type: kind,
        sample_rate: rate,
        payload_bytes: payload.len(),
        samples,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub(crate) fn l16_bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    pub(crate) fn stream_audio(kind: &str, rate: u32, payload: &[u8]) -> String {
        serde_json::json!({
            "type": "streamAudio",
            "data": {"audioDataType": kind, "sampleRate": rate, "audioData": B64.encode(payload)}
        })
        .to_string()
    }

    #[test]
    fn stream_audio_raw() {
        let msg = stream_audio("raw", 8000, &l16_bytes(&[5, -5, 7]));
        match parse_server_text(&msg, 8000) {
            ServerText::StreamAudio(a) => {
                assert_eq!(a.samples, vec![5, -5, 7]);
                assert_eq!(a.payload_bytes, 6);
                assert_eq!(a.audio_data_type, "raw");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_audio_raw_at_wrong_rate_is_the_r24_trap() {
        let msg = stream_audio("raw", 24000, &l16_bytes(&[1, 2]));
        let r = parse_server_text(&msg, 8000);
        assert_eq!(
            r,
            ServerText::BadAudio(PlaybackError::RawRateMismatch {
                got: 24000,
                call: 8000
            })
        );
        if let ServerText::BadAudio(e) = r {
            assert!(e.to_string().contains(".r24"), "{e}");
        }
    }

    #[test]
    fn stream_audio_g711() {
        let samples = [1000i16, -1000, 0];
        let ulaw: Vec<u8> = samples
            .iter()
            .map(|&s| audio_codec_algorithms::encode_ulaw(s))
            .collect();
        let alaw: Vec<u8> = samples
            .iter()
            .map(|&s| audio_codec_algorithms::encode_alaw(s))
            .collect();
        for (kind, payload, decode) in [
            (
                "pcmu",
                ulaw,
                audio_codec_algorithms::decode_ulaw as fn(u8) -> i16,
            ),
            (
                "pcma",
                alaw,
                audio_codec_algorithms::decode_alaw as fn(u8) -> i16,
            ),
        ] {
            let want: Vec<i16> = payload.iter().map(|&b| decode(b)).collect();
            match parse_server_text(&stream_audio(kind, 8000, &payload), 8000) {
                ServerText::StreamAudio(a) => {
                    assert_eq!(a.samples, want, "{kind}");
                    assert_eq!(a.payload_bytes, 3);
                }
                other => panic!("{kind}: {other:?}"),
            }
            assert!(matches!(
                parse_server_text(&stream_audio(kind, 8000, &payload), 16000),
                ServerText::BadAudio(PlaybackError::G711Rate { .. })
            ));
        }
    }

    #[test]
    fn bad_stream_audio_is_an_error_not_a_panic() {
        let bad_b64 = r#"{"type":"streamAudio","data":{"audioDataType":"raw","sampleRate":8000,"audioData":"@@not base64@@"}}"#;
        assert!(matches!(
            parse_server_text(bad_b64, 8000),
            ServerText::BadAudio(PlaybackError::BadBase64(_))
        ));
        for malformed in [
            r#"{"type":"streamAudio"}"#,
            r#"{"type":"streamAudio","data":{"audioDataType":"raw","audioData":""}}"#,
            r#"{"type":"streamAudio","data":{"audioDataType":7,"audioData":""}}"#,
        ] {
            assert!(
                matches!(
                    parse_server_text(malformed, 8000),
                    ServerText::BadAudio(PlaybackError::Malformed(_))
                ),
                "{malformed}"
            );
        }
        assert!(matches!(
            parse_server_text(&stream_audio("mp3", 8000, b"xx"), 8000),
            ServerText::BadAudio(PlaybackError::Unsupported(_))
        ));
        assert!(matches!(
            parse_server_text(&stream_audio("raw", 8000, &[1, 2, 3]), 8000),
            ServerText::BadAudio(PlaybackError::OddLength(3))
        ));
    }

    #[test]
    fn other_texts_and_clear_audio() {
        assert_eq!(
            parse_server_text(r#"{"type":"clearAudio"}"#, 8000),
            ServerText::ClearAudio
        );
        for t in [r#"{"type":"transcript","text":"hi"}"#, "plain", "{}", "[1]"] {
            assert_eq!(parse_server_text(t, 8000), ServerText::Other, "{t}");
        }
    }

    #[test]
    fn the_clear_audio_constant_parses_as_clear_audio() {
        assert_eq!(parse_server_text(CLEAR_AUDIO, 8000), ServerText::ClearAudio);
    }
}
