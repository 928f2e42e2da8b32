//! A provider's own marks (a Twilio-protocol backend's `mark`): a name placed in the
//! assistant audio stream, to be answered once the audio queued before it has really
//! been played to the caller, so the backend can tell what the caller heard.
//!
//! Each mark stands for the pacer's pushed position when it arrived
//! (`Pacer::pushed_total`); it is answered when the pacer says that position has played
//! out (`Pacer::played_at`), or at once when playback is flushed (a barge-in drops the
//! audio before it; Twilio returns every pending mark at a `clear` too).
//!
//! Bounded: a backend that sends marks without audio, or far more than it lets play,
//! must not grow the call's memory. Past [`MAX_PENDING`] the oldest is answered early
//! (it was the next one due anyway; a backend that never hears of a mark could wait
//! forever).

use std::collections::VecDeque;

/// Pending marks kept at most.
pub(super) const MAX_PENDING: usize = 128;
/// Longest mark name kept (bytes); longer names are cut, at a char boundary.
pub(super) const MAX_NAME: usize = 256;

#[derive(Debug, Default)]
pub(super) struct ProviderMarks {
    /// (name, pushed position), oldest first; positions never decrease.
    pending: VecDeque<(String, u64)>,
    /// Marks answered before their audio played because of the cap.
    pub answered_early: u64,
}

impl ProviderMarks {
    /// A mark at `position`; returns the mark to answer now if the cap pushed one out.
    pub fn push(&mut self, name: String, position: u64) -> Option<String> {
        let name = clip(name);
        let out = if self.pending.len() >= MAX_PENDING {
            self.answered_early += 1;
            self.pending.pop_front().map(|(n, _)| n)
        } else {
            None
        };
        self.pending.push_back((name, position));
        out
    }

    /// The oldest pending position (the next one to wait for).
    pub fn next(&self) -> Option<u64> {
        self.pending.front().map(|(_, p)| *p)
    }

    /// Takes the oldest mark (its position has played).
    pub fn pop(&mut self) -> Option<String> {
        self.pending.pop_front().map(|(n, _)| n)
    }

    /// Every pending mark, oldest first (playback was flushed or restarted).
    pub fn drain(&mut self) -> impl Iterator<Item = String> + '_ {
        self.pending.drain(..).map(|(n, _)| n)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

fn clip(mut name: String) -> String {
    if name.len() > MAX_NAME {
        let mut end = MAX_NAME;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_come_out_in_order() {
        let mut m = ProviderMarks::default();
        assert_eq!(m.push("a".into(), 160), None);
        assert_eq!(m.push("b".into(), 320), None);
        assert_eq!(m.next(), Some(160));
        assert_eq!(m.pop().as_deref(), Some("a"));
        assert_eq!(m.next(), Some(320));
        assert_eq!(m.drain().collect::<Vec<_>>(), ["b"]);
        assert_eq!(m.next(), None);
    }

    #[test]
    fn pending_marks_are_capped_by_answering_the_oldest() {
        let mut m = ProviderMarks::default();
        for k in 0..MAX_PENDING as u64 {
            assert_eq!(m.push(format!("m{k}"), k), None);
        }
        assert_eq!(m.push("late".into(), 999).as_deref(), Some("m0"));
        assert_eq!(m.len(), MAX_PENDING);
        assert_eq!(m.answered_early, 1);
        assert_eq!(m.next(), Some(1));
    }

    #[test]
    fn long_names_are_cut_at_a_char_boundary() {
        let mut m = ProviderMarks::default();
        m.push("é".repeat(MAX_NAME), 0);
        let name = m.pop().unwrap();
        assert!(name.len() <= MAX_NAME && name.chars().all(|c| c == 'é'));
    }
}
