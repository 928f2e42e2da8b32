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
use serde_json::json;

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
            "activityHandling": "START_OF_ACTIVITY_INTERRUPTS",
        },
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
        "sessionResumption": resumption,
        "contextWindowCompression": {"slidingWindow": {}},
    });
    if !p.instructions.is_empty() {
        setup["systemInstruction"] = json!({"parts": [{"text": p.instructions}]});
    }
    json!({ "setup": setup }).to_string()
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
    pub tool_call: Option<serde::de::IgnoredAny>,
    pub tool_call_cancellation: Option<serde::de::IgnoredAny>,
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

    #[test]
    fn pcm_rates() {
        assert_eq!(pcm_rate("audio/pcm;rate=24000"), Some(24000));
        assert_eq!(pcm_rate("audio/pcm; rate=16000"), Some(16000));
        assert_eq!(pcm_rate("audio/pcm"), Some(24000));
        assert_eq!(pcm_rate("text/plain"), None);
    }
}
