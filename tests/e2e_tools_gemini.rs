//! Function calling through Gemini Live, end to end: the real binary, the fake
//! FreeSWITCH, the mock Live server (tests/common/mock_gemini.rs), which calls functions
//! as Gemini does and validates every `toolResponse`, and a local webhook server standing
//! in for the business's booking system (signed requests, scripted answers).

mod common;

use std::sync::atomic::Ordering;

use common::call::{Call, Collected, Playback};
use common::daemon::{call_id, field, message, Daemon};
use common::http;
use common::mock_gemini::{MockGemini, MockOptions, Target, ToolTurn, TurnSpec};
use common::webhook_server::{Reply, ToolRequest, WebhookServer};
use serde_json::{json, Value};
use voicebridge::audio::signal::{snr_db_within, speech_like, sweep};

const KEY: &str = "fake-gemini-test-key-0123456789";
const SECRET: &str = "whsec-test-5f4e3d2c1b";
const HOOK: &str = "/tools/book";
const PARAMETERS: &str = r#"{"type":"object","additionalProperties":false,"properties":{"day":{"type":"string","description":"Weekday of the appointment"},"time":{"type":["string","null"],"description":"HH:MM, 24 h"}},"required":["day"]}"#;

fn config(hooks: &WebhookServer, timeout_ms: u64) -> String {
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = 60

[call]
provider = "gemini"
instructions = "You book appointments for ACME."
response_timeout_secs = 0

[[call.tools]]
name = "book_appointment"
description = "Book an appointment for the caller."
parameters = '{PARAMETERS}'
url = "{url}"
timeout_ms = {timeout_ms}

[webhooks]
secret = "{SECRET}"

[providers.gemini]
model = "models/gemini-2.5-flash-native-audio-preview-12-2025"
voice = "Puck"
"#,
        url = hooks.url(HOOK)
    )
}

async fn start(timeout_ms: u64) -> (MockGemini, WebhookServer, Daemon) {
    let mut opts = MockOptions::new(KEY);
    opts.voice = "Puck".to_owned();
    let mock = MockGemini::start(opts).await;
    let hooks = WebhookServer::start().await;
    let url = mock.url();
    let d = Daemon::start(
        &config(&hooks, timeout_ms),
        &[
            ("VOICEBRIDGE__PROVIDERS__GEMINI__URL", url.as_str()),
            ("GEMINI_API_KEY", KEY),
        ],
    )
    .await;
    (mock, hooks, d)
}

async fn connect(d: &Daemon, id: &str) -> Call {
    Call::with_caller(d, id, 8000, 4.0).await
}

/// Starts with a sweep (for alignment), then speech; the same waveform at any rate.
fn answer(rate: u32) -> Vec<i16> {
    let mut s = sweep(rate, 300.0, 3400.0, -12.0, rate as usize * 3 / 10);
    s.extend(speech_like(rate, 0.7, 21));
    s
}

fn played(got: &Collected) -> Vec<i16> {
    let mut out = Vec::new();
    for e in &got.events {
        if let Playback::Audio { samples, .. } = e {
            out.extend_from_slice(samples);
        }
    }
    out
}

/// The one webhook request: signed, with the call and the model's arguments.
fn the_webhook_request(hooks: &WebhookServer, id: &str) -> Value {
    hooks.the_tool_request(
        HOOK,
        ToolRequest {
            secret: SECRET,
            tool: "book_appointment",
            tool_call_id: "fc_1",
            call_id: id,
            arguments: json!({"day": "monday", "time": "10:00"}),
        },
    )
}

fn book_turn() -> ToolTurn {
    let mut turn = ToolTurn::new(
        "fc_1",
        "book_appointment",
        json!({"day": "monday", "time": "10:00"}),
        answer(24000),
    );
    // "Let me check": part of the same model turn, before the call.
    turn.before = speech_like(24000, 0.5, 7);
    turn
}

