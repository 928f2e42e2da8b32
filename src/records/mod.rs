//! Call records: one JSON object per call, appended to a JSON Lines file and/or POSTed
//! (signed) to the business's webhook.
//!
//! A call's task only serialises its record and hands it to bounded queues
//! ([`Records::submit`] never waits): disk and network are slow, fail and come back,
//! and none of that may delay a call. Each sink has its own writer thread, so a stuck
//! file system does not hold the webhook back or the other way round:
//!
//! - file: `file::FileSink` appends one line per record and rotates by size;
//! - webhook: `spool::Spool` first makes the record durable on disk, then
//!   `deliver::Delivery` POSTs the spool's oldest record until it is accepted, so
//!   an outage or a restart delays records but does not lose them (up to the spool's
//!   bound). See `docs/records.md`.

mod deliver;
mod file;
pub mod metrics;
mod spool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use deliver::Backoff;

use crate::config::{RecordsConfig, Secret};
use deliver::Delivery;
use file::FileSink;
use spool::Spool;

/// Records waiting for a sink's writer; beyond this a record is dropped (and counted)
/// rather than making the call wait. Calls end at most a few hundred per second, so
/// this is minutes of a sink being stuck.
const QUEUE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("records.file {path}: cannot create its directory or open it for appending: {source} (the daemon's user must be able to write there)")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("records.spool_dir {path}: cannot create or write to it: {source} (the daemon's user must be able to write there)")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("records.webhook_url needs records.spool_dir")]
    NoSpool,
    #[error("cannot start the call records writer: {0}")]
    Thread(std::io::Error),
    #[error("call records need a running tokio runtime")]
    NoRuntime,
}

/// Counters of this instance (tests and diagnostics; Prometheus has the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordsStats {
    /// Lines appended to the file.
    pub written: u64,
    /// Records the webhook accepted.
    pub delivered: u64,
    /// Delivery attempts that failed (retried or refused).
    pub failed_attempts: u64,
    /// Records the webhook refused for good (now in `rejected/`).
    pub rejected: u64,
    /// Records lost by a sink (queue full, write error, spool bound).
    pub dropped: u64,
    /// Records now in the spool.
    pub spooled: u64,
}

#[derive(Clone)]
struct Stats(Arc<watch::Sender<RecordsStats>>);

impl Stats {
    fn new() -> Stats {
        Stats(Arc::new(watch::channel(RecordsStats::default()).0))
    }

    fn update(&self, f: impl FnOnce(&mut RecordsStats)) {
        self.0.send_modify(f);
    }
}

/// One record as the writers see it: serialised once for both sinks.
struct Rec {
    line: Vec<u8>,
    call_id: String,
}

enum Msg {
    Record(Arc<Rec>),
    /// Everything queued before it is handled: the writer answers.
    Flush(oneshot::Sender<()>),
}

/// What a writer thread does with each record.
trait Sink: Send + 'static {
    fn write(&mut self, rec: &Rec);
    fn flush(&mut self) {}
}

struct Inner {
    file: Option<mpsc::Sender<Msg>>,
    spool: Option<mpsc::Sender<Msg>>,
    delivery: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
    stats: Stats,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can submit any more, so the delivery loop
        // has no one to serve (the writer threads end with their channels).
        self.stop.cancel();
    }
}

/// The handle calls submit their records to; cheap to clone.
#[derive(Clone)]
pub struct Records {
    inner: Arc<Inner>,
}

impl Records {
    /// Starts the background writer/delivery tasks; a no-op sink when neither file
    /// nor webhook is set. Creates the spool dir / file's parent dir if needed and
    /// returns an error a person can act on if it cannot (unwritable path).
    pub fn spawn(config: &RecordsConfig, secret: Secret) -> Result<Records, RecordsError> {
        Self::spawn_with(config, secret, Backoff::default())
    }

