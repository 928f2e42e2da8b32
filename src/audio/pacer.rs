//! The playback queue towards FreeSWITCH.
//!
//! Providers deliver assistant audio much faster than real time, but `mod_audio_stream`
//! plays whatever it receives into a buffer we cannot inspect. If we forwarded bursts
//! as they came, a barge-in could only discard what is still here while seconds of
//! speech kept playing from FreeSWITCH's buffer. So audio is released in 20 ms frames on
//! a real-time schedule, keeping only `lead` ahead of the playout, and the pacer keeps
//! exact per-item accounting so an interruption can tell the provider how much of an
//! answer the caller actually heard.
//!
//! Pure: the clock is always a parameter.
//!
//! Bounded: at most `max_queue` of audio waits here (see [`Pacer::with_max_queue`]);
//! what a provider sends beyond it is dropped and reported by [`Pacer::push`], so a
//! peer streaming far faster than real time costs a fixed amount of memory.
//!
//! Model: the *playhead* is the instant at which FreeSWITCH will have played everything
//! released. A playhead in the past means FreeSWITCH ran dry, and it restarts from `now`.
//! A frame may go when `playhead + 20 ms - now <= lead`, and each release moves the
//! playhead 20 ms on: from empty, `lead / 20 ms` frames go at once, then one per 20 ms.
//!
//! Where the far end reports how far it has played (Asterisk `MEDIA_MARK_PROCESSED`,
//! Twilio `mark`), [`Pacer::played_to`] re-anchors the playhead on that report: the far
//! end's clock wins over ours, so one that plays slower than real time (Asterisk never
//! makes up a late tick) gets less, never a growing backlog, and a flush takes back
//! exactly what it had not played. Once a report has come, [`Pacer::with_max_unplayed`]
//! also holds releases while more than that is released beyond the last report (a far
//! end that stopped playing stops our release too).

use super::playback_store::PlaybackStore;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AudioFormat, Codec, FRAME_MS};

/// An assistant item / response id.
pub type ItemId = Arc<str>;

/// Items whose released byte counts are remembered; older ones answer 0.
const LEDGER_ITEMS: usize = 8;
const COMPACT_AT: usize = 16 * 1024;
const FRAME: Duration = Duration::from_millis(FRAME_MS as u64);
/// Default queue cap (`[freeswitch] playback_max_queue_ms`).
pub const DEFAULT_MAX_QUEUE: Duration = Duration::from_secs(60);

/// What a barge-in [`Pacer::flush`] threw away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// The item that was cut: the earliest one that lost audio (still queued, or released
    /// but not yet played out); if nothing was lost, the last item released; `None` if
    /// nothing was ever released or queued.
    pub item: Option<ItemId>,
    /// Ms of `item` the caller heard: released minus what FreeSWITCH still had buffered,
    /// since that buffer is cleared too. This is the truncation point for the provider.
    pub released_ms: u64,
    /// Ms of audio discarded, all items (queued here plus unplayed in FreeSWITCH);
    /// codec padding not counted.
    pub dropped_ms: u64,
}

#[derive(Debug)]
struct Run {
    /// `None` for codec padding added by [`Pacer::finish`].
    item: Option<ItemId>,
    bytes: usize,
}

fn same(a: &ItemId, b: &ItemId) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

