//! End to end with the Gemini Live provider: the real binary, the fake FreeSWITCH and
//! the mock Live server (tests/common/mock_gemini.rs), which validates every message the
//! daemon sends and scripts what Gemini would do: greet, answer in bursts, get
//! interrupted, hand the session over to a new connection (goAway + resumption), fail.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::call::{max_lead_ms, send_paced, Call, Collected, Playback};
use common::daemon::{call_id, field, message, Daemon, HANG_GUARD};
use common::mock_gemini::{MockGemini, MockOptions, Target, TurnSpec};
use serde_json::json;
use tokio::time::Instant;
use voicebridge::audio::signal::{sine, snr_db_within, speech_like, sweep};

const KEY: &str = "fake-gemini-test-key-0123456789";
const LEAD_MS: u64 = 60;

fn config(greeting: &str, language: &str, response_timeout_secs: u64) -> String {
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = {LEAD_MS}

[call]
provider = "gemini"
instructions = "You answer the phone for ACME. The caller is {{{{caller_id}}}}."
greeting = "{greeting}"
language = "{language}"
response_timeout_secs = {response_timeout_secs}

[providers.gemini]
model = "models/gemini-2.5-flash-native-audio-preview-12-2025"
voice = "Puck"
"#
    )
}

async fn daemon(mock: &MockGemini, toml: &str) -> Daemon {
    let url = mock.url();
    Daemon::start(
        toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__GEMINI__URL", url.as_str()),
            ("GEMINI_API_KEY", KEY),
        ],
    )
    .await
}

fn options() -> MockOptions {
    let mut o = MockOptions::new(KEY);
    o.voice = "Puck".to_owned();
    o
}

/// Starts with a sweep (for alignment), then speech; the same waveform at any rate.
fn signal(rate: u32, secs: f64, seed: u64) -> Vec<i16> {
    let mut s = sweep(rate, 300.0, 3400.0, -12.0, rate as usize * 3 / 10);
    s.extend(speech_like(rate, secs - 0.3, seed));
    s
}

/// Caller audio streamed in real time in the background, like the module does.
fn talk(call: &Call, samples: Vec<i16>) -> tokio::task::JoinHandle<()> {
    let writer = call.writer.clone();
    tokio::spawn(async move { send_paced(&writer, &samples, 8000, 1).await })
}

/// Samples and arrival times of the audio FreeSWITCH got from `from` on.
fn audio_since(got: &Collected, from: Instant) -> (Vec<i16>, Vec<(Instant, usize)>) {
    let mut samples = Vec::new();
    let mut frames = Vec::new();
    for e in &got.events {
        if let Playback::Audio { at, samples: s, .. } = e {
            if *at >= from {
                samples.extend_from_slice(s);
                frames.push((*at, s.len()));
            }
        }
    }
    (samples, frames)
}

fn first_frame_after(got: &Collected, from: Instant) -> Option<Instant> {
    got.audio_frames()
        .into_iter()
        .map(|(at, _)| at)
        .find(|at| *at >= from)
}

/// After a barge-in: nothing of the cut turn between the clearAudio and the next turn,
/// then the next turn (1 s of `signal(.., 41)`) heard whole and clean, and one barge-in
/// in the summary.
fn assert_next_turn_heard_alone(
    mock: &MockGemini,
    got: &Collected,
    clear: Instant,
    summary: &serde_json::Value,
) {
    let next = mock.log(|l| l.turn_starts[1]);
    let between = got
        .audio_frames()
        .iter()
        .filter(|(at, _)| *at > clear && *at < next)
        .count();
    assert_eq!(between, 0, "audio of the interrupted turn after clearAudio");
    let (after, _) = audio_since(got, next);
    // One second at 8 kHz, plus at most the padding of its last frame.
    assert!(
        after.len() <= 8000 + 160,
        "{} samples after the next turn started: late parts leaked",
        after.len()
    );
    let snr = snr_db_within(&signal(8000, 1.0, 41), &after, 160);
    println!("next turn SNR {snr:.1} dB");
    assert!(snr > 30.0);
    assert_eq!(field(summary, "barge_ins"), 1);
}

fn assert_no_key(daemon: &Daemon) {
    let out = daemon.output();
    assert!(
        !out.contains(KEY),
        "the API key leaked into the daemon output"
    );
}

