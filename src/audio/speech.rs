//! How long the caller has been talking without a break, from the 20 ms frames we relay:
//! the confirmation behind the barge-in guard (`barge_in_min_ms`). A provider's "caller
//! started speaking" fires on a cough, a click or line noise as readily as on speech; a
//! click is one to three frames, a cough a few, a word many. So a barge-in waits until
//! this run reaches the guard.
//!
//! A frame is voiced when its level is above an absolute floor (−50 dBFS) and clearly
//! above the line's own noise: 8 dB over the quietest frame of the last second (speech
//! always dips between syllables, steady hiss or hum never does), so a loud line does
//! not count as speech. Up to three unvoiced frames inside a run (the dip between two
//! syllables) do not end it; four do. Only voiced frames count towards the run.
//!
//! Pure and cheap: one pass over the frame's samples and over 50 stored levels, no
//! allocation.

/// Below this a frame is never speech, whatever the noise estimate.
const ABSOLUTE_FLOOR_DB: f64 = -50.0;
/// A voiced frame stands this far above the noise estimate.
const OVER_NOISE_DB: f64 = 8.0;
/// The noise estimate is the quietest of this many frames (1 s of 20 ms frames).
const NOISE_WINDOW: usize = 50;
/// Unvoiced frames tolerated inside a run (over a noisy line the dip between two
/// syllables is two or three frames at the noise's level).
const HANGOVER_FRAMES: u32 = 3;

#[derive(Debug, Clone)]
pub struct SpeechRun {
    /// The last frames' levels (dBFS), a ring; `f32::MAX` where none was seen yet.
    levels: [f32; NOISE_WINDOW],
    next: usize,
    /// Voiced frames in the current run (gaps not counted).
    run: u32,
    /// Unvoiced frames since the last voiced one.
    gap: u32,
    frame_ms: u32,
}

impl Default for SpeechRun {
    fn default() -> Self {
        SpeechRun::new(20)
    }
}

impl SpeechRun {
    /// `frame_ms`: the duration of each frame given to [`push`](Self::push).
    pub fn new(frame_ms: u32) -> SpeechRun {
        SpeechRun {
            levels: [f32::MAX; NOISE_WINDOW],
            next: 0,
            run: 0,
            gap: 0,
            frame_ms,
        }
    }

    /// Takes one frame of linear samples; returns the length of the current run of
    /// speech in ms (0 when the caller is not talking).
    pub fn push(&mut self, samples: &[i16]) -> u32 {
        let level = level_db(samples);
        self.levels[self.next] = level as f32;
        self.next = (self.next + 1) % NOISE_WINDOW;
        let noise = f64::from(self.levels.iter().copied().fold(f32::MAX, f32::min));
        let voiced = level > ABSOLUTE_FLOOR_DB && level > noise + OVER_NOISE_DB;
        if voiced {
            self.run += 1;
            self.gap = 0;
        } else {
            self.gap += 1;
            if self.gap > HANGOVER_FRAMES {
                self.run = 0;
            }
        }
        self.run_ms()
    }

    /// The current run of speech, in ms.
    pub fn run_ms(&self) -> u32 {
        if self.gap > HANGOVER_FRAMES {
            0
        } else {
            self.run * self.frame_ms
        }
    }
}

/// RMS level in dBFS (−96 for digital silence).
fn level_db(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return -96.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / samples.len() as f64).sqrt() / 32768.0;
    if rms <= 0.0 {
        -96.0
    } else {
        (20.0 * rms.log10()).max(-96.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::signal;

    fn frames(samples: &[i16]) -> impl Iterator<Item = &[i16]> {
        samples.chunks(160)
    }

    fn longest_run(detector: &mut SpeechRun, samples: &[i16]) -> u32 {
        frames(samples).map(|f| detector.push(f)).max().unwrap_or(0)
    }

    #[test]
    fn speech_builds_a_run_and_silence_ends_it() {
        let mut d = SpeechRun::default();
        // 100 ms of silence, then 400 ms of voice.
        let speech = signal::speech_like(8000, 0.5, 7);
        let run = longest_run(&mut d, &speech);
        assert!(run >= 300, "400 ms of speech: run {run} ms");
        let before = d.run_ms();
        let silence = vec![0i16; 160];
        for _ in 0..3 {
            assert_eq!(d.push(&silence), before, "a gap of 60 ms is tolerated");
        }
        assert_eq!(d.push(&silence), 0, "80 ms end the run");
    }

    #[test]
    fn clicks_and_coughs_make_short_runs() {
        let mut d = SpeechRun::default();
        let quiet = vec![0i16; 160 * 10];
        longest_run(&mut d, &quiet);
        let click = signal::sine(8000, 2000.0, -6.0, 480); // 60 ms
        assert!(longest_run(&mut d, &click) <= 60);
        longest_run(&mut d, &quiet);
        let cough = signal::speech_like(8000, 0.1, 3); // 100 ms
        assert!(longest_run(&mut d, &cough) <= 100);
    }

    #[test]
    fn steady_line_noise_is_not_speech() {
        let mut d = SpeechRun::default();
        // A 50 Hz hum at -42 dBFS for 5 s: above the absolute floor, but the line's own level.
        let hum = signal::sine(8000, 50.0, -42.0, 8000 * 5);
        let runs: Vec<u32> = frames(&hum).map(|f| d.push(f)).collect();
        assert_eq!(runs.iter().max(), Some(&0), "hum is not speech");
        // Speech over the hum still counts.
        let speech = signal::speech_like(8000, 0.8, 11);
        let mixed: Vec<i16> = speech
            .iter()
            .zip(hum.iter().cycle())
            .map(|(s, h)| s.saturating_add(*h))
            .collect();
        assert!(longest_run(&mut d, &mixed) >= 300);
    }
}
