//! The Twilio Media Streams protocol seen from the carrier's side, pure: the messages a
//! carrier sends (`connected`, `start`, `media`, `dtmf`, `mark` echoes, `stop`) built as
//! text, and what a backend bot sends back (`media`, `mark`, `clear`) parsed.
//!
//! Parsing reuses the inbound side's parser (`telephony::media_streams::wire`), which
//! already reads `media` and `mark` the way Twilio defines them; only the mapping to what
//! a backend may send is here. Field names follow Twilio's WS messages page: every value
//! is a string except `mediaFormat.sampleRate` and `channels`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};

pub use crate::telephony::media_streams::wire::WireError;
use crate::telephony::media_streams::wire::{self as carrier, Inbound};

/// `customParameters` entries sent at most, and their longest key/value (bytes): the
/// call's metadata is caller-controlled, a backend must not get an unbounded `start`.
pub const MAX_PARAMS: usize = 64;
pub const MAX_PARAM_BYTES: usize = 512;

/// The identifiers of one stream, shaped like Twilio's (two letters + 32 hex digits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sids {
    pub account: String,
    pub call: String,
    pub stream: String,
}

impl Sids {
    /// Fresh ids for one call.
    pub fn new() -> Sids {
        let hex = || uuid::Uuid::new_v4().simple().to_string();
        Sids {
            account: format!("AC{}", hex()),
            call: format!("CA{}", hex()),
            stream: format!("MZ{}", hex()),
        }
    }
}

impl Default for Sids {
    fn default() -> Self {
        Sids::new()
    }
}

/// What a backend sent that matters to the call.
#[derive(Debug, PartialEq, Eq)]
pub enum FromBackend {
    /// Audio to play (μ-law 8 kHz, no header).
    Media(Vec<u8>),
    /// Echo this name once the audio sent before it has played.
    Mark(String),
    /// Drop everything buffered (the bot's barge-in).
    Clear,
    /// Any other event: ignored (Twilio reports an error; a bridge has no one to tell).
    Ignored(String),
}

/// Parses one text message from the backend.
pub fn parse(text: &str) -> Result<FromBackend, WireError> {
    Ok(match carrier::parse(text)? {
        Inbound::Media(m) => FromBackend::Media(m.payload),
        Inbound::Mark(name) => FromBackend::Mark(name),
        // The inbound parser has no `clear` (a carrier never sends one): it names it.
        Inbound::Other(event) if event == "clear" => FromBackend::Clear,
        Inbound::Other(event) => FromBackend::Ignored(event),
        Inbound::Connected => FromBackend::Ignored("connected".into()),
        Inbound::Start(_) => FromBackend::Ignored("start".into()),
        Inbound::Dtmf(_) => FromBackend::Ignored("dtmf".into()),
        Inbound::Stop => FromBackend::Ignored("stop".into()),
    })
}

/// `connected`: the first message, before any `sequenceNumber`.
pub fn connected() -> String {
    json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()
}

