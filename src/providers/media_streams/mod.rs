//! Any backend speaking the Twilio Media Streams protocol as a provider
//! (`provider = "media_streams"`): voicebridge dials `[providers.media_streams] url` per
//! call and plays Twilio's part, so a FreeSWITCH or Asterisk call can be handed to a
//! Pipecat bot or any other Twilio-protocol agent.
//!
//! Toward the backend: `connected`, `start` (fresh `MZ`/`CA`/`AC` ids, the call's
//! metadata and lookup answer as `customParameters`), `media` per 20 ms caller frame
//! (μ-law 8 kHz; the engine transcodes the call to it), `dtmf`, our echo of each `mark`
//! once the audio before it has played (the engine decides that), `stop` at the end.
//! From it: `media` (played through the engine's pacer), `mark`, `clear` (a barge-in,
//! performed at once). The protocol state is in `turn`, the messages in `wire`.

pub mod turn;
pub mod wire;

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::ws::{self, ProviderWs, Sink, Stream};
use super::{CallContext, ProviderChannels, ProviderCommand, ProviderEvent};
use crate::audio::AudioFormat;
use crate::config::{Config, MediaStreamsConfig};

/// Events parsed and not yet taken by the call; reading the socket pauses beyond it.
const MAX_OUTBOX: usize = 64;

/// The provider task for one call (see [`super::spawn`]).
pub fn run(
    config: &Config,
    _route: &crate::config::Route,
    ends: ProviderChannels,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    serve(config.providers.media_streams.clone(), ends)
}

/// Opens the backend socket with the configured token and headers.
async fn open(config: &MediaStreamsConfig) -> Result<ProviderWs, ws::ConnectError> {
    let bearer = format!("Bearer {}", config.token.expose());
    let mut headers: Vec<(&str, &str)> = config
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if !config.token.expose().is_empty() {
        headers.push(("authorization", bearer.as_str()));
    }
    ws::connect_with(&config.url, &headers, &[config.token.expose()]).await
}

async fn serve(config: MediaStreamsConfig, mut ends: ProviderChannels) {
    let mut context: Option<Arc<CallContext>> = None;
    let mut socket: Option<ProviderWs> = None;
    let connecting = open(&config);
    tokio::pin!(connecting);
    // Connect while the call waits for its metadata: `start` carries it.
    while socket.is_none() || context.is_none() {
        tokio::select! {
            result = &mut connecting, if socket.is_none() => match result {
                Ok(ws) => socket = Some(ws),
                Err(e) => {
                    let _ = ends.events.send(ProviderEvent::Error {
                        recoverable: false,
                        code: "connect_failed".to_owned(),
                        message: e.to_string(),
                    }).await;
                    return;
                }
            },
            command = ends.commands.recv() => match command {
                None | Some(ProviderCommand::Close) => {
                    if let Some(mut ws) = socket {
                        ws::close_unsplit(&mut ws).await;
                    }
                    return;
                }
                Some(ProviderCommand::Context(c)) => context = Some(c),
                Some(other) => debug!(command = ?other, "media_streams: not started yet: ignored"),
            },
        }
    }
    let (Some(socket), Some(context)) = (socket, context) else {
        return;
    };
    let (sink, stream) = ws::split(socket);
    let state = turn::Stream::new(wire::Sids::new(), std::time::Instant::now());
    let mut live = Live {
        sink,
        stream,
        state,
        outbox: VecDeque::new(),
    };
    for msg in [wire::connected(), live.state.start(&context)] {
        if let Err(e) = ws::send(&mut live.sink, Message::text(msg)).await {
            let _ = ends
                .events
                .send(ProviderEvent::Closed {
                    reason: format!("media_streams backend lost during setup: {e}"),
                })
                .await;
            return;
        }
    }
    info!(stream_sid = %live.state.sids.stream, call_sid = %live.state.sids.call, "media_streams: stream started");
    let ready = ProviderEvent::Ready {
        input: AudioFormat::pcmu(),
        output: AudioFormat::pcmu(),
    };
    if ends.events.send(ready).await.is_err() {
        return;
    }
    live.run(ends).await;
}

struct Live {
    sink: Sink,
    stream: Stream,
    state: turn::Stream,
    outbox: VecDeque<ProviderEvent>,
}

enum End {
    /// The call closed us (or went away): `stop`, then a polite close.
    Session,
    /// The backend ended or failed: this event tells the call.
    Backend(ProviderEvent),
}

impl Live {
    async fn run(mut self, mut ends: ProviderChannels) {
        match self.serve(&mut ends).await {
            End::Session => {
                let stop = self.state.stop();
                let _ = ws::send(&mut self.sink, Message::text(stop)).await;
                ws::close_politely(&mut self.sink, Some(&mut self.stream), "call ended").await;
            }
            End::Backend(event) => {
                self.outbox.push_back(event);
                while let Some(e) = self.outbox.pop_front() {
                    if ends.events.send(e).await.is_err() {
                        break;
                    }
                }
            }
        }
        debug!(clears = self.state.clears, "media_streams: stream over");
    }

