//! The FreeSWITCH side: what `mod_audio_stream` sends us and how we play audio back.
//!
//! Split like a carrier serializer: `request` reads the upgrade URL (call identity and
//! inbound format), `metadata` the optional first text frame, `playback` turns paced
//! 20 ms frames into the messages the configured module build understands. The socket
//! itself is driven by the session. `esl` is the optional Event Socket connection for
//! call control (`uuid_break`, `uuid_broadcast`, `uuid_kill`), shared by all calls.

pub mod esl;
pub mod metadata;
pub mod playback;
pub mod request;

pub use esl::Esl;
pub use metadata::Metadata;
pub use playback::Playback;
pub use request::{RequestError, StreamRequest};
