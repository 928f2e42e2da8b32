//! `X-Twilio-Signature` on the WebSocket upgrade, pure.
//!
//! Twilio signs every request it makes with the account's auth token:
//! `Base64(HMAC-SHA1(auth_token, url + sorted POST parameters))`
//! (twilio.com/docs/usage/security). The stream upgrade is a GET without parameters, so
//! the signed text is the stream URL itself, as written in the TwiML, which for a
//! stream is a `wss://` URL (Twilio's own validators had to learn that the scheme is
//! `wss`, not the `https` a server behind a proxy sees). Twilio's helper libraries
//! accept the URL with and without an explicit default port, so do we.
//!
//! Behind a TLS front end the URL we see is not the one Twilio used, hence
//! `[twilio] public_url`: the scheme and authority Twilio connected to, joined with the
//! path (and query) of the request as it reached us.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// The header Twilio sends.
pub const HEADER: &str = "x-twilio-signature";

/// The signature Twilio would send for `url`.
pub fn sign(auth_token: &str, url: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else {
        // HMAC takes keys of any length; this cannot happen.
        return String::new();
    };
    mac.update(url.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// Whether `signature` (the header's value) is Twilio's for `url` (or the same URL
/// with / without its default port). The comparison is in constant time (the MAC
/// crate's `verify_slice`).
pub fn verify(auth_token: &str, url: &str, signature: &str) -> bool {
    let Ok(presented) = B64.decode(signature.trim()) else {
        return false;
    };
    url_variants(url).iter().any(|candidate| {
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else {
            return false;
        };
        mac.update(candidate.as_bytes());
        mac.verify_slice(&presented).is_ok()
    })
}

/// `url` as given, plus the same with its default port added or removed.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let default_port = match scheme {
        "wss" | "https" => "443",
        "ws" | "http" => "80",
        _ => return out,
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let with_port = format!(":{default_port}");
    if let Some(host) = authority.strip_suffix(&with_port) {
        out.push(format!("{scheme}://{host}{tail}"));
    } else if !authority.contains(':') || authority.ends_with(']') {
        out.push(format!("{scheme}://{authority}{with_port}{tail}"));
    }
    out
}

/// The URL the carrier signed: `public_url` (scheme and authority, any path of its own
/// kept as a prefix) or `wss://<Host>`, joined with the request target we received.
pub fn signed_url(public_url: Option<&str>, host: Option<&str>, target: &str) -> Option<String> {
    let base = match public_url {
        Some(base) => base.trim_end_matches('/').to_owned(),
        None => format!("wss://{}", host?),
    };
    Some(format!("{base}{target}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "12345";

    #[test]
    fn is_hmac_sha1_in_base64() {
        // Computed independently: printf '%s' URL | openssl dgst -sha1 -hmac 12345 -binary | base64
        assert_eq!(
            sign(TOKEN, "wss://vb.example.com/twilio/sales"),
            "jciuGjh5fx9F4Lc9knAiK2vhHnM="
        );
    }

    #[test]
    fn the_stream_url_is_verified_with_and_without_the_default_port() {
        let url = "wss://vb.example.com/twilio/sales";
        let sig = sign(TOKEN, url);
        assert!(verify(TOKEN, url, &sig));
        assert!(verify(TOKEN, "wss://vb.example.com:443/twilio/sales", &sig));
        let with_port = sign(TOKEN, "wss://vb.example.com:443/twilio/sales");
        assert!(verify(TOKEN, url, &with_port));
    }

    #[test]
    fn anything_else_is_refused() {
        let url = "wss://vb.example.com/twilio/sales";
        let sig = sign(TOKEN, url);
        assert!(!verify("54321", url, &sig), "another account's token");
        assert!(
            !verify(TOKEN, "wss://vb.example.com/twilio/other", &sig),
            "another path"
        );
        assert!(
            !verify(TOKEN, "https://vb.example.com/twilio/sales", &sig),
            "another scheme"
        );
        assert!(!verify(TOKEN, url, "not base64 !"));
        assert!(!verify(TOKEN, url, ""));
        assert!(!verify(TOKEN, url, &sig[..sig.len() - 4]));
    }

    #[test]
    fn the_signed_url_comes_from_the_public_url_or_the_host() {
        assert_eq!(
            signed_url(
                Some("wss://vb.example.com/"),
                Some("10.0.0.5:9090"),
                "/twilio/sales"
            )
            .as_deref(),
            Some("wss://vb.example.com/twilio/sales")
        );
        assert_eq!(
            signed_url(None, Some("vb.example.com"), "/twilio").as_deref(),
            Some("wss://vb.example.com/twilio")
        );
        assert_eq!(signed_url(None, None, "/twilio"), None);
    }
}
