//! Caller context lookup: before the provider is set up, ask the business's own system
//! who is calling, and turn the answer into template variables for `instructions` and
//! `greeting` (`{{customer_name}}`, `{{customer.tier}}`, ...).
//!
//! The lookup runs inside the call's setup window (the provider is already connecting
//! in parallel); it never delays the call by more than its timeout, and any failure
//! leaves the call on its defaults with one log line.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{ContextLookup, HttpMethod, Secret};
use crate::tools::{vars_from_json, CallInfo};
use crate::webhook::{self, WebhookError};

/// Variables a lookup may not replace: they identify the call in logs and webhooks.
const PROTECTED: [&str; 2] = ["call_id", "route"];

/// Outcome label for metrics and the record.
pub fn outcome(result: &Result<BTreeMap<String, String>, WebhookError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(WebhookError::Timeout(_)) => "timeout",
        Err(_) => "error",
    }
}

/// Asks `cfg.url` about the call. GET sends `call_id`, `route`, `caller_id`, `called` as
/// query parameters; POST sends them as JSON together with every metadata variable.
pub async fn lookup(
    cfg: &ContextLookup,
    info: &CallInfo,
    metadata: &BTreeMap<String, String>,
    secret: &Secret,
    max_body: usize,
) -> Result<BTreeMap<String, String>, WebhookError> {
    let (method, body) = match cfg.method {
        HttpMethod::Get => {
            let pairs = [
                ("call_id", info.call_id.as_str()),
                ("route", info.route.as_str()),
                ("caller_id", info.caller_id.as_str()),
                ("called", info.called.as_str()),
            ];
            let query: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", encode(v)))
                .collect();
            (reqwest::Method::GET, query.join("&").into_bytes())
        }
        HttpMethod::Post => {
            // The metadata as sent once (the template's `meta.` copies left out).
            let metadata: BTreeMap<&String, &String> = metadata
                .iter()
                .filter(|(k, _)| !k.starts_with(crate::providers::template::META_PREFIX))
                .collect();
            let body = json!({
                "call_id": info.call_id,
                "route": info.route,
                "caller_id": info.caller_id,
                "called": info.called,
                "metadata": metadata,
            });
            (reqwest::Method::POST, body.to_string().into_bytes())
        }
    };
    // The HTTP timeout covers connect, send and the whole answer; the outer one is a
    // guard against anything that would not honour it.
    let answer = tokio::time::timeout(
        cfg.timeout + Duration::from_millis(50),
        webhook::send(
            method,
            &cfg.url,
            body,
            secret,
            &info.call_id,
            cfg.timeout,
            max_body,
        ),
    )
    .await
    .map_err(|_| WebhookError::Timeout(cfg.timeout))??;
    let mut vars = match answer {
        Value::Object(_) => vars_from_json(&answer),
        Value::Null => BTreeMap::new(),
        other => {
            return Err(WebhookError::NotJson(format!(
                "expected a JSON object, got {}",
                kind(&other)
            )))
        }
    };
    vars.retain(|k, _| !PROTECTED.contains(&k.as_str()));
    Ok(vars)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn encode(v: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(v, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("+39 02&x"), "%2B39%2002%26x");
    }
}
