//! chan_websocket control messages (TEXT frames), in both of the driver's formats: the
//! JSON of `f(json)` (one object per frame, `event` from Asterisk, `command` to it) and
//! the deprecated plain text (`NAME key:value key:value`). Pure: no I/O, no time.
//!
//! The format of a channel is fixed by its dial string, which we never see, so each
//! event is read in the format it arrives in (`{` starts JSON), and our commands follow
//! the format of the call's `MEDIA_START` (the first text frame Asterisk sends).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::audio::{AudioFormat, Codec};

/// Asterisk drops TEXT frames longer than this without a word (`MAX_TEXT_MESSAGE_LEN`
/// in chan_websocket.c), so no command we send may be longer.
pub const MAX_COMMAND_BYTES: usize = 128;
/// Longest correlation id we keep from an event (ours are decimal numbers).
const MAX_ID: usize = 64;
/// Channel variables kept from a `MEDIA_START` (the rest are dropped, with a warning).
const MAX_VARS: usize = 64;

/// How the channel's control messages are written (`f(json)` or `f(plain-text)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlFormat {
    Json,
    PlainText,
}

impl ControlFormat {
    pub const fn name(self) -> &'static str {
        match self {
            ControlFormat::Json => "json",
            ControlFormat::PlainText => "plain-text",
        }
    }
}

/// The call's `MEDIA_START`: who it is and what its audio is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaStart {
    /// In outgoing mode the `websocket_client.conf` section name: the same for every
    /// call, so never the call's identity.
    pub connection_id: String,
    /// The channel name, e.g. `WebSocket/voicebridge-00000001`.
    pub channel: String,
    /// The channel's uniqueid: the call's identity on the Asterisk side.
    pub channel_id: String,
    /// Asterisk's format name (`ulaw`, `alaw`, `slin`, `slin16`, ...).
    pub format: String,
    /// Bytes per frame Asterisk plays per tick (e.g. 160 for ulaw at 20 ms).
    pub optimal_frame_size: usize,
    pub ptime: u32,
    /// JSON only: the channel's variables (e.g. inherited `__VAR`s from the dialplan).
    pub channel_variables: BTreeMap<String, String>,
}

/// What Asterisk tells us.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    MediaStart(MediaStart),
    DtmfEnd(char),
    /// The driver's queue reached 900 frames: stop sending.
    Xoff,
    /// The queue fell below 800 frames: send again.
    Xon,
    QueueDrained,
    /// A `MARK_MEDIA` reached the head of the queue: everything before it was played.
    MarkProcessed(String),
    BufferingCompleted(String),
    Status(String),
    Error(String),
    /// An event name we do not use (logged).
    Other(String),
}

/// What we ask of Asterisk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Answers the channel (dial strings with `n`, no auto-answer).
    Answer,
    /// Hangs the WebSocket channel up.
    Hangup,
    /// Empties the driver's queue of our audio (and its queued marks, silently).
    FlushMedia,
    /// Queued behind the audio sent so far; reported as `MEDIA_MARK_PROCESSED <id>`.
    MarkMedia(u64),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("empty control message")]
    Empty,
    #[error("control message is not valid JSON: {0}")]
    BadJson(String),
    #[error("JSON control message has no \"event\" string")]
    NoEvent,
    #[error("{event} without a valid {field}")]
    MissingField {
        event: &'static str,
        field: &'static str,
    },
}

/// Parses one TEXT frame from Asterisk, in whichever format it is written; the format
/// is returned with the event.
pub fn parse(text: &str) -> Result<(Event, ControlFormat), ControlError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ControlError::Empty);
    }
    if text.starts_with('{') {
        Ok((parse_json(text)?, ControlFormat::Json))
    } else {
        Ok((parse_plain(text)?, ControlFormat::PlainText))
    }
}

