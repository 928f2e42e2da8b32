//! DTMF reaches each provider in its own protocol: FreeSWITCH key presses (Event Socket
//! `DTMF` events, the fake ESL) → the real `voicebridge` binary → the provider mock,
//! which records what it was told: OpenAI a user `input_text` item and one
//! `response.create`, Gemini a user text turn, ElevenLabs a `user_message`.
//! Everything is awaited on what the mocks record, never on sleeps.

mod common;

use common::call::Call;
use common::daemon::Daemon;
use common::fake_esl::FakeEsl;
use serde_json::Value;

const PASSWORD: &str = "not-ClueCon-2718";
const OPENAI_KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";
const GEMINI_KEY: &str = "fake-gemini-test-key-0123456789";
const AGENT: &str = "agent_mock_7f3a";
/// What the model is told for the keys 4, 2, # (one group: '#' ends it).
const TOLD: &str = "[The caller pressed keys on the phone keypad: 4 2 #]";

fn config(esl: std::net::SocketAddr, provider: &str, section: &str) -> String {
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = 60

[freeswitch.esl]
host = "{}"
port = {}

[call]
provider = "{provider}"
dtmf = "to_model"

{section}
"#,
        esl.ip(),
        esl.port()
    )
}

async fn daemon(toml: &str, env: &[(&str, String)]) -> Daemon {
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("FREESWITCH_ESL_PASSWORD", PASSWORD));
    Daemon::start(toml, &env).await
}

async fn press_42_hash(esl: &FakeEsl, id: &str) {
    for digit in ['4', '2', '#'] {
        esl.emit_dtmf(id, digit);
    }
}

async fn call(d: &Daemon, esl: &FakeEsl, id: &str) -> Call {
    esl.wait_lines(1, |l| l.starts_with("event ")).await;
    let call = Call::connect(d, "call", id, "rate=8000&channels=mono").await;
    // The metadata, as mod_audio_stream sends it first (ElevenLabs waits for it).
    call.writer
        .send_text(&format!(
            r#"{{"uuid":"{id}","caller_id":"+3902123","called":"100"}}"#
        ))
        .await
        .unwrap();
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_gets_a_user_text_item_and_answers_it() {
    use common::mock_openai::{MockFormat, MockOpenAi, MockOptions};
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, OPENAI_KEY)).await;
    let esl = FakeEsl::start(PASSWORD).await;
    let d = daemon(
        &config(
            esl.addr,
            "openai",
            "[providers.openai]\naudio_format = \"pcmu\"",
        ),
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", mock.url()),
            ("OPENAI_API_KEY", OPENAI_KEY.to_owned()),
        ],
    )
    .await;
    let id = "dtmf-openai-1";
    let call = call(&d, &esl, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    press_42_hash(&esl, id).await;
    mock.wait("the answer to the keys", |s| {
        s.client_types().iter().any(|t| t == "response.create")
    })
    .await;
    let events: Vec<Value> = mock.with(|s| s.client_events.clone());
    let item = events
        .iter()
        .position(|v| v["type"] == "conversation.item.create")
        .expect("a conversation.item.create");
    let v = &events[item];
    assert_eq!(v["item"]["type"], "message");
    assert_eq!(v["item"]["role"], "user");
    assert_eq!(v["item"]["content"][0]["type"], "input_text");
    assert_eq!(v["item"]["content"][0]["text"], TOLD);
    let reply = events
        .iter()
        .position(|v| v["type"] == "response.create")
        .unwrap();
    assert!(reply > item, "the answer is asked for after the item");
    assert_eq!(
        events
            .iter()
            .filter(|v| v["type"] == "response.create")
            .count(),
        1
    );
    let problems = mock.with(|s| s.problems.clone());
    assert!(problems.is_empty(), "{problems:#?}");
    call.close().await;
    d.wait_call_end(id).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_gets_a_user_text_turn() {
    use common::mock_gemini::{MockGemini, MockOptions};
    let mut opts = MockOptions::new(GEMINI_KEY);
    opts.voice = "Puck".to_owned();
    let mock = MockGemini::start(opts).await;
    let esl = FakeEsl::start(PASSWORD).await;
    let d = daemon(
        &config(
            esl.addr,
            "gemini",
            "[providers.gemini]\nmodel = \"models/gemini-2.5-flash-native-audio-preview-12-2025\"\nvoice = \"Puck\"",
        ),
        &[
            ("VOICEBRIDGE__PROVIDERS__GEMINI__URL", mock.url()),
            ("GEMINI_API_KEY", GEMINI_KEY.to_owned()),
        ],
    )
    .await;
    let id = "dtmf-gemini-1";
    let call = call(&d, &esl, id).await;
    mock.wait_ready(1).await;
    press_42_hash(&esl, id).await;
    mock.wait("the keys' text turn", |l| {
        l.conns.first().is_some_and(|c| !c.greetings.is_empty())
    })
    .await;
    let (turn, violations) = mock.log(|l| (l.conns[0].greetings[0].clone(), l.violations.clone()));
    // A 2.x model: a clientContent user turn, complete.
    assert_eq!(turn["clientContent"]["turns"][0]["role"], "user");
    assert_eq!(turn["clientContent"]["turns"][0]["parts"][0]["text"], TOLD);
    assert_eq!(turn["clientContent"]["turnComplete"], true);
    assert!(violations.is_empty(), "{violations:#?}");
    call.close().await;
    d.wait_call_end(id).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_gets_a_user_message() {
    use common::mock_elevenlabs::{MockEleven, MockOptions};
    let mock = MockEleven::start(MockOptions::new(AGENT)).await;
    let esl = FakeEsl::start(PASSWORD).await;
    let d = daemon(
        &config(
            esl.addr,
            "elevenlabs",
            &format!("[providers.elevenlabs]\nagent_id = \"{AGENT}\""),
        ),
        &[
            // A public agent: no key, no signed URL.
            ("VOICEBRIDGE__PROVIDERS__ELEVENLABS__URL", mock.ws_url()),
        ],
    )
    .await;
    let id = "dtmf-eleven-1";
    let call = call(&d, &esl, id).await;
    mock.wait("the conversation", |s| s.init.is_some()).await;
    press_42_hash(&esl, id).await;
    mock.wait("the keys' user_message", |s| !s.user_messages.is_empty())
        .await;
    let (messages, errors) = mock.recorded(|s| (s.user_messages.clone(), s.errors.clone()));
    assert_eq!(messages, [TOLD]);
    assert!(errors.is_empty(), "{errors:#?}");
    call.close().await;
    d.wait_call_end(id).await;
    d.stop().await;
}
