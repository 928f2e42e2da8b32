//! Text a peer chooses cannot hurt the process's own outputs: a provider's error codes
//! do not become unbounded metric series, and a FreeSWITCH text frame cannot forge a
//! line in the human (`pretty`) log. Real binary, real sockets.

mod common;

use common::call::Call;
use common::daemon::{field, Daemon};
use common::http;
use common::mock_openai::{MockFormat, MockOpenAi, MockOptions, Script};

const KEY: &str = "fake-openai-test-key-peer-text-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_error_codes_are_a_fixed_label_set() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let toml = "[call]\nprovider = \"openai\"\n[providers.openai]\naudio_format = \"pcmu\"\n";
    let url = mock.url();
    let daemon = Daemon::start(
        toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.as_str()),
            ("OPENAI_API_KEY", KEY),
        ],
    )
    .await;
    let call = Call::connect(&daemon, "call", "codes-1", "rate=8000").await;
    call.writer
        .send_audio(&common::call::l16(&[0; 160]))
        .await
        .unwrap();
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    // A peer inventing a code per event; then one known code, then a marker to await.
    const INVENTED: usize = 300;
    for i in 0..INVENTED {
        mock.script(Script::Error {
            code: format!("invented_{i}"),
            message: "x".into(),
        });
    }
    mock.script(Script::Error {
        code: "rate_limit_exceeded".into(),
        message: "slow down".into(),
    });
    mock.script(Script::Error {
        code: "invented_last".into(),
        message: "x".into(),
    });
    // Each error is logged with the code as received (the log keeps the detail).
    daemon
        .wait_log(|l| field(l, "code") == "invented_last")
        .await;

    let (_, metrics) = http::get(daemon.admin, "/metrics").await;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("voicebridge_provider_errors_total{"))
        .collect();
    assert_eq!(series.len(), 2, "{series:#?}");
    let value = |code: &str| -> f64 {
        series
            .iter()
            .find(|l| l.contains(&format!("code=\"{code}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {code} series: {series:#?}"))
    };
    assert_eq!(value("other"), (INVENTED + 1) as f64);
    assert_eq!(value("rate_limit_exceeded"), 1.0);
    call.writer.close().await.unwrap();
    daemon.wait_call_end("codes-1").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_cannot_forge_a_pretty_log_line() {
    let toml = "[call]\nprovider = \"echo\"\n[providers.echo]\nmode = \"stream\"\ndelay_ms = 0\n";
    let daemon = Daemon::start_pretty(toml, &[]).await;
    let call = Call::connect(&daemon, "call", "forge-1", "rate=8000").await;
    call.writer
        .send_text(r#"{"caller_id":"+100"}"#)
        .await
        .unwrap();
    let forged = "2026-01-01T00:00:00.000000Z  WARN admin password changed";
    call.writer
        .send_text(&format!("hello\n{forged}\r\n\u{1b}[2Kcleared"))
        .await
        .unwrap();
    let line = daemon
        .wait_raw(|l| l.contains("text from FreeSWITCH"))
        .await;
    assert!(
        line.contains(&format!("hello\\n{forged}\\r\\n\\u{{1b}}[2Kcleared")),
        "the value is escaped in place: {line}"
    );
    call.writer.close().await.unwrap();
    daemon.wait_raw(|l| l.contains("call ended")).await;
    let out = daemon.output();
    assert!(
        !out.lines().any(|l| l.starts_with("2026-01-01T00:00:00")),
        "a forged line appeared:\n{out}"
    );
    assert!(
        !out.contains('\u{1b}'),
        "no raw ESC reaches the log:\n{out}"
    );
    daemon.stop().await;
}
