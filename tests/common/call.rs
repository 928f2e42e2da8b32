//! One call from the fake FreeSWITCH's point of view: connect, stream, collect what
//! comes back with arrival times, close like the module.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::daemon::{Daemon, HANG_GUARD};
use super::fake_freeswitch::{
    CloseOutcome, ConnectOptions, FakeFreeSwitch, FsReader, FsWriter, ServerFrame,
};

/// What FreeSWITCH received, in order.
#[derive(Debug, Clone)]
pub enum Playback {
    /// Audio samples of one message (binary L16, or decoded streamAudio), with the
    /// streamAudio `audioDataType`/`sampleRate` when it came as JSON.
    Audio {
        at: Instant,
        /// The payload decoded as the label says (binary frames as L16).
        samples: Vec<i16>,
        /// The payload as received (binary) or base64-decoded (streamAudio).
        bytes: Vec<u8>,
        label: Option<(String, u64)>,
    },
    Clear {
        at: Instant,
    },
    OtherText(String),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

pub struct Collected {
    pub events: Vec<Playback>,
    pub error: Option<String>,
}

impl Collected {
    pub fn audio(&self) -> Vec<i16> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Playback::Audio { samples, .. } => Some(samples.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    /// Payload bytes of every audio message, concatenated.
    pub fn audio_bytes(&self) -> Vec<u8> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Playback::Audio { bytes, .. } => Some(bytes.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    pub fn audio_frames(&self) -> Vec<(Instant, usize)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Playback::Audio { at, samples, .. } => Some((*at, samples.len())),
                _ => None,
            })
            .collect()
    }

    pub fn clears(&self) -> Vec<Instant> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Playback::Clear { at } => Some(*at),
                _ => None,
            })
            .collect()
    }
}

pub fn decode_l16(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

pub fn l16(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Interleaves a stereo stream: left = caller, right = what is played to the caller.
pub fn stereo(left: &[i16], right: &[i16]) -> Vec<i16> {
    left.iter()
        .zip(right.iter().chain(std::iter::repeat(&0)))
        .flat_map(|(l, r)| [*l, *r])
        .collect()
}

fn classify(frame: ServerFrame, counter: &AtomicUsize) -> Playback {
    let at = Instant::now();
    match frame {
        ServerFrame::Binary(b) => {
            counter.fetch_add(1, Ordering::SeqCst);
            Playback::Audio {
                at,
                samples: decode_l16(&b),
                bytes: b,
                label: None,
            }
        }
        ServerFrame::Text(t) => {
            let v: serde_json::Value = match serde_json::from_str(&t) {
                Ok(v) => v,
                Err(_) => return Playback::OtherText(t),
            };
            match v["type"].as_str() {
                Some("clearAudio") => Playback::Clear { at },
                Some("streamAudio") => {
                    let data = &v["data"];
                    let kind = data["audioDataType"].as_str().unwrap_or("").to_owned();
                    let rate = data["sampleRate"].as_u64().unwrap_or(0);
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data["audioData"].as_str().unwrap_or(""))
                        .expect("streamAudio audioData is valid base64");
                    let mut samples = Vec::new();
                    match kind.as_str() {
                        "raw" => samples = decode_l16(&bytes),
                        "pcmu" => voicebridge::audio::g711::ulaw_decode(&bytes, &mut samples),
                        "pcma" => voicebridge::audio::g711::alaw_decode(&bytes, &mut samples),
                        other => panic!("unexpected audioDataType {other}: {t:.200}"),
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    Playback::Audio {
                        at,
                        samples,
                        bytes,
                        label: Some((kind, rate)),
                    }
                }
                _ => Playback::OtherText(t),
            }
        }
        ServerFrame::Ping(_) => Playback::OtherText(String::new()),
        ServerFrame::Pong(p) => Playback::Pong(p),
        ServerFrame::Close(code, reason) => Playback::Close(code, reason),
    }
}

/// Reads everything until the stream ends (the module's reader thread).
pub fn spawn_reader(mut reader: FsReader, counter: Arc<AtomicUsize>) -> JoinHandle<Collected> {
    tokio::spawn(async move {
        let mut events = Vec::new();
        let error = loop {
            match reader.recv().await {
                Ok(Some(ServerFrame::Ping(_))) => {}
                Ok(Some(f)) => events.push(classify(f, &counter)),
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        Collected { events, error }
    })
}

/// A connected call: the writer half, the reader task and a live count of audio
/// messages received.
pub struct Call {
    pub writer: FsWriter,
    pub reader: JoinHandle<Collected>,
    pub received: Arc<AtomicUsize>,
    pub id: String,
}

impl Call {
    pub async fn connect(daemon: &Daemon, route: &str, id: &str, query: &str) -> Call {
        let opts = ConnectOptions::new(daemon.addr, format!("/{route}/{id}?{query}"));
        let fs = FakeFreeSwitch::connect(&opts).await.expect("handshake");
        assert!(
            fs.handshake().extensions.is_none(),
            "deflate must be declined"
        );
        assert!(fs.handshake().protocol.is_none(), "no subprotocol");
        let (writer, reader) = fs.split();
        let received = Arc::new(AtomicUsize::new(0));
        let reader = spawn_reader(reader, received.clone());
        Call {
            writer,
            reader,
            received,
            id: id.to_owned(),
        }
    }

    /// Waits (on the media clock, no sleeps as sync) until `n` audio messages came.
    pub async fn wait_received(&self, n: usize) {
        let wait = async {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while self.received.load(Ordering::SeqCst) < n {
                tick.tick().await;
            }
        };
        tokio::time::timeout(HANG_GUARD, wait)
            .await
            .expect("playback never arrived");
    }

    /// Closes like the module and returns what was received.
    pub async fn close(self) -> (CloseOutcome, Collected) {
        let outcome = self.writer.close().await.expect("close");
        let collected = tokio::time::timeout(HANG_GUARD, self.reader)
            .await
            .expect("reader ends after close")
            .expect("reader task");
        (outcome, collected)
    }
}

/// Sends `samples` (interleaved if `channels == 2`) as 20 ms messages paced in real time.
pub async fn send_paced(writer: &FsWriter, samples: &[i16], rate: u32, channels: usize) {
    let per_msg = (rate as usize / 50) * channels;
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for chunk in samples.chunks(per_msg) {
        clock.tick().await;
        writer.send_audio(&l16(chunk)).await.expect("send audio");
    }
}

/// Keeps sending 20 ms frames of `byte` in real time until the daemon closes the call
/// (or `max_frames` went out), in its own task: for scripts where the daemon ends it.
pub fn spawn_talker(writer: FsWriter, byte: u8, max_frames: usize) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..max_frames {
            clock.tick().await;
            if writer.send_audio(&[byte; 320]).await.is_err() {
                break;
            }
        }
    })
}

/// Sends `samples` (mono L16 at `rate`) in real time from a task of its own, until done
/// or until the daemon closes the call: a caller talking through a scripted turn.
pub fn spawn_speech(writer: FsWriter, samples: Vec<i16>, rate: u32) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        for chunk in samples.chunks(rate as usize / 50) {
            clock.tick().await;
            if writer.send_audio(&l16(chunk)).await.is_err() {
                break;
            }
        }
    })
}

