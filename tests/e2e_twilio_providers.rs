//! Twilio Media Streams inbound with the Gemini Live and ElevenLabs mocks
//! (`e2e_twilio.rs` does OpenAI): the fake carrier (`common::fake_twilio`, μ-law 8 kHz,
//! playing what it receives in real time), the real `voicebridge` binary and the
//! provider mock. Audio both ways with its SNR measured (μ-law once each way bounds it
//! near 37 dB), and a barge-in: one `clear`, and nothing of the cut reply (whose late
//! parts are a loud tone) sent after it.

mod common;

use std::time::Instant;

use common::daemon::{field, message, Daemon};
use common::fake_twilio::{FakeTwilio, Got, TwilioOptions, TwilioState};
use voicebridge::audio::g711;
use voicebridge::audio::signal::{sine, snr_db_within, speech_like, sweep};

const GEMINI_KEY: &str = "fake-gemini-test-key-0123456789";
const AGENT: &str = "agent_mock_7f3a";

fn signal(rate: u32, secs: f64, seed: u64) -> Vec<i16> {
    let mut s = sweep(rate, 300.0, 3400.0, -12.0, rate as usize * 3 / 10);
    s.extend(speech_like(rate, secs - 0.3, seed));
    s
}

fn ulaw(samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    g711::ulaw_encode(samples, &mut out);
    out
}

fn unulaw(bytes: &[u8]) -> Vec<i16> {
    let mut out = Vec::new();
    g711::ulaw_decode(bytes, &mut out);
    out
}

/// `media` with sound in it received after `from` and before `to`, except one fade-out
/// (sound only in its first 5 ms).
fn sound_between(s: &TwilioState, from: Instant, to: Instant) -> usize {
    let mut sounding = s
        .got
        .iter()
        .filter_map(|g| match g {
            Got::Media { at, payload } if *at > from && *at < to => Some(unulaw(payload)),
            _ => None,
        })
        .filter(|x| x.iter().any(|v| v.unsigned_abs() > 8))
        .peekable();
    if sounding
        .peek()
        .is_some_and(|x| x[40.min(x.len())..].iter().all(|v| v.unsigned_abs() <= 8))
    {
        sounding.next();
    }
    sounding.count()
}

