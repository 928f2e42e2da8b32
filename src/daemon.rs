//! The daemon (`voicebridge serve`): startup in the order that makes it safe (config,
//! logging, metrics, listeners, budgets, record writers, signal handlers, then "listening"),
//! the background tasks around the server, and the orderly exit after the drain.
//!
//! It lives in the library, not in `main.rs`, because it is the daemon: `main.rs` only
//! parses the command line and picks what to run.

mod signals;
pub mod source;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::admin;
use crate::budget::Budgets;
use crate::call_metrics;
use crate::records::Records;
use crate::registry::Registry;
use crate::server::{self, Shutdown};
use crate::telemetry;
use crate::telephony::freeswitch::Esl;
use signals::{watch_reload, watch_signals, Signals};
pub use source::ConfigSource;
use source::{load, BUILT_IN_NOTE};

/// At exit, how long the record writers may take to write or spool what is queued.
const RECORDS_SHUTDOWN: Duration = Duration::from_secs(5);
/// At exit, how long the admin listener may take to drop its connections (it aborts
/// them at once; this only bounds a surprise).
const ADMIN_SHUTDOWN: Duration = Duration::from_millis(500);

/// `voicebridge serve`: runs the daemon until it is stopped and drained; the exit code
/// is the process's (2 for a configuration error).
pub async fn serve(source: ConfigSource) -> ExitCode {
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
    let audiosocket = match server::audiosocket::bind(&config).await {
        Ok(b) => b,
        Err(e) => {
            error!(error = %e, "AudioSocket listener (is the port free?)");
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
    for b in &audiosocket {
        let listen = b.local_addr().map(|a| a.to_string()).unwrap_or_default();
        info!(%listen, route = b.route(), "AudioSocket listening (plain TCP, no TLS)");
    }
    // Without it, histogram samples pile up until someone scrapes /metrics.
    tokio::spawn(call_metrics::upkeep::run(
        metrics.clone(),
        call_metrics::upkeep::EVERY,
        shutdown.stop.clone(),
    ));
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
        audiosocket,
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
