//! End to end over loopback: the real `voicebridge` binary and a fake carrier
//! (`common::fake_twilio`, faithful to Twilio Media Streams and Telnyx bidirectional
//! streaming) on the `/twilio/<route>` and `/telnyx/<route>` paths: fidelity both
//! ways, played-position marks, barge-in with `clear`, DTMF, the signature check, and
//! bad input.

mod common;

use std::sync::Arc;

use common::daemon::{field, message, Daemon};
use common::fake_twilio::{FakeTwilio, Got, TwilioOptions};
use common::mock_openai::{MockFormat, MockOpenAi, MockOptions, Script};
use tokio_tungstenite::tungstenite::Message;
use voicebridge::audio::g711;
use voicebridge::audio::signal::{snr_db_within, speech_like};

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
    let fake = FakeTwilio::connect(daemon.addr, TwilioOptions::twilio("call"))
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
                Got::Media { payload, .. } => Some(payload.len()),
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

const KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";

fn openai_config() -> String {
    format!(
        r#"
[freeswitch]
playback_lead_ms = {LEAD_MS}

[call]
provider = "openai"
instructions = "You answer the phone for ACME. The caller is {{{{caller_id}}}}."

[providers.openai]
model = "gpt-realtime"
voice = "marin"
audio_format = "pcmu"
"#
    )
}

