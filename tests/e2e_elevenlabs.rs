//! End to end with the ElevenLabs provider: the real `voicebridge` binary, the fake
//! FreeSWITCH client and a mock of ElevenLabs' signed-URL endpoint + agent WebSocket
//! speaking the real wire protocol.

mod common;

use std::time::Duration;

use common::call::{max_lead_ms, send_paced, Call, Collected, Playback};
use common::daemon::{field, message, Daemon, HANG_GUARD};
use common::mock_elevenlabs::{self as mock, Cmd, MockEleven, MockOptions, SIGNATURE};
use serde_json::json;
use tokio::time::Instant;
use voicebridge::audio::signal::{
    rms_dbfs, snr_db, snr_db_within, speech_like, sweep, tone_power_db,
};
use voicebridge::audio::{g711, AudioFormat, Transcoder};

const LEAD_MS: u64 = 60;
const AGENT: &str = "agent_mock_7f3a";
const KEY: &str = "xi-fake-key-0123456789abcdef";

fn config(call: &str) -> String {
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = {LEAD_MS}

[call]
provider = "elevenlabs"
{call}

[providers.elevenlabs]
agent_id = "{AGENT}"
"#
    )
}

async fn daemon(mock: &MockEleven, call: &str, key: &str) -> Daemon {
    let url = mock.ws_url();
    let endpoint = mock.signed_url_endpoint();
    Daemon::start(
        &config(call),
        &[
            ("VOICEBRIDGE__PROVIDERS__ELEVENLABS__URL", url.as_str()),
            (
                "VOICEBRIDGE__PROVIDERS__ELEVENLABS__SIGNED_URL_ENDPOINT",
                endpoint.as_str(),
            ),
            ("ELEVENLABS_API_KEY", key),
        ],
    )
    .await
}

fn assert_no_secrets(daemon: &Daemon) {
    let out = daemon.output();
    assert!(!out.contains(KEY), "the API key leaked:\n{out}");
    assert!(
        !out.contains(SIGNATURE),
        "the signed URL token leaked:\n{out}"
    );
}

fn assert_mock_clean(mock: &MockEleven) {
    let errors = mock.recorded(|s| s.errors.clone());
    assert!(errors.is_empty(), "mock validation failures: {errors:#?}");
}

/// Every pong echoed its ping's event_id, in order; returns how many.
fn pongs_checked(mock: &MockEleven) -> usize {
    mock.recorded(|s| {
        for (i, p) in s.pongs.iter().enumerate() {
            assert_eq!(p, &json!(s.pings_sent[i]), "pong {i}");
        }
        s.pongs.len()
    })
}

fn transcode(from: AudioFormat, to: AudioFormat, samples: &[i16]) -> Vec<i16> {
    let mut t = Transcoder::new(from, to).unwrap();
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut out = Vec::new();
    t.process(&bytes, &mut out);
    common::call::decode_l16(&out)
}

fn first_frame_at(got: &Collected) -> Instant {
    got.audio_frames().first().expect("some audio").0
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let wait = async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while !cond() {
            tick.tick().await;
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("{what} never happened"));
}

