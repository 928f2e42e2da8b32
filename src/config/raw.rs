//! `RawConfig`: the file and environment exactly as written, serde only.
//!
//! Every field is optional so "absent" can be told apart from "set to the default",
//! which route overrides need, and so the defaults live in exactly one place (the
//! `Default` impls of the typed sections). Values that need parsing (addresses, enum
//! names) stay strings here and numbers stay `i64`: `compile()` turns them into types
//! with messages that name the key and list what is allowed, which serde's generic
//! "invalid value" errors would not. `deny_unknown_fields` everywhere makes a typo a
//! startup error instead of a silently ignored setting.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

use super::kinds::ProviderKind;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub server: RawServer,
    pub admin: RawAdmin,
    pub log: RawLog,
    pub freeswitch: RawFreeswitch,
    pub call: RawCall,
    pub providers: RawProviders,
    pub routes: Vec<RawRoute>,
    pub webhooks: RawWebhooks,
    pub records: RawRecords,
    pub prices: RawPrices,
    pub budgets: RawBudgets,
    pub audiosocket: Vec<super::audiosocket::RawAudioSocket>,
    pub twilio: RawTwilio,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawTwilio {
    pub auth_token: Option<String>,
    pub public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawWebhooks {
    pub secret: Option<String>,
    #[serde(deserialize_with = "int")]
    pub max_response_kb: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub max_tool_calls_in_flight: Option<i64>,
}

/// `[call.context]` / a route's `context`: the caller lookup.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawContext {
    pub url: Option<String>,
    pub method: Option<String>,
    #[serde(deserialize_with = "int")]
    pub timeout_ms: Option<i64>,
}

