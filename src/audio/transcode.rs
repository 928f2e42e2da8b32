//! One conversion step between a call-side and a provider-side format.
//!
//! The session should not care whether a provider wants L16/24k, L16/16k or G.711, so it
//! holds one [`Transcoder`] per direction and feeds it whatever bytes arrive. Equal
//! formats are copied, PCMU<->PCMA uses the G.711 direct tables, everything else goes
//! linear -> (resample) -> encode through the thread's scratch buffers
//! ([`super::scratch`]), so a transcoder holds only its resampler's state.

use std::time::Duration;

use super::{g711, pcm, scratch, AudioError, AudioFormat, Codec, Resampler};

#[derive(Debug)]
enum Path {
    Copy,
    UlawToAlaw,
    AlawToUlaw,
    Linear(Option<Resampler>),
}

/// Converts a byte stream in one [`AudioFormat`] into another, keeping state across calls.
#[derive(Debug)]
pub struct Transcoder {
    from: AudioFormat,
    to: AudioFormat,
    path: Path,
    /// First byte of an L16 sample whose second byte is in the next message.
    carry: Option<u8>,
}

fn check(format: AudioFormat) -> Result<(), AudioError> {
    match format.codec {
        Codec::Pcmu | Codec::Pcma if format.rate != 8000 => Err(AudioError::Unsupported(format)),
        _ => Ok(()),
    }
}

/// Appends `samples` encoded as `codec` to `out`.
fn encode(codec: Codec, samples: &[i16], out: &mut Vec<u8>) {
    match codec {
        Codec::L16 => pcm::samples_to_l16(samples, out),
        Codec::Pcmu => g711::ulaw_encode(samples, out),
        Codec::Pcma => g711::alaw_encode(samples, out),
    }
}

impl Transcoder {
    /// Fails for G.711 at a rate other than 8000 Hz and for rate pairs the
    /// [`Resampler`] cannot do.
    pub fn new(from: AudioFormat, to: AudioFormat) -> Result<Transcoder, AudioError> {
        check(from)?;
        check(to)?;
        let path = if from == to {
            Path::Copy
        } else {
            match (from.codec, to.codec) {
                (Codec::Pcmu, Codec::Pcma) => Path::UlawToAlaw,
                (Codec::Pcma, Codec::Pcmu) => Path::AlawToUlaw,
                _ if from.rate == to.rate => Path::Linear(None),
                _ => Path::Linear(Some(Resampler::new(from.rate, to.rate)?)),
            }
        };
        Ok(Transcoder {
            from,
            to,
            path,
            carry: None,
        })
    }

    pub fn from(&self) -> AudioFormat {
        self.from
    }

    pub fn to(&self) -> AudioFormat {
        self.to
    }

