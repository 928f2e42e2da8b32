//! The Gemini Live JSON, both ways: the client messages we build and the server
//! messages we read. Pure (no I/O), so every shape is unit-tested here.
//!
//! Field names follow Google's Live API reference and the `google-genai` SDK's
//! `LiveClientMessage` / `LiveServerMessage` (camelCase on the wire). Unknown fields and
//! message kinds are ignored, as the API adds fields over time.

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::providers::ToolResult;
use crate::tools::ToolDecl;

/// The caller audio we send: PCM16 LE mono at the model's native input rate.
pub const INPUT_RATE: u32 = 16_000;
/// What the model sends back, always.
pub const OUTPUT_RATE: u32 = 24_000;

/// `models/<id>`, whichever way the config spelled it.
pub fn model_path(model: &str) -> String {
    let m = model.trim();
    if m.starts_with("models/") {
        m.to_owned()
    } else {
        format!("models/{m}")
    }
}

/// Models whose id contains `gemini-3` take the greeting as `realtimeInput.text`;
/// earlier (2.x) native-audio models as a `clientContent` user turn.
pub fn greets_with_realtime_text(model: &str) -> bool {
    model.contains("gemini-3")
}

/// What the session's setup depends on.
pub struct SetupParams<'a> {
    pub model: &'a str,
    pub voice: &'a str,
    /// BCP-47; empty: not sent (the model picks).
    pub language: &'a str,
    pub instructions: &'a str,
    /// Resumption handle of the session being continued, if any.
    pub handle: Option<&'a str>,
    /// `setup.tools`, already built by [`tools`] (`None`: no tools offered).
    pub tools: Option<&'a Value>,
    /// voicebridge decides barge-ins (guard, protected greeting/goodbye):
    /// `activityHandling: NO_INTERRUPTION`, so the caller's speech no longer cuts the
    /// reply on the server; Gemini then reports no interruption at all, and
    /// voicebridge's own speech detection confirms the barge-in.
    pub no_interruption: bool,
}

/// The `setup` message: the first and only configuration of a connection.
pub fn setup(p: &SetupParams<'_>) -> String {
    let mut speech = json!({
        "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": p.voice}}
    });
    if !p.language.is_empty() {
        speech["languageCode"] = json!(p.language);
    }
    let resumption = match p.handle {
        Some(h) => json!({ "handle": h }),
        None => json!({}),
    };
    let mut setup = json!({
        "model": model_path(p.model),
        "generationConfig": {
            "responseModalities": ["AUDIO"],
            "speechConfig": speech,
        },
        "realtimeInputConfig": {
            // The doc's values: react quickly to the caller (barge-in), end a turn after
            // half a second of silence.
            "automaticActivityDetection": {
                "disabled": false,
                "startOfSpeechSensitivity": "START_SENSITIVITY_HIGH",
                "endOfSpeechSensitivity": "END_SENSITIVITY_LOW",
                "prefixPaddingMs": 20,
                "silenceDurationMs": 500,
            },
            "activityHandling": if p.no_interruption {
                "NO_INTERRUPTION"
            } else {
                "START_OF_ACTIVITY_INTERRUPTS"
            },
        },
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
        "sessionResumption": resumption,
        "contextWindowCompression": {"slidingWindow": {}},
    });
    if !p.instructions.is_empty() {
        setup["systemInstruction"] = json!({"parts": [{"text": p.instructions}]});
    }
    if let Some(tools) = p.tools {
        setup["tools"] = tools.clone();
    }
    json!({ "setup": setup }).to_string()
}

// ---- tools -----------------------------------------------------------------------------

