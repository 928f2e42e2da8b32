//! The Event Socket wire format, as pure functions (no I/O, no panics on any input:
//! they are fuzzed).
//!
//! Every message FreeSWITCH sends is a block of `Name: value` lines ended by a blank
//! line; when it has a `Content-Length` header, exactly that many bytes of body follow
//! (no terminator). What a message is comes from `Content-Type`:
//!
//! ```text
//! Content-Type: auth/request                      ← on connect; we answer `auth <pw>\n\n`
//!
//! Content-Type: command/reply                     ← answer to auth / event / bgapi
//! Reply-Text: +OK accepted                          (`-ERR invalid` on a bad password)
//!
//! Content-Type: api/response                      ← answer to `api <cmd>\n\n`
//! Content-Length: 14
//!
//! +OK Succeeded
//! Content-Length: 612                             ← an event we subscribed to with
//! Content-Type: text/event-json                     `event json CUSTOM <subclass>`
//!
//! {"Event-Name":"CUSTOM","Event-Subclass":"mod_audio_stream::play","Unique-ID":"…",
//!  …, "_body":"{\"audioDataType\":\"raw\",\"sampleRate\":8000,\"file\":\"/tmp/…\"}"}
//! Content-Type: text/disconnect-notice            ← just before FreeSWITCH hangs up on us
//! Content-Length: 67
//! ```
//!
//! In the JSON event format every header is a JSON string member and the event body
//! (for `mod_audio_stream::*`, the module's JSON) is the string member `_body`.

use std::borrow::Cow;

/// A header block longer than this without its blank line is not ESL (wrong port?).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest body we accept; FreeSWITCH's largest api answers are far below it.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The custom event `mod_audio_stream` fires when it wrote a `streamAudio` file.
pub const PLAY_SUBCLASS: &str = "mod_audio_stream::play";

/// One ESL message: its headers in order and its body (empty without Content-Length).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    /// The first header called `name` (case-insensitive, as FreeSWITCH is).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_type(&self) -> &str {
        self.header("Content-Type").unwrap_or("")
    }

    pub fn body_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "the peer sent {MAX_HEADER_BYTES} bytes without ending a header block: \
         not FreeSWITCH's Event Socket (check freeswitch.esl.host and port)"
    )]
    HeaderTooLong,
    #[error("Content-Length {0:?} is not a number: not FreeSWITCH's Event Socket?")]
    BadContentLength(String),
    #[error("Content-Length {0} is over the {MAX_BODY_BYTES}-byte limit")]
    BodyTooLarge(usize),
}

/// Parses one message from the start of `buf`.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some((frame, used)))`: the first `used` bytes
/// were one message. Blank lines between messages are skipped; `\r\n` is accepted.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let mut start = 0;
    // Skip stray blank lines between messages.
    loop {
        match buf.get(start) {
            Some(b'\n') => start += 1,
            Some(b'\r') if buf.get(start + 1) == Some(&b'\n') => start += 2,
            Some(_) => break,
            None => return Ok(None),
        }
    }
    let mut headers = Vec::new();
    let mut line_start = start;
    let header_end = loop {
        let Some(rel) = buf[line_start..].iter().position(|&b| b == b'\n') else {
            if buf.len() - start > MAX_HEADER_BYTES {
                return Err(FrameError::HeaderTooLong);
            }
            return Ok(None);
        };
        let line_end = line_start + rel;
        if line_end - start > MAX_HEADER_BYTES {
            return Err(FrameError::HeaderTooLong);
        }
        let line = trim_cr(&buf[line_start..line_end]);
        line_start = line_end + 1;
        if line.is_empty() {
            break line_start;
        }
        let line = String::from_utf8_lossy(line);
        // A line without a colon carries nothing we can use; it is skipped, not fatal.
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    };
    let mut frame = Frame {
        headers,
        body: Vec::new(),
    };
    let Some(len) = frame.header("Content-Length") else {
        return Ok(Some((frame, header_end)));
    };
    let len: usize = len
        .parse()
        .map_err(|_| FrameError::BadContentLength(len.chars().take(32).collect()))?;
    if len > MAX_BODY_BYTES {
        return Err(FrameError::BodyTooLarge(len));
    }
    let Some(body) = buf.get(header_end..header_end.saturating_add(len)) else {
        return Ok(None);
    };
    frame.body = body.to_vec();
    Ok(Some((frame, header_end + len)))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What a message means to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// FreeSWITCH waits for `auth <password>`.
    AuthRequest,
    /// `Reply-Text` of a command (`+OK ...` / `-ERR ...`).
    CommandReply { ok: bool, text: String },
    /// The body of an `api` answer (`+OK ...`, `-ERR ...`, `-USAGE ...` or plain text).
    ApiResponse { ok: bool, body: String },
    /// A `text/event-json` event.
    Event(Event),
    /// FreeSWITCH is about to close the connection.
    DisconnectNotice(String),
    /// An event we could not read, with why.
    BadEvent(String),
    /// Any other content type (log data, plain/xml events we did not ask for).
    Other(String),
}

