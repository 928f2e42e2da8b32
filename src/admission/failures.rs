//! Failed upgrades per source: what an attacker produces, and what a working PBX does
//! not. A source over its budget has each further *failing* upgrade answered 429 with
//! `Retry-After`; an upgrade that would be accepted (a valid token, a known route) is
//! never refused here, so a PBX behind the same address (NAT, a load balancer) as a
//! token guesser keeps its calls.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::Source;

/// Sources tracked at once. Past it, new sources share [`Source::OVERFLOW`]'s budget
/// until the next sweep, so a spray from many addresses cannot grow memory.
const MAX_SOURCES: usize = 100_000;

type Limiter<C> =
    RateLimiter<Source, DefaultKeyedStateStore<Source>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct FailureLimit<C: Clock = DefaultClock> {
    limiter: Option<Limiter<C>>,
    per_sec: u32,
}

impl FailureLimit {
    /// `per_sec` failed upgrades per second from one source, bursts of twice that;
    /// 0 disables the limit.
    pub fn new(per_sec: u32) -> FailureLimit {
        FailureLimit::with_clock(per_sec, DefaultClock::default())
    }
}

impl<C: Clock> FailureLimit<C> {
    pub fn with_clock(per_sec: u32, clock: C) -> FailureLimit<C> {
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let burst = NonZeroU32::new(per_sec.saturating_mul(2)).unwrap_or(rate);
            RateLimiter::dashmap_with_clock(Quota::per_second(rate).allow_burst(burst), clock)
        });
        FailureLimit { limiter, per_sec }
    }

    pub fn per_sec(&self) -> u32 {
        self.per_sec
    }

    /// Counts one failed upgrade from `source`; `true` when that takes the source over
    /// its budget (answer 429).
    pub fn fail(&self, source: Source) -> bool {
        let Some(l) = &self.limiter else {
            return false;
        };
        let key = if l.len() >= MAX_SOURCES {
            Source::OVERFLOW
        } else {
            source
        };
        l.check_key(&key).is_err()
    }

    /// Forgets sources whose budget is full again, so memory follows current activity.
    pub fn sweep(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn burst_then_rate_per_source() {
        let clock = FakeRelativeClock::default();
        let f = FailureLimit::with_clock(2, clock.clone());
        let a = src("10.0.0.1");
        // A burst of 4 (twice the rate) fits, the 5th is over.
        assert_eq!(
            (0..5).map(|_| f.fail(a)).collect::<Vec<_>>(),
            [false, false, false, false, true]
        );
        // Another source has its own budget.
        assert!(!f.fail(src("10.0.0.2")));
        // Half a second later one more fits again (2 per second).
        clock.advance(Duration::from_millis(500));
        assert!(!f.fail(a));
        assert!(f.fail(a));
        // Same /64: same budget.
        let v6 = FailureLimit::with_clock(1, clock.clone());
        assert!(!v6.fail(src("2001:db8::1")));
        assert!(!v6.fail(src("2001:db8::2")));
        assert!(v6.fail(src("2001:db8::3")));
    }

    #[test]
    fn zero_disables() {
        let f = FailureLimit::with_clock(0, FakeRelativeClock::default());
        assert!((0..1000).all(|_| !f.fail(src("10.0.0.1"))));
    }
}