/// Private agent, signed URL, `ulaw_8000` both ways with a PCMU call: caller and agent
/// audio pass through byte for byte. The greeting (first_message) plays, a turn plays,
/// every ping is answered with its event_id, secrets never reach the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ulaw_passthrough_signed_url_greeting_turn_and_pings() {
    let mut opts = MockOptions::new(AGENT);
    opts.api_key = Some(KEY.into());
    opts.require_signature = true;
    opts.input_format = "ulaw_8000";
    opts.output_format = "ulaw_8000";
    opts.greeting_secs = 1.0;
    opts.ping_every = Duration::from_millis(700);
    opts.expect_override = Some(json!({
        "agent": {"first_message": "Hello +3902123", "language": "it"},
        "tts": {"voice_id": "voice_abc"}
    }));
    opts.expect_vars = vec![
        ("caller_id".into(), "+3902123".into()),
        ("called".into(), "100".into()),
        ("called_number".into(), "100".into()),
        ("call_id".into(), "el-ulaw-1".into()),
        ("tenant".into(), "acme".into()),
    ];
    let mock = MockEleven::start(opts).await;
    let daemon = daemon(
        &mock,
        "greeting = \"Hello {{caller_id}}\"\nlanguage = \"it-IT\"\nvoice = \"voice_abc\"",
        KEY,
    )
    .await;
    let id = "el-ulaw-1";
    let call = Call::connect(&daemon, "call", id, "codec=pcmu&rate=8000&channels=mono").await;
    call.writer
        .send_text(&format!(
            r#"{{"uuid":"{id}","caller_id":"+3902123","called":"100","tenant":"acme"}}"#
        ))
        .await
        .unwrap();

    // The caller talks (μ-law, as FreeSWITCH sends it) while the greeting plays.
    let mut speech = sweep(8000, 300.0, 3400.0, -12.0, 4000);
    speech.extend(speech_like(8000, 2.0, 11));
    let mut sent = Vec::new();
    g711::ulaw_encode(&speech, &mut sent);
    let writer = call.writer.clone();
    let sent_copy = sent.clone();
    let talker = tokio::spawn(async move {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        for frame in sent_copy.chunks(160) {
            clock.tick().await;
            writer.send_audio(frame).await.unwrap();
        }
    });
    call.wait_received(50).await; // the 1 s greeting
    talker.await.unwrap();
    let frames = sent.len() / 160;
    mock.wait("all caller audio", |s| s.chunks_in >= frames)
        .await;

    mock.send(Cmd::Respond {
        transcript: Some("I need help".into()),
        secs: 1.0,
    });
    call.wait_received(100).await;
    mock.wait("three pongs", |s| s.pongs.len() >= 3).await;
    let (_, got) = call.close().await;
    let summary = daemon.wait_call_end(id).await;

    // The daemon's summary can be logged before the mock has read our Close frame.
    mock.wait("the client's Close", |s| s.client_closed.is_some())
        .await;
    assert_mock_clean(&mock);
    assert_no_secrets(&daemon);
    mock.recorded(|s| {
        assert_eq!(s.http_requests, 1, "one signed URL per call");
        assert_eq!(s.http_key_ok, 1);
        assert_eq!(s.ws_connections, 1);
        assert_eq!(s.client_closed, Some(Some(1000)), "closed politely");
    });

    // Upstream: the μ-law FreeSWITCH sent is what the agent got, byte for byte.
    let (raw, caller) = mock.recorded(|s| (s.caller_raw.clone(), s.caller.clone()));
    // Around the caller's audio, only the silence voicebridge streams while the caller
    // sends nothing (20 ms chunks of 0xFF).
    let lead = raw
        .chunks(160)
        .take_while(|c| c.iter().all(|b| *b == 0xFF))
        .count()
        * 160;
    assert!(raw.len() >= lead + frames * 160, "{} bytes", raw.len());
    assert!(
        raw[lead..lead + frames * 160] == sent[..frames * 160],
        "caller μ-law was altered"
    );
    assert!(
        raw[lead + frames * 160..].iter().all(|b| *b == 0xFF),
        "only silence after the caller's audio"
    );
    let caller = &caller[lead..lead + frames * 160];
    let up = snr_db(&speech[..caller.len()], caller);
    println!("upstream SNR (μ-law passthrough, decoded vs source): {up:.1} dB");
    assert!(up > 30.0, "upstream SNR {up:.1} dB");

    // Downstream: greeting then the response, byte for byte (binary frames of μ-law).
    let played: Vec<u8> = got
        .events
        .iter()
        .filter_map(|e| match e {
            Playback::Audio { samples, .. } => Some(samples),
            _ => None,
        })
        .flatten()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let responses = mock.recorded(|s| s.responses.clone());
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0].event_id, 1);
    let mut expected = mock::encode("ulaw_8000", &responses[0].samples);
    expected.extend(mock::encode("ulaw_8000", &responses[1].samples));
    assert_eq!(
        played.len(),
        expected.len(),
        "greeting + response, nothing else"
    );
    assert!(played == expected, "agent μ-law was altered");
    let mut heard = Vec::new();
    g711::ulaw_decode(&played, &mut heard);
    let mut reference = responses[0].samples.clone();
    reference.extend(&responses[1].samples);
    let down = snr_db(&reference, &heard);
    println!("downstream SNR (μ-law passthrough, vs agent's PCM): {down:.1} dB");
    assert!(down > 30.0);
    assert!(got.clears().is_empty());

    // Binary frames of 160 μ-law bytes arrive as 80 "L16 samples": pace at 4000/s.
    let lead = max_lead_ms(&got.audio_frames(), 4000);
    println!("max lead {lead:.1} ms");
    assert!(lead <= (LEAD_MS + 20) as f64, "ran {lead:.1} ms ahead");
    let first = first_frame_at(&got)
        .duration_since(responses[0].first_at.expect("greeting sent"))
        .as_secs_f64()
        * 1000.0;
    println!("first agent audio event -> first frame at FreeSWITCH: {first:.1} ms");

    let pongs = pongs_checked(&mock);
    println!("pings answered: {pongs}");
    assert!(pongs >= 3);
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    assert_eq!(field(&summary, "frames_dropped"), 0);
    daemon.stop().await;
}