    /// [`Records::spawn`] with the retry pacing chosen (tests use milliseconds).
    #[doc(hidden)]
    pub fn spawn_with(
        config: &RecordsConfig,
        secret: Secret,
        backoff: Backoff,
    ) -> Result<Records, RecordsError> {
        let stats = Stats::new();
        let stop = CancellationToken::new();
        let file = match &config.file {
            None => None,
            Some(path) => {
                let sink = FileSink::open(path, config.file_max_bytes, config.file_keep).map_err(
                    |source| RecordsError::File {
                        path: path.clone(),
                        source,
                    },
                )?;
                let writer = FileWriter {
                    sink,
                    lost: None,
                    stats: stats.clone(),
                };
                Some(start_writer("records-file", writer)?)
            }
        };
        let (spool, delivery) = match &config.webhook_url {
            None => (None, None),
            Some(url) => {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| RecordsError::NoRuntime)?;
                let dir = config.spool_dir.as_ref().ok_or(RecordsError::NoSpool)?;
                let (spool, evicted) =
                    Spool::open(dir, config.spool_max_bytes).map_err(|source| {
                        RecordsError::Spool {
                            path: dir.clone(),
                            source,
                        }
                    })?;
                let gauge = stats.clone();
                let spool = Arc::new(spool.observe(move |n| {
                    metrics::spooled(n);
                    gauge.update(|s| s.spooled = n as u64);
                }));
                if !evicted.is_empty() {
                    report_evicted(&spool, &evicted, &stats);
                }
                if !spool.is_empty() {
                    info!(
                        records = spool.len(),
                        spool_dir = %dir.display(),
                        "call records from a previous run are waiting in the spool: delivering them first"
                    );
                }
                let writer = SpoolWriter {
                    spool: spool.clone(),
                    failing: None,
                    stats: stats.clone(),
                };
                let tx = start_writer("records-spool", writer)?;
                let task = runtime.spawn(
                    Delivery {
                        spool,
                        url: url.clone(),
                        secret,
                        timeout: config.webhook_timeout,
                        max_body: config.webhook_max_response,
                        backoff,
                        stats: stats.clone(),
                        stop: stop.clone(),
                    }
                    .run(),
                );
                (Some(tx), Some(task))
            }
        };
        Ok(Records {
            inner: Arc::new(Inner {
                file,
                spool,
                delivery: std::sync::Mutex::new(delivery),
                stop,
                stats,
            }),
        })
    }

    pub fn disabled() -> Records {
        Records {
            inner: Arc::new(Inner {
                file: None,
                spool: None,
                delivery: std::sync::Mutex::new(None),
                stop: CancellationToken::new(),
                stats: Stats::new(),
            }),
        }
    }

    /// Whether any sink is configured (a disabled instance ignores records).
    pub fn is_enabled(&self) -> bool {
        self.inner.file.is_some() || self.inner.spool.is_some()
    }

    /// Never blocks the caller's task, never panics; a record that cannot be queued
    /// is logged (with call_id) and counted.
    pub fn submit(&self, record: serde_json::Value) {
        if !self.is_enabled() {
            return;
        }
        let call_id = record
            .get("call_id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned();
        let line = match serde_json::to_vec(&record) {
            Ok(l) => l,
            Err(e) => {
                // Cannot happen for a Value (string keys only); counted if it does.
                error!(call_id = %call_id, error = %e, "call record is not serialisable: dropped");
                self.drop_one("invalid");
                return;
            }
        };
        let rec = Arc::new(Rec { line, call_id });
        for (sink, tx) in [("file", &self.inner.file), ("webhook", &self.inner.spool)] {
            let Some(tx) = tx else { continue };
            if let Err(e) = tx.try_send(Msg::Record(rec.clone())) {
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "queue_full",
                    mpsc::error::TrySendError::Closed(_) => "closed",
                };
                error!(
                    call_id = %rec.call_id,
                    sink,
                    reason,
                    "call record dropped: the {sink} writer is not keeping up"
                );
                self.drop_one(reason);
            }
        }
    }

    fn drop_one(&self, reason: &'static str) {
        metrics::dropped(reason, 1);
        self.inner.stats.update(|s| s.dropped += 1);
    }

    /// Daemon exit: waits (at most `within`) until every submitted record is written
    /// to the file and, if a webhook is set, either delivered or safely in the spool.
    /// Then stops the delivery loop (spooled records go out at the next start).
    /// Records submitted afterwards are still written and spooled.
    pub async fn shutdown(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let flushed = tokio::time::timeout_at(deadline, async {
            for tx in [&self.inner.file, &self.inner.spool].into_iter().flatten() {
                let (ack, done) = oneshot::channel();
                if tx.send(Msg::Flush(ack)).await.is_ok() {
                    let _ = done.await;
                }
            }
        })
        .await;
        self.inner.stop.cancel();
        let task = self
            .inner
            .delivery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        if flushed.is_err() {
            warn!(
                within_ms = within.as_millis() as u64,
                "call records: not every record was written or spooled before exit"
            );
        }
    }

    /// Live counters of this instance.
    pub fn stats(&self) -> watch::Receiver<RecordsStats> {
        self.inner.stats.0.subscribe()
    }
}

