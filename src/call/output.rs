//! What the engine asks the call task to do, drained with `CallEngine::poll_output`
//! after every input: messages for the telephony side, commands for the provider, side
//! work to start (the task spawns it and feeds the result back), and the end.

use std::collections::BTreeMap;

use crate::config::{ContextLookup, ToolSpec};
use crate::providers::{ProviderCommand, ToolCall};
use crate::telephony::TelephonyAction;
use crate::tools::CallInfo;

use super::EndReason;

#[derive(Debug)]
pub enum Output {
    /// For the telephony side; the task writes a batch and flushes once.
    Telephony(TelephonyAction),
    /// For the provider. `Audio` may be dropped when its queue is full (report it with
    /// `Input::AudioNotSent`); `Context` waits for room; a `ToolResult` must not be lost
    /// and must not stall the call; the rest are best effort.
    Provider(ProviderCommand),
    /// Ask the route's caller lookup; answer with `Input::LookupDone`.
    StartLookup {
        lookup: ContextLookup,
        info: CallInfo,
        vars: BTreeMap<String, String>,
    },
    /// Run a webhook tool; its result goes straight to the provider, then
    /// `Input::ToolDone`.
    RunTool {
        spec: ToolSpec,
        call: ToolCall,
        info: CallInfo,
    },
    /// The provider failed before the caller heard it: stop it and connect this route's
    /// next provider (`route.call.provider`) for the same call; its events follow.
    SwitchProvider(std::sync::Arc<crate::config::Route>),
    /// The call is over; nothing follows.
    End(EndReason),
}
