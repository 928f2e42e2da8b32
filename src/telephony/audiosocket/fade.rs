//! The fade-out sent on barge-in. Asterisk plays every frame the moment it arrives and
//! cannot take one back, so a barge-in is "stop sending": the caller hears the last
//! frame end on whatever sample it ended on and then silence, which clicks when that
//! sample is loud. Instead we send a few milliseconds that start where the last frame
//! ended and ramp down to zero: its last samples mirrored (so the junction has no
//! jump) under a linear ramp. Pure.

/// Length of the fade-out tail.
pub const FADE_MS: u32 = 5;

/// The fade-out that follows `last` (little-endian 16-bit mono at `rate`), as
/// little-endian bytes; empty when nothing was played.
pub fn fade_out(last: &[u8], rate: u32) -> Vec<u8> {
    let samples: Vec<i16> = last
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let n = ((rate * FADE_MS / 1000) as usize).min(samples.len());
    let mut out = Vec::with_capacity(n * 2);
    for i in 0..n {
        // Mirrored: the tail runs backwards from the last sample played.
        let s = f32::from(samples[samples.len() - 1 - i]);
        let gain = (n - i) as f32 / (n + 1) as f32;
        let v = (s * gain).round() as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn de(bytes: &[u8]) -> Vec<i16> {
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    #[test]
    fn starts_where_the_frame_ended_and_decays_to_silence() {
        let frame = vec![10_000i16; 160];
        let tail = de(&fade_out(&le(&frame), 8000));
        assert_eq!(tail.len(), 40, "5 ms at 8 kHz");
        // No jump at the junction: the first sample is close to the last played one.
        assert!(tail[0] > 9_000, "{}", tail[0]);
        // Strictly decreasing to near zero.
        assert!(tail.windows(2).all(|w| w[1] < w[0]));
        assert!(tail[39].abs() < 300, "{}", tail[39]);
    }

    #[test]
    fn follows_the_waveform_backwards() {
        let frame: Vec<i16> = (0..320).map(|i| (i * 50) as i16).collect();
        let tail = de(&fade_out(&le(&frame), 16000));
        assert_eq!(tail.len(), 80);
        assert!(tail[0] > 15_000 && tail[0] <= 15_950);
    }

    #[test]
    fn nothing_played_gives_nothing() {
        assert!(fade_out(&[], 8000).is_empty());
    }
}
