//! The ElevenLabs agent WebSocket on the wire: the messages we build and the events we
//! read. Pure serde and JSON, no I/O, so all of it is unit-tested (the per-response
//! bookkeeping is in `turn.rs`).
//!
//! Field names follow ElevenLabs' published AsyncAPI contract and the official SDKs
//! (see `docs/providers/elevenlabs.md`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::audio::AudioFormat;
use crate::config::{CallConfig, Route};
use crate::providers::{template, ToolResult};

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

/// `{"type":"user_message","text"}`: the caller's key presses as a user turn the agent
/// answers (a `contextual_update` would be heard by nobody: it never triggers a reply).
pub fn user_message(text: &str) -> String {
    json!({ "type": "user_message", "text": text }).to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn route(toml: &str) -> Route {
        let c = Config::from_toml_str(toml, Vec::<(String, String)>::new()).unwrap();
        Route::clone(c.default_route())
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
}
