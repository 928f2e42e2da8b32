//! Live calls. The only state shared between calls: used for the concurrency limit,
//! drain, and (later) metrics. A call is registered by the server before the upgrade
//! completes and removed when its guard drops, so a call can never be leaked, even if
//! its task panics.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

/// What is known about a live call.
#[derive(Clone, Debug)]
pub struct CallEntry {
    pub call_id: String,
    pub route: String,
    pub provider: &'static str,
    pub started: Instant,
}

#[derive(Default)]
pub struct Registry {
    calls: DashMap<u64, CallEntry>,
    active: AtomicUsize,
    next_key: AtomicU64,
}

/// Holding one keeps the call counted; dropping it removes the call.
pub struct CallGuard {
    registry: Arc<Registry>,
    key: u64,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Registers a call unless `max` calls are already live.
    pub fn try_register(self: &Arc<Self>, entry: CallEntry, max: usize) -> Option<CallGuard> {
        // Reserve a slot first so two racing upgrades cannot both take the last one.
        if self.active.fetch_add(1, Ordering::AcqRel) >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.calls.insert(key, entry);
        Some(CallGuard {
            registry: Arc::clone(self),
            key,
        })
    }

    pub fn len(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<CallEntry> {
        self.calls.iter().map(|e| e.value().clone()).collect()
    }
}

impl CallGuard {
    /// Updates the entry once more is known (e.g. the provider).
    pub fn update(&self, f: impl FnOnce(&mut CallEntry)) {
        if let Some(mut e) = self.registry.calls.get_mut(&self.key) {
            f(e.value_mut());
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.registry.calls.remove(&self.key);
        self.registry.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> CallEntry {
        CallEntry {
            call_id: id.to_owned(),
            route: "call".to_owned(),
            provider: "echo",
            started: Instant::now(),
        }
    }

    #[test]
    fn limit_and_release() {
        let r = Registry::new();
        let a = r.try_register(entry("a"), 2).unwrap();
        let _b = r.try_register(entry("b"), 2).unwrap();
        assert!(r.try_register(entry("c"), 2).is_none());
        assert_eq!(r.len(), 2);
        drop(a);
        assert_eq!(r.len(), 1);
        assert_eq!(r.snapshot()[0].call_id, "b");
        assert!(r.try_register(entry("c"), 2).is_some());
    }
}
