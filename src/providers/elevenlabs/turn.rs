//! The ElevenLabs conversation's per-response bookkeeping without the socket: items,
//! barge-in cut-off, end of response (there is no explicit event for it) and the
//! response watchdog. No I/O; the clock is a parameter (`std::time::Instant`), so it
//! is unit-tested directly and the fuzz target drives it as the connection does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audio::ItemId;

/// Audio of a response that pauses this long after its `agent_response` text arrived is
/// considered complete (there is no explicit end-of-response event).
pub const RESPONSE_PAUSE: Duration = Duration::from_millis(300);

/// What to do with one `audio` event.
#[derive(Debug, PartialEq)]
pub enum AudioVerdict {
    /// Play it as part of this item.
    Play(ItemId),
    /// Late audio of an interrupted response (`event_id <=` the interruption's).
    Drop,
}

/// Per-conversation response bookkeeping.
///
/// - Items: a response starts with the first audio after the caller's turn
///   (`user_transcript`), an interruption, or — after a finished response — audio with a
///   new `event_id`; its id is `el-<event_id of its first chunk>` and stays the same for
///   all of its chunks (ElevenLabs increases `event_id` per response).
/// - Barge-in: after `interruption {event_id: K}`, audio with `event_id <= K` is dropped.
/// - End of response: once `agent_response` (the text) has arrived, the response is done
///   when its audio pauses for [`RESPONSE_PAUSE`]; the next `user_transcript` also ends it.
/// - Watchdog: armed by `user_transcript`, disarmed by the first audio played after it.
#[derive(Debug)]
pub struct Turns {
    /// Audio with an id at or below this is late audio of an interrupted response.
    interrupted_through: Option<i64>,
    /// Highest audio event id seen.
    pub max_event_id: Option<i64>,
    item: Option<ItemId>,
    last_event_id: Option<i64>,
    /// A turn boundary since the last audio: the next audio starts a new item.
    boundary: bool,
    /// ResponseDone was sent since the last audio.
    done_sent: bool,
    /// Audio was played since the last ResponseDone.
    open: bool,
    /// The assistant's text for the current turn has arrived.
    agent_text: bool,
    last_audio: Option<Instant>,
    watchdog: Option<Instant>,
    watchdog_after: Duration,
    watchdog_warned_turn: bool,
    /// A tool result was sent when audio up to this event id had been seen: the agent's
    /// answer to it is a new response (a new item), even without a pause.
    answered_after: Option<i64>,
}

impl Turns {
    /// `watchdog_after`: the route's `response_timeout` (zero disables it).
    pub fn new(watchdog_after: Duration) -> Turns {
        Turns {
            interrupted_through: None,
            max_event_id: None,
            item: None,
            last_event_id: None,
            boundary: true,
            done_sent: false,
            open: false,
            agent_text: false,
            last_audio: None,
            watchdog: None,
            watchdog_after,
            watchdog_warned_turn: false,
            answered_after: None,
        }
    }

    pub fn on_audio(&mut self, event_id: i64, now: Instant) -> AudioVerdict {
        self.max_event_id = Some(self.max_event_id.map_or(event_id, |m| m.max(event_id)));
        if self.interrupted_through.is_some_and(|k| event_id <= k) {
            return AudioVerdict::Drop;
        }
        let after_tool = self.answered_after.is_some_and(|k| event_id > k);
        if after_tool {
            self.answered_after = None;
        }
        let new_item = self.item.is_none()
            || self.boundary
            || after_tool
            || (self.done_sent && self.last_event_id != Some(event_id));
        if new_item {
            self.item = Some(Arc::from(format!("el-{event_id}")));
        }
        self.boundary = false;
        self.done_sent = false;
        self.open = true;
        self.last_event_id = Some(event_id);
        self.last_audio = Some(now);
        self.watchdog = None;
        match &self.item {
            Some(item) => AudioVerdict::Play(item.clone()),
            None => AudioVerdict::Drop,
        }
    }

    /// `agent_response` arrived.
    pub fn on_agent_response(&mut self) {
        self.agent_text = true;
    }

    /// `user_transcript`: the caller finished a turn. Returns true if a response was
    /// still open (send ResponseDone first).
    pub fn on_user_transcript(&mut self, now: Instant) -> bool {
        let was_open = self.close_turn();
        self.watchdog = (!self.watchdog_after.is_zero()).then(|| now + self.watchdog_after);
        self.watchdog_warned_turn = false;
        was_open
    }

    /// `client_tool_call`: the agent answered with a call; no silence warning while the
    /// tool runs.
    pub fn on_tool_call(&mut self) {
        self.watchdog = None;
    }

    /// A tool result was sent. `reply`: the agent is expected to speak about it, so the
    /// watchdog runs again; its answer starts a new item.
    pub fn on_tool_result(&mut self, reply: bool, now: Instant) {
        self.answered_after = Some(self.max_event_id.unwrap_or(0));
        if reply && !self.watchdog_after.is_zero() {
            self.watchdog = Some(now + self.watchdog_after);
            self.watchdog_warned_turn = false;
        }
    }

    /// `interruption {event_id}`: the caller talked over the assistant.
    pub fn on_interruption(&mut self, event_id: i64) {
        self.interrupted_through = Some(
            self.interrupted_through
                .map_or(event_id, |k| k.max(event_id)),
        );
        self.close_turn();
        self.watchdog = None;
    }

