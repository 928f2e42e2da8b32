//! FreeSWITCH `mod_audio_stream`, the first implementation of the telephony interface.
//!
//! Split like a carrier serializer: `request` reads the upgrade URL (call identity and
//! inbound format), `metadata` the optional first text frame, `playback` turns paced
//! 20 ms frames into the messages the configured module build understands, and `leg`
//! is the `TelephonyLeg` of one call (inbound messages → events, actions → messages, the
//! close handshake, ESL play events and channel release kept inside). `esl` is the optional Event Socket connection for call control
//! (`uuid_break`, `uuid_broadcast`, `uuid_kill`, `uuid_transfer`), shared by all calls.

pub mod esl;
pub mod leg;
pub mod metadata;
pub mod playback;
pub mod request;

pub use esl::Esl;
pub use leg::FreeswitchLeg;
pub use metadata::Metadata;
pub use playback::Playback;
pub use request::{RequestError, StreamRequest};
