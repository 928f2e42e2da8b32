//! The built-in tools and the call record, through the real daemon: the OpenAI mock's
//! model says its last words and calls `end_call` / `transfer_call`; the fake Event
//! Socket must receive exactly the right commands, after the words have played; and
//! every call leaves one JSON record in the file and at the records webhook.

mod common;

use std::path::Path;

use common::call::{Call, Playback};
use common::daemon::{field, message, Daemon, HANG_GUARD};
use common::fake_esl::FakeEsl;
use common::fake_freeswitch::{ConnectOptions, FakeFreeSwitch};
use common::mock_openai::{MockFormat, MockOpenAi, MockOptions, Script};
use common::webhook_server::{Reply, WebhookServer};
use serde_json::{json, Value};

const KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";
const PASSWORD: &str = "not-ClueCon-2718";
const SECRET: &str = "records-secret-for-the-tests";

fn config(esl: std::net::SocketAddr, call_extra: &str, sections: &str) -> String {
    format!(
        r#"
[server]
drain_timeout_secs = 1

[freeswitch]
playback = "binary"
playback_lead_ms = 60

[freeswitch.esl]
host = "{}"
port = {}

[webhooks]
secret = "{SECRET}"

[call]
provider = "openai"
instructions = "You answer the phone for ACME."
{call_extra}

[providers.openai]
audio_format = "pcmu"

[prices.openai]
input_per_million_tokens = 32
output_per_million_tokens = 64
{sections}
"#,
        esl.ip(),
        esl.port()
    )
}

async fn start(toml: &str, mock: &MockOpenAi) -> Daemon {
    let url = mock.url();
    Daemon::start(
        toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.as_str()),
            ("OPENAI_API_KEY", KEY),
            ("FREESWITCH_ESL_PASSWORD", PASSWORD),
        ],
    )
    .await
}

/// A call whose caller keeps talking quietly until the daemon closes it.
async fn connect(daemon: &Daemon, id: &str) -> Call {
    Call::with_caller(daemon, id, 8000, 30.0).await
}

/// Audio frames FreeSWITCH got before our Close.
fn frames_before_close(got: &common::call::Collected) -> usize {
    let close_at = got
        .events
        .iter()
        .position(|e| matches!(e, Playback::Close(..)))
        .expect("a Close from the daemon");
    got.events[..close_at]
        .iter()
        .filter(|e| matches!(e, Playback::Audio { .. }))
        .count()
}

fn read_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// `end_call`: the 600 ms goodbye plays out, then our Close and `uuid_kill`; the record
/// says the assistant ended the call and lists the tool call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_call_plays_the_goodbye_then_kills_the_channel() {
    let esl = FakeEsl::start(PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calls.jsonl");
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let toml = config(
        esl.addr,
        "end_call = true",
        &format!("[records]\nfile = \"{}\"", file.display()),
    );
    let daemon = start(&toml, &mock).await;
    daemon.wait_log(|l| message(l) == "ESL connected").await;
    let id = "control-end-1";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::say_then_call(
        600,
        4,
        "end_call",
        json!({"reason": "the caller is done"}),
    ));
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "end_reason"), "assistant_hangup");
    assert_eq!(field(&summary, "ended_by"), "assistant");
    assert_eq!(field(&summary, "tool_calls"), 1);
    let got = tokio::time::timeout(HANG_GUARD, call.reader)
        .await
        .expect("the daemon closed the stream")
        .expect("reader");
    assert_eq!(
        frames_before_close(&got),
        30,
        "the goodbye played out first"
    );
    let kills = esl.wait_api(1, |c| c.starts_with("uuid_kill")).await;
    assert_eq!(kills[0].line, format!("uuid_kill {id}"));
    let cmds: Vec<String> = esl.api_commands().into_iter().map(|r| r.line).collect();
    assert!(
        !cmds.iter().any(|c| c.starts_with("uuid_transfer")),
        "{cmds:?}"
    );

    daemon.stop().await;
    let records = read_records(&file);
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["call_id"], id);
    assert_eq!(r["route"], "call");
    assert_eq!(r["provider"], "openai");
    assert_eq!(r["caller_id"], "+3902123");
    assert_eq!(r["called"], "100");
    assert_eq!(r["end_reason"], "assistant_hangup");
    assert_eq!(r["ended_by"], "assistant");
    assert!(r["end_detail"]
        .as_str()
        .unwrap()
        .contains("the caller is done"));
    let tools = r["tool_calls"].as_array().unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["name"], "end_call");
    assert_eq!(tools[0]["outcome"], "ok");
    assert_eq!(tools[0]["arguments"]["reason"], "the caller is done");
    assert!(r["duration_ms"].as_u64().unwrap() > 0);
    let (input, output) = (
        r["usage"]["input_tokens"].as_u64().unwrap(),
        r["usage"]["output_tokens"].as_u64().unwrap(),
    );
    assert!(input + output > 0, "the mock reports usage: {r}");
    let expected = (input as f64 * 32.0 + output as f64 * 64.0) / 1e6;
    let cost = r["cost"]["estimated"].as_f64().unwrap();
    assert!((cost - expected).abs() < 1e-6, "{cost} vs {expected}");
    assert!(r["transcript"].is_array(), "[log] transcripts is on: {r}");
    assert_eq!(r["turns"]["assistant"], 1);
    assert_eq!(r["version"], 1);
    assert_eq!(r["record_id"].as_str().unwrap().len(), 36);
    assert!(r["started_at"].as_str().unwrap() < r["ended_at"].as_str().unwrap());
}

