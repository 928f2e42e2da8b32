//! `voicebridge call --protocol audiosocket`: a stand-in for Asterisk's AudioSocket
//! (the `AudioSocket()` application / `Dial(AudioSocket/...)`): it connects over TCP to
//! `HOST:PORT[/UUID]`, sends the UUID, then the WAV as 20 ms slin messages of the kind
//! for its rate on a real-time clock, optional DTMF digits after it, and hangs up by
//! closing the socket, as Asterisk does. What comes back is heard the way a phone hears
//! Asterisk's writes: queued and played out 20 ms per tick ([`Ear`]), into `--out`.
//!
//! The FreeSWITCH path (`call::run`) is untouched; only the WAV reading and the tail
//! rule are shared.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use voicebridge::telephony::audiosocket::frame::{self, Decoder, Message};

use super::args::{CallArgs, CallError};
use super::tail::{Tail, TailClock};
use super::wav::{read_caller_wav, OutWav};

/// Asterisk's own connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages over this are not AudioSocket audio (voicebridge sends 20 ms frames).
const MAX_PAYLOAD: usize = 16 * 1024;
const FRAME_MS: u64 = 20;

/// Where to call: `HOST:PORT` and the UUID (made up when the target has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub uuid: uuid::Uuid,
}

/// `HOST:PORT[/UUID]`, also with a `tcp://` or `audiosocket://` prefix.
pub fn parse_target(s: &str) -> Result<Target, CallError> {
    let bad = |reason: &str| CallError::InvalidUrl {
        url: s.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = s
        .strip_prefix("tcp://")
        .or_else(|| s.strip_prefix("audiosocket://"))
        .unwrap_or(s);
    let (addr, uuid) = match rest.split_once('/') {
        Some((a, u)) if !u.is_empty() => (a, Some(u)),
        Some((a, _)) => (a, None),
        None => (rest, None),
    };
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|_| bad("expected HOST:PORT[/UUID] with an IP address, e.g. 127.0.0.1:9092"))?;
    let uuid = match uuid {
        Some(u) => uuid::Uuid::parse_str(u)
            .map_err(|_| bad("the call id must be a UUID (Asterisk refuses anything else)"))?,
        None => uuid::Uuid::new_v4(),
    };
    Ok(Target { addr, uuid })
}

/// The caller's ear: Asterisk writes each message to the channel at once and the
/// phone's jitter buffer plays them out one 20 ms frame per tick. Like a jitter buffer
/// it starts (and restarts after running dry) once [`PREBUFFER`] frames are queued, so
/// arrival jitter against our own tick does not turn into gaps. Pure.
#[derive(Debug, Default)]
pub struct Ear {
    queue: std::collections::VecDeque<i16>,
    pub played: Vec<i16>,
    playing: bool,
    /// Times the queue ran dry while playing.
    pub underruns: u64,
}

/// Frames a playout waits for before it starts.
pub const PREBUFFER: usize = 2;

impl Ear {
    pub fn hear(&mut self, samples: &[i16]) {
        self.queue.extend(samples);
    }

    /// One 20 ms tick of `frame` samples; whether anything was played.
    pub fn tick(&mut self, frame: usize) -> bool {
        if !self.playing && self.queue.len() >= PREBUFFER * frame {
            self.playing = true;
        }
        if !self.playing {
            self.played.extend(std::iter::repeat_n(0, frame));
            return false;
        }
        let n = frame.min(self.queue.len());
        self.played.extend(self.queue.drain(..n));
        self.played.extend(std::iter::repeat_n(0, frame - n));
        if n < frame {
            // Ran dry: a gap is heard, and the playout waits to refill. (Between
            // replies this is the normal end of a reply; only the count is kept.)
            self.playing = false;
            self.underruns += 1;
        }
        n > 0
    }

    /// The rest of the queue, at the end of the call.
    pub fn flush(&mut self) {
        self.played.extend(self.queue.drain(..));
    }
}

/// What `call --protocol audiosocket --json` prints (field names are a contract).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct AudioSocketSummary {
    pub protocol: &'static str,
    pub call_id: String,
    pub addr: String,
    pub rate: u32,
    pub kind: u8,
    pub duration_ms: u64,
    pub frames_sent: u64,
    pub audio_sent_ms: u64,
    pub dtmf_sent: u64,
    pub frames_received: u64,
    pub audio_received_ms: u64,
    /// Audio messages of another kind (rate) than ours.
    pub wrong_kind_messages: u64,
    /// Times the caller's ear ran dry (gaps heard; also once at each reply's end).
    pub underruns: u64,
    /// From the first audio message sent to the first one received.
    pub first_audio_latency_ms: Option<u64>,
    /// `client` (we closed, as Asterisk does at hang-up), `server` (voicebridge sent
    /// the hang-up message or closed), `none` (error).
    pub closed_by: &'static str,
    pub hangup_received: bool,
    pub error: Option<String>,
    pub out_wav: Option<String>,
    pub out_ms: u64,
}

