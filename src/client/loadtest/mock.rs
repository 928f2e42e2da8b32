//! The load test's own OpenAI Realtime (GA) provider: one task per daemon connection.
//!
//! Lean where it costs (appends are matched by a substring search and a base64 decode,
//! reply audio is base64-encoded once for all calls), faithful where the daemon looks:
//! the GA event names and fields it reads, `session.updated` only after `session.update`,
//! response ids on every delta, the server cancelling an interrupted response itself
//! (with a couple of late deltas in flight), `response.done` with usage.
//! `tests/common/mock_openai.rs` is the validating mock; this one is for throughput.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{stamp, CallLink, LoadtestArgs, Run, CALL_ID_PREFIX};
use voicebridge::audio::{g711, signal};

/// Each delta carries this much audio...
const BURST_MS: u64 = 100;
/// ...and one goes out this often: 4× real time, like the real service's bursts.
const BURST_EVERY: Duration = Duration::from_millis(25);
/// The first turn starts this long after the session is ready.
const FIRST_TURN_AFTER: Duration = Duration::from_millis(300);
/// Late deltas the server still sends after `speech_started` cancelled a response.
const LATE_DELTAS: usize = 2;
/// Problems kept for the report.
const MAX_PROBLEMS: usize = 20;

const APPEND_HEAD: &str = r#"{"type":"input_audio_buffer.append""#;
const AUDIO_KEY: &str = r#""audio":""#;

/// Provider audio formats the daemon can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fmt {
    Pcmu,
    Pcma,
    Pcm24,
}

impl Fmt {
    fn name(self) -> &'static str {
        match self {
            Fmt::Pcmu => "pcmu",
            Fmt::Pcma => "pcma",
            Fmt::Pcm24 => "pcm24",
        }
    }

    fn json(self) -> Value {
        match self {
            Fmt::Pcmu => json!({"type": "audio/pcmu"}),
            Fmt::Pcma => json!({"type": "audio/pcma"}),
            Fmt::Pcm24 => json!({"type": "audio/pcm", "rate": 24000}),
        }
    }

    /// One 20 ms frame, in bytes.
    fn frame_bytes(self) -> usize {
        match self {
            Fmt::Pcmu | Fmt::Pcma => 160,
            Fmt::Pcm24 => 960,
        }
    }

    /// Largest append the daemon sends: `uplink_chunk_ms` (at most 100 ms) of audio.
    fn max_append(self) -> usize {
        self.frame_bytes() * 5
    }

    fn from_session(v: &Value) -> Option<Fmt> {
        let f = &v["session"]["audio"]["output"]["format"];
        match f["type"].as_str()? {
            "audio/pcmu" => Some(Fmt::Pcmu),
            "audio/pcma" => Some(Fmt::Pcma),
            "audio/pcm" => Some(Fmt::Pcm24),
            _ => None,
        }
    }
}

/// The reply audio, base64 per burst, made once for every format.
pub struct MockConfig {
    turn_every: Duration,
    barge_every: u64,
    barge_after: Duration,
    pcmu: Vec<String>,
    pcma: Vec<String>,
    pcm24: Vec<String>,
}

impl MockConfig {
    pub fn new(args: &LoadtestArgs) -> MockConfig {
        let secs = args.response_ms as f64 / 1000.0;
        let chunks = |bytes: Vec<u8>, per_ms: usize| -> Vec<String> {
            bytes
                .chunks(per_ms * BURST_MS as usize)
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
                .collect()
        };
        let s8 = signal::speech_like(8000, secs, 11);
        let mut u = Vec::new();
        g711::ulaw_encode(&s8, &mut u);
        let mut a = Vec::new();
        g711::alaw_encode(&s8, &mut a);
        let s24 = signal::speech_like(24000, secs, 11);
        let l16: Vec<u8> = s24.iter().flat_map(|s| s.to_le_bytes()).collect();
        MockConfig {
            turn_every: Duration::from_millis(args.turn_every_ms),
            barge_every: args.barge_every,
            barge_after: Duration::from_millis(args.barge_after_ms),
            pcmu: chunks(u, 8),
            pcma: chunks(a, 8),
            pcm24: chunks(l16, 48),
        }
    }

    fn chunks(&self, f: Fmt) -> &[String] {
        match f {
            Fmt::Pcmu => &self.pcmu,
            Fmt::Pcma => &self.pcma,
            Fmt::Pcm24 => &self.pcm24,
        }
    }
}

