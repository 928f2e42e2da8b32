//! Self-test of the fake FreeSWITCH client (`tests/common/fake_freeswitch.rs`)
//! against small servers written here: a tokio-tungstenite server (a compliant
//! RFC 6455 peer, with the raw request bytes recorded) and, where a compliant
//! server cannot misbehave on purpose, a hand-written raw one.
//!
//! No sleeps for synchronisation and no timing thresholds: every wait is on an
//! event (a frame, EOF, a task's end).

mod common;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use common::fake_freeswitch::{
    accept_for, bytes_per_message, encode_frame, opcode, stream_audio, stream_audio_with,
    AbortMode, ConnectOptions, FakeFreeSwitch, FakeFsError, ServerFrame, StreamPlan, DEFLATE_OFFER,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Generous bound so a broken fake fails the test instead of hanging it; never
/// used to judge speed.
const HANG_GUARD: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Test servers
// ---------------------------------------------------------------------------

/// A TCP stream that keeps a copy of every byte the server reads, so the test
/// can compare the request and the client's frames byte for byte (the
/// tungstenite callback only sees a parsed, lower-cased request).
struct Recording {
    inner: TcpStream,
    seen: Arc<StdMutex<Vec<u8>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            self.seen
                .lock()
                .unwrap()
                .extend_from_slice(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the accept callback saw.
#[derive(Debug, Default, Clone)]
struct SeenRequest {
    uri: String,
    /// (lower-case name, value) in the order the parser kept them.
    headers: Vec<(String, String)>,
}

type ServerWs = WebSocketStream<Recording>;

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Accept one connection with tokio-tungstenite, recording the request.
// The callback's error type is fixed by tungstenite's API.
#[allow(clippy::result_large_err)]
async fn accept_ws(listener: &TcpListener) -> (ServerWs, SeenRequest, Arc<StdMutex<Vec<u8>>>) {
    let (tcp, _) = listener.accept().await.unwrap();
    let raw = Arc::new(StdMutex::new(Vec::new()));
    let stream = Recording {
        inner: tcp,
        seen: Arc::clone(&raw),
    };
    let seen = Arc::new(StdMutex::new(SeenRequest::default()));
    let seen_cb = Arc::clone(&seen);
    let ws = tokio_tungstenite::accept_hdr_async(stream, move |req: &Request, resp: Response| {
        let mut s = seen_cb.lock().unwrap();
        s.uri = req.uri().to_string();
        s.headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        Ok(resp)
    })
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    (ws, seen, raw)
}

/// Read server-side messages until the client's Close (returned) or the end.
/// tungstenite echoes the Close itself while being read.
async fn drain_until_close(ws: &mut ServerWs) -> (Vec<Message>, Option<CloseFrame>) {
    let mut got = Vec::new();
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Close(frame)) => {
                // Keep reading so tungstenite flushes its echo and sees EOF.
                while let Some(Ok(_)) = ws.next().await {}
                return (got, frame);
            }
            Ok(m) => got.push(m),
            Err(_) => break,
        }
    }
    (got, None)
}

/// Hand-written server handshake: read the request, answer 101 followed in the
/// same write by `after_101` (the first server frames).
async fn raw_accept(listener: &TcpListener, after_101: &[u8]) -> (TcpStream, BytesMut) {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let head_len = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        assert!(tcp.read_buf(&mut buf).await.unwrap() > 0, "EOF in request");
    };
    let head = String::from_utf8(buf.split_to(head_len).to_vec()).unwrap();
    let key = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key:"))
        .expect("key header");
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(key)
    )
    .into_bytes();
    out.extend_from_slice(after_101);
    tcp.write_all(&out).await.unwrap();
    (tcp, buf)
}

/// One client frame as a server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientFrame {
    fin: bool,
    opcode: u8,
    /// Unmasked.
    payload: Vec<u8>,
    mask: Option<[u8; 4]>,
}

