//! Runs the real `voicebridge` binary for a test: a temp config, loopback port 0, JSON
//! logs on stdout collected so tests can await a log line (an event, not a sleep).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// Upper bound for anything a test awaits: a hang guard, not a performance threshold.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener (/healthz, /readyz, /metrics).
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<Vec<String>>>,
    notify: Arc<Notify>,
    /// The config file the daemon was started with (tests may rewrite it and SIGHUP).
    pub config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The `message` of a JSON log line.
pub fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

/// A field of a JSON log line (`fields.<name>`).
pub fn field<'a>(line: &'a Value, name: &str) -> &'a Value {
    &line["fields"][name]
}

/// The call id a log line belongs to (from the call span).
pub fn call_id(line: &Value) -> Option<&str> {
    line["span"]["call_id"].as_str()
}

/// `line` without ANSI colour sequences (`ESC [ … m`).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Daemon {
    /// Starts the daemon with `toml` as its config file plus `env` overrides.
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::spawn_with_config(toml, env, "json");
        d.learn_addresses().await;
        d
    }

    /// Like [`Daemon::start`], with `[log] format = "pretty"` (the human format): only
    /// [`Daemon::output`] and [`Daemon::wait_raw`] see its lines.
    pub async fn start_pretty(toml: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::spawn_with_config(toml, env, "pretty");
        let listen_of = |line: &str| -> SocketAddr {
            without_ansi(line)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen=").map(str::to_owned))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no listen= in {line:?}"))
        };
        d.admin = listen_of(&d.wait_raw(|l| l.contains("admin listening")).await);
        d.addr = listen_of(
            &d.wait_raw(|l| l.contains(" listening ") && !l.contains("admin"))
                .await,
        );
        d
    }

    /// Waits for the first raw output line (old or new) matching `pred`.
    pub async fn wait_raw(&self, pred: impl Fn(&str) -> bool) -> String {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if let Some(l) = self.raw.lock().unwrap().iter().find(|l| pred(l)) {
                    return l.clone();
                }
                notified.await;
            }
        };
        match tokio::time::timeout(HANG_GUARD, wait).await {
            Ok(l) => l,
            Err(_) => panic!("output line not seen; output so far:\n{}", self.output()),
        }
    }

    fn spawn_with_config(toml: &str, env: &[(&str, &str)], log_format: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("voicebridge.toml");
        std::fs::write(&path, toml).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_voicebridge"));
        cmd.arg("serve").arg("--config").arg(&path);
        Daemon::spawn(cmd, env, log_format, dir, path)
    }

    /// Starts the daemon with no config file named (no `--config`, no
    /// `VOICEBRIDGE_CONFIG`), from an empty working directory: as when it is started
    /// outside the repository. `config_path` is where no file is.
    pub async fn start_without_config(env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config/default.toml");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_voicebridge"));
        cmd.arg("serve")
            .current_dir(dir.path())
            .env_remove("VOICEBRIDGE_CONFIG");
        let mut d = Daemon::spawn(cmd, env, "json", dir, path);
        d.learn_addresses().await;
        d
    }

    /// Reads the admin and media addresses from the JSON "listening" lines.
    async fn learn_addresses(&mut self) {
        let admin = self
            .wait_log(|l| message(l).starts_with("admin listening"))
            .await;
        self.admin = field(&admin, "listen")
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("admin address in the log");
        let listening = self.wait_log(|l| message(l) == "listening").await;
        self.addr = field(&listening, "listen")
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("listen address in the log");
    }

    fn spawn(
        mut cmd: Command,
        env: &[(&str, &str)],
        log_format: &str,
        dir: tempfile::TempDir,
        path: std::path::PathBuf,
    ) -> Daemon {
        cmd.env_remove("RUST_LOG")
            .env("VOICEBRIDGE__SERVER__LISTEN", "127.0.0.1:0")
            .env("VOICEBRIDGE__ADMIN__LISTEN", "127.0.0.1:0")
            .env("VOICEBRIDGE__LOG__FORMAT", log_format)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn voicebridge");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        {
            let (logs, raw, notify) = (logs.clone(), raw.clone(), notify.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    raw.lock().unwrap().push(line.clone());
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        logs.lock().unwrap().push(v);
                    }
                    notify.notify_waiters();
                }
                notify.notify_waiters();
            });
        }
        {
            let raw = raw.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    raw.lock().unwrap().push(format!("stderr: {line}"));
                }
            });
        }
        Daemon {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            logs,
            raw,
            notify,
            config_path: path,
            _dir: dir,
        }
    }

    /// Waits for the first log line (old or new) matching `pred`.
    pub async fn wait_log(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if let Some(v) = self.logs.lock().unwrap().iter().find(|l| pred(l)) {
                    return v.clone();
                }
                notified.await;
            }
        };
        match tokio::time::timeout(HANG_GUARD, wait).await {
            Ok(v) => v,
            Err(_) => panic!("log line not seen; output so far:\n{}", self.output()),
        }
    }

    /// Waits for the provider watchdog's warning (any call).
    pub async fn wait_watchdog(&self) -> Value {
        self.wait_log(|l| {
            message(l) == "provider warning"
                && field(l, "warning")
                    .as_str()
                    .is_some_and(|w| w.starts_with("provider silent"))
        })
        .await
    }

    /// Waits for the summary line of call `id`.
    pub async fn wait_call_end(&self, id: &str) -> Value {
        self.wait_log(|l| message(l) == "call ended" && call_id(l) == Some(id))
            .await
    }

    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Everything the daemon printed, for failure messages and secret scans.
    pub fn output(&self) -> String {
        self.raw.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM without waiting (drain tests).
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGHUP (config reload).
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(sig)
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits for the process to exit by itself; returns its exit status code.
    pub async fn wait_exit(mut self) -> Option<i32> {
        match tokio::time::timeout(HANG_GUARD, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => panic!("daemon did not exit:\n{}", self.output()),
        }
    }

    /// SIGTERM, then wait for the process to exit; returns its exit status code.
    pub async fn stop(mut self) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            // SAFETY-free: `kill` is a plain command, no libc dependency needed.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        match tokio::time::timeout(HANG_GUARD, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                panic!("daemon did not exit after SIGTERM:\n{}", self.output());
            }
        }
    }

    /// The daemon's peak resident memory so far (`VmHWM`, KiB), for measurements.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
