//! `voicebridge loadtest`: N concurrent calls against a running daemon, with its own
//! OpenAI-like mock provider in the same process, measuring what the daemon adds.
//!
//! Why one process for both ends: the latencies we care about (a caller frame in → its
//! `input_audio_buffer.append` out; a provider delta in → the playback frame out; a
//! `speech_started` in → `clearAudio` out) are then differences of one monotonic clock,
//! measured per message, not estimated from averages. The daemon is a separate process,
//! so its CPU and RSS are read from `/proc` without any help from it.
//!
//! - Calls behave like `mod_audio_stream` (the shared client core,
//!   [`crate::client::core`], as `voicebridge call` uses it): Origin header, metadata text
//!   frame, L16 8 kHz 20 ms frames on a real-time clock, Close 1000 at the end then up to
//!   1 s for the echo ([`caller`]). All calls share one timer wheel (a task ticking every millisecond that wakes the
//!   calls of that millisecond's slot), so there is one timer, not one per call.
//! - The mock ([`mock`]) speaks the GA event sequence: `session.created`,
//!   `session.updated` after `session.update`, then per turn the caller's VAD events and
//!   a response streamed in bursts faster than real time, with a barge-in
//!   (`speech_started` mid-reply, the response cancelled after a couple of late deltas)
//!   every `--barge-every` turns.
//! - Linking a mock connection to its call: the call id in the session's instructions
//!   (run the daemon with `instructions = "{{call_id}}"`), else the call number stamped in
//!   the caller's audio ([`stamp`], pcmu only).
//! - For the soak, `--call-secs` makes each call hang up after a while and its slot dial
//!   a new call at once (staggered, [`churn`]), and the daemon's RSS is sampled over the
//!   hold to see whether it stays flat once warmed up.

pub mod asterisk_caller;
pub mod audiosocket_caller;
pub mod caller;
pub mod churn;
pub mod mock;
pub mod proc;
pub mod report;
pub mod stamp;
pub mod twilio_caller;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use report::{render, DaemonUsage, Dist, Report};

/// Slots of the timer wheel: one per millisecond of a 20 ms frame period.
const WHEEL_SLOTS: u64 = 20;
/// Send times kept per call, by `seq % SENT_RING` (5 s of frames: far more than any
/// delay a frame may see and still be matched).
const SENT_RING: usize = 256;
/// Prefix of the call ids, so the mock can find them in the instructions.
pub const CALL_ID_PREFIX: &str = "vbload-";

/// Load-test a running voicebridge with N concurrent calls and a local mock provider.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// The daemon's listen address, as FreeSWITCH would dial it.
    #[arg(long, default_value = "ws://127.0.0.1:9090")]
    pub url: String,

    /// Route (first path segment) the calls use.
    #[arg(long, default_value = "call")]
    pub route: String,

    /// Concurrent calls.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub calls: usize,

    /// New calls per second while ramping up (the daemon's `server.per_ip_rate_limit`,
    /// 50/s by default, must be above this or 0).
    #[arg(long, default_value_t = 50.0)]
    pub ramp_per_sec: f64,

    /// Seconds all calls are held once the last one is up (CPU and RSS are measured here).
    #[arg(long, default_value_t = 10.0)]
    pub hold_secs: f64,

    /// Seconds to wait after the last call ended before reading the daemon's RSS again.
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,

    /// Where the mock OpenAI provider listens. Point the daemon at it with
    /// VOICEBRIDGE__PROVIDERS__OPENAI__URL=ws://<this>/v1/realtime.
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub mock_listen: SocketAddr,

    /// The daemon's pid, for CPU and RSS [default: the process listening on --url's port].
    #[arg(long)]
    pub pid: Option<u32>,

    /// A turn (caller VAD events + a response) starts this often per call.
    #[arg(long, default_value_t = 2000)]
    pub turn_every_ms: u64,

    /// Milliseconds of audio in each response.
    #[arg(long, default_value_t = 1000)]
    pub response_ms: u64,

    /// Every Nth turn is interrupted by `speech_started` (barge-in); 0 = never.
    #[arg(long, default_value_t = 2)]
    pub barge_every: u64,

    /// Barge-in this long after the response's first delta.
    #[arg(long, default_value_t = 150)]
    pub barge_after_ms: u64,

    /// The daemon's playback lead (`freeswitch.playback_lead_ms`): frames of a reply are
    /// expected at first + max(0, k + 1 − lead/20) × 20 ms.
    #[arg(long, default_value_t = 60)]
    pub lead_ms: u64,

    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<std::path::PathBuf>,

    /// Each call hangs up (Close 1000) after this many seconds and its slot dials a new
    /// call at once, so N calls stay up over the whole hold (slot i's first call ends
    /// (i + 1)/N of a cycle into the hold, so ends are even) [default: calls last the run].
    #[arg(long, value_name = "S")]
    pub call_secs: Option<f64>,

    /// With a pid, sample the daemon's RSS this often over the hold (a timeline and its
    /// drift after warm-up) when --call-secs is set or --hold-secs is at least 60.
    #[arg(long, default_value_t = 30.0)]
    pub rss_every_secs: f64,

    /// How the calls reach the daemon: as FreeSWITCH `mod_audio_stream` (`/<route>/<id>`,
    /// L16 binary frames), as Twilio Media Streams (`/twilio/<route>`, μ-law in `media`
    /// JSON every 20 ms, marks echoed once played), as Asterisk chan_websocket
    /// (`/asterisk/<route>?call=<id>`, slin binary frames, marks answered once played) or
    /// as Asterisk AudioSocket (TCP to an `[[audiosocket]]` listener: `--url HOST:PORT`).
    #[arg(long, value_enum, default_value_t = Protocol::Freeswitch)]
    pub protocol: Protocol,

    /// With `--protocol asterisk-ws`, sent as the HTTP Basic password (as Asterisk sends
    /// its client section's `password`). Prefer the environment variable: a
    /// command-line token is visible in `ps`.
    #[arg(
        long,
        value_name = "T",
        env = "VOICEBRIDGE_LOADTEST_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<crate::client::call::args::BearerToken>,
}

