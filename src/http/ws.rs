//! WebSocket frames from an upstream to the agent, with echoed secrets masked (row 80:
//! frames used to be piped unscrubbed, so an upstream could hand a credential back in a text
//! or binary message).
//!
//! Each data message runs through one [`Scrubber`], across its fragments, so a secret split over
//! two frames is caught. The scrubber holds back the tail that could start a secret, so output is
//! re-fragmented: every input frame yields at most one output frame carrying what may be sent
//! now (RFC 6455 §5.4 lets an intermediary change the fragmentation of a message that uses no
//! extension; the proxy strips `Sec-WebSocket-Extensions` on credentialed services, so there is
//! none). Control frames (ping, pong, close) are masked whole. A masked frame, reserved bits, or
//! a malformed sequence from the upstream ends the relay. This module only relays; it never
//! reads what the agent sends.

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::io::BufConn;
use crate::scrub::{Masker, Scrubber};

/// Longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: u64 = 125;

/// A frame header as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    /// Bytes the header took.
    size: usize,
}

/// Parses a server-to-client frame header from `b`; `Ok(None)` when more bytes are needed.
/// Masked frames and reserved bits are refused.
fn header(b: &[u8]) -> Result<Option<Header>, Violation> {
    let [b0, b1, rest @ ..] = b else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 || b1 & 0x80 != 0 {
        return Err(Violation);
    }
    let (len, size) = match b1 & 0x7f {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(x) => (u64::from_be_bytes(x.try_into().map_err(|_| Violation)?), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        len,
        size,
    }))
}

/// A frame with `payload`, unmasked (server to client).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(u8::from(fin) << 7 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// The upstream broke the WebSocket protocol (masked frame, reserved bits, a continuation
/// outside a message, an oversized or fragmented control frame): the relay ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation;

/// The frame being read: its header and how many payload bytes are still to come.
#[derive(Debug)]
struct InFrame {
    h: Header,
    left: u64,
}

/// Frames from upstream in, scrubbed frames out; no I/O (the relay feeds it what it reads).
#[derive(Debug)]
pub struct ScrubFrames<'a> {
    secrets: &'a Masker,
    buf: Vec<u8>,
    frame: Option<InFrame>,
    /// The opcode of the data message in progress and whether a frame of it went out yet.
    message: Option<(u8, bool)>,
    scrubber: Scrubber<'a>,
}

impl<'a> ScrubFrames<'a> {
    pub fn new(secrets: &'a Masker) -> Self {
        Self {
            secrets,
            buf: Vec::new(),
            frame: None,
            message: None,
            scrubber: Scrubber::new(secrets),
        }
    }

    /// A frame starts: a control frame must be whole and short; a data frame either starts a
    /// message or continues the one under way.
    fn start(&mut self, h: Header) -> Result<(), Violation> {
        if h.opcode & 0x08 != 0 && (h.len > MAX_CONTROL || !h.fin) {
            return Err(Violation);
        }
        if h.opcode & 0x08 == 0 {
            self.message = Some(match (h.opcode, self.message) {
                (0, Some(m)) => m,
                (1 | 2, None) => (h.opcode, false),
                _ => return Err(Violation),
            });
        }
        self.frame = Some(InFrame { h, left: h.len });
        Ok(())
    }

    /// Takes the next bytes from upstream; returns the frames to send on now.
    pub fn push(&mut self, input: &[u8]) -> Result<Vec<u8>, Violation> {
        self.buf.extend_from_slice(input);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let Some(f) = &mut self.frame else {
                let Some(h) = header(&self.buf[at..])? else {
                    break;
                };
                at += h.size;
                self.start(h)?;
                continue;
            };
            let h = f.h;
            let ready = self.buf.len() - at;
            if h.opcode & 0x08 != 0 {
                // Control: whole, masked in place, passed on.
                let n = h.len as usize;
                if ready < n {
                    break;
                }
                let mut payload = self.buf[at..at + n].to_vec();
                at += n;
                self.secrets.mask(&mut payload);
                out.extend(frame(true, h.opcode, &payload));
                self.frame = None;
                continue;
            }
            if ready == 0 && f.left > 0 {
                break;
            }
            let k = f.left.min(ready as u64) as usize;
            let mut chunk = self.scrubber.push(&self.buf[at..at + k]);
            at += k;
            f.left -= k as u64;
            let last = f.left == 0 && h.fin;
            if last {
                chunk.extend(self.scrubber.finish());
            }
            let (opcode, sent) = self.message.unwrap_or((h.opcode, false));
            if !chunk.is_empty() || last {
                out.extend(frame(last, if sent { 0 } else { opcode }, &chunk));
                self.message = Some((opcode, true));
            }
            if f.left == 0 {
                self.frame = None;
                if h.fin {
                    self.message = None;
                    self.scrubber = Scrubber::new(self.secrets);
                }
            }
        }
        self.buf.drain(..at);
        Ok(out)
    }
}

