//! Call-record delivery against a real local HTTP receiver (`webhook_server`): signed
//! bodies, outages (5xx and connection refused), a daemon restart with a spool left
//! behind, a refused record, and the JSON Lines file with rotation. Progress is
//! awaited on events (requests received, the instance's counters), never on sleeps.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::webhook_server::{Recorded, Reply, WebhookServer};
use serde_json::{json, Value};
use voicebridge::config::{RecordsConfig, Secret};
use voicebridge::records::{Backoff, Records, RecordsError, RecordsStats};

const SECRET: &str = "records-test-secret";
const PATH: &str = "/records";

/// Milliseconds instead of seconds, so an outage costs the test little.
fn fast() -> Backoff {
    Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(40),
    }
}

fn record(i: u32) -> Value {
    json!({
        "record_id": uuid::Uuid::new_v4().to_string(),
        "call_id": format!("call-{i:03}"),
        "n": i,
        "route": "support",
        // A newline and quotes inside a value must not break the one-line framing.
        "transcript": [{"role": "caller", "text": "h\u{e9}llo \"there\"\nsecond line"}],
    })
}

fn webhook_config(url: String, spool: &Path) -> RecordsConfig {
    RecordsConfig {
        webhook_url: Some(url),
        webhook_timeout: Duration::from_secs(5),
        spool_dir: Some(spool.to_path_buf()),
        ..RecordsConfig::default()
    }
}

fn spawn(config: &RecordsConfig) -> Records {
    Records::spawn_with(config, Secret::new(SECRET), fast()).expect("records start")
}

/// Waits (20 s safety net, like the webhook server's) until the counters satisfy `f`.
async fn until(
    records: &Records,
    what: &str,
    f: impl FnMut(&RecordsStats) -> bool,
) -> RecordsStats {
    let mut rx = records.stats();
    let got = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(f))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|s| *s);
    match got {
        Some(s) => s,
        None => panic!("{what}: stats stuck at {:?}", *records.stats().borrow()),
    }
}

fn ns(reqs: &[Recorded]) -> Vec<u64> {
    reqs.iter()
        .map(|r| r.json()["n"].as_u64().unwrap())
        .collect()
}

/// The record files in a spool directory (not temp files, not `rejected/`).
fn spooled_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    v
}

