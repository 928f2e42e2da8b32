//! Why every WebSocket reader of ours keeps the last message it read until the next one
//! is read: it lets tungstenite's read buffer shrink back.
//!
//! tungstenite reads into one buffer and hands each message out as a slice of it.
//! When the buffer runs out of room and nothing else refers to it, it grows it in place
//! and keeps it for the life of the socket: after one large message (a provider's
//! session echo with instructions and tool schemas), or just from reads landing badly,
//! every socket held a buffer several times its read size (heaptrack, 500 pcmu calls:
//! 8 KiB per provider socket, 2 × 2 KiB per FreeSWITCH socket). While a message it
//! handed out is still alive, it takes a fresh buffer of its read size instead and the
//! old one is freed with that message. A message is a refcounted slice, so keeping one
//! costs nothing but the slice.

use tokio_tungstenite::tungstenite::{Error, Message};

/// The last message a socket gave out (see the module doc).
#[derive(Debug, Default)]
pub struct LastMessage(Option<Message>);

impl LastMessage {
    /// Call with every read, before handling it: the previous message goes now.
    #[inline]
    pub fn keep(&mut self, read: &Option<Result<Message, Error>>) {
        self.0 = match read {
            Some(Ok(m)) => Some(m.clone()),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The message is held (its bytes stay referenced) until the next read, then let go.
    #[test]
    fn holds_exactly_the_last_message() {
        let first = Bytes::from(vec![1u8; 64]);
        let mut last = LastMessage::default();
        last.keep(&Some(Ok(Message::Binary(first.clone()))));
        // Our copy plus the one kept: `first` cannot be made unique.
        assert!(first.clone().try_into_mut().is_err());
        last.keep(&Some(Ok(Message::Binary(Bytes::from_static(b"next")))));
        assert!(
            first.try_into_mut().is_ok(),
            "the previous message was let go"
        );
        last.keep(&None);
        assert!(last.0.is_none());
    }
}
