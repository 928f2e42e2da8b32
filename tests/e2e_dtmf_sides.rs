//! DTMF from every PBX side reaches every provider in the provider's own protocol: the
//! caller's keys 4, 2, # as Asterisk chan_websocket `DTMF_END` (the fake Asterisk
//! WebSocket channel), AudioSocket kind `0x03` (the fake AudioSocket Asterisk) and
//! Twilio Media Streams `dtmf` (the fake carrier) → the real `voicebridge` binary →
//! the provider mock, which records what it was told: OpenAI a user `input_text` item
//! and one `response.create`, Gemini a user text turn, ElevenLabs a `user_message`.
//! (`e2e_dtmf_providers.rs` does the same for FreeSWITCH.) Every side × provider pair
//! is one test; everything is awaited on what the fakes and mocks record, never on
//! sleeps.

mod common;

use std::net::SocketAddr;

use common::daemon::{field, message, Daemon};
use common::fake_asterisk_ws::{dial, AsteriskOptions, FakeAsterisk};
use common::fake_audiosocket::Asterisk;
use common::fake_twilio::{FakeTwilio, TwilioOptions};
use common::mock_elevenlabs::MockEleven;
use common::mock_gemini::MockGemini;
use common::mock_openai::MockOpenAi;
use serde_json::Value;

const OPENAI_KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";
const GEMINI_KEY: &str = "fake-gemini-test-key-0123456789";
const AGENT: &str = "agent_mock_7f3a";
/// What the model is told for the keys 4, 2, # (one group: '#' ends it).
const TOLD: &str = "[The caller pressed keys on the phone keypad: 4 2 #]";
const KEYS: [char; 3] = ['4', '2', '#'];
const CHANNEL_ID: &str = "1733240000.17";

#[derive(Clone, Copy)]
enum Side {
    AsteriskWs,
    AudioSocket,
    Twilio,
}

#[derive(Clone, Copy)]
enum Provider {
    OpenAi,
    Gemini,
    Eleven,
}

enum Mock {
    OpenAi(MockOpenAi),
    Gemini(MockGemini),
    Eleven(MockEleven),
}

enum Pbx {
    AsteriskWs(FakeAsterisk),
    AudioSocket(Asterisk),
    Twilio(FakeTwilio),
}

