//! A fake FreeSWITCH Event Socket (`mod_event_socket`, inbound mode), speaking the real
//! text protocol over TCP so the daemon's client is tested byte for byte:
//!
//! - on connect: `Content-Type: auth/request\n\n`
//! - `auth <pw>\n\n` → `Content-Type: command/reply\nReply-Text: +OK accepted\n\n`, or
//!   `-ERR invalid`, then `text/disconnect-notice` and the connection is closed
//! - `event json ...\n\n` → `Reply-Text: +OK event listener enabled json`; from then on
//!   only the events named are delivered (`DTMF`, `CUSTOM <subclass> ...`, or `ALL`), as
//!   FreeSWITCH filters them
//! - `api <cmd>\n\n` → `Content-Type: api/response\nContent-Length: N\n\n+OK ...`
//! - events: `Content-Length: N\nContent-Type: text/event-json\n\n{json}`, headers as
//!   JSON string members and the event body as `_body` (`switch_event_serialize_json`)
//!
//! Every command is recorded with its arrival time. The server can be stopped and
//! started again on the same port to test reconnects.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::daemon::HANG_GUARD;

const GOODBYE: &str = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n";

/// A command as received (the text before its blank line).
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub line: String,
}

#[derive(Default)]
struct State {
    commands: Mutex<Vec<Received>>,
    logins: Mutex<usize>,
    notify: Notify,
}

pub struct FakeEsl {
    pub addr: SocketAddr,
    password: String,
    state: Arc<State>,
    events: broadcast::Sender<Emitted>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FakeEsl {
    /// A loopback address with nothing listening (for "ESL down"), free to `start_at`.
    pub async fn reserve() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    }

    pub async fn start(password: &str) -> FakeEsl {
        FakeEsl::start_at("127.0.0.1:0".parse().unwrap(), password).await
    }

