//! Who may use the media port, and how much a peer that fails can cost the others.
//!
//! An authenticated upgrade is limited only by `max_calls`. What is limited per source
//! ([`Source`]: an IPv4 address or an IPv6 /64) is what an attacker does: upgrades
//! that fail ([`FailureLimit`]) and connections that hold a handshake open
//! ([`Pending`]). Rejections are logged through [`RejectionLog`] so a flood costs a
//! few lines a minute, not one per attempt.

pub mod auth;
pub mod failures;
pub mod pending;
pub mod source;
pub mod summary;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use failures::FailureLimit;
pub use pending::{Pending, PendingGuard, TooMany};
pub use source::Source;
pub use summary::{RejectionLog, Summary};

/// How long one source's rejections are counted before a summary line.
pub const SUMMARY_WINDOW: Duration = Duration::from_secs(60);

/// The admission state shared by every connection of the media listener.
pub struct Admission {
    pub failures: FailureLimit,
    pub pending: Arc<Pending>,
    log: Mutex<RejectionLog>,
}

impl Admission {
    pub fn new(failures_per_sec: u32) -> Admission {
        Admission {
            failures: FailureLimit::new(failures_per_sec),
            pending: Arc::new(Pending::default()),
            log: Mutex::new(RejectionLog::new(SUMMARY_WINDOW)),
        }
    }

    /// Notes a rejection for the log: `true` to log this one in full; a summary of
    /// the source's previous minute when that just ended.
    pub fn note(&self, source: Source, reason: &'static str) -> (bool, Option<Summary>) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note(source, reason, Instant::now())
    }

    /// Summaries of the windows that have ended (all of them with `all`).
    pub fn flush(&self, all: bool) -> Vec<Summary> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush(Instant::now(), all)
    }
}
