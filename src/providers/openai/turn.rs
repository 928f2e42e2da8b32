//! The OpenAI session's protocol state without the socket: server events in,
//! normalised [`ProviderEvent`]s out, plus what the connection must do next (become
//! ready, wait for the expiry close, answer tool results). No I/O and no clock, so it
//! is unit-tested directly and the fuzz targets feed it raw server text.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::wire::{self, ErrorObject, ServerEvent, SETUP_EVENT_ID};
use crate::audio::ItemId;
use crate::providers::{ProviderEvent, Speaker, ToolCall, ToolResult, Usage};

pub(super) const EXPIRED_REASON: &str = "OpenAI session reached its 60-minute limit";

/// What the connection must do after a server event (besides the events it emits).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// `session.updated`: audio may flow (first time only).
    Ready,
    /// The session is over (expired): wait for the close, briefly.
    Expiring,
}

/// What one server text frame did, besides the session events it pushed.
#[derive(Debug, PartialEq, Eq)]
pub struct TextOutcome {
    pub step: Step,
    /// It was `session.created`: the connection may now send its `session.update`.
    pub session_created: bool,
}

/// Protocol state that does not touch the socket: server events in, normalised events
/// out. Kept apart from the I/O so it can be tested directly, and public so the fuzz
/// targets can feed it raw server text exactly as the connection does.
#[derive(Debug)]
pub struct Turns {
    /// Our `session.update` went out: its `session.updated` makes us ready.
    setup_sent: bool,
    pub(super) ready: bool,
    /// `response.created` seen, `response.done` not yet.
    pub(super) current_response: Option<String>,
    /// The response that was in progress at `speech_started`: its late deltas are dropped.
    interrupted_response: Option<String>,
    late_deltas: u64,
    /// The assistant item of the last delta (reused so chunks share one `Arc`).
    item: Option<ItemId>,
    /// The caller's turn ended (speech_stopped / committed) and has not restarted.
    caller_done: bool,
    /// The caller finished a turn and no answer audio has started since (watchdog).
    pub(super) awaiting_answer: bool,
    pub(super) expired: bool,
    tools: ToolTurns,
    /// The server cancels its reply on the caller's speech (`interrupt_response`);
    /// false when voicebridge decides barge-ins and sends `response.cancel` itself.
    server_interrupts: bool,
    /// Key groups sent so far (our item ids `vb_dtmf_<n>`).
    dtmf_items: u32,
}

/// Function calls in flight, and whether the model owes the caller an answer to
/// their results.
///
/// One `response.create` follows the results: only once none of the calls the model
/// made is still awaiting its result (a response may call several functions; one
/// answer covers them all) and no response is active (the server refuses a second one
/// with `conversation_already_has_active_response`).
#[derive(Debug, Default)]
struct ToolTurns {
    /// `call_id`s handed to the session whose results have not come back.
    open: Vec<String>,
    /// A result that wants an answer went out and no response has seen it yet.
    reply_owed: bool,
    /// Outputs sent that the server has not yet added to the conversation
    /// (`conversation.item.added`): a response created before that does not see them.
    unconfirmed: Vec<String>,
}

impl Default for Turns {
    fn default() -> Self {
        Turns::new()
    }
}

impl Turns {
    pub fn new() -> Self {
        Turns {
            setup_sent: false,
            ready: false,
            current_response: None,
            interrupted_response: None,
            late_deltas: 0,
            item: None,
            caller_done: false,
            awaiting_answer: false,
            expired: false,
            tools: ToolTurns::default(),
            server_interrupts: true,
            dtmf_items: 0,
        }
    }

    /// Our `session.update` went out: the next `session.updated` makes the session ready.
    /// `server_interrupts`: the `interrupt_response` it asked for.
    pub fn mark_setup_sent(&mut self, server_interrupts: bool) {
        self.setup_sent = true;
        self.server_interrupts = server_interrupts;
    }

    /// We cancel the active response (a barge-in voicebridge confirmed): what the
    /// server still sends of it is late and dropped, as after its own cancel.
    pub fn cancelling(&mut self) {
        if let Some(r) = &self.current_response {
            self.interrupted_response = Some(r.clone());
        }
    }

    /// The item telling the model which keys the caller pressed; the model owes an
    /// answer to it (asked for by [`reply_due`](Self::reply_due) once no response is
    /// active and the item has joined the conversation).
    pub fn dtmf(&mut self, digits: &str) -> Value {
        self.dtmf_items += 1;
        let id = format!("vb_dtmf_{}", self.dtmf_items);
        self.tools.reply_owed = true;
        self.tools.unconfirmed.push(id.clone());
        wire::dtmf_item(&id, digits)
    }

