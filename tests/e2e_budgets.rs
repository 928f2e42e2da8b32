//! Per-route daily budgets through the real daemon: the 503 with Retry-After until UTC
//! midnight, one log line per route per minute, other routes untouched, and today's
//! usage surviving a restart through the state file.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::daemon::{field, message, Daemon, HANG_GUARD};
use common::fake_freeswitch::{ConnectOptions, FakeFreeSwitch, FakeFsError};
use common::http;
use serde_json::Value;

const DAY: u64 = 86_400;
const REFUSED_LINE: &str = "daily budget reached: calls on this route refused until UTC midnight";

/// The echo provider; `call` goes into `[call]`, `extra` after it.
fn echo(call: &str, extra: &str) -> String {
    format!(
        "[call]\nprovider = \"echo\"\n{call}\n[providers.echo]\nmode = \"stream\"\ndelay_ms = 0\n{extra}\n"
    )
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whole seconds until the next UTC midnight, as the daemon computes Retry-After.
fn until_midnight() -> u64 {
    DAY - unix_secs() % DAY
}

/// Today (UTC) as the state file names it.
fn today() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()[..10].to_owned()
}

/// These tests count on one UTC day: started within two minutes of midnight, they wait
/// for it to pass rather than fail on the reset they are not about.
async fn not_near_midnight() {
    let left = until_midnight();
    if left < 120 {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// A short call that must work: audio in, audio back, clean close.
async fn short_call(daemon: &Daemon, path: &str, id: &str) -> Value {
    let fs = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, path))
        .await
        .unwrap_or_else(|e| panic!("{path} refused: {e}"));
    for _ in 0..5 {
        fs.send_audio(&[0x10; 320]).await.unwrap();
    }
    let outcome = fs.close().await.unwrap();
    assert!(outcome.echoed);
    daemon.wait_call_end(id).await
}

/// Connects expecting a refusal; returns the error.
async fn refused(daemon: &Daemon, path: &str) -> FakeFsError {
    FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, path))
        .await
        .err()
        .unwrap_or_else(|| panic!("{path} was accepted"))
}

