//! End to end on the Asterisk chan_websocket side with the Gemini Live and ElevenLabs
//! mocks (`e2e_asterisk_ws.rs` does OpenAI): the fake Asterisk channel
//! (`common::fake_asterisk_ws`, its 20 ms drained queue, marks and `FLUSH_MEDIA`), the
//! real `voicebridge` binary and the provider mock. Audio both ways with its SNR
//! measured, and a barge-in: `FLUSH_MEDIA` goes out once, and nothing of the cut reply
//! (whose late parts are a loud tone) is played after it.

mod common;

use common::daemon::{call_id, field, message, Daemon};
use common::fake_asterisk_ws::{dial, AsteriskOptions, Report};
use tokio::time::Instant;
use voicebridge::audio::signal::{sine, snr_db_within, speech_like, sweep};

const GEMINI_KEY: &str = "fake-gemini-test-key-0123456789";
const AGENT: &str = "agent_mock_7f3a";
const LEAD_MS: u64 = 60;

/// Starts with a sweep (for alignment), then speech; the same waveform at any rate.
fn signal(rate: u32, secs: f64, seed: u64) -> Vec<i16> {
    let mut s = sweep(rate, 300.0, 3400.0, -12.0, rate as usize * 3 / 10);
    s.extend(speech_like(rate, secs - 0.3, seed));
    s
}

