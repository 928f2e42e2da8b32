//! Streaming sample-rate conversion between the phone side (8 kHz) and the providers
//! (16/24 kHz), and any other pair of rates that are multiples of 1 kHz.
//!
//! A synchronous polyphase FIR filter of our own. For `to / from = L / M` (reduced) it is
//! a Kaiser-windowed sinc prototype at the rate `from * L`, split into `L` phases of `K`
//! taps: output `n` is one dot product of phase `(n * M) mod L` with the `K` newest input
//! samples up to `floor(n * M / L)`. Every output instant lands exactly on a precomputed
//! phase, so nothing is interpolated between phases and nothing drifts.
//!
//! Why our own rather than rubato (used before): rubato built its sinc table inside every
//! resampler (its constructor taking a prebuilt interpolator is private), so each call
//! carried its own copy of the table plus rubato's buffers, our FIFO and output scratch:
//! ~5 KB per direction. And it wanted fixed 20 ms input chunks, so up to 20 ms of input
//! waited in a FIFO before any output. Here the table depends only on the rate pair: it
//! is computed once per pair and shared by every call through a process-wide cache, and a
//! resampler holds only its input history (284 bytes for 8k -> 24k, 604 for 24k -> 8k,
//! plus a 136-byte struct). Output comes as soon as the input sample that completes it
//! arrives. A 20 ms frame costs a third (upsampling) to a half (decimating) of rubato's
//! CPU time (`cargo bench --bench audio -- resample`).
//!
//! The filter is defined relative to the lower rate `f_lo` of the pair, so every pair
//! keeps the same band relative to its narrower side:
//! - cutoff at 0.95 of `f_lo / 2` (3.8 kHz for an 8 kHz side), Kaiser beta 9, and
//!   19 samples of `f_lo` each side of the centre (2.375 ms at 8 kHz): 300-3400 Hz stays
//!   flat within 0.15 dB per pass (±0.29 dB through 8k -> 24k -> 8k), and everything from
//!   4.6 kHz up, which would fold into the telephone band when decimating to 8 kHz, is at
//!   least 92 dB down (rubato's filter: 93 dB at 5 kHz, with a 3.5 ms delay). 19 is the
//!   shortest length that gives both at this cutoff; shorter filters pass the tests only
//!   with the cutoff moved up to Nyquist, which lets 4-4.6 kHz fold into 3.4-4 kHz.
//! - The centre is then rounded up so that the delay is a whole number of samples at both
//!   rates (a multiple of `1 / gcd(from, to)` s), for pairs with a gcd >= 500 Hz, where
//!   that costs <= 2 ms; other pairs (44.1k <-> 48k) are aligned to the output rate
//!   only. So a round trip such as 8k -> 24k -> 8k is an exact whole-sample shift, and
//!   output lines up sample-exactly with a reference rendered at either rate. No zeros
//!   are primed or padded: the prototype's centre itself sits on an output instant.
//!
//! | pair | phases `L` | taps `K` | delay |
//! |---|---|---|---|
//! | 8k -> 16k / 16k -> 8k | 2 / 1 | 40 / 80 | 38 / 19 samples = 2.375 ms |
//! | 8k -> 24k / 24k -> 8k | 3 / 1 | 40 / 120 | 57 / 19 samples = 2.375 ms |
//! | 16k -> 24k / 24k -> 16k | 3 / 2 | 48 / 64 | 30 / 20 samples = 1.25 ms |
//! | 8k -> 48k / 48k -> 8k | 6 / 1 | 40 / 232 | 114 / 19 samples = 2.375 ms |
//! | 44.1k -> 48k | 160 | 40 | 21 samples = 0.44 ms |
//!
//! `K` is taps per output, at the input rate, including the zero padding to a multiple of
//! 8 that keeps the dot product in whole SIMD vectors; the table is `L * K` floats
//! (480 bytes for 8k <-> 24k, 25 KB for 44.1k -> 48k). The test
//! `filter_parameters_per_pair` prints these.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::AudioError;

