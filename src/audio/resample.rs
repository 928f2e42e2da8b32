//! Streaming sample-rate conversion between the phone side (8 kHz) and the providers
//! (16/24 kHz), and any other pair of rates that are multiples of 1 kHz.
//!
//! Providers send audio in bursts of arbitrary length while rubato wants fixed chunks,
//! and the filter state must survive from one message to the next or every message
//! border becomes a click. So one [`Resampler`] lives for a whole call and direction and
//! keeps a FIFO of input that has not yet made a full chunk.
//!
//! Filter choice (see `docs/AUDIO.md`): rubato's `Async` sinc with a Blackman-Harris
//! window ~7 ms long and *Nearest* interpolation with oversampling = out/gcd, which makes
//! every output instant land exactly on a precomputed filter phase (a synchronous
//! polyphase filter in effect). It has the lowest delay (~3.5 ms) that still keeps the
//! 300-3400 Hz band flat and aliases ~100 dB down.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Resampler as _, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use super::AudioError;

/// Filter length in milliseconds of input. 7 ms is 56 taps at 8 kHz: long enough for a
/// flat telephone band, short enough for ~3.5 ms of delay.
const TAPS_MS: u32 = 7;
/// Cutoff relative to the lower Nyquist: 3.8 kHz for an 8 kHz side, so 3.4 kHz is flat.
const CUTOFF: f32 = 0.95;
/// Input per rubato call. The pipeline moves audio in 20 ms frames, so a 20 ms chunk
/// means a steady 20 ms inbound stream never waits in the FIFO.
const CHUNK_MS: u32 = 20;
/// Bounds the filter table (`taps * oversampling` floats): 480 covers 1 kHz-grid rates
/// up to 480 kHz and 44.1k<->48k (160).
const MAX_OVERSAMPLING: u32 = 480;
const MIN_RATE: u32 = 1000;
const MAX_RATE: u32 = 384_000;

const SCALE_IN: f32 = 1.0 / 32768.0;
const SCALE_OUT: f32 = 32768.0;

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

struct Sinc {
    inner: Async<f32>,
    chunk: usize,
    /// Pending input as floats; never holds a full chunk between calls.
    fifo: Vec<f32>,
    /// rubato's output, sized to its maximum once.
    out_buf: Vec<f32>,
    /// Zero output samples still to emit before the first chunk (see `integer_delay`).
    pad: usize,
    delay: usize,
    /// Zero input samples fed first and zero output samples emitted first, to start
    /// again from after a [`Resampler::flush`].
    prime: usize,
    pad_at_start: usize,
    /// Real input samples taken and output samples emitted (padding included) since
    /// the start or the last flush: what a flush still owes.
    fed: u64,
    emitted: u64,
}

enum Kind {
    Identity,
    Sinc(Box<Sinc>),
}

/// A stateful band-limited resampler for one direction of one call.
pub struct Resampler {
    from: u32,
    to: u32,
    kind: Kind,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("delay_samples", &self.delay_samples())
            .finish()
    }
}

impl Resampler {
    /// Builds a resampler from `from_rate` to `to_rate` Hz. Equal rates give a copy.
    ///
    /// Fails for rates outside 1 kHz..384 kHz or pairs whose ratio needs more than 480
    /// filter phases (rates off a 1 kHz / 100 Hz grid relative to each other).
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Resampler, AudioError> {
        let err = |reason: String| AudioError::Resampler {
            from: from_rate,
            to: to_rate,
            reason,
        };
        for rate in [from_rate, to_rate] {
            if !(MIN_RATE..=MAX_RATE).contains(&rate) {
                return Err(err(format!(
                    "rate {rate} outside {MIN_RATE}..={MAX_RATE} Hz"
                )));
            }
        }
        if from_rate == to_rate {
            return Ok(Resampler {
                from: from_rate,
                to: to_rate,
                kind: Kind::Identity,
            });
        }
        let oversampling = to_rate / gcd(from_rate, to_rate);
        if oversampling > MAX_OVERSAMPLING {
            return Err(err(format!(
                "ratio needs {oversampling} filter phases (max {MAX_OVERSAMPLING})"
            )));
        }
        let taps = (from_rate * TAPS_MS).div_ceil(1000).next_multiple_of(8) as usize;
        let params = SincInterpolationParameters::new(taps, WindowFunction::BlackmanHarris)
            .f_cutoff(CUTOFF)
            .oversampling_factor(oversampling as usize)
            .interpolation(SincInterpolationType::Nearest);
        let chunk = (from_rate * CHUNK_MS).div_ceil(1000) as usize;
        let ratio = f64::from(to_rate) / f64::from(from_rate);
        let inner = Async::<f32>::new_sinc(ratio, 1.0, &params, chunk, 1, FixedAsync::Input)
            .map_err(|e| err(e.to_string()))?;
        let (prime, pad, delay) = integer_delay(from_rate, to_rate, taps);
        let out_buf = vec![0.0; inner.output_frames_max()];
        let mut fifo = Vec::with_capacity(chunk);
        fifo.resize(prime, 0.0);
        Ok(Resampler {
            from: from_rate,
            to: to_rate,
            kind: Kind::Sinc(Box::new(Sinc {
                inner,
                chunk,
                fifo,
                out_buf,
                pad,
                delay,
                prime,
                pad_at_start: pad,
                fed: 0,
                emitted: 0,
            })),
        })
    }

