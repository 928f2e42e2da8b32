//! The Media Streams wire format, pure: the JSON text messages a carrier sends
//! (Twilio's camelCase names, Telnyx's snake_case ones) parsed into [`Inbound`], and
//! the ones we send (`media`, `mark`, `clear`) built as text. No sockets here.
//!
//! Every value Twilio sends is a string except `mediaFormat.sampleRate`/`channels`;
//! both forms are accepted for numbers so a carrier quoting them (or not) parses.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::audio::Codec;

/// Longest custom parameter kept, and how many: `customParameters` reaches the
/// instructions template, so a hostile `start` must not make it arbitrarily large.
const MAX_PARAMS: usize = 32;
const MAX_PARAM_CHARS: usize = 512;

/// One message from the carrier.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    Connected,
    Start(Start),
    Media(Media),
    /// A key the caller pressed (`dtmf.digit`).
    Dtmf(char),
    /// Our mark, echoed once the audio before it has played (or on `clear`).
    Mark(String),
    Stop,
    /// Any other event (`error` from Telnyx, future ones): ignored, with its name.
    Other(String),
}

/// The `start` message: who the call is and what the audio is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Start {
    /// Twilio `streamSid` / Telnyx `stream_id`: named in every message we send (Twilio).
    pub stream_id: Option<String>,
    /// Twilio `callSid` / Telnyx `call_control_id`.
    pub call_id: Option<String>,
    /// Twilio `accountSid`.
    pub account_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `mediaFormat` / `media_format`, when it names a codec we know.
    pub format: Option<MediaFormat>,
    /// The encoding as sent, when it is one we do not know (the call is refused).
    pub unknown_encoding: Option<String>,
    /// `customParameters` (`<Parameter>` in the TwiML), at most `MAX_PARAMS`.
    pub params: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaFormat {
    pub codec: Codec,
    pub rate: u32,
    pub channels: u32,
}

/// One `media` message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Media {
    /// `media.track`; `None` when absent (Twilio's bidirectional streams omit nothing,
    /// Telnyx may).
    pub track: Option<String>,
    /// `media.chunk`: the chunk number, from 1 (the reorder key for Telnyx).
    pub chunk: Option<u64>,
    /// `media.timestamp`, ms since the stream started.
    pub timestamp: Option<u64>,
    /// The audio, decoded from base64.
    pub payload: Vec<u8>,
}

