//! A fake carrier that opens a Media Stream to voicebridge as Twilio does for
//! `<Connect><Stream>` (and Telnyx for bidirectional `rtp` streaming), faithful to the
//! carriers' published protocol:
//! - TEXT JSON only; `connected`, then `start` (every field, SIDs `MZ`/`CA`/`AC` + 32
//!   hex), then `media` (base64, one 20 ms chunk each, `chunk` +1 from 1, `timestamp`
//!   in ms since the start), `dtmf`, and `stop` before the close; `sequenceNumber`
//!   counts every message from 1 (Telnyx: `sequence_number`, `stream_id`, snake case).
//! - What we receive is played in real time: `media` audio is queued and consumed at
//!   8 samples per ms by a player clock; a `mark` is echoed only once all the audio
//!   queued before it has been played (at once when nothing is queued); `clear` drops
//!   the queue and returns every pending mark at once.
//! - Anything the carriers would reject is recorded as a problem: a binary frame
//!   (Twilio warning 31950), a message other than media/mark/clear, malformed JSON, a
//!   missing or wrong `streamSid` (Twilio 31951/31924), a media payload with a header.
//!
//! Telnyx variant: chunks may be sent out of order (pairs swapped), PCMA/L16, no
//! stream id expected in what we receive.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::daemon::HANG_GUARD;

/// Which carrier's dialect the fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Twilio,
    Telnyx,
}

/// How a call is opened.
#[derive(Clone, Debug)]
pub struct TwilioOptions {
    pub dialect: Dialect,
    /// The URL path (`/twilio/<route>`).
    pub path: String,
    /// Extra upgrade headers (`X-Twilio-Signature`, `Host`, `Authorization`).
    pub headers: Vec<(String, String)>,
    /// `start.customParameters`.
    pub params: Value,
    /// `mediaFormat.encoding` and rate as the carrier names them.
    pub encoding: String,
    pub rate: u32,
    /// Telnyx: swap every pair of media chunks on the wire (out-of-order delivery).
    pub reorder: bool,
    /// Send only `connected`, no `start` (bad-input tests).
    pub no_start: bool,
}

impl TwilioOptions {
    pub fn twilio(route: &str) -> TwilioOptions {
        TwilioOptions {
            dialect: Dialect::Twilio,
            path: format!("/twilio/{route}"),
            headers: Vec::new(),
            params: json!({"from": "+3902123", "to": "+3902100"}),
            encoding: "audio/x-mulaw".to_owned(),
            rate: 8000,
            reorder: false,
            no_start: false,
        }
    }

    pub fn telnyx(route: &str, encoding: &str, rate: u32) -> TwilioOptions {
        TwilioOptions {
            dialect: Dialect::Telnyx,
            path: format!("/telnyx/{route}"),
            headers: Vec::new(),
            params: json!({}),
            encoding: encoding.to_owned(),
            rate,
            reorder: true,
            no_start: false,
        }
    }

    /// Bytes per 20 ms chunk.
    pub fn chunk_bytes(&self) -> usize {
        let samples = self.rate as usize / 50;
        if self.encoding.to_ascii_lowercase().contains("l16") {
            samples * 2
        } else {
            samples
        }
    }
}

/// One thing the fake received or did, in order.
#[derive(Clone, Debug)]
pub enum Got {
    /// A `media` message and when it arrived.
    Media { at: Instant, payload: Vec<u8> },
    /// A `mark` message.
    Mark { at: Instant, name: String },
    /// A `clear`, with how many bytes it dropped from the playback queue.
    Clear { at: Instant, dropped: usize },
}

/// A mark echoed: its name and how many bytes had been played when it was.
#[derive(Clone, Debug)]
pub struct Echoed {
    pub name: String,
    pub played: usize,
    pub at: Instant,
}

enum Queued {
    Audio(Vec<u8>),
    Mark(String),
}

#[derive(Default)]
pub struct TwilioState {
    pub got: Vec<Got>,
    /// Audio as played, in order (the queue consumed at real time).
    pub played: Vec<u8>,
    /// Bytes played before each clear arrived.
    pub played_at_clear: Vec<usize>,
    pub echoed: Vec<Echoed>,
    pub problems: Vec<String>,
    /// The daemon's Close (code, reason), once it came.
    pub close: Option<(u16, String)>,
    /// The connection has ended (Close or drop).
    pub ended: bool,
    queue: VecDeque<Queued>,
}

impl TwilioState {
    pub fn media_bytes(&self) -> usize {
        self.got
            .iter()
            .map(|g| match g {
                Got::Media { payload, .. } => payload.len(),
                _ => 0,
            })
            .sum()
    }

