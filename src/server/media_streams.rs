//! The carrier Media Streams side of the server: the upgrade decision for
//! `/twilio/<route>` and `/telnyx/<route>` (credentials: `X-Twilio-Signature` or our
//! tokens), and the accepted stream's run up to the generic call task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::handshake::server::Request;
use tokio_tungstenite::tungstenite::http::{header, StatusCode};
use tracing::{warn, Instrument};

use super::admit::{self, Admitted};
use super::rejection::Rejection;
use super::upgrade::{find_route, Accepted, Side};
use super::{run_call, Shared};
use crate::admission;
use crate::config::{Config, Route};
use crate::telephony::freeswitch::leg::Ws;
use crate::telephony::media_streams::{
    leg, signature, Carrier, MediaStreamsLeg, PathError, StreamPath,
};

/// Telnyx sends `stream_auth_token` in this header.
const TELNYX_TOKEN_HEADER: &str = "x-telnyx-streaming-auth-token";

/// The upgrade decision for a carrier path. Must not await anything.
pub(super) fn decide(
    shared: &Shared,
    config: &Config,
    req: &Request,
    path: Result<StreamPath, PathError>,
) -> Result<Accepted, Rejection> {
    authorize(config, req, path.as_ref().ok().map(|p| p.carrier))?;
    admit::check_draining(shared)?;
    let path =
        path.map_err(|e| Rejection::failed(StatusCode::BAD_REQUEST, "bad request", e.to_string()))?;
    let route = find_route(config, &path.route, req.uri().path())?;
    // The carrier's call id only comes with `start`: the slot is taken now, under an
    // id of ours, so a full daemon refuses before the 101 (Twilio then goes on with
    // the TwiML after `</Connect>`).
    let admitted = admit::admit(shared, config, route, None)?;
    Ok(Accepted {
        side: Side::MediaStreams(path),
        route: route.clone(),
        admitted,
    })
}

/// One of our tokens (`Authorization: Bearer`, `?token=`, Telnyx's stream auth
/// header), or for Twilio with `[twilio] auth_token` set, a valid `X-Twilio-Signature`.
/// Nothing of the presented credentials reaches a log line.
fn authorize(config: &Config, req: &Request, carrier: Option<Carrier>) -> Result<(), Rejection> {
    let tokens = &config.server.auth_tokens;
    let headers = req.headers();
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header_str(header::AUTHORIZATION.as_str()).and_then(admission::auth::bearer);
    let query = admission::auth::query_token(req.uri().query());
    let telnyx = header_str(TELNYX_TOKEN_HEADER).filter(|_| carrier == Some(Carrier::Telnyx));
    let presented: Vec<&str> = [bearer, query.as_deref(), telnyx]
        .into_iter()
        .flatten()
        .collect();
    if presented
        .iter()
        .any(|p| tokens.iter().any(|t| t.matches(p)))
    {
        return Ok(());
    }
    let twilio_token = &config.twilio.auth_token;
    if carrier == Some(Carrier::Twilio) && !twilio_token.is_empty() {
        let Some(sig) = header_str(signature::HEADER) else {
            return Err(unauthorized("no X-Twilio-Signature (and no token)"));
        };
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let url = signature::signed_url(
            config.twilio.public_url.as_deref(),
            header_str(header::HOST.as_str()),
            target,
        );
        return match url {
            Some(url) if signature::verify(twilio_token.expose(), &url, sig) => Ok(()),
            Some(_) => Err(Rejection::failed(
                StatusCode::FORBIDDEN,
                "forbidden",
                "X-Twilio-Signature does not match (check [twilio] auth_token and public_url)"
                    .to_owned(),
            )),
            None => Err(unauthorized(
                "no Host header to check X-Twilio-Signature against",
            )),
        };
    }
    if tokens.is_empty() {
        return Ok(());
    }
    Err(unauthorized(if presented.is_empty() {
        "no token (Authorization: Bearer or ?token=)"
    } else {
        "wrong token"
    }))
}

fn unauthorized(why: &str) -> Rejection {
    Rejection::failed(StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned())
}

/// An accepted carrier stream: waits for its `start` (bounded), then runs the call on
/// the generic call task like any other side.
// `run_call`'s arguments plus the socket and the path: bundling them would only move
// the list elsewhere.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    shared: &Shared,
    config: Arc<Config>,
    route: Arc<Route>,
    admitted: Admitted,
    peer: SocketAddr,
    handshake_ms: f64,
    ws: Ws,
    path: StreamPath,
) {
    let mut leg = MediaStreamsLeg::new(ws, path.carrier, route.playback_lead);
    let span = tracing::info_span!("call", call_id = %admitted.call_id, route = %route.name);
    let started = leg.await_start().instrument(span.clone()).await;
    if let Err(e) = started {
        span.in_scope(|| {
            warn!(%peer, carrier = path.carrier.name(), reason = %e, "media stream refused: no valid start");
        });
        // A stream that never started is no call: it uses no budget.
        admitted.budget.cancel();
        leg::refuse(&mut leg, &e.to_string()).instrument(span).await;
        return;
    }
    let named = leg.custom_param("route").map(str::to_owned);
    let (route, admitted) = match named {
        Some(name) if !path.route_in_path && name != route.name => {
            match readmit(shared, &config, &name, admitted) {
                Ok(readmitted) => readmitted,
                Err(rejection) => {
                    // Counted and logged like a refused upgrade (the 101 was already sent).
                    span.in_scope(|| rejection.report(shared, peer));
                    leg::refuse(&mut leg, rejection.body).instrument(span).await;
                    return;
                }
            }
        }
        _ => (route, admitted),
    };
    run_call(shared, config, route, admitted, peer, handshake_ms, leg).await;
}

/// The stream's `route` parameter names another route than the upgrade was admitted
/// on: admission again on that one (its limits and budget), and the first admission
/// undone (it never was a call). Refused: the first admission is undone all the same.
fn readmit(
    shared: &Shared,
    config: &Config,
    name: &str,
    first: Admitted,
) -> Result<(Arc<Route>, Admitted), Rejection> {
    let Admitted { guard, budget, .. } = first;
    budget.cancel();
    drop(guard);
    let route = find_route(config, name, "start.customParameters.route")?;
    let admitted = admit::admit(shared, config, route, None)?;
    Ok((route.clone(), admitted))
}