fn file_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn records_are_posted_signed_with_the_exact_body_and_written_to_the_file() {
    let server = WebhookServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log/records.jsonl");
    let config = RecordsConfig {
        file: Some(file.clone()),
        ..webhook_config(server.url(PATH), &dir.path().join("spool"))
    };
    let records = spawn(&config);
    let sent: Vec<Value> = (0..3).map(record).collect();
    for r in &sent {
        records.submit(r.clone());
    }
    let reqs = server.wait_for(PATH, 3).await;
    assert_eq!(reqs.len(), 3);
    for (req, rec) in reqs.iter().zip(&sent) {
        assert_eq!(req.method, "POST");
        assert_eq!(req.body, serde_json::to_vec(rec).unwrap(), "exact body");
        assert!(req.signature_valid(SECRET), "signature");
        assert!(!req.signature_valid("another-secret"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("x-voicebridge-call-id"), rec["call_id"].as_str());
    }
    let s = until(&records, "delivered", |s| {
        s.delivered == 3 && s.spooled == 0
    })
    .await;
    assert_eq!((s.failed_attempts, s.dropped, s.rejected), (0, 0, 0));
    records.shutdown(Duration::from_secs(10)).await;
    assert!(spooled_files(&dir.path().join("spool")).is_empty());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(text.lines().count(), 3, "one line per record: {text}");
    assert_eq!(file_lines(&file), sent);
    assert_eq!(records.stats().borrow().written, 3);
}

#[tokio::test]
async fn an_outage_with_503_delays_records_without_losing_or_reordering_them() {
    let server = WebhookServer::start().await;
    server.respond(PATH, Reply::Status(503, "maintenance".into()));
    let dir = tempfile::tempdir().unwrap();
    let records = spawn(&webhook_config(server.url(PATH), dir.path()));
    for i in 0..5 {
        records.submit(record(i));
    }
    // The first record is retried, not skipped, while the receiver fails.
    let during = server.wait_for(PATH, 3).await;
    assert!(ns(&during).iter().all(|&n| n == 0), "{:?}", ns(&during));
    let s = until(&records, "spooled", |s| s.spooled == 5).await;
    assert_eq!(s.delivered, 0);
    server.respond(PATH, Reply::Json(json!({"ok": true})));
    let s = until(&records, "recovered", |s| {
        s.delivered == 5 && s.spooled == 0
    })
    .await;
    assert_eq!((s.dropped, s.rejected), (0, 0));
    assert!(s.failed_attempts >= 3);
    let all = ns(&server.requests(PATH));
    let mut distinct = all.clone();
    distinct.dedup();
    assert_eq!(distinct, [0, 1, 2, 3, 4], "order kept: {all:?}");
    // Records after the first were sent only once the receiver was back: once each.
    for n in 1..5 {
        assert_eq!(all.iter().filter(|&&x| x == n).count(), 1, "{all:?}");
    }
    assert!(spooled_files(dir.path()).is_empty());
}

#[tokio::test]
async fn records_wait_while_the_receiver_refuses_connections() {
    let server = WebhookServer::start().await;
    let url = server.url(PATH);
    let addr = server.stop();
    let dir = tempfile::tempdir().unwrap();
    let records = spawn(&webhook_config(url, dir.path()));
    for i in 0..3 {
        records.submit(record(i));
    }
    until(&records, "failing", |s| {
        s.spooled == 3 && s.failed_attempts >= 2
    })
    .await;
    assert_eq!(spooled_files(dir.path()).len(), 3, "durable while down");
    let server = WebhookServer::start_at(addr).await;
    let reqs = server.wait_for(PATH, 3).await;
    assert_eq!(ns(&reqs[..3]), [0, 1, 2]);
    until(&records, "delivered", |s| {
        s.delivered == 3 && s.spooled == 0
    })
    .await;
    assert!(reqs.iter().all(|r| r.signature_valid(SECRET)));
}

#[tokio::test]
async fn records_spooled_before_a_restart_are_delivered_by_the_next_instance() {
    let server = WebhookServer::start().await;
    let url = server.url(PATH);
    let addr = server.stop();
    let dir = tempfile::tempdir().unwrap();
    let config = webhook_config(url, dir.path());
    let first = spawn(&config);
    let sent: Vec<Value> = (0..4).map(record).collect();
    for r in &sent {
        first.submit(r.clone());
    }
    until(&first, "failing", |s| s.failed_attempts >= 1).await;
    first.shutdown(Duration::from_secs(10)).await;
    assert_eq!(first.stats().borrow().spooled, 4);
    drop(first);
    assert_eq!(spooled_files(dir.path()).len(), 4);

    let server = WebhookServer::start_at(addr).await;
    let second = spawn(&config);
    // A record of the new run goes after the ones that waited.
    let late = record(4);
    second.submit(late.clone());
    let reqs = server.wait_for(PATH, 5).await;
    assert_eq!(ns(&reqs), [0, 1, 2, 3, 4]);
    for (req, rec) in reqs.iter().zip(sent.iter().chain([&late])) {
        assert_eq!(req.body, serde_json::to_vec(rec).unwrap());
        assert!(req.signature_valid(SECRET));
    }
    until(&second, "delivered", |s| s.delivered == 5 && s.spooled == 0).await;
    assert!(spooled_files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_long_outage_drops_the_oldest_records_to_stay_within_the_bound() {
    let server = WebhookServer::start().await;
    let url = server.url(PATH);
    let addr = server.stop();
    let dir = tempfile::tempdir().unwrap();
    let sent: Vec<Value> = (0..6).map(record).collect();
    // Every body has the same length: room for 3.
    let size = serde_json::to_vec(&sent[0]).unwrap().len() as u64;
    let config = RecordsConfig {
        spool_max_bytes: 3 * size + size / 2,
        ..webhook_config(url, dir.path())
    };
    let records = spawn(&config);
    for r in &sent {
        records.submit(r.clone());
    }
    until(&records, "bounded", |s| s.dropped == 3 && s.spooled == 3).await;
    assert_eq!(spooled_files(dir.path()).len(), 3);
    let server = WebhookServer::start_at(addr).await;
    until(&records, "delivered", |s| {
        s.delivered == 3 && s.spooled == 0
    })
    .await;
    assert_eq!(ns(&server.requests(PATH)), [3, 4, 5], "the newest survive");
}

#[tokio::test]
async fn a_refused_record_moves_to_rejected_and_the_queue_goes_on() {
    let server = WebhookServer::start().await;
    server.respond(PATH, Reply::Status(400, "missing field".into()));
    let dir = tempfile::tempdir().unwrap();
    let records = spawn(&webhook_config(server.url(PATH), dir.path()));
    let bad = record(0);
    records.submit(bad.clone());
    server.wait_for(PATH, 1).await;
    server.respond(PATH, Reply::Json(json!({"ok": true})));
    records.submit(record(1));
    let s = until(&records, "next delivered", |s| {
        s.delivered == 1 && s.rejected == 1
    })
    .await;
    assert_eq!(s.spooled, 0);
    // Not retried: one request for the refused record, then the next one.
    assert_eq!(ns(&server.requests(PATH)), [0, 1]);
    let rejected = spooled_files(&dir.path().join("rejected"));
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].to_string_lossy().contains("call-000"));
    assert_eq!(
        std::fs::read(&rejected[0]).unwrap(),
        serde_json::to_vec(&bad).unwrap()
    );
    assert!(spooled_files(dir.path()).is_empty());
}

#[tokio::test]
async fn the_file_rotates_by_size_and_follows_logrotate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    let sent: Vec<Value> = (0..10).map(record).collect();
    // Every line has the same length (fixed-width ids and numbers): room for 3.
    let line = serde_json::to_vec(&sent[0]).unwrap().len() as u64 + 1;
    let config = RecordsConfig {
        file: Some(path.clone()),
        file_max_bytes: 3 * line + line / 2,
        file_keep: 2,
        ..RecordsConfig::default()
    };
    let records = Records::spawn(&config, Secret::default()).unwrap();
    for r in &sent {
        records.submit(r.clone());
    }
    records.shutdown(Duration::from_secs(10)).await;
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    assert_eq!(file_lines(&path), sent[9..]);
    assert_eq!(file_lines(&rotated(1)), sent[6..9]);
    assert_eq!(file_lines(&rotated(2)), sent[3..6]);
    assert!(!rotated(3).exists(), "file_keep = 2");
    assert_eq!(records.stats().borrow().written, 10);

    // logrotate moves the file away: the next record starts a new one at the path.
    let moved = dir.path().join("records.jsonl-20250101");
    std::fs::rename(&path, &moved).unwrap();
    let next = record(10);
    records.submit(next.clone());
    records.shutdown(Duration::from_secs(10)).await;
    assert_eq!(file_lines(&path), [next]);
    assert_eq!(file_lines(&moved), sent[9..]);
}

