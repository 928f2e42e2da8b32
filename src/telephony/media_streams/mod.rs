//! Carrier Media Streams: Twilio `<Connect><Stream>` (bidirectional) and Telnyx
//! bidirectional streaming (`stream_bidirectional_mode=rtp`), which share one protocol
//! shape: JSON text messages `connected`, `start`, `media` (base64 audio), `dtmf`,
//! `mark`, `stop` from the carrier; `media`, `mark`, `clear` from us.
//!
//! - [`wire`]: the messages, parsed and built (pure).
//! - [`reorder`]: Telnyx's chunks back in order, in a small bounded window (pure).
//! - [`signature`]: `X-Twilio-Signature` of the upgrade (pure).
//! - [`leg`]: one call's stream as a `TelephonyLeg`.
//!
//! The upgrade path picks the carrier: `/twilio/<route>` or `/telnyx/<route>`. Twilio
//! stream URLs take no query string, so the route is in the path; left out, a `route`
//! custom parameter (`<Parameter name="route">`) names it, else it is `call`.

pub mod leg;
mod reorder;
pub mod signature;
pub mod wire;

pub use leg::MediaStreamsLeg;

/// Which carrier's dialect a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    Twilio,
    Telnyx,
}

impl Carrier {
    pub fn name(self) -> &'static str {
        match self {
            Carrier::Twilio => "twilio",
            Carrier::Telnyx => "telnyx",
        }
    }
}

/// What a Media Streams upgrade URL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPath {
    pub carrier: Carrier,
    pub route: String,
    /// The path named the route; otherwise a `route` custom parameter of `start` may.
    pub route_in_path: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("path {0:?} is not /twilio/<route> or /telnyx/<route>")]
pub struct PathError(String);

impl StreamPath {
    /// `None` when the path is not for a carrier (its first segment is neither
    /// `twilio` nor `telnyx`); else the carrier and route, or why the path is wrong.
    pub fn recognise(path: &str) -> Option<Result<StreamPath, PathError>> {
        let mut segments = path.trim_start_matches('/').split('/');
        let carrier = match segments.next()? {
            "twilio" => Carrier::Twilio,
            "telnyx" => Carrier::Telnyx,
            _ => return None,
        };
        let rest: Vec<&str> = segments.filter(|s| !s.is_empty()).collect();
        let route = match rest.as_slice() {
            [] => None,
            [route] => Some(
                percent_encoding::percent_decode_str(route)
                    .decode_utf8_lossy()
                    .into_owned(),
            ),
            _ => return Some(Err(PathError(path.chars().take(200).collect()))),
        };
        Some(Ok(StreamPath {
            carrier,
            route_in_path: route.is_some(),
            route: route.unwrap_or_else(|| crate::config::DEFAULT_ROUTE.to_owned()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_segment_picks_the_carrier() {
        let p = |s| StreamPath::recognise(s);
        assert_eq!(
            p("/twilio/sales"),
            Some(Ok(StreamPath {
                carrier: Carrier::Twilio,
                route: "sales".into(),
                route_in_path: true,
            }))
        );
        assert_eq!(
            p("/telnyx"),
            Some(Ok(StreamPath {
                carrier: Carrier::Telnyx,
                route: "call".into(),
                route_in_path: false,
            }))
        );
        assert_eq!(p("/twilio/"), p("/twilio"));
        assert!(matches!(p("/twilio/a/b"), Some(Err(_))));
        assert_eq!(p("/call/uuid-1"), None);
        assert_eq!(p("/twilioX/a"), None);
        assert_eq!(p("/"), None);
    }
}
