//! The `voicebridge` command: parses the command line, builds the runtime and hands over.
//!
//! `serve` (the daemon, default) and `check` (validate the config) are the daemon's and
//! live in the library ([`voicebridge::daemon`], [`voicebridge::check`]). `call` (a
//! FreeSWITCH stand-in for testing a running daemon) and `loadtest` are client tools: they
//! live in this binary only ([`client`]), so the daemon library carries none of them.

mod client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use client::call::{self, CallArgs};
use client::loadtest::{self, LoadtestArgs};
use voicebridge::daemon::{self, ConfigSource};

/// Bridges FreeSWITCH mod_audio_stream calls to realtime speech-to-speech AI
/// (OpenAI Realtime, Gemini Live, ElevenLabs) or to the built-in echo provider.
#[derive(Parser, Debug)]
#[command(name = "voicebridge", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML) [default: config/default.toml if it exists, else the
    /// built-in defaults]. Every key can be overridden by an environment variable
    /// VOICEBRIDGE__SECTION__KEY, e.g. VOICEBRIDGE__SERVER__LISTEN=0.0.0.0:9090.
    #[arg(long, short, global = true, env = "VOICEBRIDGE_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (the default when no command is given).
    Serve,
    /// Validate the configuration and report on each provider in use.
    Check {
        /// Read API keys and other variables from this KEY=VALUE file (the unit's
        /// EnvironmentFile), so they never go on a command line. Its values win over
        /// the environment's.
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
    },
    /// Stream a WAV file to a running voicebridge exactly like mod_audio_stream does,
    /// record what comes back, and print a summary.
    Call(CallArgs),
    /// Open N concurrent calls against a running daemon, with a local mock OpenAI
    /// provider, and measure added latency, pacing, barge-in, CPU and RSS.
    Loadtest(LoadtestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voicebridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Call(args)) => runtime.block_on(call::main(args)),
        Some(Command::Loadtest(args)) => runtime.block_on(loadtest::main(args)),
        Some(Command::Check { env_file }) => runtime.block_on(voicebridge::check::run(
            &ConfigSource::resolve(cli.config),
            env_file,
        )),
        Some(Command::Serve) | None => {
            runtime.block_on(daemon::serve(ConfigSource::resolve(cli.config)))
        }
    }
}
