//! Startup errors a person can act on.
//!
//! Every error names the key (`server.listen`, `routes[1].provider`), says what was
//! wrong and what is allowed, and, when the value came from an environment override,
//! which variable set it: the most common "but my file says..." confusion.

use std::path::PathBuf;

/// Why the configuration could not be loaded. `Display` is the whole message, one line.
/// TOML syntax errors give the line and column but never quote the line: it may hold
/// a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{origin}: invalid TOML: {message}")]
    Syntax { origin: String, message: String },
    /// A key voicebridge does not know (a typo, or a key from another version).
    #[error("{key}: unknown key{}; {expected}", from_env(.env_var))]
    UnknownKey {
        key: String,
        /// What is allowed at that place, e.g. "expected one of `listen`, `max_calls`".
        expected: String,
        /// The `VOICEBRIDGE__...` variable that introduced it, if any.
        env_var: Option<String>,
    },
    /// A known key with a value that is not allowed, or a combination that cannot work.
    #[error("{key}: {message}{}", from_env(.env_var))]
    Invalid {
        key: String,
        message: String,
        env_var: Option<String>,
    },
    /// An environment variable that cannot be mapped to a key at all.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// Anything the `config` crate reports that fits none of the above.
    #[error("{0}")]
    Other(String),
}

fn from_env(var: &Option<String>) -> String {
    match var {
        Some(var) => format!(" (set by environment variable {var})"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The dotted key the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
            env_var: None,
        }
    }
}
