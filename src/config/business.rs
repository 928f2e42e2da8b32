//! The business sections: caller lookup, tools, records, prices, budgets and the
//! webhook secret. Same rules as `compile.rs`: every problem is found at startup and
//! named by its key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::env_secrets::EnvSecrets;
use super::parse::{has_scheme, int_in, ms_or, named_or, non_empty, secret};
use super::raw::{RawBudgets, RawContext, RawPrice, RawPrices, RawRecords, RawTool, RawWebhooks};
use super::*;

type Result<T> = std::result::Result<T, ConfigError>;

/// Names the built-in tools take; a webhook tool may not reuse them.
pub const BUILTIN_TOOLS: [&str; 2] = ["end_call", "transfer_call"];

const MB: u64 = 1024 * 1024;

pub(super) fn webhooks(raw: RawWebhooks, secrets: &EnvSecrets) -> Result<WebhooksConfig> {
    let d = WebhooksConfig::default();
    Ok(WebhooksConfig {
        secret: secret(raw.secret, &secrets.webhook_secret),
        max_response_bytes: match raw.max_response_kb {
            None => d.max_response_bytes,
            Some(v) => int_in("webhooks.max_response_kb", v, 1, 64 * 1024, " KiB")? as usize * 1024,
        },
        max_tool_calls_in_flight: match raw.max_tool_calls_in_flight {
            None => d.max_tool_calls_in_flight,
            Some(v) => int_in("webhooks.max_tool_calls_in_flight", v, 1, 64, "")? as usize,
        },
    })
}

fn http_url(key: &str, url: &str) -> Result<()> {
    if !has_scheme(url, &["http://", "https://"]) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{:?} is not an HTTP URL: expected http://HOST/... or https://HOST/...",
                crate::redact::url(url)
            ),
        ));
    }
    Ok(())
}

/// A `context` table: `None` when absent or when its `url` is empty (a route can switch
/// the `[call]` lookup off with `url = ""`).
pub(super) fn context(at: &str, raw: Option<&RawContext>) -> Result<Option<ContextLookup>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let Some(url) = non_empty(raw.url.clone()) else {
        return Ok(None);
    };
    http_url(&format!("{at}.url"), &url)?;
    Ok(Some(ContextLookup {
        url,
        method: named_or(
            &format!("{at}.method"),
            raw.method.clone(),
            HttpMethod::Post,
            HttpMethod::parse,
            HttpMethod::NAMES,
        )?,
        timeout: ms_or(
            &format!("{at}.timeout_ms"),
            raw.timeout_ms,
            50,
            5_000,
            Duration::from_millis(1500),
        )?,
    }))
}

/// What every provider accepts: OpenAI's `^[a-zA-Z0-9_-]{1,64}$`, and Gemini's rule
/// that a name starts with a letter or an underscore.
fn valid_tool_name(name: &str) -> bool {
    name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) fn tools(at: &str, raw: &[RawTool]) -> Result<Arc<[ToolSpec]>> {
    let mut out: Vec<ToolSpec> = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let key = |field: &str| format!("{at}[{i}].{field}");
        let name = t.name.clone().unwrap_or_default().trim().to_string();
        if !valid_tool_name(&name) {
            return Err(ConfigError::invalid(
                key("name"),
                format!(
                    "{name:?} is not a valid tool name: 1 to 64 letters, digits, '_' or '-', \
                     starting with a letter or '_'"
                ),
            ));
        }
        if BUILTIN_TOOLS.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                key("name"),
                format!(
                    "{name:?} is a built-in tool: enable it with end_call = true / \
                     transfer_to = \"...\" instead of declaring it"
                ),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(ConfigError::invalid(
                key("name"),
                format!("duplicate tool name {name:?}"),
            ));
        }
        let description = t.description.clone().unwrap_or_default().trim().to_string();
        if description.is_empty() {
            return Err(ConfigError::invalid(
                key("description"),
                "must not be empty: the model decides when to call the tool from it",
            ));
        }
        let parameters = match t.parameters.as_deref().map(str::trim) {
            None | Some("") => serde_json::json!({"type": "object", "properties": {}}),
            Some(text) => {
                let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                    ConfigError::invalid(key("parameters"), format!("is not valid JSON: {e}"))
                })?;
                if v.get("type").and_then(|t| t.as_str()) != Some("object") {
                    return Err(ConfigError::invalid(
                        key("parameters"),
                        "must be a JSON Schema of an object: {\"type\": \"object\", \
                         \"properties\": {...}, \"required\": [...]}",
                    ));
                }
                v
            }
        };
        let url = t.url.clone().unwrap_or_default().trim().to_string();
        http_url(&key("url"), &url)?;
        out.push(ToolSpec {
            name,
            description,
            parameters,
            url,
            timeout: ms_or(
                &key("timeout_ms"),
                t.timeout_ms,
                100,
                60_000,
                Duration::from_secs(5),
            )?,
        });
    }
    Ok(Arc::from(out))
}

