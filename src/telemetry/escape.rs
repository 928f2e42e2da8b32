//! Field formatting for the `pretty` log format that escapes control characters.
//!
//! Peers choose much of what is logged: metadata, text frames, transcripts, tool names,
//! the model's `end_call` reason, error texts. In the human format a `\n` inside such a
//! value would start what looks like a new log line (`\n2026-… WARN …`: a forged line)
//! and an ESC would drive the terminal. Every field value and the message go through
//! [`escape`]; JSON lines need none of this (the encoder escapes).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// `name=value` fields separated by spaces, the message first without a name, like
/// tracing-subscriber's default, with every value escaped.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    empty: bool,
    result: fmt::Result,
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, &escape(value));
        } else {
            // Quoted like the default format does for string values.
            self.write(
                field,
                &format!("\"{}\"", escape(value).replace('"', "\\\"")),
            );
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &escape(&format!("{value:?}")));
    }
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.empty { "" } else { " " };
        self.empty = false;
        let name = field.name();
        self.result = if name == "message" {
            write!(self.writer, "{sep}{value}")
        } else {
            // `r#type` and `log.target`-style names print as the default does.
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{sep}{name}={value}")
        };
    }
}

/// `text` with control characters (C0, DEL, C1) and Unicode line/paragraph separators
/// written as escapes (`\n`, `\r`, `\t`, `\u{1b}`); everything else, accents included,
/// as it is.
pub fn escape(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("hi\n2026-01-01T00:00:00Z  WARN forged"),
            "hi\\n2026-01-01T00:00:00Z  WARN forged"
        );
        assert_eq!(escape("a\r\tb\u{1b}[31m"), "a\\r\\tb\\u{1b}[31m");
        assert_eq!(
            escape("x\u{85}y\u{2028}z\u{7f}"),
            "x\\u{85}y\\u{2028}z\\u{7f}"
        );
        assert_eq!(escape("héllo \"quoted\""), "héllo \"quoted\"");
    }

    #[test]
    fn a_forged_line_stays_on_one_line() {
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Buf {
            type Writer = Buf;
            fn make_writer(&'a self) -> Buf {
                self.clone()
            }
        }

        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("call", call_id = "c\n1");
            let _g = span.enter();
            let text = "bye\n2026-01-01T00:00:00Z  WARN forged";
            tracing::info!(text = %text, tool = "t\u{1b}x", n = 3, "transcript\r");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("transcript\\r"), "{out}");
        assert!(out.contains("text=bye\\n2026"), "{out}");
        assert!(out.contains("tool=\"t\\u{1b}x\""), "{out}");
        assert!(out.contains("n=3"), "{out}");
        assert!(out.contains("call_id=\"c\\n1\""), "{out}");
    }
}
