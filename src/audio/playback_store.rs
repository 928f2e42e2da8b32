//! Where the pacer keeps the assistant audio it has not released yet.
//!
//! Providers send a reply several times faster than it plays, so most of a call's
//! memory is this queue (about 16 KB per second of reply in L16 at 8 kHz). When the
//! provider speaks G.711 and the telephony side wants L16 at the same rate (OpenAI
//! `pcmu` to FreeSWITCH, the common case), every queued sample is a decoded G.711 code:
//! keeping the code instead of the sample halves the queue and loses nothing, because a
//! decoded code encodes back to a code with the same sample (tested in `g711`).
//!
//! Lengths are always in bytes of the L16 audio the pacer sees, whichever way it is
//! held, so the pacer's accounting (frames, positions, truncate ms) does not change.

use super::fifo::ByteFifo;
use super::{g711, Codec};

#[derive(Debug)]
pub(crate) struct PlaybackStore {
    fifo: ByteFifo,
    /// `Some(law)`: the queue holds `law` codes for L16 samples (one byte for two).
    law: Option<Codec>,
    compact_at: usize,
}

impl PlaybackStore {
    pub(crate) fn new(compact_at: usize) -> PlaybackStore {
        PlaybackStore {
            fifo: ByteFifo::new(0, compact_at),
            law: None,
            compact_at,
        }
    }

    /// Holds L16 audio as `law` codes from now on (`None`: as it is). The caller
    /// promises that every sample pushed while a law is set is a decoded code of it.
    /// Audio already queued is converted, so the switch loses nothing either way.
    pub(crate) fn hold_as(&mut self, law: Option<Codec>) {
        let law = law.filter(|l| *l != Codec::L16);
        if law == self.law {
            return;
        }
        let len = self.len();
        let mut l16 = Vec::with_capacity(len);
        self.take_into(len, &mut l16);
        self.law = law;
        self.fifo = ByteFifo::new(0, self.compact_at);
        self.extend(&l16);
    }

    /// Bytes of L16 (or of the pacer's codec) queued.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self.law {
            Some(_) => self.fifo.len() * 2,
            None => self.fifo.len(),
        }
    }

    /// Appends audio in the pacer's format (whole L16 samples when a law is set).
    pub(crate) fn extend(&mut self, data: &[u8]) {
        match self.law {
            None => self.fifo.extend(data),
            Some(law) => self.fifo.extend_with(|codes| {
                codes.extend(
                    data.chunks_exact(2)
                        .map(|s| g711::encode_sample(law, i16::from_le_bytes([s[0], s[1]]))),
                )
            }),
        }
    }

    /// Appends `law` codes of audio (one L16 sample each): kept as they are when the
    /// store holds that law, else decoded.
    pub(crate) fn extend_codes(&mut self, law: Codec, codes: &[u8]) {
        if self.law == Some(law) {
            self.fifo.extend(codes);
        } else {
            let mut l16 = Vec::with_capacity(codes.len() * 2);
            decode_into(law, codes, &mut l16);
            self.extend(&l16);
        }
    }

    /// The law the store keeps codes of, if any.
    pub(crate) fn law(&self) -> Option<Codec> {
        self.law
    }

    /// Appends `n` bytes of codec silence (`byte` is the pacer codec's silence byte).
    pub(crate) fn pad(&mut self, n: usize, byte: u8) {
        match self.law {
            None => self.fifo.pad(n, byte),
            Some(law) => self.fifo.pad(
                n / 2,
                g711::encode_sample(law, i16::from_le_bytes([byte, byte])),
            ),
        }
    }

    /// Moves exactly `n` bytes (in the pacer's format) from the front to `out`; false
    /// (and nothing moved) if fewer are queued.
    pub(crate) fn take_into(&mut self, n: usize, out: &mut Vec<u8>) -> bool {
        match self.law {
            None => self.fifo.take_into(n, out),
            Some(law) => self
                .fifo
                .take_with(n / 2, |codes| decode_into(law, codes, out)),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.fifo.clear();
    }
}

/// Appends the L16 of `codes` to `out`.
fn decode_into(law: Codec, codes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + codes.len() * 2, 0);
    for (pair, &code) in out[start..].chunks_exact_mut(2).zip(codes) {
        pair.copy_from_slice(&g711::decode_sample(law, code).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L16 of every μ-law code, in a repeating pattern.
    fn decoded(law: Codec, samples: usize) -> Vec<u8> {
        (0..samples)
            .flat_map(|i| g711::decode_sample(law, (i * 7 % 256) as u8).to_le_bytes())
            .collect()
    }

    #[test]
    fn companded_audio_comes_back_identical_at_half_the_memory() {
        for law in [Codec::Pcmu, Codec::Pcma] {
            let audio = decoded(law, 8000);
            let mut plain = PlaybackStore::new(16 * 1024);
            let mut packed = PlaybackStore::new(16 * 1024);
            packed.hold_as(Some(law));
            plain.extend(&audio);
            packed.extend(&audio);
            assert_eq!(packed.len(), plain.len());
            assert_eq!(packed.fifo.len() * 2, plain.fifo.len(), "half the bytes");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            while plain.take_into(320, &mut a) {}
            while packed.take_into(320, &mut b) {}
            assert_eq!(a, audio);
            assert_eq!(b, audio, "{law:?}");
            assert_eq!(packed.len(), 0);
        }
    }

    #[test]
    fn codes_go_in_as_they_are_or_decoded() {
        let codes: Vec<u8> = (0..=255u8).collect();
        let l16 = decoded_codes(Codec::Pcmu, &codes);
        for held in [Some(Codec::Pcmu), None, Some(Codec::Pcma)] {
            let mut store = PlaybackStore::new(1024);
            store.hold_as(held);
            store.extend_codes(Codec::Pcmu, &codes);
            assert_eq!(store.len(), 512);
            let mut out = Vec::new();
            assert!(store.take_into(512, &mut out));
            if held == Some(Codec::Pcma) {
                // Re-held as A-law: the samples are A-law's nearest, not μ-law's exact.
                assert_eq!(out.len(), 512);
            } else {
                assert_eq!(out, l16, "{held:?}");
            }
        }
    }

    fn decoded_codes(law: Codec, codes: &[u8]) -> Vec<u8> {
        codes
            .iter()
            .flat_map(|&c| g711::decode_sample(law, c).to_le_bytes())
            .collect()
    }

    #[test]
    fn silence_pads_decode_to_silence() {
        let mut packed = PlaybackStore::new(1024);
        packed.hold_as(Some(Codec::Pcmu));
        packed.pad(320, Codec::L16.silence_byte());
        assert_eq!(packed.len(), 320);
        let mut out = Vec::new();
        assert!(packed.take_into(320, &mut out));
        assert_eq!(out, vec![0u8; 320]);
    }

    #[test]
    fn switching_ways_keeps_what_is_queued() {
        let audio = decoded(Codec::Pcmu, 480);
        let mut store = PlaybackStore::new(1024);
        store.extend(&audio[..320]);
        store.hold_as(Some(Codec::Pcmu));
        store.extend(&audio[320..640]);
        store.hold_as(None);
        store.extend(&audio[640..]);
        assert_eq!(store.len(), audio.len());
        let mut out = Vec::new();
        assert!(store.take_into(audio.len(), &mut out));
        assert_eq!(out, audio);
        assert!(!store.take_into(2, &mut out), "nothing left");
    }
}
