//! Safe to expose, easy to watch, safe to restart: auth on the upgrade, limits, the admin
//! endpoints and metrics, graceful drain, and secrets that never reach the logs.

mod common;

use std::time::Duration;

use common::call::{send_paced, Call};
use common::daemon::{field, message, Daemon};
use common::fake_freeswitch::{ConnectOptions, FakeFreeSwitch};
use common::http;
use voicebridge::audio::signal::sine;

const TOKEN: &str = "tok-0123456789abcdef-right";
const WRONG: &str = "tok-wrong-value-that-must-not-leak";

fn echo(extra_server: &str, extra: &str) -> String {
    format!(
        "[server]\n{extra_server}\n[call]\nprovider = \"echo\"\n\
         [providers.echo]\nmode = \"stream\"\ndelay_ms = 0\n{extra}\n"
    )
}

/// A short call that must work: audio in, audio back, clean close.
async fn short_call(daemon: &Daemon, opts: ConnectOptions, id: &str) {
    let fs = FakeFreeSwitch::connect(&opts).await.expect("accepted");
    for _ in 0..5 {
        fs.send_audio(&[0x10; 320]).await.unwrap();
    }
    let outcome = fs.close().await.unwrap();
    assert!(outcome.echoed);
    daemon.wait_call_end(id).await;
}

