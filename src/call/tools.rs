//! The call's side work, decided here and run by the call task: the caller lookup that
//! completes the provider's setup, and the model's tool calls (webhooks in flight with
//! a limit, built-ins answered at once, `end_call`/`transfer_call` starting the end).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::call_metrics;
use crate::providers::{self, ProviderCommand, ToolCall, ToolResult};
use crate::tools::{self, CallInfo, Resolved};

use super::ending::EndAction;
use super::upstream::preview;
use super::{CallEngine, LookupDone, Output, ToolDone};

impl CallEngine {
    /// Gives the provider the template variables it sets itself up with (once), after
    /// the route's caller lookup if it has one.
    pub(super) fn send_context(&mut self, mut vars: BTreeMap<String, String>) {
        self.context_sent = true;
        providers::template::set_built_ins(&mut vars, &self.call_id, &self.route.name);
        if let Some(lookup) = self.route.call.context.clone() {
            let info = self.call_info();
            self.outputs
                .push_back(Output::StartLookup { lookup, info, vars });
            return;
        }
        self.provide_context(vars);
    }

    /// The lookup answered (or failed): the provider is set up either way.
    pub(super) fn on_lookup(&mut self, done: Result<LookupDone, String>) {
        let Ok(LookupDone {
            mut vars,
            result,
            took,
        }) = done
        else {
            warn!("caller lookup task failed: the call proceeds with the defaults");
            self.record.lookup = "error";
            call_metrics::context_lookup(&self.route.name, "error");
            return self.provide_context(BTreeMap::new());
        };
        let outcome = crate::lookup::outcome(&result);
        self.record.lookup = outcome;
        call_metrics::context_lookup(&self.route.name, outcome);
        let took_ms = took.as_millis() as u64;
        match result {
            Ok(found) => {
                info!(fields = found.len(), took_ms, "caller lookup answered");
                providers::template::merge_lookup(&mut vars, found);
            }
            Err(e) => {
                warn!(error = %e, took_ms, "caller lookup failed: the call proceeds with the defaults")
            }
        }
        self.provide_context(vars);
    }

    fn call_info(&self) -> CallInfo {
        CallInfo {
            call_id: self.call_id.clone(),
            route: self.route.name.clone(),
            caller_id: self.caller_id.clone(),
            called: self.called.clone(),
        }
    }

    /// The model calls a function. Webhook tools run as side work (the call's audio
    /// never waits for a webhook); everything else is answered at once.
    pub(super) fn on_tool_call(&mut self, now: Instant, call: ToolCall) {
        self.stats.tool_calls += 1;
        self.record
            .tool_started(&call.id, &call.name, &call.arguments, now);
        let limit = self.config.webhooks.max_tool_calls_in_flight;
        match tools::resolve(&self.route.call, &call.name) {
            Resolved::Webhook(_) if self.tools_in_flight >= limit => {
                warn!(tool = %call.name, tool_call_id = %call.id, limit, "too many tool calls in flight: answered with an error at once");
                let result = tools::busy(&call, limit);
                call_metrics::tool_call(&self.route.name, &call.name, "busy");
                self.record
                    .tool_finished(&call.id, "busy", Duration::ZERO, result.error_message());
                self.outputs
                    .push_back(Output::Provider(ProviderCommand::ToolResult(Box::new(
                        result,
                    ))));
            }
            Resolved::Webhook(spec) => {
                info!(tool = %call.name, tool_call_id = %call.id, "tool call: asking the webhook");
                let spec = spec.clone();
                let info = self.call_info();
                self.tools_in_flight += 1;
                self.outputs.push_back(Output::RunTool { spec, call, info });
            }
            Resolved::EndCall => {
                let reason = reason_argument(&call.arguments);
                info!(tool = %call.name, reason = %reason, "the assistant ends the call once its last words are played");
                self.answer_builtin(
                    &call,
                    tools::ok(
                        &call,
                        serde_json::json!({"status": "ending", "note": "The call ends as soon as what you said has been played. Say nothing more."}),
                    ),
                );
                self.request_end(
                    now,
                    EndAction::Hangup {
                        reason,
                        asked: now,
                        extended: false,
                    },
                );
            }
            Resolved::TransferCall if !self.can_transfer => {
                warn!(tool = %call.name, "transfer_call needs the Event Socket and a call id in the URL (/call/<uuid>): refused");
                self.answer_builtin(
                    &call,
                    tools::error(&call, "transferring is not possible on this line right now; offer to take a message instead"),
                );
            }
            Resolved::TransferCall => {
                let to = self.route.call.transfer_to.clone();
                info!(tool = %call.name, destination = %to, reason = %reason_argument(&call.arguments), "the assistant transfers the call once its last words are played");
                self.answer_builtin(
                    &call,
                    tools::ok(
                        &call,
                        serde_json::json!({"status": "transferring", "note": "The caller is put through as soon as what you said has been played. Say nothing more."}),
                    ),
                );
                self.request_end(
                    now,
                    EndAction::Transfer {
                        to,
                        asked: now,
                        extended: false,
                    },
                );
            }
            Resolved::Unknown => {
                warn!(tool = %call.name, "the model called a tool this route does not offer: answered with an error");
                self.answer_builtin(
                    &call,
                    tools::error(&call, format!("there is no tool called {:?}", call.name)),
                );
            }
        }
    }

    /// Answers a call that needs no webhook, and records it as finished.
    fn answer_builtin(&mut self, call: &ToolCall, mut result: ToolResult) {
        let builtin = matches!(call.name.as_str(), tools::END_CALL | tools::TRANSFER_CALL);
        if builtin && !result.is_error {
            // The model has said its last words: a new response would be cut off.
            result.reply = false;
        }
        let outcome = if !result.is_error {
            "ok"
        } else if builtin {
            "error"
        } else {
            "unknown"
        };
        let label = if outcome == "unknown" {
            "unknown"
        } else {
            call.name.as_str()
        };
        call_metrics::tool_call(&self.route.name, label, outcome);
        self.record
            .tool_finished(&call.id, outcome, Duration::ZERO, result.error_message());
        self.outputs
            .push_back(Output::Provider(ProviderCommand::ToolResult(Box::new(
                result,
            ))));
    }

    pub(super) fn on_tool_done(&mut self, done: Result<ToolDone, String>) {
        self.tools_in_flight = self.tools_in_flight.saturating_sub(1);
        let done = match done {
            Ok(done) => done,
            Err(e) => return warn!(error = %e, "tool call task failed"),
        };
        let took_ms = done.took.as_millis() as u64;
        match &done.error {
            None => {
                info!(tool = %done.name, tool_call_id = %done.id, took_ms, "tool call answered")
            }
            Some(e) => {
                warn!(tool = %done.name, tool_call_id = %done.id, took_ms, error = %e, "tool call failed: the model was told")
            }
        }
        call_metrics::tool_call(&self.route.name, &done.name, done.outcome.name());
        call_metrics::tool_duration(&done.name, done.took);
        self.record.tool_finished(
            &done.id,
            done.outcome.name(),
            done.took,
            done.error.as_deref(),
        );
    }
}

/// The `reason` argument of a built-in tool, if the model gave one.
fn reason_argument(args: &serde_json::Value) -> String {
    args.get("reason")
        .and_then(|r| r.as_str())
        .map(|r| preview(r).to_owned())
        .unwrap_or_default()
}
