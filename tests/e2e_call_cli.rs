//! `voicebridge call` (the FreeSWITCH stand-in for admins) against the real daemon.

mod common;

use common::call::test_signal;
use common::daemon::{field, Daemon};
use serde::Deserialize;
use voicebridge::audio::signal::{snr_db_within, speech_like};

/// `voicebridge call --json`'s summary, field for field: the tool lives in the binary, so
/// its output is read here as the documented contract it is (every field must be there,
/// with its type).
#[allow(dead_code)] // Read through `Debug` in failure messages.
#[derive(Deserialize, Debug)]
struct CallSummary {
    call_id: String,
    url: String,
    format: FormatSummary,
    duration_ms: u64,
    interrupted: bool,
    metadata_sent: bool,
    metadata_after_frames: Option<u64>,
    frames_sent: u64,
    bytes_sent: u64,
    tail_frames_sent: u64,
    audio_sent_ms: u64,
    frames_received: u64,
    bytes_received: u64,
    audio_received_ms: u64,
    text_messages_received: u64,
    stream_audio_messages: u64,
    clear_audio_count: u64,
    other_text_messages: u64,
    last_other_texts: Vec<String>,
    first_audio_latency_ms: Option<u64>,
    speech_end_offset_ms: Option<u64>,
    speech_end_to_first_audio_ms: Option<u64>,
    responses: u64,
    underrun_gaps: u64,
    underrun_max_ms: u64,
    raw_rate_mismatches: u64,
    bad_playback_messages: u64,
    playback_errors: Vec<String>,
    pings_sent: u64,
    pongs_received: u64,
    pings_received: u64,
    out_wav: Option<String>,
    out_ms: u64,
    close: CloseSummary,
}

#[allow(dead_code)]
#[derive(Deserialize, Debug)]
struct FormatSummary {
    codec: String,
    rate: u32,
    channels: String,
    frame_ms: u32,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
enum ClosedBy {
    Client,
    Server,
    None,
}

#[allow(dead_code)]
#[derive(Deserialize, Debug)]
struct CloseSummary {
    by: ClosedBy,
    code: Option<u16>,
    reason: Option<String>,
    echoed: Option<bool>,
    echoed_within_1s: Option<bool>,
    echo_code: Option<u16>,
    echo_ms: Option<u64>,
    error: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_command_streams_a_wav_and_records_the_echo() {
    let daemon = Daemon::start(
        "[call]\nprovider = \"echo\"\n[providers.echo]\nmode = \"stream\"\ndelay_ms = 200\n",
        &[],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    let output = dir.path().join("heard.wav");
    let caller = test_signal(8000, 2.0, 5);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&input, spec).unwrap();
    for s in &caller {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .arg("call")
        .arg(format!("ws://{}/call/cli-1", daemon.addr))
        .arg("--wav")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .arg("--tail-secs")
        .arg("1")
        .arg("--json")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: CallSummary = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(
        summary.frames_sent,
        100 + 50,
        "2 s of WAV + 1 s of tail in 20 ms frames"
    );
    assert!(summary.frames_received >= 100, "{summary:?}");
    assert!(summary.first_audio_latency_ms.is_some());
    assert_eq!(summary.raw_rate_mismatches, 0);
    assert_eq!(summary.close.echoed, Some(true));

    // What the caller heard is the WAV, 200 ms (+ the lead) later.
    let heard: Vec<i16> = hound::WavReader::open(&output)
        .unwrap()
        .into_samples::<i16>()
        .map(Result::unwrap)
        .collect();
    let snr = snr_db_within(&caller, &heard[1600..], 1200);
    println!("voicebridge call: SNR of what was heard {snr:.1} dB");
    assert!(snr > 60.0, "SNR {snr:.1}");

    let s = daemon.wait_call_end("cli-1").await;
    assert_eq!(field(&s, "end_reason"), "freeswitch_closed");
    assert_eq!(field(&s, "fs_messages_in"), 150);
    daemon.stop().await;
}

/// 7.6 s of continuous speech to the utterance echo (which answers after the caller
/// stops, like an AI): by default the call stays open until the whole reply has played,
/// so the recording holds all of it (with the old fixed 3 s tail only 2.5 s of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_command_by_default_hears_the_whole_answer() {
    let daemon = Daemon::start(
        "[call]\nprovider = \"echo\"\n[providers.echo]\nmode = \"utterance\"\n",
        &[],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    let output = dir.path().join("heard.wav");
    let caller = speech_like(8000, 7.6, 11);
    write_wav(&input, &caller);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voicebridge"))
        .arg("call")
        .arg(format!("ws://{}/call/cli-whole", daemon.addr))
        .arg("--wav")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .arg("--json")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: CallSummary = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary.close.echoed, Some(true));
    let heard: Vec<i16> = hound::WavReader::open(&output)
        .unwrap()
        .into_samples::<i16>()
        .map(Result::unwrap)
        .collect();
    // The reply begins after the WAV: its loud span is as long as what was said (the
    // echo repeats it), give or take the 100 ms its endpointing may trim.
    let loud_span = |x: &[i16]| {
        let first = x.iter().position(|s| s.unsigned_abs() > 300)?;
        let last = x.iter().rposition(|s| s.unsigned_abs() > 300)?;
        Some(last - first)
    };
    let said = loud_span(&caller).unwrap();
    let replied = loud_span(&heard[caller.len()..]).expect("a reply was heard");
    println!(
        "voicebridge call: reply of {} ms recorded for {} ms said, tail {} frames",
        replied / 8,
        said / 8,
        summary.tail_frames_sent
    );
    assert!(
        replied + 800 >= said,
        "{} ms of the {} ms reply recorded: {summary:?}",
        replied / 8,
        said / 8
    );
    assert_eq!(summary.responses, 1, "{summary:?}");
    daemon.wait_call_end("cli-whole").await;
    daemon.stop().await;
}

fn write_wav(path: &std::path::Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}