/// `setup.tools` for the route's declarations: `[{"functionDeclarations": [...]}]`, or
/// `None` when there are none. Also returns the JSON Schema keywords that were left out
/// (Gemini's `parameters` is an OpenAPI subset; see [`gemini_schema`]).
pub fn tools(decls: &[ToolDecl]) -> (Option<Value>, Vec<String>) {
    if decls.is_empty() {
        return (None, Vec::new());
    }
    let mut dropped = Vec::new();
    let functions: Vec<Value> = decls
        .iter()
        .map(|d| {
            let mut f = json!({"name": d.name, "description": d.description});
            let params = gemini_schema(&d.parameters, &d.parameters, &mut dropped, 0);
            // An OBJECT without properties is refused ("should be non-empty for OBJECT
            // type"): a function without arguments simply has no `parameters`.
            if params["properties"]
                .as_object()
                .is_some_and(|p| !p.is_empty())
            {
                f["parameters"] = params;
            }
            f
        })
        .collect();
    dropped.sort();
    dropped.dedup();
    (
        Some(json!([{ "functionDeclarations": functions }])),
        dropped,
    )
}

/// How deep `$ref`s and nesting are followed (a recursive schema cannot be expressed in
/// the subset anyway).
const MAX_SCHEMA_DEPTH: usize = 12;

/// A JSON Schema (as configured) in the OpenAPI-3.0 subset Gemini's
/// `FunctionDeclaration.parameters` takes: type names upper-case (`OBJECT`, `STRING`...),
/// `["string","null"]` → `STRING` + `nullable`, `const` → a one-value `enum`, `oneOf` →
/// `anyOf`, local `$ref`s (`#/$defs/..`, `#/definitions/..`) inlined, `required` limited
/// to declared properties, non-string `enum`s moved into the description. Keywords
/// outside the subset (`additionalProperties`, `$schema`, `allOf`, ...) are left out and
/// named in `dropped`: the Live API refuses the whole setup (close 1007) for some of them.
///
/// Why not `parametersJsonSchema` (full JSON Schema): the Live API has been seen to
/// accept it but call the function with empty arguments (googleapis/python-genai#1147;
/// LiveKit and others switched their Live integrations back to `parameters`).
pub fn gemini_schema(v: &Value, root: &Value, dropped: &mut Vec<String>, depth: usize) -> Value {
    let Some(src) = v.as_object() else {
        return json!({});
    };
    if depth > MAX_SCHEMA_DEPTH {
        dropped.push("(nesting too deep)".to_owned());
        return json!({});
    }
    if let Some(r) = src.get("$ref").and_then(Value::as_str) {
        return match resolve_ref(root, r) {
            Some(target) => {
                let mut merged = gemini_schema(target, root, dropped, depth + 1);
                // Siblings of a $ref (a description) describe this use of it.
                if let Some(d) = src.get("description").and_then(Value::as_str) {
                    merged["description"] = json!(d);
                }
                merged
            }
            None => {
                dropped.push(format!("$ref {r}"));
                json!({})
            }
        };
    }
    let mut out = Map::new();
    let mut description = src
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match src.get("type") {
        Some(Value::String(t)) => {
            if let Some(t) = type_name(t) {
                out.insert("type".into(), json!(t));
            } else if t == "null" {
                out.insert("nullable".into(), json!(true));
            }
        }
        Some(Value::Array(types)) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            let real: Vec<&str> = names.iter().copied().filter_map(type_name).collect();
            if names.contains(&"null") {
                out.insert("nullable".into(), json!(true));
            }
            match real.as_slice() {
                [] => {}
                [one] => {
                    out.insert("type".into(), json!(one));
                }
                many => {
                    let any: Vec<Value> = many.iter().map(|t| json!({ "type": t })).collect();
                    out.insert("anyOf".into(), Value::Array(any));
                }
            }
        }
        _ => {}
    }
    for (k, val) in src {
        match k.as_str() {
            "type" | "description" | "$ref" => {}
            "title" | "pattern" if val.is_string() => {
                out.insert(k.clone(), val.clone());
            }
            "nullable" if val.is_boolean() => {
                out.insert(k.clone(), val.clone());
            }
            "minimum" | "maximum" if val.is_number() => {
                out.insert(k.clone(), val.clone());
            }
            "minItems" | "maxItems" | "minLength" | "maxLength" | "minProperties"
            | "maxProperties"
                if val.is_u64() =>
            {
                out.insert(k.clone(), val.clone());
            }
            "format" => match (out.get("type").and_then(Value::as_str), val.as_str()) {
                (Some("STRING"), Some(f @ ("enum" | "date-time")))
                | (Some("INTEGER"), Some(f @ ("int32" | "int64")))
                | (Some("NUMBER"), Some(f @ ("float" | "double"))) => {
                    out.insert(k.clone(), json!(f));
                }
                _ => dropped.push(format!("format {val}")),
            },
            "enum" | "const" => {
                let values: Vec<Value> = match val {
                    Value::Array(a) if k == "enum" => a.clone(),
                    other => vec![other.clone()],
                };
                if values.iter().all(Value::is_string) && !values.is_empty() {
                    out.insert("enum".into(), Value::Array(values));
                } else {
                    // Gemini's enum is for strings; the model still reads the choices.
                    let list: Vec<String> = values.iter().map(Value::to_string).collect();
                    let note = format!("One of: {}.", list.join(", "));
                    description = Some(match description.take() {
                        Some(d) if !d.is_empty() => format!("{d} {note}"),
                        _ => note,
                    });
                }
            }
            "items" if val.is_object() => {
                out.insert(k.clone(), gemini_schema(val, root, dropped, depth + 1));
            }
            "anyOf" | "oneOf" => {
                if let Value::Array(alts) = val {
                    let alts: Vec<Value> = alts
                        .iter()
                        .map(|a| gemini_schema(a, root, dropped, depth + 1))
                        .collect();
                    out.insert("anyOf".into(), Value::Array(alts));
                }
            }
            "properties" => {
                if let Value::Object(props) = val {
                    let mut converted = Map::new();
                    for (name, schema) in props {
                        converted.insert(
                            name.clone(),
                            gemini_schema(schema, root, dropped, depth + 1),
                        );
                    }
                    if !converted.is_empty() {
                        out.insert("properties".into(), Value::Object(converted));
                    }
                }
            }
            "required" => {}
            // Documentation only in JSON Schema; the subset has no place for them.
            "$schema" | "$id" | "$defs" | "definitions" | "$comment" => {}
            other => dropped.push(other.to_owned()),
        }
    }
    if let (Some(Value::Array(req)), Some(Value::Object(props))) =
        (src.get("required"), out.get("properties"))
    {
        let req: Vec<Value> = req
            .iter()
            .filter(|r| r.as_str().is_some_and(|n| props.contains_key(n)))
            .cloned()
            .collect();
        if !req.is_empty() {
            out.insert("required".into(), Value::Array(req));
        }
    }
    if let Some(d) = description {
        out.insert("description".into(), json!(d));
    }
    Value::Object(out)
}

