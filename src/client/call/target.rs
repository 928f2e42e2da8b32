//! Where `voicebridge call` connects and in which wire format: the URL as given to
//! `uuid_audio_stream` (its `rate`/`channels`/`codec` keys, the call id in its last
//! segment, the `Origin` it implies), the missing format keys added, and the options,
//! URL and WAV reconciled. Printing goes through the library's one redaction rule.

use http::Uri;
use voicebridge::audio::{Channels, Codec};

use super::args::{CallArgs, CallError};
use crate::client::core;

/// Where and how to connect, derived from the URL and the options.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Target {
    /// The URL to request (with any added query keys). May contain a token: never print.
    pub(super) url: String,
    /// Safe to print.
    pub(super) display_url: String,
    pub(super) call_id: String,
    pub(super) origin: String,
    url_rate: Option<u32>,
    url_channels: Option<Channels>,
    url_codec: Option<Codec>,
}

fn decode_component(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Removes the URL's secret parts (and the URL itself) from an error text that came
/// from a library, which may quote the URI it was given.
pub(super) fn scrub_secrets(text: &str, url: &str) -> String {
    voicebridge::redact::scrub(text, url)
}

/// Parses the URL, reads the format keys it carries and adds the missing ones.
///
/// `rate`/`channels`/`codec` are the wire format after resolution; keys already in the
/// URL are kept verbatim (resolution makes sure they agree).
pub(super) fn prepare_target(
    raw: &str,
    rate: u32,
    channels: Channels,
    codec: Codec,
) -> Result<Target, CallError> {
    let mut target = parse_target(raw)?;
    let mut extra = Vec::new();
    if target.url_rate.is_none() {
        extra.push(format!("rate={rate}"));
    }
    if target.url_channels.is_none() {
        extra.push(format!("channels={}", channels.name()));
    }
    // The server assumes L16 without a hint, so only a non-default codec must be stated.
    if target.url_codec.is_none() && codec != Codec::L16 {
        extra.push(format!("codec={}", codec.name()));
    }
    if !extra.is_empty() {
        let joined = extra.join("&");
        target.url = match target.url.split_once('?') {
            Some((_, "")) => format!("{}{joined}", target.url),
            Some(_) => format!("{}&{joined}", target.url),
            None => format!("{}?{joined}", target.url),
        };
    }
    target.display_url = voicebridge::redact::url(&target.url);
    Ok(target)
}

/// Parses the URL as given; format keys are read but nothing is added yet.
pub(super) fn parse_target(raw: &str) -> Result<Target, CallError> {
    let invalid = |reason: &str| CallError::InvalidUrl {
        url: voicebridge::redact::url(raw),
        reason: reason.to_string(),
    };
    let uri: Uri = raw
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !matches!(scheme, "ws" | "wss") {
        return Err(invalid("the scheme must be ws:// or wss://"));
    }
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let origin = core::origin(&uri).ok_or_else(|| invalid("no host"))?;
    let authority = uri.authority().map_or(host, |a| a.as_str());

    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /<route>/<call-uuid>: with a single segment it is the route, so there is no id.
    let call_id = if segments.len() >= 2 {
        decode_component(segments[segments.len() - 1])
    } else {
        uuid::Uuid::new_v4().to_string()
    };

    let mut url_rate = None;
    let mut url_channels = None;
    let mut url_codec = None;
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode_component(v);
            match decode_component(k).as_str() {
                "rate" => {
                    let r: u32 = v
                        .parse()
                        .map_err(|_| invalid(&format!("rate={v} is not a number")))?;
                    url_rate = Some(r);
                }
                "channels" => {
                    url_channels =
                        Some(Channels::parse(&v).ok_or_else(|| invalid(&format!("channels={v}")))?);
                }
                "codec" => {
                    url_codec =
                        Some(Codec::parse(&v).ok_or_else(|| invalid(&format!("codec={v}")))?);
                }
                _ => {}
            }
        }
    }
    let url = match uri.query() {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    };
    Ok(Target {
        display_url: voicebridge::redact::url(&url),
        url,
        call_id,
        origin,
        url_rate,
        url_channels,
        url_codec,
    })
}

/// The resolved wire format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct WireFormat {
    pub(super) rate: u32,
    pub(super) channels: Channels,
    pub(super) codec: Codec,
}

