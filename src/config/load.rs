//! Plumbing between the outside world and `compile()`: splits the environment into
//! `VOICEBRIDGE__...` overrides and the conventional secret variables, merges file and
//! overrides with the `config` crate, and turns that crate's errors into
//! [`ConfigError`]s that name the full key (and the variable, when env set it).

use std::collections::HashMap;

use config::{Environment, File, FileFormat};

use super::compile::compile;
use super::env_secrets::{EnvSecrets, WEBHOOK_SECRET_VAR};
use super::raw::RawConfig;
use super::{Config, ConfigError};

/// Lower-cased, as the `config` crate compares it.
const PREFIX: &str = "voicebridge__";
/// Read by the CLI, not an override; must not trigger the "did you mean" note.
const CONFIG_PATH_VAR: &str = "VOICEBRIDGE_CONFIG";

/// What `load` needs from the environment, read once.
#[derive(Debug, Default)]
struct EnvInput {
    /// `VOICEBRIDGE__...` variables (original names) for the `config` crate.
    overrides: config::Map<String, String>,
    /// Dotted key (`server.listen`) → the variable that set it, to name it in errors.
    var_of_key: HashMap<String, String>,
    secrets: EnvSecrets,
    /// Harmless oddities worth a startup warning.
    notes: Vec<String>,
}

pub(crate) fn load(
    toml: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let env = scan(env)?;
    let merged = config::Config::builder()
        .add_source(File::from_str(toml, FileFormat::Toml))
        .add_source(
            // No `try_parsing`: every value stays a string and the `config` crate
            // converts it when a number or bool is asked for. With `try_parsing`, a token
            // or key like `007` would become the integer 7. Lists are split by the
            // `auth_tokens` deserializer instead (see raw.rs).
            Environment::with_prefix("VOICEBRIDGE")
                .prefix_separator("__")
                .separator("__")
                .ignore_empty(true)
                .source(Some(env.overrides.clone())),
        )
        .build()
        .map_err(|e| convert(e, origin, &env))?;
    let raw: RawConfig = merged
        .try_deserialize()
        .map_err(|e| convert(e, origin, &env))?;
    compile(raw, &env.secrets, env.notes.clone()).map_err(|e| name_env_var(e, &env))
}

fn scan(env: impl IntoIterator<Item = (String, String)>) -> Result<EnvInput, ConfigError> {
    let mut out = EnvInput::default();
    for (name, value) in env {
        let lower = name.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix(PREFIX) {
            // Same rule as `.ignore_empty(true)`: an empty variable means "unset".
            if value.is_empty() {
                continue;
            }
            let segments: Vec<&str> = rest.split("__").collect();
            let well_formed = segments.iter().all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
            if !well_formed {
                return Err(ConfigError::Env {
                    var: name,
                    message: "expected VOICEBRIDGE__SECTION__KEY (letters, digits, single \
                              underscores inside a name), e.g. VOICEBRIDGE__SERVER__LISTEN"
                        .to_string(),
                });
            }
            if segments.first() == Some(&"routes") {
                return Err(ConfigError::Env {
                    var: name,
                    message: "[[routes]] cannot be set from the environment; define routes in \
                              the config file"
                        .to_string(),
                });
            }
            if segments.first() == Some(&"audiosocket") {
                return Err(ConfigError::Env {
                    var: name,
                    message: "[[audiosocket]] cannot be set from the environment; define the \
                              listeners in the config file"
                        .to_string(),
                });
            }
            out.var_of_key.insert(segments.join("."), name.clone());
            out.overrides.insert(name, value);
            continue;
        }
        if lower.starts_with("voicebridge_")
            && name != CONFIG_PATH_VAR
            && name != WEBHOOK_SECRET_VAR
        {
            out.notes.push(format!(
                "environment variable {name} is ignored: overrides are spelled \
                 VOICEBRIDGE__SECTION__KEY, with double underscores"
            ));
            continue;
        }
        // Keys never contain whitespace; a trailing newline from `$(cat file)` would
        // otherwise end up in an HTTP header.
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        out.secrets.offer(&name, value);
    }
    Ok(out)
}

/// Flattens the `config` crate's error (a key path wrapped around a serde message or
/// a type mismatch) into ours.
fn convert(err: config::ConfigError, origin: &str, env: &EnvInput) -> ConfigError {
    let mut key: Option<String> = None;
    let mut err = err;
    // `At` wraps a message with the path of the map it happened in; unwrap it.
    while let config::ConfigError::At {
        error, key: at_key, ..
    } = err
    {
        if key.is_none() {
            key = at_key;
        }
        err = *error;
    }
    let ours = match err {
        config::ConfigError::FileParse { cause, .. } => ConfigError::Syntax {
            origin: origin.to_string(),
            message: without_quoted_source(&cause.to_string()),
        },
        config::ConfigError::Type {
            unexpected,
            expected,
            key: type_key,
            ..
        } => ConfigError::invalid(
            type_key.or(key).unwrap_or_default(),
            without_string_values(&format!("expected {expected}, found {unexpected}")),
        ),
        config::ConfigError::NotFound(missing) => {
            ConfigError::invalid(missing, "required key is missing")
        }
        config::ConfigError::Message(message) => match unknown_field(&message) {
            None => {
                let message = without_string_values(&plain_type_names(&message));
                match key {
                    Some(key) => ConfigError::invalid(key, message),
                    None => ConfigError::Other(message),
                }
            }
            Some((field, expected)) => ConfigError::UnknownKey {
                key: join(key.as_deref(), field),
                expected: expected.to_string(),
                env_var: None,
            },
        },
        other => match key {
            Some(key) => ConfigError::invalid(key, other.to_string()),
            None => ConfigError::Other(other.to_string()),
        },
    };
    name_env_var(ours, env)
}

