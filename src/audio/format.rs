//! Audio formats as they appear on the wire: a codec and a sample rate, always mono
//! inside voicebridge (stereo input is reduced to the caller's channel at the edge).

use std::fmt;

/// How samples are encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Signed 16-bit little-endian linear PCM (what `mod_audio_stream` sends).
    L16,
    /// G.711 μ-law, one byte per sample.
    Pcmu,
    /// G.711 A-law, one byte per sample.
    Pcma,
}

impl Codec {
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Codec::L16 => 2,
            Codec::Pcmu | Codec::Pcma => 1,
        }
    }

    /// The byte that encodes digital silence (repeated `bytes_per_sample` times).
    pub const fn silence_byte(self) -> u8 {
        match self {
            Codec::L16 => 0x00,
            Codec::Pcmu => 0xFF,
            Codec::Pcma => 0xD5,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Codec::L16 => "L16",
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// Parses the names used in URLs, metadata and config (case-insensitive).
    pub fn parse(s: &str) -> Option<Codec> {
        match s.to_ascii_uppercase().as_str() {
            "L16" | "PCM" | "LINEAR16" => Some(Codec::L16),
            "PCMU" | "ULAW" | "MULAW" => Some(Codec::Pcmu),
            "PCMA" | "ALAW" => Some(Codec::Pcma),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the channels of the inbound stream are laid out (`uuid_audio_stream ... <mix>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channels {
    /// The caller only.
    Mono,
    /// Caller and the other leg summed into one channel.
    Mixed,
    /// Interleaved: left = caller, right = what is played to the caller.
    Stereo,
}

impl Channels {
    pub const fn count(self) -> usize {
        match self {
            Channels::Mono | Channels::Mixed => 1,
            Channels::Stereo => 2,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Channels::Mono => "mono",
            Channels::Mixed => "mixed",
            Channels::Stereo => "stereo",
        }
    }

    pub fn parse(s: &str) -> Option<Channels> {
        match s.to_ascii_lowercase().as_str() {
            "mono" | "1" => Some(Channels::Mono),
            "mixed" => Some(Channels::Mixed),
            "stereo" | "2" => Some(Channels::Stereo),
            _ => None,
        }
    }
}

impl fmt::Display for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Frame length used everywhere inside voicebridge.
pub const FRAME_MS: u32 = 20;

/// A mono audio format: codec + sample rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AudioFormat {
    pub codec: Codec,
    pub rate: u32,
}

impl AudioFormat {
    pub const fn new(codec: Codec, rate: u32) -> Self {
        AudioFormat { codec, rate }
    }

    pub const fn l16(rate: u32) -> Self {
        AudioFormat::new(Codec::L16, rate)
    }

    pub const fn pcmu() -> Self {
        AudioFormat::new(Codec::Pcmu, 8000)
    }

    pub const fn pcma() -> Self {
        AudioFormat::new(Codec::Pcma, 8000)
    }

    pub const fn bytes_per_sample(&self) -> usize {
        self.codec.bytes_per_sample()
    }

    /// Samples in one 20 ms frame.
    pub const fn samples_per_frame(&self) -> usize {
        (self.rate as usize) * (FRAME_MS as usize) / 1000
    }

    /// Bytes in one 20 ms frame.
    pub const fn bytes_per_frame(&self) -> usize {
        self.samples_per_frame() * self.bytes_per_sample()
    }

    /// Bytes per second of audio.
    pub const fn bytes_per_sec(&self) -> usize {
        self.rate as usize * self.bytes_per_sample()
    }

    /// Whole milliseconds of audio in `bytes` (rounded down).
    pub const fn ms_of(&self, bytes: usize) -> u64 {
        (bytes as u64 * 1000) / self.bytes_per_sec() as u64
    }
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.codec, self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(AudioFormat::l16(8000).bytes_per_frame(), 320);
        assert_eq!(AudioFormat::l16(16000).bytes_per_frame(), 640);
        assert_eq!(AudioFormat::l16(24000).bytes_per_frame(), 960);
        assert_eq!(AudioFormat::pcmu().bytes_per_frame(), 160);
        assert_eq!(AudioFormat::l16(24000).ms_of(48), 1);
        assert_eq!(AudioFormat::pcmu().ms_of(8), 1);
    }

    #[test]
    fn parse_names() {
        assert_eq!(Codec::parse("pcmu"), Some(Codec::Pcmu));
        assert_eq!(Codec::parse("L16"), Some(Codec::L16));
        assert_eq!(Codec::parse("opus"), None);
        assert_eq!(Channels::parse("Stereo"), Some(Channels::Stereo));
        assert_eq!(Channels::parse("quad"), None);
    }
}
