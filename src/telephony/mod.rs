//! The telephony side as an interface: what any PBX or carrier stream tells the call
//! engine ([`TelephonyEvent`]) and what the engine asks of it ([`TelephonyAction`],
//! and at the end a [`Hangup`]).
//!
//! It exists so the engine (`crate::call`) never sees a wire protocol: FreeSWITCH
//! `mod_audio_stream` JSON and ESL live in [`freeswitch`], and the next sides fit the same
//! shapes without touching the engine:
//! - Asterisk chan_websocket: binary media → `Audio`, `DTMF_END` → `Dtmf`, `MEDIA_MARK_PROCESSED`
//!   → `Played`; `Clear` → `FLUSH_MEDIA`, `Mark` → `MARK_MEDIA`, `Hangup` → `HANGUP`.
//! - AudioSocket: we own the clock (one `Play` frame per tick is already what the pacer
//!   does); `Clear` = stop sending; `Hangup` = the hang-up packet.
//! - Twilio Media Streams: `media` → `Audio`, `start` → `Metadata`, `dtmf` → `Dtmf`,
//!   `mark` → `Played`; `Clear` → `clear`, `Mark` → `mark`, `Transfer` via the REST side.
//!
//! Each implementation turns its inbound messages into events (one log line for bad
//! input, never a panic) and performs actions as wire messages, batching writes as it
//! likes; the call task drives it.
//!
//! [`TelephonyLeg`] is that contract: the per-call task (`crate::call_task::run`) is
//! generic over it and knows no protocol. Anything a side needs besides the call's
//! socket (FreeSWITCH's ESL play events and `uuid_*` commands) stays inside the leg.
//! A new side is therefore: a folder here implementing `TelephonyLeg`, its
//! upgrade/accept path in `crate::server` (which builds the leg and calls the generic
//! `run`), and a faithful fake of the far end in `tests/common/`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::audio::{AudioFormat, Channels, Codec};

pub mod asterisk_ws;
pub mod audiosocket;
pub mod freeswitch;
pub mod media_streams;

/// Call metadata, protocol-neutral: whatever the telephony side knows about the call
/// besides its audio. Every field is optional: nothing in a call depends on it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    /// The call id the far end names (the URL's is kept when they differ).
    pub call_id: Option<String>,
    pub caller_id: Option<String>,
    pub called: Option<String>,
    /// The audio format, when the far end tells it.
    pub codec: Option<Codec>,
    pub sample_rate: Option<u32>,
    pub channels: Option<Channels>,
    /// Every other key, as strings, for the instructions template.
    pub vars: BTreeMap<String, String>,
    /// The metadata as received, when it was not structured.
    pub raw: Option<String>,
}

/// What the telephony side tells the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum TelephonyEvent {
    /// Caller audio in the call's inbound format (interleaved when stereo), in pieces
    /// of any size.
    Audio(Bytes),
    /// The call's metadata (at most once per call).
    Metadata(Metadata),
    /// Any other text the far end sent (logged, counted).
    Text(String),
    /// The caller pressed a key.
    Dtmf(char),
    /// The far end has played our audio up to the mark of this id.
    Played(u64),
    /// The far end hung up or closed the stream (with its close code, if any).
    HungUp(Option<u16>),
    /// The connection dropped without a goodbye.
    Gone,
    /// The connection failed (read/write error, write stall).
    Error(String),
    /// The far end sent a message over our size limit; the connection still works.
    TooBig(String),
}

/// What the engine asks of the telephony side during the call.
#[derive(Clone, Debug, PartialEq)]
pub enum TelephonyAction {
    /// One paced 20 ms frame of assistant audio, in the call's format.
    Play(Bytes),
    /// The reply is fully released: send any frames held back for batching now.
    FlushPlayback,
    /// Barge-in: drop what the far end still has buffered of our audio.
    Clear,
    /// Ask to be told (`TelephonyEvent::Played`) when playback reaches this point.
    Mark(u64),
    /// The call's format changed before any audio flowed (metadata): play in this one.
    SetFormat(AudioFormat),
}