    /// Handles one server text frame: parses it and runs [`on_event`](Self::on_event).
    /// `None` when it is not an event we understand (logged and ignored, never fatal).
    pub fn on_text(&mut self, text: &str, out: &mut Vec<ProviderEvent>) -> Option<TextOutcome> {
        let ev: ServerEvent = match serde_json::from_str(text) {
            Ok(ev) => ev,
            Err(e) => {
                let kind = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_owned));
                debug!(event = kind.as_deref().unwrap_or("?"), error = %e, "OpenAI message not understood: ignored");
                return None;
            }
        };
        let session_created = ev.kind == "session.created";
        let step = self.on_event(ev, out);
        Some(TextOutcome {
            step,
            session_created,
        })
    }

    /// Handles one server event, pushing the session events it produces.
    fn on_event(&mut self, ev: ServerEvent, out: &mut Vec<ProviderEvent>) -> Step {
        match ev.kind.as_str() {
            "session.created" => debug!("session.created"),
            "session.updated" => {
                if !self.setup_sent {
                    debug!("session.updated before our session.update: ignored");
                } else if !self.ready {
                    self.ready = true;
                    return Step::Ready;
                } else {
                    debug!("session.updated (again)");
                }
            }
            "input_audio_buffer.speech_started" => {
                self.awaiting_answer = false;
                self.caller_done = false;
                if let (true, Some(r)) = (self.server_interrupts, &self.current_response) {
                    // interrupt_response: the server cancels it; what it still sends is late.
                    // (Without it the reply goes on until voicebridge confirms the barge-in.)
                    self.interrupted_response = Some(r.clone());
                }
                out.push(ProviderEvent::SpeechStarted);
            }
            "input_audio_buffer.speech_stopped" | "input_audio_buffer.committed" => {
                if ev.kind == "input_audio_buffer.speech_stopped" {
                    out.push(ProviderEvent::SpeechStopped);
                }
                // End of the caller's turn (both events come; the first counts): the
                // watchdog waits for the answer's audio.
                if !self.caller_done {
                    self.caller_done = true;
                    self.awaiting_answer = true;
                }
            }
            "response.created" => {
                self.current_response = ev.response.and_then(|r| r.id);
                // A response started after our outputs joined the conversation answers
                // them (the server started one on the caller's speech, say): asking
                // for another would make the model answer twice.
                if self.tools.unconfirmed.is_empty() {
                    self.tools.reply_owed = false;
                }
            }
            "conversation.item.added" => {
                if let Some(item) = &ev.item {
                    if let (Some("function_call_output"), Some(call_id)) =
                        (item.kind.as_deref(), &item.call_id)
                    {
                        self.tools.unconfirmed.retain(|c| c != call_id);
                    }
                    if let Some(id) = item.id.as_deref().filter(|i| i.starts_with("vb_dtmf_")) {
                        self.tools.unconfirmed.retain(|c| c != id);
                    }
                }
            }
            "response.function_call_arguments.done" => self.on_function_call(ev, out),
            // Argument tokens as they stream; `.done` carries them whole.
            "response.function_call_arguments.delta" => {}
            "response.output_audio.delta" => self.on_delta(ev, out),
            "response.output_audio_transcript.done" => {
                if let Some(text) = ev.transcript {
                    out.push(ProviderEvent::Transcript {
                        who: Speaker::Assistant,
                        text,
                        is_final: true,
                    });
                }
            }
            "conversation.item.input_audio_transcription.completed" => {
                if let Some(text) = ev.transcript {
                    out.push(ProviderEvent::Transcript {
                        who: Speaker::Caller,
                        text,
                        is_final: true,
                    });
                }
            }
            "response.done" => {
                let response = ev.response.unwrap_or_default();
                let id = response.id.clone();
                if id.is_some() && id == self.interrupted_response {
                    self.interrupted_response = None;
                    if self.late_deltas > 0 {
                        info!(
                            response = id.as_deref().unwrap_or(""),
                            late_deltas = self.late_deltas,
                            "dropped late audio of the interrupted response"
                        );
                    }
                    self.late_deltas = 0;
                }
                if id.is_none() || id == self.current_response {
                    self.current_response = None;
                }
                debug!(
                    status = response.status.as_deref().unwrap_or(""),
                    "response.done"
                );
                if let Some(u) = response.usage {
                    out.push(ProviderEvent::Usage(Usage {
                        input_tokens: u.input_tokens.unwrap_or(0),
                        output_tokens: u.output_tokens.unwrap_or(0),
                    }));
                }
                out.push(ProviderEvent::ResponseDone);
            }
            "error" => return self.on_error(ev.error.unwrap_or_default(), out),
            // idle_timeout_ms: the caller said nothing; the server re-prompts on its own
            // (a response.created follows).
            "input_audio_buffer.timeout_triggered" => {
                debug!("OpenAI: the caller was silent: the model re-prompts")
            }
            other => debug!(event = other, "OpenAI event ignored"),
        }
        Step::Continue
    }

    fn on_function_call(&mut self, ev: ServerEvent, out: &mut Vec<ProviderEvent>) {
        let (Some(id), Some(name)) = (ev.call_id, ev.name) else {
            warn!("response.function_call_arguments.done without call_id or name: ignored");
            return;
        };
        if ev.response_id.is_some() && ev.response_id == self.interrupted_response {
            // The caller spoke over the response that made this call, and the server
            // cancelled it: its arguments may be cut short, and running it anyway
            // could, for end_call, hang up on a caller who is talking.
            info!(tool = %name, call_id = %id, "function call of an interrupted response not run");
            return;
        }
        let raw = ev.arguments.unwrap_or_default();
        let arguments = if raw.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(&raw).unwrap_or(Value::String(raw))
        };
        // The model answered (with a call, not audio): the watchdog re-arms when the
        // result asks for the next answer.
        self.awaiting_answer = false;
        self.tools.open.push(id.clone());
        out.push(ProviderEvent::ToolCall(Box::new(ToolCall {
            id,
            name,
            arguments,
        })));
    }

    /// The `conversation.item.create` carrying a function's result. Sent at once even
    /// during a response: the item joins the conversation, and the answer to it is
    /// asked for separately (see [`reply_due`](Self::reply_due)).
    pub fn tool_result(&mut self, r: &ToolResult) -> Value {
        let before = self.tools.open.len();
        self.tools.open.retain(|c| *c != r.id);
        if self.tools.open.len() == before {
            debug!(call_id = %r.id, tool = %r.name, "result for a call_id not awaited: sent anyway");
        }
        if r.reply {
            self.tools.reply_owed = true;
        }
        self.tools.unconfirmed.push(r.id.clone());
        wire::function_output(r)
    }

    /// Whether to send `response.create` now for the results sent (true at most once
    /// per batch of results; the watchdog then waits for the answer's audio).
    pub fn reply_due(&mut self) -> bool {
        let t = &self.tools;
        if !t.reply_owed || !t.open.is_empty() || self.current_response.is_some() {
            return false;
        }
        self.tools.reply_owed = false;
        self.awaiting_answer = true;
        true
    }

    fn on_delta(&mut self, ev: ServerEvent, out: &mut Vec<ProviderEvent>) {
        if ev.response_id.is_some() && ev.response_id == self.interrupted_response {
            self.late_deltas += 1;
            return;
        }
        let (Some(item_id), Some(delta)) = (ev.item_id, ev.delta) else {
            debug!("response.output_audio.delta without item_id or delta: ignored");
            return;
        };
        // Decoded into a buffer of its own that becomes the event's `Bytes` as it is:
        // no copy, and no decode buffer kept for the whole call.
        let mut decoded = Vec::with_capacity(delta.len() / 4 * 3 + 3);
        if let Err(e) =
            base64::engine::general_purpose::STANDARD.decode_vec(delta.as_bytes(), &mut decoded)
        {
            warn!(error = %e, "OpenAI audio delta is not valid base64: dropped");
            return;
        }
        if decoded.is_empty() {
            return;
        }
        self.awaiting_answer = false;
        let item = match &self.item {
            Some(i) if **i == *item_id => i.clone(),
            _ => {
                let i: ItemId = Arc::from(item_id);
                self.item = Some(i.clone());
                i
            }
        };
        out.push(ProviderEvent::Audio {
            item,
            data: Bytes::from(decoded),
        });
    }

    fn on_error(&mut self, e: ErrorObject, out: &mut Vec<ProviderEvent>) -> Step {
        let code = e.code.or(e.kind).unwrap_or_else(|| "unknown".to_owned());
        let message = e.message.unwrap_or_default();
        if code == "session_expired" {
            self.expired = true;
            out.push(ProviderEvent::Error {
                recoverable: true,
                code,
                message: format!("{EXPIRED_REASON}: {message}"),
            });
            return Step::Expiring;
        }
        let setup_rejected = !self.ready && e.event_id.as_deref() == Some(SETUP_EVENT_ID);
        out.push(ProviderEvent::Error {
            recoverable: !setup_rejected,
            code,
            message: if setup_rejected {
                format!("OpenAI rejected session.update: {message}")
            } else {
                message
            },
        });
        Step::Continue
    }
}

#[cfg(test)]
mod tests;
