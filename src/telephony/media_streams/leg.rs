//! One carrier Media Stream (Twilio `<Connect><Stream>`, Telnyx bidirectional `rtp`)
//! behind the telephony interface: the carrier's JSON text messages become
//! `TelephonyEvent`s, `TelephonyAction`s become `media` / `mark` / `clear` messages.
//!
//! The carrier buffers what we send and plays it in real time, so the engine's pacer
//! keeps the lead bounded, and a `mark` after every ~100 ms of audio comes back once
//! that audio has played: the played position is known, not guessed, which is what the
//! barge-in truncate uses. Only TEXT frames are ever sent (a binary frame is Twilio
//! warning 31950).
//!
//! The stream is set up before the call task runs ([`MediaStreamsLeg::await_start`]):
//! `connected` then `start`, which names the stream id every message we send must
//! carry and the audio format; the call is refused cleanly when it never comes.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::debug;

use crate::audio::{AudioFormat, Channels, Codec};
use crate::telephony::freeswitch::leg::{close_frame, close_handshake, error_event, Ws};
use crate::telephony::{
    Hangup, Metadata, PinnedFormat, PlayoutMarks, TelephonyAction, TelephonyEvent, TelephonyLeg,
};
use crate::ws_read::LastMessage;

use super::reorder::Reorder;
use super::wire::{self, Inbound, Start};
use super::Carrier;

/// A carrier socket that accepts nothing for this long is considered dead.
const WRITE_STALL: Duration = Duration::from_secs(5);
/// How long `connected` + `start` may take after the 101 (Twilio sends them at once).
pub const START_WAIT: Duration = Duration::from_secs(5);
/// Messages accepted before `start` (`connected`, events we ignore); more is not a
/// Media Stream.
const MAX_BEFORE_START: usize = 16;
/// A mark after this much audio: the played position is known to within it, and the
/// pacer re-anchors on each one.
pub const MARK_EVERY: Duration = Duration::from_millis(100);
/// Released but not yet played audio allowed once marks come back, beyond the lead:
/// room for the round trip of a mark through the carrier.
const UNPLAYED_SLACK: Duration = Duration::from_millis(400);
/// Telnyx chunks waited for behind a missing one (80 ms of audio at most).
const REORDER_WINDOW: usize = 4;

/// Why a stream was not set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no start message within {} s", START_WAIT.as_secs())]
    Timeout,
    #[error("the connection ended before the start message")]
    Closed,
    #[error("{0}")]
    Bad(String),
}

/// The carrier side of one call.
pub struct MediaStreamsLeg {
    /// Not split: reads and writes happen in turn on the call's task.
    ws: Ws,
    /// The last message read, kept until the next ([`crate::ws_read`]).
    last_read: LastMessage,
    carrier: Carrier,
    /// What `start` said; its stream id goes into every Twilio message we send.
    start: Start,
    /// The call's format (from `start`, or Twilio's μ-law 8 kHz).
    format: AudioFormat,
    pacer_lead: Duration,
    /// Events decoded and not yet handed out (the metadata, chunks the reorder window
    /// released together).
    queued: VecDeque<TelephonyEvent>,
    /// Telnyx only: chunks back in order.
    reorder: Option<Reorder>,
    released: Vec<Vec<u8>>,
    /// A message that was not Media Streams ended the call: closed with 1007, not
    /// dropped like a lost connection.
    bad_input: bool,
    fed: bool,
}

impl MediaStreamsLeg {
    /// The leg of an accepted upgrade; `lead` is the route's playback lead.
    pub fn new(ws: Ws, carrier: Carrier, lead: Duration) -> MediaStreamsLeg {
        MediaStreamsLeg {
            ws,
            last_read: LastMessage::default(),
            carrier,
            start: Start::default(),
            format: AudioFormat::new(Codec::Pcmu, 8000),
            pacer_lead: lead,
            queued: VecDeque::new(),
            reorder: (carrier == Carrier::Telnyx).then(|| Reorder::new(REORDER_WINDOW)),
            released: Vec::new(),
            bad_input: false,
            fed: false,
        }
    }

