//! Prometheus series of call-record delivery. Labels are fixed tags, so the series
//! count is bounded.

use metrics::{counter, describe_counter, describe_gauge, gauge};

pub const WRITTEN: &str = "voicebridge_records_written_total";
pub const DELIVERED: &str = "voicebridge_records_delivered_total";
pub const FAILED: &str = "voicebridge_records_delivery_failures_total";
pub const DROPPED: &str = "voicebridge_records_dropped_total";
pub const SPOOLED: &str = "voicebridge_records_spooled";

/// Called by `call_metrics::install`.
pub fn describe() {
    describe_counter!(WRITTEN, "Call records appended to records.file.");
    describe_counter!(
        DELIVERED,
        "Call records the records webhook accepted (2xx)."
    );
    describe_counter!(
        FAILED,
        "Failed delivery attempts to the records webhook, by kind (transient: retried; refused: moved to rejected/)."
    );
    describe_counter!(
        DROPPED,
        "Call records lost to a sink, by reason (queue_full, file_error, spool_error, spool_full, rejected)."
    );
    describe_gauge!(
        SPOOLED,
        "Call records waiting in the spool for the records webhook."
    );
}

pub fn written() {
    counter!(WRITTEN).increment(1);
}

pub fn delivered() {
    counter!(DELIVERED).increment(1);
}

pub fn failed_attempt(kind: &'static str) {
    counter!(FAILED, "kind" => kind).increment(1);
}

pub fn dropped(reason: &'static str, n: u64) {
    if n > 0 {
        counter!(DROPPED, "reason" => reason).increment(n);
    }
}

pub fn spooled(n: usize) {
    gauge!(SPOOLED).set(n as f64);
}
