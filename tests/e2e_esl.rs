//! End to end with the Event Socket: the real `voicebridge` binary, the fake FreeSWITCH
//! (mod_audio_stream), the fake ESL server (mod_event_socket) and the echo provider.
//! Everything is awaited on events (log lines, received commands), never on sleeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::call::{l16, send_paced, Call};
use common::daemon::{field, message, Daemon};
use common::fake_esl::FakeEsl;
use common::fake_freeswitch::{ConnectOptions, FakeFreeSwitch, ServerFrame};
use serde_json::Value;
use voicebridge::audio::signal::sine;

const PASSWORD: &str = "not-ClueCon-3141";

fn config(playback: &str, esl: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
[freeswitch]
playback = "{playback}"
playback_lead_ms = 60
{extra}

[freeswitch.esl]
host = "{}"
port = {}

[call]
provider = "echo"

[providers.echo]
mode = "utterance"
sample_rate = 24000
"#,
        esl.ip(),
        esl.port()
    )
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("FREESWITCH_ESL_PASSWORD", PASSWORD)]
}

async fn start(toml: &str) -> Daemon {
    Daemon::start(toml, &env()).await
}

fn count(daemon: &Daemon, msg: &str) -> usize {
    daemon.logs().iter().filter(|l| message(l) == msg).count()
}

/// Sends silence until `n` audio messages came back, so the echo is playing.
async fn silence_until_received(call: &Call, n: usize) {
    let silence = l16(&[0i16; 160]);
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    while call.received.load(std::sync::atomic::Ordering::SeqCst) < n {
        clock.tick().await;
        call.writer.send_audio(&silence).await.unwrap();
    }
}

/// stream_audio: a barge-in sends clearAudio on the WebSocket and `uuid_break <uuid>
/// all` over ESL in the same tick; a call FreeSWITCH ends is not killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_sends_uuid_break_in_stream_audio() {
    let esl = FakeEsl::start(PASSWORD).await;
    let daemon = start(&config("stream_audio", esl.addr, "")).await;
    daemon.wait_log(|l| message(l) == "ESL connected").await;
    let id = "0b3c6a4e-1f7b-4d1c-9a59-2d6f0c7e1a22";
    let call = Call::connect(&daemon, "call", id, "rate=8000").await;
    let tone = sine(8000, 440.0, -12.0, 16000);
    send_paced(&call.writer, &tone, 8000, 1).await;
    silence_until_received(&call, 10).await;
    // Talk over the reply.
    send_paced(&call.writer, &tone[..4000], 8000, 1).await;
    let breaks = esl.wait_api(1, |c| c.starts_with("uuid_break")).await;
    let (_, got) = call.close().await;
    daemon.wait_call_end(id).await;

    assert_eq!(breaks[0].line, format!("uuid_break {id} all"));
    let clears = got.clears();
    assert_eq!(clears.len(), 1);
    let latency = breaks[0].at.saturating_duration_since(clears[0]);
    let early = clears[0].saturating_duration_since(breaks[0].at);
    println!(
        "clearAudio → uuid_break at the fake ESL: +{:.2} ms (-{:.2} ms)",
        latency.as_secs_f64() * 1000.0,
        early.as_secs_f64() * 1000.0
    );
    // FreeSWITCH ended the call: no uuid_kill, nothing else.
    let cmds: Vec<String> = esl.api_commands().into_iter().map(|r| r.line).collect();
    assert_eq!(cmds, vec![format!("uuid_break {id} all")]);
    daemon.stop().await;
}

/// binary playback keeps clearAudio only: no ESL command on barge-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_barge_in_sends_no_uuid_break() {
    let esl = FakeEsl::start(PASSWORD).await;
    let daemon = start(&config("binary", esl.addr, "")).await;
    daemon.wait_log(|l| message(l) == "ESL connected").await;
    let id = "bin-barge-1";
    let call = Call::connect(&daemon, "call", id, "rate=8000").await;
    let tone = sine(8000, 440.0, -12.0, 16000);
    send_paced(&call.writer, &tone, 8000, 1).await;
    silence_until_received(&call, 10).await;
    send_paced(&call.writer, &tone[..4000], 8000, 1).await;
    daemon
        .wait_log(|l| message(l) == "barge-in: playback flushed")
        .await;
    let (_, got) = call.close().await;
    daemon.wait_call_end(id).await;
    assert_eq!(got.clears().len(), 1);
    assert!(esl.api_commands().is_empty(), "{:?}", esl.api_commands());
    daemon.stop().await;
}

/// What the fake module did with one streamAudio frame.
#[derive(Debug)]
struct Chunk {
    kind: String,
    rate: u64,
    bytes: usize,
    file: String,
}

