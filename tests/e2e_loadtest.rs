//! `voicebridge loadtest` against the real daemon binary: 20 calls for 3 s through the
//! OpenAI provider pointed at the load test's own mock. Asserts correctness only (every
//! call up, audio both ways, each barge-in answered by clearAudio, clean closes): timings
//! depend on the machine and are what the tool reports, not what CI judges.

mod common;

use std::collections::BTreeMap;

use common::daemon::Daemon;
use serde::Deserialize;
use tokio::net::TcpListener;

/// The fields of `voicebridge loadtest --json-out` this test reads (the tool lives in the
/// binary, so its report is read as the documented JSON it writes).
#[derive(Deserialize, Debug)]
struct Report {
    connected: usize,
    held: usize,
    mock_connections: u64,
    provider_formats: BTreeMap<String, usize>,
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

/// The two load tests take turns: 40 calls at once (20 of them resampling in a debug
/// build) on a 2-core machine starved some provider connections of CPU until after the
/// report, a property of the machine, not of the daemon.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(format: &str) -> Report {
    let _turn = ONE_AT_A_TIME.lock().await;
    // The load test binds its mock itself (--mock-listen), and the daemon must know the
    // address before it starts: take a free loopback port and hand it over.
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
audio_format = "{format}"
"#
    );
    let daemon = Daemon::start(&toml, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .arg("loadtest")
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
    // Exit status 0 is the tool's "clean" verdict (Report::is_clean).
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
    assert_eq!(report.provider_formats.get(format), Some(&20), "{text}");
    assert_eq!(report.calls_without_audio, 0, "{text}");
    assert!(
        report.frames_sent > 0 && report.appends_received > 0,
        "{text}"
    );
    // Every call's first turn is interrupted: each barge-in produced a clearAudio.
    assert!(report.barge_ins_sent >= 20, "{text}");
    assert_eq!(report.barge_ins_without_clear, 0, "{text}");
    assert!(
        report.barge_in.as_ref().is_some_and(|d| d.n >= 20),
        "{text}"
    );
    assert!(report.provider_to_fs.is_some(), "{text}");
    // The daemon was found by its listening port and sampled.
    assert!(report.daemon.is_some(), "{text}");
    daemon.stop().await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_20_calls_pcmu_passthrough() {
    let report = run("pcmu").await;
    // Passthrough keeps the caller's stamps: every append was matched to its frame.
    let added = report.added_latency.expect("added latency measured");
    assert!(added.n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_20_calls_pcm24_resampling() {
    let report = run("pcm24").await;
    // Resampling destroys the stamps: no added latency, but no error either.
    assert!(report.added_latency.is_none());
}
