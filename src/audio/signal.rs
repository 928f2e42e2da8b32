//! Deterministic test signals and the measurements used to judge audio paths.
//!
//! Unit tests, the end-to-end tests, the benchmarks and the CLI all need the same
//! self-contained stimuli (no audio files on a fresh machine) and the same yardsticks, so
//! they live here rather than in each test. Everything is pure and seeded.
//!
//! Level convention (AES17): 0 dBFS is the RMS of a full-scale sine, i.e. a sine whose
//! peak is 32768 measures 0 dBFS, and `rms_dbfs(sine(.., -6.0, ..))` is -6.

use std::f64::consts::PI;

const FULL_SCALE: f64 = 32768.0;

/// Highest partial of [`speech_like`]: the top of the telephone band, so the same
/// continuous waveform can be rendered at any rate >= 8 kHz without aliasing and two
/// renderings at different rates are the *same signal* (which is what lets tests measure
/// a resampler against a reference made directly at the output rate).
pub const SPEECH_TOP_HZ: f64 = 3400.0;

/// Max lag searched by [`snr_db`]: 20 ms at 24 kHz, above any delay in the pipeline.
pub const DEFAULT_MAX_LAG: usize = 480;

// Lag search correlates at most this many samples per lag, which bounds its cost to
// roughly WINDOW * (2 * max_lag + 1) multiply-adds however long the signals are.
const LAG_WINDOW: usize = 16384;

fn to_i16(v: f64) -> i16 {
    v.round().clamp(-32768.0, 32767.0) as i16
}

fn amplitude(dbfs: f64) -> f64 {
    FULL_SCALE * 10f64.powf(dbfs / 20.0)
}

/// `n` samples of a sine starting at phase 0, peak `dbfs` relative to full scale.
pub fn sine(rate: u32, freq_hz: f64, dbfs: f64, n: usize) -> Vec<i16> {
    let a = amplitude(dbfs);
    let w = 2.0 * PI * freq_hz / f64::from(rate);
    (0..n).map(|i| to_i16(a * (w * i as f64).sin())).collect()
}

/// An exponential (constant time per octave) sweep from `f0_hz` to `f1_hz` over `n`
/// samples at `dbfs`. Phase is computed in closed form, so it is exact at every sample.
pub fn sweep(rate: u32, f0_hz: f64, f1_hz: f64, dbfs: f64, n: usize) -> Vec<i16> {
    let a = amplitude(dbfs);
    let fs = f64::from(rate);
    let dur = n as f64 / fs;
    let k = (f1_hz / f0_hz).ln();
    (0..n)
        .map(|i| {
            let t = i as f64 / fs;
            let phase = if k.abs() < 1e-12 || dur == 0.0 {
                2.0 * PI * f0_hz * t
            } else {
                2.0 * PI * f0_hz * dur / k * ((t / dur * k).exp() - 1.0)
            };
            to_i16(a * phase.sin())
        })
        .collect()
}

/// SplitMix64: tiny, seedable, and identical on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// One voiced syllable: pitch glides linearly, formants are fixed, envelope is a
/// raised cosine over the whole syllable.
struct Syllable {
    start: f64,
    dur: f64,
    f0_start: f64,
    f0_slope: f64,
    /// Phase of the fundamental (radians) at `start`, accumulated analytically so that
    /// the waveform does not depend on the sample rate.
    phase0: f64,
    formants: [(f64, f64); 3],
    gain: f64,
}

// (F1, F2, F3) of five vowels, roughly an adult average.
const VOWELS: [[f64; 3]; 5] = [
    [730.0, 1090.0, 2440.0],
    [530.0, 1840.0, 2480.0],
    [270.0, 2290.0, 3010.0],
    [570.0, 840.0, 2410.0],
    [300.0, 870.0, 2240.0],
];

