//! End to end with the OpenAI Realtime (GA) provider: the real `voicebridge` binary, the
//! fake FreeSWITCH and a faithful mock of the Realtime WebSocket (`common::mock_openai`),
//! which validates every message the daemon sends and records what it decoded.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::call::{max_lead_ms, send_paced, Call, Playback};
use common::daemon::{field, message, Daemon, HANG_GUARD};
use common::mock_openai::{usage_of, MockFormat, MockOpenAi, MockOptions, Script};
use serde_json::json;
use voicebridge::audio::g711;
use voicebridge::audio::signal::{snr_db_within, speech_like};

const LEAD_MS: u64 = 60;
const KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";

fn config(format: &str, call_extra: &str) -> String {
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = {LEAD_MS}

[call]
provider = "openai"
instructions = "You answer the phone for ACME. The caller is {{{{caller_id}}}}."
{call_extra}

[providers.openai]
model = "gpt-realtime"
voice = "marin"
audio_format = "{format}"
"#
    )
}

fn env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.to_owned()),
        ("OPENAI_API_KEY", KEY.to_owned()),
    ]
}

async fn start_daemon(toml: &str, env: &[(&'static str, String)]) -> Daemon {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Daemon::start(toml, &env).await
}

async fn connect(daemon: &Daemon, id: &str) -> Call {
    let call = Call::connect(daemon, "call", id, "rate=8000&channels=mono").await;
    call.writer
        .send_text(&format!(
            r#"{{"uuid":"{id}","caller_id":"+3902123","called":"100"}}"#
        ))
        .await
        .unwrap();
    call
}

fn assert_no_problems(mock: &MockOpenAi) {
    let problems = mock.with(|s| s.problems.clone());
    assert!(
        problems.is_empty(),
        "the mock found problems: {problems:#?}"
    );
}

/// Sends `samples` paced in real time until done or until the daemon ends the call
/// (for the scripts where the provider side ends it).
async fn send_until_closed(writer: common::fake_freeswitch::FsWriter, samples: Vec<i16>) {
    let mut clock = tokio::time::interval(std::time::Duration::from_millis(20));
    for chunk in samples.chunks(160) {
        clock.tick().await;
        if writer.send_audio(&common::call::l16(chunk)).await.is_err() {
            return;
        }
    }
}

/// Waits for the reader to end (the daemon closed the call) and returns what came.
async fn ended(call: Call) -> common::call::Collected {
    tokio::time::timeout(HANG_GUARD, call.reader)
        .await
        .expect("FreeSWITCH side closed by the daemon")
        .expect("reader task")
}

/// `uplink_chunk_ms = 60`: the caller's audio reaches OpenAI three frames per append
/// (the mock refuses any other size), all of it, in order, encoded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_chunks_carry_three_frames_per_append() {
    let mut options = MockOptions::new(MockFormat::Pcmu, KEY);
    options.frames_per_append = 3;
    let mock = MockOpenAi::start(options).await;
    let daemon = start_daemon(&config("pcmu", "uplink_chunk_ms = 60"), &env(&mock.url())).await;
    let call = connect(&daemon, "oai-chunk-1").await;
    // 2 s: 100 frames, 33 whole chunks (the last frame waits for its chunk).
    let caller = speech_like(8000, 2.0, 5);
    send_paced(&call.writer, &caller, 8000, 1).await;
    let expected = {
        let mut b = Vec::new();
        g711::ulaw_encode(&caller[..99 * 160], &mut b);
        b
    };
    mock.wait("33 chunks of caller audio", |s| {
        s.caller_bytes.len() >= expected.len()
    })
    .await;
    let (outcome, got) = call.close().await;
    assert!(outcome.echoed);
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_no_problems(&mock);
    let (appends, caller_bytes) = mock.with(|s| (s.appends, s.caller_bytes.clone()));
    assert_eq!(appends, 33, "one append per 60 ms");
    assert_eq!(caller_bytes, expected, "every frame once, in order");
}

/// G.711 passthrough: an L16 8 kHz call and `audio/pcmu`. The greeting, then the doc's
/// whole typical turn; audio must be exact both ways (encoded once, decoded once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_greeting_and_typical_turn() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let daemon = start_daemon(
        &config(
            "pcmu",
            r#"greeting = "Hello {{caller_id}}, this is ACME."
language = "it-IT""#,
        ),
        &env(&mock.url()),
    )
    .await;
    let id = "oai-pcmu-1";
    let call = connect(&daemon, id).await;
    let caller = speech_like(8000, 3.0, 11);
    let writer = call.writer.clone();
    let to_send = caller.clone();
    let sender = tokio::spawn(async move { send_paced(&writer, &to_send, 8000, 1).await });

    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let update = mock.with(|s| s.session_update.clone()).unwrap();
    let session = &update["session"];
    assert_eq!(session["type"], "realtime");
    assert_eq!(session["model"], "gpt-realtime");
    assert_eq!(session["output_modalities"], json!(["audio"]));
    assert_eq!(
        session["instructions"],
        "You answer the phone for ACME. The caller is +3902123."
    );
    assert!(session.get("temperature").is_none(), "no temperature in GA");
    let input = &session["audio"]["input"];
    assert_eq!(input["format"], json!({"type": "audio/pcmu"}));
    assert_eq!(
        session["audio"]["output"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(session["audio"]["output"]["voice"], "marin");
    assert_eq!(
        input["transcription"],
        json!({"model": "gpt-4o-mini-transcribe", "language": "it"})
    );
    assert_eq!(input["noise_reduction"], json!({"type": "near_field"}));
    assert_eq!(
        input["turn_detection"],
        json!({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
               "silence_duration_ms": 500, "create_response": true, "interrupt_response": true})
    );

    // The greeting (1 s from the mock = 50 frames).
    call.wait_received(50).await;
    sender.await.unwrap();
    let expected_caller = {
        let mut b = Vec::new();
        g711::ulaw_encode(&caller, &mut b);
        b
    };
    mock.wait("all caller audio", |s| {
        s.caller_bytes.len() >= expected_caller.len()
    })
    .await;

    mock.script(Script::CallerTurn { ms: 1500, seed: 22 });
    call.wait_received(50 + 75).await;
    daemon
        .wait_log(|l| message(l) == "transcript" && field(l, "who") == "caller")
        .await;
    let (outcome, got) = call.close().await;
    assert!(outcome.echoed);
    assert!(got.error.is_none(), "{:?}", got.error);

    // What OpenAI got: exactly the caller's audio μ-law encoded once, after session.updated.
    assert_no_problems(&mock);
    let (types, before, caller_bytes, responses, headers, uri) = mock.with(|s| {
        (
            s.client_types(),
            s.appends_before_updated,
            s.caller_bytes.clone(),
            s.responses.clone(),
            s.headers.clone(),
            s.uri.clone(),
        )
    });
    assert_eq!(before, 0, "no audio before session.updated");
    assert_eq!(
        &caller_bytes[..expected_caller.len()],
        &expected_caller[..],
        "caller audio must be the L16 frames μ-law encoded once"
    );
    let mut decoded = Vec::new();
    g711::ulaw_decode(&caller_bytes, &mut decoded);
    let snr_up = snr_db_within(&caller, &decoded, 80);
    println!("SNR caller -> OpenAI (pcmu): {snr_up:.1} dB");
    assert!(snr_up > 30.0);
    assert_eq!(types[0], "session.update");
    assert_eq!(
        types[1], "response.create",
        "greeting after session.updated: {types:?}"
    );
    let greet = mock.with(|s| s.client_events[1].clone());
    assert_eq!(
        greet["response"]["instructions"],
        "Greet the caller by saying exactly: Hello +3902123, this is ACME."
    );
    assert!(!types.iter().any(|t| t == "response.cancel"));
    assert!(uri.starts_with("/v1/realtime?model=gpt-realtime"), "{uri}");
    assert!(headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == &format!("Bearer {KEY}")));

    // What FreeSWITCH got: the two responses, decoded once, bit-exact and paced.
    let audio = got.audio();
    let reference: Vec<i16> = responses
        .iter()
        .flat_map(|r| r.samples.iter().copied())
        .collect();
    assert_eq!(responses.len(), 2);
    assert!(
        audio.len() >= reference.len(),
        "{} < {}",
        audio.len(),
        reference.len()
    );
    let snr_down = snr_db_within(&reference, &audio, 80);
    println!("SNR OpenAI -> FreeSWITCH (pcmu): {snr_down:.1} dB");
    assert_eq!(
        &audio[..reference.len()],
        &reference[..],
        "G.711 passthrough is exact"
    );
    for (_, n) in got.audio_frames() {
        assert_eq!(n, 160);
    }
    let lead = max_lead_ms(&got.audio_frames(), 8000);
    println!("max lead {lead:.1} ms");
    assert!(lead <= (LEAD_MS + 20) as f64, "ran {lead:.1} ms ahead");
    let first_frame = got.audio_frames()[0].0;
    let first_delta = responses[0].first_delta_at.unwrap();
    println!(
        "first OpenAI audio delta -> first frame at FreeSWITCH: {:.1} ms",
        first_frame.duration_since(first_delta).as_secs_f64() * 1000.0
    );
    assert!(got.clears().is_empty());

    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    assert_eq!(field(&summary, "barge_ins"), 0);
    assert_eq!(field(&summary, "frames_dropped"), 0);
    let (i0, o0) = usage_of(0);
    let (i1, o1) = usage_of(1);
    assert_eq!(field(&summary, "input_tokens"), i0 + i1);
    assert_eq!(field(&summary, "output_tokens"), o0 + o1);
    let said = daemon
        .wait_log(|l| message(l) == "transcript" && field(l, "who") == "assistant")
        .await;
    assert_eq!(field(&said, "text"), "Mock answer number 1.");
    daemon.stop().await;
}

