//! The upgrade request: `GET /<route>/<call-uuid>?rate=..&channels=..&codec=..&token=..`.
//!
//! The audio carries no header, so the inbound format can only come from here (or from
//! the route / `[freeswitch]` defaults); the call's identity comes from the path because
//! the metadata frame may come late or never.

use percent_encoding::percent_decode_str;

use crate::audio::{Channels, Codec};

/// Route used when the path names none (`ws://host:9090/`).
pub const DEFAULT_ROUTE: &str = "call";
/// Longest call id we accept; FreeSWITCH uuids are 36 characters.
const MAX_CALL_ID: usize = 128;

/// What the URL says about the call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamRequest {
    pub route: String,
    /// From the path; `None` when the URL has none (the server then makes one up).
    pub call_id: Option<String>,
    pub rate: Option<u32>,
    pub channels: Option<Channels>,
    pub codec: Option<Codec>,
    /// `?token=` (checked by the server; never logged).
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("path {0:?} is not /<route>/<call-uuid>")]
    BadPath(String),
    #[error("call id is not 1..={MAX_CALL_ID} characters of [A-Za-z0-9._-]")]
    BadCallId,
    #[error("query parameter {key}={value:?} is invalid: {allowed}")]
    BadQuery {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
}

impl StreamRequest {
    /// Parses the request target (path and query) of the upgrade request.
    pub fn parse(path: &str, query: Option<&str>) -> Result<StreamRequest, RequestError> {
        let mut req = StreamRequest::default();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segments.as_slice() {
            [""] => req.route = DEFAULT_ROUTE.to_owned(),
            [route] => req.route = decode(route),
            [route, id] => {
                req.route = decode(route);
                let id = decode(id);
                if id.is_empty()
                    || id.len() > MAX_CALL_ID
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                {
                    return Err(RequestError::BadCallId);
                }
                req.call_id = Some(id);
            }
            _ => return Err(RequestError::BadPath(path.chars().take(200).collect())),
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value);
            match key {
                "rate" | "sample_rate" => {
                    let rate = parse_rate(&value).ok_or_else(|| RequestError::BadQuery {
                        key: "rate",
                        value: value.clone(),
                        allowed: "8000, 16000, 8k, 16k or another multiple of 8000 up to 48000",
                    })?;
                    req.rate = Some(rate);
                }
                "channels" => {
                    req.channels = Some(Channels::parse(&value).ok_or(RequestError::BadQuery {
                        key: "channels",
                        value,
                        allowed: "mono, mixed or stereo",
                    })?);
                }
                "codec" => {
                    req.codec = Some(Codec::parse(&value).ok_or(RequestError::BadQuery {
                        key: "codec",
                        value,
                        allowed: "L16, PCMU or PCMA",
                    })?);
                }
                "token" => req.token = Some(value),
                // Other keys are the dialplan's business (e.g. tenant tags): ignore.
                _ => {}
            }
        }
        Ok(req)
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Accepts what `uuid_audio_stream ... start` accepts: `8k`, `16k` or a multiple of 8000.
pub fn parse_rate(s: &str) -> Option<u32> {
    let s = s.trim().to_ascii_lowercase();
    let rate = match s.strip_suffix('k') {
        Some(k) => k.parse::<u32>().ok()?.checked_mul(1000)?,
        None => s.parse::<u32>().ok()?,
    };
    ((8000..=48000).contains(&rate) && rate % 8000 == 0).then_some(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_and_call_id_from_the_path() {
        let r =
            StreamRequest::parse("/call/5f0c-11aa", Some("rate=16000&channels=stereo")).unwrap();
        assert_eq!(r.route, "call");
        assert_eq!(r.call_id.as_deref(), Some("5f0c-11aa"));
        assert_eq!(r.rate, Some(16000));
        assert_eq!(r.channels, Some(Channels::Stereo));
        assert_eq!(r.codec, None);
    }

    #[test]
    fn bare_paths_use_the_default_route() {
        let r = StreamRequest::parse("/", Some("token=abc")).unwrap();
        assert_eq!(r.route, DEFAULT_ROUTE);
        assert_eq!(r.call_id, None);
        assert_eq!(r.token.as_deref(), Some("abc"));
        assert_eq!(StreamRequest::parse("/sales", None).unwrap().route, "sales");
    }

    #[test]
    fn rejects_bad_input_with_the_reason() {
        assert!(matches!(
            StreamRequest::parse("/a/b/c", None),
            Err(RequestError::BadPath(_))
        ));
        assert_eq!(
            StreamRequest::parse("/call/a%20b", None),
            Err(RequestError::BadCallId)
        );
        let long = format!("/call/{}", "a".repeat(200));
        assert_eq!(
            StreamRequest::parse(&long, None),
            Err(RequestError::BadCallId)
        );
        assert!(matches!(
            StreamRequest::parse("/call/x", Some("rate=11025")),
            Err(RequestError::BadQuery { key: "rate", .. })
        ));
        assert!(matches!(
            StreamRequest::parse("/call/x", Some("codec=opus")),
            Err(RequestError::BadQuery { key: "codec", .. })
        ));
    }

    #[test]
    fn rates_like_the_start_command() {
        assert_eq!(parse_rate("8k"), Some(8000));
        assert_eq!(parse_rate("16K"), Some(16000));
        assert_eq!(parse_rate("24000"), Some(24000));
        assert_eq!(parse_rate("44100"), None);
        assert_eq!(parse_rate("0"), None);
        assert_eq!(parse_rate("99999999999k"), None);
    }
}
