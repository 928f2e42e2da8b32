//! `voicebridge check`: validates the configuration the daemon would load and reports on
//! each route, business endpoint and provider in use, without starting the daemon. Secrets
//! never appear: every URL goes through [`crate::redact`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::daemon::source::{load_with, ConfigSource, BUILT_IN_NOTE};
use crate::providers;

/// `voicebridge check`: prints what the config means and whether each endpoint and
/// provider answers; fails (exit 1) if one does not, exit 2 on a configuration error.
pub async fn run(source: &ConfigSource, env_file: Option<PathBuf>) -> ExitCode {
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(file) = env_file {
        match crate::config::env_file::read(&file) {
            // Later entries win, as in the daemon's environment under systemd.
            Ok(vars) => env.extend(vars),
            Err(e) => {
                eprintln!("voicebridge: --env-file: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let config = match load_with(source, env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    match source {
        ConfigSource::File(path) => println!("config {}: OK", path.display()),
        ConfigSource::BuiltIn => println!("config: {BUILT_IN_NOTE}"),
    }
    for w in config.warnings() {
        println!("warning: {w}");
    }
    for route in config.routes() {
        println!(
            "route {:<12} provider {:<10} {} Hz {} {} playback {:?}",
            route.name,
            route.call.provider.name(),
            route.sample_rate,
            route.channels,
            route.codec,
            route.playback
        );
    }
    // A wrong playback mode is silent, not an error: say what each one needs.
    println!("playback modes (which one plays depends on the mod_audio_stream build):");
    for (mode, what) in crate::telephony::freeswitch::playback::MODES_EXPLAINED {
        println!("  {mode:<13} {what}");
    }
    let mut failed = false;
    for route in config.routes() {
        for line in business_lines(route) {
            println!("route {:<12} {line}", route.name);
        }
    }
    let mut endpoints: Vec<(&str, String)> = Vec::new();
    for route in config.routes() {
        if let Some(c) = &route.call.context {
            endpoints.push(("lookup", c.url.clone()));
        }
        for t in route.call.tools.iter() {
            endpoints.push(("tool", t.url.clone()));
        }
    }
    if let Some(url) = &config.records.webhook_url {
        endpoints.push(("records", url.clone()));
    }
    let r = &config.records;
    if r.file.is_some() || r.webhook_url.is_some() {
        let mut parts = Vec::new();
        if let Some(f) = &r.file {
            parts.push(format!("file {}", f.display()));
        }
        if let (Some(url), Some(spool)) = (&r.webhook_url, &r.spool_dir) {
            parts.push(format!(
                "webhook {} (spool {})",
                crate::redact::url(url),
                spool.display()
            ));
        }
        println!("records {}", parts.join(", "));
    }
    endpoints.sort_by(|a, b| a.1.cmp(&b.1));
    endpoints.dedup_by(|a, b| a.1 == b.1);
    for (what, url) in endpoints {
        let shown = crate::redact::url(&url);
        match crate::webhook::reachable(&url, Duration::from_secs(5)).await {
            Ok(took) => println!(
                "webhook {what} {shown}: reachable (connected in {} ms; nothing sent)",
                took.as_millis()
            ),
            Err(e) => {
                failed = true;
                println!("webhook {what} {shown}: FAILED: {e}");
            }
        }
    }
    for kind in config.providers_in_use() {
        // Check each provider with the first route that uses it (its voice, language...).
        let Some(route) = config.routes().find(|r| r.call.provider == kind) else {
            continue;
        };
        match providers::check(&config, route).await {
            Ok(line) => println!("provider {}: OK: {line}", kind.name()),
            Err(e) => {
                failed = true;
                println!("provider {}: FAILED: {e}", kind.name());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What `check` says about a route's business features, one line each.
fn business_lines(route: &crate::config::Route) -> Vec<String> {
    let c = &route.call;
    let mut out = Vec::new();
    if let Some(l) = &c.context {
        out.push(format!(
            "lookup {} {} (timeout {} ms)",
            l.method.name().to_uppercase(),
            crate::redact::url(&l.url),
            l.timeout.as_millis()
        ));
    }
    let tools: Vec<String> = crate::tools::declarations(c)
        .into_iter()
        .map(|d| d.name)
        .collect();
    if !tools.is_empty() {
        out.push(format!("tools {}", tools.join(", ")));
    }
    if !c.transfer_to.is_empty() {
        out.push(format!("transfer_call to {}", c.transfer_to));
    }
    if c.daily_max_calls > 0 || c.daily_max_minutes > 0 {
        let part = |n: u64, unit: &str| {
            if n == 0 {
                format!("unlimited {unit}")
            } else {
                format!("{n} {unit}")
            }
        };
        out.push(format!(
            "budget {}, {} per UTC day",
            part(c.daily_max_calls, "calls"),
            part(c.daily_max_minutes, "minutes")
        ));
    }
    out
}
