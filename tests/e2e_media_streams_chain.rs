//! The two Twilio directions joined: the fake FreeSWITCH → voicebridge A (provider
//! `media_streams`, playing Twilio's part) → voicebridge B's own inbound `/twilio/call`
//! (the carrier side) → B's echo provider, and back. Two real daemons over loopback:
//! what one sends as a carrier the other must accept as a carrier stream, marks included.

mod common;

use common::call::{send_paced, Call, Playback};
use common::daemon::{field, Daemon};
use voicebridge::audio::signal::{snr_db_within, speech_like, sweep};

fn backend_b() -> String {
    r#"
[call]
provider = "echo"

[providers.echo]
mode = "stream"
"#
    .to_owned()
}

fn front_a() -> String {
    r#"
[freeswitch]
playback = "binary"
playback_lead_ms = 60

[call]
provider = "media_streams"
"#
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeswitch_to_voicebridge_to_voicebridge_twilio_to_echo() {
    let b = Daemon::start(&backend_b(), &[]).await;
    let url = format!("ws://{}/twilio/call", b.addr);
    let a = Daemon::start(
        &front_a(),
        &[("VOICEBRIDGE__PROVIDERS__MEDIA_STREAMS__URL", url.as_str())],
    )
    .await;
    let id = "chain-1";
    let call = Call::connect(&a, "call", id, "rate=8000&channels=mono").await;
    call.writer
        .send_text(&format!(r#"{{"uuid":"{id}","caller_id":"+3902123"}}"#))
        .await
        .unwrap();
    let mut speech = sweep(8000, 300.0, 3400.0, -12.0, 2400);
    speech.extend(speech_like(8000, 2.0, 5));
    send_paced(&call.writer, &speech, 8000, 1).await;
    // The echo comes back through B's Twilio leg and A's provider: at least 1.5 s of it.
    call.wait_received(75).await;
    let (_, got) = call.close().await;
    let a_end = a.wait_call_end(id).await;
    // B's call is the carrier stream A opened; it ends when A sends `stop` and closes.
    let b_end = b
        .wait_log(|l| common::daemon::message(l) == "call ended")
        .await;

    assert_eq!(field(&a_end, "provider"), "media_streams");
    assert_eq!(field(&b_end, "provider"), "echo");
    assert_eq!(field(&b_end, "route"), "call");
    let heard: Vec<i16> = got
        .events
        .iter()
        .filter_map(|e| match e {
            Playback::Audio { samples, .. } => Some(samples.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    // One μ-law round (A encodes for the stream, B's echo returns the same bytes).
    let n = heard.len().min(speech.len());
    let snr = snr_db_within(&speech[..n], &heard, 8000);
    println!("FreeSWITCH → A → B (Twilio) → echo → back: SNR {snr:.1} dB over {n} samples");
    assert!(snr > 25.0, "SNR {snr:.1} dB");
    // Nothing on the carrier side went wrong (no bad input, no refused message).
    assert!(
        !b.logs().iter().any(|l| l["level"] == "ERROR"),
        "no error on the carrier side:\n{}",
        b.output()
    );
    a.stop().await;
    b.stop().await;
}
