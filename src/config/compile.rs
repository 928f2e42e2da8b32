//! `compile()`: `RawConfig` → validated `Config`. The one place that knows the rules.
//!
//! Each check returns the first problem as a [`ConfigError`] naming the key; a user
//! fixes one line at a time, and one clear message beats a list of consequences.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::business;
use super::env_secrets::EnvSecrets;
use super::parse::{has_scheme, int_in, ms_off_or, ms_or, named_or, non_empty, secret};
use super::raw::{
    RawCall, RawConfig, RawEsl, RawFreeswitch, RawMediaStreams, RawProviders, RawRoute, RawServer,
};
use super::*;

type Result<T> = std::result::Result<T, ConfigError>;

pub(crate) fn compile(raw: RawConfig, secrets: &EnvSecrets, notes: Vec<String>) -> Result<Config> {
    let server = server(raw.server)?;
    let admin = admin(raw.admin)?;
    // Port 0 (an ephemeral port, used by tests) cannot collide.
    if admin.listen == server.listen && admin.listen.port() != 0 {
        return Err(ConfigError::invalid(
            "admin.listen",
            format!("{} is also server.listen; use another port", admin.listen),
        ));
    }
    let log = log(raw.log)?;
    let freeswitch = freeswitch(raw.freeswitch, secrets)?;
    let call = call(raw.call)?;
    let providers = providers(raw.providers, secrets)?;
    let (default_route, extra_routes) = routes(&raw.routes, &call, &freeswitch)?;
    let webhooks = business::webhooks(raw.webhooks, secrets)?;
    let mut records = business::records(raw.records)?;
    records.webhook_max_response = webhooks.max_response_bytes;
    let prices = business::prices(raw.prices)?;
    let budgets = business::budgets(raw.budgets);
    let audiosocket = super::audiosocket::listeners(raw.audiosocket, |name| {
        name == DEFAULT_ROUTE || extra_routes.iter().any(|r| r.name == name)
    })?;
    let twilio = super::carriers::twilio(raw.twilio, secrets)?;

    let mut notes = notes;
    if !admin.listen.ip().is_loopback() {
        notes.push(format!(
            "admin.listen = {} is not loopback: /metrics and /healthz are readable by \
             anyone who can reach it",
            admin.listen
        ));
    }

    let config = Config {
        server,
        admin,
        log,
        freeswitch,
        call,
        providers,
        webhooks,
        records,
        prices,
        budgets,
        audiosocket,
        twilio,
        default_route,
        extra_routes,
        load_notes: notes,
    };
    check_auth(&config.server)?;
    check_credentials(&config)?;
    Ok(config)
}

fn server(raw: RawServer) -> Result<ServerConfig> {
    let d = ServerConfig::default();
    let mut auth_tokens = Vec::new();
    for (i, token) in raw.auth_tokens.unwrap_or_default().into_iter().enumerate() {
        // Never echo a token in a message: say which one, by position.
        if token.is_empty() {
            return Err(ConfigError::invalid(
                "server.auth_tokens",
                format!("token #{} is empty", i + 1),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                "server.auth_tokens",
                format!(
                    "token #{} contains spaces or non-ASCII characters, which do not survive \
                     an Authorization header or a ?token= query intact",
                    i + 1
                ),
            ));
        }
        auth_tokens.push(Secret::new(token));
    }
    Ok(ServerConfig {
        listen: listen("server.listen", raw.listen, d.listen)?,
        auth_tokens,
        max_calls: match raw.max_calls {
            None => d.max_calls,
            Some(v) => usize::try_from(int_in("server.max_calls", v, 1, 1_000_000, "")?)
                .map_err(|_| ConfigError::invalid("server.max_calls", "too large"))?,
        },
        handshake_timeout: ms_or(
            "server.handshake_timeout_ms",
            raw.handshake_timeout_ms,
            50,
            1000,
            d.handshake_timeout,
        )
        .map_err(|e| hint(e, "mod_audio_stream gives up on the handshake after 1 s"))?,
        drain_timeout: secs_or(
            "server.drain_timeout_secs",
            raw.drain_timeout_secs,
            1,
            3600,
            d.drain_timeout,
        )?,
        allow_unauthenticated: raw.allow_unauthenticated.unwrap_or(d.allow_unauthenticated),
        per_ip_rate_limit: match raw.per_ip_rate_limit {
            None => d.per_ip_rate_limit,
            Some(v) => u32::try_from(int_in("server.per_ip_rate_limit", v, 0, 100_000, "")?)
                .map_err(|_| ConfigError::invalid("server.per_ip_rate_limit", "too large"))?,
        },
        max_handshakes_per_ip: count_or(
            "server.max_handshakes_per_ip",
            raw.max_handshakes_per_ip,
            d.max_handshakes_per_ip,
        )?,
        max_handshakes: count_or(
            "server.max_handshakes",
            raw.max_handshakes,
            d.max_handshakes,
        )?,
    })
}

