//! One simulated `mod_audio_stream` call of the load test.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderValue;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{stamp, LoadtestArgs, Run, CALL_ID_PREFIX, WHEEL_SLOTS};
use crate::audio::{g711, signal};
use crate::telephony::freeswitch::playback::CLEAR_AUDIO;

/// The module gives up on a handshake after 1 s.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// The module waits this long for the server's Close after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Caller audio loops over this much speech.
const LOOP_SECS: f64 = 10.0;
/// After a stall, at most this many missed frames are sent at once (the module bursts
/// to catch up; an unbounded burst after a long stall would only measure the stall).
const MAX_CATCH_UP: u64 = 10;

/// What all calls share: the base URL and the caller audio, made once.
pub struct CallerConfig {
    base: String,
    route: String,
    lead_frames: u64,
    /// L16 frames of speech-like audio whose samples are exact μ-law values (so they
    /// pass through a pcmu session byte for byte), stamp area included.
    frames: Vec<Vec<u8>>,
}

impl CallerConfig {
    pub fn new(args: &LoadtestArgs) -> CallerConfig {
        let speech = signal::speech_like(8000, LOOP_SECS, 7);
        let mut ulaw = Vec::with_capacity(speech.len());
        g711::ulaw_encode(&speech, &mut ulaw);
        let mut exact = Vec::with_capacity(ulaw.len());
        g711::ulaw_decode(&ulaw, &mut exact);
        let frames = exact
            .chunks_exact(160)
            .map(|c| c.iter().flat_map(|s| s.to_le_bytes()).collect())
            .collect();
        CallerConfig {
            base: args.url.trim_end_matches('/').to_owned(),
            route: args.route.clone(),
            lead_frames: args.lead_ms / 20,
            frames,
        }
    }
}

/// What one call saw.
#[derive(Debug, Default)]
pub struct CallResult {
    pub connected: bool,
    /// Why the call failed, if it did (a short kind, aggregated in the report).
    pub error: Option<String>,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub clear_audio: u64,
    pub provider_to_fs_us: Vec<u32>,
    pub barge_cut_us: Vec<u32>,
    pub late_frames: u64,
    pub max_lateness_us: u32,
    pub frames_after_clear: u64,
}

impl CallResult {
    pub fn failed(e: String) -> CallResult {
        CallResult {
            error: Some(e),
            ..CallResult::default()
        }
    }
}

/// Playback timing of the reply being received: frame `k` of a reply is due at
/// `first + max(0, k + 1 − lead_frames) × 20 ms` (the pacer releases the lead at once,
/// then one frame per 20 ms).
struct Reply {
    no: u64,
    first_ns: u64,
    k: u64,
    /// `clearAudio` came for this reply: any more of its frames leaked past the cut.
    cleared: bool,
}

fn us(ns: u64) -> u32 {
    u32::try_from(ns / 1000).unwrap_or(u32::MAX)
}

