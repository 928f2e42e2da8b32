//! End to end over loopback with Asterisk chan_websocket as the telephony side: the
//! real `voicebridge` binary, the fake Asterisk (`common::fake_asterisk_ws`, faithful
//! to chan_websocket.c: its upgrade, `MEDIA_START`, the 20 ms drained queue with
//! XOFF/XON, marks and `FLUSH_MEDIA`) and the echo provider at 24 kHz, so every call
//! goes through the real transcoding, pacing, marks and barge-in path.

mod common;

use common::daemon::{field, message, Daemon};
use common::fake_asterisk_ws::{dial, AsteriskOptions, Report};
use voicebridge::audio::g711;
use voicebridge::audio::signal::{snr_db_within, speech_like};

const LEAD_MS: u64 = 60;

fn config(mode: &str, extra: &str) -> String {
    format!(
        r#"
[freeswitch]
playback_lead_ms = {LEAD_MS}

[call]
provider = "echo"
{extra}

[providers.echo]
mode = "{mode}"
delay_ms = 200
sample_rate = 24000
"#
    )
}

/// Caller samples as the channel's bytes.
fn encode(format: &str, samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    match format {
        "ulaw" => g711::ulaw_encode(samples, &mut out),
        "alaw" => g711::alaw_encode(samples, &mut out),
        _ => out = samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
    }
    out
}

fn decode(format: &str, bytes: &[u8]) -> Vec<i16> {
    let mut out = Vec::new();
    match format {
        "ulaw" => g711::ulaw_decode(bytes, &mut out),
        "alaw" => g711::alaw_decode(bytes, &mut out),
        _ => {
            out = bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect()
        }
    }
    out
}

fn rate_of(format: &str) -> u32 {
    match format {
        "slin16" => 16000,
        "slin24" => 24000,
        _ => 8000,
    }
}

/// Checks every call must pass: whole frames only, the queue never near XOFF.
fn assert_well_fed(report: &Report, frame: usize) {
    assert!(report.error.is_none(), "{:?}", report.error);
    assert!(
        report.binary_sizes.iter().all(|n| n % frame == 0 && *n > 0),
        "every binary message is whole {frame}-byte frames: {:?}",
        report.binary_sizes.iter().find(|n| *n % frame != 0)
    );
    assert_eq!(report.remainder_bytes_dropped, 0);
    assert_eq!(report.xoffs, 0, "the lead is bounded: never MEDIA_XOFF");
    println!(
        "max Asterisk queue {} frames ({} ms)",
        report.max_queue,
        report.max_queue * 20
    );
    // The pacer's lead plus the unplayed bound, in frames, with one frame of slack:
    // far below the driver's 900, so no backlog can build.
    assert!(
        report.max_queue <= ((LEAD_MS + 200 + 40) / 20 + 1) as usize,
        "Asterisk queued {} frames",
        report.max_queue
    );
}

