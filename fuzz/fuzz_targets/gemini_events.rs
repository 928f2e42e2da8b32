//! Gemini Live server messages: each input line is one server text frame, parsed by
//! `wire::parse` and run through the same pure turn handling (`Turn::on_content`) the
//! connection uses, plus the helper the connection applies to `goAway.timeLeft`, and
//! the tool-schema converter on the arguments of any `toolCall`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voicebridge::providers::gemini::{wire, Turn};
use voicebridge::providers::ProviderEvent;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut turn = Turn::default();
    let mut out = Vec::new();
    let mut open_item: Option<String> = None;
    for frame in text.split('\n') {
        // The helpers also see arbitrary strings directly (not only valid JSON fields).
        let _ = wire::parse_duration(frame);
        let _ = wire::pcm_rate(frame);
        let Ok(msg) = wire::parse(frame) else {
            continue;
        };
        if let Some(go) = &msg.go_away {
            if let Some(d) = go.time_left.as_deref().and_then(wire::parse_duration) {
                // What the connection logs.
                let _ = d.as_millis() as u64;
            }
        }
        if let Some(tc) = &msg.tool_call {
            // The schema converter on arbitrary JSON (deep nesting, `$ref` loops).
            for f in &tc.function_calls {
                let mut dropped = Vec::new();
                let _ = wire::gemini_schema(&f.args, &f.args, &mut dropped, 0);
            }
        }
        out.clear();
        let effects = turn.on_content(
            msg.usage_metadata,
            msg.server_content,
            std::time::Instant::now(),
            &mut out,
        );
        let mut audio = false;
        for ev in &out {
            match ev {
                ProviderEvent::Audio { item, data } => {
                    audio = true;
                    // PCM16: whole samples only, never empty.
                    assert!(!data.is_empty() && data.len() % 2 == 0, "{}", data.len());
                    // One item per model turn, until turnComplete.
                    match &open_item {
                        Some(open) => assert_eq!(open.as_str(), &**item),
                        None => open_item = Some(item.to_string()),
                    }
                }
                ProviderEvent::ResponseDone => open_item = None,
                _ => {}
            }
        }
        assert_eq!(effects.audio, audio);
    }
});