/// PCM16 24 kHz: resampled both ways; the caller talks over a long answer: flush,
/// clearAudio, late deltas dropped, and a truncate that matches what FreeSWITCH played.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcm24_barge_in_truncates_what_was_heard() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcm24, KEY)).await;
    let daemon = start_daemon(&config("pcm24", ""), &env(&mock.url())).await;
    let id = "oai-pcm24-barge";
    let call = connect(&daemon, id).await;
    let caller = speech_like(8000, 4.0, 12);
    let writer = call.writer.clone();
    let to_send = caller.clone();
    let sender = tokio::spawn(async move { send_paced(&writer, &to_send, 8000, 1).await });

    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let update = mock.with(|s| s.session_update.clone()).unwrap();
    let fmt = json!({"type": "audio/pcm", "rate": 24000});
    assert_eq!(update["session"]["audio"]["input"]["format"], fmt);
    assert_eq!(update["session"]["audio"]["output"]["format"], fmt);
    assert!(update["session"]["audio"]["input"]["transcription"]
        .get("language")
        .is_none());

    mock.script(Script::Respond { ms: 6000, seed: 33 });
    call.wait_received(15).await;
    mock.script(Script::BargeIn);
    mock.wait("truncate", |s| !s.truncates.is_empty()).await;
    let at_truncate = call.received.load(Ordering::SeqCst);
    mock.script(Script::Respond { ms: 500, seed: 44 });
    mock.wait("second response done", |s| {
        s.responses.len() == 2 && s.responses[1].status == "completed"
    })
    .await;
    call.wait_received(at_truncate + 24).await;
    sender.await.unwrap();
    let caller24 = speech_like(24000, 4.0, 12);
    mock.wait("caller audio", |s| {
        s.caller_bytes.len() >= (caller24.len() - 480) * 2
    })
    .await;
    let (_, got) = call.close().await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_no_problems(&mock);

    let (truncates, responses, barge_at, caller_bytes, types) = mock.with(|s| {
        (
            s.truncates.clone(),
            s.responses.clone(),
            s.barge_in_at.unwrap(),
            s.caller_bytes.clone(),
            s.client_types(),
        )
    });
    assert!(
        !types.iter().any(|t| t == "response.cancel"),
        "the server cancels by itself"
    );
    assert_eq!(responses[0].status, "cancelled");

    // clearAudio once; nothing between it and the next response's audio.
    let clears = got.clears();
    assert_eq!(clears.len(), 1, "exactly one clearAudio");
    let clear_at = clears[0];
    let frames = got.audio_frames();
    let before: Vec<i16> = got
        .events
        .iter()
        .take_while(|e| !matches!(e, Playback::Clear { .. }))
        .filter_map(|e| match e {
            Playback::Audio { samples, .. } => Some(samples.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let received_ms = before.len() as u64 / 8;
    let second_first_delta = responses[1].first_delta_at.unwrap();
    let gap = frames
        .iter()
        .filter(|(at, _)| *at > clear_at && *at < second_first_delta)
        .count();
    assert_eq!(gap, 0, "late audio of the interrupted response was played");

    // The truncate: the item being played, what was heard, never more than generated.
    assert_eq!(truncates.len(), 1);
    let (truncate, generated_ms) = &truncates[0];
    assert_eq!(truncate["item_id"], responses[0].item_id.as_str());
    assert_eq!(truncate["content_index"], 0);
    let end_ms = truncate["audio_end_ms"].as_u64().unwrap();
    println!(
        "truncate: audio_end_ms {end_ms}, FreeSWITCH received {received_ms} ms, mock generated {generated_ms} ms"
    );
    assert!(end_ms <= *generated_ms);
    assert!(
        received_ms.saturating_sub(LEAD_MS + 20) <= end_ms && end_ms <= received_ms,
        "audio_end_ms {end_ms} vs {received_ms} ms received (lead {LEAD_MS})"
    );
    println!(
        "barge-in cut (speech_started sent -> clearAudio at FreeSWITCH): {:.1} ms",
        clear_at.duration_since(barge_at).as_secs_f64() * 1000.0
    );
    let late = daemon
        .wait_log(|l| message(l) == "dropped late audio of the interrupted response")
        .await;
    assert_eq!(field(&late, "late_deltas"), 2);

    // Fidelity both ways through the 8 kHz <-> 24 kHz resamplers.
    let ref1 = speech_like(8000, 6.0, 33);
    let snr1 = snr_db_within(&ref1[..before.len()], &before, 80);
    let after: Vec<i16> = got
        .events
        .iter()
        .skip_while(|e| !matches!(e, Playback::Clear { .. }))
        .filter_map(|e| match e {
            Playback::Audio { samples, .. } => Some(samples.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let after_frames = after.len() / 160;
    assert!(
        (24..=26).contains(&after_frames),
        "{after_frames} frames after the barge-in"
    );
    let ref2 = speech_like(8000, 0.5, 44);
    let n = after.len().min(ref2.len());
    let snr2 = snr_db_within(&ref2[..n], &after[..n], 80);
    let mut up = Vec::new();
    for c in caller_bytes.chunks_exact(2) {
        up.push(i16::from_le_bytes([c[0], c[1]]));
    }
    let snr_up = snr_db_within(&caller24, &up, 240);
    println!("SNR OpenAI -> FreeSWITCH (pcm24): interrupted {snr1:.1} dB, next {snr2:.1} dB; caller -> OpenAI {snr_up:.1} dB");
    assert!(snr1 > 30.0 && snr2 > 30.0 && snr_up > 30.0);

    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "barge_ins"), 1);
    // The provider recognised the late deltas by response id, so none reached the
    // session (which would have dropped and counted them by item).
    assert_eq!(field(&summary, "late_audio_dropped"), 0);
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

/// A bad key: HTTP 401 on the upgrade with OpenAI's JSON error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_ends_the_call_without_leaking_the_key() {
    let body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
    );
    let mut options = MockOptions::new(MockFormat::Pcmu, KEY);
    options.refuse = Some((401, body));
    let mock = MockOpenAi::start(options).await;
    let daemon = start_daemon(&config("pcmu", ""), &env(&mock.url())).await;
    let id = "oai-401";
    let call = connect(&daemon, id).await;
    let writer = call.writer.clone();
    let sender = tokio::spawn(async move {
        let _ = writer.send_audio(&[0u8; 320]).await;
    });
    let summary = daemon.wait_call_end(id).await;
    let got = ended(call).await;
    sender.await.unwrap();
    assert!(
        got.events.iter().any(|e| matches!(e, Playback::Close(..))),
        "FreeSWITCH gets a Close: {:?}",
        got.events
    );
    assert_eq!(field(&summary, "end_reason"), "provider_error");
    let detail = field(&summary, "end_detail").as_str().unwrap().to_owned();
    assert!(detail.contains("http_401"), "{detail}");
    let out = daemon.output();
    assert!(out.contains("401"), "{out}");
    assert!(out.contains("Incorrect API key"), "{out}");
    assert!(!out.contains(KEY), "the API key leaked into the output");
    assert_eq!(mock.with(|s| s.connections), 1, "no retries");
    daemon.stop().await;
}

/// The watchdog logs a silent turn once; then the server closes mid-call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_then_provider_closes_mid_call() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let daemon = start_daemon(
        &config("pcmu", "response_timeout_secs = 1"),
        &env(&mock.url()),
    )
    .await;
    let id = "oai-close";
    let call = connect(&daemon, id).await;
    let sender = tokio::spawn(send_until_closed(
        call.writer.clone(),
        speech_like(8000, 20.0, 5),
    ));
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::SilentTurn);
    let silent = daemon.wait_watchdog().await;
    println!("watchdog: {}", field(&silent, "warning"));
    mock.script(Script::Respond { ms: 400, seed: 7 });
    call.wait_received(20).await;
    mock.script(Script::Close {
        code: 1011,
        reason: "server_error".into(),
    });
    let summary = daemon.wait_call_end(id).await;
    let got = ended(call).await;
    sender.await.unwrap();
    assert!(got.events.iter().any(|e| matches!(e, Playback::Close(..))));
    assert_eq!(field(&summary, "end_reason"), "provider_closed");
    let detail = field(&summary, "end_detail").as_str().unwrap();
    assert!(detail.contains("close code 1011"), "{detail}");
    let warnings = daemon
        .logs()
        .iter()
        .filter(|l| {
            field(l, "warning")
                .as_str()
                .is_some_and(|w| w.starts_with("provider silent"))
        })
        .count();
    assert_eq!(warnings, 1, "once per turn");
    assert_no_problems(&mock);
    daemon.stop().await;
}