impl Call {
    /// A mono L16 call on the default route whose metadata names the caller
    /// (`+3902123` calling `100`), and who then says `speech` (`seconds` of speech-like
    /// audio) in real time.
    pub async fn with_caller(daemon: &Daemon, id: &str, rate: u32, seconds: f64) -> Call {
        let query = format!("rate={rate}&channels=mono");
        let call = Call::connect(daemon, "call", id, &query).await;
        call.writer
            .send_text(&format!(
                r#"{{"uuid":"{id}","caller_id":"+3902123","called":"100"}}"#
            ))
            .await
            .expect("metadata");
        spawn_speech(
            call.writer.clone(),
            voicebridge::audio::signal::speech_like(rate, seconds, 5),
            rate,
        );
        call
    }
}

/// The maximum number of ms the released audio ran ahead of real time, measured from
/// the first audio message: what the pacer's lead bounds.
pub fn max_lead_ms(frames: &[(Instant, usize)], rate: u32) -> f64 {
    let Some((t0, _)) = frames.first() else {
        return 0.0;
    };
    let mut released = 0usize;
    let mut max = 0.0f64;
    for (at, n) in frames {
        released += n;
        let audio_ms = released as f64 * 1000.0 / rate as f64;
        let elapsed_ms = at.duration_since(*t0).as_secs_f64() * 1000.0;
        max = max.max(audio_ms - elapsed_ms);
    }
    max
}

/// A test signal that starts at once (so alignment can be found) and covers the
/// telephone band: a 0.5 s sweep 300–3400 Hz faded out over 50 ms (an abrupt stop
/// would be a broadband click that no band-limited path can reproduce), then speech.
pub fn test_signal(rate: u32, secs: f64, seed: u64) -> Vec<i16> {
    let n = rate as usize / 2;
    let mut s = voicebridge::audio::signal::sweep(rate, 300.0, 3400.0, -12.0, n);
    let fade = rate as usize / 20;
    for i in 0..fade {
        let g = 0.5 + 0.5 * (std::f64::consts::PI * (i + 1) as f64 / fade as f64).cos();
        let k = n - fade + i;
        s[k] = (f64::from(s[k]) * g).round() as i16;
    }
    s.extend(voicebridge::audio::signal::speech_like(
        rate,
        secs - 0.5,
        seed,
    ));
    s
}
