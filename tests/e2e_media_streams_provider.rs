//! A Twilio-protocol backend as the provider (`provider = "media_streams"`): the fake
//! FreeSWITCH → the real `voicebridge` binary → a mock backend (a Pipecat-style bot,
//! `tests/common/mock_media_streams.rs`) that validates every carrier message.
//!
//! Audio both ways byte for byte (μ-law call, μ-law stream), the call's metadata in
//! `start.customParameters`, the bearer token and extra headers on the upgrade, each
//! `mark` echoed only once the audio before it was played at FreeSWITCH, `clear` as a
//! barge-in, keys as `dtmf`, `stop` at the end. Waits are on recorded events.

mod common;

use std::time::Duration;

use common::call::Call;
use common::call::Playback;
use common::daemon::{field, Daemon};
use common::fake_esl::FakeEsl;
use common::mock_media_streams::{Cmd, MockBackend};
use tokio::time::Instant;
use voicebridge::audio::g711;
use voicebridge::audio::signal::{snr_db, speech_like, sweep};

const TOKEN: &str = "bot-token-SECRET-4c1d9e";
const PASSWORD: &str = "not-ClueCon-2718";

fn config(esl: Option<std::net::SocketAddr>) -> String {
    let esl = esl
        .map(|a| {
            format!(
                "[freeswitch.esl]\nhost = \"{}\"\nport = {}\n",
                a.ip(),
                a.port()
            )
        })
        .unwrap_or_default();
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = 60

{esl}
[call]
provider = "media_streams"
dtmf = "to_model"

[providers.media_streams]
headers = {{ "X-Bot-Tenant" = "acme" }}
"#
    )
}

async fn daemon(mock: &MockBackend, esl: Option<std::net::SocketAddr>) -> Daemon {
    let url = mock.url();
    Daemon::start(
        &config(esl),
        &[
            ("VOICEBRIDGE__PROVIDERS__MEDIA_STREAMS__URL", url.as_str()),
            ("VOICEBRIDGE__PROVIDERS__MEDIA_STREAMS__TOKEN", TOKEN),
            ("FREESWITCH_ESL_PASSWORD", PASSWORD),
        ],
    )
    .await
}

fn ulaw(samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    g711::ulaw_encode(samples, &mut out);
    out
}