/// Public agent, `pcm_16000` in / `pcm_24000` out with an L16 8 kHz call (resampling
/// both ways); the watchdog; barge-in with late audio of the interrupted response
/// (event_id K and K-1) that must never be played, while response K+1 is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcm_resampling_watchdog_and_barge_in_drops_late_audio() {
    let mut opts = MockOptions::new(AGENT);
    opts.input_format = "pcm_16000";
    opts.output_format = "pcm_24000";
    opts.expect_override = Some(json!({
        "agent": {"prompt": {"prompt": "You are a test agent for +3902123."}}
    }));
    opts.expect_vars = vec![("caller_id".into(), "+3902123".into())];
    let mock = MockEleven::start(opts).await;
    let daemon = daemon(
        &mock,
        "instructions = \"You are a test agent for {{caller_id}}.\"\nresponse_timeout_secs = 1",
        "",
    )
    .await;
    let id = "el-pcm-1";
    let call = Call::connect(&daemon, "call", id, "rate=8000&channels=mono").await;
    call.writer
        .send_text(&format!(r#"{{"uuid":"{id}","caller_id":"+3902123"}}"#))
        .await
        .unwrap();
    let mut speech = sweep(8000, 300.0, 3400.0, -12.0, 4000);
    speech.extend(speech_like(8000, 1.5, 5));
    send_paced(&call.writer, &speech, 8000, 1).await;
    let frames = speech.len() / 160;
    // The 8k -> 16k resampler holds its filter delay back (and, with older builds, a
    // 20 ms chunk): two frames of slack.
    mock.wait("caller audio", |s| s.caller.len() >= (frames - 2) * 320)
        .await;

    // The caller's turn ends and the agent stays silent: the watchdog speaks once.
    mock.send(Cmd::Transcript("hello?".into()));
    let warning = daemon.wait_watchdog().await;
    println!("watchdog: {}", field(&warning, "warning"));

    mock.send(Cmd::Respond {
        transcript: None,
        secs: 4.0,
    });
    call.wait_received(25).await;
    mock.send(Cmd::BargeIn);
    daemon
        .wait_log(|l| message(l) == "barge-in: playback flushed")
        .await;
    let k = mock
        .recorded(|s| s.interruption_id)
        .expect("interruption sent");
    mock.send(Cmd::Respond {
        transcript: Some("no, the other one".into()),
        secs: 1.0,
    });
    mock.wait("response K+1 sent", |s| s.responses.len() == 2)
        .await;
    // Hang guard only: the 1 s answer is 50 frames after the clear.
    let received = call.received.clone();
    let got_before = call.received.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("response K+1 played", || {
        received.load(std::sync::atomic::Ordering::SeqCst) >= got_before + 49
    })
    .await;
    let (_, got) = call.close().await;
    let summary = daemon.wait_call_end(id).await;
    assert_mock_clean(&mock);
    assert_no_secrets(&daemon);
    mock.recorded(|s| assert_eq!(s.http_requests, 0, "no key: no signed URL"));

    // Upstream: 8 kHz caller -> 16 kHz agent; brought back to 8 kHz for comparison.
    let caller16 = mock.recorded(|s| s.caller.clone());
    let back = transcode(AudioFormat::l16(16000), AudioFormat::l16(8000), &caller16);
    let up = snr_db_within(&speech, &back, 80);
    println!("upstream SNR (8k -> pcm_16000): {up:.1} dB");
    assert!(up > 30.0, "upstream SNR {up:.1} dB");

    let responses = mock.recorded(|s| s.responses.clone());
    assert_eq!(
        responses[0].event_id, k,
        "the interruption names response K"
    );
    assert_eq!(responses[1].event_id, k + 1);
    let clears = got.clears();
    assert_eq!(clears.len(), 1, "exactly one clearAudio");
    let clear_at = clears[0];
    let barge_at = mock.recorded(|s| s.barge_at).unwrap();
    let cut = clear_at.duration_since(barge_at).as_secs_f64() * 1000.0;
    println!("barge-in cut: interruption sent -> clearAudio at FreeSWITCH {cut:.1} ms");

    let audio_of = |after: bool| -> Vec<i16> {
        got.events
            .iter()
            .filter_map(|e| match e {
                Playback::Audio { at, samples, .. } if (*at > clear_at) == after => {
                    Some(samples.as_slice())
                }
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    };
    // Before the clear: the start of response K, resampled 24k -> 8k.
    let before = audio_of(false);
    let ref_k = transcode(
        AudioFormat::l16(24000),
        AudioFormat::l16(8000),
        &responses[0].samples,
    );
    assert!(before.len() >= 25 * 160 && before.len() < ref_k.len());
    let down = snr_db_within(&ref_k[..before.len()], &before, 80);
    println!("downstream SNR (pcm_24000 -> 8k), response K: {down:.1} dB");
    assert!(down > 30.0, "downstream SNR {down:.1} dB");

    // After the clear: response K+1 only; the 1 kHz late audio (event_id K, K-1) never.
    let after = audio_of(true);
    let ref_k1 = transcode(
        AudioFormat::l16(24000),
        AudioFormat::l16(8000),
        &responses[1].samples,
    );
    println!(
        "after the clear: {} samples played, response K+1 has {}",
        after.len(),
        ref_k1.len()
    );
    assert!(
        after.len() <= ref_k1.len() + 2 * 160,
        "more than response K+1 was played after the barge-in (late audio leaked)"
    );
    // The late audio is a loud 1 kHz tone: it would dominate the first 400 ms.
    let head = &after[..after.len().min(3200)];
    let tone = tone_power_db(head, 8000, 1000.0);
    println!(
        "after the clear, first 400 ms: 1 kHz component {tone:.1} dBFS, level {:.1} dBFS",
        rms_dbfs(head)
    );
    assert!(
        tone < -25.0,
        "the late 1 kHz audio was played ({tone:.1} dBFS)"
    );
    // The downstream resampler still held the interrupted response's last few ms (the
    // session keeps one transcoder per call): skip 40 ms before comparing.
    let skip = 320;
    let k1 = snr_db_within(
        &ref_k1[skip..after.len().min(ref_k1.len())],
        &after[skip..],
        80,
    );
    println!(
        "downstream SNR, response K+1 after the barge-in: {k1:.1} dB (whole: {:.1} dB)",
        snr_db_within(&ref_k1[..after.len().min(ref_k1.len())], &after, 80)
    );
    assert!(
        k1 > 30.0,
        "response K+1 SNR {k1:.1} dB: late audio mixed in?"
    );
    let first = first_frame_at(&got)
        .duration_since(responses[0].first_at.unwrap())
        .as_secs_f64()
        * 1000.0;
    println!("first agent audio event -> first frame at FreeSWITCH: {first:.1} ms");
    let lead = max_lead_ms(
        &got.audio_frames()
            .into_iter()
            .filter(|(at, _)| *at < clear_at)
            .collect::<Vec<_>>(),
        8000,
    );
    println!("max lead {lead:.1} ms");
    assert!(lead <= (LEAD_MS + 20) as f64);

    assert_eq!(field(&summary, "barge_ins"), 1);
    // The provider dropped the late audio itself (by event_id): none reached the session.
    assert_eq!(field(&summary, "late_audio_dropped"), 0);
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    let warnings = daemon
        .logs()
        .iter()
        .filter(|l| message(l) == "provider warning")
        .count();
    assert_eq!(warnings, 1, "the watchdog warns once per turn");
    pongs_checked(&mock);
    daemon.stop().await;
}

/// Waits for the daemon to end a call it ended itself: FreeSWITCH gets a Close.
async fn ended_by_daemon(call: Call) -> (Option<u16>, String) {
    let got = tokio::time::timeout(HANG_GUARD, call.reader)
        .await
        .expect("the daemon ends the call")
        .expect("reader task");
    got.events
        .iter()
        .find_map(|e| match e {
            Playback::Close(code, reason) => Some((*code, reason.clone())),
            _ => None,
        })
        .expect("FreeSWITCH got a Close")
}

/// A bad key: the signed-URL endpoint answers 401 with JSON; the call ends at once with
/// the status and the body logged, and the key nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_401_from_signed_url_endpoint_ends_the_call() {
    let mut opts = MockOptions::new(AGENT);
    opts.api_key = Some("xi-the-right-key-000000".into());
    opts.require_signature = true;
    let mock = MockEleven::start(opts).await;
    let daemon = daemon(&mock, "", KEY).await;
    let started = Instant::now();
    let call = Call::connect(&daemon, "call", "el-401", "rate=8000").await;
    let (code, reason) = ended_by_daemon(call).await;
    println!(
        "401: call ended after {:.0} ms, close {code:?} {reason:?}",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let summary = daemon.wait_call_end("el-401").await;
    assert_eq!(field(&summary, "end_reason"), "provider_error");
    let detail = field(&summary, "end_detail").as_str().unwrap().to_owned();
    assert!(detail.contains("http_401"), "{detail}");
    assert!(detail.contains("Invalid API key"), "{detail}");
    assert_eq!(code, Some(1011));
    assert_no_secrets(&daemon);
    mock.recorded(|s| {
        assert_eq!(s.http_requests, 1);
        assert_eq!(s.ws_connections, 0);
    });
    assert_mock_clean(&mock);
    daemon.stop().await;
}

/// A private agent reached without a key: the WebSocket upgrade is refused (401 JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_agent_without_key_is_refused_on_upgrade() {
    let mut opts = MockOptions::new(AGENT);
    opts.require_signature = true;
    let mock = MockEleven::start(opts).await;
    let daemon = daemon(&mock, "", "").await;
    let call = Call::connect(&daemon, "call", "el-upg", "rate=8000").await;
    ended_by_daemon(call).await;
    let summary = daemon.wait_call_end("el-upg").await;
    let detail = field(&summary, "end_detail").as_str().unwrap().to_owned();
    assert!(detail.contains("http_401"), "{detail}");
    assert!(detail.contains("requires authentication"), "{detail}");
    mock.recorded(|s| assert_eq!(s.ws_refused, 1));
    assert_mock_clean(&mock);
    daemon.stop().await;
}

/// The agent does not allow an override: error event + close 1008 during setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_error_close_1008_during_setup() {
    let mut opts = MockOptions::new(AGENT);
    opts.expect_override = Some(json!({"agent": {"first_message": "Hi"}}));
    opts.close_on_init = Some((
        1008,
        "Override for field 'first_message' is not allowed by config.".into(),
        "override_error".into(),
    ));
    let mock = MockEleven::start(opts).await;
    let daemon = daemon(&mock, "greeting = \"Hi\"", "").await;
    let call = Call::connect(&daemon, "call", "el-1008", "rate=8000").await;
    ended_by_daemon(call).await;
    let summary = daemon.wait_call_end("el-1008").await;
    assert_eq!(field(&summary, "end_reason"), "provider_closed");
    let detail = field(&summary, "end_detail").as_str().unwrap().to_owned();
    println!("summary: {detail}");
    assert!(detail.contains("1008"), "{detail}");
    assert!(detail.contains("override_error"), "{detail}");
    assert!(detail.contains("first_message"), "{detail}");
    assert!(daemon
        .logs()
        .iter()
        .any(|l| message(l) == "elevenlabs: error event"
            && field(l, "error_type") == "override_error"));
    assert_mock_clean(&mock);
    daemon.stop().await;
}

/// The agent hangs up mid-call (max duration): the call ends, provider_closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_closes_mid_call() {
    let mut opts = MockOptions::new(AGENT);
    opts.greeting_secs = 0.6;
    let mock = MockEleven::start(opts).await;
    let daemon = daemon(&mock, "", "").await;
    let call = Call::connect(&daemon, "call", "el-close", "rate=8000").await;
    call.wait_received(20).await;
    mock.send(Cmd::Close(1000, "Max duration reached".into()));
    let (code, reason) = ended_by_daemon(call).await;
    println!("FreeSWITCH got close {code:?} {reason:?}");
    let summary = daemon.wait_call_end("el-close").await;
    assert_eq!(field(&summary, "end_reason"), "provider_closed");
    let detail = field(&summary, "end_detail").as_str().unwrap().to_owned();
    assert!(detail.contains("close code 1000"), "{detail}");
    assert!(detail.contains("Max duration reached"), "{detail}");
    assert_mock_clean(&mock);
    daemon.stop().await;
}

