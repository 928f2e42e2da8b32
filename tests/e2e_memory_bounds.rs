//! Memory is bounded against every peer, checked through the real binary over
//! loopback: a provider streaming audio far faster than real time, a provider sending
//! one oversized message, a webhook answering a huge body or a redirect, a model
//! calling tools faster than a webhook answers. Each costs its own call a bounded
//! amount (or ends it with a clear reason) and never another call.

mod common;

use std::time::Duration;

use common::call::Call;
use common::daemon::{field, message, Daemon};
use common::http::{get, metric};
use common::mock_openai::{MockCall, MockFormat, MockOpenAi, MockOptions, Script};
use common::webhook_server::{Reply, WebhookServer};
use serde_json::json;

const KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";
const SECRET: &str = "test-webhook-secret-memory-bounds";

fn config(extra: &str) -> String {
    format!(
        r#"
[server]
drain_timeout_secs = 1

[webhooks]
secret = "{SECRET}"

[call]
provider = "openai"
instructions = "You answer for ACME. The caller is {{{{ pad | unknown }}}}."

[providers.openai]
audio_format = "pcmu"

[providers.echo]
mode = "stream"
delay_ms = 100

{extra}
"#
    )
}

async fn start(toml: &str, mock: &MockOpenAi) -> Daemon {
    Daemon::start(
        toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", &mock.url()),
            ("OPENAI_API_KEY", KEY),
        ],
    )
    .await
}

fn tool(name: &str, url: &str, timeout_ms: u64) -> String {
    format!(
        r#"
[[call.tools]]
name = "{name}"
description = "A test tool."
parameters = '{{"type":"object","properties":{{}}}}'
url = "{url}"
timeout_ms = {timeout_ms}
"#
    )
}

/// A lookup answering far more than `[webhooks] max_response_kb` (default 256 KiB) is an
/// error with a clear reason; the call goes on with its defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_lookup_answer_is_an_error_not_read_whole() {
    let hooks = WebhookServer::start().await;
    hooks.respond("/lookup", Reply::Huge(8 * 1024 * 1024));
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let lookup = format!(
        "[call.context]\nurl = \"{}\"\ntimeout_ms = 5000\n",
        hooks.url("/lookup")
    );
    let daemon = start(&config(&lookup), &mock).await;
    let _call = Call::with_caller(&daemon, "huge-lookup", 8000, 10.0).await;

    let failed = daemon
        .wait_log(|l| message(l).starts_with("caller lookup"))
        .await;
    assert!(
        message(&failed).starts_with("caller lookup failed"),
        "{failed}"
    );
    let error = field(&failed, "error").as_str().unwrap_or("");
    assert!(error.contains("256 KiB"), "{error}");
    mock.wait("session.update", |s| s.session_update.is_some())
        .await;
    let instructions =
        mock.with(|s| s.session_update.clone()).unwrap()["session"]["instructions"].to_string();
    assert!(
        instructions.contains("The caller is unknown."),
        "{instructions}"
    );
    daemon.stop().await;
}

/// A tool webhook answering with a redirect: not followed (the signed body never goes
/// to a host nobody configured); the model gets an error result naming the redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_the_model_gets_an_error() {
    let hooks = WebhookServer::start().await;
    hooks.respond("/moved", Reply::Redirect(hooks.url("/elsewhere")));
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let daemon = start(&config(&tool("lookup", &hooks.url("/moved"), 3000)), &mock).await;
    let call = Call::with_caller(&daemon, "redirect", 8000, 30.0).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::function_call("lookup", json!({})));

    mock.wait("a function_call_output", |s| !s.function_outputs.is_empty())
        .await;
    let output = mock.with(|s| s.function_outputs[0].clone());
    let error = output.parsed.as_ref().map(|v| v["error"].to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("redirects are not followed")),
        "{}",
        output.output
    );
    assert_eq!(hooks.requests("/moved").len(), 1);
    assert!(
        hooks.requests("/elsewhere").is_empty(),
        "the redirect was followed"
    );
    drop(call);
    daemon.stop().await;
}