/// Runs call `idx` until the run stops; never panics on what the daemon sends.
pub async fn call(idx: u32, run: Arc<Run>, cfg: Arc<CallerConfig>) -> CallResult {
    let mut r = CallResult::default();
    let Some(link) = run.link(idx) else {
        return CallResult::failed("no link".into());
    };
    let call_id = format!("{CALL_ID_PREFIX}{idx:06}");
    let url = format!(
        "{}/{}/{call_id}?rate=8000&channels=mono",
        cfg.base, cfg.route
    );
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return CallResult::failed(format!("bad url: {e}")),
    };
    // mod_audio_stream sends an Origin header; no subprotocol.
    if let Ok(origin) = HeaderValue::from_str(&cfg.base.replacen("ws", "http", 1)) {
        request.headers_mut().insert(http::header::ORIGIN, origin);
    }
    let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Err(_) => return CallResult::failed("handshake timeout (1 s)".into()),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            return CallResult::failed(format!("upgrade refused: HTTP {}", resp.status().as_u16()))
        }
        Ok(Err(e)) => return CallResult::failed(format!("connect: {}", kind_of(&e))),
        Ok(Ok((ws, _))) => ws,
    };
    r.connected = true;
    let (mut tx, mut rx) = ws.split();
    let metadata =
        serde_json::json!({"uuid": call_id, "caller_id": "loadtest", "called": "loadtest"});
    if let Err(e) = tx.send(Message::text(metadata.to_string())).await {
        r.error = Some(format!("send: {}", kind_of(&e)));
        return r;
    }

    let slot = idx as usize % WHEEL_SLOTS as usize;
    let mut wheel = run.wheel[slot].subscribe();
    let mut last_period = *wheel.borrow_and_update();
    let mut seq = 0u32;
    let mut reply: Option<Reply> = None;
    let (mut barges_seen, _) = link.barge();
    let mut frame = vec![0u8; 320];

    let ended = loop {
        tokio::select! {
            biased;
            _ = run.stopping.cancelled() => break None,
            changed = wheel.changed() => {
                if changed.is_err() {
                    break None;
                }
                let period = *wheel.borrow_and_update();
                let due = period.saturating_sub(last_period).min(MAX_CATCH_UP);
                last_period = period;
                let mut failed = None;
                for _ in 0..due {
                    let src = &cfg.frames[seq as usize % cfg.frames.len()];
                    frame.copy_from_slice(src);
                    stamp::write_l16(&mut frame, idx, seq);
                    link.set_sent(seq, run.ns());
                    seq = seq.wrapping_add(1);
                    r.frames_sent += 1;
                    if let Err(e) = tx.feed(Message::binary(Bytes::copy_from_slice(&frame))).await {
                        failed = Some(format!("send: {}", kind_of(&e)));
                        break;
                    }
                }
                if failed.is_none() {
                    if let Err(e) = tx.flush().await {
                        failed = Some(format!("send: {}", kind_of(&e)));
                    }
                }
                if failed.is_some() {
                    break failed;
                }
            }
            msg = rx.next() => {
                let now = run.ns();
                match msg {
                    Some(Ok(Message::Binary(_))) => {
                        r.frames_received += 1;
                        on_playback(&mut r, &mut reply, link.response(), now, cfg.lead_frames);
                    }
                    Some(Ok(Message::Text(t))) => {
                        if t.as_str() == CLEAR_AUDIO {
                            r.clear_audio += 1;
                            let (no, at) = link.barge();
                            if no != barges_seen {
                                barges_seen = no;
                                r.barge_cut_us.push(us(now.saturating_sub(at)));
                                // Only a barge-in's clear marks the reply cut: a caller
                                // turn's speech_started also clears when an overloaded
                                // daemon is still playing the previous reply.
                                if let Some(reply) = reply.as_mut() {
                                    reply.cleared = true;
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        break Some(format!("closed by the daemon (code {code})"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(format!("receive: {}", kind_of(&e))),
                    None => break Some("connection dropped".to_owned()),
                }
            }
        }
    };
    if let Some(e) = ended {
        r.error = Some(e);
        return r;
    }
    // The module's hang-up: Close 1000, then up to 1 s for the echo (audio may still
    // arrive meanwhile, and counts: the last barge-in's clearAudio for instance).
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "Normal closure".into(),
    };
    if tx.send(Message::Close(Some(close))).await.is_err() {
        r.error = Some("close: send failed".into());
        return r;
    }
    let echoed = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Close(_)) => return true,
                Ok(Message::Text(t)) if t.as_str() == CLEAR_AUDIO => {
                    r.clear_audio += 1;
                    let (no, at) = link.barge();
                    if no != barges_seen {
                        barges_seen = no;
                        r.barge_cut_us.push(us(run.ns().saturating_sub(at)));
                    }
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    })
    .await;
    if echoed != Ok(true) {
        r.error = Some("close: no Close echo within 1 s".into());
    }
    r
}

/// A playback frame arrived at `now`: first frame of a new reply (the mock started one
/// since the last frame) → provider→FreeSWITCH latency; later frames → lateness
/// against their pacing slot.
fn on_playback(
    r: &mut CallResult,
    reply: &mut Option<Reply>,
    (resp_no, first_delta_ns): (u64, u64),
    now: u64,
    lead_frames: u64,
) {
    match reply {
        Some(cur) if cur.no == resp_no => {
            if cur.cleared {
                r.frames_after_clear += 1;
                return;
            }
            cur.k += 1;
            let slot = cur.first_ns + (cur.k + 1).saturating_sub(lead_frames) * 20_000_000;
            let lateness = now.saturating_sub(slot);
            r.max_lateness_us = r.max_lateness_us.max(us(lateness));
            if lateness > 20_000_000 {
                r.late_frames += 1;
            }
        }
        _ => {
            if resp_no > 0 {
                r.provider_to_fs_us
                    .push(us(now.saturating_sub(first_delta_ns)));
            }
            *reply = Some(Reply {
                no: resp_no,
                first_ns: now,
                k: 0,
                cleared: false,
            });
        }
    }
}

/// A short, aggregatable description of a WebSocket error.
fn kind_of(e: &tungstenite::Error) -> String {
    use tungstenite::Error;
    match e {
        Error::ConnectionClosed | Error::AlreadyClosed => "connection closed".into(),
        Error::Io(io) => format!("io: {:?}", io.kind()),
        Error::Protocol(p) => format!("protocol: {p}"),
        other => other.to_string(),
    }
}