/// `transfer_call`: after the last words, the module is detached and the channel is
/// transferred to the route's destination; no `uuid_kill`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_call_detaches_the_stream_and_transfers() {
    let esl = FakeEsl::start(PASSWORD).await;
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let toml = config(esl.addr, "transfer_to = \"1000 XML default\"", "");
    let daemon = start(&toml, &mock).await;
    daemon.wait_log(|l| message(l) == "ESL connected").await;
    let id = "control-transfer-1";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let declared = mock.with(|s| s.session_update.as_ref().unwrap()["session"]["tools"].clone());
    assert_eq!(declared[0]["name"], "transfer_call");
    mock.script(Script::say_then_call(
        400,
        6,
        "transfer_call",
        json!({"reason": "wants a human"}),
    ));
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "end_reason"), "transferred");
    let got = tokio::time::timeout(HANG_GUARD, call.reader)
        .await
        .expect("the daemon closed the stream")
        .expect("reader");
    assert_eq!(frames_before_close(&got), 20, "the last words played first");
    let cmds = esl.wait_api(2, |c| c.starts_with("uuid_")).await;
    let lines: Vec<&str> = cmds.iter().map(|c| c.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            format!("uuid_audio_stream {id} stop"),
            format!("uuid_transfer {id} 1000 XML default")
        ]
    );
    let output = mock.with(|s| s.function_outputs.clone());
    assert_eq!(output.len(), 1);
    assert_eq!(output[0].parsed.as_ref().unwrap()["status"], "transferring");
    assert!(!mock
        .with(|s| s.client_types())
        .iter()
        .any(|t| t == "response.create"));
    daemon.stop().await;
    let cmds: Vec<String> = esl.api_commands().into_iter().map(|r| r.line).collect();
    assert!(!cmds.iter().any(|c| c.starts_with("uuid_kill")), "{cmds:?}");
}

/// Without a call id in the URL there is no channel to transfer: the model gets an
/// error result and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_without_a_channel_id_is_an_error_for_the_model() {
    let esl = FakeEsl::start(PASSWORD).await;
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let toml = config(esl.addr, "transfer_to = \"1000 XML default\"", "");
    let daemon = start(&toml, &mock).await;
    let fs = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/call?rate=8000"))
        .await
        .expect("handshake");
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::function_call("transfer_call", json!({})));
    mock.wait("the error output", |s| !s.function_outputs.is_empty())
        .await;
    let out = mock.with(|s| s.function_outputs[0].parsed.clone()).unwrap();
    assert!(
        out["error"].as_str().unwrap().contains("not possible"),
        "{out}"
    );
    // The model may answer the error: the conversation goes on.
    mock.wait("a response after the error", |s| {
        s.client_types().iter().any(|t| t == "response.create")
    })
    .await;
    drop(fs);
    daemon.stop().await;
    assert!(esl
        .api_commands()
        .iter()
        .all(|c| !c.line.starts_with("uuid_transfer")));
}