/// Half the prototype's length, in samples of the lower rate of the pair: with the
/// cutoff and beta below, the shortest filter that keeps 300-3400 Hz within ±0.15 dB and
/// folds nothing above -92 dB into the telephone band.
const HALF_TAPS_LO: u64 = 19;
/// Cutoff relative to the lower Nyquist: 3.8 kHz for an 8 kHz side, so 3.4 kHz is flat.
const CUTOFF: f64 = 0.95;
/// Kaiser window shape: ~92 dB stopband, the attenuation rubato's Blackman-Harris gave.
const KAISER_BETA: f64 = 9.0;
/// Taps per phase are padded (with zeros) to a multiple of this, so the dot product runs
/// in whole vectors of 8 floats with no scalar tail.
const LANES: usize = 8;
/// Input samples taken into the history per step: the history buffer holds `K - 1` old
/// samples plus this many, and the old ones are moved down once per step. 32 keeps the
/// move under ~10 % of the multiply-adds while the buffer stays a few hundred bytes.
const BLOCK: usize = 32;
/// Bounds the filter table (`phases * taps` floats): 480 covers 1 kHz-grid rates up to
/// 480 kHz and 44.1k<->48k (160).
const MAX_PHASES: u32 = 480;
const MIN_RATE: u32 = 1000;
const MAX_RATE: u32 = 384_000;
/// Rates come from the calls (a stream's metadata), so the cache of shared tables is
/// bounded: beyond this many pairs, or for tables of extreme pairs larger than
/// `MAX_CACHED_COEFFS` floats (256 KB), a resampler gets a table of its own.
const MAX_CACHED_PAIRS: usize = 16;
const MAX_CACHED_COEFFS: usize = 64 * 1024;

/// Input samples enter the history in units of one i16 LSB, so the i16 path needs no
/// scaling; the float path (full scale ±1.0) is scaled by a power of two, which is exact.
#[cfg(test)]
const SCALE_F32: f32 = 32768.0;

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The shape of the filter for one rate pair: pure arithmetic on the rates, so it is
/// recomputed for every resampler while the coefficients are shared.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// `L = to / gcd`: the prototype runs at `from * L`, where an output instant falls at
    /// one of `L` offsets (phases) after the newest input sample.
    phases: usize,
    /// `M = from / gcd`, split as `M = whole * L + frac` so advancing to the next output
    /// needs no division.
    whole: usize,
    frac: usize,
    /// Taps per phase (`K`), padded to a multiple of `LANES`.
    taps: usize,
    /// Centre of the prototype, in samples at the prototype's rate `from * L`; a multiple
    /// of `M`, so it lands on an output instant.
    centre: u64,
    /// Group delay in output samples: `centre / M`.
    delay: usize,
    /// Lower of the two rates, Hz: the cutoff's reference.
    f_lo: u32,
    /// The prototype's rate `from * L`, Hz.
    rate: u64,
}

impl Plan {
    fn new(from: u32, to: u32) -> Plan {
        let g = gcd(from, to);
        let (l, m) = (u64::from(to / g), u64::from(from / g));
        let f_lo = from.min(to);
        let rate = u64::from(from) * l;
        let min_centre = (HALF_TAPS_LO * rate).div_ceil(u64::from(f_lo));
        // Whole samples at both rates (a multiple of L and of M, coprime) costs up to
        // 1 / gcd s of extra delay; only worth it when that is small.
        let grid = if g >= 500 { l * m } else { m };
        let centre = min_centre.next_multiple_of(grid);
        let len = 2 * centre + 1;
        let taps = (len.div_ceil(l) as usize).next_multiple_of(LANES);
        Plan {
            phases: l as usize,
            whole: (m / l) as usize,
            frac: (m % l) as usize,
            taps,
            centre,
            delay: (centre / m) as usize,
            f_lo,
            rate,
        }
    }

