//! Engine tests: whole calls played with plain values and a fake clock, no sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ending::{END_GRACE, GOODBYE_MAX};
use super::*;
use crate::audio::{Channels, ItemId};
use crate::providers::{ProviderCommand, ProviderEvent, ToolCall};
use crate::telephony::{Hangup, HangupCause, PlayoutMarks, TelephonyAction, TelephonyEvent};

pub(super) const MS: Duration = Duration::from_millis(1);

fn engine_with(toml: &str, can_transfer: bool) -> (CallEngine, Instant) {
    engine_marked(toml, can_transfer, None)
}

fn engine_marked(
    toml: &str,
    can_transfer: bool,
    marks: Option<PlayoutMarks>,
) -> (CallEngine, Instant) {
    let config = Arc::new(
        Config::from_toml_str(toml, [("OPENAI_API_KEY".to_owned(), "test-key".to_owned())])
            .unwrap_or_else(|e| panic!("test config: {e}")),
    );
    let route = config.default_route().clone();
    // The default route plays `binary`, whose pacer lead is the route's as it is.
    assert_eq!(route.playback, crate::config::PlaybackMode::Binary);
    let route_lead = route.playback_lead;
    let t0 = Instant::now();
    let setup = EngineSetup {
        call_id: "call-1".to_owned(),
        route,
        config,
        request_codec: Some(Codec::Pcmu),
        request_rate: Some(8000),
        request_channels: Some(Channels::Mono),
        provider: "test",
        frames_per_message: 1,
        pacer_lead: route_lead,
        can_transfer,
        marks,
    };
    (CallEngine::new(setup, t0), t0)
}

pub(super) fn engine(toml: &str) -> (CallEngine, Instant) {
    engine_with(toml, false)
}

/// An input, then the tick the call task runs right after it.
pub(super) fn feed(e: &mut CallEngine, now: Instant, input: Input) {
    e.handle(now, input);
    e.tick(now);
}

pub(super) fn drain(e: &mut CallEngine) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn pcmu() -> AudioFormat {
    AudioFormat::new(Codec::Pcmu, 8000)
}

/// The provider is up, speaking μ-law like the call (no resampling).
pub(super) fn ready(e: &mut CallEngine, now: Instant) {
    let ready = ProviderEvent::Ready {
        input: pcmu(),
        output: pcmu(),
    };
    feed(e, now, Input::Provider(ready));
}

pub(super) fn item(name: &str) -> ItemId {
    Arc::from(name)
}

/// `ms` of μ-law assistant audio of `item`.
pub(super) fn audio(item: &ItemId, ms: usize) -> Input {
    Input::Provider(ProviderEvent::Audio {
        item: item.clone(),
        data: Bytes::from(vec![0x55u8; ms * 8]),
    })
}

pub(super) fn plays(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, Output::Telephony(TelephonyAction::Play(_))))
        .count()
}

pub(super) fn end_of(outputs: &[Output]) -> Option<&EndReason> {
    outputs.iter().find_map(|o| match o {
        Output::End(r) => Some(r),
        _ => None,
    })
}

/// Runs the clock from `now`, ticking whenever the engine asks, until it ends or
/// `limit` passes. Returns every output with the time it came out.
pub(super) fn run_until_end(
    e: &mut CallEngine,
    mut now: Instant,
    limit: Duration,
) -> Vec<(Instant, Output)> {
    let stop = now + limit;
    let mut out = Vec::new();
    while let Some(at) = e.poll_timeout(now) {
        now = at.max(now);
        if now > stop {
            break;
        }
        e.tick(now);
        out.extend(drain(e).into_iter().map(|o| (now, o)));
    }
    out
}

/// Ticks at every time the engine asks for up to `until`, then at `until`: the far end
/// is fed in real time, as by the call task.
pub(super) fn run_to(e: &mut CallEngine, mut now: Instant, until: Instant) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(at) = e.poll_timeout(now) {
        if at > until {
            break;
        }
        now = at.max(now);
        e.tick(now);
        out.extend(drain(e));
    }
    e.tick(until);
    out.extend(drain(e));
    out
}

fn end_reason_of(e: &mut CallEngine, now: Instant, input: Input) -> EndReason {
    feed(e, now, input);
    let outputs = drain(e);
    let reason = end_of(&outputs).cloned();
    reason.unwrap_or_else(|| panic!("no End in {outputs:?}"))
}