/// Interprets a parsed frame.
pub fn classify(frame: &Frame) -> Message {
    match frame.content_type() {
        "auth/request" => Message::AuthRequest,
        "command/reply" => {
            let text = frame.header("Reply-Text").unwrap_or("").to_owned();
            Message::CommandReply {
                ok: text.starts_with("+OK"),
                text,
            }
        }
        "api/response" => {
            let body = frame.body_text().trim_end().to_owned();
            Message::ApiResponse {
                ok: !(body.starts_with("-ERR") || body.starts_with("-USAGE")),
                body,
            }
        }
        "text/event-json" => match parse_event_json(&frame.body) {
            Ok(event) => Message::Event(event),
            Err(why) => Message::BadEvent(why),
        },
        "text/disconnect-notice" => Message::DisconnectNotice(frame.body_text().trim().to_owned()),
        other => Message::Other(other.chars().take(64).collect()),
    }
}

/// The parts of an event voicebridge uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub subclass: Option<String>,
    /// The channel uuid (`Unique-ID`), for channel events.
    pub unique_id: Option<String>,
    /// The event body (`_body`), for `mod_audio_stream` events the module's JSON.
    pub body: Option<String>,
    /// `DTMF-Digit` of a `DTMF` event.
    pub dtmf_digit: Option<String>,
}

/// Reads a `text/event-json` body.
pub fn parse_event_json(body: &[u8]) -> Result<Event, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("event is not JSON: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err("event JSON is not an object".to_owned());
    };
    let text = |key: &str| obj.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Event {
        name: text("Event-Name").ok_or("event has no Event-Name")?,
        subclass: text("Event-Subclass"),
        unique_id: text("Unique-ID"),
        body: text("_body"),
        dtmf_digit: text("DTMF-Digit"),
    })
}

/// A `mod_audio_stream::play` event: the module wrote a chunk we sent to `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayEvent {
    /// The channel it belongs to (`Unique-ID`).
    pub uuid: String,
    pub file: String,
    pub audio_data_type: Option<String>,
    pub sample_rate: Option<u64>,
    /// Our own chunk counter, sent inside `data` and kept by the module in the event.
    pub seq: Option<u64>,
}

/// What one channel's subscription delivers: the module's play events and the
/// caller's key presses (FreeSWITCH's `DTMF` event: `mod_audio_stream` carries none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    Play(PlayEvent),
    Dtmf { uuid: String, digit: char },
}

impl ChannelEvent {
    /// The channel it belongs to (`Unique-ID`).
    pub fn uuid(&self) -> &str {
        match self {
            ChannelEvent::Play(p) => &p.uuid,
            ChannelEvent::Dtmf { uuid, .. } => uuid,
        }
    }
}

/// The channel event inside `event`, if it is one voicebridge uses and is usable.
pub fn parse_channel_event(event: &Event) -> Option<ChannelEvent> {
    if event.name == "DTMF" {
        return parse_dtmf(event);
    }
    parse_play(event).map(ChannelEvent::Play)
}

/// A `DTMF` event: `DTMF-Digit` is one of `0-9 * # A-D` (FreeSWITCH's digits; `a-d`
/// are taken as the same keys). Anything else is not a key press.
fn parse_dtmf(event: &Event) -> Option<ChannelEvent> {
    let uuid = event.unique_id.clone()?;
    let mut chars = event.dtmf_digit.as_deref()?.chars();
    let digit = chars.next()?.to_ascii_uppercase();
    if chars.next().is_some() || !matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D') {
        return None;
    }
    Some(ChannelEvent::Dtmf { uuid, digit })
}