/// Next client frame read by a raw server; `None` at EOF.
async fn raw_read_client_frame(tcp: &mut TcpStream, buf: &mut BytesMut) -> Option<ClientFrame> {
    loop {
        if let Some(frame) = take_client_frame(buf) {
            return Some(frame);
        }
        if tcp.read_buf(buf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

fn take_client_frame(buf: &mut BytesMut) -> Option<ClientFrame> {
    let (len, mut pos) = frame_len(buf)?;
    let masked = buf[1] & 0x80 != 0;
    let mask_len = if masked { 4 } else { 0 };
    if buf.len() < pos + mask_len + len {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let op = buf[0] & 0x0F;
    let mask = masked.then(|| [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);
    pos += mask_len;
    let payload = buf[pos..pos + len]
        .iter()
        .enumerate()
        .map(|(i, b)| mask.map_or(*b, |m| b ^ m[i & 3]))
        .collect();
    buf.advance(pos + len);
    Some(ClientFrame {
        fin,
        opcode: op,
        payload,
        mask,
    })
}

/// Payload length and header length (without mask) of the frame at the front.
fn frame_len(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    match buf[1] & 0x7F {
        126 if buf.len() >= 4 => Some((u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            Some((u64::from_be_bytes(b) as usize, 10))
        }
        126 | 127 => None,
        n => Some((n as usize, 2)),
    }
}

/// An unmasked server frame.
fn server_frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    encode_frame(op, fin, payload, None)
}

fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn guarded<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, fut)
        .await
        .expect("test hung")
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

#[tokio::test]
async fn handshake_request_is_byte_exact_like_libwsc() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut ws, seen, raw) = accept_ws(&listener).await;
        let (_, close) = drain_until_close(&mut ws).await;
        (seen, raw, close)
    });

    let opts = ConnectOptions::new(addr, "/call/3f2a-uuid?x=y").bearer("x");
    let fs = guarded(FakeFreeSwitch::connect(&opts)).await.unwrap();
    let hs = fs.handshake().clone();

    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(&hs.key)
        .unwrap();
    assert_eq!(key_bytes.len(), 16, "the key is 16 random bytes");
    let expected = format!(
        "GET /call/3f2a-uuid?x=y HTTP/1.1\r\n\
         Host:{addr}\r\n\
         Upgrade:websocket\r\n\
         Connection:upgrade\r\n\
         Sec-WebSocket-Key:{key}\r\n\
         Sec-WebSocket-Version:13\r\n\
         Sec-WebSocket-Extensions:permessage-deflate; client_no_context_takeover; server_no_context_takeover; client_max_window_bits=9\r\n\
         Origin:http://{addr}\r\n\
         Authorization:Bearer x\r\n\
         \r\n",
        key = hs.key
    );
    assert_eq!(hs.request, expected);
    assert!(
        hs.status_line.starts_with("HTTP/1.1 101"),
        "{}",
        hs.status_line
    );
    assert_eq!(hs.extensions, None, "server must not negotiate deflate");
    assert_eq!(hs.protocol, None, "server must not pick a subprotocol");
    assert!(hs.elapsed >= hs.tcp_connect);

    let outcome = guarded(fs.close()).await.unwrap();
    assert!(outcome.echoed);

    let (seen, raw, close) = server.await.unwrap();
    // What crossed the wire, byte for byte (no space after any colon).
    let raw = raw.lock().unwrap().clone();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(std::str::from_utf8(&raw[..head_end]).unwrap(), expected);

    // What a server's parser makes of it.
    assert_eq!(seen.uri, "/call/3f2a-uuid?x=y");
    let mut headers = seen.headers.clone();
    headers.sort();
    let mut want: Vec<(String, String)> = [
        ("host", addr.to_string()),
        ("upgrade", "websocket".into()),
        ("connection", "upgrade".into()),
        ("sec-websocket-key", hs.key.clone()),
        ("sec-websocket-version", "13".into()),
        ("sec-websocket-extensions", DEFLATE_OFFER.into()),
        ("origin", format!("http://{addr}")),
        ("authorization", "Bearer x".into()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    want.sort();
    assert_eq!(headers, want);
    assert!(!seen.headers.iter().any(|(n, _)| n == "user-agent"));
    assert!(!seen
        .headers
        .iter()
        .any(|(n, _)| n == "sec-websocket-protocol"));

    let close = close.expect("server saw the Close");
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(close.reason.as_str(), "Normal closure");
}

#[tokio::test]
async fn handshake_without_deflate_offer_and_with_named_host() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut ws, seen, _) = accept_ws(&listener).await;
        drain_until_close(&mut ws).await;
        seen
    });

    // STREAM_MESSAGE_DEFLATE=true, URL ws://fs-media.internal:9090/...
    let opts = ConnectOptions::new(addr, "/call/abc")
        .offer_deflate(false)
        .host_header("fs-media.internal:9090");
    let fs = guarded(FakeFreeSwitch::connect(&opts)).await.unwrap();
    let request = fs.handshake().request.clone();
    assert!(!request.contains("Sec-WebSocket-Extensions"), "{request}");
    assert!(request.contains("\r\nHost:fs-media.internal:9090\r\n"));
    assert!(request.contains("\r\nOrigin:http://fs-media.internal:9090\r\n"));
    assert!(request.ends_with("Origin:http://fs-media.internal:9090\r\n\r\n"));
    guarded(fs.close()).await.unwrap();

    let seen = server.await.unwrap();
    assert!(!seen
        .headers
        .iter()
        .any(|(n, _)| n == "sec-websocket-extensions"));
}

