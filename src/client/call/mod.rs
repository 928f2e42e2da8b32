//! `voicebridge call`: a command-line stand-in for FreeSWITCH's `mod_audio_stream`.
//!
//! FreeSWITCH cannot be installed on our machines, so admins (to check a running daemon)
//! and our tests (to exercise the server end to end) need a client that behaves like the
//! module: the same handshake (no subprotocol, `Origin`, optional bearer token), the
//! metadata text frame (possibly late), L16 audio paced by a real-time media clock,
//! pings, and the module's closing handshake (Close 1000 "Normal closure", wait 1 s).
//! The wire side of all that is the shared client core ([`crate::client::core`]).
//! See `docs/protocols/freeswitch-mod_audio_stream.md`, sections 2–4.
//!
//! It also plays the part of the caller's ear: playback coming back from the daemon is
//! fed through a simulation of FreeSWITCH's playback buffer ([`playback`]), driven by the
//! *same* media clock as the sender, and written to a WAV. The output is therefore
//! time-aligned with the input, and barge-in cuts, gaps and wrong-rate audio are audible
//! in it.
//!
//! The pure parts (options [`args`], URL and format [`target`], WAV and frames [`wav`],
//! the energy [`endpoint`], the playback buffer, the [`summary`], the [`tail`] rule) are
//! small modules with unit tests; [`run`] only wires them to the socket and the clock.

pub mod args;
pub mod audiosocket;
pub mod endpoint;
pub mod playback;
mod receiver;
pub mod summary;
pub mod tail;
pub mod target;
#[cfg(test)]
mod tests;
pub mod wav;

use std::process::ExitCode;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub use args::CallArgs;
use args::{validate_args, BearerToken, CallError};
use endpoint::{speech_end_sample, ENDPOINT_RUN_MS};
use receiver::{truncate_chars, Receiver, KEEP_CHARS};
use summary::{print_summary, CallSummary, CloseSummary, ClosedBy, FormatSummary};
use target::{parse_target, prepare_target, resolve_format, scrub_secrets, Target};
use wav::{encode_frame, read_caller_wav, OutWav};

use crate::client::core::{self, DialError, HangUp, Inbound, CLOSE_WAIT, FRAME_MS as PLAYOUT_MS};

/// Extra wait after [`CLOSE_WAIT`], only to tell a late Close echo from none at all.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// `voicebridge call`: places the call, prints the summary; exit 1 if it could not be placed.
pub async fn main(args: CallArgs) -> ExitCode {
    if args.protocol == args::Protocol::Audiosocket {
        return audiosocket::main(&args).await;
    }
    if args.protocol == args::Protocol::AsteriskWs {
        return crate::client::asterisk_ws::main(args).await;
    }
    match run(&args).await {
        Ok(summary) => {
            print_summary(&summary, args.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("voicebridge call: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
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
    let writer = match &args.out {
        Some(path) => Some(OutWav::create(path, format.rate)?),
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

    tracing::info!(url = %target.display_url, call_id = %target.call_id, "connecting");
    let started = Instant::now();
    // The handshake as the module does it: Origin, optional bearer token, no subprotocol.
    let dialed = core::dial(
        &target.url,
        &target.origin,
        args.token.as_ref().map(BearerToken::expose),
    )
    .await;
    let mut leg = match dialed {
        Ok(leg) => leg,
        Err(e) => return Err(dial_error(e, &target)),
    };

    let mut rxs = Receiver::new(format, tick_ms);
    let mut frames_sent = 0u64;
    let mut bytes_sent = 0u64;
    let mut metadata_sent = false;
    let mut pings_sent = 0u64;
    let mut interrupted = false;

    let mut end = None;
    if args.metadata_after_frames == 0 {
        if let Some(m) = &metadata {
            match leg.send_text(m).await {
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
                    if let Err(e) = leg.send_audio(payload.into()).await {
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
                            match leg.send_text(m).await {
                                Ok(()) => metadata_sent = true,
                                Err(e) => end = Some(LoopEnd::Lost(e.to_string())),
                            }
                        }
                    }
                }
                tick_no += 1;
            }
            incoming = leg.next() => match incoming {
                Inbound::Closed(frame) => break LoopEnd::ServerClosed(frame),
                Inbound::Lost(e) => break LoopEnd::Lost(e.to_string()),
                Inbound::Ended => break LoopEnd::Lost("connection ended without a Close frame".into()),
                other => rxs.on_inbound(other, Instant::now()),
            },
            _ = tick_opt(&mut heartbeat) => {
                if let Err(e) = leg.ping().await {
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
            let hang_up = leg
                .hang_up(CLOSE_GRACE, |inbound| {
                    rxs.on_inbound(inbound, Instant::now())
                })
                .await;
            client_close(hang_up)
        }
        LoopEnd::ServerClosed(frame) => {
            // Keep reading so tungstenite sends its automatic Close reply, as the module would.
            leg.answer_close(|inbound| rxs.on_inbound(inbound, Instant::now()))
                .await;
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
    if let Some(w) = writer {
        w.write(&rxs.playback.played)?;
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

/// The core's dial errors, in `call`'s words (the URL printed without its secrets).
fn dial_error(e: DialError, target: &Target) -> CallError {
    let url = target.display_url.clone();
    match e {
        DialError::BadUrl(reason) => CallError::InvalidUrl { url, reason },
        DialError::BadOrigin => CallError::InvalidUrl {
            url,
            reason: "the host cannot be used in an Origin header".into(),
        },
        DialError::BadToken => {
            CallError::InvalidOption("the token has characters not allowed in a header".into())
        }
        DialError::Timeout => CallError::HandshakeTimeout { url },
        DialError::Refused { status, body } => CallError::Refused {
            url,
            status,
            body: body
                .as_deref()
                .map(|b| truncate_chars(String::from_utf8_lossy(b).trim(), KEEP_CHARS))
                .unwrap_or_default(),
        },
        DialError::Transport(e) => CallError::Connect {
            url,
            reason: scrub_secrets(&e.to_string(), &target.url),
        },
    }
}

/// Our hang-up as the summary reports it.
fn client_close(h: HangUp) -> CloseSummary {
    CloseSummary {
        by: ClosedBy::Client,
        code: Some(1000),
        reason: Some("Normal closure".into()),
        echoed: Some(h.echo.is_some()),
        echoed_within_1s: Some(h.echo.is_some_and(|(_, waited)| waited <= CLOSE_WAIT)),
        echo_code: h.echo.and_then(|(code, _)| code),
        echo_ms: h.echo.map(|(_, waited)| ms(waited)),
        error: h.error.map(|e| e.to_string()),
    }
}
