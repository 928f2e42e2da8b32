//! `voicebridge call --protocol asterisk-ws`: a stand-in for one Asterisk chan_websocket
//! channel (Asterisk dialling voicebridge), for admins checking a daemon set up for
//! Asterisk without a PBX at hand.
//!
//! What it does is what the channel driver does: Asterisk's upgrade (no Origin, HTTP
//! Basic from `--token` as the `password`), `MEDIA_START` in JSON, one caller frame per
//! 20 ms tick, and the driver's playout: the daemon's audio is cut into frames, queued
//! and played one per tick (a late tick is not made up), `MARK_MEDIA` answered with
//! `MEDIA_MARK_PROCESSED` when it reaches the head, `FLUSH_MEDIA` empties the queue,
//! `HANGUP` ends the call. What was played is written to `--out`, time-aligned with the
//! WAV (silence on empty ticks). The FreeSWITCH path (`client::call`) is not involved;
//! the tests' fake Asterisk (`tests/common/fake_asterisk_ws.rs`) is the independent
//! reference.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderValue;
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use voicebridge::audio::{g711, Codec};

use crate::client::call::args::{CallArgs, CallError};
use crate::client::call::wav::{read_caller_wav, OutWav};
use crate::client::core::{CLOSE_WAIT, HANDSHAKE_TIMEOUT};

/// chan_websocket's queue limit: a message arriving at this many frames is ignored.
const QUEUE_MAX: usize = 1000;
/// Silence after the WAV when neither `--tail-ms` nor `--tail-secs` is given.
const DEFAULT_TAIL: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(20);

/// What the call did, printed at the end (`--json`: one object).
#[derive(Debug, Default, Serialize)]
pub struct AsteriskSummary {
    pub url: String,
    pub format: String,
    pub duration_ms: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub frames_played: u64,
    pub empty_ticks: u64,
    pub marks_processed: u64,
    pub flushes: u64,
    pub answered: bool,
    pub hangup_command: bool,
    pub ignored_commands: u64,
    /// The daemon's Close code, or ours echoed.
    pub close_code: Option<u16>,
    pub closed_by: String,
    pub out_ms: u64,
}

enum Queued {
    Frame(Vec<u8>),
    Mark(String),
}

/// chan_websocket's playout queue, pure (also the load test's, `--protocol
/// asterisk-ws`): binary messages are cut into frames and queued, `MARK_MEDIA` waits in
/// line behind the audio before it, and each 20 ms tick processes the marks at the head
/// then plays one frame; `FLUSH_MEDIA` empties it all.
#[derive(Default)]
pub(crate) struct DriverQueue {
    queue: VecDeque<Queued>,
    frames: usize,
}

impl DriverQueue {
    /// A binary message of whole `frame_bytes` frames (a trailing partial frame is
    /// dropped); ignored when the queue already holds [`QUEUE_MAX`] frames, as Asterisk does.
    pub(crate) fn audio(&mut self, data: &[u8], frame_bytes: usize) {
        if self.frames >= QUEUE_MAX || frame_bytes == 0 {
            return;
        }
        for f in data.chunks_exact(frame_bytes) {
            self.queue.push_back(Queued::Frame(f.to_vec()));
            self.frames += 1;
        }
    }

    /// `MARK_MEDIA`: processed once the audio queued before it has played.
    pub(crate) fn mark(&mut self, id: String) {
        // Bounded like the audio: a peer marking without end cannot grow it.
        if self.queue.len() < 2 * QUEUE_MAX {
            self.queue.push_back(Queued::Mark(id));
        }
    }

    /// `FLUSH_MEDIA`: nothing queued plays, its marks are dropped with it.
    pub(crate) fn flush(&mut self) {
        self.queue.clear();
        self.frames = 0;
    }

    /// One tick: the marks at the head go into `marks` (processed now), then the
    /// frame played, if any.
    pub(crate) fn tick(&mut self, marks: &mut Vec<String>) -> Option<Vec<u8>> {
        while let Some(item) = self.queue.pop_front() {
            match item {
                Queued::Mark(id) => marks.push(id),
                Queued::Frame(f) => {
                    self.frames -= 1;
                    return Some(f);
                }
            }
        }
        None
    }
}