#[tokio::test]
// The callback's error type is fixed by tungstenite's API.
#[allow(clippy::result_large_err)]
async fn rejections_yield_status_and_body() {
    let (listener, addr) = listen().await;
    let cases: [(u16, &str); 3] = [
        (404, "no route for /nope"),
        (401, "bad token"),
        (503, "over capacity"),
    ];
    let server = tokio::spawn(async move {
        for (status, body) in cases {
            let (tcp, _) = listener.accept().await.unwrap();
            let result =
                tokio_tungstenite::accept_hdr_async(tcp, move |_: &Request, _: Response| {
                    let reject: ErrorResponse = http::Response::builder()
                        .status(status)
                        .body(Some(body.to_owned()))
                        .unwrap();
                    Err(reject)
                })
                .await;
            // The stream is dropped here, so the client reads the body to EOF.
            assert!(result.is_err());
        }
    });

    for (status, body) in cases {
        let opts = ConnectOptions::new(addr, "/nope");
        let err = match guarded(FakeFreeSwitch::connect(&opts)).await {
            Ok(_) => panic!("HTTP {status} must not connect"),
            Err(e) => e,
        };
        assert_eq!(err.status(), Some(status), "{err}");
        assert_eq!(err.body(), Some(body), "{err}");
        assert!(matches!(err, FakeFsError::Rejected { .. }));
    }
    server.await.unwrap();
}

#[tokio::test]
async fn wrong_accept_value_fails_the_connection() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(tcp.read_buf(&mut buf).await.unwrap() > 0);
        }
        tcp.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        )
        .await
        .unwrap();
    });
    let err = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(addr, "/")))
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, FakeFsError::BadAccept { .. }), "{err}");
    server.await.unwrap();
}

// ---------------------------------------------------------------------------
// Client -> server frames
// ---------------------------------------------------------------------------

#[tokio::test]
async fn audio_frames_arrive_intact_and_masked_with_fresh_keys() {
    // 100 B: 7-bit length; 320/640/1280 B (20 ms at 8k mono, 16k mono, 16k
    // stereo): 16-bit length; 70 000 B: 64-bit length.
    let sizes = [100usize, 320, 640, 1280, 70_000];
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut ws, _, raw) = accept_ws(&listener).await;
        let (got, _) = drain_until_close(&mut ws).await;
        let raw = raw.lock().unwrap().clone();
        (got, raw)
    });

    let fs = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(
        addr, "/call/a",
    )))
    .await
    .unwrap();
    for (i, size) in sizes.iter().enumerate() {
        fs.send_audio(&pattern(*size, i as u8)).await.unwrap();
    }
    assert!(guarded(fs.close()).await.unwrap().echoed);

    let (got, raw) = server.await.unwrap();
    assert_eq!(got.len(), sizes.len());
    for (i, (msg, size)) in got.iter().zip(sizes).enumerate() {
        match msg {
            Message::Binary(b) => assert_eq!(b.as_ref(), pattern(size, i as u8).as_slice()),
            other => panic!("expected binary, got {other:?}"),
        }
    }

    // On the wire: FIN + binary, mask bit set, shortest length form, a fresh key
    // per frame.
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut wire = BytesMut::from(&raw[head_end..]);
    let mut masks = Vec::new();
    for size in sizes {
        let marker = wire[1] & 0x7F;
        let want_marker = match size {
            0..=125 => size as u8,
            126..=65535 => 126,
            _ => 127,
        };
        assert_eq!(marker, want_marker, "length form for {size} bytes");
        let frame = take_client_frame(&mut wire).expect("whole frame");
        assert!(frame.fin);
        assert_eq!(frame.opcode, opcode::BINARY);
        assert_eq!(frame.payload.len(), size);
        masks.push(frame.mask.expect("client frames are masked"));
    }
    masks.sort();
    masks.dedup();
    assert_eq!(masks.len(), sizes.len(), "a fresh mask per frame");
}

