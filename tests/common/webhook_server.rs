//! A local HTTP server standing in for the business's systems: the caller lookup, tool
//! webhooks and the call-record receiver. Every request is recorded (method, path,
//! query, headers, exact body bytes) and can be awaited; each path's reply is
//! scripted (JSON, an error status, a slow answer, no answer at all), and can be
//! changed while the daemon runs (outage, then recovery).
//!
//! Signatures are checked here with `hmac`/`sha2` directly, not with voicebridge's own
//! code, so a wrong signing scheme fails the tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

/// How a path answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Json(serde_json::Value),
    Status(u16, String),
    /// Answer with the inner reply after this long (a slow endpoint).
    Delayed(Duration, Box<Reply>),
    /// Never answer (the request is still recorded).
    Hang,
    /// `302 Found` to this location.
    Redirect(String),
    /// A valid JSON object of this many bytes, streamed in 64 KiB chunks without a
    /// Content-Length (so only reading it tells its size), never held in memory whole.
    Huge(usize),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The v1 signed payload: the body, or for a GET the query string.
    pub fn signed_payload(&self) -> &[u8] {
        if self.method == "GET" {
            self.query.as_bytes()
        } else {
            &self.body
        }
    }

    /// Both signatures verify: v2 (method, path, whole query, body) and the deprecated
    /// v1 sent beside it.
    pub fn signature_valid(&self, secret: &str) -> bool {
        self.signature_v2_valid(secret) && self.signature_v1_valid(secret)
    }

    /// `X-Voicebridge-Signature` (v1) is `sha256=<hex HMAC(secret, "<ts>.<payload>")>`.
    pub fn signature_v1_valid(&self, secret: &str) -> bool {
        let (Some(ts), Some(sig)) = (
            self.header("x-voicebridge-timestamp"),
            self.header("x-voicebridge-signature"),
        ) else {
            return false;
        };
        let Some(hex_sig) = sig.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(expected) = hex::decode(hex_sig) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(self.signed_payload());
        mac.verify_slice(&expected).is_ok()
    }

    /// `X-Voicebridge-Signature-V2` is `v2=<hex HMAC(secret, canonical)>`, canonical
    /// being `v2\n<ts>\n<METHOD>\n<path>\n<query>\n<body>` with the path and query
    /// as received on the wire (README, "Webhook signatures").
    pub fn signature_v2_valid(&self, secret: &str) -> bool {
        let (Some(ts), Some(sig)) = (
            self.header("x-voicebridge-timestamp"),
            self.header("x-voicebridge-signature-v2"),
        ) else {
            return false;
        };
        let Some(hex_sig) = sig.strip_prefix("v2=") else {
            return false;
        };
        let Ok(expected) = hex::decode(hex_sig) else {
            return false;
        };
        let canonical = [
            "v2",
            ts,
            self.method.as_str(),
            self.path.as_str(),
            self.query.as_str(),
        ]
        .join("\n");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
        mac.update(canonical.as_bytes());
        mac.update(b"\n");
        mac.update(&self.body);
        mac.verify_slice(&expected).is_ok()
    }
}

/// What a tool webhook request must carry (see `tools::run_webhook`).
pub struct ToolRequest<'a> {
    pub secret: &'a str,
    pub tool: &'a str,
    pub tool_call_id: &'a str,
    pub call_id: &'a str,
    pub arguments: serde_json::Value,
}

impl WebhookServer {
    /// The one request `path` received: a signed POST naming the tool, its call id, the
    /// call, the route `call`, the caller and the arguments. Returns its body.
    pub fn the_tool_request(&self, path: &str, want: ToolRequest<'_>) -> serde_json::Value {
        let reqs = self.requests(path);
        assert_eq!(reqs.len(), 1, "exactly one webhook request");
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert!(r.signature_valid(want.secret), "signature: {:?}", r.headers);
        assert!(!r.signature_valid("another-secret"));
        let body = r.json();
        assert_eq!(body["tool"], want.tool);
        assert_eq!(body["tool_call_id"], want.tool_call_id);
        assert_eq!(body["call_id"], want.call_id);
        assert_eq!(body["route"], "call");
        assert_eq!(body["caller_id"], "+3902123");
        assert_eq!(body["arguments"], want.arguments);
        body
    }
}

#[derive(Default)]
struct Shared {
    replies: Mutex<HashMap<String, Reply>>,
    log: Mutex<Vec<Recorded>>,
    arrived: Notify,
}

pub struct WebhookServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookServer {
    /// Starts on an ephemeral loopback port. Unscripted paths answer `{"ok":true}`.
    pub async fn start() -> WebhookServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook server");
        Self::serve(listener)
    }

    /// Starts on a given address (to come back on the same port after an outage).
    pub async fn start_at(addr: SocketAddr) -> WebhookServer {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind webhook server again");
        Self::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> WebhookServer {
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookServer { addr, shared, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn respond(&self, path: &str, reply: Reply) {
        self.shared
            .replies
            .lock()
            .expect("lock")
            .insert(path.to_owned(), reply);
    }

    /// Every request to `path` so far.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.shared
            .log
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits (up to 20 s) until `path` has received at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.shared.arrived.notified();
            let got = self.requests(path);
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{path}: expected {n} request(s), got {}: {:?}",
                    got.len(),
                    got.iter()
                        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Stops listening (connections are refused from now on).
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, 16 * 1024 * 1024)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = parts.uri.path().to_owned();
    let rec = Recorded {
        method: parts.method.as_str().to_owned(),
        path: path.clone(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers,
        body,
    };
    let reply = shared
        .replies
        .lock()
        .expect("lock")
        .get(&path)
        .cloned()
        .unwrap_or(Reply::Json(serde_json::json!({"ok": true})));
    shared.log.lock().expect("lock").push(rec);
    shared.arrived.notify_waiters();
    answer(reply).await
}

async fn answer(mut reply: Reply) -> Response {
    loop {
        match reply {
            Reply::Json(v) => {
                return (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    Body::from(v.to_string()),
                )
                    .into_response()
            }
            Reply::Status(code, body) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (status, body).into_response();
            }
            Reply::Delayed(d, inner) => {
                tokio::time::sleep(d).await;
                reply = *inner;
            }
            Reply::Hang => std::future::pending::<()>().await,
            Reply::Redirect(location) => {
                return (StatusCode::FOUND, [("location", location)], "").into_response()
            }
            Reply::Huge(n) => return huge_json(n),
        }
    }
}

/// `{"pad":"xxxx…"}` of exactly `n` bytes (at least 10), streamed.
fn huge_json(n: usize) -> Response {
    const CHUNK: usize = 64 * 1024;
    let head = b"{\"pad\":\"".to_vec();
    let pad = n.saturating_sub(head.len() + 2);
    let chunks = std::iter::once(head)
        .chain((0..pad.div_ceil(CHUNK)).map(move |i| vec![b'x'; CHUNK.min(pad - i * CHUNK)]))
        .chain(std::iter::once(b"\"}".to_vec()))
        .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c)));
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        Body::from_stream(futures_util::stream::iter(chunks)),
    )
        .into_response()
}