/// Finds a series by name and label pairs, whatever order the labels are rendered in.
fn series(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (n, rest) = head.split_once('{').unwrap_or((head, ""));
        if n != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_by_header_or_query_with_constant_time_check() {
    let daemon = Daemon::start(&echo(&format!("auth_tokens = [\"{TOKEN}\"]"), ""), &[]).await;
    let path = |id: &str| format!("/call/{id}?rate=8000");
    let refused = [
        ConnectOptions::new(daemon.addr, path("a1")),
        ConnectOptions::new(daemon.addr, path("a2")).bearer(WRONG),
        ConnectOptions::new(daemon.addr, format!("{}&token={WRONG}", path("a3"))),
    ];
    for opts in &refused {
        let err = FakeFreeSwitch::connect(opts).await.err().expect("refused");
        assert_eq!(err.status(), Some(401), "{err}");
    }
    short_call(
        &daemon,
        ConnectOptions::new(daemon.addr, path("ok-header")).bearer(TOKEN),
        "ok-header",
    )
    .await;
    short_call(
        &daemon,
        ConnectOptions::new(daemon.addr, format!("{}&token={TOKEN}", path("ok-query"))),
        "ok-query",
    )
    .await;

    let rejected: Vec<_> = daemon
        .logs()
        .into_iter()
        .filter(|l| message(l) == "upgrade rejected" && field(l, "status") == 401)
        .collect();
    // The first from this address is logged in full, the other two only counted (they
    // come as a summary line): a flood cannot flood the journal.
    assert_eq!(
        rejected.len(),
        1,
        "one line per source and reason per minute"
    );
    let (_, metrics) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(
        series(
            &metrics,
            "voicebridge_upgrades_rejected_total",
            &[("reason", "unauthorized")]
        ),
        Some(3.0)
    );
    let out = daemon.output();
    assert!(
        !out.contains(TOKEN) && !out.contains(WRONG),
        "a token reached the logs"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_gives_503_with_retry_after_and_flips_readyz() {
    let toml = echo(
        "max_calls = 1",
        "[[routes]]\nname = \"small\"\nmax_calls = 1\n",
    );
    let daemon = Daemon::start(&toml, &[]).await;
    assert_eq!(http::get(daemon.admin, "/healthz").await.0, 200);
    assert_eq!(
        http::get(daemon.admin, "/readyz").await,
        (200, "ready\n".to_owned())
    );

    let a = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/call/cap-a?rate=8000"))
        .await
        .unwrap();
    assert_eq!(
        http::get(daemon.admin, "/readyz").await,
        (503, "at capacity\n".to_owned())
    );
    let err = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/call/cap-b?rate=8000"))
        .await
        .err()
        .expect("503");
    assert_eq!(err.status(), Some(503));
    let retry_after = match &err {
        common::fake_freeswitch::FakeFsError::Rejected { headers, .. } => headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            .map(|(_, v)| v.clone()),
        _ => None,
    };
    assert_eq!(retry_after.as_deref(), Some("5"));
    a.close().await.unwrap();
    daemon.wait_call_end("cap-a").await;
    assert_eq!(http::get(daemon.admin, "/readyz").await.0, 200);
    let (_, metrics) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(
        series(
            &metrics,
            "voicebridge_upgrades_rejected_total",
            &[("reason", "at_capacity")]
        ),
        Some(1.0)
    );
    assert_eq!(series(&metrics, "voicebridge_active_calls", &[]), Some(0.0));
    daemon.stop().await;

    // A route's own limit, below the server's.
    let toml = echo(
        "max_calls = 10",
        "[[routes]]\nname = \"small\"\nmax_calls = 1\n",
    );
    let daemon = Daemon::start(&toml, &[]).await;
    let s1 = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/small/s1?rate=8000"))
        .await
        .unwrap();
    let err = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/small/s2?rate=8000"))
        .await
        .err()
        .expect("route full");
    assert_eq!(err.status(), Some(503));
    let line = daemon.wait_log(|l| message(l) == "upgrade rejected").await;
    assert!(field(&line, "reason")
        .as_str()
        .unwrap()
        .contains("route \"small\""));
    // The default route is not affected by the small route's limit.
    short_call(
        &daemon,
        ConnectOptions::new(daemon.addr, "/call/c1?rate=8000"),
        "c1",
    )
    .await;
    s1.close().await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_calls_and_refuses_new_ones() {
    let daemon = Daemon::start(&echo("drain_timeout_secs = 20", ""), &[]).await;
    let call = Call::connect(&daemon, "call", "drain-1", "rate=8000").await;
    let talk = common::call::spawn_talker(call.writer.clone(), 0x20, usize::MAX);
    call.wait_received(5).await;
    daemon.sigterm();
    daemon.wait_log(|l| message(l) == "SIGTERM: draining").await;
    let err = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/call/late?rate=8000"))
        .await
        .err()
        .expect("no new calls while draining");
    assert_eq!(err.status(), Some(503));
    assert_eq!(
        http::get(daemon.admin, "/readyz").await,
        (503, "draining\n".to_owned())
    );
    // The live call goes on: its audio keeps coming back.
    let before = call.received.load(std::sync::atomic::Ordering::SeqCst);
    call.wait_received(before + 25).await;
    talk.abort();
    let (outcome, _) = call.close().await;
    assert!(outcome.echoed);
    let summary = daemon.wait_call_end("drain-1").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.wait_log(|l| message(l) == "all calls ended").await;
    assert_eq!(daemon.wait_exit().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_a_scripted_call() {
    let toml = "[call]\nprovider = \"echo\"\n[providers.echo]\nmode = \"utterance\"\n";
    let daemon = Daemon::start(toml, &[]).await;
    let _ = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/nope/x")).await;
    let call = Call::connect(&daemon, "call", "m-1", "rate=8000").await;
    let tone = sine(8000, 440.0, -12.0, 8000);
    send_paced(&call.writer, &tone, 8000, 1).await;
    // Silence until the reply plays, then talk over it: one barge-in.
    let writer = call.writer.clone();
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    while call.received.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        clock.tick().await;
        writer.send_audio(&[0; 320]).await.unwrap();
    }
    send_paced(&call.writer, &tone[..3200], 8000, 1).await;
    let (_, _) = call.close().await;
    let s = daemon.wait_call_end("m-1").await;
    assert_eq!(field(&s, "barge_ins"), 1);

    let (status, m) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(status, 200);
    let calls = &[
        ("route", "call"),
        ("provider", "echo"),
        ("end_reason", "freeswitch_closed"),
    ];
    assert_eq!(series(&m, "voicebridge_calls_total", calls), Some(1.0));
    for (dir, frames, bytes) in [
        ("fs_in", "fs_messages_in", "fs_bytes_in"),
        ("fs_out", "frames_to_fs", "bytes_to_fs"),
        ("to_provider", "frames_to_provider", "bytes_to_provider"),
        (
            "from_provider",
            "provider_audio_events",
            "provider_bytes_in",
        ),
    ] {
        let want_frames = field(&s, frames).as_f64();
        let want_bytes = field(&s, bytes).as_f64();
        assert_eq!(
            series(&m, "voicebridge_frames_total", &[("direction", dir)]),
            want_frames,
            "{dir}"
        );
        assert_eq!(
            series(&m, "voicebridge_bytes_total", &[("direction", dir)]),
            want_bytes,
            "{dir}"
        );
    }
    assert_eq!(
        series(&m, "voicebridge_barge_ins_total", &[("provider", "echo")]),
        Some(1.0)
    );
    assert_eq!(
        series(&m, "voicebridge_barge_in_cut_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "voicebridge_first_response_seconds_count",
            &[("provider", "echo")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "voicebridge_upgrades_rejected_total",
            &[("reason", "unknown_route")]
        ),
        Some(1.0)
    );
    assert_eq!(series(&m, "voicebridge_active_calls", &[]), Some(0.0));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    const OPENAI: &str = "fake-openai-key-0123456789abcdefghijkl";
    const GEMINI: &str = "fake-gemini-key-0123456789abcdefghij";
    const ELEVEN: &str = "xi-test-ELEVEN-0123456789abcdefghijk";
    const ESL: &str = "esl-test-password-0123456789";
    // A provider that cannot be reached: the error path logs URLs and reasons.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let toml = format!(
        "[server]\nauth_tokens = [\"{TOKEN}\"]\n[log]\nlevel = \"debug\"\n[call]\nprovider = \"openai\"\n\
         [providers.openai]\nurl = \"ws://127.0.0.1:{port}/v1/realtime\"\n\
         [providers.gemini]\nurl = \"ws://127.0.0.1:{port}/ws?key={GEMINI}\"\n\
         [[routes]]\nname = \"g\"\nprovider = \"gemini\"\n"
    );
    let daemon = Daemon::start(
        &toml,
        &[
            ("OPENAI_API_KEY", OPENAI),
            ("GEMINI_API_KEY", GEMINI),
            ("ELEVENLABS_API_KEY", ELEVEN),
            ("FREESWITCH_ESL_PASSWORD", ESL),
        ],
    )
    .await;
    for (route, id) in [("call", "s-openai"), ("g", "s-gemini")] {
        let opts =
            ConnectOptions::new(daemon.addr, format!("/{route}/{id}?rate=8000")).bearer(TOKEN);
        let mut fs = FakeFreeSwitch::connect(&opts).await.unwrap();
        fs.send_text(r#"{"caller_id":"+100"}"#).await.unwrap();
        // The provider cannot connect: the call ends with a reason, FreeSWITCH gets a Close.
        while let Ok(Some(f)) = fs.recv_timeout(common::daemon::HANG_GUARD).await {
            if matches!(f, common::fake_freeswitch::ServerFrame::Close(..)) {
                break;
            }
        }
        let s = daemon.wait_call_end(id).await;
        assert_eq!(field(&s, "end_reason"), "provider_error");
    }
    let _ = FakeFreeSwitch::connect(
        &ConnectOptions::new(daemon.addr, "/call/s-bad?rate=8000").bearer(WRONG),
    )
    .await;
    daemon.wait_log(|l| message(l) == "upgrade rejected").await;
    let out = daemon.output();
    for secret in [OPENAI, GEMINI, ELEVEN, ESL, TOKEN, WRONG] {
        assert!(
            !out.contains(secret),
            "{secret} appeared in the logs:\n{out}"
        );
    }
    assert!(
        out.contains("[redacted]") || !out.contains("key="),
        "the Gemini URL is logged redacted"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_for_new_calls_only() {
    let daemon = Daemon::start(&echo("", ""), &[]).await;
    let live = Call::connect(&daemon, "call", "before-reload", "rate=8000").await;
    let err = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/vip/r1?rate=8000"))
        .await
        .err()
        .expect("no such route yet");
    assert_eq!(err.status(), Some(404));

    let mut toml = std::fs::read_to_string(&daemon.config_path).unwrap();
    toml.push_str("\n[[routes]]\nname = \"vip\"\n");
    std::fs::write(&daemon.config_path, toml).unwrap();
    daemon.sighup();
    daemon
        .wait_log(|l| message(l) == "SIGHUP: configuration reloaded for new calls")
        .await;
    short_call(
        &daemon,
        ConnectOptions::new(daemon.addr, "/vip/r2?rate=8000"),
        "r2",
    )
    .await;

    // A broken file is refused and the running configuration stays.
    std::fs::write(&daemon.config_path, "[call]\nprovider = \"nonsense\"\n").unwrap();
    daemon.sighup();
    let line = daemon
        .wait_log(|l| message(l).starts_with("SIGHUP: configuration error"))
        .await;
    assert!(field(&line, "error")
        .as_str()
        .unwrap()
        .contains("call.provider"));
    short_call(
        &daemon,
        ConnectOptions::new(daemon.addr, "/vip/r3?rate=8000"),
        "r3",
    )
    .await;

    // The call that was live during both reloads is untouched.
    send_paced(&live.writer, &[0i16; 1600], 8000, 1).await;
    live.wait_received(5).await;
    let (outcome, _) = live.close().await;
    assert!(outcome.echoed);
    let s = daemon.wait_call_end("before-reload").await;
    assert_eq!(field(&s, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_closes_the_remaining_calls_with_1001() {
    let daemon = Daemon::start(&echo("drain_timeout_secs = 1", ""), &[]).await;
    let call = Call::connect(&daemon, "call", "left-over", "rate=8000").await;
    let talk = common::call::spawn_talker(call.writer.clone(), 0x20, usize::MAX);
    call.wait_received(5).await;
    daemon.sigterm();
    // The call does not end by itself: the drain timeout closes it.
    let summary = daemon.wait_call_end("left-over").await;
    assert_eq!(field(&summary, "end_reason"), "shutdown");
    let got = tokio::time::timeout(common::daemon::HANG_GUARD, call.reader)
        .await
        .unwrap()
        .unwrap();
    assert!(
        got.events
            .iter()
            .any(|e| matches!(e, common::call::Playback::Close(Some(1001), _))),
        "FreeSWITCH gets Close 1001 (going away)"
    );
    talk.abort();
    assert_eq!(daemon.wait_exit().await, Some(0));
}
