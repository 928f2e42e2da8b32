//! The admin listener: `/healthz` (the process answers), `/readyz` (it would accept a
//! call now: not draining, below `max_calls`), `/metrics` (Prometheus text). Separate
//! from the media port so a load balancer's health checks and a scraper never compete
//! with FreeSWITCH for it, and so it can stay on loopback.
//!
//! Nothing a client does here may hold the daemon: request headers must arrive within
//! `admin.header_timeout_ms` (from the connection opening or the previous response, so
//! idle keep-alive connections go too), a connection lives at most
//! [`MAX_CONNECTION_LIFETIME`], at most `admin.max_connections` are open (more are
//! answered 503 and closed), and at stop every admin connection is dropped at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::warn;

use crate::budget::Budgets;
use crate::call_metrics;
use crate::config::Config;
use crate::registry::Registry;
use crate::server::Shutdown;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    shutdown: Shutdown,
    config: Arc<ArcSwap<Config>>,
    metrics: PrometheusHandle,
    budgets: Arc<Budgets>,
}

/// However busy a connection is, it is closed this long after it opened: a client that
/// never reads its response cannot keep it forever.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after a failed accept (e.g. out of file descriptors) so we do not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "admin connections full" line per this long.
const FULL_LOG_EVERY: Duration = Duration::from_secs(60);
const FULL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 27\r\n\
    Connection: close\r\n\r\ntoo many admin connections\n";

/// Serves until `shutdown.stop` is cancelled, then drops every admin connection at once.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: Shutdown,
    config: Arc<ArcSwap<Config>>,
    metrics: PrometheusHandle,
    budgets: Arc<Budgets>,
) {
    let stop = shutdown.stop.clone();
    let max_connections = config.load().admin.max_connections;
    let state = AdminState {
        registry,
        shutdown,
        config: Arc::clone(&config),
        metrics,
        budgets,
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    let mut full_logged: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            // Reap finished connections so the set stays as small as what is open.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        let timeout = config.load().admin.header_timeout;
                        connections.spawn(serve_connection(stream, app.clone(), timeout, slot));
                    }
                    Err(_) => {
                        // A fresh socket's send buffer takes this without waiting.
                        let _ = stream.try_write(FULL_RESPONSE);
                        call_metrics::admin_connection_refused();
                        if full_logged.is_none_or(|t| t.elapsed() >= FULL_LOG_EVERY) {
                            full_logged = Some(Instant::now());
                            warn!(max_connections, "admin listener full: new connections refused with 503 (logged once a minute)");
                        }
                    }
                },
                Err(e) => {
                    warn!(error = %e, "admin accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    // A scrape in progress or a client that never finishes its request must not hold
    // the exit up: aborted, not awaited.
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    // Errors are the client's (timeouts, resets, garbage): nothing worth a log line.
    let _ = tokio::time::timeout(MAX_CONNECTION_LIFETIME, conn).await;
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.shutdown.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if s.registry.len() >= s.config.load().server.max_calls {
        (StatusCode::SERVICE_UNAVAILABLE, "at capacity\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn render_metrics(State(s): State<AdminState>) -> impl IntoResponse {
    // Running calls' time grows continuously: computed at scrape time, not on a timer.
    s.budgets.publish_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