/// `[webhooks] max_tool_calls_in_flight = 1`: while one webhook call runs, the next
/// one gets an error result at once and no request is sent for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_over_the_in_flight_limit_are_answered_at_once() {
    let hooks = WebhookServer::start().await;
    hooks.respond(
        "/slow",
        Reply::Delayed(
            Duration::from_millis(1500),
            Box::new(Reply::Json(json!({"ok": 1}))),
        ),
    );
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let toml = config(&tool("slow", &hooks.url("/slow"), 5000))
        .replace("[webhooks]\n", "[webhooks]\nmax_tool_calls_in_flight = 1\n");
    let daemon = start(&toml, &mock).await;
    let _call = Call::with_caller(&daemon, "in-flight", 8000, 30.0).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::FunctionCall {
        caller_turn: false,
        speech_ms: 0,
        seed: 3,
        calls: vec![
            MockCall::new("slow", json!({})),
            MockCall::new("slow", json!({})),
        ],
    });

    mock.wait("both function_call_outputs", |s| {
        s.function_outputs.len() >= 2
    })
    .await;
    let (issued, outputs) = mock.with(|s| (s.function_calls.clone(), s.function_outputs.clone()));
    assert_eq!(issued.len(), 2);
    // The second call was answered first, at once, with the limit named.
    assert_eq!(outputs[0].call_id, issued[1].call_id, "{outputs:#?}");
    let busy = outputs[0].parsed.as_ref().map(|v| v["error"].to_string());
    assert!(
        busy.as_deref()
            .is_some_and(|e| e.contains("already running")),
        "{}",
        outputs[0].output
    );
    assert_eq!(outputs[1].call_id, issued[0].call_id);
    assert_eq!(outputs[1].parsed, Some(json!({"ok": 1})));
    assert_eq!(hooks.requests("/slow").len(), 1, "one webhook request only");
    daemon.stop().await;
}

/// A provider streaming audio at about 200x real time: the playback queue stops at
/// its cap (the excess is dropped and counted, one warning), the call ends with
/// `provider_flood`, and a call on another route keeps working throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_flooding_audio_is_capped_and_its_call_ends() {
    use base64::Engine;
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let toml = config("[[routes]]\nname = \"echo\"\nprovider = \"echo\"\n").replace(
        "[server]\n",
        "[freeswitch]\nplayback_max_queue_ms = 2000\n\n[server]\n",
    );
    let daemon = start(&toml, &mock).await;
    let other = Call::connect(&daemon, "echo", "bystander", "rate=8000&channels=mono").await;
    let talker = common::call::spawn_talker(other.writer.clone(), 0x11, 3000);
    other.wait_received(5).await;

    let call = Call::with_caller(&daemon, "flood", 8000, 60.0).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    // One second of μ-law per delta, twenty deltas every 100 ms, until the call ends.
    let delta = json!({
        "type": "response.output_audio.delta", "event_id": "e", "response_id": "r1",
        "item_id": "i1", "output_index": 0, "content_index": 0,
        "delta": base64::engine::general_purpose::STANDARD.encode(vec![0xFFu8; 8000]),
    })
    .to_string();
    let flood = async {
        loop {
            for _ in 0..20 {
                mock.script(Script::Raw(delta.clone()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let summary = tokio::select! {
        s = daemon.wait_call_end("flood") => s,
        () = flood => unreachable!(),
    };
    assert_eq!(field(&summary, "end_reason"), "provider_flood", "{summary}");
    let detail = field(&summary, "end_detail").as_str().unwrap_or("");
    assert!(detail.contains("far faster than real time"), "{detail}");
    assert!(
        field(&summary, "playback_overflow_frames")
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{summary}"
    );
    let warned = daemon
        .logs()
        .iter()
        .filter(|l| message(l).starts_with("playback queue full"))
        .count();
    assert_eq!(warned, 1, "one warning per call");

    // The bystander still gets its echo after the flooded call ended.
    let before = other.received.load(std::sync::atomic::Ordering::SeqCst);
    other.wait_received(before + 10).await;
    let (_, metrics) = get(daemon.admin, "/metrics").await;
    let dropped = metric(
        &metrics,
        "voicebridge_frames_dropped_total{kind=\"playback_overflow\"}",
    )
    .unwrap_or(0.0);
    assert!(dropped > 0.0, "{metrics}");
    let ended = metric(
        &metrics,
        "voicebridge_calls_total{route=\"call\",provider=\"openai\",end_reason=\"provider_flood\"}",
    );
    assert_eq!(ended, Some(1.0), "{metrics}");
    talker.abort();
    drop(call);
    daemon.stop().await;
}

/// A provider message over the 1 MiB limit ends that call as a provider error instead
/// of being buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_provider_message_ends_the_call() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let daemon = start(&config(""), &mock).await;
    let _call = Call::with_caller(&daemon, "too-big", 8000, 30.0).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let big = json!({"type": "conversation.item.added", "pad": "x".repeat(2 * 1024 * 1024)});
    mock.script(Script::Raw(big.to_string()));
    let summary = daemon.wait_call_end("too-big").await;
    assert_eq!(
        field(&summary, "end_reason"),
        "provider_closed",
        "{summary}"
    );
    let detail = field(&summary, "end_detail").as_str().unwrap_or("");
    assert!(detail.contains("Message too long"), "{detail}");
    daemon.stop().await;
}
