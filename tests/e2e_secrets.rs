//! Credentials written into configured URLs (`user:PASS@`, `?api-key=KEY`) never leave
//! the process: not in the JSON log, not in `voicebridge check`, not in the call record
//! (file and webhook), not in the Close reason FreeSWITCH receives. Run against the real
//! binary, with a provider that refuses the call and echoes the secrets in its answer.

mod common;

use common::daemon::{Daemon, HANG_GUARD};
use common::fake_freeswitch::{ConnectOptions, FakeFreeSwitch, ServerFrame};
use common::mock_openai::{MockFormat, MockOpenAi, MockOptions};
use common::webhook_server::WebhookServer;

const API_KEY: &str = "fake-secrets-test-api-key";
const URL_PASS: &str = "URLPASS7f3a";
const URL_KEY: &str = "URLKEY9c1e";
const HOOK_PASS: &str = "HOOKPASS2b8d";
const HOOK_TOKEN: &str = "HOOKTOKEN5e0a";

fn secrets() -> [&'static str; 5] {
    [API_KEY, URL_PASS, URL_KEY, HOOK_PASS, HOOK_TOKEN]
}

fn assert_clean(what: &str, text: &str) {
    for s in secrets() {
        assert!(!text.contains(s), "{s} leaked into {what}:\n{text}");
    }
}

/// `ws://user:PASS@host/v1/realtime?api-key=KEY` for a provider at `addr`.
fn provider_url(addr: std::net::SocketAddr) -> String {
    format!("ws://vb:{URL_PASS}@{addr}/v1/realtime?api-key={URL_KEY}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_stay_out_of_logs_records_and_close_reasons() {
    // The provider refuses, quoting the query and the password back (servers do).
    let mut opts = MockOptions::new(MockFormat::Pcmu, API_KEY);
    opts.refuse = Some((
        401,
        format!(r#"{{"error":{{"message":"bad api-key {URL_KEY} for vb:{URL_PASS}"}}}}"#),
    ));
    let provider = MockOpenAi::start(opts).await;
    let hooks = WebhookServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("calls.jsonl");
    let hook = format!(
        "http://crm:{HOOK_PASS}@{}/records?token={HOOK_TOKEN}",
        hooks.addr
    );
    let toml = format!(
        "[log]\nlevel = \"debug\"\n[call]\nprovider = \"openai\"\n\
         [providers.openai]\nurl = \"{}\"\n\
         [records]\nfile = \"{}\"\nwebhook_url = \"{hook}\"\nspool_dir = \"{}\"\n",
        provider_url(provider.addr),
        records.display(),
        dir.path().join("spool").display(),
    );
    let daemon = Daemon::start(&toml, &[("OPENAI_API_KEY", API_KEY)]).await;

    let opts = ConnectOptions::new(daemon.addr, "/call/leak-1?rate=8000");
    let mut fs = FakeFreeSwitch::connect(&opts).await.unwrap();
    let reason = loop {
        match fs.recv_timeout(HANG_GUARD).await {
            Ok(Some(ServerFrame::Close(_, reason))) => break reason,
            Ok(Some(_)) => continue,
            other => panic!("no Close from voicebridge: {other:?}"),
        }
    };
    daemon.wait_call_end("leak-1").await;
    // The refusal reaches the receiver: the record is written and delivered.
    let delivered = hooks.wait_for("/records", 1).await;

    assert!(reason.contains("provider error"), "{reason}");
    assert!(
        !reason.contains("://"),
        "a Close reason carries no URL: {reason}"
    );
    assert_clean("the Close reason", &reason);

    let body = String::from_utf8_lossy(&delivered[0].body).into_owned();
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(record["end_reason"], "provider_error", "{body}");
    let detail = record["end_detail"].as_str().unwrap_or_default();
    assert!(detail.contains("401"), "the reason survives: {detail}");
    assert!(detail.contains("api-key=[redacted]"), "{detail}");
    assert_clean("the delivered record", &body);
    // The receiver still got the query it was configured with.
    assert_eq!(delivered[0].query, format!("token={HOOK_TOKEN}"));

    let file = std::fs::read_to_string(&records).unwrap_or_default();
    assert!(file.contains("provider_error"), "{file}");
    assert_clean("the records file", &file);

    // Every line so far, the connect attempt at debug level included.
    let log = daemon.output();
    assert!(log.contains("call ended"), "{log}");
    assert_clean("the log", &log);
    daemon.stop().await;

    // `check` against the same refusing provider prints its refusal, scrubbed.
    let out = check_output(&toml).await;
    assert!(out.contains("provider openai: FAILED"), "{out}");
    assert!(out.contains("401"), "{out}");
    assert_clean("check's output", &out);
}

async fn check_output(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voicebridge.toml");
    std::fs::write(&path, toml).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .args(["check", "--config"])
        .arg(&path)
        .env("OPENAI_API_KEY", API_KEY)
        .output()
        .await
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_keys_from_an_env_file_and_prints_urls_redacted() {
    let provider = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, API_KEY)).await;
    let hooks = WebhookServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("voicebridge.toml");
    std::fs::write(
        &config,
        format!(
            "[call]\nprovider = \"openai\"\n[providers.openai]\nurl = \"{}\"\n\
             [call.context]\nurl = \"http://crm:{HOOK_PASS}@{}/lookup?token={HOOK_TOKEN}\"\n",
            provider_url(provider.addr),
            hooks.addr
        ),
    )
    .unwrap();
    // The key only in the file: nothing on the command line or in the environment.
    let env_file = dir.path().join("voicebridge.env");
    std::fs::write(
        &env_file,
        format!("# the unit's EnvironmentFile\nexport OPENAI_API_KEY=\"{API_KEY}\"\n"),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .args(["check", "--config"])
        .arg(&config)
        .arg("--env-file")
        .arg(&env_file)
        .env_remove("OPENAI_API_KEY")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("provider openai: OK"), "{text}");
    assert!(
        text.contains("/lookup?token=[redacted]"),
        "the lookup URL is shown redacted: {text}"
    );
    assert_clean("check's output", &text);
    // The key from the file is the one the provider received.
    provider
        .wait("the check's connection", |s| s.connections == 1)
        .await;
    provider
        .wait("Bearer key from the env file", |s| {
            s.headers
                .iter()
                .any(|(k, v)| k == "authorization" && v == &format!("Bearer {API_KEY}"))
        })
        .await;

    // A broken env file names the line, never its text.
    std::fs::write(&env_file, format!("{API_KEY}\n")).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .args(["check", "--config"])
        .arg(&config)
        .arg("--env-file")
        .arg(&env_file)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(err.contains("line 1: expected KEY=VALUE"), "{err}");
    assert_clean("the env-file error", &err);
}
