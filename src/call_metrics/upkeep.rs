//! Drains the histograms' pending samples into their buckets every few seconds.
//!
//! The Prometheus recorder keeps every histogram sample in an unbounded queue until
//! something drains it: a `/metrics` scrape, or its "upkeep". `install_recorder` (which
//! we use, since the admin listener serves `/metrics` itself) spawns no upkeep, so a
//! daemon nobody scraped held every turn latency, barge-in cut and first-response time
//! since it started: measured as a steady climb of RSS over a 10-minute soak at 300
//! calls (+1.7 MB) and memory that stayed after the calls ended. With upkeep the
//! samples live at most [`EVERY`].

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// The exporter's own default upkeep period (`PrometheusBuilder::upkeep_timeout`).
pub const EVERY: Duration = Duration::from_secs(5);

/// Runs the upkeep every `every` until `stop` is cancelled.
pub async fn run(handle: PrometheusHandle, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[tokio::test]
    async fn keeps_every_sample_and_stops_with_the_daemon() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..1000 {
                metrics::histogram!("t_seconds").record(0.5);
            }
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(handle.clone(), EVERY, stop.clone()));
        // The first tick is immediate: one turn of this single-threaded runtime runs it.
        tokio::task::yield_now().await;
        // Rendering drains too, so this sees the drained samples either way; what it
        // checks is that upkeep loses none of them.
        assert!(handle.render().contains("t_seconds_count 1000"));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the upkeep task ends when the daemon stops")
            .expect("no panic");
    }
}
