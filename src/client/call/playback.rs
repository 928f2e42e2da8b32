//! FreeSWITCH's playback buffer as the caller experiences it, driven by the same media
//! clock as the sender: so what `--out` records is time-aligned with the input, and
//! barge-in cuts, underruns and the end of each response are measured. Pure.

use std::collections::VecDeque;

/// A playback gap longer than this is taken as the end of a response, not an underrun:
/// the protocol has no end-of-response marker, so this is the heuristic boundary.
pub const RESPONSE_END_GAP_MS: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlayState {
    /// No response in progress.
    Idle,
    /// Audio was played on the last tick.
    Playing,
    /// A response was playing and the buffer ran dry this many samples ago.
    Dry(usize),
}

/// FreeSWITCH's playback buffer as the caller experiences it: audio is queued as it
/// arrives and one frame leaves per media-clock tick, silence when there is none.
#[derive(Debug)]
pub struct PlaybackSim {
    rate: u32,
    tick_samples: usize,
    end_gap_samples: usize,
    buffer: VecDeque<i16>,
    state: PlayState,
    /// Everything the caller heard, in order.
    pub played: Vec<i16>,
    pub responses: u64,
    pub underrun_gaps: u64,
    max_gap_samples: usize,
}

impl PlaybackSim {
    pub fn new(rate: u32, tick_ms: u32) -> Self {
        PlaybackSim {
            rate,
            tick_samples: (rate as usize * tick_ms as usize) / 1000,
            end_gap_samples: (rate as usize * RESPONSE_END_GAP_MS as usize) / 1000,
            buffer: VecDeque::new(),
            state: PlayState::Idle,
            played: Vec::new(),
            responses: 0,
            underrun_gaps: 0,
            max_gap_samples: 0,
        }
    }

    /// Queues received playback audio.
    pub fn push(&mut self, samples: &[i16]) {
        self.buffer.extend(samples);
    }

    /// Barge-in: drops everything not yet played; the response is over, so the silence
    /// that follows is not an underrun.
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.state = PlayState::Idle;
    }

    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Audio played on the last tick, or is waiting to play.
    pub fn audible(&self) -> bool {
        self.state == PlayState::Playing || !self.buffer.is_empty()
    }

    /// Longest underrun gap so far, in milliseconds.
    pub fn underrun_max_ms(&self) -> u64 {
        (self.max_gap_samples as u64 * 1000) / u64::from(self.rate.max(1))
    }

    /// Bookkeeping when audio starts playing again after idle or a dry spell.
    fn on_audio(&mut self) {
        match self.state {
            PlayState::Idle => self.responses += 1,
            PlayState::Dry(gap) => {
                self.underrun_gaps += 1;
                self.max_gap_samples = self.max_gap_samples.max(gap);
            }
            PlayState::Playing => {}
        }
        self.state = PlayState::Playing;
    }

    /// One media-clock tick: plays one frame (padded with silence if the buffer is short).
    pub fn tick(&mut self) {
        let n = self.buffer.len().min(self.tick_samples);
        if n > 0 {
            self.on_audio();
        }
        self.played.extend(self.buffer.drain(..n));
        let pad = self.tick_samples - n;
        if pad == 0 {
            return;
        }
        self.played.extend(std::iter::repeat_n(0i16, pad));
        self.state = match self.state {
            PlayState::Idle => PlayState::Idle,
            PlayState::Playing => PlayState::Dry(pad),
            // A dry spell this long is the end of the response, not a stall.
            PlayState::Dry(gap) if gap + pad > self.end_gap_samples => PlayState::Idle,
            PlayState::Dry(gap) => PlayState::Dry(gap + pad),
        };
    }

    /// End of call: plays whatever is still buffered, without waiting for the clock.
    pub fn flush(&mut self) {
        if !self.buffer.is_empty() {
            self.on_audio();
            self.played.extend(self.buffer.drain(..));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 kHz with 10 ms ticks: 10 samples per tick, easy to count.
    fn sim() -> PlaybackSim {
        PlaybackSim::new(1000, 10)
    }

    #[test]
    fn playback_plays_frames_in_order_with_silence_when_empty() {
        let mut p = sim();
        p.tick();
        p.push(&[1; 10]);
        p.push(&[2; 15]);
        p.tick();
        p.tick();
        p.tick();
        let mut want = vec![0; 10];
        want.extend([1; 10]);
        want.extend([2; 10]);
        want.extend([2; 5]);
        want.extend([0; 5]);
        assert_eq!(p.played, want);
        assert_eq!(p.responses, 1);
        assert_eq!(p.underrun_gaps, 0);
    }

    #[test]
    fn clear_audio_empties_the_buffer() {
        let mut p = sim();
        p.push(&[3; 40]);
        p.tick();
        p.clear();
        assert_eq!(p.buffered(), 0);
        p.tick();
        p.push(&[4; 10]);
        p.tick();
        let mut want = vec![3; 10];
        want.extend([0; 10]);
        want.extend([4; 10]);
        assert_eq!(p.played, want);
        // The silence after a barge-in is not an underrun; the new audio is a new response.
        assert_eq!(p.underrun_gaps, 0);
        assert_eq!(p.responses, 2);
    }

    #[test]
    fn underrun_gaps_are_counted_and_measured() {
        let mut p = sim();
        p.push(&[1; 10]);
        p.tick();
        p.tick(); // dry 10 ms
        p.tick(); // dry 20 ms
        p.push(&[1; 15]);
        p.tick();
        p.tick(); // 5 samples then dry 5 ms
        p.push(&[1; 10]);
        p.tick();
        assert_eq!(p.underrun_gaps, 2);
        assert_eq!(p.underrun_max_ms(), 20);
        assert_eq!(p.responses, 1);
    }

    #[test]
    fn a_long_gap_ends_the_response() {
        let mut p = sim();
        p.push(&[1; 10]);
        p.tick();
        for _ in 0..(RESPONSE_END_GAP_MS / 10 + 1) {
            p.tick();
        }
        p.push(&[1; 10]);
        p.tick();
        assert_eq!(p.underrun_gaps, 0);
        assert_eq!(p.responses, 2);
    }

    #[test]
    fn flush_plays_the_rest() {
        let mut p = sim();
        p.push(&[9; 25]);
        p.tick();
        p.flush();
        assert_eq!(p.played, vec![9; 25]);
        assert_eq!(p.buffered(), 0);
    }
}