// ---- barge-in and truncate -------------------------------------------------------

#[test]
fn barge_in_clears_and_truncates_in_the_same_handle_and_drops_late_audio() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    let a = item("a");
    feed(&mut e, t0, audio(&a, 1000));
    // Released at once: the lead (60 ms) of the reply.
    assert_eq!(plays(&drain(&mut e)), 3);
    let out = run_to(&mut e, t0, t0 + 200 * MS);
    assert_eq!(plays(&out), 10, "released up to 260 ms");

    // `handle` alone, no tick: the cut happens in the call that reports the speech.
    e.handle(t0 + 200 * MS, Input::Provider(ProviderEvent::SpeechStarted));
    let out = drain(&mut e);
    let clear = out
        .iter()
        .position(|o| matches!(o, Output::Telephony(TelephonyAction::Clear)));
    let truncate = out.iter().position(|o| {
        matches!(o, Output::Provider(ProviderCommand::Truncate { item, played_ms: 200 }) if **item == *"a")
    });
    assert!(clear.is_some(), "Clear in the same handle: {out:?}");
    assert!(truncate.is_some(), "Truncate at 200 ms heard: {out:?}");
    assert_eq!(plays(&out), 0);
    assert_eq!(e.stats().barge_ins, 1);

    // The rest of the cut item still arrives: dropped, never played.
    feed(&mut e, t0 + 210 * MS, audio(&a, 200));
    assert_eq!(plays(&run_to(&mut e, t0 + 210 * MS, t0 + 400 * MS)), 0);
    assert_eq!(e.stats().late_audio_dropped, 1);

    // The next reply plays.
    feed(&mut e, t0 + 400 * MS, audio(&item("b"), 100));
    assert_eq!(plays(&drain(&mut e)), 3);
}

#[test]
fn barge_in_while_nothing_plays_does_nothing() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    feed(&mut e, t0, Input::Provider(ProviderEvent::SpeechStarted));
    let out = drain(&mut e);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(e.stats().barge_ins, 0);
}

#[test]
fn truncate_never_claims_more_than_was_generated() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    let a = item("a");
    // 10 pieces of 25 bytes: 31.25 ms released, but each piece counts 3 ms generated.
    for _ in 0..10 {
        feed(
            &mut e,
            t0,
            Input::Provider(ProviderEvent::Audio {
                item: a.clone(),
                data: Bytes::from(vec![0x55u8; 25]),
            }),
        );
    }
    feed(&mut e, t0, Input::Provider(ProviderEvent::ResponseDone));
    assert_eq!(plays(&drain(&mut e)), 2, "31.25 ms padded to two frames");
    // At 35 ms only the padding is still unplayed: the caller heard all 31 ms.
    feed(
        &mut e,
        t0 + 35 * MS,
        Input::Provider(ProviderEvent::SpeechStarted),
    );
    let out = drain(&mut e);
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Provider(ProviderCommand::Truncate { played_ms: 30, .. })
        )),
        "capped at the 30 ms generated: {out:?}"
    );
}

// ---- the goodbye and the end actions ------------------------------------------------

#[test]
fn goodbye_at_max_duration_is_played_out_before_the_hang_up() {
    let (mut e, t0) =
        engine("[call]\nprovider = \"openai\"\nmax_duration_secs = 1\ngoodbye = \"Bye {{route}}\"");
    ready(&mut e, t0);
    drain(&mut e);
    let out = run_until_end(&mut e, t0, 1000 * MS);
    assert!(
        out.iter().any(
            |(_, o)| matches!(o, Output::Provider(ProviderCommand::Say(t)) if t.starts_with("Bye "))
        ),
        "the goodbye is asked for: {out:?}"
    );
    assert!(end_of(&out.into_iter().map(|(_, o)| o).collect::<Vec<_>>()).is_none());

    // The provider says it: 600 ms, generated at once.
    let said = t0 + 1010 * MS;
    let g = item("goodbye");
    feed(&mut e, said, audio(&g, 600));
    feed(&mut e, said, Input::Provider(ProviderEvent::ResponseDone));
    let mut played = plays(&drain(&mut e));
    let rest = run_until_end(&mut e, said, Duration::from_secs(20));
    let (ended_at, reason) = rest
        .iter()
        .find_map(|(t, o)| match o {
            Output::End(r) => Some((*t, r.clone())),
            _ => None,
        })
        .expect("the call ends");
    played += rest
        .iter()
        .filter(|(t, o)| *t <= ended_at && matches!(o, Output::Telephony(TelephonyAction::Play(_))))
        .count();
    assert_eq!(played, 30, "all 600 ms released before the end");
    assert!(
        ended_at >= said + 600 * MS,
        "hung up only once the far end played it out ({:?} after)",
        ended_at - said
    );
    assert_eq!(reason, EndReason::MaxDuration);
}

