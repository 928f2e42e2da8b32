//! `voicebridge check --env-file`: reads the same `KEY=VALUE` file systemd's
//! `EnvironmentFile=` gives the daemon, so keys never have to go on a command line
//! (where `ps` and sudo's log would show them).
//!
//! The format is systemd's common subset: one `KEY=VALUE` per line, blank lines and
//! `#`/`;` comments skipped, an optional `export ` prefix, a value optionally in single
//! or double quotes. Errors name the line number, never its text (it holds a key).

use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvFileError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} line {line}: expected KEY=VALUE")]
    Syntax { path: String, line: usize },
}

/// The file's variables, in file order.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| EnvFileError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse(&text).map_err(|line| EnvFileError::Syntax { path: shown, line })
}

/// Parses the text; on error, the 1-based number of the first bad line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(i + 1);
        };
        let key = key.trim();
        let valid_key = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(i + 1);
        }
        out.push((key.to_owned(), unquote(value.trim()).to_owned()));
    }
    Ok(out)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_systemd_subset() {
        let text =
            "# keys\n\nOPENAI_API_KEY=sk-1\nexport GEMINI_API_KEY = \"g k\"\n; c\nX='y'\nEMPTY=\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                ("OPENAI_API_KEY".to_owned(), "sk-1".to_owned()),
                ("GEMINI_API_KEY".to_owned(), "g k".to_owned()),
                ("X".to_owned(), "y".to_owned()),
                ("EMPTY".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn bad_lines_are_named_by_number_only() {
        assert_eq!(parse("A=1\nsk-secret-without-name\n"), Err(2));
        assert_eq!(parse("1A=x\n"), Err(1));
        let e = EnvFileError::Syntax {
            path: "/etc/x.env".into(),
            line: 2,
        };
        assert_eq!(e.to_string(), "/etc/x.env line 2: expected KEY=VALUE");
    }
}
