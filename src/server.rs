//! The listener: accepts TCP connections from `mod_audio_stream`, answers the WebSocket
//! upgrade (routing, auth, limits) and hands each accepted call to its own session task.
//!
//! The module gives up for good if TCP connect + handshake take more than 1 s, so
//! nothing slow happens before the 101: the provider is connected by the session, after
//! the upgrade. Rejections are plain HTTP statuses with a short body and one log line.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::call_metrics;
use crate::config::{Config, Route};
use crate::freeswitch::{Esl, StreamRequest};
use crate::records::Records;
use crate::registry::{CallEntry, CallGuard, Full, Registry};
use crate::session::{self, CallSetup};

/// Largest WebSocket message we accept. Audio messages are a few KiB (48 kHz stereo at
/// 100 ms is 19 200 bytes) and the metadata at most 8 KiB, so anything near this is
/// garbage; the cap keeps a hostile frame from growing memory.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Eagerly allocated per connection by tungstenite: keep it small, frames are small.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// A peer that stops reading gets an error instead of an unbounded write buffer.
const MAX_WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so we do not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the daemon is told to stop: first stop taking calls (drain), then end the rest.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// New upgrades are refused with 503 once this is cancelled.
    pub draining: CancellationToken,
    /// Live calls are closed and the listener stops once this is cancelled.
    pub stop: CancellationToken,
}

/// Everything a connection handler needs, shared by all of them.
struct Shared {
    /// The current config; SIGHUP swaps it. A connection takes one snapshot when it
    /// arrives and keeps it for the whole call, so a reload never touches live calls.
    config: Arc<ArcSwap<Config>>,
    registry: Arc<Registry>,
    shutdown: Shutdown,
    /// New connections per source IP (`server.per_ip_rate_limit`).
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    esl: Option<Esl>,
    records: Option<Records>,
}

/// How often the per-IP limiter forgets idle addresses, so its memory stays bounded.
const LIMITER_SWEEP: Duration = Duration::from_secs(60);

fn per_ip_limiter(per_sec: u32) -> Option<DefaultKeyedRateLimiter<IpAddr>> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(per_sec.saturating_mul(2)).unwrap_or(rate);
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