    /// The coefficient table: `phases` rows of `taps` floats. Row `p` holds the
    /// prototype's samples `p, p + L, p + 2L, ...` in reverse, so that it lines up with the
    /// history window (oldest sample first) and the dot product walks both forwards.
    /// Each row is normalised to a sum of 1: every phase then passes DC exactly, so the
    /// phases do not modulate a constant signal.
    fn design(&self) -> Box<[f32]> {
        let (l, k) = (self.phases, self.taps);
        let len = 2 * self.centre + 1;
        // Cutoff in cycles per prototype sample.
        let fc = CUTOFF * f64::from(self.f_lo) / 2.0 / self.rate as f64;
        let half = self.centre as f64 + 1.0;
        let norm = bessel_i0(KAISER_BETA);
        let proto = |t: u64| -> f64 {
            let x = t as f64 - self.centre as f64;
            let arg = 2.0 * std::f64::consts::PI * fc * x;
            let sinc = if x == 0.0 { 1.0 } else { arg.sin() / arg };
            let r = x / half;
            sinc * bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / norm
        };
        let mut table = vec![0.0f32; l * k].into_boxed_slice();
        let mut row = vec![0.0f64; k];
        for (p, out) in table.chunks_exact_mut(k).enumerate() {
            for (j, slot) in row.iter_mut().enumerate() {
                let t = (p + j * l) as u64;
                *slot = if t < len { proto(t) } else { 0.0 };
            }
            let sum: f64 = row.iter().sum();
            // Every phase reaches into the main lobe, so the sum is near 1 / L of the
            // whole and positive; the guard only keeps a degenerate row finite.
            let scale = if sum > 1e-9 { 1.0 / sum } else { 1.0 };
            for (j, &v) in row.iter().enumerate() {
                out[k - 1 - j] = (v * scale) as f32;
            }
        }
        table
    }
}

