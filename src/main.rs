//! The `voicebridge` command: `serve` (the daemon, default), `call` (a FreeSWITCH
//! stand-in for testing a running daemon) and `check` (validate the config).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use voicebridge::admin;
use voicebridge::budget::Budgets;
use voicebridge::call_client::{self, CallArgs};
use voicebridge::call_metrics;
use voicebridge::config::Config;
use voicebridge::freeswitch::Esl;
use voicebridge::loadtest::{self, LoadtestArgs};
use voicebridge::providers;
use voicebridge::records::Records;
use voicebridge::registry::Registry;
use voicebridge::server::{self, Shutdown};
use voicebridge::telemetry;

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

/// The config file used when none is named, relative to the working directory.
const DEFAULT_CONFIG: &str = "config/default.toml";

/// Where the configuration comes from.
#[derive(Clone, Debug)]
enum ConfigSource {
    /// Named by `--config` / `VOICEBRIDGE_CONFIG` (must exist), or found at
    /// [`DEFAULT_CONFIG`].
    File(PathBuf),
    /// None named and none at [`DEFAULT_CONFIG`] (e.g. started outside the repository):
    /// the built-in defaults, the same as an empty file, plus environment overrides.
    BuiltIn,
}

impl ConfigSource {
    fn resolve(given: Option<PathBuf>) -> ConfigSource {
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

    fn load(&self, env: Vec<(String, String)>) -> Result<Config, voicebridge::config::ConfigError> {
        match self {
            ConfigSource::File(path) => Config::load(path, env),
            ConfigSource::BuiltIn => Config::from_toml_str("", env),
        }
    }
}

/// The one line said when no config file is used.
const BUILT_IN_NOTE: &str = "no config file given (--config / VOICEBRIDGE_CONFIG) and none at config/default.toml: running on the built-in defaults";

/// At exit, how long the record writers may take to write or spool what is queued.
const RECORDS_SHUTDOWN: Duration = Duration::from_secs(5);
/// At exit, how long the admin listener may take to drop its connections (it aborts
/// them at once; this only bounds a surprise).
const ADMIN_SHUTDOWN: Duration = Duration::from_millis(500);

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
        Some(Command::Call(args)) => runtime.block_on(call(args)),
        Some(Command::Loadtest(args)) => runtime.block_on(load_test(args)),
        Some(Command::Check { env_file }) => {
            runtime.block_on(check(&ConfigSource::resolve(cli.config), env_file))
        }
        Some(Command::Serve) | None => runtime.block_on(serve(ConfigSource::resolve(cli.config))),
    }
}

fn load(source: &ConfigSource) -> Result<Config, ExitCode> {
    load_with(source, std::env::vars().collect())
}

fn load_with(source: &ConfigSource, env: Vec<(String, String)>) -> Result<Config, ExitCode> {
    source.load(env).map_err(|e| {
        eprintln!("voicebridge: configuration error: {e}");
        ExitCode::from(2)
    })
}

async fn serve(source: ConfigSource) -> ExitCode {
    let config = match load(&source) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = telemetry::init(&config.log) {
        eprintln!("voicebridge: {e}");
        return ExitCode::from(2);
    }
    if matches!(source, ConfigSource::BuiltIn) {
        info!("{BUILT_IN_NOTE}");
    }
    // tokio-tungstenite's rustls needs exactly one process-wide crypto provider, or
    // every wss:// connect panics at run time.
    let _ = rustls::crypto::ring::default_provider().install_default();
    for w in config.warnings() {
        warn!(warning = %w, "configuration");
    }
    let metrics = match call_metrics::install() {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "metrics");
            return ExitCode::FAILURE;
        }
    };
    let admin_listener = match TcpListener::bind(config.admin.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(listen = %config.admin.listen, error = %e, "cannot listen for admin (healthz/readyz/metrics): is the port free?");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(config.server.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(listen = %config.server.listen, error = %e, "cannot listen (is another instance running? is the port free?)");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Before the listener accepts anything, so the first call already sees today's usage.
    let budgets = Budgets::open(config.budgets.state_file.clone());
    let limited = config
        .routes()
        .any(|r| r.call.daily_max_calls > 0 || r.call.daily_max_minutes > 0);
    if limited && config.budgets.state_file.is_none() {
        warn!("daily budgets are counted in memory only ([budgets] state_file is not set): a restart resets today's counts");
    }
    // The record writers start before the first call can end, and deliver what an
    // earlier run left in the spool.
    let records = match Records::spawn(&config.records, config.webhooks.secret.clone()) {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "call records");
            return ExitCode::FAILURE;
        }
    };
    let config = Arc::new(ArcSwap::from_pointee(config));
    let registry = Registry::new();
    let shutdown = Shutdown::default();
    // Installed before "listening" is logged: a SIGTERM sent by whoever waits for that
    // line must drain, not kill the process with the default action.
    let signals = Signals::install();
    info!(
        listen = %addr,
        version = env!("CARGO_PKG_VERSION"),
        routes = config.load().routes().map(|r| r.name.as_str()).collect::<Vec<_>>().join(","),
        "listening"
    );
    let admin_addr = admin_listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(listen = %admin_addr, "admin listening (/healthz /readyz /metrics)");
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&registry),
        shutdown.clone(),
        Arc::clone(&config),
        metrics,
        Arc::clone(&budgets),
    ));
    let saver = tokio::spawn(Arc::clone(&budgets).run_saver(shutdown.stop.clone()));
    tokio::spawn(watch_signals(
        signals,
        Arc::clone(&registry),
        shutdown.clone(),
        Arc::clone(&config),
    ));
    tokio::spawn(watch_reload(source, Arc::clone(&config)));
    // One Event Socket connection for the whole daemon; it connects (and reconnects)
    // in the background, so startup never waits for FreeSWITCH.
    let esl = config
        .load()
        .freeswitch
        .esl
        .as_ref()
        .map(|c| Esl::spawn(c, shutdown.stop.clone()));
    server::serve(
        listener,
        config,
        registry,
        shutdown,
        esl,
        records.is_enabled().then(|| records.clone()),
        Arc::clone(&budgets),
    )
    .await;
    // Every call has ended and submitted its record: write them out (or spool them for
    // the webhook) before exiting.
    records.shutdown(RECORDS_SHUTDOWN).await;
    if tokio::time::timeout(ADMIN_SHUTDOWN, admin).await.is_err() {
        warn!("admin listener did not stop in time; exiting anyway");
    }
    // Every call has ended (and charged its time): the final save has it all.
    let _ = saver.await;
    budgets.save();
    info!("stopped");
    ExitCode::SUCCESS
}

