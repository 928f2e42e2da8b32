//! Unit tests of the barge-in guard and the protected greeting (split from `tests.rs`,
//! whose helpers they use).

use std::time::Instant;

use bytes::Bytes;

use super::tests::*;
use super::*;
use crate::providers::{ProviderCommand, ProviderEvent};
use crate::telephony::{TelephonyAction, TelephonyEvent};

// ---- barge-in guard and protected greeting ---------------------------------------------

/// Caller audio `samples` (8 kHz) as μ-law frames fed in real time from `from`; returns
/// the outputs and the time after the last frame.
fn caller_says(
    e: &mut CallEngine,
    from: Instant,
    samples: &[i16],
) -> (Vec<(Instant, Output)>, Instant) {
    let mut out = Vec::new();
    let mut now = from;
    for frame in samples.chunks(160) {
        let mut ulaw = Vec::new();
        crate::audio::g711::ulaw_encode(frame, &mut ulaw);
        feed(
            e,
            now,
            Input::Telephony(TelephonyEvent::Audio(Bytes::from(ulaw))),
        );
        out.extend(drain(e).into_iter().map(|o| (now, o)));
        now += 20 * MS;
    }
    (out, now)
}

fn cut_at(out: &[(Instant, Output)]) -> Option<Instant> {
    out.iter()
        .find(|(_, o)| matches!(o, Output::Telephony(TelephonyAction::Clear)))
        .map(|(at, _)| *at)
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0i16; ms * 8]
}

#[test]
fn the_guard_lets_clicks_and_coughs_pass_and_cuts_real_speech() {
    use crate::audio::signal;
    let (mut e, t0) = engine("[call]\nbarge_in_min_ms = 200\n");
    ready(&mut e, t0);
    feed(&mut e, t0, audio(&item("a"), 10_000));
    drain(&mut e);
    // A click: 60 ms, the provider calls it speech.
    let (out, now) = caller_says(&mut e, t0, &silence(200));
    assert!(cut_at(&out).is_none());
    feed(&mut e, now, Input::Provider(ProviderEvent::SpeechStarted));
    let (out, now) = caller_says(&mut e, now, &signal::sine(8000, 2000.0, -6.0, 480));
    assert!(cut_at(&out).is_none(), "a 60 ms click does not cut");
    let (out, now) = caller_says(&mut e, now, &silence(300));
    assert!(cut_at(&out).is_none());
    feed(&mut e, now, Input::Provider(ProviderEvent::SpeechStopped));
    // A cough: 100 ms.
    feed(&mut e, now, Input::Provider(ProviderEvent::SpeechStarted));
    let (out, now) = caller_says(&mut e, now, &signal::speech_like(8000, 0.2, 3)[800..]);
    assert!(cut_at(&out).is_none(), "a 100 ms cough does not cut");
    let (out, now) = caller_says(&mut e, now, &silence(300));
    assert!(cut_at(&out).is_none());
    feed(&mut e, now, Input::Provider(ProviderEvent::SpeechStopped));
    assert_eq!(e.stats().barge_ins, 0);
    // Real speech: 400 ms after 100 ms of silence.
    feed(&mut e, now, Input::Provider(ProviderEvent::SpeechStarted));
    let speech = signal::speech_like(8000, 0.5, 7);
    let (out, _) = caller_says(&mut e, now, &speech);
    let cut = cut_at(&out).unwrap_or_else(|| panic!("400 ms of speech must cut: {out:?}"));
    // Cut in the frame that brought the run to 200 ms: 100 ms of silence + 10 voiced frames.
    let frames_in = (cut - now).as_millis() / 20 + 1;
    assert!(
        (15..=17).contains(&frames_in),
        "confirmed at frame {frames_in} (the 10th voiced frame, allowing for a syllable dip)"
    );
    let at_cut: Vec<&Output> = out
        .iter()
        .filter(|(t, _)| *t == cut)
        .map(|(_, o)| o)
        .collect();
    assert!(at_cut
        .iter()
        .any(|o| matches!(o, Output::Provider(ProviderCommand::Cancel))));
    assert!(at_cut
        .iter()
        .any(|o| matches!(o, Output::Provider(ProviderCommand::Truncate { .. }))));
    assert_eq!(e.stats().barge_ins, 1);
}

