//! Scaling out: two voicebridge instances behind HAProxy (Debian's package), health
//! checked on `/readyz`. Draining one (SIGTERM) takes it out of rotation while its live
//! call continues, and new calls land on the other without a single refusal. This is the
//! HAProxy configuration DEPLOY.md shows.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::daemon::{field, message, Daemon, HANG_GUARD};
use common::fake_freeswitch::{ConnectOptions, FakeFreeSwitch};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;

const ECHO: &str =
    "[call]\nprovider = \"echo\"\n[providers.echo]\nmode = \"stream\"\ndelay_ms = 0\n";

fn haproxy_config(front: u16, a: &Daemon, b: &Daemon) -> String {
    format!(
        r#"global
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # A call's WebSocket lives as long as the call.
    timeout tunnel 2h

frontend voicebridge
    bind 127.0.0.1:{front}
    default_backend voicebridge

backend voicebridge
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
    server a {a} check port {a_admin}
    server b {b} check port {b_admin}
"#,
        a = a.addr,
        b = b.addr,
        a_admin = a.admin.port(),
        b_admin = b.admin.port(),
    )
}

/// Waits until one instance has logged the acceptance of call `id`: true for `a`.
async fn which(a: &Daemon, b: &Daemon, id: &str) -> bool {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
    let wait = async {
        loop {
            tick.tick().await;
            if served_by(a, id) {
                return true;
            }
            if served_by(b, id) {
                return false;
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .expect("an instance accepted the call")
}

/// Whether `d` logged the acceptance of call `id`.
fn served_by(a: &Daemon, id: &str) -> bool {
    a.logs()
        .iter()
        .any(|l| message(l) == "call accepted" && l["span"]["call_id"].as_str() == Some(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_instance_leaves_rotation_without_refusing_calls() {
    if std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy; .ci/run does it)");
        return;
    }
    let a = Daemon::start(&format!("[server]\ndrain_timeout_secs = 20\n{ECHO}"), &[]).await;
    let b = Daemon::start(ECHO, &[]).await;
    let front = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(front, &a, &b)).unwrap();
    let mut haproxy = tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Notify::new());
    {
        let (lines, seen) = (lines.clone(), seen.clone());
        let stderr = haproxy.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = r.next_line().await {
                lines.lock().unwrap().push(l);
                seen.notify_waiters();
            }
        });
    }
    let wait_line = |needle: &'static str| {
        let (lines, seen) = (lines.clone(), seen.clone());
        async move {
            let wait = async {
                loop {
                    let n = seen.notified();
                    if lines.lock().unwrap().iter().any(|l| l.contains(needle)) {
                        return;
                    }
                    n.await;
                }
            };
            if tokio::time::timeout(HANG_GUARD, wait).await.is_err() {
                panic!("haproxy never said {needle:?}: {:?}", lines.lock().unwrap());
            }
        }
    };

    // Through HAProxy until both instances have taken a call (leastconn spreads them).
    let via = |id: &str| {
        ConnectOptions::new(
            format!("127.0.0.1:{front}").parse().unwrap(),
            format!("/call/{id}?rate=8000"),
        )
    };
    let mut live_on_a = None;
    let mut b_served = false;
    let mut retry = tokio::time::interval(std::time::Duration::from_millis(20));
    for i in 0..500 {
        let id = format!("lb-{i}");
        let call = match FakeFreeSwitch::connect(&via(&id)).await {
            Ok(c) => c,
            // HAProxy may still be starting (refused) or running its first health
            // checks (503): try again on the next tick.
            Err(e) if e.status() == Some(503) || e.status().is_none() => {
                retry.tick().await;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        call.send_audio(&[0; 320]).await.unwrap();
        if which(&a, &b, &id).await && live_on_a.is_none() {
            live_on_a = Some((id, call));
        } else {
            b_served |= served_by(&b, &id);
            call.close().await.unwrap();
        }
        if live_on_a.is_some() && b_served {
            break;
        }
    }
    let (live_id, live) = live_on_a.expect("HAProxy sent a call to instance a");
    assert!(b_served, "HAProxy sent a call to instance b");

    // Drain a: its /readyz goes 503, HAProxy takes it out; the live call stays.
    a.sigterm();
    a.wait_log(|l| message(l) == "SIGTERM: draining").await;
    wait_line("voicebridge/a is DOWN").await;
    for i in 0..4 {
        let id = format!("after-{i}");
        let call = FakeFreeSwitch::connect(&via(&id))
            .await
            .expect("no call is refused while one instance drains");
        call.send_audio(&[0; 320]).await.unwrap();
        call.close().await.unwrap();
        let s = b.wait_call_end(&id).await;
        assert_eq!(field(&s, "end_reason"), "freeswitch_closed");
        assert!(!served_by(&a, &id), "{id} went to the draining instance");
    }
    live.send_audio(&[0; 320]).await.unwrap();
    assert!(live.close().await.unwrap().echoed);
    let s = a.wait_call_end(&live_id).await;
    assert_eq!(
        field(&s, "end_reason"),
        "freeswitch_closed",
        "the live call ended normally"
    );
    assert_eq!(a.wait_exit().await, Some(0));
    haproxy.kill().await.unwrap();
    b.stop().await;
}
