//! The WebSocket upgrade decision: credentials, which telephony side the request is
//! for, its route, then admission. It runs inside the handshake callback, so it is
//! synchronous and quick; nothing slow happens before the 101 (mod_audio_stream gives
//! up after 1 s, Asterisk after its `connection_timeout`).
//!
//! Every side shares the one `[server] listen` port; the first segment of the path says
//! which side a request is for (see [`Side`]), so one daemon serves every PBX.

use tokio_tungstenite::tungstenite::handshake::server::Request;
use tokio_tungstenite::tungstenite::http::{header, StatusCode};

use super::admit::{self, Admitted};
use super::rejection::Rejection;
use super::Shared;
use crate::admission;
use std::sync::Arc;

use crate::config::{Config, Route};
use crate::telephony::asterisk_ws::AsteriskRequest;
use crate::telephony::freeswitch::StreamRequest;
use crate::telephony::media_streams::StreamPath;

/// Which telephony side an upgrade is for, with what its URL says about the call.
pub(crate) enum Side {
    /// FreeSWITCH `mod_audio_stream`: `/<route>/<call-uuid>?...` (every path whose
    /// first segment names no other side).
    Freeswitch(StreamRequest),
    /// Carrier Media Streams: `/twilio/<route>` (Twilio `<Connect><Stream>`) and
    /// `/telnyx/<route>` (Telnyx bidirectional `rtp` streaming); see
    /// `crate::telephony::media_streams`.
    MediaStreams(StreamPath),
    /// Asterisk chan_websocket: `/asterisk/<route>[/<call-id>]?<v() parameters>`.
    Asterisk(AsteriskRequest),
}

/// What the upgrade callback decided for an accepted call.
pub(crate) struct Accepted {
    pub side: Side,
    pub route: Arc<Route>,
    pub admitted: Admitted,
}

/// The upgrade decision: auth, side, route, capacity. Must not await anything.
pub(super) fn decide(
    shared: &Shared,
    config: &Config,
    req: &Request,
) -> Result<Accepted, Rejection> {
    let uri = req.uri();
    if let Some(path) = StreamPath::recognise(uri.path()) {
        return super::media_streams::decide(shared, config, req, path);
    }
    // First, on the raw request: without valid credentials nothing else is looked at,
    // so the answer (401) says nothing about routes, call ids or the daemon's state.
    authorize(config, req)?;
    admit::check_draining(shared)?;
    if AsteriskRequest::is_for(uri.path()) {
        let request = AsteriskRequest::parse(uri.path(), uri.query()).map_err(|e| {
            Rejection::failed(StatusCode::BAD_REQUEST, "bad request", e.to_string())
        })?;
        let route = find_route(config, &request.route, uri.path())?;
        let admitted = admit::admit(shared, config, route, request.call_id.clone())?;
        return Ok(Accepted {
            side: Side::Asterisk(request),
            route: route.clone(),
            admitted,
        });
    }
    let request = StreamRequest::parse(uri.path(), uri.query())
        .map_err(|e| Rejection::failed(StatusCode::BAD_REQUEST, "bad request", e.to_string()))?;
    let route = find_route(config, &request.route, uri.path())?;
    let admitted = admit::admit(shared, config, route, request.call_id.clone())?;
    Ok(Accepted {
        side: Side::Freeswitch(request),
        route: route.clone(),
        admitted,
    })
}

/// The route a request names, or a 404 that counts as a failed upgrade.
pub(crate) fn find_route<'c>(
    config: &'c Config,
    name: &str,
    path: &str,
) -> Result<&'c Arc<Route>, Rejection> {
    config.route(name).ok_or_else(|| {
        Rejection::failed(
            StatusCode::NOT_FOUND,
            "unknown route",
            format!("unknown route {name:?} (path {path})"),
        )
    })
}

/// With `auth_tokens` set, the request must carry one: `Authorization: Bearer`,
/// `?token=`, or as the password of `Authorization: Basic` (Asterisk's
/// `websocket_client.conf` credentials). Compared in constant time (`Secret::matches`).
fn authorize(config: &Config, req: &Request) -> Result<(), Rejection> {
    if config.server.auth_tokens.is_empty() {
        return Ok(());
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let bearer = authorization.and_then(admission::auth::bearer);
    let basic = authorization.and_then(admission::auth::basic_password);
    let query = admission::auth::query_token(req.uri().query());
    let presented = bearer.or(basic.as_deref()).or(query.as_deref());
    let ok = presented.is_some_and(|p| config.server.auth_tokens.iter().any(|t| t.matches(p)));
    if ok {
        return Ok(());
    }
    let why = if presented.is_some() {
        "wrong token"
    } else {
        "no token (Authorization: Bearer or Basic, or ?token=)"
    };
    Err(Rejection::failed(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        why.to_owned(),
    ))
}
