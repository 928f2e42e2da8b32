//! A Twilio-protocol backend (what a Pipecat bot or the Twilio sample bridge is): a
//! WebSocket server that takes voicebridge as its carrier.
//!
//! It validates what the carrier sends, per Twilio's WS messages page: `connected`
//! (`protocol` "Call", `version` "1.0.0") → `start` (`sequenceNumber` "1", `streamSid`
//! top level and in `start`, `MZ`/`CA`/`AC` + 32 hex ids, `tracks` ["inbound"],
//! `mediaFormat` audio/x-mulaw, 8000 and 1 as numbers, `customParameters` an object) →
//! `media` (`sequenceNumber` +1 each message, `chunk` +1 from "1", `timestamp` strings
//! never going back, track "inbound", 160 B payload) / `dtmf` (`inbound_track`, one key)
//! / `mark` echoes (only names it sent, once, in order) → `stop` (same sids), then
//! nothing. It records the caller's μ-law, plays scripted μ-law `media` at once (as the
//! Twilio sample forwards a model's bursts), sends `mark`s and `clear`s, and timestamps
//! everything on the test's clock so a test can order events across the processes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

const B64: base64::engine::general_purpose::GeneralPurpose =
    base64::engine::general_purpose::STANDARD;

/// What the test tells the backend to do.
#[derive(Debug)]
pub enum Cmd {
    /// Send this μ-law audio now, as `media` messages of 20 ms.
    Play(Vec<u8>),
    /// Send a `mark` with this name.
    Mark(String),
    /// Send `clear`.
    Clear,
}

/// A mark the backend sent: the audio before it, and when its first byte was sent.
#[derive(Clone, Debug)]
pub struct SentMark {
    pub name: String,
    /// μ-law bytes sent before it since the last `clear`.
    pub audio_before: usize,
    /// When the first of those bytes was sent.
    pub audio_from: Option<Instant>,
    pub sent_at: Instant,
}

#[derive(Debug, Default)]
pub struct Recorded {
    pub errors: Vec<String>,
    /// Every event name received, in order.
    pub events: Vec<String>,
    pub authorization: Option<String>,
    pub extra_header: Option<String>,
    pub start: Option<Value>,
    /// The caller's μ-law, as received.
    pub caller: Vec<u8>,
    pub media_in: usize,
    pub dtmf: Vec<String>,
    pub marks_sent: Vec<SentMark>,
    /// Echoes received: name and when.
    pub mark_echoes: Vec<(String, Instant)>,
    /// μ-law bytes sent, and when each `clear` went.
    pub played: usize,
    pub clears_sent: Vec<Instant>,
    pub stop: bool,
    pub closed: bool,
    pub connections: usize,
}

pub struct MockBackend {
    pub addr: SocketAddr,
    state: Arc<Mutex<Recorded>>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
}

