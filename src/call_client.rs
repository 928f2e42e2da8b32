//! `voicebridge call`: a command-line stand-in for FreeSWITCH's `mod_audio_stream`.
//!
//! FreeSWITCH cannot be installed on our machines, so admins (to check a running daemon)
//! and our tests (to exercise the server end to end) need a client that behaves like the
//! module: the same handshake (no subprotocol, `Origin`, optional bearer token), the
//! metadata text frame (possibly late), L16 audio paced by a real-time media clock,
//! pings, and the module's closing handshake (Close 1000 "Normal closure", wait 1 s).
//! See `docs/protocols/freeswitch-mod_audio_stream.md`, sections 2–4.
//!
//! It also plays the part of the caller's ear: playback coming back from the daemon is
//! fed through a simulation of FreeSWITCH's playback buffer, driven by the *same* media
//! clock as the sender, and written to a WAV. The output is therefore time-aligned with
//! the input, and barge-in cuts, gaps and wrong-rate audio are audible in it.
//!
//! The pure parts (WAV reading, frame encoding, the playback buffer, the energy
//! endpoint, `streamAudio` decoding, URL handling) are small functions with unit tests;
//! [`run`] only wires them to the socket and the clock.

pub mod tail;

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Uri};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::audio::{Channels, Codec};

/// Default milliseconds of audio per binary message (the module's `STREAM_BUFFER_SIZE` default).
pub const DEFAULT_FRAME_MS: u32 = 20;
/// The module gives up if TCP connect + upgrade take longer than this (doc §2).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the module waits for the server's Close after sending its own (doc §3).
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Extra wait after [`CLOSE_WAIT`], only to tell a late Close echo from none at all.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The module refuses metadata longer than this (doc §1).
pub const MAX_METADATA_BYTES: usize = 8192;
/// Playout granularity of FreeSWITCH's media clock (ptime).
const PLAYOUT_MS: u32 = 20;
/// A playback gap longer than this is taken as the end of a response, not an underrun:
/// the protocol has no end-of-response marker, so this is the heuristic boundary.
pub const RESPONSE_END_GAP_MS: u32 = 500;
/// Energy endpoint: frames at or above this level count as speech.
pub const SPEECH_DBFS: f64 = -45.0;
/// Energy endpoint: minimum speech run, then minimum silence run, in milliseconds.
pub const ENDPOINT_RUN_MS: u32 = 300;
/// How many "other" text frames (and playback errors) the summary keeps.
const KEEP_LAST: usize = 5;
/// Longest text kept per message in the summary, so a huge frame cannot flood it.
const KEEP_CHARS: usize = 300;

/// A bearer token. Its `Debug` never shows the value, so `{:?}` of [`CallArgs`] is safe to log.
#[derive(Clone)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(token: impl Into<String>) -> Self {
        BearerToken(token.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for BearerToken {
    fn from(s: String) -> Self {
        BearerToken(s)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

fn parse_channels(s: &str) -> Result<Channels, String> {
    Channels::parse(s)
        .ok_or_else(|| format!("unknown channel layout {s:?}: use mono, mixed or stereo"))
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    Codec::parse(s).ok_or_else(|| format!("unknown codec {s:?}: use L16, PCMU or PCMA"))
}

/// Place a test call to a running voicebridge, the way FreeSWITCH's mod_audio_stream would.
#[derive(clap::Args, Debug, Clone)]
pub struct CallArgs {
    /// WebSocket URL as given to `uuid_audio_stream ... start`, e.g.
    /// ws://127.0.0.1:9090/call/<call-uuid>. `rate`/`channels` query keys are added when
    /// missing (as the shipped dialplan does); the last path segment is the call id.
    pub url: String,

    /// Caller audio: a 16-bit PCM WAV, mono or stereo (the left channel is the caller).
    #[arg(long, value_name = "IN.WAV")]
    pub wav: PathBuf,

    /// Record what the caller would hear (mono, call rate, 16-bit), time-aligned with --wav.
    #[arg(long, value_name = "OUT.WAV")]
    pub out: Option<PathBuf>,

    /// Sample rate on the wire [default: the URL's `rate`, else the WAV's rate]. The WAV
    /// must already be at this rate (no resampling yet).
    #[arg(long)]
    pub rate: Option<u32>,

    /// Channel layout on the wire: mono, mixed or stereo (caller left, silence right)
    /// [default: the URL's `channels`, else mono].
    #[arg(long, value_parser = parse_channels)]
    pub channels: Option<Channels>,

    /// Audio codec on the wire: L16 (what mod_audio_stream sends), PCMU or PCMA (8000 Hz
    /// only) [default: the URL's `codec`, else L16]. Also how binary playback is decoded.
    #[arg(long, value_parser = parse_codec)]
    pub codec: Option<Codec>,

    /// Metadata text frame, sent verbatim [default:
    /// {"uuid":"<call id>","caller_id":"voicebridge-call","called":"test"}].
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,

    /// Send the metadata after this many audio frames instead of before the first one
    /// (the module can send it late).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub metadata_after_frames: u64,

    /// Never send the metadata (the module's known race where it is lost).
    #[arg(long, conflicts_with_all = ["metadata", "metadata_after_frames"])]
    pub no_metadata: bool,

    /// Milliseconds of audio per binary message (the module's STREAM_BUFFER_SIZE).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_FRAME_MS)]
    pub frame_ms: u32,

    /// Seconds of silence sent after the WAV ends, exactly [default: until the reply has
    /// finished playing and nothing played for 3 s, at most 60 s after the WAV].
    #[arg(long, value_name = "SECS", conflicts_with = "tail_ms")]
    pub tail_secs: Option<f64>,

    /// The same as `--tail-secs`, in milliseconds (for scripts).
    #[arg(long, value_name = "MS")]
    pub tail_ms: Option<u64>,

    /// Bearer token sent as `Authorization: Bearer <T>` (the module's STREAM_EXTRA_HEADERS).
    /// Prefer the environment variable: a command-line token is visible in `ps`.
    #[arg(
        long,
        value_name = "T",
        env = "VOICEBRIDGE_CALL_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<BearerToken>,

    /// Send a ping (payload "ping") every N seconds (the module's STREAM_HEART_BEAT).
    #[arg(long, value_name = "N")]
    pub heartbeat_secs: Option<u64>,

    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

impl CallArgs {
    /// The same defaults as the command line, for tests and other callers.
    pub fn new(url: impl Into<String>, wav: impl Into<PathBuf>) -> Self {
        CallArgs {
            url: url.into(),
            wav: wav.into(),
            out: None,
            rate: None,
            channels: None,
            codec: None,
            metadata: None,
            metadata_after_frames: 0,
            no_metadata: false,
            frame_ms: DEFAULT_FRAME_MS,
            tail_secs: None,
            tail_ms: None,
            token: None,
            heartbeat_secs: None,
            json: false,
        }
    }
}

/// Why a call could not be placed. Problems *during* a call (dropped connection, server
/// bugs in playback) are not errors: they are reported in the [`CallSummary`].
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("cannot read WAV {}: {source}", path.display())]
    WavRead { path: PathBuf, source: hound::Error },
    #[error("unsupported WAV {}: {reason}", path.display())]
    WavFormat { path: PathBuf, reason: String },
    #[error(
        "{} is {wav_rate} Hz but the call rate is {rate} Hz; resampling is not supported yet, \
         convert it first, e.g. `sox {} -r {rate} converted.wav`",
        path.display(), path.display()
    )]
    RateMismatch {
        path: PathBuf,
        wav_rate: u32,
        rate: u32,
    },
    #[error("cannot write WAV {}: {source}", path.display())]
    WavWrite { path: PathBuf, source: hound::Error },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "no WebSocket upgrade from {url} within {} ms; mod_audio_stream would give up on this call",
        HANDSHAKE_TIMEOUT.as_millis()
    )]
    HandshakeTimeout { url: String },
    #[error("{url} refused the upgrade: HTTP {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
}

/// The wire format of the call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FormatSummary {
    pub codec: String,
    pub rate: u32,
    pub channels: String,
    pub frame_ms: u32,
}

/// Who started the closing handshake.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// We sent Close (end of the WAV + tail, or Ctrl-C), like a hangup.
    Client,
    /// The server sent Close first.
    Server,
    /// The connection ended without any Close frame (reset, EOF, protocol error).
    None,
}