/// OpenAI's 60-minute limit: `error` session_expired, then close 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expired_ends_the_call_with_that_reason() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let daemon = start_daemon(&config("pcmu", ""), &env(&mock.url())).await;
    let id = "oai-expired";
    let call = connect(&daemon, id).await;
    let sender = tokio::spawn(send_until_closed(
        call.writer.clone(),
        speech_like(8000, 5.0, 3),
    ));
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::Error {
        code: "session_expired".into(),
        message: "Your session hit the maximum duration of 60 minutes.".into(),
    });
    mock.script(Script::Close {
        code: 1001,
        reason: "session expired".into(),
    });
    let summary = daemon.wait_call_end(id).await;
    let got = ended(call).await;
    sender.await.unwrap();
    assert!(got.events.iter().any(|e| matches!(e, Playback::Close(..))));
    assert_eq!(field(&summary, "end_reason"), "provider_closed");
    let detail = field(&summary, "end_detail").as_str().unwrap();
    assert!(
        detail.contains("OpenAI session reached its 60-minute limit"),
        "{detail}"
    );
    // The session logs it as a warning with the code (its `message` field shadows the
    // log message in JSON, so match on the code).
    let err = daemon
        .wait_log(|l| field(l, "code") == "session_expired")
        .await;
    assert_eq!(err["level"], "WARN");
    daemon.stop().await;
}

