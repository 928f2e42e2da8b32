//! OpenAI Realtime wire shapes: the client events we build (`session.update`, audio
//! appends, truncate, tool outputs, ...) and the server events we read. Pure serde and
//! JSON, no I/O, so the turn state, the socket task, `check`, the fuzz targets and the
//! benches all build and read messages the same way.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audio::AudioFormat;
use crate::config::{OpenAiAudioFormat, OpenAiConfig, Route};
use crate::providers::{template, CallContext, ToolResult};
use crate::tools::ToolDecl;

/// Transcription model for the caller's side (asynchronous, for logs only).
const TRANSCRIPTION_MODEL: &str = "gpt-4o-mini-transcribe";
/// The client `event_id` of our `session.update`, so an `error` that names it is known
/// to be a rejected setup (fatal) rather than a passing complaint.
pub const SETUP_EVENT_ID: &str = "vb_session_update";

/// The wire format chosen by `providers.openai.audio_format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireFormat {
    pub kind: OpenAiAudioFormat,
}

impl WireFormat {
    pub fn new(kind: OpenAiAudioFormat) -> Self {
        WireFormat { kind }
    }

    /// The `format` object of `audio.input` / `audio.output`.
    pub fn json(self) -> Value {
        match self.kind {
            OpenAiAudioFormat::Pcmu => json!({"type": "audio/pcmu"}),
            OpenAiAudioFormat::Pcma => json!({"type": "audio/pcma"}),
            OpenAiAudioFormat::Pcm24 => json!({"type": "audio/pcm", "rate": 24000}),
        }
    }

    /// The same format for the session (used for input and output alike).
    pub fn audio(self) -> AudioFormat {
        match self.kind {
            OpenAiAudioFormat::Pcmu => AudioFormat::pcmu(),
            OpenAiAudioFormat::Pcma => AudioFormat::pcma(),
            OpenAiAudioFormat::Pcm24 => AudioFormat::l16(24000),
        }
    }
}

/// Characters escaped in the `model` query value (RFC 3986 unreserved ones are kept).
const MODEL_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The socket URL: `{url}?model={model}` (or `&model=` if the URL has a query already).
pub fn endpoint(cfg: &OpenAiConfig) -> String {
    let sep = if cfg.url.contains('?') { '&' } else { '?' };
    let model: String = percent_encoding::utf8_percent_encode(&cfg.model, MODEL_ESCAPE).collect();
    format!("{}{sep}model={model}", cfg.url)
}

/// The ISO-639-1 part of a BCP-47 tag (`it-IT` → `it`), if it has one.
pub fn iso639_1(language: &str) -> Option<String> {
    let primary = language.trim().split(['-', '_']).next()?;
    (primary.len() == 2 && primary.chars().all(|c| c.is_ascii_alphabetic()))
        .then(|| primary.to_ascii_lowercase())
}

/// What the session asked for, resolved for this call.
#[derive(Clone, Debug)]
pub struct Setup {
    pub model: String,
    pub format: WireFormat,
    pub voice: String,
    pub language: Option<String>,
    pub instructions: String,
    pub greeting: String,
    /// The functions the model may call (webhook tools and enabled built-ins).
    pub tools: Vec<ToolDecl>,
    /// `turn_detection.interrupt_response`: false when voicebridge decides barge-ins
    /// (the barge-in guard, protected greeting/goodbye), so a cough cannot make the
    /// server cancel the reply; we cancel and truncate once the barge-in is confirmed.
    pub interrupt_response: bool,
    /// `turn_detection.idle_timeout_ms` (the route's `silence_reprompt_ms`; 0: not sent).
    pub idle_timeout_ms: u64,
}

impl Setup {
    /// Resolves voice/language/templates from the config, the route and the call's
    /// template variables.
    pub fn new(cfg: &OpenAiConfig, route: &Route, ctx: &CallContext) -> Setup {
        let voice = if route.call.voice.is_empty() {
            cfg.voice.clone()
        } else {
            route.call.voice.clone()
        };
        Setup {
            model: cfg.model.clone(),
            format: WireFormat::new(cfg.audio_format),
            voice,
            language: iso639_1(&route.call.language),
            instructions: template::render(&route.call.instructions, &ctx.vars),
            greeting: template::render(&route.call.greeting, &ctx.vars)
                .trim()
                .to_owned(),
            tools: crate::tools::declarations(&route.call),
            interrupt_response: !route.call.manages_interruption(),
            idle_timeout_ms: route.call.silence_reprompt.as_millis() as u64,
        }
    }

