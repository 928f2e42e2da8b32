//! Scratch buffers shared by every call on a thread.
//!
//! Converting a message needs room for its samples on the way (decoded, resampled,
//! re-encoded, one 20 ms frame at a time). Kept per call, that room is sized by the
//! call's largest message and held for the whole call: about 8 KB per call for `pcm24`,
//! a sixth of its memory. A call's audio is converted synchronously, one call at a time
//! per thread, so one set per thread does the same work for every call.
//!
//! A [`Scratch`] takes its thread's buffer (empty, with its capacity) and gives it back
//! when dropped. Nothing can panic: a second guard taken while the first is out (which
//! the engine does not do) just starts from an empty `Vec`, and a buffer grown past
//! [`KEEP_BYTES`] by an unusually large message is freed instead of kept.

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// Largest buffer a thread keeps between uses (a 24 kHz message of ~1.3 s as `i16`).
pub const KEEP_BYTES: usize = 64 * 1024;

thread_local! {
    static FRAME: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static CONVERTED: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static LINEAR_IN: Cell<Vec<i16>> = const { Cell::new(Vec::new()) };
    static LINEAR_OUT: Cell<Vec<i16>> = const { Cell::new(Vec::new()) };
}

/// A thread's scratch buffer, empty when taken, returned to the thread when dropped.
pub struct Scratch<T: 'static> {
    buf: Vec<T>,
    home: &'static LocalKey<Cell<Vec<T>>>,
}

impl<T: 'static> Scratch<T> {
    fn take(home: &'static LocalKey<Cell<Vec<T>>>) -> Scratch<T> {
        // `try_with` fails only while the thread is being torn down.
        let mut buf = home.try_with(Cell::take).unwrap_or_default();
        buf.clear();
        Scratch { buf, home }
    }
}

impl<T: 'static> Drop for Scratch<T> {
    fn drop(&mut self) {
        if self.buf.capacity() * std::mem::size_of::<T>() > KEEP_BYTES {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let _ = self.home.try_with(|cell| cell.set(buf));
    }
}

impl<T: 'static> Deref for Scratch<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.buf
    }
}

impl<T: 'static> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.buf
    }
}

/// Room for one frame of audio on its way out (a frame read or released).
pub fn frame() -> Scratch<u8> {
    Scratch::take(&FRAME)
}

/// Room for a message's audio after conversion.
pub fn converted() -> Scratch<u8> {
    Scratch::take(&CONVERTED)
}

/// Linear samples decoded from a message (the transcoder's input side).
pub(crate) fn linear_in() -> Scratch<i16> {
    Scratch::take(&LINEAR_IN)
}

/// Linear samples after resampling (the transcoder's output side).
pub(crate) fn linear_out() -> Scratch<i16> {
    Scratch::take(&LINEAR_OUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_empty_with_its_capacity() {
        let ptr = {
            let mut a = converted();
            a.extend_from_slice(&[1, 2, 3]);
            a.reserve(1000);
            a.as_ptr()
        };
        let b = converted();
        assert!(b.is_empty());
        assert!(b.capacity() >= 1003);
        assert_eq!(b.as_ptr(), ptr, "the same allocation is reused");
    }

    #[test]
    fn a_second_guard_gets_its_own_buffer() {
        let mut a = frame();
        let mut b = frame();
        a.push(1);
        b.push(2);
        assert_eq!((&a[..], &b[..]), (&[1u8][..], &[2u8][..]));
    }

    #[test]
    fn an_oversized_buffer_is_not_kept() {
        {
            let mut a = linear_out();
            a.resize(KEEP_BYTES, 0); // 2 bytes each: twice the limit
        }
        assert_eq!(linear_out().capacity(), 0);
    }
}
