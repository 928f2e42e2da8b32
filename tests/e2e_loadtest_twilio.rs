//! `voicebridge loadtest --protocol twilio` against the real daemon binary: 20 Twilio
//! Media Streams calls (`/twilio/call`, μ-law `media` JSON every 20 ms, marks echoed
//! once played) for 3 s through the OpenAI provider pointed at the load test's mock.
//! Asserts correctness only (every call up, audio both ways, each barge-in answered by
//! `clear`, clean closes); timings are what the tool reports, not what CI judges.

mod common;

use common::daemon::Daemon;
use serde::Deserialize;
use tokio::net::TcpListener;

/// The fields of `--json-out` this test reads.
#[derive(Deserialize, Debug)]
struct Report {
    connected: usize,
    held: usize,
    mock_connections: u64,
    frames_sent: u64,
    appends_received: u64,
    calls_without_audio: usize,
    added_latency: Option<Dist>,
    provider_to_fs: Option<Dist>,
    barge_in: Option<Dist>,
    barge_ins_sent: u64,
    barge_ins_without_clear: u64,
    daemon: Option<serde_json::Value>,
}

#[derive(Deserialize, Debug)]
struct Dist {
    n: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_20_twilio_calls() {
    let mock = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind mock")
        .local_addr()
        .expect("addr");
    let mock_url = format!("ws://{mock}/v1/realtime");
    let toml = format!(
        r#"
[server]
per_ip_rate_limit = 0

[call]
provider = "openai"
instructions = "Load test call {{{{call_id}}}}"

[providers.openai]
url = "{mock_url}"
api_key = "sk-loadtest"
audio_format = "pcmu"
"#
    );
    let daemon = Daemon::start(&toml, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .arg("loadtest")
        .args(["--protocol", "twilio"])
        .arg("--url")
        .arg(format!("ws://{}", daemon.addr))
        .args(["--calls", "20", "--ramp-per-sec", "40"])
        .args(["--hold-secs", "3", "--settle-secs", "0.5"])
        .arg("--mock-listen")
        .arg(mock.to_string())
        .arg("--json-out")
        .arg(&json)
        .output()
        .await
        .expect("loadtest runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let raw = std::fs::read_to_string(&json).unwrap_or_default();
    assert!(
        out.status.success(),
        "load test not clean:\n{text}\n{raw}\n{}\ndaemon:\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.output()
    );
    let report: Report = serde_json::from_str(&raw).expect("JSON report");
    assert_eq!(report.connected, 20, "{text}");
    assert_eq!(report.held, 20, "{text}");
    assert_eq!(report.mock_connections, 20, "{text}");
    assert_eq!(report.calls_without_audio, 0, "{text}");
    assert!(
        report.frames_sent > 0 && report.appends_received > 0,
        "{text}"
    );
    assert!(report.barge_ins_sent >= 20, "{text}");
    assert_eq!(report.barge_ins_without_clear, 0, "{text}");
    assert!(
        report.barge_in.as_ref().is_some_and(|d| d.n >= 20),
        "{text}"
    );
    assert!(report.provider_to_fs.is_some(), "{text}");
    // μ-law passes through to the pcmu session: the stamps link every append.
    assert!(report.added_latency.is_some_and(|d| d.n > 0), "{text}");
    assert!(report.daemon.is_some(), "{text}");
    // Every call was a Twilio stream: its id is the daemon's own (the carrier's call id
    // only comes with `start`), never the FreeSWITCH caller's `vbload-` path id.
    let started: Vec<String> = daemon
        .logs()
        .iter()
        .filter(|l| common::daemon::message(l) == "call started")
        .filter_map(|l| common::daemon::call_id(l).map(str::to_owned))
        .collect();
    assert_eq!(started.len(), 20);
    assert!(
        started.iter().all(|id| !id.starts_with("vbload-")),
        "{started:?}"
    );
    daemon.stop().await;
}