/// The TOML parser quotes the offending line under a `|` gutter; that line may hold a
/// key (`api_key = "sk-…" oops`), so only the position and the reason are kept, on
/// one line: "TOML parse error at line 2, column 28: expected newline".
fn without_quoted_source(message: &str) -> String {
    let kept: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| {
            let gutter = l
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !l.is_empty() && !gutter.starts_with('|')
        })
        .collect();
    kept.join(": ")
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into (`x`, "expected
/// one of `a`, `b`"). Other wordings ("there are no fields") pass through as they are.
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest.trim_start_matches(',').trim();
    Some((field, expected))
}

/// serde names the Rust type a table maps to ("expected struct RawServer"); users
/// know it as a TOML table.
fn plain_type_names(message: &str) -> String {
    const RAW: &str = "struct Raw";
    match message.find(RAW) {
        Some(at) => {
            let rest = &message[at + RAW.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(rest.len());
            format!("{}a table{}", &message[..at], &rest[end..])
        }
        None => message.to_string(),
    }
}

/// serde's and the config crate's messages quote the offending value (`unknown variant
/// `sk-…``, `invalid type: string "sk-…"`, `found string "sk-…"`); it may be a secret
/// in the wrong key, so the value is replaced and only the reason and the allowed
/// values are kept.
fn without_string_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let variant = rest.find("variant `").map(|i| (i + "variant `".len(), '`'));
        let quoted = rest.find('"').map(|i| (i + 1, '"'));
        let next = match (variant, quoted) {
            (Some(v), Some(q)) => Some(if v.0 <= q.0 { v } else { q }),
            (v, q) => v.or(q),
        };
        let Some((start, close)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..start]);
        match rest[start..].find(close) {
            Some(len) => {
                out.push('…');
                out.push(close);
                rest = &rest[start + len + 1..];
            }
            None => {
                out.push('…');
                return out;
            }
        }
    }
}

fn join(parent: Option<&str>, field: &str) -> String {
    match parent {
        Some(parent) if !parent.is_empty() => format!("{parent}.{field}"),
        _ => field.to_string(),
    }
}

impl EnvInput {
    /// The variable that set `key`, or something under it (an unknown section such as
    /// `nope` comes from `VOICEBRIDGE__NOPE__X`).
    fn var_for(&self, key: &str) -> Option<String> {
        if let Some(var) = self.var_of_key.get(key) {
            return Some(var.clone());
        }
        let prefix = format!("{key}.");
        let mut vars: Vec<&String> = self
            .var_of_key
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, var)| var)
            .collect();
        // Deterministic when several match (the map's order is not).
        vars.sort();
        vars.first().map(|v| v.to_string())
    }
}

/// Adds "(set by environment variable ...)" when an override supplied the key.
fn name_env_var(err: ConfigError, env: &EnvInput) -> ConfigError {
    match err {
        ConfigError::Invalid {
            key,
            message,
            env_var: None,
        } => ConfigError::Invalid {
            env_var: env.var_for(&key),
            key,
            message,
        },
        ConfigError::UnknownKey {
            key,
            expected,
            env_var: None,
        } => ConfigError::UnknownKey {
            env_var: env.var_for(&key),
            key,
            expected,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_serde_unknown_field() {
        assert_eq!(
            unknown_field("unknown field `foo`, expected one of `a`, `b`"),
            Some(("foo", "expected one of `a`, `b`"))
        );
        assert_eq!(
            unknown_field("unknown field `foo`, expected `a`"),
            Some(("foo", "expected `a`"))
        );
        assert_eq!(unknown_field("something else"), None);
    }

    #[test]
    fn string_values_are_left_out_of_serde_messages() {
        assert_eq!(
            without_string_values("unknown variant `sk-1`, expected one of `a`, `b`"),
            "unknown variant `…`, expected one of `a`, `b`"
        );
        assert_eq!(
            without_string_values("invalid type: string \"sk-1\", expected u32"),
            "invalid type: string \"…\", expected u32"
        );
        assert_eq!(without_string_values("cut \"sk-1"), "cut \"…");
        assert_eq!(without_string_values("plain"), "plain");
    }
}