/// The Asterisk format name, frame size and codec for a WAV rate and `--codec`.
pub(crate) fn format_for(
    rate: u32,
    codec: Option<Codec>,
) -> Result<(&'static str, Codec), CallError> {
    let bad = |why: String| Err(CallError::InvalidOption(why));
    match (rate, codec) {
        (8000, Some(Codec::Pcmu)) => Ok(("ulaw", Codec::Pcmu)),
        (8000, Some(Codec::Pcma)) => Ok(("alaw", Codec::Pcma)),
        (_, Some(Codec::Pcmu | Codec::Pcma)) => {
            bad(format!("G.711 is 8000 Hz, the WAV is {rate} Hz"))
        }
        (8000, _) => Ok(("slin", Codec::L16)),
        (16000, _) => Ok(("slin16", Codec::L16)),
        (24000, _) => Ok(("slin24", Codec::L16)),
        (32000, _) => Ok(("slin32", Codec::L16)),
        (48000, _) => Ok(("slin48", Codec::L16)),
        _ => bad(format!("no chan_websocket slin format at {rate} Hz")),
    }
}

pub(crate) fn encode(codec: Codec, samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 2);
    match codec {
        Codec::Pcmu => g711::ulaw_encode(samples, &mut out),
        Codec::Pcma => g711::alaw_encode(samples, &mut out),
        Codec::L16 => out.extend(samples.iter().flat_map(|s| s.to_le_bytes())),
    }
    out
}

pub(crate) fn decode(codec: Codec, bytes: &[u8]) -> Vec<i16> {
    let mut out = Vec::with_capacity(bytes.len());
    match codec {
        Codec::Pcmu => g711::ulaw_decode(bytes, &mut out),
        Codec::Pcma => g711::alaw_decode(bytes, &mut out),
        Codec::L16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        ),
    }
    out
}

/// The `MEDIA_MARK_PROCESSED` event for mark `id`, in JSON.
pub(crate) fn mark_processed(channel_id: &str, id: &str) -> String {
    serde_json::json!({
        "event": "MEDIA_MARK_PROCESSED",
        "channel_id": channel_id,
        "correlation_id": id,
    })
    .to_string()
}

/// The URL without its query (which may carry `token=`), for printing.
fn display_url(url: &str) -> String {
    url.split('?').next().unwrap_or("").to_owned()
}

/// A command from the daemon (JSON: we announce `f(json)` in `MEDIA_START`).
pub(crate) fn command_of(text: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    (field("command"), field("correlation_id"))
}

pub async fn main(args: CallArgs) -> ExitCode {
    match run(&args).await {
        Ok(summary) => {
            if args.json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                println!("{summary:#?}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("voicebridge call: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Places the call as one chan_websocket channel and returns what happened.
pub async fn run(args: &CallArgs) -> Result<AsteriskSummary, CallError> {
    let caller = read_caller_wav(&args.wav)?;
    let (format, codec) = format_for(caller.rate, args.codec)?;
    let frame_samples = caller.rate as usize / 50;
    let frame_bytes = frame_samples * codec.bytes_per_sample();
    let writer = match &args.out {
        Some(path) => Some(OutWav::create(path, caller.rate)?),
        None => None,
    };
    let url = display_url(&args.url);
    let invalid = |reason: String| CallError::InvalidUrl {
        url: url.clone(),
        reason,
    };
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(token) = &args.token {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("voicebridge-call:{}", token.expose()));
        let mut value = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|_| CallError::InvalidOption("the token cannot be sent in a header".into()))?;
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    let connect = tokio_tungstenite::connect_async_with_config(
        request,
        Some(crate::client::core::ws_config()),
        true,
    );
    let mut ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Err(_) => return Err(CallError::HandshakeTimeout { url }),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            return Err(CallError::Refused {
                url,
                status: resp.status().as_u16(),
                body,
            });
        }
        Ok(Err(e)) => {
            return Err(CallError::Connect {
                reason: voicebridge::redact::scrub(&e.to_string(), &args.url),
                url,
            })
        }
        Ok(Ok((ws, _))) => ws,
    };

    let mut s = AsteriskSummary {
        url,
        format: format.to_owned(),
        ..AsteriskSummary::default()
    };
    let start = serde_json::json!({
        "event": "MEDIA_START",
        "connection_id": "voicebridge-call",
        "channel": "WebSocket/voicebridge-call-00000001",
        "channel_id": format!("vb-call-{}", std::process::id()),
        "format": format,
        "optimal_frame_size": frame_bytes,
        "ptime": 20,
        "channel_variables": {},
    });
    let lost = |e: tungstenite::Error| CallError::Connect {
        url: s_url(&args.url),
        reason: voicebridge::redact::scrub(&e.to_string(), &args.url),
    };
    ws.send(Message::text(start.to_string()))
        .await
        .map_err(lost)?;

    let tail = args
        .tail_ms
        .map(Duration::from_millis)
        .or(args.tail_secs.map(Duration::from_secs_f64))
        .unwrap_or(DEFAULT_TAIL);
    let total_frames =
        caller.samples.len().div_ceil(frame_samples) as u64 + (tail.as_millis() / 20) as u64;
    let mut queue = DriverQueue::default();
    let mut marks = Vec::new();
    let mut heard: Vec<i16> = Vec::new();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    // Asterisk's timer never makes up a late tick.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ended_by_server = false;
    while s.frames_sent < total_frames {
        tokio::select! {
            _ = ticker.tick() => {
                // The driver's read: marks at the head, then one frame.
                let played = queue.tick(&mut marks);
                for id in marks.drain(..) {
                    ws.send(Message::text(mark_processed("voicebridge-call", &id))).await.map_err(lost)?;
                    s.marks_processed += 1;
                }
                if let Some(f) = &played {
                    heard.extend(decode(codec, f));
                    s.frames_played += 1;
                } else {
                    s.empty_ticks += 1;
                    heard.extend(std::iter::repeat_n(0i16, frame_samples));
                }
                let i = s.frames_sent as usize * frame_samples;
                let mut frame: Vec<i16> = caller.samples.get(i..).unwrap_or(&[]).iter().take(frame_samples).copied().collect();
                frame.resize(frame_samples, 0);
                ws.send(Message::Binary(encode(codec, &frame).into())).await.map_err(lost)?;
                s.frames_sent += 1;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    s.frames_received += 1;
                    queue.audio(&data, frame_bytes);
                }
                Some(Ok(Message::Text(text))) => {
                    let (command, id) = command_of(text.as_str());
                    match command.as_str() {
                        "MARK_MEDIA" => queue.mark(id),
                        "FLUSH_MEDIA" => {
                            queue.flush();
                            s.flushes += 1;
                        }
                        "ANSWER" => s.answered = true,
                        "HANGUP" => {
                            s.hangup_command = true;
                            ended_by_server = true;
                            break;
                        }
                        _ => s.ignored_commands += 1,
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    s.close_code = frame.map(|f| u16::from(f.code));
                    ended_by_server = true;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    ended_by_server = true;
                    break;
                }
            },
        }
    }
    // The caller hangs up (or we answer the daemon's hang-up): Close 1000, then theirs.
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                if s.close_code.is_none() {
                    s.close_code = frame.map(|f| u16::from(f.code));
                }
            }
        }
    })
    .await;
    s.closed_by = if ended_by_server { "server" } else { "us" }.to_owned();
    s.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    s.out_ms = heard.len() as u64 * 1000 / u64::from(caller.rate);
    if let Some(w) = writer {
        w.write(&heard)?;
    }
    Ok(s)
}

