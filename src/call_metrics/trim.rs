//! Gives memory back to the OS after many calls have ended.
//!
//! glibc malloc keeps what freed calls leave in its arenas: after a burst of 500 calls
//! the daemon stayed ~45 MB above idle. `malloc_trim(0)` releases those free pages
//! (measured: back to +3.4 MB), but it walks every arena under its lock, so it runs on
//! a blocking thread and only when the number of live calls has fallen to half of its
//! high-water mark since the last trim: rarely, and never in a steady soak, where freed
//! memory is simply reused by the next calls. The decision ([`TrimPolicy`]) is pure.
//! The trim waits [`SETTLE`]: a call's slot is released before the rest of its state
//! (provider task, close handshake), and the calls that end meanwhile share the trim.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A drop smaller than this many calls is not worth a trim.
const MIN_DROP: usize = 32;
/// From the decision to the trim (ended calls finish freeing; one trim serves a burst).
const SETTLE: Duration = Duration::from_secs(2);

/// Decides, from the live call count, when a trim pays.
#[derive(Debug, Default)]
pub(crate) struct TrimPolicy {
    /// Most live calls since the last trim.
    high: usize,
}

impl TrimPolicy {
    /// The live call count changed to `live`; true if memory should be trimmed now.
    pub(crate) fn on_live(&mut self, live: usize) -> bool {
        self.high = self.high.max(live);
        if self.high - live >= MIN_DROP && live <= self.high / 2 {
            self.high = live;
            return true;
        }
        false
    }
}

static POLICY: Mutex<TrimPolicy> = Mutex::new(TrimPolicy { high: 0 });
/// A trim is scheduled and has not started yet.
static PENDING: AtomicBool = AtomicBool::new(false);

/// Called with every change of the live call count.
pub(crate) fn on_live_calls(live: usize) {
    let trim = match POLICY.lock() {
        Ok(mut p) => p.on_live(live),
        Err(_) => false,
    };
    if !trim || PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    // Off the calls' worker threads (a trim of a large heap takes milliseconds), and not
    // a runtime task: a pending trim must not hold up the daemon's exit.
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            std::thread::sleep(SETTLE);
            PENDING.store(false, Ordering::Release);
            release_free_memory();
        });
    if spawned.is_err() {
        PENDING.store(false, Ordering::Release);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: glibc's malloc_trim takes no pointers and is thread-safe (it locks each
    // arena in turn); 0 = keep no padding at the top of the heap.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn trims(policy: &mut TrimPolicy, counts: impl IntoIterator<Item = usize>) -> Vec<usize> {
        counts.into_iter().filter(|&n| policy.on_live(n)).collect()
    }

    #[test]
    fn calls_ending_at_once_trim_a_few_times() {
        let mut p = TrimPolicy::default();
        assert!(trims(&mut p, 1..=300).is_empty());
        // 300 calls end one after the other: trims at the halvings only (the last
        // few calls are under MIN_DROP; the trim at 5 runs after SETTLE anyway).
        assert_eq!(trims(&mut p, (0..300).rev()), [150, 75, 37, 5]);
    }

    #[test]
    fn a_steady_load_never_trims() {
        let mut p = TrimPolicy::default();
        assert!(trims(&mut p, 1..=300).is_empty());
        for _ in 0..1000 {
            assert!(trims(&mut p, [299, 300]).is_empty());
        }
    }

    #[test]
    fn a_few_calls_are_not_worth_a_trim() {
        let mut p = TrimPolicy::default();
        assert!(trims(&mut p, (1..=20).chain((0..20).rev())).is_empty());
        // The high-water mark survives: a later bigger drop still trims once.
        assert_eq!(trims(&mut p, (1..=40).chain((0..40).rev())), [8]);
    }

    #[test]
    fn the_high_water_mark_restarts_after_a_trim() {
        let mut p = TrimPolicy::default();
        assert_eq!(trims(&mut p, (1..=100).chain((40..100).rev())), [50]);
        // Back up to 100 from 40: a drop to 50 trims again.
        assert_eq!(trims(&mut p, (41..=100).chain((50..100).rev())), [50]);
    }
}
