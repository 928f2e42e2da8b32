//! Bad input from FreeSWITCH (or anything that connects to our port): each case gets one
//! clear log line, that call ends cleanly, and the daemon keeps serving other calls.

mod common;

use std::time::Duration;

use common::call::{l16, send_paced, test_signal, Call, Playback};
use common::daemon::{call_id, field, message, Daemon};
use common::fake_freeswitch::{opcode, AbortMode, ConnectOptions, FakeFreeSwitch, ServerFrame};
use voicebridge::audio::signal::snr_db_within;

fn config(extra_call: &str) -> String {
    format!(
        r#"
[call]
provider = "echo"
{extra_call}

[providers.echo]
mode = "stream"
delay_ms = 200
"#
    )
}

/// A healthy call on the same daemon, to prove other calls are unaffected.
async fn healthy_call(daemon: &Daemon, id: &str) {
    let call = Call::connect(daemon, "call", id, "rate=8000").await;
    let caller = test_signal(8000, 1.5, 11);
    let mut sent = caller.clone();
    sent.extend(vec![0i16; 4000]);
    send_paced(&call.writer, &sent, 8000, 1).await;
    let (outcome, got) = call.close().await;
    assert!(outcome.echoed);
    let audio = got.audio();
    assert!(audio.len() > 1600 + caller.len() / 2, "{id}: no audio back");
    let snr = snr_db_within(&caller, &audio[1600..], 80);
    assert!(snr > 60.0, "{id}: SNR {snr:.1} dB");
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_message_sizes_are_reframed_without_loss() {
    let daemon = Daemon::start(&config(""), &[]).await;
    let call = Call::connect(&daemon, "call", "odd-1", "rate=8000").await;
    let caller = test_signal(8000, 2.0, 11);
    let mut bytes = l16(&caller);
    bytes.extend(vec![0u8; 8000]); // 0.5 s of tail
                                   // Sizes no FreeSWITCH build sends, including odd byte counts that split samples.
    let sizes = [7usize, 321, 1, 640, 333, 160, 2, 959];
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        // Keep the average at real time: about 320 bytes per 20 ms tick.
        let mut budget = 320usize;
        clock.tick().await;
        while budget > 0 && at < bytes.len() {
            let n = sizes[i % sizes.len()].min(bytes.len() - at);
            call.writer.send_audio(&bytes[at..at + n]).await.unwrap();
            at += n;
            i += 1;
            budget = budget.saturating_sub(n);
        }
    }
    let expected = bytes.len() / 2 + 1600;
    call.wait_received(expected / 160 - 2).await;
    let (_, got) = call.close().await;
    let audio = got.audio();
    let diff = audio.len() as i64 - expected as i64;
    assert!(diff.abs() <= 320, "samples lost or invented: {diff}");
    let snr = snr_db_within(&caller, &audio[1600..], 80);
    println!("odd sizes: {} messages, SNR {snr:.1} dB", i);
    assert!(
        snr > 60.0,
        "a split sample was rejoined wrongly: SNR {snr:.1} dB"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_text_frame_ends_only_that_call() {
    let daemon = Daemon::start(&config(""), &[]).await;
    let opts = ConnectOptions::new(daemon.addr, "/call/big-1?rate=8000");
    let mut fs = FakeFreeSwitch::connect(&opts).await.unwrap();
    fs.send_audio(&vec![0u8; 320]).await.unwrap();
    let huge = "x".repeat(1024 * 1024);
    let healthy = healthy_call(&daemon, "neighbour-1");
    let attack = async {
        // The server refuses the frame from its header, answers Close 1009 (message too
        // big) and closes while we may still be writing the rest of the megabyte: then
        // our write fails with a reset (the kernel discards the unread tail), and the
        // Close cannot be read any more. Both are the server refusing; the end reason
        // below says which limit.
        if let Err(e) = fs
            .send_raw_frame(opcode::TEXT, true, huge.as_bytes(), true)
            .await
        {
            let reset = matches!(
                &e,
                common::fake_freeswitch::FakeFsError::Io(io)
                    if matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
            );
            assert!(reset, "writing the big frame failed otherwise: {e}");
            return Err(());
        }
        loop {
            match fs.recv_timeout(common::daemon::HANG_GUARD).await {
                Ok(Some(ServerFrame::Close(code, _))) => break Ok(code),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break Ok(None),
            }
        }
    };
    let (code, ()) = tokio::join!(attack, healthy);
    if let Ok(code) = code {
        assert_eq!(code, Some(1009));
    }
    let summary = daemon.wait_call_end("big-1").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_message_too_big");
    assert!(field(&summary, "end_detail")
        .as_str()
        .unwrap()
        .contains("larger than"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_metadata_is_kept_with_a_warning() {
    let daemon = Daemon::start(&config(""), &[]).await;
    let call = Call::connect(&daemon, "call", "garbage-1", "rate=8000").await;
    call.writer.send_text("caller=123 {not json").await.unwrap();
    let mut audio = test_signal(8000, 1.0, 11);
    audio.extend(vec![0i16; 4000]);
    send_paced(&call.writer, &audio, 8000, 1).await;
    let (_, got) = call.close().await;
    assert!(!got.audio().is_empty(), "the call went on");
    let warning = daemon
        .wait_log(|l| message(l) == "metadata" && call_id(l) == Some("garbage-1"))
        .await;
    assert!(field(&warning, "warning")
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert_eq!(warning["level"], "WARN");
    let meta = daemon
        .wait_log(|l| message(l) == "metadata received" && call_id(l) == Some("garbage-1"))
        .await;
    assert_eq!(field(&meta, "raw"), true);
    let summary = daemon.wait_call_end("garbage-1").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_and_bad_query_are_refused_with_a_status() {
    let daemon = Daemon::start(&config(""), &[]).await;
    let err = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/nosuch/abc?rate=8000"))
        .await
        .err()
        .expect("404");
    assert_eq!(err.status(), Some(404));
    let line = daemon.wait_log(|l| message(l) == "upgrade rejected").await;
    assert_eq!(field(&line, "status"), 404);
    assert!(field(&line, "reason").as_str().unwrap().contains("nosuch"));

    let err = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/call/abc?rate=11025"))
        .await
        .err()
        .expect("400");
    assert_eq!(err.status(), Some(400));
    daemon
        .wait_log(|l| {
            message(l) == "upgrade rejected"
                && field(l, "reason").as_str().unwrap_or("").contains("rate")
        })
        .await;
    healthy_call(&daemon, "after-rejects").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_tcp_drop_ends_the_call_cleanly() {
    let daemon = Daemon::start(&config(""), &[]).await;
    for (id, mode) in [("drop-fin", AbortMode::Fin), ("drop-rst", AbortMode::Reset)] {
        let opts = ConnectOptions::new(daemon.addr, format!("/call/{id}?rate=8000"));
        let fs = FakeFreeSwitch::connect(&opts).await.unwrap();
        for _ in 0..10 {
            fs.send_audio(&vec![1u8; 320]).await.unwrap();
        }
        fs.abort(mode).await.unwrap();
        let summary = daemon.wait_call_end(id).await;
        assert_eq!(field(&summary, "end_reason"), "freeswitch_gone", "{id}");
    }
    healthy_call(&daemon, "after-drop").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_and_close_is_echoed_at_once() {
    let daemon = Daemon::start(&config(""), &[]).await;
    let call = Call::connect(&daemon, "call", "ping-1", "rate=8000").await;
    call.writer.send_heartbeat().await.unwrap();
    send_paced(&call.writer, &vec![0i16; 1600], 8000, 1).await;
    let (outcome, got) = call.close().await;
    let pongs: Vec<_> = got
        .events
        .iter()
        .filter_map(|e| match e {
            Playback::Pong(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(pongs, vec![b"ping".to_vec()]);
    assert!(
        outcome.echoed,
        "Close must be echoed within the module's 1 s"
    );
    assert_eq!(outcome.code, Some(1000));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_max_duration_end_the_call_with_a_close() {
    let daemon = Daemon::start(&config("idle_timeout_secs = 1"), &[]).await;
    let opts = ConnectOptions::new(daemon.addr, "/call/idle-1?rate=8000");
    let mut fs = FakeFreeSwitch::connect(&opts).await.unwrap();
    fs.send_audio(&vec![0u8; 320]).await.unwrap();
    // Send nothing more: the daemon must close with a reason.
    let close = loop {
        match fs.recv_timeout(common::daemon::HANG_GUARD).await.unwrap() {
            Some(ServerFrame::Close(code, reason)) => break (code, reason),
            Some(_) => continue,
            None => panic!("stream ended without a Close"),
        }
    };
    assert_eq!(close.0, Some(1000));
    assert!(close.1.contains("idle"), "{}", close.1);
    let summary = daemon.wait_call_end("idle-1").await;
    assert_eq!(field(&summary, "end_reason"), "idle_timeout");
    daemon.stop().await;

    let daemon = Daemon::start(&config("max_duration_secs = 1"), &[]).await;
    let call = Call::connect(&daemon, "call", "max-1", "rate=8000").await;
    // Keep talking: only the duration limit can end this call.
    let talk = common::call::spawn_talker(call.writer.clone(), 0, 250);
    let summary = daemon.wait_call_end("max-1").await;
    assert_eq!(field(&summary, "end_reason"), "max_duration");
    let got = tokio::time::timeout(common::daemon::HANG_GUARD, call.reader)
        .await
        .unwrap()
        .unwrap();
    assert!(got
        .events
        .iter()
        .any(|e| matches!(e, Playback::Close(Some(1000), r) if r.contains("max_duration"))));
    talk.abort();
    daemon.stop().await;
}

/// A format the call cannot run in (G.711 is 8000 Hz only) is refused before anything
/// starts: an error Close with the reason, one log line, no provider, and the daemon
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplayable_format_is_refused_with_an_error_close() {
    let daemon = Daemon::start(&config(""), &[]).await;
    let opts = ConnectOptions::new(daemon.addr, "/call/fmt-1?codec=pcmu&rate=16000");
    let mut fs = FakeFreeSwitch::connect(&opts).await.unwrap();
    let close = loop {
        match fs.recv_timeout(common::daemon::HANG_GUARD).await.unwrap() {
            Some(ServerFrame::Close(code, reason)) => break (code, reason),
            Some(_) => continue,
            None => panic!("stream ended without a Close"),
        }
    };
    assert_eq!(close.0, Some(1011));
    assert!(close.1.contains("requires rate 8000"), "{}", close.1);
    let refused = daemon
        .wait_log(|l| message(l) == "call refused" && call_id(l) == Some("fmt-1"))
        .await;
    assert!(
        field(&refused, "reason")
            .as_str()
            .is_some_and(|r| r.contains("requires rate 8000, not 16000")),
        "{refused}"
    );
    healthy_call(&daemon, "fmt-ok").await;
    assert!(
        !daemon
            .logs()
            .iter()
            .any(|l| message(l) == "call started" && call_id(l) == Some("fmt-1")),
        "a refused call must not start a provider"
    );
    daemon.stop().await;
}
