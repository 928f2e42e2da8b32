//! One simulated Asterisk AudioSocket call of the load test (`--protocol audiosocket`):
//! a TCP connection to an `[[audiosocket]]` listener (`--url HOST:PORT`), the UUID
//! message first, then one stamped 8 kHz slin message (`0x10`) per 20 ms on the run's
//! timer wheel; hang-up is closing the socket, as Asterisk does. The framing is the
//! daemon's own pure codec (`telephony::audiosocket::frame`), as in `voicebridge call
//! --protocol audiosocket`.
//!
//! Asterisk plays each message the moment it arrives and has no way to take one back,
//! so there is no clear command: a barge-in is the daemon *stopping* its audio. The
//! daemon ends a cut reply with a short fade-out message (under one frame), which is
//! where we read the cut; should no fade come, the cut is read as the last audio after
//! the barge-in once nothing has arrived for [`SILENT_CUT`]. Any audio of the cut reply
//! after that is a leak (`frames_after_clear`). The 1 s keep-alive silence the daemon
//! sends when it has nothing else is not playback and is skipped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use voicebridge::telephony::audiosocket::frame::{self, Decoder, Message};
use voicebridge::telephony::audiosocket::MAX_PAYLOAD;

use super::caller::{on_playback, us, CallResult, CallerConfig, Reply};
use super::{stamp, CallLink, Run, WHEEL_SLOTS};

/// Bytes of one 20 ms slin frame at 8 kHz.
const FRAME_BYTES: usize = 320;
/// After a stall, at most this many missed frames are sent at once (as the FreeSWITCH
/// caller does).
const MAX_CATCH_UP_FRAMES: u64 = 10;
/// Asterisk's connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A barge-in with no fade-out counts as cut once no audio came for this long: far
/// longer than the daemon's 20 ms pacing, even on a loaded machine.
const SILENT_CUT: Duration = Duration::from_millis(300);
/// A silent frame this long after the previous message is the daemon's keep-alive
/// (sent after 1 s without audio), not a frame of a reply (paced every 20 ms).
const KEEPALIVE_GAP: Duration = Duration::from_millis(500);

/// The UUID of call `idx`: fixed per call number so runs are comparable in logs.
pub fn call_uuid(idx: u32) -> uuid::Uuid {
    // "vbload" in the high bytes, the call number in the low ones.
    uuid::Uuid::from_u128((0x7662_6c6f_6164u128 << 80) | u128::from(idx))
}

/// A barge-in the mock sent whose cut we have not seen yet.
struct PendingCut {
    at_ns: u64,
    /// The latest audio received after it.
    last_audio_ns: Option<u64>,
}

/// What the caller tracks of the daemon's audio to find the barge-in cuts. Pure.
#[derive(Default)]
struct Cuts {
    barges_seen: u64,
    pending: Option<PendingCut>,
}

impl Cuts {
    /// Notes a barge-in the mock sent since we last looked.
    fn poll(&mut self, (no, at_ns): (u64, u64)) {
        if no != self.barges_seen {
            self.barges_seen = no;
            self.pending = Some(PendingCut {
                at_ns,
                last_audio_ns: None,
            });
        }
    }

    /// A full frame of audio at `now`.
    fn audio(&mut self, now: u64) {
        if let Some(p) = self.pending.as_mut() {
            p.last_audio_ns = Some(now);
        }
    }

    /// The fade-out at `now`: the cut, if a barge-in is pending (its latency).
    fn fade(&mut self, now: u64) -> Option<u64> {
        self.pending.take().map(|p| now.saturating_sub(p.at_ns))
    }

    /// No fade: once nothing came for [`SILENT_CUT`], the cut is the last audio after
    /// the barge-in (or the barge-in itself).
    fn silent(&mut self, now: u64) -> Option<u64> {
        let p = self.pending.as_ref()?;
        let last = p.last_audio_ns.unwrap_or(p.at_ns).max(p.at_ns);
        if now.saturating_sub(last) < SILENT_CUT.as_nanos() as u64 {
            return None;
        }
        self.pending.take().map(|p| last - p.at_ns)
    }
}

/// Records a cut of `latency_ns`: the reply being played is over.
fn cut(r: &mut CallResult, reply: &mut Option<Reply>, latency_ns: u64) {
    r.clear_audio += 1;
    r.barge_cut_us.push(us(latency_ns));
    if let Some(reply) = reply.as_mut() {
        reply.cleared = true;
    }
}