/// `wss://` with a private CA given through SSL_CERT_FILE: proves the rustls crypto
/// provider and the native-roots loading work in the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_private_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, server) = tls_setup();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let mut options = MockOptions::new(MockFormat::Pcmu, KEY);
    options.tls = Some(server);
    let mock = MockOpenAi::start(options).await;
    let url = format!("wss://localhost:{}/v1/realtime", mock.addr.port());
    let mut env = env(&url);
    env.push(("SSL_CERT_FILE", ca_path.display().to_string()));
    let daemon = start_daemon(&config("pcmu", ""), &env).await;
    let id = "oai-wss";
    let call = connect(&daemon, id).await;
    let writer = call.writer.clone();
    let sender = tokio::spawn(async move {
        send_paced(&writer, &speech_like(8000, 1.0, 9), 8000, 1).await;
    });
    mock.wait("session.updated over TLS", |s| s.session_updated_sent)
        .await;
    mock.script(Script::Respond { ms: 500, seed: 8 });
    call.wait_received(25).await;
    sender.await.unwrap();
    mock.wait("caller audio over TLS", |s| s.appends >= 50)
        .await;
    let (_, got) = call.close().await;
    assert!(got.audio().len() >= 4000);
    assert_no_problems(&mock);
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

/// A CA and a `localhost` server certificate signed by it.
fn tls_setup() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "voicebridge test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();

    let chain = vec![cert.der().clone()];
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

