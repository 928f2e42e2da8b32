//! What `voicebridge call` does with a server text frame (streamAudio / clearAudio).
//!
//! The client tools live in the `voicebridge` binary, not its library, so their pure
//! decoder is compiled in here from its one source file.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/client/wire.rs"]
mod wire;

use libfuzzer_sys::fuzz_target;
use wire::{parse_server_text, PlaybackError, ServerText};

fuzz_target!(|data: &[u8]| {
    let Some((&rate_sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let call_rate = [8000, 16000, 24000, 48000][usize::from(rate_sel % 4)];
    match parse_server_text(text, call_rate) {
        ServerText::StreamAudio(a) => {
            // Playable audio is at the call's rate and whole samples only.
            assert_eq!(a.sample_rate, call_rate);
            let width = if a.audio_data_type == "raw" { 2 } else { 1 };
            assert_eq!(
                a.payload_bytes,
                a.samples.len() * width,
                "{}",
                a.audio_data_type
            );
        }
        ServerText::BadAudio(PlaybackError::OddLength(n)) => assert!(n % 2 == 1),
        ServerText::BadAudio(_) | ServerText::ClearAudio | ServerText::Other => {}
    }
});