#[test]
fn max_duration_without_a_goodbye_ends_at_once() {
    let (mut e, t0) = engine("[call]\nmax_duration_secs = 1");
    ready(&mut e, t0);
    let out = run_until_end(&mut e, t0, Duration::from_secs(5));
    let (at, o) = out.last().expect("an end");
    assert!(matches!(o, Output::End(EndReason::MaxDuration)));
    assert_eq!(*at, t0 + Duration::from_secs(1));
}

fn tool_call(name: &str, args: serde_json::Value) -> Input {
    Input::Provider(ProviderEvent::ToolCall(Box::new(ToolCall {
        id: format!("{name}-1"),
        name: name.to_owned(),
        arguments: args,
    })))
}

#[test]
fn end_call_waits_for_the_reply_then_ends_as_assistant_hangup() {
    let (mut e, t0) = engine("[call]\nend_call = true");
    ready(&mut e, t0);
    let r = item("reply");
    feed(&mut e, t0, audio(&r, 400));
    feed(
        &mut e,
        t0,
        tool_call(
            "end_call",
            serde_json::json!({"reason": "the caller is done"}),
        ),
    );
    let out = drain(&mut e);
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Provider(ProviderCommand::ToolResult(res)) if !res.is_error && !res.reply
        )),
        "answered at once, with no new response: {out:?}"
    );
    feed(&mut e, t0 + 5 * MS, audio(&r, 200));
    feed(
        &mut e,
        t0 + 5 * MS,
        Input::Provider(ProviderEvent::ResponseDone),
    );
    drain(&mut e);
    let rest = run_until_end(&mut e, t0 + 5 * MS, Duration::from_secs(30));
    let (ended_at, reason) = rest
        .iter()
        .find_map(|(t, o)| match o {
            Output::End(r) => Some((*t, r.clone())),
            _ => None,
        })
        .expect("the call ends");
    assert_eq!(
        reason,
        EndReason::AssistantHangup("the caller is done".to_owned())
    );
    assert!(
        ended_at >= t0 + 600 * MS,
        "after the 600 ms reply played out"
    );
    assert!(ended_at < t0 + GOODBYE_MAX, "not the full wait");
    assert_eq!(reason.tag(), "assistant_hangup");
    assert!(matches!(
        reason.hangup(),
        Hangup::Ours {
            cause: HangupCause::Normal,
            hang_up_channel: true,
            ..
        }
    ));
}

#[test]
fn end_call_after_a_complete_reply_waits_only_the_grace() {
    let (mut e, t0) = engine("[call]\nend_call = true");
    ready(&mut e, t0);
    feed(&mut e, t0, Input::Provider(ProviderEvent::ResponseDone));
    feed(&mut e, t0, tool_call("end_call", serde_json::json!({})));
    drain(&mut e);
    let out = run_until_end(&mut e, t0, Duration::from_secs(30));
    let (at, o) = out.last().expect("an end");
    assert!(matches!(o, Output::End(EndReason::AssistantHangup(r)) if r.is_empty()));
    assert_eq!(*at, t0 + END_GRACE);
}

#[test]
fn transfer_call_ends_as_transferred() {
    let (mut e, t0) = engine_with(
        "[freeswitch.esl]\npassword = \"x\"\n[call]\ntransfer_to = \"1000 XML default\"",
        true,
    );
    ready(&mut e, t0);
    feed(&mut e, t0, Input::Provider(ProviderEvent::ResponseDone));
    feed(
        &mut e,
        t0,
        tool_call("transfer_call", serde_json::json!({})),
    );
    drain(&mut e);
    let out = run_until_end(&mut e, t0, Duration::from_secs(30));
    let (_, o) = out.last().expect("an end");
    let Output::End(reason) = o else {
        panic!("{o:?}")
    };
    assert_eq!(
        *reason,
        EndReason::Transferred("1000 XML default".to_owned())
    );
    assert_eq!(reason.tag(), "transferred");
    assert_eq!(reason.ended_by(), "assistant");
    assert!(matches!(reason.hangup(), Hangup::Transfer { to, .. } if to == "1000 XML default"));
}

