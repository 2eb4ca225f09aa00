//! [`BufConn`]: a connection with a read buffer, over monoio's owned-buffer traits.
//!
//! Reads append to one growable buffer (monoio reads fill from the slice start, so reads go into
//! `slice_mut(len..)`); parsers borrow [`BufConn::buffered`] and [`BufConn::consume`] what they
//! used. Forwarding buffered bytes moves a slice of the buffer to the writer without copying.

use std::cell::Cell;
use std::io;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split, Splitable};

const READ_CHUNK: usize = 16 * 1024;

/// A stream plus the bytes read from it and not yet consumed.
#[derive(Debug)]
pub struct BufConn<S> {
    pub io: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S> BufConn<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// A connection whose first bytes were already read elsewhere.
    pub fn with_buffered(io: S, bytes: Vec<u8>) -> Self {
        Self {
            io,
            buf: bytes,
            pos: 0,
        }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    pub fn into_parts(self) -> (S, Vec<u8>) {
        let Self { io, mut buf, pos } = self;
        buf.drain(..pos);
        (io, buf)
    }
}

impl<S: AsyncReadRent> BufConn<S> {
    /// Reads more bytes onto the buffer; `Ok(0)` at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = self.io.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        res
    }
}

impl<S: AsyncWriteRent> BufConn<S> {
    pub async fn write_all<T: IoBuf + 'static>(&mut self, data: T) -> io::Result<()> {
        let (res, _) = self.io.write_all(data).await;
        res.map(|_| ())
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.io.flush().await
    }
}

/// Moves `n` buffered bytes of `src` to `dst` without copying them.
pub async fn forward_buffered<R, W: AsyncWriteRent>(
    src: &mut BufConn<R>,
    dst: &mut BufConn<W>,
    n: usize,
) -> io::Result<()> {
    let n = n.min(src.buffered().len());
    if n == 0 {
        return Ok(());
    }
    let buf = std::mem::take(&mut src.buf);
    let (res, slice) = dst.io.write_all(buf.slice(src.pos..src.pos + n)).await;
    src.buf = slice.into_inner();
    res?;
    src.consume(n);
    Ok(())
}

/// Pipes bytes both ways until either side closes (upgraded connections, opaque tunnels).
/// Buffered bytes are delivered first; `to_a` counts the bytes delivered to `a` (kept in the
/// caller's cell, so the count survives the pipe being dropped half way).
pub async fn pipe<A, B>(a: BufConn<A>, b: BufConn<B>, to_a: &Cell<u64>)
where
    A: Split + AsyncReadRent + AsyncWriteRent,
    B: Split + AsyncReadRent + AsyncWriteRent,
{
    let (a_io, a_early) = a.into_parts();
    let (b_io, b_early) = b.into_parts();
    let (mut ar, mut aw) = a_io.into_split();
    let (mut br, mut bw) = b_io.into_split();
    if !a_early.is_empty() && bw.write_all(a_early).await.0.is_err() {
        return;
    }
    if !b_early.is_empty() {
        let (res, early) = aw.write_all(b_early).await;
        if res.is_err() {
            return;
        }
        to_a.set(early.len() as u64);
    }
    monoio::select! {
        _ = monoio::io::copy(&mut ar, &mut bw) => {},
        _ = copy_counting(&mut br, &mut aw, to_a) => {},
    }
}

/// Copies from `r` to `w` until `r` closes or either fails, adding what it wrote to `count`.
async fn copy_counting<R: AsyncReadRent, W: AsyncWriteRent>(
    r: &mut R,
    w: &mut W,
    count: &Cell<u64>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let (res, read) = r.read(buf).await;
        buf = read;
        if res? == 0 {
            return Ok(());
        }
        let (res, written) = w.write_all(buf).await;
        buf = written;
        res?;
        count.set(count.get() + buf.len() as u64);
        buf.clear();
    }
}
