//! Streaming body relay: reads one framing, writes the proxy's own framing, never buffers more
//! than one read.
//!
//! A `Content-Length` body is forwarded as is (zero-copy, buffer slices). A chunked body is
//! decoded strictly (hex size without sign or overflow, CRLF after data, trailers dropped: rows
//! 14-15) and re-encoded with one chunk per read, so server-sent events reach the agent as they
//! arrive. A close-delimited response is re-framed as chunked. The byte cap (row 16) counts
//! decoded body bytes. With a [`Scrubber`], echoed secrets are masked on the way (row 25).

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::HttpError;
use super::head::Framing;
use super::io::{BufConn, forward_buffered};
use crate::scrub::Scrubber;

/// Longest chunk-size line (size plus extensions) accepted.
/// The largest request body airlock reads whole before sending it: to send it again when a
/// reused upstream connection turns out dead, to show a held request to the operator, to judge
/// a `_method` in the body. Larger bodies stream.
pub const WHOLE_BODY_MAX: u64 = 1024 * 1024;

const MAX_CHUNK_LINE: usize = 1024;
/// Longest trailer section accepted (trailers are read and dropped).
const MAX_TRAILERS: usize = 8 * 1024;

/// Why a relay stopped early; the caller decides who is blamed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading the body: {0}")]
    Read(std::io::Error),
    #[error("the body ended before its declared length")]
    Truncated,
    #[error("writing the body: {0}")]
    Write(std::io::Error),
    #[error(transparent)]
    Framing(#[from] HttpError),
}

/// How the relayed body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes as they are (Content-Length bodies; close-delimited to an HTTP/1.0 client).
    Raw,
    /// Chunked transfer coding.
    Chunked,
}

/// How one relay runs.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub output: Output,
    /// Largest decoded body accepted.
    pub cap: Option<u64>,
    /// Longest wait for the next bytes (a slow or stalled sender is cut off, row 36).
    pub read_timeout: std::time::Duration,
}

/// Reads more bytes within `limit`.
async fn fill<R: AsyncReadRent>(
    src: &mut BufConn<R>,
    limit: std::time::Duration,
) -> Result<usize, RelayError> {
    match monoio::time::timeout(limit, src.fill()).await {
        Ok(r) => r.map_err(RelayError::Read),
        Err(_) => Err(RelayError::Read(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no bytes within the read timeout",
        ))),
    }
}

/// The output framing the proxy uses for a body received with `framing`.
pub fn output_for(framing: Framing) -> Output {
    match framing {
        Framing::Chunked | Framing::Close => Output::Chunked,
        Framing::Empty | Framing::Length(_) => Output::Raw,
    }
}

/// Relays one body from `src` to `dst`. `cap` bounds the decoded size. Returns the byte count.
pub async fn relay<R: AsyncReadRent, W: AsyncWriteRent>(
    src: &mut BufConn<R>,
    dst: &mut BufConn<W>,
    framing: Framing,
    opts: Opts,
    mut scrub: Option<&mut Scrubber<'_>>,
) -> Result<u64, RelayError> {
    let Opts { output, cap, .. } = opts;
    let mut total = 0u64;
    let check_cap = |total: u64| match cap {
        Some(c) if total > c => Err(HttpError::BodyTooLarge(c)),
        _ => Ok(()),
    };
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            check_cap(n)?;
            relay_exact(src, dst, n, opts, scrub.as_deref_mut()).await?;
            total = n;
        }
        Framing::Close => loop {
            if src.buffered().is_empty() && fill(src, opts.read_timeout).await? == 0 {
                break;
            }
            let take = src.buffered().len();
            total += take as u64;
            check_cap(total)?;
            write_piece(src, dst, take, output, scrub.as_deref_mut()).await?;
        },
        Framing::Chunked => loop {
            let size = read_chunk_size(src, opts).await?;
            if size == 0 {
                skip_trailers(src, opts).await?;
                break;
            }
            total = total.saturating_add(size);
            check_cap(total)?;
            relay_exact(src, dst, size, opts, scrub.as_deref_mut()).await?;
            expect_crlf(src, opts).await?;
        },
    }
    if let Some(sc) = scrub {
        let rest = sc.finish();
        if !rest.is_empty() {
            write_bytes(dst, rest, output).await?;
        }
    }
    if output == Output::Chunked {
        dst.write_all(b"0\r\n\r\n".to_vec())
            .await
            .map_err(RelayError::Write)?;
    }
    dst.flush().await.map_err(RelayError::Write)?;
    Ok(total)
}