/// Modified Bessel function of the first kind, order 0 (for the Kaiser window), by its
/// power series, which converges fast for the arguments used here (<= ~10).
fn bessel_i0(x: f64) -> f64 {
    let q = x * x / 4.0;
    let (mut sum, mut term) = (1.0f64, 1.0f64);
    for k in 1..200 {
        term *= q / f64::from(k * k);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// The table for a pair, computed once per pair and process and shared by every
/// resampler of that pair (a call per direction), so a new call allocates only its
/// history.
fn shared_table(from: u32, to: u32, plan: &Plan) -> Arc<[f32]> {
    type Cache = Mutex<HashMap<(u32, u32), Arc<[f32]>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    // A panic elsewhere while holding the lock cannot leave the map inconsistent (an
    // insert either happened or not), so a poisoned lock is still usable.
    if let Some(t) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&(from, to))
    {
        return Arc::clone(t);
    }
    // Designed outside the lock: other calls starting meanwhile are not held up.
    let table: Arc<[f32]> = plan.design().into();
    let mut map = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = map.get(&(from, to)) {
        // Another call designed the same table meanwhile: use the shared one.
        return Arc::clone(t);
    }
    if map.len() < MAX_CACHED_PAIRS && table.len() <= MAX_CACHED_COEFFS {
        map.insert((from, to), Arc::clone(&table));
    }
    table
}

/// The dot product of the history window with one phase. Eight independent partial sums
/// (two SSE registers, or one AVX) let the compiler vectorise it without reassociating
/// float additions itself, and keep the result independent of how the input was split.
/// (Whole `[f32; 8]` chunks and a plain sum at the end: with a pairwise reduction tree
/// LLVM's SLP vectoriser picks 2-float vectors and the loop runs at half speed.)
#[inline]
fn dot(window: &[f32], taps: &[f32]) -> f32 {
    let (xs, _) = window.as_chunks::<LANES>();
    let (hs, _) = taps.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (x, h) in xs.iter().zip(hs) {
        for i in 0..LANES {
            acc[i] += x[i] * h[i];
        }
    }
    acc.iter().sum()
}

/// Rounds half away from zero and saturates (overshoot near full scale clips). In f64,
/// where `y + 0.5` is exact for every f32 `y` in range, so values just below .5 do not
/// round up.
#[inline]
fn to_i16(y: f32) -> i16 {
    let y = f64::from(y);
    (y + 0.5f64.copysign(y)) as i16
}

struct Poly {
    plan: Plan,
    table: Arc<[f32]>,
    /// Input history in i16 units: `len` valid samples, of which the last `taps - 1`
    /// are kept between steps. Zeros at the start (the stream's silent past).
    hist: Box<[f32]>,
    len: usize,
    /// End (exclusive) in `hist` of the window for the next output, which is ready when
    /// `next_end <= len`.
    next_end: usize,
    /// Phase of the next output.
    phase: usize,
    /// Input samples taken since the start or the last flush.
    fed: u64,
}

enum Kind {
    Identity,
    Poly(Poly),
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
        let phases = to_rate / gcd(from_rate, to_rate);
        if phases > MAX_PHASES {
            return Err(err(format!(
                "ratio needs {phases} filter phases (max {MAX_PHASES})"
            )));
        }
        let plan = Plan::new(from_rate, to_rate);
        let table = shared_table(from_rate, to_rate, &plan);
        // Room for one output's advance (`M / L` inputs) must fit in a step, or heavy
        // decimation could never reach its next output.
        let block = BLOCK.max(plan.whole + 1);
        let mut poly = Poly {
            plan,
            table,
            hist: vec![0.0; plan.taps - 1 + block].into_boxed_slice(),
            len: 0,
            next_end: 0,
            phase: 0,
            fed: 0,
        };
        poly.reset();
        Ok(Resampler {
            from: from_rate,
            to: to_rate,
            kind: Kind::Poly(poly),
        })
    }

    pub fn from_rate(&self) -> u32 {
        self.from
    }

    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Resamples `input` (any length) and appends the output it completes to `out`.
    ///
    /// No input waits for a chunk: after `n` input samples in all, exactly
    /// `ceil(n * to / from)` output samples are out, each delayed by the filter's
    /// [`delay_samples`](Self::delay_samples). Splitting the input differently gives the
    /// same samples.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        match &mut self.kind {
            Kind::Identity => out.extend_from_slice(input),
            Kind::Poly(p) => {
                out.reserve(p.outputs_for(input.len()));
                p.feed(input, f32::from, |y| out.push(to_i16(y)));
            }
        }
    }

    /// The end of a stream (an assistant reply): appends the output still owed for the
    /// input given so far (the filter's delay: the last `delay_samples` output samples,
    /// computed against silence), then starts again from a clean filter. So nothing of
    /// this stream comes out at the start of the next one, and the output of a stream is
    /// exactly its input's length (`delay_samples` + input × to / from, rounded up).
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        if let Kind::Poly(p) = &mut self.kind {
            p.flush(|y| out.push(to_i16(y)));
        }
    }

    /// [`process`](Self::process) on floats (full scale = ±1.0) without the i16 rounding,
    /// to measure the filter itself below the 16-bit noise floor.
    #[cfg(test)]
    pub(crate) fn process_f32(&mut self, input: &[f32], out: &mut Vec<f32>) {
        match &mut self.kind {
            Kind::Identity => out.extend_from_slice(input),
            Kind::Poly(p) => p.feed(input, |x| x * SCALE_F32, |y| out.push(y / SCALE_F32)),
        }
    }

    /// Group delay in output samples: an impulse at input sample 0 peaks at this output
    /// sample. Output is never held back beyond it (there are no chunks).
    pub fn delay_samples(&self) -> usize {
        match &self.kind {
            Kind::Identity => 0,
            Kind::Poly(p) => p.plan.delay,
        }
    }

    /// Input samples given whose output at [`delay_samples`](Self::delay_samples) is not
    /// out yet: the tail of the stream the filter still holds back by its delay (about
    /// `delay_samples * from / to`), which [`flush`](Self::flush) pushes out. Nothing
    /// waits for more input beyond that. Input sample `k` is out once output sample
    /// `k * to / from + delay_samples` is.
    pub fn pending_input(&self) -> usize {
        match &self.kind {
            Kind::Identity => 0,
            Kind::Poly(p) => p.pending_input(),
        }
    }

    /// The coefficient table, to check that resamplers of a pair share one.
    #[cfg(test)]
    fn table(&self) -> Option<&Arc<[f32]>> {
        match &self.kind {
            Kind::Identity => None,
            Kind::Poly(p) => Some(&p.table),
        }
    }

    /// Heap bytes this resampler owns alone (the shared table not included).
    #[cfg(test)]
    fn own_heap_bytes(&self) -> usize {
        match &self.kind {
            Kind::Identity => 0,
            Kind::Poly(p) => std::mem::size_of_val(&*p.hist),
        }
    }
}

impl Poly {
    /// Start state: the history is `taps - 1` zeros, and output 0 (phase 0) is due as
    /// soon as input sample 0 arrives.
    fn reset(&mut self) {
        let k = self.plan.taps;
        self.hist[..k - 1].fill(0.0);
        self.len = k - 1;
        self.next_end = k;
        self.phase = 0;
        self.fed = 0;
    }

    /// Output samples that `n` more input samples complete (at most one too many, for
    /// reserving).
    fn outputs_for(&self, n: usize) -> usize {
        (n * self.plan.phases).div_ceil(self.plan.whole * self.plan.phases + self.plan.frac) + 1
    }