    /// True when bytes go through unchanged.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.path, Path::Copy)
    }

    /// Converts `input` (bytes in `from`) and appends the result (bytes in `to`) to `out`.
    ///
    /// Streaming: a trailing odd L16 byte and the resampler state are kept for the next
    /// call, so splitting a stream anywhere gives the same output as converting it whole.
    pub fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match &mut self.path {
            Path::Copy => out.extend_from_slice(input),
            Path::UlawToAlaw => g711::ulaw_to_alaw(input, out),
            Path::AlawToUlaw => g711::alaw_to_ulaw(input, out),
            Path::Linear(resampler) => {
                let mut linear_in = scratch::linear_in();
                match self.from.codec {
                    Codec::L16 => {
                        let mut rest = input;
                        if let (Some(first), Some((&second, tail))) =
                            (self.carry, rest.split_first())
                        {
                            linear_in.push(i16::from_le_bytes([first, second]));
                            self.carry = None;
                            rest = tail;
                        }
                        pcm::l16_to_samples(rest, &mut linear_in);
                        if rest.len() % 2 == 1 {
                            self.carry = rest.last().copied();
                        }
                    }
                    Codec::Pcmu => g711::ulaw_decode(input, &mut linear_in),
                    Codec::Pcma => g711::alaw_decode(input, &mut linear_in),
                }
                match resampler {
                    Some(r) => {
                        let mut linear_out = scratch::linear_out();
                        r.process(&linear_in, &mut linear_out);
                        encode(self.to.codec, &linear_out, out);
                    }
                    None => encode(self.to.codec, &linear_in, out),
                }
            }
        }
    }

    /// The end of a stream (an assistant reply): appends what the resampler still holds
    /// of it (see [`Resampler::flush`]) and starts the next stream from a clean state, so
    /// no fragment of this one is heard at the start of the next. A dangling half L16
    /// sample is dropped. Nothing to do for the other paths, which hold nothing.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        self.carry = None;
        if let Path::Linear(Some(r)) = &mut self.path {
            let mut linear_out = scratch::linear_out();
            r.flush(&mut linear_out);
            encode(self.to.codec, &linear_out, out);
        }
    }

    /// Group delay added by the conversion (the resampler's filter; zero otherwise).
    pub fn delay(&self) -> Duration {
        match &self.path {
            Path::Linear(Some(r)) => Duration::from_nanos(
                r.delay_samples() as u64 * 1_000_000_000 / u64::from(self.to.rate),
            ),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::signal;

    fn l16(samples: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        pcm::samples_to_l16(samples, &mut b);
        b
    }

    fn convert(from: AudioFormat, to: AudioFormat, input: &[u8]) -> Vec<u8> {
        let mut t = Transcoder::new(from, to).unwrap();
        let mut out = Vec::new();
        t.process(input, &mut out);
        out
    }

    #[test]
    fn rejects_g711_off_8k() {
        let bad = AudioFormat::new(Codec::Pcmu, 16000);
        assert!(matches!(
            Transcoder::new(bad, AudioFormat::l16(16000)),
            Err(AudioError::Unsupported(f)) if f == bad
        ));
        assert!(
            Transcoder::new(AudioFormat::l16(8000), AudioFormat::new(Codec::Pcma, 24000)).is_err()
        );
        assert!(Transcoder::new(AudioFormat::l16(8000), AudioFormat::l16(7)).is_err());
    }

    #[test]
    fn passthrough_is_identity() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        for f in [
            AudioFormat::pcmu(),
            AudioFormat::pcma(),
            AudioFormat::l16(8000),
            AudioFormat::l16(24000),
        ] {
            let t = Transcoder::new(f, f).unwrap();
            assert!(t.is_passthrough());
            assert_eq!((t.from(), t.to(), t.delay()), (f, f, Duration::ZERO));
            assert_eq!(convert(f, f, &bytes), bytes);
        }
        assert!(!Transcoder::new(AudioFormat::pcmu(), AudioFormat::pcma())
            .unwrap()
            .is_passthrough());
    }

    #[test]
    fn pcmu_pcma_use_the_direct_tables() {
        let codes: Vec<u8> = (0..=255).collect();
        let out = convert(AudioFormat::pcmu(), AudioFormat::pcma(), &codes);
        let mut direct = Vec::new();
        g711::ulaw_to_alaw(&codes, &mut direct);
        assert_eq!(out, direct);
        // Not decode + encode (which differs in 46 codes).
        let via_l16 = {
            let lin = convert(AudioFormat::pcmu(), AudioFormat::l16(8000), &codes);
            convert(AudioFormat::l16(8000), AudioFormat::pcma(), &lin)
        };
        assert_ne!(out, via_l16);
        let back = convert(AudioFormat::pcma(), AudioFormat::pcmu(), &codes);
        let mut direct_back = Vec::new();
        g711::alaw_to_ulaw(&codes, &mut direct_back);
        assert_eq!(back, direct_back);
    }

    /// Call-side L16/8k -> provider L16/24k -> back to the phone as PCMU: the result is the
    /// input delayed by the two filters and carries μ-law's quantisation noise, nothing more.
    #[test]
    fn l16_8k_to_24k_to_pcmu_round_trip() {
        let x = signal::sine(8000, 1020.0, -6.0, 16000);
        let mut up = Transcoder::new(AudioFormat::l16(8000), AudioFormat::l16(24000)).unwrap();
        let mut down = Transcoder::new(AudioFormat::l16(24000), AudioFormat::pcmu()).unwrap();
        let mut mid = Vec::new();
        let mut codes = Vec::new();
        for frame in l16(&x).chunks(320) {
            mid.clear();
            up.process(frame, &mut mid);
            down.process(&mid, &mut codes);
        }
        let mut y = Vec::new();
        g711::ulaw_decode(&codes, &mut y);
        let delay_ms = (up.delay() + down.delay()).as_secs_f64() * 1000.0;
        let lag = (delay_ms * 8.0).round() as usize;
        assert!(
            (lag as f64 - delay_ms * 8.0).abs() < 1e-6,
            "round trip delay {delay_ms} ms"
        );
        let snr = signal::snr_db_at(&x[800..], &y[800 + lag..], 0);
        let snr_codec = {
            let mut c = Vec::new();
            g711::ulaw_encode(&x, &mut c);
            let mut d = Vec::new();
            g711::ulaw_decode(&c, &mut d);
            signal::snr_db_at(&x, &d, 0)
        };
        eprintln!(
            "transcode L16/8k->L16/24k->PCMU: SNR {snr:.2} dB (μ-law alone {snr_codec:.2} dB), \
             lag {lag} samples, reported delay {delay_ms:.3} ms"
        );
        assert!((snr - snr_codec).abs() <= 1.0, "{snr} vs {snr_codec}");

        // Speech-like material through the same path stays at the codec's level too.
        let s = signal::speech_like(8000, 3.0, 11);
        let mid = convert(AudioFormat::l16(8000), AudioFormat::l16(24000), &l16(&s));
        let codes = convert(AudioFormat::l16(24000), AudioFormat::pcmu(), &mid);
        let mut y = Vec::new();
        g711::ulaw_decode(&codes, &mut y);
        let found = signal::best_lag(&s, &y, 200);
        assert_eq!(found, lag as isize);
        let snr = signal::snr_db_at(&s, &y, found);
        eprintln!("transcode speech L16/8k->L16/24k->PCMU: SNR {snr:.2} dB at lag {found}");
        assert!(snr > 30.0, "{snr}");
    }

    #[test]
    fn pcmu_to_l16_24k_matches_decode_then_resample() {
        let x = signal::speech_like(8000, 1.0, 2);
        let mut codes = Vec::new();
        g711::ulaw_encode(&x, &mut codes);
        let out = convert(AudioFormat::pcmu(), AudioFormat::l16(24000), &codes);
        let mut lin = Vec::new();
        g711::ulaw_decode(&codes, &mut lin);
        let mut r = Resampler::new(8000, 24000).unwrap();
        let mut expected = Vec::new();
        r.process(&lin, &mut expected);
        assert_eq!(out, l16(&expected));
    }

    /// Splitting an L16 stream at odd byte offsets (inside samples) changes nothing.
    #[test]
    fn odd_byte_carry_across_calls() {
        let x = signal::speech_like(24000, 0.5, 4);
        let wire = l16(&x);
        for to in [
            AudioFormat::l16(8000),
            AudioFormat::pcmu(),
            AudioFormat::pcma(),
            AudioFormat::l16(24000),
        ] {
            let whole = convert(AudioFormat::l16(24000), to, &wire);
            let mut t = Transcoder::new(AudioFormat::l16(24000), to).unwrap();
            let mut pieces = Vec::new();
            for chunk in wire.chunks(7) {
                t.process(chunk, &mut pieces);
            }
            assert_eq!(pieces, whole, "to {to}");
        }
        // Same rate, different codec: the carry alone matters here.
        let mut t = Transcoder::new(AudioFormat::l16(8000), AudioFormat::pcma()).unwrap();
        let mut out = Vec::new();
        t.process(&[0x00], &mut out);
        assert!(out.is_empty());
        t.process(&[0x40, 0x00], &mut out);
        assert_eq!(out.len(), 1);
        t.process(&[0xC0], &mut out);
        let mut expected = Vec::new();
        g711::alaw_encode(&[0x4000, -16384], &mut expected);
        assert_eq!(out, expected);
    }
}
