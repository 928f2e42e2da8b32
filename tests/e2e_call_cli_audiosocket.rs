//! `voicebridge call --protocol audiosocket` (the Asterisk AudioSocket stand-in for
//! admins) against the real daemon's `[[audiosocket]]` listener.

mod common;

use common::call::test_signal;
use common::daemon::{field, message, Daemon};
use common::http;
use serde::Deserialize;
use voicebridge::audio::signal::snr_db_within;

/// The `--json` summary, field for field (a documented contract).
#[allow(dead_code)] // Read through `Debug` in failure messages.
#[derive(Deserialize, Debug)]
struct Summary {
    protocol: String,
    call_id: String,
    addr: String,
    rate: u32,
    kind: u8,
    duration_ms: u64,
    frames_sent: u64,
    audio_sent_ms: u64,
    dtmf_sent: u64,
    frames_received: u64,
    audio_received_ms: u64,
    wrong_kind_messages: u64,
    underruns: u64,
    first_audio_latency_ms: Option<u64>,
    closed_by: String,
    hangup_received: bool,
    error: Option<String>,
    out_wav: Option<String>,
    out_ms: u64,
}

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
async fn call_over_audiosocket_records_the_echo_and_sends_dtmf() {
    let d = Daemon::start(
        "[call]\nprovider = \"echo\"\ndtmf_group_ms = 200\n[providers.echo]\nmode = \"stream\"\ndelay_ms = 200\n\
         [[audiosocket]]\nlisten = \"127.0.0.1:0\"\nroute = \"call\"\n",
        &[],
    )
    .await;
    let line = d
        .wait_log(|l| message(l).starts_with("AudioSocket listening"))
        .await;
    let addr = field(&line, "listen").as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    let output = dir.path().join("heard.wav");
    let rate = 16000;
    let caller = test_signal(rate, 2.0, 5);
    write_wav(&input, rate, &caller);
    let uuid = "3d1f0c7e-5b8a-4f61-9e2d-7c4b5a6f8e90";

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .arg("call")
        .arg(format!("{addr}/{uuid}"))
        .arg("--protocol")
        .arg("audiosocket")
        .arg("--wav")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .arg("--tail-secs")
        .arg("1")
        .arg("--dtmf")
        .arg("12#")
        .arg("--json")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Summary = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(s.protocol, "audiosocket");
    assert_eq!(s.call_id, uuid);
    assert_eq!(s.kind, 0x12, "16 kHz slin");
    assert_eq!(s.frames_sent, 100 + 50, "2 s of WAV + 1 s of tail");
    assert_eq!(s.dtmf_sent, 3);
    assert_eq!(s.closed_by, "client", "{s:?}");
    assert!(s.error.is_none(), "{s:?}");
    assert_eq!(s.wrong_kind_messages, 0, "replies in our kind");
    assert!(s.frames_received >= 100, "{s:?}");
    assert!(s.first_audio_latency_ms.is_some());

    // What the caller heard is the WAV, 200 ms later (plus a frame of play-out).
    let heard: Vec<i16> = hound::WavReader::open(&output)
        .unwrap()
        .into_samples::<i16>()
        .map(Result::unwrap)
        .collect();
    // Where the echo starts in the recording: 200 ms of echo delay, plus the frame in
    // flight and the ear's prebuffer; aligned on its first sound.
    let first = heard
        .iter()
        .position(|v| *v != 0)
        .expect("something was heard");
    println!("{s:?}: first sound at sample {first}");
    let start = first.saturating_sub(rate as usize / 100);
    let snr = snr_db_within(&caller, &heard[start..], rate as usize / 50);
    println!("voicebridge call --protocol audiosocket: SNR of what was heard {snr:.1} dB");
    assert!(snr > 60.0, "SNR {snr:.1}");

    let end = d.wait_call_end(uuid).await;
    assert_eq!(field(&end, "end_reason"), "freeswitch_closed");
    assert_eq!(field(&end, "fs_messages_in"), 150);
    let (_, body) = http::get(d.admin, "/metrics").await;
    assert_eq!(
        http::metric(
            &body,
            r#"voicebridge_dtmf_keys_total{route="call",mode="to_model"}"#
        ),
        Some(3.0),
        "{body}"
    );
    d.stop().await;
}

/// Nothing listening: the call cannot be placed, said in one line, exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_over_audiosocket_to_nothing_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    write_wav(&input, 8000, &[0i16; 800]);
    // A port just released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .arg("call")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--protocol")
        .arg("audiosocket")
        .arg("--wav")
        .arg(&input)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to 127.0.0.1"), "{err}");
}
