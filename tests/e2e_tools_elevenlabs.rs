//! Client tools through ElevenLabs, end to end: the real binary, the fake FreeSWITCH,
//! the mock agent (tests/common/mock_elevenlabs.rs), which calls a client tool as the
//! real agent does and validates every `client_tool_result`, and a local webhook server
//! standing in for the business's booking system (signed requests, scripted answers).

mod common;

use common::call::{Call, Collected, Playback};
use common::daemon::{call_id, field, message, Daemon};
use common::http;
use common::mock_elevenlabs::{Cmd, MockEleven, MockOptions};
use common::webhook_server::{Reply, ToolRequest, WebhookServer};
use serde_json::{json, Value};
use voicebridge::audio::signal::snr_db_within;

const AGENT: &str = "agent_mock_tools_1";
const SECRET: &str = "whsec-test-0a9b8c7d6e";
const HOOK: &str = "/tools/book";

fn config(hooks: &WebhookServer, timeout_ms: u64) -> String {
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = 60

[call]
provider = "elevenlabs"

[[call.tools]]
name = "book_appointment"
description = "Book an appointment for the caller."
parameters = '{{"type":"object","properties":{{"day":{{"type":"string"}},"time":{{"type":"string"}}}},"required":["day"]}}'
url = "{url}"
timeout_ms = {timeout_ms}

[webhooks]
secret = "{SECRET}"

[providers.elevenlabs]
agent_id = "{AGENT}"
"#,
        url = hooks.url(HOOK)
    )
}

async fn start(timeout_ms: u64) -> (MockEleven, WebhookServer, Daemon) {
    // pcm_16000 both ways and a 16 kHz call: the agent's audio passes untouched.
    let mock = MockEleven::start(MockOptions::new(AGENT)).await;
    let hooks = WebhookServer::start().await;
    let url = mock.ws_url();
    let d = Daemon::start(
        &config(&hooks, timeout_ms),
        &[("VOICEBRIDGE__PROVIDERS__ELEVENLABS__URL", url.as_str())],
    )
    .await;
    (mock, hooks, d)
}

async fn connect(d: &Daemon, id: &str) -> Call {
    Call::with_caller(d, id, 16000, 4.0).await
}

fn book() -> Cmd {
    Cmd::ToolCall {
        transcript: Some("Monday at ten, please.".into()),
        before_secs: 0.5,
        tool_name: "book_appointment".into(),
        tool_call_id: "tc_1".into(),
        parameters: json!({"day": "monday", "time": "10:00"}),
        after_secs: 1.0,
    }
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
            tool_call_id: "tc_1",
            call_id: id,
            arguments: json!({"day": "monday", "time": "10:00"}),
        },
    )
}

/// Runs one tool call; returns the result message the agent got and the audio played.
async fn tool_call(reply: Reply, timeout_ms: u64, id: &str) -> (Value, Vec<i16>, Daemon) {
    let (mock, hooks, d) = start(timeout_ms).await;
    hooks.respond(HOOK, reply);
    let call = connect(&d, id).await;
    mock.wait("the conversation", |s| s.init.is_some()).await;

    mock.send(book());
    mock.wait("the tool result", |s| !s.tool_results.is_empty())
        .await;
    // 0.5 s before the call + 1 s after it, in 20 ms frames.
    call.wait_received(75).await;
    let (_, got) = call.close().await;
    let summary = d.wait_call_end(id).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");

    let errors = mock.recorded(|s| s.errors.clone());
    assert!(errors.is_empty(), "mock validation failures: {errors:#?}");
    the_webhook_request(&hooks, id);
    let (results, responses) = mock.recorded(|s| (s.tool_results.clone(), s.responses.clone()));
    assert_eq!(results.len(), 1);
    assert_eq!(responses.len(), 2, "'let me check', then the answer");
    assert_eq!(results[0].answer_event_id, Some(responses[1].event_id));

    // What the agent said before the call, then its answer to the result, intact.
    let heard = played(&got);
    let before = &responses[0].samples;
    let after = &responses[1].samples;
    assert!(heard.len() >= before.len() + after.len());
    let snr_before = snr_db_within(before, &heard, 80);
    let snr_after = snr_db_within(after, &heard[before.len()..], 400);
    println!("before the call: SNR {snr_before:.1} dB, answer: SNR {snr_after:.1} dB");
    assert!(snr_before > 30.0 && snr_after > 30.0);
    (results[0].msg.clone(), heard, d)
}

/// The webhook's answer reaches the agent as `client_tool_result` text, and the agent's
/// answer is played; the caller's final transcript marked the end of their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_tool_call_runs_the_webhook_and_the_answer_is_heard() {
    let booked = json!({"booked": true, "slot": "Monday 10:00", "ref": "A-17"});
    let id = "el-tool-ok";
    let (msg, _, d) = tool_call(Reply::Json(booked.clone()), 2000, id).await;
    assert_eq!(msg["type"], "client_tool_result");
    assert_eq!(msg["tool_call_id"], "tc_1");
    assert_eq!(msg["is_error"], false);
    let result: Value = serde_json::from_str(msg["result"].as_str().unwrap()).unwrap();
    assert_eq!(result, booked);
    d.wait_log(|l| message(l) == "tool call answered" && call_id(l) == Some(id))
        .await;
    // SpeechStopped (the user_transcript) opened a turn that the first audio closed.
    let (_, metrics) = http::get(d.admin, "/metrics").await;
    let turns = http::metric(
        &metrics,
        r#"voicebridge_turn_latency_seconds_count{provider="elevenlabs"}"#,
    );
    assert_eq!(turns, Some(1.0), "{metrics}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_error_is_an_error_result_and_the_call_goes_on() {
    let (msg, _, d) = tool_call(
        Reply::Status(500, "calendar down".into()),
        2000,
        "el-tool-500",
    )
    .await;
    assert_eq!(msg["is_error"], true);
    let text = msg["result"].as_str().unwrap();
    assert!(text.contains("book_appointment"), "{text}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_slower_than_its_timeout_is_an_error_result() {
    // It never answers: only the tool's timeout_ms ends the wait.
    let (msg, _, d) = tool_call(Reply::Hang, 300, "el-tool-slow").await;
    assert_eq!(msg["is_error"], true);
    let text = msg["result"].as_str().unwrap();
    assert!(text.contains("did not answer within 300 ms"), "{text}");
    d.stop().await;
}
