//! Why a call ended: one enum for the summary line, the metrics label, the call record
//! and the far end's Close. Its `tag()` and `ended_by()` strings are a contract (tests,
//! dashboards and records read them): never rename them.

use std::fmt;
use std::time::Duration;

use crate::telephony::{Hangup, HangupCause};

/// Why a call ended (the summary's `end_reason`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// FreeSWITCH sent a Close (hang-up or `uuid_audio_stream stop`).
    FreeswitchClosed(Option<u16>),
    /// The TCP connection dropped without a Close.
    FreeswitchGone,
    FreeswitchError(String),
    /// A message over the size limit (a 1 MiB text frame, ...): the socket still works.
    FreeswitchTooBig(String),
    ProviderClosed(String),
    ProviderError(String),
    MaxDuration,
    IdleTimeout,
    Shutdown,
    Internal(String),
    /// The assistant called `end_call` (with the reason it gave).
    AssistantHangup(String),
    /// The assistant called `transfer_call`: the channel goes to this destination.
    Transferred(String),
    /// The provider kept sending audio far faster than real time (audio received, over
    /// how long).
    ProviderFlood {
        audio: Duration,
        over: Duration,
    },
}

impl EndReason {
    /// Short stable tag, for the summary and metrics.
    pub fn tag(&self) -> &'static str {
        match self {
            EndReason::FreeswitchClosed(_) => "freeswitch_closed",
            EndReason::FreeswitchGone => "freeswitch_gone",
            EndReason::FreeswitchError(_) => "freeswitch_error",
            EndReason::FreeswitchTooBig(_) => "freeswitch_message_too_big",
            EndReason::ProviderClosed(_) => "provider_closed",
            EndReason::ProviderError(_) => "provider_error",
            EndReason::ProviderFlood { .. } => "provider_flood",
            EndReason::MaxDuration => "max_duration",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::Internal(_) => "internal_error",
            EndReason::AssistantHangup(_) => "assistant_hangup",
            EndReason::Transferred(_) => "transferred",
        }
    }

    /// Who ended the call, for the record.
    pub fn ended_by(&self) -> &'static str {
        match self {
            EndReason::FreeswitchClosed(_) => "caller",
            EndReason::FreeswitchGone
            | EndReason::FreeswitchError(_)
            | EndReason::FreeswitchTooBig(_) => "freeswitch",
            EndReason::ProviderClosed(_)
            | EndReason::ProviderError(_)
            | EndReason::ProviderFlood { .. } => "provider",
            EndReason::AssistantHangup(_) | EndReason::Transferred(_) => "assistant",
            EndReason::MaxDuration
            | EndReason::IdleTimeout
            | EndReason::Shutdown
            | EndReason::Internal(_) => "voicebridge",
        }
    }

    /// The summary line is logged at error level for these.
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            EndReason::ProviderError(_)
                | EndReason::Internal(_)
                | EndReason::FreeswitchError(_)
                | EndReason::FreeswitchTooBig(_)
        )
    }

    /// Text for the far end's log (FreeSWITCH shows the Close reason in `::disconnect`).
    /// It leaves the process, so it carries no URL at all, not even a redacted one.
    pub fn close_reason(&self) -> String {
        let mut s = crate::redact::without_urls(&self.to_string());
        // A WebSocket Close reason is at most 123 bytes.
        while s.len() > 120 {
            s.pop();
        }
        s
    }

    /// How the telephony side is left: a far-end close is only answered; a lost
    /// connection gets nothing; otherwise we close, and hang the channel up unless we
    /// are shutting down (or transfer it).
    pub fn hangup(&self) -> Hangup {
        let cause = match self {
            EndReason::FreeswitchClosed(_) => return Hangup::FarEnd,
            EndReason::FreeswitchGone | EndReason::FreeswitchError(_) => return Hangup::Lost,
            EndReason::Transferred(to) => {
                return Hangup::Transfer {
                    to: to.clone(),
                    text: self.close_reason(),
                }
            }
            EndReason::Shutdown => HangupCause::Shutdown,
            EndReason::Internal(_) | EndReason::ProviderError(_) => HangupCause::Error,
            EndReason::FreeswitchTooBig(_) => HangupCause::TooBig,
            _ => HangupCause::Normal,
        };
        Hangup::Ours {
            cause,
            text: self.close_reason(),
            hang_up_channel: cause != HangupCause::Shutdown,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::FreeswitchClosed(Some(code)) => {
                write!(f, "FreeSWITCH closed the stream (code {code})")
            }
            EndReason::FreeswitchClosed(None) => write!(f, "FreeSWITCH closed the stream"),
            EndReason::FreeswitchGone => write!(f, "FreeSWITCH connection dropped without a Close"),
            EndReason::FreeswitchError(e) => write!(f, "FreeSWITCH socket error: {e}"),
            EndReason::FreeswitchTooBig(e) => write!(f, "FreeSWITCH sent a {e}"),
            EndReason::ProviderClosed(r) => write!(f, "provider ended: {r}"),
            EndReason::ProviderError(r) => write!(f, "provider error: {r}"),
            EndReason::ProviderFlood { audio, over } => write!(
                f,
                "provider sent {} s of audio in {} s, far faster than real time",
                audio.as_secs(),
                over.as_secs()
            ),
            EndReason::MaxDuration => write!(f, "max_duration_secs reached"),
            EndReason::IdleTimeout => {
                write!(f, "idle_timeout_secs reached: no audio from FreeSWITCH")
            }
            EndReason::Shutdown => write!(f, "voicebridge is shutting down"),
            EndReason::Internal(e) => write!(f, "internal error: {e}"),
            EndReason::AssistantHangup(r) if r.is_empty() => {
                write!(f, "the assistant ended the call")
            }
            EndReason::AssistantHangup(r) => write!(f, "the assistant ended the call: {r}"),
            EndReason::Transferred(to) => write!(f, "transferred to {to}"),
        }
    }
}