#[test]
fn transfer_call_is_refused_where_the_side_cannot_transfer() {
    let (mut e, t0) = engine_with(
        "[freeswitch.esl]\npassword = \"x\"\n[call]\ntransfer_to = \"1000 XML default\"",
        false,
    );
    ready(&mut e, t0);
    feed(
        &mut e,
        t0,
        tool_call("transfer_call", serde_json::json!({})),
    );
    let out = drain(&mut e);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Provider(ProviderCommand::ToolResult(res)) if res.is_error
    )));
    let later = run_until_end(&mut e, t0, Duration::from_secs(5));
    assert!(later.iter().all(|(_, o)| !matches!(o, Output::End(_))));
}

// ---- every end reason -----------------------------------------------------------------

#[test]
fn telephony_ends() {
    let cases = [
        (
            TelephonyEvent::HungUp(Some(1000)),
            EndReason::FreeswitchClosed(Some(1000)),
            "freeswitch_closed",
            "caller",
        ),
        (
            TelephonyEvent::Gone,
            EndReason::FreeswitchGone,
            "freeswitch_gone",
            "freeswitch",
        ),
        (
            TelephonyEvent::Error("reset".to_owned()),
            EndReason::FreeswitchError("reset".to_owned()),
            "freeswitch_error",
            "freeswitch",
        ),
        (
            TelephonyEvent::TooBig("message of 2 MB".to_owned()),
            EndReason::FreeswitchTooBig("message of 2 MB".to_owned()),
            "freeswitch_message_too_big",
            "freeswitch",
        ),
    ];
    for (event, want, tag, by) in cases {
        let (mut e, t0) = engine("");
        let got = end_reason_of(&mut e, t0, Input::Telephony(event));
        assert_eq!(got, want);
        assert_eq!(got.tag(), tag);
        assert_eq!(got.ended_by(), by);
        assert!(e.has_ended());
        assert_eq!(e.poll_timeout(t0), None);
    }
    let far = EndReason::FreeswitchClosed(None).hangup();
    assert_eq!(far, Hangup::FarEnd);
    assert_eq!(EndReason::FreeswitchGone.hangup(), Hangup::Lost);
    assert_eq!(
        EndReason::FreeswitchError(String::new()).hangup(),
        Hangup::Lost
    );
    assert!(matches!(
        EndReason::FreeswitchTooBig(String::new()).hangup(),
        Hangup::Ours {
            cause: HangupCause::TooBig,
            hang_up_channel: true,
            ..
        }
    ));
}

#[test]
fn provider_ends() {
    let (mut e, t0) = engine("");
    let closed = ProviderEvent::Closed {
        reason: "session expired".to_owned(),
    };
    let got = end_reason_of(&mut e, t0, Input::Provider(closed));
    assert_eq!(got, EndReason::ProviderClosed("session expired".to_owned()));
    assert_eq!((got.tag(), got.ended_by()), ("provider_closed", "provider"));

    let (mut e, t0) = engine("");
    let got = end_reason_of(&mut e, t0, Input::ProviderGone);
    assert_eq!(
        got,
        EndReason::ProviderClosed("provider task ended".to_owned())
    );

    let (mut e, t0) = engine("");
    let error = ProviderEvent::Error {
        recoverable: false,
        code: "invalid_api_key".to_owned(),
        message: "bad key".to_owned(),
    };
    let got = end_reason_of(&mut e, t0, Input::Provider(error));
    assert_eq!(
        got,
        EndReason::ProviderError("invalid_api_key: bad key".to_owned())
    );
    assert_eq!(got.tag(), "provider_error");
    assert!(matches!(
        got.hangup(),
        Hangup::Ours {
            cause: HangupCause::Error,
            ..
        }
    ));

    // A recoverable error does not end the call.
    let (mut e, t0) = engine("");
    let error = ProviderEvent::Error {
        recoverable: true,
        code: "x".to_owned(),
        message: "y".to_owned(),
    };
    feed(&mut e, t0, Input::Provider(error));
    assert!(end_of(&drain(&mut e)).is_none());
}