fn admin(raw: super::raw::RawAdmin) -> Result<AdminConfig> {
    let d = AdminConfig::default();
    Ok(AdminConfig {
        listen: listen("admin.listen", raw.listen, d.listen)?,
        max_connections: count_or(
            "admin.max_connections",
            raw.max_connections,
            d.max_connections,
        )?,
        header_timeout: ms_or(
            "admin.header_timeout_ms",
            raw.header_timeout_ms,
            100,
            3_600_000,
            d.header_timeout,
        )?,
    })
}

/// A connection count: 1..=1 000 000.
fn count_or(key: &str, raw: Option<i64>, default: usize) -> Result<usize> {
    match raw {
        None => Ok(default),
        Some(v) => usize::try_from(int_in(key, v, 1, 1_000_000, "")?)
            .map_err(|_| ConfigError::invalid(key, "too large")),
    }
}

fn log(raw: super::raw::RawLog) -> Result<LogConfig> {
    let d = LogConfig::default();
    let level = raw.level.unwrap_or(d.level);
    if level.trim().is_empty() {
        return Err(ConfigError::invalid(
            "log.level",
            "must not be empty: use a level (error | warn | info | debug | trace) or a \
             RUST_LOG-style filter such as \"info,voicebridge=debug\"",
        ));
    }
    // Same parser the subscriber will use, so a typo fails here, not after startup.
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        return Err(ConfigError::invalid(
            "log.level",
            format!("{level:?} is not a valid filter ({e}); use e.g. \"info\" or \"info,voicebridge=debug\""),
        ));
    }
    Ok(LogConfig {
        format: named_or(
            "log.format",
            raw.format,
            d.format,
            LogFormat::parse,
            LogFormat::NAMES,
        )?,
        level,
        transcripts: raw.transcripts.unwrap_or(d.transcripts),
    })
}

fn freeswitch(raw: RawFreeswitch, secrets: &EnvSecrets) -> Result<FreeswitchConfig> {
    let d = FreeswitchConfig::default();
    let esl = raw.esl.map(|e| esl(e, secrets)).transpose()?;
    let fs = FreeswitchConfig {
        sample_rate: match raw.sample_rate {
            None => d.sample_rate,
            Some(v) => call_rate("freeswitch.sample_rate", v)?,
        },
        channels: named_or(
            "freeswitch.channels",
            raw.channels,
            d.channels,
            Channels::parse,
            CHANNEL_NAMES,
        )?,
        codec: named_or(
            "freeswitch.codec",
            raw.codec,
            d.codec,
            Codec::parse,
            CODEC_NAMES,
        )?,
        playback: named_or(
            "freeswitch.playback",
            raw.playback,
            d.playback,
            PlaybackMode::parse,
            PlaybackMode::NAMES,
        )?,
        playback_lead: match raw.playback_lead_ms {
            None => d.playback_lead,
            Some(v) => lead("freeswitch.playback_lead_ms", v)?,
        },
        esl_chunk: match raw.esl_chunk_ms {
            None => d.esl_chunk,
            Some(v) => esl_chunk("freeswitch.esl_chunk_ms", v)?,
        },
        playback_max_queue: ms_or(
            "freeswitch.playback_max_queue_ms",
            raw.playback_max_queue_ms,
            1_000,
            600_000,
            d.playback_max_queue,
        )?,
        esl,
    };
    check_format(
        "freeswitch.codec",
        "freeswitch.sample_rate",
        fs.codec,
        fs.sample_rate,
    )?;
    check_playback("freeswitch.playback", fs.playback, fs.esl.is_some())?;
    Ok(fs)
}

