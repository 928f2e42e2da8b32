//! Connections that have not finished the WebSocket handshake, per source and in total.
//!
//! Each one holds a socket, a task and a read buffer until the handshake ends or
//! `handshake_timeout_ms` passes; a peer that opens them faster than they time out
//! would otherwise hold as many as it likes. Counted at accept time (before a task is
//! spawned), released when the handshake ends either way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::Source;

#[derive(Default)]
pub struct Pending {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only sources with at least one connection: at most `total` entries.
    per_source: HashMap<Source, usize>,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooMany {
    /// `max_handshakes_per_ip` from this source.
    Source(usize),
    /// `max_handshakes` in total.
    Total(usize),
}

/// Holding one keeps the connection counted; dropping it releases it.
pub struct PendingGuard {
    pending: Arc<Pending>,
    source: Source,
}

impl Pending {
    pub fn try_enter(
        self: &Arc<Self>,
        source: Source,
        per_source_max: usize,
        total_max: usize,
    ) -> Result<PendingGuard, TooMany> {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = c.per_source.get(&source).copied().unwrap_or(0);
        if mine >= per_source_max {
            return Err(TooMany::Source(per_source_max));
        }
        if c.total >= total_max {
            return Err(TooMany::Total(total_max));
        }
        c.total += 1;
        c.per_source.insert(source, mine + 1);
        Ok(PendingGuard {
            pending: Arc::clone(self),
            source,
        })
    }

    /// (total, from `source`).
    pub fn counts(&self, source: Source) -> (usize, usize) {
        let c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (c.total, c.per_source.get(&source).copied().unwrap_or(0))
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut c = self
            .pending
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn per_source_and_total_caps_and_release() {
        let p = Arc::new(Pending::default());
        let (a, b) = (src("10.0.0.1"), src("10.0.0.2"));
        let a1 = p.try_enter(a, 2, 3).unwrap();
        let _a2 = p.try_enter(a, 2, 3).unwrap();
        assert_eq!(p.try_enter(a, 2, 3).err(), Some(TooMany::Source(2)));
        let _b1 = p.try_enter(b, 2, 3).unwrap();
        assert_eq!(p.try_enter(b, 2, 3).err(), Some(TooMany::Total(3)));
        drop(a1);
        assert_eq!(p.counts(a), (2, 1));
        let _b2 = p.try_enter(b, 2, 3).unwrap();
        assert_eq!(p.counts(b), (3, 2));
    }

    #[test]
    fn released_sources_leave_no_entry() {
        let p = Arc::new(Pending::default());
        for i in 0..100 {
            let g = p.try_enter(src(&format!("10.0.1.{i}")), 1, 10).unwrap();
            drop(g);
        }
        let c = p.inner.lock().unwrap();
        assert_eq!((c.total, c.per_source.len()), (0, 0));
    }
}
