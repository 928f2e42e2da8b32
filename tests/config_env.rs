//! Layering (file → `VOICEBRIDGE__...` → conventional secrets), validation messages,
//! routes and the auth rule. The environment is always a map passed in: these tests
//! never read or change the process environment, so they can run in parallel.

use std::time::Duration;

use voicebridge::audio::{Channels, Codec};
use voicebridge::config::{Config, ConfigError, PlaybackMode, ProviderKind};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(toml: &str, pairs: &[(&str, &str)]) -> Config {
    Config::from_toml_str(toml, env(pairs)).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

fn fail(toml: &str, pairs: &[(&str, &str)]) -> ConfigError {
    match Config::from_toml_str(toml, env(pairs)) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

/// Asserts the message names `key` and contains every one of `words`.
fn assert_names(err: &ConfigError, key: &str, words: &[&str]) {
    assert_names_not(err, key, words, &[]);
}

/// Like [`assert_names`], and the message contains none of `hidden` (the bad value,
/// which may be a secret pasted into the wrong key).
fn assert_names_not(err: &ConfigError, key: &str, words: &[&str], hidden: &[&str]) {
    let msg = err.to_string();
    assert!(msg.contains(key), "message does not name {key:?}: {msg}");
    for w in words {
        assert!(msg.contains(w), "message lacks {w:?}: {msg}");
    }
    for h in hidden {
        assert!(!msg.contains(h), "message repeats the value {h:?}: {msg}");
    }
    assert!(!msg.contains('\n'), "message should be one line: {msg}");
}

// ---------- environment overrides ----------

#[test]
fn env_overrides_listen() {
    let c = load("", &[("VOICEBRIDGE__SERVER__LISTEN", "127.0.0.1:7000")]);
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:7000");
}

#[test]
fn env_wins_over_file() {
    let c = load(
        "[server]\nlisten = \"127.0.0.1:6000\"\nmax_calls = 3\n",
        &[("VOICEBRIDGE__SERVER__LISTEN", "127.0.0.1:7000")],
    );
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(
        c.server.max_calls, 3,
        "keys env does not set keep the file's value"
    );
}

#[test]
fn env_overrides_nested_provider_url() {
    let c = load(
        "",
        &[(
            "VOICEBRIDGE__PROVIDERS__OPENAI__URL",
            "ws://127.0.0.1:4010/v1/realtime",
        )],
    );
    assert_eq!(c.providers.openai.url, "ws://127.0.0.1:4010/v1/realtime");
}

#[test]
fn env_auth_token_list() {
    let c = load(
        "",
        &[(
            "VOICEBRIDGE__SERVER__AUTH_TOKENS",
            "alpha-token, beta-token",
        )],
    );
    let tokens: Vec<&str> = c.server.auth_tokens.iter().map(|t| t.expose()).collect();
    assert_eq!(tokens, ["alpha-token", "beta-token"]);
    // One token, and a numeric-looking one that must stay a string ("007", not 7).
    let c = load("", &[("VOICEBRIDGE__SERVER__AUTH_TOKENS", "007")]);
    assert_eq!(c.server.auth_tokens[0].expose(), "007");
}

#[test]
fn env_numbers_bools_and_enums() {
    let c = load(
        "",
        &[
            ("VOICEBRIDGE__FREESWITCH__PLAYBACK_LEAD_MS", "80"),
            ("VOICEBRIDGE__FREESWITCH__SAMPLE_RATE", "16000"),
            ("VOICEBRIDGE__FREESWITCH__CHANNELS", "stereo"),
            ("VOICEBRIDGE__LOG__TRANSCRIPTS", "false"),
            ("VOICEBRIDGE__CALL__PROVIDER", "gemini"),
            ("VOICEBRIDGE__CALL__GREETING", "1234"),
            ("GEMINI_API_KEY", "fake-gemini"),
        ],
    );
    assert_eq!(c.freeswitch.playback_lead, Duration::from_millis(80));
    assert_eq!(c.freeswitch.sample_rate, 16000);
    assert_eq!(c.freeswitch.channels, Channels::Stereo);
    assert!(!c.log.transcripts);
    assert_eq!(c.call.provider, ProviderKind::Gemini);
    assert_eq!(c.call.greeting, "1234");
    let r = c.route("call").unwrap();
    assert_eq!(r.playback_lead, Duration::from_millis(80));
    assert_eq!(r.call.provider, ProviderKind::Gemini);
}

#[test]
fn empty_env_value_is_unset() {
    let c = load(
        "[server]\nlisten = \"127.0.0.1:6000\"\n",
        &[("VOICEBRIDGE__SERVER__LISTEN", "")],
    );
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:6000");
}

#[test]
fn env_esl_password_fallback() {
    let toml = "[freeswitch.esl]\nhost = \"10.0.0.5\"\n";
    let c = load(toml, &[("FREESWITCH_ESL_PASSWORD", "fake-esl-pw")]);
    let esl = c.freeswitch.esl.as_ref().unwrap();
    assert_eq!(esl.host, "10.0.0.5");
    assert_eq!(esl.port, 8021);
    assert_eq!(esl.password.expose(), "fake-esl-pw");
    // The file's password wins over the conventional variable.
    let c = load(
        "[freeswitch.esl]\npassword = \"from-file\"\n",
        &[("FREESWITCH_ESL_PASSWORD", "fake-esl-pw")],
    );
    assert_eq!(c.freeswitch.esl.unwrap().password.expose(), "from-file");
    // FREESWITCH_ESL_PASSWORD alone does not switch ESL on.
    let c = load("", &[("FREESWITCH_ESL_PASSWORD", "fake-esl-pw")]);
    assert!(c.freeswitch.esl.is_none());
}

#[test]
fn unrelated_env_is_ignored_and_near_misses_are_warned() {
    let c = load(
        "",
        &[
            ("PATH", "/usr/bin"),
            ("VOICEBRIDGE_CONFIG", "/etc/voicebridge.toml"),
            ("VOICEBRIDGE_SERVER_LISTEN", "0.0.0.0:1"),
        ],
    );
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9090");
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("VOICEBRIDGE_SERVER_LISTEN"), "{w:?}");
}

// ---------- secrets ----------

#[test]
fn secret_precedence() {
    let toml = "[call]\nprovider = \"openai\"\n";
    // Conventional variable when the config has none.
    let c = load(toml, &[("OPENAI_API_KEY", "fake-conventional")]);
    assert_eq!(c.providers.openai.api_key.expose(), "fake-conventional");
    // VOICEBRIDGE__ override beats the conventional variable.
    let c = load(
        toml,
        &[
            ("OPENAI_API_KEY", "fake-conventional"),
            ("VOICEBRIDGE__PROVIDERS__OPENAI__API_KEY", "fake-override"),
        ],
    );
    assert_eq!(c.providers.openai.api_key.expose(), "fake-override");
    // The file's key beats the conventional variable.
    let c = load(
        "[call]\nprovider = \"openai\"\n[providers.openai]\napi_key = \"fake-file\"\n",
        &[("OPENAI_API_KEY", "fake-conventional")],
    );
    assert_eq!(c.providers.openai.api_key.expose(), "fake-file");
    // An empty key in the file falls through to the variable.
    let c = load(
        "[call]\nprovider = \"openai\"\n[providers.openai]\napi_key = \"\"\n",
        &[("OPENAI_API_KEY", "fake-conventional\n")],
    );
    assert_eq!(c.providers.openai.api_key.expose(), "fake-conventional");
    // Each provider reads its own variable.
    let c = load(
        "",
        &[
            ("GEMINI_API_KEY", "fake-gemini"),
            ("ELEVENLABS_API_KEY", "fake-eleven"),
        ],
    );
    assert_eq!(c.providers.gemini.api_key.expose(), "fake-gemini");
    assert_eq!(c.providers.elevenlabs.api_key.expose(), "fake-eleven");
    assert!(c.providers.openai.api_key.is_empty());
}

#[test]
fn provider_in_use_without_key_fails_naming_the_variable() {
    let e = fail("[call]\nprovider = \"openai\"\n", &[]);
    assert_names(&e, "providers.openai.api_key", &["OPENAI_API_KEY", "call"]);
    let e = fail("[[routes]]\nname = \"g\"\nprovider = \"gemini\"\n", &[]);
    assert_names(
        &e,
        "providers.gemini.api_key",
        &["GEMINI_API_KEY", "route g"],
    );
    let e = fail("[call]\nprovider = \"elevenlabs\"\n", &[]);
    assert_names(
        &e,
        "providers.elevenlabs.agent_id",
        &["VOICEBRIDGE__PROVIDERS__ELEVENLABS__AGENT_ID"],
    );
    // ElevenLabs needs an agent, not a key (public agents work without one).
    let c = load(
        "[call]\nprovider = \"elevenlabs\"\n[providers.elevenlabs]\nagent_id = \"agent_1\"\n",
        &[],
    );
    assert_eq!(c.providers_in_use(), [ProviderKind::ElevenLabs]);
    // An unused provider needs nothing.
    load("[providers.openai]\nmodel = \"gpt-realtime\"\n", &[]);
}

#[test]
fn debug_never_prints_secrets() {
    let c = load(
        "[server]\nauth_tokens = [\"fake-token-aaaaaaaaaaaa\"]\n\
         [call]\nprovider = \"openai\"\n\
         [freeswitch.esl]\npassword = \"fake-esl-bbbbbbbb\"\n\
         [[routes]]\nname = \"g\"\nprovider = \"gemini\"\n",
        &[
            ("OPENAI_API_KEY", "fake-openai-key-cccccccc"),
            (
                "VOICEBRIDGE__PROVIDERS__GEMINI__API_KEY",
                "fake-gemini-dddddddd",
            ),
            ("ELEVENLABS_API_KEY", "fake-eleven-eeeeeeee"),
        ],
    );
    let dump = format!("{c:?} {c:#?} {:?}", c.warnings());
    for secret in [
        "fake-token-aaaaaaaaaaaa",
        "fake-esl-bbbbbbbb",
        "fake-openai-key-cccccccc",
        "fake-gemini-dddddddd",
        "fake-eleven-eeeeeeee",
    ] {
        assert!(!dump.contains(secret), "{secret} leaked into Debug output");
    }
    assert!(dump.contains("[redacted]"));
}

#[test]
fn errors_never_print_tokens() {
    let e = fail(
        "[server]\nauth_tokens = [\"good-token\", \"bad token\"]\n",
        &[],
    );
    assert_names(&e, "server.auth_tokens", &["#2"]);
    assert!(!e.to_string().contains("bad token"));
}

// ---------- unknown keys ----------

#[test]
fn unknown_env_key_is_rejected_with_its_name() {
    let e = fail("", &[("VOICEBRIDGE__SERVER__LISTN", "127.0.0.1:1")]);
    assert_names(
        &e,
        "server.listn",
        &["unknown key", "VOICEBRIDGE__SERVER__LISTN", "listen"],
    );
    assert_eq!(e.key(), Some("server.listn"));
    let e = fail("", &[("VOICEBRIDGE__NOPE__X", "1")]);
    assert_names(&e, "nope", &["VOICEBRIDGE__NOPE__X"]);
    let e = fail("", &[("VOICEBRIDGE__PROVIDERS__OPENAI__APIKEY", "x")]);
    assert_names(&e, "providers.openai.apikey", &["api_key"]);
}

#[test]
fn malformed_env_names_are_rejected() {
    let e = fail("", &[("VOICEBRIDGE__SERVER____LISTEN", "127.0.0.1:1")]);
    assert!(matches!(e, ConfigError::Env { .. }), "{e}");
    assert!(e.to_string().contains("VOICEBRIDGE__SERVER____LISTEN"));
    let e = fail("", &[("VOICEBRIDGE__ROUTES__0__NAME", "x")]);
    assert!(e.to_string().contains("[[routes]]"), "{e}");
}

#[test]
fn unknown_toml_key_at_top_level() {
    let e = fail("colour = \"blue\"\n", &[]);
    assert_names(&e, "colour", &["unknown key", "server"]);
    assert_eq!(e.key(), Some("colour"));
}

#[test]
fn unknown_toml_key_in_a_section() {
    let e = fail("[server]\nlisten_addr = \"127.0.0.1:1\"\n", &[]);
    assert_names(&e, "server.listen_addr", &["unknown key", "listen"]);
    let e = fail("[providers.echo]\nrate = 8000\n", &[]);
    assert_names(&e, "providers.echo.rate", &["sample_rate"]);
    let e = fail("[providers.openai]\ntemperature = 0.5\n", &[]);
    assert_names(&e, "providers.openai.temperature", &["unknown key"]);
    let e = fail("[freeswitch.esl]\nuser = \"x\"\n", &[]);
    assert_names(&e, "freeswitch.esl.user", &["unknown key", "password"]);
    let e = fail("[providers.azure]\nurl = \"wss://x\"\n", &[]);
    assert_names(&e, "providers.azure", &["unknown key", "openai"]);
}

#[test]
fn unknown_toml_key_in_a_route() {
    let e = fail("[[routes]]\nname = \"a\"\nvoyce = \"x\"\n", &[]);
    assert_names(&e, "routes[0].voyce", &["unknown key", "provider"]);
    let e = fail(
        "[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\nmodel = \"x\"\n",
        &[],
    );
    assert_names(&e, "routes[1].model", &["unknown key"]);
}

#[test]
fn section_of_the_wrong_type_is_reported_as_a_table() {
    let e = fail("server = 5\n", &[]);
    assert_names(&e, "server", &["expected a table"]);
    assert!(!e.to_string().contains("Raw"), "{e}");
}

#[test]
fn toml_syntax_error_is_reported() {
    let e = fail("[server\nlisten = 1\n", &[]);
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("invalid TOML"), "{e}");
}

