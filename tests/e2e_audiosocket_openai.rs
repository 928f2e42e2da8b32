//! End to end on the AudioSocket side with the OpenAI Realtime mock (faithful to the
//! GA protocol, `common::mock_openai`) and the fake Asterisk (`common::fake_audiosocket`):
//! audio both ways at 16 kHz, a barge-in whose truncate matches what Asterisk played,
//! nothing of the cut reply after the cut, and DTMF counted on its way to the model.

mod common;

use std::net::SocketAddr;

use common::daemon::{call_id, field, message, Daemon};
use common::fake_audiosocket::Asterisk;
use common::http;
use common::mock_openai::{MockFormat, MockOpenAi, MockOptions, Script};
use voicebridge::audio::signal::{snr_db_within, speech_like};

const KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";
const RATE: u32 = 16000;

fn config() -> String {
    r#"
[call]
provider = "openai"
instructions = "You answer the phone for ACME."
dtmf_group_ms = 200

[providers.openai]
model = "gpt-realtime"
voice = "marin"
audio_format = "pcm24"

[[audiosocket]]
listen = "127.0.0.1:0"
route = "call"
"#
    .to_owned()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_barge_in_truncates_what_asterisk_played() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcm24, KEY)).await;
    let url = mock.url();
    let d = Daemon::start(
        &config(),
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.as_str()),
            ("OPENAI_API_KEY", KEY),
        ],
    )
    .await;
    let addr = audiosocket_addr(&d).await;
    let uuid = "6b0e2a64-0b7c-4c2e-9d3a-0a1b2c3d4e5f";
    let mut ast = Asterisk::call(addr, uuid).await;
    let watch = ast.watch();
    let caller = speech_like(RATE, 4.0, 12);
    let to_send = caller.clone();
    let sender = tokio::spawn(async move {
        ast.send_paced(&to_send, RATE).await;
        for digit in ['1', '2', '#'] {
            ast.dtmf(digit).await;
        }
        ast.send_paced(&vec![0i16; RATE as usize / 2], RATE).await;
        ast
    });

    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    // Frames before the reply are voicebridge's keep-alive silence.
    let base = watch.frames();
    mock.script(Script::Respond { ms: 6000, seed: 33 });
    watch.wait_frames(base + 15).await;
    mock.script(Script::BargeIn);
    mock.wait("truncate", |s| !s.truncates.is_empty()).await;
    let at_truncate = watch.frames();
    mock.script(Script::Respond { ms: 500, seed: 44 });
    mock.wait("second response done", |s| {
        s.responses.len() == 2 && s.responses[1].status == "completed"
    })
    .await;
    // The 500 ms reply is 25 frames; the fade-out is one more message.
    watch.wait_frames(at_truncate + 25).await;
    let ast = sender.await.unwrap();
    let caller24 = speech_like(24000, 4.0, 12);
    mock.wait("caller audio", |s| {
        s.caller_bytes.len() >= (caller24.len() - 480) * 2
    })
    .await;
    let heard = ast.hang_up().await;
    let problems = mock.with(|s| s.problems.clone());
    assert!(
        problems.is_empty(),
        "the mock found problems: {problems:#?}"
    );
    assert!(heard.bad.is_empty(), "{:?}", heard.bad);

    let (truncates, responses, caller_bytes) = mock.with(|s| {
        (
            s.truncates.clone(),
            s.responses.clone(),
            s.caller_bytes.clone(),
        )
    });
    assert_eq!(responses[0].status, "cancelled");
    // The cut: a 5 ms fade-out message, then nothing until the next response.
    let fade = heard
        .frames
        .iter()
        .position(|(_, _, s)| s.len() < RATE as usize / 50)
        .expect("the fade-out after the cut");
    assert_eq!(heard.frames[fade].2.len(), RATE as usize / 200);
    let fade_at = heard.frames[fade].0;
    let second_first_delta = responses[1].first_delta_at.unwrap();
    let late = heard
        .frames
        .iter()
        .filter(|(at, _, s)| *at > fade_at && *at < second_first_delta && s.iter().any(|v| *v != 0))
        .count();
    assert_eq!(late, 0, "audio of the cut reply after the cut");
    // Asterisk played every frame the moment it came: the truncate is what it heard.
    // Silence frames before the reply are voicebridge's keep-alive.
    let first_delta = responses[0].first_delta_at.unwrap();
    let start = heard
        .frames
        .iter()
        .position(|(at, _, _)| *at >= first_delta)
        .expect("the reply was heard");
    let before: Vec<i16> = heard.frames[start..fade]
        .iter()
        .flat_map(|(_, _, s)| s.iter().copied())
        .collect();
    let played_ms = heard.played_ms_at(start..fade, fade_at, RATE).round() as u64;
    assert_eq!(truncates.len(), 1);
    let (truncate, generated_ms) = &truncates[0];
    assert_eq!(truncate["item_id"], responses[0].item_id.as_str());
    let end_ms = truncate["audio_end_ms"].as_u64().unwrap();
    println!("truncate: audio_end_ms {end_ms}, Asterisk played {played_ms} ms, generated {generated_ms} ms");
    assert!(end_ms <= *generated_ms);
    assert!(
        end_ms.abs_diff(played_ms) <= 20,
        "audio_end_ms {end_ms} vs {played_ms} ms played"
    );

    // Fidelity both ways through the 16 kHz <-> 24 kHz resamplers.
    let ref1 = speech_like(RATE, 6.0, 33);
    let snr1 = snr_db_within(&ref1[..before.len()], &before, 160);
    let after: Vec<i16> = heard.frames[fade + 1..]
        .iter()
        .filter(|(at, _, _)| *at >= second_first_delta)
        .flat_map(|(_, _, s)| s.iter().copied())
        .collect();
    let ref2 = speech_like(RATE, 0.5, 44);
    let n = after.len().min(ref2.len());
    let snr2 = snr_db_within(&ref2[..n], &after[..n], 160);
    let up: Vec<i16> = caller_bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let snr_up = snr_db_within(&caller24, &up, 240);
    println!("SNR OpenAI -> Asterisk: interrupted {snr1:.1} dB, next {snr2:.1} dB; Asterisk -> OpenAI {snr_up:.1} dB");
    assert!(snr1 > 30.0 && snr2 > 30.0 && snr_up > 30.0);

    let summary = d.wait_call_end(uuid).await;
    assert_eq!(field(&summary, "barge_ins"), 1);
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    // The keys went to the model as one group.
    let dtmf = d
        .wait_log(|l| call_id(l) == Some(uuid) && message(l).contains("DTMF"))
        .await;
    println!("DTMF line: {}", message(&dtmf));
    let (_, body) = http::get(d.admin, "/metrics").await;
    assert_eq!(
        http::metric(
            &body,
            r#"voicebridge_dtmf_keys_total{route="call",mode="to_model"}"#
        ),
        Some(3.0),
        "{body}"
    );
    d.stop().await;
}
