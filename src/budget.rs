//! Per-route daily budgets, so a misconfigured dialplan (a loop, a campaign pointed at
//! the wrong route) cannot run up a provider bill.
//!
//! Each route counts, per UTC day, the calls admitted and the call time used: ended
//! calls' durations plus the elapsed time of the calls still running. A new call is
//! refused once either reaches the route's `daily_max_calls` / `daily_max_minutes`;
//! running calls are never cut. A call that spans midnight is split: the time before
//! midnight belonged to the old day (and is forgotten with it), the time after counts
//! against the new day; the call itself counts only on the day it was admitted.
//!
//! Day boundaries come from the wall clock (UTC), durations from the monotonic clock,
//! so an NTP step can move midnight but never stretches or shrinks a call. Counting
//! happens once per call, never per frame: a map entry per route, locked for a few
//! microseconds at admission and at hang-up. See `docs/budgets.md`.

mod state_file;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::call_metrics;
use crate::config::Route;

pub use state_file::{Loaded, StateFileError};

const DAY: Duration = Duration::from_secs(86_400);
/// Refusals on a route are logged at most this often; the line counts those in between.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// The state file is written at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// While calls run their time grows without any admission or hang-up: save anyway
/// this often, so a crash loses at most this much of it.
const SAVE_RUNNING_EVERY: Duration = Duration::from_secs(30);

/// Where budgets read the time. The daemon uses [`SystemClock`]; tests move a fake one.
pub trait Clock: Send + Sync {
    /// Wall-clock time: decides the UTC day.
    fn now(&self) -> SystemTime;
    /// Monotonic time: measures calls.
    fn instant(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// Which daily limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `daily_max_calls`.
    Calls,
    /// `daily_max_minutes`.
    Minutes,
}

impl Limit {
    /// The `limit` label of the refusal metric and log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Calls => "calls",
            Limit::Minutes => "minutes",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call refused because its route's budget for today is used up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("daily {limit} budget of route {route:?} used up: {used} of {max}")]
pub struct Exceeded {
    pub route: String,
    pub limit: Limit,
    /// Today's usage in the limit's unit (calls, or whole minutes): at least `max`.
    pub used: u64,
    pub max: u64,
    /// Until the next UTC midnight, when the budget starts again (whole seconds, >= 1).
    pub retry_after: Duration,
    /// `Some(n)`: log this refusal, the n-th on the route since the last line (this
    /// one included). `None`: a line was written less than a minute ago; stay quiet.
    pub log: Option<u64>,
}

/// Today's usage of one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub calls: u64,
    /// Ended calls plus the elapsed part of running ones, all since midnight.
    pub time: Duration,
}

/// "Now", read once per operation so all its parts agree.
struct Now {
    /// Days since 1970-01-01 (UTC).
    day: u64,
    mono: Instant,
    /// Today's midnight on the monotonic clock; `None` if it is before the clock's
    /// origin (every call we know of started after it).
    midnight: Option<Instant>,
    until_midnight: Duration,
}

/// One route's counters for `day`.
struct RouteState {
    day: u64,
    calls: u64,
    /// Time of the calls that ended today (since midnight).
    ended: Duration,
    /// Running calls: ticket key -> start.
    running: HashMap<u64, Instant>,
    warned_at: Option<Instant>,
    /// Refusals since the last log line.
    refused: u64,
}

impl RouteState {
    fn new(day: u64) -> RouteState {
        RouteState {
            day,
            calls: 0,
            ended: Duration::ZERO,
            running: HashMap::new(),
            warned_at: None,
            refused: 0,
        }
    }

    /// Starts a new day. Only forwards: a wall clock stepped back over midnight keeps
    /// today's counters instead of resurrecting yesterday.
    fn roll(&mut self, now: &Now) {
        if now.day > self.day {
            self.day = now.day;
            self.calls = 0;
            self.ended = Duration::ZERO;
        }
    }

    /// The part of a call started at `start` that falls today.
    fn today(start: Instant, now: &Now) -> Duration {
        let from = now.midnight.map_or(start, |m| start.max(m));
        now.mono.saturating_duration_since(from)
    }

