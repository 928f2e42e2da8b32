//! Caps on text a peer controls (transcripts, tool arguments kept for the record), so
//! a provider that streams endless words costs a bounded amount of memory per call.
//! Cuts fall on a character boundary, and a cut is always visible (`…` appended).

/// Longest transcript of one turn (caller or assistant) kept, logged or recorded:
/// about ten minutes of continuous speech.
pub const MAX_TURN_TEXT: usize = 16 * 1024;

const MARK: &str = "…";

/// `s` cut to at most `max` bytes (mark included) on a character boundary.
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{MARK}", &s[..end]))
}

/// Appends `more` to a per-turn buffer unless that would take it over `max` bytes;
/// once full, the buffer ends with the mark and grows no further.
pub fn append_capped(buf: &mut String, more: &str, max: usize) {
    if buf.ends_with(MARK) && buf.len() + more.len() > max {
        return;
    }
    if buf.len() + more.len() <= max {
        buf.push_str(more);
        return;
    }
    buf.push_str(more);
    let clipped = clip(buf, max).into_owned();
    *buf = clipped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_on_a_char_boundary_and_marks_the_cut() {
        assert_eq!(clip("hello", 5), "hello");
        let c = clip("héllo wörld", 8);
        assert!(c.len() <= 8, "{c}");
        assert!(c.ends_with('…'), "{c}");
        assert!(c.starts_with('h'));
    }

    #[test]
    fn a_turn_buffer_stops_growing_at_the_cap() {
        let mut buf = String::new();
        for _ in 0..10_000 {
            append_capped(&mut buf, "ciao ", 100);
        }
        assert!(buf.len() <= 100, "{}", buf.len());
        assert!(buf.ends_with('…'));
        let before = buf.clone();
        append_capped(&mut buf, "more", 100);
        assert_eq!(buf, before);
        let mut small = String::new();
        append_capped(&mut small, "ab", 100);
        append_capped(&mut small, "cd", 100);
        assert_eq!(small, "abcd");
    }
}
