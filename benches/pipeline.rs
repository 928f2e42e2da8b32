//! The whole per-frame work of a call, per provider, in ns per 20 ms frame.
//!
//! `benches/audio.rs` times each audio piece alone; a call pays for the JSON and base64
//! around them too, and for the tungstenite `Message`. These run the same pure functions
//! the session and the provider tasks run, in the same order, with state and buffers
//! kept across iterations as in a call (only the sockets and the channels between the
//! tasks are left out: the load test measures those).
//!
//! - inbound: a 20 ms L16 8 kHz message from FreeSWITCH → `Reframer` → `Transcoder` →
//!   the provider's audio message (base64 inside JSON) → `Message::text`.
//! - outbound: the provider's audio message carrying 20 ms (parsed by the provider's own
//!   handler) → base64 decode → `Transcoder` → `Pacer` push/pop on a synthetic 20 ms clock
//!   → the playback `Message` (binary L16 8 kHz). Real providers send larger chunks, so
//!   their per-frame JSON cost is lower than here.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use tokio_tungstenite::tungstenite::Message;
use voicebridge::audio::{g711, signal, AudioFormat, Channels, Pacer, Reframer, Transcoder};
use voicebridge::config::PlaybackMode;
use voicebridge::providers::elevenlabs::{turn as el_turn, wire as el};
use voicebridge::providers::gemini::{wire as gm, Turn as GeminiTurn};
use voicebridge::providers::openai::{self, Turns as OpenAiTurns};
use voicebridge::providers::ProviderEvent;
use voicebridge::telephony::freeswitch::Playback;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn l16(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn ulaw(samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    g711::ulaw_encode(samples, &mut out);
    out
}

/// The caller side of every inbound bench: one FreeSWITCH message → provider payload.
struct Inbound {
    reframer: Reframer,
    transcoder: Transcoder,
    wire: Vec<u8>,
    frame: Vec<u8>,
    out: Vec<u8>,
}

impl Inbound {
    fn new(to: AudioFormat) -> Inbound {
        let call = AudioFormat::l16(8000);
        let mut t = Inbound {
            reframer: Reframer::new(call, Channels::Mono),
            transcoder: Transcoder::new(call, to).expect("transcoder"),
            wire: l16(&signal::voiced_frame(8000)),
            frame: Vec::with_capacity(640),
            out: Vec::with_capacity(2048),
        };
        // Warm the resampler's state up, as in a call that has been running.
        for _ in 0..10 {
            t.step(|_| String::new());
        }
        t
    }

    /// One message in, the provider's `Message`s out (one per whole 20 ms frame).
    fn step(&mut self, encode: impl Fn(&[u8]) -> String) -> usize {
        let mut sent = 0;
        self.reframer.push(black_box(&self.wire));
        loop {
            self.frame.clear();
            if !self.reframer.pop_frame(&mut self.frame) {
                break;
            }
            self.out.clear();
            self.transcoder.process(&self.frame, &mut self.out);
            if !self.out.is_empty() {
                black_box(Message::text(encode(&self.out)));
                sent += 1;
            }
        }
        sent
    }
}

/// A provider's audio message builder.
type Encode = fn(&[u8]) -> String;

fn bench_inbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("inbound_per_20ms");
    let cases: [(&str, AudioFormat, Encode); 6] = [
        ("openai_pcmu", AudioFormat::pcmu(), openai::append_event),
        (
            "openai_pcm24",
            AudioFormat::l16(24000),
            openai::append_event,
        ),
        ("gemini_pcm16k", AudioFormat::l16(16000), gm::audio),
        ("elevenlabs_ulaw_8000", AudioFormat::pcmu(), el::audio_chunk),
        (
            "elevenlabs_pcm_16000",
            AudioFormat::l16(16000),
            el::audio_chunk,
        ),
        // The daemon's own floor: reframe + passthrough + JSON, no transcoding.
        (
            "openai_pcmu_from_pcmu_call",
            AudioFormat::pcmu(),
            openai::append_event,
        ),
    ];
    for (name, to, encode) in cases {
        let mut p = Inbound::new(to);
        if name == "openai_pcmu_from_pcmu_call" {
            let call = AudioFormat::pcmu();
            p.reframer = Reframer::new(call, Channels::Mono);
            p.transcoder = Transcoder::new(call, to).expect("passthrough");
            p.wire = ulaw(&signal::voiced_frame(8000));
        }
        g.bench_function(name, |b| b.iter(|| p.step(encode)));
    }
    g.finish();
}

/// The assistant side of every outbound bench: provider audio → FreeSWITCH `Message`.
struct Outbound {
    transcoder: Transcoder,
    pacer: Pacer,
    playback: Playback,
    converted: Vec<u8>,
    frame: Vec<u8>,
    t0: Instant,
    tick: u32,
}

