//! The AudioSocket framing, pure: one message is a 1-byte kind, a 2-byte big-endian
//! payload length and the payload (so at most 65 535 bytes). Decoding works on a
//! buffer of whatever TCP delivered so far (it splits and merges messages) and says
//! "need more" until a whole message is there; encoding makes one contiguous message,
//! which Asterisk needs (it reads a header split across segments wrongly on some
//! releases, and waits at most 5 ms for the rest of a payload).

use bytes::{Buf, Bytes, BytesMut};

/// Header: kind + big-endian length.
pub const HEADER: usize = 3;

/// Hang up (no payload). Either side; Asterisk itself just closes.
pub const KIND_HANGUP: u8 = 0x00;
/// The call's UUID, 16 raw bytes; always Asterisk's first message.
pub const KIND_UUID: u8 = 0x01;
/// One ASCII DTMF digit (Asterisk 20.14/21.9/22.4 and later).
pub const KIND_DTMF: u8 = 0x03;
/// Signed linear 16-bit audio at 8 kHz; `0x11`–`0x18` are the other rates.
pub const KIND_SLIN_8K: u8 = 0x10;
/// An error, with an optional application code.
pub const KIND_ERROR: u8 = 0xff;

/// The slin kinds and their rates (res_audiosocket.h). 44.1, 96 and 192 kHz are
/// refused: no phone codec runs there and the engine's 20 ms framing assumes rates
/// with whole samples per millisecond.
const SLIN_KINDS: &[(u8, u32)] = &[
    (0x10, 8000),
    (0x11, 12000),
    (0x12, 16000),
    (0x13, 24000),
    (0x14, 32000),
    (0x16, 48000),
];

/// The kind of slin audio at `rate`, if AudioSocket has one we speak.
pub fn slin_kind(rate: u32) -> Option<u8> {
    SLIN_KINDS.iter().find(|(_, r)| *r == rate).map(|(k, _)| *k)
}

/// The rate of slin kind `kind`.
pub fn slin_rate(kind: u8) -> Option<u32> {
    SLIN_KINDS.iter().find(|(k, _)| *k == kind).map(|(_, r)| *r)
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hangup,
    Uuid([u8; 16]),
    Dtmf(char),
    /// Little-endian 16-bit mono samples at `rate`.
    Audio {
        rate: u32,
        payload: Bytes,
    },
    /// The far end reports an error (its optional code bytes).
    Error(Bytes),
}

/// Input that is not AudioSocket; the connection cannot be read any further.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown message kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("slin kind 0x{0:02x} is a rate voicebridge does not take (8, 12, 16, 24, 32, 48 kHz)")]
    UnsupportedRate(u8),
    #[error("UUID message of {0} bytes (must be 16)")]
    BadUuid(usize),
    #[error("DTMF message of {0} bytes (must be one ASCII digit)")]
    BadDtmf(usize),
    #[error("DTMF message with {0:?}, not one of 0-9 * # A-D")]
    BadDigit(char),
    #[error("audio message with no payload")]
    EmptyAudio,
    #[error("audio message of {len} bytes is not whole 16-bit samples")]
    OddAudio { len: usize },
    #[error("message of kind 0x{kind:02x} announces {len} bytes, over the {max}-byte limit")]
    TooLong { kind: u8, len: usize, max: usize },
}

/// Decodes messages from a byte buffer, with a cap on what one message may announce
/// (so a peer cannot make us buffer 64 KiB per call for nothing).
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    max_payload: usize,
}

impl Decoder {
    pub fn new(max_payload: usize) -> Decoder {
        Decoder { max_payload }
    }

    /// The largest buffer a caller needs to hold a message: header plus the cap.
    pub fn max_message(&self) -> usize {
        HEADER + self.max_payload
    }

    /// Takes one whole message off the front of `buf`: `Ok(None)` while it is not
    /// all there (read more), an error as soon as the header shows it is garbage
    /// (before its payload is read).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let kind = buf[0];
        let len = usize::from(u16::from_be_bytes([buf[1], buf[2]]));
        check_header(kind, len, self.max_payload)?;
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        buf.advance(HEADER);
        let payload = buf.split_to(len).freeze();
        Ok(Some(parse(kind, payload)?))
    }
}

/// What the header alone tells: the kind is one we know and the length fits it.
fn check_header(kind: u8, len: usize, max: usize) -> Result<(), FrameError> {
    match kind {
        KIND_HANGUP | KIND_ERROR => {}
        KIND_UUID if len != 16 => return Err(FrameError::BadUuid(len)),
        KIND_DTMF if len != 1 => return Err(FrameError::BadDtmf(len)),
        KIND_UUID | KIND_DTMF => {}
        k if slin_rate(k).is_some() => {}
        0x11..=0x18 => return Err(FrameError::UnsupportedRate(kind)),
        k => return Err(FrameError::UnknownKind(k)),
    }
    if len > max {
        return Err(FrameError::TooLong { kind, len, max });
    }
    Ok(())
}

