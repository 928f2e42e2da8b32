//! Tools (function calling): what each route declares to the model, and how a call
//! from the model is carried out.
//!
//! Webhook tools POST `{tool, call_id, route, caller_id, called, arguments}` (signed,
//! see `webhook`) and hand the JSON answer to the model. The built-ins need no webhook:
//! `end_call` and `transfer_call` are carried out by the session (they change the
//! call, not just the conversation).
//!
//! Whatever happens, the model gets an answer: a webhook error or timeout becomes an
//! error result, never silence (a model waiting for a result stalls the conversation).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{CallConfig, Secret, ToolSpec};
use crate::webhook::{self, WebhookError};

pub const END_CALL: &str = "end_call";
pub const TRANSFER_CALL: &str = "transfer_call";

/// A function call from the model, in provider-neutral form.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The provider's id for this call (OpenAI `call_id`, Gemini `id`, ElevenLabs
    /// `tool_call_id`), echoed in the result.
    pub id: String,
    pub name: String,
    /// The arguments as the model gave them; a JSON object when well-formed (OpenAI
    /// sends a JSON string, which the provider parses; unparsable text is kept as a
    /// JSON string so the session can answer with an error).
    pub arguments: serde_json::Value,
}

/// The outcome of a tool call, for the provider to send back in its own format.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolResult {
    pub id: String,
    pub name: String,
    /// The webhook's JSON answer, or for an error `{"error": "<message>"}`.
    pub output: serde_json::Value,
    pub is_error: bool,
    /// The model should go on talking after this result (OpenAI: `response.create`).
    /// False for `end_call`/`transfer_call`: the model has already said its last
    /// words and the call is ending, so a new response would only be cut off.
    pub reply: bool,
}

impl ToolResult {
    /// The error message of a failed call (for providers that carry it apart).
    pub fn error_message(&self) -> Option<&str> {
        if !self.is_error {
            return None;
        }
        self.output.get("error").and_then(|e| e.as_str())
    }

    /// The output as text (ElevenLabs and OpenAI carry a string): a JSON string is
    /// sent as is, anything else as its JSON text.
    pub fn output_text(&self) -> String {
        match &self.output {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// A tool as the providers declare it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDecl {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments (`{"type":"object",...}`).
    pub parameters: Value,
}

/// The tools a route offers the model, webhook tools first, then the built-ins it
/// enables.
pub fn declarations(call: &CallConfig) -> Vec<ToolDecl> {
    let mut out: Vec<ToolDecl> = call
        .tools
        .iter()
        .map(|t| ToolDecl {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.parameters.clone(),
        })
        .collect();
    if call.end_call {
        out.push(ToolDecl {
            name: END_CALL.to_owned(),
            description: "End the phone call. First say a short goodbye to the caller; the \
                          line is hung up as soon as your goodbye has been played. Use it \
                          when the conversation is over or the caller asks to hang up."
                .to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "Why the call ends, in a few words."}
                }
            }),
        });
    }
    if !call.transfer_to.is_empty() {
        out.push(ToolDecl {
            name: TRANSFER_CALL.to_owned(),
            description: "Transfer the caller to a human colleague. First tell the caller \
                          you are putting them through; the transfer happens as soon as \
                          that has been played. Use it when the caller asks for a person or \
                          you cannot help."
                .to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "What the caller needs, for the colleague."}
                }
            }),
        });
    }
    out
}

/// What a call from the model names.
#[derive(Debug)]
pub enum Resolved<'a> {
    Webhook(&'a ToolSpec),
    EndCall,
    TransferCall,
    /// Not offered on this route (a model hallucinating a tool, or an ElevenLabs agent
    /// with a client tool voicebridge does not know).
    Unknown,
}

pub fn resolve<'a>(call: &'a CallConfig, name: &str) -> Resolved<'a> {
    if let Some(spec) = call.tools.iter().find(|t| t.name == name) {
        return Resolved::Webhook(spec);
    }
    match name {
        END_CALL if call.end_call => Resolved::EndCall,
        TRANSFER_CALL if !call.transfer_to.is_empty() => Resolved::TransferCall,
        _ => Resolved::Unknown,
    }
}

/// Who is calling, sent with every tool webhook.
#[derive(Clone, Debug, Default)]
pub struct CallInfo {
    pub call_id: String,
    pub route: String,
    pub caller_id: String,
    pub called: String,
}

/// A successful result.
pub fn ok(call: &ToolCall, output: Value) -> ToolResult {
    ToolResult {
        id: call.id.clone(),
        name: call.name.clone(),
        output,
        is_error: false,
        reply: true,
    }
}

/// An error result the model can read and recover from.
pub fn error(call: &ToolCall, message: impl Into<String>) -> ToolResult {
    ToolResult {
        id: call.id.clone(),
        name: call.name.clone(),
        output: json!({"error": message.into()}),
        is_error: true,
        reply: true,
    }
}

