//! Why a connection was refused, and how that is answered, counted and logged: the same
//! for every telephony side, so a refused Asterisk or Twilio upgrade reads like a refused
//! FreeSWITCH one in the journal and in `upgrade_rejected_total{reason}`.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::StatusCode;
use tracing::warn;

use super::Shared;
use crate::admission::{Source, Summary, TooMany};
use crate::budget::Exceeded;
use crate::call_metrics;

/// `Retry-After` of a 503 for a transient condition (capacity, drain).
pub(super) const RETRY_AFTER_SECS: u64 = 5;
/// `Retry-After` of a 429: the failure budget refills within a second.
pub(super) const RATE_LIMITED_RETRY_AFTER_SECS: u64 = 1;

/// Why an upgrade (or an AudioSocket connection) was refused.
pub(crate) struct Rejection {
    pub status: StatusCode,
    /// Short body, also the `reason` label of the rejection metric (see [`metric_label`]).
    pub body: &'static str,
    pub reason: String,
    /// `Retry-After` of a 503, in seconds; `None`: the default.
    pub retry_after: Option<u64>,
    /// Refused by a daily budget: logged (rate-limited) as such, not as a plain rejection.
    pub budget: Option<Box<Exceeded>>,
    /// A failed upgrade (no valid token, bad request, unknown route): counts against
    /// the source's `per_ip_rate_limit`.
    pub failure: bool,
}

impl Rejection {
    /// A refusal that is not the caller's fault (drain, capacity, a call id in use).
    pub fn new(status: StatusCode, body: &'static str, reason: String) -> Rejection {
        Rejection {
            status,
            body,
            reason,
            retry_after: None,
            budget: None,
            failure: false,
        }
    }

    /// A failed upgrade (bad credentials, bad request, unknown route): it counts
    /// against the source's failure budget.
    pub fn failed(status: StatusCode, body: &'static str, reason: String) -> Rejection {
        Rejection {
            failure: true,
            ..Rejection::new(status, body, reason)
        }
    }

    /// The same rejection, answered 429: its source is over its failed-upgrade budget.
    pub fn rate_limited(self, source: Source, per_sec: u32) -> Rejection {
        Rejection::failed(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limited",
            format!(
                "more than {} failed upgrades per second from {source} (this one: {}: {})",
                per_sec, self.body, self.reason
            ),
        )
    }

    /// Counts and logs the refusal (rate-limited per source; budget refusals per route).
    pub fn report(&self, shared: &Shared, peer: SocketAddr) {
        let label = metric_label(self.body);
        call_metrics::upgrade_rejected(label);
        match &self.budget {
            Some(b) => log_budget_refusal(peer, b),
            None => log_rejection(shared, peer, label, || {
                warn!(%peer, status = self.status.as_u16(), reason = %self.reason, "upgrade rejected");
            }),
        }
    }
}

/// Over a pre-handshake cap: a canned response written without waiting (the socket
/// buffer of a fresh connection takes it), then the connection is dropped.
pub(super) fn refuse_at_once(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    too_many: TooMany,
) {
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
pub(crate) fn log_rejection(
    shared: &Shared,
    peer: SocketAddr,
    label: &'static str,
    full: impl FnOnce(),
) {
    let (in_full, ended) = shared.admission.note(Source::of(peer.ip()), label);
    if let Some(s) = ended {
        log_summary(&s);
    }
    if in_full {
        full();
    }
}

pub(super) fn log_summary(s: &Summary) {
    warn!(
        source = %s.source,
        rejected = s.total(),
        by_reason = %s.by_reason(),
        over_secs = s.over.as_secs(),
        "upgrade rejections not logged one by one (summary)"
    );
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
        "source not allowed" => "source_not_allowed",
        _ => "other",
    }
}