fn esl(raw: RawEsl, secrets: &EnvSecrets) -> Result<EslConfig> {
    let d = EslConfig::default();
    let host = raw.host.unwrap_or(d.host);
    if host.trim().is_empty() {
        return Err(ConfigError::invalid(
            "freeswitch.esl.host",
            "must not be empty (FreeSWITCH's Event Socket host, e.g. \"127.0.0.1\")",
        ));
    }
    let port = match raw.port {
        None => d.port,
        Some(v) => u16::try_from(int_in("freeswitch.esl.port", v, 1, 65535, "")?)
            .map_err(|_| ConfigError::invalid("freeswitch.esl.port", "out of range"))?,
    };
    let password = non_empty(raw.password)
        .or_else(|| secrets.esl_password.clone())
        .unwrap_or_default();
    Ok(EslConfig {
        host,
        port,
        password: Secret::new(password),
    })
}

fn call(raw: RawCall) -> Result<CallConfig> {
    let d = CallConfig::default();
    let primary = provider("call.provider", raw.provider, d.provider)?;
    Ok(CallConfig {
        provider: primary,
        instructions: raw.instructions.unwrap_or(d.instructions),
        greeting: raw.greeting.unwrap_or(d.greeting),
        max_duration: secs_or(
            "call.max_duration_secs",
            raw.max_duration_secs,
            1,
            MAX_CALL_SECS,
            d.max_duration,
        )?,
        idle_timeout: secs_or(
            "call.idle_timeout_secs",
            raw.idle_timeout_secs,
            0,
            MAX_CALL_SECS,
            d.idle_timeout,
        )?,
        voice: raw.voice.unwrap_or(d.voice),
        language: raw.language.unwrap_or(d.language),
        response_timeout: secs_or(
            "call.response_timeout_secs",
            raw.response_timeout_secs,
            0,
            MAX_CALL_SECS,
            d.response_timeout,
        )?,
        goodbye: raw.goodbye.unwrap_or(d.goodbye),
        context: business::context("call.context", raw.context.as_ref())?,
        tools: business::tools("call.tools", raw.tools.as_deref().unwrap_or_default())?,
        end_call: raw.end_call.unwrap_or(d.end_call),
        transfer_to: business::transfer_to(
            "call.transfer_to",
            raw.transfer_to.unwrap_or(d.transfer_to),
        )?,
        daily_max_calls: daily("call.daily_max_calls", raw.daily_max_calls, 0)?,
        daily_max_minutes: daily("call.daily_max_minutes", raw.daily_max_minutes, 0)?,
        dtmf: named_or(
            "call.dtmf",
            raw.dtmf,
            d.dtmf,
            DtmfMode::parse,
            DtmfMode::NAMES,
        )?,
        dtmf_group: ms_or(
            "call.dtmf_group_ms",
            raw.dtmf_group_ms,
            100,
            10_000,
            d.dtmf_group,
        )?,
        barge_in_min: ms_or(
            "call.barge_in_min_ms",
            raw.barge_in_min_ms,
            0,
            2000,
            d.barge_in_min,
        )?,
        uplink_chunk: match raw.uplink_chunk_ms {
            None => d.uplink_chunk,
            Some(v) => uplink_chunk("call.uplink_chunk_ms", v)?,
        },
        greeting_interruptible: raw
            .greeting_interruptible
            .unwrap_or(d.greeting_interruptible),
        goodbye_interruptible: raw.goodbye_interruptible.unwrap_or(d.goodbye_interruptible),
        fallback: match raw.fallback {
            None => d.fallback,
            Some(names) => fallback("call.fallback", &names, primary)?,
        },
        silence_reprompt: ms_off_or(
            "call.silence_reprompt_ms",
            raw.silence_reprompt_ms,
            5000,
            30_000,
            d.silence_reprompt,
        )?,
    })
}