#[tokio::test]
async fn an_unwritable_spool_or_file_is_a_startup_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let config = webhook_config("http://127.0.0.1:9/r".into(), &blocker.join("spool"));
    let err = Records::spawn(&config, Secret::default())
        .err()
        .expect("error");
    assert!(matches!(err, RecordsError::Spool { .. }), "{err}");
    assert!(err.to_string().contains("not-a-dir/spool"), "{err}");
    let config = RecordsConfig {
        file: Some(blocker.join("records.jsonl")),
        ..RecordsConfig::default()
    };
    let err = Records::spawn(&config, Secret::default())
        .err()
        .expect("error");
    assert!(matches!(err, RecordsError::File { .. }), "{err}");
    assert!(err.to_string().contains("records.file"), "{err}");
}

#[tokio::test]
async fn a_disabled_sink_accepts_records_and_shuts_down_at_once() {
    let records = Records::spawn(&RecordsConfig::default(), Secret::default()).unwrap();
    assert!(!records.is_enabled());
    records.submit(record(0));
    records.shutdown(Duration::from_secs(10)).await;
    assert_eq!(*records.stats().borrow(), RecordsStats::default());
    let off = Records::disabled();
    off.clone().submit(record(1));
    off.shutdown(Duration::ZERO).await;
}
