//! What the call task feeds the engine: everything that can happen to a call, as plain
//! values, so a test can play a whole call without a socket.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::providers::ProviderEvent;
use crate::telephony::TelephonyEvent;
use crate::tools;
use crate::webhook::WebhookError;

/// One input; `CallEngine::handle` takes it with the time it happened.
#[derive(Debug)]
pub enum Input {
    /// From the telephony side.
    Telephony(TelephonyEvent),
    /// From the provider task.
    Provider(ProviderEvent),
    /// The provider's event channel ended (its task is gone).
    ProviderGone,
    /// A caller audio frame (`Output::Provider(Audio)`) could not be queued: `full`
    /// (the provider is not keeping up) or its channel is closed.
    AudioNotSent { bytes: u64, full: bool },
    /// The caller lookup (`Output::StartLookup`) answered, or its task failed.
    LookupDone(Result<LookupDone, String>),
    /// A webhook tool call (`Output::RunTool`) finished, or its task failed.
    ToolDone(Result<ToolDone, String>),
    /// The daemon is shutting down.
    Shutdown,
}

/// The caller lookup's answer, with the metadata variables it completes.
#[derive(Debug)]
pub struct LookupDone {
    pub vars: BTreeMap<String, String>,
    pub result: Result<BTreeMap<String, String>, WebhookError>,
    pub took: Duration,
}

/// A webhook tool call that finished (its result already went to the provider).
#[derive(Debug)]
pub struct ToolDone {
    pub id: String,
    pub name: String,
    pub outcome: tools::Outcome,
    pub took: Duration,
    pub error: Option<String>,
}