fn transcripts(daemon: &Daemon, id: &str, who: &str) -> Vec<String> {
    daemon
        .logs()
        .iter()
        .filter(|l| message(l) == "transcript" && call_id(l) == Some(id))
        .filter(|l| field(l, "who") == who)
        .filter_map(|l| field(l, "text").as_str().map(str::to_owned))
        .collect()
}

/// Greeting (2.x style clientContent), the setup's contents, the watchdog, a normal
/// turn: caller audio fidelity through 8k→16k, assistant audio through 24k→8k, pacing,
/// transcripts and usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_setup_and_a_turn() {
    let mut opts = options();
    opts.greeting_reply = Some(signal(24000, 1.0, 11));
    opts.language = Some("it-IT".to_owned());
    let mock = MockGemini::start(opts).await;
    let d = daemon(&mock, &config("Buongiorno, sono Giulia.", "it-IT", 1)).await;
    let id = "gem-turn";
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    call.writer
        .send_text(r#"{"uuid":"gem-turn","caller_id":"+3902123","called":"100"}"#)
        .await
        .unwrap();
    let caller = signal(8000, 5.0, 5);
    let talker = talk(&call, caller.clone());

    mock.wait("the greeting", |l| {
        l.conns.first().is_some_and(|c| !c.greetings.is_empty())
    })
    .await;
    call.wait_received(49).await;

    // The caller said something, and Gemini stays silent: the watchdog speaks up.
    mock.send(
        Target::Latest,
        json!({"serverContent": {"inputTranscription": {"text": "Pronto? "}}}),
    );
    let w = d.wait_watchdog().await;
    println!("watchdog: {}", field(&w, "warning"));

    let answer = signal(24000, 2.0, 21);
    let before = call.received.load(Ordering::SeqCst);
    mock.play(TurnSpec::new(answer)).finish().await;
    call.wait_received(before + 99).await;
    talker.await.unwrap();
    let (_, got) = call.close().await;
    let summary = d.wait_call_end(id).await;
    mock.wait_closed(0).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    let conns = mock.conns();
    assert_eq!(conns.len(), 1);
    let setup = conns[0].setup.clone().unwrap();
    assert_eq!(
        setup["model"],
        "models/gemini-2.5-flash-native-audio-preview-12-2025"
    );
    assert_eq!(
        setup["systemInstruction"]["parts"][0]["text"],
        "You answer the phone for ACME. The caller is +3902123."
    );
    assert_eq!(
        conns[0].greetings,
        vec![
            json!({"clientContent": {"turns": [{"role": "user", "parts": [
            {"text": "Greet the caller by saying exactly: Buongiorno, sono Giulia."}]}],
            "turnComplete": true}})
        ]
    );

    // Caller → Gemini: 8 kHz up to 16 kHz, nothing lost before setupComplete.
    let reference = signal(16000, 5.0, 5);
    let snr_up = snr_db_within(&reference, &conns[0].caller, 320);
    println!(
        "caller→gemini SNR {snr_up:.1} dB ({} samples at 16 kHz for {} sent at 8 kHz)",
        conns[0].caller.len(),
        caller.len()
    );
    assert!(snr_up > 30.0, "caller audio SNR {snr_up:.1} dB");
    assert_eq!(
        conns[0].caller_bytes as u64,
        field(&summary, "bytes_to_provider").as_u64().unwrap()
    );

    // Gemini → FreeSWITCH: 24 kHz down to 8 kHz, paced.
    let start = mock.log(|l| l.turn_starts[1]);
    let (played, frames) = audio_since(&got, start);
    let snr_down = snr_db_within(&signal(8000, 2.0, 21), &played, 160);
    let lead = max_lead_ms(&frames, 8000);
    let first = first_frame_after(&got, start).unwrap() - start;
    println!(
        "gemini→FreeSWITCH SNR {snr_down:.1} dB, max lead {lead:.1} ms, first audio message → first frame {:.1} ms",
        first.as_secs_f64() * 1000.0
    );
    assert!(snr_down > 30.0, "assistant audio SNR {snr_down:.1} dB");
    assert!(lead <= (LEAD_MS + 20) as f64, "ran {lead:.1} ms ahead");

    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    assert_eq!(field(&summary, "frames_dropped"), 0);
    assert_eq!(field(&summary, "input_tokens"), 200);
    assert_eq!(field(&summary, "output_tokens"), 80);
    assert_eq!(
        transcripts(&d, id, "assistant"),
        vec!["Hello, how can I help?", "Yes, I can hear you."]
    );
    assert_eq!(
        transcripts(&d, id, "caller"),
        vec!["Pronto? Can you hear me?"]
    );
    assert_no_key(&d);
    d.stop().await;
}