#[test]
fn provider_flood_ends_the_call() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    let a = item("a");
    let mut reason = None;
    for step in 0..100u32 {
        let now = t0 + step * 100 * MS;
        feed(&mut e, now, audio(&a, 2000));
        if let Some(r) = end_of(&drain(&mut e)) {
            reason = Some(r.clone());
            break;
        }
    }
    let reason = reason.expect("the flood ends the call");
    assert!(
        matches!(reason, EndReason::ProviderFlood { .. }),
        "{reason:?}"
    );
    assert_eq!(
        (reason.tag(), reason.ended_by()),
        ("provider_flood", "provider")
    );
}

#[test]
fn idle_timeout_ends_a_silent_call_and_audio_keeps_it_alive() {
    let (mut e, t0) = engine("[call]\nidle_timeout_secs = 3");
    // Caller audio until 2 s keeps it going past 3 s.
    feed(
        &mut e,
        t0 + 2000 * MS,
        Input::Telephony(TelephonyEvent::Audio(Bytes::from(vec![0xFFu8; 160]))),
    );
    let out = run_until_end(&mut e, t0, Duration::from_secs(30));
    let (at, o) = out.last().expect("an end");
    assert!(matches!(o, Output::End(EndReason::IdleTimeout)), "{o:?}");
    assert!(*at >= t0 + 5000 * MS, "3 s after the last audio");
    assert_eq!(EndReason::IdleTimeout.tag(), "idle_timeout");
    assert_eq!(EndReason::IdleTimeout.ended_by(), "voicebridge");
}

#[test]
fn shutdown_ends_without_hanging_up_the_channel() {
    let (mut e, t0) = engine("");
    let got = end_reason_of(&mut e, t0, Input::Shutdown);
    assert_eq!(got, EndReason::Shutdown);
    assert_eq!((got.tag(), got.ended_by()), ("shutdown", "voicebridge"));
    assert!(matches!(
        got.hangup(),
        Hangup::Ours {
            cause: HangupCause::Shutdown,
            hang_up_channel: false,
            ..
        }
    ));
}

#[test]
fn impossible_formats_are_internal_errors() {
    let err = check_format(AudioFormat::new(Codec::Pcmu, 16000)).expect_err("refused");
    assert_eq!(err.tag(), "internal_error");
    assert_eq!(err.ended_by(), "voicebridge");
    assert_eq!(
        err.to_string(),
        "internal error: PCMU requires rate 8000, not 16000"
    );
    assert!(check_format(pcmu()).is_ok());
}

#[test]
fn end_reason_texts_are_stable() {
    let cases = [
        (
            EndReason::FreeswitchClosed(Some(1000)),
            "FreeSWITCH closed the stream (code 1000)",
        ),
        (EndReason::MaxDuration, "max_duration_secs reached"),
        (
            EndReason::IdleTimeout,
            "idle_timeout_secs reached: no audio from FreeSWITCH",
        ),
        (EndReason::Shutdown, "voicebridge is shutting down"),
        (
            EndReason::AssistantHangup(String::new()),
            "the assistant ended the call",
        ),
        (
            EndReason::Transferred("1000".to_owned()),
            "transferred to 1000",
        ),
    ];
    for (reason, text) in cases {
        assert_eq!(reason.to_string(), text);
    }
    let long = EndReason::Internal(format!("see https://x.example/{}", "y".repeat(300)));
    let close = long.close_reason();
    assert!(close.len() <= 123 && !close.contains("https://"), "{close}");
}

// ---- audio in, before and after the provider is ready ---------------------------------