/// Most providers a call may move through: each try costs the caller up to a setup
/// timeout of silence.
const MAX_FALLBACKS: usize = 3;

/// `fallback = ["gemini", "echo"]`: known kinds, in order, without the primary or repeats.
fn fallback(key: &str, names: &[String], primary: ProviderKind) -> Result<Vec<ProviderKind>> {
    if names.len() > MAX_FALLBACKS {
        return Err(ConfigError::invalid(
            key,
            format!("at most {MAX_FALLBACKS} fallback providers"),
        ));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let kind = provider(key, Some(name.clone()), primary)?;
        if kind == primary {
            return Err(ConfigError::invalid(
                key,
                format!("{kind} is the route's own provider: a fallback must be another one"),
            ));
        }
        if out.contains(&kind) {
            return Err(ConfigError::invalid(key, format!("{kind} is listed twice")));
        }
        out.push(kind);
    }
    Ok(out)
}

/// A daily budget: 0 (no limit) or a positive count.
fn daily(key: &str, raw: Option<i64>, default: u64) -> Result<u64> {
    match raw {
        None => Ok(default),
        Some(v) => int_in(key, v, 0, 100_000_000, ""),
    }
}

fn providers(raw: RawProviders, secrets: &EnvSecrets) -> Result<ProvidersConfig> {
    let d = ProvidersConfig::default();
    let e = raw.echo;
    let echo = EchoConfig {
        mode: named_or(
            "providers.echo.mode",
            e.mode,
            d.echo.mode,
            EchoMode::parse,
            EchoMode::NAMES,
        )?,
        delay: ms_or(
            "providers.echo.delay_ms",
            e.delay_ms,
            0,
            10_000,
            d.echo.delay,
        )?,
        sample_rate: match e.sample_rate {
            None => d.echo.sample_rate,
            Some(0) => 0,
            Some(v) => call_rate("providers.echo.sample_rate", v)
                .map_err(|e| hint(e, "or 0 to work at the call's own rate"))?,
        },
    };

    let o = raw.openai;
    let openai = OpenAiConfig {
        url: ws_url("providers.openai.url", o.url, d.openai.url)?,
        model: required("providers.openai.model", o.model, d.openai.model)?,
        api_key: secret(o.api_key, secrets.api_key(ProviderKind::OpenAi)),
        voice: required("providers.openai.voice", o.voice, d.openai.voice)?,
        audio_format: named_or(
            "providers.openai.audio_format",
            o.audio_format,
            d.openai.audio_format,
            OpenAiAudioFormat::parse,
            OpenAiAudioFormat::NAMES,
        )?,
    };

    let g = raw.gemini;
    let gemini = GeminiConfig {
        url: ws_url("providers.gemini.url", g.url, d.gemini.url)?,
        model: required("providers.gemini.model", g.model, d.gemini.model)?,
        api_key: secret(g.api_key, secrets.api_key(ProviderKind::Gemini)),
        voice: g.voice.unwrap_or(d.gemini.voice),
    };

    let l = raw.elevenlabs;
    let endpoint = l
        .signed_url_endpoint
        .unwrap_or(d.elevenlabs.signed_url_endpoint);
    if !has_scheme(&endpoint, &["http://", "https://"]) {
        return Err(ConfigError::invalid(
            "providers.elevenlabs.signed_url_endpoint",
            format!(
                "{endpoint:?} is not an HTTP URL: expected http://HOST/... or https://HOST/..."
            ),
        ));
    }
    let elevenlabs = ElevenLabsConfig {
        url: ws_url("providers.elevenlabs.url", l.url, d.elevenlabs.url)?,
        agent_id: l
            .agent_id
            .unwrap_or(d.elevenlabs.agent_id)
            .trim()
            .to_string(),
        api_key: secret(l.api_key, secrets.api_key(ProviderKind::ElevenLabs)),
        signed_url_endpoint: endpoint,
    };

    Ok(ProvidersConfig {
        echo,
        openai,
        gemini,
        elevenlabs,
        media_streams: media_streams(raw.media_streams)?,
    })
}