#[test]
fn toml_syntax_error_never_quotes_the_line() {
    // The broken line holds a key: the error gives its position, not its text.
    let e = fail(
        "[providers.openai]\napi_key = \"sk-live-SECRET123\" oops\n",
        &[],
    );
    let text = e.to_string();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{text}");
    assert!(!text.contains("SECRET123"), "{text}");
    assert!(!text.contains("oops"), "{text}");
    assert!(text.contains("line 2"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn a_value_in_the_wrong_key_is_never_printed() {
    // A key pasted into the wrong line: the error names the key and what is expected,
    // never the value (from the file or from a VOICEBRIDGE__ variable).
    for (toml, vars) in [
        ("[server]\nmax_calls = \"sk-live-SECRET123\"\n", vec![]),
        ("[call]\nprovider = \"sk-live-SECRET123\"\n", vec![]),
        ("[log]\nformat = \"sk-live-SECRET123\"\n", vec![]),
        (
            "",
            vec![("VOICEBRIDGE__SERVER__MAX_CALLS", "sk-live-SECRET123")],
        ),
    ] {
        let e = fail(toml, &vars);
        let text = e.to_string();
        assert!(!text.contains("SECRET123"), "{text}");
        assert!(text.contains('.'), "names the key: {text}");
    }
}

#[test]
fn missing_file_names_the_path() {
    let e = Config::load(std::path::Path::new("/nonexistent/vb.toml"), env(&[])).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/vb.toml"), "{e}");
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vb.toml");
    std::fs::write(&path, "[server]\nmax_calls = 7\n").unwrap();
    let c = Config::load(&path, env(&[("VOICEBRIDGE__SERVER__MAX_CALLS", "9")])).unwrap();
    assert_eq!(c.server.max_calls, 9);
}

// ---------- bad values ----------

#[test]
fn bad_listen() {
    let e = fail("[server]\nlisten = \"abc\"\n", &[]);
    assert_names_not(&e, "server.listen", &["HOST:PORT"], &["abc"]);
    let e = fail("", &[("VOICEBRIDGE__SERVER__LISTEN", "localhost")]);
    assert_names_not(
        &e,
        "server.listen",
        &["VOICEBRIDGE__SERVER__LISTEN"],
        &["\"localhost\""],
    );
    let e = fail("[admin]\nlisten = \"127.0.0.1:9090\"\n", &[]);
    assert_names(&e, "admin.listen", &["server.listen"]);
}

#[test]
fn bad_log_format_and_level() {
    let e = fail("[log]\nformat = \"xml\"\n", &[]);
    assert_names(&e, "log.format", &["not one of auto | json | pretty"]);
    let e = fail("[log]\nlevel = \"\"\n", &[]);
    assert_names(&e, "log.level", &["empty"]);
    let e = fail("[log]\nlevel = \"voicebridge=loud\"\n", &[]);
    assert_names(&e, "log.level", &["not a valid filter"]);
}

#[test]
fn bad_codec_channels_playback() {
    let e = fail("[freeswitch]\ncodec = \"opus\"\n", &[]);
    assert_names_not(
        &e,
        "freeswitch.codec",
        &["not one of L16 | PCMU | PCMA"],
        &["opus"],
    );
    let e = fail("", &[("VOICEBRIDGE__FREESWITCH__CHANNELS", "quad")]);
    assert_names_not(
        &e,
        "freeswitch.channels",
        &["mono | mixed | stereo"],
        &["quad"],
    );
    let e = fail("[freeswitch]\nplayback = \"rtp\"\n", &[]);
    assert_names(
        &e,
        "freeswitch.playback",
        &["binary | stream_audio | esl_files"],
    );
    let e = fail("[call]\nprovider = \"azure\"\n", &[]);
    assert_names(
        &e,
        "call.provider",
        &["echo | openai | gemini | elevenlabs"],
    );
    let e = fail("[providers.openai]\naudio_format = \"wav\"\n", &[]);
    assert_names(
        &e,
        "providers.openai.audio_format",
        &["pcmu | pcma | pcm24"],
    );
    let e = fail("[providers.echo]\nmode = \"loop\"\n", &[]);
    assert_names(&e, "providers.echo.mode", &["utterance | stream"]);
}

#[test]
fn bad_sample_rates() {
    for bad in ["12000", "4000", "56000", "0"] {
        let e = fail("", &[("VOICEBRIDGE__FREESWITCH__SAMPLE_RATE", bad)]);
        assert_names(&e, "freeswitch.sample_rate", &["multiple of 8000", bad]);
    }
    // G.711 is 8 kHz only.
    let e = fail("[freeswitch]\ncodec = \"PCMU\"\nsample_rate = 16000\n", &[]);
    assert_names(&e, "freeswitch.codec", &["8000"]);
    // A type mismatch names the key too.
    let e = fail("[freeswitch]\nsample_rate = \"fast\"\n", &[]);
    assert_names_not(&e, "freeswitch.sample_rate", &["whole number"], &["fast"]);
    // Echo: 0 (the call's rate) is fine, odd rates are not.
    let c = load("[providers.echo]\nsample_rate = 0\n", &[]);
    assert_eq!(c.providers.echo.sample_rate, 0);
    let e = fail("[providers.echo]\nsample_rate = 22050\n", &[]);
    assert_names(&e, "providers.echo.sample_rate", &["22050", "or 0"]);
}

#[test]
fn esl_chunk_ms() {
    let c = load("[freeswitch]\nesl_chunk_ms = 800\n", &[]);
    assert_eq!(c.freeswitch.esl_chunk, Duration::from_millis(800));
    for bad in ["0", "80", "510", "5020", "-500"] {
        let e = fail("", &[("VOICEBRIDGE__FREESWITCH__ESL_CHUNK_MS", bad)]);
        assert_names(&e, "freeswitch.esl_chunk_ms", &["multiple of 20", "gaps"]);
    }
}

#[test]
fn uplink_chunk_ms() {
    let c = load("", &[]);
    assert_eq!(
        c.default_route().call.uplink_chunk,
        Duration::from_millis(20)
    );
    let c = load(
        "[call]\nuplink_chunk_ms = 60\n[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\nuplink_chunk_ms = 20\n",
        &[],
    );
    let chunk = |name: &str| c.route(name).map(|r| r.call.uplink_chunk);
    assert_eq!(chunk("call"), Some(Duration::from_millis(60)));
    assert_eq!(
        chunk("a"),
        Some(Duration::from_millis(60)),
        "inherited from [call]"
    );
    assert_eq!(chunk("b"), Some(Duration::from_millis(20)));
    let c = load("", &[("VOICEBRIDGE__CALL__UPLINK_CHUNK_MS", "40")]);
    assert_eq!(
        c.default_route().call.uplink_chunk,
        Duration::from_millis(40)
    );
    for bad in ["0", "10", "30", "120", "-20"] {
        let e = fail("", &[("VOICEBRIDGE__CALL__UPLINK_CHUNK_MS", bad)]);
        assert_names(&e, "call.uplink_chunk_ms", &["20, 40, 60, 80 or 100"]);
    }
    let e = fail("[[routes]]\nname = \"a\"\nuplink_chunk_ms = 50\n", &[]);
    assert_names(&e, "routes[0].uplink_chunk_ms", &["whole 20 ms frames"]);
}

#[test]
fn bad_playback_lead() {
    for bad in ["0", "10", "70", "1020", "-20"] {
        let e = fail("", &[("VOICEBRIDGE__FREESWITCH__PLAYBACK_LEAD_MS", bad)]);
        assert_names(
            &e,
            "freeswitch.playback_lead_ms",
            &[
                "multiple of 20",
                "VOICEBRIDGE__FREESWITCH__PLAYBACK_LEAD_MS",
            ],
        );
    }
    let e = fail("", &[("VOICEBRIDGE__FREESWITCH__PLAYBACK_LEAD_MS", "soon")]);
    assert_names_not(
        &e,
        "freeswitch.playback_lead_ms",
        &["whole number"],
        &["soon"],
    );
    // Not rounded: 1.5 calls is a mistake, not 2.
    let e = fail("[server]\nmax_calls = 1.5\n", &[]);
    assert_names(&e, "server.max_calls", &["1.5", "whole number"]);
    let e = fail("", &[("VOICEBRIDGE__SERVER__MAX_CALLS", "yes")]);
    assert_names_not(&e, "server.max_calls", &["whole number"], &["yes"]);
}

#[test]
fn bad_limits_and_timeouts() {
    let e = fail("[server]\nmax_calls = 0\n", &[]);
    assert_names(&e, "server.max_calls", &["0"]);
    let e = fail("[server]\nhandshake_timeout_ms = 1500\n", &[]);
    assert_names(&e, "server.handshake_timeout_ms", &["1000", "1 s"]);
    let e = fail("[server]\ndrain_timeout_secs = 0\n", &[]);
    assert_names(&e, "server.drain_timeout_secs", &["from 1"]);
    let e = fail("[call]\nmax_duration_secs = -5\n", &[]);
    assert_names(&e, "call.max_duration_secs", &["-5"]);
    // idle 0 = disabled.
    let c = load("[call]\nidle_timeout_secs = 0\n", &[]);
    assert_eq!(c.call.idle_timeout, Duration::ZERO);
    let e = fail("[server]\nallow_unauthenticated = \"perhaps\"\n", &[]);
    assert_names_not(
        &e,
        "server.allow_unauthenticated",
        &["boolean"],
        &["perhaps"],
    );
}

#[test]
fn bad_urls() {
    let e = fail(
        "",
        &[(
            "VOICEBRIDGE__PROVIDERS__OPENAI__URL",
            "https://api.openai.com/v1/realtime",
        )],
    );
    assert_names(&e, "providers.openai.url", &["ws://", "wss://"]);
    let e = fail("[providers.gemini]\nurl = \"wss://\"\n", &[]);
    assert_names(&e, "providers.gemini.url", &["WebSocket URL"]);
    let e = fail(
        "[providers.elevenlabs]\nsigned_url_endpoint = \"wss://api.elevenlabs.io/x\"\n",
        &[],
    );
    assert_names(
        &e,
        "providers.elevenlabs.signed_url_endpoint",
        &["https://"],
    );
}

#[test]
fn esl_files_needs_esl() {
    let e = fail("[freeswitch]\nplayback = \"esl_files\"\n", &[]);
    assert_names(&e, "freeswitch.playback", &["[freeswitch.esl]"]);
    let c = load(
        "[freeswitch]\nplayback = \"esl_files\"\n[freeswitch.esl]\npassword = \"x\"\n",
        &[],
    );
    assert_eq!(c.freeswitch.playback, PlaybackMode::EslFiles);
    let e = fail("[[routes]]\nname = \"a\"\nplayback = \"esl_files\"\n", &[]);
    assert_names(&e, "routes[0].playback", &["[freeswitch.esl]"]);
    let e = fail("[freeswitch.esl]\nport = 70000\n", &[]);
    assert_names(&e, "freeswitch.esl.port", &["65535"]);
}

// ---------- routes ----------

#[test]
fn default_call_route_exists() {
    let c = load(
        "[freeswitch]\nsample_rate = 16000\n[call]\ngreeting = \"Hello\"\n",
        &[],
    );
    let r = c.route("call").unwrap();
    assert_eq!(r.name, "call");
    assert_eq!(r.sample_rate, 16000);
    assert_eq!(r.call, c.call);
    assert_eq!(c.default_route(), r);
    assert!(c.route("nope").is_none());
}

#[test]
fn route_overrides_resolve_over_defaults() {
    let toml = r#"
        [freeswitch]
        sample_rate = 16000
        playback = "stream_audio"
        [call]
        instructions = "base"
        greeting = "Hi"
        max_duration_secs = 600
        [[routes]]
        name = "sales"
        provider = "openai"
        instructions = "sell"
        sample_rate = 8000
        codec = "PCMU"
        playback_lead_ms = 100
        [[routes]]
        name = "support-2"
        channels = "stereo"
        idle_timeout_secs = 0
        playback = "binary"
    "#;
    let c = load(toml, &[("OPENAI_API_KEY", "fake")]);
    let names: Vec<&str> = c.routes().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["call", "sales", "support-2"]);

    let sales = c.route("sales").unwrap();
    assert_eq!(sales.call.provider, ProviderKind::OpenAi);
    assert_eq!(sales.call.instructions, "sell");
    assert_eq!(sales.call.greeting, "Hi", "not overridden: from [call]");
    assert_eq!(sales.call.max_duration, Duration::from_secs(600));
    assert_eq!(sales.sample_rate, 8000);
    assert_eq!(sales.codec, Codec::Pcmu);
    assert_eq!(
        sales.playback,
        PlaybackMode::StreamAudio,
        "from [freeswitch]"
    );
    assert_eq!(sales.playback_lead, Duration::from_millis(100));

    let support = c.route("support-2").unwrap();
    assert_eq!(support.call.provider, ProviderKind::Echo);
    assert_eq!(support.call.instructions, "base");
    assert_eq!(support.call.idle_timeout, Duration::ZERO);
    assert_eq!(support.channels, Channels::Stereo);
    assert_eq!(support.sample_rate, 16000);
    assert_eq!(support.playback, PlaybackMode::Binary);

    assert_eq!(
        c.providers_in_use(),
        [ProviderKind::Echo, ProviderKind::OpenAi]
    );
}

#[test]
fn route_named_call_overrides_the_default_route() {
    let c = load(
        "[[routes]]\nname = \"x\"\n[[routes]]\nname = \"call\"\ngreeting = \"Welcome\"\n",
        &[],
    );
    let names: Vec<&str> = c.routes().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["call", "x"]);
    assert_eq!(c.route("call").unwrap().call.greeting, "Welcome");
    assert_eq!(c.call.greeting, "", "[call] itself is unchanged");
    assert_eq!(c.route("x").unwrap().call.greeting, "");
}

#[test]
fn route_names_are_checked() {
    let e = fail("[[routes]]\nname = \"a\"\n[[routes]]\nname = \"a\"\n", &[]);
    assert_names(&e, "routes[1].name", &["duplicate", "\"a\"", "routes[0]"]);
    let e = fail("[[routes]]\nprovider = \"echo\"\n", &[]);
    assert_names(&e, "routes[0].name", &["needs a name"]);
    let e = fail("[[routes]]\nname = \"\"\n", &[]);
    assert_names(&e, "routes[0].name", &["needs a name"]);
    let e = fail("[[routes]]\nname = \"sales/eu\"\n", &[]);
    assert_names(&e, "routes[0].name", &["URL-safe"]);
}

#[test]
fn route_values_are_checked() {
    let e = fail(
        "[[routes]]\nname = \"a\"\ncodec = \"PCMA\"\nsample_rate = 16000\n",
        &[],
    );
    assert_names(&e, "routes[0].codec", &["8000"]);
    // Inherited codec, overridden rate: blame the rate.
    let e = fail(
        "[freeswitch]\ncodec = \"PCMU\"\n[[routes]]\nname = \"a\"\nsample_rate = 16000\n",
        &[],
    );
    assert_names(&e, "routes[0].sample_rate", &["8000"]);
    let e = fail("[[routes]]\nname = \"a\"\nplayback_lead_ms = 30\n", &[]);
    assert_names(&e, "routes[0].playback_lead_ms", &["multiple of 20"]);
    let e = fail("[[routes]]\nname = \"a\"\nprovider = \"nope\"\n", &[]);
    assert_names_not(&e, "routes[0].provider", &["not one of echo"], &["nope"]);
}

// ---------- auth rule ----------

#[test]
fn public_listen_without_tokens_fails() {
    let e = fail("", &[("VOICEBRIDGE__SERVER__LISTEN", "0.0.0.0:9090")]);
    assert_names(
        &e,
        "server.auth_tokens",
        &[
            "0.0.0.0:9090",
            "allow_unauthenticated",
            "VOICEBRIDGE__SERVER__AUTH_TOKENS",
        ],
    );
    let e = fail("[server]\nlisten = \"[::]:9090\"\n", &[]);
    assert_eq!(e.key(), Some("server.auth_tokens"));
}

#[test]
fn public_listen_with_tokens_passes() {
    let c = load(
        "",
        &[
            ("VOICEBRIDGE__SERVER__LISTEN", "0.0.0.0:9090"),
            (
                "VOICEBRIDGE__SERVER__AUTH_TOKENS",
                "a-long-random-token-123456",
            ),
        ],
    );
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert!(c.server.auth_tokens[0].matches("a-long-random-token-123456"));
}

#[test]
fn allow_unauthenticated_passes_with_a_warning() {
    let c = load(
        "[server]\nlisten = \"0.0.0.0:9090\"\nallow_unauthenticated = true\n",
        &[],
    );
    assert!(c.server.allow_unauthenticated);
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("allow_unauthenticated"), "{w:?}");
    // On loopback there is nothing to warn about.
    let c = load("[server]\nallow_unauthenticated = true\n", &[]);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn loopback_without_tokens_passes() {
    for addr in ["127.0.0.1:9090", "127.0.0.2:9090", "[::1]:9090"] {
        let c = load("", &[("VOICEBRIDGE__SERVER__LISTEN", addr)]);
        assert!(c.server.auth_tokens.is_empty());
    }
}

#[test]
fn other_warnings() {
    let c = load(
        "[server]\nauth_tokens = [\"short\"]\n[freeswitch.esl]\nhost = \"127.0.0.1\"\n\
         [admin]\nlisten = \"0.0.0.0:9091\"\n",
        &[],
    );
    let w = c.warnings().join("\n");
    assert!(w.contains("shorter than 16"), "{w}");
    assert!(w.contains("FREESWITCH_ESL_PASSWORD"), "{w}");
    assert!(w.contains("admin.listen"), "{w}");
    assert!(
        !w.contains("short\""),
        "token value must not be printed: {w}"
    );
}

// ---------- .env.example ----------

/// Every override shown in `.env.example` is valid, together, as written.
#[test]
fn env_example_overrides_load() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example");
    let text = std::fs::read_to_string(path).unwrap();
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("VOICEBRIDGE__") {
                pairs.push((name.to_string(), value.to_string()));
            }
        }
    }
    assert!(
        pairs.len() >= 5,
        "expected override examples, found {pairs:?}"
    );
    let c = Config::from_toml_str("", pairs).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.call.provider, ProviderKind::OpenAi);
    assert!(c.freeswitch.esl.is_some());
    for var in [
        "OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "ELEVENLABS_API_KEY",
        "FREESWITCH_ESL_PASSWORD",
        "VOICEBRIDGE_CONFIG",
        "RUST_LOG",
    ] {
        assert!(text.contains(&format!("{var}=")), "{var} is not documented");
    }
}

