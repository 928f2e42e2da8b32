//! One call's mod_audio_stream socket behind the telephony interface (`TelephonyLeg`,
//! which the generic call task drives; `crate::server` builds it): inbound WebSocket
//! messages become `TelephonyEvent`s, `TelephonyAction`s become wire messages in the
//! route's playback mode, and the end becomes the close handshake plus the ESL
//! commands (`uuid_kill`, `uuid_transfer`) today's FreeSWITCH needs.
//!
//! With `[freeswitch.esl]`, the call id from the URL path (`/call/${uuid}`) is the
//! FreeSWITCH channel uuid the ESL commands name: `uuid_break` on barge-in
//! (`stream_audio`, `esl_files`), `uuid_broadcast` of each file the module wrote
//! (`esl_files`), `uuid_kill` when we end the call while FreeSWITCH is still there.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, error, info, warn};

use crate::audio::AudioFormat;
use crate::config::{PlaybackMode, Route};
use crate::telephony::{
    Hangup, HangupCause, PinnedFormat, TelephonyAction, TelephonyEvent, TelephonyLeg,
};
use crate::ws_read::LastMessage;

use super::esl::{ChannelEvent, ChannelEvents, Esl, PlayEvent};
use super::request::StreamRequest;
use super::{metadata, playback, Playback};

pub type Ws = WebSocketStream<TcpStream>;

/// A FreeSWITCH socket that accepts nothing for this long is considered dead.
const WRITE_STALL: Duration = Duration::from_secs(5);
/// How long we wait for the other side's Close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The FreeSWITCH side of one call.
pub struct FreeswitchLeg {
    /// Not split: reads and writes happen in turn on the call's task, so the halves'
    /// lock (`BiLock`, ~2 % of the daemon's CPU at 300 calls) would buy nothing.
    ws: Ws,
    /// The last message read, kept until the next ([`crate::ws_read`]).
    last_read: LastMessage,
    /// With ESL: this channel's events, key presses and `esl_files` plays (taken up by `start`).
    channel_events: Option<ChannelEvents>,
    call_id: String,
    mode: PlaybackMode,
    esl_chunk: Duration,
    /// What the upgrade URL fixed of the inbound format.
    pinned: PinnedFormat,
    /// The pacer's lead for this playback mode.
    pacer_lead: Duration,
    playback: Playback,
    /// `None` without `[freeswitch.esl]` or without a call id in the URL.
    esl: Option<Esl>,
    /// `esl_files`: play events of chunks with a lower `seq` were cut by a barge-in.
    break_seq: u64,
    /// ESL commands that could not be queued (ESL down): the call went on without them.
    esl_dropped: u64,
    /// The first text frame is the metadata.
    metadata_seen: bool,
    /// Messages fed since the last flush.
    fed: bool,
}

impl FreeswitchLeg {
    /// The leg of an accepted upgrade: `call_id` is the call's (the URL's, or one made
    /// up), `esl` the daemon's Event Socket when `[freeswitch.esl]` is configured.
    pub fn new(
        ws: Ws,
        call_id: String,
        route: &Route,
        request: &StreamRequest,
        esl_chunk: Duration,
        esl: Option<Esl>,
    ) -> FreeswitchLeg {
        let mode = route.playback;
        let format = AudioFormat::new(
            request.codec.unwrap_or(route.codec),
            request.rate.unwrap_or(route.sample_rate),
        );
        // ESL commands name the channel by the URL's call id; a made-up id names nothing.
        let esl = esl.filter(|_| request.call_id.is_some());
        FreeswitchLeg {
            ws,
            last_read: LastMessage::default(),
            channel_events: None,
            call_id,
            mode,
            esl_chunk,
            pinned: PinnedFormat {
                codec: request.codec,
                rate: request.rate,
                channels: request.channels,
            },
            pacer_lead: playback::pacer_lead(mode, route.playback_lead, esl_chunk),
            playback: Playback::new(mode, format, esl_chunk),
            esl,
            break_seq: 0,
            esl_dropped: 0,
            metadata_seen: false,
            fed: false,
        }
    }

    /// One inbound message as an event (`None`: nothing for the engine, e.g. a Ping,
    /// whose Pong tungstenite queues itself).
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
        match msg {
            Message::Binary(data) => Some(TelephonyEvent::Audio(data)),
            Message::Text(text) if !self.metadata_seen => {
                self.metadata_seen = true;
                let (meta, warnings) = metadata::parse(text.as_str());
                for w in &warnings {
                    warn!(warning = %w, "metadata");
                }
                Some(TelephonyEvent::Metadata(meta))
            }
            Message::Text(text) => Some(TelephonyEvent::Text(text.as_str().to_owned())),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
            Message::Close(frame) => Some(TelephonyEvent::HungUp(frame.map(|f| u16::from(f.code)))),
        }
    }

    /// `esl_files`: the module wrote one of our chunks to a file; play it, unless a
    /// barge-in cut that chunk.
    fn on_play(&mut self, play: PlayEvent) {
        if play.seq.is_some_and(|seq| seq < self.break_seq) {
            debug!(file = %play.file, "play event of a chunk cut by barge-in: not played");
            return;
        }
        if let Some(esl) = &self.esl {
            if !esl.uuid_broadcast(&self.call_id, &play.file) {
                self.esl_dropped += 1;
            }
        }
    }
}

