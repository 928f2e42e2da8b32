//! One call's AudioSocket connection behind the telephony interface. Asterisk's
//! messages become `TelephonyEvent`s; `Play` frames become slin messages of the kind
//! (rate) Asterisk itself uses, one per pacer tick: Asterisk writes each one to the
//! channel at once, with no queue of its own, so our pacer is the only clock and it
//! keeps one frame ahead of the one playing (`PACER_LEAD`). Barge-in is "stop sending", with a few milliseconds of
//! fade-out instead of a hard cut (`fade`). The end is the hang-up message `00 00 00`.
//!
//! The call's rate is learned from Asterisk's first audio message (before 20.17 every
//! message is 8 kHz `0x10`; from then the kind follows the channel's codec): the leg
//! reports it as the call's metadata before that first audio, so the engine's format
//! follows it before anything is played.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tracing::{debug, info, warn};

use crate::audio::{AudioFormat, Channels, Codec};
use crate::telephony::{
    Hangup, Metadata, PinnedFormat, TelephonyAction, TelephonyEvent, TelephonyLeg,
};

use super::fade::fade_out;
use super::frame::{self, Message, HANGUP};
use super::reader::{FrameReader, ReadError};

/// With nothing sent for this long, a 20 ms frame of silence goes out: the
/// `AudioSocket()` application drops the call after 2 s with no activity on the channel
/// or the socket (`MAX_WAIT_TIMEOUT_MSEC`), which a caller whose phone sends nothing
/// while quiet (DTX, hold) and an assistant waiting for a tool would otherwise reach.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// A socket that accepts nothing for this long is dead.
const WRITE_STALL: Duration = Duration::from_secs(5);
/// How long the hang-up and Asterisk's close may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Asterisk plays what it gets at once (no queue), so we keep at most one frame ahead
/// of the one playing: a frame goes out when the previous one starts to play, one per
/// tick. Exactly one frame (20 ms) would be tighter but drifts: a frame is then due
/// only once the previous one has fully played, so every wake-up that comes late (a
/// loaded machine is late by milliseconds) restarts the playhead from "now", and a
/// long call falls steadily behind real time (0.7 % measured, 140 ms over 20 s). The
/// second frame of slack absorbs wake-ups up to 20 ms late (6 ms lag over 21 s).
const PACER_LEAD: Duration = Duration::from_millis(40);

/// The Asterisk side of one call.
pub struct AudioSocketLeg {
    reader: FrameReader,
    writer: OwnedWriteHalf,
    /// The call's UUID, as text (the call id).
    uuid: String,
    /// Messages encoded since the last flush.
    out: Vec<u8>,
    /// The kind (rate) our audio messages carry.
    out_kind: u8,
    /// The rate of Asterisk's audio, once its first message came.
    in_rate: Option<u32>,
    /// Inbound audio held back while its metadata goes first.
    held: Option<TelephonyEvent>,
    /// The last frame sent, for the barge-in fade-out; empty once faded.
    last_frame: Vec<u8>,
    /// The rate the route asked for, when AudioSocket has no kind for it (8 kHz used).
    pinned_rate: Option<u32>,
    /// The stream broke the protocol: the connection is still up, so the hang-up is
    /// still sent even though the call ends as an error.
    protocol_error: bool,
    /// When the keep-alive silence is due; moved on by every write.
    keepalive: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Keep-alive frames sent.
    keepalives: u64,
}

impl AudioSocketLeg {
    /// The leg of an admitted connection whose UUID message has been read.
    pub fn new(
        reader: FrameReader,
        writer: OwnedWriteHalf,
        uuid: String,
        route_rate: u32,
    ) -> AudioSocketLeg {
        let (out_kind, pinned_rate) = match frame::slin_kind(route_rate) {
            Some(kind) => (kind, None),
            None => (frame::KIND_SLIN_8K, Some(8000)),
        };
        AudioSocketLeg {
            reader,
            writer,
            uuid,
            out: Vec::with_capacity(1024),
            out_kind,
            in_rate: None,
            held: None,
            last_frame: Vec::new(),
            pinned_rate,
            protocol_error: false,
            keepalive: Box::pin(tokio::time::sleep(KEEPALIVE)),
            keepalives: 0,
        }
    }