    pub fn from_rate(&self) -> u32 {
        self.from
    }

    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Resamples `input` (any length) and appends whatever output is ready to `out`.
    ///
    /// Output comes in whole 20 ms input chunks, so up to 20 ms of input may wait inside
    /// for the next call. Over a call, output length tracks `input * to / from` with the
    /// fixed [`delay_samples`](Self::delay_samples) and no drift.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        match &mut self.kind {
            Kind::Identity => out.extend_from_slice(input),
            Kind::Sinc(s) => s.feed(
                input,
                |x| f32::from(x) * SCALE_IN,
                |chunk| {
                    out.extend(chunk.iter().map(|&v| {
                        // Round half away from zero; `as` saturates, which is the clipping
                        // we want for overshoot near full scale.
                        let x = v * SCALE_OUT;
                        (x + 0.5f32.copysign(x)) as i16
                    }));
                },
            ),
        }
    }

    /// The end of a stream (an assistant reply): appends the output still owed for the
    /// input given so far (up to 20 ms waiting for a full chunk, plus the filter's
    /// delay), then starts again from a clean filter. So nothing of this stream comes out
    /// at the start of the next one, and the output of a stream is exactly its input's
    /// length (`delay_samples` + input × to / from, rounded up).
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        if let Kind::Sinc(s) = &mut self.kind {
            s.flush(self.from, self.to, |chunk| {
                out.extend(chunk.iter().map(|&v| {
                    let x = v * SCALE_OUT;
                    (x + 0.5f32.copysign(x)) as i16
                }));
            });
        }
    }

    /// [`process`](Self::process) on floats (full scale = ±1.0) without the i16 rounding,
    /// to measure the filter itself below the 16-bit noise floor.
    #[cfg(test)]
    pub(crate) fn process_f32(&mut self, input: &[f32], out: &mut Vec<f32>) {
        match &mut self.kind {
            Kind::Identity => out.extend_from_slice(input),
            Kind::Sinc(s) => s.feed(input, |x| x, |chunk| out.extend_from_slice(chunk)),
        }
    }

    /// Group delay in output samples: an impulse at input sample 0 peaks at this output
    /// sample. Excludes the wall-clock wait in the FIFO.
    pub fn delay_samples(&self) -> usize {
        match &self.kind {
            Kind::Identity => 0,
            Kind::Sinc(s) => s.delay,
        }
    }

    /// Input samples waiting for a full chunk.
    pub fn pending_input(&self) -> usize {
        match &self.kind {
            Kind::Identity => 0,
            Kind::Sinc(s) => s.fifo.len(),
        }
    }
}