    fn close_turn(&mut self) -> bool {
        let was_open = self.open;
        self.open = false;
        self.agent_text = false;
        self.boundary = true;
        was_open
    }

    /// When the current response counts as done, if its text has come.
    pub fn done_deadline(&self) -> Option<Instant> {
        if self.open && self.agent_text {
            self.last_audio.map(|t| t + RESPONSE_PAUSE)
        } else {
            None
        }
    }

    /// The done deadline passed: returns true if ResponseDone is to be sent.
    pub fn on_done_due(&mut self, now: Instant) -> bool {
        if self.done_deadline().is_some_and(|d| d <= now) {
            self.open = false;
            self.done_sent = true;
            true
        } else {
            false
        }
    }

    pub fn watchdog_deadline(&self) -> Option<Instant> {
        self.watchdog
    }

    /// The watchdog deadline passed: the warning to send, once per turn.
    pub fn on_watchdog_due(&mut self, now: Instant) -> Option<String> {
        match self.watchdog {
            Some(d) if d <= now => {
                self.watchdog = None;
                if self.watchdog_warned_turn {
                    return None;
                }
                self.watchdog_warned_turn = true;
                Some(format!(
                    "provider silent: no response {} s after the caller finished",
                    self.watchdog_after.as_secs()
                ))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_pauses_the_watchdog_and_its_answer_is_a_new_item() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Turns::new(Duration::from_secs(5));
        t.on_user_transcript(ms(0));
        // "Let me check" before the call.
        t.on_agent_response();
        assert_eq!(t.on_audio(2, ms(100)), AudioVerdict::Play("el-2".into()));
        t.on_tool_call();
        assert_eq!(t.watchdog_deadline(), None);
        t.on_tool_result(true, ms(200));
        assert_eq!(t.watchdog_deadline(), Some(ms(5200)));
        // A late chunk of the same response still belongs to it; the answer is new.
        assert_eq!(t.on_audio(2, ms(210)), AudioVerdict::Play("el-2".into()));
        assert_eq!(t.on_audio(3, ms(250)), AudioVerdict::Play("el-3".into()));
        assert_eq!(t.watchdog_deadline(), None);
        assert_eq!(t.on_audio(3, ms(260)), AudioVerdict::Play("el-3".into()));
        // No reply expected (end_call): no watchdog.
        t.on_tool_call();
        t.on_tool_result(false, ms(300));
        assert_eq!(t.watchdog_deadline(), None);
    }

    #[test]
    fn items_interruption_and_done() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Turns::new(Duration::from_secs(5));
        // Greeting: event 1, text after the audio.
        assert_eq!(t.on_audio(1, ms(0)), AudioVerdict::Play("el-1".into()));
        assert_eq!(t.on_audio(1, ms(10)), AudioVerdict::Play("el-1".into()));
        assert_eq!(t.done_deadline(), None, "no text yet");
        t.on_agent_response();
        assert_eq!(t.done_deadline(), Some(ms(310)));
        assert!(!t.on_done_due(ms(100)));
        assert!(t.on_done_due(ms(310)));
        assert_eq!(t.done_deadline(), None);

        // A caller turn, then a response with a new id.
        assert!(!t.on_user_transcript(ms(1000)));
        assert_eq!(t.watchdog_deadline(), Some(ms(6000)));
        t.on_agent_response();
        assert_eq!(t.on_audio(2, ms(1500)), AudioVerdict::Play("el-2".into()));
        assert_eq!(t.watchdog_deadline(), None, "the response started");
        // Barge-in at 2: late audio of 2 (and older) is dropped, 3 plays.
        t.on_interruption(2);
        assert_eq!(t.done_deadline(), None);
        assert_eq!(t.on_audio(2, ms(1600)), AudioVerdict::Drop);
        assert_eq!(t.on_audio(1, ms(1600)), AudioVerdict::Drop);
        assert_eq!(t.on_audio(3, ms(1700)), AudioVerdict::Play("el-3".into()));
        assert_eq!(t.on_audio(3, ms(1710)), AudioVerdict::Play("el-3".into()));
        assert_eq!(t.max_event_id, Some(3));
        // The next caller turn closes the open response.
        assert!(t.on_user_transcript(ms(2000)));
    }

    #[test]
    fn a_pause_does_not_split_a_response() {
        let t0 = Instant::now();
        let mut t = Turns::new(Duration::ZERO);
        t.on_agent_response();
        assert_eq!(t.on_audio(4, t0), AudioVerdict::Play("el-4".into()));
        assert!(t.on_done_due(t0 + RESPONSE_PAUSE));
        assert_eq!(
            t.on_audio(4, t0 + Duration::from_secs(1)),
            AudioVerdict::Play("el-4".into())
        );
        assert_eq!(t.watchdog_deadline(), None);
        t.on_user_transcript(t0);
        assert_eq!(t.watchdog_deadline(), None, "zero disables the watchdog");
    }

    #[test]
    fn watchdog_warns_once_per_turn() {
        let t0 = Instant::now();
        let mut t = Turns::new(Duration::from_secs(2));
        t.on_user_transcript(t0);
        assert!(t.on_watchdog_due(t0 + Duration::from_secs(1)).is_none());
        let w = t.on_watchdog_due(t0 + Duration::from_secs(2)).unwrap();
        assert!(w.contains("no response 2 s"), "{w}");
        assert!(t.on_watchdog_due(t0 + Duration::from_secs(3)).is_none());
        assert_eq!(t.watchdog_deadline(), None);
    }
}
