//! Outgoing HTTP to the business's own systems: caller lookup, tool webhooks and call
//! records. One pooled client for the process, and one signing scheme for all three so
//! a receiver verifies every request the same way:
//!
//! ```text
//! X-Voicebridge-Timestamp: <unix seconds>
//! X-Voicebridge-Signature-V2: v2=<hex HMAC-SHA256(secret, canonical)>
//! X-Voicebridge-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>   (v1, deprecated)
//!
//! canonical = "v2\n<timestamp>\n<METHOD>\n<path>\n<query>\n<body>"
//! ```
//!
//! v2 covers what v1 left open: the method, the path and the whole query (the one
//! configured in the URL and, for a GET, the lookup's own parameters), so a captured
//! request cannot be replayed to another endpoint or with another query. `<path>` and
//! `<query>` are exactly as sent on the wire (percent-encoding kept, query without `?`,
//! empty when there is none); `<body>` is the exact bytes sent (empty for a GET). v1
//! (`"<timestamp>.<body>"`, the body being the query string for a GET) is still sent
//! beside it while receivers migrate. The timestamp is inside both MACs so a captured
//! request cannot be replayed later than the receiver's tolerance. Without
//! `[webhooks] secret` requests go unsigned.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::Secret;

pub const SIGNATURE_HEADER: &str = "x-voicebridge-signature";
pub const SIGNATURE_V2_HEADER: &str = "x-voicebridge-signature-v2";
pub const TIMESTAMP_HEADER: &str = "x-voicebridge-timestamp";
pub const CALL_ID_HEADER: &str = "x-voicebridge-call-id";

/// Why a webhook gave no usable answer; the text goes into logs and tool errors, so it
/// never contains the URL's query (which may carry a key).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("cannot reach the webhook: {0}")]
    Connect(String),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the answer is not JSON: {0}")]
    NotJson(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// A 2xx answer longer than `[webhooks] max_response_kb`: not read further.
    #[error("the answer is larger than the {} KiB limit ([webhooks] max_response_kb)", .0 / 1024)]
    TooLarge(usize),
    /// Redirects are not followed: a signed body goes only to the configured host.
    #[error("HTTP {0}: redirects are not followed; configure the final URL")]
    Redirect(u16),
}

impl WebhookError {
    /// Worth trying again later (records delivery): the receiver may come back.
    pub fn is_transient(&self) -> bool {
        match self {
            WebhookError::Timeout(_) | WebhookError::Connect(_) => true,
            WebhookError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            WebhookError::NotJson(_)
            | WebhookError::Client(_)
            | WebhookError::TooLarge(_)
            | WebhookError::Redirect(_) => false,
        }
    }
}

/// `v2=<hex>` over the canonical string (see the module doc). `path` and `query` are
/// as sent on the wire; `query` without its `?`.
pub fn signature_v2(
    secret: &[u8],
    timestamp: u64,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    let ts = timestamp.to_string();
    for part in ["v2", ts.as_str(), &method.to_ascii_uppercase(), path, query] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac.update(body);
    format!("v2={}", hex::encode(mac.finalize().into_bytes()))
}

/// v1 (deprecated, sent beside v2): `sha256=<hex>` over `"<timestamp>.<body>"`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The process-wide client (keep-alive connections to the business's hosts).
pub fn client() -> Result<reqwest::Client, WebhookError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    // reqwest is built without a crypto provider; main installs ring, this covers
    // library users (tests) that did not.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .user_agent(concat!("voicebridge/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        // A redirect would carry the signed body to a host nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| WebhookError::Client(e.to_string()))?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