#[test]
fn caller_audio_waits_for_the_provider_then_goes_out_in_20_ms_frames() {
    let (mut e, t0) = engine("");
    // 50 ms of caller audio before the provider is up: two whole frames held.
    feed(
        &mut e,
        t0,
        Input::Telephony(TelephonyEvent::Audio(Bytes::from(vec![0xFFu8; 400]))),
    );
    assert!(drain(&mut e)
        .iter()
        .all(|o| !matches!(o, Output::Provider(ProviderCommand::Audio(_)))));
    ready(&mut e, t0 + 10 * MS);
    let frames: Vec<usize> = drain(&mut e)
        .iter()
        .filter_map(|o| match o {
            Output::Provider(ProviderCommand::Audio(b)) => Some(b.len()),
            _ => None,
        })
        .collect();
    assert_eq!(frames, vec![160, 160]);
    assert_eq!(e.stats().frames_to_provider, 2);
    // A frame the provider's queue refused is counted as dropped, not sent.
    feed(
        &mut e,
        t0 + 20 * MS,
        Input::AudioNotSent {
            bytes: 160,
            full: true,
        },
    );
    assert_eq!(e.stats().frames_to_provider, 1);
    assert_eq!(e.stats().frames_dropped, 1);
}

#[test]
fn the_provider_is_set_up_without_metadata_after_the_wait() {
    let (mut e, t0) = engine("");
    e.tick(t0 + METADATA_WAIT);
    let out = drain(&mut e);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Provider(ProviderCommand::Context(_)))),
        "{out:?}"
    );
    // The metadata arriving later is not used for the setup again.
    feed(
        &mut e,
        t0 + METADATA_WAIT + MS,
        Input::Telephony(TelephonyEvent::Metadata(Default::default())),
    );
    assert!(drain(&mut e)
        .iter()
        .all(|o| !matches!(o, Output::Provider(ProviderCommand::Context(_)))));
}

#[test]
fn a_batching_side_gets_a_flush_at_the_end_of_the_reply() {
    let (mut e, t0) = engine("");
    let lead = e.route.playback_lead;
    e.down = downstream::Downstream::new(&e.config, pcmu(), 5, lead, None);
    ready(&mut e, t0);
    feed(&mut e, t0, audio(&item("a"), 50));
    feed(&mut e, t0, Input::Provider(ProviderEvent::ResponseDone));
    let out = drain(&mut e);
    assert_eq!(plays(&out), 3);
    assert!(matches!(
        out.last(),
        Some(Output::Telephony(TelephonyAction::FlushPlayback))
    ));
    assert!(
        e.stats().first_response.is_some(),
        "the partial batch went out"
    );
}

// ---- playout marks (a side that reports its played position) ----------------------

const MARKS: PlayoutMarks = PlayoutMarks {
    every: Duration::from_millis(100),
    max_unplayed: Duration::from_millis(300),
};

fn marks_of(outputs: &[Output]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Telephony(TelephonyAction::Mark(id)) => Some(*id),
            _ => None,
        })
        .collect()
}

fn played(e: &mut CallEngine, now: Instant, id: u64) {
    feed(e, now, Input::Telephony(TelephonyEvent::Played(id)));
}

#[test]
fn marks_follow_every_100_ms_released_and_the_end_of_a_reply() {
    let (mut e, t0) = engine_marked("", false, Some(MARKS));
    ready(&mut e, t0);
    let a = item("a");
    feed(&mut e, t0, audio(&a, 250));
    feed(&mut e, t0, Input::Provider(ProviderEvent::ResponseDone));
    let mut out = drain(&mut e);
    out.extend(run_to(&mut e, t0, t0 + 400 * MS));
    assert_eq!(plays(&out), 13, "250 ms padded to 13 frames");
    assert_eq!(
        marks_of(&out),
        [1, 2, 3],
        "at 100 ms, 200 ms and the reply's end"
    );
    // Each mark comes right after the frame that completes its stretch.
    let mark_2 = out
        .iter()
        .position(|o| matches!(o, Output::Telephony(TelephonyAction::Mark(2))))
        .unwrap_or_else(|| panic!("no mark 2: {out:?}"));
    assert_eq!(plays(&out[..mark_2]), 10);
}