/// Picks the wire format from options, URL and WAV; any disagreement is an error because
/// the server trusts the URL and would misread the audio.
pub(super) fn resolve_format(
    args: &CallArgs,
    target: &Target,
    wav_rate: u32,
) -> Result<WireFormat, CallError> {
    let conflict = |what: &str, url: String, opt: String| {
        CallError::InvalidOption(format!(
            "the URL says {what}={url} but --{what} is {opt}; the server would trust the URL"
        ))
    };
    let codec = match (args.codec, target.url_codec) {
        (Some(o), Some(u)) if o != u => {
            return Err(conflict("codec", u.to_string(), o.to_string()))
        }
        (o, u) => o.or(u).unwrap_or(Codec::L16),
    };
    let channels = match (args.channels, target.url_channels) {
        (Some(o), Some(u)) if o != u => {
            return Err(conflict("channels", u.to_string(), o.to_string()))
        }
        (o, u) => o.or(u).unwrap_or(Channels::Mono),
    };
    let rate = match (args.rate, target.url_rate) {
        (Some(o), Some(u)) if o != u => return Err(conflict("rate", u.to_string(), o.to_string())),
        (o, u) => o.or(u).unwrap_or(wav_rate),
    };
    if rate == 0 {
        return Err(CallError::InvalidOption("the rate must be positive".into()));
    }
    if codec != Codec::L16 && rate != 8000 {
        return Err(CallError::InvalidOption(format!(
            "{codec} is 8000 Hz only, but the call rate is {rate} Hz"
        )));
    }
    Ok(WireFormat {
        rate,
        channels,
        codec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_adds_missing_format_keys_and_reads_call_id() {
        let t = prepare_target(
            "ws://127.0.0.1:9090/call/abc-123",
            16000,
            Channels::Mono,
            Codec::L16,
        )
        .unwrap();
        assert_eq!(
            t.url,
            "ws://127.0.0.1:9090/call/abc-123?rate=16000&channels=mono"
        );
        assert_eq!(t.call_id, "abc-123");
        assert_eq!(t.origin, "http://127.0.0.1:9090");

        let t = prepare_target(
            "ws://h:9090/call/x?token=s3cret&rate=8000",
            8000,
            Channels::Stereo,
            Codec::Pcmu,
        )
        .unwrap();
        assert_eq!(
            t.url,
            "ws://h:9090/call/x?token=s3cret&rate=8000&channels=stereo&codec=PCMU"
        );
        assert!(!t.display_url.contains("s3cret"), "{}", t.display_url);
        assert!(t.display_url.contains("token=[redacted]"));
    }

    #[test]
    fn target_without_call_id_or_port() {
        let t = prepare_target(
            "ws://example.com/?token=x",
            8000,
            Channels::Mono,
            Codec::L16,
        )
        .unwrap();
        assert_eq!(t.origin, "http://example.com:80");
        assert_eq!(t.url, "ws://example.com/?token=x&rate=8000&channels=mono");
        assert!(uuid::Uuid::parse_str(&t.call_id).is_ok());

        let t = prepare_target("wss://example.com", 8000, Channels::Mono, Codec::L16).unwrap();
        assert_eq!(t.origin, "http://example.com:443");
        assert_eq!(t.url, "wss://example.com/?rate=8000&channels=mono");
    }

    #[test]
    fn bad_urls_are_errors() {
        for url in [
            "http://h:1/call/x",
            "not a url",
            "ws://h:1/call/x?rate=fast",
        ] {
            assert!(
                matches!(parse_target(url), Err(CallError::InvalidUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn redaction_removes_tokens_and_credentials() {
        assert_eq!(
            voicebridge::redact::url("ws://u:pw@h:1/call/x?rate=8000&access_token=abc&api_key=k"),
            "ws://h:1/call/x?rate=[redacted]&access_token=[redacted]&api_key=[redacted]"
        );
        assert_eq!(
            voicebridge::redact::url("ws://h:1/call/x"),
            "ws://h:1/call/x"
        );
        let url = "ws://h:1/call/x?token=s3cret";
        assert_eq!(
            scrub_secrets(&format!("Unable to connect to {url}; s3cret"), url),
            "Unable to connect to ws://h:1/call/x?token=[redacted]; [redacted]"
        );
    }

    #[test]
    fn format_resolution() {
        let parsed = parse_target("ws://h:1/call/x?rate=16000").unwrap();
        let mut args = CallArgs::new("ws://h:1/call/x?rate=16000", "in.wav");
        let f = resolve_format(&args, &parsed, 8000).unwrap();
        assert_eq!(f.rate, 16000, "the URL's rate wins over the WAV's");
        assert_eq!(f.channels, Channels::Mono);
        assert_eq!(f.codec, Codec::L16);

        args.rate = Some(8000);
        assert!(matches!(
            resolve_format(&args, &parsed, 8000),
            Err(CallError::InvalidOption(_))
        ));

        let parsed = parse_target("ws://h:1/call/x").unwrap();
        let mut args = CallArgs::new("ws://h:1/call/x", "in.wav");
        args.codec = Some(Codec::Pcma);
        assert!(
            resolve_format(&args, &parsed, 16000).is_err(),
            "G.711 at 16 kHz"
        );
        assert_eq!(resolve_format(&args, &parsed, 8000).unwrap().rate, 8000);
    }
}