impl Mock {
    /// Starts the mock; returns it with the config section and environment for it.
    async fn start(p: Provider) -> (Mock, String, Vec<(&'static str, String)>) {
        match p {
            Provider::OpenAi => {
                use common::mock_openai::{MockFormat, MockOptions};
                let m = MockOpenAi::start(MockOptions::new(MockFormat::Pcm24, OPENAI_KEY)).await;
                let env = vec![
                    ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", m.url()),
                    ("OPENAI_API_KEY", OPENAI_KEY.to_owned()),
                ];
                (
                    Mock::OpenAi(m),
                    "provider = \"openai\"\n[providers.openai]\naudio_format = \"pcm24\"\n"
                        .to_owned(),
                    env,
                )
            }
            Provider::Gemini => {
                use common::mock_gemini::MockOptions;
                let mut opts = MockOptions::new(GEMINI_KEY);
                opts.voice = "Puck".to_owned();
                let m = MockGemini::start(opts).await;
                let env = vec![
                    ("VOICEBRIDGE__PROVIDERS__GEMINI__URL", m.url()),
                    ("GEMINI_API_KEY", GEMINI_KEY.to_owned()),
                ];
                (
                    Mock::Gemini(m),
                    "provider = \"gemini\"\n[providers.gemini]\n\
                     model = \"models/gemini-2.5-flash-native-audio-preview-12-2025\"\n\
                     voice = \"Puck\"\n"
                        .to_owned(),
                    env,
                )
            }
            Provider::Eleven => {
                use common::mock_elevenlabs::MockOptions;
                let m = MockEleven::start(MockOptions::new(AGENT)).await;
                // A public agent: no key, no signed URL.
                let env = vec![("VOICEBRIDGE__PROVIDERS__ELEVENLABS__URL", m.ws_url())];
                (
                    Mock::Eleven(m),
                    format!("provider = \"elevenlabs\"\n[providers.elevenlabs]\nagent_id = \"{AGENT}\"\n"),
                    env,
                )
            }
        }
    }

    /// Waits until the provider session is up (the keys are pressed after it).
    async fn wait_ready(&self) {
        match self {
            Mock::OpenAi(m) => m.wait("session.updated", |s| s.session_updated_sent).await,
            Mock::Gemini(m) => m.wait_ready(1).await,
            Mock::Eleven(m) => m.wait("the conversation", |s| s.init.is_some()).await,
        }
    }

    /// Waits until the keys have reached the provider.
    async fn wait_told(&self) {
        match self {
            Mock::OpenAi(m) => {
                m.wait("the answer to the keys", |s| {
                    s.client_types().iter().any(|t| t == "response.create")
                })
                .await
            }
            Mock::Gemini(m) => {
                m.wait("the keys' text turn", |l| {
                    l.conns.first().is_some_and(|c| !c.greetings.is_empty())
                })
                .await
            }
            Mock::Eleven(m) => {
                m.wait("the keys' user_message", |s| !s.user_messages.is_empty())
                    .await
            }
        }
    }

    /// Checks, after the call, that the provider was told exactly once, in its format.
    fn assert_told(&self, side: &str) {
        match self {
            Mock::OpenAi(m) => {
                let events: Vec<Value> = m.with(|s| s.client_events.clone());
                let items: Vec<&Value> = events
                    .iter()
                    .filter(|v| v["type"] == "conversation.item.create")
                    .collect();
                assert_eq!(items.len(), 1, "{side}: one item: {items:#?}");
                let v = items[0];
                assert_eq!(v["item"]["type"], "message", "{side}");
                assert_eq!(v["item"]["role"], "user", "{side}");
                assert_eq!(v["item"]["content"][0]["type"], "input_text", "{side}");
                assert_eq!(v["item"]["content"][0]["text"], TOLD, "{side}");
                let item = events
                    .iter()
                    .position(|v| v["type"] == "conversation.item.create");
                let reply = events.iter().position(|v| v["type"] == "response.create");
                assert!(
                    reply > item,
                    "{side}: the answer is asked for after the item"
                );
                let creates = events
                    .iter()
                    .filter(|v| v["type"] == "response.create")
                    .count();
                assert_eq!(creates, 1, "{side}: one response.create");
                let problems = m.with(|s| s.problems.clone());
                assert!(problems.is_empty(), "{side}: {problems:#?}");
            }
            Mock::Gemini(m) => {
                let (turns, violations) =
                    m.log(|l| (l.conns[0].greetings.clone(), l.violations.clone()));
                assert_eq!(turns.len(), 1, "{side}: one text turn: {turns:#?}");
                let turn = &turns[0];
                // A 2.x model: a clientContent user turn, complete.
                assert_eq!(turn["clientContent"]["turns"][0]["role"], "user", "{side}");
                assert_eq!(
                    turn["clientContent"]["turns"][0]["parts"][0]["text"], TOLD,
                    "{side}"
                );
                assert_eq!(turn["clientContent"]["turnComplete"], true, "{side}");
                assert!(violations.is_empty(), "{side}: {violations:#?}");
            }
            Mock::Eleven(m) => {
                let (messages, errors) =
                    m.recorded(|s| (s.user_messages.clone(), s.errors.clone()));
                assert_eq!(messages, [TOLD], "{side}");
                assert!(errors.is_empty(), "{side}: {errors:#?}");
            }
        }
    }
}

fn side_config(side: Side) -> &'static str {
    match side {
        Side::AudioSocket => "[[audiosocket]]\nlisten = \"127.0.0.1:0\"\nroute = \"call\"\n",
        Side::AsteriskWs | Side::Twilio => "",
    }
}

async fn audiosocket_addr(d: &Daemon) -> SocketAddr {
    let line = d
        .wait_log(|l| message(l).starts_with("AudioSocket listening"))
        .await;
    field(&line, "listen")
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("AudioSocket address in the log")
}

