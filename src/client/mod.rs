//! The client tools, `voicebridge call` and `voicebridge loadtest`: programs that stand
//! in for FreeSWITCH in front of a running daemon.
//!
//! They live in the binary, not in the daemon library: the daemon never needs them, and
//! keeping them out keeps the library what the daemon runs. Both speak to the daemon
//! through one client core ([`core`], the module's handshake, frames and closes, and
//! [`wire`], what the daemon's playback messages mean), so there is one FreeSWITCH client
//! to keep faithful, checked against the tests' independent reference
//! (`tests/common/fake_freeswitch.rs`).

pub mod asterisk_ws;
pub mod call;
pub mod core;
pub mod loadtest;
pub mod wire;
