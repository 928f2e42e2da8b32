//! Rejection logging that a flood cannot turn into a journal flood: per source and
//! per minute, the first rejection of each kind is logged in full and the rest are
//! counted, then written as one summary line when the minute is over (or at exit).
//! Metrics count every rejection regardless. Pure: time is a parameter.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::Source;

/// Sources with an open window at once; past it, new sources are folded into
/// [`Source::OVERFLOW`] so memory stays bounded under a spray from many addresses.
const MAX_SOURCES: usize = 10_000;

pub struct RejectionLog {
    window: Duration,
    sources: HashMap<Source, Window>,
}

struct Window {
    started: Instant,
    /// Per reason label: (logged in full this window, counted since).
    reasons: BTreeMap<&'static str, u64>,
}

/// What to write for the rejections of one source since its window opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub source: Source,
    pub over: Duration,
    /// Rejections not logged one by one, by reason label (only non-zero counts).
    pub suppressed: Vec<(&'static str, u64)>,
}

impl Summary {
    pub fn total(&self) -> u64 {
        self.suppressed.iter().map(|(_, n)| n).sum()
    }

    /// `unauthorized=11 rate_limited=40`
    pub fn by_reason(&self) -> String {
        self.suppressed
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl RejectionLog {
    pub fn new(window: Duration) -> RejectionLog {
        RejectionLog {
            window,
            sources: HashMap::new(),
        }
    }

    /// Notes one rejection. Returns whether to log it in full, and the summary of the
    /// source's previous window if that one just ended.
    pub fn note(
        &mut self,
        source: Source,
        reason: &'static str,
        now: Instant,
    ) -> (bool, Option<Summary>) {
        let source = if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            Source::OVERFLOW
        } else {
            source
        };
        let mut ended = None;
        if let Some(w) = self.sources.get(&source) {
            if now.saturating_duration_since(w.started) >= self.window {
                ended = self
                    .sources
                    .remove(&source)
                    .and_then(|w| w.summary(source, now));
            }
        }
        let w = self.sources.entry(source).or_insert_with(|| Window {
            started: now,
            reasons: BTreeMap::new(),
        });
        let log_in_full = match w.reasons.get_mut(reason) {
            Some(n) => {
                *n += 1;
                false
            }
            None => {
                w.reasons.insert(reason, 0);
                true
            }
        };
        (log_in_full, ended)
    }

    /// Closes the windows that have ended (all of them with `all`, at exit) and returns
    /// the summaries worth a line.
    pub fn flush(&mut self, now: Instant, all: bool) -> Vec<Summary> {
        let window = self.window;
        let ended: Vec<Source> = self
            .sources
            .iter()
            .filter(|(_, w)| all || now.saturating_duration_since(w.started) >= window)
            .map(|(s, _)| *s)
            .collect();
        let mut out: Vec<Summary> = ended
            .into_iter()
            .filter_map(|s| self.sources.remove(&s).and_then(|w| w.summary(s, now)))
            .collect();
        out.sort_by_key(|s| s.source);
        out
    }
}

impl Window {
    fn summary(self, source: Source, now: Instant) -> Option<Summary> {
        let suppressed: Vec<_> = self.reasons.into_iter().filter(|(_, n)| *n > 0).collect();
        (!suppressed.is_empty()).then(|| Summary {
            source,
            over: now.saturating_duration_since(self.started),
            suppressed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn first_of_each_reason_in_full_then_one_summary_per_window() {
        let t0 = Instant::now();
        let mut log = RejectionLog::new(Duration::from_secs(60));
        let a = src("10.0.0.1");
        assert_eq!(log.note(a, "unauthorized", t0), (true, None));
        for i in 1..=10 {
            assert_eq!(
                log.note(a, "unauthorized", t0 + Duration::from_secs(i)),
                (false, None)
            );
        }
        assert_eq!(
            log.note(a, "unknown_route", t0),
            (true, None),
            "a new kind is logged"
        );
        assert_eq!(log.note(src("10.0.0.2"), "unauthorized", t0), (true, None));
        assert!(log.flush(t0 + Duration::from_secs(59), false).is_empty());
        // The next rejection after the minute closes the window and opens a new one.
        let (full, ended) = log.note(a, "unauthorized", t0 + Duration::from_secs(61));
        assert!(full);
        let ended = ended.expect("summary of the first minute");
        assert_eq!(ended.suppressed, vec![("unauthorized", 10)]);
        assert_eq!(
            (ended.total(), ended.by_reason()),
            (10, "unauthorized=10".to_owned())
        );
        // A window with nothing suppressed needs no summary line.
        assert!(log.flush(t0 + Duration::from_secs(200), false).is_empty());
        assert!(log.sources.is_empty(), "ended windows are forgotten");
    }

    #[test]
    fn flush_all_at_exit_and_bounded_sources() {
        let t0 = Instant::now();
        let mut log = RejectionLog::new(Duration::from_secs(60));
        for i in 0..(MAX_SOURCES + 500) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32);
            log.note(Source::of(ip.into()), "bad_handshake", t0);
            log.note(Source::of(ip.into()), "bad_handshake", t0);
        }
        assert_eq!(log.sources.len(), MAX_SOURCES + 1);
        let all = log.flush(t0, true);
        let total: u64 = all.iter().map(Summary::total).sum();
        // Each tracked source: one logged, one counted; the overflow: one logged, the
        // other 999 counted.
        assert_eq!(total, MAX_SOURCES as u64 + 999);
        assert!(all.iter().any(|s| s.source == Source::OVERFLOW));
        assert!(log.sources.is_empty());
    }
}