impl TelephonyLeg for FreeswitchLeg {
    /// With the Event Socket, subscribes to this channel's events (the caller's key
    /// presses, and the play events of `esl_files`); only now, so a refused call does
    /// not take over the uuid's subscription. The first `binary` call of the process
    /// logs the playback hint.
    fn start(&mut self) {
        match &self.esl {
            Some(esl) => self.channel_events = Some(esl.subscribe(&self.call_id)),
            None if self.mode == PlaybackMode::EslFiles => {
                warn!("esl_files playback without a call id in the URL (/call/<uuid>): nothing can be played");
            }
            None => {}
        }
        if self.mode == PlaybackMode::Binary && playback::first_binary_call() {
            info!("{}", playback::BINARY_HINT);
        }
    }

    fn pinned_format(&self) -> PinnedFormat {
        self.pinned
    }

    fn frames_per_message(&self) -> usize {
        playback::frames_per_message(self.mode, self.esl_chunk)
    }

    fn pacer_lead(&self) -> Duration {
        self.pacer_lead
    }

    /// `transfer_call` needs the Event Socket.
    fn can_transfer(&self) -> bool {
        self.esl.is_some()
    }

    /// The socket first, then the channel's ESL events: key presses become `Dtmf`,
    /// `esl_files` plays are handled here (the engine never sees them). Both reads are
    /// cancel-safe.
    async fn next_event(&mut self) -> Option<TelephonyEvent> {
        if self.channel_events.is_none() {
            let msg = self.ws.next().await;
            return self.event(msg);
        }
        let event = tokio::select! {
            biased;
            msg = self.ws.next() => return self.event(msg),
            event = recv_channel_event(&mut self.channel_events) => event,
        };
        match event {
            Some(ChannelEvent::Play(play)) => self.on_play(play),
            Some(ChannelEvent::Dtmf { digit, .. }) => return Some(TelephonyEvent::Dtmf(digit)),
            // The subscription ended (the daemon stops): the socket alone from here.
            None => self.channel_events = None,
        }
        None
    }

    /// Performs one action (writes are fed; `flush` sends them). An error is the event
    /// that ends the call.
    async fn perform(&mut self, action: TelephonyAction) -> Result<(), TelephonyEvent> {
        let msg = match action {
            TelephonyAction::Play(frame) => self.playback.frame(&frame),
            TelephonyAction::FlushPlayback => self.playback.flush_chunk(),
            TelephonyAction::Clear => {
                let clear = self.playback.clear();
                // Builds that play streamAudio or files have their own buffer, which only
                // ESL can stop; the binary-frame forks honour clearAudio.
                if self.mode != PlaybackMode::Binary {
                    self.break_seq = self.playback.next_seq();
                    if let Some(esl) = &self.esl {
                        if !esl.uuid_break(&self.call_id) {
                            self.esl_dropped += 1;
                        }
                    }
                }
                Some(clear)
            }
            // mod_audio_stream reports no playback position.
            TelephonyAction::Mark(_) => None,
            TelephonyAction::SetFormat(format) => {
                self.playback = Playback::new(self.mode, format, self.esl_chunk);
                None
            }
        };
        if let Some(msg) = msg {
            self.fed = true;
            self.ws.feed(msg).await.map_err(error_event)?;
        }
        Ok(())
    }

    /// Sends what was fed, if anything; a socket that accepts nothing for `WRITE_STALL`
    /// is dead.
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

    /// The close handshake: our Close (or the echo of theirs), then their side until
    /// the TCP stream ends. Nothing when the connection is lost.
    async fn close(&mut self, hangup: &Hangup) {
        let Some(frame) = close_frame(hangup) else {
            return;
        };
        close_handshake(&mut self.ws, frame).await;
    }

    /// After the close: we ended a call FreeSWITCH still has, so without a hang-up the
    /// media bug stays attached and the caller sits in silence. A transfer detaches the
    /// stream and sends the channel on instead.
    fn release_channel(&mut self, hangup: &Hangup) {
        let Some(esl) = &self.esl else {
            return;
        };
        match hangup {
            Hangup::Transfer { to, .. } => {
                let stopped = esl.uuid_audio_stream_stop(&self.call_id);
                if !esl.uuid_transfer(&self.call_id, to) {
                    self.esl_dropped += 1;
                    error!(destination = %to, "transfer failed: the Event Socket did not take uuid_transfer");
                } else if !stopped {
                    self.esl_dropped += 1;
                }
            }
            Hangup::Ours {
                hang_up_channel: true,
                ..
            } => {
                let killed = esl.uuid_kill(&self.call_id);
                self.esl_dropped += u64::from(!killed);
            }
            _ => {}
        }
    }