    async fn serve(&mut self, ends: &mut ProviderChannels) -> End {
        let far = Instant::now() + std::time::Duration::from_secs(86_400 * 365);
        let mut ping = ws::ping_timer();
        loop {
            let reply_at = self.state.reply_deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                command = ends.commands.recv() => {
                    let Some(command) = command else { return End::Session };
                    if let Some(end) = self.on_command(command).await {
                        return end;
                    }
                }
                msg = self.stream.next(), if self.outbox.len() < MAX_OUTBOX => {
                    if let Some(end) = self.on_message(msg) {
                        return end;
                    }
                }
                permit = ends.events.reserve(), if !self.outbox.is_empty() => {
                    let Ok(permit) = permit else { return End::Session };
                    if let Some(e) = self.outbox.pop_front() {
                        permit.send(e);
                    }
                }
                _ = sleep_until(reply_at.unwrap_or(far)), if reply_at.is_some() => {
                    if let Some(e) = self.state.on_reply_due(std::time::Instant::now()) {
                        self.outbox.push_back(e);
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = ws::send(&mut self.sink, Message::Ping(Default::default())).await {
                        return lost(e);
                    }
                }
            }
        }
    }

    async fn on_command(&mut self, command: ProviderCommand) -> Option<End> {
        let messages = match command {
            ProviderCommand::Audio(frame) => {
                vec![self.state.media(std::time::Instant::now(), &frame)]
            }
            ProviderCommand::Dtmf(digits) => self.state.dtmf(&digits),
            ProviderCommand::MarkPlayed(name) => vec![self.state.mark(&name)],
            ProviderCommand::Close => return Some(End::Session),
            // The backend decides its replies: a truncate or cancel has no message in the
            // protocol (its own `clear` already stopped it), nor has a text to say.
            ProviderCommand::Truncate { .. }
            | ProviderCommand::Cancel
            | ProviderCommand::Say(_)
            | ProviderCommand::Context(_) => Vec::new(),
            ProviderCommand::ToolResult(r) => {
                debug!(id = %r.id, "media_streams: the backend calls no tools: result ignored");
                Vec::new()
            }
        };
        for msg in messages {
            if let Err(e) = ws::send(&mut self.sink, Message::text(msg)).await {
                return Some(lost(e));
            }
        }
        None
    }

    fn on_message(&mut self, msg: ws::Incoming) -> Option<End> {
        match msg {
            None => Some(closed("the backend closed the connection".to_owned())),
            Some(Err(e)) => Some(closed(format!("backend connection lost: {e}"))),
            Some(Ok(Message::Text(text))) => {
                match wire::parse(text.as_str()) {
                    Ok(m) => {
                        if let wire::FromBackend::Ignored(event) = &m {
                            debug!(event = %event, "media_streams: backend event ignored");
                        }
                        let events = self.state.on_backend(std::time::Instant::now(), m);
                        self.outbox.extend(events);
                    }
                    // One bad message is the backend's bug, not a reason to drop the call.
                    Err(e) => warn!(error = %e, "media_streams: bad backend message ignored"),
                }
                None
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, why) = ws::close_parts(frame);
                Some(closed(format!(
                    "the backend closed the stream ({code}: {why})"
                )))
            }
            // Binary is not part of the protocol (Twilio warns 31950); pings are answered
            // by tungstenite.
            Some(Ok(Message::Binary(_))) => {
                debug!("media_streams: binary frame from the backend ignored");
                None
            }
            Some(Ok(_)) => None,
        }
    }
}

fn closed(reason: String) -> End {
    End::Backend(ProviderEvent::Closed { reason })
}

fn lost(e: ws::SendError) -> End {
    closed(format!("backend connection lost: {e}"))
}

/// `voicebridge check`: opens the backend socket, sends `connected`, `start` and
/// `stop`, and closes.
pub async fn check(config: &Config, _route: &crate::config::Route) -> Result<String, String> {
    let cfg = &config.providers.media_streams;
    let mut socket = open(cfg).await.map_err(|e| e.to_string())?;
    let state = turn::Stream::new(wire::Sids::new(), std::time::Instant::now());
    let context = CallContext {
        call_id: "voicebridge-check".to_owned(),
        route: "check".to_owned(),
        vars: Default::default(),
    };
    let mut state = state;
    let result = async {
        use futures_util::SinkExt;
        for msg in [wire::connected(), state.start(&context), state.stop()] {
            socket
                .send(Message::text(msg))
                .await
                .map_err(|e| format!("sending failed: {e}"))?;
        }
        Ok::<_, String>(())
    }
    .await;
    ws::close_unsplit(&mut socket).await;
    result.map(|()| {
        format!(
            "Twilio-protocol backend {} accepted a stream",
            crate::redact::url(&cfg.url)
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(toml: &str) -> Result<Config, String> {
        Config::from_toml_str(toml, Vec::<(String, String)>::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_section_is_checked_at_startup() {
        let used = "[call]\nprovider = \"media_streams\"\n";
        let err = load(used).unwrap_err();
        assert!(err.contains("providers.media_streams.url"), "{err}");
        let ok = load(&format!(
            "{used}[providers.media_streams]\nurl = \"ws://127.0.0.1:9/ws\"\ntoken = \"t0k3n-abc\"\nheaders = {{ \"X-Tenant\" = \"acme\" }}\n"
        ))
        .unwrap();
        let ms = &ok.providers.media_streams;
        assert_eq!(ms.token.expose(), "t0k3n-abc");
        assert_eq!(ms.headers, [("X-Tenant".to_owned(), "acme".to_owned())]);
        let err = load(&format!(
            "{used}[providers.media_streams]\nurl = \"http://bot/ws\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("not a WebSocket URL"), "{err}");
        let err = load(&format!(
            "{used}[providers.media_streams]\nurl = \"ws://bot/ws\"\nheaders = {{ \"Bad Name\" = \"x\" }}\n"
        ))
        .unwrap_err();
        assert!(err.contains("header name"), "{err}");
        // Unused and unset: fine.
        assert!(load("").is_ok());
    }
}