impl AudioSocketSummary {
    fn print(&self, json: bool) {
        if json {
            match serde_json::to_string(self) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("voicebridge call: cannot print the summary: {e}"),
            }
            return;
        }
        println!(
            "AudioSocket call {} to {} at {} Hz: sent {} ms ({} frames, {} DTMF), received {} ms ({} frames), first audio after {}, closed by {}{}",
            self.call_id,
            self.addr,
            self.rate,
            self.audio_sent_ms,
            self.frames_sent,
            self.dtmf_sent,
            self.audio_received_ms,
            self.frames_received,
            self.first_audio_latency_ms
                .map_or("-".to_owned(), |ms| format!("{ms} ms")),
            self.closed_by,
            self.error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})")),
        );
    }
}

/// Places the call and prints the summary; exit 1 if it could not be placed.
pub async fn main(args: &CallArgs) -> std::process::ExitCode {
    match run(args).await {
        Ok(summary) => {
            summary.print(args.json);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("voicebridge call: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How the streaming loop stopped.
enum End {
    Finished,
    Server { hangup: bool },
    Lost(String),
}

pub async fn run(args: &CallArgs) -> Result<AudioSocketSummary, CallError> {
    let target = parse_target(&args.url)?;
    let caller = read_caller_wav(&args.wav)?;
    let rate = args.rate.unwrap_or(caller.rate);
    if caller.rate != rate {
        return Err(CallError::RateMismatch {
            path: args.wav.clone(),
            wav_rate: caller.rate,
            rate,
        });
    }
    let kind = frame::slin_kind(rate).ok_or_else(|| {
        CallError::InvalidOption(format!(
            "AudioSocket has no slin kind voicebridge takes at {rate} Hz (8000, 12000, 16000, 24000, 32000, 48000)"
        ))
    })?;
    let digits: Vec<u8> = args.dtmf.as_deref().unwrap_or("").bytes().collect();
    if let Some(bad) = digits
        .iter()
        .find(|d| !matches!(d, b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D'))
    {
        return Err(CallError::InvalidOption(format!(
            "--dtmf: {:?} is not a DTMF digit (0-9 * # A-D)",
            char::from(*bad)
        )));
    }
    let writer = match &args.out {
        Some(path) => Some(OutWav::create(path, rate)?),
        None => None,
    };
    let frame_samples = rate as usize / 50;
    let mut signal = caller.samples;
    let wav_frames = signal.len().div_ceil(frame_samples);
    signal.resize(wav_frames * frame_samples, 0);
    let silence = vec![0i16; frame_samples];
    let fixed_tail_ms = args
        .tail_ms
        .or(args.tail_secs.map(|secs| (secs * 1000.0).round() as u64));
    let mut tail = TailClock::new(match fixed_tail_ms {
        Some(ms) => Tail::Frames(ms.div_ceil(FRAME_MS)),
        None => Tail::until_quiet(),
    });

    let addr = target.addr;
    let started = Instant::now();
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(CallError::Connect {
                url: addr.to_string(),
                reason: e.to_string(),
            })
        }
        Err(_) => {
            return Err(CallError::Connect {
                url: addr.to_string(),
                reason: format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            })
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let mut out = Vec::with_capacity(1024);
    frame::encode(frame::KIND_UUID, target.uuid.as_bytes(), &mut out);

    let decoder = Decoder::new(MAX_PAYLOAD);
    let mut buf = BytesMut::with_capacity(4096);
    let mut ear = Ear::default();
    let (mut frames_sent, mut frames_received, mut samples_received) = (0u64, 0u64, 0u64);
    let mut wrong_kind = 0u64;
    let mut dtmf_sent = 0u64;
    let mut first_sent: Option<Instant> = None;
    let mut first_latency: Option<Duration> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(FRAME_MS));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    if wav_frames == 0 {
        tail.wav_ended(Instant::now());
    }
    let end = 'call: loop {
        let tail_frames = (frames_sent as usize).saturating_sub(wav_frames) as u64;
        if frames_sent as usize >= wav_frames && tail.done(tail_frames, Instant::now()) {
            break End::Finished;
        }
        tokio::select! {
            _ = ticker.tick() => {
                if ear.tick(frame_samples) {
                    tail.audible(Instant::now());
                }
                let i = frames_sent as usize;
                let samples = signal
                    .get(i * frame_samples..(i + 1) * frame_samples)
                    .unwrap_or(&silence);
                let payload: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                frame::encode(kind, &payload, &mut out);
                frames_sent += 1;
                if frames_sent as usize == wav_frames {
                    tail.wav_ended(Instant::now());
                    for d in &digits {
                        frame::encode(frame::KIND_DTMF, &[*d], &mut out);
                        dtmf_sent += 1;
                    }
                }
                // One write per tick: Asterisk writes each message whole.
                if let Err(e) = write.write_all(&out).await {
                    break End::Lost(format!("write failed: {e}"));
                }
                out.clear();
                first_sent.get_or_insert_with(Instant::now);
            }
            read_result = read.read_buf(&mut buf) => {
                match read_result {
                    Ok(0) => break End::Server { hangup: false },
                    Err(e) => break End::Lost(format!("read failed: {e}")),
                    Ok(_) => {}
                }
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(None) => break,
                        Ok(Some(Message::Hangup)) => break 'call End::Server { hangup: true },
                        Ok(Some(Message::Audio { rate: r, payload })) => {
                            if r != rate {
                                wrong_kind += 1;
                            }
                            let samples: Vec<i16> = payload
                                .chunks_exact(2)
                                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                                .collect();
                            frames_received += 1;
                            samples_received += samples.len() as u64;
                            ear.hear(&samples);
                            if let (None, Some(t)) = (first_latency, first_sent) {
                                first_latency = Some(t.elapsed());
                            }
                        }
                        // Asterisk drops the call for anything else voicebridge might send.
                        Ok(Some(other)) => {
                            break 'call End::Lost(format!("voicebridge sent a message Asterisk refuses: {other:?}"))
                        }
                        Err(e) => break 'call End::Lost(format!("voicebridge sent bad framing: {e}")),
                    }
                }
                buf.reserve(4096);
            }
        }
    };
    // Asterisk hangs up by closing the socket.
    let _ = write.shutdown().await;
    drop(write);
    let duration = started.elapsed();
    ear.flush();
    let out_ms = ear.played.len() as u64 * 1000 / u64::from(rate);
    if let Some(w) = writer {
        w.write(&ear.played)?;
    }
    let (closed_by, hangup_received, error) = match end {
        End::Finished => ("client", false, None),
        End::Server { hangup } => ("server", hangup, None),
        End::Lost(e) => ("none", false, Some(e)),
    };
    Ok(AudioSocketSummary {
        protocol: "audiosocket",
        call_id: target.uuid.to_string(),
        addr: addr.to_string(),
        rate,
        kind,
        duration_ms: ms(duration),
        frames_sent,
        audio_sent_ms: frames_sent * FRAME_MS,
        dtmf_sent,
        frames_received,
        audio_received_ms: samples_received * 1000 / u64::from(rate),
        wrong_kind_messages: wrong_kind,
        underruns: ear.underruns,
        first_audio_latency_ms: first_latency.map(ms),
        closed_by,
        hangup_received,
        error,
        out_wav: args.out.as_ref().map(|p| p.display().to_string()),
        out_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_host_port_and_an_optional_uuid() {
        let t = parse_target("127.0.0.1:9092/0f6c1f2a-1111-4e8b-9a41-5d6e7f809101").unwrap();
        assert_eq!(t.addr.to_string(), "127.0.0.1:9092");
        assert_eq!(t.uuid.to_string(), "0f6c1f2a-1111-4e8b-9a41-5d6e7f809101");
        let t = parse_target("tcp://[::1]:9092").unwrap();
        assert_eq!(t.addr.to_string(), "[::1]:9092");
        assert!(parse_target("audiosocket://10.0.0.5:9092/").is_ok());
        assert!(parse_target("localhost:9092").is_err());
        assert!(parse_target("127.0.0.1:9092/not-a-uuid").is_err());
    }

    #[test]
    fn the_ear_prebuffers_then_plays_one_frame_per_tick() {
        let mut ear = Ear::default();
        assert!(!ear.tick(2));
        ear.hear(&[1, 2]);
        assert!(!ear.tick(2), "one frame is not enough to start");
        ear.hear(&[3, 4]);
        assert!(ear.tick(2));
        ear.hear(&[5, 6]);
        assert!(ear.tick(2));
        assert!(ear.tick(2));
        assert!(!ear.tick(2), "ran dry: waits for the prebuffer again");
        assert_eq!(ear.underruns, 1);
        assert_eq!(ear.played, vec![0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0]);
        ear.hear(&[7, 8, 9, 10, 11]);
        assert!(ear.tick(2));
        assert!(ear.tick(2));
        assert!(ear.tick(2), "a partial frame plays, padded");
        assert_eq!(&ear.played[12..], &[7, 8, 9, 10, 11, 0]);
        assert_eq!(ear.underruns, 2);
        ear.hear(&[11]);
        ear.flush();
        assert_eq!(ear.played.last(), Some(&11));
    }
}
