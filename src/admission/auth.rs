//! Where a token comes from on the upgrade request.
//!
//! `STREAM_EXTRA_HEADERS` sends `Authorization: Bearer <token>`; the scheme is
//! case-insensitive in HTTP (RFC 9110 §11.1), so `bearer` and `BEARER` are the same
//! thing. `?token=` in the URL is the fallback for builds that cannot set headers. The
//! query is read on its own, before the rest of the URL is validated, so a request
//! without a valid token gets 401 whatever its path says (routes cannot be probed).

use percent_encoding::percent_decode_str;

/// The token of an `Authorization` header value, if it uses the Bearer scheme.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of `token=` in a query string, percent-decoded.
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| percent_decode_str(v).decode_utf8_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc ", "bEaReR\tabc"] {
            assert_eq!(bearer(v), Some("abc"), "{v:?}");
        }
        for v in ["Basic abc", "Bearer", "Bearer   ", "Bearerabc", "abc", ""] {
            assert_eq!(bearer(v), None, "{v:?}");
        }
    }

    #[test]
    fn token_from_the_query() {
        assert_eq!(
            query_token(Some("rate=8000&token=a%2Bb")).as_deref(),
            Some("a+b")
        );
        assert_eq!(query_token(Some("rate=8000")), None);
        assert_eq!(query_token(Some("xtoken=1&token")), None);
        assert_eq!(query_token(None), None);
    }
}
