//! The per-call record: what was said, what was done and what it cost, gathered while
//! the call runs and turned into one JSON object when it ends (delivered by
//! `records`). Pure bookkeeping, no I/O, so it is unit-tested on its own.
//!
//! It keeps only what a configured sink will write ([`Keep`]): without a sink a call
//! holds no transcript and no per-turn list, so its memory does not grow with the
//! length of the conversation, and nothing needs building at its end.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::providers::{Speaker, Usage};

/// Version of the record's shape; bumped on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

/// Tool calls kept per record (a looping model must not grow it without bound).
const MAX_TOOL_CALLS: usize = 200;
/// Transcript entries kept per record.
const MAX_TRANSCRIPT: usize = 2000;
/// Transcript text kept per record, all lines together: the provider decides how much
/// text a call produces, the record must not.
pub const MAX_TRANSCRIPT_BYTES: usize = 256 * 1024;
/// Tool-call arguments kept per call in the record (serialised JSON); larger ones are
/// replaced by their size.
pub const MAX_TOOL_ARGUMENTS_BYTES: usize = 4 * 1024;
/// Per-turn latencies kept per record.
const MAX_TURNS: usize = 2000;

/// One transcript line; its text is `text[previous end..end]` of the builder's one
/// buffer (one allocation per call rather than one per line).
#[derive(Debug)]
struct Line {
    who: Speaker,
    at_ms: u64,
    end: u32,
}

/// What the record keeps while the call runs: only what a configured sink will use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// No record sink: the counters only (the turn latency still feeds the metrics);
    /// the record is not meant to be built.
    Nothing,
    /// A sink with transcripts off (the privacy switch): everything but the text.
    NoText,
    /// A sink with transcripts.
    All,
}

impl Keep {
    /// `has_sink`: a record sink is configured (`Records::is_enabled`);
    /// `transcripts`: `[log] transcripts`.
    pub fn for_call(has_sink: bool, transcripts: bool) -> Keep {
        match (has_sink, transcripts) {
            (false, _) => Keep::Nothing,
            (true, false) => Keep::NoText,
            (true, true) => Keep::All,
        }
    }
}

#[derive(Debug)]
struct ToolEntry {
    id: String,
    name: String,
    arguments: Value,
    at_ms: u64,
    duration_ms: Option<u64>,
    outcome: &'static str,
    error: Option<String>,
}

/// Gathers a call's record. Times are relative to the call's start.
#[derive(Debug)]
pub struct RecordBuilder {
    started: Instant,
    started_wall: SystemTime,
    keep: Keep,
    transcript: Vec<Line>,
    /// All lines' text, one after the other (bounded by `MAX_TRANSCRIPT_BYTES`).
    text: String,
    transcript_dropped: u64,
    tools: Vec<ToolEntry>,
    tools_dropped: u64,
    caller_turns: u64,
    caller_finals: u64,
    assistant_turns: u64,
    /// The caller finished a turn; the next audio played closes it.
    turn_started: Option<Instant>,
    /// Milliseconds, to 0.1 ms (sub-millisecond turns happen against local mocks).
    turn_latencies: Vec<f64>,
    pub lookup: &'static str,
    /// Keys the caller pressed, and the groups they formed (text only with `Keep::All`:
    /// digits can be a PIN, so the privacy switch covers them like the transcript).
    dtmf_keys: u64,
    dtmf: Vec<(u64, String)>,
    /// Providers that failed before the caller heard them (fallback), with why.
    provider_failures: Vec<(&'static str, String)>,
}

/// DTMF groups kept per record; beyond it only the key count grows.
const MAX_DTMF_GROUPS: usize = 64;

/// What the session knows at the end, to be merged into the record.
#[derive(Debug, Default)]
pub struct Ending<'a> {
    pub call_id: &'a str,
    pub route: &'a str,
    pub provider: &'a str,
    pub caller_id: &'a str,
    pub called: &'a str,
    pub end_reason: &'a str,
    pub end_detail: String,
    pub ended_by: &'a str,
    pub transfer_to: Option<&'a str>,
    pub barge_ins: u64,
    pub first_response: Option<Duration>,
    pub usage: Usage,
    pub cost: f64,
    pub currency: &'a str,
    pub audio: Value,
}