/// `[providers.media_streams]`: the URL is checked only when given (a route using the
/// kind without one is refused by the credential check); header names and values must
/// be sendable, so a typo fails at startup instead of on every call.
fn media_streams(m: RawMediaStreams) -> Result<MediaStreamsConfig> {
    let url = match m
        .url
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
    {
        Some(u) => ws_url("providers.media_streams.url", Some(u), String::new())?,
        None => String::new(),
    };
    let mut headers = Vec::new();
    for (name, value) in m.headers.unwrap_or_default() {
        let key = format!("providers.media_streams.headers.{name}");
        if tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                key.clone(),
                "is not a valid HTTP header name",
            ));
        }
        if tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&value).is_err() {
            return Err(ConfigError::invalid(
                key,
                "has characters not allowed in an HTTP header value",
            ));
        }
        headers.push((name, value));
    }
    Ok(MediaStreamsConfig {
        url,
        token: secret(m.token, &None),
        headers,
    })
}

/// The `call` route and the others. A `[[routes]]` entry named `call` overrides the
/// defaults instead of adding a route.
fn routes(
    raw: &[RawRoute],
    call: &CallConfig,
    fs: &FreeswitchConfig,
) -> Result<(Arc<Route>, Vec<Arc<Route>>)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut default_route = None;
    let mut extra = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("routes[{i}]");
        let name = r.name.as_deref().unwrap_or("");
        if name.is_empty() {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                "every [[routes]] entry needs a name (it is the first path segment of the \
                 WebSocket URL)",
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                format!("{name:?} must be URL-safe: letters, digits, '-' and '_' only"),
            ));
        }
        if let Some(first) = seen.insert(name, i) {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                format!("duplicate route name {name:?} (also routes[{first}])"),
            ));
        }
        let route = resolve(&at, name, r, call, fs)?;
        if name == DEFAULT_ROUTE {
            default_route = Some(Arc::new(route));
        } else {
            extra.push(Arc::new(route));
        }
    }
    let default_route = match default_route {
        Some(route) => route,
        None => Arc::new(resolve(
            "call",
            DEFAULT_ROUTE,
            &RawRoute::default(),
            call,
            fs,
        )?),
    };
    Ok((default_route, extra))
}