/// Relays frames from `src` (whose first bytes, already read, are `early`) to `dst`, masking
/// `secrets`; returns when either side ends or the upstream breaks the protocol.
pub async fn relay_scrubbed<R: AsyncReadRent, W: AsyncWriteRent>(
    src: R,
    dst: &mut W,
    early: Vec<u8>,
    secrets: &Masker,
) {
    let mut src = BufConn::with_buffered(src, early);
    let mut frames = ScrubFrames::new(secrets);
    loop {
        let Ok(out) = frames.push(src.buffered()) else {
            return;
        };
        let n = src.buffered().len();
        src.consume(n);
        if !out.is_empty() && dst.write_all(out).await.0.is_err() {
            return;
        }
        if !matches!(src.fill().await, Ok(k) if k > 0) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn masker(secret: &[u8]) -> Masker {
        Masker::new(vec![Secret::new(secret.to_vec())])
    }

    /// Decodes unmasked frames into (fin, opcode, payload).
    fn frames(mut b: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(Some(h)) = header(b) {
            let end = h.size + h.len as usize;
            out.push((h.fin, h.opcode, b[h.size..end].to_vec()));
            b = &b[end..];
        }
        out
    }

    /// The whole text of the data messages in `frames`, one string per message.
    fn messages(frames: &[(bool, u8, Vec<u8>)]) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut open = false;
        for (fin, op, p) in frames {
            if *op & 0x08 != 0 {
                continue;
            }
            if open {
                assert_eq!(*op, 0, "a continuation");
                out.last_mut().unwrap().1.extend_from_slice(p);
            } else {
                assert_ne!(*op, 0, "a message starts with its opcode");
                out.push((*op, p.clone()));
            }
            open = !fin;
        }
        assert!(!open, "every message ends");
        out
    }

    /// Relays `input` (all already read) into one end of a socket pair; what the other end got.
    fn relay(input: Vec<u8>, secrets: &Masker) -> Vec<u8> {
        use std::io::Read;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut a = monoio::net::UnixStream::from_std(a).unwrap();
            relay_scrubbed(&[][..], &mut a, input, secrets).await;
        });
        let mut out = Vec::new();
        b.read_to_end(&mut out).unwrap();
        out
    }

    /// Review B7 (row 80): a secret in a text frame, in a binary frame, split across the
    /// fragments of one message (with a ping between them), and in a close reason, is masked;
    /// message boundaries and opcodes survive.
    #[test]
    fn row80_frames_from_upstream_are_scrubbed() {
        let secret = b"sk-live-0123456789";
        let secrets = masker(secret);
        let mut input = frame(true, 1, b"auth=sk-live-0123456789 ok");
        input.extend(frame(true, 2, b"\x00\x01sk-live-0123456789\xff"));
        input.extend(frame(false, 1, b"part=sk-live-01"));
        input.extend(frame(true, 9, b"ping"));
        input.extend(frame(true, 0, b"23456789 end"));
        input.extend(frame(true, 8, b"\x03\xe8bye sk-live-0123456789"));
        let out = frames(&relay(input, &secrets));
        let msgs = messages(&out);
        let stars = "*".repeat(secret.len());
        assert_eq!(
            msgs,
            vec![
                (1, format!("auth={stars} ok").into_bytes()),
                (
                    2,
                    [b"\x00\x01".as_slice(), stars.as_bytes(), b"\xff"].concat()
                ),
                (1, format!("part={stars} end").into_bytes()),
            ]
        );
        assert!(out.iter().any(|(_, op, p)| *op == 9 && p == b"ping"));
        let close = out.iter().find(|(_, op, _)| *op == 8).unwrap();
        assert_eq!(
            close.2,
            [b"\x03\xe8bye ".as_slice(), stars.as_bytes()].concat()
        );
        let all: Vec<u8> = out.iter().flat_map(|(_, _, p)| p.clone()).collect();
        assert!(!all.windows(secret.len()).any(|w| w == secret));
    }

    /// The same stream cut anywhere, fed in two pieces, gives the same messages.
    #[test]
    fn any_split_gives_the_same_messages() {
        let secrets = masker(b"sk-live-0123456789");
        let mut input = frame(false, 1, b"part=sk-live-01");
        input.extend(frame(true, 9, b"ping"));
        input.extend(frame(true, 0, b"23456789 end"));
        let whole = messages(&frames(&ScrubFrames::new(&secrets).push(&input).unwrap()));
        for cut in 0..input.len() {
            let mut f = ScrubFrames::new(&secrets);
            let mut out = f.push(&input[..cut]).unwrap();
            out.extend(f.push(&input[cut..]).unwrap());
            assert_eq!(messages(&frames(&out)), whole, "cut at {cut}");
        }
        assert_eq!(whole, vec![(1, b"part=****************** end".to_vec())]);
    }

    /// Masked frames and reserved bits from an upstream end the relay.
    #[test]
    fn protocol_violations_end_the_relay() {
        let secrets = masker(b"sk-live-0123456789");
        let mut masked = frame(true, 1, b"hi");
        masked[1] |= 0x80;
        assert!(relay(masked, &secrets).is_empty());
        let mut rsv = frame(true, 1, b"hi");
        rsv[0] |= 0x40;
        assert!(relay(rsv, &secrets).is_empty());
        assert!(relay(frame(true, 0, b"stray continuation"), &secrets).is_empty());
    }
}
