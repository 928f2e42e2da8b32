//! How long `voicebridge call` keeps the call open after the WAV has been sent.
//!
//! By default until the reply has finished playing: the call ends once nothing has played
//! for [`QUIET`] (counted from the end of the WAV, or from the last audio played, whichever
//! is later), and at the latest [`MAX_TAIL`] after the WAV. So a long answer is recorded
//! whole, and a reply that never comes costs [`QUIET`]. `--tail-secs` gives a fixed tail
//! instead, for scripts that want the same number of frames every run.
//!
//! Pure: the caller passes the time.

use std::time::Duration;

use tokio::time::Instant;

/// Nothing played this long after the WAV (or after the reply): the call is over. Also
/// how long a reply may take to begin.
pub const QUIET: Duration = Duration::from_secs(3);
/// The longest the call stays open after the WAV, whatever keeps playing.
pub const MAX_TAIL: Duration = Duration::from_secs(60);

/// The tail's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Exactly this many frames of silence (`--tail-secs`).
    Frames(u64),
    /// Until nothing has played for `quiet`, at most `max` after the WAV.
    UntilQuiet { quiet: Duration, max: Duration },
}

impl Tail {
    /// The default rule.
    pub fn until_quiet() -> Tail {
        Tail::UntilQuiet {
            quiet: QUIET,
            max: MAX_TAIL,
        }
    }
}

/// Follows one call's tail.
#[derive(Debug)]
pub struct TailClock {
    rule: Tail,
    /// When the last frame of the WAV went out.
    wav_end: Option<Instant>,
    /// When audio last played (or was waiting to play) after the WAV ended.
    last_audible: Option<Instant>,
}

impl TailClock {
    pub fn new(rule: Tail) -> TailClock {
        TailClock {
            rule,
            wav_end: None,
            last_audible: None,
        }
    }

    /// The WAV's last frame was sent at `now`.
    pub fn wav_ended(&mut self, now: Instant) {
        self.wav_end.get_or_insert(now);
    }

    /// Something is playing (or buffered to play) at `now`.
    pub fn audible(&mut self, now: Instant) {
        if self.wav_end.is_some() {
            self.last_audible = Some(now);
        }
    }

    /// Whether the call should end, with `tail_frames` frames of silence sent so far.
    pub fn done(&self, tail_frames: u64, now: Instant) -> bool {
        let Some(wav_end) = self.wav_end else {
            return false;
        };
        match self.rule {
            Tail::Frames(n) => tail_frames >= n,
            Tail::UntilQuiet { quiet, max } => {
                let since = self.last_audible.map_or(wav_end, |t| t.max(wav_end));
                now.saturating_duration_since(wav_end) >= max
                    || now.saturating_duration_since(since) >= quiet
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fixed_tail_counts_frames() {
        let t0 = Instant::now();
        let mut c = TailClock::new(Tail::Frames(50));
        assert!(!c.done(100, t0), "not before the WAV ended");
        c.wav_ended(t0);
        assert!(!c.done(49, t0 + ms(10_000)));
        assert!(c.done(50, t0));
    }

    #[test]
    fn waits_for_the_reply_to_finish_then_a_quiet_period() {
        let t0 = Instant::now();
        let mut c = TailClock::new(Tail::until_quiet());
        c.audible(t0); // while the WAV plays: does not count
        c.wav_ended(t0 + ms(7600));
        // The reply starts 1 s after the WAV and plays 7.6 s.
        assert!(!c.done(0, t0 + ms(8600)));
        let mut t = t0 + ms(8600);
        while t < t0 + ms(16_200) {
            c.audible(t);
            assert!(!c.done(0, t));
            t += ms(20);
        }
        assert!(!c.done(0, t0 + ms(16_200) + QUIET - ms(40)));
        assert!(c.done(0, t0 + ms(16_200) + QUIET));
    }

    #[test]
    fn no_reply_costs_the_quiet_period_and_a_long_one_stops_at_the_maximum() {
        let t0 = Instant::now();
        let mut c = TailClock::new(Tail::until_quiet());
        c.wav_ended(t0);
        assert!(!c.done(0, t0 + QUIET - ms(1)));
        assert!(c.done(0, t0 + QUIET));

        let mut c = TailClock::new(Tail::until_quiet());
        c.wav_ended(t0);
        c.audible(t0 + MAX_TAIL);
        assert!(c.done(0, t0 + MAX_TAIL));
    }
}