/// `start` (always `sequenceNumber` 1): the ids, μ-law 8000/1, the caller's data.
pub fn start(sids: &Sids, params: &BTreeMap<String, String>) -> String {
    let params: Map<String, Value> = params
        .iter()
        .filter(|(k, v)| k.len() <= MAX_PARAM_BYTES && v.len() <= MAX_PARAM_BYTES)
        .take(MAX_PARAMS)
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": sids.stream,
        "start": {
            "accountSid": sids.account,
            "streamSid": sids.stream,
            "callSid": sids.call,
            "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    })
    .to_string()
}

/// One `media` message of caller audio: `chunk` from 1, `timestamp` in ms since start.
pub fn media(seq: u64, sids: &Sids, chunk: u64, timestamp_ms: u64, audio: &[u8]) -> String {
    json!({
        "event": "media",
        "sequenceNumber": seq.to_string(),
        "streamSid": sids.stream,
        "media": {
            "track": "inbound",
            "chunk": chunk.to_string(),
            "timestamp": timestamp_ms.to_string(),
            "payload": B64.encode(audio),
        },
    })
    .to_string()
}

/// A key the caller pressed.
pub fn dtmf(seq: u64, sids: &Sids, digit: char) -> String {
    json!({
        "event": "dtmf",
        "sequenceNumber": seq.to_string(),
        "streamSid": sids.stream,
        "dtmf": {"track": "inbound_track", "digit": digit.to_string()},
    })
    .to_string()
}

/// The backend's mark, echoed: its audio has played.
pub fn mark(seq: u64, sids: &Sids, name: &str) -> String {
    json!({
        "event": "mark",
        "sequenceNumber": seq.to_string(),
        "streamSid": sids.stream,
        "mark": {"name": name},
    })
    .to_string()
}

/// `stop`: the call is over.
pub fn stop(seq: u64, sids: &Sids) -> String {
    json!({
        "event": "stop",
        "sequenceNumber": seq.to_string(),
        "streamSid": sids.stream,
        "stop": {"accountSid": sids.account, "callSid": sids.call},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sids() -> Sids {
        Sids {
            account: "AC1".into(),
            call: "CA1".into(),
            stream: "MZ1".into(),
        }
    }

    #[test]
    fn what_we_send_is_what_the_inbound_parser_reads_as_twilio() {
        let mut params = BTreeMap::new();
        params.insert("tenant".to_owned(), "acme".to_owned());
        params.insert("huge".to_owned(), "x".repeat(MAX_PARAM_BYTES + 1));
        let Inbound::Start(s) = carrier::parse(&start(&sids(), &params)).unwrap() else {
            panic!("not a start")
        };
        assert_eq!(s.stream_id.as_deref(), Some("MZ1"));
        assert_eq!(s.call_id.as_deref(), Some("CA1"));
        assert_eq!(s.account_id.as_deref(), Some("AC1"));
        assert_eq!(s.params.len(), 1, "oversized values are not sent");
        assert_eq!(s.format.map(|f| (f.rate, f.channels)), Some((8000, 1)));

        let Inbound::Media(m) = carrier::parse(&media(2, &sids(), 1, 0, &[0xff; 160])).unwrap()
        else {
            panic!("not media")
        };
        assert_eq!(
            (m.chunk, m.timestamp, m.payload.len()),
            (Some(1), Some(0), 160)
        );
        assert!(m.is_inbound());
        assert_eq!(
            carrier::parse(&dtmf(3, &sids(), '#')).unwrap(),
            Inbound::Dtmf('#')
        );
        assert_eq!(
            carrier::parse(&mark(4, &sids(), "m")).unwrap(),
            Inbound::Mark("m".into())
        );
        assert_eq!(carrier::parse(&stop(5, &sids())).unwrap(), Inbound::Stop);
        assert_eq!(carrier::parse(&connected()).unwrap(), Inbound::Connected);
        let v: Value = serde_json::from_str(&media(7, &sids(), 6, 100, &[])).unwrap();
        assert_eq!(v["sequenceNumber"], "7", "strings, as Twilio sends them");
    }

    #[test]
    fn backend_messages() {
        let audio = B64.encode([1u8, 2, 3]);
        let media =
            format!(r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{audio}"}}}}"#);
        assert_eq!(parse(&media).unwrap(), FromBackend::Media(vec![1, 2, 3]));
        assert_eq!(
            parse(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m1"}}"#).unwrap(),
            FromBackend::Mark("m1".into())
        );
        assert_eq!(
            parse(r#"{"event":"clear","streamSid":"MZ1"}"#).unwrap(),
            FromBackend::Clear
        );
        assert_eq!(
            parse(r#"{"event":"hello"}"#).unwrap(),
            FromBackend::Ignored("hello".into())
        );
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"event":"media","media":{"payload":"%%%"}}"#).is_err());
    }
}
