//! The metadata text frame: whatever the dialplan put after the rate in
//! `uuid_audio_stream ... start`, sent verbatim, usually JSON built from channel
//! variables. It may arrive before or after the first audio, or never, so nothing in
//! the call depends on it; it only enriches the call (caller id, called number,
//! template variables for the assistant's instructions).

use crate::audio::{Channels, Codec};
use crate::telephony::freeswitch::request::parse_rate;

/// The module's own cap on the metadata string.
pub const MAX_METADATA_BYTES: usize = 8192;

/// Parsed metadata, in the protocol-neutral shape the engine takes. `vars` holds every
/// top-level key as a string (recognised or not), for the instructions template.
pub use crate::telephony::Metadata;

/// Parsing never fails: what cannot be understood is kept and reported as warnings.
pub fn parse(text: &str) -> (Metadata, Vec<String>) {
    let mut warnings = Vec::new();
    let mut meta = Metadata::default();
    let text = if text.len() > MAX_METADATA_BYTES {
        warnings.push(format!(
            "metadata is {} bytes, more than the module's {MAX_METADATA_BYTES}: truncated",
            text.len()
        ));
        let mut end = MAX_METADATA_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    } else {
        text
    };
    let object = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => {
            warnings.push("metadata is JSON but not an object: kept as raw text".to_owned());
            meta.raw = Some(text.to_owned());
            return (meta, warnings);
        }
        Err(e) => {
            warnings.push(format!(
                "metadata is not valid JSON ({e}): kept as raw text"
            ));
            meta.raw = Some(text.to_owned());
            return (meta, warnings);
        }
    };
    for (key, value) in object {
        let value = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        meta.vars.insert(key, value);
    }
    let pick = |keys: &[&str]| {
        keys.iter()
            .filter_map(|k| meta.vars.get(*k))
            .find(|v| !v.is_empty())
            .cloned()
    };
    meta.call_id = pick(&["uuid", "call_id"]);
    meta.caller_id = pick(&["caller_id", "caller_id_number"]);
    meta.called = pick(&["called", "destination_number"]);
    if let Some(v) = pick(&["codec"]) {
        meta.codec = Codec::parse(&v);
        if meta.codec.is_none() {
            warnings.push(format!(
                "metadata codec {v:?} is not L16, PCMU or PCMA: ignored"
            ));
        }
    }
    if let Some(v) = pick(&["sample_rate"]) {
        meta.sample_rate = parse_rate(&v);
        if meta.sample_rate.is_none() {
            warnings.push(format!(
                "metadata sample_rate {v:?} is not a multiple of 8000: ignored"
            ));
        }
    }
    if let Some(v) = pick(&["channels"]) {
        meta.channels = Channels::parse(&v);
        if meta.channels.is_none() {
            warnings.push(format!(
                "metadata channels {v:?} is not mono, mixed or stereo: ignored"
            ));
        }
    }
    // Canonical names, so templates can always use {{caller_id}}, {{called}}, {{call_id}}.
    for (name, value) in [
        ("caller_id", meta.caller_id.clone()),
        ("called", meta.called.clone()),
        ("call_id", meta.call_id.clone()),
    ] {
        if let Some(v) = value {
            meta.vars.entry(name.to_owned()).or_insert(v);
        }
    }
    (meta, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognised_keys_and_aliases() {
        let (m, w) = parse(
            r#"{"uuid":"abc","caller_id_number":"+3902","destination_number":"100","codec":"PCMU","sample_rate":"8k","channels":"mono","tenant":"acme","n":3}"#,
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(m.call_id.as_deref(), Some("abc"));
        assert_eq!(m.caller_id.as_deref(), Some("+3902"));
        assert_eq!(m.called.as_deref(), Some("100"));
        assert_eq!(m.codec, Some(Codec::Pcmu));
        assert_eq!(m.sample_rate, Some(8000));
        assert_eq!(m.channels, Some(Channels::Mono));
        assert_eq!(m.vars["tenant"], "acme");
        assert_eq!(m.vars["n"], "3");
        assert_eq!(m.vars["caller_id"], "+3902");
        assert_eq!(m.vars["call_id"], "abc");
    }

    #[test]
    fn garbage_is_kept_raw_with_a_warning() {
        let (m, w) = parse("caller=123 {not json");
        assert_eq!(m.raw.as_deref(), Some("caller=123 {not json"));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("not valid JSON"));
        let (m, w) = parse("[1,2]");
        assert!(m.raw.is_some());
        assert!(w[0].contains("not an object"));
    }

    #[test]
    fn bad_values_are_ignored_with_a_warning() {
        let (m, w) = parse(r#"{"codec":"opus","sample_rate":"44100","channels":"5.1"}"#);
        assert_eq!((m.codec, m.sample_rate, m.channels), (None, None, None));
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn oversized_metadata_is_truncated_on_a_char_boundary() {
        let text = "é".repeat(MAX_METADATA_BYTES);
        let (m, w) = parse(&text);
        assert!(m.raw.is_some_and(|r| r.len() <= MAX_METADATA_BYTES));
        assert!(w[0].contains("truncated"));
    }
}