fn resolve(
    at: &str,
    name: &str,
    r: &RawRoute,
    call: &CallConfig,
    fs: &FreeswitchConfig,
) -> Result<Route> {
    let key = |field: &str| format!("{at}.{field}");
    let route_provider = provider(&key("provider"), r.provider.clone(), call.provider)?;
    let route = Route {
        name: name.to_string(),
        call: CallConfig {
            provider: route_provider,
            instructions: r
                .instructions
                .clone()
                .unwrap_or_else(|| call.instructions.clone()),
            greeting: r.greeting.clone().unwrap_or_else(|| call.greeting.clone()),
            max_duration: secs_or(
                &key("max_duration_secs"),
                r.max_duration_secs,
                1,
                MAX_CALL_SECS,
                call.max_duration,
            )?,
            idle_timeout: secs_or(
                &key("idle_timeout_secs"),
                r.idle_timeout_secs,
                0,
                MAX_CALL_SECS,
                call.idle_timeout,
            )?,
            voice: r.voice.clone().unwrap_or_else(|| call.voice.clone()),
            language: r.language.clone().unwrap_or_else(|| call.language.clone()),
            response_timeout: secs_or(
                &key("response_timeout_secs"),
                r.response_timeout_secs,
                0,
                MAX_CALL_SECS,
                call.response_timeout,
            )?,
            goodbye: r.goodbye.clone().unwrap_or_else(|| call.goodbye.clone()),
            context: match &r.context {
                None => call.context.clone(),
                Some(c) => business::context(&key("context"), Some(c))?,
            },
            tools: match &r.tools {
                None => call.tools.clone(),
                Some(t) => business::tools(&key("tools"), t)?,
            },
            end_call: r.end_call.unwrap_or(call.end_call),
            transfer_to: match &r.transfer_to {
                None => call.transfer_to.clone(),
                Some(t) => business::transfer_to(&key("transfer_to"), t.clone())?,
            },
            daily_max_calls: daily(
                &key("daily_max_calls"),
                r.daily_max_calls,
                call.daily_max_calls,
            )?,
            daily_max_minutes: daily(
                &key("daily_max_minutes"),
                r.daily_max_minutes,
                call.daily_max_minutes,
            )?,
            dtmf: named_or(
                &key("dtmf"),
                r.dtmf.clone(),
                call.dtmf,
                DtmfMode::parse,
                DtmfMode::NAMES,
            )?,
            dtmf_group: ms_or(
                &key("dtmf_group_ms"),
                r.dtmf_group_ms,
                100,
                10_000,
                call.dtmf_group,
            )?,
            barge_in_min: ms_or(
                &key("barge_in_min_ms"),
                r.barge_in_min_ms,
                0,
                2000,
                call.barge_in_min,
            )?,
            uplink_chunk: match r.uplink_chunk_ms {
                None => call.uplink_chunk,
                Some(v) => uplink_chunk(&key("uplink_chunk_ms"), v)?,
            },
            greeting_interruptible: r
                .greeting_interruptible
                .unwrap_or(call.greeting_interruptible),
            goodbye_interruptible: r
                .goodbye_interruptible
                .unwrap_or(call.goodbye_interruptible),
            fallback: match &r.fallback {
                // Inherited, minus the route's own provider if it overrides it.
                None => call
                    .fallback
                    .iter()
                    .copied()
                    .filter(|k| *k != route_provider)
                    .collect(),
                Some(names) => fallback(&key("fallback"), names, route_provider)?,
            },
            silence_reprompt: ms_off_or(
                &key("silence_reprompt_ms"),
                r.silence_reprompt_ms,
                5000,
                30_000,
                call.silence_reprompt,
            )?,
        },
        sample_rate: match r.sample_rate {
            None => fs.sample_rate,
            Some(v) => call_rate(&key("sample_rate"), v)?,
        },
        channels: named_or(
            &key("channels"),
            r.channels.clone(),
            fs.channels,
            Channels::parse,
            CHANNEL_NAMES,
        )?,
        codec: named_or(
            &key("codec"),
            r.codec.clone(),
            fs.codec,
            Codec::parse,
            CODEC_NAMES,
        )?,
        playback: named_or(
            &key("playback"),
            r.playback.clone(),
            fs.playback,
            PlaybackMode::parse,
            PlaybackMode::NAMES,
        )?,
        playback_lead: match r.playback_lead_ms {
            None => fs.playback_lead,
            Some(v) => lead(&key("playback_lead_ms"), v)?,
        },
        max_calls: match r.max_calls {
            None => None,
            Some(v) => Some(
                usize::try_from(int_in(&key("max_calls"), v, 1, 1_000_000, "")?)
                    .map_err(|_| ConfigError::invalid(key("max_calls"), "too large"))?,
            ),
        },
    };
    // Blame the key the route set; if it set neither, [freeswitch] was already checked.
    let blamed = if r.codec.is_some() {
        "codec"
    } else {
        "sample_rate"
    };
    check_format(
        &key(blamed),
        &key("sample_rate"),
        route.codec,
        route.sample_rate,
    )?;
    check_playback(&key("playback"), route.playback, fs.esl.is_some())?;
    business::check_route(at, &route, fs.esl.is_some())?;
    Ok(route)
}

