//! `voicebridge call --protocol asterisk-ws` (the chan_websocket stand-in for admins)
//! against the real daemon: Basic auth from the token, the echo heard back time-aligned,
//! marks answered, a clean close.

mod common;

use common::call::test_signal;
use common::daemon::{field, Daemon};
use serde::Deserialize;
use voicebridge::audio::signal::snr_db_within;

/// The summary the tool prints with `--json`, read as the contract it is.
#[allow(dead_code)] // Read through `Debug` in failure messages.
#[derive(Deserialize, Debug)]
struct Summary {
    url: String,
    format: String,
    duration_ms: u64,
    frames_sent: u64,
    frames_received: u64,
    frames_played: u64,
    empty_ticks: u64,
    marks_processed: u64,
    flushes: u64,
    answered: bool,
    hangup_command: bool,
    ignored_commands: u64,
    close_code: Option<u16>,
    closed_by: String,
    out_ms: u64,
}

const TOKEN: &str = "cli-asterisk-token-0123456789";

fn write_wav(path: &std::path::Path, rate: u32, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_command_plays_an_asterisk_channel_and_records_the_echo() {
    let toml = format!(
        "[server]\nauth_tokens = [\"{TOKEN}\"]\n[call]\nprovider = \"echo\"\n[providers.echo]\nmode = \"stream\"\ndelay_ms = 200\n"
    );
    let daemon = Daemon::start(&toml, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    let output = dir.path().join("heard.wav");
    let caller = test_signal(8000, 2.0, 5);
    write_wav(&input, 8000, &caller);

    let run = |token: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
            .arg("call")
            .arg("--protocol")
            .arg("asterisk-ws")
            .arg(format!("ws://{}/asterisk/call?call=cli-ast-1", daemon.addr))
            .arg("--wav")
            .arg(&input)
            .arg("--out")
            .arg(&output)
            .arg("--tail-ms")
            .arg("1000")
            .arg("--json")
            .env("VOICEBRIDGE_CALL_TOKEN", token)
            .output()
    };
    let out = run(TOKEN).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Summary = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary.format, "slin");
    assert_eq!(summary.frames_sent, 100 + 50, "2 s of WAV + 1 s of tail");
    assert!(summary.frames_played >= 100, "{summary:?}");
    assert!(
        summary.marks_processed > 0,
        "the daemon marks its playout: {summary:?}"
    );
    assert_eq!(summary.flushes, 0);
    assert_eq!(summary.closed_by, "us");
    assert_eq!(summary.close_code, Some(1000), "our Close echoed");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(TOKEN));

    let heard: Vec<i16> = hound::WavReader::open(&output)
        .unwrap()
        .into_samples::<i16>()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        heard.len() as u64,
        summary.frames_sent * 160,
        "one frame per tick"
    );
    let snr = snr_db_within(&caller, &heard[1600..], 1200);
    println!("call --protocol asterisk-ws: SNR {snr:.1} dB, {summary:?}");
    assert!(snr > 60.0, "SNR {snr:.1} dB");
    let end = daemon.wait_call_end("cli-ast-1").await;
    assert_eq!(field(&end, "end_reason"), "freeswitch_closed");

    // A wrong token: refused, exit 1, with the status.
    let out = run("wrong").await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(
        !err.contains("call=cli-ast-1"),
        "the query is not printed: {err}"
    );
    daemon.stop().await;
}
