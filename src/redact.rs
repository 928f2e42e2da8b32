//! The one rule for printing a configured URL anywhere (logs, `check`, call records,
//! errors): the `user:password@` part is removed and EVERY query value is replaced by
//! `[redacted]`, whatever its name. A list of "secret-looking" parameter names always
//! misses one (`?api-key=`, `?sig=`, `?X-Amz-Credential=`), so none is trusted.
//!
//! Close reasons sent to FreeSWITCH go further: [`without_urls`] takes every URL out.

/// What replaces a secret.
pub const MARK: &str = "[redacted]";
/// What replaces a whole URL in a text that must carry none (Close reasons).
pub const URL_MARK: &str = "[url]";

/// `url` fit for printing: no userinfo, no fragment, every query value replaced.
/// Works on anything, parseable or not (an invalid URL is printed in errors too).
pub fn url(url: &str) -> String {
    let (url, fragment) = match url.split_once('#') {
        Some((u, _)) => (u, true),
        None => (url, false),
    };
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = without_userinfo(base);
    if let Some(q) = query {
        out.push('?');
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}={MARK}"),
                // A bare `?token` is a value without a name.
                None if pair.is_empty() => String::new(),
                None => MARK.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if fragment {
        out.push('#');
        out.push_str(MARK);
    }
    out
}

/// `scheme://user:pass@host/path` → `scheme://host/path` (also without a scheme).
fn without_userinfo(base: &str) -> String {
    let (scheme, rest) = match base.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, base),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match scheme {
        Some(s) => format!("{s}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

/// The parts of `url` that [`url`] hides (userinfo, each query value, the fragment),
/// raw and percent-decoded: to scrub them from a library's error text, which may
/// quote them. Values shorter than 4 bytes are left out: replacing them would mangle
/// unrelated words and they are no real secret.
pub fn secrets_of(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (url, fragment) = url.split_once('#').unwrap_or((url, ""));
    out.push(fragment.to_owned());
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        out.push(userinfo.to_owned());
        out.extend(userinfo.split(':').map(str::to_owned));
    }
    for pair in query.split('&') {
        let value = pair.split_once('=').map_or(pair, |(_, v)| v);
        out.push(value.to_owned());
    }
    let decoded: Vec<String> = out
        .iter()
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    out.extend(decoded);
    out.retain(|s| s.len() >= 4);
    // Longest first, so a value is not half-replaced by a shorter one inside it.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `text` (an error from a library that was given `url`) with the URL shown redacted
/// and every secret part of it replaced wherever it appears.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &self::url(url));
    for s in secrets_of(url) {
        out = out.replace(&s, MARK);
    }
    out
}

/// `text` with every `scheme://…` run (up to whitespace or a quote) replaced by
/// `[url]`: for texts that leave the process to FreeSWITCH, which need no URL at all.
pub fn without_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: letters, digits, `+`, `-`, `.` before `://`, starting with a letter.
        let head = &rest[..i];
        let start = head
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(i, |(j, _)| j);
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(after.len());
        if start == i {
            // `://` with no scheme in front: still drop what follows (it may be a host
            // with credentials).
            out.push_str(head);
        } else {
            out.push_str(&head[..start]);
        }
        out.push_str(URL_MARK);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_every_query_value_go() {
        assert_eq!(
            url("ws://user:PASS@host:81/v1/realtime?api-key=KEY&model=m"),
            "ws://host:81/v1/realtime?api-key=[redacted]&model=[redacted]"
        );
        assert_eq!(
            url("https://u@h/p?X-Amz-Signature=abc&flag&=x#frag"),
            "https://h/p?X-Amz-Signature=[redacted]&[redacted]&=[redacted]#[redacted]"
        );
        assert_eq!(url("wss://h/v1/realtime"), "wss://h/v1/realtime");
        assert_eq!(url("wss://h?"), "wss://h?");
        assert_eq!(url("not a url?k=v"), "not a url?k=[redacted]");
        assert_eq!(url("user:pw@host/x"), "host/x");
        // An `@` in the path is no userinfo.
        assert_eq!(url("https://h/a@b"), "https://h/a@b");
    }

    #[test]
    fn library_errors_lose_the_secret_parts() {
        let u = "ws://user:PASSWORD@h:1/x?api-key=KEY1234&rate=8000";
        let text = format!("Unable to connect to {u}; server said KEY1234 and PASSWORD, rate 8000");
        let got = scrub(&text, u);
        for secret in ["PASSWORD", "KEY1234", "user:"] {
            assert!(!got.contains(secret), "{got}");
        }
        assert!(got.contains("ws://h:1/x?api-key=[redacted]"), "{got}");
        // Percent-encoded values are caught in both spellings.
        let u = "ws://h/x?token=a%2Fb%2Fc";
        assert!(!scrub("bad token a/b/c", u).contains("a/b/c"));
    }

    #[test]
    fn close_reasons_carry_no_url() {
        assert_eq!(
            without_urls("provider error: connect: cannot connect to ws://u:p@h/x?k=v: refused"),
            "provider error: connect: cannot connect to [url] refused"
        );
        assert_eq!(without_urls("no url here"), "no url here");
        assert_eq!(
            without_urls("a \"https://h/p\" b wss://x"),
            "a \"[url]\" b [url]"
        );
        assert_eq!(without_urls("://h?k=v end"), "[url] end");
    }
}