impl MockBackend {
    // The handshake callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    pub async fn start() -> MockBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(Recorded::default()));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let st = state.clone();
        tokio::spawn(async move {
            // One stream per mock: the commands belong to it.
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let hs = st.clone();
            let callback =
                move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                    let mut s = hs.lock().unwrap();
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    s.authorization = header("authorization");
                    s.extra_header = header("x-bot-tenant");
                    s.connections += 1;
                    Ok(resp)
                };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                st.lock().unwrap().errors.push("handshake failed".into());
                return;
            };
            serve(ws, st, cmd_rx).await;
        });
        MockBackend {
            addr,
            state,
            cmd_tx,
        }
    }

    /// A Pipecat-style URL.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn send(&self, cmd: Cmd) {
        self.cmd_tx.send(cmd).expect("mock running");
    }

    pub fn recorded<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// Waits (hang guard 30 s) until `pred` holds on the recorded state.
    pub async fn wait(&self, what: &str, pred: impl Fn(&Recorded) -> bool) {
        let wait = async {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                if pred(&self.state.lock().unwrap()) {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .is_err()
        {
            let s = self.state.lock().unwrap();
            panic!(
                "mock backend: {what} never happened; events {:?}, errors {:?}",
                s.events.iter().rev().take(5).collect::<Vec<_>>(),
                s.errors
            );
        }
    }
}

fn is_sid(v: &Value, prefix: &str) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 34 && s.starts_with(prefix) && s[2..].chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// Checks one carrier message against the order and the field names; records it.
struct Validator {
    seq: u64,
    chunk: u64,
    timestamp: u64,
    stream: String,
    account: String,
    call: String,
}

impl Validator {
    fn check(&mut self, s: &mut Recorded, v: &Value) {
        let event = v["event"].as_str().unwrap_or("").to_owned();
        let n = s.events.len();
        let mut err = |what: String| s.errors.push(format!("{event} #{n}: {what}"));
        match (n, event.as_str()) {
            (0, "connected") => {
                if v["protocol"] != "Call" || v["version"] != "1.0.0" {
                    err(format!("bad connected {v}"));
                }
            }
            (0, _) => err("the first message must be connected".into()),
            (1, "start") => {
                let st = &v["start"];
                let fmt = &st["mediaFormat"];
                if v["sequenceNumber"] != "1"
                    || v["streamSid"] != st["streamSid"]
                    || !is_sid(&st["streamSid"], "MZ")
                    || !is_sid(&st["callSid"], "CA")
                    || !is_sid(&st["accountSid"], "AC")
                    || st["tracks"] != json!(["inbound"])
                    || fmt["encoding"] != "audio/x-mulaw"
                    || fmt["sampleRate"] != json!(8000)
                    || fmt["channels"] != json!(1)
                    || !st["customParameters"].is_object()
                {
                    err(format!("bad start {v}"));
                }
                self.seq = 1;
                self.stream = st["streamSid"].as_str().unwrap_or("").to_owned();
                self.account = st["accountSid"].as_str().unwrap_or("").to_owned();
                self.call = st["callSid"].as_str().unwrap_or("").to_owned();
            }
            (1, _) => err("the second message must be start".into()),
            _ if s.stop => err("a message after stop".into()),
            (_, "start") | (_, "connected") => err("sent twice".into()),
            (_, kind) => {
                self.seq += 1;
                if v["sequenceNumber"].as_str() != Some(self.seq.to_string().as_str()) {
                    err(format!(
                        "sequenceNumber {} != {}",
                        v["sequenceNumber"], self.seq
                    ));
                }
                if v["streamSid"] != self.stream.as_str() {
                    err("wrong streamSid".into());
                }
                match kind {
                    "media" => {
                        let m = &v["media"];
                        self.chunk += 1;
                        let ts: u64 = m["timestamp"]
                            .as_str()
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(u64::MAX);
                        if m["track"] != "inbound"
                            || m["chunk"].as_str() != Some(self.chunk.to_string().as_str())
                        {
                            err(format!("bad media {m}"));
                        }
                        if ts == u64::MAX || ts < self.timestamp {
                            err(format!("timestamp {} went back", m["timestamp"]));
                        }
                        self.timestamp = ts;
                        match m["payload"].as_str().map(|p| B64.decode(p)) {
                            Some(Ok(b)) if b.len() == 160 => {
                                s.caller.extend(b);
                                s.media_in += 1;
                            }
                            other => err(format!("payload {other:?}")),
                        }
                    }
                    "dtmf" => {
                        let d = &v["dtmf"];
                        match d["digit"].as_str() {
                            Some(k) if d["track"] == "inbound_track" && k.chars().count() == 1 => {
                                s.dtmf.push(k.to_owned())
                            }
                            _ => err(format!("bad dtmf {d}")),
                        }
                    }
                    "mark" => {
                        let name = v["mark"]["name"].as_str().unwrap_or("").to_owned();
                        let next = s
                            .marks_sent
                            .get(s.mark_echoes.len())
                            .map(|m| m.name.clone());
                        if next.as_deref() != Some(name.as_str()) {
                            err(format!("echo {name:?}, expected {next:?}"));
                        }
                        s.mark_echoes.push((name, Instant::now()));
                    }
                    "stop" => {
                        let st = &v["stop"];
                        if st["accountSid"] != self.account.as_str()
                            || st["callSid"] != self.call.as_str()
                        {
                            err(format!("bad stop {v}"));
                        }
                        s.stop = true;
                    }
                    other => err(format!("unknown event {other}")),
                }
            }
        }
        if n == 1 {
            s.start = Some(v["start"].clone());
        }
        s.events.push(event);
    }
}

async fn serve(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    st: Arc<Mutex<Recorded>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let (mut sink, mut stream) = ws.split();
    let mut v = Validator {
        seq: 0,
        chunk: 0,
        timestamp: 0,
        stream: String::new(),
        account: String::new(),
        call: String::new(),
    };
    // Audio sent since the last clear, and when its first byte went.
    let mut since_clear = 0usize;
    let mut from: Option<Instant> = None;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let mut s = st.lock().unwrap();
                    match serde_json::from_str::<Value>(t.as_str()) {
                        Ok(value) => v.check(&mut s, &value),
                        Err(e) => s.errors.push(format!("not JSON: {e}")),
                    }
                }
                Some(Ok(Message::Binary(_))) => st.lock().unwrap().errors.push("binary frame".into()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { continue };
                let stream_sid = v.stream.clone();
                let out: Vec<String> = match cmd {
                    Cmd::Play(audio) => {
                        from.get_or_insert_with(Instant::now);
                        since_clear += audio.len();
                        st.lock().unwrap().played += audio.len();
                        audio.chunks(160).map(|c| json!({"event": "media", "streamSid": stream_sid, "media": {"payload": B64.encode(c)}}).to_string()).collect()
                    }
                    Cmd::Mark(name) => {
                        st.lock().unwrap().marks_sent.push(SentMark { name: name.clone(), audio_before: since_clear, audio_from: from, sent_at: Instant::now() });
                        vec![json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).to_string()]
                    }
                    Cmd::Clear => {
                        since_clear = 0;
                        from = None;
                        st.lock().unwrap().clears_sent.push(Instant::now());
                        vec![json!({"event": "clear", "streamSid": stream_sid}).to_string()]
                    }
                };
                for m in out {
                    if sink.send(Message::text(m)).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    st.lock().unwrap().closed = true;
}
