//! Live calls. The only state shared between calls: used for the concurrency limit,
//! drain, and (later) metrics. A call is registered by the server before the upgrade
//! completes and removed when its guard drops, so a call can never be leaked, even if
//! its task panics.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::call_metrics;

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
    /// Live calls per route, for routes' own `max_calls`.
    per_route: DashMap<String, usize>,
    /// Call ids of live calls: ESL events are matched to a call by its id, so two live
    /// calls with one id would see each other's playback events.
    call_ids: DashMap<String, ()>,
    next_key: AtomicU64,
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `server.max_calls`.
    Server(usize),
    /// The route's `max_calls`.
    Route(usize),
    /// A live call already has this call id.
    CallIdInUse,
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

    /// Registers a call unless `max` calls are already live, or `route_max` on its route,
    /// or a live call has the same call id.
    pub fn try_register(
        self: &Arc<Self>,
        entry: CallEntry,
        max: usize,
        route_max: Option<usize>,
    ) -> Result<CallGuard, Full> {
        // Held (its shard locked) until the call is in, so two racing upgrades with one
        // id cannot both get through; nothing else locks `call_ids` while holding
        // another map, so the lock order is fixed.
        let id_slot = match self.call_ids.entry(entry.call_id.clone()) {
            Entry::Occupied(_) => return Err(Full::CallIdInUse),
            Entry::Vacant(slot) => slot,
        };
        // Reserve a slot first so two racing upgrades cannot both take the last one.
        if self.active.fetch_add(1, Ordering::AcqRel) >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Server(max));
        }
        {
            // The entry holds the shard lock: check-and-increment is atomic per route.
            let mut n = self.per_route.entry(entry.route.clone()).or_insert(0);
            if route_max.is_some_and(|m| *n >= m) {
                drop(n);
                self.active.fetch_sub(1, Ordering::AcqRel);
                return Err(Full::Route(route_max.unwrap_or_default()));
            }
            *n += 1;
        }
        id_slot.insert(());
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.calls.insert(key, entry);
        call_metrics::set_active_calls(self.len());
        Ok(CallGuard {
            registry: Arc::clone(self),
            key,
        })
    }

    /// Live calls on `route`.
    pub fn on_route(&self, route: &str) -> usize {
        self.per_route.get(route).map_or(0, |n| *n)
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
        if let Some((_, entry)) = self.registry.calls.remove(&self.key) {
            if let Some(mut n) = self.registry.per_route.get_mut(&entry.route) {
                *n = n.saturating_sub(1);
            }
            self.registry.call_ids.remove(&entry.call_id);
        }
        self.registry.active.fetch_sub(1, Ordering::AcqRel);
        call_metrics::set_active_calls(self.registry.len());
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
        let a = r.try_register(entry("a"), 2, None).unwrap();
        let _b = r.try_register(entry("b"), 2, None).unwrap();
        assert_eq!(
            r.try_register(entry("c"), 2, None).err(),
            Some(Full::Server(2))
        );
        assert_eq!(r.len(), 2);
        drop(a);
        assert_eq!(r.len(), 1);
        assert_eq!(r.snapshot()[0].call_id, "b");
        assert!(r.try_register(entry("c"), 2, None).is_ok());
    }

    #[test]
    fn route_limit_is_separate_and_released() {
        let r = Registry::new();
        let mut other = entry("x");
        other.route = "sales".to_owned();
        let a = r.try_register(entry("a"), 10, Some(1)).unwrap();
        assert_eq!(
            r.try_register(entry("b"), 10, Some(1)).err(),
            Some(Full::Route(1))
        );
        assert_eq!(r.len(), 1, "a refused call does not hold a slot");
        let _x = r.try_register(other, 10, Some(1)).unwrap();
        assert_eq!((r.on_route("call"), r.on_route("sales")), (1, 1));
        drop(a);
        assert_eq!(r.on_route("call"), 0);
        assert!(r.try_register(entry("b"), 10, Some(1)).is_ok());
    }

    #[test]
    fn a_live_call_id_is_refused_until_that_call_ends() {
        let r = Registry::new();
        let a = r.try_register(entry("same"), 10, None).unwrap();
        assert_eq!(
            r.try_register(entry("same"), 10, None).err(),
            Some(Full::CallIdInUse)
        );
        assert_eq!(r.len(), 1, "the refused call holds no slot");
        drop(a);
        let again = r.try_register(entry("same"), 10, None);
        assert!(again.is_ok(), "the id is free once its call ended");
        // A capacity refusal does not leave the id taken.
        let r = Registry::new();
        let _x = r.try_register(entry("x"), 1, None).unwrap();
        assert_eq!(
            r.try_register(entry("y"), 1, None).err(),
            Some(Full::Server(1))
        );
        drop(_x);
        assert!(r.try_register(entry("y"), 1, None).is_ok());
    }
}
