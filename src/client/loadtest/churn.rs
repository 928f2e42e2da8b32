//! The soak's pure parts: when each call of a churning run hangs up (`--call-secs`), and
//! what the daemon's RSS timeline says once warmed up (flat or drifting).
//!
//! Why staggered: if every slot's first call lasted exactly `--call-secs`, all N calls
//! would end (and redial) within the ramp's few seconds, a burst every cycle. Ending slot
//! `i`'s first call at `hold start + S × (i + 1) / N` instead makes one call end every S/N
//! seconds from the start of the hold on, and each later call lasts S, so the churn stays
//! even. Times are durations since the run's epoch: no clock in here.

use std::time::Duration;

use serde::Serialize;

/// When the calls of a churning run hang up.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Concurrent calls (slots).
    pub slots: usize,
    /// `--call-secs`: every call after a slot's first lasts this long.
    pub call_len: Duration,
    /// No call is shorter than this (the mock's turn period: time for a reply).
    pub min_len: Duration,
}

impl Schedule {
    /// When the call that slot `slot` dials at `dialed` hangs up; `first` for the slot's
    /// first call, which ends at its staggered point after `hold_start` (or `min_len`
    /// after it was dialed, if that is later).
    pub fn call_end(
        &self,
        slot: usize,
        first: bool,
        dialed: Duration,
        hold_start: Duration,
    ) -> Duration {
        if !first {
            return dialed + self.call_len;
        }
        let share = (slot as f64 + 1.0) / self.slots.max(1) as f64;
        let staggered = hold_start + self.call_len.mul_f64(share);
        staggered.max(dialed + self.min_len)
    }
}

/// One RSS reading of the daemon, `t_secs` after the hold began.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RssPoint {
    pub t_secs: f64,
    pub rss_mb: f64,
}

/// The timeline after warm-up: what "flat within ±2 MB" is read from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RssDrift {
    /// The first sample at or after the warm-up (one full call cycle, at least 60 s).
    pub warmup_at_secs: f64,
    pub warmup_mb: f64,
    /// Lowest and highest samples from the warm-up sample on.
    pub min_mb: f64,
    pub max_mb: f64,
    pub last_mb: f64,
    /// Last sample − warm-up sample.
    pub drift_mb: f64,
}

/// The daemon's RSS sampled every `every_secs` over the hold (`--rss-every-secs`).
#[derive(Clone, Debug, Serialize)]
pub struct RssTimeline {
    pub every_secs: f64,
    pub warmup_secs: f64,
    pub samples: Vec<RssPoint>,
    /// `None` when no sample came after the warm-up (the hold was too short).
    pub after_warmup: Option<RssDrift>,
}

/// The warm-up: one full call cycle, and never under a minute.
pub fn warmup_secs(call_secs: Option<f64>) -> f64 {
    call_secs.unwrap_or(0.0).max(60.0)
}

/// Summarises `samples` (in time order) from the first one at or after `warmup_secs`.
pub fn drift(samples: &[RssPoint], warmup_secs: f64) -> Option<RssDrift> {
    let start = samples.iter().position(|p| p.t_secs >= warmup_secs)?;
    let after = &samples[start..];
    let first = after[0];
    let last = after[after.len() - 1];
    let (min_mb, max_mb) = after.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.rss_mb), hi.max(p.rss_mb))
    });
    Some(RssDrift {
        warmup_at_secs: first.t_secs,
        warmup_mb: first.rss_mb,
        min_mb,
        max_mb,
        last_mb: last.rss_mb,
        drift_mb: last.rss_mb - first.rss_mb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn schedule(slots: usize, call_secs: u64) -> Schedule {
        Schedule {
            slots,
            call_len: ms(call_secs * 1000),
            min_len: ms(2000),
        }
    }

    #[test]
    fn first_calls_end_one_every_s_over_n_from_the_hold_start() {
        // 4 slots dialed 1 s apart during the ramp, the hold starting at 3.2 s.
        let s = schedule(4, 60);
        let hold = ms(3200);
        let ends: Vec<Duration> = (0..4)
            .map(|i| s.call_end(i, true, ms(i as u64 * 1000), hold))
            .collect();
        assert_eq!(ends, vec![ms(18_200), ms(33_200), ms(48_200), ms(63_200)]);
    }

    #[test]
    fn later_calls_last_the_full_call_length() {
        let s = schedule(300, 60);
        assert_eq!(s.call_end(7, false, ms(100_000), ms(6200)), ms(160_000));
    }

    #[test]
    fn a_first_call_is_never_shorter_than_the_minimum() {
        // Slot 0 of 300 would end 0.2 s into the hold, 0.1 s after it was dialed.
        let s = schedule(300, 60);
        assert_eq!(s.call_end(0, true, ms(6100), ms(6000)), ms(8100));
    }

    fn point(t_secs: f64, rss_mb: f64) -> RssPoint {
        RssPoint { t_secs, rss_mb }
    }

    #[test]
    fn drift_is_read_from_the_first_sample_after_warm_up() {
        let samples = [
            point(0.0, 20.0),
            point(30.0, 40.0),
            point(60.0, 45.0),
            point(90.0, 44.0),
            point(120.0, 46.5),
        ];
        let d = drift(&samples, warmup_secs(Some(30.0))).expect("samples after warm-up");
        assert_eq!(d.warmup_at_secs, 60.0);
        assert_eq!(d.warmup_mb, 45.0);
        assert_eq!(d.min_mb, 44.0);
        assert_eq!(d.max_mb, 46.5);
        assert_eq!(d.last_mb, 46.5);
        assert_eq!(d.drift_mb, 1.5);
    }

    #[test]
    fn a_long_call_length_is_the_warm_up() {
        let samples = [point(60.0, 45.0), point(90.0, 50.0), point(120.0, 48.0)];
        let d = drift(&samples, warmup_secs(Some(90.0))).expect("samples after warm-up");
        assert_eq!(d.warmup_mb, 50.0);
        assert_eq!(d.drift_mb, -2.0);
    }

    #[test]
    fn no_summary_when_the_hold_ends_before_warm_up() {
        let samples = [point(0.0, 20.0), point(30.0, 40.0)];
        assert_eq!(drift(&samples, warmup_secs(None)), None);
        assert_eq!(drift(&[], 60.0), None);
    }
}
