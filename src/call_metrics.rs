//! Prometheus metrics: names, labels and the few places that record them.
//!
//! Recording is cheap and never on the per-frame path: a session accumulates its
//! counters and flushes the deltas about once a second and at the end of the call, so
//! thousands of calls cost a handful of atomic adds per second each. Label values are
//! bounded (route names from the config, provider names, end-reason tags, provider error
//! codes: a fixed set per provider), so the series count stays bounded too.

mod trim;
pub mod upkeep;

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const ACTIVE_CALLS: &str = "voicebridge_active_calls";
pub const CALLS: &str = "voicebridge_calls_total";
pub const REJECTED: &str = "voicebridge_upgrades_rejected_total";
pub const ADMIN_REFUSED: &str = "voicebridge_admin_connections_refused_total";
pub const FRAMES: &str = "voicebridge_frames_total";
pub const BYTES: &str = "voicebridge_bytes_total";
pub const DROPPED: &str = "voicebridge_frames_dropped_total";
pub const BARGE_INS: &str = "voicebridge_barge_ins_total";
pub const PROVIDER_ERRORS: &str = "voicebridge_provider_errors_total";
pub const FIRST_RESPONSE: &str = "voicebridge_first_response_seconds";
pub const BARGE_IN_CUT: &str = "voicebridge_barge_in_cut_seconds";
pub const ESL_UP: &str = "voicebridge_esl_up";
pub const ESL_DROPPED: &str = "voicebridge_esl_commands_dropped_total";
pub const BUDGET_REFUSED: &str = "voicebridge_budget_refused_total";
pub const BUDGET_CALLS: &str = "voicebridge_budget_calls_today";
pub const BUDGET_SECONDS: &str = "voicebridge_budget_seconds_today";
pub const TOOL_CALLS: &str = "voicebridge_tool_calls_total";
pub const TOOL_SECONDS: &str = "voicebridge_tool_call_seconds";
pub const LOOKUPS: &str = "voicebridge_context_lookups_total";
pub const TURN_LATENCY: &str = "voicebridge_turn_latency_seconds";
pub const DTMF: &str = "voicebridge_dtmf_keys_total";
pub const FALLBACKS: &str = "voicebridge_provider_fallbacks_total";

/// Latency buckets: from sub-millisecond (barge-in cut) to seconds (first response).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder and returns the handle `/metrics` renders.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    gauge!(ACTIVE_CALLS).set(0.0);
    Ok(handle)
}

