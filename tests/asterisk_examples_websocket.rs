//! The shipped chan_websocket examples (`asterisk/`) against the code that serves
//! them: the client section's URI is a path voicebridge routes, its credentials are
//! what the Basic check reads, every Dial's codec is one the call path carries, and
//! its `v()` parameters parse into the call data the docs promise.

use std::collections::BTreeMap;

use base64::Engine as _;
use voicebridge::admission::auth::basic_password;
use voicebridge::config::Config;
use voicebridge::telephony::asterisk_ws::control::audio_format;
use voicebridge::telephony::asterisk_ws::AsteriskRequest;

fn read(name: &str) -> String {
    let path = format!("{}/asterisk/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `[section]` → key → value of an Asterisk .conf file (comments dropped).
fn sections(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
            out.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(current.clone())
                .or_default()
                .insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    out
}

/// The path of a `ws://host:port/path` URI.
fn path_of(uri: &str) -> &str {
    let rest = uri
        .strip_prefix("ws://")
        .or_else(|| uri.strip_prefix("wss://"))
        .expect("ws:// or wss://");
    &rest[rest.find('/').expect("a path")..]
}

/// Replaces every (nested) `${...}` dialplan expression by a sample value, as the
/// dialplan would have by the time Asterisk builds the URL.
fn expand(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek() == Some(&'{') {
            chars.next();
            if depth == 0 {
                out.push_str("1733240000.17");
            }
            depth += 1;
        } else if depth > 0 && c == '{' {
            depth += 1;
        } else if depth > 0 && c == '}' {
            depth -= 1;
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

/// The text inside `name(...)` in a dial-option string, parentheses balanced.
fn option(opts: &str, name: char) -> Option<&str> {
    let start = opts.find(&format!("{name}("))? + 2;
    let mut depth = 1;
    for (i, c) in opts[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&opts[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

#[test]
fn websocket_client_conf_names_a_path_and_credentials_voicebridge_accepts() {
    let conf = sections(&read("websocket_client.conf"));
    let client = &conf["voicebridge"];
    assert_eq!(client["type"], "websocket_client");
    assert_eq!(client["connection_type"], "per_call_config");
    assert_eq!(client["reconnect_attempts"], "1", "no retries of a refusal");
    let path = path_of(&client["uri"]);
    assert!(AsteriskRequest::is_for(path), "{path}");
    let request = AsteriskRequest::parse(path, None).expect("the URI's path parses");
    let config = Config::from_toml_str("", Vec::<(String, String)>::new()).expect("defaults");
    assert!(
        config.route(&request.route).is_some(),
        "route {:?} exists by default",
        request.route
    );
    // What Asterisk sends (ast_http_create_basic_auth_header) is what we check.
    let (user, pass) = (&client["username"], &client["password"]);
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    assert_eq!(basic_password(&header).as_deref(), Some(pass.as_str()));
    assert_eq!(
        pass, "CHANGE_ME",
        "the example ships a placeholder, not a secret"
    );
}

#[test]
fn every_dial_in_the_dialplan_example_parses_into_call_data() {
    let conf = sections(&read("websocket_client.conf"));
    let text = read("extensions-websocket.conf");
    let mut dials = 0;
    for line in text.lines().filter(|l| !l.trim_start().starts_with(';')) {
        let Some(at) = line.find("Dial(WebSocket/") else {
            continue;
        };
        dials += 1;
        let rest = &line[at + "Dial(WebSocket/".len()..];
        let (section, opts) = rest.split_once('/').expect("WebSocket/<client>/<options>");
        if section != "voicebridge" {
            // Documented in the comments as an extra section with its own route.
            assert!(text.contains(&format!("named {section}")), "{section}");
        } else {
            assert!(conf.contains_key(section));
        }
        let codec = option(opts, 'c').expect("c(<format>) is always set");
        assert!(audio_format(codec).is_some(), "c({codec}) is not carried");
        assert_eq!(option(opts, 'f'), Some("json"));
        let v = option(opts, 'v').expect("every Dial carries v()");
        let query = expand(v).replace(',', "&");
        let request = AsteriskRequest::parse("/asterisk/call", Some(&query))
            .unwrap_or_else(|e| panic!("v({v}): {e}"));
        assert!(request.call_id.is_some(), "v() names the call: {v}");
        assert!(request.caller_id.is_some(), "v() gives the caller: {v}");
        // v() accepts only letters, digits, -_.+ and %XX after expansion.
        assert!(
            query
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+%=&".contains(c)),
            "{query}"
        );
    }
    assert!(dials >= 2, "the example has its Dial lines");
}

#[test]
fn the_ari_example_dials_the_same_client_with_a_carried_format() {
    let conf = sections(&read("websocket_client.conf"));
    let text = read("ari-externalmedia-websocket.sh");
    let url = text
        .lines()
        .find(|l| l.contains("/ari/channels/externalMedia?"))
        .expect("the externalMedia request");
    let query = &url[url.find('?').unwrap() + 1..];
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_end_matches('"'))
    };
    assert_eq!(param("transport"), Some("websocket"));
    assert_eq!(param("encapsulation"), Some("none"));
    let host = param("external_host").expect("external_host");
    assert!(conf.contains_key(host), "external_host={host}");
    let format = param("format").expect("format");
    assert!(audio_format(format).is_some(), "format={format}");
    assert!(text.contains(r#"TRANSPORT_DATA="f%28json%29v%28call%3D${CALL_ID}%29""#));
}

#[test]
fn chan_websocket_conf_selects_the_json_control_format() {
    let conf = sections(&read("chan_websocket.conf"));
    let general = conf.get("general").expect("a [general] section");
    // The only key chan_websocket reads here; "json" or "plain-text" (Asterisk's sample).
    assert_eq!(general.len(), 1, "{general:?}");
    assert_eq!(
        general.get("control_message_format").map(String::as_str),
        Some("json")
    );
}