/// `interrupted` mid-turn: clearAudio at once, and the parts Gemini still sends after it
/// never reach FreeSWITCH; the next turn plays normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_drops_the_rest_of_the_turn() {
    let mock = MockGemini::start(options()).await;
    let d = daemon(&mock, &config("", "", 0)).await;
    let id = "gem-barge";
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    let talker = talk(&call, speech_like(8000, 5.0, 9));
    mock.wait_ready(1).await;

    let mut long = TurnSpec::new(signal(24000, 4.0, 31));
    long.speed = 1.5;
    let playing = mock.play(long);
    call.wait_received(25).await;
    // 300 ms of a loud tone: would be obvious if it leaked.
    playing.interrupt(&sine(24000, 1000.0, -3.0, 7200)).await;
    d.wait_log(|l| message(l) == "barge-in: playback flushed" && call_id(l) == Some(id))
        .await;

    let before = call.received.load(Ordering::SeqCst);
    mock.play(TurnSpec::new(signal(24000, 1.0, 41)))
        .finish()
        .await;
    call.wait_received(before + 49).await;
    talker.await.unwrap();
    let (_, got) = call.close().await;
    let summary = d.wait_call_end(id).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    let clears = got.clears();
    assert_eq!(clears.len(), 1, "exactly one clearAudio");
    let interrupted = mock.log(|l| l.interrupted_at[0]);
    let cut = clears[0].duration_since(interrupted);
    println!(
        "barge-in cut: {:.1} ms from interrupted to clearAudio",
        cut.as_secs_f64() * 1000.0
    );
    assert_next_turn_heard_alone(&mock, &got, clears[0], &summary);
    d.stop().await;
}

