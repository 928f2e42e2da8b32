//! One simulated Asterisk chan_websocket channel of the load test (`--protocol
//! asterisk-ws`): the upgrade to `/asterisk/<route>?call=<id>` (HTTP Basic from
//! `--token`, no Origin, as Asterisk sends it), `MEDIA_START` in JSON (`slin`, 320-byte
//! frames), one stamped L16 frame per 20 ms on the run's timer wheel, and the driver's
//! playout ([`DriverQueue`], shared with `voicebridge call --protocol asterisk-ws`): what
//! we receive is queued and played one frame per tick (a late tick is not made up),
//! `MARK_MEDIA` answered with `MEDIA_MARK_PROCESSED` when its audio has played,
//! `FLUSH_MEDIA` (the barge-in) empties the queue. The same measurements as the
//! FreeSWITCH caller ([`super::caller`]); playback timing is read on arrival, as there.

use std::sync::Arc;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderValue;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

use super::caller::{kind_of, on_playback, us, CallResult, CallerConfig, Reply};
use super::twilio_caller::close_and_await_echo;
use super::{stamp, Run, CALL_ID_PREFIX, WHEEL_SLOTS};
use crate::client::asterisk_ws::{command_of, mark_processed, DriverQueue};
use crate::client::core::HANDSHAKE_TIMEOUT;

/// Bytes of one 20 ms `slin` (L16 8 kHz) frame.
const FRAME_BYTES: usize = 320;
/// After a stall, at most this many missed caller frames are sent at once (as the
/// FreeSWITCH caller does); the playout, like Asterisk's timer, never makes up a tick.
const MAX_CATCH_UP_FRAMES: u64 = 10;

/// The `Authorization` value Asterisk sends for a client section's `username` /
/// `password` (the daemon checks the password as a token).
fn basic_auth(token: &str) -> String {
    let pair = format!("loadtest:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Runs call number `idx` as a chan_websocket channel until the run stops or `ends_at`.
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
    // The `vbload-` id in the query lets the mock find the call in its instructions.
    let call_id = format!("{CALL_ID_PREFIX}{idx:06}");
    let url = format!("{}/asterisk/{}?call={call_id}", cfg.base, cfg.route);
    let mut request = match url.as_str().into_client_request() {
        Ok(req) => req,
        Err(e) => return CallResult::failed(format!("bad url: {e}")),
    };
    if let Some(token) = &cfg.token {
        match HeaderValue::from_str(&basic_auth(token.expose())) {
            Ok(mut value) => {
                value.set_sensitive(true);
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, value);
            }
            Err(_) => return CallResult::failed("the token cannot be sent in a header".into()),
        }
    }
    // `true`: Nagle off; 20 ms frames must not wait for each other.
    let connect = tokio_tungstenite::connect_async_with_config(
        request,
        Some(crate::client::core::ws_config()),
        true,
    );
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Err(_) => return CallResult::failed("handshake timeout".into()),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            return CallResult::failed(format!("upgrade refused: HTTP {}", resp.status().as_u16()))
        }
        Ok(Err(e)) => return CallResult::failed(format!("connect: {}", kind_of(&e))),
        Ok(Ok((ws, _))) => ws,
    };
    r.connected = true;
    r.up_ns = run.ns();
    let (mut sink, mut stream) = ws.split();
    let channel_id = format!("{idx}.loadtest");
    let start = serde_json::json!({
        "event": "MEDIA_START",
        "connection_id": "loadtest",
        "channel": format!("WebSocket/loadtest-{idx:08x}"),
        "channel_id": channel_id,
        "format": "slin",
        "optimal_frame_size": FRAME_BYTES,
        "ptime": 20,
        "channel_variables": {},
    });
    if let Err(e) = sink.send(Message::text(start.to_string())).await {
        r.error = Some(format!("send: {}", kind_of(&e)));
        return r;
    }

    let mut wheel = run.wheel[slot as usize % WHEEL_SLOTS as usize].subscribe();
    let mut last_period = *wheel.borrow_and_update();
    let mut seq = 0u32;
    let mut reply: Option<Reply> = None;
    let (mut barges_seen, _) = link.barge();
    let mut queue = DriverQueue::default();
    let mut marks = Vec::new();
    let mut frame = vec![0u8; FRAME_BYTES];
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
                // The driver's read: one tick of playout, whatever the catch-up.
                let _played = queue.tick(&mut marks);
                for id in marks.drain(..) {
                    out.push(Message::text(mark_processed(&channel_id, &id)));
                }
                for _ in 0..due {
                    frame.copy_from_slice(&cfg.frames[seq as usize % cfg.frames.len()]);
                    stamp::write_l16(&mut frame, idx, seq);
                    link.set_sent(seq, run.ns());
                    seq = seq.wrapping_add(1);
                    r.frames_sent += 1;
                    out.push(Message::Binary(frame.clone().into()));
                }
            }
            inbound = stream.next() => {
                let now = run.ns();
                match inbound {
                    Some(Ok(Message::Binary(data))) => {
                        // One playback frame per 20 ms of audio (the daemon sends whole frames).
                        for _ in 0..data.len().div_ceil(FRAME_BYTES) {
                            r.frames_received += 1;
                            on_playback(&mut r, &mut reply, link.response(), now, cfg.lead_frames);
                        }
                        queue.audio(&data, FRAME_BYTES);
                    }
                    Some(Ok(Message::Text(text))) => {
                        let (command, id) = command_of(text.as_str());
                        match command.as_str() {
                            "MARK_MEDIA" => queue.mark(id),
                            "FLUSH_MEDIA" => {
                                queue.flush();
                                r.clear_audio += 1;
                                let (no, at) = link.barge();
                                if no != barges_seen {
                                    barges_seen = no;
                                    r.barge_cut_us.push(us(now.saturating_sub(at)));
                                    if let Some(reply) = reply.as_mut() {
                                        reply.cleared = true;
                                    }
                                }
                            }
                            "HANGUP" => break Some("HANGUP from the daemon".to_owned()),
                            // ANSWER, and commands a load test has no use for.
                            _ => {}
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
    // Asterisk's hang-up: a Close, then up to 1 s for the echo.
    if let Err(e) = close_and_await_echo(&mut sink, &mut stream).await {
        r.error = Some(e);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_carries_the_token_as_the_password() {
        let v = basic_auth("s3cret");
        let b64 = v.strip_prefix("Basic ").unwrap();
        let pair = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(pair, b"loadtest:s3cret");
    }
}