    /// Output samples out so far: output `n` needs input `floor(n * M / L)`, so after
    /// `fed` inputs outputs `0..ceil(fed * L / M)` are out.
    fn emitted(&self) -> u64 {
        let (l, m) = self.ratio();
        (self.fed * l).div_ceil(m)
    }

    fn ratio(&self) -> (u64, u64) {
        let l = self.plan.phases as u64;
        (l, self.plan.whole as u64 * l + self.plan.frac as u64)
    }

    fn pending_input(&self) -> usize {
        let (l, m) = self.ratio();
        let due = self.emitted().saturating_sub(self.plan.delay as u64);
        // Input k is out once output k * L / M + delay is: k < due * M / L.
        let done = (due * m).div_ceil(l).min(self.fed);
        (self.fed - done) as usize
    }

    /// Takes `input` into the history step by step, emitting every output whose newest
    /// input sample has arrived.
    fn feed<T: Copy>(
        &mut self,
        mut input: &[T],
        to_f32: impl Fn(T) -> f32,
        mut emit: impl FnMut(f32),
    ) {
        self.fed += input.len() as u64;
        let Plan {
            taps: k,
            phases,
            whole,
            frac,
            ..
        } = self.plan;
        while !input.is_empty() {
            let take = (self.hist.len() - self.len).min(input.len());
            let (now, rest) = input.split_at(take);
            for (slot, &x) in self.hist[self.len..self.len + take].iter_mut().zip(now) {
                *slot = to_f32(x);
            }
            self.len += take;
            input = rest;
            while self.next_end <= self.len {
                let window = &self.hist[self.next_end - k..self.next_end];
                let row = &self.table[self.phase * k..(self.phase + 1) * k];
                emit(dot(window, row));
                self.phase += frac;
                self.next_end += whole;
                if self.phase >= phases {
                    self.phase -= phases;
                    self.next_end += 1;
                }
            }
            // Keep the newest `k - 1` samples: all any later output reaches back to.
            let drop = self.len - (k - 1);
            self.hist.copy_within(drop..self.len, 0);
            self.len = k - 1;
            self.next_end -= drop;
        }
    }