    /// Reads `connected` and `start` (what comes before is ignored, bounded); after
    /// it the call's format and stream id are known and the metadata is queued.
    pub async fn await_start(&mut self) -> Result<(), StartError> {
        let read = async {
            for _ in 0..MAX_BEFORE_START {
                let text = match self.ws.next().await {
                    None | Some(Err(_)) => return Err(StartError::Closed),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => return Err(StartError::Closed),
                    Some(Ok(Message::Binary(_))) => {
                        return Err(StartError::Bad(
                            "a binary frame (Media Streams is text only)".to_owned(),
                        ))
                    }
                    Some(Ok(_)) => continue,
                };
                match wire::parse(text.as_str()) {
                    Ok(Inbound::Start(start)) => return self.on_start(start),
                    Ok(Inbound::Connected) => {}
                    Ok(other) => debug!(message = ?kind(&other), "before start: ignored"),
                    Err(e) => return Err(StartError::Bad(e.to_string())),
                }
            }
            Err(StartError::Bad(format!(
                "no start message among the first {MAX_BEFORE_START}"
            )))
        };
        tokio::time::timeout(START_WAIT, read)
            .await
            .unwrap_or(Err(StartError::Timeout))
    }

    fn on_start(&mut self, start: Start) -> Result<(), StartError> {
        if let Some(encoding) = &start.unknown_encoding {
            return Err(StartError::Bad(format!(
                "mediaFormat encoding {encoding:?} is not supported (PCMU, PCMA or L16)"
            )));
        }
        if let Some(f) = start.format {
            if f.channels != 1 {
                return Err(StartError::Bad(format!(
                    "{} audio channels (only mono streams are supported)",
                    f.channels
                )));
            }
            self.format = AudioFormat::new(f.codec, f.rate);
        }
        self.queued
            .push_back(TelephonyEvent::Metadata(metadata(&start, self.format)));
        self.start = start;
        Ok(())
    }

    /// A `start.customParameters` value.
    pub fn custom_param(&self, key: &str) -> Option<&str> {
        self.start.params.get(key).map(String::as_str)
    }

    /// The carrier's stream id for the messages we send (Twilio requires it; Telnyx
    /// takes none).
    fn stream_id(&self) -> Option<&str> {
        match self.carrier {
            Carrier::Twilio => self.start.stream_id.as_deref(),
            Carrier::Telnyx => None,
        }
    }

