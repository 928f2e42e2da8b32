//! The one interface every AI provider sits behind.
//!
//! A provider runs in its own task and talks to the call only through two bounded
//! queues ([`queue`]): [`ProviderCommand`]s in, normalised [`ProviderEvent`]s out. The call engine never
//! sees a provider's JSON and a provider never sees FreeSWITCH, so a slow provider cannot
//! stall the caller's audio.
//!
//! Every networked provider has the same shape, one folder:
//! - `wire.rs`: its message types, builders and parsers (serde, no I/O);
//! - `turn.rs`: its socket-free protocol state (server events in, [`ProviderEvent`]s
//!   out, time as a parameter), unit-tested and fuzzed;
//! - `mod.rs`: the socket task, `run(&Config, &Route, ProviderChannels)`, and
//!   `check(&Config, &Route)` for `voicebridge check`.
//!
//! What they all do alike with the socket (ping period, setup and close timeouts, the
//! write-stall limit, the polite close) is in [`ws`]. The facts about each kind (name,
//! API key variable, whether it can say a goodbye, config section, credential, default
//! prices) are one row of the table in `config::kinds`, which both the config and this
//! module read. `echo` is built in (no socket) and keeps a single file.
//!
//! Adding a provider `foo`:
//! 1. `src/providers/foo/` with `wire.rs`, `turn.rs`, `mod.rs` as above;
//! 2. a variant `ProviderKind::Foo` and its row in `config/kinds.rs`;
//! 3. its config section: `FooConfig` (+ `Default`) in `config.rs`, `RawFoo` in
//!    `config/raw.rs`, a `[prices.foo]` field in `RawPrices`, its compile step in
//!    `config/compile.rs`; the compiler then points at the remaining `match`es
//!    ([`spawn`], [`check`], `ProvidersConfig::credential`, `RawPrices::of`);
//! 4. its mock in `tests/common/mock_foo.rs` and an `e2e_foo.rs` driving the binary.

pub mod echo;
pub mod elevenlabs;
pub mod error_codes;
pub mod gemini;
pub mod media_streams;
pub mod openai;
pub mod queue;
pub mod socket;
pub mod template;
pub mod ws;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::audio::{AudioFormat, ItemId};
use crate::config::{Config, ProviderKind, Route};
// The tool types belong to `tools` (which knows nothing of providers); re-exported
// because every provider speaks them.
pub use crate::tools::{ToolCall, ToolResult};

/// Commands queued to a provider. Audio is the only high-rate one.
const COMMAND_CAPACITY: usize = 64;
/// Events queued from a provider; audio bursts arrive faster than real time, so this is
/// larger than the command side (each event is one provider message).
const EVENT_CAPACITY: usize = 256;

/// Who said something, in a transcript.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    Caller,
    Assistant,
}

impl Speaker {
    pub const fn name(self) -> &'static str {
        match self {
            Speaker::Caller => "caller",
            Speaker::Assistant => "assistant",
        }
    }
}

/// Token counts reported by a provider (summed into the call summary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What a provider tells the call, in provider-neutral terms.
#[derive(Debug)]
pub enum ProviderEvent {
    /// Setup is complete; audio may flow. `input` is what the provider wants from the
    /// caller, `output` what it will send back (known only now for some providers).
    Ready {
        input: AudioFormat,
        output: AudioFormat,
    },
    /// Assistant audio of one item (response), in the `output` format of `Ready`.
    Audio {
        item: ItemId,
        data: Bytes,
    },
    /// The caller started talking: barge-in if the assistant is playing.
    SpeechStarted,
    /// The caller finished a turn (the provider's end-of-speech, or its final
    /// transcript of the turn where it signals nothing earlier): per-turn latency
    /// is measured from here to the first assistant audio played.
    SpeechStopped,
    /// The provider finished generating the current response.
    ResponseDone,
    /// A name placed in the assistant audio stream (a Twilio-protocol backend's `mark`):
    /// the engine answers [`ProviderCommand::MarkPlayed`] once the audio sent before it
    /// has been played to the caller (or dropped by a barge-in).
    Mark(String),
    /// The model calls a function; the call runs it and answers with
    /// [`ProviderCommand::ToolResult`] carrying the same `id`.
    ToolCall(Box<ToolCall>),
    /// The provider withdrew these calls (Gemini, on barge-in): their results are not
    /// wanted any more.
    ToolCancelled(Vec<String>),
    Transcript {
        who: Speaker,
        text: String,
        is_final: bool,
    },
    Usage(Usage),
    /// Something worth a log line that does not end the call.
    Warning(String),
    Error {
        recoverable: bool,
        code: String,
        message: String,
    },
    /// The provider side is gone; the call engine ends the call with this reason.
    Closed {
        reason: String,
    },
}