/// The SIGTERM and SIGINT streams; `None` if they could not be installed.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals(Some((term, int))),
            _ => Signals(None),
        }
    }
}

/// SIGTERM / first SIGINT: drain (refuse new calls, let live ones finish for up to
/// `drain_timeout`), then close what is left. A second SIGINT exits at once.
async fn watch_signals(
    signals: Signals,
    registry: Arc<Registry>,
    shutdown: Shutdown,
    config: Arc<ArcSwap<Config>>,
) {
    let Signals(Some((mut term, mut int))) = signals else {
        error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    let drain_timeout = || config.load().server.drain_timeout;
    tokio::select! {
        _ = term.recv() => info!(live_calls = registry.len(), drain_secs = drain_timeout().as_secs(), "SIGTERM: draining"),
        _ = int.recv() => info!(live_calls = registry.len(), drain_secs = drain_timeout().as_secs(), "SIGINT: draining (again to exit at once)"),
    }
    shutdown.draining.cancel();
    let drained = async {
        while !registry.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = drained => info!("all calls ended"),
        _ = tokio::time::sleep(drain_timeout()) => warn!(live_calls = registry.len(), "drain timeout: closing the remaining calls"),
        _ = int.recv() => {
            warn!(live_calls = registry.len(), "second SIGINT: exiting now");
            std::process::exit(130);
        }
    }
    shutdown.stop.cancel();
}

/// SIGHUP: load the config again and use it for new calls. Live calls keep the config
/// they started with; what only a restart can change is said in the log.
async fn watch_reload(source: ConfigSource, config: Arc<ArcSwap<Config>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler: config reload disabled");
        return;
    };
    while hup.recv().await.is_some() {
        let new = match source.load(std::env::vars().collect()) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "SIGHUP: configuration error; keeping the running configuration");
                continue;
            }
        };
        let old = config.load();
        let mut restart_only = Vec::new();
        if new.server.listen != old.server.listen {
            restart_only.push("server.listen");
        }
        if new.admin.listen != old.admin.listen {
            restart_only.push("admin.listen");
        }
        if new.admin.max_connections != old.admin.max_connections {
            restart_only.push("admin.max_connections");
        }
        if new.log != old.log {
            restart_only.push("log");
        }
        if new.server.per_ip_rate_limit != old.server.per_ip_rate_limit {
            restart_only.push("server.per_ip_rate_limit");
        }
        if new.freeswitch.esl != old.freeswitch.esl {
            restart_only.push("freeswitch.esl");
        }
        if new.budgets != old.budgets {
            restart_only.push("budgets.state_file");
        }
        if new.records != old.records {
            restart_only.push("records");
        }
        if new.webhooks != old.webhooks && new.records.webhook_url.is_some() {
            // Lookups and tools sign with the new secret at once; the record sender
            // keeps the one it started with.
            restart_only.push("webhooks.secret (for call records)");
        }
        for w in new.warnings() {
            warn!(warning = %w, "configuration");
        }
        let routes = new
            .routes()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
            .join(",");
        config.store(Arc::new(new));
        if restart_only.is_empty() {
            info!(%routes, "SIGHUP: configuration reloaded for new calls");
        } else {
            warn!(%routes, needs_restart = restart_only.join(","), "SIGHUP: configuration reloaded for new calls; these keys take effect only after a restart");
        }
    }
}