    /// ESL commands that could not be queued (the summary's `esl_dropped`).
    fn control_dropped(&self) -> u64 {
        self.esl_dropped
    }
}

/// The next channel event, or never when the call has no subscription.
async fn recv_channel_event(events: &mut Option<ChannelEvents>) -> Option<ChannelEvent> {
    match events {
        Some(e) => e.recv().await,
        None => std::future::pending().await,
    }
}

/// What we send to close: `None` when nothing can be sent (connection lost),
/// `Some(None)` to flush the echo of their Close, else our Close frame (1000, 1001 on
/// shutdown, 1009 for oversized messages, 1011 for errors).
pub(crate) fn close_frame(hangup: &Hangup) -> Option<Option<CloseFrame>> {
    let (code, text) = match hangup {
        Hangup::Lost => return None,
        Hangup::FarEnd => return Some(None),
        Hangup::Ours { cause, text, .. } => (
            match cause {
                HangupCause::Normal => CloseCode::Normal,
                HangupCause::Error => CloseCode::Error,
                HangupCause::TooBig => CloseCode::Size,
                HangupCause::Shutdown => CloseCode::Away,
            },
            text,
        ),
        Hangup::Transfer { text, .. } => (CloseCode::Normal, text),
    };
    Some(Some(CloseFrame {
        code,
        reason: text.as_str().into(),
    }))
}

/// Our Close (`None`: the echo of theirs, which tungstenite queued), flushed at once
/// because the module waits only 1 s, then the rest of their side until the TCP stream
/// ends.
pub(crate) async fn close_handshake(ws: &mut Ws, frame: Option<CloseFrame>) {
    let result = tokio::time::timeout(CLOSE_WAIT, async {
        match frame {
            // The echo is queued; any read or write flushes it.
            None => {
                let _ = ws.flush().await;
            }
            Some(frame) => {
                let _ = ws.send(Message::Close(Some(frame))).await;
            }
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    if result.is_err() {
        debug!("FreeSWITCH did not finish the close handshake within 1 s");
    }
}

/// A socket error as the event that ends the call.
pub(crate) fn error_event(e: tungstenite::Error) -> TelephonyEvent {
    use tungstenite::error::{CapacityError, Error, ProtocolError};
    match e {
        Error::ConnectionClosed | Error::AlreadyClosed => TelephonyEvent::HungUp(None),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => TelephonyEvent::Gone,
        Error::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            TelephonyEvent::Gone
        }
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            TelephonyEvent::TooBig(format!(
                "message of {size} bytes, larger than the {max_size}-byte limit"
            ))
        }
        other => TelephonyEvent::Error(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_errors_become_the_events_that_end_the_call() {
        use tungstenite::error::{CapacityError, Error, ProtocolError};
        assert_eq!(
            error_event(Error::ConnectionClosed),
            TelephonyEvent::HungUp(None)
        );
        assert_eq!(
            error_event(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)),
            TelephonyEvent::Gone
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(error_event(Error::Io(reset)), TelephonyEvent::Gone);
        let big = Error::Capacity(CapacityError::MessageTooLong {
            size: 300_000,
            max_size: 262_144,
        });
        assert_eq!(
            error_event(big),
            TelephonyEvent::TooBig(
                "message of 300000 bytes, larger than the 262144-byte limit".to_owned()
            )
        );
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(
            error_event(Error::Io(other)),
            TelephonyEvent::Error(_)
        ));
    }

    #[test]
    fn each_hangup_closes_with_its_code() {
        assert_eq!(close_frame(&Hangup::Lost), None);
        assert_eq!(close_frame(&Hangup::FarEnd), Some(None));
        let ours = |cause| Hangup::Ours {
            cause,
            text: "why".to_owned(),
            hang_up_channel: true,
        };
        let code = |h: &Hangup| close_frame(h).flatten().map(|f| u16::from(f.code));
        assert_eq!(code(&ours(HangupCause::Normal)), Some(1000));
        assert_eq!(code(&ours(HangupCause::Shutdown)), Some(1001));
        assert_eq!(code(&ours(HangupCause::TooBig)), Some(1009));
        assert_eq!(code(&ours(HangupCause::Error)), Some(1011));
        let transfer = Hangup::Transfer {
            to: "1000".to_owned(),
            text: "transferred to 1000".to_owned(),
        };
        let frame = close_frame(&transfer).flatten().expect("a Close");
        assert_eq!(u16::from(frame.code), 1000);
        assert_eq!(frame.reason.as_str(), "transferred to 1000");
    }
}