/// esl_files: streamAudio chunks of esl_chunk_ms, raw at the call rate; the module
/// (here: the test) writes each to a file and fires ::play; voicebridge answers each
/// with one `uuid_broadcast <uuid> <file> aleg`, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esl_files_broadcasts_each_chunk_in_order() {
    let esl = Arc::new(FakeEsl::start(PASSWORD).await);
    let chunk_ms = 200u64;
    let daemon = start(&config(
        "esl_files",
        esl.addr,
        &format!("esl_chunk_ms = {chunk_ms}"),
    ))
    .await;
    daemon.wait_log(|l| message(l) == "ESL connected").await;
    let id = "5f1e2d3c-aaaa-4bbb-8ccc-000000000e51";
    let rate = 16000u32;
    let opts = ConnectOptions::new(daemon.addr, format!("/call/{id}?rate={rate}"));
    let fs = FakeFreeSwitch::connect(&opts).await.expect("handshake");
    let (writer, mut reader) = fs.split();

    // The community module: every streamAudio text frame becomes a file and a ::play
    // event carrying `data` without audioData, plus `file`.
    let module = {
        let esl = esl.clone();
        tokio::spawn(async move {
            let mut chunks = Vec::new();
            while let Ok(Some(frame)) = reader.recv().await {
                let ServerFrame::Text(text) = frame else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).expect("JSON text");
                if v["type"] != "streamAudio" {
                    continue;
                }
                let mut data = v["data"].clone();
                let audio = base64::engine::general_purpose::STANDARD
                    .decode(data["audioData"].as_str().unwrap())
                    .unwrap();
                let n = chunks.len();
                let file = format!("/tmp/{id}_{n}.tmp.r16");
                let obj = data.as_object_mut().unwrap();
                obj.remove("audioData");
                obj.insert("file".into(), Value::from(file.clone()));
                chunks.push(Chunk {
                    kind: v["data"]["audioDataType"].as_str().unwrap().to_owned(),
                    rate: v["data"]["sampleRate"].as_u64().unwrap(),
                    bytes: audio.len(),
                    file,
                });
                esl.emit_play(id, &data);
            }
            chunks
        })
    };

    // A 1.6 s utterance, then silence while the reply is played.
    let tone = sine(rate, 440.0, -12.0, rate as usize * 8 / 5);
    send_paced(&writer, &tone, rate, 1).await;
    let silence = l16(&vec![0i16; rate as usize / 50]);
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    // The reply is ~1.7 s: at least 7 files of 200 ms.
    let done = esl.wait_api(7, |c| c.starts_with("uuid_broadcast"));
    tokio::pin!(done);
    loop {
        tokio::select! {
            _ = &mut done => break,
            _ = clock.tick() => writer.send_audio(&silence).await.unwrap(),
        }
    }
    // Let the tail of the reply arrive too: it ends with a partial chunk once the
    // reply is done, so wait for the summary after closing.
    writer.close().await.expect("close");
    let chunks = module.await.unwrap();
    daemon.wait_call_end(id).await;

    let full = (rate as u64 * 2 * chunk_ms / 1000) as usize;
    println!(
        "esl_files: {} chunks of {:?} bytes (full = {full} = {chunk_ms} ms)",
        chunks.len(),
        chunks.iter().map(|c| c.bytes).collect::<Vec<_>>()
    );
    assert!(chunks.len() >= 7);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!((c.kind.as_str(), c.rate), ("raw", rate as u64), "chunk {i}");
        if i + 1 < chunks.len() {
            assert_eq!(c.bytes, full, "chunk {i} is not {chunk_ms} ms");
        } else {
            assert!(c.bytes > 0 && c.bytes <= full);
        }
    }
    let broadcasts: Vec<String> = esl
        .api_commands()
        .into_iter()
        .map(|r| r.line)
        .filter(|l| l.starts_with("uuid_broadcast"))
        .collect();
    let expected: Vec<String> = chunks
        .iter()
        .map(|c| format!("uuid_broadcast {id} {} aleg", c.file))
        .collect();
    assert_eq!(broadcasts, expected[..broadcasts.len()].to_vec());
    assert!(
        broadcasts.len() + 1 >= expected.len(),
        "at most the last play event may race the close"
    );
    daemon.stop().await;
}

/// max_duration_secs ends the call on our side: after our Close, `uuid_kill <uuid>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_kills_the_channel() {
    let esl = FakeEsl::start(PASSWORD).await;
    let toml = config("binary", esl.addr, "").replace(
        "provider = \"echo\"",
        "provider = \"echo\"\nmax_duration_secs = 1",
    );
    let daemon = start(&toml).await;
    daemon.wait_log(|l| message(l) == "ESL connected").await;
    let id = "kill-me-1";
    let call = Call::connect(&daemon, "call", id, "rate=8000").await;
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "end_reason"), "max_duration");
    let kills = esl.wait_api(1, |c| c.starts_with("uuid_kill")).await;
    assert_eq!(kills[0].line, format!("uuid_kill {id}"));
    let got = call.reader.await.unwrap();
    assert!(
        got.events
            .iter()
            .any(|e| matches!(e, common::call::Playback::Close(..))),
        "our Close came first"
    );
    assert_eq!(field(&summary, "esl_dropped"), 0);
    daemon.stop().await;
}