impl Media {
    /// Whether this is the caller's audio (and not our own played back, which Telnyx
    /// can stream on an `outbound` track).
    pub fn is_inbound(&self) -> bool {
        self.track
            .as_deref()
            .is_none_or(|t| t.starts_with("inbound"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("no \"event\" string in the message")]
    NoEvent,
    #[error("{event} message: {what}")]
    Bad { event: &'static str, what: String },
}

fn bad(event: &'static str, what: impl Into<String>) -> WireError {
    WireError::Bad {
        event,
        what: what.into(),
    }
}

/// Parses one text message.
pub fn parse(text: &str) -> Result<Inbound, WireError> {
    let v: Value = serde_json::from_str(text).map_err(|e| WireError::NotJson(e.to_string()))?;
    let event = v
        .get("event")
        .and_then(Value::as_str)
        .ok_or(WireError::NoEvent)?;
    Ok(match event {
        "connected" => Inbound::Connected,
        "start" => Inbound::Start(parse_start(&v)?),
        "media" => Inbound::Media(parse_media(&v)?),
        "dtmf" => {
            let digit = v
                .get("dtmf")
                .and_then(|d| d.get("digit"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("dtmf", "no dtmf.digit"))?;
            let mut chars = digit.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if is_dtmf(c) => Inbound::Dtmf(c.to_ascii_uppercase()),
                _ => {
                    return Err(bad(
                        "dtmf",
                        format!("digit {:?} is not a DTMF key", preview(digit)),
                    ))
                }
            }
        }
        "mark" => {
            let name = v
                .get("mark")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("mark", "no mark.name"))?;
            Inbound::Mark(name.to_owned())
        }
        "stop" => Inbound::Stop,
        other => Inbound::Other(preview(other).to_owned()),
    })
}

fn is_dtmf(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D' | 'a'..='d')
}

/// The first of `names` present in `obj`, as a string (numbers are accepted).
fn text(obj: &Value, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| match obj.get(*n)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// The first of `names` present in `obj`, as a number (strings of digits are accepted).
fn number(obj: &Value, names: &[&str]) -> Option<u64> {
    names.iter().find_map(|n| match obj.get(*n)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn parse_start(v: &Value) -> Result<Start, WireError> {
    let s = v
        .get("start")
        .filter(|s| s.is_object())
        .ok_or_else(|| bad("start", "no start object"))?;
    let stream_id =
        text(s, &["streamSid", "stream_id"]).or_else(|| text(v, &["streamSid", "stream_id"]));
    let mut start = Start {
        stream_id,
        call_id: text(s, &["callSid", "call_control_id", "call_sid"]),
        account_id: text(s, &["accountSid", "account_sid"]),
        from: text(s, &["from"]),
        to: text(s, &["to"]),
        ..Start::default()
    };
    if let Some(f) = s.get("mediaFormat").or_else(|| s.get("media_format")) {
        let encoding = text(f, &["encoding"]).unwrap_or_default();
        let rate = number(f, &["sampleRate", "sample_rate"]).unwrap_or(8000);
        let channels = number(f, &["channels"]).unwrap_or(1);
        let rate = u32::try_from(rate).map_err(|_| bad("start", "sample rate out of range"))?;
        let channels =
            u32::try_from(channels).map_err(|_| bad("start", "channels out of range"))?;
        match codec_of(&encoding) {
            Some(codec) => {
                start.format = Some(MediaFormat {
                    codec,
                    rate,
                    channels,
                })
            }
            None => start.unknown_encoding = Some(preview(&encoding).to_owned()),
        }
    }
    let params = s
        .get("customParameters")
        .or_else(|| s.get("custom_parameters"))
        .and_then(Value::as_object);
    if let Some(params) = params {
        start.params = custom_params(params);
    }
    Ok(start)
}

fn custom_params(params: &Map<String, Value>) -> BTreeMap<String, String> {
    params
        .iter()
        .filter_map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                _ => return None,
            };
            (k.len() <= MAX_PARAM_CHARS && v.len() <= MAX_PARAM_CHARS).then(|| (k.clone(), v))
        })
        .take(MAX_PARAMS)
        .collect()
}

/// The codec a `mediaFormat.encoding` names (Twilio's MIME-like names, Telnyx's RTP ones).
pub fn codec_of(encoding: &str) -> Option<Codec> {
    match encoding.to_ascii_lowercase().as_str() {
        "audio/x-mulaw" | "audio/mulaw" | "pcmu" | "mulaw" | "ulaw" => Some(Codec::Pcmu),
        "audio/x-alaw" | "audio/alaw" | "pcma" | "alaw" => Some(Codec::Pcma),
        "audio/l16" | "audio/x-l16" | "l16" | "linear16" => Some(Codec::L16),
        _ => None,
    }
}

fn parse_media(v: &Value) -> Result<Media, WireError> {
    let m = v
        .get("media")
        .filter(|m| m.is_object())
        .ok_or_else(|| bad("media", "no media object"))?;
    let payload = m
        .get("payload")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("media", "no media.payload string"))?;
    let payload = B64
        .decode(payload)
        .map_err(|e| bad("media", format!("payload is not base64: {e}")))?;
    Ok(Media {
        track: text(m, &["track"]),
        chunk: number(m, &["chunk"]),
        timestamp: number(m, &["timestamp"]),
        payload,
    })
}

/// The start of a peer-sent string for a log line.
fn preview(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `{"event":"media","streamSid":S,"media":{"payload":B64}}` (Telnyx: no stream id).
pub fn media(stream_id: Option<&str>, audio: &[u8]) -> String {
    with_stream(
        json!({"event": "media", "media": {"payload": B64.encode(audio)}}),
        stream_id,
    )
}

/// `{"event":"mark","streamSid":S,"mark":{"name":N}}`.
pub fn mark(stream_id: Option<&str>, name: &str) -> String {
    with_stream(json!({"event": "mark", "mark": {"name": name}}), stream_id)
}

/// `{"event":"clear","streamSid":S}`: the carrier drops what it has buffered.
pub fn clear(stream_id: Option<&str>) -> String {
    with_stream(json!({"event": "clear"}), stream_id)
}

fn with_stream(mut v: Value, stream_id: Option<&str>) -> String {
    if let (Some(id), Some(obj)) = (stream_id, v.as_object_mut()) {
        obj.insert("streamSid".to_owned(), Value::String(id.to_owned()));
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWILIO_START: &str = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ0123","start":{"accountSid":"AC0123","streamSid":"MZ0123","callSid":"CA0123","tracks":["inbound"],"customParameters":{"tenant":"acme","route":"sales"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;

    #[test]
    fn twilio_start_gives_ids_format_and_parameters() {
        let Inbound::Start(s) = parse(TWILIO_START).unwrap() else {
            panic!("not a start")
        };
        assert_eq!(s.stream_id.as_deref(), Some("MZ0123"));
        assert_eq!(s.call_id.as_deref(), Some("CA0123"));
        assert_eq!(s.account_id.as_deref(), Some("AC0123"));
        assert_eq!(
            s.format,
            Some(MediaFormat {
                codec: Codec::Pcmu,
                rate: 8000,
                channels: 1
            })
        );
        assert_eq!(s.params.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(s.params.len(), 2);
    }

    #[test]
    fn telnyx_start_uses_its_own_names() {
        let text = r#"{"event":"start","sequence_number":"1","stream_id":"32de0dea","start":{"user_id":"u","call_control_id":"v3:abc","client_state":"x","from":"+15550001","to":"+15550002","media_format":{"encoding":"PCMA","sample_rate":8000,"channels":1}}}"#;
        let Inbound::Start(s) = parse(text).unwrap() else {
            panic!("not a start")
        };
        assert_eq!(s.stream_id.as_deref(), Some("32de0dea"));
        assert_eq!(s.call_id.as_deref(), Some("v3:abc"));
        assert_eq!(s.from.as_deref(), Some("+15550001"));
        assert_eq!(s.format.map(|f| f.codec), Some(Codec::Pcma));
        let l16 = text.replace("PCMA", "L16").replace("8000", "16000");
        let Inbound::Start(s) = parse(&l16).unwrap() else {
            panic!("not a start")
        };
        assert_eq!(
            s.format.map(|f| (f.codec, f.rate)),
            Some((Codec::L16, 16000))
        );
        let opus = text.replace("PCMA", "OPUS");
        let Inbound::Start(s) = parse(&opus).unwrap() else {
            panic!("not a start")
        };
        assert_eq!(
            (s.format, s.unknown_encoding.as_deref()),
            (None, Some("OPUS"))
        );
    }

    #[test]
    fn media_dtmf_mark_stop_and_others() {
        let media = r#"{"event":"media","sequenceNumber":"3","streamSid":"MZ1","media":{"track":"inbound","chunk":"2","timestamp":"20","payload":"/38="}}"#;
        assert_eq!(
            parse(media).unwrap(),
            Inbound::Media(Media {
                track: Some("inbound".into()),
                chunk: Some(2),
                timestamp: Some(20),
                payload: vec![0xff, 0x7f],
            })
        );
        let dtmf = r##"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"#"}}"##;
        assert_eq!(parse(dtmf).unwrap(), Inbound::Dtmf('#'));
        let mark = r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"7"}}"#;
        assert_eq!(parse(mark).unwrap(), Inbound::Mark("7".into()));
        assert_eq!(
            parse(r#"{"event":"stop","stop":{"callSid":"CA1"}}"#).unwrap(),
            Inbound::Stop
        );
        assert_eq!(
            parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#).unwrap(),
            Inbound::Connected
        );
        assert_eq!(
            parse(r#"{"event":"error","payload":{}}"#).unwrap(),
            Inbound::Other("error".into())
        );
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        assert!(matches!(parse("not json"), Err(WireError::NotJson(_))));
        assert_eq!(parse(r#"{"streamSid":"x"}"#), Err(WireError::NoEvent));
        assert_eq!(parse(r#"{"event":5}"#), Err(WireError::NoEvent));
        assert!(matches!(
            parse(r#"{"event":"media","media":{"payload":"***"}}"#),
            Err(WireError::Bad { event: "media", .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"media"}"#),
            Err(WireError::Bad { event: "media", .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"dtmf","dtmf":{"digit":"12"}}"#),
            Err(WireError::Bad { event: "dtmf", .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"start"}"#),
            Err(WireError::Bad { event: "start", .. })
        ));
    }

    #[test]
    fn custom_parameters_are_bounded() {
        let mut params = Map::new();
        for i in 0..100 {
            params.insert(format!("k{i:03}"), Value::String("v".into()));
        }
        params.insert("big".into(), Value::String("x".repeat(10_000)));
        let kept = custom_params(&params);
        assert_eq!(kept.len(), MAX_PARAMS);
        assert!(!kept.contains_key("big"));
    }

    #[test]
    fn outbound_messages_have_twilios_shape() {
        let m: Value = serde_json::from_str(&media(Some("MZ1"), &[0xff, 0x7f])).unwrap();
        assert_eq!(
            m,
            json!({"event":"media","streamSid":"MZ1","media":{"payload":"/38="}})
        );
        let m: Value = serde_json::from_str(&mark(Some("MZ1"), "3")).unwrap();
        assert_eq!(
            m,
            json!({"event":"mark","streamSid":"MZ1","mark":{"name":"3"}})
        );
        let m: Value = serde_json::from_str(&clear(None)).unwrap();
        assert_eq!(m, json!({"event":"clear"}));
    }
}