/// The declaration in the setup, the webhook (signed, with the call's details), the
/// `toolResponse` carrying the webhook's answer, and the model's follow-up audio played
/// to the caller right after what it said before the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_runs_the_webhook_and_the_answer_is_heard() {
    let (mock, hooks, d) = start(2000).await;
    let booked = json!({"booked": true, "slot": "Monday 10:00", "ref": "A-17"});
    hooks.respond(HOOK, Reply::Json(booked.clone()));
    let id = "gem-tool-ok";
    let call = connect(&d, id).await;
    mock.wait_ready(1).await;

    let responses = mock.play_tool_turn(book_turn()).await.unwrap();
    // 0.5 s before the call + 1 s after it, in 20 ms frames.
    call.wait_received(74).await;
    let (_, got) = call.close().await;
    d.wait_call_end(id).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    let setup = mock.conns()[0].setup.clone().unwrap();
    assert_eq!(
        setup["tools"],
        json!([{"functionDeclarations": [{
            "name": "book_appointment",
            "description": "Book an appointment for the caller.",
            "parameters": {"type": "OBJECT",
                "properties": {
                    "day": {"type": "STRING", "description": "Weekday of the appointment"},
                    "time": {"type": "STRING", "nullable": true, "description": "HH:MM, 24 h"}},
                "required": ["day"]}}]}])
    );
    the_webhook_request(&hooks, id);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].name, "book_appointment");
    assert_eq!(responses[0].response, json!({"output": booked}));
    assert_eq!(
        responses[0].scheduling, None,
        "2.x: blocking, no scheduling"
    );

    // Before and after the call, in order and intact (8 kHz after 24 kHz).
    let mut reference = speech_like(8000, 0.5, 7);
    reference.extend(answer(8000));
    let snr = snr_db_within(&reference, &played(&got), 320);
    println!("assistant audio around the tool call: SNR {snr:.1} dB");
    assert!(snr > 30.0, "SNR {snr:.1} dB");
    d.wait_log(|l| message(l) == "tool call answered" && call_id(l) == Some(id))
        .await;
    // The caller's transcription marked the end of their turn (SpeechStopped), once;
    // the first audio closed it.
    let (_, metrics) = http::get(d.admin, "/metrics").await;
    let turns = http::metric(
        &metrics,
        r#"voicebridge_turn_latency_seconds_count{provider="gemini"}"#,
    );
    assert_eq!(turns, Some(1.0), "{metrics}");
    d.stop().await;
}

