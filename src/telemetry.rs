//! Log setup: JSON lines for journald and log shippers, a human format on a terminal.
//! Every line of a call carries `call_id` through the session's span.

mod escape;

use std::io::IsTerminal;

pub use escape::{escape, EscapedFields};

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `[log] level`.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(v.trim()).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => EnvFilter::try_new(&config.level)
            .map_err(|e| format!("log.level {:?}: {e}", config.level))?,
    };
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        // Peer-provided strings are escaped, so no value can forge a line; colours
        // only on a terminal (journald would store the escape codes).
        builder
            .fmt_fields(EscapedFields)
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