/// `voicebridge check`'s probe: a real session setup against the mock, and the exact
/// failure on a refused key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_opens_a_session_and_reports_failures() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcma, KEY)).await;
    let load = |url: String| {
        voicebridge::config::Config::from_toml_str(
            &config("pcma", ""),
            [
                ("VOICEBRIDGE__PROVIDERS__OPENAI__URL".to_owned(), url),
                ("OPENAI_API_KEY".to_owned(), KEY.to_owned()),
            ],
        )
        .unwrap()
    };
    let config_ok = load(mock.url());
    let ok = voicebridge::providers::openai::check(&config_ok, config_ok.default_route())
        .await
        .expect("check passes against the mock");
    println!("check: {ok}");
    assert!(ok.starts_with("OK"), "{ok}");
    assert!(ok.contains("PCMA/8000"), "{ok}");
    mock.wait("client close", |s| s.connection_ended).await;
    assert_no_problems(&mock);

    let mut options = MockOptions::new(MockFormat::Pcma, KEY);
    options.refuse = Some((
        401,
        r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#.into(),
    ));
    let refusing = MockOpenAi::start(options).await;
    let config_bad = load(refusing.url());
    let err = voicebridge::providers::openai::check(&config_bad, config_bad.default_route())
        .await
        .unwrap_err();
    println!("check: {err}");
    assert!(
        err.contains("HTTP 401") && err.contains("Incorrect API key"),
        "{err}"
    );
    assert!(!err.contains(KEY));
}

