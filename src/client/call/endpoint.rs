//! Where the caller's first utterance ends in the WAV: the reference point for "from the
//! end of speech to the first reply audio". Deliberately crude (energy only), pure.

use crate::client::core::FRAME_MS as PLAYOUT_MS;

/// Energy endpoint: frames at or above this level count as speech.
pub const SPEECH_DBFS: f64 = -45.0;
/// Energy endpoint: minimum speech run, then minimum silence run, in milliseconds.
pub const ENDPOINT_RUN_MS: u32 = 300;

fn frame_dbfs(frame: &[i16]) -> f64 {
    if frame.is_empty() {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / frame.len() as f64).sqrt();
    if rms == 0.0 {
        f64::NEG_INFINITY
    } else {
        20.0 * (rms / 32768.0).log10()
    }
}

/// Sample index where the caller's first utterance ends: the first 20 ms frame of the
/// first ≥ 300 ms silence (< −45 dBFS) that follows a ≥ 300 ms run of speech.
///
/// Deliberately crude (energy only): it is a reference point for latency, not a VAD.
pub fn speech_end_sample(samples: &[i16], rate: u32) -> Option<usize> {
    let frame = (rate as usize * PLAYOUT_MS as usize) / 1000;
    if frame == 0 {
        return None;
    }
    let run_frames = (ENDPOINT_RUN_MS / PLAYOUT_MS) as usize;
    let mut speech_run = 0usize;
    let mut had_speech = false;
    let mut silence_start: Option<usize> = None;
    let mut silence_run = 0usize;
    for (i, f) in samples.chunks_exact(frame).enumerate() {
        let speech = frame_dbfs(f) >= SPEECH_DBFS;
        if speech {
            speech_run += 1;
            if speech_run >= run_frames {
                had_speech = true;
            }
            silence_run = 0;
            silence_start = None;
        } else {
            speech_run = 0;
            if had_speech {
                silence_start.get_or_insert(i);
                silence_run += 1;
                if silence_run >= run_frames {
                    return silence_start.map(|s| s * frame);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize, amplitude: i16) -> Vec<i16> {
        (0..n)
            .map(|i| {
                if (i / 4) % 2 == 0 {
                    amplitude
                } else {
                    -amplitude
                }
            })
            .collect()
    }

    #[test]
    fn endpoint_after_speech_then_silence() {
        let mut s = vec![0i16; 800]; // 100 ms lead-in
        s.extend(tone(4000, 8000)); // 500 ms speech
        s.extend(vec![0i16; 4000]); // 500 ms silence
        s.extend(tone(4000, 8000)); // a second utterance, ignored
        assert_eq!(speech_end_sample(&s, 8000), Some(4800));
    }

    #[test]
    fn endpoint_needs_long_enough_speech_and_silence() {
        // 200 ms of speech is too short to count as an utterance.
        let mut s = tone(1600, 8000);
        s.extend(vec![0i16; 8000]);
        assert_eq!(speech_end_sample(&s, 8000), None);
        // A 200 ms pause inside speech does not end it.
        let mut s = tone(4000, 8000);
        s.extend(vec![0i16; 1600]);
        s.extend(tone(4000, 8000));
        s.extend(vec![0i16; 2400]);
        assert_eq!(speech_end_sample(&s, 8000), Some(9600));
        // Speech up to the end: no endpoint.
        assert_eq!(speech_end_sample(&tone(8000, 8000), 8000), None);
        // Quiet noise below −45 dBFS is not speech.
        assert_eq!(speech_end_sample(&tone(8000, 100), 8000), None);
    }
}
