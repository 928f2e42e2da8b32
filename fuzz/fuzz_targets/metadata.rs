//! The metadata text frame: `mod_audio_stream` sends whatever the dialplan wrote, so
//! `metadata::parse` must take any text, never panic, and honour the module's size cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voicebridge::telephony::freeswitch::metadata::{self, MAX_METADATA_BYTES};

fn check(text: &str) {
    let (meta, warnings) = metadata::parse(text);
    if text.len() > MAX_METADATA_BYTES {
        assert!(warnings.iter().any(|w| w.contains("truncated")));
    }
    if let Some(raw) = &meta.raw {
        // Raw text is the (possibly truncated) input itself, cut on a char boundary.
        assert!(raw.len() <= MAX_METADATA_BYTES);
        assert!(text.starts_with(raw.as_str()));
        assert!(meta.vars.is_empty());
    }
    if let Some(rate) = meta.sample_rate {
        assert!((8000..=48000).contains(&rate) && rate % 8000 == 0, "{rate}");
    }
    // The canonical names are always filled from the recognised aliases.
    for (name, value) in [
        ("caller_id", &meta.caller_id),
        ("called", &meta.called),
        ("call_id", &meta.call_id),
    ] {
        if let Some(v) = value {
            assert!(!v.is_empty());
            assert!(meta.vars.contains_key(name));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // What the server does with a text frame (always UTF-8) and what a lossy reading of a
    // binary frame would give.
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&String::from_utf8_lossy(data));
});
