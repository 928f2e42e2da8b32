//! `voicebridge call` end to end against a loopback WebSocket server that records what
//! arrives: the handshake, the metadata, paced frames, playback decoding, both closes.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use voicebridge::audio::Channels;

use super::args::{BearerToken, CallArgs, CallError};
use super::run;
use super::summary::{CallSummary, ClosedBy};
use super::wav::read_caller_wav;
use super::wav::tests::write_wav;
use crate::client::wire::tests::{l16_bytes, stream_audio};

/// A never-zero test signal, so echoed audio can be told apart from inserted silence.
fn test_signal(n: usize) -> Vec<i16> {
    (0..n).map(|i| ((i % 200) as i16 + 1) * 50).collect()
}

#[derive(Debug, Default)]
struct Seen {
    uri: String,
    origin: Option<String>,
    authorization: Option<String>,
    protocol: Option<String>,
    texts: Vec<String>,
    binary_frames: usize,
    binary_bytes: usize,
    binary_before_first_text: Option<usize>,
    close: Option<u16>,
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Accepts one call. `echo`: send every binary frame back; `on_metadata`: messages to
/// send once the first text frame arrives; `refuse`: reject the upgrade with this.
async fn serve_one(
    listener: TcpListener,
    echo: bool,
    on_metadata: Vec<Message>,
    refuse: Option<(u16, &'static str)>,
) -> Seen {
    let (tcp, _) = listener.accept().await.unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let slot = seen.clone();
    // The error type is tungstenite's `Callback` contract, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let mut s = slot.lock().unwrap();
        s.uri = req.uri().to_string();
        s.origin = header(req, "origin");
        s.authorization = header(req, "authorization");
        s.protocol = header(req, "sec-websocket-protocol");
        match refuse {
            Some((status, body)) => Err(http::Response::builder()
                .status(status)
                .body(Some(body.to_string()))
                .unwrap()),
            None => Ok(resp),
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return Arc::try_unwrap(seen).unwrap().into_inner().unwrap();
    };
    let mut on_metadata = Some(on_metadata);
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(b) => {
                {
                    let mut s = seen.lock().unwrap();
                    s.binary_frames += 1;
                    s.binary_bytes += b.len();
                }
                if echo {
                    ws.send(Message::Binary(b)).await.unwrap();
                }
            }
            Message::Text(t) => {
                {
                    let mut s = seen.lock().unwrap();
                    let n = s.binary_frames;
                    s.binary_before_first_text.get_or_insert(n);
                    s.texts.push(t.to_string());
                }
                for m in on_metadata.take().unwrap_or_default() {
                    ws.send(m).await.unwrap();
                }
            }
            Message::Close(f) => {
                seen.lock().unwrap().close = f.map(|f| u16::from(f.code));
            }
            _ => {}
        }
    }
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, format!("127.0.0.1:{}", addr.port()))
}

#[tokio::test]
async fn echo_call_sends_paced_frames_and_records_the_echo() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    let out = dir.path().join("out.wav");
    let input = test_signal(1600); // 200 ms at 8 kHz
    write_wav(&wav, 8000, 1, std::slice::from_ref(&input));

    let (l, addr) = listener().await;
    let server = tokio::spawn(serve_one(l, true, vec![], None));
    let mut args = CallArgs::new(format!("ws://{addr}/call/test-uuid"), &wav);
    args.out = Some(out.clone());
    args.tail_secs = Some(0.0);
    args.token = Some(BearerToken::new("tok"));
    let summary = run(&args).await.unwrap();
    let seen = server.await.unwrap();

    // The handshake and metadata as the module sends them.
    assert_eq!(seen.uri, "/call/test-uuid?rate=8000&channels=mono");
    assert_eq!(
        seen.origin.as_deref(),
        Some(format!("http://{addr}").as_str())
    );
    assert_eq!(seen.authorization.as_deref(), Some("Bearer tok"));
    assert_eq!(seen.protocol, None);
    let meta: serde_json::Value = serde_json::from_str(&seen.texts[0]).unwrap();
    assert_eq!(meta["uuid"], "test-uuid");
    assert_eq!(seen.close, Some(1000));

    // 200 ms in 20 ms frames.
    assert_eq!(summary.frames_sent, 10);
    assert_eq!(summary.bytes_sent, 3200);
    assert_eq!(seen.binary_frames, 10);
    assert_eq!(seen.binary_bytes, 3200);
    assert!(summary.metadata_sent);
    assert_eq!(summary.call_id, "test-uuid");
    assert_eq!(summary.format.rate, 8000);

    // Every echoed frame came back and was heard, in order.
    assert_eq!(summary.frames_received, 10);
    assert_eq!(summary.bytes_received, 3200);
    assert!(summary.first_audio_latency_ms.is_some());
    assert_eq!(summary.close.by, ClosedBy::Client);
    assert_eq!(summary.close.echoed, Some(true));
    assert_eq!(summary.close.echo_code, Some(1000));
    let recorded = read_caller_wav(&out).unwrap();
    assert_eq!(recorded.rate, 8000);
    let heard: Vec<i16> = recorded.samples.into_iter().filter(|&s| s != 0).collect();
    assert_eq!(heard, input);
    assert_eq!(summary.out_ms, recorded_len_ms(&out));

    // The JSON form parses back.
    let json = serde_json::to_string(&summary).unwrap();
    assert!(!json.contains("tok\""));
    let _: CallSummary = serde_json::from_str(&json).unwrap();
}

