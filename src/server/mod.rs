//! The listener: accepts TCP connections from the PBXs, answers the WebSocket upgrade
//! (`upgrade`: credentials, side, route), admits the call (`admit`: drain, budget,
//! limits) and hands it to its own task (`call_task`) on the telephony leg of its side.
//!
//! mod_audio_stream gives up for good if TCP connect + handshake take more than 1 s, so
//! nothing slow happens before the 101: the provider is connected by the call task, after
//! the upgrade. Rejections (`rejection`) are plain HTTP statuses with a short body and one
//! log line, rate-limited per source.

mod admit;
pub mod audiosocket;
mod media_streams;
mod rejection;
mod upgrade;

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

use crate::admission::{Admission, PendingGuard, Source};
use crate::budget::Budgets;
use crate::call_metrics;
use crate::call_task::{self, CallSetup};
use crate::config::{Config, Route};
use crate::records::Records;
use crate::registry::Registry;
use crate::telephony::asterisk_ws::AsteriskLeg;
use crate::telephony::freeswitch::{Esl, FreeswitchLeg};
use crate::telephony::TelephonyLeg;
use admit::Admitted;
use rejection::{log_rejection, log_summary, refuse_at_once, Rejection};
use rejection::{RATE_LIMITED_RETRY_AFTER_SECS, RETRY_AFTER_SECS};
use upgrade::{Accepted, Side};

/// Largest WebSocket message we accept. Audio messages are a few KiB (48 kHz stereo at
/// 100 ms is 19 200 bytes) and the metadata at most 8 KiB, so anything near this is
/// garbage; the cap keeps a hostile frame from growing memory.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Eagerly allocated per connection by tungstenite, and zeroed up to this much before
/// every read attempt (including the one that finds nothing): keep it near the size of
/// a telephony frame (320–640 bytes of L16, a ~400-byte Twilio `media` JSON); a larger
/// message simply takes more reads.
const READ_BUFFER_BYTES: usize = 1024;
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
pub(crate) struct Shared {
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
// The daemon's parts, each built at startup in its own order: a struct would only
// rename them.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    config: Arc<ArcSwap<Config>>,
    registry: Arc<Registry>,
    shutdown: Shutdown,
    esl: Option<Esl>,
    records: Option<Records>,
    budgets: Arc<Budgets>,
    audiosocket: Vec<audiosocket::Bound>,
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
    // Each AudioSocket listener accepts on its own; its calls join the same tracker,
    // so the drain and the exit wait for them too.
    for bound in audiosocket {
        let accept = audiosocket::accept_loop(Arc::clone(&shared), bound, tracker.clone());
        tracker.spawn(accept);
    }
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

async fn handle_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    pending: PendingGuard,
) {
    // Both boxed, one after the other: the handshake's state is freed once it is done,
    // and the call's future is sized for its own side, so what a call keeps for its
    // whole length is its own state only.
    let call = Box::pin(accept(&shared, stream, peer, pending)).await;
    if let Some(call) = call {
        call.await;
    }
}

/// A call's future, boxed (see [`handle_connection`]).
type CallFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// The upgrade, its admission decision and the telephony side it routes to: the call
/// to run, or `None` when the connection was refused (already answered and logged).
async fn accept(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    pending: PendingGuard,
) -> Option<CallFuture<'_>> {
    // Audio frames are small and latency-bound: never let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let config = shared.config.load_full();
    let source = Source::of(peer.ip());
    let mut decision: Option<Result<Accepted, Rejection>> = None;
    // The signature is tungstenite's `Callback`; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match upgrade::decide(shared, &config, req) {
            Ok(accepted) => {
                decision = Some(Ok(accepted));
                Ok(resp)
            }
            Err(mut rejection) => {
                if rejection.failure && shared.admission.failures.fail(source) {
                    rejection = rejection.rate_limited(source, shared.admission.failures.per_sec());
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
        _ = shared.shutdown.stop.cancelled() => return None,
    };
    drop(pending);
    let ws = match handshake {
        Err(_) => {
            shared.admission.failures.fail(source);
            call_metrics::upgrade_rejected("handshake_timeout");
            log_rejection(shared, peer, "handshake_timeout", || {
                warn!(%peer, timeout_ms = timeout.as_millis() as u64, "handshake timed out: connection dropped");
            });
            return None;
        }
        Ok(Err(e)) => {
            match decision {
                Some(Err(r)) => r.report(shared, peer),
                _ => {
                    shared.admission.failures.fail(source);
                    call_metrics::upgrade_rejected("bad_handshake");
                    log_rejection(shared, peer, "bad_handshake", || {
                        warn!(%peer, error = %e, "handshake failed: not a valid WebSocket upgrade");
                    });
                }
            }
            return None;
        }
        Ok(Ok(ws)) => ws,
    };
    let Some(Ok(accepted)) = decision else {
        warn!(%peer, "handshake completed without a routing decision; dropped");
        return None;
    };
    let handshake_ms = started.elapsed().as_secs_f64() * 1000.0;
    let Accepted {
        side,
        route,
        admitted,
    } = accepted;
    Some(match side {
        Side::Freeswitch(request) => {
            let leg = FreeswitchLeg::new(
                ws,
                admitted.call_id.clone(),
                &route,
                &request,
                config.freeswitch.esl_chunk,
                shared.esl.clone(),
            );
            Box::pin(run_call(
                shared,
                config,
                route,
                admitted,
                peer,
                handshake_ms,
                leg,
            ))
        }
        Side::MediaStreams(path) => Box::pin(media_streams::run(
            shared,
            config,
            route,
            admitted,
            peer,
            handshake_ms,
            ws,
            path,
        )),
        Side::Asterisk(request) => {
            let leg = AsteriskLeg::new(ws, &route, request);
            Box::pin(run_call(
                shared,
                config,
                route,
                admitted,
                peer,
                handshake_ms,
                leg,
            ))
        }
    })
}