fn describe() {
    crate::records::metrics::describe();
    describe_gauge!(
        ESL_UP,
        "1 while the FreeSWITCH Event Socket is connected (absent without [freeswitch.esl])."
    );
    describe_counter!(
        ESL_DROPPED,
        "ESL commands dropped because the Event Socket was down or its queue full."
    );
    describe_gauge!(ACTIVE_CALLS, "Calls in progress.");
    describe_counter!(
        BUDGET_REFUSED,
        "Calls refused by a route's daily budget, by route and limit (calls, minutes)."
    );
    describe_gauge!(
        BUDGET_CALLS,
        "Calls admitted today (UTC) on the route, counted against daily_max_calls."
    );
    describe_gauge!(
        BUDGET_SECONDS,
        Unit::Seconds,
        "Call time used today (UTC) on the route, running calls included, counted against daily_max_minutes."
    );
    describe_counter!(CALLS, "Calls ended, by route, provider and end reason.");
    describe_counter!(REJECTED, "WebSocket upgrades refused, by reason.");
    describe_counter!(
        ADMIN_REFUSED,
        "Admin connections refused because admin.max_connections were open."
    );
    describe_counter!(
        FRAMES,
        "Audio messages, by direction (fs_in, fs_out, to_provider, from_provider)."
    );
    describe_counter!(BYTES, Unit::Bytes, "Audio bytes, by direction.");
    describe_counter!(DROPPED, "Audio dropped, by kind (to_provider: provider not keeping up; late_audio: interrupted reply; playback_overflow: 20 ms frames over [freeswitch] playback_max_queue_ms).");
    describe_counter!(BARGE_INS, "Barge-ins that flushed playback, by provider.");
    describe_counter!(PROVIDER_ERRORS, "Provider errors, by provider and code.");
    describe_histogram!(
        FIRST_RESPONSE,
        Unit::Seconds,
        "From the upgrade to the first assistant audio sent to FreeSWITCH."
    );
    describe_histogram!(
        BARGE_IN_CUT,
        Unit::Seconds,
        "From the provider's barge-in event to clearAudio flushed to FreeSWITCH."
    );
    describe_counter!(
        TOOL_CALLS,
        "Tool calls from the model, by route, tool and outcome (ok, error, timeout, unknown, cancelled, busy)."
    );
    describe_histogram!(
        TURN_LATENCY,
        Unit::Seconds,
        "From the caller's end of turn (provider VAD) to the first assistant audio sent to FreeSWITCH."
    );
    describe_histogram!(
        TOOL_SECONDS,
        Unit::Seconds,
        "Webhook tool call duration, by tool."
    );
    describe_counter!(
        DTMF,
        "Keys the callers pressed (DTMF), by route and what was done with them (ignore, to_model)."
    );
    describe_counter!(
        FALLBACKS,
        "Calls moved to a fallback provider because theirs failed before the caller heard it, by route, from and to."
    );
    describe_counter!(
        LOOKUPS,
        "Caller context lookups, by route and outcome (ok, error, timeout)."
    );
}

pub fn turn_latency(provider: &'static str, latency: Duration) {
    histogram!(TURN_LATENCY, "provider" => provider).record(latency.as_secs_f64());
}

pub fn tool_call(route: &str, tool: &str, outcome: &'static str) {
    counter!(TOOL_CALLS, "route" => route.to_owned(), "tool" => sanitise(tool), "outcome" => outcome)
        .increment(1);
}

pub fn tool_duration(tool: &str, took: Duration) {
    histogram!(TOOL_SECONDS, "tool" => sanitise(tool)).record(took.as_secs_f64());
}

pub fn dtmf(route: &str, mode: &'static str) {
    counter!(DTMF, "route" => route.to_owned(), "mode" => mode).increment(1);
}

pub fn provider_fallback(route: &str, from: &'static str, to: &'static str) {
    counter!(FALLBACKS, "route" => route.to_owned(), "from" => from, "to" => to).increment(1);
}

pub fn context_lookup(route: &str, outcome: &'static str) {
    counter!(LOOKUPS, "route" => route.to_owned(), "outcome" => outcome).increment(1);
}

/// Also where memory freed by ended calls is given back (see `trim`).
pub fn set_active_calls(n: usize) {
    gauge!(ACTIVE_CALLS).set(n as f64);
    trim::on_live_calls(n);
}