async fn check(source: &ConfigSource, env_file: Option<PathBuf>) -> ExitCode {
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(file) = env_file {
        match voicebridge::config::env_file::read(&file) {
            // Later entries win, as in the daemon's environment under systemd.
            Ok(vars) => env.extend(vars),
            Err(e) => {
                eprintln!("voicebridge: --env-file: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let config = match load_with(source, env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    match source {
        ConfigSource::File(path) => println!("config {}: OK", path.display()),
        ConfigSource::BuiltIn => println!("config: {BUILT_IN_NOTE}"),
    }
    for w in config.warnings() {
        println!("warning: {w}");
    }
    for route in config.routes() {
        println!(
            "route {:<12} provider {:<10} {} Hz {} {} playback {:?}",
            route.name,
            route.call.provider.name(),
            route.sample_rate,
            route.channels,
            route.codec,
            route.playback
        );
    }
    // A wrong playback mode is silent, not an error: say what each one needs.
    println!("playback modes (which one plays depends on the mod_audio_stream build):");
    for (mode, what) in voicebridge::freeswitch::playback::MODES_EXPLAINED {
        println!("  {mode:<13} {what}");
    }
    let mut failed = false;
    for route in config.routes() {
        for line in business_lines(route) {
            println!("route {:<12} {line}", route.name);
        }
    }
    let mut endpoints: Vec<(&str, String)> = Vec::new();
    for route in config.routes() {
        if let Some(c) = &route.call.context {
            endpoints.push(("lookup", c.url.clone()));
        }
        for t in route.call.tools.iter() {
            endpoints.push(("tool", t.url.clone()));
        }
    }
    if let Some(url) = &config.records.webhook_url {
        endpoints.push(("records", url.clone()));
    }
    let r = &config.records;
    if r.file.is_some() || r.webhook_url.is_some() {
        let mut parts = Vec::new();
        if let Some(f) = &r.file {
            parts.push(format!("file {}", f.display()));
        }
        if let (Some(url), Some(spool)) = (&r.webhook_url, &r.spool_dir) {
            parts.push(format!(
                "webhook {} (spool {})",
                voicebridge::redact::url(url),
                spool.display()
            ));
        }
        println!("records {}", parts.join(", "));
    }
    endpoints.sort_by(|a, b| a.1.cmp(&b.1));
    endpoints.dedup_by(|a, b| a.1 == b.1);
    for (what, url) in endpoints {
        let shown = voicebridge::redact::url(&url);
        match voicebridge::webhook::reachable(&url, Duration::from_secs(5)).await {
            Ok(took) => println!(
                "webhook {what} {shown}: reachable (connected in {} ms; nothing sent)",
                took.as_millis()
            ),
            Err(e) => {
                failed = true;
                println!("webhook {what} {shown}: FAILED: {e}");
            }
        }
    }
    for kind in config.providers_in_use() {
        // Check each provider with the first route that uses it (its voice, language...).
        let Some(route) = config.routes().find(|r| r.call.provider == kind) else {
            continue;
        };
        match providers::check(&config, route).await {
            Ok(line) => println!("provider {}: OK: {line}", kind.name()),
            Err(e) => {
                failed = true;
                println!("provider {}: FAILED: {e}", kind.name());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What `check` says about a route's business features, one line each.
fn business_lines(route: &voicebridge::config::Route) -> Vec<String> {
    let c = &route.call;
    let mut out = Vec::new();
    if let Some(l) = &c.context {
        out.push(format!(
            "lookup {} {} (timeout {} ms)",
            l.method.name().to_uppercase(),
            voicebridge::redact::url(&l.url),
            l.timeout.as_millis()
        ));
    }
    let tools: Vec<String> = voicebridge::tools::declarations(c)
        .into_iter()
        .map(|d| d.name)
        .collect();
    if !tools.is_empty() {
        out.push(format!("tools {}", tools.join(", ")));
    }
    if !c.transfer_to.is_empty() {
        out.push(format!("transfer_call to {}", c.transfer_to));
    }
    if c.daily_max_calls > 0 || c.daily_max_minutes > 0 {
        let part = |n: u64, unit: &str| {
            if n == 0 {
                format!("unlimited {unit}")
            } else {
                format!("{n} {unit}")
            }
        };
        out.push(format!(
            "budget {}, {} per UTC day",
            part(c.daily_max_calls, "calls"),
            part(c.daily_max_minutes, "minutes")
        ));
    }
    out
}

async fn call(args: CallArgs) -> ExitCode {
    match call_client::run(&args).await {
        Ok(summary) => {
            call_client::print_summary(&summary, args.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("voicebridge call: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn load_test(args: LoadtestArgs) -> ExitCode {
    match loadtest::run(&args).await {
        Ok(report) => {
            print!("{}", loadtest::render(&report));
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("voicebridge loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