/// One signed request; the answer's body parsed as JSON (an empty body is `null`).
/// `body` is the JSON for a POST, or the query string for a GET. At most `max_body`
/// bytes of the answer are read.
pub async fn send(
    method: reqwest::Method,
    url: &str,
    body: Vec<u8>,
    secret: &Secret,
    call_id: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<serde_json::Value, WebhookError> {
    let client = client()?;
    let ts = now_secs();
    let is_get = method == reqwest::Method::GET;
    let target = if is_get {
        let query = String::from_utf8_lossy(&body).into_owned();
        let sep = if url.contains('?') { '&' } else { '?' };
        if query.is_empty() {
            url.to_owned()
        } else {
            format!("{url}{sep}{query}")
        }
    } else {
        url.to_owned()
    };
    // Parsed once, so the path and query signed are the ones sent.
    let target = reqwest::Url::parse(&target)
        .map_err(|e| WebhookError::Client(format!("invalid URL: {e}")))?;
    let signed_v2 = (!secret.is_empty()).then(|| {
        signature_v2(
            secret.expose().as_bytes(),
            ts,
            method.as_str(),
            target.path(),
            target.query().unwrap_or(""),
            if is_get { b"" } else { &body },
        )
    });
    let mut req = if is_get {
        client.get(target)
    } else {
        client
            .request(method, target)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
    };
    req = req
        .header(reqwest::header::ACCEPT, "application/json")
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(CALL_ID_HEADER, call_id)
        .timeout(timeout);
    if let Some(v2) = signed_v2 {
        req = req.header(SIGNATURE_V2_HEADER, v2).header(
            SIGNATURE_HEADER,
            signature(secret.expose().as_bytes(), ts, &body),
        );
    }
    let resp = req.send().await.map_err(|e| classify(e, timeout))?;
    let status = resp.status();
    if status.is_redirection() {
        return Err(WebhookError::Redirect(status.as_u16()));
    }
    // An error answer is only shown as a short preview: a little of it is enough.
    let limit = if status.is_success() {
        max_body
    } else {
        PREVIEW_READ
    };
    let bytes = match read_capped(resp, limit)
        .await
        .map_err(|e| classify(e, timeout))?
    {
        Capped::Whole(b) => b,
        Capped::Over(b) if !status.is_success() => b,
        Capped::Over(_) => return Err(WebhookError::TooLarge(max_body)),
    };
    if !status.is_success() {
        return Err(WebhookError::Status {
            status: status.as_u16(),
            body: preview(&bytes),
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| WebhookError::NotJson(e.to_string()))
}

/// Bytes of an error answer read for its preview.
const PREVIEW_READ: usize = 1024;

/// An answer body read up to a limit.
enum Capped {
    Whole(Vec<u8>),
    /// Longer than the limit: what was read (the limit's worth); the rest never is.
    Over(Vec<u8>),
}

/// Reads the body chunk by chunk and stops at `limit`, so memory per answer is
/// bounded by the limit whatever the Content-Length says (the start of an error page
/// is kept for its preview).
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Capped, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > limit {
            let room = limit - out.len();
            out.extend_from_slice(&chunk[..room]);
            return Ok(Capped::Over(out));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(out))
}

/// `voicebridge check`: can a TCP connection be opened to the URL's host and port?
/// Nothing is sent: a lookup or a tool endpoint may act on any request it receives.
pub async fn reachable(url: &str, timeout: Duration) -> Result<Duration, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = parsed.host_str().ok_or("the URL has no host")?.to_owned();
    let port = parsed
        .port_or_known_default()
        .ok_or("the URL has no port")?;
    let started = std::time::Instant::now();
    match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
        Err(_) => Err(format!(
            "no connection to {host}:{port} within {} ms",
            timeout.as_millis()
        )),
    }
}

fn classify(e: reqwest::Error, timeout: Duration) -> WebhookError {
    if e.is_timeout() {
        return WebhookError::Timeout(timeout);
    }
    // reqwest's text names the URL; keep only the cause chain.
    let mut msg = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if msg.is_empty() {
        msg = "request failed".to_owned();
    }
    WebhookError::Connect(msg)
}