/// What all mock connections add up to.
#[derive(Debug, Default, Clone)]
pub struct MockTotals {
    pub connections: u64,
    /// Connections never tied to a call (no call id in the instructions, no stamp).
    pub unlinked: u64,
    pub formats: BTreeMap<String, usize>,
    pub problems: Vec<String>,
    /// Frame sent by the caller → its append read here, µs.
    pub added_us: Vec<u32>,
}

pub async fn serve(listener: TcpListener, run: Arc<Run>, cfg: Arc<MockConfig>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, Arc::clone(&run), Arc::clone(&cfg)));
    }
}

/// A response being streamed.
struct Active {
    response_id: String,
    item_id: String,
    next_chunk: usize,
    next_burst: Instant,
    barge_at: Option<Instant>,
}

struct Conn {
    run: Arc<Run>,
    cfg: Arc<MockConfig>,
    next_id: u64,
    out: Vec<Message>,
    call: Option<u32>,
    /// The link of `call`, looked up once.
    link: Option<Arc<CallLink>>,
    format: Option<Fmt>,
    updated: bool,
    turn: u64,
    next_turn: Option<Instant>,
    active: Option<Active>,
    added_us: Vec<u32>,
    problems: Vec<String>,
    decoded: Vec<u8>,
}

async fn connection(tcp: TcpStream, run: Arc<Run>, cfg: Arc<MockConfig>) {
    let mut conn = Conn {
        run,
        cfg,
        next_id: 0,
        out: Vec::new(),
        call: None,
        link: None,
        format: None,
        updated: false,
        turn: 0,
        next_turn: None,
        active: None,
        added_us: Vec::new(),
        problems: Vec::new(),
        decoded: Vec::with_capacity(1024),
    };
    match tokio_tungstenite::accept_async_with_config(tcp, Some(crate::client::core::ws_config()))
        .await
    {
        Ok(ws) => conn.serve(ws).await,
        Err(e) => conn.problem(format!("handshake failed: {e}")),
    }
    conn.report();
}

