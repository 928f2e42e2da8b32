//! End to end on the AudioSocket side with the Gemini Live mock (`common::mock_gemini`)
//! and the fake Asterisk, in the `AudioSocket()` application's format (8 kHz slin):
//! caller audio up to Gemini's 16 kHz, Gemini's 24 kHz down to 8 kHz, and a barge-in
//! whose late parts (a loud tone) never reach Asterisk.

mod common;

use std::net::SocketAddr;

use common::daemon::{call_id, field, message, Daemon};
use common::fake_audiosocket::Asterisk;
use common::mock_gemini::{MockGemini, MockOptions, TurnSpec};
use voicebridge::audio::signal::{sine, snr_db_within, speech_like, sweep};

const KEY: &str = "fake-gemini-test-key-0123456789";

const CONFIG: &str = r#"
[call]
provider = "gemini"
instructions = "You answer the phone for ACME."

[providers.gemini]
model = "models/gemini-2.5-flash-native-audio-preview-12-2025"
voice = "Puck"

[[audiosocket]]
listen = "127.0.0.1:0"
route = "call"
"#;

/// Starts with a sweep (for alignment), then speech; the same waveform at any rate.
fn signal(rate: u32, secs: f64, seed: u64) -> Vec<i16> {
    let mut s = sweep(rate, 300.0, 3400.0, -12.0, rate as usize * 3 / 10);
    s.extend(speech_like(rate, secs - 0.3, seed));
    s
}

async fn audiosocket_addr(d: &Daemon) -> SocketAddr {
    let line = d
        .wait_log(|l| message(l).starts_with("AudioSocket listening"))
        .await;
    field(&line, "listen")
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("AudioSocket address in the log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_both_ways_and_a_barge_in_over_audiosocket() {
    let mut opts = MockOptions::new(KEY);
    opts.voice = "Puck".to_owned();
    let mock = MockGemini::start(opts).await;
    let url = mock.url();
    let d = Daemon::start(
        CONFIG,
        &[
            ("VOICEBRIDGE__PROVIDERS__GEMINI__URL", url.as_str()),
            ("GEMINI_API_KEY", KEY),
        ],
    )
    .await;
    let addr = audiosocket_addr(&d).await;
    let uuid = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    let mut ast = Asterisk::call(addr, uuid).await;
    let watch = ast.watch();
    let caller = signal(8000, 5.0, 5);
    let to_send = caller.clone();
    let talker = tokio::spawn(async move {
        ast.send_paced(&to_send, 8000).await;
        ast
    });
    mock.wait_ready(1).await;

    let mut long = TurnSpec::new(signal(24000, 4.0, 31));
    long.speed = 1.5;
    // Frames before the turn are voicebridge's keep-alive silence.
    let base = watch.frames();
    let playing = mock.play(long);
    watch.wait_frames(base + 25).await;
    // 300 ms of a loud tone: would be obvious if it leaked.
    playing.interrupt(&sine(24000, 1000.0, -3.0, 7200)).await;
    d.wait_log(|l| message(l) == "barge-in: playback flushed" && call_id(l) == Some(uuid))
        .await;
    let before = watch.frames();
    mock.play(TurnSpec::new(signal(24000, 1.0, 41)))
        .finish()
        .await;
    // The 1 s turn is 50 frames; the fade-out is one more message.
    watch.wait_frames(before + 50).await;
    let ast = talker.await.unwrap();
    let heard = ast.hang_up().await;
    let summary = d.wait_call_end(uuid).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    assert!(heard.bad.is_empty(), "{:?}", heard.bad);
    assert!(
        heard.frames.iter().all(|(_, kind, _)| *kind == 0x10),
        "8 kHz slin back, Asterisk's own kind"
    );
    let fade = heard
        .frames
        .iter()
        .position(|(_, _, s)| s.len() < 160)
        .expect("the fade-out after the cut");
    assert_eq!(heard.frames[fade].2.len(), 40, "5 ms at 8 kHz");
    let next_turn = mock.log(|l| l.turn_starts[1]);
    let leaked = heard.frames[fade + 1..]
        .iter()
        .filter(|(at, _, s)| *at < next_turn && s.iter().any(|v| *v != 0))
        .count();
    assert_eq!(leaked, 0, "late parts of the cut turn reached Asterisk");

    // Gemini → Asterisk: 24 kHz down to 8 kHz.
    let after: Vec<i16> = heard.frames[fade + 1..]
        .iter()
        .filter(|(at, _, _)| *at >= next_turn)
        .flat_map(|(_, _, s)| s.iter().copied())
        .collect();
    let reference = signal(8000, 1.0, 41);
    let n = after.len().min(reference.len());
    let snr_down = snr_db_within(&reference[..n], &after[..n], 160);
    // Asterisk → Gemini: 8 kHz up to 16 kHz.
    let conns = mock.conns();
    let snr_up = snr_db_within(&signal(16000, 5.0, 5), &conns[0].caller, 320);
    println!("SNR gemini→Asterisk {snr_down:.1} dB, Asterisk→gemini {snr_up:.1} dB");
    assert!(snr_down > 30.0 && snr_up > 30.0);
    assert_eq!(field(&summary, "barge_ins"), 1);
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    d.stop().await;
}
