//! OpenAI Realtime server events: each input line is one server text frame, fed to the
//! same `Turns::on_text` the connection uses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voicebridge::providers::openai::{Step, Turns};
use voicebridge::providers::ProviderEvent;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut turns = Turns::new();
    // Whether (and after which frame) our session.update went out.
    let setup_after = usize::from(flags & 0x0f);
    let send_setup = flags & 0x10 != 0;
    if send_setup && setup_after == 0 {
        turns.mark_setup_sent();
    }
    let mut out = Vec::new();
    let mut ready = 0;
    for (i, frame) in text.split('\n').enumerate() {
        if send_setup && i == setup_after && i > 0 {
            turns.mark_setup_sent();
        }
        out.clear();
        let Some(outcome) = turns.on_text(frame, &mut out) else {
            assert!(out.is_empty(), "an ignored frame produced events");
            continue;
        };
        if outcome.step == Step::Ready {
            assert!(send_setup, "ready without our session.update");
            ready += 1;
        }
        assert!(
            out.len() <= 2,
            "one frame, at most two session events: {out:?}"
        );
        for ev in &out {
            if let ProviderEvent::Audio { data, .. } = ev {
                assert!(!data.is_empty(), "empty audio is never forwarded");
            }
        }
    }
    assert!(
        ready <= 1,
        "Ready is reported once per session, not {ready} times"
    );
});
