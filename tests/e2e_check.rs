//! `voicebridge check` on a receptionist config: it lists each route's business
//! features and tries a TCP connection to every webhook host without sending anything
//! (a lookup or tool endpoint may act on any request), failing when one is unreachable.

mod common;

use std::net::TcpListener;

use common::webhook_server::WebhookServer;

async fn check(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voicebridge.toml");
    std::fs::write(&path, toml).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("VOICEBRIDGE_WEBHOOK_SECRET")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn config(lookup: &str, tool: &str) -> String {
    format!(
        r#"
[call]
end_call = true
daily_max_calls = 200

[call.context]
url = "{lookup}?key=do-not-print-me"
method = "GET"
timeout_ms = 700

[[call.tools]]
name = "book_appointment"
description = "Books an appointment."
url = "{tool}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_the_business_features_and_reaches_the_webhooks() {
    let hooks = WebhookServer::start().await;
    let (ok, out) = check(&config(&hooks.url("/lookup"), &hooks.url("/book"))).await;
    assert!(ok, "{out}");
    assert!(out.contains("lookup GET"), "{out}");
    assert!(out.contains("(timeout 700 ms)"), "{out}");
    assert!(out.contains("tools book_appointment, end_call"), "{out}");
    assert!(
        out.contains("budget 200 calls, unlimited minutes per UTC day"),
        "{out}"
    );
    assert!(out.contains("reachable"), "{out}");
    assert!(
        !out.contains("do-not-print-me"),
        "a URL's query may hold a key: {out}"
    );
    assert!(
        out.contains("[webhooks] secret is empty"),
        "unsigned webhooks are warned about: {out}"
    );
    assert!(out.contains("end_call without [freeswitch.esl]"), "{out}");
    assert!(hooks.requests("/lookup").is_empty(), "check sends nothing");
    assert!(hooks.requests("/book").is_empty(), "check sends nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_fails_the_check() {
    let hooks = WebhookServer::start().await;
    // A port nothing listens on: bound, then released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, out) = check(&config(
        &hooks.url("/lookup"),
        &format!("http://{closed}/book"),
    ))
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "webhook tool http://{closed}/book: FAILED: cannot connect"
        )),
        "{out}"
    );
}

/// Outside the repository, with no config named: `check` runs on the built-in defaults
/// and says so instead of failing on the missing config/default.toml.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_without_a_config_file_uses_the_built_in_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .arg("check")
        .current_dir(dir.path())
        .env_remove("VOICEBRIDGE_CONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("running on the built-in defaults"),
        "{stdout}"
    );
    assert!(stdout.contains("provider echo"), "{stdout}");

    // A file that is named must exist: no silent fallback then.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .args(["check", "--config", "missing.toml"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.toml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The default playback mode is silent on the stock module: `check` says what each mode
/// needs, so the choice is made knowingly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_the_three_playback_modes() {
    let (ok, out) = check("[freeswitch]\nplayback = \"binary\"\n").await;
    assert!(ok, "{out}");
    assert!(out.contains("playback modes"), "{out}");
    for line in [
        "  binary        L16 binary frames: only the forks",
        "the stock community module ignores them",
        "  stream_audio  streamAudio JSON frames",
        "  esl_files     the stock community module",
    ] {
        assert!(out.contains(line), "{line:?} missing in:\n{out}");
    }
}
