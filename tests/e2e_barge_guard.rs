//! The barge-in guard and the protected greeting over the wire, against the OpenAI
//! mock: the real `voicebridge` binary, the fake FreeSWITCH, the mock Realtime server.
//!
//! Guarded (`barge_in_min_ms`), the session asks the server not to cut its reply
//! (`interrupt_response: false`), so the mock keeps streaming after `speech_started`;
//! voicebridge cuts playback and sends `response.cancel` and the truncate once it has
//! heard enough caller speech itself. A short noise with the same `speech_started`
//! cuts nothing. Everything is awaited on events, never on sleeps.

mod common;

use std::sync::atomic::Ordering;

use common::call::{send_paced, Call, Playback};
use common::daemon::{message, Daemon};
use common::mock_openai::{MockFormat, MockOpenAi, MockOptions, Script};
use voicebridge::audio::signal::{sine, speech_like};

const LEAD_MS: u64 = 60;
const KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";

fn config(call_extra: &str) -> String {
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = {LEAD_MS}

[call]
provider = "openai"
{call_extra}

[providers.openai]
audio_format = "pcm24"
"#
    )
}

async fn start(mock: &MockOpenAi, toml: &str) -> Daemon {
    let url = mock.url();
    Daemon::start(
        toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.as_str()),
            ("OPENAI_API_KEY", KEY),
        ],
    )
    .await
}

async fn connect(daemon: &Daemon, id: &str) -> Call {
    let call = Call::connect(daemon, "call", id, "rate=8000&channels=mono").await;
    call.writer
        .send_text(&format!(r#"{{"uuid":"{id}","caller_id":"+3902123"}}"#))
        .await
        .unwrap();
    call
}

fn interrupt_response(mock: &MockOpenAi) -> serde_json::Value {
    mock.with(|s| {
        s.session_update.as_ref().unwrap()["session"]["audio"]["input"]["turn_detection"]
            ["interrupt_response"]
            .clone()
    })
}

/// Real speech over the reply: the server goes on (no interrupt_response), voicebridge
/// confirms the barge-in from the audio, clears FreeSWITCH, cancels and truncates at
/// what FreeSWITCH was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_speech_is_cut_by_voicebridge_with_cancel_and_truncate() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcm24, KEY)).await;
    let daemon = start(&mock, &config("barge_in_min_ms = 200")).await;
    let id = "guard-speech";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    assert_eq!(interrupt_response(&mock), false);

    mock.script(Script::Respond { ms: 6000, seed: 33 });
    call.wait_received(15).await;
    // The caller starts talking: the server reports it (and does not cancel)...
    mock.script(Script::BargeIn);
    mock.wait("speech_started sent", |s| s.barge_in_at.is_some())
        .await;
    // ...and voicebridge hears it in the audio it relays.
    let speech = speech_like(8000, 2.0, 12);
    let writer = call.writer.clone();
    let sender = tokio::spawn(async move { send_paced(&writer, &speech, 8000, 1).await });
    mock.wait("truncate", |s| !s.truncates.is_empty()).await;
    let at_truncate = call.received.load(Ordering::SeqCst);
    mock.script(Script::Respond { ms: 500, seed: 44 });
    mock.wait("second response done", |s| {
        s.responses.len() == 2 && s.responses[1].status == "completed"
    })
    .await;
    call.wait_received(at_truncate + 24).await;
    sender.await.unwrap();
    let (_, got) = call.close().await;
    assert!(got.error.is_none(), "{:?}", got.error);

    let (truncates, responses, types, problems) = mock.with(|s| {
        (
            s.truncates.clone(),
            s.responses.clone(),
            s.client_types(),
            s.problems.clone(),
        )
    });
    assert!(problems.is_empty(), "{problems:#?}");
    let cancel = types.iter().position(|t| t == "response.cancel");
    let truncate = types.iter().position(|t| t == "conversation.item.truncate");
    assert!(
        cancel.is_some() && truncate.is_some(),
        "voicebridge cancels and truncates: {types:?}"
    );
    assert_eq!(responses[0].status, "cancelled");
    assert_eq!(got.clears().len(), 1, "exactly one clearAudio");
    let heard: usize = got
        .events
        .iter()
        .take_while(|e| !matches!(e, Playback::Clear { .. }))
        .filter_map(|e| match e {
            Playback::Audio { samples, .. } => Some(samples.len()),
            _ => None,
        })
        .sum();
    let received_ms = heard as u64 / 8;
    let (t, generated_ms) = &truncates[0];
    let end_ms = t["audio_end_ms"].as_u64().unwrap();
    assert_eq!(t["item_id"], responses[0].item_id.as_str());
    assert!(end_ms <= *generated_ms);
    assert!(
        received_ms.saturating_sub(LEAD_MS + 20) <= end_ms && end_ms <= received_ms,
        "audio_end_ms {end_ms} vs {received_ms} ms received (lead {LEAD_MS})"
    );
    let confirmed = daemon
        .logs()
        .iter()
        .filter(|l| message(l) == "barge-in confirmed by the caller's speech")
        .count();
    assert_eq!(confirmed, 1);
    daemon.wait_call_end(id).await;
    daemon.stop().await;
}

/// A 100 ms noise burst with the server's `speech_started`: the reply plays out whole,
/// nothing is cancelled, cleared or truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_cough_does_not_cut_the_reply() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcm24, KEY)).await;
    let daemon = start(&mock, &config("barge_in_min_ms = 200")).await;
    let id = "guard-cough";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::Respond { ms: 1500, seed: 7 });
    call.wait_received(10).await;
    mock.script(Script::BargeIn);
    mock.wait("speech_started sent", |s| s.barge_in_at.is_some())
        .await;
    // 100 ms of a loud tone between silences.
    let mut cough = vec![0i16; 1600];
    cough.extend(sine(8000, 700.0, -6.0, 800));
    cough.extend(vec![0i16; 1600]);
    send_paced(&call.writer, &cough, 8000, 1).await;
    mock.wait("the reply completes", |s| {
        s.responses.first().is_some_and(|r| r.status == "completed")
    })
    .await;
    // All 1.5 s of it reach FreeSWITCH.
    call.wait_received(75).await;
    let (_, got) = call.close().await;
    let types = mock.with(|s| s.client_types());
    assert!(!types.iter().any(|t| t == "response.cancel"), "{types:?}");
    assert!(
        !types.iter().any(|t| t == "conversation.item.truncate"),
        "{types:?}"
    );
    assert!(got.clears().is_empty(), "no clearAudio");
    daemon.wait_call_end(id).await;
    daemon.stop().await;
}