/// Non-loopback listen needs tokens, unless explicitly waived (CONFIG.md).
fn check_auth(s: &ServerConfig) -> Result<()> {
    if s.listen.ip().is_loopback() || !s.auth_tokens.is_empty() || s.allow_unauthenticated {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "server.auth_tokens",
        format!(
            "server.listen = {} is reachable from other hosts, so at least one token is \
             required: set server.auth_tokens = [\"<long random string>\"] (or \
             VOICEBRIDGE__SERVER__AUTH_TOKENS=token1,token2) and send it from FreeSWITCH, \
             or listen on 127.0.0.1, or set server.allow_unauthenticated = true if a \
             firewall already protects the port",
            s.listen
        ),
    ))
}

/// Every provider some route uses must be able to connect.
fn check_credentials(config: &Config) -> Result<()> {
    for kind in config.providers_in_use() {
        let Some(need) = kind.info().credential else {
            continue;
        };
        if !config.providers.credential(kind).is_empty() {
            continue;
        }
        let users: Vec<&str> = config
            .routes()
            .filter(|r| r.call.provider == kind || r.call.fallback.contains(&kind))
            .map(|r| r.name.as_str())
            .collect();
        let users = users.join(", ");
        let section = kind.info().section;
        let key = format!("{section}.{}", need.field);
        // The override variable for the same key, e.g. VOICEBRIDGE__PROVIDERS__OPENAI__API_KEY.
        let env_key = format!("VOICEBRIDGE__{}", key.replace('.', "__")).to_ascii_uppercase();
        // Only an API key also comes from its conventional variable.
        let what = match kind.api_key_env().filter(|_| need.field == "api_key") {
            Some(var) => format!("{}: set {var} (or {key} / {env_key})", need.what),
            None => format!("{}: set {key} (or {env_key})", need.what),
        };
        return Err(ConfigError::invalid(
            key,
            format!("provider {kind} (used by route {users}) needs {what}"),
        ));
    }
    Ok(())
}

// ---- value helpers: each takes the full key so messages can name it ----

/// Generous upper bound for call timers: keeps `Instant + duration` far from overflow.
const MAX_CALL_SECS: i64 = 86_400;
const CODEC_NAMES: &[&str] = &["L16", "PCMU", "PCMA"];
const CHANNEL_NAMES: &[&str] = &["mono", "mixed", "stereo"];

fn listen(key: &str, raw: Option<String>, default: SocketAddr) -> Result<SocketAddr> {
    match raw {
        None => Ok(default),
        // The value is not repeated: a secret pasted into the wrong key stays out of
        // the error (and so out of the journal).
        Some(s) => s.trim().parse().map_err(|_| {
            ConfigError::invalid(
                key,
                "not a socket address: expected HOST:PORT with an IP address, \
                 e.g. \"127.0.0.1:9090\", \"0.0.0.0:9090\" or \"[::1]:9090\"",
            )
        }),
    }
}

fn provider(key: &str, raw: Option<String>, default: ProviderKind) -> Result<ProviderKind> {
    named_or(
        key,
        raw,
        default,
        ProviderKind::parse,
        &ProviderKind::names(),
    )
}

fn secs_or(key: &str, raw: Option<i64>, lo: i64, hi: i64, default: Duration) -> Result<Duration> {
    match raw {
        None => Ok(default),
        Some(v) => int_in(key, v, lo, hi, " s").map(Duration::from_secs),
    }
}

