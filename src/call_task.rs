//! The per-call task: a thin I/O loop around the call engine (`crate::call`). It owns
//! the telephony socket, the provider handle and the side work the engine asked for,
//! `select!`s over them, feeds what happens to the engine and performs what the engine
//! outputs. It decides nothing; whichever side ends first, both are closed cleanly.
//!
//! Generic over the telephony side ([`TelephonyLeg`]): it never sees a wire protocol,
//! so a new side reuses it as is.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::providers::queue::TrySendError;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::call::{self, CallEngine, EndReason, EngineSetup, Input, LookupDone, Output, ToolDone};
use crate::call_metrics;
use crate::config::{Config, Route};
use crate::providers::{self, ProviderCommand, ProviderHandle};
use crate::records::Records;
use crate::registry::CallGuard;
use crate::telephony::{TelephonyAction, TelephonyLeg};
use crate::tools;

/// How long we wait for the provider task to finish after its Close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Everything the server learned while accepting the call (besides its telephony leg).
pub struct CallSetup {
    pub call_id: String,
    pub route: Arc<Route>,
    pub config: Arc<Config>,
    pub peer: SocketAddr,
    pub guard: CallGuard,
    /// The route's daily budget; dropped when the call ends, charging its time.
    pub budget: Option<crate::budget::Ticket>,
    pub stop: CancellationToken,
    /// Where the call's record goes when it ends.
    pub records: Option<Records>,
}

/// One call's I/O.
struct CallTask<L> {
    engine: CallEngine,
    leg: L,
    provider: ProviderHandle,
    config: Arc<Config>,
    route_name: String,
    /// The call's audio format, for a fallback provider.
    call_format: crate::audio::AudioFormat,
    /// The call's registry entry (its provider changes on a fallback).
    guard: CallGuard,
    /// Webhook tool calls in flight; each reports here once its result is sent.
    tools: JoinSet<ToolDone>,
    /// The caller lookup in flight.
    lookup: Option<JoinHandle<LookupDone>>,
    records: Option<Records>,
}

/// Runs the call to its end on the telephony side `leg`, as built by the side's
/// accept path. Never panics on input; always closes both sides.
///
/// The setup (format check, provider start, engine) runs now, synchronously, in the
/// caller's span: the returned future holds only the boxed call task, not `leg` and
/// `setup` as well (an `async fn` keeps its arguments' room for its whole life, and
/// this future lives as long as the call).
pub fn run<L: TelephonyLeg>(leg: L, setup: CallSetup) -> impl Future<Output = ()> + Send {
    let prepared = CallTask::prepare(leg, setup).map_err(|(leg, hangup)| (Box::new(leg), hangup));
    async move {
        match prepared {
            Ok((mut task, stop, budget)) => {
                let reason = task.run_loop(&stop).await;
                // Boxed: the close and the summary are most of this future's size
                // (≈ 10 KB), and inline they would be reserved for the whole call rather
                // than for its last second.
                Box::pin((*task).finish(reason, budget)).await;
            }
            Err((mut leg, hangup)) => {
                // Our Close with the reason (an error close); the channel is left as it is.
                Box::pin(leg.close(&hangup)).await;
            }
        }
    }
}

/// The call task (boxed: moved through `prepare`'s result, it would otherwise be
/// reserved twice in the call's future), the shutdown token and the budget ticket.
type Prepared<L> = (
    Box<CallTask<L>>,
    CancellationToken,
    Option<crate::budget::Ticket>,
);