/// `interrupted` whose `turnComplete` is lost: the caller's next words end the dropping
/// and the next reply is heard whole; the late parts of the cut turn are still dropped.
/// With `late_complete`, the cut turn's turnComplete comes after those words instead
/// (the other order), and closes nothing.
async fn barge_in_without_turn_complete(id: &str, late_complete: bool) {
    let mock = MockGemini::start(options()).await;
    let d = daemon(&mock, &config("", "", 0)).await;
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    let talker = talk(&call, speech_like(8000, 5.0, 9));
    mock.wait_ready(1).await;

    let mut long = TurnSpec::new(signal(24000, 4.0, 31));
    long.speed = 1.5;
    let playing = mock.play(long);
    call.wait_received(25).await;
    // 300 ms of a loud tone: would be obvious if it leaked.
    playing
        .interrupt_with(&sine(24000, 1000.0, -3.0, 7200), false)
        .await;
    d.wait_log(|l| message(l) == "barge-in: playback flushed" && call_id(l) == Some(id))
        .await;

    let before = call.received.load(Ordering::SeqCst);
    mock.send(
        Target::Latest,
        json!({"serverContent": {"inputTranscription": {"text": "No, tomorrow."}}}),
    );
    if late_complete {
        mock.send(
            Target::Latest,
            json!({"serverContent": {"turnComplete": true}}),
        );
    }
    let mut next = TurnSpec::new(signal(24000, 1.0, 41));
    next.caller_text = None;
    mock.play(next).finish().await;
    // Before the fix not one frame of this reply reached FreeSWITCH.
    call.wait_received(before + 49).await;
    talker.await.unwrap();
    let (_, got) = call.close().await;
    let summary = d.wait_call_end(id).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    let clears = got.clears();
    assert_eq!(clears.len(), 1, "exactly one clearAudio");
    assert_next_turn_heard_alone(&mock, &got, clears[0], &summary);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_without_turn_complete_the_next_reply_is_heard() {
    barge_in_without_turn_complete("gem-barge-lost", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_with_turn_complete_after_new_caller_words_the_next_reply_is_heard() {
    barge_in_without_turn_complete("gem-barge-late", true).await;
}

/// goAway during a long answer: the session moves to a new connection (with the latest
/// handle, no second greeting) while the old one keeps delivering; FreeSWITCH hears no
/// gap and Gemini loses no caller audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_resumes_on_a_new_connection_without_a_gap() {
    let mut opts = options();
    opts.greeting_reply = Some(signal(24000, 0.6, 3));
    // Longer than the playback queue at goAway: only audio read from the old
    // connection during the switch can fill it.
    opts.resume_setup_delay = Duration::from_millis(1000);
    let mock = MockGemini::start(opts).await;
    let d = daemon(&mock, &config("Hello!", "", 0)).await;
    let id = "gem-resume";
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    let caller = signal(8000, 8.0, 13);
    let talker = talk(&call, caller.clone());
    mock.wait_ready(1).await;
    // The whole greeting: 0.6 s is 30 frames, and the resampler's flushed tail (its
    // 2.4 ms delay) one more. Starting the answer before the last of them has played
    // would count them as its first samples, 320 samples off (on a fast machine the
    // answer's first delta can come while they are still paced).
    call.wait_received(31).await;

    // A 5 s answer, sent only a little faster than real time so the playback queue
    // stays short: a stall in the switch would be heard.
    let answer = signal(24000, 5.0, 51);
    let mut spec = TurnSpec::new(answer);
    spec.speed = 1.25;
    let start_frames = call.received.load(Ordering::SeqCst);
    let playing = mock.play(spec);
    call.wait_received(start_frames + 60).await;
    mock.resumption_update(); // an older handle: must not be used
    let handle = mock.resumption_update();
    mock.go_away("2s");
    mock.wait_ready(2).await;
    playing.finish().await;
    // The server closes the old connection (the daemon may have done it already).
    if !mock.conns()[0].closed {
        mock.close(Target::Index(0), 1000, "");
    }
    mock.wait_closed(0).await;
    // Bounded, so a lost piece of the answer fails on the counts below, not on a hang.
    let all = start_frames + 249;
    let _ = tokio::time::timeout(Duration::from_secs(8), call.wait_received(all)).await;
    talker.await.unwrap();
    let (_, got) = call.close().await;
    let summary = d.wait_call_end(id).await;
    mock.wait_closed(1).await;

    assert_eq!(mock.violations(), Vec::<String>::new());
    let conns = mock.conns();
    assert_eq!(conns.len(), 2, "one resumption");
    assert_eq!(conns[1].resumed_with.as_deref(), Some(handle.as_str()));
    assert!(conns[1].greetings.is_empty(), "no second greeting");
    assert_eq!(conns[0].greetings.len(), 1);

    // FreeSWITCH: the whole answer, continuous.
    let start = mock.log(|l| l.turn_starts[1]);
    let (played, frames) = audio_since(&got, start);
    let max_gap = frames
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0))
        .max()
        .unwrap_or_default();
    let snr = snr_db_within(&signal(8000, 5.0, 51), &played, 160);
    println!(
        "resumption: answer SNR {snr:.1} dB, {} samples, max gap between frames {:.1} ms",
        played.len(),
        max_gap.as_secs_f64() * 1000.0
    );
    assert!(snr > 30.0, "answer SNR {snr:.1} dB across the switch");
    assert!(
        (40_000 - 160..=40_000 + 160).contains(&played.len()),
        "{} samples of a 5 s answer",
        played.len()
    );
    assert!(
        max_gap <= Duration::from_millis(LEAD_MS + 20),
        "playback gap of {max_gap:?} during the switch"
    );

    // Gemini: every caller frame, across both connections, in order.
    let bytes: usize = conns.iter().map(|c| c.caller_bytes).sum();
    assert_eq!(
        bytes as u64,
        field(&summary, "bytes_to_provider").as_u64().unwrap(),
        "caller audio lost in the switch"
    );
    assert_eq!(field(&summary, "frames_dropped"), 0);
    let joined: Vec<i16> = conns.iter().flat_map(|c| c.caller.clone()).collect();
    let snr_up = snr_db_within(&signal(16000, 8.0, 13), &joined, 320);
    println!(
        "resumption: caller SNR {snr_up:.1} dB over both connections ({} + {} samples)",
        conns[0].caller.len(),
        conns[1].caller.len()
    );
    assert!(
        snr_up > 30.0,
        "caller audio SNR {snr_up:.1} dB across the switch"
    );

    let resumed = d
        .wait_log(|l| message(l) == "gemini: session resumed on a new connection")
        .await;
    println!("switch took {} ms", field(&resumed, "switch_ms"));
    let readies = d
        .logs()
        .iter()
        .filter(|l| message(l) == "provider ready" && call_id(l) == Some(id))
        .count();
    assert_eq!(readies, 1, "one Ready per call");
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    assert_no_key(&d);
    d.stop().await;
}