    pub async fn start_at(addr: SocketAddr, password: &str) -> FakeEsl {
        let listener = TcpListener::bind(addr).await.expect("bind fake ESL");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let (events, _) = broadcast::channel(1024);
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            password.to_owned(),
            state.clone(),
            events.clone(),
            stop.clone(),
        ));
        FakeEsl {
            addr,
            password: password.to_owned(),
            state,
            events,
            stop,
            task: Some(task),
        }
    }

    /// Closes the listener and every connection (FreeSWITCH going away).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Stops and listens again on the same port, with the same password.
    pub async fn restart(self) -> FakeEsl {
        let (addr, pw) = (self.addr, self.password.clone());
        self.stop().await;
        FakeEsl::start_at(addr, &pw).await
    }

    pub fn commands(&self) -> Vec<Received> {
        self.state.commands.lock().unwrap().clone()
    }

    /// `api` commands only, without the `api ` prefix.
    pub fn api_commands(&self) -> Vec<Received> {
        self.commands()
            .into_iter()
            .filter_map(|r| {
                r.line.strip_prefix("api ").map(|l| Received {
                    at: r.at,
                    line: l.to_owned(),
                })
            })
            .collect()
    }

    /// Successful logins so far.
    pub fn logins(&self) -> usize {
        *self.state.logins.lock().unwrap()
    }

    /// Waits until `n` received commands (whole lines, e.g. `auth x`, `api uuid_kill u`)
    /// satisfy `pred`; returns them in order.
    pub async fn wait_lines(&self, n: usize, pred: impl Fn(&str) -> bool) -> Vec<Received> {
        let wait = async {
            loop {
                let notified = self.state.notify.notified();
                let hits: Vec<Received> = self
                    .commands()
                    .into_iter()
                    .filter(|r| pred(&r.line))
                    .collect();
                if hits.len() >= n {
                    return hits;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(HANG_GUARD, wait).await {
            Ok(v) => v,
            Err(_) => panic!(
                "fake ESL: expected {n} matching commands, got {:#?}",
                self.commands()
            ),
        }
    }

    /// Like `wait_lines`, for `api` commands, without the `api ` prefix.
    pub async fn wait_api(&self, n: usize, pred: impl Fn(&str) -> bool) -> Vec<Received> {
        self.wait_lines(n, |l| l.strip_prefix("api ").is_some_and(&pred))
            .await
            .into_iter()
            .map(|r| Received {
                at: r.at,
                line: r.line.trim_start_matches("api ").to_owned(),
            })
            .collect()
    }

    /// Waits for the `n`-th successful login.
    pub async fn wait_logins(&self, n: usize) {
        let wait = async {
            loop {
                let notified = self.state.notify.notified();
                if self.logins() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(HANG_GUARD, wait)
            .await
            .expect("no ESL login");
    }

    /// Fires `CUSTOM mod_audio_stream::play` for channel `uuid` with `body` as the
    /// event body, to every subscribed connection, framed as FreeSWITCH does.
    pub fn emit_play(&self, uuid: &str, body: &Value) {
        let body = body.to_string();
        let event = json!({
            "Event-Name": "CUSTOM",
            "Core-UUID": "6b3a1c2e-0000-4000-8000-fake0000e51",
            "FreeSWITCH-Hostname": "fake-esl",
            "Event-Subclass": "mod_audio_stream::play",
            "Event-Date-Timestamp": "1767225600000000",
            "Channel-Name": format!("sofia/internal/1000@127.0.0.1"),
            "Unique-ID": uuid,
            "Content-Length": body.len().to_string(),
            "_body": body,
        })
        .to_string();
        let frame = format!(
            "Content-Length: {}\nContent-Type: text/event-json\n\n{event}",
            event.len()
        );
        let _ = self.events.send(Emitted {
            name: "CUSTOM".to_owned(),
            subclass: Some("mod_audio_stream::play".to_owned()),
            frame,
        });
    }

    /// Fires the `DTMF` event FreeSWITCH raises when the caller on channel `uuid`
    /// presses `digit` (headers as `switch_channel_dtmf` sets them).
    pub fn emit_dtmf(&self, uuid: &str, digit: char) {
        let event = json!({
            "Event-Name": "DTMF",
            "Core-UUID": "6b3a1c2e-0000-4000-8000-fake0000e51",
            "FreeSWITCH-Hostname": "fake-esl",
            "Event-Date-Timestamp": "1767225600000000",
            "Channel-Name": "sofia/internal/1000@127.0.0.1",
            "Unique-ID": uuid,
            "Caller-Unique-ID": uuid,
            "DTMF-Digit": digit.to_string(),
            "DTMF-Duration": "2000",
            "DTMF-Source": "RTP",
        })
        .to_string();
        let frame = format!(
            "Content-Length: {}\nContent-Type: text/event-json\n\n{event}",
            event.len()
        );
        let _ = self.events.send(Emitted {
            name: "DTMF".to_owned(),
            subclass: None,
            frame,
        });
    }
}

/// An event on its way to the subscribed connections.
#[derive(Clone, Debug)]
pub struct Emitted {
    name: String,
    subclass: Option<String>,
    frame: String,
}

/// What an `event <format> <names...>` command asked for: event names, and after
/// `CUSTOM` the subclasses.
#[derive(Default)]
struct Subscription {
    names: Vec<String>,
    subclasses: Vec<String>,
}

impl Subscription {
    fn parse(words: &str) -> Subscription {
        let mut sub = Subscription::default();
        let mut custom = false;
        for word in words.split_whitespace().skip(1) {
            if word == "CUSTOM" {
                custom = true;
            } else if custom {
                sub.subclasses.push(word.to_owned());
            } else {
                sub.names.push(word.to_owned());
            }
        }
        sub
    }

    fn wants(&self, e: &Emitted) -> bool {
        self.names.iter().any(|n| n == "ALL" || *n == e.name)
            || (e.name == "CUSTOM"
                && e.subclass
                    .as_ref()
                    .is_some_and(|s| self.subclasses.contains(s)))
    }
}

impl Drop for FakeEsl {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    password: String,
    state: Arc<State>,
    events: broadcast::Sender<Emitted>,
    stop: CancellationToken,
) {
    let mut conns = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                conns.push(tokio::spawn(connection(
                    stream,
                    password.clone(),
                    state.clone(),
                    events.subscribe(),
                    stop.clone(),
                )));
            }
        }
    }
    drop(listener);
    for c in conns {
        let _ = c.await;
    }
}

async fn connection(
    stream: TcpStream,
    password: String,
    state: Arc<State>,
    mut events: broadcast::Receiver<Emitted>,
    stop: CancellationToken,
) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if write
        .write_all(b"Content-Type: auth/request\n\n")
        .await
        .is_err()
    {
        return;
    }
    let mut authed = false;
    let mut subscribed: Option<Subscription> = None;
    loop {
        let mut command = String::new();
        // Read one command: lines up to a blank line. `line` outlives a cancelled
        // read_line (an event sent meanwhile), which keeps what it had read.
        let mut line = String::new();
        let got = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = events.recv(), if subscribed.is_some() => {
                    if let (Ok(e), Some(sub)) = (ev, subscribed.as_ref()) {
                        if sub.wants(&e) && write.write_all(e.frame.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                n = read.read_line(&mut line) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
            }
            let text = std::mem::take(&mut line);
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                if command.is_empty() {
                    continue;
                }
                break command;
            }
            if !command.is_empty() {
                command.push('\n');
            }
            command.push_str(text);
        };
        state.commands.lock().unwrap().push(Received {
            at: Instant::now(),
            line: got.clone(),
        });
        let reply = if let Some(pw) = got.strip_prefix("auth ") {
            if pw == password {
                authed = true;
                *state.logins.lock().unwrap() += 1;
                "Content-Type: command/reply\nReply-Text: +OK accepted\n\n".to_owned()
            } else {
                let _ = write
                    .write_all(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n")
                    .await;
                let _ = write
                    .write_all(
                        format!(
                            "Content-Type: text/disconnect-notice\nContent-Length: {}\n\n{GOODBYE}",
                            GOODBYE.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                state.notify.notify_waiters();
                return;
            }
        } else if !authed {
            "Content-Type: command/reply\nReply-Text: -ERR command not found\n\n".to_owned()
        } else if let Some(format) = got.strip_prefix("event ") {
            subscribed = Some(Subscription::parse(format));
            let format = format.split_whitespace().next().unwrap_or("plain");
            format!(
                "Content-Type: command/reply\nReply-Text: +OK event listener enabled {format}\n\n"
            )
        } else if let Some(cmd) = got.strip_prefix("api ") {
            let body = match cmd.split_whitespace().next() {
                Some("uuid_broadcast") => "+OK Message queued\n".to_owned(),
                _ => "+OK\n".to_owned(),
            };
            format!(
                "Content-Type: api/response\nContent-Length: {}\n\n{body}",
                body.len()
            )
        } else if got.starts_with("bgapi ") {
            let job = "7f4db78a-17d7-11dd-b7a0-db4edd065621";
            format!(
                "Content-Type: command/reply\nReply-Text: +OK Job-UUID: {job}\nJob-UUID: {job}\n\n"
            )
        } else {
            "Content-Type: command/reply\nReply-Text: -ERR command not found\n\n".to_owned()
        };
        state.notify.notify_waiters();
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
