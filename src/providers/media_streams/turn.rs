//! The state of one stream toward a Twilio-protocol backend, socket-free: sequence and
//! chunk numbers, real-time timestamps of the caller's audio, and the backend's messages
//! turned into [`ProviderEvent`]s (time is a parameter).
//!
//! The protocol has no notion of a reply: audio just comes. A reply is taken to end when
//! no `media` has come for [`REPLY_GAP`] (then `ResponseDone`, so the engine plays a
//! partial last frame and ends the turn), or at a `clear`; each reply gets its own item
//! id, so what a `clear` cut is never confused with the audio that follows it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::{self, FromBackend, Sids};
use crate::audio::ItemId;
use crate::providers::{CallContext, ProviderEvent};

/// No backend audio for this long ends the reply (bots stream at or above real time,
/// in chunks of 20 ms to a few hundred).
pub const REPLY_GAP: Duration = Duration::from_millis(300);

#[derive(Debug)]
pub struct Stream {
    pub sids: Sids,
    started: Instant,
    /// The last `sequenceNumber` used (`start` is 1).
    seq: u64,
    chunk: u64,
    replies: u64,
    /// The reply being received and when its last audio came.
    reply: Option<(ItemId, Instant)>,
    pub clears: u64,
}

impl Stream {
    pub fn new(sids: Sids, now: Instant) -> Stream {
        Stream {
            sids,
            started: now,
            seq: 1,
            chunk: 0,
            replies: 0,
            reply: None,
            clears: 0,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The `start` message: the call's metadata and lookup answer as `customParameters`,
    /// with the call id and route added unless the metadata already has those names.
    pub fn start(&self, context: &CallContext) -> String {
        let mut params: BTreeMap<String, String> = context.vars.clone();
        params
            .entry("call_id".to_owned())
            .or_insert_with(|| context.call_id.clone());
        params
            .entry("route".to_owned())
            .or_insert_with(|| context.route.clone());
        wire::start(&self.sids, &params)
    }

    /// One frame of caller audio, stamped with the real time since the stream started.
    pub fn media(&mut self, now: Instant, audio: &[u8]) -> String {
        let seq = self.next_seq();
        self.chunk += 1;
        let ts = now.saturating_duration_since(self.started).as_millis() as u64;
        wire::media(seq, &self.sids, self.chunk, ts, audio)
    }

    /// One message per key.
    pub fn dtmf(&mut self, digits: &str) -> Vec<String> {
        digits
            .chars()
            .map(|d| {
                let seq = self.next_seq();
                wire::dtmf(seq, &self.sids, d)
            })
            .collect()
    }

    pub fn mark(&mut self, name: &str) -> String {
        let seq = self.next_seq();
        wire::mark(seq, &self.sids, name)
    }

    pub fn stop(&mut self) -> String {
        let seq = self.next_seq();
        wire::stop(seq, &self.sids)
    }

    /// A message from the backend, at `now`.
    pub fn on_backend(&mut self, now: Instant, msg: FromBackend) -> Vec<ProviderEvent> {
        match msg {
            FromBackend::Media(audio) if audio.is_empty() => Vec::new(),
            FromBackend::Media(audio) => {
                let item = match self.reply.take() {
                    Some((item, _)) => item,
                    None => {
                        self.replies += 1;
                        Arc::from(format!("reply-{}", self.replies))
                    }
                };
                self.reply = Some((item.clone(), now));
                vec![ProviderEvent::Audio {
                    item,
                    data: Bytes::from(audio),
                }]
            }
            FromBackend::Mark(name) => vec![ProviderEvent::Mark(name)],
            FromBackend::Clear => {
                self.clears += 1;
                self.reply = None;
                // The bot decided to stop talking: a barge-in the engine performs at once
                // (the kind is `ProviderOnly`, so no guard delays it).
                vec![ProviderEvent::SpeechStarted]
            }
            FromBackend::Ignored(_) => Vec::new(),
        }
    }

    /// When the current reply ends if no audio comes.
    pub fn reply_deadline(&self) -> Option<Instant> {
        self.reply.as_ref().map(|(_, at)| *at + REPLY_GAP)
    }

    /// The reply gap passed: `ResponseDone` (once).
    pub fn on_reply_due(&mut self, now: Instant) -> Option<ProviderEvent> {
        match self.reply_deadline() {
            Some(at) if now >= at => {
                self.reply = None;
                Some(ProviderEvent::ResponseDone)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn item_of(events: &[ProviderEvent]) -> String {
        match &events[0] {
            ProviderEvent::Audio { item, .. } => item.to_string(),
            other => panic!("not audio: {other:?}"),
        }
    }

    #[test]
    fn sequence_chunk_and_timestamp_follow_the_stream() {
        let t0 = Instant::now();
        let mut s = Stream::new(Sids::new(), t0);
        let a: serde_json::Value = serde_json::from_str(&s.media(t0, &[0xff; 160])).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(&s.media(t0 + 20 * MS, &[0xff; 160])).unwrap();
        assert_eq!(a["sequenceNumber"], "2");
        assert_eq!(
            (&a["media"]["chunk"], &a["media"]["timestamp"]),
            (&"1".into(), &"0".into())
        );
        assert_eq!(
            (&b["media"]["chunk"], &b["media"]["timestamp"]),
            (&"2".into(), &"20".into())
        );
        let keys = s.dtmf("1#");
        assert_eq!(keys.len(), 2);
        assert!(keys[1].contains(r#""sequenceNumber":"5""#), "{}", keys[1]);
    }

    #[test]
    fn replies_end_at_a_gap_or_a_clear_and_get_new_items() {
        let t0 = Instant::now();
        let mut s = Stream::new(Sids::new(), t0);
        let first = item_of(&s.on_backend(t0, FromBackend::Media(vec![0xff; 160])));
        let same = item_of(&s.on_backend(t0 + 100 * MS, FromBackend::Media(vec![0xff; 160])));
        assert_eq!(first, same);
        assert!(s.on_reply_due(t0 + 399 * MS).is_none());
        assert!(matches!(
            s.on_reply_due(t0 + 400 * MS),
            Some(ProviderEvent::ResponseDone)
        ));
        assert!(s.on_reply_due(t0 + 900 * MS).is_none(), "once");
        let second = item_of(&s.on_backend(t0 + 1000 * MS, FromBackend::Media(vec![1])));
        assert_ne!(first, second);
        let ev = s.on_backend(t0 + 1010 * MS, FromBackend::Clear);
        assert!(matches!(ev[..], [ProviderEvent::SpeechStarted]));
        assert_eq!(s.reply_deadline(), None);
        let third = item_of(&s.on_backend(t0 + 1020 * MS, FromBackend::Media(vec![1])));
        assert_ne!(second, third, "audio after a clear is a new reply");
    }

    #[test]
    fn start_carries_the_context_vars() {
        let s = Stream::new(Sids::new(), Instant::now());
        let mut vars = BTreeMap::new();
        vars.insert("tenant".to_owned(), "acme".to_owned());
        let ctx = CallContext {
            call_id: "c-1".into(),
            route: "sales".into(),
            vars,
        };
        let v: serde_json::Value = serde_json::from_str(&s.start(&ctx)).unwrap();
        let p = &v["start"]["customParameters"];
        assert_eq!(
            (&p["tenant"], &p["call_id"], &p["route"]),
            (&"acme".into(), &"c-1".into(), &"sales".into())
        );
    }
}
