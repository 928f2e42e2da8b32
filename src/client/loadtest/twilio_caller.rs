//! One simulated Twilio Media Streams call of the load test (`--protocol twilio`):
//! `/twilio/<route>`, `connected` + `start`, then μ-law in `media` JSON every 20 ms on
//! the run's timer wheel, and the carrier's playback modelled: what we receive is
//! "played" in real time, each `mark` echoed once the audio before it has played (at the
//! wheel's 20 ms granularity), `clear` drops the rest and returns the pending marks.
//! The same measurements as the FreeSWITCH caller ([`super::caller`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use voicebridge::audio::g711;

use super::caller::{kind_of, on_playback, us, CallResult, CallerConfig, Reply};
use super::{stamp, Run, WHEEL_SLOTS};

/// Bytes of one 20 ms μ-law chunk.
const CHUNK: usize = 160;
/// After a stall, at most this many missed chunks are sent at once (as the
/// FreeSWITCH caller does).
const MAX_CATCH_UP_FRAMES: u64 = 10;
/// Marks waiting for their audio to play, at most (the daemon sends one per 100 ms and
/// stops releasing past its bound, so this is never reached by a sane daemon).
const MAX_PENDING_MARKS: usize = 256;

/// The carrier's playback of one call: when the audio received so far ends, and the
/// marks waiting for it.
#[derive(Default)]
struct Player {
    plays_until_ns: u64,
    marks: VecDeque<(u64, String)>,
}

impl Player {
    fn media(&mut self, now: u64, bytes: usize) {
        let dur = bytes as u64 * 1_000_000 / 8; // μ-law 8 kHz: 125 µs per byte
        self.plays_until_ns = self.plays_until_ns.max(now) + dur;
    }

    fn mark(&mut self, now: u64, name: String) {
        if self.marks.len() < MAX_PENDING_MARKS {
            self.marks.push_back((self.plays_until_ns.max(now), name));
        }
    }

    /// Marks whose audio has played by `now`.
    fn due(&mut self, now: u64) -> Vec<String> {
        let mut out = Vec::new();
        while self.marks.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, name)) = self.marks.pop_front() {
                out.push(name);
            }
        }
        out
    }

    /// `clear`: nothing more plays, every pending mark is returned.
    fn clear(&mut self, now: u64) -> Vec<String> {
        self.plays_until_ns = now;
        self.marks.drain(..).map(|(_, n)| n).collect()
    }
}

fn sid(prefix: &str, idx: u32) -> String {
    format!("{prefix}{idx:032x}")
}

