//! The FreeSWITCH Event Socket byte stream: whatever arrives on the ESL connection
//! (split anywhere by TCP) must parse the same way whole or in pieces, never panic,
//! and every event must be classified and, for `mod_audio_stream::play`, read safely.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voicebridge::telephony::freeswitch::esl::frame::{
    classify, is_safe_arg, parse_channel_event, parse_frame, parse_play, ChannelEvent, Frame,
    FrameError, Message, PLAY_SUBCLASS,
};

/// Parses `buf` message by message; returns the frames and where it stopped.
fn parse_all(buf: &[u8]) -> (Vec<Frame>, Result<usize, FrameError>) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match parse_frame(&buf[at..]) {
            Ok(Some((frame, used))) => {
                assert!(used > 0 && at + used <= buf.len(), "used {used} at {at}");
                frames.push(frame);
                at += used;
            }
            Ok(None) => return (frames, Ok(at)),
            Err(e) => return (frames, Err(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (first, rest) = data.split_first().map_or((0, data), |(b, r)| (*b, r));
    let (whole, whole_end) = parse_all(rest);

    // The same bytes delivered in two reads: a reader that keeps unparsed bytes must see
    // the same messages.
    let cut = (first as usize * rest.len()) / 256;
    let (mut pieces, end) = parse_all(&rest[..cut]);
    if let Ok(consumed) = end {
        let (more, _) = parse_all(&rest[consumed..]);
        pieces.extend(more);
        if whole_end.is_ok() {
            assert_eq!(pieces, whole, "split at {cut} changed the messages");
        }
    }

    for frame in &whole {
        if let Message::Event(event) = classify(frame) {
            if let Some(play) = parse_play(&event) {
                assert_eq!(event.subclass.as_deref(), Some(PLAY_SUBCLASS));
                // What the session checks before putting the file into a command line.
                let _ = is_safe_arg(&play.file) && is_safe_arg(&play.uuid);
            }
            if let Some(ChannelEvent::Dtmf { digit, .. }) = parse_channel_event(&event) {
                assert!(matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D'), "{digit:?}");
            }
        }
    }
});
