//! `voicebridge loadtest --protocol asterisk-ws` and `--protocol audiosocket` against the
//! real daemon binary: 20 Asterisk calls for 3 s through the OpenAI provider pointed at
//! the load test's mock. Asserts correctness only (every call held, audio both ways,
//! every provider session linked to its call and the stamps read back, each barge-in
//! cut, clean closes); timings are what the tool reports, not what CI judges.

mod common;

use common::daemon::{call_id, field, message, Daemon};
use serde::Deserialize;
use tokio::net::TcpListener;

/// The fields of `--json-out` this test reads.
#[derive(Deserialize, Debug)]
struct Report {
    connected: usize,
    held: usize,
    failed: usize,
    mock_connections: u64,
    mock_unlinked: u64,
    frames_sent: u64,
    appends_received: u64,
    playback_frames: u64,
    calls_without_audio: usize,
    added_latency: Option<Dist>,
    provider_to_fs: Option<Dist>,
    barge_in: Option<Dist>,
    barge_ins_sent: u64,
    barge_ins_without_clear: u64,
    frames_after_clear: u64,
    daemon: Option<serde_json::Value>,
}

#[derive(Deserialize, Debug)]
struct Dist {
    n: usize,
}

const TOKEN: &str = "loadtest-asterisk-token-0123456789";
const CALLS: usize = 20;

/// The tests take turns: two load tests at once on a 2-core machine starve each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A free loopback port for the load test's mock (the daemon needs its URL up front).
async fn mock_addr() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind mock")
        .local_addr()
        .expect("addr")
}

fn daemon_toml(mock: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
per_ip_rate_limit = 0
auth_tokens = ["{TOKEN}"]

[call]
provider = "openai"
instructions = "Load test call {{{{call_id}}}}"

[providers.openai]
url = "ws://{mock}/v1/realtime"
api_key = "sk-loadtest"
audio_format = "pcmu"
{extra}
"#
    )
}

/// Runs the load test and returns its report and printed summary; fails the test
/// when the run was not clean.
async fn loadtest(
    protocol: &str,
    url: &str,
    mock: std::net::SocketAddr,
    d: &Daemon,
) -> (Report, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .arg("loadtest")
        .args(["--protocol", protocol])
        .args(["--url", url])
        .args(["--calls", &CALLS.to_string(), "--ramp-per-sec", "40"])
        .args(["--hold-secs", "3", "--settle-secs", "0.5"])
        .arg("--mock-listen")
        .arg(mock.to_string())
        .arg("--json-out")
        .arg(&json)
        .env("VOICEBRIDGE_LOADTEST_TOKEN", TOKEN)
        .output()
        .await
        .expect("loadtest runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let raw = std::fs::read_to_string(&json).unwrap_or_default();
    assert!(
        out.status.success(),
        "load test not clean:\n{text}\n{raw}\n{}\ndaemon:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.output()
    );
    let report: Report = serde_json::from_str(&raw).expect("JSON report");
    (report, text)
}

/// What every Asterisk run must show, whatever the transport.
fn assert_clean(report: &Report, text: &str) {
    assert_eq!(report.connected, CALLS, "{text}");
    assert_eq!(report.held, CALLS, "{text}");
    assert_eq!(report.failed, 0, "{text}");
    assert_eq!(report.mock_connections, CALLS as u64, "{text}");
    assert_eq!(report.mock_unlinked, 0, "{text}");
    assert_eq!(report.calls_without_audio, 0, "{text}");
    assert!(
        report.frames_sent > 0 && report.appends_received > 0 && report.playback_frames > 0,
        "{text}"
    );
    // Slin frames of exact μ-law values pass into the pcmu session unchanged: the
    // stamps tie appends to the frames sent.
    assert!(
        report.added_latency.as_ref().is_some_and(|d| d.n > 0),
        "{text}"
    );
    assert!(report.provider_to_fs.is_some(), "{text}");
    // One barge-in every other turn, a turn every 2 s: at least one per call.
    assert!(report.barge_ins_sent >= CALLS as u64, "{text}");
    assert_eq!(report.barge_ins_without_clear, 0, "{text}");
    assert!(
        report.barge_in.as_ref().is_some_and(|d| d.n >= CALLS),
        "{text}"
    );
    assert_eq!(report.frames_after_clear, 0, "{text}");
    assert!(report.daemon.is_some(), "{text}");
}

/// The ids of the calls the daemon started.
fn started(d: &Daemon) -> Vec<String> {
    d.logs()
        .iter()
        .filter(|l| message(l) == "call started")
        .filter_map(|l| call_id(l).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_20_asterisk_ws_calls() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mock = mock_addr().await;
    let d = Daemon::start(&daemon_toml(mock, ""), &[]).await;
    let url = format!("ws://{}", d.addr);
    let (report, text) = loadtest("asterisk-ws", &url, mock, &d).await;
    assert_clean(&report, &text);
    // Every call came in as a chan_websocket channel, authenticated by the token, with
    // the call id of its `v(call=...)` query.
    let ids = started(&d);
    assert_eq!(ids.len(), CALLS, "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("vbload-")), "{ids:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_20_audiosocket_calls() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mock = mock_addr().await;
    let toml = daemon_toml(
        mock,
        "[[audiosocket]]\nlisten = \"127.0.0.1:0\"\nroute = \"call\"\n",
    );
    let d = Daemon::start(&toml, &[]).await;
    let line = d
        .wait_log(|l| message(l).starts_with("AudioSocket listening"))
        .await;
    let addr = field(&line, "listen").as_str().expect("listen").to_owned();
    let (report, text) = loadtest("audiosocket", &addr, mock, &d).await;
    assert_clean(&report, &text);
    // Every call came over AudioSocket: its id is the UUID message the caller sent.
    let ids = started(&d);
    assert_eq!(ids.len(), CALLS, "{ids:?}");
    assert!(
        ids.iter().all(|id| id.starts_with("76626c6f-6164-")),
        "{ids:?}"
    );
    d.stop().await;
}
