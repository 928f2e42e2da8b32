//! The admin listener: `/healthz` (the process answers), `/readyz` (it would accept a
//! call now: not draining, below `max_calls`), `/metrics` (Prometheus text). Separate
//! from the media port so a load balancer's health checks and a scraper never compete
//! with FreeSWITCH for it, and so it can stay on loopback.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tracing::warn;

use crate::budget::Budgets;
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

/// Serves until `shutdown.stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: Shutdown,
    config: Arc<ArcSwap<Config>>,
    metrics: PrometheusHandle,
    budgets: Arc<Budgets>,
) {
    let stop = shutdown.stop.clone();
    let state = AdminState {
        registry,
        shutdown,
        config,
        metrics,
        budgets,
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        warn!(error = %e, "admin listener stopped");
    }
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