fn s_url(url: &str) -> String {
    display_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_wav_rate_and_codec() {
        assert_eq!(format_for(8000, None).unwrap(), ("slin", Codec::L16));
        assert_eq!(format_for(16000, None).unwrap(), ("slin16", Codec::L16));
        assert_eq!(
            format_for(8000, Some(Codec::Pcmu)).unwrap(),
            ("ulaw", Codec::Pcmu)
        );
        assert_eq!(
            format_for(8000, Some(Codec::Pcma)).unwrap(),
            ("alaw", Codec::Pcma)
        );
        assert!(format_for(16000, Some(Codec::Pcmu)).is_err());
        assert!(format_for(11025, None).is_err());
    }

    #[test]
    fn the_queue_plays_a_frame_per_tick_with_marks_in_line() {
        let mut q = DriverQueue::default();
        let mut marks = Vec::new();
        q.audio(&[1, 2, 3, 4, 5], 2);
        q.mark("a".into());
        q.audio(&[6, 7], 2);
        assert_eq!(q.tick(&mut marks), Some(vec![1, 2]));
        assert!(marks.is_empty());
        assert_eq!(
            q.tick(&mut marks),
            Some(vec![3, 4]),
            "the odd byte is dropped"
        );
        assert_eq!(q.tick(&mut marks), Some(vec![6, 7]));
        assert_eq!(marks, ["a"], "the mark went when its audio had played");
        q.audio(&[8, 9], 2);
        q.mark("b".into());
        q.flush();
        marks.clear();
        assert_eq!(q.tick(&mut marks), None);
        assert!(marks.is_empty(), "a flush drops the marks with the audio");
    }

    #[test]
    fn commands_and_the_printed_url() {
        assert_eq!(
            command_of(r#"{"command":"MARK_MEDIA","correlation_id":"7"}"#),
            ("MARK_MEDIA".to_owned(), "7".to_owned())
        );
        assert_eq!(command_of("garbage"), (String::new(), String::new()));
        assert_eq!(
            display_url("ws://h:1/asterisk/call?call=1&token=s3cret"),
            "ws://h:1/asterisk/call"
        );
        let pcm = [0i16, 1000, -1000, i16::MAX];
        assert_eq!(decode(Codec::L16, &encode(Codec::L16, &pcm)), pcm);
    }
}
