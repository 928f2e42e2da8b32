//! Tells a provider that streams assistant audio far faster than real time, for
//! seconds on end, from one that merely bursts.
//!
//! Providers legitimately send a reply a few times faster than it plays (the pacer
//! absorbs that, up to its cap). A reply of several seconds arriving in a fraction of
//! a second is normal; tens of seconds of audio per second, second after second, is
//! not speech anyone will hear: it is a broken or hostile peer, and the call ends.
//!
//! Pure: the clock is a parameter.

use std::time::{Duration, Instant};

/// Length of one measuring window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// A window is "hot" when it received more than this many times its length in audio.
pub const RATIO: u64 = 10;
/// This many hot windows in a row is a flood.
pub const HOT_WINDOWS: u32 = 5;

/// Audio received per window of wall-clock time.
#[derive(Debug, Default)]
pub struct FloodGuard {
    window_start: Option<Instant>,
    /// Audio received in the current window, in µs.
    audio_us: u64,
    /// Consecutive hot windows before the current one.
    hot: u32,
    /// Audio received in the hot windows, for the log line.
    hot_audio_us: u64,
}

impl FloodGuard {
    pub fn new() -> FloodGuard {
        FloodGuard::default()
    }

    /// Counts `audio` received at `now`. Returns true once the provider has sent more
    /// than `RATIO` × real time for `HOT_WINDOWS` consecutive windows.
    pub fn on_audio(&mut self, now: Instant, audio: Duration) -> bool {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            let limit = elapsed.as_micros() as u64 * RATIO;
            // A window longer than two means a gap with no audio: the run is broken.
            if self.audio_us > limit && elapsed < 2 * WINDOW {
                self.hot += 1;
                self.hot_audio_us += self.audio_us;
            } else {
                self.hot = 0;
                self.hot_audio_us = 0;
            }
            self.window_start = Some(now);
            self.audio_us = 0;
        }
        self.audio_us = self
            .audio_us
            .saturating_add(audio.as_micros().min(u128::from(u64::MAX)) as u64);
        self.hot >= HOT_WINDOWS
    }

    /// Whether the current window has already received more than `RATIO` windows'
    /// worth of audio: more than any legitimate burst (a reply or a network hiccup's
    /// backlog), so whatever comes on top is not worth decoding. Dropping it keeps a
    /// flooding peer from spending the CPU other calls need while the run of hot
    /// windows that ends its call builds up; the audio is still counted.
    pub fn window_full(&self) -> bool {
        self.audio_us > WINDOW.as_micros() as u64 * RATIO
    }

    /// Seconds of audio received in the run of hot windows.
    pub fn flood_audio(&self) -> Duration {
        Duration::from_micros(self.hot_audio_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `per_tick` of audio every `tick` for `total`; returns when it flagged.
    fn feed(
        g: &mut FloodGuard,
        t0: Instant,
        tick: Duration,
        per_tick: Duration,
        total: Duration,
    ) -> Option<Duration> {
        let mut t = Duration::ZERO;
        while t <= total {
            if g.on_audio(t0 + t, per_tick) {
                return Some(t);
            }
            t += tick;
        }
        None
    }

    #[test]
    fn a_fast_reply_is_not_a_flood() {
        // 60 s of speech arriving 20x real time for 3 s: a long reply, then quiet.
        let t0 = Instant::now();
        let mut g = FloodGuard::new();
        assert_eq!(feed(&mut g, t0, 10 * MS, 200 * MS, 3000 * MS), None);
        // Real time afterwards, for a minute.
        assert_eq!(
            feed(&mut g, t0 + 3010 * MS, 20 * MS, 20 * MS, 60_000 * MS),
            None
        );
    }

    #[test]
    fn sustained_ten_times_real_time_is_a_flood_after_five_windows() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new();
        // 100 ms of audio every 5 ms: 20x real time.
        let at = feed(&mut g, t0, 5 * MS, 100 * MS, 20_000 * MS).expect("flagged");
        assert!(at >= WINDOW * HOT_WINDOWS, "{at:?}");
        assert!(at < WINDOW * (HOT_WINDOWS + 1), "{at:?}");
        assert!(
            g.flood_audio() >= Duration::from_secs(90),
            "{:?}",
            g.flood_audio()
        );
    }

    #[test]
    fn a_window_is_full_past_ten_seconds_of_audio_and_empties_with_the_next() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new();
        // 60 s of audio every 10 ms: the window fills in its first 2 ticks.
        assert!(!g.on_audio(t0, 9_000 * MS));
        assert!(!g.window_full(), "9 s of audio in a window is a burst");
        assert!(!g.on_audio(t0 + 10 * MS, 2_000 * MS));
        assert!(g.window_full(), "11 s of audio in under a second");
        // A new window starts empty (the first message of it counts).
        assert!(!g.on_audio(t0 + WINDOW, 20 * MS));
        assert!(!g.window_full());
    }

    #[test]
    fn just_under_the_ratio_never_flags() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new();
        // 9x real time, for a long time.
        assert_eq!(feed(&mut g, t0, 10 * MS, 90 * MS, 30_000 * MS), None);
    }

    #[test]
    fn a_pause_breaks_the_run() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new();
        // Four hot windows, a 3 s pause, four more: never five in a row.
        assert_eq!(feed(&mut g, t0, 5 * MS, 100 * MS, 3999 * MS), None);
        assert_eq!(
            feed(&mut g, t0 + 7000 * MS, 5 * MS, 100 * MS, 3999 * MS),
            None
        );
    }
}
