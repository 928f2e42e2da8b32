//! The caller's key presses, grouped for the model: "press 1 for sales" is one key, but
//! an account number is typed as a quick run of keys that the model should get as one
//! entry, not as eight separate turns. Keys pressed within `gap` of each other form a
//! group; `#` (the usual "end of entry" key) or a full group ends it at once.

use std::time::{Duration, Instant};

use tracing::info;

use super::{CallEngine, Output};
use crate::call_metrics;
use crate::config::DtmfMode;
use crate::providers::ProviderCommand;

/// Longest group: a longer run is sent in pieces (no one types 32 digits in one go; a
/// peer flooding DTMF must not grow the call's memory).
pub const MAX_GROUP: usize = 32;

#[derive(Debug)]
pub(super) struct DtmfGroups {
    gap: Duration,
    digits: String,
    last: Option<Instant>,
}

impl DtmfGroups {
    pub fn new(gap: Duration) -> DtmfGroups {
        DtmfGroups {
            gap,
            digits: String::new(),
            last: None,
        }
    }

    /// A key was pressed at `now`: a finished group, if this key ends one.
    pub fn press(&mut self, now: Instant, digit: char) -> Option<String> {
        self.digits.push(digit);
        self.last = Some(now);
        if digit == '#' || self.digits.len() >= MAX_GROUP {
            return self.take();
        }
        None
    }

    /// When the open group ends by itself (no key for `gap`).
    pub fn due(&self) -> Option<Instant> {
        self.last.map(|at| at + self.gap)
    }

    /// The open group, if it has ended by `now`.
    pub fn tick(&mut self, now: Instant) -> Option<String> {
        match self.due() {
            Some(at) if now >= at => self.take(),
            _ => None,
        }
    }

    fn take(&mut self) -> Option<String> {
        self.last = None;
        (!self.digits.is_empty()).then(|| std::mem::take(&mut self.digits))
    }
}

/// Groups waiting for the provider to be ready; beyond it the oldest are dropped.
const MAX_WAITING: usize = 8;

impl CallEngine {
    /// A key press from the telephony side: logged (the key itself only where
    /// transcripts may be logged: keys can be a PIN), counted, grouped.
    pub(super) fn on_dtmf(&mut self, now: Instant, digit: char) {
        let mode = self.route.call.dtmf;
        call_metrics::dtmf(&self.route.name, mode.name());
        if self.config.log.transcripts {
            info!(%digit, "DTMF from the caller");
        } else {
            info!("DTMF from the caller");
        }
        if let Some(digits) = self.dtmf.press(now, digit) {
            self.on_dtmf_group(now, digits);
        }
    }

    /// A finished group: into the record, and to the model when the route says so.
    pub(super) fn on_dtmf_group(&mut self, now: Instant, digits: String) {
        self.stats.dtmf_keys += digits.chars().count() as u64;
        self.record.dtmf(&digits, now);
        if self.route.call.dtmf != DtmfMode::ToModel {
            return;
        }
        if self.provider_input.is_none() {
            if self.dtmf_waiting.len() >= MAX_WAITING {
                self.dtmf_waiting.remove(0);
            }
            self.dtmf_waiting.push(digits);
            return;
        }
        info!(keys = digits.chars().count(), "DTMF told to the model");
        self.outputs
            .push_back(Output::Provider(ProviderCommand::Dtmf(digits)));
    }

    /// The provider is ready: the groups typed while it connected.
    pub(super) fn send_waiting_dtmf(&mut self) {
        for digits in std::mem::take(&mut self.dtmf_waiting) {
            self.outputs
                .push_back(Output::Provider(ProviderCommand::Dtmf(digits)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn quick_keys_are_one_group_ended_by_a_pause() {
        let t0 = Instant::now();
        let mut g = DtmfGroups::new(1000 * MS);
        assert_eq!(g.due(), None);
        assert_eq!(g.press(t0, '1'), None);
        assert_eq!(g.press(t0 + 400 * MS, '2'), None);
        assert_eq!(g.press(t0 + 900 * MS, '3'), None);
        assert_eq!(
            g.due(),
            Some(t0 + 1900 * MS),
            "a pause counts from the last key"
        );
        assert_eq!(g.tick(t0 + 1899 * MS), None);
        assert_eq!(g.tick(t0 + 1900 * MS).as_deref(), Some("123"));
        assert_eq!(g.due(), None);
        assert_eq!(g.tick(t0 + 5000 * MS), None);
    }

    #[test]
    fn hash_ends_a_group_at_once_and_a_lone_key_is_a_group() {
        let t0 = Instant::now();
        let mut g = DtmfGroups::new(1000 * MS);
        assert_eq!(g.press(t0, '4'), None);
        assert_eq!(g.press(t0 + 100 * MS, '2').as_deref(), None);
        assert_eq!(g.press(t0 + 200 * MS, '#').as_deref(), Some("42#"));
        assert_eq!(g.due(), None);
        assert_eq!(g.press(t0 + 300 * MS, '1'), None);
        assert_eq!(g.tick(t0 + 1300 * MS).as_deref(), Some("1"));
    }

    #[test]
    fn a_flood_of_keys_comes_in_bounded_groups() {
        let t0 = Instant::now();
        let mut g = DtmfGroups::new(1000 * MS);
        let groups: Vec<String> = (0..100).filter_map(|_| g.press(t0, '7')).collect();
        assert_eq!(groups.len(), 3);
        assert!(groups.iter().all(|s| s.len() == MAX_GROUP));
        assert_eq!(g.tick(t0 + 1000 * MS).map(|s| s.len()), Some(4));
    }
}