fn media_after(s: &TwilioState, from: Instant) -> Vec<i16> {
    s.got
        .iter()
        .filter_map(|g| match g {
            Got::Media { at, payload } if *at >= from => Some(unulaw(payload)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The engine's played position at the cut against what the carrier had played when
/// the `clear` came: within the ±20 ms the truncate promises.
fn report_barge_in(d: &Daemon, fake: &FakeTwilio) {
    let flushed = d
        .logs()
        .into_iter()
        .find(|l| message(l) == "barge-in: playback flushed")
        .expect("the barge-in was logged");
    let played_ms = field(&flushed, "played_ms").as_u64().unwrap_or(u64::MAX);
    let heard_ms = fake.with(|s| s.played_at_clear[0]) as u64 / 8;
    println!("barge-in: engine says {played_ms} ms played, the fake Twilio had played {heard_ms} ms at the clear");
    // The played position comes from the carrier's marks (each names a whole chunk) and
    // our own clock between them, so it may pass what the fake had played by rounding;
    // the contract for the truncate is ±20 ms.
    assert!(
        played_ms.abs_diff(heard_ms) <= 20,
        "{played_ms} vs {heard_ms}"
    );
}

fn clear_at(s: &TwilioState) -> Option<Instant> {
    s.got.iter().find_map(|g| match g {
        Got::Clear { at, .. } => Some(*at),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_both_ways_and_a_barge_in_over_twilio() {
    use common::mock_gemini::{MockGemini, MockOptions, TurnSpec};
    let mut opts = MockOptions::new(GEMINI_KEY);
    opts.voice = "Puck".to_owned();
    let mock = MockGemini::start(opts).await;
    let url = mock.url();
    let toml = "[call]\nprovider = \"gemini\"\n[providers.gemini]\n\
                model = \"models/gemini-2.5-flash-native-audio-preview-12-2025\"\nvoice = \"Puck\"\n";
    let d = Daemon::start(
        toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__GEMINI__URL", url.as_str()),
            ("GEMINI_API_KEY", GEMINI_KEY),
        ],
    )
    .await;
    let fake = FakeTwilio::connect(d.addr, TwilioOptions::twilio("call"))
        .await
        .expect("accepted");
    mock.wait_ready(1).await;
    let caller = signal(8000, 2.0, 5);
    fake.send_paced(&ulaw(&caller)).await;
    mock.wait("caller audio", |l| l.conns[0].caller.len() >= 30000)
        .await;

    let mut long = TurnSpec::new(signal(24000, 4.0, 31));
    long.speed = 1.5;
    let playing = mock.play(long);
    fake.wait("500 ms played", |s| s.played.len() >= 4000).await;
    playing.interrupt(&sine(24000, 1000.0, -3.0, 7200)).await;
    d.wait_log(|l| message(l) == "barge-in: playback flushed")
        .await;
    fake.wait("the clear", |s| s.clears() == 1).await;
    let before = fake.with(|s| s.media_bytes());
    mock.play(TurnSpec::new(signal(24000, 1.0, 41)))
        .finish()
        .await;
    fake.wait("the next turn", |s| s.media_bytes() >= before + 7800)
        .await;
    let fake = fake.finish().await;
    let summary = d.wait_log(|l| message(l) == "call ended").await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    let next_turn = mock.log(|l| l.turn_starts[1]);
    let (problems, leaked, after, clears) = fake.with(|s| {
        let cut = clear_at(s).expect("a clear");
        (
            s.problems.clone(),
            sound_between(s, cut, next_turn.into_std()),
            media_after(s, next_turn.into_std()),
            s.clears(),
        )
    });
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(clears, 1, "one clear");
    assert_eq!(leaked, 0, "the cut turn was sent after the clear");
    let reference = signal(8000, 1.0, 41);
    let n = after.len().min(reference.len());
    let down = snr_db_within(&reference[..n], &after[..n], 160);
    let up = snr_db_within(&signal(16000, 2.0, 5), &mock.conns()[0].caller, 320);
    println!("SNR gemini→Twilio {down:.1} dB, Twilio→gemini {up:.1} dB");
    assert!(down > 25.0, "downstream SNR {down:.1} dB");
    assert!(up > 25.0, "upstream SNR {up:.1} dB");
    report_barge_in(&d, &fake);
    assert_eq!(field(&summary, "barge_ins"), 1);
    assert!(!d.output().contains(GEMINI_KEY));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_both_ways_and_a_barge_in_over_twilio() {
    use common::mock_elevenlabs::{Cmd, MockEleven, MockOptions};
    let mut opts = MockOptions::new(AGENT);
    opts.output_format = "pcm_24000";
    let mock = MockEleven::start(opts).await;
    let url = mock.ws_url();
    let endpoint = mock.signed_url_endpoint();
    let toml = format!(
        "[call]\nprovider = \"elevenlabs\"\n[providers.elevenlabs]\nagent_id = \"{AGENT}\"\n"
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
    let fake = FakeTwilio::connect(d.addr, TwilioOptions::twilio("call"))
        .await
        .expect("accepted");
    mock.wait("the conversation", |s| s.init.is_some()).await;
    let caller = signal(8000, 2.0, 5);
    fake.send_paced(&ulaw(&caller)).await;
    mock.wait("caller audio", |s| s.caller.len() >= 30000).await;

    mock.send(Cmd::Respond {
        transcript: None,
        secs: 4.0,
    });
    fake.wait("500 ms played", |s| s.played.len() >= 4000).await;
    mock.send(Cmd::BargeIn);
    d.wait_log(|l| message(l) == "barge-in: playback flushed")
        .await;
    fake.wait("the clear", |s| s.clears() == 1).await;
    let before = fake.with(|s| s.media_bytes());
    mock.send(Cmd::Respond {
        transcript: Some("no, the other one".into()),
        secs: 1.0,
    });
    fake.wait("the next response", |s| s.media_bytes() >= before + 7800)
        .await;
    let fake = fake.finish().await;
    let summary = d.wait_log(|l| message(l) == "call ended").await;

    let errors = mock.recorded(|s| s.errors.clone());
    assert!(errors.is_empty(), "{errors:#?}");
    let next_at = mock
        .recorded(|s| s.responses[1].first_at)
        .expect("second response sent");
    let (problems, leaked, after, clears) = fake.with(|s| {
        let cut = clear_at(s).expect("a clear");
        (
            s.problems.clone(),
            sound_between(s, cut, next_at.into_std()),
            media_after(s, next_at.into_std()),
            s.clears(),
        )
    });
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(clears, 1, "one clear");
    assert_eq!(
        leaked, 0,
        "the interrupted response was sent after the clear"
    );
    let event_id = mock.recorded(|s| s.responses[1].event_id);
    let reference = speech_like(8000, 1.0, 100 + event_id as u64);
    let n = after.len().min(reference.len());
    let down = snr_db_within(&reference[..n], &after[..n], 160);
    let up = snr_db_within(
        &signal(16000, 2.0, 5),
        &mock.recorded(|s| s.caller.clone()),
        320,
    );
    println!("SNR ElevenLabs→Twilio {down:.1} dB, Twilio→ElevenLabs {up:.1} dB");
    assert!(down > 25.0, "downstream SNR {down:.1} dB");
    assert!(up > 25.0, "upstream SNR {up:.1} dB");
    report_barge_in(&d, &fake);
    assert_eq!(field(&summary, "barge_ins"), 1);
    d.stop().await;
}
