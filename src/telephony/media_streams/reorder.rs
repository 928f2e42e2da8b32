//! A small bounded reorder window for carriers whose media chunks may arrive out of
//! order (Telnyx: "frame order is not guaranteed"). Chunks are released in chunk-number
//! order; a missing chunk is waited for only while fewer than `window` later chunks are
//! held, then skipped, so the added latency is bounded by the window and a lost chunk
//! never stalls the call. Chunks older than what was released are dropped (too late).

use std::collections::BTreeMap;

/// The number of a stream's first media chunk (Twilio and Telnyx count from 1).
const FIRST_CHUNK: u64 = 1;

#[derive(Debug)]
pub struct Reorder {
    window: usize,
    /// The next chunk number to release; `None` until the first chunk.
    next: Option<u64>,
    held: BTreeMap<u64, Vec<u8>>,
    /// Chunks that came after their place was released or skipped (or repeated).
    pub late: u64,
    /// Chunk numbers given up on.
    pub skipped: u64,
}

impl Reorder {
    /// `window`: how many chunks may wait behind a missing one (0: release at once).
    pub fn new(window: usize) -> Reorder {
        Reorder {
            window,
            next: None,
            held: BTreeMap::new(),
            late: 0,
            skipped: 0,
        }
    }

    /// Takes chunk `chunk`; appends what is now releasable, in order, to `out`.
    pub fn push(&mut self, chunk: u64, payload: Vec<u8>, out: &mut Vec<Vec<u8>>) {
        // Chunks count from 1: a stream that starts there starts at once; one whose
        // first arrival is a later chunk waits (within the window) for the earlier ones.
        if self.next.is_none() && chunk == FIRST_CHUNK {
            self.next = Some(FIRST_CHUNK);
        }
        if self.next.is_some_and(|next| chunk < next) || self.held.contains_key(&chunk) {
            self.late += 1;
            return;
        }
        self.held.insert(chunk, payload);
        self.release(out);
        while self.held.len() > self.window {
            // Give up on the gap before the oldest held chunk.
            let Some((&first, _)) = self.held.first_key_value() else {
                break;
            };
            let next = self.next.unwrap_or(first);
            self.skipped += first.saturating_sub(next);
            self.next = Some(first);
            self.release(out);
        }
    }

    fn release(&mut self, out: &mut Vec<Vec<u8>>) {
        while let Some(next) = self.next {
            match self.held.remove(&next) {
                Some(p) => {
                    out.push(p);
                    self.next = Some(next + 1);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(window: usize, order: &[u64]) -> (Vec<u64>, Reorder) {
        let mut r = Reorder::new(window);
        let mut out = Vec::new();
        for &c in order {
            r.push(c, c.to_le_bytes().to_vec(), &mut out);
        }
        let got = out
            .iter()
            .map(|p| u64::from_le_bytes(p.as_slice().try_into().unwrap()))
            .collect();
        (got, r)
    }

    #[test]
    fn in_order_passes_straight_through() {
        let (got, r) = run(3, &[1, 2, 3, 4]);
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!((r.late, r.skipped), (0, 0));
    }

    #[test]
    fn swapped_chunks_are_put_back_in_order() {
        let (got, r) = run(3, &[1, 3, 2, 5, 4, 6]);
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
        assert_eq!((r.late, r.skipped), (0, 0));
    }

    #[test]
    fn a_lost_chunk_is_skipped_once_the_window_is_full() {
        let (got, r) = run(2, &[1, 3, 4]);
        assert_eq!(got, [1], "3 and 4 wait for 2");
        assert_eq!(r.held.len(), 2);
        let (got, r) = run(2, &[1, 3, 4, 5]);
        assert_eq!(got, [1, 3, 4, 5]);
        assert_eq!(r.skipped, 1);
    }

    #[test]
    fn a_stream_whose_first_chunk_comes_second_starts_in_order() {
        let (got, r) = run(3, &[2, 1, 4, 3]);
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!((r.late, r.skipped), (0, 0));
        // Chunk 1 never comes: given up on once the window is full.
        let (got, r) = run(2, &[2, 3, 4]);
        assert_eq!(got, [2, 3, 4]);
        assert_eq!(
            r.skipped, 0,
            "nothing before the first chunk seen is counted"
        );
    }

    #[test]
    fn late_and_repeated_chunks_are_dropped() {
        let (got, r) = run(1, &[1, 3, 4, 2, 4]);
        assert_eq!(got, [1, 3, 4]);
        assert_eq!(r.late, 2);
        assert_eq!(r.skipped, 1);
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        let mut r = Reorder::new(4);
        let mut out = Vec::new();
        // Every other chunk missing, forever.
        for c in (1..10_000).step_by(2) {
            r.push(c, vec![0; 160], &mut out);
            assert!(r.held.len() <= 4);
        }
    }
}