/// Runs call number `idx` over AudioSocket until the run stops or `ends_at`.
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
    let Some(addr) = cfg.audiosocket else {
        return CallResult::failed("bad url".into());
    };
    let stream = match connect(addr).await {
        Ok(s) => s,
        Err(e) => return CallResult::failed(e),
    };
    r.connected = true;
    r.up_ns = run.ns();
    let (mut read, mut write) = stream.into_split();
    let mut out = Vec::with_capacity(1024);
    frame::encode(frame::KIND_UUID, call_uuid(idx).as_bytes(), &mut out);
    if let Err(e) = write.write_all(&out).await {
        r.error = Some(format!("write: {:?}", e.kind()));
        return r;
    }
    out.clear();

    let decoder = Decoder::new(MAX_PAYLOAD);
    let mut buf = BytesMut::with_capacity(4096);
    let mut wheel = run.wheel[slot as usize % WHEEL_SLOTS as usize].subscribe();
    let mut last_period = *wheel.borrow_and_update();
    let mut seq = 0u32;
    let mut reply: Option<Reply> = None;
    let mut cuts = Cuts {
        barges_seen: link.barge().0,
        pending: None,
    };
    let mut last_msg_ns = run.ns();
    let mut frame = vec![0u8; FRAME_BYTES];
    let own_end = tokio::time::sleep_until(ends_at.unwrap_or_else(Instant::now));
    tokio::pin!(own_end);

    let ended = 'call: loop {
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
                    frame.copy_from_slice(&cfg.frames[seq as usize % cfg.frames.len()]);
                    stamp::write_l16(&mut frame, idx, seq);
                    link.set_sent(seq, run.ns());
                    seq = seq.wrapping_add(1);
                    r.frames_sent += 1;
                    frame::encode(frame::KIND_SLIN_8K, &frame, &mut out);
                }
                // One write per tick: Asterisk writes each message whole.
                if let Err(e) = write.write_all(&out).await {
                    break Some(format!("write: {:?}", e.kind()));
                }
                out.clear();
                let now = run.ns();
                cuts.poll(link.barge());
                if let Some(latency) = cuts.silent(now) {
                    cut(&mut r, &mut reply, latency);
                }
            }
            read_result = read.read_buf(&mut buf) => {
                match read_result {
                    Ok(0) => break Some("closed by the daemon".to_owned()),
                    Err(e) => break Some(format!("read: {:?}", e.kind())),
                    Ok(_) => {}
                }
                let now = run.ns();
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(None) => break,
                        Ok(Some(Message::Audio { payload, .. })) => {
                            let gap = now.saturating_sub(last_msg_ns);
                            last_msg_ns = now;
                            on_audio(&mut r, &mut reply, &mut cuts, &link, &payload, gap, now, cfg.lead_frames);
                        }
                        Ok(Some(Message::Hangup)) => break 'call Some("hang-up from the daemon".to_owned()),
                        Ok(Some(other)) => break 'call Some(format!("a message Asterisk refuses: {other:?}")),
                        Err(e) => break 'call Some(format!("bad framing: {e}")),
                    }
                }
                // Bounded: whole messages are taken off, and one may announce at most
                // MAX_PAYLOAD bytes.
                buf.reserve(4096);
            }
        }
    };
    if let Some(e) = ended {
        r.error = Some(e);
        return r;
    }
    // Asterisk's hang-up: it closes the socket; the daemon then closes its side
    // (after its own hang-up message), which we wait up to 1 s for.
    let _ = write.shutdown().await;
    drop(write);
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        loop {
            match read.read(&mut sink).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if !matches!(closed, Ok(true)) {
        r.error = Some("close: the daemon did not close within 1 s".into());
    }
    r
}

/// One audio message from the daemon, received at `now`, `gap` after the previous one.
#[allow(clippy::too_many_arguments)]
fn on_audio(
    r: &mut CallResult,
    reply: &mut Option<Reply>,
    cuts: &mut Cuts,
    link: &CallLink,
    payload: &[u8],
    gap: u64,
    now: u64,
    lead_frames: u64,
) {
    cuts.poll(link.barge());
    if payload.len() < FRAME_BYTES {
        // The fade-out: the daemon's last word on the cut reply.
        if let Some(latency) = cuts.fade(now) {
            cut(r, reply, latency);
        }
        return;
    }
    let response = link.response();
    let new_reply = reply.as_ref().is_none_or(|cur| cur.no != response.0);
    let silent = payload.iter().all(|b| *b == 0);
    if silent && !new_reply && gap >= KEEPALIVE_GAP.as_nanos() as u64 {
        return;
    }
    for _ in 0..payload.len() / FRAME_BYTES {
        r.frames_received += 1;
        on_playback(r, reply, response, now, lead_frames);
    }
    cuts.audio(now);
}

/// TCP connect within Asterisk's timeout, Nagle off (20 ms messages must not wait).
async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => Err("connect timeout (2 s)".into()),
        Ok(Err(e)) => Err(format!("connect: {:?}", e.kind())),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_fade_is_the_cut() {
        let mut c = Cuts::default();
        c.poll((0, 0));
        assert_eq!(c.fade(5 * MS), None, "no barge-in pending");
        c.poll((1, 100 * MS));
        c.audio(110 * MS);
        assert_eq!(c.silent(120 * MS), None);
        assert_eq!(c.fade(112 * MS), Some(12 * MS));
        assert_eq!(c.fade(130 * MS), None, "one cut per barge-in");
    }

    #[test]
    fn without_a_fade_the_cut_is_the_last_audio_once_silence_lasts() {
        let mut c = Cuts::default();
        c.poll((1, 100 * MS));
        c.audio(120 * MS);
        c.audio(140 * MS);
        assert_eq!(c.silent(300 * MS), None, "not silent for long enough yet");
        assert_eq!(c.silent(440 * MS), Some(40 * MS));
        c.poll((2, 1000 * MS));
        assert_eq!(
            c.silent(1300 * MS),
            Some(0),
            "nothing after it: cut at once"
        );
    }

    #[test]
    fn call_uuids_differ_per_call() {
        assert_ne!(call_uuid(0), call_uuid(1));
        assert_eq!(call_uuid(7).as_u128() & 0xffff_ffff, 7);
    }
}