fn plan_speech(secs: f64, seed: u64) -> Vec<Syllable> {
    let mut rng = Rng(seed ^ 0x5EED_5EED_0BAD_CAFE);
    let mut out = Vec::new();
    let mut t = 0.1;
    let mut phase = 0.0;
    while t < secs {
        // A phrase: one speaker pitch, 3..8 syllables at ~4 Hz, then a pause.
        let base_f0 = rng.range(95.0, 230.0);
        let n_syl = 3 + (rng.next_u64() % 6) as usize;
        for _ in 0..n_syl {
            let dur = rng.range(0.18, 0.32);
            let f0_start = base_f0 * rng.range(0.9, 1.12);
            let f0_end = base_f0 * rng.range(0.85, 1.1);
            let v = VOWELS[(rng.next_u64() % VOWELS.len() as u64) as usize];
            let formants = [
                (v[0] * rng.range(0.92, 1.08), 90.0),
                (v[1] * rng.range(0.92, 1.08), 120.0),
                (v[2] * rng.range(0.95, 1.05), 180.0),
            ];
            let f0_slope = (f0_end - f0_start) / dur;
            out.push(Syllable {
                start: t,
                dur,
                f0_start,
                f0_slope,
                phase0: phase,
                formants,
                gain: rng.range(0.6, 1.0),
            });
            phase = (phase + 2.0 * PI * (f0_start * dur + 0.5 * f0_slope * dur * dur))
                .rem_euclid(2.0 * PI);
            t += dur;
        }
        t += rng.range(0.2, 0.7);
    }
    out
}

/// One 20 ms frame of voiced [`speech_like`] audio at `rate` (a syllable, not a pause):
/// what benchmarks feed through the per-frame paths.
pub fn voiced_frame(rate: u32) -> Vec<i16> {
    let all = speech_like(rate, 1.0, 42);
    let n = rate as usize / 50;
    let start = all.chunks(n).position(|c| rms_dbfs(c) > -30.0).unwrap_or(0) * n;
    all[start..start + n].to_vec()
}

/// `secs` seconds of voiced, speech-like sound at `rate`: phrases of 3-8 syllables at a
/// ~4 Hz syllable rate separated by 0.2-0.7 s pauses, each syllable a gliding pitch
/// (95-230 Hz) whose harmonics are shaped by three vowel formants, up to
/// [`SPEECH_TOP_HZ`]. Active speech sits around -18 dBFS RMS, peaks stay below full scale.
///
/// The waveform is a function of time only, so `speech_like(8000, s, x)` and
/// `speech_like(24000, s, x)` are samplings of the same signal.
pub fn speech_like(rate: u32, secs: f64, seed: u64) -> Vec<i16> {
    let fs = f64::from(rate);
    let n = (secs * fs).round() as usize;
    let plan = plan_speech(secs, seed);
    let mut out = vec![0i16; n];
    let level = amplitude(-18.0);
    let mut weights: Vec<f64> = Vec::with_capacity(64);
    for syl in &plan {
        let first = (syl.start * fs).ceil() as usize;
        let last = (((syl.start + syl.dur) * fs).floor() as usize).min(n.saturating_sub(1));
        if first >= n {
            break;
        }
        // Harmonic weights from the formant resonances at the syllable's mean pitch,
        // normalised to unit power so every vowel sits at the same level.
        let mean_f0 = syl.f0_start + 0.5 * syl.f0_slope * syl.dur;
        weights.clear();
        let mut k = 1.0;
        while k * mean_f0 < SPEECH_TOP_HZ {
            let f = k * mean_f0;
            let mut w = 0.0;
            for &(fc, bw) in &syl.formants {
                w += 1.0 / (1.0 + ((f - fc) / bw).powi(2));
            }
            weights.push(w * (300.0 / f.max(300.0)).sqrt() + 0.02);
            k += 1.0;
        }
        let norm = (weights.iter().map(|w| w * w).sum::<f64>() / 2.0).sqrt();
        for (i, slot) in out.iter_mut().enumerate().take(last + 1).skip(first) {
            let tau = i as f64 / fs - syl.start;
            let env = 0.5 - 0.5 * (2.0 * PI * tau / syl.dur).cos();
            let f0 = syl.f0_start + syl.f0_slope * tau;
            let phase =
                syl.phase0 + 2.0 * PI * (syl.f0_start * tau + 0.5 * syl.f0_slope * tau * tau);
            let mut acc = 0.0;
            for (h, w) in weights.iter().enumerate() {
                let k = (h + 1) as f64;
                // Fade a partial out as its instantaneous frequency nears the band top, so
                // the glide never switches one on or off abruptly.
                let f = k * f0;
                let fade = ((SPEECH_TOP_HZ - f) / 200.0).clamp(0.0, 1.0);
                // Fixed per-harmonic phase offsets keep the crest factor speech-like.
                acc += w * fade * (k * phase + 0.7 * k * k).sin();
            }
            *slot = to_i16(level * syl.gain * env * acc / norm);
        }
    }
    out
}

