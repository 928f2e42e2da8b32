//! Hand measurements, not tests (ignored; nothing here is asserted against a
//! threshold): the daemon's peak RSS while one call's provider floods it with audio and
//! while a caller lookup answers a huge body. Run against the release binary:
//!
//! ```sh
//! cargo test --release --test measure_memory -- --ignored --nocapture --test-threads 1
//! ```

mod common;

use base64::Engine;
use common::call::Call;
use common::daemon::{message, Daemon};
use common::mock_openai::{MockFormat, MockOpenAi, MockOptions, Script};
use common::webhook_server::{Reply, WebhookServer};
use serde_json::json;

const KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";

fn config(extra: &str) -> String {
    format!(
        r#"
[server]
drain_timeout_secs = 1

[call]
provider = "openai"
instructions = "The caller is {{{{ pad | unknown }}}}."

[providers.openai]
audio_format = "pcmu"

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

fn report(what: &str, idle: Option<u64>, peak: Option<u64>) {
    let mb = |k: Option<u64>| k.map_or("?".to_owned(), |k| format!("{:.1} MB", k as f64 / 1024.0));
    println!("{what}: peak RSS {} (idle {})", mb(peak), mb(idle));
}

/// Up to 150 MB of μ-law (1875 deltas of 10 s each) sent to one call within 7.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
async fn peak_rss_under_a_provider_flood() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let daemon = start(&config(""), &mock).await;
    let idle = daemon.peak_rss_kib();
    let _call = Call::with_caller(&daemon, "flood", 8000, 60.0).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let delta = json!({
        "type": "response.output_audio.delta", "event_id": "e", "response_id": "r1",
        "item_id": "i1", "output_index": 0, "content_index": 0,
        "delta": base64::engine::general_purpose::STANDARD.encode(vec![0xFFu8; 80_000]),
    })
    .to_string();
    // 25 deltas (250 s of audio) every 100 ms: 150 MB in 7.5 s, unless the daemon ends
    // the call first (`provider_flood`).
    let flood = async {
        for _ in 0..75 {
            for _ in 0..25 {
                mock.script(Script::Raw(delta.clone()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    };
    let summary = tokio::select! {
        s = daemon.wait_call_end("flood") => s,
        () = flood => unreachable!(),
    };
    report(
        "provider flood, 150 MB of audio",
        idle,
        daemon.peak_rss_kib(),
    );
    println!("  call ended: {}", summary["fields"]["end_reason"]);
    daemon.stop().await;
}

/// A caller lookup answering 300 MB (streamed, no Content-Length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
async fn peak_rss_under_a_huge_lookup_answer() {
    let hooks = WebhookServer::start().await;
    hooks.respond("/lookup", Reply::Huge(300 * 1024 * 1024));
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let lookup = format!(
        "[call.context]\nurl = \"{}\"\ntimeout_ms = 5000\n",
        hooks.url("/lookup")
    );
    let daemon = start(&config(&lookup), &mock).await;
    let idle = daemon.peak_rss_kib();
    let _call = Call::with_caller(&daemon, "huge-lookup", 8000, 10.0).await;
    let outcome = daemon
        .wait_log(|l| message(l).starts_with("caller lookup"))
        .await;
    report(
        "caller lookup answering 300 MB",
        idle,
        daemon.peak_rss_kib(),
    );
    println!("  {}: {}", message(&outcome), outcome["fields"]["error"]);
    daemon.stop().await;
}