/// A connection that drops without goAway (1011) is resumed once with the known handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_close_is_resumed() {
    let mock = MockGemini::start(options()).await;
    let d = daemon(&mock, &config("", "", 0)).await;
    let id = "gem-drop";
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    let talker = talk(&call, speech_like(8000, 4.0, 17));
    mock.wait_ready(1).await;
    mock.play(TurnSpec::new(signal(24000, 0.5, 7)))
        .finish()
        .await;
    call.wait_received(24).await;
    let handle = mock.log(|l| l.latest_handle.clone()).unwrap();
    mock.close(Target::Latest, 1011, "Internal error encountered.");
    mock.wait_ready(2).await;
    let before = call.received.load(Ordering::SeqCst);
    mock.play(TurnSpec::new(signal(24000, 0.5, 8)))
        .finish()
        .await;
    call.wait_received(before + 24).await;
    talker.await.unwrap();
    let (_, _got) = call.close().await;
    let summary = d.wait_call_end(id).await;
    assert_eq!(mock.violations(), Vec::<String>::new());
    assert_eq!(
        mock.conns()[1].resumed_with.as_deref(),
        Some(handle.as_str())
    );
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    d.stop().await;
}

/// Close 1008 mid-call (the key was revoked): no resumption, the call ends with the
/// code and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_close_mid_call_ends_the_call() {
    let mock = MockGemini::start(options()).await;
    let d = daemon(&mock, &config("", "", 0)).await;
    let id = "gem-1008";
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    let talker = talk(&call, speech_like(8000, 3.0, 19));
    mock.wait_ready(1).await;
    mock.play(TurnSpec::new(signal(24000, 0.5, 7)))
        .finish()
        .await;
    call.wait_received(24).await;
    mock.close(
        Target::Latest,
        1008,
        "API key not valid. Please pass a valid API key.",
    );
    let summary = d.wait_call_end(id).await;
    let got = tokio::time::timeout(HANG_GUARD, call.reader)
        .await
        .unwrap()
        .unwrap();
    talker.abort();
    assert!(
        got.events.iter().any(|e| matches!(e, Playback::Close(..))),
        "FreeSWITCH got a Close"
    );
    assert_eq!(field(&summary, "end_reason"), "provider_closed");
    let detail = field(&summary, "end_detail").as_str().unwrap().to_owned();
    println!("end_detail: {detail}");
    assert!(
        detail.contains("gemini closed the connection: code 1008: API key not valid"),
        "{detail}"
    );
    assert_eq!(mock.conns().len(), 1, "no resumption after 1008");
    assert_eq!(mock.violations(), Vec::<String>::new());
    d.stop().await;
}

/// goAway with no resumption handle: the call goes on until the server closes, then
/// ends saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_without_a_handle_ends_when_the_connection_closes() {
    let mock = MockGemini::start(options()).await;
    let d = daemon(&mock, &config("", "", 0)).await;
    let id = "gem-nohandle";
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    let talker = talk(&call, speech_like(8000, 3.0, 23));
    mock.wait_ready(1).await;
    mock.go_away("1s");
    d.wait_log(|l| {
        message(l) == "provider warning"
            && field(l, "warning")
                .as_str()
                .is_some_and(|w| w.contains("no session resumption handle"))
    })
    .await;
    mock.close(Target::Latest, 1000, "");
    let summary = d.wait_call_end(id).await;
    talker.abort();
    assert_eq!(field(&summary, "end_reason"), "provider_closed");
    let detail = field(&summary, "end_detail").as_str().unwrap();
    assert!(detail.contains("no session resumption handle"), "{detail}");
    assert_eq!(mock.conns().len(), 1);
    d.stop().await;
}

