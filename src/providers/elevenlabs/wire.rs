//! The ElevenLabs agent WebSocket on the wire: the messages we build, the events we
//! read, and the per-response bookkeeping (items, barge-in cut-off, end of response,
//! watchdog). Pure: no I/O, the clock is a parameter, so all of it is unit-tested.
//!
//! Field names follow ElevenLabs' published AsyncAPI contract and the official SDKs
//! (see `docs/providers/elevenlabs.md`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::audio::{AudioFormat, ItemId};
use crate::config::{CallConfig, Route};
use crate::providers::{template, ToolResult};

/// Audio of a response that pauses this long after its `agent_response` text arrived is
/// considered complete (there is no explicit end-of-response event).
pub const RESPONSE_PAUSE: Duration = Duration::from_millis(300);

/// `agent_output_audio_format` / `user_input_audio_format` → our format.
pub fn parse_format(name: &str) -> Option<AudioFormat> {
    match name {
        "ulaw_8000" => Some(AudioFormat::pcmu()),
        _ => {
            let rate: u32 = name.strip_prefix("pcm_")?.parse().ok()?;
            [8000, 16000, 22050, 24000, 44100, 48000]
                .contains(&rate)
                .then(|| AudioFormat::l16(rate))
        }
    }
}

/// The ISO-639-1 part of a BCP-47 tag (`it-IT` → `it`).
pub fn primary_language(tag: &str) -> String {
    tag.trim()
        .split(['-', '_'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// `conversation_initiation_client_data`: overrides only for what the user configured
/// (the agent rejects overrides it does not allow with close 1008), and every call
/// variable as a dynamic variable.
pub fn initiation(route: &Route, vars: &BTreeMap<String, String>) -> Value {
    let call = &route.call;
    let mut agent = Map::new();
    if call.instructions != CallConfig::default().instructions {
        agent.insert(
            "prompt".into(),
            json!({ "prompt": template::render(&call.instructions, vars) }),
        );
    }
    let greeting = template::render(&call.greeting, vars);
    if !greeting.trim().is_empty() {
        agent.insert("first_message".into(), Value::String(greeting));
    }
    let language = primary_language(&call.language);
    if !language.is_empty() {
        agent.insert("language".into(), Value::String(language));
    }
    let mut overrides = Map::new();
    if !agent.is_empty() {
        overrides.insert("agent".into(), Value::Object(agent));
    }
    if !call.voice.trim().is_empty() {
        overrides.insert("tts".into(), json!({ "voice_id": call.voice.trim() }));
    }

    let mut dynamic = Map::new();
    for (k, v) in vars {
        // `system__*` names are ElevenLabs' own (read-only) variables.
        if !k.starts_with("system__") {
            // ElevenLabs fills these into the agent's prompt: cleaned like ours.
            dynamic.insert(k.clone(), Value::String(template::clean_value(v)));
        }
    }
    if let Some(called) = vars.get("called") {
        dynamic
            .entry("called_number")
            .or_insert_with(|| Value::String(template::clean_value(called)));
    }

    let mut msg = Map::new();
    msg.insert(
        "type".into(),
        Value::String("conversation_initiation_client_data".into()),
    );
    if !overrides.is_empty() {
        msg.insert(
            "conversation_config_override".into(),
            Value::Object(overrides),
        );
    }
    msg.insert("dynamic_variables".into(), Value::Object(dynamic));
    Value::Object(msg)
}

/// `{"user_audio_chunk":"<base64>"}`, built in one allocation of the exact size.
pub fn audio_chunk(audio: &[u8]) -> String {
    use base64::Engine;
    const HEAD: &str = "{\"user_audio_chunk\":\"";
    let mut s = String::with_capacity(HEAD.len() + audio.len().div_ceil(3) * 4 + 2);
    s.push_str(HEAD);
    base64::engine::general_purpose::STANDARD.encode_string(audio, &mut s);
    s.push_str("\"}");
    s
}

/// `{"type":"client_tool_result","tool_call_id","result","is_error"}`: `result` is text
/// (the webhook's JSON as its text; for a failure, the error message).
pub fn client_tool_result(r: &ToolResult) -> String {
    let result = match r.error_message() {
        Some(message) => message.to_owned(),
        None => r.output_text(),
    };
    json!({
        "type": "client_tool_result",
        "tool_call_id": r.id,
        "result": result,
        "is_error": r.is_error,
    })
    .to_string()
}

/// `{"type":"pong","event_id":<the ping's id, as it came>}`.
pub fn pong(event_id: &Value) -> String {
    json!({ "type": "pong", "event_id": event_id }).to_string()
}

/// A server event, reduced to what voicebridge uses.
#[derive(Debug, PartialEq)]
pub enum ServerEvent<'a> {
    Metadata {
        conversation_id: String,
        output: String,
        input: String,
    },
    Audio {
        event_id: i64,
        audio_base_64: Cow<'a, str>,
    },
    Interruption {
        event_id: i64,
    },
    Ping {
        event_id: Value,
        ping_ms: Option<u64>,
    },
    UserTranscript(String),
    AgentResponse(String),
    AgentResponseCorrection {
        original: String,
        corrected: String,
    },
    /// `client_tool_call`: the agent calls a client tool configured on it.
    ClientToolCall {
        id: String,
        name: String,
        /// The arguments object (`Null` when absent).
        parameters: Value,
    },
    Error {
        code: String,
        error_type: String,
        message: String,
    },
    /// An event type we do not handle (optional events), or one without `type`.
    Other(String),
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AudioMessage<'a> {
    #[serde(borrow)]
    audio_event: AudioEvent<'a>,
}

#[derive(Deserialize)]
struct AudioEvent<'a> {
    #[serde(borrow)]
    audio_base_64: Cow<'a, str>,
    event_id: Value,
}

/// Event ids are numbers on the wire; the SDKs also accept numeric strings.
fn event_id(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(v: &Value, event: &str, field: &str) -> String {
    v[event][field].as_str().unwrap_or("").trim().to_owned()
}

/// Parses one text message. `Err` names what is malformed (logged, never fatal).
pub fn parse(msg: &str) -> Result<ServerEvent<'_>, String> {
    let head: Head = serde_json::from_str(msg).map_err(|e| format!("not JSON: {e}"))?;
    let Some(kind) = head.kind else {
        return Ok(ServerEvent::Other(String::new()));
    };
    if kind == "audio" {
        let m: AudioMessage = serde_json::from_str(msg).map_err(|e| format!("audio event: {e}"))?;
        let event_id =
            event_id(&m.audio_event.event_id).ok_or("audio event: event_id is not a number")?;
        return Ok(ServerEvent::Audio {
            event_id,
            audio_base_64: m.audio_event.audio_base_64,
        });
    }
    let v: Value = serde_json::from_str(msg).map_err(|e| format!("{kind} event: {e}"))?;
    Ok(match kind.as_ref() {
        "conversation_initiation_metadata" => ServerEvent::Metadata {
            conversation_id: text(
                &v,
                "conversation_initiation_metadata_event",
                "conversation_id",
            ),
            output: text(
                &v,
                "conversation_initiation_metadata_event",
                "agent_output_audio_format",
            ),
            input: text(
                &v,
                "conversation_initiation_metadata_event",
                "user_input_audio_format",
            ),
        },
        "interruption" => ServerEvent::Interruption {
            event_id: event_id(&v["interruption_event"]["event_id"])
                .ok_or("interruption event: event_id is not a number")?,
        },
        "ping" => ServerEvent::Ping {
            event_id: v["ping_event"]["event_id"].clone(),
            ping_ms: v["ping_event"]["ping_ms"].as_u64(),
        },
        "user_transcript" => {
            ServerEvent::UserTranscript(text(&v, "user_transcription_event", "user_transcript"))
        }
        "agent_response" => {
            ServerEvent::AgentResponse(text(&v, "agent_response_event", "agent_response"))
        }
        "agent_response_correction" => ServerEvent::AgentResponseCorrection {
            original: text(
                &v,
                "agent_response_correction_event",
                "original_agent_response",
            ),
            corrected: text(
                &v,
                "agent_response_correction_event",
                "corrected_agent_response",
            ),
        },
        "client_tool_call" => {
            let c = &v["client_tool_call"];
            let id = c["tool_call_id"].as_str().unwrap_or("").trim();
            let name = c["tool_name"].as_str().unwrap_or("").trim();
            if id.is_empty() || name.is_empty() {
                return Err("client_tool_call without tool_call_id or tool_name".into());
            }
            ServerEvent::ClientToolCall {
                id: id.to_owned(),
                name: name.to_owned(),
                parameters: c["parameters"].clone(),
            }
        }
        "error" => {
            let e = &v["error_event"];
            ServerEvent::Error {
                code: match &e["code"] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                error_type: e["error_type"].as_str().unwrap_or("").to_owned(),
                message: e["message"].as_str().unwrap_or("").to_owned(),
            }
        }
        other => ServerEvent::Other(other.to_owned()),
    })
}

/// What to do with one `audio` event.
#[derive(Debug, PartialEq)]
pub enum AudioVerdict {
    /// Play it as part of this item.
    Play(ItemId),
    /// Late audio of an interrupted response (`event_id <=` the interruption's).
    Drop,
}

/// Per-conversation response bookkeeping.
///
/// - Items: a response starts with the first audio after the caller's turn
///   (`user_transcript`), an interruption, or — after a finished response — audio with a
///   new `event_id`; its id is `el-<event_id of its first chunk>` and stays the same for
///   all of its chunks (ElevenLabs increases `event_id` per response).
/// - Barge-in: after `interruption {event_id: K}`, audio with `event_id <= K` is dropped.
/// - End of response: once `agent_response` (the text) has arrived, the response is done
///   when its audio pauses for [`RESPONSE_PAUSE`]; the next `user_transcript` also ends it.
/// - Watchdog: armed by `user_transcript`, disarmed by the first audio played after it.
#[derive(Debug)]
pub struct Turns {
    /// Audio with an id at or below this is late audio of an interrupted response.
    interrupted_through: Option<i64>,
    /// Highest audio event id seen.
    pub max_event_id: Option<i64>,
    item: Option<ItemId>,
    last_event_id: Option<i64>,
    /// A turn boundary since the last audio: the next audio starts a new item.
    boundary: bool,
    /// ResponseDone was sent since the last audio.
    done_sent: bool,
    /// Audio was played since the last ResponseDone.
    open: bool,
    /// The assistant's text for the current turn has arrived.
    agent_text: bool,
    last_audio: Option<Instant>,
    watchdog: Option<Instant>,
    watchdog_after: Duration,
    watchdog_warned_turn: bool,
    /// A tool result was sent when audio up to this event id had been seen: the agent's
    /// answer to it is a new response (a new item), even without a pause.
    answered_after: Option<i64>,
}

impl Turns {
    /// `watchdog_after`: the route's `response_timeout` (zero disables it).
    pub fn new(watchdog_after: Duration) -> Turns {
        Turns {
            interrupted_through: None,
            max_event_id: None,
            item: None,
            last_event_id: None,
            boundary: true,
            done_sent: false,
            open: false,
            agent_text: false,
            last_audio: None,
            watchdog: None,
            watchdog_after,
            watchdog_warned_turn: false,
            answered_after: None,
        }
    }

    pub fn on_audio(&mut self, event_id: i64, now: Instant) -> AudioVerdict {
        self.max_event_id = Some(self.max_event_id.map_or(event_id, |m| m.max(event_id)));
        if self.interrupted_through.is_some_and(|k| event_id <= k) {
            return AudioVerdict::Drop;
        }
        let after_tool = self.answered_after.is_some_and(|k| event_id > k);
        if after_tool {
            self.answered_after = None;
        }
        let new_item = self.item.is_none()
            || self.boundary
            || after_tool
            || (self.done_sent && self.last_event_id != Some(event_id));
        if new_item {
            self.item = Some(Arc::from(format!("el-{event_id}")));
        }
        self.boundary = false;
        self.done_sent = false;
        self.open = true;
        self.last_event_id = Some(event_id);
        self.last_audio = Some(now);
        self.watchdog = None;
        match &self.item {
            Some(item) => AudioVerdict::Play(item.clone()),
            None => AudioVerdict::Drop,
        }
    }

    /// `agent_response` arrived.
    pub fn on_agent_response(&mut self) {
        self.agent_text = true;
    }

    /// `user_transcript`: the caller finished a turn. Returns true if a response was
    /// still open (send ResponseDone first).
    pub fn on_user_transcript(&mut self, now: Instant) -> bool {
        let was_open = self.close_turn();
        self.watchdog = (!self.watchdog_after.is_zero()).then(|| now + self.watchdog_after);
        self.watchdog_warned_turn = false;
        was_open
    }

    /// `client_tool_call`: the agent answered with a call; no silence warning while the
    /// tool runs.
    pub fn on_tool_call(&mut self) {
        self.watchdog = None;
    }

    /// A tool result was sent. `reply`: the agent is expected to speak about it, so the
    /// watchdog runs again; its answer starts a new item.
    pub fn on_tool_result(&mut self, reply: bool, now: Instant) {
        self.answered_after = Some(self.max_event_id.unwrap_or(0));
        if reply && !self.watchdog_after.is_zero() {
            self.watchdog = Some(now + self.watchdog_after);
            self.watchdog_warned_turn = false;
        }
    }

    /// `interruption {event_id}`: the caller talked over the assistant.
    pub fn on_interruption(&mut self, event_id: i64) {
        self.interrupted_through = Some(
            self.interrupted_through
                .map_or(event_id, |k| k.max(event_id)),
        );
        self.close_turn();
        self.watchdog = None;
    }

    fn close_turn(&mut self) -> bool {
        let was_open = self.open;
        self.open = false;
        self.agent_text = false;
        self.boundary = true;
        was_open
    }

    /// When the current response counts as done, if its text has come.
    pub fn done_deadline(&self) -> Option<Instant> {
        if self.open && self.agent_text {
            self.last_audio.map(|t| t + RESPONSE_PAUSE)
        } else {
            None
        }
    }

    /// The done deadline passed: returns true if ResponseDone is to be sent.
    pub fn on_done_due(&mut self, now: Instant) -> bool {
        if self.done_deadline().is_some_and(|d| d <= now) {
            self.open = false;
            self.done_sent = true;
            true
        } else {
            false
        }
    }

    pub fn watchdog_deadline(&self) -> Option<Instant> {
        self.watchdog
    }

    /// The watchdog deadline passed: the warning to send, once per turn.
    pub fn on_watchdog_due(&mut self, now: Instant) -> Option<String> {
        match self.watchdog {
            Some(d) if d <= now => {
                self.watchdog = None;
                if self.watchdog_warned_turn {
                    return None;
                }
                self.watchdog_warned_turn = true;
                Some(format!(
                    "provider silent: no response {} s after the caller finished",
                    self.watchdog_after.as_secs()
                ))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn route(toml: &str) -> Route {
        let c = Config::from_toml_str(toml, Vec::<(String, String)>::new()).unwrap();
        c.default_route().clone()
    }

    #[test]
    fn formats() {
        assert_eq!(parse_format("ulaw_8000"), Some(AudioFormat::pcmu()));
        assert_eq!(parse_format("pcm_16000"), Some(AudioFormat::l16(16000)));
        assert_eq!(parse_format("pcm_22050"), Some(AudioFormat::l16(22050)));
        assert_eq!(parse_format("pcm_48000"), Some(AudioFormat::l16(48000)));
        assert_eq!(parse_format("pcm_12345"), None);
        assert_eq!(parse_format("mp3_44100_128"), None);
        assert_eq!(parse_format(""), None);
    }

    #[test]
    fn only_configured_overrides_are_sent() {
        let vars = BTreeMap::from([
            ("caller_id".to_owned(), "+3902".to_owned()),
            ("called".to_owned(), "100".to_owned()),
            ("system__time".to_owned(), "x".to_owned()),
            ("note".to_owned(), "a\nb".to_owned()),
        ]);
        let bare = initiation(&route(""), &vars);
        // Dynamic variables end up in the agent's prompt: cleaned like our templates.
        assert_eq!(bare["dynamic_variables"]["note"], "a b");
        assert_eq!(bare["type"], "conversation_initiation_client_data");
        assert!(bare.get("conversation_config_override").is_none(), "{bare}");
        assert_eq!(bare["dynamic_variables"]["caller_id"], "+3902");
        assert_eq!(bare["dynamic_variables"]["called_number"], "100");
        assert!(bare["dynamic_variables"].get("system__time").is_none());

        let full = initiation(
            &route(
                "[call]\ninstructions = \"Help {{caller_id}}\"\ngreeting = \"Hi {{called}}\"\n\
                 voice = \"v1\"\nlanguage = \"it-IT\"\n",
            ),
            &vars,
        );
        let o = &full["conversation_config_override"];
        assert_eq!(o["agent"]["prompt"]["prompt"], "Help +3902");
        assert_eq!(o["agent"]["first_message"], "Hi 100");
        assert_eq!(o["agent"]["language"], "it");
        assert_eq!(o["tts"]["voice_id"], "v1");

        let only_voice = initiation(&route("[call]\nvoice = \"v2\"\n"), &vars);
        assert_eq!(
            only_voice["conversation_config_override"],
            json!({"tts": {"voice_id": "v2"}})
        );
    }

    #[test]
    fn audio_chunk_is_json() {
        let s = audio_chunk(&[0xff, 0x7f, 0x00, 0x01]);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["user_audio_chunk"], "/38AAQ==");
        assert_eq!(s.len(), s.capacity());
    }

    #[test]
    fn parses_events() {
        assert_eq!(
            parse(r#"{"type":"audio","audio_event":{"audio_base_64":"AAAA","event_id":7}}"#),
            Ok(ServerEvent::Audio {
                event_id: 7,
                audio_base_64: Cow::Borrowed("AAAA")
            })
        );
        assert_eq!(
            parse(r#"{"type":"interruption","interruption_event":{"event_id":"9"}}"#),
            Ok(ServerEvent::Interruption { event_id: 9 })
        );
        assert_eq!(
            parse(r#"{"type":"ping","ping_event":{"event_id":3,"ping_ms":45}}"#),
            Ok(ServerEvent::Ping {
                event_id: json!(3),
                ping_ms: Some(45)
            })
        );
        assert_eq!(pong(&json!(3)), r#"{"event_id":3,"type":"pong"}"#);
        assert_eq!(
            parse(r#"{"type":"vad_score","vad_score_event":{"vad_score":0.5}}"#),
            Ok(ServerEvent::Other("vad_score".into()))
        );
        assert!(parse(r#"{"type":"audio","audio_event":{}}"#).is_err());
        assert!(parse("nope").is_err());
        assert_eq!(
            parse(
                r#"{"type":"error","error_event":{"code":1008,"message":"m","error_type":"override_error"}}"#
            ),
            Ok(ServerEvent::Error {
                code: "1008".into(),
                error_type: "override_error".into(),
                message: "m".into()
            })
        );
    }

    #[test]
    fn client_tool_calls_and_results() {
        assert_eq!(
            parse(
                r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"book_appointment",
                "tool_call_id":"tc_1","parameters":{"day":"monday"}}}"#
            ),
            Ok(ServerEvent::ClientToolCall {
                id: "tc_1".into(),
                name: "book_appointment".into(),
                parameters: json!({"day": "monday"})
            })
        );
        assert_eq!(
            parse(
                r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"end_call","tool_call_id":"tc_2"}}"#
            ),
            Ok(ServerEvent::ClientToolCall {
                id: "tc_2".into(),
                name: "end_call".into(),
                parameters: Value::Null
            })
        );
        assert!(
            parse(r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"x"}}"#).is_err()
        );

        let mut r = ToolResult {
            id: "tc_1".into(),
            name: "book_appointment".into(),
            output: json!({"booked": true}),
            is_error: false,
            reply: true,
        };
        let v: Value = serde_json::from_str(&client_tool_result(&r)).unwrap();
        assert_eq!(
            v,
            json!({"type": "client_tool_result", "tool_call_id": "tc_1",
                   "result": r#"{"booked":true}"#, "is_error": false})
        );
        r.output = json!("plain text");
        let v: Value = serde_json::from_str(&client_tool_result(&r)).unwrap();
        assert_eq!(v["result"], "plain text");
        r.output = json!({"error": "the calendar is down"});
        r.is_error = true;
        let v: Value = serde_json::from_str(&client_tool_result(&r)).unwrap();
        assert_eq!(v["result"], "the calendar is down");
        assert_eq!(v["is_error"], true);
    }

    #[test]
    fn a_tool_call_pauses_the_watchdog_and_its_answer_is_a_new_item() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Turns::new(Duration::from_secs(5));
        t.on_user_transcript(ms(0));
        // "Let me check" before the call.
        t.on_agent_response();
        assert_eq!(t.on_audio(2, ms(100)), AudioVerdict::Play("el-2".into()));
        t.on_tool_call();
        assert_eq!(t.watchdog_deadline(), None);
        t.on_tool_result(true, ms(200));
        assert_eq!(t.watchdog_deadline(), Some(ms(5200)));
        // A late chunk of the same response still belongs to it; the answer is new.
        assert_eq!(t.on_audio(2, ms(210)), AudioVerdict::Play("el-2".into()));
        assert_eq!(t.on_audio(3, ms(250)), AudioVerdict::Play("el-3".into()));
        assert_eq!(t.watchdog_deadline(), None);
        assert_eq!(t.on_audio(3, ms(260)), AudioVerdict::Play("el-3".into()));
        // No reply expected (end_call): no watchdog.
        t.on_tool_call();
        t.on_tool_result(false, ms(300));
        assert_eq!(t.watchdog_deadline(), None);
    }

    #[test]
    fn items_interruption_and_done() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Turns::new(Duration::from_secs(5));
        // Greeting: event 1, text after the audio.
        assert_eq!(t.on_audio(1, ms(0)), AudioVerdict::Play("el-1".into()));
        assert_eq!(t.on_audio(1, ms(10)), AudioVerdict::Play("el-1".into()));
        assert_eq!(t.done_deadline(), None, "no text yet");
        t.on_agent_response();
        assert_eq!(t.done_deadline(), Some(ms(310)));
        assert!(!t.on_done_due(ms(100)));
        assert!(t.on_done_due(ms(310)));
        assert_eq!(t.done_deadline(), None);

        // A caller turn, then a response with a new id.
        assert!(!t.on_user_transcript(ms(1000)));
        assert_eq!(t.watchdog_deadline(), Some(ms(6000)));
        t.on_agent_response();
        assert_eq!(t.on_audio(2, ms(1500)), AudioVerdict::Play("el-2".into()));
        assert_eq!(t.watchdog_deadline(), None, "the response started");
        // Barge-in at 2: late audio of 2 (and older) is dropped, 3 plays.
        t.on_interruption(2);
        assert_eq!(t.done_deadline(), None);
        assert_eq!(t.on_audio(2, ms(1600)), AudioVerdict::Drop);
        assert_eq!(t.on_audio(1, ms(1600)), AudioVerdict::Drop);
        assert_eq!(t.on_audio(3, ms(1700)), AudioVerdict::Play("el-3".into()));
        assert_eq!(t.on_audio(3, ms(1710)), AudioVerdict::Play("el-3".into()));
        assert_eq!(t.max_event_id, Some(3));
        // The next caller turn closes the open response.
        assert!(t.on_user_transcript(ms(2000)));
    }

    #[test]
    fn a_pause_does_not_split_a_response() {
        let t0 = Instant::now();
        let mut t = Turns::new(Duration::ZERO);
        t.on_agent_response();
        assert_eq!(t.on_audio(4, t0), AudioVerdict::Play("el-4".into()));
        assert!(t.on_done_due(t0 + RESPONSE_PAUSE));
        assert_eq!(
            t.on_audio(4, t0 + Duration::from_secs(1)),
            AudioVerdict::Play("el-4".into())
        );
        assert_eq!(t.watchdog_deadline(), None);
        t.on_user_transcript(t0);
        assert_eq!(t.watchdog_deadline(), None, "zero disables the watchdog");
    }

    #[test]
    fn watchdog_warns_once_per_turn() {
        let t0 = Instant::now();
        let mut t = Turns::new(Duration::from_secs(2));
        t.on_user_transcript(t0);
        assert!(t.on_watchdog_due(t0 + Duration::from_secs(1)).is_none());
        let w = t.on_watchdog_due(t0 + Duration::from_secs(2)).unwrap();
        assert!(w.contains("no response 2 s"), "{w}");
        assert!(t.on_watchdog_due(t0 + Duration::from_secs(3)).is_none());
        assert_eq!(t.watchdog_deadline(), None);
    }
}