impl Conn {
    async fn serve(&mut self, ws: tokio_tungstenite::WebSocketStream<TcpStream>) {
        let (mut sink, mut source) = ws.split();
        self.emit(json!({"type": "session.created", "session": {
            "type": "realtime", "object": "realtime.session", "id": "sess_load",
            "model": "gpt-realtime", "output_modalities": ["audio"]}}));
        loop {
            if !self.out.is_empty() {
                for m in self.out.drain(..) {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let deadline = self.next_deadline();
            let timer = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
            tokio::select! {
                msg = source.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_client(t.as_str()),
                    Some(Ok(Message::Close(_))) => {
                        let _ = sink.send(Message::Close(None)).await;
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                },
                _ = timer, if deadline.is_some() => self.on_timer(),
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let active = self
            .active
            .as_ref()
            .map(|a| a.barge_at.map_or(a.next_burst, |b| b.min(a.next_burst)));
        let turn = self.next_turn.filter(|_| !self.run.stopping.is_cancelled());
        [active, turn].into_iter().flatten().min()
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{:06}", self.next_id)
    }

    fn emit(&mut self, mut ev: Value) {
        ev["event_id"] = json!(self.id("event"));
        self.out.push(Message::text(ev.to_string()));
    }

    fn on_client(&mut self, text: &str) {
        if text.starts_with(APPEND_HEAD) {
            self.on_append(text);
            return;
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.problem(format!("client sent invalid JSON: {e}")),
        };
        match v["type"].as_str().unwrap_or("") {
            "session.update" => self.on_session_update(&v),
            // The greeting (a busy mock just ignores it).
            "response.create" if self.active.is_none() => self.start_response(Instant::now(), None),
            "conversation.item.truncate" => {
                self.emit(json!({"type": "conversation.item.truncated",
                    "item_id": v["item_id"], "content_index": 0, "audio_end_ms": v["audio_end_ms"]}));
            }
            "input_audio_buffer.append" => self.on_append(text),
            _ => {}
        }
    }

    fn on_session_update(&mut self, v: &Value) {
        let Some(fmt) = Fmt::from_session(v) else {
            return self.problem(format!(
                "session.update without a known output format: {v:.200}"
            ));
        };
        self.format = Some(fmt);
        if self.call.is_none() {
            let call = v["session"]["instructions"]
                .as_str()
                .and_then(call_in_instructions);
            if let Some((c, link)) = call.and_then(|c| Some((c, self.run.link(c)?))) {
                self.call = Some(c);
                self.link = Some(link);
            }
        }
        let mut session = v["session"].clone();
        session["object"] = json!("realtime.session");
        session["id"] = json!("sess_load");
        session["audio"]["output"]["format"] = fmt.json();
        self.emit(json!({"type": "session.updated", "session": session}));
        self.updated = true;
        if self.call.is_some() && self.next_turn.is_none() {
            self.next_turn = Some(Instant::now() + FIRST_TURN_AFTER);
        }
    }

    fn on_append(&mut self, text: &str) {
        let now = self.run.ns();
        let Some(start) = text.find(AUDIO_KEY).map(|i| i + AUDIO_KEY.len()) else {
            return self.problem("append without audio".into());
        };
        let Some(len) = text[start..].find('"') else {
            return self.problem("append with an unterminated audio string".into());
        };
        self.decoded.clear();
        if base64::engine::general_purpose::STANDARD
            .decode_vec(&text.as_bytes()[start..start + len], &mut self.decoded)
            .is_err()
        {
            return self.problem("append audio is not base64".into());
        }
        if !self.updated {
            self.problem("audio appended before session.updated".into());
        }
        let Some(fmt) = self.format else {
            return;
        };
        if self.decoded.is_empty() || self.decoded.len() > fmt.max_append() {
            let n = self.decoded.len();
            return self.problem(format!("append of {n} bytes in {}", fmt.name()));
        }
        let stamped = if fmt == Fmt::Pcmu {
            stamp::read_ulaw(&self.decoded)
        } else {
            None
        };
        if let Some((call, seq)) = stamped {
            match self.call {
                None => {
                    let Some(link) = self.run.link(call) else {
                        return;
                    };
                    // No call id in the instructions: the audio tells whose call this is.
                    self.call = Some(call);
                    self.link = Some(link);
                    if self.next_turn.is_none() {
                        self.next_turn = Some(Instant::now() + FIRST_TURN_AFTER);
                    }
                }
                Some(c) if c != call => {
                    if self.run.link(call).is_none() {
                        return;
                    }
                    return self
                        .problem(format!("audio of call {call} on the session of call {c}"));
                }
                Some(_) => {}
            }
            let sent = self.link.as_ref().map_or(0, |l| l.sent(seq));
            if sent > 0 && now >= sent {
                self.added_us
                    .push(u32::try_from((now - sent) / 1000).unwrap_or(u32::MAX));
            }
        }
        if let Some(link) = &self.link {
            // In 20 ms frames, so that they compare with the frames sent whatever the
            // daemon's `uplink_chunk_ms`.
            let frames = self.decoded.len().div_ceil(fmt.frame_bytes()) as u64;
            link.appends
                .fetch_add(frames, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if let Some(a) = &self.active {
            if a.barge_at.is_some_and(|b| b <= now) {
                self.barge_in();
            } else if a.next_burst <= now {
                self.burst();
            }
        }
        if self
            .next_turn
            .is_some_and(|t| t <= now && !self.run.stopping.is_cancelled())
        {
            let at = self.next_turn.unwrap_or(now);
            self.next_turn = Some(at + self.cfg.turn_every);
            if self.active.is_none() {
                self.turn += 1;
                self.caller_turn();
                let barge = self.cfg.barge_every > 0
                    && (self.turn - 1).is_multiple_of(self.cfg.barge_every);
                self.start_response(now, barge.then(|| now + self.cfg.barge_after));
            }
        }
    }

    /// The caller spoke and stopped (server VAD), as before every answer.
    fn caller_turn(&mut self) {
        let item = format!("item_caller_{:04}", self.turn);
        self.emit(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": item}));
        self.emit(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": item}));
        self.emit(json!({"type": "input_audio_buffer.committed", "previous_item_id": null, "item_id": item}));
    }

    fn start_response(&mut self, now: Instant, barge_at: Option<Instant>) {
        let Some(fmt) = self.format else {
            return;
        };
        let response_id = self.id("resp");
        let item_id = self.id("item");
        self.emit(json!({"type": "response.created", "response": {
            "id": response_id, "object": "realtime.response", "status": "in_progress",
            "output": [], "output_modalities": ["audio"],
            "audio": {"output": {"format": fmt.json(), "voice": "marin"}}}}));
        self.emit(
            json!({"type": "response.output_item.added", "response_id": response_id,
            "output_index": 0, "item": {"id": item_id, "type": "message", "role": "assistant",
            "status": "in_progress", "content": []}}),
        );
        self.active = Some(Active {
            response_id,
            item_id,
            next_chunk: 0,
            next_burst: now,
            barge_at,
        });
        self.burst();
    }

    fn send_delta(&mut self, chunk: usize) {
        let (Some(fmt), Some(a)) = (self.format, self.active.as_ref()) else {
            return;
        };
        let cfg = Arc::clone(&self.cfg);
        let Some(b64) = cfg.chunks(fmt).get(chunk) else {
            return;
        };
        let (rid, iid) = (a.response_id.clone(), a.item_id.clone());
        let eid = self.id("event");
        let text = format!(
            r#"{{"type":"response.output_audio.delta","event_id":"{eid}","response_id":"{rid}","item_id":"{iid}","output_index":0,"content_index":0,"delta":"{b64}"}}"#
        );
        if chunk == 0 {
            if let Some(link) = &self.link {
                link.response_started(self.run.ns());
            }
        }
        self.out.push(Message::text(text));
    }

    fn burst(&mut self) {
        let Some(fmt) = self.format else {
            return;
        };
        let total = self.cfg.chunks(fmt).len();
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let chunk = a.next_chunk;
        a.next_chunk += 1;
        a.next_burst += BURST_EVERY;
        self.send_delta(chunk);
        if chunk + 1 >= total {
            self.finish("completed");
        }
    }

    /// `speech_started` mid-reply: the server cancels the response (interrupt_response),
    /// with a couple of deltas already in flight.
    fn barge_in(&mut self) {
        let item = format!("item_caller_{:04}b", self.turn);
        if let Some(link) = &self.link {
            link.barge_sent(self.run.ns());
        }
        self.emit(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": item}));
        if let Some(a) = self.active.as_mut() {
            a.barge_at = None;
        }
        for _ in 0..LATE_DELTAS {
            let Some(a) = self.active.as_mut() else { break };
            let chunk = a.next_chunk;
            a.next_chunk += 1;
            self.send_delta(chunk);
        }
        self.finish("cancelled");
        self.emit(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 600, "item_id": item}));
        self.emit(json!({"type": "input_audio_buffer.committed", "previous_item_id": null, "item_id": item}));
    }

    fn finish(&mut self, status: &str) {
        let Some(a) = self.active.take() else {
            return;
        };
        let ids = json!({"response_id": a.response_id, "item_id": a.item_id, "output_index": 0, "content_index": 0});
        let mut done = ids.clone();
        done["type"] = json!("response.output_audio.done");
        self.emit(done);
        let mut tdone = ids;
        tdone["type"] = json!("response.output_audio_transcript.done");
        tdone["transcript"] = json!("Load test answer.");
        self.emit(tdone);
        self.emit(json!({"type": "response.done", "response": {
            "id": a.response_id, "object": "realtime.response", "status": status,
            "output": [], "usage": {"total_tokens": 150, "input_tokens": 100, "output_tokens": 50}}}));
    }

    fn report(&mut self) {
        let mut t = match self.run.mock.lock() {
            Ok(t) => t,
            Err(e) => e.into_inner(),
        };
        t.connections += 1;
        if self.call.is_none() {
            t.unlinked += 1;
        }
        if let Some(f) = self.format {
            *t.formats.entry(f.name().to_owned()).or_insert(0) += 1;
        }
        t.added_us.append(&mut self.added_us);
        for p in self.problems.drain(..) {
            if t.problems.len() < MAX_PROBLEMS {
                t.problems.push(p);
            }
        }
    }
}

/// The call index in instructions rendered from `{{call_id}}` (`vbload-000042`).
fn call_in_instructions(text: &str) -> Option<u32> {
    let start = text.find(CALL_ID_PREFIX)? + CALL_ID_PREFIX.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_index_from_instructions() {
        assert_eq!(
            call_in_instructions("You are call vbload-000042."),
            Some(42)
        );
        assert_eq!(call_in_instructions("no id here"), None);
    }
}
