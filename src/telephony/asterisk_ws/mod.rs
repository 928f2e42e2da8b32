//! Asterisk `chan_websocket` (Asterisk 20.16+, 22.6+, 23+): Asterisk dials voicebridge
//! (`Dial(WebSocket/<client>/c(ulaw)f(json)v(...))` with a `websocket_client.conf`
//! section of `connection_type = per_call_config`, or ARI `externalMedia` with
//! `transport=websocket`) on the shared listen port, under `/asterisk/<route>`.
//!
//! Split like the FreeSWITCH side: `request` reads the upgrade URL (route and the
//! `v()` call data), `control` the TEXT control messages in both of the driver's
//! formats (pure), `playout` what we send in whole `optimal_frame_size` messages with
//! the marks in line and the `MEDIA_XOFF` hold (pure), and `leg` is the `TelephonyLeg`
//! of one call (audio held until `MEDIA_START`, `FLUSH_MEDIA` on barge-in,
//! `MARK_MEDIA` → `MEDIA_MARK_PROCESSED` as the played position, `HANGUP` at our end).

pub mod control;
pub mod leg;
pub mod playout;
pub mod request;

pub use leg::AsteriskLeg;
pub use request::AsteriskRequest;

/// Largest binary message either way. Asterisk closes the socket (1009) on a frame
/// over 65,535 bytes with its header, and the channel documentation says 65,500; its
/// own messages are one 20 ms frame (at most 1,920 bytes for slin48), ours too.
pub const MAX_BINARY_BYTES: usize = 65_500;
/// Largest TEXT frame we read from Asterisk (a `MEDIA_START` with many channel
/// variables is the biggest; a few KiB in practice).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