/// What the call asks of a provider.
#[derive(Debug)]
pub enum ProviderCommand {
    /// One 20 ms frame of caller audio in the `input` format of `Ready`.
    Audio(Bytes),
    /// The caller heard only `played_ms` of `item` (barge-in).
    Truncate { item: ItemId, played_ms: u64 },
    /// Stop the response being generated.
    Cancel,
    /// Say this (already rendered) text now, e.g. the goodbye at the duration limit.
    /// Only sent to providers for which [`can_say`] is true.
    Say(String),
    /// Call metadata arrived (or it was decided none will come); template variables.
    Context(Arc<CallContext>),
    /// The answer to a [`ProviderEvent::ToolCall`]. Boxed: it is rare and large, and
    /// every slot of the command queue is the size of the largest variant.
    ToolResult(Box<ToolResult>),
    /// The caller pressed these keys (one group: `0-9 * # A-D`): tell the model, in its
    /// own protocol, so "press 1 for sales" and "type your account number" work.
    Dtmf(String),
    /// The audio before this [`ProviderEvent::Mark`] has been played (or flushed).
    MarkPlayed(String),
    /// Close the provider connection politely.
    Close,
}

/// How a key group is put to a model that only understands words: one user turn,
/// spelled out so the model neither mistakes it for speech nor reads it as a number
/// ("1 2 3 4", not "1234": an account number is read digit by digit).
pub fn dtmf_text(digits: &str) -> String {
    let keys: Vec<String> = digits.chars().map(String::from).collect();
    let what = if keys.len() == 1 { "a key" } else { "keys" };
    format!(
        "[The caller pressed {what} on the phone keypad: {}]",
        keys.join(" ")
    )
}

/// What a provider may know about the call.
#[derive(Clone, Debug, Default)]
pub struct CallContext {
    pub call_id: String,
    pub route: String,
    /// Metadata keys and values (recognised and not), for templating instructions.
    pub vars: BTreeMap<String, String>,
}

/// The call task's end of a running provider.
pub struct ProviderHandle {
    pub name: &'static str,
    pub commands: queue::Sender<ProviderCommand>,
    pub events: queue::Receiver<ProviderEvent>,
    pub task: JoinHandle<()>,
}

/// The provider's end: where it reads commands and sends events.
pub struct ProviderChannels {
    pub commands: queue::Receiver<ProviderCommand>,
    pub events: queue::Sender<ProviderEvent>,
}

fn channels() -> (
    queue::Sender<ProviderCommand>,
    queue::Receiver<ProviderEvent>,
    ProviderChannels,
) {
    let (cmd_tx, cmd_rx) = queue::bounded(COMMAND_CAPACITY);
    let (ev_tx, ev_rx) = queue::bounded(EVENT_CAPACITY);
    (
        cmd_tx,
        ev_rx,
        ProviderChannels {
            commands: cmd_rx,
            events: ev_tx,
        },
    )
}

/// Starts the provider chosen by `route` for one call. `call_format` is the call's own
/// (mono) format, which the echo provider may choose to work in.
///
/// Returns at once: connecting happens inside the provider's task, which reports
/// `Ready` or `Closed`.
pub fn spawn(config: &Config, route: &Arc<Route>, call_format: AudioFormat) -> ProviderHandle {
    let (commands, events, ends) = channels();
    let kind = route.call.provider;
    let task = match kind {
        ProviderKind::Echo => tokio::spawn(
            echo::run(config.providers.echo.clone(), call_format, ends).in_current_span(),
        ),
        ProviderKind::OpenAi => tokio::spawn(openai::run(config, route, ends).in_current_span()),
        ProviderKind::Gemini => tokio::spawn(gemini::run(config, route, ends).in_current_span()),
        ProviderKind::ElevenLabs => {
            tokio::spawn(elevenlabs::run(config, route, ends).in_current_span())
        }
        ProviderKind::MediaStreams => {
            tokio::spawn(media_streams::run(config, route, ends).in_current_span())
        }
    };
    ProviderHandle {
        name: kind.name(),
        commands,
        events,
        task,
    }
}

/// `voicebridge check`: opens a real session with the provider `route` uses (connect,
/// setup, wait for the setup ack, close) and describes it in one line, or the failure.
pub async fn check(config: &Config, route: &Route) -> Result<String, String> {
    match route.call.provider {
        ProviderKind::Echo => Ok("built in, no network".to_owned()),
        ProviderKind::OpenAi => openai::check(config, route).await,
        ProviderKind::ElevenLabs => elevenlabs::check(config, route).await,
        ProviderKind::Gemini => gemini::check(config, route).await,
        ProviderKind::MediaStreams => media_streams::check(config, route).await,
    }
}

/// Whether the provider can be told to say a given text (the goodbye).
pub fn can_say(kind: ProviderKind) -> bool {
    kind.info().can_say
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A queued message takes the size of the largest variant, and a burst of replies
    /// fills hundreds of slots: the rare large ones (tool calls and results) stay boxed.
    #[test]
    fn queue_slots_stay_small() {
        assert!(std::mem::size_of::<ProviderCommand>() <= 48);
        assert!(std::mem::size_of::<ProviderEvent>() <= 64);
    }
}