    /// Usage as of `now`, without rolling (a stale day reads as zero).
    fn usage(&self, now: &Now) -> Usage {
        let running = self.running.values().map(|s| Self::today(*s, now)).sum();
        if now.day > self.day {
            return Usage {
                calls: 0,
                time: running,
            };
        }
        Usage {
            calls: self.calls,
            time: self.ended + running,
        }
    }
}

/// All routes' budgets. One per daemon, shared by the listener, the admin endpoint
/// and the saver task.
pub struct Budgets {
    clock: Box<dyn Clock>,
    routes: DashMap<String, RouteState>,
    next_key: AtomicU64,
    state_file: Option<PathBuf>,
    /// Set on admission and hang-up; the saver waits on it.
    changed: Notify,
    /// Serialises writers of the state file (the saver and the final save).
    save_lock: Mutex<()>,
    /// The last save failed: the next failure is not logged again.
    save_failing: AtomicBool,
    /// Successful saves so far (watched by tests).
    saves: watch::Sender<u64>,
}

/// Held by an admitted call for its whole life; dropping it charges the call's time.
#[must_use = "dropping the ticket ends the call's charge at once"]
pub struct Ticket {
    budgets: Arc<Budgets>,
    route: String,
    key: u64,
    /// The UTC day it was admitted on.
    day: u64,
    /// `false` once cancelled: nothing is charged on drop.
    live: bool,
}

impl Budgets {
    /// Budgets on the system clock, with today's usage read from `state_file` if it
    /// holds today's. A missing, unreadable or corrupt file never fails: it is logged
    /// and the day starts from zero.
    pub fn open(state_file: Option<PathBuf>) -> Arc<Budgets> {
        Self::open_with(state_file, Box::new(SystemClock)).0
    }

    fn open_with(state_file: Option<PathBuf>, clock: Box<dyn Clock>) -> (Arc<Budgets>, Loaded) {
        let budgets = Budgets {
            clock,
            routes: DashMap::new(),
            next_key: AtomicU64::new(0),
            state_file,
            changed: Notify::new(),
            save_lock: Mutex::new(()),
            save_failing: AtomicBool::new(false),
            saves: watch::Sender::new(0),
        };
        let loaded = budgets.load();
        (Arc::new(budgets), loaded)
    }

    fn now(&self) -> Now {
        let wall = self.clock.now();
        let mono = self.clock.instant();
        // Before 1970 only on a broken clock: call it day 0 rather than fail.
        let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since_epoch.as_secs();
        let into_day = Duration::new(secs % DAY.as_secs(), since_epoch.subsec_nanos());
        Now {
            day: secs / DAY.as_secs(),
            mono,
            midnight: mono.checked_sub(into_day),
            until_midnight: Duration::from_secs(DAY.as_secs() - secs % DAY.as_secs()),
        }
    }

