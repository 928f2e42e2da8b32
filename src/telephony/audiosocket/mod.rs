//! Asterisk AudioSocket (`AudioSocket()` application, `Dial(AudioSocket/...)`, ARI
//! `externalMedia` with `encapsulation=audiosocket`): Asterisk connects over plain TCP,
//! sends the call's UUID, then 20 ms slin messages; we answer with slin messages of the
//! same kind, paced by us, and end with the hang-up message.
//!
//! - [`frame`]: the framing (kind, big-endian length, payload), pure.
//! - [`reader`]: bounded, cancel-safe reading of messages off the socket.
//! - [`fade`]: the barge-in fade-out, pure.
//! - [`leg`]: the [`TelephonyLeg`](crate::telephony::TelephonyLeg) the call task drives.
//!
//! The accept path (source allow-list, the UUID, admission) is `crate::server::audiosocket`.

pub mod fade;
pub mod frame;
pub mod leg;
pub mod reader;

pub use leg::AudioSocketLeg;
pub use reader::{FrameReader, ReadError};

use frame::Message;

/// Largest payload we accept in one message: 20 ms at 48 kHz is 1 920 bytes, so this
/// leaves room for long packetisation while keeping the per-call buffer small.
pub const MAX_PAYLOAD: usize = 8192;

/// The call id from a connection's first message, which must be the UUID.
pub fn call_id_of_first(msg: Option<Message>) -> Result<String, String> {
    match msg {
        Some(Message::Uuid(bytes)) => Ok(uuid::Uuid::from_bytes(bytes).to_string()),
        Some(Message::Hangup) | None => Err("connection closed before the UUID message".to_owned()),
        Some(other) => Err(format!(
            "first message is not the UUID but {}",
            describe(&other)
        )),
    }
}

fn describe(msg: &Message) -> &'static str {
    match msg {
        Message::Hangup => "a hang-up",
        Message::Uuid(_) => "a UUID",
        Message::Dtmf(_) => "a DTMF digit",
        Message::Audio { .. } => "audio",
        Message::Error(_) => "an error message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn the_first_message_must_be_the_uuid() {
        let id = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(
            call_id_of_first(Some(Message::Uuid(id))).as_deref(),
            Ok("12345678-9abc-4def-8123-456789abcdef")
        );
        let audio = Message::Audio {
            rate: 8000,
            payload: Bytes::from_static(&[0, 0]),
        };
        assert_eq!(
            call_id_of_first(Some(audio)),
            Err("first message is not the UUID but audio".to_owned())
        );
        assert!(call_id_of_first(None).is_err());
    }
}
