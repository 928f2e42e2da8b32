//! Every config file we ship must load, and `config/default.toml` must be exactly the
//! built-in defaults (so the file documents the truth) and use the echo provider (so
//! the daemon works out of the box, with no API key).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use voicebridge::audio::{Channels, Codec};
use voicebridge::config::{
    Config, EchoMode, LogFormat, OpenAiAudioFormat, PlaybackMode, ProviderKind,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn default_toml_is_the_defaults() {
    let path = root().join("config/default.toml");
    let shipped = Config::load(&path, no_env()).unwrap_or_else(|e| panic!("{e}"));
    let builtin = Config::from_toml_str("", no_env()).unwrap();
    assert_eq!(
        shipped, builtin,
        "config/default.toml drifted from the built-in defaults"
    );
    assert!(shipped.warnings().is_empty(), "{:?}", shipped.warnings());
}

#[test]
fn default_values_match_the_contract() {
    let c = Config::load(&root().join("config/default.toml"), no_env()).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9090");
    assert!(c.server.auth_tokens.is_empty());
    assert_eq!(c.server.max_calls, 500);
    assert_eq!(c.server.handshake_timeout, Duration::from_millis(800));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
    assert!(!c.server.allow_unauthenticated);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9091");
    assert_eq!(c.log.format, LogFormat::Auto);
    assert_eq!(c.log.level, "info");
    assert!(c.log.transcripts);
    assert_eq!(c.freeswitch.sample_rate, 8000);
    assert_eq!(c.freeswitch.channels, Channels::Mono);
    assert_eq!(c.freeswitch.codec, Codec::L16);
    assert_eq!(c.freeswitch.playback, PlaybackMode::Binary);
    assert_eq!(c.freeswitch.playback_lead, Duration::from_millis(60));
    assert_eq!(c.freeswitch.esl_chunk, Duration::from_millis(500));
    assert!(c.freeswitch.esl.is_none());
    assert_eq!(c.call.provider, ProviderKind::Echo);
    assert_eq!(
        c.call.instructions,
        "You are a helpful phone assistant. Keep answers short."
    );
    assert_eq!(c.call.greeting, "");
    assert_eq!(c.call.max_duration, Duration::from_secs(1800));
    assert_eq!(c.call.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.providers.echo.mode, EchoMode::Utterance);
    assert_eq!(c.providers.echo.delay, Duration::from_millis(200));
    assert_eq!(c.providers.echo.sample_rate, 24000);
    assert_eq!(c.providers.openai.url, "wss://api.openai.com/v1/realtime");
    assert_eq!(c.providers.openai.model, "gpt-realtime-2.1");
    assert!(c.providers.openai.api_key.is_empty());
    assert_eq!(c.providers.openai.voice, "marin");
    assert_eq!(c.providers.openai.audio_format, OpenAiAudioFormat::Pcmu);
    assert!(c
        .providers
        .gemini
        .url
        .starts_with("wss://generativelanguage.googleapis.com/"));
    assert_eq!(c.providers.gemini.model, "models/gemini-3.8-live");
    assert_eq!(c.providers.gemini.voice, "Kore");
    assert_eq!(
        c.providers.elevenlabs.url,
        "wss://api.elevenlabs.io/v1/convai/conversation"
    );
    assert_eq!(c.providers.elevenlabs.agent_id, "");
    assert_eq!(
        c.providers.elevenlabs.signed_url_endpoint,
        "https://api.elevenlabs.io/v1/convai/conversation/get-signed-url"
    );
    let names: Vec<&str> = c.routes().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["call"]);
    assert_eq!(c.providers_in_use(), [ProviderKind::Echo]);
}

fn leaf_keys(prefix: &str, table: config::Map<String, config::Value>, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        match v.clone().into_table() {
            Ok(sub) => leaf_keys(&key, sub, out),
            Err(_) => {
                out.insert(key);
            }
        }
    }
}

