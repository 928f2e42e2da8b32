//! A string that must never reach a log line.
//!
//! API keys, bearer tokens and the ESL password travel through `Config`, which is
//! printed with `{:?}` by tests and by anyone debugging startup. Wrapping them in a type
//! whose `Debug`/`Display` redact makes leaking one an explicit act (`expose()`), easy to
//! spot in review, instead of an accident of a derived `Debug`.

use std::fmt;

/// A redacted secret: `Debug` and `Display` print `[redacted]` (or an empty value when
/// the secret is empty, so "not configured" stays visible); [`Secret::expose`] gives the
/// value for the one place that needs it (an HTTP header, an ESL `auth` line).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares with a candidate (e.g. a bearer token from a request) in time that
    /// depends only on the lengths, so the comparison cannot be used as an oracle to
    /// guess a token byte by byte.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("[redacted]")
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            f.write_str("[redacted]")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts() {
        let s = Secret::new("sk-test-123");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose(), "sk-test-123");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        assert_eq!(format!("{}", Secret::default()), "");
    }

    #[test]
    fn matches() {
        let s = Secret::new("abc");
        assert!(s.matches("abc"));
        assert!(!s.matches("abd"));
        assert!(!s.matches("ab"));
        assert!(!s.matches(""));
    }
}