async fn refused(status: u16) {
    let mut opts = options();
    let body = format!(
        r#"{{"error":{{"code":{status},"message":"API key not valid. Please pass a valid API key. (got {KEY})","status":"UNAUTHENTICATED"}}}}"#
    );
    opts.refuse = Some((status, body));
    let mock = MockGemini::start(opts).await;
    let d = daemon(&mock, &config("Hello", "", 0)).await;
    let id = format!("gem-{status}");
    let t0 = Instant::now();
    let call = Call::connect(&d, "call", &id, "rate=8000&channels=mono").await;
    let talker = talk(&call, speech_like(8000, 3.0, 29));
    let got = tokio::time::timeout(HANG_GUARD, call.reader)
        .await
        .unwrap()
        .unwrap();
    let ended = t0.elapsed();
    talker.abort();
    let close = got.events.iter().find_map(|e| match e {
        Playback::Close(code, reason) => Some((*code, reason.clone())),
        _ => None,
    });
    println!(
        "HTTP {status}: FreeSWITCH closed after {:.0} ms with {close:?}",
        ended.as_secs_f64() * 1000.0
    );
    assert!(close.is_some(), "FreeSWITCH got a Close");
    let summary = d.wait_call_end(&id).await;
    assert_eq!(field(&summary, "end_reason"), "provider_error");
    let detail = field(&summary, "end_detail").as_str().unwrap();
    assert!(detail.contains(&format!("http_{status}")), "{detail}");
    assert!(detail.contains("API key not valid"), "{detail}");
    assert_eq!(mock.log(|l| l.upgrades_refused), 1, "no retry");
    assert_no_key(&d);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_401() {
    refused(401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_403() {
    refused(403).await;
}

/// Models of the 3.x generation get the greeting as `realtimeInput.text`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_3_models_greet_with_realtime_text() {
    let mut opts = options();
    opts.greeting_reply = Some(signal(24000, 0.4, 2));
    let mock = MockGemini::start(opts).await;
    let toml = config("Hi {{caller_id}}!", "", 0).replace(
        "gemini-2.5-flash-native-audio-preview-12-2025",
        "gemini-3-flash-live-preview",
    );
    let d = daemon(&mock, &toml).await;
    let id = "gem-3";
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    call.writer
        .send_text(r#"{"uuid":"gem-3","caller_id":"+3902999"}"#)
        .await
        .unwrap();
    let talker = talk(&call, speech_like(8000, 2.0, 31));
    call.wait_received(19).await;
    talker.await.unwrap();
    let _ = call.close().await;
    d.wait_call_end(id).await;
    assert_eq!(mock.violations(), Vec::<String>::new());
    let conns = mock.conns();
    assert_eq!(
        conns[0].setup.as_ref().unwrap()["model"],
        "models/gemini-3-flash-live-preview"
    );
    assert_eq!(
        conns[0].greetings,
        vec![
            json!({"realtimeInput": {"text": "Greet the caller by saying exactly: Hi +3902999!"}})
        ]
    );
    d.stop().await;
}

/// `voicebridge check`'s probe: a real setup handshake, or the exact failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_opens_a_session_or_says_why_not() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ok = MockGemini::start(options()).await;
    let mut refusing = options();
    refusing.refuse = Some((
        403,
        r#"{"error":{"message":"Permission denied"}}"#.to_owned(),
    ));
    let refusing = MockGemini::start(refusing).await;
    for (mock, expect_ok) in [(&ok, true), (&refusing, false)] {
        let env = [
            ("VOICEBRIDGE__PROVIDERS__GEMINI__URL".to_owned(), mock.url()),
            ("GEMINI_API_KEY".to_owned(), KEY.to_owned()),
        ];
        let config = voicebridge::config::Config::from_toml_str(&config("", "", 0), env).unwrap();
        let route = config.default_route().clone();
        let result = voicebridge::providers::gemini::check(&config, &route).await;
        println!("check: {result:?}");
        assert_eq!(result.is_ok(), expect_ok, "{result:?}");
        let text = result.unwrap_or_else(|e| e);
        assert!(!text.contains(KEY));
        if !expect_ok {
            assert!(
                text.contains("403") && text.contains("Permission denied"),
                "{text}"
            );
        }
    }
    assert_eq!(ok.conns().len(), 1);
    assert_eq!(ok.violations(), Vec::<String>::new());
}

/// The barge-in guard with Gemini: the setup asks for `NO_INTERRUPTION` (the server
/// never cuts its reply, and reports nothing), so voicebridge's own detection decides:
/// 2 s of caller speech over a long turn cut it (clearAudio once, the rest of the turn
/// the server still sends is dropped), and the next turn is heard whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_barge_in_is_detected_locally() {
    let mock = MockGemini::start(options()).await;
    let mut toml = config("", "", 0);
    toml = toml.replace(
        "response_timeout_secs = 0",
        "response_timeout_secs = 0\nbarge_in_min_ms = 200",
    );
    let d = daemon(&mock, &toml).await;
    let id = "gem-guard";
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    mock.wait_ready(1).await;
    let setup = mock.log(|l| l.conns[0].setup.clone()).expect("a setup");
    assert_eq!(
        setup["realtimeInputConfig"]["activityHandling"],
        "NO_INTERRUPTION"
    );

    let mut long = TurnSpec::new(signal(24000, 4.0, 31));
    long.speed = 1.5;
    let playing = mock.play(long);
    call.wait_received(25).await;
    let talker = talk(&call, speech_like(8000, 2.0, 9));
    d.wait_log(|l| {
        message(l) == "barge-in confirmed by the caller's speech" && call_id(l) == Some(id)
    })
    .await;
    // The server was not interrupted: it sends the rest of its turn, which is dropped.
    playing.finish().await;
    let before = call.received.load(Ordering::SeqCst);
    mock.play(TurnSpec::new(signal(24000, 1.0, 41)))
        .finish()
        .await;
    call.wait_received(before + 49).await;
    talker.await.unwrap();
    let (_, got) = call.close().await;
    let summary = d.wait_call_end(id).await;
    assert_eq!(mock.violations(), Vec::<String>::new());
    let clears = got.clears();
    assert_eq!(clears.len(), 1, "exactly one clearAudio");
    assert_next_turn_heard_alone(&mock, &got, clears[0], &summary);
    d.stop().await;
}

/// `greeting_interruptible = false` with Gemini: the setup asks for `NO_INTERRUPTION`
/// (voicebridge decides barge-ins), the caller talks all through the 2 s greeting, and
/// the greeting is heard whole; the same speech then cuts the next reply (the detection
/// was on all along, only the greeting was protected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_greeting_is_heard_whole() {
    let mut opts = options();
    opts.greeting_reply = Some(signal(24000, 2.0, 11));
    let mock = MockGemini::start(opts).await;
    let toml = config("Welcome to ACME.", "", 0).replace(
        "response_timeout_secs = 0",
        "response_timeout_secs = 0\ngreeting_interruptible = false",
    );
    let d = daemon(&mock, &toml).await;
    let id = "gem-greeting";
    let call = Call::connect(&d, "call", id, "rate=8000&channels=mono").await;
    // The caller talks over the greeting from the first moment, and on.
    let talker = talk(&call, speech_like(8000, 6.0, 9));
    mock.wait("the greeting", |l| {
        l.conns.first().is_some_and(|c| !c.greetings.is_empty())
    })
    .await;
    let setup = mock.log(|l| l.conns[0].setup.clone()).expect("a setup");
    assert_eq!(
        setup["realtimeInputConfig"]["activityHandling"],
        "NO_INTERRUPTION"
    );
    // 2 s of greeting at 20 ms a frame, all of it, while the caller talks.
    call.wait_received(100).await;
    d.wait_log(|l| message(l) == "greeting played out: the caller may interrupt from now on")
        .await;
    let greeting_frames = call.received.load(Ordering::SeqCst);
    let mut long = TurnSpec::new(signal(24000, 4.0, 31));
    long.speed = 1.5;
    let playing = mock.play(long);
    d.wait_log(|l| {
        message(l) == "barge-in confirmed by the caller's speech" && call_id(l) == Some(id)
    })
    .await;
    playing.finish().await;
    talker.await.unwrap();
    let (_, got) = call.close().await;
    d.wait_call_end(id).await;
    assert_eq!(mock.violations(), Vec::<String>::new());
    let clears = got.clears();
    assert_eq!(clears.len(), 1, "one cut: the reply after the greeting");
    let before_clear = got
        .audio_frames()
        .iter()
        .filter(|(at, _)| *at < clears[0])
        .count();
    assert!(
        before_clear >= greeting_frames && greeting_frames >= 100,
        "the greeting ({greeting_frames} frames) was played before the only clearAudio"
    );
    d.stop().await;
}