    /// Emits the `delay` output samples still owed for the stream (computed against
    /// zeros after its end, and no more), then resets to the start state.
    fn flush(&mut self, mut emit: impl FnMut(f32)) {
        if self.fed > 0 {
            let (l, m) = self.ratio();
            let owed = self.emitted() + self.plan.delay as u64;
            // Enough zeros to complete output `owed - 1`; the excess output is dropped.
            let mut zeros = (owed * m).div_ceil(l).saturating_sub(self.fed);
            let mut left = self.plan.delay;
            const ZEROS: [f32; 64] = [0.0; 64];
            while zeros > 0 {
                let n = zeros.min(ZEROS.len() as u64);
                self.feed(
                    &ZEROS[..n as usize],
                    |x| x,
                    |y| {
                        if left > 0 {
                            emit(y);
                            left -= 1;
                        }
                    },
                );
                zeros -= n;
            }
        }
        self.reset();
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
    /// is symmetric) is the integer `delay_samples()`: this pins the centre arithmetic in
    /// `Plan::new` to what the filter actually does.
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
            // Sizes from 1 sample to ~85 ms, none a multiple of a 20 ms frame.
            step = (step * 7919 + 13) % 2047 + 1;
            let start = fed % tone.len();
            let n = step.min(total - fed).min(tone.len() - start);
            r.process(&tone[start..start + n], &mut out);
            fed += n;
            // Input whose output is out; it comes out `delay` output samples later.
            let consumed = fed as f64 - r.pending_input() as f64;
            let expected = consumed * f64::from(to) / f64::from(from) + r.delay_samples() as f64;
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
             max |out - consumed*ratio - delay| {max_dev:.2} samples (delay {delay}; \
             the most is while the first input is still inside the filter)",
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
            // 1010 ms (not a multiple of a 20 ms frame): quiet speech, then 10 ms of a
            // full-scale 1 kHz marker at the very end.
            let mut reply = signal::sine(from, 300.0, -40.0, from as usize);
            reply.extend(signal::sine(from, 1000.0, -1.0, from as usize / 100));
            let mut out = Vec::new();
            r.process(&reply, &mut out);
            assert!(
                r.pending_input() > 0,
                "{from}->{to}: the filter holds a tail back by its delay"
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

    /// Resamplers of one pair (every call, both of a call's directions of that pair) use
    /// one table: a new call allocates only its history.
    #[test]
    fn resamplers_of_a_pair_share_one_table() {
        let a = Resampler::new(8000, 24000).unwrap();
        let mut b = Resampler::new(8000, 24000).unwrap();
        let back = Resampler::new(24000, 8000).unwrap();
        let (ta, tb, tback) = (
            a.table().unwrap(),
            b.table().unwrap(),
            back.table().unwrap(),
        );
        assert!(
            Arc::ptr_eq(ta, tb),
            "two 8k->24k resamplers share the table"
        );
        assert!(!Arc::ptr_eq(ta, tback), "another pair has its own");
        // A flush resets the state, not the table.
        let mut out = Vec::new();
        b.process(&[1000; 160], &mut out);
        b.flush(&mut out);
        assert!(Arc::ptr_eq(a.table().unwrap(), b.table().unwrap()));
        assert!(Resampler::new(8000, 8000).unwrap().table().is_none());
    }

    /// What one call's resampler costs on its own: the struct and its history, well
    /// under 1 KB for the telephone pairs (rubato's was ~5 KB per direction).
    #[test]
    fn a_resampler_holds_only_a_small_history() {
        for (from, to) in [(8000, 24000), (24000, 8000), (8000, 16000), (16000, 8000)] {
            let r = Resampler::new(from, to).unwrap();
            let bytes = std::mem::size_of::<Resampler>() + r.own_heap_bytes();
            eprintln!(
                "resampler {from}->{to}: {} bytes struct + {} bytes history",
                std::mem::size_of::<Resampler>(),
                r.own_heap_bytes()
            );
            assert!(bytes < 1024, "{from}->{to}: {bytes} bytes per resampler");
        }
    }

    /// Output does not wait for a chunk: every input sample completes its outputs at once,
    /// `ceil(n * to / from)` after `n` inputs, however the input is split.
    #[test]
    fn output_comes_as_soon_as_the_input_does() {
        for (from, to) in [
            (8000u32, 24000u32),
            (24000, 8000),
            (16000, 24000),
            (24000, 16000),
        ] {
            let mut r = Resampler::new(from, to).unwrap();
            let mut out = Vec::new();
            let mut fed = 0usize;
            for n in [1usize, 1, 2, 3, 5, 160, 7, 480] {
                r.process(&vec![100i16; n], &mut out);
                fed += n;
                assert_eq!(
                    out.len(),
                    (fed * to as usize).div_ceil(from as usize),
                    "{from}->{to} after {fed} samples"
                );
            }
        }
    }

    /// The filter per pair (the module documentation's table comes from this).
    #[test]
    fn filter_parameters_per_pair() {
        for (from, to) in [
            (8000u32, 16000u32),
            (16000, 8000),
            (8000, 24000),
            (24000, 8000),
            (16000, 24000),
            (24000, 16000),
            (8000, 48000),
            (48000, 8000),
            (44100, 48000),
            (22050, 8000),
        ] {
            let p = Plan::new(from, to);
            let delay_ms = p.delay as f64 * 1000.0 / f64::from(to);
            eprintln!(
                "resampler {from}->{to}: L = {} phases, K = {} taps ({} KB table), delay {} samples = {delay_ms:.3} ms",
                p.phases,
                p.taps,
                p.phases * p.taps * 4 / 1024,
                p.delay
            );
            assert_eq!(p.taps % LANES, 0);
            // Never longer than rubato's ~3.5 ms.
            assert!(delay_ms <= 3.5, "{from}->{to}: {delay_ms} ms");
        }
    }

    /// i16 output rounds half away from zero, saturates, and does not round a value just
    /// below one half up (which `(y + 0.5) as i16` in f32 would).
    #[test]
    fn output_rounding() {
        let below_half = 0.5f32 - f32::EPSILON / 4.0;
        assert!(below_half < 0.5);
        for (y, want) in [
            (below_half, 0i16),
            (-below_half, 0),
            (0.5, 1),
            (-0.5, -1),
            (2.5, 3),
            (-2.5, -3),
            (1.4999999, 1),
            (32767.4, 32767),
            (40000.0, i16::MAX),
            (-40000.0, i16::MIN),
            (f32::NAN, 0),
        ] {
            assert_eq!(to_i16(y), want, "{y}");
        }
    }
}