fn type_name(t: &str) -> Option<&'static str> {
    Some(match t {
        "object" => "OBJECT",
        "string" => "STRING",
        "integer" => "INTEGER",
        "number" => "NUMBER",
        "boolean" => "BOOLEAN",
        "array" => "ARRAY",
        _ => return None,
    })
}

fn resolve_ref<'v>(root: &'v Value, r: &str) -> Option<&'v Value> {
    if r == "#" {
        return Some(root);
    }
    let path = r.strip_prefix("#/")?;
    let mut at = root;
    for part in path.split('/') {
        let part = part.replace("~1", "/").replace("~0", "~");
        at = at.get(part.as_str())?;
    }
    Some(at)
}

/// `FunctionResponse.response`: `{"output": ...}` for a result, `{"error": "..."}` for a
/// failure (Google's reference: use the "output" key for the function's output and the
/// "error" key for error details).
pub fn function_response(r: &ToolResult) -> Value {
    if r.is_error {
        let message = r
            .error_message()
            .map_or_else(|| r.output_text(), str::to_owned);
        json!({ "error": message })
    } else {
        json!({ "output": r.output })
    }
}

/// `{"toolResponse":{"functionResponses":[{"id","name","response"}]}}`; `id` is left
/// out when the call came without one.
///
/// 3.x models call functions NON_BLOCKING by default: the model goes on talking ("let
/// me check") while the webhook runs, and the response says when to use the answer.
/// voicebridge asks for `WHEN_IDLE`: the answer is spoken as soon as the model has
/// finished its sentence and the caller is not talking, never cutting either of them;
/// a result that wants no answer (`reply: false`) is `SILENT`. 2.x models wait for the
/// result (blocking), so no scheduling is sent.
pub fn tool_response(model: &str, id: &str, r: &ToolResult) -> String {
    let mut f = json!({"name": r.name, "response": function_response(r)});
    if !id.is_empty() {
        f["id"] = json!(id);
    }
    if greets_with_realtime_text(model) {
        f["scheduling"] = json!(if r.reply { "WHEN_IDLE" } else { "SILENT" });
    }
    json!({"toolResponse": {"functionResponses": [f]}}).to_string()
}