async fn failing_webhook(reply: Reply, timeout_ms: u64, expect: &str) {
    let (mock, hooks, d) = start(timeout_ms).await;
    hooks.respond(HOOK, reply);
    let id = "gem-tool-fail";
    let call = connect(&d, id).await;
    mock.wait_ready(1).await;

    let responses = mock.play_tool_turn(book_turn()).await.unwrap();
    call.wait_received(74).await;
    let (_, got) = call.close().await;
    let summary = d.wait_call_end(id).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    the_webhook_request(&hooks, id);
    assert_eq!(responses.len(), 1);
    let r = &responses[0].response;
    assert!(r.get("output").is_none(), "{r}");
    let error = r["error"].as_str().expect("an error message");
    assert!(error.contains(expect), "{error}");
    // The call went on: the model's answer to the error was played.
    let mut reference = speech_like(8000, 0.5, 7);
    reference.extend(answer(8000));
    let snr = snr_db_within(&reference, &played(&got), 320);
    assert!(snr > 30.0, "SNR {snr:.1} dB");
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_error_becomes_an_error_response() {
    failing_webhook(
        Reply::Status(500, "calendar down".into()),
        2000,
        "book_appointment",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_slower_than_its_timeout_becomes_an_error_response() {
    // It never answers: only the tool's timeout_ms ends the wait.
    failing_webhook(Reply::Hang, 300, "did not answer within 300 ms").await;
}

/// Gemini withdraws a call (barge-in) while the webhook runs: its result, when it comes,
/// is not sent; the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_gets_no_response() {
    let (mock, hooks, d) = start(300).await;
    hooks.respond(HOOK, Reply::Hang);
    let id = "gem-tool-cancel";
    let call = connect(&d, id).await;
    mock.wait_ready(1).await;

    mock.tool_call(
        Target::Latest,
        &[(
            "fc_1",
            "book_appointment",
            json!({"day": "monday", "time": "10:00"}),
        )],
    );
    hooks.wait_for(HOOK, 1).await;
    mock.cancel_tool_calls(&["fc_1"]);
    // The webhook times out after the cancellation: the error result is dropped.
    d.wait_log(|l| {
        message(l) == "gemini: result of a cancelled call not sent" && call_id(l) == Some(id)
    })
    .await;
    d.wait_log(|l| message(l) == "tool call cancelled by the provider" && call_id(l) == Some(id))
        .await;

    let before = call.received.load(Ordering::SeqCst);
    mock.play(TurnSpec::new(answer(24000))).finish().await;
    call.wait_received(before + 49).await;
    let (_, _) = call.close().await;
    d.wait_call_end(id).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    assert!(
        mock.tool_responses().is_empty(),
        "{:?}",
        mock.tool_responses()
    );
    the_webhook_request(&hooks, id);
    d.stop().await;
}

/// The session moves to a new connection (goAway): the new setup declares the tools
/// again, and a call made there is answered there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_declares_the_tools_again() {
    let (mock, hooks, d) = start(2000).await;
    hooks.respond(HOOK, Reply::Json(json!({"booked": true})));
    let id = "gem-tool-resume";
    let call = connect(&d, id).await;
    mock.wait_ready(1).await;
    mock.resumption_update();
    mock.go_away("5s");
    mock.wait_ready(2).await;
    // The switch is done once the daemon closed the old connection.
    mock.wait_closed(0).await;

    let responses = mock.play_tool_turn(book_turn()).await.unwrap();
    call.wait_received(74).await;
    let (_, _) = call.close().await;
    d.wait_call_end(id).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    let conns = mock.conns();
    assert_eq!(conns.len(), 2);
    assert!(conns[1].resumed_with.is_some());
    let tools = |i: usize| conns[i].setup.as_ref().unwrap()["tools"].clone();
    assert!(tools(0).is_array());
    assert_eq!(tools(1), tools(0));
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].conn, 1);
    assert_eq!(responses[0].response, json!({"output": {"booked": true}}));
    d.stop().await;
}

/// Gemini 3.8 calls functions NON_BLOCKING: the answer goes back with
/// `scheduling: WHEN_IDLE` (spoken once the model and the caller are done talking), and
/// it is heard. 2.x models get no scheduling (they wait for the result).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3x_model_gets_the_answer_when_idle() {
    let mut opts = MockOptions::new(KEY);
    opts.voice = "Puck".to_owned();
    let mock = MockGemini::start(opts).await;
    let hooks = WebhookServer::start().await;
    let booked = json!({"booked": true});
    hooks.respond(HOOK, Reply::Json(booked.clone()));
    let url = mock.url();
    let toml = config(&hooks, 2000).replace(
        "models/gemini-2.5-flash-native-audio-preview-12-2025",
        "models/gemini-3.8-live",
    );
    let d = Daemon::start(
        &toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__GEMINI__URL", url.as_str()),
            ("GEMINI_API_KEY", KEY),
        ],
    )
    .await;
    let id = "gem38-tool";
    let call = connect(&d, id).await;
    mock.wait_ready(1).await;
    let responses = mock.play_tool_turn(book_turn()).await.unwrap();
    call.wait_received(74).await;
    let (_, _) = call.close().await;
    d.wait_call_end(id).await;
    assert_eq!(mock.violations(), Vec::<String>::new());
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].response, json!({"output": booked}));
    assert_eq!(responses[0].scheduling.as_deref(), Some("WHEN_IDLE"));
    d.stop().await;
}