/// Runs an admitted call on its telephony leg, in the call's span, to its end. Every
/// side's accept path ends here, so every call gets the same limits, records and drain.
///
/// Not an `async fn`: the call is set up now, and the future returned holds only what
/// the call needs while it runs (an `async fn` would keep room for all of these
/// arguments, the leg included, for the whole call).
pub(crate) fn run_call<L: TelephonyLeg + 'static>(
    shared: &Shared,
    config: Arc<Config>,
    route: Arc<Route>,
    admitted: Admitted,
    peer: SocketAddr,
    handshake_ms: f64,
    leg: L,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let span = tracing::info_span!("call", call_id = %admitted.call_id, route = %route.name);
    let setup = CallSetup {
        call_id: admitted.call_id,
        route,
        config,
        peer,
        guard: admitted.guard,
        budget: Some(admitted.budget),
        stop: shared.shutdown.stop.clone(),
        records: shared.records.clone(),
    };
    let call = span.in_scope(|| {
        info!(%peer, handshake_ms = format!("{handshake_ms:.2}"), "call accepted");
        call_task::run(leg, setup)
    });
    call.instrument(span)
}

#[cfg(test)]
mod future_sizes {
    //! A call's futures live as long as the call, so their size is memory per call:
    //! these bounds catch a large one-off future (a connect, a close) landing inline
    //! again. Debug builds lay futures out larger than release; the bounds are loose.
    use super::*;
    use crate::config::Config;
    use crate::providers::{self, ProviderChannels};

    fn size_of_output<A, B, C, Fut>(_: impl FnOnce(A, B, C) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_calls_futures_stay_small() {
        let sizes = [
            (
                "connection",
                size_of_output(
                    |a: Arc<Shared>, b: TcpStream, c: (SocketAddr, PendingGuard)| {
                        handle_connection(a, b, c.0, c.1)
                    },
                ),
                1024,
            ),
            (
                "FreeSWITCH call",
                size_of_output(|a: FreeswitchLeg, b, _: ()| call_task::run(a, b)),
                2 * 1024,
            ),
            (
                "Asterisk call",
                size_of_output(|a: AsteriskLeg, b, _: ()| call_task::run(a, b)),
                2 * 1024,
            ),
            (
                // What the accept path boxes: the call plus its span, not its arguments.
                "FreeSWITCH call with its span",
                size_of_output(
                    |a: &'static Shared,
                     b: (Arc<Config>, Arc<Route>, Admitted, SocketAddr),
                     c: FreeswitchLeg| run_call(a, b.0, b.1, b.2, b.3, 0.0, c),
                ),
                2 * 1024,
            ),
            (
                "OpenAI provider",
                size_of_output(
                    |a: &'static Config, b: &'static Arc<Route>, c: ProviderChannels| {
                        providers::openai::run(a, b, c)
                    },
                ),
                4 * 1024,
            ),
            (
                "ElevenLabs provider",
                size_of_output(
                    |a: &'static Config, b: &'static Arc<Route>, c: ProviderChannels| {
                        providers::elevenlabs::run(a, b, c)
                    },
                ),
                5 * 1024,
            ),
        ];
        for (what, size, bound) in sizes {
            eprintln!("{what}: {size}");
            assert!(
                size <= bound,
                "{what}: a {size}-byte future (bound {bound})"
            );
        }
    }
}
