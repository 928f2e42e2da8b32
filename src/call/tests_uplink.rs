//! Engine tests: `uplink_chunk_ms` gathers caller frames into fewer, larger provider
//! messages, in order, without losing or duplicating audio.

use bytes::Bytes;

use super::tests::{drain, engine, feed, ready, MS};
use super::*;
use crate::providers::ProviderCommand;
use crate::telephony::TelephonyEvent;

/// A 20 ms μ-law frame whose every byte is `n` (so the order can be checked).
fn frame(n: u8) -> Input {
    Input::Telephony(TelephonyEvent::Audio(Bytes::from(vec![n; 160])))
}

/// The caller audio messages among `outputs`.
fn sent(outputs: &[Output]) -> Vec<Bytes> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Provider(ProviderCommand::Audio(b)) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// Which frame each 160 bytes of `message` are (0: not one whole frame of ours).
fn frame_ids(message: &[u8]) -> Vec<u8> {
    message
        .chunks(160)
        .map(|f| match f.iter().all(|&b| b == f[0]) && f.len() == 160 {
            true => f[0],
            false => 0,
        })
        .collect()
}

#[test]
fn frames_are_gathered_into_one_message_per_chunk() {
    let (mut e, t0) = engine("[call]\nuplink_chunk_ms = 60\n");
    ready(&mut e, t0);
    drain(&mut e);
    let mut messages = Vec::new();
    for n in 1..=7u8 {
        feed(&mut e, t0 + u32::from(n) * 20 * MS, frame(n));
        let out = sent(&drain(&mut e));
        // A message goes out with the third frame of each chunk, not before.
        assert_eq!(out.len(), usize::from(n % 3 == 0), "after frame {n}");
        messages.extend(out);
    }
    let ids: Vec<Vec<u8>> = messages.iter().map(|m| frame_ids(m)).collect();
    assert_eq!(ids, vec![vec![1, 2, 3], vec![4, 5, 6]]);
    assert_eq!(e.stats().frames_to_provider, 2);
    assert_eq!(e.stats().bytes_to_provider, 960);
}

#[test]
fn audio_held_before_ready_goes_out_in_chunks_too() {
    let (mut e, t0) = engine("[call]\nuplink_chunk_ms = 40\n");
    for n in 1..=5u8 {
        feed(&mut e, t0 + u32::from(n) * 20 * MS, frame(n));
    }
    assert!(
        sent(&drain(&mut e)).is_empty(),
        "nothing before the provider is ready"
    );
    ready(&mut e, t0 + 120 * MS);
    let ids: Vec<Vec<u8>> = sent(&drain(&mut e)).iter().map(|m| frame_ids(m)).collect();
    assert_eq!(ids, vec![vec![1, 2], vec![3, 4]]);
    // Frame 5 waits for its pair.
    feed(&mut e, t0 + 140 * MS, frame(6));
    let ids: Vec<Vec<u8>> = sent(&drain(&mut e)).iter().map(|m| frame_ids(m)).collect();
    assert_eq!(ids, vec![vec![5, 6]]);
}

#[test]
fn the_default_sends_every_frame_at_once() {
    let (mut e, t0) = engine("");
    ready(&mut e, t0);
    drain(&mut e);
    for n in 1..=3u8 {
        feed(&mut e, t0 + u32::from(n) * 20 * MS, frame(n));
        let ids: Vec<Vec<u8>> = sent(&drain(&mut e)).iter().map(|m| frame_ids(m)).collect();
        assert_eq!(ids, vec![vec![n]]);
    }
}