impl Pbx {
    async fn call(side: Side, d: &Daemon) -> Pbx {
        match side {
            Side::AsteriskWs => {
                let opts = AsteriskOptions::new("/asterisk/call/dtmf-ast-ws", "ulaw");
                Pbx::AsteriskWs(dial(d.addr, opts).await.expect("upgrade accepted"))
            }
            Side::AudioSocket => {
                let addr = audiosocket_addr(d).await;
                Pbx::AudioSocket(Asterisk::call(addr, "4a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d").await)
            }
            Side::Twilio => Pbx::Twilio(
                FakeTwilio::connect(d.addr, TwilioOptions::twilio("call"))
                    .await
                    .expect("stream accepted"),
            ),
        }
    }

    /// The caller presses 4, 2, # in the side's own wire format.
    async fn press(&mut self) {
        for digit in KEYS {
            match self {
                Pbx::AsteriskWs(f) => f.dtmf(digit, true, CHANNEL_ID),
                Pbx::AudioSocket(a) => a.dtmf(digit).await,
                Pbx::Twilio(t) => t.send_dtmf(digit),
            }
        }
    }

    async fn hang_up(self) {
        match self {
            Pbx::AsteriskWs(f) => {
                let report = f.hangup().await;
                assert!(report.error.is_none(), "{:?}", report.error);
            }
            Pbx::AudioSocket(a) => {
                let heard = a.hang_up().await;
                assert!(heard.bad.is_empty(), "{:?}", heard.bad);
            }
            Pbx::Twilio(t) => {
                let t = t.finish().await;
                let problems = t.with(|s| s.problems.clone());
                assert!(problems.is_empty(), "{problems:?}");
            }
        }
    }
}

async fn keys_reach(side: Side, provider: Provider) {
    let name = match side {
        Side::AsteriskWs => "chan_websocket DTMF_END",
        Side::AudioSocket => "AudioSocket 0x03",
        Side::Twilio => "Twilio dtmf",
    };
    let (mock, section, env) = Mock::start(provider).await;
    let toml = format!(
        "[call]\ndtmf = \"to_model\"\n{section}\n{}",
        side_config(side)
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = Daemon::start(&toml, &env).await;
    let mut pbx = Pbx::call(side, &d).await;
    mock.wait_ready().await;
    pbx.press().await;
    d.wait_log(|l| message(l) == "DTMF from the caller" && field(l, "digit") == "#")
        .await;
    mock.wait_told().await;
    pbx.hang_up().await;
    let summary = d.wait_log(|l| message(l) == "call ended").await;
    println!(
        "{name}: the provider was told {TOLD:?}; call ended ({})",
        field(&summary, "end_reason")
    );
    // Checked once the call is over: one item/turn/message, one answer asked for.
    mock.assert_told(name);
    let digits: String = d
        .logs()
        .iter()
        .filter(|l| message(l) == "DTMF from the caller")
        .map(|l| field(l, "digit").as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(digits, "42#", "{name}: the keys in order");
    let out = d.output();
    assert!(
        !out.contains(OPENAI_KEY) && !out.contains(GEMINI_KEY),
        "{name}: a provider key in the log"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_ws_dtmf_end_reaches_openai() {
    keys_reach(Side::AsteriskWs, Provider::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_ws_dtmf_end_reaches_gemini() {
    keys_reach(Side::AsteriskWs, Provider::Gemini).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_ws_dtmf_end_reaches_elevenlabs() {
    keys_reach(Side::AsteriskWs, Provider::Eleven).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiosocket_0x03_reaches_openai() {
    keys_reach(Side::AudioSocket, Provider::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiosocket_0x03_reaches_gemini() {
    keys_reach(Side::AudioSocket, Provider::Gemini).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiosocket_0x03_reaches_elevenlabs() {
    keys_reach(Side::AudioSocket, Provider::Eleven).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_dtmf_reaches_openai() {
    keys_reach(Side::Twilio, Provider::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_dtmf_reaches_gemini() {
    keys_reach(Side::Twilio, Provider::Gemini).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_dtmf_reaches_elevenlabs() {
    keys_reach(Side::Twilio, Provider::Eleven).await;
}
