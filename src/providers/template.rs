//! `{{name}}` placeholders in instructions and greetings, filled from call metadata.

use std::collections::BTreeMap;

/// Replaces `{{ name }}` by `vars[name]`; unknown names become empty, so a dialplan
/// that does not send a key never leaks a raw placeholder into the assistant's prompt.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                if let Some(v) = vars.get(name) {
                    out.push_str(v);
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
}