/// RMS level in dBFS (0 dBFS = full-scale sine). Silence gives `-inf`.
pub fn rms_dbfs(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let p = samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64;
    10.0 * (p / (FULL_SCALE * FULL_SCALE / 2.0)).log10()
}

/// Level (dBFS, 0 = full-scale sine) of the component at `freq_hz`, by a Hann-windowed
/// Goertzel filter over all of `samples`. The window keeps leakage from other tones
/// below ~-100 dB a few bins away, so a weak alias can be measured next to nothing else.
/// Resolution is about `2 * rate / len` Hz.
pub fn tone_power_db(samples: &[i16], rate: u32, freq_hz: f64) -> f64 {
    goertzel_db(
        samples.iter().map(|&x| f64::from(x) / FULL_SCALE),
        samples.len(),
        rate,
        freq_hz,
    )
}

/// [`tone_power_db`] for float samples (full scale = ±1.0), to measure below the
/// 16-bit noise floor.
pub fn tone_power_db_f32(samples: &[f32], rate: u32, freq_hz: f64) -> f64 {
    goertzel_db(
        samples.iter().map(|&x| f64::from(x)),
        samples.len(),
        rate,
        freq_hz,
    )
}

fn goertzel_db(samples: impl Iterator<Item = f64>, n: usize, rate: u32, freq_hz: f64) -> f64 {
    if n < 2 {
        return f64::NEG_INFINITY;
    }
    let w = 2.0 * PI * freq_hz / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut wsum = 0.0;
    let step = 2.0 * PI / (n - 1) as f64;
    for (i, x) in samples.enumerate() {
        let win = 0.5 - 0.5 * (step * i as f64).cos();
        wsum += win;
        let s0 = x * win + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0);
    20.0 * (2.0 * power.sqrt() / wsum).log10()
}

fn valid_range(r_len: usize, t_len: usize, lag: isize) -> (usize, usize) {
    // Indices i of `reference` for which test[i + lag] exists.
    let lo = if lag < 0 { lag.unsigned_abs() } else { 0 };
    let hi = if lag >= 0 {
        r_len.min(t_len.saturating_sub(lag as usize))
    } else {
        r_len.min(t_len + lag.unsigned_abs())
    };
    (lo, hi.max(lo))
}

/// The lag `L` in `-max_lag..=max_lag` that maximises the normalised cross-correlation
/// of `reference[i]` with `test[i + L]`: positive means `test` is late by `L` samples.
/// Only the first [`LAG_WINDOW`] samples where every lag overlaps are correlated, so
/// start the signals with something other than silence. Returns 0 if nothing overlaps.
pub fn best_lag(reference: &[i16], test: &[i16], max_lag: usize) -> isize {
    let m = max_lag as isize;
    // One window valid for every lag keeps the correlations comparable.
    let (lo, _) = valid_range(reference.len(), test.len(), -m);
    let (_, hi) = valid_range(reference.len(), test.len(), m);
    let hi = hi.min(lo + LAG_WINDOW);
    let mut best = (f64::NEG_INFINITY, 0isize);
    if hi <= lo {
        return 0;
    }
    for lag in -m..=m {
        let (mut xy, mut yy) = (0.0f64, 0.0f64);
        for i in lo..hi {
            let x = f64::from(reference[i]);
            let y = f64::from(test[(i as isize + lag) as usize]);
            xy += x * y;
            yy += y * y;
        }
        let score = if yy > 0.0 {
            xy / yy.sqrt()
        } else {
            f64::NEG_INFINITY
        };
        if score > best.0 {
            best = (score, lag);
        }
    }
    best.1
}

/// SNR (dB) of `test` against `reference` at a fixed `lag` (see [`best_lag`]): `test` is
/// first scaled by the least-squares gain, so a pure level change is not counted as
/// noise; everything else (quantisation, filtering, distortion) is. Computed over all
/// overlapping samples. `inf` if identical, `-inf` if there is no overlap or signal.
pub fn snr_db_at(reference: &[i16], test: &[i16], lag: isize) -> f64 {
    let (lo, hi) = valid_range(reference.len(), test.len(), lag);
    let (mut xx, mut xy, mut yy) = (0.0f64, 0.0f64, 0.0f64);
    for i in lo..hi {
        let x = f64::from(reference[i]);
        let y = f64::from(test[(i as isize + lag) as usize]);
        xx += x * x;
        xy += x * y;
        yy += y * y;
    }
    if xx == 0.0 || yy == 0.0 {
        return f64::NEG_INFINITY;
    }
    // Residual energy of x - g*y with the optimal g = xy / yy.
    let noise = (xx - xy * xy / yy).max(0.0);
    if noise == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (xx / noise).log10()
}

