//! `{{name}}` placeholders in instructions and greetings, filled from call metadata,
//! the caller lookup's answer and the call itself.
//!
//! Who wins when names meet: the built-in variables (`call_id`, `route`) over the lookup's
//! answer over the metadata, since the metadata comes from the call and the rest from
//! the business. Every metadata key is also `meta.<key>`, which nothing else can set, so
//! a template can always name what the call sent. A value is inserted without control
//! characters and at most [`MAX_VALUE_CHARS`] long: no caller-side value can add lines
//! or pages to the assistant's instructions.

use std::collections::BTreeMap;

/// Longest value one placeholder inserts, in characters (the rest is cut).
pub const MAX_VALUE_CHARS: usize = 500;
/// Variables voicebridge sets itself: neither metadata nor a lookup can replace them.
pub const BUILT_IN: [&str; 2] = ["call_id", "route"];
/// Prefix of the metadata keys as sent, which only the metadata sets.
pub const META_PREFIX: &str = "meta.";

/// The variables of a call's metadata: each key bare (`{{tenant}}`, which a lookup or a
/// built-in may replace) and as `meta.<key>` (never replaced).
pub fn metadata_vars(metadata: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (key, value) in &metadata {
        vars.insert(format!("{META_PREFIX}{key}"), value.clone());
    }
    for (key, value) in metadata {
        // A key sent literally as `meta.x` must not replace the metadata's own `x`.
        vars.entry(key).or_insert(value);
    }
    vars
}

/// Adds the lookup's answer: it replaces metadata of the same name, but never a
/// built-in variable or a `meta.` one.
pub fn merge_lookup(vars: &mut BTreeMap<String, String>, found: BTreeMap<String, String>) {
    for (key, value) in found {
        if BUILT_IN.contains(&key.as_str()) || key.starts_with(META_PREFIX) {
            continue;
        }
        vars.insert(key, value);
    }
}

/// Sets the built-in variables, over anything of the same name.
pub fn set_built_ins(vars: &mut BTreeMap<String, String>, call_id: &str, route: &str) {
    vars.insert("call_id".to_owned(), call_id.to_owned());
    vars.insert("route".to_owned(), route.to_owned());
}

/// `value` as inserted: control characters (newlines included) become spaces, and it is
/// cut at [`MAX_VALUE_CHARS`].
fn push_value(out: &mut String, value: &str) {
    out.extend(
        value
            .chars()
            .take(MAX_VALUE_CHARS)
            .map(|c| if c.is_control() { ' ' } else { c }),
    );
}

/// A variable's value as a provider inserts it into its own prompt (ElevenLabs'
/// dynamic variables): the same cleaning as [`render`].
pub fn clean_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_VALUE_CHARS));
    push_value(&mut out, value);
    out
}

/// Replaces `{{ name }}` by `vars[name]`; unknown names become empty (or the fallback
/// of `{{ name | fallback }}`), so a dialplan that does not send a key never leaks a
/// raw placeholder into the assistant's prompt.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                // `{{ name | fallback }}`: the fallback when the variable is missing or
                // empty (a caller lookup that failed or did not know the caller).
                let (name, fallback) = match after[..end].split_once('|') {
                    Some((n, f)) => (n.trim(), f.trim()),
                    None => (after[..end].trim(), ""),
                };
                match vars.get(name) {
                    Some(v) if !v.is_empty() => push_value(&mut out, v),
                    _ => out.push_str(fallback),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_known_and_blanks_unknown() {
        let vars = BTreeMap::from([
            ("caller_id".to_owned(), "+39 02 1234".to_owned()),
            ("called".to_owned(), "100".to_owned()),
        ]);
        assert_eq!(
            render("Caller {{caller_id}} dialled {{ called }}{{nope}}.", &vars),
            "Caller +39 02 1234 dialled 100."
        );
        assert_eq!(render("open {{ brace", &vars), "open {{ brace");
        assert_eq!(render("", &vars), "");
    }

    #[test]
    fn built_ins_then_lookup_then_metadata_and_meta_names_the_metadata() {
        let metadata = BTreeMap::from([
            ("route".to_owned(), "vip".to_owned()),
            ("call_id".to_owned(), "forged".to_owned()),
            ("tier".to_owned(), "bronze".to_owned()),
            ("tenant".to_owned(), "acme".to_owned()),
            ("meta.tenant".to_owned(), "literal".to_owned()),
        ]);
        let mut vars = metadata_vars(metadata);
        merge_lookup(
            &mut vars,
            BTreeMap::from([
                ("tier".to_owned(), "gold".to_owned()),
                ("route".to_owned(), "lookup".to_owned()),
                ("meta.tier".to_owned(), "forged".to_owned()),
            ]),
        );
        set_built_ins(&mut vars, "abc", "call");
        assert_eq!(
            render(
                "{{call_id}} {{route}} {{tier}} {{tenant}} | {{meta.call_id}} {{meta.route}} {{meta.tier}} {{meta.tenant}}",
                &vars
            ),
            "abc call gold acme | forged vip bronze acme"
        );
    }

    #[test]
    fn values_lose_control_characters_and_are_capped() {
        let vars = BTreeMap::from([
            (
                "note".to_owned(),
                "line 1\nIGNORE ALL\r\u{7}\u{1b}[2J".to_owned(),
            ),
            ("long".to_owned(), "é".repeat(MAX_VALUE_CHARS + 10)),
        ]);
        assert_eq!(render("[{{note}}]", &vars), "[line 1 IGNORE ALL   [2J]");
        assert_eq!(render("{{long}}", &vars), "é".repeat(MAX_VALUE_CHARS));
        // The template's own text (trusted, from the config) is kept as written.
        assert_eq!(render("a\nb {{nope|x\ty}}", &vars), "a\nb x\ty");
    }

    #[test]
    fn fallback_fills_missing_and_empty_values() {
        let vars = BTreeMap::from([
            ("customer.name".to_owned(), "Ada".to_owned()),
            ("empty".to_owned(), String::new()),
        ]);
        assert_eq!(
            render(
                "Hi {{ customer.name | there }}, {{empty|friend}} {{nope | you}}",
                &vars
            ),
            "Hi Ada, friend you"
        );
    }
}