pub fn esl_up(up: bool) {
    gauge!(ESL_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn esl_dropped(n: u64) {
    if n > 0 {
        counter!(ESL_DROPPED).increment(n);
    }
}

pub fn upgrade_rejected(reason: &'static str) {
    counter!(REJECTED, "reason" => reason).increment(1);
}

pub fn admin_connection_refused() {
    counter!(ADMIN_REFUSED).increment(1);
}

pub fn budget_refused(route: &str, limit: &'static str) {
    counter!(BUDGET_REFUSED, "route" => route.to_owned(), "limit" => limit).increment(1);
}

pub fn budget_usage(route: &str, calls: u64, time: Duration) {
    gauge!(BUDGET_CALLS, "route" => route.to_owned()).set(calls as f64);
    gauge!(BUDGET_SECONDS, "route" => route.to_owned()).set(time.as_secs_f64());
}

pub fn call_ended(route: &str, provider: &'static str, end_reason: &'static str) {
    counter!(CALLS, "route" => route.to_owned(), "provider" => provider, "end_reason" => end_reason).increment(1);
}

pub fn barge_in(provider: &'static str, cut: Duration) {
    counter!(BARGE_INS, "provider" => provider).increment(1);
    histogram!(BARGE_IN_CUT).record(cut.as_secs_f64());
}

pub fn first_response(provider: &'static str, latency: Duration) {
    histogram!(FIRST_RESPONSE, "provider" => provider).record(latency.as_secs_f64());
}

/// `code` is the provider's own text: only a fixed set per provider becomes a label
/// value, the rest counts as `other` (see `providers::error_codes`).
pub fn provider_error(provider: &'static str, code: &str) {
    let code = crate::providers::error_codes::label(provider, code);
    counter!(PROVIDER_ERRORS, "provider" => provider, "code" => code).increment(1);
}

/// Traffic counters of one call since its last flush.
#[derive(Default, Debug, Clone, Copy)]
pub struct Traffic {
    pub fs_in_frames: u64,
    pub fs_in_bytes: u64,
    pub fs_out_frames: u64,
    pub fs_out_bytes: u64,
    pub to_provider_frames: u64,
    pub to_provider_bytes: u64,
    pub from_provider_frames: u64,
    pub from_provider_bytes: u64,
    pub dropped_to_provider: u64,
    pub late_audio: u64,
    pub playback_overflow: u64,
}

impl Traffic {
    /// Adds `now - before` to the counters (both are running totals of one call).
    /// Saturating: a frame the provider's full queue refused is taken back from
    /// `to_provider` after it may have been flushed, so a total can shrink (an
    /// inbound flood panicked here in debug builds).
    pub fn flush_delta(now: &Traffic, before: &Traffic) {
        let pairs = [
            (
                "fs_in",
                now.fs_in_frames.saturating_sub(before.fs_in_frames),
                now.fs_in_bytes.saturating_sub(before.fs_in_bytes),
            ),
            (
                "fs_out",
                now.fs_out_frames.saturating_sub(before.fs_out_frames),
                now.fs_out_bytes.saturating_sub(before.fs_out_bytes),
            ),
            (
                "to_provider",
                now.to_provider_frames
                    .saturating_sub(before.to_provider_frames),
                now.to_provider_bytes
                    .saturating_sub(before.to_provider_bytes),
            ),
            (
                "from_provider",
                now.from_provider_frames
                    .saturating_sub(before.from_provider_frames),
                now.from_provider_bytes
                    .saturating_sub(before.from_provider_bytes),
            ),
        ];
        for (direction, frames, bytes) in pairs {
            if frames > 0 {
                counter!(FRAMES, "direction" => direction).increment(frames);
                counter!(BYTES, "direction" => direction).increment(bytes);
            }
        }
        let dropped = now
            .dropped_to_provider
            .saturating_sub(before.dropped_to_provider);
        if dropped > 0 {
            counter!(DROPPED, "kind" => "to_provider").increment(dropped);
        }
        let late = now.late_audio.saturating_sub(before.late_audio);
        if late > 0 {
            counter!(DROPPED, "kind" => "late_audio").increment(late);
        }
        let overflow = now
            .playback_overflow
            .saturating_sub(before.playback_overflow);
        if overflow > 0 {
            counter!(DROPPED, "kind" => "playback_overflow").increment(overflow);
        }
    }
}

/// Tool names come from the config (an unknown one is labelled `unknown`): keep label
/// values short and plain.
fn sanitise(code: &str) -> String {
    let s: String = code
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "unknown".to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_bounded_label_values() {
        assert_eq!(sanitise("invalid_api_key"), "invalid_api_key");
        assert_eq!(sanitise("close 1008: \"x\""), "close_1008___x_");
        assert_eq!(sanitise(""), "unknown");
        assert_eq!(sanitise(&"a".repeat(100)).len(), 40);
    }
}