#[test]
fn fallback_providers_are_checked_like_the_primary() {
    let c = load(
        "[call]\nprovider = \"openai\"\nfallback = [\"gemini\", \"echo\"]\n",
        &[("OPENAI_API_KEY", "k1"), ("GEMINI_API_KEY", "k2")],
    );
    assert_eq!(
        c.default_route().call.fallback,
        [ProviderKind::Gemini, ProviderKind::Echo]
    );
    // A fallback needs its credentials at startup, as the primary does.
    let e = fail(
        "[call]\nprovider = \"openai\"\nfallback = [\"gemini\"]\n",
        &[("OPENAI_API_KEY", "k1")],
    );
    assert_names(&e, "providers.gemini.api_key", &["GEMINI_API_KEY"]);
    let e = fail(
        "[call]\nprovider = \"openai\"\nfallback = [\"openai\"]\n",
        &[("OPENAI_API_KEY", "k1")],
    );
    assert_names(&e, "call.fallback", &["another one"]);
    let e = fail("[call]\nprovider = \"echo\"\nfallback = [\"nope\"]\n", &[]);
    assert_names(&e, "call.fallback", &["not one of", "gemini"]);
    let e = fail(
        "[call]\nfallback = [\"openai\", \"openai\"]\n",
        &[("OPENAI_API_KEY", "k")],
    );
    assert_names(&e, "call.fallback", &["twice"]);
    // A route overriding the provider drops it from the inherited list.
    let c = load(
        "[call]\nprovider = \"openai\"\nfallback = [\"echo\"]\n[[routes]]\nname = \"e\"\nprovider = \"echo\"\n",
        &[("OPENAI_API_KEY", "k1")],
    );
    let r = c.route("e").unwrap();
    assert!(r.call.fallback.is_empty(), "{:?}", r.call.fallback);
}
