//! The budget state file: today's usage per route, so a restart does not hand every
//! route a fresh budget. Small JSON, replaced atomically (temp file, fsync, rename), so
//! a crash mid-write leaves the previous version, never half a file.
//!
//! ```json
//! { "version": 1, "day": "2025-06-01",
//!   "routes": { "call": { "calls": 12, "seconds": 734.25 } } }
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Usage, DAY};

const VERSION: u32 = 1;

/// What the file holds, as written.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct State {
    version: u32,
    /// The UTC day, `YYYY-MM-DD`.
    day: String,
    routes: BTreeMap<String, RouteUsage>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteUsage {
    calls: u64,
    seconds: f64,
}

/// The outcome of reading the state file at startup.
#[derive(Debug)]
pub enum Loaded {
    /// No `budgets.state_file` configured.
    NoFile,
    /// The file holds today's usage.
    Today(BTreeMap<String, Usage>),
    /// The file does not exist yet.
    Missing,
    /// The file is from another day (this `YYYY-MM-DD`): ignored.
    OtherDay(String),
    /// Unreadable or corrupt: ignored, today starts from zero.
    Unusable(StateFileError),
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read it: {0}")]
    Read(io::Error),
    #[error("not valid budget state JSON: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("unknown version {0} (this voicebridge writes {VERSION})")]
    Version(u32),
    #[error("bad day {0:?} (want YYYY-MM-DD)")]
    Day(String),
    #[error("route {route:?}: bad seconds {seconds}")]
    Seconds { route: String, seconds: f64 },
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
pub(super) fn day_name(day: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(day.saturating_mul(DAY.as_secs()));
    let mut s = humantime::format_rfc3339_seconds(t).to_string();
    s.truncate(10);
    s
}

fn day_number(name: &str) -> Option<u64> {
    if name.len() != 10 {
        return None;
    }
    let t = humantime::parse_rfc3339(&format!("{name}T00:00:00Z")).ok()?;
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(secs / DAY.as_secs())
}

impl State {
    pub(super) fn new(day: u64, routes: Vec<(String, Usage)>) -> State {
        State {
            version: VERSION,
            day: day_name(day),
            routes: routes
                .into_iter()
                .map(|(name, u)| {
                    // Milliseconds are plenty, and keep the file readable.
                    let seconds = (u.time.as_secs_f64() * 1000.0).round() / 1000.0;
                    let usage = RouteUsage {
                        calls: u.calls,
                        seconds,
                    };
                    (name, usage)
                })
                .collect(),
        }
    }
}

/// Reads the file; only usage of `today` is returned.
pub(super) fn read(path: &Path, today: u64) -> Loaded {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Unusable(StateFileError::Read(e)),
    };
    match parse(&text, today) {
        Ok(loaded) => loaded,
        Err(e) => Loaded::Unusable(e),
    }
}

fn parse(text: &[u8], today: u64) -> Result<Loaded, StateFileError> {
    let state: State = serde_json::from_slice(text)?;
    if state.version != VERSION {
        return Err(StateFileError::Version(state.version));
    }
    let Some(day) = day_number(&state.day) else {
        return Err(StateFileError::Day(state.day));
    };
    if day != today {
        return Ok(Loaded::OtherDay(state.day));
    }
    let mut routes = BTreeMap::new();
    for (route, u) in state.routes {
        let Ok(time) = Duration::try_from_secs_f64(u.seconds) else {
            return Err(StateFileError::Seconds {
                route,
                seconds: u.seconds,
            });
        };
        routes.insert(
            route,
            Usage {
                calls: u.calls,
                time,
            },
        );
    }
    Ok(Loaded::Today(routes))
}

/// `<path>.tmp`, next to the file so the rename stays on one filesystem.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces the file atomically: readers (and a restart after a crash) see the old
/// version or the new one, never a torn write.
pub(super) fn write(path: &Path, state: &State) -> io::Result<()> {
    let mut json = serde_json::to_vec_pretty(state)?;
    json.push(b'\n');
    let temp = temp_path(path);
    {
        let mut f = File::create(&temp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    fs::rename(&temp, path)?;
    // Make the rename itself durable; not every filesystem lets a directory be synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