impl<L: TelephonyLeg> CallTask<L> {
    /// Everything before the first event: the format check, the provider's start, the
    /// engine. `Err` is a refused call, with the Close to send.
    fn prepare(mut leg: L, setup: CallSetup) -> Result<Prepared<L>, (L, crate::telephony::Hangup)> {
        let CallSetup {
            call_id,
            route,
            config,
            peer: _,
            guard,
            budget,
            stop,
            records,
        } = setup;
        let pinned = leg.pinned_format();
        let channels = pinned.channels.unwrap_or(route.channels);
        let call_format = crate::audio::AudioFormat::new(
            pinned.codec.unwrap_or(route.codec),
            pinned.rate.unwrap_or(route.sample_rate),
        );
        if let Err(reason) = call::check_format(call_format) {
            error!(reason = %reason, "call refused");
            return Err((leg, reason.hangup()));
        }
        leg.start();
        // Connect the provider now, in parallel with the first audio, to save first-turn latency.
        let provider = providers::spawn(&config, &route, call_format);
        guard.update(|e| e.provider = provider.name);
        info!(
            provider = provider.name,
            format = %call_format,
            channels = %channels,
            playback = ?route.playback,
            "call started"
        );
        let route_name = route.name.clone();
        let setup = EngineSetup {
            call_id,
            route,
            config: Arc::clone(&config),
            request_codec: pinned.codec,
            request_rate: pinned.rate,
            request_channels: pinned.channels,
            provider: provider.name,
            frames_per_message: leg.frames_per_message(),
            pacer_lead: leg.pacer_lead(),
            can_transfer: leg.can_transfer(),
            marks: leg.playout_marks(),
        };
        let mut engine = CallEngine::new(setup, Instant::now());
        if !records.as_ref().is_some_and(|r| r.is_enabled()) {
            engine.without_record();
        }
        let task = Box::new(CallTask {
            engine,
            leg,
            provider,
            config,
            route_name,
            call_format,
            guard,
            tools: JoinSet::new(),
            lookup: None,
            records,
        });
        Ok((task, stop, budget))
    }

    async fn run_loop(&mut self, stop: &CancellationToken) -> EndReason {
        // Created once: `cancelled()` registers a waiter under the token's lock, too
        // costly to redo on every wake-up of every call (it showed in the profile).
        let stopped = stop.cancelled();
        // One timer for everything the engine waits for, re-armed only when it moves.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(stopped, timer);
        let mut armed: Option<Instant> = None;
        loop {
            let Some(at) = self.engine.poll_timeout(Instant::now()) else {
                // Ended without an `End` output cannot happen; be safe anyway.
                return EndReason::Internal("the call engine stopped".to_owned());
            };
            if armed != Some(at) {
                timer.as_mut().reset(tokio::time::Instant::from_std(at));
                armed = Some(at);
            }
            let input = tokio::select! {
                biased;
                _ = &mut timer => {
                    armed = None;
                    None
                }
                event = self.provider.events.recv() => Some(match event {
                    Some(event) => Input::Provider(event),
                    None => Input::ProviderGone,
                }),
                // Cancel-safe; side-specific control events are handled inside.
                event = self.leg.next_event() => event.map(Input::Telephony),
                Some(done) = self.tools.join_next(), if !self.tools.is_empty() => {
                    Some(Input::ToolDone(done.map_err(|e| e.to_string())))
                }
                done = recv_lookup(&mut self.lookup), if self.lookup.is_some() => {
                    self.lookup = None;
                    Some(Input::LookupDone(done.map_err(|e| e.to_string())))
                }
                // Last: `biased` polls branches in order and stops at the first ready
                // one, so the token (whose poll takes a lock) is only polled when
                // nothing else woke the call.
                _ = &mut stopped => Some(Input::Shutdown),
            };
            let started = Instant::now();
            if let Some(input) = input {
                self.engine.handle(started, input);
            }
            // Releases what became due, with the time after the input was processed.
            self.engine.tick(Instant::now());
            if let Some(reason) = self.perform(started).await {
                return reason;
            }
        }
    }

