//! Pure, synchronous audio code: codecs, resampling, re-framing, pacing.
//!
//! Nothing here does I/O or knows about tokio, so every piece can be unit-tested and
//! benchmarked alone. The session owns one instance of each stateful piece per call
//! and direction, for the whole call.

mod fifo;
pub mod flood;
pub mod format;
pub mod frame;
pub mod g711;
pub mod pacer;
pub mod pcm;
mod playback_store;
pub mod resample;
pub mod scratch;
pub mod signal;
pub mod speech;
pub mod transcode;

pub use flood::FloodGuard;
pub use format::{AudioFormat, Channels, Codec, FRAME_MS};
pub use frame::Reframer;
pub use pacer::{Flushed, ItemId, Pacer};
pub use resample::Resampler;
pub use transcode::Transcoder;

/// Errors from building an audio pipeline (running one never fails).
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot resample {from} Hz to {to} Hz: {reason}")]
    Resampler { from: u32, to: u32, reason: String },
    #[error("unsupported audio format {0}: G.711 is 8000 Hz only")]
    Unsupported(AudioFormat),
}
