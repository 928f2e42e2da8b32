//! What we send Asterisk, in order: our paced audio cut to whole `optimal_frame_size`
//! messages, and the commands that must stay in line with it (`MARK_MEDIA`). Pure.
//!
//! chan_websocket cuts each binary message into frames of `optimal_frame_size` and
//! silently drops a remainder, so a message is always a whole number of frames; a
//! reply's last partial frame is padded with silence. Between `MEDIA_XOFF` and
//! `MEDIA_XON` nothing is sent: what the engine releases meanwhile is held here,
//! bounded (the engine's bound on unplayed audio keeps us far below the driver's 900
//! frames, so XOFF only comes from a driver that stopped playing).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::audio::Codec;

/// Held while Asterisk says XOFF, at most: 2 s of 20 ms messages (the oldest go).
const MAX_HELD: usize = 100;

/// One message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    Audio(Bytes),
    Text(String),
}

#[derive(Debug)]
pub struct Playout {
    frame_size: usize,
    silence: u8,
    /// Bytes of our audio short of a whole frame.
    partial: Vec<u8>,
    paused: bool,
    held: VecDeque<Out>,
    /// Messages dropped because the XOFF hold was full.
    pub dropped: u64,
}

impl Playout {
    /// `frame_size`: the channel's `optimal_frame_size` (or 20 ms of the call's format
    /// until `MEDIA_START` tells it).
    pub fn new(frame_size: usize, codec: Codec) -> Playout {
        Playout {
            frame_size: frame_size.max(1),
            silence: codec.silence_byte(),
            partial: Vec::new(),
            paused: false,
            held: VecDeque::new(),
            dropped: 0,
        }
    }

    /// A new frame size and codec (from `MEDIA_START`); a partial frame is dropped.
    pub fn set_format(&mut self, frame_size: usize, codec: Codec) {
        self.frame_size = frame_size.max(1);
        self.silence = codec.silence_byte();
        self.partial.clear();
    }

    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Our audio: the message to send now, if it completes at least one frame.
    pub fn audio(&mut self, data: &[u8]) -> Option<Out> {
        if self.partial.is_empty() && data.len().is_multiple_of(self.frame_size) && !data.is_empty()
        {
            return self.send(Out::Audio(Bytes::copy_from_slice(data)));
        }
        self.partial.extend_from_slice(data);
        let whole = self.partial.len() / self.frame_size * self.frame_size;
        if whole == 0 {
            return None;
        }
        let rest = self.partial.split_off(whole);
        let msg = std::mem::replace(&mut self.partial, rest);
        self.send(Out::Audio(msg.into()))
    }

    /// The reply is fully released: its last partial frame, padded with silence.
    pub fn finish(&mut self) -> Option<Out> {
        if self.partial.is_empty() {
            return None;
        }
        let mut msg = std::mem::take(&mut self.partial);
        msg.resize(self.frame_size, self.silence);
        self.send(Out::Audio(msg.into()))
    }

    /// A command that must stay behind the audio sent before it (a mark).
    pub fn in_line(&mut self, text: String) -> Option<Out> {
        self.send(Out::Text(text))
    }

    /// Barge-in: nothing of ours that is not yet sent may go.
    pub fn clear(&mut self) {
        self.partial.clear();
        self.held.clear();
    }

    /// `MEDIA_XOFF`: hold everything until `MEDIA_XON`.
    pub fn xoff(&mut self) {
        self.paused = true;
    }

    /// `MEDIA_XON`: what was held, to send now in order.
    pub fn xon(&mut self) -> VecDeque<Out> {
        self.paused = false;
        std::mem::take(&mut self.held)
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    fn send(&mut self, out: Out) -> Option<Out> {
        if !self.paused {
            return Some(out);
        }
        if self.held.len() >= MAX_HELD {
            self.held.pop_front();
            self.dropped += 1;
        }
        self.held.push_back(out);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio_len(out: Option<Out>) -> Option<usize> {
        match out {
            Some(Out::Audio(b)) => Some(b.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_of_the_right_size_go_as_they_are() {
        let mut p = Playout::new(160, Codec::Pcmu);
        assert_eq!(audio_len(p.audio(&[1; 160])), Some(160));
        assert_eq!(audio_len(p.audio(&[1; 320])), Some(320));
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn other_sizes_are_cut_to_whole_frames_and_the_tail_padded() {
        // ptime 30 ms at 8 kHz ulaw: 240-byte frames from our 160-byte ones.
        let mut p = Playout::new(240, Codec::Pcmu);
        assert_eq!(p.audio(&[1; 160]), None);
        assert_eq!(audio_len(p.audio(&[1; 160])), Some(240));
        assert_eq!(p.audio(&[1; 40]), None);
        let Some(Out::Audio(tail)) = p.finish() else {
            panic!("a padded tail")
        };
        assert_eq!(tail.len(), 240);
        assert_eq!(&tail[..120], &[1; 120][..]);
        assert!(tail[120..].iter().all(|&b| b == 0xFF), "ulaw silence");
    }

    #[test]
    fn xoff_holds_in_order_and_xon_releases() {
        let mut p = Playout::new(160, Codec::Pcmu);
        p.xoff();
        assert!(p.paused());
        assert_eq!(p.audio(&[1; 160]), None);
        assert_eq!(p.in_line("MARK_MEDIA 1".to_owned()), None);
        let held: Vec<Out> = p.xon().into();
        assert_eq!(held.len(), 2);
        assert!(matches!(&held[0], Out::Audio(b) if b.len() == 160));
        assert_eq!(held[1], Out::Text("MARK_MEDIA 1".to_owned()));
        assert!(!p.paused());
        assert_eq!(audio_len(p.audio(&[1; 160])), Some(160));
    }

    #[test]
    fn the_hold_is_bounded_and_clear_empties_it() {
        let mut p = Playout::new(160, Codec::Pcmu);
        p.xoff();
        for _ in 0..MAX_HELD + 5 {
            p.audio(&[1; 160]);
        }
        assert_eq!(p.dropped, 5);
        p.audio(&[1; 80]);
        p.clear();
        assert!(p.xon().is_empty());
        assert_eq!(p.finish(), None, "the partial frame went with the clear");
    }
}