    /// Performs the engine's outputs in order: telephony writes as one batch with one
    /// flush, provider commands, side work. Returns the end, when it came.
    async fn perform(&mut self, started: Instant) -> Option<EndReason> {
        let mut cleared = false;
        let mut failed = false;
        loop {
            while let Some(output) = self.engine.poll_output() {
                match output {
                    Output::Telephony(action) => {
                        if failed {
                            continue;
                        }
                        cleared |= action == TelephonyAction::Clear;
                        if let Err(event) = self.leg.perform(action).await {
                            failed = true;
                            self.engine.handle(Instant::now(), Input::Telephony(event));
                        }
                    }
                    Output::Provider(command) => self.send_provider(command).await,
                    Output::StartLookup { lookup, info, vars } => {
                        self.start_lookup(lookup, info, vars)
                    }
                    Output::RunTool { spec, call, info } => self.run_tool(spec, call, info),
                    Output::SwitchProvider(route) => self.switch_provider(&route),
                    Output::End(reason) => return Some(reason),
                }
            }
            if failed {
                continue;
            }
            match self.leg.flush().await {
                Ok(()) => break,
                Err(event) => {
                    failed = true;
                    self.engine.handle(Instant::now(), Input::Telephony(event));
                }
            }
        }
        if cleared {
            call_metrics::barge_in(self.provider.name, started.elapsed());
        }
        None
    }

    /// Replaces the failed provider with the route's next one (the engine decided).
    /// The old task is aborted: it has failed, and nothing of it is waited for.
    fn switch_provider(&mut self, route: &Arc<Route>) {
        let next = providers::spawn(&self.config, route, self.call_format);
        let old = std::mem::replace(&mut self.provider, next);
        old.task.abort();
        let name = self.provider.name;
        self.guard.update(|e| e.provider = name);
        info!(provider = name, "fallback provider connecting");
    }