/// When FreeSWITCH had received `bytes` of playback (binary frames of μ-law).
fn fs_time_of(frames: &[(Instant, usize)], bytes: usize) -> Instant {
    let mut total = 0;
    for (at, n) in frames {
        // Binary frames are counted as L16 "samples": 2 bytes each.
        total += n * 2;
        if total >= bytes {
            return *at;
        }
    }
    panic!("FreeSWITCH got only {total} of {bytes} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_both_ways_metadata_marks_after_playback_and_stop() {
    let mock = MockBackend::start().await;
    let d = daemon(&mock, None).await;
    let id = "ms-audio-1";
    let call = Call::connect(&d, "call", id, "codec=pcmu&rate=8000&channels=mono").await;
    call.writer
        .send_text(&format!(
            r#"{{"uuid":"{id}","caller_id":"+3902123","called":"100","tenant":"acme"}}"#
        ))
        .await
        .unwrap();

    // The caller talks, in real time, as FreeSWITCH sends it.
    let mut speech = sweep(8000, 300.0, 3400.0, -12.0, 4000);
    speech.extend(speech_like(8000, 1.0, 7));
    let sent = ulaw(&speech);
    let writer = call.writer.clone();
    let sent_copy = sent.clone();
    let talker = tokio::spawn(async move {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        for frame in sent_copy.chunks(160) {
            clock.tick().await;
            writer.send_audio(frame).await.unwrap();
        }
    });
    mock.wait("start", |s| s.start.is_some()).await;

    // The bot answers: 1 s, a mark, 0.5 s, a mark, all at once (as a model's burst).
    let reply = ulaw(&speech_like(8000, 1.5, 3));
    mock.send(Cmd::Play(reply[..8000].to_vec()));
    mock.send(Cmd::Mark("m1".into()));
    mock.send(Cmd::Play(reply[8000..].to_vec()));
    mock.send(Cmd::Mark("m2".into()));
    mock.wait("both marks echoed", |s| s.mark_echoes.len() == 2)
        .await;
    talker.await.unwrap();
    let frames = sent.len() / 160;
    mock.wait("all caller audio", |s| s.media_in >= frames)
        .await;
    call.wait_received(reply.len() / 160).await;
    let (_, got) = call.close().await;
    let summary = d.wait_call_end(id).await;
    mock.wait("stop and close", |s| s.stop && s.closed).await;

    let errors = mock.recorded(|s| s.errors.clone());
    assert!(errors.is_empty(), "backend validation: {errors:#?}");
    mock.recorded(|s| {
        assert_eq!(s.connections, 1);
        assert_eq!(
            s.authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );
        assert_eq!(s.extra_header.as_deref(), Some("acme"));
        assert_eq!(s.events.last().map(String::as_str), Some("stop"));
        let p = &s.start.as_ref().unwrap()["customParameters"];
        assert_eq!(p["caller_id"], "+3902123", "{p}");
        assert_eq!(p["tenant"], "acme", "{p}");
        assert_eq!(p["call_id"], id, "{p}");
    });

    // Upstream: the caller's μ-law reached the bot unchanged.
    let caller = mock.recorded(|s| s.caller.clone());
    assert!(caller.len() >= frames * 160);
    assert!(
        caller[..frames * 160] == sent[..frames * 160],
        "caller μ-law altered"
    );
    let mut decoded = Vec::new();
    g711::ulaw_decode(&caller[..frames * 160], &mut decoded);
    let up = snr_db(&speech[..decoded.len()], &decoded);
    println!("upstream SNR: {up:.1} dB");
    assert!(up > 30.0);

    // Downstream: the bot's μ-law played unchanged, nothing else.
    let played = got.audio_bytes();
    assert!(
        played == reply,
        "played {} of {} bytes, or altered",
        played.len(),
        reply.len()
    );
    let mut heard = Vec::new();
    g711::ulaw_decode(&played, &mut heard);
    let mut reference = Vec::new();
    g711::ulaw_decode(&reply, &mut reference);
    let down = snr_db(&reference, &heard);
    println!("downstream SNR: {down:.1} dB");
    assert!(down > 30.0);

    // Each echo came after FreeSWITCH had the audio before it, and not before that
    // audio could have played at real time from its first byte.
    let fs = got.audio_frames();
    let (sent_marks, echoes) = mock.recorded(|s| (s.marks_sent.clone(), s.mark_echoes.clone()));
    for (m, (name, echo_at)) in sent_marks.iter().zip(&echoes) {
        assert_eq!(&m.name, name);
        let reached_fs = fs_time_of(&fs, m.audio_before);
        assert!(
            *echo_at >= reached_fs,
            "{name} echoed before its audio reached FreeSWITCH"
        );
        let from = m.audio_from.expect("audio before the mark");
        let real_time = Duration::from_millis(m.audio_before as u64 / 8);
        assert!(
            *echo_at >= from + real_time,
            "{name} echoed before its audio could play"
        );
        println!(
            "{name}: {} ms of audio, echoed {} ms after its first byte went",
            real_time.as_millis(),
            echo_at.duration_since(from).as_millis()
        );
    }
    assert!(got.clears().is_empty());
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    let out = d.output();
    assert!(!out.contains(TOKEN), "the token leaked");
    d.stop().await;
}

/// The bot's `clear` flushes playback at once (FreeSWITCH gets `clearAudio` and none of
/// the cleared audio after it), the mark before the clear is returned with it, the next
/// reply plays; the caller's keys reach the bot as `dtmf`, one message per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_flushes_playback_and_keys_arrive_as_dtmf() {
    let mock = MockBackend::start().await;
    let esl = FakeEsl::start(PASSWORD).await;
    let d = daemon(&mock, Some(esl.addr)).await;
    esl.wait_lines(1, |l| l.starts_with("event ")).await;
    let id = "ms-clear-1";
    let call = Call::connect(&d, "call", id, "codec=pcmu&rate=8000&channels=mono").await;
    call.writer
        .send_text(&format!(r#"{{"uuid":"{id}","caller_id":"+3902123"}}"#))
        .await
        .unwrap();
    let talker = common::call::spawn_talker(call.writer.clone(), 0xFF, 500);
    mock.wait("start", |s| s.start.is_some()).await;

    for digit in ['4', '2', '#'] {
        esl.emit_dtmf(id, digit);
    }
    mock.wait("three keys", |s| s.dtmf.len() == 3).await;

    // 3 s of one byte value, a mark; cut after 20 frames played.
    const CUT: u8 = 0x2A;
    const NEXT: u8 = 0x55;
    mock.send(Cmd::Play(vec![CUT; 24_000]));
    mock.send(Cmd::Mark("cut".into()));
    call.wait_received(20).await;
    mock.send(Cmd::Clear);
    mock.wait("the cut mark returned", |s| s.mark_echoes.len() == 1)
        .await;
    mock.send(Cmd::Play(vec![NEXT; 4000]));
    mock.send(Cmd::Mark("next".into()));
    mock.wait("the next mark echoed", |s| s.mark_echoes.len() == 2)
        .await;
    call.wait_received(20 + 25).await;
    talker.abort();
    let (_, got) = call.close().await;
    let summary = d.wait_call_end(id).await;
    mock.wait("stop", |s| s.stop).await;

    let errors = mock.recorded(|s| s.errors.clone());
    assert!(errors.is_empty(), "backend validation: {errors:#?}");
    assert_eq!(mock.recorded(|s| s.dtmf.clone()), ["4", "2", "#"]);

    let clear = got
        .events
        .iter()
        .position(|e| matches!(e, Playback::Clear { .. }))
        .expect("clearAudio at FreeSWITCH");
    let frames_of = |events: &[Playback], byte: u8| {
        events
            .iter()
            .filter(
                |e| matches!(e, Playback::Audio { bytes, .. } if bytes.iter().all(|b| *b == byte)),
            )
            .count()
    };
    let after = &got.events[clear..];
    assert_eq!(
        frames_of(after, CUT),
        0,
        "cleared audio played after the clear"
    );
    let before = frames_of(&got.events[..clear], CUT);
    assert!(
        (20..150).contains(&before),
        "{before} frames of the cut reply"
    );
    assert_eq!(frames_of(after, NEXT), 25, "the next reply plays in full");
    println!("cut reply: {before} of 150 frames played before the clear");
    // The cut mark came back with the clear, before the next reply's.
    let echoes = mock.recorded(|s| s.mark_echoes.clone());
    assert_eq!(echoes[0].0, "cut");
    assert_eq!(echoes[1].0, "next");
    assert_eq!(field(&summary, "barge_ins"), 1);
    d.stop().await;
}
