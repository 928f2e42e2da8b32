//! The AudioSocket examples in `asterisk/` agree with the code: the dialplan and the ARI
//! script connect to a listener the shipped example config really has, with a codec
//! voicebridge takes, in the form Asterisk needs (a UUID argument; Answer() before the
//! application, Hangup() after it).

use std::path::PathBuf;

use voicebridge::config::Config;
use voicebridge::telephony::audiosocket::frame::slin_kind;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asterisk")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn example_config() -> Config {
    let env = vec![("OPENAI_API_KEY".to_owned(), "placeholder".to_owned())];
    Config::load(&root().join("voicebridge-audiosocket.toml"), env)
        .unwrap_or_else(|e| panic!("voicebridge-audiosocket.toml: {e}"))
}

/// The listeners of the example config, as `host:port`.
fn listeners(c: &Config) -> Vec<String> {
    c.audiosocket.iter().map(|l| l.listen.to_string()).collect()
}

/// The rate of an Asterisk slin codec name (`c(slin16)`, `format=slin16`).
fn rate_of(codec: &str) -> Option<u32> {
    match codec {
        "slin" => Some(8000),
        "slin12" => Some(12000),
        "slin16" => Some(16000),
        "slin24" => Some(24000),
        "slin32" => Some(32000),
        "slin48" => Some(48000),
        _ => None,
    }
}

/// The dialplan lines (`exten =>` / `same =>`) without comments, per extension.
fn extensions(conf: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in conf.lines() {
        let line = line.split(';').next().unwrap_or("").trim();
        if let Some(rest) = line.strip_prefix("exten =>") {
            let mut parts = rest.trim().splitn(3, ',');
            let exten = parts.next().unwrap_or("").to_owned();
            let app = parts.nth(1).unwrap_or("").to_owned();
            out.push((exten, vec![app]));
        } else if let Some(rest) = line.strip_prefix("same =>") {
            let app = rest.trim().split_once(',').map_or("", |x| x.1).to_owned();
            out.last_mut().expect("same => after exten =>").1.push(app);
        }
    }
    out
}

#[test]
fn the_example_config_has_a_private_allow_listed_listener() {
    let c = example_config();
    assert_eq!(c.audiosocket.len(), 1);
    let l = &c.audiosocket[0];
    assert!(c.route(&l.route).is_some(), "its route exists");
    assert!(!l.allow.is_empty(), "the Asterisk host is allow-listed");
    assert!(!l.allow_unauthenticated);
}

#[test]
fn the_dialplan_connects_to_the_listener_with_accepted_codecs() {
    let c = example_config();
    let listen = listeners(&c);
    let conf = read("extensions-audiosocket.conf");
    let exts = extensions(&conf);
    let (mut apps, mut dials) = (0, 0);
    for (exten, steps) in &exts {
        for (i, step) in steps.iter().enumerate() {
            if let Some(args) = step.strip_prefix("AudioSocket(") {
                apps += 1;
                let args = args.strip_suffix(')').expect("AudioSocket(...)");
                let (uuid, addr) = args.split_once(',').expect("AudioSocket(uuid,host:port)");
                assert!(
                    uuid.starts_with("${"),
                    "{exten}: the UUID is a variable: {uuid}"
                );
                assert!(
                    listen.contains(&addr.to_owned()),
                    "{exten}: {addr} is not a listener of the example config ({listen:?})"
                );
                assert!(
                    steps[..i].iter().any(|s| s.starts_with("Answer(")),
                    "{exten}: AudioSocket() needs an answered channel"
                );
                assert!(
                    steps[i + 1..].iter().any(|s| s.starts_with("Hangup(")),
                    "{exten}: the dialplan goes on after AudioSocket(): hang up"
                );
                // The application is always slin at 8 kHz.
                assert!(slin_kind(8000).is_some());
            }
            if let Some(args) = step.strip_prefix("Dial(AudioSocket/") {
                dials += 1;
                let args = args.strip_suffix(')').expect("Dial(...)");
                let mut parts = args.splitn(3, '/');
                let addr = parts.next().unwrap_or("");
                let uuid = parts.next().unwrap_or("");
                let opts = parts.next().unwrap_or("");
                assert!(
                    listen.contains(&addr.to_owned()),
                    "{exten}: {addr} is not a listener ({listen:?})"
                );
                assert!(
                    uuid.starts_with("${"),
                    "{exten}: the UUID is a variable: {uuid}"
                );
                let codec = opts
                    .strip_prefix("c(")
                    .and_then(|o| o.strip_suffix(')'))
                    .expect("c(<codec>)");
                let rate = rate_of(codec).unwrap_or_else(|| panic!("{exten}: {codec} is not slin"));
                assert!(
                    slin_kind(rate).is_some(),
                    "{exten}: {codec} is a rate voicebridge refuses"
                );
            }
        }
    }
    assert_eq!((apps, dials), (1, 1), "both forms are shown");
}

#[test]
fn the_ari_script_creates_an_audiosocket_channel_to_the_listener() {
    let c = example_config();
    let listen = listeners(&c);
    let script = read("ari-externalmedia-audiosocket.sh");
    let call = script
        .lines()
        .find(|l| l.contains("channels/externalMedia?"))
        .expect("the externalMedia request");
    let query = call
        .split("externalMedia?")
        .nth(1)
        .and_then(|q| q.split('"').next())
        .expect("a query string");
    let params: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    assert_eq!(get("encapsulation"), Some("audiosocket"));
    assert_eq!(get("transport"), Some("tcp"));
    assert!(get("data").is_some(), "data (the UUID) is required");
    let rate = get("format").and_then(rate_of).expect("a slin format");
    assert!(slin_kind(rate).is_some());
    // external_host is the script's VOICEBRIDGE variable, whose default must be a listener.
    assert_eq!(get("external_host"), Some("$VOICEBRIDGE"));
    let default = script
        .lines()
        .find_map(|l| l.strip_prefix("VOICEBRIDGE=${VOICEBRIDGE:-"))
        .and_then(|v| v.strip_suffix('}'))
        .expect("VOICEBRIDGE default");
    assert!(
        listen.contains(&default.to_owned()),
        "{default} is not a listener ({listen:?})"
    );
}