    /// One inbound message as events (queued); `None`: nothing for the engine.
    fn event(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Option<TelephonyEvent> {
        self.last_read.keep(&msg);
        let msg = match msg {
            None => return Some(TelephonyEvent::Gone),
            Some(Err(e)) => return Some(error_event(e)),
            Some(Ok(m)) => m,
        };
        let text = match msg {
            Message::Text(text) => text,
            Message::Binary(data) => {
                return Some(self.bad(format!(
                    "a binary frame of {} bytes (Media Streams is text only)",
                    data.len()
                )))
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
            Message::Close(frame) => {
                return Some(TelephonyEvent::HungUp(frame.map(|f| u16::from(f.code))))
            }
        };
        let inbound = match wire::parse(text.as_str()) {
            Ok(m) => m,
            Err(e) => return Some(self.bad(format!("not a Media Streams message: {e}"))),
        };
        match inbound {
            Inbound::Media(media) if media.is_inbound() => {
                let payload = match (self.carrier, self.format.codec) {
                    // RTP's L16 is network byte order (RFC 3551); ours is little-endian.
                    (Carrier::Telnyx, Codec::L16) => swap_bytes(media.payload),
                    _ => media.payload,
                };
                match (self.reorder.as_mut(), media.chunk) {
                    (Some(reorder), Some(chunk)) => {
                        reorder.push(chunk, payload, &mut self.released);
                        let queued = &mut self.queued;
                        queued.extend(
                            self.released
                                .drain(..)
                                .map(|p| TelephonyEvent::Audio(Bytes::from(p))),
                        );
                        self.queued.pop_front()
                    }
                    _ => Some(TelephonyEvent::Audio(Bytes::from(payload))),
                }
            }
            Inbound::Media(media) => {
                debug!(
                    track = media.track.as_deref().unwrap_or(""),
                    "media of another track ignored"
                );
                None
            }
            Inbound::Dtmf(digit) => Some(TelephonyEvent::Dtmf(digit)),
            Inbound::Mark(name) => match name.parse::<u64>() {
                Ok(id) => Some(TelephonyEvent::Played(id)),
                Err(_) => {
                    debug!("mark not ours ignored");
                    None
                }
            },
            Inbound::Stop => Some(TelephonyEvent::HungUp(None)),
            other => {
                debug!(message = %kind(&other), "Media Streams message ignored");
                None
            }
        }
    }

    fn bad(&mut self, reason: String) -> TelephonyEvent {
        self.bad_input = true;
        TelephonyEvent::Error(reason)
    }

    fn feed_text(&mut self, text: String) -> Message {
        self.fed = true;
        Message::text(text)
    }
}

/// The name of a message kind, for a debug line (never its content).
fn kind(m: &Inbound) -> String {
    match m {
        Inbound::Connected => "connected".into(),
        Inbound::Start(_) => "start".into(),
        Inbound::Media(_) => "media".into(),
        Inbound::Dtmf(_) => "dtmf".into(),
        Inbound::Mark(_) => "mark".into(),
        Inbound::Stop => "stop".into(),
        Inbound::Other(name) => name.clone(),
    }
}

fn swap_bytes(mut v: Vec<u8>) -> Vec<u8> {
    for pair in v.chunks_exact_mut(2) {
        pair.swap(0, 1);
    }
    v
}

/// `start` as the protocol-neutral metadata: the custom parameters are the template's
/// variables (plus the carrier's ids); the caller is `from` or a `from`/`caller_id`
/// parameter (Twilio's `start` carries no numbers: pass them as `<Parameter>`s).
fn metadata(start: &Start, format: AudioFormat) -> Metadata {
    let param = |names: &[&str]| names.iter().find_map(|n| start.params.get(*n).cloned());
    let mut vars = start.params.clone();
    for (key, value) in [
        ("call_sid", &start.call_id),
        ("stream_sid", &start.stream_id),
        ("account_sid", &start.account_id),
    ] {
        if let Some(v) = value {
            vars.entry(key.to_owned()).or_insert_with(|| v.clone());
        }
    }
    let caller_id = start
        .from
        .clone()
        .or_else(|| param(&["from", "caller_id", "caller"]));
    let called = start.to.clone().or_else(|| param(&["to", "called"]));
    // The template names them as for every side.
    for (key, value) in [("caller_id", &caller_id), ("called", &called)] {
        if let Some(v) = value {
            vars.entry(key.to_owned()).or_insert_with(|| v.clone());
        }
    }
    Metadata {
        call_id: start.call_id.clone(),
        caller_id,
        called,
        codec: Some(format.codec),
        sample_rate: Some(format.rate),
        channels: Some(Channels::Mono),
        vars,
        raw: None,
    }
}

impl TelephonyLeg for MediaStreamsLeg {
    fn start(&mut self) {}

    /// `start.mediaFormat` fixes the format before any audio.
    fn pinned_format(&self) -> PinnedFormat {
        PinnedFormat {
            codec: Some(self.format.codec),
            rate: Some(self.format.rate),
            channels: Some(Channels::Mono),
        }
    }

    fn frames_per_message(&self) -> usize {
        1
    }

    fn pacer_lead(&self) -> Duration {
        self.pacer_lead
    }

    /// A transfer would need the carrier's REST API (not done): the TwiML after
    /// `</Connect>` decides what follows the stream.
    fn can_transfer(&self) -> bool {
        false
    }

    fn playout_marks(&self) -> Option<PlayoutMarks> {
        Some(PlayoutMarks {
            every: MARK_EVERY,
            max_unplayed: self.pacer_lead + UNPLAYED_SLACK,
        })
    }

    /// Queued events first, then the socket (cancel-safe: `next` is).
    async fn next_event(&mut self) -> Option<TelephonyEvent> {
        if let Some(e) = self.queued.pop_front() {
            return Some(e);
        }
        let msg = self.ws.next().await;
        self.event(msg)
    }

    async fn perform(&mut self, action: TelephonyAction) -> Result<(), TelephonyEvent> {
        let msg = match action {
            TelephonyAction::Play(frame) => {
                let text = match (self.carrier, self.format.codec) {
                    (Carrier::Telnyx, Codec::L16) => {
                        wire::media(self.stream_id(), &swap_bytes(frame.to_vec()))
                    }
                    _ => wire::media(self.stream_id(), &frame),
                };
                self.feed_text(text)
            }
            TelephonyAction::FlushPlayback => return Ok(()),
            TelephonyAction::Clear => {
                let text = wire::clear(self.stream_id());
                self.feed_text(text)
            }
            TelephonyAction::Mark(id) => {
                let text = wire::mark(self.stream_id(), &id.to_string());
                self.feed_text(text)
            }
            TelephonyAction::SetFormat(format) => {
                self.format = format;
                return Ok(());
            }
        };
        self.ws.feed(msg).await.map_err(error_event)
    }

    async fn flush(&mut self) -> Result<(), TelephonyEvent> {
        if !std::mem::take(&mut self.fed) {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_STALL, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(error_event(e)),
            Err(_) => Err(TelephonyEvent::Error(format!(
                "socket accepted nothing for {} s",
                WRITE_STALL.as_secs()
            ))),
        }
    }

    /// Closing the stream is all there is: Twilio then goes on with the TwiML after
    /// `</Connect>`. A call ended by bad input gets a 1007 Close.
    async fn close(&mut self, hangup: &Hangup) {
        let frame = match close_frame(hangup) {
            None if self.bad_input => Some(CloseFrame {
                code: CloseCode::Invalid,
                reason: "not a Media Streams message".into(),
            }),
            None => return,
            Some(frame) => frame,
        };
        close_handshake(&mut self.ws, frame).await;
    }

    fn release_channel(&mut self, _hangup: &Hangup) {}

    fn control_dropped(&self) -> u64 {
        0
    }
}

/// Refuses a stream before its call starts (no valid `start`, its route refused): a
/// policy Close with `why` (short, never secret), bounded like every close.
pub async fn refuse(leg: &mut MediaStreamsLeg, why: &str) {
    let mut reason: String = why.chars().take(100).collect();
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame {
        code: CloseCode::Policy,
        reason: reason.into(),
    };
    close_handshake(&mut leg.ws, Some(frame)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn start_becomes_metadata_with_parameters_and_ids() {
        let start = Start {
            stream_id: Some("MZ1".into()),
            call_id: Some("CA1".into()),
            account_id: Some("AC1".into()),
            params: BTreeMap::from([
                ("from".to_owned(), "+3902123".to_owned()),
                ("tenant".to_owned(), "acme".to_owned()),
            ]),
            ..Start::default()
        };
        let m = metadata(&start, AudioFormat::new(Codec::Pcmu, 8000));
        assert_eq!(m.call_id.as_deref(), Some("CA1"));
        assert_eq!(m.caller_id.as_deref(), Some("+3902123"));
        assert_eq!(m.called, None);
        assert_eq!((m.codec, m.sample_rate), (Some(Codec::Pcmu), Some(8000)));
        assert_eq!(m.vars.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(m.vars.get("call_sid").map(String::as_str), Some("CA1"));
        assert_eq!(m.vars.get("stream_sid").map(String::as_str), Some("MZ1"));
    }

    #[test]
    fn l16_is_swapped_to_and_from_network_order() {
        assert_eq!(swap_bytes(vec![1, 2, 3, 4]), vec![2, 1, 4, 3]);
    }
}