/// A record webhook that is down when the call ends: the record waits in the spool and
/// is delivered, signed, once the webhook is back; the file has it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_reaches_the_webhook_after_an_outage() {
    let esl = FakeEsl::start(PASSWORD).await;
    let hooks = WebhookServer::start().await;
    hooks.respond("/records", Reply::Status(503, "maintenance".into()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calls.jsonl");
    let spool = dir.path().join("spool");
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let toml = config(
        esl.addr,
        "end_call = true",
        &format!(
            "[records]\nfile = \"{}\"\nwebhook_url = \"{}\"\nspool_dir = \"{}\"",
            file.display(),
            hooks.url("/records"),
            spool.display()
        ),
    );
    let daemon = start(&toml, &mock).await;
    let id = "control-record-1";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::say_then_call(200, 2, "end_call", json!({})));
    daemon.wait_call_end(id).await;
    drop(call);
    // The webhook refuses it (transient): the record is kept and retried.
    let first = hooks.wait_for("/records", 1).await;
    assert!(first[0].signature_valid(SECRET));
    hooks.respond("/records", Reply::Json(json!({"stored": true})));
    let outage = daemon
        .wait_log(|l| message(l).starts_with("call records webhook unavailable"))
        .await;
    assert!(field(&outage, "error").as_str().unwrap().contains("503"));
    let back = daemon
        .wait_log(|l| message(l).starts_with("call records webhook is back"))
        .await;
    assert_eq!(field(&back, "waited"), 1);
    let all = hooks.requests("/records");
    let last = all.last().unwrap();
    assert!(last.signature_valid(SECRET));
    let record = last.json();
    assert_eq!(record["call_id"], id);
    assert_eq!(record["end_reason"], "assistant_hangup");
    assert_eq!(record["cost"]["currency"], "USD");
    // Every attempt carried the same record.
    assert!(all.len() >= 2 && all.iter().all(|r| r.body == last.body));
    daemon.stop().await;
    let in_file = read_records(&file);
    assert_eq!(in_file.len(), 1);
    assert_eq!(in_file[0], record);
}

/// The records webhook is down for the whole life of a daemon: its record is in the
/// spool when the daemon exits (SIGTERM), and the next daemon on the same spool
/// delivers it as soon as it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_record_survives_a_restart() {
    let esl = FakeEsl::start(PASSWORD).await;
    let hooks = WebhookServer::start().await;
    let down = hooks.stop();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let toml = config(
        esl.addr,
        "end_call = true",
        &format!(
            "[records]\nwebhook_url = \"http://{down}/records\"\nspool_dir = \"{}\"",
            spool.display()
        ),
    );
    let daemon = start(&toml, &mock).await;
    let id = "control-restart-1";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::say_then_call(200, 3, "end_call", json!({})));
    daemon.wait_call_end(id).await;
    drop(call);
    daemon
        .wait_log(|l| message(l).starts_with("call records webhook unavailable"))
        .await;
    assert_eq!(daemon.stop().await, Some(0));
    let spooled: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(spooled.len(), 1, "the record waits in the spool");

    let hooks = WebhookServer::start_at(down).await;
    let again = start(&toml, &mock).await;
    let got = hooks.wait_for("/records", 1).await;
    assert!(got[0].signature_valid(SECRET));
    assert_eq!(got[0].json()["call_id"], id);
    let noted = again
        .wait_log(|l| message(l).starts_with("call records from a previous run"))
        .await;
    assert_eq!(field(&noted, "records"), 1);
    again.stop().await;
}
