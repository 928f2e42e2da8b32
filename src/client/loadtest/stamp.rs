//! A (call, sequence) stamp hidden in the first 20 samples of a caller frame, so the
//! mock provider can tell exactly which frame an `input_audio_buffer.append` carries.
//!
//! The caller sends L16 (as `mod_audio_stream` does). With `audio_format = "pcmu"` the
//! daemon encodes it to μ-law without resampling, and μ-law encode(decode(b)) == b for
//! every code except 0x7F (negative zero), so L16 samples made by decoding chosen μ-law
//! bytes arrive at the provider as those very bytes. Each stamp byte is 0xA0 | nibble,
//! behind a 4-byte magic; anything else (resampled pcm24 audio, silence) does not parse.

use voicebridge::audio::g711;

/// μ-law bytes that start every stamped frame.
const MAGIC: [u8; 4] = [0xB1, 0xB2, 0xB3, 0xB4];
/// Bytes (= samples) the stamp occupies: magic, 8 nibbles of call index, 8 of sequence.
pub const STAMP_LEN: usize = MAGIC.len() + 16;

/// The μ-law bytes of the stamp for frame `seq` of call `call`.
pub fn ulaw_bytes(call: u32, seq: u32) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    out[..4].copy_from_slice(&MAGIC);
    for i in 0..8 {
        out[4 + i] = 0xA0 | ((call >> (28 - 4 * i)) & 0xF) as u8;
        out[12 + i] = 0xA0 | ((seq >> (28 - 4 * i)) & 0xF) as u8;
    }
    out
}

/// Writes the stamp as L16 little-endian samples over the start of `frame`.
pub fn write_l16(frame: &mut [u8], call: u32, seq: u32) {
    let mut samples = Vec::with_capacity(STAMP_LEN);
    g711::ulaw_decode(&ulaw_bytes(call, seq), &mut samples);
    for (dst, s) in frame.chunks_exact_mut(2).zip(samples) {
        dst.copy_from_slice(&s.to_le_bytes());
    }
}

/// The (call, seq) stamped at the start of μ-law `bytes`, if there is one.
pub fn read_ulaw(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < STAMP_LEN || bytes[..4] != MAGIC {
        return None;
    }
    let mut call = 0u32;
    let mut seq = 0u32;
    for i in 0..8 {
        let (c, s) = (bytes[4 + i], bytes[12 + i]);
        if c & 0xF0 != 0xA0 || s & 0xF0 != 0xA0 {
            return None;
        }
        call = (call << 4) | u32::from(c & 0xF);
        seq = (seq << 4) | u32::from(s & 0xF);
    }
    Some((call, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_the_daemons_l16_to_ulaw_encoding() {
        let mut frame = vec![0u8; 320];
        write_l16(&mut frame, 987_654, 0xDEAD_BEEF);
        let samples: Vec<i16> = frame
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        let mut ulaw = Vec::new();
        g711::ulaw_encode(&samples, &mut ulaw);
        assert_eq!(read_ulaw(&ulaw), Some((987_654, 0xDEAD_BEEF)));
    }

    #[test]
    fn ordinary_audio_has_no_stamp() {
        assert_eq!(read_ulaw(&[0xFF; 160]), None);
        assert_eq!(read_ulaw(&[0xB1, 0xB2, 0xB3]), None);
    }
}