/// One `[[call.tools]]` / `[[routes.tools]]` entry: a function the model may call,
/// answered by a webhook.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawTool {
    pub name: Option<String>,
    pub description: Option<String>,
    /// JSON Schema of the arguments, as JSON text (TOML tables would lose key case
    /// and order through the `config` crate).
    pub parameters: Option<String>,
    pub url: Option<String>,
    #[serde(deserialize_with = "int")]
    pub timeout_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawRecords {
    pub file: Option<String>,
    #[serde(deserialize_with = "int")]
    pub file_max_mb: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub file_keep: Option<i64>,
    pub webhook_url: Option<String>,
    #[serde(deserialize_with = "int")]
    pub webhook_timeout_ms: Option<i64>,
    pub spool_dir: Option<String>,
    #[serde(deserialize_with = "int")]
    pub spool_max_mb: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawPrices {
    pub currency: Option<String>,
    pub echo: RawPrice,
    pub openai: RawPrice,
    pub gemini: RawPrice,
    pub elevenlabs: RawPrice,
    pub media_streams: RawPrice,
}

impl RawPrices {
    /// The `[prices.<name>]` table of `kind` (one field per row of the kinds table).
    pub fn of(&self, kind: ProviderKind) -> &RawPrice {
        match kind {
            ProviderKind::Echo => &self.echo,
            ProviderKind::OpenAi => &self.openai,
            ProviderKind::Gemini => &self.gemini,
            ProviderKind::ElevenLabs => &self.elevenlabs,
            ProviderKind::MediaStreams => &self.media_streams,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawPrice {
    #[serde(deserialize_with = "number")]
    pub input_per_million_tokens: Option<f64>,
    #[serde(deserialize_with = "number")]
    pub output_per_million_tokens: Option<f64>,
    #[serde(deserialize_with = "number")]
    pub per_minute: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawBudgets {
    pub state_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    #[serde(deserialize_with = "tokens")]
    pub auth_tokens: Option<Vec<String>>,
    #[serde(deserialize_with = "int")]
    pub max_calls: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub handshake_timeout_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub drain_timeout_secs: Option<i64>,
    pub allow_unauthenticated: Option<bool>,
    #[serde(deserialize_with = "int")]
    pub per_ip_rate_limit: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub max_handshakes_per_ip: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub max_handshakes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    #[serde(deserialize_with = "int")]
    pub max_connections: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub header_timeout_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    pub transcripts: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawFreeswitch {
    #[serde(deserialize_with = "int")]
    pub sample_rate: Option<i64>,
    pub channels: Option<String>,
    pub codec: Option<String>,
    pub playback: Option<String>,
    #[serde(deserialize_with = "int")]
    pub playback_lead_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub esl_chunk_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub playback_max_queue_ms: Option<i64>,
    pub esl: Option<RawEsl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawEsl {
    pub host: Option<String>,
    #[serde(deserialize_with = "int")]
    pub port: Option<i64>,
    pub password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawCall {
    pub provider: Option<String>,
    pub instructions: Option<String>,
    pub greeting: Option<String>,
    #[serde(deserialize_with = "int")]
    pub max_duration_secs: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub idle_timeout_secs: Option<i64>,
    pub voice: Option<String>,
    pub language: Option<String>,
    #[serde(deserialize_with = "int")]
    pub response_timeout_secs: Option<i64>,
    pub goodbye: Option<String>,
    pub context: Option<RawContext>,
    pub tools: Option<Vec<RawTool>>,
    pub end_call: Option<bool>,
    pub transfer_to: Option<String>,
    #[serde(deserialize_with = "int")]
    pub daily_max_calls: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub daily_max_minutes: Option<i64>,
    pub dtmf: Option<String>,
    #[serde(deserialize_with = "int")]
    pub dtmf_group_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub barge_in_min_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub uplink_chunk_ms: Option<i64>,
    pub greeting_interruptible: Option<bool>,
    pub goodbye_interruptible: Option<bool>,
    pub fallback: Option<Vec<String>>,
    #[serde(deserialize_with = "int")]
    pub silence_reprompt_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawProviders {
    pub echo: RawEcho,
    pub openai: RawOpenAi,
    pub gemini: RawGemini,
    pub elevenlabs: RawElevenLabs,
    pub media_streams: RawMediaStreams,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawEcho {
    pub mode: Option<String>,
    #[serde(deserialize_with = "int")]
    pub delay_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub sample_rate: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawOpenAi {
    pub url: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub voice: Option<String>,
    pub audio_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawGemini {
    pub url: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub voice: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawElevenLabs {
    pub url: Option<String>,
    pub agent_id: Option<String>,
    pub api_key: Option<String>,
    pub signed_url_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawMediaStreams {
    pub url: Option<String>,
    pub token: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// One `[[routes]]` entry: a name plus optional overrides of `[call]` and of the
/// audio format keys of `[freeswitch]`. (Not `#[serde(flatten)]` of `RawCall`: flatten
/// disables `deny_unknown_fields`.)
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub instructions: Option<String>,
    pub greeting: Option<String>,
    #[serde(deserialize_with = "int")]
    pub max_duration_secs: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub idle_timeout_secs: Option<i64>,
    pub voice: Option<String>,
    pub language: Option<String>,
    #[serde(deserialize_with = "int")]
    pub response_timeout_secs: Option<i64>,
    pub goodbye: Option<String>,
    pub context: Option<RawContext>,
    pub tools: Option<Vec<RawTool>>,
    pub end_call: Option<bool>,
    pub transfer_to: Option<String>,
    #[serde(deserialize_with = "int")]
    pub daily_max_calls: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub daily_max_minutes: Option<i64>,
    pub dtmf: Option<String>,
    #[serde(deserialize_with = "int")]
    pub dtmf_group_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub barge_in_min_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub uplink_chunk_ms: Option<i64>,
    pub greeting_interruptible: Option<bool>,
    pub goodbye_interruptible: Option<bool>,
    pub fallback: Option<Vec<String>>,
    #[serde(deserialize_with = "int")]
    pub silence_reprompt_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub sample_rate: Option<i64>,
    pub channels: Option<String>,
    pub codec: Option<String>,
    pub playback: Option<String>,
    #[serde(deserialize_with = "int")]
    pub playback_lead_ms: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub max_calls: Option<i64>,
}

/// `auth_tokens` as a TOML array, or as one comma-separated string (what an environment
/// variable can hold: `VOICEBRIDGE__SERVER__AUTH_TOKENS=a,b`). Splitting here rather
/// than with the `config` crate's `try_parsing` keeps every env value a string, so a
/// token or key such as `007` is not turned into the number 7.
fn tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct Tokens;

    impl<'de> Visitor<'de> for Tokens {
        type Value = Option<Vec<String>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of strings or a comma-separated string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect(),
            ))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(token) = seq.next_element::<String>()? {
                out.push(token);
            }
            Ok(Some(out))
        }
    }

    d.deserialize_any(Tokens)
}

/// Whole numbers only. The `config` crate would round `1.5` to 2 and read `"yes"` as 1;
/// a config value that is not what the user meant must be an error instead. Strings
/// (every environment value is one) are parsed as decimal integers.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct Int;

    impl<'de> Visitor<'de> for Int {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is too large")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim()
                .parse()
                .map(Some)
                .map_err(|_| E::custom(format!("expected a whole number, found {v:?}")))
        }
    }

    d.deserialize_any(Int)
}

/// A decimal number (prices): TOML integers and floats, or a string from the
/// environment. Negative and non-finite values are left for `compile()` to reject.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    struct Number;

    impl<'de> Visitor<'de> for Number {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim()
                .parse()
                .map(Some)
                .map_err(|_| E::custom(format!("expected a number, found {v:?}")))
        }
    }

    d.deserialize_any(Number)
}