/// Serves until `shutdown.stop` is cancelled and every session has ended. `esl` is
/// the daemon's Event Socket connection, handed to every call; `records` where each
/// call's record goes.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ArcSwap<Config>>,
    registry: Arc<Registry>,
    shutdown: Shutdown,
    esl: Option<Esl>,
    records: Option<Records>,
) {
    let shared = Arc::new(Shared {
        limiter: per_ip_limiter(config.load().server.per_ip_rate_limit),
        config,
        registry,
        shutdown: shutdown.clone(),
        esl,
        records,
    });
    let tracker = TaskTracker::new();
    let mut sweep = tokio::time::interval(LIMITER_SWEEP);
    loop {
        tokio::select! {
            _ = shutdown.stop.cancelled() => break,
            _ = sweep.tick() => {
                if let Some(l) = &shared.limiter {
                    l.retain_recent();
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = Arc::clone(&shared);
                    tracker.spawn(handle_connection(shared, stream, peer));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Why an upgrade was refused.
struct Rejection {
    status: StatusCode,
    /// Short body, also the `reason` label of the rejection metric.
    body: &'static str,
    reason: String,
}

/// What the upgrade callback decided for an accepted call.
struct Accepted {
    request: StreamRequest,
    route: Route,
    call_id: String,
    guard: CallGuard,
}

async fn handle_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    // Audio frames are small and latency-bound: never let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let config = shared.config.load_full();
    let mut decision: Option<Result<Accepted, Rejection>> = None;
    // The signature is tungstenite's `Callback`; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match decide(&shared, &config, req, peer.ip()) {
            Ok(accepted) => {
                decision = Some(Ok(accepted));
                Ok(resp)
            }
            Err(rejection) => {
                let mut error = ErrorResponse::new(Some(format!("{}\n", rejection.body)));
                *error.status_mut() = rejection.status;
                if rejection.status == StatusCode::SERVICE_UNAVAILABLE {
                    error
                        .headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
                }
                decision = Some(Err(rejection));
                Err(error)
            }
        }
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let timeout = config.server.handshake_timeout;
    let handshake = tokio::time::timeout(
        timeout,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config)),
    )
    .await;
    let ws = match handshake {
        Err(_) => {
            call_metrics::upgrade_rejected("handshake_timeout");
            warn!(%peer, timeout_ms = timeout.as_millis() as u64, "handshake timed out: connection dropped");
            return;
        }
        Ok(Err(e)) => {
            match decision {
                Some(Err(r)) => {
                    call_metrics::upgrade_rejected(metric_label(r.body));
                    warn!(%peer, status = r.status.as_u16(), reason = %r.reason, "upgrade rejected")
                }
                _ => warn!(%peer, error = %e, "handshake failed: not a valid WebSocket upgrade"),
            }
            return;
        }
        Ok(Ok(ws)) => ws,
    };
    let Some(Ok(accepted)) = decision else {
        warn!(%peer, "handshake completed without a routing decision; dropped");
        return;
    };
    let handshake_ms = started.elapsed().as_secs_f64() * 1000.0;
    let span =
        tracing::info_span!("call", call_id = %accepted.call_id, route = %accepted.route.name);
    let setup = CallSetup {
        call_id: accepted.call_id,
        route: accepted.route,
        request: accepted.request,
        config: Arc::clone(&config),
        peer,
        guard: accepted.guard,
        stop: shared.shutdown.stop.clone(),
        esl: shared.esl.clone(),
        records: shared.records.clone(),
    };
    async move {
        info!(%peer, handshake_ms = format!("{handshake_ms:.2}"), "call accepted");
        session::run(ws, setup).await;
    }
    .instrument(span)
    .await;
}

/// The upgrade decision: route, auth, capacity. Runs inside the handshake, so it must
/// be quick and must not await anything.
fn decide(
    shared: &Arc<Shared>,
    config: &Config,
    req: &Request,
    ip: IpAddr,
) -> Result<Accepted, Rejection> {
    let uri = req.uri();
    let reject = |status, body, reason: String| Rejection {
        status,
        body,
        reason,
    };
    if shared
        .limiter
        .as_ref()
        .is_some_and(|l| l.check_key(&ip).is_err())
    {
        return Err(reject(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limited",
            format!(
                "more than {} new connections per second from {ip}",
                config.server.per_ip_rate_limit
            ),
        ));
    }
    if shared.shutdown.draining.is_cancelled() {
        return Err(reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "daemon is draining for shutdown".to_owned(),
        ));
    }
    let request = StreamRequest::parse(uri.path(), uri.query())
        .map_err(|e| reject(StatusCode::BAD_REQUEST, "bad request", e.to_string()))?;
    let Some(route) = config.route(&request.route) else {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "unknown route",
            format!("unknown route {:?} (path {})", request.route, uri.path()),
        ));
    };
    if !config.server.auth_tokens.is_empty() {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let presented = bearer.or(request.token.as_deref());
        let ok = presented.is_some_and(|p| config.server.auth_tokens.iter().any(|t| t.matches(p)));
        if !ok {
            let why = if presented.is_some() {
                "wrong token"
            } else {
                "no token (Authorization: Bearer or ?token=)"
            };
            return Err(reject(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{why} for route {:?}", route.name),
            ));
        }
    }
    let call_id = request
        .call_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let entry = CallEntry {
        call_id: call_id.clone(),
        route: route.name.clone(),
        provider: route.call.provider.name(),
        started: Instant::now(),
    };
    let guard = match shared
        .registry
        .try_register(entry, config.server.max_calls, route.max_calls)
    {
        Ok(guard) => guard,
        Err(full) => {
            let which = match full {
                Full::Server(n) => format!("server.max_calls ({n})"),
                Full::Route(n) => format!("max_calls of route {:?} ({n})", route.name),
            };
            return Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "at capacity",
                format!("{which} reached; call {call_id} refused"),
            ));
        }
    };
    Ok(Accepted {
        request,
        route: route.clone(),
        call_id,
        guard,
    })
}

/// The `reason` label of a rejection.
fn metric_label(body: &'static str) -> &'static str {
    match body {
        "draining" => "draining",
        "bad request" => "bad_request",
        "unknown route" => "unknown_route",
        "unauthorized" => "unauthorized",
        "at capacity" => "at_capacity",
        "rate limited" => "rate_limited",
        _ => "other",
    }
}