    fn on_message(&mut self, msg: Result<Option<Message>, ReadError>) -> Option<TelephonyEvent> {
        let msg = match msg {
            // Asterisk hangs up by closing the socket.
            Ok(None) => return Some(TelephonyEvent::HungUp(None)),
            Ok(Some(m)) => m,
            Err(e) => return Some(self.read_error(e)),
        };
        match msg {
            Message::Audio { rate, payload } => match self.in_rate {
                Some(r) if r == rate => Some(TelephonyEvent::Audio(payload)),
                Some(r) => Some(self.bad_input(format!(
                    "audio changed from {r} Hz to {rate} Hz in the middle of the call"
                ))),
                None => {
                    self.in_rate = Some(rate);
                    self.held = Some(TelephonyEvent::Audio(payload));
                    Some(TelephonyEvent::Metadata(self.metadata(rate)))
                }
            },
            Message::Dtmf(digit) => Some(TelephonyEvent::Dtmf(digit)),
            Message::Hangup => Some(TelephonyEvent::HungUp(None)),
            Message::Error(code) => {
                warn!(code = %hex(&code), "AudioSocket error message from Asterisk; the call goes on");
                None
            }
            Message::Uuid(_) => Some(
                self.bad_input(
                    "a second UUID message (only the first message of a connection may be one)"
                        .to_owned(),
                ),
            ),
        }
    }

    /// What the leg knows of the call: its UUID and the format of its audio.
    fn metadata(&self, rate: u32) -> Metadata {
        let mut vars = std::collections::BTreeMap::new();
        vars.insert("audiosocket_uuid".to_owned(), self.uuid.clone());
        Metadata {
            call_id: Some(self.uuid.clone()),
            codec: Some(Codec::L16),
            sample_rate: Some(rate),
            channels: Some(Channels::Mono),
            vars,
            ..Metadata::default()
        }
    }

    fn read_error(&mut self, e: ReadError) -> TelephonyEvent {
        match e {
            ReadError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                TelephonyEvent::Gone
            }
            ReadError::Io(io) => TelephonyEvent::Error(format!("AudioSocket read failed: {io}")),
            ReadError::Truncated(_) => {
                warn!(error = %e, "AudioSocket: bad input from Asterisk; ending the call");
                TelephonyEvent::Error(format!("AudioSocket: {e}"))
            }
            ReadError::Frame(frame::FrameError::TooLong { .. }) => {
                self.protocol_error = true;
                warn!(error = %e, "AudioSocket: bad input from Asterisk; ending the call");
                TelephonyEvent::TooBig(format!("AudioSocket {e}"))
            }
            ReadError::Frame(f) => self.bad_input(f.to_string()),
        }
    }

    /// The stream is not AudioSocket any more: one log line, and the call ends (with
    /// our hang-up, since the connection still works).
    fn bad_input(&mut self, why: String) -> TelephonyEvent {
        self.protocol_error = true;
        warn!(error = %why, "AudioSocket: bad input from Asterisk; ending the call");
        TelephonyEvent::Error(format!("AudioSocket: {why}"))
    }

    fn rearm_keepalive(&mut self) {
        let at = tokio::time::Instant::now() + KEEPALIVE;
        self.keepalive.as_mut().reset(at);
    }

    async fn write_now(&mut self, bytes: &[u8]) -> Result<(), TelephonyEvent> {
        match tokio::time::timeout(WRITE_STALL, self.writer.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Err(TelephonyEvent::Gone)
            }
            Ok(Err(e)) => Err(TelephonyEvent::Error(format!(
                "AudioSocket write failed: {e}"
            ))),
            Err(_) => Err(TelephonyEvent::Error(format!(
                "socket accepted nothing for {} s",
                WRITE_STALL.as_secs()
            ))),
        }
    }
}

