//! One simulated `mod_audio_stream` call of the load test: the shared client core
//! ([`crate::client::core`]) on the run's timer wheel, measuring playback timing and
//! barge-in cuts against what the mock provider sent.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use voicebridge::audio::{g711, signal};

use super::{stamp, LoadtestArgs, Run, CALL_ID_PREFIX, WHEEL_SLOTS};
use crate::client::core::{self, DialError, Inbound};
use crate::client::wire::CLEAR_AUDIO;
/// Caller audio loops over this much speech.
const LOOP_SECS: f64 = 10.0;
/// After a stall, at most this many missed frames are sent at once (the module bursts
/// to catch up; an unbounded burst after a long stall would only measure the stall).
const MAX_CATCH_UP: u64 = 10;

/// What all calls share: the base URL and the caller audio, made once.
pub struct CallerConfig {
    pub(super) base: String,
    /// The module's `Origin` for the daemon's address; `None` if the URL does not parse.
    origin: Option<String>,
    pub(super) route: String,
    pub(super) lead_frames: u64,
    /// L16 frames of speech-like audio whose samples are exact μ-law values (so they
    /// pass through a pcmu session byte for byte), stamp area included.
    pub(super) frames: Vec<Vec<u8>>,
    pub(super) protocol: super::Protocol,
    /// `--token`, for `asterisk-ws` (HTTP Basic).
    pub(super) token: Option<crate::client::call::args::BearerToken>,
    /// The `[[audiosocket]]` listener, for `audiosocket` (`--url HOST:PORT`).
    pub(super) audiosocket: Option<std::net::SocketAddr>,
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
        let base = args.url.trim_end_matches('/').to_owned();
        CallerConfig {
            origin: base.parse().ok().as_ref().and_then(core::origin),
            base,
            route: args.route.clone(),
            lead_frames: args.lead_ms / 20,
            frames,
            protocol: args.protocol,
            token: args.token.clone(),
            audiosocket: crate::client::call::audiosocket::parse_target(&args.url)
                .ok()
                .map(|t| t.addr),
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
    /// When the upgrade completed (ns since the run's epoch).
    pub up_ns: u64,
    /// When the call hung up on its own schedule (`--call-secs`), not at the run's end.
    pub hung_up_ns: Option<u64>,
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
pub(super) struct Reply {
    pub(super) no: u64,
    first_ns: u64,
    k: u64,
    /// `clearAudio` came for this reply: any more of its frames leaked past the cut.
    pub(super) cleared: bool,
}

pub(super) fn us(ns: u64) -> u32 {
    u32::try_from(ns / 1000).unwrap_or(u32::MAX)
}

/// Runs call number `idx` on slot `slot` until the run stops or `ends_at`; never panics
/// on what the daemon sends.
pub async fn call(
    idx: u32,
    slot: u32,
    ends_at: Option<Instant>,
    run: &Arc<Run>,
    cfg: &CallerConfig,
) -> CallResult {
    match cfg.protocol {
        super::Protocol::Twilio => {
            return super::twilio_caller::call(idx, slot, ends_at, run, cfg).await
        }
        super::Protocol::AsteriskWs => {
            return super::asterisk_caller::call(idx, slot, ends_at, run, cfg).await
        }
        super::Protocol::Audiosocket => {
            return super::audiosocket_caller::call(idx, slot, ends_at, run, cfg).await
        }
        super::Protocol::Freeswitch => {}
    }
    let mut r = CallResult::default();
    let Some(link) = run.link(idx) else {
        return CallResult::failed("no link".into());
    };
    let call_id = format!("{CALL_ID_PREFIX}{idx:06}");
    let url = format!(
        "{}/{}/{call_id}?rate=8000&channels=mono",
        cfg.base, cfg.route
    );
    let Some(origin) = cfg.origin.as_deref() else {
        return CallResult::failed("bad url".into());
    };
    let mut leg = match core::dial(&url, origin, None).await {
        Ok(leg) => leg,
        Err(DialError::Timeout) => return CallResult::failed("handshake timeout (1 s)".into()),
        Err(DialError::Refused { status, .. }) => {
            return CallResult::failed(format!("upgrade refused: HTTP {status}"))
        }
        Err(DialError::Transport(e)) => {
            return CallResult::failed(format!("connect: {}", kind_of(&e)))
        }
        Err(e) => return CallResult::failed(format!("bad url: {e}")),
    };
    r.connected = true;
    r.up_ns = run.ns();
    let metadata =
        serde_json::json!({"uuid": call_id, "caller_id": "loadtest", "called": "loadtest"});
    if let Err(e) = leg.send_text(&metadata.to_string()).await {
        r.error = Some(format!("send: {}", kind_of(&e)));
        return r;
    }

    let mut wheel = run.wheel[slot as usize % WHEEL_SLOTS as usize].subscribe();
    let mut last_period = *wheel.borrow_and_update();
    let mut seq = 0u32;
    let mut reply: Option<Reply> = None;
    let (mut barges_seen, _) = link.barge();
    let mut frame = vec![0u8; 320];
    // Without an end of its own the call lasts until the run stops.
    let own_end = tokio::time::sleep_until(ends_at.unwrap_or_else(Instant::now));
    tokio::pin!(own_end);

    let ended = loop {
        tokio::select! {
            biased;
            _ = run.stopping.cancelled() => break None,
            _ = &mut own_end, if ends_at.is_some() => {
                r.hung_up_ns = Some(run.ns());
                break None;
            }
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
                    if let Err(e) = leg.feed_audio(Bytes::copy_from_slice(&frame)).await {
                        failed = Some(format!("send: {}", kind_of(&e)));
                        break;
                    }
                }
                if failed.is_none() {
                    if let Err(e) = leg.flush().await {
                        failed = Some(format!("send: {}", kind_of(&e)));
                    }
                }
                if failed.is_some() {
                    break failed;
                }
            }
            inbound = leg.next() => {
                let now = run.ns();
                match inbound {
                    Inbound::Audio(_) => {
                        r.frames_received += 1;
                        on_playback(&mut r, &mut reply, link.response(), now, cfg.lead_frames);
                    }
                    Inbound::Text(t) => {
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
                    Inbound::Closed(frame) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        break Some(format!("closed by the daemon (code {code})"));
                    }
                    Inbound::Ping | Inbound::Pong => {}
                    Inbound::Lost(e) => break Some(format!("receive: {}", kind_of(&e))),
                    Inbound::Ended => break Some("connection dropped".to_owned()),
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
    let hang_up = leg
        .hang_up(Duration::ZERO, |inbound| {
            if matches!(&inbound, Inbound::Text(t) if t.as_str() == CLEAR_AUDIO) {
                r.clear_audio += 1;
                let (no, at) = link.barge();
                if no != barges_seen {
                    barges_seen = no;
                    r.barge_cut_us.push(us(run.ns().saturating_sub(at)));
                }
            }
        })
        .await;
    if !hang_up.sent {
        r.error = Some("close: send failed".into());
    } else if hang_up.echo.is_none() {
        r.error = Some("close: no Close echo within 1 s".into());
    }
    r
}

/// A playback frame arrived at `now`: first frame of a new reply (the mock started one
/// since the last frame) → provider→FreeSWITCH latency; later frames → lateness
/// against their pacing slot.
pub(super) fn on_playback(
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
pub(super) fn kind_of(e: &tungstenite::Error) -> String {
    use tungstenite::Error;
    match e {
        Error::ConnectionClosed | Error::AlreadyClosed => "connection closed".into(),
        Error::Io(io) => format!("io: {:?}", io.kind()),
        Error::Protocol(p) => format!("protocol: {p}"),
        other => other.to_string(),
    }
}
