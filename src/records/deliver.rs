//! The delivery loop: POSTs the oldest spooled record, one at a time, so the receiver
//! sees records in the order calls ended.
//!
//! A record leaves the spool only once the receiver answered 2xx (or refused it for
//! good), so a crash or exit in between means it is sent again: at-least-once, and
//! receivers dedupe by `record_id`. Outages are logged as two lines (start and end),
//! not one per retry, because a receiver down for an hour would otherwise fill the
//! log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::metrics;
use super::spool::{Entry, Spool};
use super::Stats;
use crate::config::Secret;
use crate::webhook::{self, WebhookError};

/// Retry pacing while the receiver is down: `initial`, doubling up to `max`, back to
/// `initial` after a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

pub struct Delivery {
    pub spool: Arc<Spool>,
    pub url: String,
    pub secret: Secret,
    pub timeout: Duration,
    /// Longest answer read (the answer's content is not used, only its status).
    pub max_body: usize,
    pub backoff: Backoff,
    pub stats: Stats,
    pub stop: CancellationToken,
}

/// What became of one attempt.
enum Outcome {
    Delivered,
    Retry(WebhookError),
    Refused(WebhookError),
}

fn classify(r: Result<serde_json::Value, WebhookError>) -> Outcome {
    match r {
        // 2xx with a body that is not JSON ("OK") or too long to read: the receiver
        // has the record.
        Ok(_) | Err(WebhookError::NotJson(_) | WebhookError::TooLarge(_)) => Outcome::Delivered,
        Err(e) if e.is_transient() => Outcome::Retry(e),
        // Not the record's fault (no HTTP client): keep it and retry.
        Err(e @ WebhookError::Client(_)) => Outcome::Retry(e),
        Err(e) => Outcome::Refused(e),
    }
}

#[derive(Deserialize)]
struct Ids {
    call_id: Option<String>,
}

/// The call id for the `X-Voicebridge-Call-Id` header: from the body (exact), else
/// the file name; restricted to visible ASCII so the header is always valid.
fn header_call_id(body: &[u8], e: &Entry) -> String {
    let id = serde_json::from_slice::<Ids>(body)
        .ok()
        .and_then(|i| i.call_id)
        .unwrap_or_else(|| e.call_id().to_owned());
    id.chars()
        .take(128)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

struct Outage {
    since: Instant,
    failures: u32,
}

impl Delivery {
    pub async fn run(self) {
        let shown = crate::redact::url(&self.url);
        let mut outage: Option<Outage> = None;
        loop {
            let Some(entry) = self.spool.front() else {
                tokio::select! {
                    _ = self.spool.added.notified() => continue,
                    _ = self.stop.cancelled() => return,
                }
            };
            let body = match tokio::fs::read(self.spool.path_of(&entry)).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Evicted by the bound while we were busy: nothing to send.
                    self.blocking(move |s| s.remove(&entry)).await;
                    continue;
                }
                Err(e) => {
                    error!(file = %self.spool.path_of(&entry).display(), error = %e,
                        "cannot read a spooled call record; moving it to rejected/");
                    self.reject(entry).await;
                    continue;
                }
            };
            let call_id = header_call_id(&body, &entry);
            let sent = tokio::select! {
                r = webhook::send(reqwest::Method::POST, &self.url, body, &self.secret, &call_id, self.timeout, self.max_body) => r,
                // Exit: the record stays in the spool and goes out at the next start.
                _ = self.stop.cancelled() => return,
            };
            match classify(sent) {
                Outcome::Delivered => {
                    let waiting = self.spool.len();
                    self.blocking(move |s| s.remove(&entry)).await;
                    metrics::delivered();
                    self.stats.update(|s| s.delivered += 1);
                    if let Some(o) = outage.take() {
                        info!(
                            url = %shown,
                            outage_secs = o.since.elapsed().as_secs(),
                            failed_attempts = o.failures,
                            waited = waiting,
                            "call records webhook is back: delivering the {waiting} record(s) that waited"
                        );
                    }
                }
                Outcome::Refused(e) => {
                    metrics::failed_attempt("refused");
                    self.stats.update(|s| s.failed_attempts += 1);
                    error!(
                        url = %shown,
                        call_id = %call_id,
                        file = %entry.name,
                        error = %e,
                        rejected_dir = %self.spool.rejected_dir().display(),
                        "call records webhook refused a record: moved to rejected/, the next records go on"
                    );
                    self.reject(entry).await;
                }
                Outcome::Retry(e) => {
                    metrics::failed_attempt("transient");
                    self.stats.update(|s| s.failed_attempts += 1);
                    let o = outage.get_or_insert_with(|| {
                        warn!(
                            url = %shown,
                            error = %e,
                            spool_dir = %self.spool.dir().display(),
                            "call records webhook unavailable: records wait in the spool and are retried with backoff"
                        );
                        Outage {
                            since: Instant::now(),
                            failures: 0,
                        }
                    });
                    o.failures = o.failures.saturating_add(1);
                    let wait = self.backoff.delay(o.failures);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn reject(&self, entry: Entry) {
        self.blocking(move |s| s.reject(&entry)).await;
        metrics::dropped("rejected", 1);
        self.stats.update(|s| s.rejected += 1);
    }

    /// Spool bookkeeping off the async threads; a failure is logged, and the worst
    /// case is that the record is sent again after the next start.
    async fn blocking(&self, f: impl FnOnce(&Spool) -> std::io::Result<()> + Send + 'static) {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || f(&spool)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(dir = %self.spool.dir().display(), error = %e,
                "call records spool: cannot remove or move a record file; it may be sent again after a restart"),
            Err(e) => error!(error = %e, "call records spool task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.delay(1000), Duration::from_secs(60));
        assert_eq!(b.delay(0), Duration::from_secs(1));
    }

    #[test]
    fn outcome_follows_the_status() {
        let st = |status| {
            classify(Err(WebhookError::Status {
                status,
                body: String::new(),
            }))
        };
        assert!(matches!(st(503), Outcome::Retry(_)));
        assert!(matches!(st(429), Outcome::Retry(_)));
        assert!(matches!(st(408), Outcome::Retry(_)));
        assert!(matches!(st(400), Outcome::Refused(_)));
        assert!(matches!(st(413), Outcome::Refused(_)));
        assert!(matches!(
            classify(Err(WebhookError::Timeout(Duration::from_secs(1)))),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            classify(Err(WebhookError::NotJson("OK".into()))),
            Outcome::Delivered
        ));
        assert!(matches!(
            classify(Ok(serde_json::Value::Null)),
            Outcome::Delivered
        ));
    }

    #[test]
    fn docs_test_vector_matches_the_signer() {
        // docs/records.md gives this vector to receivers checking their verifier.
        assert_eq!(
            webhook::signature(b"key", 0, b"x"),
            "sha256=01648d624c0b511b0449a63394418e2d5b018e4cc2f753e42127d445f3ca5dd0"
        );
    }

    #[test]
    fn header_call_id_is_exact_or_made_valid() {
        let e = Entry {
            name: format!("{:020}-from_name.json", 1),
            size: 0,
        };
        assert_eq!(header_call_id(br#"{"call_id":"abc-1"}"#, &e), "abc-1");
        assert_eq!(header_call_id(br#"{"call_id":"a b\n"}"#, &e), "a_b_");
        assert_eq!(header_call_id(b"not json", &e), "from_name");
    }
}