/// Zero samples to feed in first, zero samples to emit first, and the resulting delay in
/// output samples.
///
/// With this filter rubato delays by `taps * r / 2 - 1 - gcd / from` output samples
/// (r = to / from; measured, and pinned by `impulse_response_is_centred_on_delay_samples`),
/// which is fractional when decimating. Priming with `k` input zeros adds `k * r`: the
/// smallest `k` that makes the delay whole. Then padding the output with up to
/// `to / gcd - 1` zeros makes it a whole number of samples at *both* rates, so a round
/// trip such as 8k -> 24k -> 8k is an exact whole-sample shift and output lines up
/// sample-exactly with a reference rendered at either rate. Both together cost less than
/// `1 / gcd` s (<= 1 ms on the 1 kHz grid); for rate pairs where that would exceed
/// 2 ms the alignment is skipped and the delay rounded.
fn integer_delay(from: u32, to: u32, taps: usize) -> (usize, usize, usize) {
    let g = u64::from(gcd(from, to));
    let (a, b) = (u64::from(to) / g, u64::from(from) / g);
    // In units of 1/b output samples the delay is taps*a/2 - 1 - b (+ a per primed zero).
    let base = (taps as u64 * a / 2).saturating_sub(1);
    let rounded = ((base + b / 2) / b).saturating_sub(1) as usize;
    if g < 500 {
        return (0, 0, rounded);
    }
    let Some(prime) = (0..b).find(|k| (base + k * a).is_multiple_of(b)) else {
        // Unreachable for coprime a, b.
        return (0, 0, rounded);
    };
    let delay = ((base + prime * a) / b).saturating_sub(1);
    let pad = (a - delay % a) % a;
    (prime as usize, pad as usize, (delay + pad) as usize)
}

impl Sinc {
    /// Moves `input` through the FIFO, running rubato on every full chunk and handing
    /// each chunk's output to `emit`.
    fn feed<T: Copy>(
        &mut self,
        input: &[T],
        to_f32: impl Fn(T) -> f32,
        mut emit: impl FnMut(&[f32]),
    ) {
        self.fed += input.len() as u64;
        let mut emitted = 0u64;
        let mut emit = |chunk: &[f32]| {
            emitted += chunk.len() as u64;
            emit(chunk);
        };
        let mut rest = input;
        while !rest.is_empty() {
            let take = (self.chunk - self.fifo.len()).min(rest.len());
            self.fifo.extend(rest[..take].iter().map(|&x| to_f32(x)));
            rest = &rest[take..];
            if self.fifo.len() == self.chunk {
                while self.pad > 0 {
                    const ZEROS: [f32; 64] = [0.0; 64];
                    let n = self.pad.min(ZEROS.len());
                    emit(&ZEROS[..n]);
                    self.pad -= n;
                }
                emit(self.run_chunk());
            }
        }
        self.emitted += emitted;
    }

    /// Pushes zeros through until the output owed for `fed` input samples is out (no
    /// more), then resets the filter, the FIFO and the counts to the start state.
    fn flush(&mut self, from: u32, to: u32, mut emit: impl FnMut(&[f32])) {
        let owed = self.delay as u64 + (self.fed * u64::from(to)).div_ceil(u64::from(from));
        // The delay is under one chunk's output, so two chunks always suffice; bounded
        // anyway.
        for _ in 0..4 {
            if self.fed == 0 || self.emitted >= owed {
                break;
            }
            self.fifo.resize(self.chunk, 0.0);
            while self.pad > 0 && self.emitted < owed {
                const ZEROS: [f32; 64] = [0.0; 64];
                let n = self.pad.min(ZEROS.len());
                let n = n.min((owed - self.emitted) as usize);
                emit(&ZEROS[..n]);
                self.pad -= n;
                self.emitted += n as u64;
            }
            let left = (owed - self.emitted) as usize;
            let chunk = self.run_chunk();
            let n = chunk.len().min(left);
            emit(&chunk[..n]);
            self.emitted += n as u64;
        }
        self.inner.reset();
        self.fifo.clear();
        self.fifo.resize(self.prime, 0.0);
        self.pad = self.pad_at_start;
        self.fed = 0;
        self.emitted = 0;
    }