/// The text turn that hands the model a result its current connection never asked for
/// (the call was made before a session resumption: see `docs/providers/gemini.md`).
pub fn orphan_result_text(r: &ToolResult) -> String {
    if r.is_error {
        let message = r
            .error_message()
            .map_or_else(|| r.output_text(), str::to_owned);
        format!(
            "(system) The function {} you called before the connection was renewed failed: \
             {message}. Tell the caller and continue.",
            r.name
        )
    } else {
        format!(
            "(system) The function {} you called before the connection was renewed returned: \
             {}. Continue the conversation with this result.",
            r.name, r.output
        )
    }
}

/// The instruction that makes the assistant speak first.
pub fn greeting(model: &str, greeting: &str) -> String {
    instruct(
        model,
        &format!("Greet the caller by saying exactly: {greeting}"),
    )
}

/// A text turn that makes the model speak (greeting, goodbye), in the form the model's
/// generation takes.
pub fn instruct(model: &str, text: &str) -> String {
    if greets_with_realtime_text(model) {
        json!({"realtimeInput": {"text": text}}).to_string()
    } else {
        json!({"clientContent": {
            "turns": [{"role": "user", "parts": [{"text": text}]}],
            "turnComplete": true,
        }})
        .to_string()
    }
}

const AUDIO_HEAD: &str = r#"{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":""#;
const AUDIO_TAIL: &str = r#""}}}"#;

/// One `realtimeInput.audio` message for a frame of PCM16 16 kHz, in one allocation.
pub fn audio(pcm: &[u8]) -> String {
    let b64_len = pcm.len().div_ceil(3) * 4;
    let mut out = String::with_capacity(AUDIO_HEAD.len() + b64_len + AUDIO_TAIL.len());
    out.push_str(AUDIO_HEAD);
    base64::engine::general_purpose::STANDARD.encode_string(pcm, &mut out);
    out.push_str(AUDIO_TAIL);
    out
}

// ---- server messages ----------------------------------------------------------------