impl RecordBuilder {
    /// A record for a configured sink, with or without the transcript's text.
    pub fn new(started: Instant, keep_transcript: bool) -> RecordBuilder {
        let keep = if keep_transcript {
            Keep::All
        } else {
            Keep::NoText
        };
        RecordBuilder::with_keep(started, keep)
    }

    /// A call without a record sink: keeps the counters only.
    pub fn disabled(started: Instant) -> RecordBuilder {
        RecordBuilder::with_keep(started, Keep::Nothing)
    }

    pub fn with_keep(started: Instant, keep: Keep) -> RecordBuilder {
        RecordBuilder {
            started,
            started_wall: SystemTime::now() - started.elapsed(),
            keep,
            transcript: Vec::new(),
            text: String::new(),
            transcript_dropped: 0,
            tools: Vec::new(),
            tools_dropped: 0,
            caller_turns: 0,
            caller_finals: 0,
            assistant_turns: 0,
            turn_started: None,
            turn_latencies: Vec::new(),
            lookup: "off",
            dtmf_keys: 0,
            dtmf: Vec::new(),
            provider_failures: Vec::new(),
        }
    }

    /// Whether a record is meant to be built at the end (a sink is configured).
    pub fn is_enabled(&self) -> bool {
        self.keep != Keep::Nothing
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    /// A final transcript line.
    pub fn transcript(&mut self, who: Speaker, text: &str, at: Instant) {
        if who == Speaker::Caller {
            self.caller_finals += 1;
        }
        if self.keep != Keep::All {
            return;
        }
        let text = crate::text_cap::clip(text, crate::text_cap::MAX_TURN_TEXT);
        if self.transcript.len() >= MAX_TRANSCRIPT
            || self.text.len() + text.len() > MAX_TRANSCRIPT_BYTES
        {
            self.transcript_dropped += 1;
            return;
        }
        self.text.push_str(&text);
        self.transcript.push(Line {
            who,
            at_ms: self.ms(at),
            // At most MAX_TRANSCRIPT_BYTES (256 KiB), checked above.
            end: self.text.len() as u32,
        });
    }

    /// The transcript's lines with their text, in order.
    fn lines(&self) -> impl Iterator<Item = (&Line, &str)> {
        let mut start = 0;
        self.transcript.iter().map(move |l| {
            let end = l.end as usize;
            let text = self.text.get(start..end).unwrap_or("");
            start = end;
            (l, text)
        })
    }

    /// The caller finished a turn (the provider's end of speech).
    pub fn caller_turn_ended(&mut self, at: Instant) {
        self.caller_turns += 1;
        self.turn_started = Some(at);
    }

    /// Assistant audio reached FreeSWITCH: closes the open turn, if any. Returns its
    /// latency.
    pub fn audio_played(&mut self, at: Instant) -> Option<Duration> {
        let start = self.turn_started.take()?;
        let latency = at.saturating_duration_since(start);
        if self.keep != Keep::Nothing && self.turn_latencies.len() < MAX_TURNS {
            self.turn_latencies
                .push((latency.as_secs_f64() * 10_000.0).round() / 10.0);
        }
        Some(latency)
    }

    /// The provider finished a response.
    pub fn assistant_turn_done(&mut self) {
        self.assistant_turns += 1;
    }

    /// `provider` failed before the caller heard it; the call went on with the next.
    /// Bounded by the route's fallback list (at most 3).
    pub fn provider_failed(&mut self, provider: &'static str, reason: &str) {
        if self.keep != Keep::Nothing {
            self.provider_failures.push((provider, reason.to_owned()));
        }
    }

    /// The caller typed `digits` (one group) at `at`.
    pub fn dtmf(&mut self, digits: &str, at: Instant) {
        self.dtmf_keys += digits.chars().count() as u64;
        if self.keep == Keep::All && self.dtmf.len() < MAX_DTMF_GROUPS {
            self.dtmf.push((self.ms(at), digits.to_owned()));
        }
    }

    pub fn tool_started(&mut self, id: &str, name: &str, arguments: &Value, at: Instant) {
        if self.keep == Keep::Nothing {
            self.tools_dropped += 1;
            return;
        }
        if self.tools.len() >= MAX_TOOL_CALLS {
            self.tools_dropped += 1;
            return;
        }
        let size = arguments.to_string().len();
        let arguments = if size > MAX_TOOL_ARGUMENTS_BYTES {
            json!({"truncated_bytes": size})
        } else {
            arguments.clone()
        };
        self.tools.push(ToolEntry {
            id: crate::text_cap::clip(id, 256).into_owned(),
            name: crate::text_cap::clip(name, 256).into_owned(),
            arguments,
            at_ms: self.ms(at),
            duration_ms: None,
            outcome: "running",
            error: None,
        });
    }

    pub fn tool_finished(
        &mut self,
        id: &str,
        outcome: &'static str,
        took: Duration,
        error: Option<&str>,
    ) {
        let id = crate::text_cap::clip(id, 256);
        if let Some(t) = self.tools.iter_mut().rev().find(|t| t.id == *id) {
            // A withdrawn call's webhook may still finish; the model never saw it.
            if t.outcome == "cancelled" {
                return;
            }
            t.outcome = outcome;
            t.duration_ms = Some(took.as_millis() as u64);
            t.error = error.map(str::to_owned);
        }
    }

    /// The call ended while these webhooks were still running.
    pub fn abandon_running(&mut self) {
        for t in self.tools.iter_mut().filter(|t| t.outcome == "running") {
            t.outcome = "abandoned";
        }
    }

    pub fn tool_calls(&self) -> usize {
        self.tools.len() + self.tools_dropped as usize
    }

    /// The record, at the end of the call. Meant for a configured sink only (see
    /// [`RecordBuilder::is_enabled`]); a disabled builder still gives a valid record,
    /// without the per-turn latencies and tool calls it did not keep.
    pub fn build(&self, end: &Ending<'_>) -> Value {
        let ended_wall = SystemTime::now();
        let duration = self.started.elapsed();
        let mut sorted = self.turn_latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let pick = |q: f64| -> Option<f64> {
            if sorted.is_empty() {
                return None;
            }
            let i = ((sorted.len() - 1) as f64 * q).round() as usize;
            sorted.get(i).copied()
        };
        let mut record = json!({
            "version": RECORD_VERSION,
            "record_id": uuid::Uuid::new_v4().to_string(),
            "call_id": end.call_id,
            "route": end.route,
            "provider": end.provider,
            "caller_id": end.caller_id,
            "called": end.called,
            "started_at": humantime::format_rfc3339_millis(self.started_wall).to_string(),
            "ended_at": humantime::format_rfc3339_millis(ended_wall).to_string(),
            "duration_ms": duration.as_millis() as u64,
            "end_reason": end.end_reason,
            "end_detail": end.end_detail,
            "ended_by": end.ended_by,
            "turns": {
                "caller": self.caller_turns.max(self.caller_finals),
                "assistant": self.assistant_turns,
            },
            "barge_ins": end.barge_ins,
            "latency_ms": {
                "first_response": end.first_response.map(|d| d.as_millis() as u64),
                "turns": self.turn_latencies,
                "turn_p50": pick(0.5),
                "turn_p95": pick(0.95),
                "turn_max": sorted.last(),
            },
            "audio": end.audio,
            "usage": {
                "input_tokens": end.usage.input_tokens,
                "output_tokens": end.usage.output_tokens,
            },
            "cost": {
                "estimated": (end.cost * 1e6).round() / 1e6,
                "currency": end.currency,
            },
            "context_lookup": self.lookup,
            "tool_calls": self.tools.iter().map(|t| json!({
                "id": t.id,
                "name": t.name,
                "arguments": t.arguments,
                "at_ms": t.at_ms,
                "duration_ms": t.duration_ms,
                "outcome": t.outcome,
                "error": t.error,
            })).collect::<Vec<_>>(),
        });
        if let Some(to) = end.transfer_to {
            record["transfer_to"] = json!(to);
        }
        record["dtmf"] = json!({
            "keys": self.dtmf_keys,
            "groups": (self.keep == Keep::All).then(|| {
                self.dtmf
                    .iter()
                    .map(|(at_ms, digits)| json!({"at_ms": at_ms, "digits": digits}))
                    .collect::<Vec<_>>()
            }),
        });
        // Which providers failed before the one named in `provider` served the call.
        record["provider_failures"] = json!(self
            .provider_failures
            .iter()
            .map(|(provider, reason)| json!({"provider": provider, "reason": reason}))
            .collect::<Vec<_>>());
        if self.tools_dropped > 0 && self.keep != Keep::Nothing {
            record["tool_calls_dropped"] = json!(self.tools_dropped);
        }
        if self.keep == Keep::All {
            record["transcript"] = self
                .lines()
                .map(|(l, text)| json!({"who": l.who.name(), "text": text, "at_ms": l.at_ms}))
                .collect::<Vec<_>>()
                .into();
            if self.transcript_dropped > 0 {
                record["transcript_dropped"] = json!(self.transcript_dropped);
            }
        } else {
            // `[log] transcripts = false` is a privacy switch: it covers records too.
            record["transcript"] = Value::Null;
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_latencies_and_tools_are_recorded() {
        let t0 = Instant::now();
        let mut r = RecordBuilder::new(t0, true);
        r.caller_turn_ended(t0 + Duration::from_millis(1000));
        assert_eq!(
            r.audio_played(t0 + Duration::from_millis(1400)),
            Some(Duration::from_millis(400))
        );
        assert_eq!(r.audio_played(t0 + Duration::from_millis(1500)), None);
        r.assistant_turn_done();
        r.transcript(Speaker::Caller, "hello", t0 + Duration::from_millis(900));
        r.tool_started(
            "c1",
            "lookup",
            &json!({"a":1}),
            t0 + Duration::from_millis(2000),
        );
        r.tool_finished("c1", "ok", Duration::from_millis(30), None);
        let v = r.build(&Ending {
            call_id: "abc",
            ended_by: "caller",
            ..Ending::default()
        });
        assert_eq!(v["turns"]["caller"], 1);
        assert_eq!(v["turns"]["assistant"], 1);
        assert_eq!(v["latency_ms"]["turns"], json!([400.0]));
        assert_eq!(v["latency_ms"]["turn_p50"], 400.0);
        assert_eq!(v["tool_calls"][0]["name"], "lookup");
        assert_eq!(v["tool_calls"][0]["duration_ms"], 30);
        assert_eq!(v["transcript"][0]["text"], "hello");
        assert_eq!(v["transcript"][0]["at_ms"], 900);
        assert!(v["record_id"].as_str().is_some_and(|s| s.len() == 36));
    }

    #[test]
    fn transcripts_off_keeps_text_out_of_the_record() {
        let t0 = Instant::now();
        let mut r = RecordBuilder::new(t0, false);
        r.transcript(Speaker::Caller, "my card number is", t0);
        let v = r.build(&Ending::default());
        assert!(v["transcript"].is_null());
        assert!(!v.to_string().contains("card number"));
        assert_eq!(v["turns"]["caller"], 1);
    }

    #[test]
    fn peer_controlled_text_in_the_record_is_bounded() {
        let t0 = Instant::now();
        let mut r = RecordBuilder::new(t0, true);
        // One huge turn is cut; a thousand big ones stop at the total.
        r.transcript(Speaker::Assistant, &"a".repeat(1024 * 1024), t0);
        for _ in 0..1000 {
            r.transcript(Speaker::Caller, &"b".repeat(10_000), t0);
        }
        let huge_args = json!({"blob": "x".repeat(1024 * 1024)});
        for i in 0..300 {
            r.tool_started(&format!("c{i}"), &"n".repeat(100_000), &huge_args, t0);
            r.tool_finished(&format!("c{i}"), "ok", Duration::ZERO, None);
        }
        let v = r.build(&Ending::default());
        let text = v.to_string();
        assert!(
            text.len() < MAX_TRANSCRIPT_BYTES + 200 * 2048 + 64 * 1024,
            "record is {} bytes",
            text.len()
        );
        let first = v["transcript"][0]["text"].as_str().unwrap();
        assert!(first.len() <= crate::text_cap::MAX_TURN_TEXT);
        assert!(first.ends_with('…'));
        assert!(v["transcript_dropped"].as_u64().unwrap() > 900);
        assert_eq!(
            v["tool_calls"][0]["arguments"]["truncated_bytes"],
            1024 * 1024 + 11
        );
        assert_eq!(
            v["tool_calls"][0]["outcome"], "ok",
            "finished matches the clipped id"
        );
        assert_eq!(v["tool_calls_dropped"], 100);
    }

    #[test]
    fn keep_follows_the_sink_and_the_privacy_switch() {
        assert_eq!(Keep::for_call(false, true), Keep::Nothing);
        assert_eq!(Keep::for_call(false, false), Keep::Nothing);
        assert_eq!(Keep::for_call(true, false), Keep::NoText);
        assert_eq!(Keep::for_call(true, true), Keep::All);
        assert!(!RecordBuilder::disabled(Instant::now()).is_enabled());
        assert!(RecordBuilder::new(Instant::now(), false).is_enabled());
    }

    #[test]
    fn without_a_sink_nothing_grows_with_the_conversation() {
        let t0 = Instant::now();
        let mut r = RecordBuilder::disabled(t0);
        for i in 0..500u64 {
            let at = t0 + Duration::from_millis(i * 2000);
            r.caller_turn_ended(at);
            // The metrics still get every turn's latency.
            assert_eq!(
                r.audio_played(at + Duration::from_millis(300)),
                Some(Duration::from_millis(300))
            );
            r.assistant_turn_done();
            r.transcript(Speaker::Caller, "a caller line", at);
            r.transcript(Speaker::Assistant, "an assistant line", at);
            r.tool_started("c", "lookup", &json!({"a": 1}), at);
        }
        assert_eq!(r.transcript.capacity(), 0);
        assert_eq!(r.text.capacity(), 0);
        assert_eq!(r.turn_latencies.capacity(), 0);
        assert_eq!(r.tools.capacity(), 0);
        assert_eq!(r.tool_calls(), 500);
        let v = r.build(&Ending::default());
        assert_eq!(v["turns"]["caller"], 500);
        assert_eq!(v["turns"]["assistant"], 500);
        assert!(v["transcript"].is_null());
        assert!(!v.to_string().contains("caller line"));
    }

    #[test]
    fn transcripts_off_keeps_the_turns_but_no_text() {
        let t0 = Instant::now();
        let mut r = RecordBuilder::with_keep(t0, Keep::NoText);
        r.caller_turn_ended(t0);
        r.audio_played(t0 + Duration::from_millis(250));
        r.transcript(Speaker::Caller, "my pin is 1234", t0);
        assert_eq!(r.text.capacity(), 0);
        let v = r.build(&Ending::default());
        assert_eq!(v["latency_ms"]["turns"], json!([250.0]));
        assert!(v["transcript"].is_null());
        assert!(!v.to_string().contains("1234"));
    }

    #[test]
    fn transcript_lines_share_one_buffer_and_keep_their_order() {
        let t0 = Instant::now();
        let mut r = RecordBuilder::new(t0, true);
        r.transcript(Speaker::Caller, "héllo", t0 + Duration::from_millis(10));
        r.transcript(Speaker::Assistant, "", t0 + Duration::from_millis(20));
        r.transcript(
            Speaker::Assistant,
            "¿qué tal?",
            t0 + Duration::from_millis(30),
        );
        let v = r.build(&Ending::default());
        assert_eq!(
            v["transcript"],
            json!([
                {"who": "caller", "text": "héllo", "at_ms": 10},
                {"who": "assistant", "text": "", "at_ms": 20},
                {"who": "assistant", "text": "¿qué tal?", "at_ms": 30},
            ])
        );
    }
}
