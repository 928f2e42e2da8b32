//! Engine tests of the provider's own marks (`ProviderEvent::Mark` answered with
//! `ProviderCommand::MarkPlayed` once its audio has played), fake clock, no sockets.

use std::time::{Duration, Instant};

use super::tests::{audio, drain, engine, feed, item, plays, ready, run_until_end};
use super::*;
use crate::providers::{ProviderCommand, ProviderEvent};
use crate::telephony::TelephonyAction;

const MS: Duration = Duration::from_millis(1);

fn mark(name: &str) -> Input {
    Input::Provider(ProviderEvent::Mark(name.to_owned()))
}

fn answered(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Provider(ProviderCommand::MarkPlayed(n)) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// The time each mark was answered, and when the last Play before it went out.
fn timeline(out: &[(Instant, Output)]) -> (Vec<(Instant, String)>, Vec<Instant>) {
    let mut marks = Vec::new();
    let mut plays = Vec::new();
    for (t, o) in out {
        match o {
            Output::Provider(ProviderCommand::MarkPlayed(n)) => marks.push((*t, n.clone())),
            Output::Telephony(TelephonyAction::Play(_)) => plays.push(*t),
            _ => {}
        }
    }
    (marks, plays)
}

#[test]
fn a_mark_is_answered_when_the_audio_before_it_has_played() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    let a = item("a");
    feed(&mut e, t0, audio(&a, 200));
    feed(&mut e, t0, mark("m1"));
    feed(&mut e, t0, audio(&a, 100));
    feed(&mut e, t0, mark("m2"));
    let first = drain(&mut e);
    assert!(answered(&first).is_empty(), "nothing played yet: {first:?}");

    let out = run_until_end(&mut e, t0, 1000 * MS);
    let (marks, plays) = timeline(&out);
    let names: Vec<&str> = marks.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["m1", "m2"], "in order, each once");
    // 200 ms from t0 at real time: m1 is answered when it has played, not when it was
    // released (the lead goes out ahead of the playout).
    assert_eq!(marks[0].0, t0 + 200 * MS);
    assert_eq!(marks[1].0, t0 + 300 * MS);
    // And after the last frame of its audio went out.
    let last_play = *plays.last().unwrap();
    assert!(marks[1].0 >= last_play);
}

#[test]
fn a_mark_with_nothing_playing_is_answered_at_once() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    feed(&mut e, t0, mark("idle"));
    assert_eq!(answered(&drain(&mut e)), ["idle"]);
    // Before the provider is even ready too (no audio can be ahead of it).
    let (mut e, t0) = engine("");
    feed(&mut e, t0, mark("early"));
    assert_eq!(answered(&drain(&mut e)), ["early"]);
}

#[test]
fn a_barge_in_answers_pending_marks_in_the_same_handle() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    let a = item("a");
    feed(&mut e, t0, audio(&a, 500));
    feed(&mut e, t0, mark("m1"));
    feed(&mut e, t0, audio(&a, 500));
    feed(&mut e, t0, mark("m2"));
    drain(&mut e);
    // A clear from the backend arrives as SpeechStarted (barge-in, provider-decided).
    e.handle(t0 + 100 * MS, Input::Provider(ProviderEvent::SpeechStarted));
    let out = drain(&mut e);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Telephony(TelephonyAction::Clear))),
        "{out:?}"
    );
    assert_eq!(answered(&out), ["m1", "m2"], "answered with the clear");
    assert_eq!(plays(&out), 0);
    // Nothing more to answer later.
    let rest = run_until_end(&mut e, t0 + 100 * MS, 2000 * MS);
    assert!(rest
        .iter()
        .all(|(_, o)| !matches!(o, Output::Provider(ProviderCommand::MarkPlayed(_)))));
}

#[test]
fn the_engine_wakes_up_for_a_mark_after_the_last_release() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    feed(&mut e, t0, audio(&item("a"), 40));
    feed(&mut e, t0, mark("end"));
    drain(&mut e);
    // Both frames released at once (lead 60 ms); the playout ends at 40 ms.
    assert_eq!(e.poll_timeout(t0), Some(t0 + 40 * MS));
    e.tick(t0 + 40 * MS);
    assert_eq!(answered(&drain(&mut e)), ["end"]);
}