fn le(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Frames with sound in them played after `from` and before `to`, except one fade-out
/// (sound only in its first 5 ms, the ramp a cut ends with).
fn sound_between(report: &Report, rate: u32, from: Instant, to: Instant) -> usize {
    let mut sounding = report
        .played
        .iter()
        .filter(|(at, _)| *at > from && *at < to)
        .map(|(_, f)| samples(f))
        .filter(|s| s.iter().any(|v| *v != 0))
        .peekable();
    let fade = rate as usize / 200;
    if sounding
        .peek()
        .is_some_and(|s| s[fade.min(s.len())..].iter().all(|v| *v == 0))
    {
        sounding.next();
    }
    sounding.count()
}

/// Every binary message is whole frames; the queue never reaches XOFF.
fn assert_well_fed(report: &Report, frame: usize) {
    assert!(report.error.is_none(), "{:?}", report.error);
    assert!(
        report.binary_sizes.iter().all(|n| n % frame == 0 && *n > 0),
        "whole {frame}-byte frames only"
    );
    assert_eq!(report.remainder_bytes_dropped, 0);
    assert_eq!(report.xoffs, 0);
    println!(
        "max Asterisk queue {} frames ({} ms)",
        report.max_queue,
        report.max_queue * 20
    );
}

/// The engine's played position at the cut against what the fake had played before
/// `FLUSH_MEDIA` came (never more, at most two frames less: see `e2e_asterisk_ws.rs`).
fn check_played_ms(daemon: &Daemon, report: &Report, id: &str) {
    let flushed = daemon
        .logs()
        .into_iter()
        .find(|l| message(l) == "barge-in: playback flushed" && call_id(l) == Some(id))
        .expect("the barge-in was logged");
    let played_ms = field(&flushed, "played_ms").as_u64().unwrap_or(u64::MAX);
    let flush_at = report.flushes[0];
    let heard_ms = report
        .played
        .iter()
        .filter(|(at, _)| *at < flush_at)
        .count() as u64
        * 20;
    println!("barge-in: engine says {played_ms} ms played, the fake Asterisk played {heard_ms} ms before FLUSH_MEDIA");
    assert!(
        played_ms <= heard_ms && heard_ms - played_ms <= 40,
        "{played_ms} vs {heard_ms}"
    );
}

/// Gemini (16 kHz in, 24 kHz out) on an 8 kHz slin channel: both resamplers each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_both_ways_and_a_barge_in_over_chan_websocket() {
    use common::mock_gemini::{MockGemini, MockOptions, TurnSpec};
    let mut opts = MockOptions::new(GEMINI_KEY);
    opts.voice = "Puck".to_owned();
    let mock = MockGemini::start(opts).await;
    let url = mock.url();
    let toml = format!(
        r#"
[freeswitch]
playback_lead_ms = {LEAD_MS}

[call]
provider = "gemini"
instructions = "You answer the phone for ACME."

[providers.gemini]
model = "models/gemini-2.5-flash-native-audio-preview-12-2025"
voice = "Puck"
"#
    );
    let d = Daemon::start(
        &toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__GEMINI__URL", url.as_str()),
            ("GEMINI_API_KEY", GEMINI_KEY),
        ],
    )
    .await;
    let id = "ast-gemini-1";
    let mut opts = AsteriskOptions::new(format!("/asterisk/call/{id}"), "slin");
    opts.speech = le(&signal(8000, 5.0, 5));
    let fake = dial(d.addr, opts).await.expect("upgrade accepted");
    mock.wait_ready(1).await;

    let mut long = TurnSpec::new(signal(24000, 4.0, 31));
    long.speed = 1.5;
    let base = fake.played.load(std::sync::atomic::Ordering::SeqCst);
    let playing = mock.play(long);
    fake.wait_played(base + 25).await;
    // 300 ms of a loud tone: obvious if it leaked.
    playing.interrupt(&sine(24000, 1000.0, -3.0, 7200)).await;
    d.wait_log(|l| message(l) == "barge-in: playback flushed" && call_id(l) == Some(id))
        .await;
    fake.wait_flushed().await;
    let before = fake.played.load(std::sync::atomic::Ordering::SeqCst);
    mock.play(TurnSpec::new(signal(24000, 1.0, 41)))
        .finish()
        .await;
    // The 1 s turn is 50 frames of 320 bytes.
    fake.wait_played(before + 50).await;
    fake.wait_spoken().await;
    let report = fake.hangup().await;
    let summary = d.wait_call_end(id).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    assert_well_fed(&report, 320);
    assert_eq!(report.flushes.len(), 1, "one FLUSH_MEDIA");
    let flush_at = report.flushes[0];
    let next_turn = mock.log(|l| l.turn_starts[1]);
    let leaked = sound_between(&report, 8000, flush_at, next_turn);
    assert_eq!(leaked, 0, "the cut turn was played after FLUSH_MEDIA");
    check_played_ms(&d, &report, id);

    // Gemini → Asterisk: 24 kHz down to 8 kHz.
    let after: Vec<i16> = report
        .played
        .iter()
        .filter(|(at, _)| *at >= next_turn)
        .flat_map(|(_, f)| samples(f))
        .collect();
    let reference = signal(8000, 1.0, 41);
    let n = after.len().min(reference.len());
    let snr_down = snr_db_within(&reference[..n], &after[..n], 160);
    // Asterisk → Gemini: 8 kHz up to 16 kHz.
    let conns = mock.conns();
    let snr_up = snr_db_within(&signal(16000, 5.0, 5), &conns[0].caller, 320);
    println!("SNR gemini→chan_websocket {snr_down:.1} dB, chan_websocket→gemini {snr_up:.1} dB");
    assert!(snr_down > 30.0, "downstream SNR {snr_down:.1} dB");
    assert!(snr_up > 30.0, "upstream SNR {snr_up:.1} dB");
    assert_eq!(field(&summary, "barge_ins"), 1);
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    assert!(!d.output().contains(GEMINI_KEY), "the key reached the logs");
    d.stop().await;
}

