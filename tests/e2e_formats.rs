//! Inbound formats other than FreeSWITCH's L16: G.711 clients (`codec=PCMU|PCMA`), and
//! the format given by the metadata frame when the URL does not say it.

mod common;

use common::call::{send_paced, test_signal, Call, Playback};
use common::daemon::{field, message, Daemon};
use voicebridge::audio::g711;
use voicebridge::audio::signal::snr_db_within;

fn config(playback: &str) -> String {
    format!(
        "[freeswitch]\nplayback = \"{playback}\"\n[call]\nprovider = \"echo\"\n\
         [providers.echo]\nmode = \"stream\"\ndelay_ms = 200\nsample_rate = 24000\n"
    )
}

/// A G.711 client gets G.711 back: binary frames of 160 bytes, or streamAudio labelled
/// `pcmu`/`pcma`, through PCMU → L16/24k → PCMU.
async fn g711_roundtrip(codec: &str, playback: &str) {
    let daemon = Daemon::start(&config(playback), &[]).await;
    let id = format!("g711-{codec}-{playback}");
    let call = Call::connect(&daemon, "call", &id, &format!("rate=8000&codec={codec}")).await;
    let caller = test_signal(8000, 2.0, 3);
    let mut wire = Vec::new();
    if codec == "PCMU" {
        g711::ulaw_encode(&caller, &mut wire);
    } else {
        g711::alaw_encode(&caller, &mut wire);
    }
    let silence = if codec == "PCMU" { 0xFF } else { 0xD5 };
    wire.extend(vec![silence; 4000]);
    let mut clock = tokio::time::interval(std::time::Duration::from_millis(20));
    for frame in wire.chunks(160) {
        clock.tick().await;
        call.writer.send_audio(frame).await.unwrap();
    }
    let (_, got) = call.close().await;
    let mut heard = Vec::new();
    for e in &got.events {
        if let Playback::Audio { bytes, label, .. } = e {
            assert_eq!(bytes.len(), 160, "20 ms of G.711 per message");
            if playback == "stream_audio" {
                let want = if codec == "PCMU" { "pcmu" } else { "pcma" };
                assert_eq!(
                    label.as_ref().map(|(k, r)| (k.as_str(), *r)),
                    Some((want, 8000))
                );
            }
        }
    }
    let bytes = got.audio_bytes();
    if codec == "PCMU" {
        g711::ulaw_decode(&bytes, &mut heard);
    } else {
        g711::alaw_decode(&bytes, &mut heard);
    }
    // The reference is what the caller's G.711 decodes to; the path re-encodes once.
    let mut reference = Vec::new();
    let mut enc = Vec::new();
    if codec == "PCMU" {
        g711::ulaw_encode(&caller, &mut enc);
        g711::ulaw_decode(&enc, &mut reference);
    } else {
        g711::alaw_encode(&caller, &mut enc);
        g711::alaw_decode(&enc, &mut reference);
    }
    assert!(heard.len() > 1600 + reference.len() / 2);
    let snr = snr_db_within(&reference, &heard[1600..], 80);
    println!("{codec} {playback}: SNR {snr:.1} dB");
    // Re-encoding decoded G.711 after a near-transparent round trip mostly lands on the
    // same codes: measured 58 dB (μ-law) / 57 dB (A-law).
    assert!(snr > 45.0, "SNR {snr:.1} dB");
    let summary = daemon.wait_call_end(&id).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_client_binary_playback() {
    g711_roundtrip("PCMU", "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcma_client_stream_audio_playback() {
    g711_roundtrip("PCMA", "stream_audio").await;
}

/// No `rate` in the URL: metadata that arrives before the audio sets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_before_audio_sets_the_format() {
    let daemon = Daemon::start(&config("binary"), &[]).await;
    let call = Call::connect(&daemon, "call", "meta-rate", "").await;
    call.writer
        .send_text(r#"{"uuid":"meta-rate","sample_rate":"16000","channels":"mono"}"#)
        .await
        .unwrap();
    let caller = test_signal(16000, 1.5, 4);
    let mut sent = caller.clone();
    sent.extend(vec![0i16; 8000]);
    send_paced(&call.writer, &sent, 16000, 1).await;
    let (_, got) = call.close().await;
    for (_, n) in got.audio_frames() {
        assert_eq!(n, 320, "playback at the metadata's 16 kHz");
    }
    let audio = got.audio();
    let snr = snr_db_within(&caller, &audio[3200..], 160);
    assert!(snr > 60.0, "SNR {snr:.1} dB");
    let started = daemon.wait_log(|l| message(l) == "provider ready").await;
    assert!(started["span"]["call_id"] == "meta-rate");
    daemon.stop().await;
}
