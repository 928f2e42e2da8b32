//! The load test's report: latency distributions, the daemon's CPU and RSS, what went
//! wrong, whether the run was clean (the exit status), and the table it prints. The JSON
//! form (`--json-out`) has these field names: scripts and the tests read them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::churn::RssTimeline;

/// Latency distribution in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Dist {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Dist {
    /// From samples in microseconds; `None` when there are none.
    pub fn of(mut us: Vec<u32>) -> Option<Dist> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let q = |p: f64| {
            let i = ((us.len() as f64 * p).ceil() as usize).clamp(1, us.len()) - 1;
            f64::from(us[i]) / 1000.0
        };
        Some(Dist {
            n: us.len(),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            max_ms: f64::from(us[us.len() - 1]) / 1000.0,
        })
    }
}

/// The daemon's resources, from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonUsage {
    pub pid: u32,
    /// CPU over the hold, % of one core, all calls together.
    pub cpu_pct: f64,
    pub cpu_pct_per_call: f64,
    pub rss_idle_mb: f64,
    /// Highest RSS seen during the hold.
    pub rss_hold_mb: f64,
    pub rss_per_call_mb: f64,
    /// RSS `--settle-secs` after the last call ended.
    pub rss_after_mb: f64,
    pub rss_after_minus_idle_mb: f64,
}

/// Calls over a churning run (`--call-secs`): all of them, not just the N at once.
#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    pub call_secs: f64,
    pub started: usize,
    /// Hung up cleanly (on schedule or at the end), Close echoed.
    pub completed: usize,
    pub failed: usize,
    /// Dialed shortly before the end and cut before their first reply was due (no audio,
    /// not counted as a failure).
    pub cut_before_reply: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub calls: usize,
    pub connected: usize,
    /// Calls up for the whole hold and closed cleanly (Close echoed).
    pub held: usize,
    pub failed: usize,
    /// Error kind → count (connect refusals, drops, unclean closes...).
    pub errors: BTreeMap<String, usize>,
    pub hold_secs: f64,
    /// Provider audio formats the mock saw in `session.update`, with counts.
    pub provider_formats: BTreeMap<String, usize>,
    pub mock_connections: u64,
    pub mock_unlinked: u64,
    pub mock_problems: Vec<String>,
    pub frames_sent: u64,
    /// Caller audio the mock received, in 20 ms frames (the daemon may send several per
    /// append: `uplink_chunk_ms`).
    pub appends_received: u64,
    pub playback_frames: u64,
    pub calls_without_audio: usize,
    /// FreeSWITCH frame sent → its append read by the mock (pcmu only).
    pub added_latency: Option<Dist>,
    /// A response's first delta sent (pacer empty) → its first playback frame read.
    pub provider_to_fs: Option<Dist>,
    /// `speech_started` sent → `clearAudio` read.
    pub barge_in: Option<Dist>,
    pub barge_ins_sent: u64,
    pub clear_audio: u64,
    /// Barge-ins (sent > 200 ms before the end) that never got a `clearAudio`.
    pub barge_ins_without_clear: u64,
    /// Playback frames of an interrupted reply read after its `clearAudio`.
    pub frames_after_clear: u64,
    /// Playback frames read more than 20 ms after their pacing slot.
    pub late_frames: u64,
    pub max_lateness_ms: f64,
    pub daemon: Option<DaemonUsage>,
    /// The load generator's own CPU over the hold (% of one core): it shares the machine.
    pub loadgen_cpu_pct: f64,
    /// The whole machine's CPU over the hold, % of one core (all cores: 100 × cores).
    pub machine_cpu_pct: f64,
    pub machine_cores: usize,
    /// With `--call-secs` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
    /// The daemon's RSS over the hold (with a pid, and `--call-secs` or a hold ≥ 60 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_timeline: Option<RssTimeline>,
}

impl Report {
    /// True when nothing went wrong functionally (the smoke test's criterion).
    pub fn is_clean(&self) -> bool {
        self.failed == 0
            && self.errors.is_empty()
            && self.held == self.churn.as_ref().map_or(self.calls, |c| c.started)
            && self.calls_without_audio == 0
            && self.mock_problems.is_empty()
            && self.mock_unlinked == 0
            && self.barge_ins_without_clear == 0
            && self.frames_after_clear == 0
    }
}

