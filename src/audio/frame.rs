//! Re-framing of inbound wire audio into exact 20 ms mono frames.
//!
//! `mod_audio_stream` sends whatever its buffer held (20 ms, 40 ms, ...), proxies and
//! tests may split messages anywhere, even inside a sample, and a stereo stream carries
//! the caller on the left only. Everything downstream (VAD, providers, recording) wants
//! steady 20 ms mono frames, so this is the one place that deals with the wire layout.

use super::fifo::ByteFifo;
use super::{AudioFormat, Channels};

// Once this many consumed bytes sit in front of the buffer, move the rest down; keeps
// memory flat without shifting bytes on every pop.
const COMPACT_AT: usize = 4096;

/// Turns wire messages of any size into 20 ms mono frames of the wire codec.
#[derive(Debug)]
pub struct Reframer {
    format: AudioFormat,
    bytes_per_sample: usize,
    /// Bytes per interleaved sample frame on the wire (all channels).
    stride: usize,
    /// Position inside the current interleaved sample frame, carried across pushes so a
    /// sample split between messages is rejoined.
    phase: usize,
    buf: ByteFifo,
}

impl Reframer {
    /// `format` is the wire codec and rate; with [`Channels::Stereo`] the input is
    /// interleaved and only the left (caller) channel is kept.
    pub fn new(format: AudioFormat, channels: Channels) -> Reframer {
        let bytes_per_sample = format.bytes_per_sample();
        Reframer {
            format,
            bytes_per_sample,
            stride: bytes_per_sample * channels.count(),
            phase: 0,
            // Grown by the first message (a frame or two); a preallocated four frames
            // were a kilobyte per call that a steady 20 ms stream never uses.
            buf: ByteFifo::new(0, COMPACT_AT),
        }
    }

    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Adds wire bytes of any length.
    pub fn push(&mut self, wire: &[u8]) {
        if self.stride == self.bytes_per_sample {
            self.buf.extend(wire);
            return;
        }
        let mut rest = wire;
        while !rest.is_empty() {
            if self.phase == 0 && rest.len() >= self.stride {
                // Aligned: copy the left sample of every whole interleaved frame at once.
                let whole = rest.len() / self.stride * self.stride;
                let bps = self.bytes_per_sample;
                for f in rest[..whole].chunks_exact(self.stride) {
                    self.buf.extend(&f[..bps]);
                }
                rest = &rest[whole..];
                continue;
            }
            if self.phase < self.bytes_per_sample {
                let n = (self.bytes_per_sample - self.phase).min(rest.len());
                self.buf.extend(&rest[..n]);
                self.phase += n;
                rest = &rest[n..];
            } else {
                let n = (self.stride - self.phase).min(rest.len());
                self.phase += n;
                rest = &rest[n..];
            }
            if self.phase == self.stride {
                self.phase = 0;
            }
        }
    }

    /// Appends one 20 ms mono frame (exactly `format.bytes_per_frame()` bytes) to `out`
    /// and returns true, or returns false if less than a frame is buffered.
    pub fn pop_frame(&mut self, out: &mut Vec<u8>) -> bool {
        self.buf.take_into(self.format.bytes_per_frame(), out)
    }

    /// Mono bytes buffered and not yet popped (including a partial sample).
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{g711, pcm, signal};

    fn l16(samples: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        pcm::samples_to_l16(samples, &mut b);
        b
    }

    fn drain(r: &mut Reframer) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        loop {
            let mut f = vec![0xEE];
            if !r.pop_frame(&mut f) {
                assert_eq!(f, [0xEE], "a failed pop must not append");
                return frames;
            }
            assert_eq!(f.len() - 1, r.format().bytes_per_frame());
            frames.push(f[1..].to_vec());
        }
    }

    /// Pushes `wire` in pieces of the given sizes (cycled) and returns the frames.
    fn reframe(
        format: AudioFormat,
        ch: Channels,
        wire: &[u8],
        sizes: &[usize],
    ) -> (Vec<Vec<u8>>, usize) {
        let mut r = Reframer::new(format, ch);
        let mut frames = Vec::new();
        let mut pos = 0;
        let mut k = 0;
        while pos < wire.len() {
            let n = sizes[k % sizes.len()].min(wire.len() - pos);
            r.push(&wire[pos..pos + n]);
            pos += n;
            k += 1;
            frames.extend(drain(&mut r));
        }
        (frames, r.pending_bytes())
    }

    #[test]
    fn l16_any_message_size_gives_the_same_frames() {
        let fmt = AudioFormat::l16(8000);
        let samples = signal::speech_like(8000, 1.0, 5);
        let wire = l16(&samples[..8000 - 50]);
        let expected: Vec<Vec<u8>> = wire.chunks_exact(320).map(|c| c.to_vec()).collect();
        for sizes in [&[320][..], &[640], &[1], &[7], &[321], &[3, 640, 1, 319, 2]] {
            let (frames, pending) = reframe(fmt, Channels::Mono, &wire, sizes);
            assert_eq!(frames, expected, "sizes {sizes:?}");
            assert_eq!(pending, wire.len() % 320, "sizes {sizes:?}");
        }
    }

    #[test]
    fn forty_ms_message_gives_two_frames() {
        let fmt = AudioFormat::l16(16000);
        let mut r = Reframer::new(fmt, Channels::Mixed);
        r.push(&vec![1u8; 1280]);
        assert_eq!(drain(&mut r).len(), 2);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn stereo_keeps_the_left_channel_even_when_split_inside_samples() {
        let fmt = AudioFormat::l16(8000);
        let left = signal::sine(8000, 440.0, -6.0, 800);
        let right = signal::sine(8000, 1000.0, -3.0, 800);
        let mut inter = Vec::new();
        for (l, r) in left.iter().zip(&right) {
            inter.push(*l);
            inter.push(*r);
        }
        let wire = l16(&inter);
        let expected: Vec<Vec<u8>> = l16(&left).chunks_exact(320).map(|c| c.to_vec()).collect();
        for sizes in [&[640][..], &[1], &[3], &[7], &[321], &[5, 2, 641]] {
            let (frames, pending) = reframe(fmt, Channels::Stereo, &wire, sizes);
            assert_eq!(frames, expected, "sizes {sizes:?}");
            assert_eq!(pending, 0);
        }
    }

    #[test]
    fn pcmu_mono_and_stereo() {
        let fmt = AudioFormat::pcmu();
        let x = signal::sine(8000, 700.0, -10.0, 1000);
        let mut codes = Vec::new();
        g711::ulaw_encode(&x, &mut codes);
        let expected: Vec<Vec<u8>> = codes.chunks_exact(160).map(|c| c.to_vec()).collect();
        let (frames, pending) = reframe(fmt, Channels::Mono, &codes, &[7]);
        assert_eq!(frames, expected);
        assert_eq!(pending, 40);
        let stereo: Vec<u8> = codes.iter().flat_map(|&c| [c, 0x55]).collect();
        let (frames, pending) = reframe(fmt, Channels::Stereo, &stereo, &[1, 321]);
        assert_eq!(frames, expected);
        assert_eq!(pending, 40);
    }

    #[test]
    fn buffer_stays_compact_over_a_long_stream() {
        let mut r = Reframer::new(AudioFormat::l16(8000), Channels::Mono);
        let chunk = vec![3u8; 333];
        let mut out = Vec::new();
        for _ in 0..10_000 {
            r.push(&chunk);
            out.clear();
            while r.pop_frame(&mut out) {}
            assert!(
                r.buf.allocated_len() < COMPACT_AT + 1000,
                "{}",
                r.buf.allocated_len()
            );
        }
    }
}