/// Relays exactly `n` bytes (a Content-Length body, or one chunk's data).
async fn relay_exact<R: AsyncReadRent, W: AsyncWriteRent>(
    src: &mut BufConn<R>,
    dst: &mut BufConn<W>,
    n: u64,
    opts: Opts,
    mut scrub: Option<&mut Scrubber<'_>>,
) -> Result<(), RelayError> {
    let mut left = n;
    while left > 0 {
        if src.buffered().is_empty() && fill(src, opts.read_timeout).await? == 0 {
            return Err(RelayError::Truncated);
        }
        let take = (src.buffered().len() as u64).min(left) as usize;
        write_piece(src, dst, take, opts.output, scrub.as_deref_mut()).await?;
        left -= take as u64;
    }
    Ok(())
}

async fn write_piece<R, W: AsyncWriteRent>(
    src: &mut BufConn<R>,
    dst: &mut BufConn<W>,
    n: usize,
    output: Output,
    scrub: Option<&mut Scrubber<'_>>,
) -> Result<(), RelayError> {
    match (output, scrub) {
        (_, Some(sc)) => {
            let emitted = sc.push(&src.buffered()[..n]);
            src.consume(n);
            if !emitted.is_empty() {
                write_bytes(dst, emitted, output).await?;
            }
            return Ok(());
        }
        (Output::Raw, None) => forward_buffered(src, dst, n)
            .await
            .map_err(RelayError::Write)?,
        (Output::Chunked, None) => {
            let piece = chunk(&src.buffered()[..n]);
            src.consume(n);
            dst.write_all(piece).await.map_err(RelayError::Write)?;
        }
    }
    dst.flush().await.map_err(RelayError::Write)
}

/// Writes owned bytes in the output framing and flushes.
async fn write_bytes<W: AsyncWriteRent>(
    dst: &mut BufConn<W>,
    bytes: Vec<u8>,
    output: Output,
) -> Result<(), RelayError> {
    let out = match output {
        Output::Raw => bytes,
        Output::Chunked => chunk(&bytes),
    };
    dst.write_all(out).await.map_err(RelayError::Write)?;
    dst.flush().await.map_err(RelayError::Write)
}

/// One chunk of the chunked coding.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut piece = Vec::with_capacity(data.len() + 12);
    piece.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    piece.extend_from_slice(data);
    piece.extend_from_slice(b"\r\n");
    piece
}

/// Reads until `src` buffers a CRLF-terminated line of at most `max` bytes; returns its length
/// including the CRLF.
async fn line<R: AsyncReadRent>(
    src: &mut BufConn<R>,
    max: usize,
    opts: Opts,
) -> Result<usize, RelayError> {
    loop {
        if let Some(p) = src.buffered().windows(2).position(|w| w == b"\r\n") {
            return Ok(p + 2);
        }
        if src.buffered().len() > max {
            return Err(HttpError::BadFraming("chunk-size line too long").into());
        }
        if fill(src, opts.read_timeout).await? == 0 {
            return Err(RelayError::Truncated);
        }
    }
}

