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

/// The password of an `Authorization: Basic` value (Asterisk's `websocket_client.conf`
/// `username`/`password`): checked like a token, the user name is not. `None` when the
/// scheme is not Basic or the credentials do not decode to `user:password`.
pub fn basic_password(value: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
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
    fn basic_password_is_the_token() {
        // "pbx1:s3cret" and "pbx1:a:b" (a password may hold colons).
        assert_eq!(
            basic_password("Basic cGJ4MTpzM2NyZXQ=").as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            basic_password("basic  cGJ4MTphOmI= ").as_deref(),
            Some("a:b")
        );
        for v in [
            "Bearer cGJ4MTpzM2NyZXQ=",
            "Basic !!!",
            "Basic cGJ4MQ==",
            "Basic cGJ4MTo=",
            "Basic",
        ] {
            assert_eq!(basic_password(v), None, "{v:?}");
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