fn start_writer<S: Sink>(name: &str, mut sink: S) -> Result<mpsc::Sender<Msg>, RecordsError> {
    let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // Ends when every `Records` handle is gone.
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Record(rec) => sink.write(&rec),
                    Msg::Flush(ack) => {
                        sink.flush();
                        let _ = ack.send(());
                    }
                }
            }
            sink.flush();
        })
        .map_err(RecordsError::Thread)?;
    Ok(tx)
}

struct FileWriter {
    sink: FileSink,
    /// Records lost since the current outage began (`None`: writing works).
    lost: Option<u64>,
    stats: Stats,
}

impl Sink for FileWriter {
    fn write(&mut self, rec: &Rec) {
        match self.sink.append(&rec.line) {
            Ok(()) => {
                metrics::written();
                self.stats.update(|s| s.written += 1);
                if let Some(lost) = self.lost.take() {
                    info!(
                        path = %self.sink.path().display(),
                        lost,
                        "writing call records to the file again; {lost} record(s) were lost"
                    );
                }
            }
            Err(e) => {
                metrics::dropped("file_error", 1);
                self.stats.update(|s| s.dropped += 1);
                let lost = self.lost.get_or_insert(0);
                if *lost == 0 {
                    error!(
                        path = %self.sink.path().display(),
                        error = %e,
                        call_id = %rec.call_id,
                        "cannot write call records to the file: records are dropped until it works again"
                    );
                }
                *lost += 1;
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.sink.sync() {
            warn!(path = %self.sink.path().display(), error = %e, "cannot sync the call records file");
        }
    }
}

struct SpoolWriter {
    spool: Arc<Spool>,
    /// Records lost since spooling started failing.
    failing: Option<u64>,
    stats: Stats,
}

impl Sink for SpoolWriter {
    fn write(&mut self, rec: &Rec) {
        match self.spool.put(&rec.line, &rec.call_id) {
            Ok((_, evicted)) => {
                if let Some(lost) = self.failing.take() {
                    info!(
                        spool_dir = %self.spool.dir().display(),
                        lost,
                        "spooling call records again; {lost} record(s) were lost"
                    );
                }
                if !evicted.is_empty() {
                    report_evicted(&self.spool, &evicted, &self.stats);
                }
            }
            Err(e) => {
                metrics::dropped("spool_error", 1);
                self.stats.update(|s| s.dropped += 1);
                let lost = self.failing.get_or_insert(0);
                if *lost == 0 {
                    error!(
                        spool_dir = %self.spool.dir().display(),
                        error = %e,
                        call_id = %rec.call_id,
                        "cannot spool call records for the webhook: records are dropped until it works again"
                    );
                }
                *lost += 1;
            }
        }
    }
}

fn report_evicted(spool: &Spool, evicted: &spool::Evicted, stats: &Stats) {
    let n = evicted.len() as u64;
    metrics::dropped("spool_full", n);
    stats.update(|s| s.dropped += n);
    warn!(
        spool_dir = %spool.dir().display(),
        dropped = n,
        call_ids = %evicted.call_ids(),
        spooled_bytes = spool.bytes(),
        "call records spool is full: dropped record(s), oldest first, to stay within records.spool_max_mb"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(call_id: &str) -> Rec {
        Rec {
            line: format!("{{\"call_id\":\"{call_id}\"}}").into_bytes(),
            call_id: call_id.to_owned(),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, _rx) = mpsc::channel(1);
        let records = Records {
            inner: Arc::new(Inner {
                file: Some(tx),
                spool: None,
                delivery: std::sync::Mutex::new(None),
                stop: CancellationToken::new(),
                stats: Stats::new(),
            }),
        };
        // Nobody reads the queue: the first record fits, the others are dropped.
        for i in 0..3 {
            records.submit(serde_json::json!({"call_id": format!("c{i}")}));
        }
        assert_eq!(records.stats().borrow().dropped, 2);
    }

    #[test]
    fn a_file_outage_drops_records_until_the_file_can_be_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let path = logs.join("records.jsonl");
        let stats = Stats::new();
        let mut w = FileWriter {
            sink: FileSink::open(&path, 1 << 20, 1).unwrap(),
            lost: None,
            stats: stats.clone(),
        };
        w.write(&rec("a"));
        // The directory goes away: the file cannot be reopened at its path.
        std::fs::remove_dir_all(&logs).unwrap();
        w.write(&rec("b"));
        w.write(&rec("c"));
        assert_eq!(w.lost, Some(2));
        std::fs::create_dir_all(&logs).unwrap();
        w.write(&rec("d"));
        assert_eq!(w.lost, None);
        let s = *stats.0.borrow();
        assert_eq!((s.written, s.dropped), (2, 2));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"call_id\":\"d\"}\n"
        );
    }
}
