//! ElevenLabs agent server events: each input line is one server text frame, parsed by
//! `wire::parse` and run through the same `turn::Turns` bookkeeping and format checks the
//! connection applies, with arbitrary clock steps between frames.
#![no_main]

use std::time::{Duration, Instant};

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use voicebridge::providers::elevenlabs::turn::{AudioVerdict, Turns, RESPONSE_PAUSE};
use voicebridge::providers::elevenlabs::wire::{self, ServerEvent};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let watchdog = Duration::from_millis(u64::from(flags & 0x07) * 1000);
    let mut turns = Turns::new(watchdog);
    let mut now = Instant::now();
    let mut interrupted_through: Option<i64> = None;
    for (i, frame) in text.split('\n').enumerate() {
        // A deterministic clock step per frame, 0..~1 s, to cross the 300 ms pause.
        now += Duration::from_millis((i as u64 * 97 + u64::from(flags)) % 1100);
        if turns.on_done_due(now) {
            assert!(turns.done_deadline().is_none());
        }
        let _ = turns.on_watchdog_due(now);
        let Ok(event) = wire::parse(frame) else {
            continue;
        };
        match event {
            ServerEvent::Audio {
                event_id,
                audio_base_64,
            } => {
                let verdict = turns.on_audio(event_id, now);
                if interrupted_through.is_some_and(|k| event_id <= k) {
                    assert_eq!(verdict, AudioVerdict::Drop, "late audio {event_id} played");
                } else {
                    assert!(matches!(verdict, AudioVerdict::Play(_)));
                }
                let _ = base64::engine::general_purpose::STANDARD.decode(audio_base_64.as_bytes());
            }
            ServerEvent::Interruption { event_id } => {
                turns.on_interruption(event_id);
                interrupted_through =
                    Some(interrupted_through.map_or(event_id, |k| k.max(event_id)));
            }
            ServerEvent::UserTranscript(_) => {
                turns.on_user_transcript(now);
            }
            ServerEvent::AgentResponse(_) => turns.on_agent_response(),
            ServerEvent::ClientToolCall { id, name, .. } => {
                assert!(!id.is_empty() && !name.is_empty());
                // The session always answers; the answer is a new response.
                turns.on_tool_call();
                turns.on_tool_result(true, now);
            }
            ServerEvent::Metadata { output, input, .. } => {
                for name in [&output, &input] {
                    if let Some(f) = wire::parse_format(name) {
                        assert!(f.bytes_per_frame() > 0);
                    }
                }
            }
            ServerEvent::Ping { event_id, .. } => {
                // The pong echoes whatever id came, as JSON.
                let pong = wire::pong(&event_id);
                assert!(pong.starts_with('{') && pong.ends_with('}'));
            }
            ServerEvent::AgentResponseCorrection { .. }
            | ServerEvent::Error { .. }
            | ServerEvent::Other(_) => {}
        }
        if let Some(d) = turns.done_deadline() {
            // The last audio is never in the future.
            assert!(d <= now + RESPONSE_PAUSE);
        }
    }
});
