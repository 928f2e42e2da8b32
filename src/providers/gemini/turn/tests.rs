//! Unit tests of the Gemini turn state (moved from `gemini/mod.rs`).

use std::time::Duration;

use base64::Engine;

use super::*;

fn audio(samples: usize) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(vec![1u8; samples * 2]);
    format!(
        r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{data}"}}}},{{"text":"x"}},{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{data}"}}}}]}}}}}}"#
    )
}

/// Runs messages through the pure turn handling, each at `start + ms`.
fn turn_events(t: &mut Turn, start: std::time::Instant, msgs: &[(u64, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (ms, m) in msgs {
        let m = wire::parse(m).unwrap();
        let at = start + Duration::from_millis(*ms);
        t.on_content(m.usage_metadata, m.server_content, at, &mut out);
    }
    out.into_iter()
        .map(|e| match e {
            ProviderEvent::Audio { item, data } => format!("audio {item} {}", data.len()),
            ProviderEvent::SpeechStarted => "speech".into(),
            ProviderEvent::SpeechStopped => "stopped".into(),
            ProviderEvent::ResponseDone => "done".into(),
            ProviderEvent::Transcript {
                who,
                text,
                is_final,
            } => format!("{} {text} {is_final}", who.name()),
            other => format!("{other:?}"),
        })
        .collect()
}

/// `interrupted` without a `turnComplete` (late or lost, as peers of Gemini have
/// seen): new caller speech ends the dropping, and the cut turn's turnComplete,
/// if it comes late, closes nothing.
#[test]
fn interrupted_turn_ends_on_new_caller_speech_without_turn_complete() {
    let start = std::time::Instant::now();
    let mut t = Turn::default();
    let caller = r#"{"serverContent":{"inputTranscription":{"text":"wait"}}}"#;
    let done = r#"{"serverContent":{"turnComplete":true}}"#;
    let got = turn_events(
        &mut t,
        start,
        &[
            (0, audio(240)),
            (10, r#"{"serverContent":{"interrupted":true}}"#.to_owned()),
            (11, audio(240)),
            (300, caller.to_owned()),
            (310, done.to_owned()),
            (900, audio(240)),
            (1000, audio(240)),
            (1100, done.to_owned()),
        ],
    );
    assert_eq!(
        got,
        vec![
            "audio turn-1 480",
            "audio turn-1 480",
            "speech",
            // the late part is dropped; the caller's words close the cut turn
            "done",
            "caller wait false",
            "stopped",
            // the late turnComplete closes nothing; the new reply plays
            "audio turn-2 480",
            "audio turn-2 480",
            "audio turn-2 480",
            "audio turn-2 480",
            "caller wait true",
            "done",
        ]
    );
}

/// No caller transcription and no turnComplete either: the dropping ends after
/// [`MAX_INTERRUPT_DROP`], and a turnComplete after new audio closes the new turn.
#[test]
fn interrupted_turn_dropping_is_bounded_in_time() {
    let start = std::time::Instant::now();
    let mut t = Turn::default();
    let limit = MAX_INTERRUPT_DROP.as_millis() as u64;
    let got = turn_events(
        &mut t,
        start,
        &[
            (0, audio(240)),
            (10, r#"{"serverContent":{"interrupted":true}}"#.to_owned()),
            (20, audio(240)),
            (10 + limit - 1, audio(240)),
            // a repeated interrupted does not restart the limit
            (
                10 + limit - 1,
                r#"{"serverContent":{"interrupted":true}}"#.to_owned(),
            ),
            (10 + limit, audio(240)),
            (
                10 + limit + 1,
                r#"{"serverContent":{"turnComplete":true}}"#.to_owned(),
            ),
        ],
    );
    assert_eq!(
        got,
        vec![
            "audio turn-1 480",
            "audio turn-1 480",
            "speech",
            "speech",
            "done",
            "audio turn-2 480",
            "audio turn-2 480",
            "done",
        ]
    );
}

/// The pure part alone: what the fuzz target drives.
#[test]
fn turn_content_is_pure_and_reports_its_effects() {
    let now = std::time::Instant::now();
    let mut t = Turn::default();
    let mut out = Vec::new();
    let caller = r#"{"serverContent":{"inputTranscription":{"text":"hi"}}}"#;
    let m = wire::parse(caller).unwrap();
    let fx = t.on_content(m.usage_metadata, m.server_content, now, &mut out);
    assert!(fx.caller_between_turns && !fx.audio && fx.off_rate_mime.is_none());
    let slow = r#"{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm;rate=16000","data":"AAEC"}}]}}}"#;
    let m = wire::parse(slow).unwrap();
    let fx = t.on_content(m.usage_metadata, m.server_content, now, &mut out);
    assert!(fx.audio);
    assert_eq!(fx.off_rate_mime.as_deref(), Some("audio/pcm;rate=16000"));
    // Inside a model turn the caller's words do not arm the watchdog.
    let m = wire::parse(caller).unwrap();
    assert!(
        !t.on_content(m.usage_metadata, m.server_content, now, &mut out)
            .caller_between_turns
    );
    assert!(matches!(out[1], ProviderEvent::SpeechStopped));
    // Three bytes decoded: the odd one is dropped.
    assert!(
        matches!(&out[2], ProviderEvent::Audio { item, data } if &**item == "turn-1" && data.len() == 2)
    );
}