/// The start of an error body, one line.
fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(200).collect();
    out = out.replace(['\n', '\r'], " ");
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog") from RFC
        // test material, reached through our "<ts>.<body>" framing.
        let sig = signature(b"key", 0, b"x");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"0.x");
        assert_eq!(
            sig,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
        let mut fox = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        fox.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            hex::encode(fox.finalize().into_bytes()),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn v2_signs_the_documented_canonical_string() {
        // The vector README and docs/records.md give receivers.
        let sig = signature_v2(b"key", 0, "post", "/hook", "a=1", b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"v2\n0\nPOST\n/hook\na=1\n{}");
        assert_eq!(
            sig,
            format!("v2={}", hex::encode(mac.finalize().into_bytes()))
        );
        assert_eq!(
            sig, "v2=3db7a7e4664d1a96cf3781b4473b414bf5633729d5b7eb893a51eb8844029f0b",
            "update the docs' vector too"
        );
    }

    #[test]
    fn v2_depends_on_method_path_query_and_body() {
        let a = signature_v2(b"s", 1, "POST", "/p", "k=1", b"{}");
        assert_ne!(a, signature_v2(b"s", 1, "GET", "/p", "k=1", b"{}"));
        assert_ne!(a, signature_v2(b"s", 1, "POST", "/q", "k=1", b"{}"));
        assert_ne!(a, signature_v2(b"s", 1, "POST", "/p", "k=2", b"{}"));
        assert_ne!(a, signature_v2(b"s", 1, "POST", "/p", "", b"k=1\n{}"));
        assert_ne!(a, signature_v2(b"s", 2, "POST", "/p", "k=1", b"{}"));
        assert_ne!(a, signature_v2(b"s", 1, "POST", "/p", "k=1", b"{ }"));
    }

    #[test]
    fn signature_depends_on_timestamp_and_body() {
        let a = signature(b"s", 1, b"{}");
        assert_ne!(a, signature(b"s", 2, b"{}"));
        assert_ne!(a, signature(b"s", 1, b"{ }"));
        assert_ne!(a, signature(b"t", 1, b"{}"));
    }

    /// A one-shot HTTP server on loopback answering `head` then `body_len` bytes of `x`.
    async fn answer_once(head: &'static str, body_len: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = head.replace("{len}", &body_len.to_string());
            let _ = s.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = body_len;
            while left > 0 {
                let n = left.min(chunk.len());
                if s.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
        });
        format!("http://{addr}/hook")
    }

    async fn post(url: &str, max_body: usize) -> Result<serde_json::Value, WebhookError> {
        let t = Duration::from_secs(5);
        send(
            reqwest::Method::POST,
            url,
            b"{}".to_vec(),
            &Secret::default(),
            "c",
            t,
            max_body,
        )
        .await
    }

    #[tokio::test]
    async fn answers_are_read_up_to_the_cap_and_redirects_are_errors() {
        let ok =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n";
        let url = answer_once(ok, 4 * 1024 * 1024).await;
        let err = post(&url, 64 * 1024).await.unwrap_err();
        assert!(matches!(err, WebhookError::TooLarge(65536)), "{err}");
        assert!(err.to_string().contains("64 KiB"), "{err}");
        // An error page larger than the preview still shows its start.
        let fail = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {len}\r\n\r\n";
        let url = answer_once(fail, 100_000).await;
        match post(&url, 64 * 1024).await {
            Err(WebhookError::Status { status: 500, body }) => {
                assert!(body.starts_with("xxx"), "{body}")
            }
            other => panic!("{other:?}"),
        }
        let moved = "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/elsewhere\r\ncontent-length: {len}\r\n\r\n";
        let url = answer_once(moved, 0).await;
        let err = post(&url, 64 * 1024).await.unwrap_err();
        assert!(matches!(err, WebhookError::Redirect(302)), "{err}");
        assert!(!err.is_transient());
    }
}