/// The telephony side the load test plays.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Freeswitch,
    Twilio,
    /// Asterisk chan_websocket: `/asterisk/<route>?call=<id>`, `MEDIA_START`, slin
    /// binary frames, marks answered once played, `FLUSH_MEDIA` on barge-in.
    AsteriskWs,
    /// Asterisk AudioSocket over TCP to an `[[audiosocket]]` listener (`--url
    /// HOST:PORT`): the UUID, then 8 kHz slin messages; the barge-in is the daemon
    /// stopping its audio.
    Audiosocket,
}

impl LoadtestArgs {
    /// The command line's defaults, for tests.
    #[cfg(test)]
    pub fn new(url: impl Into<String>, calls: usize) -> Self {
        LoadtestArgs {
            url: url.into(),
            route: "call".into(),
            calls,
            ramp_per_sec: 50.0,
            hold_secs: 10.0,
            settle_secs: 3.0,
            mock_listen: SocketAddr::from(([127, 0, 0, 1], 4010)),
            pid: None,
            turn_every_ms: 2000,
            response_ms: 1000,
            barge_every: 2,
            barge_after_ms: 150,
            lead_ms: 60,
            json_out: None,
            call_secs: None,
            rss_every_secs: 30.0,
            protocol: Protocol::Freeswitch,
            token: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("cannot listen for the mock provider on {addr}: {source}")]
    MockListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("cannot write {path}: {source}")]
    JsonOut {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What the caller side and the mock side of one call share: timestamps in ns since
/// the run's epoch, written by one side and read by the other.
pub struct CallLink {
    /// When frame `seq` was handed to the socket, at `seq % SENT_RING`.
    sent_ns: Vec<AtomicU64>,
    /// Number of responses the mock started, and when it sent the latest one's first delta.
    resp_no: AtomicU64,
    resp_first_delta_ns: AtomicU64,
    /// Barge-ins the mock sent, and when it sent the latest `speech_started`.
    barge_no: AtomicU64,
    barge_ns: AtomicU64,
    /// Audio the mock received in this call's appends, in 20 ms frames.
    appends: AtomicU64,
}

impl CallLink {
    fn new() -> CallLink {
        CallLink {
            sent_ns: (0..SENT_RING).map(|_| AtomicU64::new(0)).collect(),
            resp_no: AtomicU64::new(0),
            resp_first_delta_ns: AtomicU64::new(0),
            barge_no: AtomicU64::new(0),
            barge_ns: AtomicU64::new(0),
            appends: AtomicU64::new(0),
        }
    }

    fn set_sent(&self, seq: u32, ns: u64) {
        self.sent_ns[seq as usize % SENT_RING].store(ns, Ordering::Relaxed);
    }

    fn sent(&self, seq: u32) -> u64 {
        self.sent_ns[seq as usize % SENT_RING].load(Ordering::Relaxed)
    }

    /// Mock: a response's first delta goes out now.
    fn response_started(&self, ns: u64) {
        self.resp_first_delta_ns.store(ns, Ordering::Relaxed);
        self.resp_no.fetch_add(1, Ordering::Release);
    }

    /// Caller: (number of responses started, first delta time of the latest).
    fn response(&self) -> (u64, u64) {
        let no = self.resp_no.load(Ordering::Acquire);
        (no, self.resp_first_delta_ns.load(Ordering::Relaxed))
    }

    fn barge_sent(&self, ns: u64) {
        self.barge_ns.store(ns, Ordering::Relaxed);
        self.barge_no.fetch_add(1, Ordering::Release);
    }

    fn barge(&self) -> (u64, u64) {
        let no = self.barge_no.load(Ordering::Acquire);
        (no, self.barge_ns.load(Ordering::Relaxed))
    }
}

/// State of the whole run shared by every task.
pub struct Run {
    epoch: Instant,
    /// By call number: slot i's first call is number i, later calls (`--call-secs`) take
    /// the next free numbers.
    links: Mutex<Vec<Arc<CallLink>>>,
    /// The timer wheel: slot `s` holds the number of the 20 ms frame period whose
    /// millisecond `s` passed last.
    wheel: Vec<watch::Sender<u64>>,
    /// Cancelled at the end of the hold: calls close, the mock stops new turns.
    stopping: CancellationToken,
    mock: Mutex<mock::MockTotals>,
}

impl Run {
    fn ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn link(&self, call: u32) -> Option<Arc<CallLink>> {
        self.all_links().get(call as usize).cloned()
    }

    /// A link for a new call, and its number.
    fn new_link(&self) -> (u32, Arc<CallLink>) {
        let link = Arc::new(CallLink::new());
        let mut links = self.all_links();
        links.push(Arc::clone(&link));
        (u32::try_from(links.len() - 1).unwrap_or(u32::MAX), link)
    }

    fn all_links(&self) -> std::sync::MutexGuard<'_, Vec<Arc<CallLink>>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `voicebridge loadtest`: runs, prints the report; exit 1 if the run was not clean (a
/// call failed, a barge-in went unanswered...) or could not start.
pub async fn main(args: LoadtestArgs) -> ExitCode {
    match run(&args).await {
        Ok(report) => {
            print!("{}", render(&report));
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("voicebridge loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the load test with the mock on `--mock-listen`.
pub async fn run(args: &LoadtestArgs) -> Result<Report, LoadtestError> {
    let listener = TcpListener::bind(args.mock_listen)
        .await
        .map_err(|source| LoadtestError::MockListen {
            addr: args.mock_listen,
            source,
        })?;
    run_with_listener(args, listener).await
}

/// Runs the load test with the mock on an already bound listener.
async fn run_with_listener(
    args: &LoadtestArgs,
    listener: TcpListener,
) -> Result<Report, LoadtestError> {
    validate(args)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run = Arc::new(Run {
        epoch: Instant::now(),
        links: Mutex::new((0..args.calls).map(|_| Arc::new(CallLink::new())).collect()),
        wheel: (0..WHEEL_SLOTS).map(|_| watch::channel(0).0).collect(),
        stopping: CancellationToken::new(),
        mock: Mutex::new(mock::MockTotals::default()),
    });
    let mock_cfg = Arc::new(mock::MockConfig::new(args));
    let mock_task = tokio::spawn(mock::serve(listener, Arc::clone(&run), mock_cfg));
    let wheel_stop = CancellationToken::new();
    let wheel_task = tokio::spawn(drive_wheel(Arc::clone(&run), wheel_stop.clone()));

    let pid = args
        .pid
        .or_else(|| port_of(&args.url).and_then(proc::find_listener));
    let tck = proc::clock_ticks_per_sec() as f64;
    let idle = pid.and_then(|p| proc::sample(&p.to_string()));

    // Ramp: one call every 1/ramp s.
    let cfg = Arc::new(caller::CallerConfig::new(args));
    let mut tasks = Vec::with_capacity(args.calls);
    let step = Duration::from_secs_f64(1.0 / args.ramp_per_sec);
    let ramp_start = Instant::now();
    // The hold starts 200 ms after the last call is dialed (see below).
    let hold_planned =
        ramp_start + step * args.calls.saturating_sub(1) as u32 + Duration::from_millis(200);
    let churn = args.call_secs.map(|s| {
        let schedule = churn::Schedule {
            slots: args.calls,
            call_len: Duration::from_secs_f64(s),
            min_len: Duration::from_millis(args.turn_every_ms),
        };
        (schedule, hold_planned - run.epoch)
    });
    for i in 0..args.calls {
        tokio::time::sleep_until(ramp_start + step * i as u32).await;
        tasks.push(tokio::spawn(slot(
            i as u32,
            Arc::clone(&run),
            Arc::clone(&cfg),
            churn,
        )));
    }
    // Hold: from the last call's start (its handshake included).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hold = Duration::from_secs_f64(args.hold_secs);
    let hold_start = Instant::now();
    let d0 = pid.and_then(|p| proc::sample(&p.to_string()));
    let me0 = proc::sample("self");
    let m0 = proc::machine_jiffies();
    let mut rss_hold_kib = d0.map_or(0, |s| s.rss_kib);
    let mut sampler = tokio::time::interval(Duration::from_millis(500));
    // The RSS timeline, for the soak: only with a pid, churn or a long hold.
    let timeline_every = (pid.is_some() && (args.call_secs.is_some() || args.hold_secs >= 60.0))
        .then(|| Duration::from_secs_f64(args.rss_every_secs));
    let mut timeline = Vec::new();
    let mut timeline_tick =
        tokio::time::interval(timeline_every.unwrap_or(Duration::from_secs(3600)));
    let mut timeline_out = None;
    while hold_start.elapsed() < hold {
        tokio::select! {
            _ = sampler.tick() => {
                if let Some(s) = pid.and_then(|p| proc::sample(&p.to_string())) {
                    rss_hold_kib = rss_hold_kib.max(s.rss_kib);
                }
            }
            _ = timeline_tick.tick(), if timeline_every.is_some() => {
                if let Some(s) = pid.and_then(|p| proc::sample(&p.to_string())) {
                    timeline.push(rss_point(hold_start.elapsed(), s.rss_kib));
                }
            }
            _ = tokio::time::sleep_until(hold_start + hold) => {}
        }
    }
    let d1 = pid.and_then(|p| proc::sample(&p.to_string()));
    if let (Some(every), Some(s)) = (timeline_every, d1) {
        timeline.push(rss_point(hold_start.elapsed(), s.rss_kib));
        let warmup = churn::warmup_secs(args.call_secs);
        timeline_out = Some(churn::RssTimeline {
            every_secs: every.as_secs_f64(),
            warmup_secs: warmup,
            after_warmup: churn::drift(&timeline, warmup),
            samples: timeline,
        });
    }
    let me1 = proc::sample("self");
    let m1 = proc::machine_jiffies();
    let held_for = hold_start.elapsed().as_secs_f64();
    let stop_ns = run.ns();
    run.stopping.cancel();

    let mut results = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(r) => results.extend(r),
            Err(e) => results.push((i as u32, caller::CallResult::failed(format!("task: {e}")))),
        }
    }
    wheel_stop.cancel();
    let _ = wheel_task.await;
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let after = pid.and_then(|p| proc::sample(&p.to_string()));
    mock_task.abort();

    let daemon = match (pid, idle, d0, d1, after) {
        (Some(pid), Some(idle), Some(d0), Some(d1), Some(after)) => {
            let cpu_pct = (d1.cpu_ticks - d0.cpu_ticks) as f64 / tck / held_for * 100.0;
            let mb = |kib: u64| kib as f64 / 1024.0;
            Some(DaemonUsage {
                pid,
                cpu_pct,
                cpu_pct_per_call: cpu_pct / args.calls as f64,
                rss_idle_mb: mb(idle.rss_kib),
                rss_hold_mb: mb(rss_hold_kib),
                rss_per_call_mb: (mb(rss_hold_kib) - mb(idle.rss_kib)) / args.calls as f64,
                rss_after_mb: mb(after.rss_kib),
                rss_after_minus_idle_mb: mb(after.rss_kib) - mb(idle.rss_kib),
            })
        }
        _ => None,
    };
    let loadgen_cpu_pct = match (me0, me1) {
        (Some(a), Some(b)) => (b.cpu_ticks - a.cpu_ticks) as f64 / tck / held_for * 100.0,
        _ => 0.0,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine_cpu_pct = match (m0, m1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0 * cores as f64
        }
        _ => 0.0,
    };
    let mut report = aggregate(
        args,
        &run,
        results,
        stop_ns,
        held_for,
        daemon,
        loadgen_cpu_pct,
    );
    report.machine_cpu_pct = machine_cpu_pct;
    report.machine_cores = cores;
    report.rss_timeline = timeline_out;
    if let Some(path) = &args.json_out {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| LoadtestError::JsonOut {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

fn validate(args: &LoadtestArgs) -> Result<(), LoadtestError> {
    let bad = |m: &str| Err(LoadtestError::InvalidOption(m.to_owned()));
    if args.calls == 0 || args.calls > 1_000_000 {
        return bad("--calls must be 1..1000000");
    }
    if !(args.ramp_per_sec > 0.0 && args.ramp_per_sec.is_finite()) {
        return bad("--ramp-per-sec must be > 0");
    }
    if !(args.hold_secs >= 0.0 && args.hold_secs.is_finite()) {
        return bad("--hold-secs must be >= 0");
    }
    if !(args.settle_secs >= 0.0 && args.settle_secs.is_finite()) {
        return bad("--settle-secs must be >= 0");
    }
    if args.turn_every_ms < args.response_ms + 200 {
        return bad("--turn-every-ms must exceed --response-ms by 200 ms (the pacer must run empty between replies)");
    }
    if args.lead_ms < 20 || !args.lead_ms.is_multiple_of(20) {
        return bad("--lead-ms must be a multiple of 20");
    }
    if let Some(s) = args.call_secs {
        // Shorter calls would hang up before their first reply.
        if !(s.is_finite() && s * 1000.0 >= args.turn_every_ms as f64 && s <= 86_400.0) {
            return bad("--call-secs must be at least --turn-every-ms (and at most a day)");
        }
    }
    if !(args.rss_every_secs >= 1.0 && args.rss_every_secs <= 3600.0) {
        return bad("--rss-every-secs must be 1..3600");
    }
    if args.protocol == Protocol::Audiosocket {
        if crate::client::call::audiosocket::parse_target(&args.url).is_err() {
            return bad(
                "--url must be HOST:PORT (an [[audiosocket]] listener) with --protocol audiosocket",
            );
        }
    } else if !(args.url.starts_with("ws://") || args.url.starts_with("wss://")) {
        return bad("--url must be ws://HOST:PORT");
    }
    Ok(())
}

/// One slot of the run: call `idx` until the run stops; with `--call-secs`, a new call
/// (the next free number) as soon as the previous one hung up. Results with call numbers.
async fn slot(
    idx: u32,
    run: Arc<Run>,
    cfg: Arc<caller::CallerConfig>,
    churn: Option<(churn::Schedule, Duration)>,
) -> Vec<(u32, caller::CallResult)> {
    let Some((schedule, hold_start)) = churn else {
        return vec![(idx, caller::call(idx, idx, None, &run, &cfg).await)];
    };
    let mut results = Vec::new();
    let mut number = idx;
    loop {
        let dialed = run.epoch.elapsed();
        let end = schedule.call_end(idx as usize, results.is_empty(), dialed, hold_start);
        let r = caller::call(number, idx, Some(run.epoch + end), &run, &cfg).await;
        // After a failure the slot stops: no redial loop against a daemon refusing it.
        let failed = r.error.is_some();
        results.push((number, r));
        if failed || run.stopping.is_cancelled() {
            return results;
        }
        number = run.new_link().0;
    }
}

fn rss_point(t: Duration, rss_kib: u64) -> churn::RssPoint {
    churn::RssPoint {
        t_secs: t.as_secs_f64(),
        rss_mb: rss_kib as f64 / 1024.0,
    }
}

/// The port of a `ws://host:port[/...]` URL (80 if none is given).
fn port_of(url: &str) -> Option<u16> {
    let uri: http::Uri = url.parse().ok()?;
    Some(uri.port_u16().unwrap_or(80))
}

/// The shared timer wheel: wakes every millisecond and publishes, for the slot of each
/// millisecond that passed, the number of the current 20 ms period. A call on slot `s`
/// sends one frame each time its slot changes (and catches up if it missed some).
async fn drive_wheel(run: Arc<Run>, stop: CancellationToken) {
    let mut ms = 0u64;
    loop {
        let next = run.epoch + Duration::from_millis(ms + 1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let now_ms = run.epoch.elapsed().as_millis() as u64;
        while ms < now_ms {
            ms += 1;
            run.wheel[(ms % WHEEL_SLOTS) as usize].send_replace(ms / WHEEL_SLOTS);
        }
    }
}

fn aggregate(
    args: &LoadtestArgs,
    run: &Run,
    results: Vec<(u32, caller::CallResult)>,
    stop_ns: u64,
    held_for: f64,
    daemon: Option<DaemonUsage>,
    loadgen_cpu_pct: f64,
) -> Report {
    let mut errors = BTreeMap::new();
    let (mut connected, mut held, mut failed) = (0, 0, 0);
    let (mut frames_sent, mut playback_frames, mut no_audio) = (0, 0, 0);
    let (mut p2fs, mut barge) = (Vec::new(), Vec::new());
    let (mut clear, mut after_clear, mut late, mut max_late) = (0, 0, 0, 0u32);
    let mut barge_missing = 0;
    let mut cut_before_reply = 0;
    let turn_ns = args.turn_every_ms.saturating_mul(1_000_000);
    for (number, r) in &results {
        connected += usize::from(r.connected);
        if let Some(e) = &r.error {
            failed += 1;
            *errors.entry(e.clone()).or_insert(0) += 1;
        } else if r.connected {
            held += 1;
        }
        frames_sent += r.frames_sent;
        playback_frames += r.frames_received;
        if r.connected && r.frames_received == 0 {
            // A churned call dialed shortly before the end may be cut before its first
            // reply was due: not a failure.
            let cut = args.call_secs.is_some()
                && r.hung_up_ns.is_none()
                && stop_ns.saturating_sub(r.up_ns) < turn_ns;
            if cut {
                cut_before_reply += 1;
            } else {
                no_audio += 1;
            }
        }
        p2fs.extend_from_slice(&r.provider_to_fs_us);
        barge.extend_from_slice(&r.barge_cut_us);
        clear += r.clear_audio;
        after_clear += r.frames_after_clear;
        late += r.late_frames;
        max_late = max_late.max(r.max_lateness_us);
        if let Some(link) = run.link(*number) {
            let (sent, last_ns) = link.barge();
            let matched = r.barge_cut_us.len() as u64;
            if sent > matched {
                // The last barge-in may race the teardown: only count it if it was sent
                // well before the call began closing.
                let closing_ns = r.hung_up_ns.unwrap_or(stop_ns);
                let racing = u64::from(last_ns + 200_000_000 > closing_ns);
                barge_missing += (sent - matched).saturating_sub(racing);
            }
        }
    }
    let totals = run
        .mock
        .lock()
        .map(|m| m.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let links = run.all_links();
    let appends = links
        .iter()
        .map(|l| l.appends.load(Ordering::Relaxed))
        .sum();
    let barge_ins_sent = links
        .iter()
        .map(|l| l.barge_no.load(Ordering::Relaxed))
        .sum();
    drop(links);
    let churn = args.call_secs.map(|call_secs| report::Churn {
        call_secs,
        started: results.len(),
        completed: held,
        failed,
        cut_before_reply,
    });
    Report {
        calls: args.calls,
        connected,
        held,
        failed,
        errors,
        hold_secs: held_for,
        provider_formats: totals.formats.clone(),
        mock_connections: totals.connections,
        mock_unlinked: totals.unlinked,
        mock_problems: totals.problems.clone(),
        frames_sent,
        appends_received: appends,
        playback_frames,
        calls_without_audio: no_audio,
        added_latency: Dist::of(totals.added_us.clone()),
        provider_to_fs: Dist::of(p2fs),
        barge_in: Dist::of(barge),
        barge_ins_sent,
        clear_audio: clear,
        barge_ins_without_clear: barge_missing,
        frames_after_clear: after_clear,
        late_frames: late,
        max_lateness_ms: f64::from(max_late) / 1000.0,
        daemon,
        loadgen_cpu_pct,
        machine_cpu_pct: 0.0,
        machine_cores: 0,
        churn,
        rss_timeline: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_has_the_command_lines_defaults() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            loadtest: LoadtestArgs,
        }
        let cli = Cli::try_parse_from(["loadtest", "--url", "ws://h:1", "-n", "7"]).unwrap();
        assert_eq!(
            format!("{:?}", cli.loadtest),
            format!("{:?}", LoadtestArgs::new("ws://h:1", 7))
        );
    }
}
