//! A fake Asterisk on the AudioSocket side, faithful to res_audiosocket.c /
//! app_audiosocket.c / chan_audiosocket.c (and independent of voicebridge's code):
//! - it is the TCP client and sets TCP_NODELAY; its first message is the UUID
//!   (kind 0x01, the 16 raw bytes);
//! - every message is kind + 2-byte big-endian length + payload, written with one
//!   write (Asterisk builds the message in one buffer);
//! - it sends 20 ms slin frames on its own clock (the channel's), 0x10 at 8 kHz, 0x12
//!   at 16 kHz, 0x13 at 24 kHz; DTMF as kind 0x03 with one ASCII digit;
//! - it plays what it receives at once, with no queue: each audio message is "heard"
//!   the moment it is read (so the arrival times are the playout);
//! - it hangs up by closing the socket (it never sends 0x00); on receiving 0x00 or any
//!   kind it does not expect it ends its side and closes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::daemon::HANG_GUARD;

pub const KIND_HANGUP: u8 = 0x00;
pub const KIND_UUID: u8 = 0x01;
pub const KIND_DTMF: u8 = 0x03;
pub const KIND_ERROR: u8 = 0xff;

/// The slin kind Asterisk uses for `rate`.
pub fn kind_of(rate: u32) -> u8 {
    match rate {
        8000 => 0x10,
        12000 => 0x11,
        16000 => 0x12,
        24000 => 0x13,
        32000 => 0x14,
        48000 => 0x16,
        other => panic!("no slin kind for {other} Hz"),
    }
}