#[test]
fn the_truncate_follows_the_far_ends_report_not_our_clock() {
    let (mut e, t0) = engine_marked("", false, Some(MARKS));
    ready(&mut e, t0);
    let a = item("a");
    feed(&mut e, t0, audio(&a, 2000));
    let mut out = drain(&mut e);
    out.extend(run_to(&mut e, t0, t0 + 160 * MS));
    // Released 220 ms by our clock (lead 60 ms); mark 1 stands for 100 ms and mark 2 for 200 ms.
    assert_eq!(plays(&out), 11);
    assert_eq!(marks_of(&out), [1, 2]);
    // The far end is behind: at 160 ms it has played only up to mark 1 (100 ms).
    played(&mut e, t0 + 160 * MS, 1);
    e.handle(t0 + 160 * MS, Input::Provider(ProviderEvent::SpeechStarted));
    let out = drain(&mut e);
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Provider(ProviderCommand::Truncate { played_ms: 100, .. })
        )),
        "truncated where the far end said it was: {out:?}"
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Telephony(TelephonyAction::Clear))));
}

#[test]
fn a_far_end_that_plays_slowly_gets_no_growing_backlog() {
    let (mut e, t0) = engine_marked("", false, Some(MARKS));
    ready(&mut e, t0);
    feed(&mut e, t0, audio(&item("a"), 10_000));
    let mut released = plays(&drain(&mut e));
    let mut acked = 0;
    // The far end plays at 80 % of real time and reports each mark once it has played
    // the audio before it; our clock alone would release 50 frames a second.
    for step in 1..=250u32 {
        let now = t0 + 20 * MS * step;
        let far_played_ms = u64::from(step) * 16;
        let out = run_to(&mut e, now - 20 * MS, now);
        released += plays(&out);
        for id in marks_of(&out) {
            assert!(id > acked);
        }
        // Report every mark whose position (id × 100 ms) the far end has reached.
        while (acked + 1) * 100 <= far_played_ms && (acked + 1) * 100 <= released as u64 * 20 {
            acked += 1;
            played(&mut e, now, acked);
            released += plays(&drain(&mut e));
        }
    }
    let far_played = 250 * 16;
    let ahead = released as u64 * 20 - far_played;
    assert!(
        ahead <= 300 + 100,
        "released {released} frames, {ahead} ms beyond what the far end played"
    );
    assert!(
        released as u64 * 20 >= far_played,
        "never starves the far end"
    );
}

#[test]
fn marks_before_a_barge_in_are_void_and_reports_of_them_ignored() {
    let (mut e, t0) = engine_marked("", false, Some(MARKS));
    ready(&mut e, t0);
    feed(&mut e, t0, audio(&item("a"), 1000));
    let out = run_to(&mut e, t0, t0 + 200 * MS);
    assert_eq!(marks_of(&out), [1, 2]);
    feed(
        &mut e,
        t0 + 200 * MS,
        Input::Provider(ProviderEvent::SpeechStarted),
    );
    drain(&mut e);
    // Twilio returns every pending mark at a `clear`: they must not move the playhead.
    played(&mut e, t0 + 201 * MS, 2);
    let b = item("b");
    feed(&mut e, t0 + 201 * MS, audio(&b, 1000));
    let out = drain(&mut e);
    assert_eq!(plays(&out), 3, "the next reply starts with its full lead");
    let out = run_to(&mut e, t0 + 201 * MS, t0 + 300 * MS);
    assert_eq!(
        marks_of(&out),
        [3],
        "ids go on; counting restarts at the cut"
    );
}

// ---- clean reply tails -----------------------------------------------------------------