/// `greeting_interruptible = false`: the caller's speech during the greeting cuts
/// nothing; the greeting is heard whole, and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_greeting_is_heard_whole() {
    let mut opts = MockOptions::new(MockFormat::Pcm24, KEY);
    opts.greeting_ms = 1500;
    let mock = MockOpenAi::start(opts).await;
    let daemon = start(
        &mock,
        &config("greeting = \"Welcome to ACME.\"\ngreeting_interruptible = false"),
    )
    .await;
    let id = "guard-greeting";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    assert_eq!(interrupt_response(&mock), false);
    call.wait_received(10).await;
    mock.script(Script::BargeIn);
    mock.wait("speech_started sent", |s| s.barge_in_at.is_some())
        .await;
    let speech = speech_like(8000, 1.0, 5);
    send_paced(&call.writer, &speech, 8000, 1).await;
    mock.wait("the greeting completes", |s| {
        s.responses.first().is_some_and(|r| r.status == "completed")
    })
    .await;
    call.wait_received(75).await;
    let (_, got) = call.close().await;
    let types = mock.with(|s| s.client_types());
    assert!(!types.iter().any(|t| t == "response.cancel"), "{types:?}");
    assert!(got.clears().is_empty(), "no clearAudio during the greeting");
    daemon
        .wait_log(|l| message(l) == "caller speech during the greeting: not interrupted")
        .await;
    daemon.wait_call_end(id).await;
    daemon.stop().await;
}