/// One server message. Several members may be set at once (e.g. `serverContent` with
/// `turnComplete` and `usageMetadata`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerMessage<'a> {
    pub setup_complete: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    pub server_content: Option<ServerContent<'a>>,
    pub usage_metadata: Option<UsageMetadata>,
    pub go_away: Option<GoAway>,
    pub session_resumption_update: Option<ResumptionUpdate>,
    pub tool_call: Option<ToolCallMessage>,
    pub tool_call_cancellation: Option<ToolCallCancellation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallMessage {
    #[serde(default)]
    pub function_calls: Vec<FunctionCall>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FunctionCall {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// The arguments object; absent for a function without parameters.
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Default, Deserialize)]
pub struct ToolCallCancellation {
    #[serde(default)]
    pub ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerContent<'a> {
    #[serde(borrow)]
    pub model_turn: Option<Content<'a>>,
    #[serde(default)]
    pub turn_complete: bool,
    #[serde(default)]
    pub generation_complete: bool,
    #[serde(default)]
    pub interrupted: bool,
    pub input_transcription: Option<Transcription>,
    pub output_transcription: Option<Transcription>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Content<'a> {
    #[serde(default, borrow)]
    pub parts: Vec<Part<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part<'a> {
    /// Audio; other parts (`text`, thoughts) are not played and not parsed.
    #[serde(borrow)]
    pub inline_data: Option<Blob<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob<'a> {
    #[serde(default, borrow)]
    pub mime_type: Cow<'a, str>,
    /// Base64 has no JSON escapes, so this borrows from the frame in practice.
    #[serde(default, borrow)]
    pub data: Cow<'a, str>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Transcription {
    #[serde(default)]
    pub text: String,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub response_token_count: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoAway {
    /// A protobuf Duration in JSON: `"50s"`, `"1.5s"`.
    pub time_left: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumptionUpdate {
    #[serde(default)]
    pub new_handle: String,
    #[serde(default)]
    pub resumable: bool,
}

pub fn parse(text: &str) -> Result<ServerMessage<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

/// A protobuf JSON Duration (`"50s"`, `"1.5s"`, `"0.250s"`).
///
/// `None` for anything that is not a finite, non-negative duration `Duration` can hold:
/// the value comes from the server (`goAway.timeLeft`), and `Duration::from_secs_f64`
/// panics on e.g. `"1e300s"` (found by the `gemini_events` fuzz target).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    if !(secs.is_finite() && secs >= 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// The sample rate of an `audio/pcm;rate=N` MIME type; `None` if it is not PCM audio.
/// A PCM type without a rate is the model's documented 24 kHz.
pub fn pcm_rate(mime: &str) -> Option<u32> {
    let mut params = mime.split(';').map(str::trim);
    let kind = params.next()?.to_ascii_lowercase();
    if kind != "audio/pcm" && kind != "audio/l16" {
        return None;
    }
    for p in params {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("rate") {
                return v.trim().parse().ok();
            }
        }
    }
    Some(OUTPUT_RATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const INPUT_MIME: &str = "audio/pcm;rate=16000";

    fn params<'a>(model: &'a str, language: &'a str, handle: Option<&'a str>) -> SetupParams<'a> {
        SetupParams {
            model,
            voice: "Kore",
            language,
            instructions: "Be brief.",
            handle,
            tools: None,
            no_interruption: false,
        }
    }

    #[test]
    fn setup_has_the_documented_shape() {
        let v: Value = serde_json::from_str(&setup(&params(
            "gemini-2.5-flash-native-audio-preview-12-2025",
            "it-IT",
            None,
        )))
        .unwrap();
        let s = &v["setup"];
        assert_eq!(
            s["model"],
            "models/gemini-2.5-flash-native-audio-preview-12-2025"
        );
        let g = &s["generationConfig"];
        assert_eq!(g["responseModalities"], json!(["AUDIO"]));
        assert_eq!(
            g["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"],
            "Kore"
        );
        assert_eq!(g["speechConfig"]["languageCode"], "it-IT");
        assert_eq!(s["systemInstruction"]["parts"][0]["text"], "Be brief.");
        assert_eq!(
            s["realtimeInputConfig"]["activityHandling"],
            "START_OF_ACTIVITY_INTERRUPTS"
        );
        assert_eq!(
            s["realtimeInputConfig"]["automaticActivityDetection"]["disabled"],
            false
        );
        assert_eq!(s["inputAudioTranscription"], json!({}));
        assert_eq!(s["outputAudioTranscription"], json!({}));
        assert_eq!(s["sessionResumption"], json!({}));
        assert_eq!(s["contextWindowCompression"], json!({"slidingWindow": {}}));
        assert!(s.get("responseModalities").is_none());
    }

