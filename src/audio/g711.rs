//! G.711 μ-law / A-law over slices.
//!
//! `audio-codec-algorithms` provides bit-exact ITU-T G.191 codecs one sample at a time;
//! the pipeline works on 20 ms frames, so this module supplies the slice loops. Encoding
//! goes through tables indexed by the bits the encoder actually looks at (14 bits for
//! μ-law, 13 for A-law), which the benchmark showed to be several times faster than the
//! arithmetic encoder while staying bit-exact by construction (the tables are filled from
//! that encoder).

use std::sync::LazyLock;

use audio_codec_algorithms::{
    convert_alaw_to_ulaw, convert_ulaw_to_alaw, decode_alaw, decode_ulaw, encode_alaw, encode_ulaw,
};

// μ-law only looks at `sample >> 2` (14 significant bits), so 16 Ki entries cover every
// input; the offset maps the signed shifted value onto 0..16384.
const ULAW_SHIFT: u32 = 2;
const ULAW_ENTRIES: usize = 1 << (16 - ULAW_SHIFT);
// A-law looks at `sample >> 3` (13 significant bits).
const ALAW_SHIFT: u32 = 3;
const ALAW_ENTRIES: usize = 1 << (16 - ALAW_SHIFT);

static ULAW_ENCODE: LazyLock<Box<[u8; ULAW_ENTRIES]>> = LazyLock::new(|| {
    let mut table = Box::new([0u8; ULAW_ENTRIES]);
    for (i, code) in table.iter_mut().enumerate() {
        *code = encode_ulaw(sample_for_index(i, ULAW_SHIFT, ULAW_ENTRIES));
    }
    table
});

static ALAW_ENCODE: LazyLock<Box<[u8; ALAW_ENTRIES]>> = LazyLock::new(|| {
    let mut table = Box::new([0u8; ALAW_ENTRIES]);
    for (i, code) in table.iter_mut().enumerate() {
        *code = encode_alaw(sample_for_index(i, ALAW_SHIFT, ALAW_ENTRIES));
    }
    table
});

/// The smallest sample whose `>> shift` lands on table index `i`.
fn sample_for_index(i: usize, shift: u32, entries: usize) -> i16 {
    let shifted = i as i32 - (entries / 2) as i32;
    // In range by construction: |shifted| <= 2^(15 - shift).
    (shifted << shift) as i16
}

#[inline(always)]
fn table_index(sample: i16, shift: u32, entries: usize) -> usize {
    ((sample >> shift) as i32 + (entries / 2) as i32) as usize
}

/// The code of one sample, in `law` (μ-law or A-law; L16 is not a law).
#[inline]
pub fn encode_sample(law: super::Codec, sample: i16) -> u8 {
    match law {
        super::Codec::Pcma => {
            ALAW_ENCODE[table_index(sample, ALAW_SHIFT, ALAW_ENTRIES) & (ALAW_ENTRIES - 1)]
        }
        _ => ULAW_ENCODE[table_index(sample, ULAW_SHIFT, ULAW_ENTRIES) & (ULAW_ENTRIES - 1)],
    }
}

/// The sample of one code, in `law` (μ-law or A-law).
#[inline]
pub fn decode_sample(law: super::Codec, code: u8) -> i16 {
    match law {
        super::Codec::Pcma => decode_alaw(code),
        _ => decode_ulaw(code),
    }
}

/// Appends the μ-law encoding of `input` to `out`.
pub fn ulaw_encode(input: &[i16], out: &mut Vec<u8>) {
    let table: &[u8; ULAW_ENTRIES] = &ULAW_ENCODE;
    out.extend(
        input
            .iter()
            .map(|&s| table[table_index(s, ULAW_SHIFT, ULAW_ENTRIES) & (ULAW_ENTRIES - 1)]),
    );
}

/// Appends the linear samples of the μ-law codes in `input` to `out`.
pub fn ulaw_decode(input: &[u8], out: &mut Vec<i16>) {
    out.extend(input.iter().map(|&c| decode_ulaw(c)));
}