    fn run_chunk(&mut self) -> &[f32] {
        let n_out = self.inner.output_frames_next().min(self.out_buf.len());
        let result = match (
            InterleavedSlice::new(&self.fifo[..], 1, self.chunk),
            InterleavedSlice::new_mut(&mut self.out_buf[..], 1, n_out.max(1)),
        ) {
            (Ok(inp), Ok(mut outp)) => self
                .inner
                .process_into_buffer(&inp, &mut outp, None)
                .map_err(|e| e.to_string()),
            _ => Err("buffer size".to_string()),
        };
        self.fifo.clear();
        match result {
            Ok((_, produced)) => &self.out_buf[..produced.min(self.out_buf.len())],
            Err(e) => {
                // Buffers are sized from rubato's own figures, so this cannot happen;
                // if it ever does, keep the timeline intact with silence rather than
                // shifting all later audio.
                tracing::error!(error = %e, "resampler chunk failed, emitting silence");
                self.out_buf[..n_out].fill(0.0);
                &self.out_buf[..n_out]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::signal;

    fn run(from: u32, to: u32, input: &[i16]) -> Vec<i16> {
        let mut r = Resampler::new(from, to).unwrap();
        let mut out = Vec::new();
        r.process(input, &mut out);
        out
    }

    #[test]
    fn rejects_bad_rates() {
        assert!(Resampler::new(0, 8000).is_err());
        assert!(Resampler::new(8000, 1_000_000).is_err());
        assert!(Resampler::new(8000, 44_099).is_err());
        for (a, b) in [
            (8000, 16000),
            (8000, 24000),
            (16000, 24000),
            (8000, 48000),
            (16000, 48000),
            (44100, 48000),
            (22050, 8000),
        ] {
            assert!(Resampler::new(a, b).is_ok(), "{a}->{b}");
            assert!(Resampler::new(b, a).is_ok(), "{b}->{a}");
        }
        let mut same = Resampler::new(8000, 8000).unwrap();
        let mut out = Vec::new();
        same.process(&[1, 2, 3], &mut out);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(same.delay_samples(), 0);
    }

    /// Tones across the telephone band survive 8k -> 24k -> 8k within ±0.5 dB.
    #[test]
    fn passband_is_flat_through_a_round_trip() {
        let mut worst: f64 = 0.0;
        let mut f = 300.0;
        while f <= 3400.0 {
            let x = signal::sine(8000, f, -6.0, 8000);
            let up = run(8000, 24000, &x);
            let back = run(24000, 8000, &up);
            // Skip the filters' warm-up.
            let gain = signal::tone_power_db(&back[800..], 8000, f) + 6.0;
            worst = worst.max(gain.abs());
            assert!(gain.abs() <= 0.5, "{f} Hz: {gain:+.2} dB");
            f += 100.0;
        }
        eprintln!("resampler 8k->24k->8k: passband 300-3400 Hz within ±{worst:.3} dB");
    }

    /// Every supported pair keeps a mid-band tone at its level.
    #[test]
    fn all_rate_pairs_pass_a_tone() {
        for (a, b) in [
            (8000, 16000),
            (8000, 24000),
            (16000, 24000),
            (8000, 48000),
            (16000, 48000),
        ] {
            for (from, to) in [(a, b), (b, a)] {
                let x = signal::sine(from, 1020.0, -6.0, from as usize);
                let y = run(from, to, &x);
                let lvl = signal::tone_power_db(&y[to as usize / 10..], to, 1020.0);
                assert!((lvl + 6.0).abs() < 0.1, "{from}->{to}: {lvl}");
            }
        }
    }

    /// A 10 kHz tone at 24 kHz would fold to 2 kHz at 8 kHz; the anti-alias filter must
    /// keep it >= 80 dB below the input level. Measured on the float path, because the
    /// real figure is below the 16-bit floor (the i16 output is exactly silent).
    #[test]
    fn alias_rejection_24k_to_8k() {
        for (f_in, f_alias) in [(10000.0, 2000.0), (5000.0, 3000.0), (4400.0, 3600.0)] {
            let x = signal::sine(24000, f_in, -6.0, 48000);
            let xf: Vec<f32> = x.iter().map(|&v| f32::from(v) / 32768.0).collect();
            let mut r = Resampler::new(24000, 8000).unwrap();
            let mut y = Vec::new();
            r.process_f32(&xf, &mut y);
            let rejection = -6.0 - signal::tone_power_db_f32(&y[800..], 8000, f_alias);
            eprintln!(
                "resampler 24k->8k: {f_in} Hz alias at {f_alias} Hz is {rejection:.1} dB down"
            );
            if f_in >= 5000.0 {
                assert!(rejection >= 80.0, "{f_in} Hz: only {rejection} dB");
            }
            let yi = run(24000, 8000, &x);
            if f_in >= 5000.0 {
                assert!(signal::tone_power_db(&yi[800..], 8000, f_alias) <= -86.0);
            }
        }
    }

    /// The exact group delay of every pair (centroid of the float impulse response, which
    /// is symmetric) is the integer `delay_samples()`: this pins the priming arithmetic in
    /// `integer_delay` to what rubato actually does.
    #[test]
    fn impulse_response_is_centred_on_delay_samples() {
        for (from, to) in [
            (8000u32, 16000u32),
            (8000, 24000),
            (16000, 24000),
            (8000, 48000),
            (16000, 48000),
            (44100, 48000),
            (22050, 8000),
            (11000, 8000),
        ] {
            for (from, to) in [(from, to), (to, from)] {
                let mut r = Resampler::new(from, to).unwrap();
                let mut x = vec![0.0f32; from as usize / 5];
                x[0] = 1.0;
                let mut y = Vec::new();
                r.process_f32(&x, &mut y);
                let sum: f64 = y.iter().map(|&v| f64::from(v)).sum();
                let centroid: f64 = y
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| i as f64 * f64::from(v))
                    .sum::<f64>()
                    / sum;
                // Pairs off a 500 Hz grid are not aligned: their delay is rounded.
                let tol = if gcd(from, to) >= 500 { 0.01 } else { 0.5 };
                assert!(
                    (centroid - r.delay_samples() as f64).abs() < tol,
                    "{from}->{to}: centroid {centroid}, delay_samples {}",
                    r.delay_samples()
                );
                // DC gain 1 (in output-rate units, the sum is the ratio).
                assert!((sum * f64::from(from) / f64::from(to) - 1.0).abs() < 0.01);
            }
        }
    }

    /// The delay the resampler reports is the delay measured against a reference
    /// rendered directly at the output rate.
    #[test]
    fn group_delay_matches_delay_samples() {
        for (from, to) in [
            (8000, 16000),
            (16000, 8000),
            (8000, 24000),
            (24000, 8000),
            (16000, 24000),
            (24000, 16000),
            (8000, 48000),
            (48000, 16000),
        ] {
            let x = signal::speech_like(from, 1.5, 3);
            let reference = signal::speech_like(to, 1.5, 3);
            let r = Resampler::new(from, to).unwrap();
            let reported = r.delay_samples();
            let y = run(from, to, &x);
            let lag = signal::best_lag(&reference, &y, 2 * reported + 8);
            let snr = signal::snr_db_at(&reference, &y, lag);
            eprintln!(
                "resampler {from}->{to}: delay_samples {reported} ({:.2} ms), measured {lag}, SNR {snr:.1} dB",
                reported as f64 * 1000.0 / f64::from(to)
            );
            assert_eq!(lag, reported as isize, "{from}->{to}");
            assert!(snr > 40.0, "{from}->{to}: SNR {snr}");
        }
    }

    /// Ten minutes fed in irregular bursts: output count = input * ratio within the fixed
    /// delay at every point, so no drift; and bursts give exactly the samples that
    /// regular 20 ms frames give.
    #[test]
    fn sample_conservation_over_ten_minutes() {
        let (from, to) = (24000u32, 8000u32);
        let mut r = Resampler::new(from, to).unwrap();
        let mut regular = Resampler::new(from, to).unwrap();
        // 440 Hz repeats exactly every second, so the 1 s table loops seamlessly.
        let tone = signal::sine(from, 440.0, -20.0, from as usize);
        let total = from as usize * 600;
        let mut fed = 0usize;
        let mut out = Vec::new();
        let mut step = 0usize;
        let mut max_dev: f64 = 0.0;
        while fed < total {
            // Sizes from 1 sample to ~85 ms, none a multiple of the 20 ms chunk.
            step = (step * 7919 + 13) % 2047 + 1;
            let start = fed % tone.len();
            let n = step.min(total - fed).min(tone.len() - start);
            r.process(&tone[start..start + n], &mut out);
            fed += n;
            // Input that has reached the filter; 24k->8k primes one zero (integer_delay).
            let consumed = fed as f64 - r.pending_input() as f64 + 1.0;
            let expected = consumed * f64::from(to) / f64::from(from);
            max_dev = max_dev.max((out.len() as f64 - expected).abs());
        }
        let mut out_regular = Vec::new();
        for _ in 0..600 {
            for frame in tone.chunks(from as usize / 50) {
                regular.process(frame, &mut out_regular);
            }
        }
        let delay = r.delay_samples();
        let expected = total * to as usize / from as usize;
        eprintln!(
            "resampler 10 min 24k->8k in bursts: in {fed}, out {}, in*ratio {expected}, \
             max |out - consumed*ratio| {max_dev:.2} samples (delay {delay})",
            out.len()
        );
        assert!(max_dev <= (delay + 1) as f64, "drift: {max_dev}");
        assert!(out.len().abs_diff(expected) <= delay + 1);
        assert_eq!(out.len(), out_regular.len());
        assert!(out == out_regular, "bursts and 20 ms frames disagree");
    }

    /// A continuous sine fed in 20 ms frames (and in odd pieces) comes out as a
    /// continuous sine: no sample anywhere deviates from the ideal delayed tone.
    #[test]
    fn no_discontinuity_at_frame_borders() {
        for (from, to) in [
            (8000u32, 24000u32),
            (24000, 8000),
            (16000, 24000),
            (8000, 16000),
        ] {
            for piece in [from as usize / 50, 37] {
                let f = 1020.0;
                let x = signal::sine(from, f, -6.0, from as usize * 2);
                let mut r = Resampler::new(from, to).unwrap();
                let d = r.delay_samples();
                let mut y = Vec::new();
                for c in x.chunks(piece) {
                    r.process(c, &mut y);
                }
                let ideal = signal::sine(to, f, -6.0, y.len());
                // Peak of a -6 dBFS sine.
                let a = 32768.0 * 10f64.powf(-6.0 / 20.0);
                let mut worst = 0.0f64;
                for i in (d + to as usize / 50)..y.len() {
                    let e = (f64::from(y[i]) - f64::from(ideal[i - d])).abs();
                    worst = worst.max(e);
                }
                // A dropped or repeated sample would be an error of ~2*pi*f/fs of the
                // amplitude (>= 25% at 24 kHz); filter ripple and rounding stay far below.
                assert!(
                    worst < a * 0.01,
                    "{from}->{to} pieces {piece}: max error {worst}"
                );
            }
        }
    }

    /// A reply ending with a loud marker, then a silent reply: after `flush` the whole
    /// first reply (marker included, exactly delay + input × ratio samples) is out, and
    /// nothing of it comes out with the second one.
    #[test]
    fn flush_gives_the_whole_tail_and_leaves_nothing_for_the_next_reply() {
        for (from, to) in [
            (24000u32, 8000u32),
            (16000, 8000),
            (8000, 24000),
            (8000, 16000),
        ] {
            let mut r = Resampler::new(from, to).unwrap();
            // 1010 ms (not a multiple of the 20 ms chunk): quiet speech, then 10 ms of a
            // full-scale 1 kHz marker at the very end.
            let mut reply = signal::sine(from, 300.0, -40.0, from as usize);
            reply.extend(signal::sine(from, 1000.0, -1.0, from as usize / 100));
            let mut out = Vec::new();
            r.process(&reply, &mut out);
            assert!(
                r.pending_input() > 0,
                "{from}->{to}: a tail waits in the FIFO"
            );
            r.flush(&mut out);
            let owed = r.delay_samples() + (reply.len() * to as usize).div_ceil(from as usize);
            assert_eq!(out.len(), owed, "{from}->{to}: exactly the reply's length");
            let marker = &out[out.len() - to as usize / 200..];
            assert!(
                signal::rms_dbfs(marker) > -10.0,
                "{from}->{to}: the marker is in this reply's output"
            );
            // The next reply is silence: its output carries no trace of the marker.
            let mut next = Vec::new();
            r.process(&vec![0i16; from as usize / 10], &mut next);
            r.flush(&mut next);
            assert_eq!(
                next.len(),
                r.delay_samples() + (from as usize / 10 * to as usize).div_ceil(from as usize)
            );
            let peak = next.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
            assert_eq!(
                peak, 0,
                "{from}->{to}: a fragment of the previous reply leaked"
            );
        }
    }

    #[test]
    fn flush_of_nothing_gives_nothing_and_identity_holds_nothing() {
        let mut r = Resampler::new(24000, 8000).unwrap();
        let mut out = Vec::new();
        r.flush(&mut out);
        assert!(out.is_empty());
        let mut id = Resampler::new(8000, 8000).unwrap();
        id.process(&[1, 2, 3], &mut out);
        id.flush(&mut out);
        assert_eq!(out, [1, 2, 3]);
    }
}