/// `max_duration_secs` with a `goodbye`: the assistant is told to say it, it is played
/// out to the end, then the call is closed (and hung up over ESL when configured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodbye_is_played_before_the_duration_limit_hangs_up() {
    let mut options = MockOptions::new(MockFormat::Pcmu, KEY);
    options.greeting_ms = 600;
    let mock = MockOpenAi::start(options).await;
    let toml = config(
        "pcmu",
        "max_duration_secs = 1\ngoodbye = \"Our time is up, {{caller_id}}. Goodbye!\"",
    );
    let daemon = start_daemon(&toml, &env(&mock.url())).await;
    let id = "oai-goodbye";
    let call = connect(&daemon, id).await;
    let sender = tokio::spawn(send_until_closed(
        call.writer.clone(),
        vec![0i16; 8000 * 15],
    ));
    let summary = daemon.wait_call_end(id).await;
    let got = ended(call).await;
    sender.await.unwrap();
    assert_eq!(field(&summary, "end_reason"), "max_duration");

    let creates: Vec<_> = mock.with(|s| {
        s.client_events
            .iter()
            .filter(|v| v["type"] == "response.create")
            .cloned()
            .collect()
    });
    assert_eq!(creates.len(), 1, "exactly one response.create: the goodbye");
    let instructions = creates[0]["response"]["instructions"].as_str().unwrap();
    assert!(
        instructions.contains("Our time is up, +3902123. Goodbye!"),
        "{instructions}"
    );
    // All 600 ms of the goodbye reached FreeSWITCH before our Close.
    let close_at = got
        .events
        .iter()
        .position(|e| matches!(e, Playback::Close(..)))
        .expect("the daemon closed the stream");
    let frames_before_close = got.events[..close_at]
        .iter()
        .filter(|e| matches!(e, Playback::Audio { .. }))
        .count();
    assert_eq!(frames_before_close, 30, "600 ms of goodbye in 20 ms frames");
    assert_no_problems(&mock);
    daemon.stop().await;
}