/// Appends the A-law encoding of `input` to `out`.
pub fn alaw_encode(input: &[i16], out: &mut Vec<u8>) {
    let table: &[u8; ALAW_ENTRIES] = &ALAW_ENCODE;
    out.extend(
        input
            .iter()
            .map(|&s| table[table_index(s, ALAW_SHIFT, ALAW_ENTRIES) & (ALAW_ENTRIES - 1)]),
    );
}

/// Appends the linear samples of the A-law codes in `input` to `out`.
pub fn alaw_decode(input: &[u8], out: &mut Vec<i16>) {
    out.extend(input.iter().map(|&c| decode_alaw(c)));
}

/// μ-law -> A-law with the G.711 Table 3 mapping.
///
/// Deliberately not decode + encode: G.711 defines the direct tables so that μ-A-μ
/// tandems are transparent, and 46 codes come out differently the other way.
pub fn ulaw_to_alaw(input: &[u8], out: &mut Vec<u8>) {
    out.extend(input.iter().map(|&c| convert_ulaw_to_alaw(c)));
}

/// A-law -> μ-law with the G.711 Table 4 mapping (see [`ulaw_to_alaw`] for why direct).
pub fn alaw_to_ulaw(input: &[u8], out: &mut Vec<u8>) {
    out.extend(input.iter().map(|&c| convert_alaw_to_ulaw(c)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::signal;

    fn all_samples() -> Vec<i16> {
        (i16::MIN..=i16::MAX).collect()
    }

    // --- independent oracles, written from the G.711 segment tables -------------------

    /// μ-law decode from the G.711 formula: 14-bit magnitude ((2m + 33) << e) - 33.
    fn spec_ulaw_decode(code: u8) -> i16 {
        let c = !code;
        let e = u32::from((c >> 4) & 7);
        let m = i32::from(c & 15);
        let mag = (((2 * m + 33) << e) - 33) * 4;
        (if c & 0x80 != 0 { -mag } else { mag }) as i16
    }

    /// A-law decode from the G.711 formula: 13-bit magnitude 2m+1 (e = 0) or (2m+33) << (e-1).
    fn spec_alaw_decode(code: u8) -> i16 {
        let c = code ^ 0x55;
        let e = u32::from((c >> 4) & 7);
        let m = i32::from(c & 15);
        let mag = if e == 0 {
            2 * m + 1
        } else {
            (2 * m + 33) << (e - 1)
        } * 8;
        (if c & 0x80 != 0 { mag } else { -mag }) as i16
    }

    /// μ-law encode by walking the segment decision levels (G.191 uses one's complement
    /// for negative inputs, hence `-v - 1`).
    fn spec_ulaw_encode(x: i16) -> u8 {
        let v = i32::from(x) >> 2;
        let (sign, mag) = if v < 0 { (0x80u8, -v - 1) } else { (0, v) };
        let biased = (mag + 33).min(8191);
        let mut seg = 0;
        while seg < 7 && biased >= (64 << seg) {
            seg += 1;
        }
        let mant = (biased >> (seg + 1)) - 16;
        !(sign | ((seg as u8) << 4) | mant as u8)
    }

    fn spec_alaw_encode(x: i16) -> u8 {
        let v = i32::from(x) >> 3;
        let (sign, mag) = if v < 0 { (0u8, -v - 1) } else { (0x80, v) };
        let (seg, mant) = if mag < 32 {
            (0, mag >> 1)
        } else {
            let mut seg = 1;
            while mag >= (32 << seg) {
                seg += 1;
            }
            (seg, (mag >> seg) - 16)
        };
        (sign | ((seg as u8) << 4) | mant as u8) ^ 0x55
    }

    /// The G.191 reference vectors `audio-codec-algorithms` ships (encode output for every
    /// input -32768..=32767), if its source is in the local cargo registry.
    fn g191_reference(name: &str) -> Option<Vec<u8>> {
        let home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo"))
            })?;
        for index in std::fs::read_dir(home.join("registry/src")).ok()?.flatten() {
            for krate in std::fs::read_dir(index.path()).ok()?.flatten() {
                let fname = krate.file_name();
                if fname
                    .to_string_lossy()
                    .starts_with("audio-codec-algorithms-0.8")
                {
                    if let Ok(bytes) = std::fs::read(krate.path().join("test-files").join(name)) {
                        return Some(bytes);
                    }
                }
            }
        }
        None
    }

    #[test]
    fn decode_all_256_codes_match_the_formula() {
        let codes: Vec<u8> = (0..=255).collect();
        let (mut u, mut a) = (Vec::new(), Vec::new());
        ulaw_decode(&codes, &mut u);
        alaw_decode(&codes, &mut a);
        for c in 0..=255u8 {
            assert_eq!(u[c as usize], spec_ulaw_decode(c), "μ-law code {c:#04x}");
            assert_eq!(a[c as usize], spec_alaw_decode(c), "A-law code {c:#04x}");
        }
        assert_eq!((u[0xFF], u[0x7F], u[0x80]), (0, 0, 32124));
        assert_eq!((a[0xD5], a[0x55], a[0xAA]), (8, -8, 32256));
    }

    #[test]
    fn encode_all_65536_inputs_match_the_spec_and_g191() {
        let all = all_samples();
        let (mut u, mut a) = (Vec::new(), Vec::new());
        ulaw_encode(&all, &mut u);
        alaw_encode(&all, &mut a);
        for (i, &x) in all.iter().enumerate() {
            assert_eq!(u[i], spec_ulaw_encode(x), "μ-law input {x}");
            assert_eq!(a[i], spec_alaw_encode(x), "A-law input {x}");
        }
        match (
            g191_reference("ulaw-reference.bin"),
            g191_reference("alaw-reference.bin"),
        ) {
            (Some(ur), Some(ar)) => {
                assert_eq!(u, ur, "μ-law vs G.191 reference vectors");
                assert_eq!(a, ar, "A-law vs G.191 reference vectors");
                eprintln!("G.711: all 65536 inputs match the G.191 reference vectors");
            }
            _ => eprintln!(
                "G.711: G.191 reference vectors (audio-codec-algorithms test-files) not found \
                 in the cargo registry; checked against the G.711 segment tables only"
            ),
        }
    }

    /// Round-trip consistency: every code is a fixed point (bar μ-law's negative zero),
    /// the quantiser is monotonic, and the error never exceeds half a step.
    #[test]
    fn quantiser_is_consistent_for_every_input() {
        type Codec = (
            fn(&[i16], &mut Vec<u8>),
            fn(&[u8], &mut Vec<i16>),
            &'static str,
        );
        let codecs: [Codec; 2] = [
            (ulaw_encode, ulaw_decode, "μ"),
            (alaw_encode, alaw_decode, "A"),
        ];
        for (enc, dec, name) in codecs {
            let all = all_samples();
            let mut codes = Vec::new();
            enc(&all, &mut codes);
            let mut back = Vec::new();
            dec(&codes, &mut back);
            let mut levels: Vec<i16> = Vec::new();
            dec(&(0..=255).collect::<Vec<u8>>(), &mut levels);
            let mut sorted = levels.clone();
            sorted.sort_unstable();
            sorted.dedup();
            for w in back.windows(2) {
                assert!(w[0] <= w[1], "{name}-law not monotonic");
            }
            for (&x, &y) in all.iter().zip(&back) {
                let i = sorted.partition_point(|&l| l < y);
                let below = if i > 0 { sorted[i - 1] } else { y };
                let above = sorted.get(i + 1).copied().unwrap_or(y);
                let half_step = (i32::from(above) - i32::from(below)) / 2;
                // Outside the top level the quantiser clips, as it must.
                let clipped = x > *sorted.last().unwrap() || x < sorted[0];
                assert!(
                    clipped || (i32::from(x) - i32::from(y)).abs() <= half_step.max(8),
                    "{name}-law: {x} -> {y}"
                );
            }
            let mut re = Vec::new();
            enc(&levels, &mut re);
            for c in 0..=255u8 {
                let negative_zero = name == "μ" && c == 0x7F;
                if !negative_zero {
                    assert_eq!(
                        re[c as usize], c,
                        "{name}-law code {c:#04x} not a fixed point"
                    );
                }
            }
        }
    }

    fn codec_snr(freq: f64, ulaw: bool) -> f64 {
        let x = signal::sine(8000, freq, -6.0, 8000);
        let mut codes = Vec::new();
        let mut y = Vec::new();
        if ulaw {
            ulaw_encode(&x, &mut codes);
            ulaw_decode(&codes, &mut y);
        } else {
            alaw_encode(&x, &mut codes);
            alaw_decode(&codes, &mut y);
        }
        signal::snr_db_at(&x, &y, 0)
    }

    /// Quantisation SNR of a -6 dBFS tone. 1020 Hz is the ITU test-tone choice: it is not
    /// a sub-multiple of 8 kHz, so samples land on every part of the quantiser. A 1 kHz
    /// tone hits the same 8 phases forever, and its SNR then depends on the starting phase
    /// (μ-law 33.9 / A-law 33.5 dB at phase 0, 39 / 38 dB at other phases); it is printed
    /// for comparison but not asserted on.
    #[test]
    fn sine_snr_matches_g711_physics() {
        let u = codec_snr(1020.0, true);
        let a = codec_snr(1020.0, false);
        let u1k = codec_snr(1000.0, true);
        let a1k = codec_snr(1000.0, false);
        eprintln!(
            "G.711 SNR at -6 dBFS: 1020 Hz μ-law {u:.2} dB, A-law {a:.2} dB; \
             1000 Hz (phase 0) μ-law {u1k:.2} dB, A-law {a1k:.2} dB"
        );
        // Expected values from quantising a continuous-phase -6 dBFS sine through the
        // G.711 segment tables (8 segments x 16 steps): μ-law 36.7 dB, A-law 37.2 dB.
        assert!((u - 36.7).abs() <= 1.5, "μ-law SNR {u}");
        assert!((a - 37.2).abs() <= 1.5, "A-law SNR {a}");
    }

    /// What the companded playback store relies on: a decoded code encodes back to a
    /// code that decodes to the same sample, for every code of both laws.
    #[test]
    fn decoded_codes_encode_back_to_the_same_sample() {
        for law in [super::super::Codec::Pcmu, super::super::Codec::Pcma] {
            for code in 0..=255u8 {
                let sample = decode_sample(law, code);
                assert_eq!(
                    decode_sample(law, encode_sample(law, sample)),
                    sample,
                    "{law:?} code {code:#04x}"
                );
            }
        }
    }

    #[test]
    fn law_conversion_uses_the_direct_tables() {
        let codes: Vec<u8> = (0..=255).collect();
        let mut direct = Vec::new();
        ulaw_to_alaw(&codes, &mut direct);
        let mut lin = Vec::new();
        ulaw_decode(&codes, &mut lin);
        let mut via_linear = Vec::new();
        alaw_encode(&lin, &mut via_linear);
        let u2a_diff = direct
            .iter()
            .zip(&via_linear)
            .filter(|(a, b)| a != b)
            .count();

        let mut direct_back = Vec::new();
        alaw_to_ulaw(&codes, &mut direct_back);
        let mut lin_a = Vec::new();
        alaw_decode(&codes, &mut lin_a);
        let mut via_linear_back = Vec::new();
        ulaw_encode(&lin_a, &mut via_linear_back);
        let a2u_diff = direct_back
            .iter()
            .zip(&via_linear_back)
            .filter(|(a, b)| a != b)
            .count();
        eprintln!("μ->A direct vs decode+encode: {u2a_diff} codes differ; A->μ: {a2u_diff}");
        assert_eq!(u2a_diff, 46);

        // The point of the direct tables: a μ-A-μ tandem leaves A-law codes of
        // μ-law origin unchanged.
        let mut tandem = Vec::new();
        alaw_to_ulaw(&direct, &mut tandem);
        let mut again = Vec::new();
        ulaw_to_alaw(&tandem, &mut again);
        assert_eq!(again, direct);
    }
}