impl TelephonyLeg for AudioSocketLeg {
    fn start(&mut self) {}

    /// Always signed linear mono; the rate comes with the first audio (metadata).
    fn pinned_format(&self) -> PinnedFormat {
        PinnedFormat {
            codec: Some(Codec::L16),
            rate: self.pinned_rate,
            channels: Some(Channels::Mono),
        }
    }

    fn frames_per_message(&self) -> usize {
        1
    }

    fn pacer_lead(&self) -> Duration {
        PACER_LEAD
    }

    /// AudioSocket carries no call control.
    fn can_transfer(&self) -> bool {
        false
    }

    /// Cancel-safe: the held audio is taken only when returned, and the reader is.
    async fn next_event(&mut self) -> Option<TelephonyEvent> {
        if let Some(held) = self.held.take() {
            return Some(held);
        }
        let msg = tokio::select! {
            msg = self.reader.next() => msg,
            // Queued here, written by the flush that follows every event.
            _ = self.keepalive.as_mut() => {
                let rate = frame::slin_rate(self.out_kind).unwrap_or(8000);
                let silence = vec![0u8; rate as usize / 50 * 2];
                frame::encode(self.out_kind, &silence, &mut self.out);
                self.keepalives += 1;
                if self.keepalives == 1 {
                    debug!("nothing to send for 1 s: silence keeps the AudioSocket alive");
                }
                self.rearm_keepalive();
                return None;
            }
        };
        self.on_message(msg)
    }

    async fn perform(&mut self, action: TelephonyAction) -> Result<(), TelephonyEvent> {
        match action {
            TelephonyAction::Play(frame) => {
                frame::encode(self.out_kind, &frame, &mut self.out);
                self.last_frame.clear();
                self.last_frame.extend_from_slice(&frame);
            }
            TelephonyAction::Clear => {
                let rate = frame::slin_rate(self.out_kind).unwrap_or(8000);
                let tail = fade_out(&self.last_frame, rate);
                if !tail.is_empty() {
                    frame::encode(self.out_kind, &tail, &mut self.out);
                }
                self.last_frame.clear();
            }
            TelephonyAction::SetFormat(AudioFormat { codec, rate }) => {
                match (codec, frame::slin_kind(rate)) {
                    (Codec::L16, Some(kind)) => self.out_kind = kind,
                    _ => {
                        return Err(TelephonyEvent::Error(format!(
                            "AudioSocket cannot carry {codec} at {rate} Hz"
                        )))
                    }
                }
            }
            // Nothing is batched, and Asterisk reports no playback position.
            TelephonyAction::FlushPlayback | TelephonyAction::Mark(_) => {}
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), TelephonyEvent> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let result = self.write_now(&out).await;
        self.out = out;
        self.out.clear();
        self.rearm_keepalive();
        result
    }

    /// Our hang-up (also after bad input: the socket still works), then Asterisk's
    /// close, bounded. Nothing when the connection is lost or Asterisk hung up.
    async fn close(&mut self, hangup: &Hangup) {
        let send = match hangup {
            Hangup::FarEnd => false,
            Hangup::Lost => self.protocol_error,
            Hangup::Ours { .. } | Hangup::Transfer { .. } => true,
        };
        if !send {
            let _ = self.writer.shutdown().await;
            return;
        }
        let result = tokio::time::timeout(CLOSE_WAIT, async {
            let _ = self.writer.write_all(&HANGUP).await;
            let _ = self.writer.shutdown().await;
            // Asterisk closes on our hang-up; what it sent meanwhile is dropped.
            while let Ok(Some(_)) = self.reader.next().await {}
        })
        .await;
        if result.is_err() {
            debug!("Asterisk did not close the AudioSocket within 1 s of our hang-up");
        } else {
            info!("AudioSocket hang-up sent");
        }
    }

    fn release_channel(&mut self, _hangup: &Hangup) {}

    fn control_dropped(&self) -> u64 {
        0
    }
}

/// An error code as hex, for the log (it is binary).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