/// The report as a human-readable table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let dist = |d: &Option<Dist>| match d {
        Some(d) => format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3} ms  (n={})",
            d.p50_ms, d.p90_ms, d.p99_ms, d.max_ms, d.n
        ),
        None => "n/a".to_owned(),
    };
    let formats: Vec<String> = r
        .provider_formats
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect();
    let _ = writeln!(
        s,
        "calls                     {} (connected {}, held {}, failed {})",
        r.calls, r.connected, r.held, r.failed
    );
    if let Some(c) = &r.churn {
        let _ = writeln!(
            s,
            "calls over the run        {} started, {} s each (completed {}, failed {}, cut before a reply {})",
            c.started, c.call_secs, c.completed, c.failed, c.cut_before_reply
        );
    }
    for (e, n) in &r.errors {
        let _ = writeln!(s, "  error ×{n}: {e}");
    }
    let _ = writeln!(s, "hold                      {:.1} s", r.hold_secs);
    let _ = writeln!(s, "provider format           {}", formats.join(", "));
    let _ = writeln!(
        s,
        "mock connections          {} (unlinked {}, problems {})",
        r.mock_connections,
        r.mock_unlinked,
        r.mock_problems.len()
    );
    for p in r.mock_problems.iter().take(5) {
        let _ = writeln!(s, "  mock problem: {p}");
    }
    let _ = writeln!(
        s,
        "frames sent / appended    {} / {}",
        r.frames_sent, r.appends_received
    );
    let _ = writeln!(
        s,
        "playback frames           {} (calls without audio: {})",
        r.playback_frames, r.calls_without_audio
    );
    let _ = writeln!(
        s,
        "added latency FS→provider {}",
        match &r.added_latency {
            Some(_) => dist(&r.added_latency),
            None =>
                "n/a (needs audio_format = \"pcmu\": the stamp does not survive resampling)".into(),
        }
    );
    let _ = writeln!(s, "provider→FS (pacer empty) {}", dist(&r.provider_to_fs));
    let _ = writeln!(s, "barge-in → clearAudio     {}", dist(&r.barge_in));
    let _ = writeln!(
        s,
        "barge-ins / clearAudio    {} / {} (missing {}, frames after clear {})",
        r.barge_ins_sent, r.clear_audio, r.barge_ins_without_clear, r.frames_after_clear
    );
    let _ = writeln!(
        s,
        "late frames (> 20 ms)     {} of {} (max lateness {:.3} ms)",
        r.late_frames, r.playback_frames, r.max_lateness_ms
    );
    match &r.daemon {
        Some(d) => {
            let _ = writeln!(s, "daemon pid                {}", d.pid);
            let _ = writeln!(
                s,
                "daemon CPU                {:.1} % of a core, {:.4} % per call",
                d.cpu_pct, d.cpu_pct_per_call
            );
            let _ = writeln!(
                s,
                "daemon RSS                idle {:.1} MB, hold {:.1} MB, {:.4} MB per call",
                d.rss_idle_mb, d.rss_hold_mb, d.rss_per_call_mb
            );
            let _ = writeln!(
                s,
                "daemon RSS after          {:.1} MB ({:+.1} MB vs idle)",
                d.rss_after_mb, d.rss_after_minus_idle_mb
            );
        }
        None => {
            let _ = writeln!(
                s,
                "daemon CPU/RSS            n/a (process not found: pass --pid)"
            );
        }
    }
    if let Some(t) = &r.rss_timeline {
        let points: Vec<String> = t
            .samples
            .iter()
            .map(|p| format!("{:.0}s {:.1}", p.t_secs, p.rss_mb))
            .collect();
        let _ = writeln!(
            s,
            "daemon RSS timeline (MB)  every {} s: {}",
            t.every_secs,
            points.join(", ")
        );
        match &t.after_warmup {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "daemon RSS after warm-up  {:.1} MB at {:.0} s, min {:.1}, max {:.1}, last {:.1}, drift {:+.1} MB",
                    d.warmup_mb, d.warmup_at_secs, d.min_mb, d.max_mb, d.last_mb, d.drift_mb
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "daemon RSS after warm-up  n/a (the hold ended before the {:.0} s warm-up)",
                    t.warmup_secs
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "load generator CPU        {:.1} % of a core (same machine)",
        r.loadgen_cpu_pct
    );
    let ours = r.loadgen_cpu_pct + r.daemon.as_ref().map_or(0.0, |d| d.cpu_pct);
    let _ = writeln!(
        s,
        "machine CPU               {:.1} % ({} cores = {} %; other processes {:.1} %)",
        r.machine_cpu_pct,
        r.machine_cores,
        r.machine_cores * 100,
        (r.machine_cpu_pct - ours).max(0.0)
    );
    s
}