fn parse_json(text: &str) -> Result<Event, ControlError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        // serde's message names a position, never the content.
        ControlError::BadJson(e.to_string())
    })?;
    let str_of = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or("");
    let event = value
        .get("event")
        .and_then(Value::as_str)
        .ok_or(ControlError::NoEvent)?;
    Ok(match event {
        "MEDIA_START" => {
            let start = MediaStart {
                connection_id: str_of("connection_id").to_owned(),
                channel: str_of("channel").to_owned(),
                channel_id: str_of("channel_id").to_owned(),
                format: str_of("format").to_owned(),
                optimal_frame_size: value
                    .get("optimal_frame_size")
                    .and_then(number)
                    .unwrap_or(0) as usize,
                ptime: value.get("ptime").and_then(number).unwrap_or(0) as u32,
                channel_variables: value
                    .get("channel_variables")
                    .and_then(Value::as_object)
                    .map(|vars| {
                        vars.iter()
                            .take(MAX_VARS)
                            .map(|(k, v)| (k.clone(), value_text(v)))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            media_start(start)?
        }
        "DTMF_END" => Event::DtmfEnd(digit(str_of("digit"))?),
        "MEDIA_MARK_PROCESSED" => Event::MarkProcessed(id(str_of("correlation_id"))),
        "MEDIA_BUFFERING_COMPLETED" => Event::BufferingCompleted(id(str_of("correlation_id"))),
        "ERROR" => Event::Error(str_of("error_text").to_owned()),
        "STATUS" => Event::Status(text.to_owned()),
        other => simple(other),
    })
}

/// `NAME key:value key:value`; `error_text:` runs to the end of the line, and the
/// `MEDIA_MARK_PROCESSED` / `MEDIA_BUFFERING_COMPLETED` id is a bare word.
fn parse_plain(text: &str) -> Result<Event, ControlError> {
    let (name, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    let field = |key: &str| -> &str {
        rest.split(' ')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
            .unwrap_or("")
    };
    Ok(match name {
        "MEDIA_START" => media_start(MediaStart {
            connection_id: field("connection_id").to_owned(),
            channel: field("channel").to_owned(),
            channel_id: field("channel_id").to_owned(),
            format: field("format").to_owned(),
            optimal_frame_size: field("optimal_frame_size").parse().unwrap_or(0),
            ptime: field("ptime").parse().unwrap_or(0),
            channel_variables: BTreeMap::new(),
        })?,
        "DTMF_END" => Event::DtmfEnd(digit(field("digit"))?),
        "MEDIA_MARK_PROCESSED" => Event::MarkProcessed(id(rest)),
        "MEDIA_BUFFERING_COMPLETED" => Event::BufferingCompleted(id(rest)),
        "ERROR" => Event::Error(
            rest.split_once("error_text:")
                .map_or(rest, |(_, t)| t)
                .to_owned(),
        ),
        "STATUS" => Event::Status(rest.to_owned()),
        other => simple(other),
    })
}

fn simple(name: &str) -> Event {
    match name {
        "MEDIA_XOFF" => Event::Xoff,
        "MEDIA_XON" => Event::Xon,
        "QUEUE_DRAINED" => Event::QueueDrained,
        other => Event::Other(other.chars().take(40).collect()),
    }
}

fn media_start(start: MediaStart) -> Result<Event, ControlError> {
    if start.format.is_empty() {
        return Err(ControlError::MissingField {
            event: "MEDIA_START",
            field: "format",
        });
    }
    if start.optimal_frame_size == 0 || start.optimal_frame_size > super::MAX_BINARY_BYTES {
        return Err(ControlError::MissingField {
            event: "MEDIA_START",
            field: "optimal_frame_size",
        });
    }
    Ok(Event::MediaStart(start))
}

fn digit(s: &str) -> Result<char, ControlError> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D') => Ok(c),
        _ => Err(ControlError::MissingField {
            event: "DTMF_END",
            field: "digit",
        }),
    }
}

fn id(s: &str) -> String {
    s.trim().chars().take(MAX_ID).collect()
}

fn number(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One command as the TEXT frame to send, in the channel's format. Every command we
/// have fits in [`MAX_COMMAND_BYTES`] (a u64 id is at most 20 digits).
pub fn encode(command: &Command, format: ControlFormat) -> String {
    let (name, id) = match command {
        Command::Answer => ("ANSWER", None),
        Command::Hangup => ("HANGUP", None),
        Command::FlushMedia => ("FLUSH_MEDIA", None),
        Command::MarkMedia(id) => ("MARK_MEDIA", Some(*id)),
    };
    let text = match (format, id) {
        (ControlFormat::Json, None) => format!(r#"{{"command":"{name}"}}"#),
        (ControlFormat::Json, Some(id)) => {
            format!(r#"{{"command":"{name}","correlation_id":"{id}"}}"#)
        }
        (ControlFormat::PlainText, None) => name.to_owned(),
        (ControlFormat::PlainText, Some(id)) => format!("{name} {id}"),
    };
    debug_assert!(text.len() <= MAX_COMMAND_BYTES);
    text
}

/// The audio format of an Asterisk format name, for the ones the call path can carry:
/// G.711 and signed linear at a multiple of 8 kHz up to 48 kHz (`slin` is host order,
/// little-endian on every platform Asterisk ships for).
pub fn audio_format(name: &str) -> Option<AudioFormat> {
    match name {
        "ulaw" => Some(AudioFormat::new(Codec::Pcmu, 8000)),
        "alaw" => Some(AudioFormat::new(Codec::Pcma, 8000)),
        "slin" => Some(AudioFormat::new(Codec::L16, 8000)),
        "slin16" => Some(AudioFormat::new(Codec::L16, 16000)),
        "slin24" => Some(AudioFormat::new(Codec::L16, 24000)),
        "slin32" => Some(AudioFormat::new(Codec::L16, 32000)),
        "slin48" => Some(AudioFormat::new(Codec::L16, 48000)),
        _ => None,
    }
}

/// The start of a peer-supplied text for a log line (never all of it).
pub fn preview(text: &str) -> &str {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The formats [`audio_format`] accepts, for error messages and docs.
pub const FORMAT_NAMES: &str = "ulaw, alaw, slin, slin16, slin24, slin32, slin48";

#[cfg(test)]
mod tests {
    use super::*;

    const JSON_START: &str = r#"{"event":"MEDIA_START","connection_id":"voicebridge","channel":"WebSocket/voicebridge-00000001","channel_id":"1733240000.17","format":"slin16","optimal_frame_size":640,"ptime":20,"channel_variables":{"CALLERID":"+3902123","__TENANT":"acme"}}"#;

    #[test]
    fn media_start_in_both_formats() {
        let (event, format) = parse(JSON_START).unwrap();
        assert_eq!(format, ControlFormat::Json);
        let Event::MediaStart(s) = event else {
            panic!("{event:?}")
        };
        assert_eq!(s.channel_id, "1733240000.17");
        assert_eq!(s.connection_id, "voicebridge");
        assert_eq!(s.format, "slin16");
        assert_eq!(s.optimal_frame_size, 640);
        assert_eq!(s.ptime, 20);
        assert_eq!(s.channel_variables["__TENANT"], "acme");

        let plain = "MEDIA_START connection_id:voicebridge channel:WebSocket/voicebridge-00000001 channel_id:1733240000.17 format:ulaw optimal_frame_size:160 ptime:20";
        let (event, format) = parse(plain).unwrap();
        assert_eq!(format, ControlFormat::PlainText);
        let Event::MediaStart(s) = event else {
            panic!("{event:?}")
        };
        assert_eq!(s.channel, "WebSocket/voicebridge-00000001");
        assert_eq!(s.channel_id, "1733240000.17");
        assert_eq!(s.format, "ulaw");
        assert_eq!(s.optimal_frame_size, 160);
        assert!(s.channel_variables.is_empty());
    }

    #[test]
    fn events_in_both_formats() {
        let cases = [
            (
                r#"{"event":"DTMF_END","channel_id":"1.2","digit":"5"}"#,
                "DTMF_END digit:5 channel_id:1.2",
                Event::DtmfEnd('5'),
            ),
            (
                r#"{"event":"MEDIA_XOFF","channel_id":"1.2"}"#,
                "MEDIA_XOFF",
                Event::Xoff,
            ),
            (
                r#"{"event":"MEDIA_XON","channel_id":"1.2"}"#,
                "MEDIA_XON",
                Event::Xon,
            ),
            (
                r#"{"event":"MEDIA_MARK_PROCESSED","channel_id":"1.2","correlation_id":"17"}"#,
                "MEDIA_MARK_PROCESSED 17",
                Event::MarkProcessed("17".to_owned()),
            ),
            (
                r#"{"event":"ERROR","channel_id":"1.2","error_text":"FLUSH_MEDIA not supported in passthrough mode"}"#,
                "ERROR channel_id:1.2 error_text:FLUSH_MEDIA not supported in passthrough mode",
                Event::Error("FLUSH_MEDIA not supported in passthrough mode".to_owned()),
            ),
            (
                r#"{"event":"QUEUE_DRAINED","channel_id":"1.2"}"#,
                "QUEUE_DRAINED",
                Event::QueueDrained,
            ),
        ];
        for (json, plain, want) in cases {
            assert_eq!(parse(json).unwrap(), (want.clone(), ControlFormat::Json));
            assert_eq!(parse(plain).unwrap(), (want, ControlFormat::PlainText));
        }
        assert_eq!(
            parse("MEDIA_MARK_PROCESSED").unwrap().0,
            Event::MarkProcessed(String::new())
        );
        assert_eq!(
            parse("SOMETHING_NEW a:b").unwrap().0,
            Event::Other("SOMETHING_NEW".to_owned())
        );
    }

    #[test]
    fn bad_input_is_an_error_with_a_reason() {
        assert_eq!(parse("  "), Err(ControlError::Empty));
        assert!(matches!(parse("{not json"), Err(ControlError::BadJson(_))));
        assert_eq!(parse(r#"{"command":"x"}"#), Err(ControlError::NoEvent));
        assert!(matches!(
            parse("DTMF_END digit:55 channel_id:1"),
            Err(ControlError::MissingField { field: "digit", .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"DTMF_END","digit":"x"}"#),
            Err(ControlError::MissingField { field: "digit", .. })
        ));
        assert!(matches!(
            parse("MEDIA_START format:ulaw optimal_frame_size:0"),
            Err(ControlError::MissingField {
                field: "optimal_frame_size",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"event":"MEDIA_START","optimal_frame_size":160}"#),
            Err(ControlError::MissingField {
                field: "format",
                ..
            })
        ));
    }

    #[test]
    fn commands_in_both_formats_and_under_the_limit() {
        use ControlFormat::*;
        assert_eq!(encode(&Command::Answer, Json), r#"{"command":"ANSWER"}"#);
        assert_eq!(encode(&Command::Hangup, PlainText), "HANGUP");
        assert_eq!(
            encode(&Command::FlushMedia, Json),
            r#"{"command":"FLUSH_MEDIA"}"#
        );
        assert_eq!(
            encode(&Command::MarkMedia(12), Json),
            r#"{"command":"MARK_MEDIA","correlation_id":"12"}"#
        );
        assert_eq!(encode(&Command::MarkMedia(12), PlainText), "MARK_MEDIA 12");
        let longest = encode(&Command::MarkMedia(u64::MAX), Json);
        assert!(longest.len() <= MAX_COMMAND_BYTES, "{}", longest.len());
        // What we send parses as the command Asterisk expects.
        let v: Value = serde_json::from_str(&longest).unwrap();
        assert_eq!(v["correlation_id"], u64::MAX.to_string());
    }

    #[test]
    fn formats_the_call_path_carries() {
        assert_eq!(audio_format("ulaw"), Some(AudioFormat::pcmu()));
        assert_eq!(
            audio_format("alaw"),
            Some(AudioFormat::new(Codec::Pcma, 8000))
        );
        assert_eq!(
            audio_format("slin16"),
            Some(AudioFormat::new(Codec::L16, 16000))
        );
        assert_eq!(
            audio_format("slin24"),
            Some(AudioFormat::new(Codec::L16, 24000))
        );
        for unsupported in ["opus", "g722", "slin44", "slin12", "gsm", ""] {
            assert_eq!(audio_format(unsupported), None, "{unsupported}");
        }
    }
}
