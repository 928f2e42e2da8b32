//! End to end on the AudioSocket side with the ElevenLabs agent mock
//! (`common::mock_elevenlabs`) and the fake Asterisk at 16 kHz (`c(slin16)`): caller
//! audio straight through to `pcm_16000`, the agent's `pcm_24000` down to 16 kHz, and a
//! barge-in after which the interrupted response's late audio never reaches Asterisk.

mod common;

use std::net::SocketAddr;

use common::daemon::{field, message, Daemon};
use common::fake_audiosocket::Asterisk;
use common::mock_elevenlabs::{Cmd, MockEleven, MockOptions};
use voicebridge::audio::signal::{snr_db_within, speech_like, sweep};

const AGENT: &str = "agent_mock_7f3a";
const RATE: u32 = 16000;

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
async fn elevenlabs_both_ways_and_a_barge_in_over_audiosocket() {
    let mut opts = MockOptions::new(AGENT);
    opts.input_format = "pcm_16000";
    opts.output_format = "pcm_24000";
    let mock = MockEleven::start(opts).await;
    let url = mock.ws_url();
    let endpoint = mock.signed_url_endpoint();
    let toml = format!(
        "[call]\nprovider = \"elevenlabs\"\n[providers.elevenlabs]\nagent_id = \"{AGENT}\"\n\
         [[audiosocket]]\nlisten = \"127.0.0.1:0\"\nroute = \"call\"\n"
    );
    let d = Daemon::start(
        &toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__ELEVENLABS__URL", url.as_str()),
            (
                "VOICEBRIDGE__PROVIDERS__ELEVENLABS__SIGNED_URL_ENDPOINT",
                endpoint.as_str(),
            ),
        ],
    )
    .await;
    let addr = audiosocket_addr(&d).await;
    let uuid = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
    let mut ast = Asterisk::call(addr, uuid).await;
    let mut speech = sweep(RATE, 300.0, 3400.0, -12.0, RATE as usize / 2);
    speech.extend(speech_like(RATE, 1.5, 5));
    ast.send_paced(&speech, RATE).await;
    let frames = speech.len() / 320;
    mock.wait("caller audio", |s| s.caller.len() >= (frames - 2) * 320)
        .await;

    let watch = ast.watch();
    let talker = tokio::spawn(async move {
        ast.send_paced(&vec![0i16; RATE as usize * 4], RATE).await;
        ast
    });
    let base = watch.frames();
    mock.send(Cmd::Respond {
        transcript: None,
        secs: 4.0,
    });
    watch.wait_frames(base + 25).await;
    mock.send(Cmd::BargeIn);
    d.wait_log(|l| message(l) == "barge-in: playback flushed")
        .await;
    mock.send(Cmd::Respond {
        transcript: Some("no, the other one".into()),
        secs: 1.0,
    });
    mock.wait("response K+1 sent", |s| s.responses.len() == 2)
        .await;
    let before = watch.frames();
    // The 1 s answer at 16 kHz is 50 frames.
    watch.wait_frames(before + 49).await;
    let ast = talker.await.unwrap();
    let heard = ast.hang_up().await;
    let summary = d.wait_call_end(uuid).await;

    let errors = mock.recorded(|s| s.errors.clone());
    assert!(errors.is_empty(), "mock validation failures: {errors:#?}");
    assert!(heard.bad.is_empty(), "{:?}", heard.bad);
    assert!(heard.frames.iter().all(|(_, kind, _)| *kind == 0x12));

    // Upstream: 16 kHz straight to pcm_16000.
    let caller = mock.recorded(|s| s.caller.clone());
    let up = snr_db_within(&speech, &caller, 160);
    // The cut, then only the next response (its sound, not the interrupted one's).
    let fade = heard
        .frames
        .iter()
        .position(|(_, _, s)| s.len() < RATE as usize / 50)
        .expect("the fade-out after the cut");
    assert_eq!(heard.frames[fade].2.len(), RATE as usize / 200);
    let next_at = mock
        .recorded(|s| s.responses[1].first_at)
        .expect("second response sent");
    let leaked = heard.frames[fade + 1..]
        .iter()
        .filter(|(at, _, s)| *at < next_at && s.iter().any(|v| *v != 0))
        .count();
    assert_eq!(leaked, 0, "audio of the interrupted response after the cut");
    let after: Vec<i16> = heard.frames[fade + 1..]
        .iter()
        .filter(|(at, _, _)| *at >= next_at)
        .flat_map(|(_, _, s)| s.iter().copied())
        .collect();
    // The mock's response is speech_like at 24 kHz; the same waveform at 16 kHz.
    let event_id = mock.recorded(|s| s.responses[1].event_id);
    let reference = speech_like(RATE, 1.0, 100 + event_id as u64);
    let n = after.len().min(reference.len());
    let down = snr_db_within(&reference[..n], &after[..n], 320);
    println!("SNR Asterisk→ElevenLabs {up:.1} dB, ElevenLabs→Asterisk {down:.1} dB");
    assert!(up > 60.0, "upstream SNR {up:.1} dB (no resampling)");
    assert!(down > 30.0, "downstream SNR {down:.1} dB");
    assert_eq!(field(&summary, "barge_ins"), 1);
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    d.stop().await;
}