/// A call (or provider) sample rate: 8 kHz steps, as FreeSWITCH and the providers use.
fn call_rate(key: &str, v: i64) -> Result<u32> {
    if !(8000..=48000).contains(&v) || v % 8000 != 0 {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{v} is not a supported rate: use a multiple of 8000 from 8000 to 48000 \
                 (8000, 16000, 24000, 32000, 48000 ...)"
            ),
        ));
    }
    u32::try_from(v).map_err(|_| ConfigError::invalid(key, "out of range"))
}

/// Playback lead: whole 20 ms frames, at least one, at most a second.
fn lead(key: &str, v: i64) -> Result<Duration> {
    if !(20..=1000).contains(&v) || v % 20 != 0 {
        return Err(ConfigError::invalid(
            key,
            format!("{v} is not allowed: must be a multiple of 20 (one frame) from 20 to 1000 ms"),
        ));
    }
    Ok(Duration::from_millis(v.unsigned_abs()))
}

/// Caller audio per provider message: whole 20 ms frames, at most 100 ms (beyond that
/// the delay before the provider hears the caller would be felt in every turn).
fn uplink_chunk(key: &str, v: i64) -> Result<Duration> {
    if !(20..=100).contains(&v) || v % 20 != 0 {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{v} is not allowed: must be 20, 40, 60, 80 or 100 ms (whole 20 ms frames; \
                 20 sends every frame at once)"
            ),
        ));
    }
    Ok(Duration::from_millis(v.unsigned_abs()))
}

/// `esl_files` chunk: whole frames; long enough that file-by-file playback has no
/// audible gaps, short enough that the first words are not late.
fn esl_chunk(key: &str, v: i64) -> Result<Duration> {
    if !(100..=5000).contains(&v) || v % 20 != 0 {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{v} is not allowed: must be a multiple of 20 from 100 to 5000 ms (several \
                 hundred ms: smaller files leave audible gaps between them)"
            ),
        ));
    }
    Ok(Duration::from_millis(v.unsigned_abs()))
}

fn check_format(codec_key: &str, rate_key: &str, codec: Codec, rate: u32) -> Result<()> {
    if codec != Codec::L16 && rate != 8000 {
        return Err(ConfigError::invalid(
            codec_key,
            format!(
                "{codec} is G.711, which is 8000 Hz only, but {rate_key} is {rate}: use \
                 codec = \"L16\" or sample_rate = 8000"
            ),
        ));
    }
    Ok(())
}

fn check_playback(key: &str, playback: PlaybackMode, has_esl: bool) -> Result<()> {
    if playback == PlaybackMode::EslFiles && !has_esl {
        return Err(ConfigError::invalid(
            key,
            "esl_files plays audio through FreeSWITCH's Event Socket: add a [freeswitch.esl] \
             section (host, port, password) or use binary | stream_audio",
        ));
    }
    Ok(())
}

fn ws_url(key: &str, raw: Option<String>, default: String) -> Result<String> {
    let url = raw.map(|s| s.trim().to_string()).unwrap_or(default);
    if !has_scheme(&url, &["ws://", "wss://"]) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{:?} is not a WebSocket URL: expected ws://HOST/... or wss://HOST/...",
                crate::redact::url(&url)
            ),
        ));
    }
    Ok(url)
}

fn required(key: &str, raw: Option<String>, default: String) -> Result<String> {
    let v = raw.unwrap_or(default);
    if v.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    Ok(v)
}

/// Appends a sentence to an `Invalid` message.
fn hint(err: ConfigError, extra: &str) -> ConfigError {
    match err {
        ConfigError::Invalid {
            key,
            message,
            env_var,
        } => ConfigError::Invalid {
            key,
            message: format!("{message} ({extra})"),
            env_var,
        },
        other => other,
    }
}