/// An agent whose audio format voicebridge cannot use ends the call naming the format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_agent_format_ends_the_call() {
    let mut opts = MockOptions::new(AGENT);
    opts.output_format = "pcm_11025";
    let mock = MockEleven::start(opts).await;
    let daemon = daemon(&mock, "", "").await;
    let call = Call::connect(&daemon, "call", "el-fmt", "rate=8000").await;
    ended_by_daemon(call).await;
    let summary = daemon.wait_call_end("el-fmt").await;
    assert_eq!(field(&summary, "end_reason"), "provider_error");
    let detail = field(&summary, "end_detail").as_str().unwrap().to_owned();
    assert!(detail.contains("\"pcm_11025\""), "{detail}");
    assert!(detail.contains("agent_output_audio_format"), "{detail}");
    daemon.stop().await;
}

/// `voicebridge check`'s probe: a real setup against the agent, then a polite close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_the_agent() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut opts = MockOptions::new(AGENT);
    opts.api_key = Some(KEY.into());
    opts.require_signature = true;
    opts.input_format = "ulaw_8000";
    opts.output_format = "ulaw_8000";
    let mock = MockEleven::start(opts).await;
    let load = |key: &str| {
        voicebridge::config::Config::from_toml_str(
            &config(""),
            [
                (
                    "VOICEBRIDGE__PROVIDERS__ELEVENLABS__URL".to_owned(),
                    mock.ws_url(),
                ),
                (
                    "VOICEBRIDGE__PROVIDERS__ELEVENLABS__SIGNED_URL_ENDPOINT".to_owned(),
                    mock.signed_url_endpoint(),
                ),
                ("ELEVENLABS_API_KEY".to_owned(), key.to_owned()),
            ],
        )
        .unwrap()
    };
    let good = load(KEY);
    let ok = voicebridge::providers::elevenlabs::check(&good, good.default_route())
        .await
        .expect("check passes");
    println!("check: {ok}");
    assert!(ok.contains("ulaw_8000") && ok.contains(AGENT), "{ok}");
    mock.wait("polite close", |s| s.client_closed.is_some())
        .await;

    let bad = load("xi-wrong-key-123456");
    let err = voicebridge::providers::elevenlabs::check(&bad, bad.default_route())
        .await
        .expect_err("a bad key fails");
    println!("check with a bad key: {err}");
    assert!(
        err.contains("http_401") && err.contains("Invalid API key"),
        "{err}"
    );
    assert!(!err.contains("xi-wrong-key-123456"), "{err}");
    assert_mock_clean(&mock);
}

/// The agent's server closes a conversation after 60 s without user input (1002), even
/// while the caller listens: when the PBX sends no audio, voicebridge streams 20 ms
/// chunks of silence in the agent's format, and stops as soon as the caller talks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_is_streamed_while_the_pbx_sends_nothing() {
    let mut opts = MockOptions::new(AGENT);
    opts.input_format = "ulaw_8000";
    let mock = MockEleven::start(opts).await;
    let daemon = daemon(&mock, "", "").await;
    let id = "el-silence";
    let call = Call::connect(&daemon, "call", id, "codec=pcmu&rate=8000&channels=mono").await;
    call.writer
        .send_text(&format!(r#"{{"uuid":"{id}","caller_id":"+3902123"}}"#))
        .await
        .unwrap();
    // Not one caller frame is sent, and still the agent hears 20 ms chunks (validated
    // by the mock: 160 bytes of μ-law each) of silence.
    mock.wait("silence chunks", |s| s.chunks_in >= 15).await;
    let (raw, errors) = mock.recorded(|s| (s.caller_raw.clone(), s.errors.clone()));
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(raw.iter().all(|b| *b == 0xFF), "μ-law silence only");
    call.close().await;
    daemon.wait_call_end(id).await;
    daemon.stop().await;
}