    #[test]
    fn a_managed_route_turns_the_server_interruption_off() {
        let mut p = params("gemini-3.8-live", "", None);
        p.no_interruption = true;
        let v: Value = serde_json::from_str(&setup(&p)).unwrap();
        assert_eq!(
            v["setup"]["realtimeInputConfig"]["activityHandling"],
            "NO_INTERRUPTION"
        );
    }

    #[test]
    fn setup_language_is_optional_and_handle_resumes() {
        let v: Value = serde_json::from_str(&setup(&params("models/m", "", Some("h-7")))).unwrap();
        assert_eq!(v["setup"]["model"], "models/m");
        assert!(v["setup"]["generationConfig"]["speechConfig"]
            .get("languageCode")
            .is_none());
        assert_eq!(v["setup"]["sessionResumption"]["handle"], "h-7");
    }

    #[test]
    fn greeting_depends_on_the_model_generation() {
        let v: Value = serde_json::from_str(&greeting("models/gemini-2.5-flash", "Ciao!")).unwrap();
        let turn = &v["clientContent"]["turns"][0];
        assert_eq!(turn["role"], "user");
        assert_eq!(
            turn["parts"][0]["text"],
            "Greet the caller by saying exactly: Ciao!"
        );
        assert_eq!(v["clientContent"]["turnComplete"], true);
        let v: Value = serde_json::from_str(&greeting("models/gemini-3-flash-live", "Hi")).unwrap();
        assert_eq!(
            v["realtimeInput"]["text"],
            "Greet the caller by saying exactly: Hi"
        );
    }