/// The caller talks over a long answer: `clear` in the same tick, nothing of the cut
/// reply after it, and the truncate is what the fake had really played (known from
/// the marks), within 20 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_barge_in_clears_and_truncates_what_was_played() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let url = mock.url();
    let daemon = Daemon::start(
        &openai_config(),
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.as_str()),
            ("OPENAI_API_KEY", KEY),
        ],
    )
    .await;
    let fake = Arc::new(
        FakeTwilio::connect(daemon.addr, TwilioOptions::twilio("call"))
            .await
            .expect("accepted"),
    );
    let caller = speech_like(8000, 5.0, 12);
    let sender = {
        let fake = Arc::clone(&fake);
        let audio = ulaw(&caller);
        tokio::spawn(async move { fake.send_paced(&audio).await })
    };
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let update = mock.with(|s| s.session_update.clone()).unwrap();
    let instructions = update["session"]["instructions"].as_str().unwrap_or("");
    assert!(
        instructions.contains("+3902123"),
        "the caller from customParameters reached the template: {instructions}"
    );
    mock.script(Script::Respond { ms: 6000, seed: 33 });
    // 600 ms played, and a mark back, before the caller barges in.
    fake.wait("600 ms played", |s| {
        s.played.len() >= 4800 && !s.echoed.is_empty()
    })
    .await;
    mock.script(Script::BargeIn);
    mock.wait("truncate", |s| !s.truncates.is_empty()).await;
    fake.wait("clear", |s| s.clears() == 1).await;
    mock.script(Script::Respond { ms: 500, seed: 44 });
    mock.wait("second response done", |s| {
        s.responses.len() == 2 && s.responses[1].status == "completed"
    })
    .await;
    fake.wait("the second reply played", |s| {
        let after_clear: usize = s
            .got
            .iter()
            .skip_while(|g| !matches!(g, Got::Clear { .. }))
            .map(|g| match g {
                Got::Media { payload, .. } => payload.len(),
                _ => 0,
            })
            .sum();
        after_clear >= 4000 && s.played.len() == s.media_bytes() - dropped(s)
    })
    .await;
    sender.await.unwrap();
    fake.hang_up();
    fake.wait_ended().await;

    let problems = mock.with(|s| s.problems.clone());
    assert!(
        problems.is_empty(),
        "the mock found problems: {problems:#?}"
    );
    let (truncates, responses, caller_bytes) = mock.with(|s| {
        (
            s.truncates.clone(),
            s.responses.clone(),
            s.caller_bytes.clone(),
        )
    });
    let (got, played_at_clear, fake_problems) =
        fake.with(|s| (s.got.clone(), s.played_at_clear.clone(), s.problems.clone()));
    assert!(fake_problems.is_empty(), "{fake_problems:?}");
    assert_eq!(responses[0].status, "cancelled");

    // Nothing of the cut reply after the clear: no media between it and the second
    // reply's first delta.
    let clear_at = got
        .iter()
        .find_map(|g| match g {
            Got::Clear { at, .. } => Some(*at),
            _ => None,
        })
        .unwrap();
    let second = responses[1].first_delta_at.unwrap().into_std();
    let late = got
        .iter()
        .filter(|g| matches!(g, Got::Media { at, .. } if *at > clear_at && *at < second))
        .count();
    assert_eq!(late, 0, "media of the interrupted reply after the clear");

    // The truncate is what had been played when the clear arrived.
    assert_eq!(truncates.len(), 1);
    let (truncate, generated_ms) = &truncates[0];
    assert_eq!(truncate["item_id"], responses[0].item_id.as_str());
    let end_ms = truncate["audio_end_ms"].as_u64().unwrap() as i64;
    let played_ms = played_at_clear[0] as i64 / 8;
    let received_ms = got
        .iter()
        .take_while(|g| !matches!(g, Got::Clear { .. }))
        .map(|g| match g {
            Got::Media { payload, .. } => payload.len() as i64,
            _ => 0,
        })
        .sum::<i64>()
        / 8;
    println!("truncate audio_end_ms {end_ms}, fake played {played_ms} ms at the clear (received {received_ms} ms)");
    assert!(end_ms as u64 <= *generated_ms);
    assert!(
        (end_ms - played_ms).abs() <= 20,
        "truncate {end_ms} ms vs {played_ms} ms played"
    );

    // Fidelity: μ-law end to end is passed through, so both ways are the same signal.
    let before: Vec<u8> = got
        .iter()
        .take_while(|g| !matches!(g, Got::Clear { .. }))
        .filter_map(|g| match g {
            Got::Media { payload, .. } => Some(payload.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let reference = speech_like(8000, 6.0, 33);
    let snr_down = snr_db_within(&reference[..before.len()], &unulaw(&before), 80);
    let snr_up = snr_db_within(&caller, &unulaw(&caller_bytes), 80);
    println!("SNR OpenAI -> Twilio {snr_down:.1} dB, Twilio -> OpenAI {snr_up:.1} dB");
    assert!(snr_down > 30.0 && snr_up > 30.0);

    let summary = call_summary(&daemon).await;
    assert_eq!(field(&summary, "barge_ins"), 1);
    daemon.stop().await;
}

/// Bytes the clears dropped from the fake's playback queue.
fn dropped(s: &common::fake_twilio::TwilioState) -> usize {
    s.got
        .iter()
        .map(|g| match g {
            Got::Clear { dropped, .. } => *dropped,
            _ => 0,
        })
        .sum()
}

/// `dtmf` messages are the caller's keys: logged, counted, in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_is_counted() {
    let daemon = Daemon::start(&echo_config("utterance", ""), &[]).await;
    let fake = FakeTwilio::connect(daemon.addr, TwilioOptions::twilio("call"))
        .await
        .expect("accepted");
    daemon.wait_log(|l| message(l) == "call started").await;
    for digit in ['1', '2', '#'] {
        fake.send_dtmf(digit);
    }
    daemon
        .wait_log(|l| message(l) == "DTMF from the caller" && field(l, "digit") == "#")
        .await;
    let digits: Vec<String> = daemon
        .logs()
        .iter()
        .filter(|l| message(l) == "DTMF from the caller")
        .map(|l| field(l, "digit").as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(digits, ["1", "2", "#"]);
    let (_, body) = common::http::get(daemon.admin, "/metrics").await;
    let total: f64 = body
        .lines()
        .filter(|l| l.starts_with("voicebridge_dtmf_keys_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 3.0, "{body}");
    let _fake = fake.finish().await;
    let summary = call_summary(&daemon).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

/// Unknown events are ignored (the call goes on); what is not Media Streams ends the
/// call with one clear line and a Close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_events_are_ignored() {
    let daemon = Daemon::start(&echo_config("stream", ""), &[]).await;
    let fake = FakeTwilio::connect(daemon.addr, TwilioOptions::twilio("call"))
        .await
        .expect("accepted");
    fake.send_unknown("transcription");
    fake.send_unknown("error");
    fake.send_paced(&ulaw(&speech_like(8000, 0.5, 3))).await;
    fake.wait("the echo", |s| s.played.len() >= 1600).await;
    let fake = fake.finish().await;
    assert!(fake.with(|s| s.problems.is_empty()));
    let summary = call_summary(&daemon).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

async fn bad_input_ends_the_call(msg: Message, expect_reason: &str, expect_code: u16) {
    let daemon = Daemon::start(&echo_config("stream", ""), &[]).await;
    let fake = FakeTwilio::connect(daemon.addr, TwilioOptions::twilio("call"))
        .await
        .expect("accepted");
    fake.send_paced(&ulaw(&speech_like(8000, 0.2, 3))).await;
    daemon.wait_log(|l| message(l) == "call started").await;
    fake.send_raw(msg);
    fake.wait_ended().await;
    let close = fake.with(|s| s.close.clone());
    assert_eq!(close.map(|c| c.0), Some(expect_code), "the Close code");
    let summary = call_summary(&daemon).await;
    let reason = field(&summary, "end_reason")
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert_eq!(reason, expect_reason);
    let detail = daemon
        .logs()
        .iter()
        .filter(|l| common::daemon::call_id(l).is_some())
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!detail.contains("panicked"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_ends_the_call() {
    bad_input_ends_the_call(Message::text("hello?"), "freeswitch_error", 1007).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame_ends_the_call() {
    bad_input_ends_the_call(Message::binary(vec![0u8; 160]), "freeswitch_error", 1007).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_ends_the_call() {
    let big = format!(
        r#"{{"event":"media","media":{{"payload":"{}"}}}}"#,
        "A".repeat(300 * 1024)
    );
    bad_input_ends_the_call(Message::text(big), "freeswitch_message_too_big", 1009).await;
}

const TWILIO_TOKEN: &str = "twilio-auth-token-0123456789abcdef";

/// `X-Twilio-Signature` as Twilio computes it, independently of the daemon's code:
/// Base64(HMAC-SHA1(auth token, URL)).
fn twilio_signature(token: &str, url: &str) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn signed(url: &str, token: &str) -> TwilioOptions {
    let mut o = TwilioOptions::twilio("call");
    o.headers
        .push(("X-Twilio-Signature".into(), twilio_signature(token, url)));
    o
}

/// With `[twilio] auth_token`, only upgrades signed for the public URL are taken;
/// the rest are refused before the 101, and no secret reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_signature_is_checked() {
    let extra = format!(
        "\n[twilio]\nauth_token = \"{TWILIO_TOKEN}\"\npublic_url = \"wss://vb.example.com\"\n"
    );
    let daemon = Daemon::start(&format!("{}{extra}", echo_config("stream", "")), &[]).await;
    let url = "wss://vb.example.com/twilio/call";

    let good = signed(url, TWILIO_TOKEN);
    let sig = good.headers[0].1.clone();
    let fake = FakeTwilio::connect(daemon.addr, good)
        .await
        .expect("a signed upgrade is accepted");
    daemon.wait_log(|l| message(l) == "call started").await;
    let _fake = fake.finish().await;
    call_summary(&daemon).await;

    let refused = |o| async {
        FakeTwilio::connect(daemon.addr, o)
            .await
            .err()
            .map(|r| r.status)
    };
    assert_eq!(
        refused(TwilioOptions::twilio("call")).await,
        Some(401),
        "unsigned"
    );
    assert_eq!(
        refused(signed(url, "another-accounts-token")).await,
        Some(403)
    );
    assert_eq!(
        refused(signed("wss://vb.example.com/twilio/other", TWILIO_TOKEN)).await,
        Some(403),
        "signed for another URL"
    );
    assert_eq!(
        refused(signed("https://vb.example.com/twilio/call", TWILIO_TOKEN)).await,
        Some(403),
        "https is not the scheme Twilio signs a stream with"
    );
    daemon
        .wait_log(|l| {
            message(l) == "upgrade rejected"
                && field(l, "reason")
                    .as_str()
                    .unwrap_or("")
                    .contains("does not match")
        })
        .await;
    let out = daemon.output();
    assert!(
        !out.contains(TWILIO_TOKEN) && !out.contains(&sig),
        "a secret in the log"
    );
    daemon.stop().await;
}

/// Without `public_url`, the signed URL is `wss://` + the Host header; our bearer
/// token is accepted in place of a signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_from_the_host_header_or_a_bearer_token() {
    let bearer = "our-own-bearer-token-0123456789";
    let extra = format!(
        "\n[server]\nauth_tokens = [\"{bearer}\"]\n\n[twilio]\nauth_token = \"{TWILIO_TOKEN}\"\n"
    );
    let daemon = Daemon::start(&format!("{}{extra}", echo_config("stream", "")), &[]).await;
    let host = daemon.addr.to_string();
    let fake = FakeTwilio::connect(
        daemon.addr,
        signed(&format!("wss://{host}/twilio/call"), TWILIO_TOKEN),
    )
    .await
    .expect("signed for wss://<Host>");
    let _fake = fake.finish().await;
    call_summary(&daemon).await;

    let mut with_bearer = TwilioOptions::twilio("call");
    with_bearer
        .headers
        .push(("Authorization".into(), format!("Bearer {bearer}")));
    let fake = FakeTwilio::connect(daemon.addr, with_bearer)
        .await
        .expect("our token instead of a signature");
    let _fake = fake.finish().await;
    let mut wrong = TwilioOptions::twilio("call");
    wrong.headers.push((
        "Authorization".into(),
        "Bearer not-our-token-at-all-0000".into(),
    ));
    assert_eq!(
        FakeTwilio::connect(daemon.addr, wrong)
            .await
            .err()
            .map(|r| r.status),
        Some(401)
    );
    daemon.stop().await;
}

/// Telnyx, PCMA at 8 kHz, with chunks swapped in pairs on the wire: put back in order,
/// the echo comes back as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_pcma_out_of_order_roundtrip() {
    let daemon = Daemon::start(&echo_config("stream", ""), &[]).await;
    let fake = FakeTwilio::connect(daemon.addr, TwilioOptions::telnyx("call", "PCMA", 8000))
        .await
        .expect("accepted");
    let caller = common::call::test_signal(8000, 3.0, 9);
    let mut samples = caller.clone();
    samples.extend(vec![0i16; 4000]);
    let mut sent = Vec::new();
    g711::alaw_encode(&samples, &mut sent);
    fake.send_paced(&sent).await;
    fake.wait("the echo played", |s| s.played.len() >= caller.len() + 1600)
        .await;
    let fake = fake.finish().await;
    let (played, problems) = fake.with(|s| (s.played.clone(), s.problems.clone()));
    assert!(problems.is_empty(), "{problems:?}");
    let mut back = Vec::new();
    g711::alaw_decode(&played, &mut back);
    let snr = snr_db_within(&caller, &back[1600..], 80);
    println!("SNR telnyx PCMA, reordered chunks: {snr:.1} dB");
    // Chunks left swapped would be a discontinuity every 20 ms: far below 30 dB.
    assert!(snr > 30.0, "SNR {snr:.1} dB");
    let start = daemon.wait_log(|l| message(l) == "call started").await;
    assert_eq!(field(&start, "format"), "PCMA/8000");
    call_summary(&daemon).await;
    daemon.stop().await;
}

/// Telnyx L16 at 16 kHz (network byte order, as RTP carries it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_l16_16k_roundtrip() {
    let daemon = Daemon::start(&echo_config("stream", ""), &[]).await;
    let fake = FakeTwilio::connect(daemon.addr, TwilioOptions::telnyx("call", "L16", 16000))
        .await
        .expect("accepted");
    let caller = common::call::test_signal(16000, 2.0, 5);
    let mut samples = caller.clone();
    samples.extend(vec![0i16; 8000]);
    let sent: Vec<u8> = samples.iter().flat_map(|s| s.to_be_bytes()).collect();
    fake.send_paced(&sent).await;
    fake.wait("the echo played", |s| {
        s.played.len() >= (caller.len() + 3200) * 2
    })
    .await;
    let fake = fake.finish().await;
    let played = fake.with(|s| s.played.clone());
    let back: Vec<i16> = played
        .chunks_exact(2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .collect();
    let snr = snr_db_within(&caller, &back[3200..], 160);
    println!("SNR telnyx L16 16 kHz: {snr:.1} dB");
    assert!(snr > 60.0, "SNR {snr:.1} dB");
    call_summary(&daemon).await;
    daemon.stop().await;
}

/// `/twilio` without a route: the `route` custom parameter picks it (Twilio URLs carry
/// no query string); a route in the path wins; an unknown one is refused with a Close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_from_the_path_or_a_custom_parameter() {
    let routes = "\n[[routes]]\nname = \"sales\"\n";
    let daemon = Daemon::start(&format!("{}{routes}", echo_config("stream", "")), &[]).await;
    let route_of = |l: &serde_json::Value| l["span"]["route"].as_str().unwrap_or("").to_owned();

    let mut by_param = TwilioOptions::twilio("call");
    by_param.path = "/twilio".into();
    by_param.params = serde_json::json!({"route": "sales"});
    let fake = FakeTwilio::connect(daemon.addr, by_param)
        .await
        .expect("accepted");
    let started = daemon.wait_log(|l| message(l) == "call started").await;
    assert_eq!(route_of(&started), "sales");
    let _fake = fake.finish().await;
    daemon
        .wait_log(|l| message(l) == "call ended" && route_of(l) == "sales")
        .await;

    let mut path_wins = TwilioOptions::twilio("call");
    path_wins.params = serde_json::json!({"route": "sales"});
    let fake = FakeTwilio::connect(daemon.addr, path_wins)
        .await
        .expect("accepted");
    daemon
        .wait_log(|l| message(l) == "call started" && route_of(l) == "call")
        .await;
    let _fake = fake.finish().await;

    let mut unknown = TwilioOptions::twilio("call");
    unknown.path = "/twilio".into();
    unknown.params = serde_json::json!({"route": "nope"});
    let fake = FakeTwilio::connect(daemon.addr, unknown)
        .await
        .expect("upgraded");
    fake.wait_ended().await;
    assert_eq!(fake.with(|s| s.close.clone().map(|c| c.0)), Some(1008));
    daemon
        .wait_log(|l| {
            message(l) == "upgrade rejected"
                && field(l, "reason")
                    .as_str()
                    .unwrap_or("")
                    .contains("unknown route")
        })
        .await;
    daemon.stop().await;
}

/// A stream whose first message after `connected` is not a `start` never becomes a
/// call: one line, a Close 1008, no call started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_start_is_refused() {
    let daemon = Daemon::start(&echo_config("stream", ""), &[]).await;
    let mut opts = TwilioOptions::twilio("call");
    opts.no_start = true;
    let fake = FakeTwilio::connect(daemon.addr, opts)
        .await
        .expect("upgraded");
    fake.send_raw(Message::text("{not json"));
    fake.wait_ended().await;
    assert_eq!(fake.with(|s| s.close.clone().map(|c| c.0)), Some(1008));
    let refused = daemon
        .wait_log(|l| message(l) == "media stream refused: no valid start")
        .await;
    assert!(
        field(&refused, "reason")
            .as_str()
            .unwrap_or("")
            .contains("not JSON"),
        "{refused}"
    );
    assert!(
        common::daemon::call_id(&refused).is_some(),
        "the line names the call"
    );
    assert!(!daemon.logs().iter().any(|l| message(l) == "call started"));
    daemon.stop().await;
}