/// How the call ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CloseSummary {
    pub by: ClosedBy,
    /// Code of the first Close frame (ours when `by` is `client`).
    pub code: Option<u16>,
    pub reason: Option<String>,
    /// Client close only: the server answered our Close at all (waited up to 2 s).
    pub echoed: Option<bool>,
    /// Client close only: it answered within the 1 s the module waits.
    pub echoed_within_1s: Option<bool>,
    /// Client close only: the server's Close code.
    pub echo_code: Option<u16>,
    pub echo_ms: Option<u64>,
    /// Transport error that ended the call, if any.
    pub error: Option<String>,
}

/// Everything measured during a call; `--json` prints it as one object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallSummary {
    pub call_id: String,
    /// The URL used, with token values and credentials removed.
    pub url: String,
    pub format: FormatSummary,
    /// Wall time from connecting to the end of the closing handshake.
    pub duration_ms: u64,
    /// The call was ended early by Ctrl-C.
    pub interrupted: bool,
    pub metadata_sent: bool,
    /// Audio frames sent before the metadata (0 = metadata first).
    pub metadata_after_frames: Option<u64>,
    /// Binary audio messages sent (WAV + silence tail) and their payload bytes.
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Of `frames_sent`, how many were the silence tail.
    pub tail_frames_sent: u64,
    pub audio_sent_ms: u64,
    /// Playback audio messages (binary frames + decodable streamAudio) and payload bytes.
    pub frames_received: u64,
    pub bytes_received: u64,
    pub audio_received_ms: u64,
    /// All TEXT frames received.
    pub text_messages_received: u64,
    pub stream_audio_messages: u64,
    pub clear_audio_count: u64,
    /// TEXT frames that are neither streamAudio nor clearAudio, and the last few of them.
    pub other_text_messages: u64,
    pub last_other_texts: Vec<String>,
    /// From the first audio frame sent to the first playback audio received.
    pub first_audio_latency_ms: Option<u64>,
    /// Where the caller's first utterance ends in the WAV (energy endpoint), if found.
    pub speech_end_offset_ms: Option<u64>,
    /// From sending that endpoint to the first playback audio received after it.
    pub speech_end_to_first_audio_ms: Option<u64>,
    /// Responses heard (playback runs separated by more than RESPONSE_END_GAP_MS or a clear).
    pub responses: u64,
    /// Times the simulated buffer ran dry mid-response and then resumed.
    pub underrun_gaps: u64,
    pub underrun_max_ms: u64,
    /// `raw` streamAudio at a rate other than the call rate (the `.r24` trap): a server bug.
    pub raw_rate_mismatches: u64,
    /// Other undecodable playback (bad base64, bad JSON, unsupported type, odd length).
    pub bad_playback_messages: u64,
    /// The first few playback errors, as messages.
    pub playback_errors: Vec<String>,
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub pings_received: u64,
    pub out_wav: Option<String>,
    pub out_ms: u64,
    pub close: CloseSummary,
}

// ---------------------------------------------------------------------------------------
// URL handling
// ---------------------------------------------------------------------------------------

/// Where and how to connect, derived from the URL and the options.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    /// The URL to request (with any added query keys). May contain a token: never print.
    url: String,
    /// Safe to print.
    display_url: String,
    call_id: String,
    origin: String,
    url_rate: Option<u32>,
    url_channels: Option<Channels>,
    url_codec: Option<Codec>,
}

fn decode_component(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Removes the URL's secret parts (and the URL itself) from an error text that came
/// from a library, which may quote the URI it was given.
fn scrub_secrets(text: &str, url: &str) -> String {
    crate::redact::scrub(text, url)
}

/// Parses the URL, reads the format keys it carries and adds the missing ones.
///
/// `rate`/`channels`/`codec` are the wire format after resolution; keys already in the
/// URL are kept verbatim (resolution makes sure they agree).
fn prepare_target(
    raw: &str,
    rate: u32,
    channels: Channels,
    codec: Codec,
) -> Result<Target, CallError> {
    let mut target = parse_target(raw)?;
    let mut extra = Vec::new();
    if target.url_rate.is_none() {
        extra.push(format!("rate={rate}"));
    }
    if target.url_channels.is_none() {
        extra.push(format!("channels={}", channels.name()));
    }
    // The server assumes L16 without a hint, so only a non-default codec must be stated.
    if target.url_codec.is_none() && codec != Codec::L16 {
        extra.push(format!("codec={}", codec.name()));
    }
    if !extra.is_empty() {
        let joined = extra.join("&");
        target.url = match target.url.split_once('?') {
            Some((_, "")) => format!("{}{joined}", target.url),
            Some(_) => format!("{}&{joined}", target.url),
            None => format!("{}?{joined}", target.url),
        };
    }
    target.display_url = crate::redact::url(&target.url);
    Ok(target)
}

/// Parses the URL as given; format keys are read but nothing is added yet.
fn parse_target(raw: &str) -> Result<Target, CallError> {
    let invalid = |reason: &str| CallError::InvalidUrl {
        url: crate::redact::url(raw),
        reason: reason.to_string(),
    };
    let uri: Uri = raw
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = uri.scheme_str().unwrap_or("");
    let default_port = match scheme {
        "ws" => 80,
        "wss" => 443,
        _ => return Err(invalid("the scheme must be ws:// or wss://")),
    };
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let port = uri.port_u16().unwrap_or(default_port);
    let authority = uri.authority().map_or(host, |a| a.as_str());

    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /<route>/<call-uuid>: with a single segment it is the route, so there is no id.
    let call_id = if segments.len() >= 2 {
        decode_component(segments[segments.len() - 1])
    } else {
        uuid::Uuid::new_v4().to_string()
    };

    let mut url_rate = None;
    let mut url_channels = None;
    let mut url_codec = None;
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode_component(v);
            match decode_component(k).as_str() {
                "rate" => {
                    let r: u32 = v
                        .parse()
                        .map_err(|_| invalid(&format!("rate={v} is not a number")))?;
                    url_rate = Some(r);
                }
                "channels" => {
                    url_channels =
                        Some(Channels::parse(&v).ok_or_else(|| invalid(&format!("channels={v}")))?);
                }
                "codec" => {
                    url_codec =
                        Some(Codec::parse(&v).ok_or_else(|| invalid(&format!("codec={v}")))?);
                }
                _ => {}
            }
        }
    }
    let url = match uri.query() {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    };
    Ok(Target {
        display_url: crate::redact::url(&url),
        url,
        call_id,
        origin: format!("http://{host}:{port}"),
        url_rate,
        url_channels,
        url_codec,
    })
}

// ---------------------------------------------------------------------------------------
// WAV input and frame encoding
// ---------------------------------------------------------------------------------------

/// The caller's side of the call, read from the input WAV.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerAudio {
    pub rate: u32,
    /// Mono samples (the left channel of a stereo file).
    pub samples: Vec<i16>,
}

/// Reads a 16-bit PCM WAV, keeping the first (left) channel as the caller.
pub fn read_caller_wav(path: &Path) -> Result<CallerAudio, CallError> {
    let reader = hound::WavReader::open(path).map_err(|source| CallError::WavRead {
        path: path.to_path_buf(),
        source,
    })?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        let kind = match spec.sample_format {
            hound::SampleFormat::Int => "integer",
            hound::SampleFormat::Float => "float",
        };
        return Err(CallError::WavFormat {
            path: path.to_path_buf(),
            reason: format!(
                "{}-bit {kind} samples; 16-bit PCM is needed (e.g. `sox in.wav -b 16 -e signed-integer out.wav`)",
                spec.bits_per_sample
            ),
        });
    }
    let channels = usize::from(spec.channels);
    if !(1..=2).contains(&channels) {
        return Err(CallError::WavFormat {
            path: path.to_path_buf(),
            reason: format!("{channels} channels; mono or stereo is needed"),
        });
    }
    let mut samples = Vec::with_capacity(reader.len() as usize / channels);
    for (i, s) in reader.into_samples::<i16>().enumerate() {
        let s = s.map_err(|source| CallError::WavRead {
            path: path.to_path_buf(),
            source,
        })?;
        if i % channels == 0 {
            samples.push(s);
        }
    }
    Ok(CallerAudio {
        rate: spec.sample_rate,
        samples,
    })
}

/// Encodes one message of caller samples the way the module lays them out on the wire.
pub fn encode_frame(caller: &[i16], channels: Channels, codec: Codec) -> Vec<u8> {
    // Stereo's right channel is "what is played to the caller"; we send silence there.
    let per_sample = channels.count();
    let mut out = Vec::with_capacity(caller.len() * per_sample * codec.bytes_per_sample());
    for &s in caller {
        for ch in 0..per_sample {
            let v = if ch == 0 { s } else { 0 };
            match codec {
                Codec::L16 => out.extend_from_slice(&v.to_le_bytes()),
                Codec::Pcmu => out.push(audio_codec_algorithms::encode_ulaw(v)),
                Codec::Pcma => out.push(audio_codec_algorithms::encode_alaw(v)),
            }
        }
    }
    out
}

