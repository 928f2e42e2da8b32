//! Gemini Live server messages: each input line is one server text frame, parsed by
//! `wire::parse`, with every field the connection then interprets run through the same
//! pure helpers (audio MIME rate, base64 audio, goAway's protobuf duration).
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use voicebridge::providers::gemini::wire;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for frame in text.split('\n') {
        // The helpers also see arbitrary strings directly (not only valid JSON fields).
        let _ = wire::parse_duration(frame);
        let _ = wire::pcm_rate(frame);
        let Ok(msg) = wire::parse(frame) else {
            continue;
        };
        if let Some(content) = &msg.server_content {
            if let Some(turn) = &content.model_turn {
                for part in &turn.parts {
                    if let Some(blob) = &part.inline_data {
                        let _ = wire::pcm_rate(&blob.mime_type);
                        let _ = base64::engine::general_purpose::STANDARD
                            .decode(blob.data.as_bytes());
                    }
                }
            }
        }
        if let Some(go) = &msg.go_away {
            if let Some(d) = go.time_left.as_deref().and_then(wire::parse_duration) {
                // What the connection logs.
                let _ = d.as_millis() as u64;
            }
        }
    }
});
