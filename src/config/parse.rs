//! The small value parsers every section compiler shares (ranges, durations, names,
//! URL schemes, secrets). They live apart from `compile.rs` and `business.rs` so both
//! can use them without depending on each other: each takes the full key so its
//! error names it.

use std::time::Duration;

use super::{ConfigError, Secret};

type Result<T> = std::result::Result<T, ConfigError>;

pub(super) fn named_or<T>(
    key: &str,
    raw: Option<String>,
    default: T,
    parse: impl Fn(&str) -> Option<T>,
    names: &[&str],
) -> Result<T> {
    match raw {
        None => Ok(default),
        Some(s) => parse(s.trim()).ok_or_else(|| {
            // The value is not repeated (it may be a secret in the wrong key).
            ConfigError::invalid(key, format!("not one of {}", names.join(" | ")))
        }),
    }
}

pub(super) fn int_in(key: &str, v: i64, lo: i64, hi: i64, unit: &str) -> Result<u64> {
    if v < lo || v > hi {
        return Err(ConfigError::invalid(
            key,
            format!("{v} is out of range: must be from {lo} to {hi}{unit}"),
        ));
    }
    u64::try_from(v).map_err(|_| ConfigError::invalid(key, format!("{v} must not be negative")))
}

/// Like [`ms_or`], where 0 means off and any other value must be in `lo..=hi`.
pub(super) fn ms_off_or(
    key: &str,
    raw: Option<i64>,
    lo: i64,
    hi: i64,
    default: Duration,
) -> Result<Duration> {
    match raw {
        Some(0) => Ok(Duration::ZERO),
        other => ms_or(key, other, lo, hi, default),
    }
}

pub(super) fn ms_or(
    key: &str,
    raw: Option<i64>,
    lo: i64,
    hi: i64,
    default: Duration,
) -> Result<Duration> {
    match raw {
        None => Ok(default),
        Some(v) => int_in(key, v, lo, hi, " ms").map(Duration::from_millis),
    }
}

pub(super) fn has_scheme(url: &str, schemes: &[&str]) -> bool {
    let lower = url.to_ascii_lowercase();
    schemes.iter().any(|scheme| {
        lower
            .strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    })
}

pub(super) fn non_empty(raw: Option<String>) -> Option<String> {
    raw.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// A non-empty value from the file/overrides wins, else the conventional variable.
pub(super) fn secret(raw: Option<String>, fallback: &Option<String>) -> Secret {
    Secret::new(
        non_empty(raw)
            .or_else(|| fallback.clone())
            .unwrap_or_default(),
    )
}
