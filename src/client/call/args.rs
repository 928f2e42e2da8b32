//! `voicebridge call`'s command line: the options (a documented contract: the same names,
//! defaults and checks as ever), the bearer token that never prints, and why a call could
//! not be placed.

use std::fmt;
use std::path::PathBuf;

use voicebridge::audio::{Channels, Codec};

use crate::client::core::{FRAME_MS, HANDSHAKE_TIMEOUT};

/// Default milliseconds of audio per binary message (the module's `STREAM_BUFFER_SIZE` default).
pub const DEFAULT_FRAME_MS: u32 = FRAME_MS;
/// The module refuses metadata longer than this (doc §1).
pub const MAX_METADATA_BYTES: usize = 8192;

/// A bearer token. Its `Debug` never shows the value, so `{:?}` of [`CallArgs`] is safe to log.
#[derive(Clone)]
pub struct BearerToken(String);

impl BearerToken {
    #[cfg(test)]
    pub fn new(token: impl Into<String>) -> Self {
        BearerToken(token.into())
    }

    pub(crate) fn expose(&self) -> &str {
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

/// Which telephony side `voicebridge call` plays.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// FreeSWITCH mod_audio_stream (URL ws://HOST:PORT/<route>/<call-uuid>).
    #[default]
    Freeswitch,
    /// Asterisk chan_websocket (URL ws://HOST:PORT/asterisk/<route>?call=<id>); the
    /// token goes as the HTTP Basic password; uses --wav, --out, --codec, --tail-*, --json.
    AsteriskWs,
    /// Asterisk AudioSocket over TCP (URL HOST:PORT[/UUID], an `[[audiosocket]]` listener).
    Audiosocket,
}

/// Place a test call to a running voicebridge, the way FreeSWITCH's mod_audio_stream would.
#[derive(clap::Args, Debug, Clone)]
pub struct CallArgs {
    /// The telephony side to play: freeswitch (mod_audio_stream), asterisk-ws (Asterisk
    /// chan_websocket) or audiosocket (Asterisk AudioSocket).
    #[arg(long, value_enum, default_value_t = Protocol::Freeswitch)]
    pub protocol: Protocol,

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

    /// AudioSocket only: DTMF digits (0-9 * # A-D) sent right after the WAV.
    #[arg(long, value_name = "DIGITS")]
    pub dtmf: Option<String>,
}

impl CallArgs {
    /// The same defaults as the command line, for tests.
    #[cfg(test)]
    pub fn new(url: impl Into<String>, wav: impl Into<PathBuf>) -> Self {
        CallArgs {
            protocol: Protocol::Freeswitch,
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
            dtmf: None,
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

pub(super) fn validate_args(args: &CallArgs) -> Result<(), CallError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