/// The answer to a webhook call over `[webhooks] max_tool_calls_in_flight`: at once,
/// so a model looping on calls cannot pile up requests (and memory) behind a slow
/// webhook.
pub fn busy(call: &ToolCall, limit: usize) -> ToolResult {
    error(
        call,
        format!(
            "{limit} tool call(s) are already running on this call; wait for their results \
             before calling {} again",
            call.name
        ),
    )
}

/// The arguments as an object: the model's own object, `{}` for none, or an error for
/// anything else (OpenAI arguments that were not valid JSON arrive as a string).
pub fn arguments(call: &ToolCall) -> Result<Value, String> {
    match &call.arguments {
        Value::Object(_) => Ok(call.arguments.clone()),
        Value::Null => Ok(json!({})),
        Value::String(s) if s.trim().is_empty() => Ok(json!({})),
        other => Err(format!(
            "the arguments must be a JSON object matching the tool's parameters, got: {}",
            preview(&other.to_string())
        )),
    }
}

/// How a webhook tool call went (metrics label and record field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Timeout,
}

impl Outcome {
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Carries out a webhook tool. Returns the result for the model, how it went and how
/// long it took.
pub async fn run_webhook(
    spec: &ToolSpec,
    call: &ToolCall,
    info: &CallInfo,
    secret: &Secret,
    max_body: usize,
) -> (ToolResult, Outcome, Duration) {
    let started = Instant::now();
    let args = match arguments(call) {
        Ok(a) => a,
        Err(e) => return (error(call, e), Outcome::Error, started.elapsed()),
    };
    let body = json!({
        "tool": call.name,
        "tool_call_id": call.id,
        "call_id": info.call_id,
        "route": info.route,
        "caller_id": info.caller_id,
        "called": info.called,
        "arguments": args,
    });
    let body = body.to_string().into_bytes();
    // The HTTP timeout covers the whole exchange; the outer one guards against
    // anything that would not honour it, so the model is never left waiting.
    let result = tokio::time::timeout(
        spec.timeout + Duration::from_millis(50),
        webhook::send(
            reqwest::Method::POST,
            &spec.url,
            body,
            secret,
            &info.call_id,
            spec.timeout,
            max_body,
        ),
    )
    .await
    .unwrap_or(Err(WebhookError::Timeout(spec.timeout)));
    let out = match result {
        Ok(Value::Null) => (ok(call, json!({"ok": true})), Outcome::Ok),
        Ok(v) => (ok(call, v), Outcome::Ok),
        Err(WebhookError::Timeout(t)) => (
            error(
                call,
                format!(
                    "the {} system did not answer within {} ms; tell the caller it is not \
                     available right now",
                    call.name,
                    t.as_millis()
                ),
            ),
            Outcome::Timeout,
        ),
        Err(e) => (
            error(call, format!("the {} system failed: {e}", call.name)),
            Outcome::Error,
        ),
    };
    (out.0, out.1, started.elapsed())
}

/// Template variables from a caller-lookup answer: top-level scalars by name, nested
/// objects flattened with dots (`{"customer":{"name":"Ada"}}` → `customer.name`).
pub fn vars_from_json(v: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>, depth: usize) {
        match v {
            Value::Object(map) if depth < 4 => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out, depth + 1);
                }
            }
            Value::Null => {}
            Value::String(s) if !prefix.is_empty() => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other if !prefix.is_empty() => {
                out.insert(prefix.to_owned(), other.to_string());
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out, 0);
    out
}

fn preview(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_with(name: &str, args: Value) -> ToolCall {
        ToolCall {
            id: "c1".into(),
            name: name.into(),
            arguments: args,
        }
    }

    #[test]
    fn builtins_are_declared_only_when_enabled() {
        let mut c = CallConfig::default();
        assert!(declarations(&c).is_empty());
        c.end_call = true;
        c.transfer_to = "1000 XML default".into();
        let names: Vec<String> = declarations(&c).into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["end_call", "transfer_call"]);
        assert!(matches!(resolve(&c, "end_call"), Resolved::EndCall));
        assert!(matches!(resolve(&c, "nope"), Resolved::Unknown));
        c.end_call = false;
        assert!(matches!(resolve(&c, "end_call"), Resolved::Unknown));
    }

    #[test]
    fn arguments_must_be_an_object() {
        assert_eq!(
            arguments(&call_with("t", json!({"a":1}))),
            Ok(json!({"a":1}))
        );
        assert_eq!(arguments(&call_with("t", Value::Null)), Ok(json!({})));
        assert!(arguments(&call_with("t", json!("{broken"))).is_err());
        assert!(arguments(&call_with("t", json!([1]))).is_err());
    }

    #[test]
    fn lookup_answers_become_flat_vars() {
        let v = json!({"name":"Ada","vip":true,"orders":3,"customer":{"tier":"gold"},"none":null});
        let vars = vars_from_json(&v);
        assert_eq!(vars["name"], "Ada");
        assert_eq!(vars["vip"], "true");
        assert_eq!(vars["orders"], "3");
        assert_eq!(vars["customer.tier"], "gold");
        assert!(!vars.contains_key("none"));
        assert!(vars_from_json(&json!("just text")).is_empty());
    }
}