impl Outbound {
    fn new(from: AudioFormat) -> Outbound {
        let call = AudioFormat::l16(8000);
        Outbound {
            transcoder: Transcoder::new(from, call).expect("transcoder"),
            pacer: Pacer::new(call, Duration::from_millis(60)),
            playback: Playback::new(PlaybackMode::Binary, call, Duration::from_millis(500)),
            converted: Vec::with_capacity(2048),
            frame: Vec::with_capacity(640),
            t0: Instant::now(),
            tick: 0,
        }
    }

    /// What the session does with each `ProviderEvent::Audio`, then one pacer tick.
    fn play(&mut self, events: &mut Vec<ProviderEvent>) -> usize {
        for ev in events.drain(..) {
            if let ProviderEvent::Audio { item, data } = ev {
                self.converted.clear();
                self.transcoder.process(&data, &mut self.converted);
                self.pacer.push(&item, &self.converted);
            }
        }
        self.tick += 1;
        // Synthetic clock: one 20 ms tick per provider frame.
        let now = self.t0 + Duration::from_millis(20) * self.tick;
        let mut n = 0;
        loop {
            self.frame.clear();
            if !self.pacer.pop_due(now, &mut self.frame) {
                break;
            }
            if let Some(msg) = self.playback.frame(&self.frame) {
                black_box(msg);
                n += 1;
            }
        }
        n
    }
}

fn openai_delta(audio: &[u8]) -> String {
    format!(
        r#"{{"type":"response.output_audio.delta","event_id":"event_00042","response_id":"resp_0001","item_id":"item_0001","output_index":0,"content_index":0,"delta":"{}"}}"#,
        B64.encode(audio)
    )
}

fn bench_outbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbound_per_20ms");

    for (name, fmt, audio) in [
        (
            "openai_pcmu",
            AudioFormat::pcmu(),
            ulaw(&signal::voiced_frame(8000)),
        ),
        (
            "openai_pcm24",
            AudioFormat::l16(24000),
            l16(&signal::voiced_frame(24000)),
        ),
    ] {
        let text = openai_delta(&audio);
        let mut turns = OpenAiTurns::new();
        let mut out = Outbound::new(fmt);
        let mut events = Vec::with_capacity(4);
        g.bench_function(name, |b| {
            b.iter(|| {
                let _ = turns.on_text(black_box(&text), &mut events);
                out.play(&mut events)
            })
        });
    }

    {
        let audio = l16(&signal::voiced_frame(24000));
        let text = format!(
            r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{}"}}}}]}}}}}}"#,
            B64.encode(&audio)
        );
        let mut turn = GeminiTurn::default();
        let mut out = Outbound::new(AudioFormat::l16(24000));
        let mut events = Vec::with_capacity(4);
        g.bench_function("gemini_pcm24k", |b| {
            b.iter(|| {
                if let Ok(msg) = gm::parse(black_box(&text)) {
                    turn.on_content(
                        msg.usage_metadata,
                        msg.server_content,
                        std::time::Instant::now(),
                        &mut events,
                    );
                }
                out.play(&mut events)
            })
        });
    }

    for (name, fmt, audio) in [
        (
            "elevenlabs_ulaw_8000",
            AudioFormat::pcmu(),
            ulaw(&signal::voiced_frame(8000)),
        ),
        (
            "elevenlabs_pcm_16000",
            AudioFormat::l16(16000),
            l16(&signal::voiced_frame(16000)),
        ),
    ] {
        let text = format!(
            r#"{{"type":"audio","audio_event":{{"audio_base_64":"{}","event_id":7}}}}"#,
            B64.encode(&audio)
        );
        let mut turns = el_turn::Turns::new(Duration::ZERO);
        let mut out = Outbound::new(fmt);
        let mut events = Vec::with_capacity(4);
        g.bench_function(name, |b| {
            b.iter(|| {
                // What the ElevenLabs connection does with an `audio` event.
                if let Ok(el::ServerEvent::Audio {
                    event_id,
                    audio_base_64,
                }) = el::parse(black_box(&text))
                {
                    if let el_turn::AudioVerdict::Play(item) =
                        turns.on_audio(event_id, std::time::Instant::now())
                    {
                        if let Ok(mut data) = B64.decode(audio_base_64.as_bytes()) {
                            data.truncate(data.len() - data.len() % fmt.bytes_per_sample());
                            events.push(ProviderEvent::Audio {
                                item,
                                data: data.into(),
                            });
                        }
                    }
                }
                out.play(&mut events)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_inbound, bench_outbound);
criterion_main!(benches);
