//! The upgrade request Asterisk makes for one call:
//! `GET /asterisk/<route>[/<call-id>]?<v() parameters>`.
//!
//! The `uri` of the `websocket_client.conf` section gives the path; the dial string's
//! `v(k=v,k2=v2)` becomes the query. The audio format is not in the URL (it comes with
//! `MEDIA_START`); what the URL gives is the route and the call data the dialplan chose
//! to pass (its own call id, caller, called number, anything else as template variables).

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

/// First path segment of every chan_websocket upgrade (see `crate::server::upgrade`).
pub const PATH_PREFIX: &str = "asterisk";
/// Longest call id we accept (Asterisk uniqueids are ~20 characters, UUIDs 36).
const MAX_CALL_ID: usize = 128;
/// Query parameters kept as template variables at most, and their longest key/value.
const MAX_VARS: usize = 32;
const MAX_VAR_LEN: usize = 256;

/// What the URL says about the call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AsteriskRequest {
    pub route: String,
    /// `/<call-id>` or `v(call=...)`; `None`: the server makes one up.
    pub call_id: Option<String>,
    pub caller_id: Option<String>,
    pub called: Option<String>,
    /// `v(answer=yes)`: the dial string has `n` (no auto-answer), so we send `ANSWER`.
    pub answer: bool,
    /// Every other parameter (not `token`), for the instructions template.
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("path {0:?} is not /asterisk/<route>[/<call-id>]")]
    BadPath(String),
    #[error("call id is not 1..={MAX_CALL_ID} characters of [A-Za-z0-9._-]")]
    BadCallId,
    #[error("query parameter answer={0:?} is not yes/no")]
    BadAnswer(String),
}

impl AsteriskRequest {
    /// Whether a request path is for this side (its first segment is [`PATH_PREFIX`]).
    pub fn is_for(path: &str) -> bool {
        path.trim_start_matches('/').split('/').next() == Some(PATH_PREFIX)
    }

    /// Parses the request target of an upgrade [`is_for`](Self::is_for) this side.
    pub fn parse(path: &str, query: Option<&str>) -> Result<AsteriskRequest, RequestError> {
        let mut req = AsteriskRequest::default();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let bad_path = || RequestError::BadPath(path.chars().take(200).collect());
        match segments.as_slice() {
            [PATH_PREFIX, route] if !route.is_empty() => req.route = decode(route),
            [PATH_PREFIX, route, id] if !route.is_empty() => {
                req.route = decode(route);
                req.call_id = Some(call_id(&decode(id))?);
            }
            _ => return Err(bad_path()),
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (decode(key), decode(value));
            match key.as_str() {
                "call" | "call_id" if req.call_id.is_none() => req.call_id = Some(call_id(&value)?),
                "caller_id" | "from" => req.caller_id = Some(truncate(value)),
                "called" | "to" => req.called = Some(truncate(value)),
                "answer" => {
                    req.answer = match value.to_ascii_lowercase().as_str() {
                        "yes" | "true" | "1" => true,
                        "no" | "false" | "0" => false,
                        _ => return Err(RequestError::BadAnswer(truncate(value))),
                    }
                }
                // Checked by the server, never kept: a secret.
                "token" => {}
                _ if req.vars.len() < MAX_VARS && !key.is_empty() => {
                    req.vars.insert(truncate(key), truncate(value));
                }
                _ => {}
            }
        }
        Ok(req)
    }
}

fn call_id(id: &str) -> Result<String, RequestError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_CALL_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(id.to_owned())
    } else {
        Err(RequestError::BadCallId)
    }
}

fn decode(s: &str) -> String {
    // `v()` values are URIENCODEd; `+` stays a plus (Asterisk encodes a space as %20).
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn truncate(s: String) -> String {
    if s.len() <= MAX_VAR_LEN {
        return s;
    }
    s.chars().take(MAX_VAR_LEN / 4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_and_call_data_from_path_and_query() {
        let r = AsteriskRequest::parse(
            "/asterisk/sales",
            Some("call=1733240000.17&from=%2B3902123&to=100&tenant=acme&token=s3cret"),
        )
        .unwrap();
        assert_eq!(r.route, "sales");
        assert_eq!(r.call_id.as_deref(), Some("1733240000.17"));
        assert_eq!(r.caller_id.as_deref(), Some("+3902123"));
        assert_eq!(r.called.as_deref(), Some("100"));
        assert!(!r.answer);
        assert_eq!(r.vars.get("tenant").map(String::as_str), Some("acme"));
        assert!(!r.vars.contains_key("token"), "the token is never kept");

        let r = AsteriskRequest::parse("/asterisk/call/abc-1", Some("answer=yes")).unwrap();
        assert_eq!(r.route, "call");
        assert_eq!(r.call_id.as_deref(), Some("abc-1"));
        assert!(r.answer);
    }

    #[test]
    fn which_paths_are_for_asterisk() {
        assert!(AsteriskRequest::is_for("/asterisk/call"));
        assert!(AsteriskRequest::is_for("/asterisk"));
        assert!(!AsteriskRequest::is_for("/call/asterisk"));
        assert!(!AsteriskRequest::is_for("/asterisks/x"));
        assert!(!AsteriskRequest::is_for("/"));
    }

    #[test]
    fn rejects_bad_input_with_the_reason() {
        for path in ["/asterisk", "/asterisk/", "/asterisk/a/b/c", "/asterisk//x"] {
            assert!(
                matches!(
                    AsteriskRequest::parse(path, None),
                    Err(RequestError::BadPath(_))
                ),
                "{path}"
            );
        }
        assert_eq!(
            AsteriskRequest::parse("/asterisk/call", Some("call=a%20b")),
            Err(RequestError::BadCallId)
        );
        assert_eq!(
            AsteriskRequest::parse("/asterisk/call", Some("answer=maybe")),
            Err(RequestError::BadAnswer("maybe".to_owned()))
        );
        let many: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        let r = AsteriskRequest::parse("/asterisk/call", Some(&many.join("&"))).unwrap();
        assert_eq!(r.vars.len(), MAX_VARS);
    }
}
