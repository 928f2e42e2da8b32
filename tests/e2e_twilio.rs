//! End to end over loopback: the real `voicebridge` binary and a fake carrier
//! (`common::fake_twilio`, faithful to Twilio Media Streams and Telnyx bidirectional
//! streaming) on the `/twilio/<route>` and `/telnyx/<route>` paths: fidelity both
//! ways, played-position marks, barge-in with `clear`, DTMF, the signature check, and
//! bad input.

mod common;

use common::daemon::{field, message, Daemon};
use common::fake_twilio::{FakeTwilio, TwilioOptions};
use voicebridge::audio::g711;
use voicebridge::audio::signal::snr_db_within;

const LEAD_MS: u64 = 60;

fn echo_config(mode: &str, extra: &str) -> String {
    format!(
        r#"
[freeswitch]
playback_lead_ms = {LEAD_MS}

[call]
provider = "echo"

[providers.echo]
mode = "{mode}"
delay_ms = 200
sample_rate = 24000
{extra}
"#
    )
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

/// The summary line of the call whose record names `call_sid`.
async fn call_summary(daemon: &Daemon) -> serde_json::Value {
    daemon.wait_log(|l| message(l) == "call ended").await
}

/// μ-law 8 kHz both ways through the echo at 24 kHz: what the fake played is what it
/// sent, 200 ms later; only text frames, every message with the stream's id, marks
/// echoed as played.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_echo_roundtrip() {
    let daemon = Daemon::start(&echo_config("stream", ""), &[]).await;
    let mut fake = FakeTwilio::connect(daemon.addr, TwilioOptions::twilio("call"))
        .await
        .expect("accepted");
    let caller = common::call::test_signal(8000, 3.0, 7);
    let mut sent = ulaw(&caller);
    sent.extend(ulaw(&vec![0i16; 4000])); // lets the last 200 ms + lead come back
    fake.send_paced(&sent).await;
    let expected = caller.len() + 1600;
    fake.wait("the echo played", |s| s.played.len() >= expected)
        .await;
    // Once everything received has played, every mark has come back.
    fake.wait("all played", |s| {
        s.played.len() == s.media_bytes() && s.echoed.len() == s.marks_sent()
    })
    .await;
    let fake = fake.finish().await;

    let (played, problems, media_sizes, echoed, marks) = fake.with(|s| {
        let sizes: Vec<usize> = s
            .got
            .iter()
            .filter_map(|g| match g {
                common::fake_twilio::Got::Media { payload, .. } => Some(payload.len()),
                _ => None,
            })
            .collect();
        (
            s.played.clone(),
            s.problems.clone(),
            sizes,
            s.echoed.len(),
            s.marks_sent(),
        )
    });
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        media_sizes.iter().all(|n| *n == 160),
        "every media is 20 ms"
    );
    assert!(marks >= 20, "a mark every 100 ms of audio: {marks}");
    assert_eq!(echoed, marks, "every mark came back");
    let played_ms = played.len() as u64 / 8;
    println!("played {played_ms} ms, {marks} marks");
    let back = unulaw(&played);
    let back = &back[1600..];
    let snr = snr_db_within(&caller, back, 80);
    println!("SNR twilio echo (μ-law twice, 8k<->24k): {snr:.1} dB");
    // Two μ-law quantisations bound it near 37 dB; a click, a gap or a wrong codec
    // would be far below.
    assert!(snr > 30.0, "SNR {snr:.1} dB");

    let summary = call_summary(&daemon).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    assert_eq!(field(&summary, "frames_dropped"), 0);
    daemon.stop().await;
}
