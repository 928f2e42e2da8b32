//! Where the daemon's configuration comes from: the file named on the command line (or
//! found at `config/default.toml`), or the built-in defaults. `serve`, its SIGHUP reload
//! and `check` all load it the same way, so they live here once.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

/// The config file used when none is named, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "config/default.toml";

/// Where the configuration comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// Named by `--config` / `VOICEBRIDGE_CONFIG` (must exist), or found at
    /// [`DEFAULT_CONFIG`].
    File(PathBuf),
    /// None named and none at [`DEFAULT_CONFIG`] (e.g. started outside the repository):
    /// the built-in defaults, the same as an empty file, plus environment overrides.
    BuiltIn,
}

impl ConfigSource {
    pub fn resolve(given: Option<PathBuf>) -> ConfigSource {
        match given {
            Some(path) => ConfigSource::File(path),
            None => {
                let path = PathBuf::from(DEFAULT_CONFIG);
                // An unreadable file is not "none found": loading it says why.
                if matches!(path.try_exists(), Ok(false)) {
                    ConfigSource::BuiltIn
                } else {
                    ConfigSource::File(path)
                }
            }
        }
    }

    pub fn load(&self, env: Vec<(String, String)>) -> Result<Config, crate::config::ConfigError> {
        match self {
            ConfigSource::File(path) => Config::load(path, env),
            ConfigSource::BuiltIn => Config::from_toml_str("", env),
        }
    }
}

/// The one line said when no config file is used.
pub const BUILT_IN_NOTE: &str = "no config file given (--config / VOICEBRIDGE_CONFIG) and none at config/default.toml: running on the built-in defaults";

/// Loads with the process environment; a configuration error is said on stderr and is
/// exit code 2.
pub(crate) fn load(source: &ConfigSource) -> Result<Config, ExitCode> {
    load_with(source, std::env::vars().collect())
}

/// [`load`] with the given environment (`check --env-file` adds to it).
pub(crate) fn load_with(
    source: &ConfigSource,
    env: Vec<(String, String)>,
) -> Result<Config, ExitCode> {
    source.load(env).map_err(|e| {
        eprintln!("voicebridge: configuration error: {e}");
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_file_is_used_even_when_missing_so_loading_says_why() {
        let source = ConfigSource::resolve(Some(PathBuf::from("/nonexistent/vb.toml")));
        assert!(
            matches!(&source, ConfigSource::File(p) if p == &PathBuf::from("/nonexistent/vb.toml"))
        );
        assert!(source.load(Vec::new()).is_err());
    }

    #[test]
    fn built_in_defaults_take_environment_overrides() {
        let env = vec![(
            "VOICEBRIDGE__SERVER__LISTEN".to_string(),
            "127.0.0.1:9999".to_string(),
        )];
        let config = ConfigSource::BuiltIn
            .load(env)
            .expect("built-in defaults load");
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:9999");
    }
}