/// Decodes L16 little-endian bytes; an odd length is a sender bug, reported as such.
pub fn decode_l16(bytes: &[u8]) -> Result<Vec<i16>, PlaybackError> {
    if !bytes.len().is_multiple_of(2) {
        return Err(PlaybackError::OddLength(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

/// Decodes a playback payload in the given codec to linear samples.
pub fn decode_payload(bytes: &[u8], codec: Codec) -> Result<Vec<i16>, PlaybackError> {
    match codec {
        Codec::L16 => decode_l16(bytes),
        Codec::Pcmu => Ok(bytes
            .iter()
            .map(|&b| audio_codec_algorithms::decode_ulaw(b))
            .collect()),
        Codec::Pcma => Ok(bytes
            .iter()
            .map(|&b| audio_codec_algorithms::decode_alaw(b))
            .collect()),
    }
}

// ---------------------------------------------------------------------------------------
// Energy endpoint
// ---------------------------------------------------------------------------------------

fn frame_dbfs(frame: &[i16]) -> f64 {
    if frame.is_empty() {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / frame.len() as f64).sqrt();
    if rms == 0.0 {
        f64::NEG_INFINITY
    } else {
        20.0 * (rms / 32768.0).log10()
    }
}

/// Sample index where the caller's first utterance ends: the first 20 ms frame of the
/// first ≥ 300 ms silence (< −45 dBFS) that follows a ≥ 300 ms run of speech.
///
/// Deliberately crude (energy only): it is a reference point for latency, not a VAD.
pub fn speech_end_sample(samples: &[i16], rate: u32) -> Option<usize> {
    let frame = (rate as usize * PLAYOUT_MS as usize) / 1000;
    if frame == 0 {
        return None;
    }
    let run_frames = (ENDPOINT_RUN_MS / PLAYOUT_MS) as usize;
    let mut speech_run = 0usize;
    let mut had_speech = false;
    let mut silence_start: Option<usize> = None;
    let mut silence_run = 0usize;
    for (i, f) in samples.chunks_exact(frame).enumerate() {
        let speech = frame_dbfs(f) >= SPEECH_DBFS;
        if speech {
            speech_run += 1;
            if speech_run >= run_frames {
                had_speech = true;
            }
            silence_run = 0;
            silence_start = None;
        } else {
            speech_run = 0;
            if had_speech {
                silence_start.get_or_insert(i);
                silence_run += 1;
                if silence_run >= run_frames {
                    return silence_start.map(|s| s * frame);
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Playback: streamAudio decoding and the simulated FreeSWITCH buffer
// ---------------------------------------------------------------------------------------

/// A playback message the simulation cannot play, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlaybackError {
    #[error(
        "streamAudio raw at {got} Hz on a {call} Hz call: FreeSWITCH plays raw files by \
         extension (.r{}), so this is wrong-rate or wrong-width audio (the .r24 trap)",
        got / 1000
    )]
    RawRateMismatch { got: u32, call: u32 },
    #[error("streamAudio audioData is not valid base64: {0}")]
    BadBase64(String),
    #[error("malformed streamAudio message: {0}")]
    Malformed(String),
    #[error("streamAudio audioDataType {0:?} is not simulated (raw, pcmu and pcma are)")]
    Unsupported(String),
    #[error("streamAudio {kind} on a {call} Hz call: G.711 is 8000 Hz only")]
    G711Rate { kind: String, call: u32 },
    #[error("L16 playback payload of odd length ({0} bytes)")]
    OddLength(usize),
}

/// A decoded `streamAudio` message.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAudio {
    pub audio_data_type: String,
    pub sample_rate: u32,
    /// Bytes of the decoded payload (before conversion to samples).
    pub payload_bytes: usize,
    pub samples: Vec<i16>,
}

/// What a TEXT frame from the server means to the caller's side.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerText {
    StreamAudio(StreamAudio),
    /// A `streamAudio` message that cannot be played.
    BadAudio(PlaybackError),
    /// `{"type":"clearAudio"}`: barge-in, drop what is buffered.
    ClearAudio,
    /// Anything else (transcripts, events, non-JSON).
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamAudioData {
    audio_data_type: String,
    sample_rate: Option<u32>,
    audio_data: String,
}

/// Interprets a TEXT frame from the server; never panics on bad input.
pub fn parse_server_text(text: &str, call_rate: u32) -> ServerText {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return ServerText::Other;
    };
    match value.get("type").and_then(|t| t.as_str()) {
        Some("clearAudio") => ServerText::ClearAudio,
        Some("streamAudio") => match decode_stream_audio(&value, call_rate) {
            Ok(a) => ServerText::StreamAudio(a),
            Err(e) => ServerText::BadAudio(e),
        },
        _ => ServerText::Other,
    }
}

fn decode_stream_audio(
    value: &serde_json::Value,
    call_rate: u32,
) -> Result<StreamAudio, PlaybackError> {
    let data = value
        .get("data")
        .ok_or_else(|| PlaybackError::Malformed("no \"data\" object".into()))?;
    let data: StreamAudioData = serde_json::from_value(data.clone())
        .map_err(|e| PlaybackError::Malformed(e.to_string()))?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(data.audio_data.as_bytes())
        .map_err(|e| PlaybackError::BadBase64(e.to_string()))?;
    let kind = data.audio_data_type;
    let (codec, rate) = match kind.as_str() {
        "raw" => {
            let rate = data.sample_rate.ok_or_else(|| {
                PlaybackError::Malformed("raw audio without \"sampleRate\"".into())
            })?;
            if rate != call_rate {
                return Err(PlaybackError::RawRateMismatch {
                    got: rate,
                    call: call_rate,
                });
            }
            (Codec::L16, rate)
        }
        "pcmu" | "pcma" => {
            // We cannot resample yet, so G.711 is only playable on an 8 kHz call.
            if call_rate != 8000 {
                return Err(PlaybackError::G711Rate {
                    kind,
                    call: call_rate,
                });
            }
            let codec = if kind == "pcmu" {
                Codec::Pcmu
            } else {
                Codec::Pcma
            };
            (codec, 8000)
        }
        _ => return Err(PlaybackError::Unsupported(kind)),
    };
    let samples = decode_payload(&payload, codec)?;
    Ok(StreamAudio {
        audio_data_type: kind,
        sample_rate: rate,
        payload_bytes: payload.len(),
        samples,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlayState {
    /// No response in progress.
    Idle,
    /// Audio was played on the last tick.
    Playing,
    /// A response was playing and the buffer ran dry this many samples ago.
    Dry(usize),
}

/// FreeSWITCH's playback buffer as the caller experiences it: audio is queued as it
/// arrives and one frame leaves per media-clock tick, silence when there is none.
#[derive(Debug)]
pub struct PlaybackSim {
    rate: u32,
    tick_samples: usize,
    end_gap_samples: usize,
    buffer: VecDeque<i16>,
    state: PlayState,
    /// Everything the caller heard, in order.
    pub played: Vec<i16>,
    pub responses: u64,
    pub underrun_gaps: u64,
    max_gap_samples: usize,
}

impl PlaybackSim {
    pub fn new(rate: u32, tick_ms: u32) -> Self {
        PlaybackSim {
            rate,
            tick_samples: (rate as usize * tick_ms as usize) / 1000,
            end_gap_samples: (rate as usize * RESPONSE_END_GAP_MS as usize) / 1000,
            buffer: VecDeque::new(),
            state: PlayState::Idle,
            played: Vec::new(),
            responses: 0,
            underrun_gaps: 0,
            max_gap_samples: 0,
        }
    }

    /// Queues received playback audio.
    pub fn push(&mut self, samples: &[i16]) {
        self.buffer.extend(samples);
    }

    /// Barge-in: drops everything not yet played; the response is over, so the silence
    /// that follows is not an underrun.
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.state = PlayState::Idle;
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Audio played on the last tick, or is waiting to play.
    pub fn audible(&self) -> bool {
        self.state == PlayState::Playing || !self.buffer.is_empty()
    }

    /// Longest underrun gap so far, in milliseconds.
    pub fn underrun_max_ms(&self) -> u64 {
        (self.max_gap_samples as u64 * 1000) / u64::from(self.rate.max(1))
    }

    /// Bookkeeping when audio starts playing again after idle or a dry spell.
    fn on_audio(&mut self) {
        match self.state {
            PlayState::Idle => self.responses += 1,
            PlayState::Dry(gap) => {
                self.underrun_gaps += 1;
                self.max_gap_samples = self.max_gap_samples.max(gap);
            }
            PlayState::Playing => {}
        }
        self.state = PlayState::Playing;
    }

    /// One media-clock tick: plays one frame (padded with silence if the buffer is short).
    pub fn tick(&mut self) {
        let n = self.buffer.len().min(self.tick_samples);
        if n > 0 {
            self.on_audio();
        }
        self.played.extend(self.buffer.drain(..n));
        let pad = self.tick_samples - n;
        if pad == 0 {
            return;
        }
        self.played.extend(std::iter::repeat_n(0i16, pad));
        self.state = match self.state {
            PlayState::Idle => PlayState::Idle,
            PlayState::Playing => PlayState::Dry(pad),
            // A dry spell this long is the end of the response, not a stall.
            PlayState::Dry(gap) if gap + pad > self.end_gap_samples => PlayState::Idle,
            PlayState::Dry(gap) => PlayState::Dry(gap + pad),
        };
    }

    /// End of call: plays whatever is still buffered, without waiting for the clock.
    pub fn flush(&mut self) {
        if !self.buffer.is_empty() {
            self.on_audio();
            self.played.extend(self.buffer.drain(..));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The call
// ---------------------------------------------------------------------------------------

/// The resolved wire format.
#[derive(Debug, Clone, Copy, PartialEq)]
struct WireFormat {
    rate: u32,
    channels: Channels,
    codec: Codec,
}

/// Picks the wire format from options, URL and WAV; any disagreement is an error because
/// the server trusts the URL and would misread the audio.
fn resolve_format(
    args: &CallArgs,
    target: &Target,
    wav_rate: u32,
) -> Result<WireFormat, CallError> {
    let conflict = |what: &str, url: String, opt: String| {
        CallError::InvalidOption(format!(
            "the URL says {what}={url} but --{what} is {opt}; the server would trust the URL"
        ))
    };
    let codec = match (args.codec, target.url_codec) {
        (Some(o), Some(u)) if o != u => {
            return Err(conflict("codec", u.to_string(), o.to_string()))
        }
        (o, u) => o.or(u).unwrap_or(Codec::L16),
    };
    let channels = match (args.channels, target.url_channels) {
        (Some(o), Some(u)) if o != u => {
            return Err(conflict("channels", u.to_string(), o.to_string()))
        }
        (o, u) => o.or(u).unwrap_or(Channels::Mono),
    };
    let rate = match (args.rate, target.url_rate) {
        (Some(o), Some(u)) if o != u => return Err(conflict("rate", u.to_string(), o.to_string())),
        (o, u) => o.or(u).unwrap_or(wav_rate),
    };
    if rate == 0 {
        return Err(CallError::InvalidOption("the rate must be positive".into()));
    }
    if codec != Codec::L16 && rate != 8000 {
        return Err(CallError::InvalidOption(format!(
            "{codec} is 8000 Hz only, but the call rate is {rate} Hz"
        )));
    }
    Ok(WireFormat {
        rate,
        channels,
        codec,
    })
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Everything the receive side accumulates.
struct Receiver {
    codec: Codec,
    rate: u32,
    playback: PlaybackSim,
    frames: u64,
    bytes: u64,
    samples: u64,
    texts: u64,
    stream_audio: u64,
    clears: u64,
    others: u64,
    last_others: VecDeque<String>,
    raw_mismatches: u64,
    bad_playback: u64,
    errors: Vec<String>,
    pings: u64,
    pongs: u64,
    first_audio_sent: Option<Instant>,
    first_audio_latency: Option<Duration>,
    speech_end_sent: Option<Instant>,
    speech_end_latency: Option<Duration>,
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl Receiver {
    fn new(format: WireFormat, tick_ms: u32) -> Self {
        Receiver {
            codec: format.codec,
            rate: format.rate,
            playback: PlaybackSim::new(format.rate, tick_ms),
            frames: 0,
            bytes: 0,
            samples: 0,
            texts: 0,
            stream_audio: 0,
            clears: 0,
            others: 0,
            last_others: VecDeque::new(),
            raw_mismatches: 0,
            bad_playback: 0,
            errors: Vec::new(),
            pings: 0,
            pongs: 0,
            first_audio_sent: None,
            first_audio_latency: None,
            speech_end_sent: None,
            speech_end_latency: None,
        }
    }

    fn playback_error(&mut self, e: PlaybackError) {
        tracing::warn!(error = %e, "unplayable playback message");
        if matches!(e, PlaybackError::RawRateMismatch { .. }) {
            self.raw_mismatches += 1;
        } else {
            self.bad_playback += 1;
        }
        if self.errors.len() < KEEP_LAST {
            self.errors.push(e.to_string());
        }
    }

    fn audio(&mut self, payload_bytes: usize, samples: &[i16], now: Instant) {
        self.frames += 1;
        self.bytes += payload_bytes as u64;
        self.samples += samples.len() as u64;
        if self.first_audio_latency.is_none() {
            if let Some(t) = self.first_audio_sent {
                self.first_audio_latency = Some(now.saturating_duration_since(t));
            }
        }
        if self.speech_end_latency.is_none() {
            if let Some(t) = self.speech_end_sent {
                self.speech_end_latency = Some(now.saturating_duration_since(t));
            }
        }
        self.playback.push(samples);
    }

    /// Handles any message except Close (which the caller handles, as it changes state).
    fn on_message(&mut self, msg: Message, now: Instant) {
        match msg {
            Message::Binary(b) => match decode_payload(&b, self.codec) {
                Ok(samples) => self.audio(b.len(), &samples, now),
                Err(e) => self.playback_error(e),
            },
            Message::Text(t) => {
                self.texts += 1;
                match parse_server_text(t.as_str(), self.rate) {
                    ServerText::StreamAudio(a) => {
                        self.stream_audio += 1;
                        self.audio(a.payload_bytes, &a.samples, now);
                    }
                    ServerText::BadAudio(e) => {
                        self.stream_audio += 1;
                        self.playback_error(e);
                    }
                    ServerText::ClearAudio => {
                        self.clears += 1;
                        self.playback.clear();
                    }
                    ServerText::Other => {
                        self.others += 1;
                        if self.last_others.len() == KEEP_LAST {
                            self.last_others.pop_front();
                        }
                        self.last_others
                            .push_back(truncate_chars(t.as_str(), KEEP_CHARS));
                    }
                }
            }
            // tungstenite queues the Pong itself and flushes it on the next read/write.
            Message::Ping(_) => self.pings += 1,
            Message::Pong(_) => self.pongs += 1,
            Message::Close(_) | Message::Frame(_) => {}
        }
    }
}

/// Why the streaming loop stopped.
enum LoopEnd {
    Finished,
    Interrupted,
    ServerClosed(Option<CloseFrame>),
    Lost(String),
}

/// Ticks an optional interval; pends forever without one, so `select!` can skip it.
async fn tick_opt(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn validate_args(args: &CallArgs) -> Result<(), CallError> {
    if args.frame_ms == 0 || args.frame_ms > 1000 {
        return Err(CallError::InvalidOption(format!(
            "--frame-ms {} is out of range (1..=1000; the module uses multiples of 20)",
            args.frame_ms
        )));
    }
    if let Some(t) = args.tail_secs {
        if !t.is_finite() || !(0.0..=3600.0).contains(&t) {
            return Err(CallError::InvalidOption(format!(
                "--tail-secs {t} is out of range (0..=3600)"
            )));
        }
    }
    if let Some(ms) = args.tail_ms {
        if ms > 3_600_000 {
            return Err(CallError::InvalidOption(format!(
                "--tail-ms {ms} is out of range (0..=3600000)"
            )));
        }
    }
    if args.heartbeat_secs == Some(0) {
        return Err(CallError::InvalidOption(
            "--heartbeat-secs must be at least 1".into(),
        ));
    }
    if let Some(m) = &args.metadata {
        if m.len() > MAX_METADATA_BYTES {
            return Err(CallError::InvalidOption(format!(
                "--metadata is {} bytes; mod_audio_stream sends at most {MAX_METADATA_BYTES}",
                m.len()
            )));
        }
    }
    Ok(())
}

/// Places the call: connects, streams the WAV in real time, records playback to `--out`
/// and returns what was measured. Ctrl-C ends the call early with a normal Close.
pub async fn run(args: &CallArgs) -> Result<CallSummary, CallError> {
    validate_args(args)?;
    let parsed = parse_target(&args.url)?;
    // Reading the WAV blocks briefly; nothing else runs yet, so it is done inline.
    let caller = read_caller_wav(&args.wav)?;
    let format = resolve_format(args, &parsed, caller.rate)?;
    if caller.rate != format.rate {
        return Err(CallError::RateMismatch {
            path: args.wav.clone(),
            wav_rate: caller.rate,
            rate: format.rate,
        });
    }
    let target = prepare_target(&args.url, format.rate, format.channels, format.codec)?;

    // One media clock drives both directions. It ticks at the gcd of the message size and
    // FreeSWITCH's 20 ms ptime, so both a message boundary and a playout frame fall on ticks.
    let tick_ms = gcd(args.frame_ms, PLAYOUT_MS);
    let rate = format.rate as usize;
    if !(rate * tick_ms as usize).is_multiple_of(1000) {
        return Err(CallError::InvalidOption(format!(
            "{} Hz does not divide into whole {tick_ms} ms frames; pick another --frame-ms or rate",
            format.rate
        )));
    }
    let ticks_per_msg = u64::from(args.frame_ms / tick_ms);
    let msg_samples = rate * args.frame_ms as usize / 1000;

    // Fail before calling if the output cannot be created, not after a long call.
    let mut writer = match &args.out {
        Some(path) => {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: format.rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            Some(
                hound::WavWriter::create(path, spec).map_err(|source| CallError::WavWrite {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };

    // The outgoing caller signal: the WAV padded to whole messages; silence after it
    // until the tail's rule says the call is over.
    let mut signal = caller.samples;
    let wav_msgs = signal.len().div_ceil(msg_samples);
    signal.resize(wav_msgs * msg_samples, 0);
    let silence = vec![0i16; msg_samples];
    let fixed_tail_ms = args
        .tail_ms
        .or(args.tail_secs.map(|secs| (secs * 1000.0).round() as u64));
    let mut tail = tail::TailClock::new(match fixed_tail_ms {
        Some(ms) => tail::Tail::Frames(ms.div_ceil(u64::from(args.frame_ms))),
        None => tail::Tail::until_quiet(),
    });
    // The end of speech is found with the silence that follows the WAV.
    let speech_end = {
        let run = (ENDPOINT_RUN_MS + 2 * PLAYOUT_MS) as usize * format.rate as usize / 1000;
        let mut probe = signal.clone();
        probe.resize(signal.len() + run.div_ceil(msg_samples) * msg_samples, 0);
        speech_end_sample(&probe, format.rate)
    };
    let speech_end_msg = speech_end.map(|s| s / msg_samples);

    let metadata = if args.no_metadata {
        None
    } else {
        Some(args.metadata.clone().unwrap_or_else(|| {
            serde_json::json!({
                "uuid": target.call_id,
                "caller_id": "voicebridge-call",
                "called": "test",
            })
            .to_string()
        }))
    };

    // The handshake as the module does it: Origin, optional bearer token, no subprotocol.
    let mut request =
        target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| CallError::InvalidUrl {
                url: target.display_url.clone(),
                reason: e.to_string(),
            })?;
    let origin = HeaderValue::from_str(&target.origin).map_err(|_| CallError::InvalidUrl {
        url: target.display_url.clone(),
        reason: "the host cannot be used in an Origin header".into(),
    })?;
    request.headers_mut().insert(http::header::ORIGIN, origin);
    if let Some(token) = &args.token {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                CallError::InvalidOption("the token has characters not allowed in a header".into())
            })?;
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }

    tracing::info!(url = %target.display_url, call_id = %target.call_id, "connecting");
    let started = Instant::now();
    let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Err(_) => {
            return Err(CallError::HandshakeTimeout {
                url: target.display_url.clone(),
            })
        }
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| truncate_chars(String::from_utf8_lossy(b).trim(), KEEP_CHARS))
                .unwrap_or_default();
            return Err(CallError::Refused {
                url: target.display_url.clone(),
                status: resp.status().as_u16(),
                body,
            });
        }
        Ok(Err(e)) => {
            return Err(CallError::Connect {
                url: target.display_url.clone(),
                reason: scrub_secrets(&e.to_string(), &target.url),
            })
        }
        Ok(Ok((ws, _response))) => ws,
    };
    let (mut tx, mut rx) = ws.split();

    let mut rxs = Receiver::new(format, tick_ms);
    let mut frames_sent = 0u64;
    let mut bytes_sent = 0u64;
    let mut metadata_sent = false;
    let mut pings_sent = 0u64;
    let mut interrupted = false;

    let mut end = None;
    if args.metadata_after_frames == 0 {
        if let Some(m) = &metadata {
            match tx.send(Message::text(m.as_str())).await {
                Ok(()) => metadata_sent = true,
                Err(e) => end = Some(LoopEnd::Lost(e.to_string())),
            }
        }
    }

    let mut ticker = tokio::time::interval(Duration::from_millis(u64::from(tick_ms)));
    // Burst: after a stall the module catches up on audio, it does not drop it.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut heartbeat = args.heartbeat_secs.map(|s| {
        let period = Duration::from_secs(s);
        tokio::time::interval_at(Instant::now() + period, period)
    });
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ctrl_c_live = true;
    let mut tick_no = 0u64;

    if wav_msgs == 0 {
        tail.wav_ended(Instant::now());
    }
    let end = loop {
        if let Some(e) = end.take() {
            break e;
        }
        let tail_frames = (frames_sent as usize).saturating_sub(wav_msgs) as u64;
        if frames_sent as usize >= wav_msgs && tail.done(tail_frames, Instant::now()) {
            break LoopEnd::Finished;
        }
        tokio::select! {
            _ = ticker.tick() => {
                rxs.playback.tick();
                if rxs.playback.audible() {
                    tail.audible(Instant::now());
                }
                if tick_no.is_multiple_of(ticks_per_msg) {
                    let i = frames_sent as usize;
                    let frame = signal
                        .get(i * msg_samples..(i + 1) * msg_samples)
                        .unwrap_or(&silence);
                    let payload = encode_frame(frame, format.channels, format.codec);
                    let len = payload.len() as u64;
                    if let Err(e) = tx.send(Message::binary(payload)).await {
                        end = Some(LoopEnd::Lost(e.to_string()));
                        continue;
                    }
                    let now = Instant::now();
                    rxs.first_audio_sent.get_or_insert(now);
                    if speech_end_msg == Some(i) {
                        rxs.speech_end_sent = Some(now);
                    }
                    frames_sent += 1;
                    bytes_sent += len;
                    if frames_sent as usize == wav_msgs {
                        tail.wav_ended(now);
                    }
                    if !metadata_sent && args.metadata_after_frames == frames_sent {
                        if let Some(m) = &metadata {
                            match tx.send(Message::text(m.as_str())).await {
                                Ok(()) => metadata_sent = true,
                                Err(e) => end = Some(LoopEnd::Lost(e.to_string())),
                            }
                        }
                    }
                }
                tick_no += 1;
            }
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Close(frame))) => break LoopEnd::ServerClosed(frame),
                Some(Ok(msg)) => rxs.on_message(msg, Instant::now()),
                Some(Err(e)) => break LoopEnd::Lost(e.to_string()),
                None => break LoopEnd::Lost("connection ended without a Close frame".into()),
            },
            _ = tick_opt(&mut heartbeat) => {
                if let Err(e) = tx.send(Message::Ping(Bytes::from_static(b"ping"))).await {
                    end = Some(LoopEnd::Lost(e.to_string()));
                } else {
                    pings_sent += 1;
                }
            }
            signal = &mut ctrl_c, if ctrl_c_live => {
                ctrl_c_live = false;
                // If signals cannot be watched, carry on: the call simply cannot be cut short.
                if signal.is_ok() {
                    interrupted = true;
                    break LoopEnd::Interrupted;
                }
            }
        }
    };

    let close = match end {
        LoopEnd::Finished | LoopEnd::Interrupted => {
            close_from_client(&mut tx, &mut rx, &mut rxs).await
        }
        LoopEnd::ServerClosed(frame) => {
            // Keep reading so tungstenite sends its automatic Close reply, as the module would.
            let drain = async {
                while let Some(Ok(msg)) = rx.next().await {
                    rxs.on_message(msg, Instant::now());
                }
            };
            let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
            CloseSummary {
                by: ClosedBy::Server,
                code: frame.as_ref().map(|f| u16::from(f.code)),
                reason: frame.as_ref().map(|f| f.reason.to_string()),
                echoed: None,
                echoed_within_1s: None,
                echo_code: None,
                echo_ms: None,
                error: None,
            }
        }
        LoopEnd::Lost(error) => CloseSummary {
            by: ClosedBy::None,
            code: None,
            reason: None,
            echoed: None,
            echoed_within_1s: None,
            echo_code: None,
            echo_ms: None,
            error: Some(error),
        },
    };
    let duration = started.elapsed();

    rxs.playback.flush();
    let out_ms = (rxs.playback.played.len() as u64 * 1000) / u64::from(format.rate);
    if let (Some(w), Some(path)) = (writer.as_mut(), &args.out) {
        let werr = |source| CallError::WavWrite {
            path: path.clone(),
            source,
        };
        for &s in &rxs.playback.played {
            w.write_sample(s).map_err(werr)?;
        }
    }
    if let (Some(w), Some(path)) = (writer, &args.out) {
        w.finalize().map_err(|source| CallError::WavWrite {
            path: path.clone(),
            source,
        })?;
    }

    let per_sec = u64::from(format.rate);
    Ok(CallSummary {
        call_id: target.call_id.clone(),
        url: target.display_url.clone(),
        format: FormatSummary {
            codec: format.codec.name().to_string(),
            rate: format.rate,
            channels: format.channels.name().to_string(),
            frame_ms: args.frame_ms,
        },
        duration_ms: ms(duration),
        interrupted,
        metadata_sent,
        metadata_after_frames: metadata.as_ref().map(|_| args.metadata_after_frames),
        frames_sent,
        bytes_sent,
        tail_frames_sent: frames_sent.saturating_sub(wav_msgs as u64),
        audio_sent_ms: frames_sent * u64::from(args.frame_ms),
        frames_received: rxs.frames,
        bytes_received: rxs.bytes,
        audio_received_ms: rxs.samples * 1000 / per_sec,
        text_messages_received: rxs.texts,
        stream_audio_messages: rxs.stream_audio,
        clear_audio_count: rxs.clears,
        other_text_messages: rxs.others,
        last_other_texts: rxs.last_others.iter().cloned().collect(),
        first_audio_latency_ms: rxs.first_audio_latency.map(ms),
        speech_end_offset_ms: speech_end.map(|s| s as u64 * 1000 / per_sec),
        speech_end_to_first_audio_ms: rxs.speech_end_latency.map(ms),
        responses: rxs.playback.responses,
        underrun_gaps: rxs.playback.underrun_gaps,
        underrun_max_ms: rxs.playback.underrun_max_ms(),
        raw_rate_mismatches: rxs.raw_mismatches,
        bad_playback_messages: rxs.bad_playback,
        playback_errors: rxs.errors.clone(),
        pings_sent,
        pongs_received: rxs.pongs,
        pings_received: rxs.pings,
        out_wav: args.out.as_ref().map(|p| p.display().to_string()),
        out_ms,
        close,
    })
}

/// The module's hangup: Close 1000 "Normal closure", then wait 1 s for the server's Close.
async fn close_from_client<S, R>(tx: &mut S, rx: &mut R, rxs: &mut Receiver) -> CloseSummary
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let mut summary = CloseSummary {
        by: ClosedBy::Client,
        code: Some(u16::from(CloseCode::Normal)),
        reason: Some("Normal closure".into()),
        echoed: Some(false),
        echoed_within_1s: Some(false),
        echo_code: None,
        echo_ms: None,
        error: None,
    };
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "Normal closure".into(),
    };
    let sent_at = Instant::now();
    if let Err(e) = tx.send(Message::Close(Some(frame))).await {
        summary.error = Some(e.to_string());
        return summary;
    }
    let deadline = sent_at + CLOSE_WAIT + CLOSE_GRACE;
    loop {
        match tokio::time::timeout_at(deadline, rx.next()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                summary.error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                let waited = sent_at.elapsed();
                summary.echoed = Some(true);
                summary.echoed_within_1s = Some(waited <= CLOSE_WAIT);
                summary.echo_code = frame.map(|f| u16::from(f.code));
                summary.echo_ms = Some(ms(waited));
                break;
            }
            Ok(Some(Ok(msg))) => {
                // After the module's 1 s wait the call is torn down: later audio is lost.
                if sent_at.elapsed() <= CLOSE_WAIT {
                    rxs.on_message(msg, Instant::now());
                }
            }
        }
    }
    summary
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

fn opt_ms(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"))
}

/// Prints the summary to stdout: human-readable, or one JSON object with `json`.
pub fn print_summary(summary: &CallSummary, json: bool) {
    if json {
        match serde_json::to_string(summary) {
            Ok(s) => println!("{s}"),
            // Serialising plain data cannot fail in practice; say so rather than print nothing.
            Err(e) => println!("{{\"error\":\"cannot serialise summary: {e}\"}}"),
        }
        return;
    }
    print!("{}", human_summary(summary));
}

fn human_summary(s: &CallSummary) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let f = &s.format;
    let _ = writeln!(o, "call        {}", s.call_id);
    let _ = writeln!(o, "url         {}", s.url);
    let _ = writeln!(
        o,
        "format      {}/{} {}, {} ms frames",
        f.codec, f.rate, f.channels, f.frame_ms
    );
    let _ = writeln!(
        o,
        "duration    {:.1} s{}",
        s.duration_ms as f64 / 1000.0,
        if s.interrupted { " (interrupted)" } else { "" }
    );
    let meta = match (s.metadata_sent, s.metadata_after_frames) {
        (true, Some(0)) => "before audio".to_string(),
        (true, Some(n)) => format!("after {n} frames"),
        (false, None) => "not sent (--no-metadata)".to_string(),
        (_, _) => "NOT sent (call ended first)".to_string(),
    };
    let _ = writeln!(o, "metadata    {meta}");
    let _ = writeln!(
        o,
        "sent        {} frames, {} bytes, {} ms audio ({} tail frames)",
        s.frames_sent, s.bytes_sent, s.audio_sent_ms, s.tail_frames_sent
    );
    let _ = writeln!(
        o,
        "received    {} audio frames, {} bytes, {} ms audio; {} text ({} streamAudio, {} other)",
        s.frames_received,
        s.bytes_received,
        s.audio_received_ms,
        s.text_messages_received,
        s.stream_audio_messages,
        s.other_text_messages
    );
    let _ = writeln!(o, "clearAudio  {}", s.clear_audio_count);
    let _ = writeln!(
        o,
        "latency     first audio {}; after speech end (at {}) {}",
        opt_ms(s.first_audio_latency_ms),
        opt_ms(s.speech_end_offset_ms),
        opt_ms(s.speech_end_to_first_audio_ms)
    );
    let _ = writeln!(
        o,
        "playback    {} responses, {} underrun gaps (max {} ms), {} ms recorded{}",
        s.responses,
        s.underrun_gaps,
        s.underrun_max_ms,
        s.out_ms,
        s.out_wav
            .as_ref()
            .map_or_else(String::new, |p| format!(" to {p}"))
    );
    if s.raw_rate_mismatches > 0 || s.bad_playback_messages > 0 {
        let _ = writeln!(
            o,
            "ERRORS      {} raw rate mismatches, {} bad playback messages",
            s.raw_rate_mismatches, s.bad_playback_messages
        );
        for e in &s.playback_errors {
            let _ = writeln!(o, "            {e}");
        }
    }
    let _ = writeln!(
        o,
        "pings       {} sent, {} pongs; {} received",
        s.pings_sent, s.pongs_received, s.pings_received
    );
    let c = &s.close;
    let by = match c.by {
        ClosedBy::Client => "client",
        ClosedBy::Server => "server",
        ClosedBy::None => "nobody (connection lost)",
    };
    let mut line = format!("close       by {by}");
    if let Some(code) = c.code {
        let _ = write!(line, ", {code} {:?}", c.reason.as_deref().unwrap_or(""));
    }
    match (c.echoed, c.echoed_within_1s) {
        (Some(true), Some(true)) => {
            let _ = write!(line, "; echoed in {}", opt_ms(c.echo_ms));
        }
        (Some(true), _) => {
            let _ = write!(
                line,
                "; echoed LATE in {} (the module waits 1 s)",
                opt_ms(c.echo_ms)
            );
        }
        (Some(false), _) => line.push_str("; NOT echoed"),
        _ => {}
    }
    if let Some(e) = &c.error {
        let _ = write!(line, "; error: {e}");
    }
    let _ = writeln!(o, "{line}");
    for t in &s.last_other_texts {
        let _ = writeln!(o, "text        {t}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    fn l16_bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn write_wav(path: &Path, rate: u32, channels: u16, frames: &[Vec<i16>]) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for f in frames {
            for &s in f {
                w.write_sample(s).unwrap();
            }
        }
        w.finalize().unwrap();
    }

    /// A never-zero test signal, so echoed audio can be told apart from inserted silence.
    fn test_signal(n: usize) -> Vec<i16> {
        (0..n).map(|i| ((i % 200) as i16 + 1) * 50).collect()
    }

    fn tone(n: usize, amplitude: i16) -> Vec<i16> {
        (0..n)
            .map(|i| {
                if (i / 4) % 2 == 0 {
                    amplitude
                } else {
                    -amplitude
                }
            })
            .collect()
    }

    // ---- URL ----

    #[test]
    fn target_adds_missing_format_keys_and_reads_call_id() {
        let t = prepare_target(
            "ws://127.0.0.1:9090/call/abc-123",
            16000,
            Channels::Mono,
            Codec::L16,
        )
        .unwrap();
        assert_eq!(
            t.url,
            "ws://127.0.0.1:9090/call/abc-123?rate=16000&channels=mono"
        );
        assert_eq!(t.call_id, "abc-123");
        assert_eq!(t.origin, "http://127.0.0.1:9090");

        let t = prepare_target(
            "ws://h:9090/call/x?token=s3cret&rate=8000",
            8000,
            Channels::Stereo,
            Codec::Pcmu,
        )
        .unwrap();
        assert_eq!(
            t.url,
            "ws://h:9090/call/x?token=s3cret&rate=8000&channels=stereo&codec=PCMU"
        );
        assert!(!t.display_url.contains("s3cret"), "{}", t.display_url);
        assert!(t.display_url.contains("token=[redacted]"));
    }

    #[test]
    fn target_without_call_id_or_port() {
        let t = prepare_target(
            "ws://example.com/?token=x",
            8000,
            Channels::Mono,
            Codec::L16,
        )
        .unwrap();
        assert_eq!(t.origin, "http://example.com:80");
        assert_eq!(t.url, "ws://example.com/?token=x&rate=8000&channels=mono");
        assert!(uuid::Uuid::parse_str(&t.call_id).is_ok());

        let t = prepare_target("wss://example.com", 8000, Channels::Mono, Codec::L16).unwrap();
        assert_eq!(t.origin, "http://example.com:443");
        assert_eq!(t.url, "wss://example.com/?rate=8000&channels=mono");
    }

    #[test]
    fn bad_urls_are_errors() {
        for url in [
            "http://h:1/call/x",
            "not a url",
            "ws://h:1/call/x?rate=fast",
        ] {
            assert!(
                matches!(parse_target(url), Err(CallError::InvalidUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn redaction_removes_tokens_and_credentials() {
        assert_eq!(
            crate::redact::url("ws://u:pw@h:1/call/x?rate=8000&access_token=abc&api_key=k"),
            "ws://h:1/call/x?rate=[redacted]&access_token=[redacted]&api_key=[redacted]"
        );
        assert_eq!(crate::redact::url("ws://h:1/call/x"), "ws://h:1/call/x");
        let url = "ws://h:1/call/x?token=s3cret";
        assert_eq!(
            scrub_secrets(&format!("Unable to connect to {url}; s3cret"), url),
            "Unable to connect to ws://h:1/call/x?token=[redacted]; [redacted]"
        );
    }

    #[test]
    fn format_resolution() {
        let parsed = parse_target("ws://h:1/call/x?rate=16000").unwrap();
        let mut args = CallArgs::new("ws://h:1/call/x?rate=16000", "in.wav");
        let f = resolve_format(&args, &parsed, 8000).unwrap();
        assert_eq!(f.rate, 16000, "the URL's rate wins over the WAV's");
        assert_eq!(f.channels, Channels::Mono);
        assert_eq!(f.codec, Codec::L16);

        args.rate = Some(8000);
        assert!(matches!(
            resolve_format(&args, &parsed, 8000),
            Err(CallError::InvalidOption(_))
        ));

        let parsed = parse_target("ws://h:1/call/x").unwrap();
        let mut args = CallArgs::new("ws://h:1/call/x", "in.wav");
        args.codec = Some(Codec::Pcma);
        assert!(
            resolve_format(&args, &parsed, 16000).is_err(),
            "G.711 at 16 kHz"
        );
        assert_eq!(resolve_format(&args, &parsed, 8000).unwrap().rate, 8000);
    }

    #[test]
    fn token_never_shows_in_debug() {
        let mut args = CallArgs::new("ws://h:1/call/x", "in.wav");
        args.token = Some(BearerToken::new("s3cret"));
        assert!(!format!("{args:?}").contains("s3cret"));
    }

    #[test]
    fn clap_parses_the_documented_options() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            call: CallArgs,
        }
        let cli = Cli::try_parse_from([
            "call",
            "ws://h:1/call/x",
            "--wav",
            "in.wav",
            "--channels",
            "stereo",
            "--codec",
            "pcmu",
            "--metadata-after-frames",
            "3",
            "--tail-secs",
            "0.5",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.call.channels, Some(Channels::Stereo));
        assert_eq!(cli.call.codec, Some(Codec::Pcmu));
        assert_eq!(cli.call.metadata_after_frames, 3);
        assert_eq!(cli.call.frame_ms, DEFAULT_FRAME_MS);
        assert!(cli.call.json);
        assert!(
            Cli::try_parse_from(["call", "ws://h:1/x", "--wav", "a", "--codec", "opus"]).is_err()
        );
        let ms =
            Cli::try_parse_from(["call", "ws://h:1/x", "--wav", "a", "--tail-ms", "1500"]).unwrap();
        assert_eq!(ms.call.tail_ms, Some(1500));
        assert_eq!(ms.call.tail_secs, None);
        // One fixed tail or the other, not both.
        assert!(Cli::try_parse_from([
            "call",
            "ws://h:1/x",
            "--wav",
            "a",
            "--tail-ms",
            "1",
            "--tail-secs",
            "1"
        ])
        .is_err());
    }

    // ---- WAV and frames ----

    #[test]
    fn wav_stereo_keeps_left_channel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wav");
        write_wav(&path, 8000, 2, &[vec![1, -1, 2, -2, 3, -3]]);
        let a = read_caller_wav(&path).unwrap();
        assert_eq!(a.rate, 8000);
        assert_eq!(a.samples, vec![1, 2, 3]);
    }

    #[test]
    fn wav_must_be_16_bit_pcm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        w.write_sample(0.5f32).unwrap();
        w.finalize().unwrap();
        let e = read_caller_wav(&path).unwrap_err();
        assert!(matches!(e, CallError::WavFormat { .. }), "{e}");
        let missing = read_caller_wav(&dir.path().join("missing.wav")).unwrap_err();
        assert!(matches!(missing, CallError::WavRead { .. }));
    }

    #[test]
    fn frames_are_encoded_like_the_module() {
        assert_eq!(
            encode_frame(&[1, -2], Channels::Mono, Codec::L16),
            vec![1, 0, 0xFE, 0xFF]
        );
        assert_eq!(
            encode_frame(&[1, -2], Channels::Stereo, Codec::L16),
            vec![1, 0, 0, 0, 0xFE, 0xFF, 0, 0]
        );
        assert_eq!(
            encode_frame(&[0, 0], Channels::Mono, Codec::Pcmu),
            vec![Codec::Pcmu.silence_byte(); 2]
        );
        assert_eq!(
            encode_frame(&[0], Channels::Stereo, Codec::Pcma),
            vec![Codec::Pcma.silence_byte(); 2]
        );
        assert_eq!(decode_l16(&[1, 0, 0xFE, 0xFF]).unwrap(), vec![1, -2]);
        assert_eq!(decode_l16(&[1]), Err(PlaybackError::OddLength(1)));
    }

    // ---- energy endpoint ----

    #[test]
    fn endpoint_after_speech_then_silence() {
        let mut s = vec![0i16; 800]; // 100 ms lead-in
        s.extend(tone(4000, 8000)); // 500 ms speech
        s.extend(vec![0i16; 4000]); // 500 ms silence
        s.extend(tone(4000, 8000)); // a second utterance, ignored
        assert_eq!(speech_end_sample(&s, 8000), Some(4800));
    }

    #[test]
    fn endpoint_needs_long_enough_speech_and_silence() {
        // 200 ms of speech is too short to count as an utterance.
        let mut s = tone(1600, 8000);
        s.extend(vec![0i16; 8000]);
        assert_eq!(speech_end_sample(&s, 8000), None);
        // A 200 ms pause inside speech does not end it.
        let mut s = tone(4000, 8000);
        s.extend(vec![0i16; 1600]);
        s.extend(tone(4000, 8000));
        s.extend(vec![0i16; 2400]);
        assert_eq!(speech_end_sample(&s, 8000), Some(9600));
        // Speech up to the end: no endpoint.
        assert_eq!(speech_end_sample(&tone(8000, 8000), 8000), None);
        // Quiet noise below −45 dBFS is not speech.
        assert_eq!(speech_end_sample(&tone(8000, 100), 8000), None);
    }

    // ---- streamAudio ----

    fn stream_audio(kind: &str, rate: u32, payload: &[u8]) -> String {
        serde_json::json!({
            "type": "streamAudio",
            "data": {"audioDataType": kind, "sampleRate": rate, "audioData": B64.encode(payload)}
        })
        .to_string()
    }

    #[test]
    fn stream_audio_raw() {
        let msg = stream_audio("raw", 8000, &l16_bytes(&[5, -5, 7]));
        match parse_server_text(&msg, 8000) {
            ServerText::StreamAudio(a) => {
                assert_eq!(a.samples, vec![5, -5, 7]);
                assert_eq!(a.payload_bytes, 6);
                assert_eq!(a.audio_data_type, "raw");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_audio_raw_at_wrong_rate_is_the_r24_trap() {
        let msg = stream_audio("raw", 24000, &l16_bytes(&[1, 2]));
        let r = parse_server_text(&msg, 8000);
        assert_eq!(
            r,
            ServerText::BadAudio(PlaybackError::RawRateMismatch {
                got: 24000,
                call: 8000
            })
        );
        if let ServerText::BadAudio(e) = r {
            assert!(e.to_string().contains(".r24"), "{e}");
        }
    }

    #[test]
    fn stream_audio_g711() {
        let samples = [1000i16, -1000, 0];
        let ulaw: Vec<u8> = samples
            .iter()
            .map(|&s| audio_codec_algorithms::encode_ulaw(s))
            .collect();
        let alaw: Vec<u8> = samples
            .iter()
            .map(|&s| audio_codec_algorithms::encode_alaw(s))
            .collect();
        for (kind, payload, decode) in [
            (
                "pcmu",
                ulaw,
                audio_codec_algorithms::decode_ulaw as fn(u8) -> i16,
            ),
            (
                "pcma",
                alaw,
                audio_codec_algorithms::decode_alaw as fn(u8) -> i16,
            ),
        ] {
            let want: Vec<i16> = payload.iter().map(|&b| decode(b)).collect();
            match parse_server_text(&stream_audio(kind, 8000, &payload), 8000) {
                ServerText::StreamAudio(a) => {
                    assert_eq!(a.samples, want, "{kind}");
                    assert_eq!(a.payload_bytes, 3);
                }
                other => panic!("{kind}: {other:?}"),
            }
            assert!(matches!(
                parse_server_text(&stream_audio(kind, 8000, &payload), 16000),
                ServerText::BadAudio(PlaybackError::G711Rate { .. })
            ));
        }
    }

    #[test]
    fn bad_stream_audio_is_an_error_not_a_panic() {
        let bad_b64 = r#"{"type":"streamAudio","data":{"audioDataType":"raw","sampleRate":8000,"audioData":"@@not base64@@"}}"#;
        assert!(matches!(
            parse_server_text(bad_b64, 8000),
            ServerText::BadAudio(PlaybackError::BadBase64(_))
        ));
        for malformed in [
            r#"{"type":"streamAudio"}"#,
            r#"{"type":"streamAudio","data":{"audioDataType":"raw","audioData":""}}"#,
            r#"{"type":"streamAudio","data":{"audioDataType":7,"audioData":""}}"#,
        ] {
            assert!(
                matches!(
                    parse_server_text(malformed, 8000),
                    ServerText::BadAudio(PlaybackError::Malformed(_))
                ),
                "{malformed}"
            );
        }
        assert!(matches!(
            parse_server_text(&stream_audio("mp3", 8000, b"xx"), 8000),
            ServerText::BadAudio(PlaybackError::Unsupported(_))
        ));
        assert!(matches!(
            parse_server_text(&stream_audio("raw", 8000, &[1, 2, 3]), 8000),
            ServerText::BadAudio(PlaybackError::OddLength(3))
        ));
    }

    #[test]
    fn other_texts_and_clear_audio() {
        assert_eq!(
            parse_server_text(r#"{"type":"clearAudio"}"#, 8000),
            ServerText::ClearAudio
        );
        for t in [r#"{"type":"transcript","text":"hi"}"#, "plain", "{}", "[1]"] {
            assert_eq!(parse_server_text(t, 8000), ServerText::Other, "{t}");
        }
    }

    // ---- playback buffer ----

    /// 1 kHz with 10 ms ticks: 10 samples per tick, easy to count.
    fn sim() -> PlaybackSim {
        PlaybackSim::new(1000, 10)
    }

    #[test]
    fn playback_plays_frames_in_order_with_silence_when_empty() {
        let mut p = sim();
        p.tick();
        p.push(&[1; 10]);
        p.push(&[2; 15]);
        p.tick();
        p.tick();
        p.tick();
        let mut want = vec![0; 10];
        want.extend([1; 10]);
        want.extend([2; 10]);
        want.extend([2; 5]);
        want.extend([0; 5]);
        assert_eq!(p.played, want);
        assert_eq!(p.responses, 1);
        assert_eq!(p.underrun_gaps, 0);
    }

    #[test]
    fn clear_audio_empties_the_buffer() {
        let mut p = sim();
        p.push(&[3; 40]);
        p.tick();
        p.clear();
        assert_eq!(p.buffered(), 0);
        p.tick();
        p.push(&[4; 10]);
        p.tick();
        let mut want = vec![3; 10];
        want.extend([0; 10]);
        want.extend([4; 10]);
        assert_eq!(p.played, want);
        // The silence after a barge-in is not an underrun; the new audio is a new response.
        assert_eq!(p.underrun_gaps, 0);
        assert_eq!(p.responses, 2);
    }

    #[test]
    fn underrun_gaps_are_counted_and_measured() {
        let mut p = sim();
        p.push(&[1; 10]);
        p.tick();
        p.tick(); // dry 10 ms
        p.tick(); // dry 20 ms
        p.push(&[1; 15]);
        p.tick();
        p.tick(); // 5 samples then dry 5 ms
        p.push(&[1; 10]);
        p.tick();
        assert_eq!(p.underrun_gaps, 2);
        assert_eq!(p.underrun_max_ms(), 20);
        assert_eq!(p.responses, 1);
    }

    #[test]
    fn a_long_gap_ends_the_response() {
        let mut p = sim();
        p.push(&[1; 10]);
        p.tick();
        for _ in 0..(RESPONSE_END_GAP_MS / 10 + 1) {
            p.tick();
        }
        p.push(&[1; 10]);
        p.tick();
        assert_eq!(p.underrun_gaps, 0);
        assert_eq!(p.responses, 2);
    }

    #[test]
    fn flush_plays_the_rest() {
        let mut p = sim();
        p.push(&[9; 25]);
        p.tick();
        p.flush();
        assert_eq!(p.played, vec![9; 25]);
        assert_eq!(p.buffered(), 0);
    }

    // ---- summary ----

    fn sample_summary() -> CallSummary {
        CallSummary {
            call_id: "x".into(),
            url: "ws://h:1/call/x?token=***".into(),
            format: FormatSummary {
                codec: "L16".into(),
                rate: 8000,
                channels: "mono".into(),
                frame_ms: 20,
            },
            duration_ms: 1,
            interrupted: false,
            metadata_sent: true,
            metadata_after_frames: Some(0),
            frames_sent: 1,
            bytes_sent: 320,
            tail_frames_sent: 0,
            audio_sent_ms: 20,
            frames_received: 1,
            bytes_received: 320,
            audio_received_ms: 20,
            text_messages_received: 1,
            stream_audio_messages: 0,
            clear_audio_count: 0,
            other_text_messages: 1,
            last_other_texts: vec!["hello".into()],
            first_audio_latency_ms: Some(3),
            speech_end_offset_ms: None,
            speech_end_to_first_audio_ms: None,
            responses: 1,
            underrun_gaps: 0,
            underrun_max_ms: 0,
            raw_rate_mismatches: 1,
            bad_playback_messages: 0,
            playback_errors: vec!["oops".into()],
            pings_sent: 0,
            pongs_received: 0,
            pings_received: 0,
            out_wav: None,
            out_ms: 20,
            close: CloseSummary {
                by: ClosedBy::Client,
                code: Some(1000),
                reason: Some("Normal closure".into()),
                echoed: Some(true),
                echoed_within_1s: Some(true),
                echo_code: Some(1000),
                echo_ms: Some(1),
                error: None,
            },
        }
    }

    #[test]
    fn summary_round_trips_through_json_and_prints() {
        let s = sample_summary();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""by":"client""#), "{json}");
        let back: CallSummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let human = human_summary(&s);
        assert!(human.contains("echoed in 1 ms"), "{human}");
        assert!(human.contains("ERRORS"), "{human}");
    }

    // ---- against a loopback WebSocket server ----

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
}
