//! Reading AudioSocket messages off the TCP stream, bounded and cancel-safe: bytes go
//! into one buffer with `read_buf` (which either reads or does nothing when dropped),
//! and [`Decoder`] takes whole messages off its front. A header announcing more than
//! the cap is refused before its payload is read, so the buffer never holds more than
//! one capped message plus one read.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use super::frame::{Decoder, FrameError, Message};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;

/// Why the stream cannot be read any further.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection closed in the middle of a message ({0} bytes of it received)")]
    Truncated(usize),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The reading half of one AudioSocket connection.
pub struct FrameReader {
    read: OwnedReadHalf,
    buf: BytesMut,
    decoder: Decoder,
}

impl FrameReader {
    pub fn new(read: OwnedReadHalf, max_payload: usize) -> FrameReader {
        let decoder = Decoder::new(max_payload);
        FrameReader {
            read,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder,
        }
    }

    /// The next message; `Ok(None)` when the far end closed between messages (how
    /// Asterisk hangs up). Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some(msg) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(msg));
            }
            // Only here when less than one whole (capped) message is buffered.
            debug_assert!(self.buf.len() < self.decoder.max_message());
            self.buf.reserve(READ_CHUNK);
            let n = self.read.read_buf(&mut self.buf).await?;
            if n == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    have => Err(ReadError::Truncated(have)),
                };
            }
        }
    }

    /// Bytes buffered and not yet decoded (for the memory-bound test).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::audiosocket::frame::{encode, KIND_SLIN_8K, KIND_UUID};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, FrameReader) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, _write) = server.into_split();
        (client, FrameReader::new(read, 1024))
    }

    #[tokio::test]
    async fn reads_messages_written_in_pieces_and_ends_at_eof() {
        let (mut client, mut reader) = pair().await;
        let mut bytes = Vec::new();
        encode(KIND_UUID, &[1; 16], &mut bytes);
        encode(KIND_SLIN_8K, &[0; 320], &mut bytes);
        let task = tokio::spawn(async move {
            for piece in bytes.chunks(7) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        assert_eq!(reader.next().await.unwrap(), Some(Message::Uuid([1; 16])));
        assert!(matches!(
            reader.next().await.unwrap(),
            Some(Message::Audio { rate: 8000, .. })
        ));
        assert!(reader.next().await.unwrap().is_none());
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_truncated_message_is_an_error() {
        let (mut client, mut reader) = pair().await;
        client
            .write_all(&[KIND_SLIN_8K, 0x01, 0x40, 0, 0])
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        assert!(matches!(reader.next().await, Err(ReadError::Truncated(5))));
    }

    #[tokio::test]
    async fn an_oversize_length_is_refused_without_buffering_it() {
        let (mut client, mut reader) = pair().await;
        client.write_all(&[KIND_SLIN_8K, 0xff, 0xff]).await.unwrap();
        client.write_all(&[0u8; 2000]).await.unwrap();
        let err = reader.next().await.unwrap_err();
        assert!(matches!(
            err,
            ReadError::Frame(FrameError::TooLong { len: 65535, .. })
        ));
        assert!(reader.buffered() <= READ_CHUNK + 3);
    }
}