/// Runs call number `idx` as a Twilio stream until the run stops or `ends_at`.
pub async fn call(
    idx: u32,
    slot: u32,
    ends_at: Option<Instant>,
    run: &Arc<Run>,
    cfg: &CallerConfig,
) -> CallResult {
    let mut r = CallResult::default();
    let Some(link) = run.link(idx) else {
        return CallResult::failed("no link".into());
    };
    let url = format!("{}/twilio/{}", cfg.base, cfg.route);
    let connect = tokio::time::timeout(
        Duration::from_secs(1),
        tokio_tungstenite::connect_async_with_config(
            url.as_str(),
            Some(crate::client::core::ws_config()),
            true,
        ),
    )
    .await;
    let ws = match connect {
        Err(_) => return CallResult::failed("handshake timeout (1 s)".into()),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            return CallResult::failed(format!("upgrade refused: HTTP {}", resp.status().as_u16()))
        }
        Ok(Err(e)) => return CallResult::failed(format!("connect: {}", kind_of(&e))),
        Ok(Ok((ws, _))) => ws,
    };
    r.connected = true;
    r.up_ns = run.ns();
    let (mut sink, mut stream) = ws.split();
    let stream_sid = sid("MZ", idx);
    let call_sid = sid("CA", idx);
    let mut seq = 0u64;
    let mut msg = |mut v: Value| {
        seq += 1;
        if let Some(o) = v.as_object_mut() {
            o.insert("sequenceNumber".into(), json!(seq.to_string()));
            if o.get("event").and_then(Value::as_str) != Some("connected") {
                o.insert("streamSid".into(), json!(stream_sid));
            }
        }
        Message::text(v.to_string())
    };
    let hello = [
        msg(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})),
        msg(json!({"event": "start", "start": {
            "accountSid": sid("AC", 0), "streamSid": stream_sid, "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": {"from": "loadtest", "to": "loadtest"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }})),
    ];
    for m in hello {
        if let Err(e) = sink.feed(m).await {
            return CallResult {
                error: Some(format!("send: {}", kind_of(&e))),
                ..r
            };
        }
    }

    let mut wheel = run.wheel[slot as usize % WHEEL_SLOTS as usize].subscribe();
    let mut last_period = *wheel.borrow_and_update();
    let mut frame_no = 0u32;
    let mut reply: Option<Reply> = None;
    let (mut barges_seen, _) = link.barge();
    let mut player = Player::default();
    let mut l16 = vec![0u8; CHUNK * 2];
    let mut samples = Vec::with_capacity(CHUNK);
    let mut ulaw = Vec::with_capacity(CHUNK);
    let started_ns = run.ns();
    let own_end = tokio::time::sleep_until(ends_at.unwrap_or_else(Instant::now));
    tokio::pin!(own_end);

    let ended = loop {
        let mut out: Vec<Message> = Vec::new();
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
                let due = period.saturating_sub(last_period).min(MAX_CATCH_UP_FRAMES);
                last_period = period;
                for _ in 0..due {
                    let src = &cfg.frames[frame_no as usize % cfg.frames.len()];
                    l16.copy_from_slice(src);
                    stamp::write_l16(&mut l16, idx, frame_no);
                    samples.clear();
                    samples.extend(l16.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
                    ulaw.clear();
                    g711::ulaw_encode(&samples, &mut ulaw);
                    link.set_sent(frame_no, run.ns());
                    let ts = (run.ns().saturating_sub(started_ns)) / 1_000_000;
                    out.push(msg(json!({"event": "media", "media": {
                        "track": "inbound", "chunk": (frame_no + 1).to_string(),
                        "timestamp": ts.to_string(), "payload": B64.encode(&ulaw)}})));
                    frame_no = frame_no.wrapping_add(1);
                    r.frames_sent += 1;
                }
                for name in player.due(run.ns()) {
                    out.push(msg(json!({"event": "mark", "mark": {"name": name}})));
                }
            }
            inbound = stream.next() => {
                let now = run.ns();
                match inbound {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        match v.get("event").and_then(Value::as_str) {
                            Some("media") => {
                                let bytes = v["media"]["payload"]
                                    .as_str()
                                    .and_then(|p| B64.decode(p).ok())
                                    .map_or(0, |a| a.len());
                                // One playback frame per 20 ms chunk.
                                for _ in 0..bytes.div_ceil(CHUNK) {
                                    r.frames_received += 1;
                                    on_playback(&mut r, &mut reply, link.response(), now, cfg.lead_frames);
                                }
                                player.media(now, bytes);
                            }
                            Some("mark") => {
                                let name = v["mark"]["name"].as_str().unwrap_or("").to_owned();
                                player.mark(now, name);
                                for name in player.due(now) {
                                    out.push(msg(json!({"event": "mark", "mark": {"name": name}})));
                                }
                            }
                            Some("clear") => {
                                r.clear_audio += 1;
                                let (no, at) = link.barge();
                                if no != barges_seen {
                                    barges_seen = no;
                                    r.barge_cut_us.push(us(now.saturating_sub(at)));
                                    if let Some(reply) = reply.as_mut() {
                                        reply.cleared = true;
                                    }
                                }
                                for name in player.clear(now) {
                                    out.push(msg(json!({"event": "mark", "mark": {"name": name}})));
                                }
                            }
                            _ => break Some("a message Twilio would reject (31951)".to_owned()),
                        }
                    }
                    Some(Ok(Message::Binary(_))) => break Some("a binary frame (Twilio 31950)".to_owned()),
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
        let mut failed = None;
        for m in out {
            if let Err(e) = sink.feed(m).await {
                failed = Some(format!("send: {}", kind_of(&e)));
                break;
            }
        }
        if failed.is_none() {
            if let Err(e) = sink.flush().await {
                failed = Some(format!("send: {}", kind_of(&e)));
            }
        }
        if failed.is_some() {
            break failed;
        }
    };
    if let Some(e) = ended {
        r.error = Some(e);
        return r;
    }
    // Twilio's hang-up: `stop`, then the Close; up to 1 s for the echo.
    let stop =
        msg(json!({"event": "stop", "stop": {"accountSid": sid("AC", 0), "callSid": call_sid}}));
    if sink.send(stop).await.is_err() {
        r.error = Some("close: send failed".into());
        return r;
    }
    if let Err(e) = close_and_await_echo(&mut sink, &mut stream).await {
        r.error = Some(e);
    }
    r
}

/// Sends a Close and waits up to 1 s for its echo (what arrives meanwhile is dropped).
pub(super) async fn close_and_await_echo<S, R>(sink: &mut S, stream: &mut R) -> Result<(), String>
where
    S: futures_util::Sink<Message> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    if sink.send(Message::Close(None)).await.is_err() {
        return Err("close: send failed".into());
    }
    let echo = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(m) = stream.next().await {
            match m {
                Ok(Message::Close(_)) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    })
    .await;
    if matches!(echo, Ok(true)) {
        Ok(())
    } else {
        Err("close: no Close echo within 1 s".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_come_back_once_their_audio_has_played() {
        let mut p = Player::default();
        let ms = 1_000_000;
        p.media(0, 160);
        p.mark(0, "1".into());
        p.media(0, 160);
        p.mark(0, "2".into());
        assert!(p.due(19 * ms).is_empty());
        assert_eq!(p.due(20 * ms), ["1"]);
        assert_eq!(p.due(40 * ms), ["2"]);
        p.mark(100 * ms, "3".into());
        assert_eq!(p.due(100 * ms), ["3"], "nothing queued: at once");
    }

    #[test]
    fn clear_returns_every_pending_mark() {
        let mut p = Player::default();
        p.media(0, 1600);
        p.mark(0, "1".into());
        p.media(0, 1600);
        p.mark(0, "2".into());
        assert_eq!(p.clear(10), ["1", "2"]);
        p.media(20, 160);
        p.mark(20, "3".into());
        assert_eq!(
            p.due(20 + 20_000_000),
            ["3"],
            "the clear dropped the old audio"
        );
    }
}