#[tokio::test]
async fn metadata_after_audio_with_paced_stream_and_heartbeat() {
    let metadata =
        r#"{"uuid":"3f2a","caller_id":"+33 1 23 45 67 89","called":"1000","name":"Zoë"}"#;
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut ws, _, _) = accept_ws(&listener).await;
        drain_until_close(&mut ws).await.0
    });

    let fs = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(
        addr,
        "/call/3f2a",
    )))
    .await
    .unwrap();
    let per_msg = bytes_per_message(8000, 1, 20);
    assert_eq!(per_msg, 320);
    // 5 full messages and a short tail of 100 bytes.
    let pcm = pattern(5 * per_msg + 100, 7);
    let plan = StreamPlan::new(per_msg, Duration::from_millis(20), true)
        .metadata_after(2, metadata)
        .heartbeat(Duration::from_millis(20));
    let report = guarded(stream_audio_with(fs.writer(), &pcm, &plan))
        .await
        .unwrap();
    assert_eq!(report.audio_messages, 6);
    assert_eq!(report.audio_bytes, pcm.len());
    assert!(report.metadata_sent);
    assert!(guarded(fs.close()).await.unwrap().echoed);

    let got = server.await.unwrap();
    // Heartbeats may fall anywhere; they are checked apart from the data order.
    let pings: Vec<_> = got
        .iter()
        .filter(|m| matches!(m, Message::Ping(_)))
        .collect();
    assert_eq!(pings.len(), report.heartbeats);
    assert!(pings
        .iter()
        .all(|m| matches!(m, Message::Ping(p) if p.as_ref() == b"ping")));
    let data: Vec<_> = got
        .into_iter()
        .filter(|m| !matches!(m, Message::Ping(_)))
        .collect();
    assert_eq!(data.len(), 7, "{data:?}");
    assert!(matches!(&data[2], Message::Text(t) if t.as_str() == metadata));
    let audio: Vec<u8> = data
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .flat_map(|(_, m)| match m {
            Message::Binary(b) => b.to_vec(),
            other => panic!("expected audio, got {other:?}"),
        })
        .collect();
    assert_eq!(audio, pcm);
    assert!(matches!(&data[6], Message::Binary(b) if b.len() == 100));
}

#[tokio::test]
async fn raw_frames_fragmented_and_one_mebibyte_text() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut ws, _, _) = accept_ws(&listener).await;
        drain_until_close(&mut ws).await.0
    });

    let fs = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(
        addr, "/call/f",
    )))
    .await
    .unwrap();
    fs.send_raw_frame(opcode::TEXT, false, b"hel", true)
        .await
        .unwrap();
    fs.send_raw_frame(opcode::CONTINUATION, false, b"lo ", true)
        .await
        .unwrap();
    fs.send_raw_frame(opcode::CONTINUATION, true, b"world", true)
        .await
        .unwrap();
    let big = "a".repeat(1 << 20);
    fs.send_text(&big).await.unwrap();
    assert!(guarded(fs.close()).await.unwrap().echoed);

    let got = server.await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(matches!(&got[0], Message::Text(t) if t.as_str() == "hello world"));
    assert!(matches!(&got[1], Message::Text(t) if t.len() == 1 << 20));
}

// ---------------------------------------------------------------------------
// Server -> client frames, full duplex
// ---------------------------------------------------------------------------