/// ESL down at start: calls still work (degraded), exactly one "ESL unavailable" line
/// for the whole outage; when FreeSWITCH's socket appears the daemon connects (one
/// "ESL connected") and commands flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esl_down_at_start_then_reconnects() {
    let addr = FakeEsl::reserve().await;
    let toml = config("binary", addr, "").replace(
        "provider = \"echo\"",
        "provider = \"echo\"\nmax_duration_secs = 1",
    );
    let daemon = start(&toml).await;
    daemon
        .wait_log(|l| message(l).starts_with("ESL unavailable"))
        .await;

    // A call during the outage works and ends normally; its uuid_kill is dropped.
    let call = Call::connect(&daemon, "call", "during-outage", "rate=8000").await;
    let summary = daemon.wait_call_end("during-outage").await;
    assert_eq!(field(&summary, "end_reason"), "max_duration");
    assert_eq!(field(&summary, "esl_dropped"), 1);
    let _ = call.reader.await;

    let esl = FakeEsl::start_at(addr, PASSWORD).await;
    daemon.wait_log(|l| message(l) == "ESL connected").await;
    let call = Call::connect(&daemon, "call", "after-outage", "rate=8000").await;
    daemon.wait_call_end("after-outage").await;
    let kills = esl.wait_api(1, |c| c.starts_with("uuid_kill")).await;
    assert_eq!(kills[0].line, "uuid_kill after-outage");
    let _ = call.reader.await;

    let unavailable = count_prefix(&daemon, "ESL unavailable");
    assert_eq!(
        unavailable,
        1,
        "one warning per outage:\n{}",
        daemon.output()
    );
    assert_eq!(count(&daemon, "ESL connected"), 1);
    let (_, metrics) = common::http::get(daemon.admin, "/metrics").await;
    let value = |name: &str| common::http::metric(&metrics, name);
    assert_eq!(value("voicebridge_esl_up"), Some(1.0));
    assert_eq!(
        value("voicebridge_esl_commands_dropped_total"),
        Some(1.0),
        "the uuid_kill of the call during the outage"
    );

    // A second outage: FreeSWITCH goes away and comes back; again one line each.
    let esl = esl.restart().await;
    esl.wait_logins(1).await;
    wait_count(&daemon, "ESL connected", 2).await;
    assert_eq!(count_prefix(&daemon, "ESL unavailable"), 2);
    let output = daemon.output();
    assert!(
        !output.contains(PASSWORD),
        "the ESL password leaked into the logs"
    );
    daemon.stop().await;
}

fn count_prefix(daemon: &Daemon, prefix: &str) -> usize {
    daemon
        .logs()
        .iter()
        .filter(|l| message(l).starts_with(prefix))
        .count()
}

/// Waits until `msg` was logged `n` times (checked on each new log line).
async fn wait_count(daemon: &Daemon, msg: &str, n: usize) {
    let wait = async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while count(daemon, msg) < n {
            tick.tick().await;
        }
    };
    tokio::time::timeout(common::daemon::HANG_GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("{msg:?} not logged {n} times:\n{}", daemon.output()));
}

/// A wrong password is one clear error line, not a warning per retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_one_clear_error() {
    let esl = FakeEsl::start("the-real-one").await;
    let daemon = start(&config("binary", esl.addr, "")).await;
    let line = daemon
        .wait_log(|l| message(l) == "ESL authentication failed")
        .await;
    assert_eq!(line["level"], "ERROR");
    let reason = field(&line, "reason").as_str().unwrap().to_owned();
    assert!(reason.contains("FREESWITCH_ESL_PASSWORD"), "{reason}");
    assert!(!daemon.output().contains(PASSWORD));
    // Let it retry (0.5 s, 1 s backoff): still one line.
    esl.wait_lines(3, |l| l.starts_with("auth ")).await;
    assert_eq!(count(&daemon, "ESL authentication failed"), 1);
    assert_eq!(count_prefix(&daemon, "ESL unavailable"), 0);
    daemon.stop().await;
}

