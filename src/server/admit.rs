//! Admission of one call on a known route, for every telephony side: the drain, the
//! route's daily budget and the concurrency limits (server, route, one live stream per
//! call id). FreeSWITCH admits inside the WebSocket upgrade; a side whose call identity
//! only arrives after the connection is up (a Twilio `start`, an AudioSocket UUID)
//! calls the same function then, so every side has the same limits and refusals.

use std::time::Instant;

use tokio_tungstenite::tungstenite::http::StatusCode;

use super::rejection::Rejection;
use super::Shared;
use crate::budget::Ticket;
use crate::config::{Config, Route};
use crate::registry::{CallEntry, CallGuard, Full};

/// A call that may go ahead: its id, its live-call slot and its budget ticket.
pub(crate) struct Admitted {
    pub call_id: String,
    pub guard: CallGuard,
    pub budget: Ticket,
}

/// Refuses with 503 while the daemon drains for shutdown.
pub(crate) fn check_draining(shared: &Shared) -> Result<(), Rejection> {
    if shared.shutdown.draining.is_cancelled() {
        return Err(Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "daemon is draining for shutdown".to_owned(),
        ));
    }
    Ok(())
}

/// Admits a call with `call_id` (`None`: one is made up) on `route`. Must be quick and
/// must not await: FreeSWITCH runs it inside the handshake.
pub(crate) fn admit(
    shared: &Shared,
    config: &Config,
    route: &Route,
    call_id: Option<String>,
) -> Result<Admitted, Rejection> {
    check_draining(shared)?;
    // After auth, so strangers cannot use up a route's budget; before capacity, so a
    // route out of budget says so (with the real Retry-After) even when also full.
    // The limits are this snapshot's: a SIGHUP changes them for new calls.
    let budget = match shared.budgets.try_admit(route) {
        Ok(ticket) => ticket,
        Err(exceeded) => {
            let refused = Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "daily budget reached",
                exceeded.to_string(),
            );
            return Err(Rejection {
                retry_after: Some(exceeded.retry_after.as_secs().max(1)),
                budget: Some(Box::new(exceeded)),
                ..refused
            });
        }
    };
    let call_id = call_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let entry = CallEntry {
        call_id: call_id.clone(),
        route: route.name.clone(),
        provider: route.call.provider.name(),
        started: Instant::now(),
    };
    match shared
        .registry
        .try_register(entry, config.server.max_calls, route.max_calls)
    {
        Ok(guard) => Ok(Admitted {
            call_id,
            guard,
            budget,
        }),
        Err(full) => {
            // A call refused here never happened: it must not use the budget.
            budget.cancel();
            let which = match full {
                Full::Server(n) => format!("server.max_calls ({n})"),
                Full::Route(n) => format!("max_calls of route {:?} ({n})", route.name),
                // The first call keeps its id (and its ESL events); this one is refused.
                Full::CallIdInUse => {
                    return Err(Rejection::new(
                        StatusCode::CONFLICT,
                        "call id in use",
                        format!(
                            "call {call_id} is already live; a second stream with its id is refused"
                        ),
                    ))
                }
            };
            Err(Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "at capacity",
                format!("{which} reached; call {call_id} refused"),
            ))
        }
    }
}