#[tokio::test]
async fn answers_server_ping_and_reads_pong_to_its_heartbeat() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut ws, _, _) = accept_ws(&listener).await;
        ws.send(Message::Ping(b"srv-1".to_vec().into()))
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let msg = ws.next().await.unwrap().unwrap();
            let is_our_pong = matches!(&msg, Message::Pong(p) if p.as_ref() == b"srv-1");
            got.push(msg);
            if is_our_pong {
                break;
            }
        }
        // Tell the client its Pong arrived, so it closes only after that.
        ws.send(Message::Text("pong-seen".into())).await.unwrap();
        got.extend(drain_until_close(&mut ws).await.0);
        got
    });

    let fs = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(
        addr, "/call/p",
    )))
    .await
    .unwrap();
    let (writer, mut reader) = fs.split();
    let (pong_seen_tx, pong_seen_rx) = tokio::sync::oneshot::channel();
    let reader_task = tokio::spawn(async move {
        let mut pong_seen_tx = Some(pong_seen_tx);
        let mut frames = Vec::new();
        while let Some(f) = reader.recv().await.unwrap() {
            if f == ServerFrame::Text("pong-seen".into()) {
                pong_seen_tx.take().unwrap().send(()).unwrap();
            }
            frames.push(f);
        }
        frames
    });

    writer.send_heartbeat().await.unwrap();
    // Close only once the server has our automatic Pong, as an event, not a delay.
    guarded(pong_seen_rx).await.unwrap();
    let outcome = guarded(writer.close()).await.unwrap();
    assert!(outcome.echoed);
    assert_eq!(outcome.code, Some(1000));

    let got = server.await.unwrap();
    assert!(
        got.iter()
            .any(|m| matches!(m, Message::Pong(p) if p.as_ref() == b"srv-1")),
        "server never got the Pong: {got:?}"
    );
    assert!(got
        .iter()
        .any(|m| matches!(m, Message::Ping(p) if p.as_ref() == b"ping")));

    let frames = guarded(reader_task).await.unwrap();
    assert!(frames.contains(&ServerFrame::Ping(b"srv-1".to_vec())));
    assert!(frames.contains(&ServerFrame::Pong(b"ping".to_vec())));
    assert_eq!(
        frames.last(),
        Some(&ServerFrame::Close(Some(1000), "Normal closure".into()))
    );
}

#[tokio::test]
async fn full_duplex_split_streams_while_reading_playback_in_select() {
    const MESSAGES: usize = 10;
    let (listener, addr) = listen().await;
    // Playback server: echoes every audio message back as a binary frame (like
    // a fork that writes L16 into the call).
    let server = tokio::spawn(async move {
        let (ws, _, _) = accept_ws(&listener).await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            // Anything else is ignored; on the client's Close, tungstenite queues
            // the echo itself and reading on flushes it.
            if let Message::Binary(b) = msg {
                tx.send(Message::Binary(b)).await.unwrap();
            }
        }
    });

    let fs = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(
        addr, "/call/d",
    )))
    .await
    .unwrap();
    let (writer, mut reader) = fs.split();
    let pcm = pattern(MESSAGES * 640, 3);

    // The reader is polled inside select! next to a fast ticker, so most recv()
    // futures are dropped before completing: every frame must still arrive
    // whole (recv is cancel-safe).
    let reader_task = tokio::spawn(async move {
        let mut played = Vec::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        let mut cancelled = 0usize;
        loop {
            tokio::select! {
                frame = reader.recv() => match frame.unwrap() {
                    Some(ServerFrame::Binary(b)) => played.extend_from_slice(&b),
                    Some(ServerFrame::Close(code, reason)) => return (played, code, reason, cancelled),
                    Some(other) => panic!("unexpected {other:?}"),
                    None => panic!("EOF before Close"),
                },
                _ = ticker.tick() => cancelled += 1,
            }
        }
    });

    let report = guarded(stream_audio(
        &writer,
        &pcm,
        640,
        Duration::from_millis(20),
        true,
    ))
    .await
    .unwrap();
    assert_eq!(report.audio_messages, MESSAGES);
    let outcome = guarded(writer.close()).await.unwrap();
    assert!(outcome.echoed);
    assert_eq!(outcome.code, Some(1000));
    assert_eq!(outcome.reason, "Normal closure");
    assert!(matches!(
        writer.send_audio(&[0; 4]).await,
        Err(FakeFsError::Closing)
    ));

    let (played, code, reason, _cancelled) = guarded(reader_task).await.unwrap();
    assert_eq!(played, pcm, "playback intact despite cancelled recv()s");
    assert_eq!((code, reason.as_str()), (Some(1000), "Normal closure"));
    server.await.unwrap();
}