/// `transfer_to` as `uuid_transfer` takes it: `EXT [DIALPLAN [CONTEXT]]`.
pub(super) fn transfer_to(key: &str, raw: String) -> Result<String> {
    let t = raw.trim().to_string();
    let parts = t.split_whitespace().count();
    if parts > 3 || t.chars().any(|c| c.is_control()) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{t:?} is not a transfer destination: expected \"EXTENSION [DIALPLAN \
                 [CONTEXT]]\", e.g. \"1000 XML default\""
            ),
        ));
    }
    Ok(t)
}

/// Rules that involve the route and the rest of the config.
pub(super) fn check_route(at: &str, route: &Route, has_esl: bool) -> Result<()> {
    if !route.call.transfer_to.is_empty() && !has_esl {
        return Err(ConfigError::invalid(
            format!("{at}.transfer_to"),
            "transfer_call hands the call over with uuid_transfer over FreeSWITCH's Event \
             Socket: add a [freeswitch.esl] section (host, port, password)",
        ));
    }
    Ok(())
}

pub(super) fn records(raw: RawRecords) -> Result<RecordsConfig> {
    let d = RecordsConfig::default();
    let webhook_url = non_empty(raw.webhook_url);
    if let Some(url) = &webhook_url {
        http_url("records.webhook_url", url)?;
    }
    let spool_dir = non_empty(raw.spool_dir).map(PathBuf::from);
    if webhook_url.is_some() && spool_dir.is_none() {
        return Err(ConfigError::invalid(
            "records.spool_dir",
            "records.webhook_url needs a spool directory, where records wait while the \
             webhook is down (e.g. \"/var/lib/voicebridge/spool\")",
        ));
    }
    Ok(RecordsConfig {
        file: non_empty(raw.file).map(PathBuf::from),
        file_max_bytes: match raw.file_max_mb {
            None => d.file_max_bytes,
            Some(v) => int_in("records.file_max_mb", v, 1, 100_000, " MB")? * MB,
        },
        file_keep: match raw.file_keep {
            None => d.file_keep,
            Some(v) => {
                u32::try_from(int_in("records.file_keep", v, 0, 1000, "")?).unwrap_or(d.file_keep)
            }
        },
        webhook_url,
        webhook_timeout: ms_or(
            "records.webhook_timeout_ms",
            raw.webhook_timeout_ms,
            100,
            60_000,
            d.webhook_timeout,
        )?,
        // Set from `[webhooks]` by `compile`.
        webhook_max_response: d.webhook_max_response,
        spool_dir,
        spool_max_bytes: match raw.spool_max_mb {
            None => d.spool_max_bytes,
            Some(v) => int_in("records.spool_max_mb", v, 1, 100_000, " MB")? * MB,
        },
    })
}