/// ElevenLabs (`pcm_16000` in, `pcm_24000` out) on an slin16 channel: caller audio
/// straight through, the agent's down to 16 kHz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_both_ways_and_a_barge_in_over_chan_websocket() {
    use common::mock_elevenlabs::{Cmd, MockEleven, MockOptions};
    const RATE: u32 = 16000;
    let mut opts = MockOptions::new(AGENT);
    opts.input_format = "pcm_16000";
    opts.output_format = "pcm_24000";
    let mock = MockEleven::start(opts).await;
    let url = mock.ws_url();
    let endpoint = mock.signed_url_endpoint();
    let toml = format!(
        "[freeswitch]\nplayback_lead_ms = {LEAD_MS}\n[call]\nprovider = \"elevenlabs\"\n\
         [providers.elevenlabs]\nagent_id = \"{AGENT}\"\n"
    );
    let d = Daemon::start(
        &toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__ELEVENLABS__URL", url.as_str()),
            (
                "VOICEBRIDGE__PROVIDERS__ELEVENLABS__SIGNED_URL_ENDPOINT",
                endpoint.as_str(),
            ),
        ],
    )
    .await;
    let id = "ast-eleven-1";
    let mut speech = sweep(RATE, 300.0, 3400.0, -12.0, RATE as usize / 2);
    speech.extend(speech_like(RATE, 1.5, 5));
    let mut opts = AsteriskOptions::new(format!("/asterisk/call/{id}"), "slin16");
    opts.speech = le(&speech);
    let fake = dial(d.addr, opts).await.expect("upgrade accepted");
    fake.wait_spoken().await;
    let frames = speech.len() / 320;
    mock.wait("caller audio", |s| s.caller.len() >= (frames - 2) * 320)
        .await;

    let base = fake.played.load(std::sync::atomic::Ordering::SeqCst);
    mock.send(Cmd::Respond {
        transcript: None,
        secs: 4.0,
    });
    fake.wait_played(base + 25).await;
    mock.send(Cmd::BargeIn);
    d.wait_log(|l| message(l) == "barge-in: playback flushed" && call_id(l) == Some(id))
        .await;
    fake.wait_flushed().await;
    mock.send(Cmd::Respond {
        transcript: Some("no, the other one".into()),
        secs: 1.0,
    });
    mock.wait("response K+1 sent", |s| s.responses.len() == 2)
        .await;
    let before = fake.played.load(std::sync::atomic::Ordering::SeqCst);
    // The 1 s answer at 16 kHz is 50 frames of 640 bytes.
    fake.wait_played(before + 49).await;
    let report = fake.hangup().await;
    let summary = d.wait_call_end(id).await;

    let errors = mock.recorded(|s| s.errors.clone());
    assert!(errors.is_empty(), "mock validation failures: {errors:#?}");
    assert_well_fed(&report, 640);
    assert_eq!(report.flushes.len(), 1, "one FLUSH_MEDIA");
    let flush_at = report.flushes[0];
    let next_at = mock
        .recorded(|s| s.responses[1].first_at)
        .expect("second response sent");
    let leaked = sound_between(&report, RATE, flush_at, next_at);
    assert_eq!(
        leaked, 0,
        "the interrupted response was played after FLUSH_MEDIA"
    );
    check_played_ms(&d, &report, id);

    // Upstream: 16 kHz straight to pcm_16000.
    let caller = mock.recorded(|s| s.caller.clone());
    let up = snr_db_within(&speech, &caller, 160);
    let after: Vec<i16> = report
        .played
        .iter()
        .filter(|(at, _)| *at >= next_at)
        .flat_map(|(_, f)| samples(f))
        .collect();
    // The mock's response is speech_like at 24 kHz; the same waveform at 16 kHz.
    let event_id = mock.recorded(|s| s.responses[1].event_id);
    let reference = speech_like(RATE, 1.0, 100 + event_id as u64);
    let n = after.len().min(reference.len());
    let down = snr_db_within(&reference[..n], &after[..n], 320);
    println!("SNR chan_websocket→ElevenLabs {up:.1} dB, ElevenLabs→chan_websocket {down:.1} dB");
    assert!(up > 60.0, "upstream SNR {up:.1} dB (no resampling)");
    assert!(down > 30.0, "downstream SNR {down:.1} dB");
    assert_eq!(field(&summary, "barge_ins"), 1);
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    d.stop().await;
}