/// "default.toml ships every key": its leaf keys are exactly the contract's list.
#[test]
fn default_toml_ships_every_key() {
    let text = std::fs::read_to_string(root().join("config/default.toml")).unwrap();
    let table: config::Map<String, config::Value> = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap();
    let mut shipped = BTreeSet::new();
    leaf_keys("", table, &mut shipped);
    let contract: BTreeSet<String> = [
        "server.listen",
        "server.auth_tokens",
        "server.max_calls",
        "server.per_ip_rate_limit",
        "server.handshake_timeout_ms",
        "server.drain_timeout_secs",
        "server.allow_unauthenticated",
        "server.max_handshakes_per_ip",
        "server.max_handshakes",
        "admin.listen",
        "admin.max_connections",
        "admin.header_timeout_ms",
        "log.format",
        "log.level",
        "log.transcripts",
        "freeswitch.sample_rate",
        "freeswitch.channels",
        "freeswitch.codec",
        "freeswitch.playback",
        "freeswitch.playback_lead_ms",
        "freeswitch.esl_chunk_ms",
        "freeswitch.playback_max_queue_ms",
        "call.provider",
        "call.instructions",
        "call.greeting",
        "call.max_duration_secs",
        "call.idle_timeout_secs",
        "call.voice",
        "call.language",
        "call.response_timeout_secs",
        "call.goodbye",
        "providers.echo.mode",
        "providers.echo.delay_ms",
        "providers.echo.sample_rate",
        "providers.openai.url",
        "providers.openai.model",
        "providers.openai.api_key",
        "providers.openai.voice",
        "providers.openai.audio_format",
        "providers.gemini.url",
        "providers.gemini.model",
        "providers.gemini.api_key",
        "providers.gemini.voice",
        "providers.elevenlabs.url",
        "providers.elevenlabs.agent_id",
        "providers.elevenlabs.api_key",
        "providers.elevenlabs.signed_url_endpoint",
        "call.end_call",
        "call.transfer_to",
        "call.daily_max_calls",
        "call.daily_max_minutes",
        "call.dtmf",
        "call.dtmf_group_ms",
        "call.barge_in_min_ms",
        "call.greeting_interruptible",
        "call.goodbye_interruptible",
        "call.fallback",
        "call.silence_reprompt_ms",
        "call.uplink_chunk_ms",
        "webhooks.secret",
        "webhooks.max_response_kb",
        "webhooks.max_tool_calls_in_flight",
        "records.file",
        "records.file_max_mb",
        "records.file_keep",
        "records.webhook_url",
        "records.webhook_timeout_ms",
        "records.spool_dir",
        "records.spool_max_mb",
        "prices.currency",
        "prices.openai.input_per_million_tokens",
        "prices.openai.output_per_million_tokens",
        "prices.openai.per_minute",
        "prices.gemini.input_per_million_tokens",
        "prices.gemini.output_per_million_tokens",
        "prices.gemini.per_minute",
        "prices.elevenlabs.input_per_million_tokens",
        "prices.elevenlabs.output_per_million_tokens",
        "prices.elevenlabs.per_minute",
        "prices.echo.input_per_million_tokens",
        "prices.echo.output_per_million_tokens",
        "prices.echo.per_minute",
        "budgets.state_file",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(shipped, contract);
    // The optional sections are documented, commented out.
    assert!(text.contains("# [freeswitch.esl]"));
    assert!(text.contains("# [call.context]"));
    assert!(text.contains("# [[call.tools]]"));
    assert!(text.contains("# [[routes]]"));
}

/// Every shipped `*.toml` (config/ and freeswitch/) loads. Secrets come from the
/// environment in real deployments, so placeholder keys are supplied for files that
/// select a cloud provider; default.toml is also checked with a truly empty env above.
#[test]
fn every_shipped_toml_loads() {
    let mut files = Vec::new();
    toml_files(&root().join("config"), &mut files);
    toml_files(&root().join("freeswitch"), &mut files);
    assert!(!files.is_empty(), "no config files found under config/");
    let env: Vec<(String, String)> = [
        ("OPENAI_API_KEY", "placeholder-openai"),
        ("GEMINI_API_KEY", "placeholder-gemini"),
        ("ELEVENLABS_API_KEY", "placeholder-elevenlabs"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for file in files {
        if let Err(e) = Config::load(&file, env.clone()) {
            panic!("{}: {e}", file.display());
        }
    }
}

/// What a deployment provides from the environment (keys, the ESL password).
fn example_env() -> Vec<(String, String)> {
    [
        ("FREESWITCH_ESL_PASSWORD", "x"),
        ("OPENAI_API_KEY", "example-key"),
        ("GEMINI_API_KEY", "example-key"),
        (
            "VOICEBRIDGE__PROVIDERS__ELEVENLABS__AGENT_ID",
            "example-agent",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Every TOML example in the README (and in docs/) is a valid config, so a user who
/// copies one gets what it says: in particular the receptionist of "Business features"
/// (lookup, a booking tool, end_call, transfer_call, records, prices, budgets).
#[test]
fn readme_toml_examples_load() {
    let mut checked = 0;
    let mut docs = vec![root().join("README.md"), root().join("DEPLOY.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            docs.push(entry.path());
        }
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        for block in text.split("```toml\n").skip(1) {
            let Some((toml, _)) = block.split_once("```") else {
                continue;
            };
            // Paths in examples point at /var/...: keep them, loading does not touch them.
            if let Err(e) = Config::from_toml_str(toml, example_env()) {
                panic!("{}: example does not load: {e}\n{toml}", doc.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "found {checked} examples");
}

#[test]
fn readme_receptionist_is_what_it_says() {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = text.find("### A receptionist, end to end").unwrap();
    let block = text[start..].split("```toml\n").nth(1).unwrap();
    let toml = block.split_once("```").unwrap().0;
    let c = Config::from_toml_str(toml, example_env()).unwrap();
    let call = &c.default_route().call;
    assert!(call.context.is_some());
    assert_eq!(call.tools.len(), 1);
    assert_eq!(call.tools[0].name, "book_appointment");
    assert!(call.end_call);
    assert_eq!(call.transfer_to, "1000 XML default");
    assert!(c.records.webhook_url.is_some() && c.records.file.is_some());
    assert!(c.budgets.state_file.is_some());
    assert_eq!(
        c.prices.of(ProviderKind::OpenAi).input_per_million_tokens,
        32_000_000
    );
}