    /// The `session.update` client event (GA shape).
    pub fn session_update(&self) -> Value {
        let format = self.format.json();
        let mut transcription = json!({"model": TRANSCRIPTION_MODEL});
        if let Some(lang) = &self.language {
            transcription["language"] = json!(lang);
        }
        let mut update = json!({
            "type": "session.update",
            "event_id": SETUP_EVENT_ID,
            "session": {
                "type": "realtime",
                "model": self.model,
                "output_modalities": ["audio"],
                "instructions": self.instructions,
                "audio": {
                    "input": {
                        "format": format,
                        "transcription": transcription,
                        "noise_reduction": {"type": "near_field"},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": 0.5,
                            "prefix_padding_ms": 300,
                            "silence_duration_ms": 500,
                            "create_response": true,
                            "interrupt_response": self.interrupt_response
                        }
                    },
                    "output": {
                        "format": format,
                        "voice": self.voice
                    }
                }
            }
        });
        if self.idle_timeout_ms > 0 {
            update["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] =
                json!(self.idle_timeout_ms);
        }
        // Without tools both keys are left out, so a route without tools sends the
        // same session as before tools existed.
        if !self.tools.is_empty() {
            let tools: Vec<Value> = self
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "function",
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters
                    })
                })
                .collect();
            update["session"]["tools"] = Value::Array(tools);
            update["session"]["tool_choice"] = json!("auto");
        }
        update
    }

    /// The greeting's `response.create`, if there is a greeting.
    pub fn greeting_event(&self) -> Option<Value> {
        if self.greeting.is_empty() {
            return None;
        }
        Some(json!({
            "type": "response.create",
            "response": {
                "instructions": format!("Greet the caller by saying exactly: {}", self.greeting)
            }
        }))
    }
}

/// `{"type":"input_audio_buffer.append","audio":"<base64>"}` for one frame, in one
/// allocation: the JSON is written around the base64 in place. Public for the benches.
pub fn append_event(frame: &[u8]) -> String {
    const HEAD: &str = r#"{"type":"input_audio_buffer.append","audio":""#;
    let mut text = String::with_capacity(HEAD.len() + frame.len().div_ceil(3) * 4 + 2);
    text.push_str(HEAD);
    base64::engine::general_purpose::STANDARD.encode_string(frame, &mut text);
    text.push_str("\"}");
    text
}

// ---- server events ------------------------------------------------------------------

/// The fields of server events we use; everything else is ignored.
#[derive(Deserialize, Debug, Default)]
pub struct ServerEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub response_id: Option<String>,
    #[serde(default)]
    pub item_id: Option<String>,
    #[serde(default)]
    pub delta: Option<String>,
    #[serde(default)]
    pub transcript: Option<String>,
    #[serde(default)]
    pub response: Option<ResponseObject>,
    #[serde(default)]
    pub error: Option<ErrorObject>,
    /// `response.function_call_arguments.done`: the function call.
    #[serde(default)]
    pub call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The arguments as JSON text (the model's, not always valid JSON).
    #[serde(default)]
    pub arguments: Option<String>,
    /// `conversation.item.added`: to see our function outputs enter the conversation.
    #[serde(default)]
    pub item: Option<ItemObject>,
}

#[derive(Deserialize, Debug, Default)]
pub struct ItemObject {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub call_id: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
pub struct ResponseObject {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub usage: Option<UsageObject>,
}

#[derive(Deserialize, Debug, Default)]
pub struct UsageObject {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
pub struct ErrorObject {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
}

/// `conversation.item.truncate`: the caller heard only `played_ms` of `item`.
pub fn truncate(item: &str, played_ms: u64) -> Value {
    json!({
        "type": "conversation.item.truncate",
        "item_id": item,
        "content_index": 0,
        "audio_end_ms": played_ms
    })
}

/// `response.cancel`: stop the response being generated.
pub fn cancel() -> Value {
    json!({"type": "response.cancel"})
}

/// `response.create` that makes the model say `text` (the goodbye).
pub fn say(text: &str) -> Value {
    json!({
        "type": "response.create",
        "response": {"instructions": format!("Say exactly this to the caller, then stop: {text}")}
    })
}

/// A plain `response.create` (the answer to tool results).
pub fn reply() -> Value {
    json!({"type": "response.create"})
}

/// The caller's key presses as a user text item (`id` is ours, so its
/// `conversation.item.added` can be recognised before asking for the answer).
pub fn dtmf_item(id: &str, digits: &str) -> Value {
    json!({
        "type": "conversation.item.create",
        "item": {
            "id": id,
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": crate::providers::dtmf_text(digits)}]
        }
    })
}

/// The `conversation.item.create` carrying a function's result.
pub fn function_output(r: &ToolResult) -> Value {
    json!({
        "type": "conversation.item.create",
        "item": {
            "type": "function_call_output",
            "call_id": r.id,
            "output": r.output.to_string()
        }
    })
}

#[cfg(test)]
mod tests;
