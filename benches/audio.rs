//! Cost of every audio conversion path, per 20 ms frame, in steady state.
//!
//! A call runs these once per frame and direction, so ns/frame times frames/s tells how
//! many calls one core can carry. Stateful pieces are built once and warmed up, buffers
//! are reused, as in the session.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use voicebridge::audio::{
    g711, pcm, signal, AudioFormat, Channels, ItemId, Pacer, Reframer, Resampler, Transcoder,
};

fn bench_g711(c: &mut Criterion) {
    let lin = signal::voiced_frame(8000);
    let mut ulaw = Vec::new();
    g711::ulaw_encode(&lin, &mut ulaw);
    let mut alaw = Vec::new();
    g711::alaw_encode(&lin, &mut alaw);
    let mut g = c.benchmark_group("g711");
    let mut bytes = Vec::with_capacity(1024);
    let mut samples = Vec::with_capacity(1024);
    g.bench_function("ulaw_encode", |b| {
        b.iter(|| {
            bytes.clear();
            g711::ulaw_encode(black_box(&lin), &mut bytes);
        })
    });
    // The per-sample arithmetic encoder underneath, to show what the table buys.
    g.bench_function("ulaw_encode_per_sample_crate", |b| {
        b.iter(|| {
            bytes.clear();
            bytes.extend(
                black_box(&lin)
                    .iter()
                    .map(|&s| audio_codec_algorithms::encode_ulaw(s)),
            );
        })
    });
    g.bench_function("ulaw_decode", |b| {
        b.iter(|| {
            samples.clear();
            g711::ulaw_decode(black_box(&ulaw), &mut samples);
        })
    });
    g.bench_function("alaw_encode", |b| {
        b.iter(|| {
            bytes.clear();
            g711::alaw_encode(black_box(&lin), &mut bytes);
        })
    });
    g.bench_function("alaw_encode_per_sample_crate", |b| {
        b.iter(|| {
            bytes.clear();
            bytes.extend(
                black_box(&lin)
                    .iter()
                    .map(|&s| audio_codec_algorithms::encode_alaw(s)),
            );
        })
    });
    g.bench_function("alaw_decode", |b| {
        b.iter(|| {
            samples.clear();
            g711::alaw_decode(black_box(&alaw), &mut samples);
        })
    });
    g.bench_function("ulaw_to_alaw", |b| {
        b.iter(|| {
            bytes.clear();
            g711::ulaw_to_alaw(black_box(&ulaw), &mut bytes);
        })
    });
    g.bench_function("alaw_to_ulaw", |b| {
        b.iter(|| {
            bytes.clear();
            g711::alaw_to_ulaw(black_box(&alaw), &mut bytes);
        })
    });
    let mut l16 = Vec::new();
    pcm::samples_to_l16(&lin, &mut l16);
    g.bench_function("l16_to_samples", |b| {
        b.iter(|| {
            samples.clear();
            pcm::l16_to_samples(black_box(&l16), &mut samples);
        })
    });
    g.finish();
}

fn bench_resample(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample");
    for (from, to) in [
        (8000, 16000),
        (8000, 24000),
        (16000, 8000),
        (24000, 8000),
        (16000, 24000),
        (24000, 16000),
    ] {
        let input = signal::voiced_frame(from);
        let mut r = Resampler::new(from, to).expect("supported pair");
        let mut out = Vec::with_capacity(4096);
        for _ in 0..10 {
            out.clear();
            r.process(&input, &mut out);
        }
        g.bench_function(format!("{}k_to_{}k", from / 1000, to / 1000), |b| {
            b.iter(|| {
                out.clear();
                r.process(black_box(&input), &mut out);
            })
        });
    }
    g.finish();
}

fn bench_transcode(c: &mut Criterion) {
    let mut g = c.benchmark_group("transcode");
    let cases = [
        (
            "L16_8k_to_L16_24k",
            AudioFormat::l16(8000),
            AudioFormat::l16(24000),
        ),
        (
            "PCMU_to_L16_24k",
            AudioFormat::pcmu(),
            AudioFormat::l16(24000),
        ),
        (
            "L16_24k_to_L16_8k",
            AudioFormat::l16(24000),
            AudioFormat::l16(8000),
        ),
        (
            "L16_24k_to_PCMU",
            AudioFormat::l16(24000),
            AudioFormat::pcmu(),
        ),
        (
            "PCMU_to_PCMU_passthrough",
            AudioFormat::pcmu(),
            AudioFormat::pcmu(),
        ),
        (
            "L16_8k_to_PCMU",
            AudioFormat::l16(8000),
            AudioFormat::pcmu(),
        ),
        ("PCMU_to_PCMA", AudioFormat::pcmu(), AudioFormat::pcma()),
    ];
    for (name, from, to) in cases {
        let lin = signal::voiced_frame(from.rate);
        let mut t = Transcoder::new(from, to).expect("supported pair");
        let mut input = Vec::new();
        // Any path from L16 at this rate into `from` gives a frame in the input format.
        Transcoder::new(AudioFormat::l16(from.rate), from)
            .expect("supported pair")
            .process(
                &{
                    let mut b = Vec::new();
                    pcm::samples_to_l16(&lin, &mut b);
                    b
                },
                &mut input,
            );
        let mut out = Vec::with_capacity(4096);
        for _ in 0..10 {
            out.clear();
            t.process(&input, &mut out);
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                t.process(black_box(&input), &mut out);
            })
        });
    }
    g.finish();
}

fn bench_frame_and_pacer(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    let fmt = AudioFormat::l16(8000);
    let mut wire = Vec::new();
    pcm::samples_to_l16(&signal::voiced_frame(8000), &mut wire);
    let mut rf = Reframer::new(fmt, Channels::Mono);
    let mut out = Vec::with_capacity(1024);
    g.bench_function("reframer_push_pop_L16_8k", |b| {
        b.iter(|| {
            rf.push(black_box(&wire));
            out.clear();
            while rf.pop_frame(&mut out) {}
        })
    });
    let stereo: Vec<u8> = wire.chunks(2).flat_map(|s| [s[0], s[1], 0, 0]).collect();
    let mut rs = Reframer::new(fmt, Channels::Stereo);
    g.bench_function("reframer_push_pop_L16_8k_stereo", |b| {
        b.iter(|| {
            rs.push(black_box(&stereo));
            out.clear();
            while rs.pop_frame(&mut out) {}
        })
    });
    let mut p = Pacer::new(fmt, Duration::from_millis(60));
    let item: ItemId = Arc::from("item_bench");
    let t0 = Instant::now();
    let mut tick = 0u32;
    g.bench_function("pacer_push_pop_L16_8k", |b| {
        b.iter(|| {
            p.push(&item, black_box(&wire));
            tick += 1;
            out.clear();
            // Synthetic clock: one frame per 20 ms tick.
            let now = t0 + Duration::from_millis(20) * tick;
            while p.pop_due(now, &mut out) {}
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_g711,
    bench_resample,
    bench_transcode,
    bench_frame_and_pacer
);
criterion_main!(benches);
