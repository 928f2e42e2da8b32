//! Provider fallback over the wire: the route's OpenAI (the mock) refuses the upgrade
//! (401), the same call goes on with the fallback (the built-in echo), which plays the
//! caller back; one warning line, the metric, and the record naming who served the call
//! and who failed and why. A provider that fails after the caller heard it ends the
//! call as before. Everything is awaited on events, never on sleeps.

mod common;

use common::call::{send_paced, Call};
use common::daemon::{field, message, Daemon};
use common::http;
use common::mock_openai::{MockFormat, MockOpenAi, MockOptions, Script};
use serde_json::Value;
use voicebridge::audio::signal::speech_like;

const KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";

fn config(records: &std::path::Path) -> String {
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = 60

[call]
provider = "openai"
fallback = ["echo"]

[providers.openai]
audio_format = "pcmu"

[providers.echo]
mode = "stream"

[records]
file = "{}"
"#,
        records.display()
    )
}

async fn start(mock: &MockOpenAi, records: &std::path::Path) -> Daemon {
    let url = mock.url();
    Daemon::start(
        &config(records),
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.as_str()),
            ("OPENAI_API_KEY", KEY),
        ],
    )
    .await
}

fn read_records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_provider_hands_the_call_to_the_fallback() {
    let mut opts = MockOptions::new(MockFormat::Pcmu, KEY);
    opts.refuse = Some((
        401,
        r#"{"error":{"message":"Incorrect API key"}}"#.to_owned(),
    ));
    let mock = MockOpenAi::start(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calls.jsonl");
    let daemon = start(&mock, &file).await;
    let id = "fallback-401";
    let call = Call::connect(&daemon, "call", id, "rate=8000&channels=mono").await;
    let speech = speech_like(8000, 1.0, 3);
    send_paced(&call.writer, &speech, 8000, 1).await;
    // The echo plays the caller back: the call went on.
    call.wait_received(25).await;
    let warning = daemon
        .wait_log(|l| {
            message(l)
                == "provider failed before the caller heard it: the call goes on with the fallback"
        })
        .await;
    assert_eq!(field(&warning, "from"), "openai");
    assert_eq!(field(&warning, "to"), "echo");
    assert!(
        field(&warning, "reason").as_str().unwrap().contains("401"),
        "{warning}"
    );
    let (_, m) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(
        http::metric(
            &m,
            "voicebridge_provider_fallbacks_total{route=\"call\",from=\"openai\",to=\"echo\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let (_, _) = call.close().await;
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "provider"), "echo");
    assert!(
        !daemon.output().contains(KEY),
        "the API key leaked into the output"
    );
    daemon.stop().await;
    let records = read_records(&file);
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["provider"], "echo");
    let failures = r["provider_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert_eq!(failures[0]["provider"], "openai");
    assert!(failures[0]["reason"].as_str().unwrap().contains("401"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fallback_once_the_conversation_started() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calls.jsonl");
    let daemon = start(&mock, &file).await;
    let id = "fallback-late";
    let call = Call::connect(&daemon, "call", id, "rate=8000&channels=mono").await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::Respond { ms: 400, seed: 1 });
    call.wait_received(10).await;
    mock.script(Script::Close {
        code: 1011,
        reason: "internal error".to_owned(),
    });
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "provider"), "openai");
    assert_eq!(field(&summary, "end_reason"), "provider_closed");
    assert!(!daemon.logs().iter().any(|l| {
        message(l)
            == "provider failed before the caller heard it: the call goes on with the fallback"
    }));
    drop(call);
    daemon.stop().await;
    let records = read_records(&file);
    assert_eq!(records[0]["provider_failures"], serde_json::json!([]));
}
