//! The listener: accepts TCP connections from `mod_audio_stream`, answers the WebSocket
//! upgrade (routing, auth, limits) and hands each accepted call to its own task (`call_task`).
//!
//! The module gives up for good if TCP connect + handshake take more than 1 s, so
//! nothing slow happens before the 101: the provider is connected by the call task, after
//! the upgrade. Rejections are plain HTTP statuses with a short body and one log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::admission::{self, Admission, PendingGuard, Source, Summary, TooMany};
use crate::budget::{Budgets, Exceeded, Ticket};
use crate::call_metrics;
use crate::call_task::{self, CallSetup};
use crate::config::{Config, Route};
use crate::records::Records;
use crate::registry::{CallEntry, CallGuard, Full, Registry};
use crate::telephony::freeswitch::{Esl, FreeswitchLeg, StreamRequest};

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
    /// Failed upgrades and unfinished handshakes per source; rejection log summaries.
    admission: Admission,
    esl: Option<Esl>,
    records: Option<Records>,
    budgets: Arc<Budgets>,
}

/// How often ended rejection-log windows are written out and the failure limiter
/// forgets quiet sources (so its memory follows current activity).
const ADMISSION_SWEEP: Duration = Duration::from_secs(10);

/// Serves until `shutdown.stop` is cancelled and every call has ended. `esl` is
/// the daemon's Event Socket connection, handed to every call; `records` where each
/// call's record goes; `budgets` admits calls against their route's daily limits.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ArcSwap<Config>>,
    registry: Arc<Registry>,
    shutdown: Shutdown,
    esl: Option<Esl>,
    records: Option<Records>,
    budgets: Arc<Budgets>,
) {
    let shared = Arc::new(Shared {
        admission: Admission::new(config.load().server.per_ip_rate_limit),
        config,
        registry,
        shutdown: shutdown.clone(),
        esl,
        records,
        budgets,
    });
    let tracker = TaskTracker::new();
    let mut sweep = tokio::time::interval(ADMISSION_SWEEP);
    loop {
        tokio::select! {
            _ = shutdown.stop.cancelled() => break,
            _ = sweep.tick() => {
                shared.admission.failures.sweep();
                shared.admission.flush(false).iter().for_each(log_summary);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Counted here, before a task exists, so a flood of connections
                    // that never send a request is refused without costing a task.
                    let source = Source::of(peer.ip());
                    let server = &shared.config.load().server;
                    match shared.admission.pending.try_enter(
                        source,
                        server.max_handshakes_per_ip,
                        server.max_handshakes,
                    ) {
                        Ok(pending) => {
                            let shared = Arc::clone(&shared);
                            tracker.spawn(handle_connection(shared, stream, peer, pending));
                        }
                        Err(too_many) => refuse_at_once(&shared, stream, peer, too_many),
                    }
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
    shared.admission.flush(true).iter().for_each(log_summary);
}

/// Over a pre-handshake cap: a canned response written without waiting (the socket
/// buffer of a fresh connection takes it), then the connection is dropped.
fn refuse_at_once(shared: &Shared, stream: TcpStream, peer: SocketAddr, too_many: TooMany) {
    let (response, label, reason) = match too_many {
        TooMany::Source(n) => (
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 20\r\nConnection: close\r\n\r\ntoo many handshakes\n",
            "too_many_handshakes",
            format!("server.max_handshakes_per_ip ({n}) connections from this source have not finished their handshake"),
        ),
        TooMany::Total(n) => (
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 20\r\nConnection: close\r\n\r\ntoo many handshakes\n",
            "too_many_handshakes",
            format!("server.max_handshakes ({n}) connections have not finished their handshake"),
        ),
    };
    let _ = stream.try_write(response.as_bytes());
    call_metrics::upgrade_rejected(label);
    let status = if matches!(too_many, TooMany::Source(_)) {
        429
    } else {
        503
    };
    log_rejection(shared, peer, label, || {
        warn!(%peer, status, %reason, "upgrade rejected");
    });
}

/// Logs a rejection in full when it is the first of its kind from its source this
/// minute; otherwise it is only counted, for the source's summary line.
fn log_rejection(shared: &Shared, peer: SocketAddr, label: &'static str, full: impl FnOnce()) {
    let (in_full, ended) = shared.admission.note(Source::of(peer.ip()), label);
    if let Some(s) = ended {
        log_summary(&s);
    }
    if in_full {
        full();
    }
}

fn log_summary(s: &Summary) {
    warn!(
        source = %s.source,
        rejected = s.total(),
        by_reason = %s.by_reason(),
        over_secs = s.over.as_secs(),
        "upgrade rejections not logged one by one (summary)"
    );
}

/// Why an upgrade was refused.
struct Rejection {
    status: StatusCode,
    /// Short body, also the `reason` label of the rejection metric.
    body: &'static str,
    reason: String,
    /// `Retry-After` of a 503, in seconds; `None`: the default.
    retry_after: Option<u64>,
    /// Refused by a daily budget: logged (rate-limited) as such, not as a plain rejection.
    budget: Option<Box<Exceeded>>,
    /// A failed upgrade (no valid token, bad request, unknown route): counts against
    /// the source's `per_ip_rate_limit`.
    failure: bool,
}

/// `Retry-After` of a 503 for a transient condition (capacity, drain).
const RETRY_AFTER_SECS: u64 = 5;
/// `Retry-After` of a 429: the failure budget refills within a second.
const RATE_LIMITED_RETRY_AFTER_SECS: u64 = 1;

/// What the upgrade callback decided for an accepted call.
struct Accepted {
    request: StreamRequest,
    route: Route,
    call_id: String,
    guard: CallGuard,
    budget: Ticket,
}

async fn handle_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    pending: PendingGuard,
) {
    // Audio frames are small and latency-bound: never let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let config = shared.config.load_full();
    let source = Source::of(peer.ip());
    let mut decision: Option<Result<Accepted, Rejection>> = None;
    // The signature is tungstenite's `Callback`; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match decide(&shared, &config, req) {
            Ok(accepted) => {
                decision = Some(Ok(accepted));
                Ok(resp)
            }
            Err(mut rejection) => {
                if rejection.failure && shared.admission.failures.fail(source) {
                    rejection =
                        rate_limited(rejection, source, shared.admission.failures.per_sec());
                }
                let mut error = ErrorResponse::new(Some(format!("{}\n", rejection.body)));
                *error.status_mut() = rejection.status;
                let retry_after = match rejection.status {
                    StatusCode::SERVICE_UNAVAILABLE => {
                        Some(rejection.retry_after.unwrap_or(RETRY_AFTER_SECS))
                    }
                    StatusCode::TOO_MANY_REQUESTS => Some(RATE_LIMITED_RETRY_AFTER_SECS),
                    _ => None,
                };
                if let Some(secs) = retry_after {
                    error
                        .headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
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
    let handshake = tokio::select! {
        h = tokio::time::timeout(
            timeout,
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config)),
        ) => h,
        // Stopping: a half-done handshake must not hold the exit up.
        _ = shared.shutdown.stop.cancelled() => return,
    };
    drop(pending);
    let ws = match handshake {
        Err(_) => {
            shared.admission.failures.fail(source);
            call_metrics::upgrade_rejected("handshake_timeout");
            log_rejection(&shared, peer, "handshake_timeout", || {
                warn!(%peer, timeout_ms = timeout.as_millis() as u64, "handshake timed out: connection dropped");
            });
            return;
        }
        Ok(Err(e)) => {
            match decision {
                Some(Err(r)) => {
                    let label = metric_label(r.body);
                    call_metrics::upgrade_rejected(label);
                    match &r.budget {
                        Some(b) => log_budget_refusal(peer, b),
                        None => log_rejection(&shared, peer, label, || {
                            warn!(%peer, status = r.status.as_u16(), reason = %r.reason, "upgrade rejected");
                        }),
                    }
                }
                _ => {
                    shared.admission.failures.fail(source);
                    call_metrics::upgrade_rejected("bad_handshake");
                    log_rejection(&shared, peer, "bad_handshake", || {
                        warn!(%peer, error = %e, "handshake failed: not a valid WebSocket upgrade");
                    });
                }
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
    // The FreeSWITCH side: the generic call task runs on this leg.
    let leg = FreeswitchLeg::new(
        ws,
        accepted.call_id.clone(),
        &accepted.route,
        &accepted.request,
        config.freeswitch.esl_chunk,
        shared.esl.clone(),
    );
    let setup = CallSetup {
        call_id: accepted.call_id,
        route: accepted.route,
        config: Arc::clone(&config),
        peer,
        guard: accepted.guard,
        budget: Some(accepted.budget),
        stop: shared.shutdown.stop.clone(),
        records: shared.records.clone(),
    };
    async move {
        info!(%peer, handshake_ms = format!("{handshake_ms:.2}"), "call accepted");
        call_task::run(leg, setup).await;
    }
    .instrument(span)
    .await;
}

/// The upgrade decision: auth, route, capacity. Runs inside the handshake, so it must
/// be quick and must not await anything.
fn decide(shared: &Arc<Shared>, config: &Config, req: &Request) -> Result<Accepted, Rejection> {
    let uri = req.uri();
    let reject = |status, body, reason: String| Rejection {
        status,
        body,
        reason,
        retry_after: None,
        budget: None,
        failure: false,
    };
    let fail = |status, body, reason: String| Rejection {
        failure: true,
        ..reject(status, body, reason)
    };
    // First, on the raw request: without a valid token nothing else is looked at, so
    // the answer (401) says nothing about routes, call ids or the daemon's state.
    if !config.server.auth_tokens.is_empty() {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(admission::auth::bearer);
        let query = admission::auth::query_token(uri.query());
        let presented = bearer.or(query.as_deref());
        let ok = presented.is_some_and(|p| config.server.auth_tokens.iter().any(|t| t.matches(p)));
        if !ok {
            let why = if presented.is_some() {
                "wrong token"
            } else {
                "no token (Authorization: Bearer or ?token=)"
            };
            return Err(fail(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                why.to_owned(),
            ));
        }
    }
    if shared.shutdown.draining.is_cancelled() {
        return Err(reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "daemon is draining for shutdown".to_owned(),
        ));
    }
    let request = StreamRequest::parse(uri.path(), uri.query())
        .map_err(|e| fail(StatusCode::BAD_REQUEST, "bad request", e.to_string()))?;
    let Some(route) = config.route(&request.route) else {
        return Err(fail(
            StatusCode::NOT_FOUND,
            "unknown route",
            format!("unknown route {:?} (path {})", request.route, uri.path()),
        ));
    };
    // After auth, so strangers cannot use up a route's budget; before capacity, so a
    // route out of budget says so (with the real Retry-After) even when also full.
    // The limits are this snapshot's: a SIGHUP changes them for new calls.
    let budget = match shared.budgets.try_admit(route) {
        Ok(ticket) => ticket,
        Err(exceeded) => {
            return Err(Rejection {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: "daily budget reached",
                reason: exceeded.to_string(),
                retry_after: Some(exceeded.retry_after.as_secs().max(1)),
                budget: Some(Box::new(exceeded)),
                failure: false,
            })
        }
    };
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
            // A call refused here never happened: it must not use the budget.
            budget.cancel();
            let which = match full {
                Full::Server(n) => format!("server.max_calls ({n})"),
                Full::Route(n) => format!("max_calls of route {:?} ({n})", route.name),
                // The first call keeps its id (and its ESL events); this one is refused.
                Full::CallIdInUse => {
                    return Err(reject(
                        StatusCode::CONFLICT,
                        "call id in use",
                        format!(
                        "call {call_id} is already live; a second stream with its id is refused"
                    ),
                    ))
                }
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
        budget,
    })
}

/// The same rejection, answered 429: its source is over its failed-upgrade budget.
fn rate_limited(r: Rejection, source: Source, per_sec: u32) -> Rejection {
    Rejection {
        status: StatusCode::TOO_MANY_REQUESTS,
        body: "rate limited",
        reason: format!(
            "more than {} failed upgrades per second from {source} (this one: {}: {})",
            per_sec, r.body, r.reason
        ),
        retry_after: None,
        budget: None,
        failure: true,
    }
}

/// One line per route per minute at most, however many calls the dialplan keeps
/// sending: the count says how many were refused since the previous line.
fn log_budget_refusal(peer: SocketAddr, b: &Exceeded) {
    if let Some(refused) = b.log {
        warn!(
            %peer,
            route = %b.route,
            limit = b.limit.as_str(),
            used = b.used,
            max = b.max,
            refused,
            retry_after_secs = b.retry_after.as_secs().max(1),
            "daily budget reached: calls on this route refused until UTC midnight"
        );
    }
    // Counted after the line is written, so whoever sees the count can find the line.
    call_metrics::budget_refused(&b.route, b.limit.as_str());
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
        "daily budget reached" => "budget",
        "call id in use" => "call_id_in_use",
        _ => "other",
    }
}