/// A `[prices.<provider>]` table; a field it leaves out keeps the kind's default.
fn price(at: &str, raw: &RawPrice, default: Price) -> Result<Price> {
    let one = |field: &str, v: Option<f64>, default: u64| -> Result<u64> {
        match v {
            None => Ok(default),
            Some(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok((v * 1e6).round() as u64),
            Some(v) => Err(ConfigError::invalid(
                format!("{at}.{field}"),
                format!("{v} is not a price: must be a number from 0 to 1000000000"),
            )),
        }
    };
    Ok(Price {
        input_per_million_tokens: one(
            "input_per_million_tokens",
            raw.input_per_million_tokens,
            default.input_per_million_tokens,
        )?,
        output_per_million_tokens: one(
            "output_per_million_tokens",
            raw.output_per_million_tokens,
            default.output_per_million_tokens,
        )?,
        per_minute: one("per_minute", raw.per_minute, default.per_minute)?,
    })
}

pub(super) fn prices(raw: RawPrices) -> Result<PricesConfig> {
    let mut out = PricesConfig::default();
    if let Some(currency) = non_empty(raw.currency.clone()) {
        out.currency = currency;
    }
    for kind in ProviderKind::ALL {
        let at = format!("prices.{}", kind.name());
        out.set(kind, price(&at, raw.of(kind), kind.info().default_price)?);
    }
    Ok(out)
}

pub(super) fn budgets(raw: RawBudgets) -> BudgetsConfig {
    BudgetsConfig {
        state_file: non_empty(raw.state_file).map(PathBuf::from),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, HttpMethod, ProviderKind};

    fn load(toml: &str) -> Result<Config, String> {
        Config::from_toml_str(toml, Vec::<(String, String)>::new()).map_err(|e| e.to_string())
    }

    const TOOL: &str = r#"
[[call.tools]]
name = "book"
description = "Books an appointment."
parameters = '{"type":"object","properties":{"day":{"type":"string"}},"required":["day"]}'
url = "https://crm.example/book"
timeout_ms = 3000
"#;

    #[test]
    fn receptionist_config_compiles_and_routes_inherit_or_replace() {
        let c = load(&format!(
            r#"
[freeswitch.esl]
password = "x"
[call]
end_call = true
transfer_to = "1000 XML default"
daily_max_calls = 100
[call.context]
url = "https://crm.example/lookup"
method = "GET"
timeout_ms = 800
{TOOL}
[[routes]]
name = "plain"
tools = []
context = {{ url = "" }}
daily_max_minutes = 30
[prices.openai]
input_per_million_tokens = 32
output_per_million_tokens = 64.5
"#
        ))
        .unwrap();
        let call = &c.default_route().call;
        assert_eq!(call.tools.len(), 1);
        assert_eq!(call.tools[0].parameters["required"][0], "day");
        assert_eq!(call.context.as_ref().unwrap().method, HttpMethod::Get);
        assert!(call.end_call);
        let plain = &c.route("plain").unwrap().call;
        assert!(plain.tools.is_empty() && plain.context.is_none());
        assert_eq!((plain.daily_max_calls, plain.daily_max_minutes), (100, 30));
        assert_eq!(plain.transfer_to, "1000 XML default");
        assert_eq!(
            c.prices.of(ProviderKind::OpenAi).output_per_million_tokens,
            64_500_000
        );
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            (
                TOOL.replace(r#"'{"type""#, r#"'{"typ""#),
                "call.tools[0].parameters",
            ),
            (
                TOOL.replace("\"book\"", "\"end_call\""),
                "call.tools[0].name",
            ),
            (
                TOOL.replace("\"book\"", "\"bad name\""),
                "call.tools[0].name",
            ),
            (TOOL.replace("\"book\"", "\"1book\""), "call.tools[0].name"),
            (
                TOOL.replace("https://crm.example/book", "crm"),
                "call.tools[0].url",
            ),
            (
                format!("{TOOL}{}", TOOL.replace("Books", "Again")),
                "call.tools[1].name",
            ),
            ("[call]\ntransfer_to = \"1000\"".into(), "call.transfer_to"),
            (
                "[records]\nwebhook_url = \"https://x/r\"".into(),
                "records.spool_dir",
            ),
            (
                "[prices.gemini]\nper_minute = -1".into(),
                "prices.gemini.per_minute",
            ),
            (
                "[call.context]\nurl = \"https://x\"\nmethod = \"PUT\"".into(),
                "call.context.method",
            ),
        ];
        for (toml, key) in cases {
            let err = load(&toml).expect_err(&toml);
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn webhook_secret_comes_from_the_file_or_the_environment() {
        let env = vec![(
            "VOICEBRIDGE_WEBHOOK_SECRET".to_string(),
            "from-env-0123456789".to_string(),
        )];
        let c = Config::from_toml_str("", env.clone()).unwrap();
        assert_eq!(c.webhooks.secret.expose(), "from-env-0123456789");
        assert!(c
            .warnings()
            .iter()
            .all(|w| !w.contains("VOICEBRIDGE_WEBHOOK_SECRET")));
        let c = Config::from_toml_str("[webhooks]\nsecret = \"in-file\"", env).unwrap();
        assert_eq!(c.webhooks.secret.expose(), "in-file");
    }

    #[test]
    fn memory_bounds_have_defaults_and_ranges() {
        let c = Config::from_toml_str("", vec![]).unwrap();
        assert_eq!(c.webhooks.max_response_bytes, 256 * 1024);
        assert_eq!(c.records.webhook_max_response, 256 * 1024);
        assert_eq!(c.webhooks.max_tool_calls_in_flight, 4);
        assert_eq!(
            c.freeswitch.playback_max_queue,
            std::time::Duration::from_secs(60)
        );
        let c = Config::from_toml_str(
            "[webhooks]\nmax_response_kb = 1024\nmax_tool_calls_in_flight = 2\n\
             [freeswitch]\nplayback_max_queue_ms = 5000",
            vec![],
        )
        .unwrap();
        assert_eq!(c.webhooks.max_response_bytes, 1024 * 1024);
        assert_eq!(
            c.records.webhook_max_response,
            1024 * 1024,
            "records follow [webhooks]"
        );
        assert_eq!(c.webhooks.max_tool_calls_in_flight, 2);
        assert_eq!(
            c.freeswitch.playback_max_queue,
            std::time::Duration::from_secs(5)
        );
        for (toml, key) in [
            (
                "[webhooks]\nmax_response_kb = 0",
                "webhooks.max_response_kb",
            ),
            (
                "[webhooks]\nmax_tool_calls_in_flight = 0",
                "webhooks.max_tool_calls_in_flight",
            ),
            (
                "[freeswitch]\nplayback_max_queue_ms = 10",
                "freeswitch.playback_max_queue_ms",
            ),
        ] {
            let err = Config::from_toml_str(toml, vec![]).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
