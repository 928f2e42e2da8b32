//! The caller's WAV in (16-bit PCM, the left channel of a stereo file is the caller) and
//! its frames encoded the way the module lays them out on the wire.

use std::path::{Path, PathBuf};

use voicebridge::audio::{Channels, Codec};

use super::args::CallError;

/// The caller's side of the call, read from the input WAV.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerAudio {
    pub rate: u32,
    /// Mono samples (the left channel of a stereo file).
    pub samples: Vec<i16>,
}

/// Reads a 16-bit PCM WAV, keeping the first (left) channel as the caller.
pub fn read_caller_wav(path: &Path) -> Result<CallerAudio, CallError> {
    let reader = hound::WavReader::open(path).map_err(|source| CallError::WavRead {
        path: path.to_path_buf(),
        source,
    })?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        let kind = match spec.sample_format {
            hound::SampleFormat::Int => "integer",
            hound::SampleFormat::Float => "float",
        };
        return Err(CallError::WavFormat {
            path: path.to_path_buf(),
            reason: format!(
                "{}-bit {kind} samples; 16-bit PCM is needed (e.g. `sox in.wav -b 16 -e signed-integer out.wav`)",
                spec.bits_per_sample
            ),
        });
    }
    let channels = usize::from(spec.channels);
    if !(1..=2).contains(&channels) {
        return Err(CallError::WavFormat {
            path: path.to_path_buf(),
            reason: format!("{channels} channels; mono or stereo is needed"),
        });
    }
    let mut samples = Vec::with_capacity(reader.len() as usize / channels);
    for (i, s) in reader.into_samples::<i16>().enumerate() {
        let s = s.map_err(|source| CallError::WavRead {
            path: path.to_path_buf(),
            source,
        })?;
        if i % channels == 0 {
            samples.push(s);
        }
    }
    Ok(CallerAudio {
        rate: spec.sample_rate,
        samples,
    })
}

/// Encodes one message of caller samples the way the module lays them out on the wire.
pub fn encode_frame(caller: &[i16], channels: Channels, codec: Codec) -> Vec<u8> {
    // Stereo's right channel is "what is played to the caller"; we send silence there.
    let per_sample = channels.count();
    let mut out = Vec::with_capacity(caller.len() * per_sample * codec.bytes_per_sample());
    for &s in caller {
        for ch in 0..per_sample {
            let v = if ch == 0 { s } else { 0 };
            match codec {
                Codec::L16 => out.extend_from_slice(&v.to_le_bytes()),
                Codec::Pcmu => out.push(audio_codec_algorithms::encode_ulaw(v)),
                Codec::Pcma => out.push(audio_codec_algorithms::encode_alaw(v)),
            }
        }
    }
    out
}

/// The `--out` recording: created before the call (so a bad path fails at once, not after
/// a long call), written at the end with everything the caller heard.
pub struct OutWav {
    path: PathBuf,
    writer: hound::WavWriter<std::io::BufWriter<std::fs::File>>,
}

impl OutWav {
    /// Mono 16-bit at the call's rate.
    pub fn create(path: &Path, rate: u32) -> Result<OutWav, CallError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer =
            hound::WavWriter::create(path, spec).map_err(|source| CallError::WavWrite {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(OutWav {
            path: path.to_path_buf(),
            writer,
        })
    }

    /// Writes `samples` and finishes the file.
    pub fn write(mut self, samples: &[i16]) -> Result<(), CallError> {
        let werr = |source| CallError::WavWrite {
            path: self.path.clone(),
            source,
        };
        for &s in samples {
            self.writer.write_sample(s).map_err(werr)?;
        }
        self.writer.finalize().map_err(werr)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::client::wire::{decode_l16, PlaybackError};

    pub(crate) fn write_wav(path: &Path, rate: u32, channels: u16, frames: &[Vec<i16>]) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for f in frames {
            for &s in f {
                w.write_sample(s).unwrap();
            }
        }
        w.finalize().unwrap();
    }

    #[test]
    fn wav_stereo_keeps_left_channel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wav");
        write_wav(&path, 8000, 2, &[vec![1, -1, 2, -2, 3, -3]]);
        let a = read_caller_wav(&path).unwrap();
        assert_eq!(a.rate, 8000);
        assert_eq!(a.samples, vec![1, 2, 3]);
    }

    #[test]
    fn wav_must_be_16_bit_pcm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        w.write_sample(0.5f32).unwrap();
        w.finalize().unwrap();
        let e = read_caller_wav(&path).unwrap_err();
        assert!(matches!(e, CallError::WavFormat { .. }), "{e}");
        let missing = read_caller_wav(&dir.path().join("missing.wav")).unwrap_err();
        assert!(matches!(missing, CallError::WavRead { .. }));
    }

    #[test]
    fn frames_are_encoded_like_the_module() {
        assert_eq!(
            encode_frame(&[1, -2], Channels::Mono, Codec::L16),
            vec![1, 0, 0xFE, 0xFF]
        );
        assert_eq!(
            encode_frame(&[1, -2], Channels::Stereo, Codec::L16),
            vec![1, 0, 0, 0, 0xFE, 0xFF, 0, 0]
        );
        assert_eq!(
            encode_frame(&[0, 0], Channels::Mono, Codec::Pcmu),
            vec![Codec::Pcmu.silence_byte(); 2]
        );
        assert_eq!(
            encode_frame(&[0], Channels::Stereo, Codec::Pcma),
            vec![Codec::Pcma.silence_byte(); 2]
        );
        assert_eq!(decode_l16(&[1, 0, 0xFE, 0xFF]).unwrap(), vec![1, -2]);
        assert_eq!(decode_l16(&[1]), Err(PlaybackError::OddLength(1)));
    }
}