/// FreeSWITCH hangs up while the provider never answers our Close: FreeSWITCH's TCP
/// connection is closed right after the WebSocket close handshake, not after the
/// provider's close has timed out (libwsc's `disconnect()`, the module's hang-up path,
/// blocks until it sees the TCP close). Ordered by the daemon's own clock: the socket
/// ended before the call's summary line, which waits for the provider task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_up_closes_the_freeswitch_socket_without_waiting_for_the_provider() {
    let mut opts = MockOptions::new(MockFormat::Pcmu, KEY);
    opts.answer_close = false;
    let mock = MockOpenAi::start(opts).await;
    let d = start_daemon(&config("pcmu", ""), &env(&mock.url())).await;
    let id = "hangup-fast";
    let call = connect(&d, id).await;
    d.wait_log(|l| message(l) == "provider ready").await;
    let started = std::time::Instant::now();
    // Returns once the reader has seen the TCP connection end.
    let (outcome, _) = call.close().await;
    let closed_at = std::time::SystemTime::now();
    let took = started.elapsed();
    assert!(outcome.echoed, "close handshake completed: {outcome:?}");
    println!(
        "hang-up: TCP closed {:.1} ms after our Close",
        took.as_secs_f64() * 1000.0
    );
    mock.wait("the provider got our Close", |s| s.client_closed)
        .await;
    let summary = d.wait_call_end(id).await;
    let logged = summary["timestamp"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .expect("timestamp of the summary line");
    assert!(
        closed_at < logged,
        "FreeSWITCH's socket stayed open until the provider task had finished"
    );
    d.stop().await;
}

/// `silence_reprompt_ms` is the session's `turn_detection.idle_timeout_ms`; when the
/// server says the caller stayed silent (`input_audio_buffer.timeout_triggered`) and
/// re-prompts, the re-prompt is played like any reply, with no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_reprompt_sets_the_idle_timeout_and_the_reprompt_plays() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let daemon = start_daemon(
        &config("pcmu", "silence_reprompt_ms = 8000"),
        &env(&mock.url()),
    )
    .await;
    let id = "oai-reprompt";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let update = mock.with(|s| s.session_update.clone()).unwrap();
    assert_eq!(
        update["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"],
        8000
    );
    mock.script(Script::Raw(
        json!({"type": "input_audio_buffer.timeout_triggered", "event_id": "ev_idle",
               "audio_start_ms": 9000, "audio_end_ms": 17000, "item_id": "item_idle"})
        .to_string(),
    ));
    mock.script(Script::Respond { ms: 600, seed: 5 });
    call.wait_received(30).await;
    let (_, got) = call.close().await;
    assert!(got.error.is_none(), "{:?}", got.error);
    daemon.wait_call_end(id).await;
    assert_no_problems(&mock);
    let warned = daemon
        .logs()
        .iter()
        .filter(|l| l["level"] == "WARN")
        .count();
    assert_eq!(warned, 0, "no warning for the re-prompt");
    daemon.stop().await;
}
