//! The playback pacer under arbitrary provider bursts, barge-ins and clock steps.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use voicebridge::audio::{AudioFormat, ItemId, Pacer};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Audio of item `item % 12` (more than the ledger's 8, to exercise eviction).
    Push {
        item: u8,
        len: u16,
        fill: u8,
    },
    Finish,
    PopDue,
    /// Pop everything due now.
    Drain,
    Flush,
    /// Clock step in microseconds (the session's clock is monotonic).
    Advance(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    format: u8,
    lead_ms: u16,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let format = match input.format % 5 {
        0 => AudioFormat::pcmu(),
        1 => AudioFormat::pcma(),
        2 => AudioFormat::l16(8000),
        3 => AudioFormat::l16(16000),
        _ => AudioFormat::l16(24000),
    };
    let frame = format.bytes_per_frame();
    let lead = Duration::from_millis(u64::from(input.lead_ms % 2000));
    let mut pacer = Pacer::new(format, lead);
    let mut now = Instant::now();
    // Bytes pushed per item id over the whole run: nothing can be released beyond it.
    let mut pushed: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();

    let pop = |pacer: &mut Pacer, now: Instant, out: &mut Vec<u8>| -> bool {
        let due = pacer.next_release(now);
        out.clear();
        let popped = pacer.pop_due(now, out);
        // `next_release` and `pop_due` must agree on whether a frame is due now.
        assert_eq!(popped, due.is_some_and(|t| t <= now), "due {due:?}");
        if let Some(t) = due {
            assert!(t >= now);
        }
        if popped {
            assert_eq!(out.len(), frame, "a released frame is exactly one frame");
        } else {
            assert!(out.is_empty(), "a refused pop must not append");
        }
        popped
    };

    for op in input.ops {
        match op {
            Op::Push { item, len, fill } => {
                let name = format!("item-{}", item % 12);
                // A fresh Arc each time: items are matched by value, not by pointer.
                let id: ItemId = Arc::from(name.as_str());
                let data = vec![fill; usize::from(len)];
                pacer.push(&id, &data);
                *pushed.entry(name).or_default() += data.len();
            }
            Op::Finish => {
                pacer.finish();
                // Padding completes a trailing partial frame: whatever is queued now is
                // at least one whole frame.
                assert_eq!(pacer.has_frame(), pacer.queued_ms() > 0);
            }
            Op::PopDue => {
                pop(&mut pacer, now, &mut out);
            }
            Op::Drain => {
                let mut n = 0;
                while pop(&mut pacer, now, &mut out) {
                    n += 1;
                }
                // Never more than the lead (plus the frame that crossed it) at once.
                let max = lead.max(Duration::from_millis(20)).as_millis() / 20 + 1;
                assert!(
                    n as u128 <= max,
                    "{n} frames released at once, lead {lead:?}"
                );
                assert!(pacer.buffered_ahead(now) <= lead.max(Duration::from_millis(20)));
            }
            Op::Flush => {
                let f = pacer.flush(now);
                assert!(!pacer.has_frame() && pacer.queued_ms() == 0);
                assert_eq!(pacer.buffered_ahead(now), Duration::ZERO);
                assert!(pacer.playing_item().is_none());
                if let Some(item) = &f.item {
                    let total = pushed.get(&**item).copied().unwrap_or(0);
                    assert!(
                        f.released_ms <= format.ms_of(total),
                        "{f:?} of {total} bytes"
                    );
                } else {
                    assert_eq!(f.released_ms, 0);
                }
            }
            Op::Advance(us) => now += Duration::from_micros(u64::from(us % 5_000_000)),
        }
        for (name, &bytes) in &pushed {
            let id: ItemId = Arc::from(name.as_str());
            assert!(
                pacer.released_ms(&id) <= format.ms_of(bytes),
                "{name}: released {} ms of {} ms pushed",
                pacer.released_ms(&id),
                format.ms_of(bytes)
            );
        }
    }
});