/// How the call leaves the telephony side: derived from the end reason by the engine
/// (`EndReason::hangup`), carried out by the implementation at the very end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hangup {
    /// The far end closed: only finish the close handshake.
    FarEnd,
    /// The connection is gone: nothing can be sent.
    Lost,
    /// We end the stream. `text` is for the far end's log (never secret, no URLs);
    /// `hang_up_channel`: the channel is hung up too (not on shutdown, where the
    /// dialplan decides what follows).
    Ours {
        cause: HangupCause,
        text: String,
        hang_up_channel: bool,
    },
    /// The stream ends and the channel goes on to `to`.
    Transfer { to: String, text: String },
}

/// Why we end the stream, for protocols with close codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangupCause {
    Normal,
    Error,
    TooBig,
    Shutdown,
}

/// The inbound format the side fixed before any audio (an upgrade URL, a start
/// message); `None`: the route's default, or what the metadata says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinnedFormat {
    pub codec: Option<Codec>,
    pub rate: Option<u32>,
    pub channels: Option<Channels>,
}

/// How a side learns what the far end has really played (Asterisk `MARK_MEDIA` →
/// `MEDIA_MARK_PROCESSED`, Twilio `mark` echoed once played), when it can.
///
/// With it, the engine sends a [`TelephonyAction::Mark`] (ids 1, 2, 3, … per call) after
/// every `every` of released audio and when a reply's last frame goes out; each
/// [`TelephonyEvent::Played`] re-anchors the pacer's playhead (the far end's own clock
/// wins over ours, so a far end that plays slower never builds a backlog), the barge-in
/// truncate is computed from it, and, once the first mark has come back, released but
/// unplayed audio never exceeds `max_unplayed` (a paused far end stops our release).
/// Marks sent before a `Clear` are void: a `Played` for one of them is ignored, so a
/// side may report them as the protocol does (Twilio returns them all on `clear`).
/// A side that cannot deliver marks drops the `Mark` actions; the engine then keeps to
/// its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlayoutMarks {
    pub every: Duration,
    pub max_unplayed: Duration,
}

/// One call's telephony side, as the call task drives it. Building a leg has no side
/// effects beyond owning its connection, so a call refused before `start` leaves no
/// trace. The futures are `Send` so the call task can run on any worker.
pub trait TelephonyLeg: Send {
    /// The call goes ahead: take up what the side needs besides its socket (e.g. a
    /// subscription to control events). Called once, before any other use but `close`.
    fn start(&mut self);

    /// The inbound format this side pinned.
    fn pinned_format(&self) -> PinnedFormat;

    /// How many paced frames the side sends per message (it batches `Play`s; the engine
    /// counts a reply as heard when a batch goes out). 1 for most sides.
    fn frames_per_message(&self) -> usize;

    /// How far ahead of the playout the engine's pacer may release audio.
    fn pacer_lead(&self) -> Duration;

    /// The side can send the call elsewhere (`transfer_call` is refused otherwise).
    fn can_transfer(&self) -> bool;

    /// Whether and how the far end reports its played position (see [`PlayoutMarks`]).
    fn playout_marks(&self) -> Option<PlayoutMarks> {
        None
    }

    /// The next inbound event; `None` when what arrived is nothing for the engine (a
    /// ping, a control event the leg handled itself). Cancel-safe: the call task polls
    /// it in a `select!` and drops it when another branch wins.
    fn next_event(&mut self) -> impl Future<Output = Option<TelephonyEvent>> + Send;

    /// Performs one action; writes may be buffered until `flush`. An error is the
    /// event that ends the call.
    fn perform(
        &mut self,
        action: TelephonyAction,
    ) -> impl Future<Output = Result<(), TelephonyEvent>> + Send;

    /// Sends what `perform` buffered. An error is the event that ends the call.
    fn flush(&mut self) -> impl Future<Output = Result<(), TelephonyEvent>> + Send;

    /// Ends the stream as `hangup` says (the protocol's close handshake, bounded).
    fn close(&mut self, hangup: &Hangup) -> impl Future<Output = ()> + Send;

    /// After `close`: releases the channel the stream belonged to (hang it up or
    /// transfer it) when the protocol needs a separate step for that.
    fn release_channel(&mut self, hangup: &Hangup);

    /// Control commands the side could not deliver (the call went on without them).
    fn control_dropped(&self) -> u64;
}