fn same_opt(a: &Option<ItemId>, b: &Option<ItemId>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Append `bytes` of `item` to a run list, merging with the last run when it matches.
fn append_run(runs: &mut VecDeque<Run>, item: &Option<ItemId>, bytes: usize) {
    if bytes == 0 {
        return;
    }
    match runs.back_mut() {
        Some(last) if same_opt(&last.item, item) => last.bytes += bytes,
        _ => runs.push_back(Run {
            item: item.clone(),
            bytes,
        }),
    }
}

/// Real-time release of assistant audio in 20 ms frames, with per-item accounting.
#[derive(Debug)]
pub struct Pacer {
    format: AudioFormat,
    frame_bytes: usize,
    lead: Duration,
    /// Queued audio; bytes before `read` are already released.
    buf: PlaybackStore,
    /// Which item each queued byte belongs to, in order; sums to `buf.len() - read`.
    queued: VecDeque<Run>,
    /// The most recently released bytes (about `lead` plus a frame of them), to know
    /// whose audio is still unplayed in FreeSWITCH at a flush.
    recent: VecDeque<Run>,
    recent_bytes: usize,
    /// Released bytes per item, for the last few items.
    ledger: VecDeque<(ItemId, u64)>,
    playhead: Option<Instant>,
    playing: Option<ItemId>,
    /// Queued bytes never exceed this (whole samples).
    max_queued: usize,
    /// Dropped bytes not yet reported as a whole frame.
    overflow_carry: usize,
    /// Bytes released since the start (the position marks refer to).
    released_total: u64,
    /// The position the far end last reported as played (`released_total` after a flush).
    acked: u64,
    /// Released beyond `acked` never exceeds this, once `reported` (bytes; `None`: no cap).
    max_unplayed: Option<usize>,
    /// The far end has reported a position at least once.
    reported: bool,
}

impl Pacer {
    /// `format` is the playback (call-side) format; `lead` how far ahead of the playout
    /// audio may be released. A lead under one frame is raised to one frame, since
    /// nothing could ever be released otherwise.
    pub fn new(format: AudioFormat, lead: Duration) -> Pacer {
        let frame_bytes = format.bytes_per_frame();
        let mut pacer = Pacer {
            format,
            frame_bytes,
            lead: lead.max(FRAME),
            // Grown by the first reply, not up front: most of a call is not a reply.
            buf: PlaybackStore::new(COMPACT_AT),
            queued: VecDeque::with_capacity(8),
            recent: VecDeque::with_capacity(8),
            recent_bytes: 0,
            ledger: VecDeque::with_capacity(LEDGER_ITEMS + 1),
            playhead: None,
            playing: None,
            max_queued: usize::MAX,
            overflow_carry: 0,
            released_total: 0,
            acked: 0,
            max_unplayed: None,
            reported: false,
        };
        pacer.max_queued = pacer.bytes_in(DEFAULT_MAX_QUEUE);
        pacer
    }

    /// Caps the queue at `max` of audio (at least one frame).
    pub fn with_max_queue(mut self, max: Duration) -> Pacer {
        self.max_queued = self.bytes_in(max).max(self.frame_bytes);
        self
    }

    /// Once the far end has reported a played position ([`played_to`](Self::played_to)),
    /// holds releases while more than `max` (at least a frame) is released beyond it.
    pub fn with_max_unplayed(mut self, max: Duration) -> Pacer {
        self.max_unplayed = Some(self.bytes_in(max).max(self.frame_bytes));
        self
    }

    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// The audio pushed from now on is decoded G.711 of `law` (the provider's output,
    /// at this pacer's rate), or `None`: no longer. With L16 playback the queue then
    /// keeps the codes, half the memory, and gives back exactly the same L16. Ignored
    /// for G.711 playback, which is one byte a sample already.
    pub fn source_law(&mut self, law: Option<Codec>) {
        if self.format.codec == Codec::L16 {
            self.buf.hold_as(law);
        }
    }

    /// Bytes released since the start: the position a mark sent now stands for.
    pub fn released_total(&self) -> u64 {
        self.released_total
    }

    /// Bytes released or queued so far: the position at which audio pushed now ends
    /// (a provider's `mark` placed in the audio stream stands for it).
    pub fn pushed_total(&self) -> u64 {
        self.released_total + self.queued_bytes() as u64
    }

    /// When position `position` (a value of [`pushed_total`](Self::pushed_total)) has
    /// been played out at the latest: `None` while audio before it is still queued (its
    /// release schedule is not known yet), `now` or earlier once it has played.
    pub fn played_at(&self, now: Instant, position: u64) -> Option<Instant> {
        if position > self.released_total {
            return None;
        }
        let rest = usize::try_from(self.released_total - position).unwrap_or(usize::MAX);
        let head = self.effective_playhead(now);
        Some(head.checked_sub(self.duration_of(rest)).unwrap_or(now))
    }

    /// The far end has played everything released up to `position` (a value of
    /// [`released_total`](Self::released_total)) at `now`: the rest is still to play, so
    /// the playhead is `now` plus that. A position from before the last flush means
    /// nothing any more and must not be given (the caller voids its marks at a flush).
    pub fn played_to(&mut self, now: Instant, position: u64) {
        let position = position.min(self.released_total).max(self.acked);
        self.acked = position;
        self.reported = true;
        let unplayed = usize::try_from(self.released_total - position).unwrap_or(usize::MAX);
        self.playhead = Some(now + self.duration_of(unplayed));
    }

    /// Released audio beyond the last report is at its cap: nothing may go until the
    /// next report (or a flush).
    fn held(&self) -> bool {
        match self.max_unplayed {
            Some(max) if self.reported => {
                self.released_total - self.acked + self.frame_bytes as u64 > max as u64
            }
            _ => false,
        }
    }

    fn duration_of(&self, bytes: usize) -> Duration {
        let per_sec = self.format.bytes_per_sec().max(1) as u128;
        Duration::from_nanos(
            u64::try_from(bytes as u128 * 1_000_000_000 / per_sec).unwrap_or(u64::MAX),
        )
    }

    /// Queues audio of `item` (bytes in [`format`](Self::format)). Consecutive pushes of
    /// different items may share a frame; each keeps its exact byte count.
    ///
    /// Audio that would take the queue over its cap is dropped (the tail of `data`, in
    /// whole samples). Returns how many whole 20 ms frames' worth were dropped since
    /// the last report (partial frames carry over to the next drop).
    pub fn push(&mut self, item: &ItemId, data: &[u8]) -> u64 {
        if data.is_empty() {
            return 0;
        }
        let room = self.max_queued.saturating_sub(self.queued_bytes());
        let sample = self.format.bytes_per_sample();
        let take = if data.len() <= room {
            data.len()
        } else {
            room - room % sample
        };
        if take > 0 {
            self.buf.extend(&data[..take]);
            append_run(&mut self.queued, &Some(item.clone()), take);
        }
        self.count_dropped(data.len() - take)
    }

    /// [`push`](Self::push) of G.711 `codes` of `law` for an L16 pacer at 8 kHz, each
    /// code one sample: kept as they are when the queue holds that law (see
    /// [`source_law`](Self::source_law)), so they are never decoded twice.
    pub fn push_codes(&mut self, item: &ItemId, law: Codec, codes: &[u8]) -> u64 {
        if codes.is_empty() {
            return 0;
        }
        let room = self.max_queued.saturating_sub(self.queued_bytes()) / 2;
        let take = codes.len().min(room);
        if take > 0 {
            self.buf.extend_codes(law, &codes[..take]);
            append_run(&mut self.queued, &Some(item.clone()), take * 2);
        }
        self.count_dropped((codes.len() - take) * 2)
    }

    /// The queue keeps codes of this law (pushed with [`push_codes`](Self::push_codes)).
    pub fn held_law(&self) -> Option<Codec> {
        self.buf.law()
    }

    /// Counts `dropped` bytes of overflow; returns the whole frames not yet reported.
    fn count_dropped(&mut self, dropped: usize) -> u64 {
        if dropped == 0 {
            return 0;
        }
        self.overflow_carry += dropped;
        let frames = self.overflow_carry / self.frame_bytes;
        self.overflow_carry %= self.frame_bytes;
        frames as u64
    }

    /// The response is complete: pad a trailing partial frame with codec silence so it
    /// can be released. Padding is not counted as audio of any item.
    pub fn finish(&mut self) {
        let rem = self.queued_bytes() % self.frame_bytes;
        if rem == 0 {
            return;
        }
        let pad = self.frame_bytes - rem;
        let silence = self.format.codec.silence_byte();
        self.buf.pad(pad, silence);
        append_run(&mut self.queued, &None, pad);
    }

    fn queued_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Ms of audio queued and not yet released (padding included).
    pub fn queued_ms(&self) -> u64 {
        self.format.ms_of(self.queued_bytes())
    }

    /// A full frame is queued.
    pub fn has_frame(&self) -> bool {
        self.queued_bytes() >= self.frame_bytes
    }

    fn effective_playhead(&self, now: Instant) -> Instant {
        match self.playhead {
            Some(p) if p > now => p,
            _ => now,
        }
    }

    /// When the next frame may be released: `None` if no full frame is queued, otherwise
    /// an instant `>= now` (equal to `now` when it is due already).
    /// Also `None` while held by the unplayed cap: the next report is an input, not a
    /// time.
    pub fn next_release(&self, now: Instant) -> Option<Instant> {
        if !self.has_frame() || self.held() {
            return None;
        }
        let head = self.effective_playhead(now);
        // Due when head + FRAME - t <= lead, i.e. t >= head - (lead - FRAME).
        let due = head.checked_sub(self.lead - FRAME).unwrap_or(now);
        Some(due.max(now))
    }

    /// If a frame is due at `now`, appends exactly one frame to `out` and returns true.
    pub fn pop_due(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if !self.has_frame() || self.held() {
            return false;
        }
        let head = self.effective_playhead(now);
        let end = head + FRAME;
        if end.saturating_duration_since(now) > self.lead {
            return false;
        }
        self.playhead = Some(end);
        let f = self.frame_bytes;
        self.buf.take_into(f, out);
        self.account_release(f);
        self.released_total += f as u64;
        true
    }

    /// Moves `bytes` from the front of the queued runs to the ledger and the recent log.
    fn account_release(&mut self, mut bytes: usize) {
        while bytes > 0 {
            let Some(front) = self.queued.front_mut() else {
                break;
            };
            let take = front.bytes.min(bytes);
            front.bytes -= take;
            bytes -= take;
            if let Some(item) = &front.item {
                credit(&mut self.ledger, item, take as u64);
                if !self.playing.as_ref().is_some_and(|p| same(p, item)) {
                    self.playing = Some(item.clone());
                }
            }
            append_run(&mut self.recent, &front.item, take);
            self.recent_bytes += take;
            if front.bytes == 0 {
                self.queued.pop_front();
            }
        }
        // Only the last `lead` (plus a frame) of released audio can still be unplayed, or,
        // with reports, what is released beyond the last one (at most `max_unplayed`).
        let keep = self.bytes_in(self.lead).max(self.max_unplayed.unwrap_or(0)) + self.frame_bytes;
        while self.recent_bytes > keep {
            let Some(front) = self.recent.front_mut() else {
                break;
            };
            let excess = self.recent_bytes - keep;
            if front.bytes <= excess {
                self.recent_bytes -= front.bytes;
                self.recent.pop_front();
            } else {
                front.bytes -= excess;
                self.recent_bytes -= excess;
            }
        }
    }

    /// Whole samples worth of bytes in `d`, rounded down.
    fn bytes_in(&self, d: Duration) -> usize {
        let samples = d.as_nanos() * u128::from(self.format.rate) / 1_000_000_000;
        usize::try_from(samples).unwrap_or(usize::MAX / 4) * self.format.bytes_per_sample()
    }

    /// Barge-in: empties the queue in one step and forgets what FreeSWITCH had buffered
    /// (it is cleared too), so the playhead restarts at `now`. The unplayed part of
    /// released audio is taken back from the items' released counts, so
    /// [`released_ms`](Self::released_ms) afterwards agrees with what was heard.
    pub fn flush(&mut self, now: Instant) -> Flushed {
        let mut unplayed = self.bytes_in(self.buffered_ahead(now));
        let mut first_lost: Option<ItemId> = None;
        let mut dropped = 0usize;
        for run in self.recent.iter().rev() {
            if unplayed == 0 {
                break;
            }
            let take = run.bytes.min(unplayed);
            unplayed -= take;
            if let Some(item) = &run.item {
                debit(&mut self.ledger, item, take as u64);
                dropped += take;
                first_lost = Some(item.clone());
            }
        }
        for run in &self.queued {
            if let Some(item) = &run.item {
                dropped += run.bytes;
                if first_lost.is_none() {
                    first_lost = Some(item.clone());
                }
            }
        }
        let item = first_lost.or_else(|| self.playing.clone());
        let released_ms = item.as_ref().map_or(0, |i| self.released_ms(i));

        self.buf.clear();
        self.queued.clear();
        self.recent.clear();
        self.recent_bytes = 0;
        self.playhead = Some(now);
        self.playing = None;
        // Nothing released is unplayed any more: the far end's buffer is cleared too.
        self.acked = self.released_total;
        Flushed {
            item,
            released_ms,
            dropped_ms: self.format.ms_of(dropped),
        }
    }

    /// Ms of `item` released so far (exact bytes, rounded down); 0 if unknown or too old.
    pub fn released_ms(&self, item: &ItemId) -> u64 {
        self.ledger
            .iter()
            .rev()
            .find(|(i, _)| same(i, item))
            .map_or(0, |(_, b)| self.format.ms_of(*b as usize))
    }

    /// The item whose audio was released last (what the caller hears); `None` after a
    /// flush until audio is released again.
    pub fn playing_item(&self) -> Option<&ItemId> {
        self.playing.as_ref()
    }

    /// Audio released but not yet played out at `now` (never more than the lead, but
    /// where a report said the far end is behind).
    pub fn buffered_ahead(&self, now: Instant) -> Duration {
        self.playhead
            .map_or(Duration::ZERO, |p| p.saturating_duration_since(now))
    }
}

fn credit(ledger: &mut VecDeque<(ItemId, u64)>, item: &ItemId, bytes: u64) {
    if let Some((_, b)) = ledger.iter_mut().rev().find(|(i, _)| same(i, item)) {
        *b += bytes;
        return;
    }
    ledger.push_back((item.clone(), bytes));
    if ledger.len() > LEDGER_ITEMS {
        ledger.pop_front();
    }
}

fn debit(ledger: &mut VecDeque<(ItemId, u64)>, item: &ItemId, bytes: u64) {
    if let Some((_, b)) = ledger.iter_mut().rev().find(|(i, _)| same(i, item)) {
        *b = b.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn id(s: &str) -> ItemId {
        Arc::from(s)
    }

    /// PCMU: 8 bytes per ms, 160 bytes per frame.
    fn pacer(lead_ms: u64) -> Pacer {
        Pacer::new(AudioFormat::pcmu(), Duration::from_millis(lead_ms))
    }

    fn pop_all_due(p: &mut Pacer, now: Instant) -> usize {
        let mut n = 0;
        let mut out = Vec::new();
        while p.pop_due(now, &mut out) {
            n += 1;
            assert_eq!(out.len(), n * 160);
        }
        n
    }

    #[test]
    fn lead_frames_at_once_then_one_per_frame() {
        let t0 = Instant::now();
        let mut p = pacer(60);
        let a = id("a");
        p.push(&a, &vec![1u8; 160 * 50]);
        assert_eq!(p.next_release(t0), Some(t0));
        assert_eq!(pop_all_due(&mut p, t0), 3);
        assert_eq!(p.buffered_ahead(t0), 60 * MS);
        // Next one exactly 20 ms later, not a nanosecond before.
        assert_eq!(p.next_release(t0), Some(t0 + 20 * MS));
        assert_eq!(
            pop_all_due(&mut p, t0 + 20 * MS - Duration::from_nanos(1)),
            0
        );
        for k in 1..=40u32 {
            let now = t0 + 20 * MS * k;
            assert_eq!(pop_all_due(&mut p, now), 1, "tick {k}");
            assert!(p.buffered_ahead(now) <= 60 * MS);
            assert_eq!(p.buffered_ahead(now), 60 * MS);
        }
        assert_eq!(p.released_ms(&a), 43 * 20);
        assert_eq!(p.queued_ms(), 7 * 20);
        // A late tick (scheduler hiccup) releases the backlog up to the lead, never more.
        let late = t0 + 20 * MS * 40 + 45 * MS;
        assert_eq!(pop_all_due(&mut p, late), 2);
        assert!(p.buffered_ahead(late) <= 60 * MS);
    }

    #[test]
    fn lead_below_a_frame_still_releases() {
        let t0 = Instant::now();
        let mut p = pacer(0);
        p.push(&id("a"), &[0u8; 480]);
        assert_eq!(pop_all_due(&mut p, t0), 1);
        assert_eq!(pop_all_due(&mut p, t0 + 10 * MS), 0);
        assert_eq!(pop_all_due(&mut p, t0 + 20 * MS), 1);
    }

    #[test]
    fn playhead_restarts_after_underrun() {
        let t0 = Instant::now();
        let mut p = pacer(60);
        let a = id("a");
        p.push(&a, &[0u8; 160]);
        assert_eq!(pop_all_due(&mut p, t0), 1);
        assert_eq!(p.next_release(t0), None);
        // FreeSWITCH runs dry at t0+20; new audio at t0+500 goes out as from empty.
        let t1 = t0 + 500 * MS;
        assert_eq!(p.buffered_ahead(t1), Duration::ZERO);
        p.push(&a, &[0u8; 160 * 10]);
        assert_eq!(p.next_release(t1), Some(t1));
        assert_eq!(pop_all_due(&mut p, t1), 3);
        assert_eq!(p.buffered_ahead(t1), 60 * MS);
    }

    #[test]
    fn released_ms_is_exact_across_frames_shared_by_two_items() {
        let t0 = Instant::now();
        let mut p = pacer(100);
        let (a, b) = (id("a"), id("b"));
        // 250 ms + 3 bytes of a, then b: frame 13 holds the end of a and the start of b.
        p.push(&a, &vec![1u8; 2003]);
        p.push(&b, &vec![2u8; 1000]);
        p.push(&b, &vec![2u8; 997]);
        let mut out = Vec::new();
        let mut now = t0;
        while p.has_frame() {
            while p.pop_due(now, &mut out) {}
            now += 20 * MS;
        }
        assert_eq!(out.len(), 4000);
        assert_eq!(p.released_ms(&a), 250); // 2003 bytes, rounded down
        assert_eq!(p.released_ms(&b), 249); // 1997 bytes
        assert_eq!(p.playing_item(), Some(&b));
        assert_eq!(p.released_ms(&id("unknown")), 0);
        // Same id from another allocation is the same item.
        assert_eq!(p.released_ms(&id("a")), 250);
    }

    #[test]
    fn finish_pads_with_silence_not_counted() {
        let t0 = Instant::now();
        let mut p = pacer(60);
        let a = id("a");
        p.push(&a, &[9u8; 200]);
        assert!(p.has_frame());
        let mut out = Vec::new();
        assert!(p.pop_due(t0, &mut out));
        assert!(!p.has_frame());
        assert!(!p.pop_due(t0, &mut out));
        p.finish();
        assert!(p.has_frame());
        assert!(p.pop_due(t0, &mut out));
        assert_eq!(out.len(), 320);
        assert!(out[..200].iter().all(|&b| b == 9));
        assert!(out[200..].iter().all(|&b| b == 0xFF), "μ-law silence");
        assert_eq!(p.released_ms(&a), 25);
        p.finish(); // nothing partial: no-op
        assert!(!p.has_frame());
        let mut l16 = Pacer::new(AudioFormat::l16(8000), 60 * MS);
        l16.push(&a, &[7u8; 10]);
        l16.finish();
        let mut out = Vec::new();
        assert!(l16.pop_due(t0, &mut out));
        assert_eq!(out.len(), 320);
        assert!(out[10..].iter().all(|&b| b == 0));
    }

    /// A pacer told its L16 is decoded μ-law releases the same frames, partial last
    /// frame and silence padding included, and accounts the same milliseconds.
    #[test]
    fn decoded_g711_is_released_unchanged_when_held_as_codes() {
        let t0 = Instant::now();
        let a = id("a");
        let codes: Vec<u8> = (0..1234u32).map(|i| (i * 13 % 256) as u8).collect();
        let mut samples = Vec::new();
        crate::audio::g711::ulaw_decode(&codes, &mut samples);
        let mut l16 = Vec::new();
        crate::audio::pcm::samples_to_l16(&samples, &mut l16);
        let mut plain = Pacer::new(AudioFormat::l16(8000), 60 * MS);
        let mut packed = Pacer::new(AudioFormat::l16(8000), 60 * MS);
        packed.source_law(Some(Codec::Pcmu));
        for p in [&mut plain, &mut packed] {
            p.push(&a, &l16[..1000]);
            p.push(&a, &l16[1000..]);
            p.finish();
        }
        // The codes themselves, never decoded on the way in.
        let mut coded = Pacer::new(AudioFormat::l16(8000), 60 * MS);
        coded.source_law(Some(Codec::Pcmu));
        assert_eq!(coded.held_law(), Some(Codec::Pcmu));
        coded.push_codes(&a, Codec::Pcmu, &codes[..700]);
        coded.push_codes(&a, Codec::Pcmu, &codes[700..]);
        coded.finish();
        assert_eq!(plain.queued_ms(), packed.queued_ms());
        assert_eq!(plain.queued_ms(), coded.queued_ms());
        let (mut x, mut y, mut z) = (Vec::new(), Vec::new(), Vec::new());
        let mut t = t0;
        while plain.has_frame() {
            assert!(plain.pop_due(t, &mut x));
            assert!(packed.pop_due(t, &mut y));
            assert!(coded.pop_due(t, &mut z));
            t += FRAME;
        }
        assert!(!packed.has_frame() && !coded.has_frame());
        assert_eq!(x, y);
        assert_eq!(x, z);
        assert_eq!(&y[..l16.len()], &l16[..]);
        assert_eq!(plain.released_ms(&a), packed.released_ms(&a));
        assert_eq!(plain.released_ms(&a), coded.released_ms(&a));
    }

    #[test]
    fn flush_empties_in_one_step_and_reports() {
        let t0 = Instant::now();
        let mut p = pacer(60);
        let (a, b) = (id("a"), id("b"));
        p.push(&a, &vec![1u8; 8 * 1000]); // 1 s of a
        p.push(&b, &vec![1u8; 8 * 500]);
        let mut out = Vec::new();
        let mut now = t0;
        // Play 10 ticks: 3 + 9 frames released = 240 ms of a; 180 ms played at t0+180.
        for _ in 0..10 {
            while p.pop_due(now, &mut out) {}
            if now < t0 + 180 * MS {
                now += 20 * MS;
            }
        }
        assert_eq!(now, t0 + 180 * MS);
        assert_eq!(p.released_ms(&a), 240);
        assert_eq!(p.buffered_ahead(now), 60 * MS);
        let f = p.flush(now);
        assert_eq!(f.item, Some(a.clone()));
        assert_eq!(
            f.released_ms, 180,
            "heard = released - unplayed in FreeSWITCH"
        );
        assert_eq!(f.dropped_ms, 1500 - 180);
        assert_eq!(p.queued_ms(), 0);
        assert!(!p.has_frame());
        assert_eq!(p.next_release(now), None);
        assert_eq!(p.playing_item(), None);
        assert_eq!(p.buffered_ahead(now), Duration::ZERO);
        assert_eq!(p.released_ms(&a), 180);
        // After the flush, the next answer starts from empty: lead frames at once.
        let c = id("c");
        p.push(&c, &[0u8; 160 * 5]);
        assert_eq!(pop_all_due(&mut p, now), 3);
        assert_eq!(p.playing_item(), Some(&c));
    }

    #[test]
    fn flush_with_nothing_released_names_the_queued_item() {
        let t0 = Instant::now();
        let mut p = pacer(60);
        assert_eq!(
            p.flush(t0),
            Flushed {
                item: None,
                released_ms: 0,
                dropped_ms: 0
            }
        );
        let b = id("b");
        p.push(&b, &[0u8; 800]);
        let f = p.flush(t0);
        assert_eq!(
            f,
            Flushed {
                item: Some(b),
                released_ms: 0,
                dropped_ms: 100
            }
        );
        // Played out completely: nothing lost, the last item is reported.
        let a = id("a");
        p.push(&a, &[0u8; 160]);
        p.finish();
        assert_eq!(pop_all_due(&mut p, t0), 1);
        let f = p.flush(t0 + 100 * MS);
        assert_eq!(
            f,
            Flushed {
                item: Some(a),
                released_ms: 20,
                dropped_ms: 0
            }
        );
    }

    #[test]
    fn the_queue_is_capped_and_drops_are_counted_in_frames() {
        let t0 = Instant::now();
        // 200 ms cap: 1600 bytes of PCMU.
        let mut p = pacer(60).with_max_queue(200 * MS);
        let a = id("a");
        assert_eq!(p.push(&a, &[1u8; 1000]), 0);
        // 600 fit, 400 dropped: 2 whole frames, 80 bytes carried.
        assert_eq!(p.push(&a, &[1u8; 1000]), 2);
        assert_eq!(p.queued_ms(), 200);
        // 80 carried + 80 more dropped: one frame.
        assert_eq!(p.push(&a, &[1u8; 80]), 1);
        assert_eq!(p.queued_ms(), 200);
        // Releasing makes room again, and accounting stays exact.
        assert_eq!(pop_all_due(&mut p, t0), 3);
        assert_eq!(p.push(&a, &[1u8; 480]), 0);
        assert_eq!(p.queued_ms(), 200);
        assert_eq!(p.released_ms(&a), 60);
        // L16: whole samples only, even with an odd room.
        let mut l16 = Pacer::new(AudioFormat::l16(8000), 60 * MS).with_max_queue(20 * MS);
        assert_eq!(l16.push(&a, &[0u8; 319]), 0);
        assert_eq!(l16.push(&a, &[0u8; 4]), 0);
        assert_eq!(
            l16.queued_bytes(),
            319,
            "one byte of room: no whole sample fits"
        );
    }

    #[test]
    fn the_default_cap_is_a_minute() {
        let mut p = pacer(60);
        let a = id("a");
        let dropped = p.push(&a, &vec![0u8; 8 * 61_000]);
        assert_eq!(p.queued_ms(), 60_000);
        assert_eq!(dropped, 50, "1 s over: 50 frames");
    }

    #[test]
    fn ledger_is_bounded() {
        let t0 = Instant::now();
        let mut p = pacer(20);
        let mut out = Vec::new();
        for i in 0..100 {
            p.push(&id(&format!("item{i}")), &[0u8; 160]);
            assert!(p.pop_due(t0 + 20 * MS * i, &mut out));
        }
        assert!(p.ledger.len() <= LEDGER_ITEMS);
        assert!(p.recent.len() <= 3);
        assert_eq!(p.released_ms(&id("item99")), 20);
        assert_eq!(p.released_ms(&id("item0")), 0);
    }

    /// Releases every frame due at each 20 ms tick from `from` for `ticks` ticks;
    /// returns the frames released and the last tick's instant.
    #[test]
    fn a_pushed_position_is_played_when_the_playhead_passes_it() {
        let t0 = Instant::now();
        let mut p = pacer(40);
        let id: ItemId = Arc::from("a");
        p.push(&id, &[0xff; 480]);
        let end = p.pushed_total();
        assert_eq!(end, 480);
        assert_eq!(p.played_at(t0, end), None, "still queued");
        let mut out = Vec::new();
        let mut t = t0;
        while p.played_at(t, end).is_none() {
            while p.pop_due(t, &mut out) {}
            t += 20 * MS;
        }
        // Three frames released from t0 on at real time: played at t0 + 60 ms, never
        // before, whatever the lead.
        let at = p.played_at(t, end).unwrap();
        assert_eq!(at, t0 + 60 * MS);
        assert_eq!(
            p.played_at(t, 160),
            Some(at - 40 * MS),
            "the first frame earlier"
        );
    }

    fn run_ticks(p: &mut Pacer, from: Instant, ticks: u32) -> (usize, Instant) {
        let mut out = Vec::new();
        let mut n = 0;
        let mut now = from;
        for k in 0..ticks {
            now = from + 20 * MS * k;
            while p.pop_due(now, &mut out) {
                n += 1;
            }
        }
        (n, now)
    }

    #[test]
    fn a_report_moves_the_playhead_to_the_far_ends_clock() {
        let t0 = Instant::now();
        let mut p = pacer(60);
        let a = id("a");
        p.push(&a, &vec![1u8; 8 * 2000]);
        // 10 ticks on our clock: 3 + 9 = 12 frames released.
        let (n, now) = run_ticks(&mut p, t0, 10);
        assert_eq!(n, 12);
        assert_eq!(p.released_total(), 12 * 160);
        // The far end is slower: it reports having played only 5 frames so far.
        p.played_to(now, 5 * 160);
        assert_eq!(p.buffered_ahead(now), 140 * MS, "7 frames still to play");
        // Nothing may go until a frame fits in the lead again (100 ms later).
        assert_eq!(p.next_release(now), Some(now + 100 * MS));
        let mut out = Vec::new();
        assert!(!p.pop_due(now + 80 * MS, &mut out));
        assert!(p.pop_due(now + 100 * MS, &mut out));
        // A far end ahead of us (it reports everything played) gets the lead at once.
        p.played_to(now + 100 * MS, p.released_total());
        assert_eq!(pop_all_due(&mut p, now + 100 * MS), 3);
    }

    #[test]
    fn the_unplayed_cap_holds_releases_until_the_next_report() {
        let t0 = Instant::now();
        let mut p = pacer(60).with_max_unplayed(100 * MS);
        let a = id("a");
        p.push(&a, &vec![1u8; 8 * 2000]);
        // Before any report the cap is not armed (a side whose marks never come back
        // keeps to the clock): 3 + 19 frames in 20 ticks.
        let (n, now) = run_ticks(&mut p, t0, 20);
        assert_eq!(n, 22);
        // The far end reports everything played, then stops reporting (paused).
        p.played_to(now, p.released_total());
        let (n, later) = run_ticks(&mut p, now, 50);
        assert_eq!(n, 5, "at most 100 ms beyond the last report");
        assert_eq!(
            p.next_release(later),
            None,
            "held: waits for a report, not a time"
        );
        let held = p.released_total();
        assert_eq!(held - p.acked, 5 * 160);
        // The report comes: releases go on.
        p.played_to(later, held);
        assert!(p.next_release(later).is_some());
        // A flush clears the far end too: the cap starts again from what was released.
        p.flush(later);
        p.push(&a, &vec![1u8; 8 * 500]);
        assert_eq!(pop_all_due(&mut p, later), 3);
    }

    #[test]
    fn a_flush_after_a_report_takes_back_what_the_far_end_had_not_played() {
        let t0 = Instant::now();
        let mut p = pacer(60).with_max_unplayed(200 * MS);
        let a = id("a");
        p.push(&a, &vec![1u8; 8 * 2000]);
        let (_, now) = run_ticks(&mut p, t0, 10);
        assert_eq!(p.released_ms(&a), 240);
        // The far end has played 100 ms (not the 180 ms our clock says).
        p.played_to(now, 100 * 8);
        let f = p.flush(now);
        assert_eq!(f.item, Some(a.clone()));
        assert_eq!(f.released_ms, 100, "heard = what the far end reported");
        assert_eq!(p.released_ms(&a), 100);
    }
}