#[test]
fn a_replys_resampled_tail_is_played_with_it_not_at_the_start_of_the_next() {
    use crate::audio::{g711, signal};
    let (mut e, t0) = engine("");
    let l16_24k = AudioFormat::new(Codec::L16, 24000);
    feed(
        &mut e,
        t0,
        Input::Provider(ProviderEvent::Ready {
            input: pcmu(),
            output: l16_24k,
        }),
    );
    // Reply a: 1010 ms of quiet speech ending with 10 ms of a loud 1 kHz marker: its
    // last ms wait in the resampler (its filter delay) until the reply's end flushes them.
    let mut reply = signal::sine(24000, 300.0, -40.0, 24000);
    reply.extend(signal::sine(24000, 1000.0, -1.0, 240));
    let bytes: Vec<u8> = reply.iter().flat_map(|s| s.to_le_bytes()).collect();
    let a = item("a");
    for piece in bytes.chunks(4802) {
        feed(
            &mut e,
            t0,
            Input::Provider(ProviderEvent::Audio {
                item: a.clone(),
                data: Bytes::copy_from_slice(piece),
            }),
        );
    }
    feed(&mut e, t0, Input::Provider(ProviderEvent::ResponseDone));
    let frames = |out: Vec<Output>| -> Vec<Vec<i16>> {
        out.into_iter()
            .filter_map(|o| match o {
                Output::Telephony(TelephonyAction::Play(f)) => {
                    let mut pcm = Vec::new();
                    g711::ulaw_decode(&f, &mut pcm);
                    Some(pcm)
                }
                _ => None,
            })
            .collect()
    };
    let mut first = frames(drain(&mut e));
    first.extend(frames(run_to(&mut e, t0, t0 + 2000 * MS)));
    // 1010 ms plus the filter delay, padded to whole frames: 51 frames, the marker in
    // the last of them.
    assert_eq!(first.len(), 51, "the whole reply, tail included");
    let last: Vec<i16> = first[49..].concat();
    assert!(signal::rms_dbfs(&last) > -12.0, "the marker ends reply a");
    // Reply b is silence: nothing of a's marker may come out with it.
    let b = item("b");
    feed(
        &mut e,
        t0 + 2000 * MS,
        Input::Provider(ProviderEvent::Audio {
            item: b,
            data: Bytes::from(vec![0u8; 24000 / 5 * 2]),
        }),
    );
    let mut second = frames(drain(&mut e));
    second.extend(frames(run_to(&mut e, t0 + 2000 * MS, t0 + 2400 * MS)));
    assert!(!second.is_empty());
    let peak = second
        .concat()
        .iter()
        .map(|s| s.unsigned_abs())
        .max()
        .unwrap_or(0);
    assert!(
        peak < 100,
        "a fragment of reply a played at the start of b: peak {peak}"
    );
}

// ---- DTMF ------------------------------------------------------------------------------

fn dtmf_sent(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Provider(ProviderCommand::Dtmf(d)) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn press(e: &mut CallEngine, now: Instant, digit: char) -> Vec<Output> {
    feed(e, now, Input::Telephony(TelephonyEvent::Dtmf(digit)));
    drain(e)
}

#[test]
fn keys_typed_quickly_reach_the_model_as_one_group() {
    let (mut e, t0) = engine("[call]\ndtmf_group_ms = 800\n");
    ready(&mut e, t0);
    drain(&mut e);
    let mut out = press(&mut e, t0, '1');
    out.extend(press(&mut e, t0 + 300 * MS, '2'));
    out.extend(press(&mut e, t0 + 600 * MS, '3'));
    assert!(dtmf_sent(&out).is_empty(), "the group is still open");
    assert!(
        e.poll_timeout(t0 + 600 * MS) <= Some(t0 + 1400 * MS),
        "the engine asks to be ticked by the group's end"
    );
    let out = run_to(&mut e, t0 + 600 * MS, t0 + 1400 * MS);
    assert_eq!(dtmf_sent(&out), ["123"]);
    // `#` ends a group at once.
    let mut out = press(&mut e, t0 + 3000 * MS, '4');
    out.extend(press(&mut e, t0 + 3100 * MS, '#'));
    assert_eq!(dtmf_sent(&out), ["4#"]);
    assert_eq!(e.stats().dtmf_keys, 5);
}

#[test]
fn keys_typed_before_the_provider_is_ready_wait_for_it() {
    let (mut e, t0) = engine("");
    let out = press(&mut e, t0, '9');
    assert!(dtmf_sent(&out).is_empty());
    let out = run_to(&mut e, t0, t0 + 1500 * MS);
    assert!(dtmf_sent(&out).is_empty(), "not ready: held");
    ready(&mut e, t0 + 1600 * MS);
    assert_eq!(dtmf_sent(&drain(&mut e)), ["9"]);
}

#[test]
fn dtmf_ignore_keeps_keys_from_the_model_but_counts_them() {
    let (mut e, t0) = engine("[call]\ndtmf = \"ignore\"\n");
    ready(&mut e, t0);
    let mut out = press(&mut e, t0, '5');
    out.extend(press(&mut e, t0 + 100 * MS, '#'));
    out.extend(run_to(&mut e, t0 + 100 * MS, t0 + 3000 * MS));
    assert!(dtmf_sent(&out).is_empty(), "{out:?}");
    assert_eq!(e.stats().dtmf_keys, 2);
}