fn retry_after(err: &FakeFsError) -> Option<u64> {
    match err {
        FakeFsError::Rejected { headers, .. } => headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            .and_then(|(_, v)| v.parse().ok()),
        _ => None,
    }
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

/// Polls `/metrics` until the series has `want`: the refusal is counted after its log
/// line (if any) is written, so this also orders the test after that line.
async fn wait_metric(daemon: &Daemon, name: &str, labels: &[(&str, &str)], want: f64) {
    let poll = async {
        loop {
            let (_, body) = http::get(daemon.admin, "/metrics").await;
            if series(&body, name, labels) == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(HANG_GUARD, poll).await.is_err() {
        let (_, body) = http::get(daemon.admin, "/metrics").await;
        panic!("{name}{labels:?} never reached {want}:\n{body}");
    }
}

fn refusal_lines(daemon: &Daemon) -> Vec<Value> {
    daemon
        .logs()
        .into_iter()
        .filter(|l| message(l) == REFUSED_LINE)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_max_calls_refuses_with_retry_after_until_midnight_and_logs_once() {
    not_near_midnight().await;
    let toml = echo("", "[[routes]]\nname = \"capped\"\ndaily_max_calls = 2\n");
    let daemon = Daemon::start(&toml, &[]).await;
    // One sequential, one still running when the third arrives.
    short_call(&daemon, "/capped/c1?rate=8000", "c1").await;
    let live = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/capped/c2?rate=8000"))
        .await
        .unwrap();

    let before = until_midnight();
    let err = refused(&daemon, "/capped/c3?rate=8000").await;
    let after = until_midnight();
    assert_eq!(err.status(), Some(503), "{err}");
    assert_eq!(err.body().map(str::trim), Some("daily budget reached"));
    let retry = retry_after(&err).expect("Retry-After");
    assert!(
        (after..=before).contains(&retry),
        "Retry-After {retry} is not the time to midnight ({after}..={before})"
    );
    let err = refused(&daemon, "/capped/c4?rate=8000").await;
    assert_eq!(err.status(), Some(503));
    let refusals = [("route", "capped"), ("limit", "calls")];
    wait_metric(&daemon, "voicebridge_budget_refused_total", &refusals, 2.0).await;

    // Another route has no budget: unaffected. Its summary also comes after any
    // refusal line in the log.
    short_call(&daemon, "/call/other-1?rate=8000", "other-1").await;
    let lines = refusal_lines(&daemon);
    assert_eq!(lines.len(), 1, "one line per route per minute: {lines:?}");
    let line = &lines[0];
    assert_eq!(field(line, "route"), "capped");
    assert_eq!(field(line, "limit"), "calls");
    assert_eq!(
        (field(line, "used"), field(line, "max")),
        (&2.into(), &2.into())
    );
    assert_eq!(field(line, "refused"), 1);
    assert!(
        !daemon
            .logs()
            .iter()
            .any(|l| message(l) == "upgrade rejected"),
        "budget refusals are not also logged one by one"
    );

    let (_, m) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(
        series(
            &m,
            "voicebridge_upgrades_rejected_total",
            &[("reason", "budget")]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(&m, "voicebridge_budget_calls_today", &[("route", "capped")]),
        Some(2.0)
    );

    // SIGHUP raises the limit: new calls get it, today's count stays.
    let mut toml = std::fs::read_to_string(&daemon.config_path).unwrap();
    toml = toml.replace("daily_max_calls = 2", "daily_max_calls = 3");
    std::fs::write(&daemon.config_path, toml).unwrap();
    daemon.sighup();
    daemon
        .wait_log(|l| message(l).starts_with("SIGHUP: configuration reloaded"))
        .await;
    short_call(&daemon, "/capped/c5?rate=8000", "c5").await;
    assert_eq!(
        refused(&daemon, "/capped/c6?rate=8000").await.status(),
        Some(503)
    );
    live.close().await.unwrap();
    daemon.wait_call_end("c2").await;
    daemon.stop().await;
}

fn state_toml(path: &Path, call: &str, routes: &str) -> String {
    let budgets = format!("[budgets]\nstate_file = \"{}\"\n{routes}", path.display());
    echo(call, &budgets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minutes_used_up_in_the_state_file_refuse_the_first_call() {
    not_near_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("budgets.json");
    std::fs::write(
        &state,
        format!(
            r#"{{"version": 1, "day": "{}", "routes": {{"metered": {{"calls": 4, "seconds": 120.5}}}}}}"#,
            today()
        ),
    )
    .unwrap();
    let toml = state_toml(
        &state,
        "",
        "[[routes]]\nname = \"metered\"\ndaily_max_minutes = 2\n",
    );
    let daemon = Daemon::start(&toml, &[]).await;
    let loaded = daemon
        .wait_log(|l| message(l).starts_with("budget state loaded"))
        .await;
    assert_eq!(field(&loaded, "routes"), 1);

    let err = refused(&daemon, "/metered/m1?rate=8000").await;
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(retry_after(&err).is_some_and(|s| (1..=DAY).contains(&s)));
    let line = daemon.wait_log(|l| message(l) == REFUSED_LINE).await;
    assert_eq!(field(&line, "route"), "metered");
    assert_eq!(field(&line, "limit"), "minutes");
    assert_eq!(
        (field(&line, "used"), field(&line, "max")),
        (&2.into(), &2.into())
    );
    short_call(&daemon, "/call/free-1?rate=8000", "free-1").await;

    let (_, m) = http::get(daemon.admin, "/metrics").await;
    assert_eq!(
        series(
            &m,
            "voicebridge_budget_seconds_today",
            &[("route", "metered")]
        ),
        Some(120.5)
    );
    assert_eq!(
        series(
            &m,
            "voicebridge_budget_calls_today",
            &[("route", "metered")]
        ),
        Some(4.0)
    );
    // Counted just after the line is written: awaited, not read once.
    let refusals = [("route", "metered"), ("limit", "minutes")];
    wait_metric(&daemon, "voicebridge_budget_refused_total", &refusals, 1.0).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_saved_at_shutdown_and_counts_after_a_restart() {
    not_near_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("budgets.json");
    let daemon = Daemon::start(&state_toml(&state, "daily_max_calls = 5", ""), &[]).await;
    daemon
        .wait_log(|l| message(l).starts_with("no budget state file yet"))
        .await;
    let started = Instant::now();
    let summary = short_call(&daemon, "/call/saved-1?rate=8000", "saved-1").await;
    assert_eq!(daemon.stop().await, Some(0));
    let elapsed = started.elapsed();

    let json: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(json["day"], today());
    assert_eq!(json["routes"]["call"]["calls"], 1);
    let seconds = json["routes"]["call"]["seconds"].as_f64().unwrap();
    let session_ms = field(&summary, "duration_ms").as_u64().unwrap();
    // The charge spans the session (it starts at admission, ends after the summary).
    assert!(
        (seconds * 1000.0).round() as u64 >= session_ms,
        "{seconds} s charged for a {session_ms} ms call"
    );
    assert!(
        seconds <= elapsed.as_secs_f64(),
        "{seconds} s charged, more than the {elapsed:?} the test saw"
    );
    assert!(
        !dir.path().join("budgets.json.tmp").exists(),
        "the temp file was renamed into place"
    );

    // Restarted with a limit of one call: today's call is remembered.
    let toml = state_toml(&state, "daily_max_calls = 1", "");
    let daemon = Daemon::start(&toml, &[]).await;
    let err = refused(&daemon, "/call/saved-2?rate=8000").await;
    assert_eq!(err.status(), Some(503), "{err}");
    let line = daemon.wait_log(|l| message(l) == REFUSED_LINE).await;
    assert_eq!(
        (field(&line, "limit"), field(&line, "used")),
        (&"calls".into(), &1.into())
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_logged_once_and_never_stops_the_daemon() {
    not_near_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("budgets.json");
    std::fs::write(&state, "{\"version\": 1, \"day\": \"20").unwrap();
    let daemon = Daemon::start(&state_toml(&state, "daily_max_calls = 5", ""), &[]).await;
    let line = daemon
        .wait_log(|l| message(l).starts_with("budget state file unusable"))
        .await;
    assert!(field(&line, "error").as_str().unwrap().contains("JSON"));
    short_call(&daemon, "/call/after-corrupt?rate=8000", "after-corrupt").await;
    assert_eq!(daemon.stop().await, Some(0));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(
        json["routes"]["call"]["calls"], 1,
        "replaced by a good file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_at_capacity_does_not_use_the_budget() {
    not_near_midnight().await;
    let toml = echo(
        "",
        "[[routes]]\nname = \"small\"\nmax_calls = 1\ndaily_max_calls = 2\n",
    );
    let daemon = Daemon::start(&toml, &[]).await;
    let live = FakeFreeSwitch::connect(&ConnectOptions::new(daemon.addr, "/small/s1?rate=8000"))
        .await
        .unwrap();
    let err = refused(&daemon, "/small/s2?rate=8000").await;
    assert_eq!(err.status(), Some(503));
    assert_eq!(retry_after(&err), Some(5), "capacity, not the budget");
    live.close().await.unwrap();
    daemon.wait_call_end("s1").await;
    // The slot is released just after the summary line.
    wait_metric(&daemon, "voicebridge_active_calls", &[], 0.0).await;
    // Had the refused call counted, this would be the third of two.
    short_call(&daemon, "/small/s3?rate=8000", "s3").await;
    assert_eq!(
        refused(&daemon, "/small/s4?rate=8000")
            .await
            .body()
            .map(str::trim),
        Some("daily budget reached")
    );
    daemon.stop().await;
}