/// esl_files barge-in: clearAudio + `uuid_break`, and a ::play event that arrives
/// after the break for a chunk sent before it is not played.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esl_files_barge_in_ignores_stale_play_events() {
    let esl = Arc::new(FakeEsl::start(PASSWORD).await);
    let daemon = start(&config("esl_files", esl.addr, "esl_chunk_ms = 200")).await;
    daemon.wait_log(|l| message(l) == "ESL connected").await;
    let id = "barge-files-1";
    let opts = ConnectOptions::new(daemon.addr, format!("/call/{id}?rate=8000"));
    let fs = FakeFreeSwitch::connect(&opts).await.expect("handshake");
    let (writer, mut reader) = fs.split();
    // The module's files, handed to the test, which decides when each ::play fires.
    let (tx, mut files) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let module = tokio::spawn(async move {
        let mut n = 0;
        while let Ok(Some(frame)) = reader.recv().await {
            let ServerFrame::Text(text) = frame else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "clearAudio" {
                // Marks the barge-in in the order FreeSWITCH saw it.
                let _ = tx.send(Value::Null);
                continue;
            }
            if v["type"] != "streamAudio" {
                continue;
            }
            let mut data = v["data"].clone();
            let obj = data.as_object_mut().unwrap();
            obj.remove("audioData");
            obj.insert("file".into(), format!("/tmp/{id}_{n}.tmp.r8").into());
            n += 1;
            let _ = tx.send(data);
        }
    });
    let tone = sine(8000, 440.0, -12.0, 16000);
    send_paced(&writer, &tone, 8000, 1).await;
    // Keep the media clock running while the reply is being played.
    let clock = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let silence = l16(&[0i16; 160]);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                if writer.send_audio(&silence).await.is_err() {
                    break;
                }
            }
        })
    };
    let first = files.recv().await.unwrap();
    let second = files.recv().await.unwrap();
    esl.emit_play(id, &first);
    esl.wait_api(1, |c| c.starts_with("uuid_broadcast")).await;
    // The caller talks over the reply.
    clock.abort();
    send_paced(&writer, &tone[..4000], 8000, 1).await;
    esl.wait_api(1, |c| c.starts_with("uuid_break")).await;
    // The play event of a chunk sent before the break arrives late: not played.
    esl.emit_play(id, &second);
    // The interruption is echoed back after a pause: new chunks, played again.
    let clock = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let silence = l16(&[0i16; 160]);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                if writer.send_audio(&silence).await.is_err() {
                    break;
                }
            }
        })
    };
    // Chunks sent before the clearAudio are the interrupted reply's; skip them.
    while !files.recv().await.unwrap().is_null() {}
    let after_break = files.recv().await.unwrap();
    esl.emit_play(id, &after_break);
    let played = esl.wait_api(2, |c| c.starts_with("uuid_broadcast")).await;
    clock.abort();
    writer.close().await.expect("close");
    let _ = module.await;
    let lines: Vec<&str> = played.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(
        lines,
        vec![
            format!(
                "uuid_broadcast {id} {} aleg",
                first["file"].as_str().unwrap()
            ),
            format!(
                "uuid_broadcast {id} {} aleg",
                after_break["file"].as_str().unwrap()
            ),
        ]
    );
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "barge_ins"), 1);
    daemon.stop().await;
}

/// mod_audio_stream carries no key presses: with the Event Socket, FreeSWITCH's `DTMF`
/// events for the call's uuid reach the call (subscribed as `event json DTMF CUSTOM
/// mod_audio_stream::play`), and another channel's do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_events_reach_their_call_only() {
    let esl = FakeEsl::start(PASSWORD).await;
    let daemon = start(&config("binary", esl.addr, "")).await;
    daemon.wait_log(|l| message(l) == "ESL connected").await;
    let subscribe = esl.wait_lines(1, |l| l.starts_with("event ")).await;
    assert_eq!(
        subscribe[0].line,
        "event json DTMF CUSTOM mod_audio_stream::play"
    );
    let id = "5e1c0d7a-2b8e-4f4a-9c1d-6a7b8c9d0e1f";
    let call = Call::connect(&daemon, "call", id, "rate=8000").await;
    daemon
        .wait_log(|l| message(l) == "call started" && common::daemon::call_id(l) == Some(id))
        .await;
    esl.emit_dtmf("another-channel", '9');
    for digit in ['1', '2', '#'] {
        esl.emit_dtmf(id, digit);
    }
    let last = daemon
        .wait_log(|l| message(l) == "DTMF from the caller" && field(l, "digit") == "#")
        .await;
    assert_eq!(common::daemon::call_id(&last), Some(id));
    let digits: Vec<String> = daemon
        .logs()
        .iter()
        .filter(|l| message(l) == "DTMF from the caller")
        .map(|l| field(l, "digit").as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        digits,
        ["1", "2", "#"],
        "in order, and not the other channel's 9"
    );
    let (_, _) = call.close().await;
    daemon.wait_call_end(id).await;
    daemon.stop().await;
}
