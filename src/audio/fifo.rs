//! A byte FIFO with a read cursor: appends at the end, takes whole frames from the
//! front, and compacts only now and then, so taking a frame never shifts the buffer.
//! Shared by the `Reframer` (inbound) and the `Pacer` (outbound).
//!
//! A burst (a reply delivered faster than real time) grows the buffer; once it has all
//! been taken, memory above [`KEEP_WHEN_EMPTY`] goes back to the allocator, so a call
//! between replies holds a few KiB rather than its largest reply. A steady stream that
//! stays under it is never reallocated.

/// Capacity an empty FIFO keeps; more is released when the FIFO drains.
pub(crate) const KEEP_WHEN_EMPTY: usize = 4 * 1024;

#[derive(Debug)]
pub(crate) struct ByteFifo {
    buf: Vec<u8>,
    read: usize,
    /// Consumed bytes at the front are dropped once there are this many.
    compact_at: usize,
}

impl ByteFifo {
    pub(crate) fn new(capacity: usize, compact_at: usize) -> ByteFifo {
        ByteFifo {
            buf: Vec::with_capacity(capacity),
            read: 0,
            compact_at,
        }
    }

    /// Bytes not yet taken.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.read
    }

    #[inline]
    pub(crate) fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Appends `n` copies of `byte` (codec silence).
    pub(crate) fn pad(&mut self, n: usize, byte: u8) {
        self.buf.resize(self.buf.len() + n, byte);
    }

    /// Moves exactly `n` bytes from the front to `out`; false (and nothing moved) if
    /// fewer are queued.
    #[inline]
    pub(crate) fn take_into(&mut self, n: usize, out: &mut Vec<u8>) -> bool {
        self.take_with(n, |front| out.extend_from_slice(front))
    }

    /// Appends whatever `fill` pushes onto the buffer (bytes computed in place).
    #[inline]
    pub(crate) fn extend_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        fill(&mut self.buf);
    }

    /// Hands exactly `n` bytes from the front to `take` and drops them; false (and
    /// nothing taken) if fewer are queued.
    #[inline]
    pub(crate) fn take_with(&mut self, n: usize, take: impl FnOnce(&[u8])) -> bool {
        if self.len() < n {
            return false;
        }
        take(&self.buf[self.read..self.read + n]);
        self.read += n;
        if self.read == self.buf.len() {
            self.clear();
        } else if self.read >= self.compact_at {
            self.buf.drain(..self.read);
            self.read = 0;
        }
        true
    }

    pub(crate) fn clear(&mut self) {
        if self.buf.capacity() > KEEP_WHEN_EMPTY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.read = 0;
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes held in memory, consumed ones included (for bounds tests).
    #[cfg(test)]
    pub(crate) fn allocated_len(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let mut f = ByteFifo::new(0, 16 * 1024);
        let mut out = Vec::new();
        f.extend(&[7u8; 320 * 200]);
        assert!(f.capacity() >= 320 * 200);
        while f.take_into(320, &mut out) {}
        assert_eq!(f.len(), 0);
        assert!(f.capacity() <= KEEP_WHEN_EMPTY, "kept {}", f.capacity());
        assert_eq!(out.len(), 320 * 200);
        // A barge-in's flush releases it too.
        f.extend(&[1u8; 32 * 1024]);
        f.clear();
        assert!(f.capacity() <= KEEP_WHEN_EMPTY);
    }

    #[test]
    fn a_steady_stream_keeps_its_buffer() {
        // Each frame is taken as soon as it arrives (a provider at real time).
        let mut f = ByteFifo::new(1280, 16 * 1024);
        let mut out = Vec::new();
        let before = f.capacity();
        for i in 0..1000u32 {
            f.extend(&[(i % 251) as u8; 320]);
            out.clear();
            assert!(f.take_into(320, &mut out));
            assert_eq!(f.capacity(), before, "frame {i}");
        }
    }

    #[test]
    fn takes_in_order_and_stays_bounded() {
        let mut f = ByteFifo::new(0, 64);
        let mut out = Vec::new();
        for i in 0..1000u32 {
            f.extend(&[(i % 251) as u8; 7]);
            while f.take_into(10, &mut out) {}
            assert!(f.allocated_len() < 64 + 20);
        }
        assert_eq!(out.len() + f.len(), 7000);
        assert!(out
            .iter()
            .enumerate()
            .all(|(k, &b)| b == ((k / 7) % 251) as u8));
        assert!(!f.take_into(f.len() + 1, &mut out));
        f.pad(3, 0xFF);
        f.clear();
        assert_eq!(f.len(), 0);
    }
}