/// Stream mode: the caller's audio comes back 200 ms later through the call's format
/// → 24 kHz → back, with `early` frames sent before `MEDIA_START`.
async fn roundtrip(format: &'static str, json: bool, early: usize) {
    let daemon = Daemon::start(&config("stream", ""), &[]).await;
    let rate = rate_of(format);
    let id = format!("ast-{format}-{json}-{early}");
    let caller = common::call::test_signal(rate, 3.0, 7);
    let mut speech = caller.clone();
    speech.extend(vec![0i16; rate as usize / 2]);
    let mut opts =
        AsteriskOptions::new(format!("/asterisk/call?call={id}&from=%2B3902123"), format);
    opts.json = json;
    opts.early_frames = early;
    opts.speech = encode(format, &speech);
    let frame = common::fake_asterisk_ws::optimal_frame_size(format);
    let fake = dial(daemon.addr, opts).await.expect("upgrade accepted");
    fake.wait_spoken().await;
    // The echo's 200 ms and our lead are still to come.
    fake.wait_played(speech.len() / (rate as usize / 50)).await;
    let report = fake.hangup().await;
    assert_well_fed(&report, frame);

    let played = decode(format, &report.played_bytes());
    let delay = rate as usize / 5;
    assert!(
        played.len() > delay + caller.len() / 2,
        "too little came back: {}",
        played.len()
    );
    let reference = decode(format, &encode(format, &caller));
    let snr = snr_db_within(&reference, &played[delay..], rate as usize / 100);
    println!("SNR {format} json={json} early={early}: {snr:.1} dB");
    // slin: two sinc resamplers in series (FreeSWITCH measures 74-82 dB); G.711 adds
    // its re-encoding of the resampled signal (measured 56-57 dB).
    let floor = if format.starts_with("slin") {
        65.0
    } else {
        50.0
    };
    assert!(snr > floor, "SNR {snr:.1} dB below {floor}");

    let summary = daemon.wait_call_end(&id).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    assert_eq!(field(&summary, "frames_dropped"), 0);
    let meta = daemon.wait_log(|l| message(l) == "metadata received").await;
    assert_eq!(field(&meta, "caller_id"), "+3902123");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_slin16_json_with_audio_before_media_start() {
    roundtrip("slin16", true, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_ulaw_plain_text() {
    roundtrip("ulaw", false, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_alaw_json() {
    roundtrip("alaw", true, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_slin_8k_and_slin24() {
    roundtrip("slin", true, 0).await;
    roundtrip("slin24", true, 0).await;
}

/// Over a long call what is played equals what was said plus the echo's fixed delay:
/// no drift from pacing against Asterisk's own 20 ms clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_call_does_not_drift() {
    let daemon = Daemon::start(&config("stream", ""), &[]).await;
    let mut speech = speech_like(8000, 20.0, 3);
    speech.extend(vec![0i16; 8000]);
    let mut opts = AsteriskOptions::new("/asterisk/call/long-1", "ulaw");
    opts.speech = encode("ulaw", &speech);
    let fake = dial(daemon.addr, opts).await.expect("accepted");
    fake.wait_spoken().await;
    let expected = speech.len() + 1600;
    fake.wait_played(expected / 160 - 2).await;
    let report = fake.hangup().await;
    assert_well_fed(&report, 160);
    let back = report.played_bytes().len();
    let diff = back as i64 - expected as i64;
    println!(
        "sent {} samples (+1600 delay), played {back}: {diff:+}",
        speech.len()
    );
    assert!(diff.abs() <= 320, "played sample count drifted by {diff}");
    // Each empty tick is a gap the caller hears (and, in Asterisk, latency for good).
    // Printed, not asserted: a loaded test machine makes some.
    println!("underrun ticks: {}", report.underruns);
    let summary = daemon.wait_call_end("long-1").await;
    assert_eq!(field(&summary, "frames_dropped"), 0);
    daemon.stop().await;
}

/// Frames the fake played strictly between two instants.
fn played_between(report: &Report, from: tokio::time::Instant, to: tokio::time::Instant) -> usize {
    report
        .played
        .iter()
        .filter(|(at, _)| *at > from && *at < to)
        .count()
}

/// Utterance mode: the reply comes after the caller pauses; talking over it sends
/// `FLUSH_MEDIA` at once, nothing of the cut reply is played after it, and the
/// played position the engine reports is what the fake really played.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_flushes_and_nothing_of_the_cut_reply_is_heard() {
    let daemon = Daemon::start(&config("utterance", ""), &[]).await;
    let tone = voicebridge::audio::signal::sine(8000, 440.0, -12.0, 16000);
    let mut opts = AsteriskOptions::new("/asterisk/call/barge-1", "ulaw");
    opts.speech = encode("ulaw", &tone); // a 2 s "utterance"
    let fake = dial(daemon.addr, opts).await.expect("accepted");
    fake.wait_spoken().await;
    // The 2 s reply starts after 600 ms of silence; talk over it 200 ms in.
    fake.wait_played(10).await;
    fake.speak(&encode("ulaw", &tone[..4000]));
    fake.wait_spoken().await;
    let barge_end = tokio::time::Instant::now();
    let flushed_at = fake.played.load(std::sync::atomic::Ordering::SeqCst);
    // The interruption itself is echoed back after its pause.
    fake.wait_played(flushed_at + 20).await;
    let report = fake.hangup().await;
    assert_well_fed(&report, 160);

    assert_eq!(report.flushes.len(), 1, "exactly one FLUSH_MEDIA");
    let flush_at = report.flushes[0];
    let t0 = report.played[0].0;
    let before = played_between(&report, t0 - std::time::Duration::from_millis(1), flush_at);
    assert!(
        (10..100).contains(&before),
        "the 2 s reply was cut after {before} frames"
    );
    assert_eq!(
        played_between(&report, flush_at, barge_end),
        0,
        "nothing of the interrupted reply after FLUSH_MEDIA"
    );
    assert!(played_between(&report, barge_end, tokio::time::Instant::now()) >= 20);

    let flushed = daemon
        .wait_log(|l| message(l) == "barge-in: playback flushed")
        .await;
    let played_ms = field(&flushed, "played_ms").as_u64().unwrap();
    let heard_ms = before as u64 * 20;
    println!("barge-in: engine says {played_ms} ms played, the fake played {heard_ms} ms");
    // The mark-anchored position against the frames handed out before FLUSH_MEDIA
    // arrived: never more, and at most two frames less (the frame still being heard at
    // the decision, and one a tick may hand out while FLUSH_MEDIA is on its way; the
    // OpenAI test, which knows the decision's instant, checks within one frame).
    assert!(
        played_ms <= heard_ms && heard_ms - played_ms <= 40,
        "{played_ms} vs {heard_ms}"
    );
    let summary = daemon.wait_call_end("barge-1").await;
    assert_eq!(field(&summary, "barge_ins"), 1);
    daemon.stop().await;
}

/// DTMF_END in both control formats becomes key presses: logged in order, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_end_reaches_the_engine_in_both_formats() {
    let daemon = Daemon::start(&config("stream", ""), &[]).await;
    for (id, json, digits) in [
        ("dtmf-json", true, ['1', '2', '#']),
        ("dtmf-plain", false, ['7', '*', '#']),
    ] {
        let mut opts = AsteriskOptions::new(format!("/asterisk/call/{id}"), "ulaw");
        opts.json = json;
        let fake = dial(daemon.addr, opts).await.expect("accepted");
        daemon
            .wait_log(|l| message(l) == "MEDIA_START" && common::daemon::call_id(l) == Some(id))
            .await;
        for d in digits {
            fake.dtmf(d, json, "1733240000.17");
        }
        daemon
            .wait_log(|l| {
                message(l) == "DTMF from the caller"
                    && field(l, "digit") == "#"
                    && common::daemon::call_id(l) == Some(id)
            })
            .await;
        let got: String = daemon
            .logs()
            .iter()
            .filter(|l| {
                message(l) == "DTMF from the caller" && common::daemon::call_id(l) == Some(id)
            })
            .map(|l| field(l, "digit").as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(got, digits.iter().collect::<String>(), "{id}");
        fake.hangup().await;
        daemon.wait_call_end(id).await;
    }
    let (status, metrics) = common::http::get(daemon.admin, "/metrics").await;
    assert_eq!(status, 200);
    let keys: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("voicebridge_dtmf_keys_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(keys, 6.0, "{metrics}");
    daemon.stop().await;
}

const TOKEN: &str = "s3cret-pbx-password-0123";

/// `websocket_client.conf` `username`/`password` arrive as HTTP Basic: the password is
/// checked as an auth token; a wrong or missing one is refused with 401 before
/// anything else, and it never reaches the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_accepted_and_refused() {
    let toml = format!(
        "[server]\nauth_tokens = [\"{TOKEN}\"]\n{}",
        config("stream", "")
    );
    let daemon = Daemon::start(&toml, &[]).await;
    let mut opts = AsteriskOptions::new("/asterisk/call/auth-ok", "ulaw");
    opts.basic = Some(("pbx1".to_owned(), TOKEN.to_owned()));
    opts.speech = encode("ulaw", &speech_like(8000, 0.5, 4));
    let fake = dial(daemon.addr, opts)
        .await
        .expect("right password accepted");
    fake.wait_spoken().await;
    fake.wait_played(10).await;
    let report = fake.hangup().await;
    assert!(report.error.is_none(), "{:?}", report.error);
    daemon.wait_call_end("auth-ok").await;

    for (id, basic) in [
        ("auth-wrong", Some(("pbx1", "not-the-password"))),
        ("auth-none", None),
        ("auth-user-only", Some((TOKEN, ""))),
    ] {
        let mut opts = AsteriskOptions::new(format!("/asterisk/call/{id}"), "ulaw");
        opts.basic = basic.map(|(u, p)| (u.to_owned(), p.to_owned()));
        match dial(daemon.addr, opts).await {
            Err(common::fake_asterisk_ws::DialError::Refused { status, response }) => {
                assert_eq!(status, 401, "{id}: {response}");
                assert!(!response.contains(TOKEN));
            }
            Err(e) => panic!("{id}: {e:?}"),
            Ok(_) => panic!("{id}: accepted"),
        }
    }
    daemon
        .wait_log(|l| message(l) == "upgrade rejected" && field(l, "status") == 401)
        .await;
    let output = daemon.output();
    assert!(!output.contains(TOKEN), "the password reached the logs");
    daemon.stop().await;
}

/// Garbage control, an oversized message and a binary flood: each ends only its call,
/// with one log line giving the reason and the close code Asterisk logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_the_call_cleanly() {
    let daemon = Daemon::start(&config("stream", ""), &[]).await;

    let fake = dial(
        daemon.addr,
        AsteriskOptions::new("/asterisk/call/bad-json", "ulaw"),
    )
    .await
    .expect("accepted");
    fake.send_text("{\"event\": MEDIA_XOFF");
    let report = fake.finished().await;
    assert_eq!(report.close.as_ref().map(|c| c.0), Some(1011), "{report:?}");
    let summary = daemon.wait_call_end("bad-json").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_error");
    let line = daemon
        .wait_log(|l| {
            common::daemon::call_id(l) == Some("bad-json")
                && l.to_string().contains("bad control message")
        })
        .await;
    println!("garbage control: {line}");

    let fake = dial(
        daemon.addr,
        AsteriskOptions::new("/asterisk/call/too-big", "ulaw"),
    )
    .await
    .expect("accepted");
    fake.send_binary(vec![0xFF; 66_000]);
    let report = fake.finished().await;
    assert_eq!(report.close.as_ref().map(|c| c.0), Some(1009), "{report:?}");
    let summary = daemon.wait_call_end("too-big").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_message_too_big");

    let mut opts = AsteriskOptions::new("/asterisk/call/flood", "ulaw");
    opts.media_start_override = Some("opus".to_owned());
    let fake = dial(daemon.addr, opts).await.expect("accepted");
    let report = fake.finished().await;
    assert_eq!(report.close.as_ref().map(|c| c.0), Some(1011), "{report:?}");
    let summary = daemon.wait_call_end("flood").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_error");
    assert!(
        daemon
            .logs()
            .iter()
            .any(|l| common::daemon::call_id(l) == Some("flood")
                && l.to_string().contains("set c() in the dial string")),
        "an unsupported format names the fix"
    );

    // 2 s of audio ten times a second: 20x real time. Past 10 s of audio in a second
    // the daemon reads but no longer decodes it, so the flood is measured (and the call
    // ended) as fast as it comes however busy the machine is.
    let fake = dial(
        daemon.addr,
        AsteriskOptions::new("/asterisk/call/flood-2", "ulaw"),
    )
    .await
    .expect("accepted");
    let mut clock = tokio::time::interval(std::time::Duration::from_millis(100));
    while !fake.is_finished() {
        clock.tick().await;
        fake.send_binary(vec![0xFF; 16_000]);
    }
    let report = fake.finished().await;
    assert_eq!(report.close.as_ref().map(|c| c.0), Some(1011), "{report:?}");
    let summary = daemon.wait_call_end("flood-2").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_error");
    assert!(daemon
        .logs()
        .iter()
        .any(|l| common::daemon::call_id(l) == Some("flood-2")
            && l.to_string().contains("caller audio floods")
            && l.to_string().contains("dropped unprocessed")));

    // The daemon is still fine.
    let mut opts = AsteriskOptions::new("/asterisk/call/after-bad", "ulaw");
    opts.speech = encode("ulaw", &speech_like(8000, 0.5, 4));
    let fake = dial(daemon.addr, opts).await.expect("accepted");
    fake.wait_played(10).await;
    fake.hangup().await;
    let summary = daemon.wait_call_end("after-bad").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

const OPENAI_KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";

/// OpenAI Realtime (PCM16 24 kHz) on an slin16 channel: the caller talks over a long
/// answer; `FLUSH_MEDIA` goes out, nothing more of it is played, and the truncate's
/// `audio_end_ms` is what the fake Asterisk really played (marks, not our clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_truncate_matches_what_asterisk_played() {
    use common::mock_openai::{MockFormat, MockOpenAi, MockOptions, Script};
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcm24, OPENAI_KEY)).await;
    let toml = format!(
        r#"
[freeswitch]
playback_lead_ms = {LEAD_MS}

[call]
provider = "openai"
instructions = "You answer the phone for ACME."

[providers.openai]
model = "gpt-realtime"
voice = "marin"
audio_format = "pcm24"
"#
    );
    let url = mock.url();
    let env = [
        ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.as_str()),
        ("OPENAI_API_KEY", OPENAI_KEY),
    ];
    let daemon = Daemon::start(&toml, &env).await;
    let mut opts = AsteriskOptions::new("/asterisk/call/oai-truncate", "slin16");
    opts.speech = encode("slin16", &speech_like(16000, 4.0, 12));
    let fake = dial(daemon.addr, opts).await.expect("accepted");
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::Respond { ms: 6000, seed: 33 });
    fake.wait_played(15).await;
    mock.script(Script::BargeIn);
    mock.wait("truncate", |s| !s.truncates.is_empty()).await;
    fake.wait_flushed().await;
    fake.wait_spoken().await;
    let report = fake.hangup().await;
    assert_well_fed(&report, 640);
    let problems = mock.with(|s| s.problems.clone());
    assert!(
        problems.is_empty(),
        "the mock found problems: {problems:#?}"
    );

    assert_eq!(report.flushes.len(), 1, "one FLUSH_MEDIA");
    let flush_at = report.flushes[0];
    // What had been handed to the core when the mock said the caller spoke: the
    // engine decides then, and a tick may hand out one more frame before FLUSH_MEDIA
    // arrives (that one is cut mid-way, so not counted as heard).
    let barge_at = mock.with(|s| s.barge_in_at).expect("the mock barged in");
    let heard = report
        .played
        .iter()
        .filter(|(at, _)| *at < barge_at)
        .count();
    let after = report
        .played
        .iter()
        .filter(|(at, _)| *at > flush_at)
        .count();
    assert_eq!(
        after, 0,
        "audio of the interrupted response played after FLUSH_MEDIA"
    );
    let (truncates, responses) = mock.with(|s| (s.truncates.clone(), s.responses.clone()));
    assert_eq!(truncates.len(), 1);
    let (truncate, generated_ms) = &truncates[0];
    assert_eq!(truncate["item_id"], responses[0].item_id.as_str());
    let end_ms = truncate["audio_end_ms"].as_u64().unwrap();
    let heard_ms = heard as u64 * 20;
    println!("truncate audio_end_ms {end_ms}, the fake Asterisk played {heard_ms} ms (generated {generated_ms} ms)");
    assert!(end_ms <= *generated_ms);
    assert!(
        end_ms.abs_diff(heard_ms) <= 20,
        "audio_end_ms {end_ms} vs {heard_ms} ms played by Asterisk"
    );
    daemon.wait_call_end("oai-truncate").await;
    daemon.stop().await;
}