    async fn send_provider(&mut self, command: ProviderCommand) {
        let commands = &self.provider.commands;
        match command {
            ProviderCommand::Audio(payload) => {
                let bytes = payload.len() as u64;
                let full = match commands.try_send(ProviderCommand::Audio(payload)) {
                    Ok(()) => return,
                    Err(TrySendError::Full(_)) => true,
                    // The provider's Closed event (or the end of its channel) ends the call.
                    Err(TrySendError::Closed(_)) => false,
                };
                self.engine
                    .handle(Instant::now(), Input::AudioNotSent { bytes, full });
            }
            // The provider sets itself up with it: wait for room.
            command @ ProviderCommand::Context(_) => {
                let _ = commands.send(command).await;
            }
            // Must not be lost and must not stall the call: queued at once if there is
            // room, else from a task of its own.
            command @ ProviderCommand::ToolResult(_) => match commands.try_send(command) {
                Ok(()) | Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(command)) => {
                    let commands = commands.clone();
                    tokio::spawn(async move {
                        let _ = commands.send(command).await;
                    });
                }
            },
            command => {
                let _ = commands.try_send(command);
            }
        }
    }

    fn start_lookup(
        &mut self,
        lookup: crate::config::ContextLookup,
        info: tools::CallInfo,
        vars: BTreeMap<String, String>,
    ) {
        let secret = self.config.webhooks.secret.clone();
        let max_body = self.config.webhooks.max_response_bytes;
        let started = Instant::now();
        self.lookup = Some(tokio::spawn(
            async move {
                let result = crate::lookup::lookup(&lookup, &info, &vars, &secret, max_body).await;
                LookupDone {
                    vars,
                    result,
                    took: started.elapsed(),
                }
            }
            .in_current_span(),
        ));
    }

    fn run_tool(
        &mut self,
        spec: crate::config::ToolSpec,
        call: providers::ToolCall,
        info: tools::CallInfo,
    ) {
        let secret = self.config.webhooks.secret.clone();
        let max_body = self.config.webhooks.max_response_bytes;
        let commands = self.provider.commands.clone();
        self.tools.spawn(
            async move {
                let (result, outcome, took) =
                    tools::run_webhook(&spec, &call, &info, &secret, max_body).await;
                let error = result.error_message().map(str::to_owned);
                let _ = commands
                    .send(ProviderCommand::ToolResult(Box::new(result)))
                    .await;
                ToolDone {
                    id: call.id,
                    name: call.name,
                    outcome,
                    took,
                    error,
                }
            }
            .in_current_span(),
        );
    }

    /// The call's registry entry and `budget` ticket are released just before the
    /// summary line, so whoever reads "call ended" sees the slot free and the time charged.
    async fn finish(self, reason: EndReason, budget: Option<crate::budget::Ticket>) {
        let CallTask {
            mut engine,
            mut leg,
            provider,
            route_name,
            mut tools,
            lookup,
            records,
            guard,
            ..
        } = self;
        let slots = (guard, budget);
        let hangup = reason.hangup();
        // The provider first: it must stop billing even if the telephony side is slow
        // to close. Its events are no longer read: dropping their receiver unblocks a
        // provider waiting for room there (it takes that as the end); a provider whose
        // command queue is full gets no Close but sees the queue end after its backlog.
        let providers::ProviderHandle {
            name: provider_name,
            commands,
            events,
            task: provider_task,
        } = provider;
        drop(events);
        if commands.try_send(ProviderCommand::Close).is_err() {
            drop(commands);
        }
        leg.close(&hangup).await;
        // Tool calls still running are of no use any more.
        tools.abort_all();
        engine.abandon_tools();
        if let Some(lookup) = lookup {
            lookup.abort();
        }
        leg.release_channel(&hangup);
        engine.flush_metrics();
        call_metrics::call_ended(&route_name, provider_name, reason.tag());
        call_metrics::esl_dropped(leg.control_dropped());
        drop(slots);
        if let Some(records) = records.as_ref().filter(|r| r.is_enabled()) {
            records.submit(engine.build_record(&reason, Instant::now()));
        }
        let esl_dropped = leg.control_dropped();
        // The close handshake is done: close the telephony connection now. FreeSWITCH's
        // hang-up (libwsc `disconnect()`) blocks until it sees the TCP close, and must
        // not wait for the provider's own close (up to 500 ms) below.
        drop(leg);
        let mut task = provider_task;
        if tokio::time::timeout(CLOSE_WAIT, &mut task).await.is_err() {
            task.abort();
            warn!("provider did not close within 1 s: aborted");
        }
        let s = engine.stats();
        let duration_ms = engine.started().elapsed().as_millis() as u64;
        let first_response_ms = s.first_response.map(|d| d.as_millis() as u64);

        macro_rules! summary {
            ($level:ident) => {
                $level!(
                    route = %route_name,
                    provider = provider_name,
                    duration_ms,
                    fs_messages_in = s.fs_messages_in,
                    fs_bytes_in = s.fs_bytes_in,
                    frames_to_provider = s.frames_to_provider,
                    bytes_to_provider = s.bytes_to_provider,
                    frames_dropped = s.frames_dropped,
                    provider_audio_events = s.provider_audio_events,
                    provider_bytes_in = s.provider_bytes_in,
                    late_audio_dropped = s.late_audio_dropped,
                    playback_overflow_frames = s.playback_overflow,
                    frames_to_fs = s.frames_to_fs,
                    bytes_to_fs = s.bytes_to_fs,
                    text_in = s.text_in,
                    first_response_ms,
                    barge_ins = s.barge_ins,
                    esl_dropped,
                    input_tokens = s.usage.input_tokens,
                    output_tokens = s.usage.output_tokens,
                    tool_calls = s.tool_calls,
                    ended_by = reason.ended_by(),
                    end_reason = reason.tag(),
                    end_detail = %reason,
                    "call ended"
                )
            };
        }
        if reason.is_error() {
            summary!(error);
        } else {
            summary!(info);
        }
    }
}

/// The lookup's answer, or never when none is running.
async fn recv_lookup(
    lookup: &mut Option<JoinHandle<LookupDone>>,
) -> Result<LookupDone, tokio::task::JoinError> {
    match lookup {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}
