//! What the business features cost per call, off the audio path: building and
//! serialising a call's record, signing a webhook body, turning a lookup answer into
//! template variables, and how many records per second the file sink writes.
//!
//! The record is that of a busy 10-minute call: 40 turns each way with transcripts, 6
//! tool calls.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use voicebridge::call_record::{Ending, RecordBuilder};
use voicebridge::config::RecordsConfig;
use voicebridge::providers::{Speaker, Usage};
use voicebridge::records::Records;
use voicebridge::tools::vars_from_json;
use voicebridge::webhook::signature;

fn busy_call() -> RecordBuilder {
    let t0 = Instant::now();
    let mut r = RecordBuilder::new(t0, true);
    for turn in 0..40u64 {
        let at = t0 + Duration::from_millis(turn * 15_000);
        r.transcript(
            Speaker::Caller,
            "I would like to move my appointment to next Tuesday, in the morning if possible.",
            at,
        );
        r.caller_turn_ended(at + Duration::from_millis(100));
        r.audio_played(at + Duration::from_millis(700));
        r.transcript(
            Speaker::Assistant,
            "Of course. I have Tuesday at nine or at half past ten; which one suits you best?",
            at + Duration::from_millis(700),
        );
        r.assistant_turn_done();
        if turn % 7 == 0 {
            let id = format!("call_{turn}");
            r.tool_started(
                &id,
                "book_appointment",
                &json!({"day": "2026-11-24", "time": "09:00"}),
                at,
            );
            r.tool_finished(&id, "ok", Duration::from_millis(180), None);
        }
    }
    r
}

fn ending() -> Ending<'static> {
    Ending {
        call_id: "0d6f5c8e-1f7b-4c11-9f6e-2b1a3f7d9c20",
        route: "reception",
        provider: "openai",
        caller_id: "+390212345678",
        called: "100",
        end_reason: "assistant_hangup",
        end_detail: "the assistant ended the call".into(),
        ended_by: "assistant",
        usage: Usage {
            input_tokens: 41_000,
            output_tokens: 23_000,
        },
        cost: 2.78,
        currency: "USD",
        audio: json!({"frames_to_fs": 30000, "fs_messages_in": 30000}),
        ..Ending::default()
    }
}

fn bench_record(c: &mut Criterion) {
    let builder = busy_call();
    let end = ending();
    c.bench_function("record: build a 40-turn call", |b| {
        b.iter(|| black_box(builder.build(black_box(&end))))
    });
    let record = builder.build(&end);
    let line = record.to_string();
    eprintln!(
        "record of a 40-turn call: {} bytes as one JSON line",
        line.len()
    );
    c.bench_function("record: serialise to a JSON line", |b| {
        b.iter(|| black_box(black_box(&record).to_string()))
    });
    c.bench_function("webhook: HMAC-SHA256 signature of the record", |b| {
        b.iter(|| {
            black_box(signature(
                b"a-32-byte-long-shared-secret-xyz",
                1_763_712_000,
                line.as_bytes(),
            ))
        })
    });
    let answer = json!({"customer": {"name": "Ada Lovelace", "tier": "gold", "next_appointment": "2026-11-24 09:00"}, "open_orders": 2, "vip": true});
    c.bench_function("lookup: answer to template variables", |b| {
        b.iter(|| black_box(vars_from_json(black_box(&answer))))
    });
}

/// Records per second through the file sink (submit → writer thread → JSON line on
/// disk), measured over batches of 2000.
fn bench_file_sink(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let record = busy_call().build(&ending());
    c.bench_function("records: file sink, 2000 records", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                let config = RecordsConfig {
                    file: Some(dir.path().join("calls.jsonl")),
                    ..RecordsConfig::default()
                };
                total += rt.block_on(async {
                    let sink = Records::spawn(&config, Default::default()).expect("sink");
                    let started = Instant::now();
                    for _ in 0..2000 {
                        sink.submit(record.clone());
                    }
                    sink.shutdown(Duration::from_secs(60)).await;
                    started.elapsed()
                });
            }
            total
        })
    });
}

criterion_group!(benches, bench_record, bench_file_sink);
criterion_main!(benches);