    /// Admits a call on `route` if neither of its daily limits (as configured in this
    /// snapshot of the route) is reached, and counts it.
    pub fn try_admit(self: &Arc<Self>, route: &Route) -> Result<Ticket, Exceeded> {
        let now = self.now();
        let mut state = self
            .routes
            .entry(route.name.clone())
            .or_insert_with(|| RouteState::new(now.day));
        state.roll(&now);
        let usage = state.usage(&now);
        let max_calls = route.call.daily_max_calls;
        let max_minutes = route.call.daily_max_minutes;
        let refused = if max_calls > 0 && usage.calls >= max_calls {
            Some((Limit::Calls, usage.calls, max_calls))
        } else if max_minutes > 0 && usage.time.as_secs() >= max_minutes.saturating_mul(60) {
            Some((Limit::Minutes, usage.time.as_secs() / 60, max_minutes))
        } else {
            None
        };
        if let Some((limit, used, max)) = refused {
            state.refused += 1;
            let quiet = state
                .warned_at
                .is_some_and(|t| now.mono.saturating_duration_since(t) < WARN_EVERY);
            let log = (!quiet).then(|| {
                state.warned_at = Some(now.mono);
                std::mem::take(&mut state.refused)
            });
            return Err(Exceeded {
                route: route.name.clone(),
                limit,
                used,
                max,
                retry_after: now.until_midnight,
                log,
            });
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        state.calls += 1;
        state.running.insert(key, now.mono);
        drop(state);
        self.changed.notify_one();
        Ok(Ticket {
            budgets: Arc::clone(self),
            route: route.name.clone(),
            key,
            day: now.day,
            live: true,
        })
    }

    /// Today's usage of `route` (zero for a route never seen).
    pub fn usage(&self, route: &str) -> Usage {
        let now = self.now();
        self.routes
            .get(route)
            .map(|s| s.usage(&now))
            .unwrap_or_default()
    }

    /// Sets the usage gauges; the admin endpoint calls it before rendering `/metrics`
    /// so running calls' time is current without any timer.
    pub fn publish_metrics(&self) {
        let now = self.now();
        for entry in self.routes.iter() {
            let u = entry.value().usage(&now);
            call_metrics::budget_usage(entry.key(), u.calls, u.time);
        }
    }

    fn any_running(&self) -> bool {
        self.routes.iter().any(|e| !e.value().running.is_empty())
    }

    /// Ends a ticket admitted on `day`: `charge` adds its time today, otherwise the
    /// admission is undone.
    fn finish(&self, route: &str, key: u64, day: u64, charge: bool) {
        let now = self.now();
        if let Some(mut state) = self.routes.get_mut(route) {
            let started = state.running.remove(&key);
            state.roll(&now);
            match started {
                Some(start) if charge => state.ended += RouteState::today(start, &now),
                // Admitted on a day already rolled away: there is nothing to undo.
                Some(_) if state.day == day => state.calls = state.calls.saturating_sub(1),
                _ => {}
            }
        }
        self.changed.notify_one();
    }

    /// Saves the state file now (no-op without one), logging a failure once per run of
    /// failures. Used by the saver and at shutdown.
    pub fn save(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let _one_writer = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        match state_file::write(path, &self.snapshot()) {
            Ok(()) => {
                self.saves.send_modify(|n| *n += 1);
                if self.save_failing.swap(false, Ordering::Relaxed) {
                    info!(path = %path.display(), "budget state file saved again");
                }
            }
            Err(e) => {
                if !self.save_failing.swap(true, Ordering::Relaxed) {
                    warn!(path = %path.display(), error = %e, "cannot save the budget state file; budgets keep counting in memory");
                }
            }
        }
    }

    fn snapshot(&self) -> state_file::State {
        let now = self.now();
        let routes = self
            .routes
            .iter()
            .filter(|e| e.value().day >= now.day)
            .map(|e| (e.key().clone(), e.value().usage(&now)))
            .collect();
        state_file::State::new(now.day, routes)
    }

    fn load(&self) -> Loaded {
        let Some(path) = &self.state_file else {
            return Loaded::NoFile;
        };
        let now = self.now();
        let loaded = state_file::read(path, now.day);
        match &loaded {
            Loaded::Today(routes) => {
                for (name, usage) in routes {
                    let mut state = RouteState::new(now.day);
                    state.calls = usage.calls;
                    state.ended = usage.time;
                    self.routes.insert(name.clone(), state);
                }
                info!(path = %path.display(), routes = routes.len(), "budget state loaded: today's usage goes on");
            }
            Loaded::OtherDay(day) => {
                info!(path = %path.display(), file_day = %day, "budget state file is from another day: today starts from zero")
            }
            Loaded::NoFile => {}
            Loaded::Missing => {
                info!(path = %path.display(), "no budget state file yet: today starts from zero")
            }
            Loaded::Unusable(why) => {
                warn!(path = %path.display(), error = %why, "budget state file unusable: today's budgets start from zero")
            }
        }
        loaded
    }

    /// Writes the state file at most once a second after changes (and every 30 s while
    /// calls run) until `stop`; the caller saves once more after the last call ended.
    pub async fn run_saver(self: Arc<Self>, stop: CancellationToken) {
        if self.state_file.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(SAVE_RUNNING_EVERY), if self.any_running() => {}
            }
            let me = Arc::clone(&self);
            // File I/O (with fsync) stays off the runtime's worker threads.
            let _ = tokio::task::spawn_blocking(move || me.save()).await;
            // Changes during this pause leave a permit in `changed`: saved right after.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SAVE_EVERY) => {}
            }
        }
    }
}

impl Ticket {
    /// The route this ticket counts on.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Undoes the admission (the call was refused later, e.g. at capacity): it neither
    /// counts as a call nor uses time.
    pub fn cancel(mut self) {
        self.live = false;
        self.budgets.finish(&self.route, self.key, self.day, false);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.live {
            self.budgets.finish(&self.route, self.key, self.day, true);
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("route", &self.route)
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests;