    pub fn clears(&self) -> usize {
        self.got
            .iter()
            .filter(|g| matches!(g, Got::Clear { .. }))
            .count()
    }

    pub fn marks_sent(&self) -> usize {
        self.got
            .iter()
            .filter(|g| matches!(g, Got::Mark { .. }))
            .count()
    }
}

/// A live fake stream.
pub struct FakeTwilio {
    pub opts: TwilioOptions,
    pub stream_sid: String,
    pub call_sid: String,
    state: Arc<Mutex<TwilioState>>,
    notify: Arc<Notify>,
    out: mpsc::UnboundedSender<Out>,
    started: Instant,
    /// The last chunk number, and (Telnyx reorder) a chunk held back to go after the
    /// next one.
    sending: Mutex<(u64, Option<Value>)>,
    tasks: Vec<JoinHandle<()>>,
}

enum Out {
    /// A message without its sequence number (the writer stamps it).
    Json(Value),
    Raw(Message),
    Close,
}

fn sid(prefix: &str) -> String {
    let mut s = prefix.to_owned();
    for _ in 0..32 {
        s.push(char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'));
    }
    s
}

/// Why a fake stream could not be opened.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
}

impl FakeTwilio {
    /// Opens the stream and sends `connected` and `start`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        opts: TwilioOptions,
    ) -> Result<FakeTwilio, Refused> {
        let url = format!("ws://{addr}{}", opts.path);
        FakeTwilio::open(url, opts, None).await
    }

    /// [`FakeTwilio::connect`] over `wss://` (a TLS front end): `base` is
    /// `wss://host:port`, `tls` a client config trusting the front end's certificate.
    pub async fn connect_tls(
        base: &str,
        opts: TwilioOptions,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<FakeTwilio, Refused> {
        let url = format!("{base}{}", opts.path);
        FakeTwilio::open(url, opts, Some(tokio_tungstenite::Connector::Rustls(tls))).await
    }

    async fn open(
        url: String,
        opts: TwilioOptions,
        connector: Option<tokio_tungstenite::Connector>,
    ) -> Result<FakeTwilio, Refused> {
        let mut request = url.into_client_request().expect("request");
        for (k, v) in &opts.headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("header name");
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(v).expect("header value"));
        }
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
        let ws = match connecting.await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                return Err(Refused {
                    status: resp.status().as_u16(),
                })
            }
            Err(e) => panic!("connect failed: {e}"),
        };
        let (mut sink, mut stream) = ws.split();
        let state = Arc::new(Mutex::new(TwilioState::default()));
        let notify = Arc::new(Notify::new());
        let (out, mut out_rx) = mpsc::unbounded_channel::<Out>();
        let dialect = opts.dialect;
        let stream_sid = match dialect {
            Dialect::Twilio => sid("MZ"),
            Dialect::Telnyx => uuid::Uuid::new_v4().to_string(),
        };
        let call_sid = match dialect {
            Dialect::Twilio => sid("CA"),
            Dialect::Telnyx => format!("v3:{}", sid("")),
        };
        // The writer: stamps sequence numbers (every message from 1) and the stream id.
        let sid_w = stream_sid.clone();
        let writer = tokio::spawn(async move {
            let mut seq = 0u64;
            while let Some(o) = out_rx.recv().await {
                let msg = match o {
                    Out::Json(mut v) => {
                        seq += 1;
                        let obj = v.as_object_mut().expect("object");
                        match dialect {
                            Dialect::Twilio => {
                                obj.insert("sequenceNumber".into(), json!(seq.to_string()));
                                if obj["event"] != "connected" {
                                    obj.insert("streamSid".into(), json!(sid_w));
                                }
                            }
                            Dialect::Telnyx => {
                                obj.insert("sequence_number".into(), json!(seq.to_string()));
                                if obj["event"] != "connected" {
                                    obj.insert("stream_id".into(), json!(sid_w));
                                }
                            }
                        }
                        Message::text(v.to_string())
                    }
                    Out::Raw(m) => m,
                    Out::Close => {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                };
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
            // Keep the sink until the reader has seen the end (dropping it would
            // not close the socket anyway: the reader half keeps it open).
            let _ = sink.flush().await;
        });
        // The reader: what the daemon sends.
        let st = Arc::clone(&state);
        let nt = Arc::clone(&notify);
        let out_r = out.clone();
        let sid_r = stream_sid.clone();
        let reader = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let now = Instant::now();
                let mut s = st.lock().unwrap();
                match msg {
                    Ok(Message::Text(t)) => {
                        on_text(&mut s, &out_r, dialect, &sid_r, t.as_str(), now)
                    }
                    Ok(Message::Binary(b)) => s.problems.push(format!(
                        "binary frame of {} bytes (Twilio warning 31950)",
                        b.len()
                    )),
                    Ok(Message::Close(f)) => {
                        s.close = Some(
                            f.map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new())),
                        );
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
                drop(s);
                nt.notify_waiters();
            }
            st.lock().unwrap().ended = true;
            nt.notify_waiters();
        });
        // The player: consumes the queue at real time, echoing marks once reached.
        let st = Arc::clone(&state);
        let nt = Arc::clone(&notify);
        let out_p = out.clone();
        let per_tick = opts.chunk_bytes() / 4; // 5 ms per tick
        let player = tokio::spawn(async move {
            let mut clock = tokio::time::interval(Duration::from_millis(5));
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                clock.tick().await;
                let mut guard = st.lock().unwrap();
                let s = &mut *guard;
                if s.ended {
                    break;
                }
                let mut budget = per_tick;
                while budget > 0 {
                    match s.queue.front_mut() {
                        Some(Queued::Audio(a)) => {
                            let n = budget.min(a.len());
                            let played: Vec<u8> = a.drain(..n).collect();
                            s.played.extend(played);
                            budget -= n;
                            if a.is_empty() {
                                s.queue.pop_front();
                            }
                        }
                        _ => break,
                    }
                }
                echo_reached(s, &out_p);
                drop(guard);
                nt.notify_waiters();
            }
        });
        let mut fake = FakeTwilio {
            opts,
            stream_sid,
            call_sid,
            state,
            notify,
            out,
            started: Instant::now(),
            sending: Mutex::new((0, None)),
            tasks: vec![writer, reader, player],
        };
        fake.send_start();
        Ok(fake)
    }

    fn send_start(&mut self) {
        let o = &self.opts;
        match o.dialect {
            Dialect::Twilio => {
                self.send_json(
                    json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                );
                if o.no_start {
                    return;
                }
                let account = sid("AC");
                self.send_json(json!({"event": "start", "start": {
                    "accountSid": account,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": o.params,
                    "mediaFormat": {"encoding": o.encoding, "sampleRate": o.rate, "channels": 1},
                }}));
            }
            Dialect::Telnyx => {
                self.send_json(json!({"event": "connected", "version": "1.0.0"}));
                self.send_json(json!({"event": "start", "start": {
                    "user_id": uuid::Uuid::new_v4().to_string(),
                    "call_control_id": self.call_sid,
                    "call_session_id": uuid::Uuid::new_v4().to_string(),
                    "from": "+15550001",
                    "to": "+15550002",
                    "client_state": "",
                    "custom_parameters": o.params,
                    "media_format": {"encoding": o.encoding, "sample_rate": o.rate, "channels": 1},
                }}));
            }
        }
        self.started = Instant::now();
    }

    fn send_json(&self, v: Value) {
        let _ = self.out.send(Out::Json(v));
    }

    /// Sends one chunk of caller audio (already encoded).
    pub fn send_media(&self, payload: &[u8]) {
        let mut sending = self.sending.lock().unwrap();
        sending.0 += 1;
        let chunk = sending.0;
        let ts = self.started.elapsed().as_millis() as u64;
        let media = match self.opts.dialect {
            Dialect::Twilio => json!({"event": "media", "media": {
                "track": "inbound", "chunk": chunk.to_string(),
                "timestamp": ts.to_string(), "payload": B64.encode(payload)}}),
            Dialect::Telnyx => json!({"event": "media", "media": {
                "track": "inbound", "chunk": chunk.to_string(),
                "timestamp": ts.to_string(), "payload": B64.encode(payload)}}),
        };
        if self.opts.reorder {
            // Swap each pair: chunk 2 goes before chunk 1, 4 before 3, ...
            match sending.1.take() {
                None => sending.1 = Some(media),
                Some(first) => {
                    self.send_json(media);
                    self.send_json(first);
                }
            }
        } else {
            self.send_json(media);
        }
    }

    /// Sends `audio` (encoded) paced in real time, one chunk every 20 ms.
    pub async fn send_paced(&self, audio: &[u8]) {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for chunk in audio.chunks(self.opts.chunk_bytes()) {
            clock.tick().await;
            if self.state.lock().unwrap().ended {
                return;
            }
            self.send_media(chunk);
        }
        let last = self.sending.lock().unwrap().1.take();
        if let Some(last) = last {
            self.send_json(last);
        }
    }

    pub fn send_dtmf(&self, digit: char) {
        self.send_json(json!({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit.to_string()}}));
    }

    /// Any message as the carrier would not send it (bad-input tests).
    pub fn send_raw(&self, msg: Message) {
        let _ = self.out.send(Out::Raw(msg));
    }

    /// An event the protocol may add one day (must be ignored).
    pub fn send_unknown(&self, event: &str) {
        self.send_json(json!({"event": event, "info": {"x": 1}}));
    }

    /// `stop` then our Close, as the carrier does when the call ends.
    pub fn hang_up(&self) {
        match self.opts.dialect {
            Dialect::Twilio => self.send_json(
                json!({"event": "stop", "stop": {"accountSid": "AC", "callSid": self.call_sid}}),
            ),
            Dialect::Telnyx => {
                self.send_json(json!({"event": "stop", "stop": {"call_control_id": self.call_sid}}))
            }
        }
        let _ = self.out.send(Out::Close);
    }

    pub fn with<R>(&self, f: impl FnOnce(&TwilioState) -> R) -> R {
        f(&self.state.lock().unwrap())
    }

    /// Waits (event-driven, with the hang guard) until `pred` holds.
    pub async fn wait(&self, what: &str, pred: impl Fn(&TwilioState) -> bool) {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if pred(&self.state.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(HANG_GUARD, wait).await.is_err() {
            let s = self.state.lock().unwrap();
            panic!(
                "fake Twilio: {what} not seen; {} media bytes, {} marks, {} clears, problems {:?}",
                s.media_bytes(),
                s.marks_sent(),
                s.clears(),
                s.problems
            );
        }
    }

    /// Waits for the daemon to end the connection.
    pub async fn wait_ended(&self) {
        self.wait("the end of the connection", |s| s.ended).await;
    }

    /// Hangs up and waits for the end.
    pub async fn finish(self) -> FakeTwilio {
        self.hang_up();
        self.wait_ended().await;
        self
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Echoes the marks at the head of the queue: all the audio before them has played.
fn echo_reached(s: &mut TwilioState, out: &mpsc::UnboundedSender<Out>) {
    while let Some(Queued::Mark(_)) = s.queue.front() {
        let Some(Queued::Mark(name)) = s.queue.pop_front() else {
            break;
        };
        let played = s.played.len();
        s.echoed.push(Echoed {
            name: name.clone(),
            played,
            at: Instant::now(),
        });
        let _ = out.send(Out::Json(json!({"event": "mark", "mark": {"name": name}})));
    }
}

fn on_text(
    s: &mut TwilioState,
    out: &mpsc::UnboundedSender<Out>,
    dialect: Dialect,
    stream_sid: &str,
    text: &str,
    now: Instant,
) {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            s.problems.push(format!("not JSON (31951): {e}"));
            return;
        }
    };
    if dialect == Dialect::Twilio && v["streamSid"] != stream_sid {
        s.problems.push(format!(
            "streamSid {:?} is not the stream's (31951)",
            v["streamSid"]
        ));
    }
    match v["event"].as_str().unwrap_or("") {
        "media" => {
            let Some(payload) = v["media"]["payload"].as_str() else {
                s.problems.push("media without media.payload".into());
                return;
            };
            let Ok(audio) = B64.decode(payload) else {
                s.problems.push("media payload not base64".into());
                return;
            };
            if audio.starts_with(b"RIFF") {
                s.problems
                    .push("media payload with a file header (31924)".into());
            }
            s.got.push(Got::Media {
                at: now,
                payload: audio.clone(),
            });
            s.queue.push_back(Queued::Audio(audio));
        }
        "mark" => {
            let Some(name) = v["mark"]["name"].as_str() else {
                s.problems.push("mark without mark.name".into());
                return;
            };
            s.got.push(Got::Mark {
                at: now,
                name: name.to_owned(),
            });
            s.queue.push_back(Queued::Mark(name.to_owned()));
            // Nothing queued before it: returned at once.
            echo_reached(s, out);
        }
        "clear" => {
            let mut dropped = 0;
            let mut marks = Vec::new();
            for q in s.queue.drain(..) {
                match q {
                    Queued::Audio(a) => dropped += a.len(),
                    Queued::Mark(m) => marks.push(m),
                }
            }
            let played = s.played.len();
            s.played_at_clear.push(played);
            s.got.push(Got::Clear { at: now, dropped });
            for name in marks {
                s.echoed.push(Echoed {
                    name: name.clone(),
                    played,
                    at: now,
                });
                let _ = out.send(Out::Json(json!({"event": "mark", "mark": {"name": name}})));
            }
        }
        other => s
            .problems
            .push(format!("message {other:?} is not media/mark/clear (31924)")),
    }
}
