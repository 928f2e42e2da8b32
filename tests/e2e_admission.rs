//! Who gets in, and what one bad peer can cost the others, against the real binary over
//! loopback: authenticated upgrades are never rate-limited, failing ones are; routes
//! cannot be probed without a token; unfinished handshakes are capped per source and
//! in total; a live call id cannot be taken twice; a flood of rejections is a summary
//! in the log; the admin listener has timeouts and a cap and never holds the exit.

mod common;

use std::net::SocketAddr;

use common::daemon::{field, message, Daemon, HANG_GUARD};
use common::fake_freeswitch::{ConnectOptions, FakeFreeSwitch};
use common::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TOKEN: &str = "tok-0123456789abcdef-right";
const WRONG: &str = "tok-wrong-value-that-must-not-leak";

fn echo(extra_server: &str, extra: &str) -> String {
    format!(
        "[server]\n{extra_server}\n[call]\nprovider = \"echo\"\n\
         [providers.echo]\nmode = \"stream\"\ndelay_ms = 0\n{extra}\n"
    )
}

fn opts(daemon: &Daemon, path: impl Into<String>) -> ConnectOptions {
    ConnectOptions::new(daemon.addr, path).connect_timeout(HANG_GUARD)
}

/// The status a refused upgrade got (panics if it was accepted).
async fn refused(o: &ConnectOptions) -> u16 {
    let err = FakeFreeSwitch::connect(o).await.err().expect("refused");
    err.status()
        .unwrap_or_else(|| panic!("no HTTP status: {err}"))
}

/// A TCP connection from a given loopback source address (127.0.0.0/8 is all local).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.expect("connect")
}

/// Everything the peer sends until it closes the connection.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(HANG_GUARD, s.read_to_end(&mut buf))
        .await
        .expect("the daemon never closed the connection")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

fn rejected_lines(daemon: &Daemon, status: u16) -> usize {
    daemon
        .logs()
        .iter()
        .filter(|l| message(l) == "upgrade rejected" && field(l, "status") == status)
        .count()
}