/// `v(answer=yes)` (a dial string with `n`): ANSWER once `MEDIA_START` came; when a
/// limit ends the call, `HANGUP` goes out before the Close, so the channel is hung up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_on_request_and_hangup_when_a_limit_ends_the_call() {
    let daemon = Daemon::start(&config("stream", "max_duration_secs = 1"), &[]).await;
    let fake = dial(
        daemon.addr,
        AsteriskOptions::new("/asterisk/call/limit-1?answer=yes", "ulaw"),
    )
    .await
    .expect("accepted");
    let report = fake.finished().await;
    assert!(report.answered, "ANSWER sent: {:?}", report.commands);
    assert!(report.hangup_command, "HANGUP sent: {:?}", report.commands);
    let texts: Vec<&str> = report.commands.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.first(), Some(&r#"{"command":"ANSWER"}"#));
    assert_eq!(texts.last(), Some(&r#"{"command":"HANGUP"}"#));
    assert!(texts.iter().all(|t| t.len() <= 128), "{texts:?}");
    assert_eq!(report.ignored_too_long, 0);
    let summary = daemon.wait_call_end("limit-1").await;
    assert_eq!(field(&summary, "end_reason"), "max_duration");

    // Without answer=yes (auto-answer): no ANSWER.
    let fake = dial(
        daemon.addr,
        AsteriskOptions::new("/asterisk/call/limit-2", "ulaw"),
    )
    .await
    .expect("accepted");
    let report = fake.finished().await;
    assert!(!report.answered);
    assert!(report.hangup_command);
    daemon.stop().await;
}

/// `MEDIA_XOFF` pauses our sending until `MEDIA_XON`; what was held then goes, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoff_pauses_sending_until_xon() {
    use std::sync::atomic::Ordering::SeqCst;
    let daemon = Daemon::start(&config("stream", ""), &[]).await;
    let mut opts = AsteriskOptions::new("/asterisk/call/xoff-1", "ulaw");
    opts.speech = encode("ulaw", &speech_like(8000, 4.0, 9));
    let fake = dial(daemon.addr, opts).await.expect("accepted");
    fake.wait_played(20).await;
    fake.send_text(r#"{"event":"MEDIA_XOFF","channel_id":"1733240000.17"}"#);
    daemon
        .wait_log(|l| {
            message(l).starts_with("MEDIA_XOFF") && common::daemon::call_id(l) == Some("xoff-1")
        })
        .await;
    // One tick lets what was already on the wire arrive; from then on nothing may.
    fake.wait_ticks(1).await;
    let at_xoff = fake.binaries.load(SeqCst);
    fake.wait_ticks(15).await;
    assert_eq!(
        fake.binaries.load(SeqCst),
        at_xoff,
        "audio sent during XOFF"
    );
    fake.send_text(r#"{"event":"MEDIA_XON","channel_id":"1733240000.17"}"#);
    fake.wait_binaries(at_xoff + 5).await;
    fake.wait_spoken().await;
    let report = fake.hangup().await;
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.remainder_bytes_dropped, 0);
    let summary = daemon.wait_call_end("xoff-1").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}