fn recorded_len_ms(path: &Path) -> u64 {
    let r = hound::WavReader::open(path).unwrap();
    u64::from(r.duration()) * 1000 / u64::from(r.spec().sample_rate)
}

#[tokio::test]
async fn playback_messages_are_decoded_counted_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    let out = dir.path().join("out.wav");
    write_wav(&wav, 8000, 1, &[vec![0; 1600]]);

    let greeting = vec![1234i16; 160];
    let extras = vec![
        Message::Ping(Bytes::from_static(b"hb")),
        Message::text(r#"{"type":"clearAudio"}"#),
        Message::text(stream_audio("raw", 8000, &l16_bytes(&greeting))),
        Message::text(stream_audio("raw", 24000, &l16_bytes(&[1, 2]))),
        Message::text(
            r#"{"type":"streamAudio","data":{"audioDataType":"raw","sampleRate":8000,"audioData":"%%"}}"#,
        ),
        Message::text(r#"{"type":"transcript","text":"hello"}"#),
    ];
    let (l, addr) = listener().await;
    let server = tokio::spawn(serve_one(l, false, extras, None));
    let mut args = CallArgs::new(format!("ws://{addr}/call/c2"), &wav);
    args.out = Some(out.clone());
    args.tail_secs = Some(0.0);
    args.channels = Some(Channels::Stereo);
    args.metadata_after_frames = 2;
    let summary = run(&args).await.unwrap();
    let seen = server.await.unwrap();

    assert_eq!(seen.uri, "/call/c2?rate=8000&channels=stereo");
    assert_eq!(seen.binary_bytes, 10 * 640, "stereo doubles the frame");
    assert_eq!(summary.metadata_after_frames, Some(2));
    assert_eq!(seen.binary_before_first_text, Some(2));
    assert!(summary.metadata_sent);

    assert_eq!(summary.pings_received, 1);
    assert_eq!(summary.text_messages_received, 5);
    assert_eq!(summary.stream_audio_messages, 3);
    assert_eq!(summary.clear_audio_count, 1);
    assert_eq!(summary.other_text_messages, 1);
    assert_eq!(
        summary.last_other_texts,
        vec![r#"{"type":"transcript","text":"hello"}"#.to_string()]
    );
    assert_eq!(summary.raw_rate_mismatches, 1);
    assert_eq!(summary.bad_playback_messages, 1);
    assert_eq!(summary.playback_errors.len(), 2);
    assert_eq!(summary.frames_received, 1);
    assert_eq!(summary.bytes_received, 320);
    assert_eq!(summary.audio_received_ms, 20);

    let recorded = read_caller_wav(&out).unwrap();
    let heard: Vec<i16> = recorded.samples.into_iter().filter(|&s| s != 0).collect();
    assert_eq!(heard, greeting);
}

#[tokio::test]
async fn server_close_is_reported_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    // Long enough that the call cannot end on its own before the server's Close.
    write_wav(&wav, 8000, 1, &[vec![0; 8000 * 5]]);
    let bye = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }));
    let (l, addr) = listener().await;
    let server = tokio::spawn(serve_one(l, false, vec![bye], None));
    let args = CallArgs::new(format!("ws://{addr}/call/x"), &wav);
    let summary = run(&args).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(summary.close.by, ClosedBy::Server);
    assert_eq!(summary.close.code, Some(1000));
    assert_eq!(summary.close.reason.as_deref(), Some("bye"));
    assert_eq!(seen.close, Some(1000), "our automatic Close reply");
    assert_eq!(seen.binary_before_first_text, Some(0), "metadata first");
}

#[tokio::test]
async fn refused_upgrade_names_status_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    write_wav(&wav, 8000, 1, &[vec![0; 160]]);
    let (l, addr) = listener().await;
    let server = tokio::spawn(serve_one(l, false, vec![], Some((401, "bad token"))));
    let mut args = CallArgs::new(format!("ws://{addr}/call/x?token=s3cret"), &wav);
    args.tail_secs = Some(0.0);
    let err = run(&args).await.unwrap_err();
    server.await.unwrap();
    match &err {
        CallError::Refused { status, body, .. } => {
            assert_eq!(*status, 401);
            assert_eq!(body, "bad token");
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("401") && msg.contains("bad token"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
}

#[tokio::test]
async fn wav_at_the_wrong_rate_says_how_to_convert() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    write_wav(&wav, 16000, 1, &[vec![0; 320]]);
    // Nothing listens there: the check must fail before connecting.
    let mut args = CallArgs::new("ws://127.0.0.1:9/call/x", &wav);
    args.rate = Some(8000);
    let err = run(&args).await.unwrap_err();
    assert!(matches!(err, CallError::RateMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("sox") && msg.contains("-r 8000"), "{msg}");
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    write_wav(&wav, 8000, 1, &[vec![0; 160]]);
    // Bind then drop, so the port is (almost certainly) closed.
    let (l, addr) = listener().await;
    drop(l);
    let args = CallArgs::new(format!("ws://{addr}/call/x"), &wav);
    let err = run(&args).await.unwrap_err();
    assert!(matches!(err, CallError::Connect { .. }), "{err:?}");
}
