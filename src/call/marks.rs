//! Playout marks: for a telephony side that reports its played position (Asterisk
//! `MARK_MEDIA`, Twilio `mark`), which marks to send and what each one stands for.
//!
//! A mark goes out after every `every` of released audio and when a reply's last frame
//! has gone, and stands for the pacer's release position at that moment. When the far
//! end says it reached a mark, the pacer is re-anchored on that position
//! (`Pacer::played_to`), which is how the truncate at a barge-in and the bound on
//! unplayed audio follow the far end's clock instead of ours. Marks sent before a
//! barge-in are void (the far end's buffer was cleared; Twilio even returns them all).

use std::collections::VecDeque;

/// Outstanding marks kept at most; beyond it the oldest are forgotten (a side whose
/// marks never come back must not grow the call's memory).
const MAX_OUTSTANDING: usize = 64;

#[derive(Debug)]
pub(super) struct Marks {
    /// Bytes of released audio between two marks.
    every: u64,
    next_id: u64,
    /// The release position of the last mark sent (or of the last void).
    last: u64,
    /// Marks sent and not yet reported: (id, release position), oldest first.
    outstanding: VecDeque<(u64, u64)>,
}

impl Marks {
    /// `every` in bytes of the call's playback format (at least one byte).
    pub fn new(every: u64) -> Marks {
        Marks {
            every: every.max(1),
            next_id: 1,
            last: 0,
            outstanding: VecDeque::new(),
        }
    }

    /// A mark to send now, with `released` the pacer's release position: after every
    /// `every` bytes, or at the end of a reply (`reply_end`) if anything went since the
    /// last one.
    pub fn due(&mut self, released: u64, reply_end: bool) -> Option<u64> {
        let since = released.saturating_sub(self.last);
        if since == 0 || (since < self.every && !reply_end) {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.last = released;
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((id, released));
        Some(id)
    }

    /// The far end reached mark `id`: the release position it stands for, or `None`
    /// for a mark that is void, unknown or already reported. Earlier marks are implied.
    pub fn played(&mut self, id: u64) -> Option<u64> {
        let at = self.outstanding.iter().position(|(i, _)| *i == id)?;
        let (_, position) = self.outstanding[at];
        self.outstanding.drain(..=at);
        Some(position)
    }

    /// A barge-in cleared the far end: every outstanding mark is void, and counting
    /// starts again from `released`.
    pub fn void(&mut self, released: u64) {
        self.outstanding.clear();
        self.last = released;
    }

    /// After a format change the pacer starts again from zero (ids go on).
    pub fn restart(&mut self) {
        self.void(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_every_so_much_audio_and_at_the_end_of_a_reply() {
        let mut m = Marks::new(800);
        assert_eq!(m.due(0, true), None, "nothing released: no mark");
        assert_eq!(m.due(640, false), None);
        assert_eq!(m.due(800, false), Some(1));
        assert_eq!(m.due(960, false), None);
        assert_eq!(m.due(960, true), Some(2), "the reply's last frame went");
        assert_eq!(m.due(960, true), None, "nothing new since");
        assert_eq!(m.due(2000, false), Some(3));
    }

    #[test]
    fn a_report_gives_the_position_and_implies_the_earlier_marks() {
        let mut m = Marks::new(160);
        let ids: Vec<u64> = (1..=4).filter_map(|k| m.due(k * 160, false)).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(m.played(2), Some(320));
        assert_eq!(m.played(1), None, "implied by 2 already");
        assert_eq!(m.played(4), Some(640));
        assert_eq!(m.played(9), None, "never sent");
    }

    #[test]
    fn marks_before_a_barge_in_are_void() {
        let mut m = Marks::new(160);
        assert_eq!(m.due(160, false), Some(1));
        assert_eq!(m.due(320, false), Some(2));
        m.void(320);
        assert_eq!(m.played(1), None);
        assert_eq!(m.played(2), None);
        assert_eq!(m.due(400, false), None, "counting starts again at the void");
        assert_eq!(m.due(480, false), Some(3), "ids go on");
        assert_eq!(m.played(3), Some(480));
    }

    #[test]
    fn outstanding_marks_are_bounded() {
        let mut m = Marks::new(1);
        for k in 1..=1000u64 {
            m.due(k, false);
        }
        assert_eq!(m.outstanding.len(), MAX_OUTSTANDING);
        assert_eq!(m.played(1), None, "forgotten");
        assert_eq!(m.played(1000), Some(1000));
    }
}
