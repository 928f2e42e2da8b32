//! Inbound audio: `Reframer` for every wire layout, fed the same bytes in arbitrary
//! message splits, and `Transcoder::process` on arbitrary bytes for the format pairs the
//! providers use.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use voicebridge::audio::{AudioFormat, Channels, Reframer, Transcoder};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Which transcoder pair to run.
    pair: u8,
    /// Message sizes, cycled (0 = an empty message).
    splits: Vec<u16>,
    /// Whether to drain frames after each message (bit per message, cycled) or let them
    /// pile up until the end.
    pop_mask: u32,
    data: Vec<u8>,
}

const LAYOUTS: [Channels; 3] = [Channels::Mono, Channels::Mixed, Channels::Stereo];

fn formats() -> Vec<AudioFormat> {
    let mut f = vec![AudioFormat::pcmu(), AudioFormat::pcma()];
    f.extend((1..=6).map(|k| AudioFormat::l16(8000 * k)));
    f
}

/// Mono bytes a stream of `len` wire bytes carries: the left sample of every whole
/// interleaved frame, plus the part of a trailing partial frame that is left sample.
fn mono_bytes(format: AudioFormat, channels: Channels, len: usize) -> usize {
    let bps = format.bytes_per_sample();
    let stride = bps * channels.count();
    len / stride * bps + (len % stride).min(bps)
}

fn pieces<'a>(data: &'a [u8], splits: &[u16]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut k = 0;
    while !rest.is_empty() {
        let n = match splits.get(k % splits.len().max(1)) {
            Some(&n) => usize::from(n).min(rest.len()),
            None => rest.len(),
        };
        out.push(&rest[..n]);
        rest = &rest[n..];
        k += 1;
        // Bounded: an all-zero split list would otherwise never advance.
        if k > 4 * data.len() + 4 {
            out.push(rest);
            break;
        }
    }
    out
}

fn reframe(input: &Input, format: AudioFormat, channels: Channels) {
    let frame = format.bytes_per_frame();
    // Reference: the whole stream in one message.
    let mut whole = Reframer::new(format, channels);
    whole.push(&input.data);
    let mut expected = Vec::new();
    let mut buf = Vec::new();
    while whole.pop_frame(&mut buf) {
        assert_eq!(buf.len(), frame);
        expected.extend_from_slice(&buf);
        buf.clear();
    }
    assert!(whole.pending_bytes() < frame);

    let mut r = Reframer::new(format, channels);
    let mut got = Vec::new();
    for (i, piece) in pieces(&input.data, &input.splits).iter().enumerate() {
        r.push(piece);
        if input.pop_mask & (1 << (i % 32)) != 0 {
            loop {
                buf.clear();
                // Pop into a non-empty vector: a frame is appended, never overwritten.
                buf.push(0xA5);
                if !r.pop_frame(&mut buf) {
                    assert_eq!(buf, [0xA5], "a failed pop must not append");
                    break;
                }
                assert_eq!(buf.len() - 1, frame, "{format} {channels}");
                got.extend_from_slice(&buf[1..]);
            }
        }
    }
    loop {
        buf.clear();
        if !r.pop_frame(&mut buf) {
            break;
        }
        assert_eq!(buf.len(), frame, "{format} {channels}");
        got.extend_from_slice(&buf);
    }
    assert_eq!(
        got, expected,
        "{format} {channels}: splitting changed the frames"
    );
    assert_eq!(
        got.len() + r.pending_bytes(),
        mono_bytes(format, channels, input.data.len()),
        "{format} {channels}: bytes lost or invented"
    );
}

/// Pairs the session builds (call side <-> each provider's formats).
fn pairs() -> Vec<(AudioFormat, AudioFormat)> {
    let l16 = AudioFormat::l16;
    vec![
        (AudioFormat::pcmu(), AudioFormat::pcma()),
        (AudioFormat::pcma(), AudioFormat::pcmu()),
        (l16(8000), l16(24000)),
        (l16(24000), l16(8000)),
        (l16(8000), l16(16000)),
        (l16(16000), AudioFormat::pcmu()),
        (AudioFormat::pcmu(), l16(16000)),
        (l16(24000), AudioFormat::pcmu()),
        (AudioFormat::pcma(), l16(8000)),
        (l16(8000), l16(22050)),
        (l16(44100), l16(8000)),
        (l16(16000), l16(16000)),
    ]
}

fn transcode(input: &Input, from: AudioFormat, to: AudioFormat) {
    let Ok(mut t) = Transcoder::new(from, to) else {
        return;
    };
    let Ok(mut reference) = Transcoder::new(from, to) else {
        return;
    };
    let mut whole = Vec::new();
    reference.process(&input.data, &mut whole);
    let mut out = Vec::new();
    let mut in_bytes = 0usize;
    for piece in pieces(&input.data, &input.splits) {
        let before = out.len();
        t.process(piece, &mut out);
        in_bytes += piece.len();
        // A conversion emits whole samples only; a copy is a byte stream and may pass a
        // split sample through (its other half follows in the next message).
        if !t.is_passthrough() {
            assert_eq!(
                (out.len() - before) % to.bytes_per_sample(),
                0,
                "{from} -> {to}"
            );
        }
    }
    // Streaming: splitting the input anywhere gives the output of converting it whole.
    assert!(
        out == whole,
        "{from} -> {to}: message splits changed the output"
    );
    if t.is_passthrough() {
        assert!(out == input.data);
        return;
    }
    let in_samples = (in_bytes / from.bytes_per_sample()) as u64;
    let out_samples = (out.len() / to.bytes_per_sample()) as u64;
    if from.rate == to.rate {
        assert_eq!(out_samples, in_samples, "{from} -> {to}");
        return;
    }
    // Resampled: the output tracks in * to / from, give or take the one 20 ms chunk
    // the FIFO may hold back and the (< 2 ms) alignment padding and priming.
    let ideal = in_samples * u64::from(to.rate) / u64::from(from.rate);
    let slack = u64::from(to.rate) / 50 + u64::from(to.rate) / 250 + 4;
    assert!(
        out_samples <= ideal + slack && out_samples + slack >= ideal,
        "{from} -> {to}: {in_samples} in, {out_samples} out, ideal {ideal}"
    );
}

fuzz_target!(|input: Input| {
    for format in formats() {
        for channels in LAYOUTS {
            reframe(&input, format, channels);
        }
    }
    // One transcoder pair per input, chosen by the input: building a resampler (its sinc
    // table) costs far more than running it, and all pairs in every input ran at ~30
    // exec/s. Over a run every pair is covered.
    let pairs = pairs();
    let (from, to) = pairs[usize::from(input.pair) % pairs.len()];
    transcode(&input, from, to);
});