fn parse(kind: u8, payload: Bytes) -> Result<Message, FrameError> {
    Ok(match kind {
        // A hang-up with a payload is still a hang-up.
        KIND_HANGUP => Message::Hangup,
        KIND_ERROR => Message::Error(payload),
        KIND_UUID => {
            let mut id = [0u8; 16];
            id.copy_from_slice(&payload);
            Message::Uuid(id)
        }
        KIND_DTMF => {
            let c = char::from(payload[0]);
            if !matches!(c, '0'..='9' | '*' | '#' | 'A'..='D') {
                return Err(FrameError::BadDigit(c));
            }
            Message::Dtmf(c)
        }
        _ => {
            let rate = slin_rate(kind).ok_or(FrameError::UnknownKind(kind))?;
            if payload.is_empty() {
                return Err(FrameError::EmptyAudio);
            }
            if !payload.len().is_multiple_of(2) {
                return Err(FrameError::OddAudio { len: payload.len() });
            }
            Message::Audio { rate, payload }
        }
    })
}

/// Appends one message to `out`. `payload` must be at most 65 535 bytes (ours are
/// 20 ms frames, far below).
pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..usize::from(len)]);
}

/// The hang-up message, `00 00 00`.
pub const HANGUP: [u8; 3] = [KIND_HANGUP, 0, 0];

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[test]
    fn decodes_each_kind_and_leaves_the_rest() {
        let d = Decoder::new(4096);
        let mut b = Vec::new();
        encode(KIND_UUID, &[7u8; 16], &mut b);
        encode(KIND_DTMF, b"5", &mut b);
        encode(0x12, &[1, 0, 2, 0], &mut b);
        encode(KIND_ERROR, &[9], &mut b);
        b.extend_from_slice(&HANGUP);
        let mut b = buf(&b);
        assert_eq!(d.decode(&mut b), Ok(Some(Message::Uuid([7; 16]))));
        assert_eq!(d.decode(&mut b), Ok(Some(Message::Dtmf('5'))));
        assert_eq!(
            d.decode(&mut b),
            Ok(Some(Message::Audio {
                rate: 16000,
                payload: Bytes::from_static(&[1, 0, 2, 0])
            }))
        );
        assert_eq!(
            d.decode(&mut b),
            Ok(Some(Message::Error(Bytes::from_static(&[9]))))
        );
        assert_eq!(d.decode(&mut b), Ok(Some(Message::Hangup)));
        assert_eq!(d.decode(&mut b), Ok(None));
    }

    #[test]
    fn a_message_split_anywhere_waits_for_the_rest() {
        let d = Decoder::new(4096);
        let mut whole = Vec::new();
        encode(KIND_SLIN_8K, &[0u8; 320], &mut whole);
        for cut in 0..whole.len() {
            let mut b = buf(&whole[..cut]);
            assert_eq!(d.decode(&mut b), Ok(None), "cut at {cut}");
            b.extend_from_slice(&whole[cut..]);
            assert!(matches!(
                d.decode(&mut b),
                Ok(Some(Message::Audio { rate: 8000, .. }))
            ));
            assert!(b.is_empty());
        }
    }

    #[test]
    fn garbage_is_refused_from_the_header() {
        let d = Decoder::new(4096);
        assert_eq!(
            d.decode(&mut buf(&[0x42, 0, 0])),
            Err(FrameError::UnknownKind(0x42))
        );
        assert_eq!(
            d.decode(&mut buf(&[0x15, 0, 2])),
            Err(FrameError::UnsupportedRate(0x15))
        );
        assert_eq!(
            d.decode(&mut buf(&[KIND_UUID, 0, 4])),
            Err(FrameError::BadUuid(4))
        );
        assert_eq!(
            d.decode(&mut buf(&[KIND_DTMF, 0, 2])),
            Err(FrameError::BadDtmf(2))
        );
        // A huge length is refused before a byte of its payload is buffered.
        assert_eq!(
            d.decode(&mut buf(&[KIND_SLIN_8K, 0xff, 0xff])),
            Err(FrameError::TooLong {
                kind: 0x10,
                len: 65535,
                max: 4096
            })
        );
    }

    #[test]
    fn bad_payloads_are_refused() {
        let d = Decoder::new(4096);
        assert_eq!(
            d.decode(&mut buf(&[KIND_SLIN_8K, 0, 0])),
            Err(FrameError::EmptyAudio)
        );
        assert_eq!(
            d.decode(&mut buf(&[KIND_SLIN_8K, 0, 3, 1, 2, 3])),
            Err(FrameError::OddAudio { len: 3 })
        );
        assert_eq!(
            d.decode(&mut buf(&[KIND_DTMF, 0, 1, b'x'])),
            Err(FrameError::BadDigit('x'))
        );
    }

    #[test]
    fn encodes_big_endian_lengths_and_the_hangup() {
        let mut out = Vec::new();
        encode(0x12, &[0u8; 640], &mut out);
        assert_eq!(&out[..3], &[0x12, 0x02, 0x80]);
        assert_eq!(out.len(), 643);
        assert_eq!(HANGUP, [0, 0, 0]);
    }

    #[test]
    fn rates_and_kinds_map_both_ways() {
        assert_eq!(slin_kind(8000), Some(0x10));
        assert_eq!(slin_kind(16000), Some(0x12));
        assert_eq!(slin_kind(24000), Some(0x13));
        assert_eq!(slin_kind(44100), None);
        for (k, r) in SLIN_KINDS {
            assert_eq!(slin_rate(*k), Some(*r));
            assert_eq!(slin_kind(*r), Some(*k));
        }
    }
}