/// SNR (dB) of `test` against `reference` after aligning them with [`best_lag`] over at
/// most `max_lag` samples and applying the least-squares gain (see [`snr_db_at`]).
pub fn snr_db_within(reference: &[i16], test: &[i16], max_lag: usize) -> f64 {
    snr_db_at(reference, test, best_lag(reference, test, max_lag))
}

/// [`snr_db_within`] with [`DEFAULT_MAX_LAG`].
pub fn snr_db(reference: &[i16], test: &[i16]) -> f64 {
    snr_db_within(reference, test, DEFAULT_MAX_LAG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_level_and_tone_power() {
        let s = sine(8000, 1020.0, -6.0, 8000);
        assert!((rms_dbfs(&s) + 6.0).abs() < 0.01, "{}", rms_dbfs(&s));
        assert!((tone_power_db(&s, 8000, 1020.0) + 6.0).abs() < 0.05);
        // 500 Hz away there is nothing.
        assert!(tone_power_db(&s, 8000, 1520.0) < -90.0);
        assert_eq!(rms_dbfs(&[]), f64::NEG_INFINITY);
        assert_eq!(rms_dbfs(&[0; 10]), f64::NEG_INFINITY);
    }

    #[test]
    fn sweep_covers_its_band() {
        let s = sweep(16000, 200.0, 6000.0, -10.0, 32000);
        assert!((rms_dbfs(&s) + 10.0).abs() < 0.1);
        // The first half stays below the geometric mean frequency.
        let mid = (200.0f64 * 6000.0).sqrt();
        let first = &s[..16000];
        assert!(tone_power_db(first, 16000, 5000.0) < tone_power_db(first, 16000, 500.0) - 20.0);
        assert!(mid > 1000.0);
    }

    #[test]
    fn speech_like_is_deterministic_band_limited_and_rate_independent() {
        let a = speech_like(8000, 3.0, 7);
        assert_eq!(a, speech_like(8000, 3.0, 7));
        assert_ne!(a, speech_like(8000, 3.0, 8));
        assert_eq!(a.len(), 24000);
        let lvl = rms_dbfs(&a);
        assert!((-30.0..-15.0).contains(&lvl), "level {lvl}");
        // It has pauses: some 50 ms windows are silent.
        assert!(a.chunks(400).any(|c| c.iter().all(|&s| s == 0)));
        // The 24 kHz rendering, decimated by 3, is the 8 kHz rendering.
        let b = speech_like(24000, 3.0, 7);
        let dec: Vec<i16> = b.iter().step_by(3).copied().collect();
        let snr = snr_db_at(&a, &dec, 0);
        assert!(snr > 60.0, "renderings differ: {snr} dB");
        // Nothing above the telephone band.
        assert!(tone_power_db(&b, 24000, 6000.0) < -90.0);
    }

    #[test]
    fn lag_and_snr() {
        let a = speech_like(8000, 2.0, 1);
        let mut delayed = vec![0i16; 37];
        delayed.extend(a.iter().map(|&s| s / 2));
        assert_eq!(best_lag(&a, &delayed, 100), 37);
        assert_eq!(best_lag(&delayed, &a, 100), -37);
        // Half the level, perfectly aligned: the gain is fitted away.
        assert!(snr_db(&a, &delayed) > 40.0);
        assert!(snr_db_at(&a, &delayed, 0) < 3.0);
        let noisy: Vec<i16> = a
            .iter()
            .enumerate()
            .map(|(i, &s)| s + if i % 2 == 0 { 30 } else { -30 })
            .collect();
        let snr = snr_db_at(&a, &noisy, 0);
        let expected = rms_dbfs(&a) - rms_dbfs(&[30i16; 100]);
        assert!((snr - expected).abs() < 0.5, "{snr} vs {expected}");
    }
}
