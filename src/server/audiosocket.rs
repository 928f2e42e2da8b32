//! The AudioSocket listeners (`[[audiosocket]]`): Asterisk connects over plain TCP and
//! sends the call's UUID first; the source allow-list, the UUID, the route of the
//! listener and admission (`admit`, as for every side) decide whether the call goes
//! ahead, and then it runs like any other (`run_call`). A refused connection gets the
//! hang-up message and is closed: Asterisk has no status codes to read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::rejection::{log_rejection, Rejection};
use super::{admit, run_call, Shared, ACCEPT_BACKOFF};
use crate::admission::{PendingGuard, Source, TooMany};
use crate::call_metrics;
use crate::config::{AudioSocketListener, Config};
use crate::telephony::audiosocket::frame::HANGUP;
use crate::telephony::audiosocket::{self, AudioSocketLeg, FrameReader, MAX_PAYLOAD};

/// Asterisk sends the UUID as soon as it is connected (the driver when the channel is
/// dialled, which follows at once); a connection silent for this long is dropped.
const UUID_WAIT: Duration = Duration::from_secs(5);

/// One bound `[[audiosocket]]` listener. The listeners are bound at startup: a reload
/// (SIGHUP) does not add, move or change them.
pub struct Bound {
    listener: TcpListener,
    config: AudioSocketListener,
}

impl Bound {
    /// The address it really listens on (port 0 in the config: the one picked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn route(&self) -> &str {
        &self.config.route
    }
}

/// Binds every `[[audiosocket]]` listener, or says which one could not be bound.
pub async fn bind(config: &Config) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    for l in &config.audiosocket {
        let listener = TcpListener::bind(l.listen)
            .await
            .map_err(|e| format!("cannot listen for AudioSocket on {}: {e}", l.listen))?;
        out.push(Bound {
            listener,
            config: l.clone(),
        });
    }
    Ok(out)
}

/// Accepts AudioSocket connections until the daemon stops; each call runs in `tracker`,
/// so the drain waits for them like for every other call.
pub(super) async fn accept_loop(shared: Arc<Shared>, bound: Bound, tracker: TaskTracker) {
    let Bound { listener, config } = bound;
    let config = Arc::new(config);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if !config.allows(peer.ip()) {
                    refuse_source(&shared, stream, peer, &config);
                    continue;
                }
                let source = Source::of(peer.ip());
                let server = &shared.config.load().server;
                match shared.admission.pending.try_enter(
                    source,
                    server.max_handshakes_per_ip,
                    server.max_handshakes,
                ) {
                    Ok(pending) => {
                        let shared = Arc::clone(&shared);
                        let config = Arc::clone(&config);
                        tracker.spawn(handle(shared, stream, peer, pending, config));
                    }
                    Err(too_many) => refuse_too_many(&shared, stream, peer, too_many),
                }
            }
            Err(e) => {
                warn!(error = %e, "AudioSocket accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// A source outside the allow-list: one (rate-limited) line, counted, closed at once.
fn refuse_source(shared: &Shared, stream: TcpStream, peer: SocketAddr, l: &AudioSocketListener) {
    shared.admission.failures.fail(Source::of(peer.ip()));
    let rejection = Rejection::failed(
        StatusCode::FORBIDDEN,
        "source not allowed",
        format!(
            "AudioSocket connection from {} refused: not in the allow list of {}",
            peer.ip(),
            l.listen
        ),
    );
    rejection.report(shared, peer);
    drop(stream);
}

fn refuse_too_many(shared: &Shared, stream: TcpStream, peer: SocketAddr, too_many: TooMany) {
    let _ = stream.try_write(&HANGUP);
    call_metrics::upgrade_rejected("too_many_handshakes");
    let reason = match too_many {
        TooMany::Source(n) => format!("server.max_handshakes_per_ip ({n}) AudioSocket connections from this source have not sent their UUID"),
        TooMany::Total(n) => format!("server.max_handshakes ({n}) connections have not finished their handshake"),
    };
    log_rejection(shared, peer, "too_many_handshakes", || {
        warn!(%peer, %reason, "AudioSocket connection rejected");
    });
}

async fn handle(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    pending: PendingGuard,
    listener: Arc<AudioSocketListener>,
) {
    // Asterisk sets TCP_NODELAY too: 20 ms messages must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let config = shared.config.load_full();
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read, MAX_PAYLOAD);
    let first = tokio::select! {
        r = tokio::time::timeout(UUID_WAIT, reader.next()) => r,
        _ = shared.shutdown.stop.cancelled() => return,
    };
    drop(pending);
    let first = match first {
        Err(_) => Err(format!(
            "no UUID message within {} s of connecting",
            UUID_WAIT.as_secs()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(msg)) => audiosocket::call_id_of_first(msg),
    };
    let decision = first
        .map_err(|why| {
            Rejection::failed(
                StatusCode::BAD_REQUEST,
                "bad request",
                format!("AudioSocket: {why}"),
            )
        })
        .and_then(|call_id| decide(&shared, &config, &listener, call_id));
    let (route, admitted) = match decision {
        Ok(ok) => ok,
        Err(mut rejection) => {
            let source = Source::of(peer.ip());
            if rejection.failure && shared.admission.failures.fail(source) {
                rejection = rejection.rate_limited(source, shared.admission.failures.per_sec());
            }
            rejection.report(&shared, peer);
            // The hang-up ends the Asterisk side at once (Dial fails, the app returns).
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = write.write_all(&HANGUP).await;
                let _ = write.shutdown().await;
            })
            .await;
            return;
        }
    };
    let handshake_ms = started.elapsed().as_secs_f64() * 1000.0;
    let leg = AudioSocketLeg::new(reader, write, admitted.call_id.clone(), route.sample_rate);
    run_call(&shared, config, route, admitted, peer, handshake_ms, leg).await;
}

/// The listener's route, then admission (drain, budget, limits, one call per UUID).
fn decide(
    shared: &Shared,
    config: &Config,
    listener: &AudioSocketListener,
    call_id: String,
) -> Result<(Arc<crate::config::Route>, admit::Admitted), Rejection> {
    let route = config.route(&listener.route).ok_or_else(|| {
        // Only after a reload that removed the route the listener names.
        Rejection::failed(
            StatusCode::NOT_FOUND,
            "unknown route",
            format!(
                "the route {:?} of the AudioSocket listener {} no longer exists",
                listener.route, listener.listen
            ),
        )
    })?;
    let admitted = admit::admit(shared, config, route, Some(call_id))?;
    info!(route = %route.name, call_id = %admitted.call_id, "AudioSocket call admitted");
    Ok((route.clone(), admitted))
}