/// The play event inside `event`, if it is one and is usable.
pub fn parse_play(event: &Event) -> Option<PlayEvent> {
    if event.subclass.as_deref() != Some(PLAY_SUBCLASS) {
        return None;
    }
    let uuid = event.unique_id.clone()?;
    let body: serde_json::Value = serde_json::from_str(event.body.as_deref()?).ok()?;
    let file = body.get("file")?.as_str()?.to_owned();
    Some(PlayEvent {
        uuid,
        file,
        audio_data_type: body
            .get("audioDataType")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        sample_rate: body.get("sampleRate").and_then(|v| v.as_u64()),
        seq: body.get("seq").and_then(|v| v.as_u64()),
    })
}

/// An argument that can go into a command line safely: the protocol has no quoting, so
/// a space would split it and a newline would end the command (and start another).
pub fn is_safe_arg(s: &str) -> bool {
    !s.is_empty() && s.len() <= 4096 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> (Frame, usize) {
        parse_frame(buf).unwrap().unwrap()
    }

    #[test]
    fn auth_request_and_replies() {
        let (f, used) = one(b"Content-Type: auth/request\n\nrest");
        assert_eq!(used, 28);
        assert_eq!(classify(&f), Message::AuthRequest);
        let (f, _) = one(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n");
        assert_eq!(
            classify(&f),
            Message::CommandReply {
                ok: true,
                text: "+OK accepted".into()
            }
        );
        let (f, _) = one(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n");
        assert!(matches!(
            classify(&f),
            Message::CommandReply { ok: false, .. }
        ));
    }

    #[test]
    fn api_response_body_by_content_length() {
        let wire =
            b"Content-Type: api/response\nContent-Length: 3\n\n+OKContent-Type: auth/request\n\n";
        let (f, used) = one(wire);
        assert_eq!(f.body, b"+OK");
        assert_eq!(
            classify(&f),
            Message::ApiResponse {
                ok: true,
                body: "+OK".into()
            }
        );
        let (g, used2) = one(&wire[used..]);
        assert_eq!(classify(&g), Message::AuthRequest);
        assert_eq!(used + used2, wire.len());
        let (f, _) =
            one(b"Content-Type: api/response\nContent-Length: 22\n\n-ERR No such channel!\n");
        assert!(matches!(
            classify(&f),
            Message::ApiResponse { ok: false, .. }
        ));
    }

    #[test]
    fn dtmf_events_are_key_presses_of_their_channel() {
        let event = |digit: &str| {
            let body = format!(
                r#"{{"Event-Name":"DTMF","Unique-ID":"u-7","DTMF-Digit":"{digit}","DTMF-Duration":"2000","DTMF-Source":"RTP"}}"#
            );
            parse_event_json(body.as_bytes()).unwrap()
        };
        assert_eq!(
            parse_channel_event(&event("5")),
            Some(ChannelEvent::Dtmf {
                uuid: "u-7".to_owned(),
                digit: '5'
            })
        );
        for (given, key) in [("#", '#'), ("*", '*'), ("a", 'A'), ("D", 'D')] {
            assert!(
                matches!(parse_channel_event(&event(given)), Some(ChannelEvent::Dtmf { digit, .. }) if digit == key),
                "{given}"
            );
        }
        for bad in ["", "12", "E", "x", "1 "] {
            assert_eq!(parse_channel_event(&event(bad)), None, "{bad:?}");
        }
        let no_uuid = parse_event_json(br#"{"Event-Name":"DTMF","DTMF-Digit":"1"}"#).unwrap();
        assert_eq!(parse_channel_event(&no_uuid), None);
    }

    #[test]
    fn every_split_point_needs_more_then_parses_the_same() {
        let body = r#"{"Event-Name":"CUSTOM","Event-Subclass":"mod_audio_stream::play","Unique-ID":"u-1","_body":"{\"audioDataType\":\"raw\",\"sampleRate\":8000,\"file\":\"/tmp/u-1_3.tmp.r8\",\"seq\":3}"}"#;
        let wire = format!(
            "Content-Length: {}\nContent-Type: text/event-json\n\n{body}",
            body.len()
        );
        let wire = wire.as_bytes();
        for cut in 0..wire.len() {
            assert_eq!(parse_frame(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let (f, used) = one(wire);
        assert_eq!(used, wire.len());
        let Message::Event(e) = classify(&f) else {
            panic!("not an event: {f:?}");
        };
        let play = parse_play(&e).unwrap();
        assert_eq!(play.uuid, "u-1");
        assert_eq!(play.file, "/tmp/u-1_3.tmp.r8");
        assert_eq!(play.sample_rate, Some(8000));
        assert_eq!(play.audio_data_type.as_deref(), Some("raw"));
        assert_eq!(play.seq, Some(3));
    }

    #[test]
    fn crlf_and_stray_blank_lines() {
        let wire = b"\n\r\nContent-Type: command/reply\r\nReply-Text: +OK\r\n\r\n";
        let (f, used) = one(wire);
        assert_eq!(f.header("reply-text"), Some("+OK"));
        assert_eq!(used, wire.len());
        assert_eq!(parse_frame(b"\n\n\n"), Ok(None));
    }

    #[test]
    fn disconnect_notice() {
        let msg = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n";
        let wire = format!(
            "Content-Type: text/disconnect-notice\nContent-Length: {}\n\n{msg}",
            msg.len()
        );
        let (f, _) = one(wire.as_bytes());
        assert!(
            matches!(classify(&f), Message::DisconnectNotice(t) if t.starts_with("Disconnected"))
        );
    }

    #[test]
    fn odd_input_is_an_error_or_ignored_never_a_panic() {
        assert!(matches!(
            parse_frame(b"Content-Length: lots\n\n"),
            Err(FrameError::BadContentLength(_))
        ));
        assert!(matches!(
            parse_frame(b"Content-Length: 99999999999999999999999\n\n"),
            Err(FrameError::BadContentLength(_))
        ));
        assert!(matches!(
            parse_frame(b"Content-Length: 9999999999\n\n"),
            Err(FrameError::BodyTooLarge(_))
        ));
        assert_eq!(
            parse_frame(&vec![b'x'; MAX_HEADER_BYTES + 2]),
            Err(FrameError::HeaderTooLong)
        );
        // No colon, invalid UTF-8, empty names: skipped or kept, no panic.
        let (f, _) = one(b"garbage\n\xff\xfe: \xff\n: v\n\n");
        assert_eq!(classify(&f), Message::Other(String::new()));
        // Events that are not JSON, not objects, without a name, or not ours.
        for body in [&b"{"[..], b"[]", b"{}", b"\xff"] {
            let f = Frame {
                headers: vec![("Content-Type".into(), "text/event-json".into())],
                body: body.to_vec(),
            };
            assert!(matches!(classify(&f), Message::BadEvent(_)), "{body:?}");
        }
        let e = Event {
            name: "CUSTOM".into(),
            subclass: Some(PLAY_SUBCLASS.into()),
            unique_id: Some("u".into()),
            body: Some("not json".into()),
            dtmf_digit: None,
        };
        assert_eq!(parse_play(&e), None);
        let e = Event {
            body: Some(r#"{"file": 3}"#.into()),
            ..e
        };
        assert_eq!(parse_play(&e), None);
    }

    #[test]
    fn a_pseudo_random_byte_soup_never_panics() {
        let alphabet: &[u8] = b"Content-Length: 0123456789\n\r:{}\"_body\xff";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let len = (x % 200) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let mut rest = &buf[..];
            while let Ok(Some((f, used))) = parse_frame(rest) {
                let _ = classify(&f);
                assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
            }
        }
    }

    #[test]
    fn safe_args() {
        assert!(is_safe_arg("0b3c6a4e-1f7b-4d1c-9a59-2d6f0c7e1a22"));
        assert!(is_safe_arg("/tmp/abc_1.tmp.r8"));
        for bad in ["", "a b", "a\nb", "x\r", "tab\t", "nul\0"] {
            assert!(!is_safe_arg(bad), "{bad:?}");
        }
    }
}
