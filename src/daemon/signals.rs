//! The daemon's signals: SIGTERM / SIGINT drain then stop, SIGHUP reloads the config for
//! new calls. Kept apart from startup because each is a long-lived task of its own.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use super::ConfigSource;
use crate::config::Config;
use crate::registry::Registry;
use crate::server::Shutdown;

/// The SIGTERM and SIGINT streams; `None` if they could not be installed.
pub(super) struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    pub(super) fn install() -> Signals {
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
pub(super) async fn watch_signals(
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
pub(super) async fn watch_reload(source: ConfigSource, config: Arc<ArcSwap<Config>>) {
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
