//! L16 wire bytes <-> `i16` samples.
//!
//! `mod_audio_stream` and the providers both speak little-endian signed 16-bit PCM, but
//! WebSocket messages are plain byte strings with no alignment guarantee, so samples are
//! assembled byte-wise rather than by reinterpreting memory.

/// Appends the samples encoded in `bytes` (little-endian) to `out`.
///
/// A trailing odd byte is ignored: streaming callers (the transcoder, the reframer) keep it
/// themselves and prepend it to the next message.
pub fn l16_to_samples(bytes: &[u8], out: &mut Vec<i16>) {
    let start = out.len();
    let n = bytes.len() / 2;
    out.resize(start + n, 0);
    // Writing into a pre-sized slice lets the compiler vectorise the loop; `extend` over a
    // mapping iterator does not on every target.
    for (dst, src) in out[start..].iter_mut().zip(bytes.chunks_exact(2)) {
        *dst = i16::from_le_bytes([src[0], src[1]]);
    }
}

/// Appends `samples` to `out` as little-endian bytes.
pub fn samples_to_l16(samples: &[i16], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + samples.len() * 2, 0);
    for (dst, s) in out[start..].chunks_exact_mut(2).zip(samples) {
        dst.copy_from_slice(&s.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_value() {
        let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
        let mut bytes = Vec::new();
        samples_to_l16(&all, &mut bytes);
        assert_eq!(bytes.len(), all.len() * 2);
        let mut back = Vec::new();
        l16_to_samples(&bytes, &mut back);
        assert_eq!(back, all);
    }

    #[test]
    fn little_endian_layout() {
        let mut bytes = vec![0xAA];
        samples_to_l16(&[0x1234, -2], &mut bytes);
        assert_eq!(bytes, [0xAA, 0x34, 0x12, 0xFE, 0xFF]);
    }

    #[test]
    fn appends_and_ignores_trailing_odd_byte() {
        let mut out = vec![7i16];
        l16_to_samples(&[0x01, 0x00, 0xFF, 0x7F, 0x55], &mut out);
        assert_eq!(out, [7, 1, i16::MAX]);
        out.clear();
        l16_to_samples(&[0x42], &mut out);
        assert!(out.is_empty());
    }
}