#[tokio::test]
async fn server_frames_after_101_fragments_and_server_close_are_handled() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        // First frame in the same TCP write as the 101: the client must keep the
        // bytes that follow the header block.
        let mut first = server_frame(opcode::TEXT, true, b"early");
        // A fragmented binary message with a Ping between the fragments
        // (RFC 6455 allows control frames there).
        first.extend(server_frame(opcode::BINARY, false, b"\x01\x02"));
        first.extend(server_frame(opcode::PING, true, b"mid"));
        first.extend(server_frame(opcode::CONTINUATION, false, b"\x03"));
        first.extend(server_frame(opcode::CONTINUATION, true, b"\x04\x05"));
        first.extend(server_frame(
            opcode::CLOSE,
            true,
            &close_body(1001, "going away"),
        ));
        let (mut tcp, mut buf) = raw_accept(&listener, &first).await;
        let mut frames = Vec::new();
        while let Some(f) = raw_read_client_frame(&mut tcp, &mut buf).await {
            frames.push(f);
        }
        frames
    });

    let mut fs = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(
        addr, "/call/r",
    )))
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(guarded(fs.recv()).await.unwrap().unwrap());
    }
    assert_eq!(
        got,
        vec![
            ServerFrame::Text("early".into()),
            ServerFrame::Ping(b"mid".to_vec()),
            ServerFrame::Binary(vec![1, 2, 3, 4, 5]),
            ServerFrame::Close(Some(1001), "going away".into()),
        ]
    );
    // The server closed first, the fake echoed already: a later close() reports
    // the server's Close without waiting.
    let outcome = guarded(fs.close()).await.unwrap();
    assert!(outcome.echoed);
    assert_eq!(outcome.code, Some(1001));

    let frames = server.await.unwrap();
    let summary: Vec<(bool, u8, Vec<u8>, bool)> = frames
        .into_iter()
        .map(|f| (f.fin, f.opcode, f.payload, f.mask.is_some()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (true, opcode::PONG, b"mid".to_vec(), true),
            (true, opcode::CLOSE, close_body(1001, "going away"), true),
        ],
        "Pong with the Ping's payload, then the Close echoed with the server's code"
    );
}

#[tokio::test]
async fn masked_server_frame_is_a_protocol_error() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let masked = encode_frame(opcode::TEXT, true, b"nope", Some([1, 2, 3, 4]));
        let (tcp, _) = raw_accept(&listener, &masked).await;
        tcp
    });
    let mut fs = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(addr, "/")))
        .await
        .unwrap();
    let err = guarded(fs.recv()).await.unwrap_err();
    assert!(
        matches!(err, FakeFsError::Protocol(ref m) if m.contains("masked")),
        "{err}"
    );
    drop(server.await.unwrap());
}

// ---------------------------------------------------------------------------
// Close and abort
// ---------------------------------------------------------------------------

#[tokio::test]
async fn close_never_echoed_reports_not_echoed() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut tcp, mut buf) = raw_accept(&listener, &[]).await;
        // Read the Close, never answer it, and wait for the client to hang up.
        let mut close = None;
        while let Some(frame) = raw_read_client_frame(&mut tcp, &mut buf).await {
            if frame.opcode == opcode::CLOSE {
                close = Some(frame.payload);
            }
        }
        close
    });

    let fs = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(
        addr, "/call/x",
    )))
    .await
    .unwrap();
    let outcome = guarded(fs.close()).await.unwrap();
    assert!(!outcome.echoed);
    assert_eq!(outcome.code, None);

    // The client hung up by itself (the server task ended on EOF).
    let close = guarded(server).await.unwrap();
    assert_eq!(close, Some(close_body(1000, "Normal closure")));
}

#[tokio::test]
async fn abort_drops_the_connection_without_close() {
    for mode in [AbortMode::Fin, AbortMode::Reset] {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let (mut ws, _, _) = accept_ws(&listener).await;
            let mut saw_close = false;
            let mut ended_with_error = false;
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(Message::Close(_)) => saw_close = true,
                    Ok(_) => {}
                    Err(WsError::Protocol(_)) | Err(WsError::Io(_)) => {
                        ended_with_error = true;
                        break;
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            (saw_close, ended_with_error)
        });
        let fs = guarded(FakeFreeSwitch::connect(&ConnectOptions::new(
            addr, "/call/k",
        )))
        .await
        .unwrap();
        fs.send_audio(&[0; 320]).await.unwrap();
        fs.abort(mode).await.unwrap();
        let (saw_close, ended_with_error) = guarded(server).await.unwrap();
        assert!(!saw_close, "{mode:?}");
        assert!(ended_with_error, "{mode:?}: no closing handshake");
    }
}