/// Checks the start of a chunked body already in hand (row 82): every chunk-size line, chunk end
/// and CRLF in `b` must be right, so a request whose framing is already known to be bad is
/// refused before its head goes upstream. What is not in `b` yet is not judged; trailers are
/// not checked (they are dropped, row 15).
pub fn check_chunked_prefix(mut b: &[u8]) -> Result<(), HttpError> {
    loop {
        let Some(nl) = memchr::memchr(b'\n', b) else {
            return if b.len() > MAX_CHUNK_LINE {
                Err(HttpError::BadFraming("chunk-size line too long"))
            } else {
                Ok(())
            };
        };
        let size = parse_chunk_size(&b[..=nl])?;
        b = &b[nl + 1..];
        if size == 0 {
            return Ok(());
        }
        let Some(rest) = usize::try_from(size).ok().and_then(|n| b.get(n..)) else {
            return Ok(());
        };
        b = match rest {
            [b'\r', b'\n', after @ ..] => after,
            [] | [b'\r'] => return Ok(()),
            _ => return Err(HttpError::BadFraming("missing CRLF after chunk data")),
        };
    }
}

/// Parses `1*HEXDIG [ ";" ext ] CRLF`; at most 15 hex digits (no overflow, row 14).
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let bad = HttpError::BadFraming("invalid chunk size");
    let body = line.strip_suffix(b"\r\n").ok_or(bad)?;
    let digits = body.split(|&b| b == b';').next().unwrap_or_default();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad);
    }
    if body.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(bad);
    }
    let text = std::str::from_utf8(digits).map_err(|_| bad)?;
    u64::from_str_radix(text, 16).map_err(|_| bad)
}

async fn read_chunk_size<R: AsyncReadRent>(
    src: &mut BufConn<R>,
    opts: Opts,
) -> Result<u64, RelayError> {
    let n = line(src, MAX_CHUNK_LINE, opts).await?;
    let size = parse_chunk_size(&src.buffered()[..n])?;
    src.consume(n);
    Ok(size)
}

async fn expect_crlf<R: AsyncReadRent>(src: &mut BufConn<R>, opts: Opts) -> Result<(), RelayError> {
    while src.buffered().len() < 2 {
        if fill(src, opts.read_timeout).await? == 0 {
            return Err(RelayError::Truncated);
        }
    }
    if &src.buffered()[..2] != b"\r\n" {
        return Err(HttpError::BadFraming("missing CRLF after chunk data").into());
    }
    src.consume(2);
    Ok(())
}

/// Reads and drops the trailer section (row 15: trailers are never forwarded).
async fn skip_trailers<R: AsyncReadRent>(
    src: &mut BufConn<R>,
    opts: Opts,
) -> Result<(), RelayError> {
    let mut seen = 0;
    loop {
        let n = line(src, MAX_TRAILERS, opts).await?;
        src.consume(n);
        if n == 2 {
            return Ok(());
        }
        seen += n;
        if seen > MAX_TRAILERS {
            return Err(HttpError::BadFraming("trailer section too long").into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SECURITY-TESTS.md row 14 (B-06): sign, overflow and junk in chunk sizes.
    #[test]
    fn row82_chunked_prefix_checked() {
        for bad in [
            &b"ffffffffffffffffff\r\n"[..],
            b"-5\r\n",
            b"zz\r\n",
            b"5\r\nhelloXX",
            b"5\r\nhello\r\nnope\r\n",
            b"5\nhello\r\n",
        ] {
            assert!(
                check_chunked_prefix(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for fine in [
            &b""[..],
            b"5",
            b"5\r\nhel",
            b"5\r\nhello\r",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5;ext=1\r\nhello\r\n3\r\nab",
        ] {
            assert!(
                check_chunked_prefix(fine).is_ok(),
                "{:?}",
                String::from_utf8_lossy(fine)
            );
        }
    }

    #[test]
    fn row14_chunk_size_strict() {
        assert_eq!(parse_chunk_size(b"1a\r\n"), Ok(26));
        assert_eq!(parse_chunk_size(b"0\r\n"), Ok(0));
        assert_eq!(parse_chunk_size(b"A;name=val\r\n"), Ok(10));
        for bad in [
            &b"\r\n"[..],
            b"-1\r\n",
            b"+1\r\n",
            b"1 \r\n",
            b" 1\r\n",
            b"fffffffffffffffff\r\n",
            b"0x10\r\n",
            b"g\r\n",
            b"1",
        ] {
            assert!(parse_chunk_size(bad).is_err(), "{bad:?}");
        }
    }
}