fn rejected_total(metrics: &str, reason: &str) -> f64 {
    http::metric(
        metrics,
        &format!("voicebridge_upgrades_rejected_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_rate_limited_but_never_lock_out_the_right_token() {
    // A tiny failure budget (1/s, burst 2) to make the point with few connections.
    let toml = echo(
        &format!("auth_tokens = [\"{TOKEN}\"]\nper_ip_rate_limit = 1\nmax_calls = 100"),
        "",
    );
    let daemon = Daemon::start(&toml, &[]).await;
    // Wrong tokens from this address until it is over its failure budget.
    let mut bad = 0;
    loop {
        bad += 1;
        let status = refused(&opts(&daemon, format!("/call/bad-{bad}")).bearer(WRONG)).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 401);
        assert!(bad < 100, "never rate limited");
    }
    // The same address, the right token: accepted, however many at once.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let o = opts(&daemon, format!("/call/good-{i}?rate=8000")).bearer(TOKEN);
        tasks.push(tokio::spawn(
            async move { FakeFreeSwitch::connect(&o).await },
        ));
    }
    let mut calls = Vec::new();
    for t in tasks {
        calls.push(
            t.await
                .unwrap()
                .expect("an authenticated upgrade is never refused"),
        );
    }
    for fs in calls {
        fs.close().await.unwrap();
    }
    let (_, m) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(
        rejected_total(&m, "unauthorized") + rejected_total(&m, "rate_limited"),
        bad as f64
    );
    assert!(rejected_total(&m, "rate_limited") >= 1.0);
    let line = daemon
        .wait_log(|l| message(l) == "upgrade rejected" && field(l, "status") == 429)
        .await;
    let reason = field(&line, "reason").as_str().unwrap().to_owned();
    assert!(reason.contains("127.0.0.1"), "{reason}");
    assert!(!daemon.output().contains(WRONG), "a token reached the logs");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_token_every_request_gets_401() {
    let toml = echo(&format!("auth_tokens = [\"{TOKEN}\"]"), "");
    let daemon = Daemon::start(&toml, &[]).await;
    // Unknown route, malformed path, bad query: all 401 without a token, so neither the
    // routes nor the URL rules can be learnt by a stranger.
    for path in ["/nosuch/x1?rate=8000", "/a/b/c", "/call/x2?rate=11025"] {
        assert_eq!(refused(&opts(&daemon, path)).await, 401, "{path}");
        assert_eq!(
            refused(&opts(&daemon, path).bearer(WRONG)).await,
            401,
            "{path}"
        );
    }
    // With the token, the real reasons.
    assert_eq!(
        refused(&opts(&daemon, "/nosuch/x3?rate=8000").bearer(TOKEN)).await,
        404
    );
    assert_eq!(
        refused(&opts(&daemon, "/call/x4?rate=11025").bearer(TOKEN)).await,
        400
    );
    assert_eq!(
        refused(&opts(&daemon, format!("/nosuch/x5?token={TOKEN}"))).await,
        404
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let toml = echo(&format!("auth_tokens = [\"{TOKEN}\"]"), "");
    let daemon = Daemon::start(&toml, &[]).await;
    for (i, scheme) in ["bearer", "BEARER", "Bearer"].iter().enumerate() {
        let id = format!("scheme-{i}");
        let o = opts(&daemon, format!("/call/{id}?rate=8000"))
            .header("Authorization", format!("{scheme} {TOKEN}"));
        let fs = FakeFreeSwitch::connect(&o)
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        fs.send_audio(&[0x10; 320]).await.unwrap();
        fs.close().await.unwrap();
        daemon.wait_call_end(&id).await;
    }
    let o = opts(&daemon, "/call/scheme-basic?rate=8000")
        .header("Authorization", format!("Basic {TOKEN}"));
    assert_eq!(refused(&o).await, 401);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_call_with_the_same_id_gets_409() {
    let daemon = Daemon::start(&echo("", ""), &[]).await;
    let first = FakeFreeSwitch::connect(&opts(&daemon, "/call/dup-1?rate=8000"))
        .await
        .unwrap();
    assert_eq!(refused(&opts(&daemon, "/call/dup-1?rate=8000")).await, 409);
    let line = daemon
        .wait_log(|l| message(l) == "upgrade rejected" && field(l, "status") == 409)
        .await;
    assert!(field(&line, "reason").as_str().unwrap().contains("dup-1"));
    // The first call is untouched: its audio still comes back.
    for _ in 0..5 {
        first.send_audio(&[0x10; 320]).await.unwrap();
    }
    assert!(first.close().await.unwrap().echoed);
    daemon.wait_call_end("dup-1").await;
    // Once it ended, the id is free again.
    let again = FakeFreeSwitch::connect(&opts(&daemon, "/call/dup-1?rate=8000"))
        .await
        .expect("the id is free after its call ended");
    again.close().await.unwrap();
    let (_, m) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(rejected_total(&m, "call_id_in_use"), 1.0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_handshakes_are_capped_per_source_and_in_total() {
    // The longest handshake timeout allowed, so the idle connections below stay counted
    // while the test works (they are opened just before the checks).
    let toml = echo(
        "max_handshakes_per_ip = 2\nmax_handshakes = 3\nhandshake_timeout_ms = 1000",
        "",
    );
    let daemon = Daemon::start(&toml, &[]).await;
    // Two idle connections from 127.0.0.2 fill its share.
    let _idle_a = connect_from("127.0.0.2", daemon.addr).await;
    let _idle_b = connect_from("127.0.0.2", daemon.addr).await;
    let mut third = connect_from("127.0.0.2", daemon.addr).await;
    let reply = read_to_close(&mut third).await;
    assert!(reply.starts_with("HTTP/1.1 429 "), "{reply:?}");
    // Another source still gets in.
    let fs = FakeFreeSwitch::connect(&opts(&daemon, "/call/other-src?rate=8000"))
        .await
        .expect("another source is not affected");
    fs.close().await.unwrap();
    // One more idle connection elsewhere fills the total: a fourth source is refused.
    let _idle_c = connect_from("127.0.0.3", daemon.addr).await;
    let mut over = connect_from("127.0.0.4", daemon.addr).await;
    let reply = read_to_close(&mut over).await;
    assert!(reply.starts_with("HTTP/1.1 503 "), "{reply:?}");
    let (_, m) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(rejected_total(&m, "too_many_handshakes"), 2.0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rejections_is_one_line_and_a_summary() {
    let daemon = Daemon::start(&echo("per_ip_rate_limit = 0", ""), &[]).await;
    const N: usize = 40;
    for i in 0..N {
        assert_eq!(
            refused(&opts(&daemon, format!("/nosuch/f{i}?rate=8000"))).await,
            404
        );
    }
    let (_, m) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(
        rejected_total(&m, "unknown_route"),
        N as f64,
        "metrics count all"
    );
    assert_eq!(
        rejected_lines(&daemon, 404),
        1,
        "the first is logged in full"
    );
    // The rest come as one summary line; at exit at the latest.
    daemon.sigterm();
    let summary = daemon
        .wait_log(|l| message(l).starts_with("upgrade rejections not logged one by one"))
        .await;
    assert_eq!(field(&summary, "source"), "127.0.0.1");
    assert_eq!(field(&summary, "rejected"), (N - 1) as u64);
    assert_eq!(
        field(&summary, "by_reason"),
        format!("unknown_route={}", N - 1).as_str()
    );
    assert_eq!(rejected_lines(&daemon, 404), 1);
    assert_eq!(daemon.wait_exit().await, Some(0));
}

/// An admin connection that sent the start of a request and then nothing.
async fn half_sent(admin: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(admin).await.expect("connect admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped_and_time_out() {
    let toml = echo(
        "",
        "[admin]\nmax_connections = 2\nheader_timeout_ms = 300\n",
    );
    let daemon = Daemon::start(&toml, &[]).await;
    let mut a = half_sent(daemon.admin).await;
    let mut b = half_sent(daemon.admin).await;
    let mut third = TcpStream::connect(daemon.admin).await.unwrap();
    let reply = read_to_close(&mut third).await;
    assert!(reply.starts_with("HTTP/1.1 503 "), "{reply:?}");
    // The half-sent requests are given up on (the header timeout) and closed.
    read_to_close(&mut a).await;
    read_to_close(&mut b).await;
    // Their slots come back: /healthz answers again (the slot is released just after
    // the close, so a 503 in between is retried).
    let healthy = async {
        loop {
            let (status, _) = http::get(daemon.admin, "/healthz").await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503);
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(HANG_GUARD, healthy)
        .await
        .expect("/healthz never answered again");
    let (_, m) = http::get(daemon.admin, "/metrics").await;
    assert!(http::metric(&m, "voicebridge_admin_connections_refused_total").unwrap_or(0.0) >= 1.0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_while_admin_requests_hang() {
    // An hour to send the headers: only the shutdown itself can close these.
    let toml = echo("", "[admin]\nheader_timeout_ms = 3600000\n");
    let daemon = Daemon::start(&toml, &[]).await;
    let mut hung = Vec::new();
    for _ in 0..5 {
        hung.push(half_sent(daemon.admin).await);
    }
    // The admin listener is serving them (a complete request still gets its answer).
    assert_eq!(http::get(daemon.admin, "/healthz").await.0, 200);
    assert_eq!(daemon.stop().await, Some(0));
    for s in &mut hung {
        read_to_close(s).await;
    }
}