/// One message: kind, big-endian length, payload.
pub fn message(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

pub fn le(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// What the fake has heard so far.
#[derive(Debug, Default, Clone)]
pub struct Heard {
    /// Each audio message as it arrived: when, kind, samples.
    pub frames: Vec<(Instant, u8, Vec<i16>)>,
    /// voicebridge sent the hang-up message.
    pub hangup: bool,
    /// Kinds that Asterisk would drop the call for (0x01, 0x03, 0xff, unknown, empty).
    pub bad: Vec<u8>,
    /// The connection ended (EOF or error).
    pub closed: bool,
}

impl Heard {
    pub fn audio(&self) -> Vec<i16> {
        self.frames
            .iter()
            .flat_map(|(_, _, s)| s.iter().copied())
            .collect()
    }

    /// Ms of the messages in `range` the caller had heard by `at`. Asterisk writes each
    /// message to the channel the moment it arrives; the phone plays them one after
    /// another (a message that arrives while another plays waits for it).
    pub fn played_ms_at(&self, range: std::ops::Range<usize>, at: Instant, rate: u32) -> f64 {
        let mut end: Option<Instant> = None;
        let mut played = 0.0;
        for (arrival, _, samples) in &self.frames[range] {
            let start = end.map_or(*arrival, |e| e.max(*arrival));
            let len = Duration::from_secs_f64(samples.len() as f64 / f64::from(rate));
            let heard = at.saturating_duration_since(start).min(len);
            played += heard.as_secs_f64() * 1000.0;
            end = Some(start + len);
        }
        played
    }

    /// The first message with sound in it (voicebridge sends silence frames as a
    /// keep-alive while it has nothing to say).
    pub fn first_sound(&self) -> Option<usize> {
        self.frames
            .iter()
            .position(|(_, _, s)| s.iter().any(|v| *v != 0))
    }

    /// Messages with sound in them.
    pub fn sound_frames(&self) -> usize {
        self.frames
            .iter()
            .filter(|(_, _, s)| s.iter().any(|v| *v != 0))
            .count()
    }

    /// (arrival, samples) per message, for `max_lead_ms`.
    pub fn audio_frames(&self) -> Vec<(Instant, usize)> {
        self.frames.iter().map(|(t, _, s)| (*t, s.len())).collect()
    }
}

pub struct Asterisk {
    write: OwnedWriteHalf,
    heard: Arc<Mutex<Heard>>,
    frames: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    reader: JoinHandle<()>,
}

impl Asterisk {
    /// Connects and sends the UUID, as the driver does when the channel is dialled.
    pub async fn call(addr: std::net::SocketAddr, uuid: &str) -> Asterisk {
        let mut a = Asterisk::connect(addr).await;
        a.send(KIND_UUID, &uuid_bytes(uuid)).await;
        a
    }

    /// Connects only (tests of what comes first).
    pub async fn connect(addr: std::net::SocketAddr) -> Asterisk {
        let stream = TcpStream::connect(addr).await.expect("connect AudioSocket");
        stream.set_nodelay(true).expect("nodelay");
        let (read, write) = stream.into_split();
        let heard = Arc::new(Mutex::new(Heard::default()));
        let frames = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(Notify::new());
        let reader = tokio::spawn(read_loop(
            read,
            Arc::clone(&heard),
            Arc::clone(&frames),
            Arc::clone(&notify),
        ));
        Asterisk {
            write,
            heard,
            frames,
            notify,
            reader,
        }
    }

    /// One message in one write; a write error (voicebridge closed) is ignored, as
    /// the read side reports the end.
    pub async fn send(&mut self, kind: u8, payload: &[u8]) {
        let _ = self.write.write_all(&message(kind, payload)).await;
    }

    /// Raw bytes (for malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.write.write_all(bytes).await;
    }

    pub async fn dtmf(&mut self, digit: char) {
        self.send(KIND_DTMF, &[digit as u8]).await;
    }

    /// `samples` as 20 ms frames at `rate`, one every 20 ms of the fake's own clock.
    pub async fn send_paced(&mut self, samples: &[i16], rate: u32) {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for frame in samples.chunks(rate as usize / 50) {
            clock.tick().await;
            self.send(kind_of(rate), &le(frame)).await;
            if self.heard().closed {
                break;
            }
        }
    }

    pub fn heard(&self) -> Heard {
        self.heard.lock().unwrap().clone()
    }

    /// A handle on what is heard, for a test whose sending runs in another task.
    pub fn watch(&self) -> Watch {
        Watch {
            heard: Arc::clone(&self.heard),
            frames: Arc::clone(&self.frames),
            notify: Arc::clone(&self.notify),
        }
    }

    /// Waits until `n` audio messages have been heard.
    pub async fn wait_frames(&self, n: usize) {
        self.watch().wait_frames(n).await
    }

    /// The caller hangs up: Asterisk closes the socket (no 0x00). Returns all heard.
    pub async fn hang_up(mut self) -> Heard {
        let _ = self.write.shutdown().await;
        drop(self.write);
        let _ = tokio::time::timeout(HANG_GUARD, &mut self.reader).await;
        let heard = self.heard.lock().unwrap().clone();
        heard
    }

    /// Waits for voicebridge to end the call (its hang-up, or its close), then closes
    /// as Asterisk does.
    pub async fn wait_end(mut self) -> Heard {
        tokio::time::timeout(HANG_GUARD, &mut self.reader)
            .await
            .expect("voicebridge did not end the AudioSocket call")
            .expect("reader task");
        drop(self.write);
        let heard = self.heard.lock().unwrap().clone();
        heard
    }
}

/// What the fake has heard, watched from another task.
#[derive(Clone)]
pub struct Watch {
    heard: Arc<Mutex<Heard>>,
    frames: Arc<AtomicUsize>,
    notify: Arc<Notify>,
}

impl Watch {
    pub fn heard(&self) -> Heard {
        self.heard.lock().unwrap().clone()
    }

    pub fn frames(&self) -> usize {
        self.frames.load(Ordering::SeqCst)
    }

    /// Waits until `n` audio messages have been heard.
    pub async fn wait_frames(&self, n: usize) {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if self.frames.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(HANG_GUARD, wait)
            .await
            .unwrap_or_else(|_| panic!("{n} audio frames not heard"));
    }
}

/// A UUID's 16 bytes from its text form (what `ast_audiosocket_init` sends).
pub fn uuid_bytes(uuid: &str) -> Vec<u8> {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    assert_eq!(hex.len(), 32, "not a UUID: {uuid}");
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

async fn read_loop(
    mut read: OwnedReadHalf,
    heard: Arc<Mutex<Heard>>,
    frames: Arc<AtomicUsize>,
    notify: Arc<Notify>,
) {
    loop {
        let mut header = [0u8; 3];
        if read.read_exact(&mut header).await.is_err() {
            break;
        }
        let kind = header[0];
        let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            break;
        }
        let now = Instant::now();
        match kind {
            KIND_HANGUP => {
                heard.lock().unwrap().hangup = true;
                break;
            }
            0x10..=0x18 if len > 0 => {
                let samples = payload
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                heard.lock().unwrap().frames.push((now, kind, samples));
                frames.fetch_add(1, Ordering::SeqCst);
            }
            // Asterisk logs an error and drops the call for anything else.
            other => {
                heard.lock().unwrap().bad.push(other);
                break;
            }
        }
        notify.notify_waiters();
    }
    heard.lock().unwrap().closed = true;
    notify.notify_waiters();
}