    #[test]
    fn audio_message_round_trips() {
        let pcm: Vec<u8> = (0..640u32).map(|i| (i * 7) as u8).collect();
        let msg = audio(&pcm);
        let v: Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(v["realtimeInput"]["audio"]["mimeType"], INPUT_MIME);
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["realtimeInput"]["audio"]["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, pcm);
        assert!(msg.capacity() == msg.len(), "exactly one allocation");
    }

    #[test]
    fn parses_server_content_with_several_parts() {
        let text = r#"{"serverContent":{"modelTurn":{"parts":[
            {"inlineData":{"mimeType":"audio/pcm;rate=24000","data":"AAAB"}},
            {"text":"thinking"},
            {"inlineData":{"mimeType":"audio/pcm;rate=24000","data":"AQID"}}]},
            "futureField":1},"usageMetadata":{"promptTokenCount":12,"responseTokenCount":34,"totalTokenCount":46}}"#;
        let m = parse(text).unwrap();
        let sc = m.server_content.unwrap();
        let parts = sc.model_turn.unwrap().parts;
        assert_eq!(parts.len(), 3);
        assert!(matches!(
            parts[0].inline_data.as_ref().unwrap().data,
            Cow::Borrowed(_)
        ));
        assert!(parts[1].inline_data.is_none());
        let u = m.usage_metadata.unwrap();
        assert_eq!((u.prompt_token_count, u.response_token_count), (12, 34));
    }

    #[test]
    fn parses_control_messages() {
        assert!(parse(r#"{"setupComplete":{}}"#)
            .unwrap()
            .setup_complete
            .is_some());
        let m = parse(r#"{"goAway":{"timeLeft":"1.5s"}}"#).unwrap();
        assert_eq!(
            parse_duration(m.go_away.unwrap().time_left.as_deref().unwrap()),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration("50s"), Some(Duration::from_secs(50)));
        assert_eq!(parse_duration("soon"), None);
        // Regression (fuzzing): huge, negative and non-finite values are no duration,
        // not a panic.
        for bad in [
            "1e300s",
            "18446744073709551616s",
            "-1s",
            "NaNs",
            "infs",
            "-0.5s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_duration("1e3s"), Some(Duration::from_secs(1000)));
        let m =
            parse(r#"{"sessionResumptionUpdate":{"newHandle":"abc","resumable":true}}"#).unwrap();
        let u = m.session_resumption_update.unwrap();
        assert_eq!((u.new_handle.as_str(), u.resumable), ("abc", true));
        let m = parse(r#"{"serverContent":{"interrupted":true}}"#).unwrap();
        assert!(m.server_content.unwrap().interrupted);
        assert!(parse(r#"{"somethingNew":{}}"#).is_ok());
    }

    fn decl(name: &str, parameters: Value) -> ToolDecl {
        ToolDecl {
            name: name.into(),
            description: format!("{name} does things"),
            parameters,
        }
    }

    #[test]
    fn tools_are_declared_in_the_setup_and_omitted_when_none() {
        assert_eq!(tools(&[]), (None, Vec::new()));
        let (t, dropped) = tools(&[
            decl(
                "book_appointment",
                json!({"type": "object", "additionalProperties": false,
                    "properties": {"day": {"type": "string", "description": "Weekday"}},
                    "required": ["day"]}),
            ),
            decl("end_call", json!({"type": "object", "properties": {}})),
        ]);
        assert_eq!(dropped, ["additionalProperties"]);
        let t = t.unwrap();
        assert_eq!(
            t,
            json!([{"functionDeclarations": [
                {"name": "book_appointment", "description": "book_appointment does things",
                 "parameters": {"type": "OBJECT",
                    "properties": {"day": {"type": "STRING", "description": "Weekday"}},
                    "required": ["day"]}},
                {"name": "end_call", "description": "end_call does things"},
            ]}])
        );
        let mut p = params("models/m", "", Some("h"));
        p.tools = Some(&t);
        let v: Value = serde_json::from_str(&setup(&p)).unwrap();
        assert_eq!(v["setup"]["tools"], t, "kept in a resuming setup too");
        assert!(v["setup"]["generationConfig"].get("tools").is_none());
    }

    #[test]
    fn json_schema_becomes_the_openapi_subset() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {"slot": {"type": "string", "format": "date-time", "description": "A slot"}},
            "properties": {
                "when": {"$ref": "#/$defs/slot", "description": "When to book"},
                "note": {"type": ["string", "null"], "maxLength": 200},
                "party": {"type": "integer", "minimum": 1, "maximum": 8, "format": "uint8"},
                "kind": {"enum": ["visit", "call"]},
                "floor": {"enum": [1, 2]},
                "fixed": {"const": "yes"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                         "uniqueItems": true},
                "either": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                "free": {"type": "object", "properties": {}},
                "ghost": {"$ref": "#/$defs/missing"}
            },
            "required": ["when", "nope"],
            "additionalProperties": false
        });
        let mut dropped = Vec::new();
        let out = gemini_schema(&schema, &schema, &mut dropped, 0);
        let p = &out["properties"];
        assert_eq!(out["type"], "OBJECT");
        assert_eq!(
            p["when"],
            json!({"type": "STRING", "format": "date-time", "description": "When to book"})
        );
        assert_eq!(
            p["note"],
            json!({"type": "STRING", "nullable": true, "maxLength": 200})
        );
        assert_eq!(
            p["party"],
            json!({"type": "INTEGER", "minimum": 1, "maximum": 8})
        );
        assert_eq!(p["kind"], json!({"enum": ["visit", "call"]}));
        assert_eq!(p["floor"], json!({"description": "One of: 1, 2."}));
        assert_eq!(p["fixed"], json!({"enum": ["yes"]}));
        assert_eq!(
            p["tags"],
            json!({"type": "ARRAY", "items": {"type": "STRING"}, "minItems": 1})
        );
        assert_eq!(
            p["either"],
            json!({"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}]})
        );
        assert_eq!(p["free"], json!({"type": "OBJECT"}));
        assert_eq!(p["ghost"], json!({}));
        assert_eq!(out["required"], json!(["when"]), "only declared properties");
        dropped.sort();
        assert_eq!(
            dropped,
            [
                "$ref #/$defs/missing",
                "additionalProperties",
                "format \"uint8\"",
                "uniqueItems"
            ]
        );
        // Self-reference ends instead of recursing forever.
        let rec = json!({"type": "object", "properties": {"next": {"$ref": "#"}}});
        let mut dropped = Vec::new();
        let _ = gemini_schema(&rec, &rec, &mut dropped, 0);
        assert!(dropped.iter().any(|d| d.contains("too deep")));
    }

    fn result(is_error: bool, output: Value) -> ToolResult {
        ToolResult {
            id: "fc_1".into(),
            name: "book_appointment".into(),
            output,
            is_error,
            reply: true,
        }
    }

    #[test]
    fn tool_responses_carry_output_or_error() {
        let ok = result(false, json!({"booked": true, "at": "10:00"}));
        let v: Value =
            serde_json::from_str(&tool_response("models/gemini-2.5-flash", "fc_1", &ok)).unwrap();
        assert_eq!(
            v,
            json!({"toolResponse": {"functionResponses": [{"id": "fc_1",
                "name": "book_appointment", "response": {"output": {"booked": true, "at": "10:00"}}}]}})
        );
        let err = result(true, json!({"error": "the calendar is down"}));
        let v: Value =
            serde_json::from_str(&tool_response("models/gemini-2.5-flash", "", &err)).unwrap();
        assert_eq!(
            v,
            json!({"toolResponse": {"functionResponses": [{
                "name": "book_appointment", "response": {"error": "the calendar is down"}}]}})
        );
        // An error without the usual shape still says something.
        let odd = result(true, json!("boom"));
        assert_eq!(function_response(&odd), json!({"error": "boom"}));
        assert!(orphan_result_text(&err).contains("failed: the calendar is down"));
        assert!(orphan_result_text(&ok).contains(r#"returned: {"at":"10:00","booked":true}"#));
    }

    #[test]
    fn non_blocking_models_get_the_answer_when_idle() {
        let ok = result(false, json!({"booked": true}));
        let v: Value =
            serde_json::from_str(&tool_response("models/gemini-3.8-live", "fc_1", &ok)).unwrap();
        assert_eq!(
            v["toolResponse"]["functionResponses"][0]["scheduling"],
            "WHEN_IDLE"
        );
        let mut quiet = ok.clone();
        quiet.reply = false;
        let v: Value =
            serde_json::from_str(&tool_response("models/gemini-3.8-live", "fc_1", &quiet)).unwrap();
        assert_eq!(
            v["toolResponse"]["functionResponses"][0]["scheduling"],
            "SILENT"
        );
    }

    #[test]
    fn parses_tool_calls_and_cancellations() {
        let m = parse(
            r#"{"toolCall":{"functionCalls":[{"id":"fc_1","name":"t","args":{"a":1}},{"name":"u"}]}}"#,
        )
        .unwrap();
        let calls = m.tool_call.unwrap().function_calls;
        assert_eq!(
            (calls[0].id.as_str(), calls[0].name.as_str()),
            ("fc_1", "t")
        );
        assert_eq!(calls[0].args, json!({"a": 1}));
        assert_eq!((calls[1].id.as_str(), &calls[1].args), ("", &Value::Null));
        let m = parse(r#"{"toolCallCancellation":{"ids":["fc_1","fc_2"]}}"#).unwrap();
        assert_eq!(m.tool_call_cancellation.unwrap().ids, ["fc_1", "fc_2"]);
    }

    #[test]
    fn pcm_rates() {
        assert_eq!(pcm_rate("audio/pcm;rate=24000"), Some(24000));
        assert_eq!(pcm_rate("audio/pcm; rate=16000"), Some(16000));
        assert_eq!(pcm_rate("audio/pcm"), Some(24000));
        assert_eq!(pcm_rate("text/plain"), None);
    }
}