#[test]
fn the_guard_truncates_at_what_was_played() {
    use crate::audio::signal;
    let (mut e, t0) = engine("[call]\nbarge_in_min_ms = 200\n");
    ready(&mut e, t0);
    feed(&mut e, t0, audio(&item("a"), 10_000));
    drain(&mut e);
    // The caller talks from t0: played by the engine's clock meanwhile.
    feed(&mut e, t0, Input::Provider(ProviderEvent::SpeechStarted));
    let (out, _) = caller_says(&mut e, t0, &signal::speech_like(8000, 0.6, 5));
    let (cut, played) = out
        .iter()
        .find_map(|(t, o)| match o {
            Output::Provider(ProviderCommand::Truncate { played_ms, .. }) => Some((*t, *played_ms)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no truncate: {out:?}"));
    // Released: the 60 ms lead at t0 plus one frame per 20 ms; heard = released - lead.
    let heard = (cut - t0).as_millis() as u64;
    assert!(
        played.abs_diff(heard) <= 20,
        "truncate {played} ms vs {heard} ms played by the far end"
    );
}

#[test]
fn speech_already_long_enough_when_the_provider_reports_it_cuts_at_once() {
    use crate::audio::signal;
    let (mut e, t0) = engine("[call]\nbarge_in_min_ms = 150\n");
    ready(&mut e, t0);
    feed(&mut e, t0, audio(&item("a"), 10_000));
    drain(&mut e);
    let (out, now) = caller_says(&mut e, t0, &signal::speech_like(8000, 0.5, 7));
    assert!(cut_at(&out).is_none(), "no report from the provider yet");
    e.handle(now, Input::Provider(ProviderEvent::SpeechStarted));
    let out = drain(&mut e);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Telephony(TelephonyAction::Clear))),
        "cut in the handle of the report: {out:?}"
    );
}

#[test]
fn an_uninterruptible_greeting_plays_out_then_barge_in_works() {
    use crate::audio::signal;
    let (mut e, t0) = engine(
        "[call]\ngreeting = \"Welcome to ACME. This call may be recorded.\"\ngreeting_interruptible = false\n",
    );
    ready(&mut e, t0);
    let greeting = item("greeting");
    feed(&mut e, t0, audio(&greeting, 1000));
    feed(&mut e, t0, Input::Provider(ProviderEvent::ResponseDone));
    drain(&mut e);
    // "Hello?" over the greeting: reported by the provider, loud and long.
    feed(
        &mut e,
        t0 + 100 * MS,
        Input::Provider(ProviderEvent::SpeechStarted),
    );
    let (out, now) = caller_says(&mut e, t0 + 100 * MS, &signal::speech_like(8000, 0.6, 9));
    assert!(cut_at(&out).is_none(), "the greeting is not cut");
    assert!(
        out.iter()
            .any(|(_, o)| matches!(o, Output::Provider(ProviderCommand::Audio(_)))),
        "the caller's audio still reaches the model"
    );
    feed(&mut e, now, Input::Provider(ProviderEvent::SpeechStopped));
    let played = run_to(&mut e, now, t0 + 1200 * MS);
    assert_eq!(
        plays(&played) + plays(&out.into_iter().map(|(_, o)| o).collect::<Vec<_>>()),
        47,
        "all 50 frames of the greeting are played (3 went at once)"
    );
    // The next reply is interruptible as usual.
    let b = item("b");
    feed(&mut e, t0 + 1300 * MS, audio(&b, 1000));
    drain(&mut e);
    e.handle(
        t0 + 1400 * MS,
        Input::Provider(ProviderEvent::SpeechStarted),
    );
    let out = drain(&mut e);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Telephony(TelephonyAction::Clear))));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Provider(ProviderCommand::Cancel))),
        "the provider was told not to cut by itself: voicebridge cancels"
    );
}

#[test]
fn without_guard_or_protection_barge_in_is_the_providers_as_before() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    feed(&mut e, t0, audio(&item("a"), 1000));
    drain(&mut e);
    e.handle(t0 + 40 * MS, Input::Provider(ProviderEvent::SpeechStarted));
    let out = drain(&mut e);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Telephony(TelephonyAction::Clear))));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Provider(ProviderCommand::Cancel))),
        "the provider cancels its own reply"
    );
}
