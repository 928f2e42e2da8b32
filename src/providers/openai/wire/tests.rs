//! Unit tests of the OpenAI wire builders (moved from `openai.rs`).

use super::*;
use crate::config::Config;

fn setup_for(toml: &str) -> Setup {
    let config = Config::from_toml_str(toml, Vec::<(String, String)>::new()).unwrap();
    let ctx = CallContext {
        call_id: "c1".into(),
        route: "call".into(),
        vars: [("caller_id".to_owned(), "+39 02".to_owned())].into(),
    };
    Setup::new(&config.providers.openai, config.default_route(), &ctx)
}

#[test]
fn endpoint_appends_the_model() {
    let config = Config::from_toml_str("", Vec::<(String, String)>::new()).unwrap();
    assert_eq!(
        endpoint(&config.providers.openai),
        "wss://api.openai.com/v1/realtime?model=gpt-realtime-2.1"
    );
}

#[test]
fn language_is_reduced_to_iso_639_1() {
    assert_eq!(iso639_1("it-IT").as_deref(), Some("it"));
    assert_eq!(iso639_1("EN").as_deref(), Some("en"));
    assert_eq!(iso639_1("pt_BR").as_deref(), Some("pt"));
    assert_eq!(iso639_1(""), None);
    assert_eq!(iso639_1("yue-HK"), None);
}

#[test]
fn session_update_has_the_ga_shape() {
    let s = setup_for(
        r#"
[call]
instructions = "Help {{caller_id}}."
greeting = "Hello {{caller_id}}"
language = "it-IT"
voice = "cedar"
[providers.openai]
audio_format = "pcm24"
"#,
    );
    let v = s.session_update();
    assert_eq!(v["type"], "session.update");
    let session = &v["session"];
    assert_eq!(session["type"], "realtime");
    assert_eq!(session["model"], "gpt-realtime-2.1");
    assert_eq!(session["output_modalities"], json!(["audio"]));
    assert_eq!(session["instructions"], "Help +39 02.");
    assert!(session.get("temperature").is_none());
    let input = &session["audio"]["input"];
    assert_eq!(input["format"], json!({"type": "audio/pcm", "rate": 24000}));
    assert_eq!(
        input["transcription"],
        json!({"model": "gpt-4o-mini-transcribe", "language": "it"})
    );
    assert_eq!(input["turn_detection"]["type"], "server_vad");
    assert_eq!(input["turn_detection"]["interrupt_response"], true);
    assert_eq!(session["audio"]["output"]["voice"], "cedar");
    assert_eq!(
        s.greeting_event().unwrap()["response"]["instructions"],
        "Greet the caller by saying exactly: Hello +39 02"
    );
    assert_eq!(s.format.audio(), AudioFormat::l16(24000));
}

#[test]
fn no_greeting_and_no_language_when_unset() {
    let s = setup_for("");
    assert!(s.greeting_event().is_none());
    let v = s.session_update();
    assert!(v["session"]["audio"]["input"]["transcription"]
        .get("language")
        .is_none());
    assert_eq!(
        v["session"]["audio"]["output"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(v["session"]["audio"]["output"]["voice"], "marin");
}

#[test]
fn tools_are_declared_as_functions_with_auto_choice() {
    let s = setup_for(
        r#"
[call]
end_call = true
[[call.tools]]
name = "lookup_order"
description = "Find an order."
parameters = '{"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}'
url = "http://127.0.0.1:9/orders"
"#,
    );
    let v = s.session_update();
    let tools = v["session"]["tools"].as_array().unwrap();
    assert_eq!(
        tools[0],
        json!({"type": "function", "name": "lookup_order", "description": "Find an order.",
               "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                              "required": ["order_id"]}})
    );
    assert_eq!(tools[1]["type"], "function");
    assert_eq!(tools[1]["name"], "end_call");
    assert_eq!(tools[1]["parameters"]["type"], "object");
    assert_eq!(tools.len(), 2);
    assert_eq!(v["session"]["tool_choice"], "auto");

    let none = setup_for("").session_update();
    assert!(none["session"].get("tools").is_none());
    assert!(none["session"].get("tool_choice").is_none());
}

#[test]
fn a_guarded_route_keeps_the_server_from_cutting_its_reply() {
    let s = setup_for("[call]\nbarge_in_min_ms = 200\n");
    let v = s.session_update();
    let td = &v["session"]["audio"]["input"]["turn_detection"];
    assert_eq!(td["interrupt_response"], false);
    assert_eq!(td["create_response"], true);
    let s = setup_for("[call]\ngreeting = \"Hi\"\ngreeting_interruptible = false\n");
    let v = s.session_update();
    assert_eq!(
        v["session"]["audio"]["input"]["turn_detection"]["interrupt_response"],
        false
    );
}

#[test]
fn silence_reprompt_is_the_idle_timeout() {
    let v = setup_for("").session_update();
    let td = &v["session"]["audio"]["input"]["turn_detection"];
    assert!(td.get("idle_timeout_ms").is_none(), "off by default");
    let v = setup_for("[call]\nsilence_reprompt_ms = 8000\n").session_update();
    assert_eq!(
        v["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"],
        8000
    );
}
