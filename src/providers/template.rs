//! `{{name}}` placeholders in instructions and greetings, filled from call metadata.

use std::collections::BTreeMap;

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
                    Some(v) if !v.is_empty() => out.push_str(v),
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
