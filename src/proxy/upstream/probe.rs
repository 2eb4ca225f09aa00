//! [`ProbeTcp`]: the upstream TCP stream, able to say without waiting whether anything arrived
//! while it sat idle in the pool (row 65: an unsolicited response, or the upstream's
//! close, must never meet the next request).
//!
//! In probe mode a read does not wait: it peeks the socket (`MSG_PEEK | MSG_DONTWAIT`) and answers
//! `WouldBlock` when nothing is there, EOF when the peer closed, and an error when bytes are
//! waiting. Because the probe reads through the whole stack (TLS included), bytes that rustls or
//! its read buffer already hold are seen too: such a read completes with data before the socket
//! is reached. This module owns only that check; the pool decides what to do with the answer.
//!
//! It uses `unsafe` twice, each with its SAFETY note: to borrow the socket's fd for the peek
//! (monoio's stream exposes only `AsRawFd`), and to declare the wrapper [`Split`] like the
//! stream it wraps (needed to pipe an upgraded WebSocket connection).

#![allow(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;

/// A TCP stream whose reads can be switched to a non-waiting probe.
#[derive(Debug)]
pub struct ProbeTcp {
    tcp: TcpStream,
    probing: Rc<Cell<bool>>,
}

/// Switches a [`ProbeTcp`]'s reads to probing, from outside the layers (TLS) wrapped around it.
#[derive(Clone, Debug)]
pub struct ProbeSwitch(Rc<Cell<bool>>);

impl ProbeTcp {
    pub fn new(tcp: TcpStream) -> (Self, ProbeSwitch) {
        let probing = Rc::new(Cell::new(false));
        (
            Self {
                tcp,
                probing: probing.clone(),
            },
            ProbeSwitch(probing),
        )
    }

    pub fn into_inner(self) -> TcpStream {
        self.tcp
    }

    /// What a read in probe mode answers.
    fn peek(&self) -> io::Result<usize> {
        // SAFETY: the fd belongs to `self.tcp`, which is borrowed for this whole call and closes
        // the fd only when dropped; the BorrowedFd does not outlive this function.
        let fd = unsafe { BorrowedFd::borrow_raw(self.tcp.as_raw_fd()) };
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        match rustix::net::recv(fd, &mut [0u8; 1], flags) {
            Ok((0, _)) => Ok(0),
            Ok(_) => Err(io::Error::other("bytes arrived on an idle connection")),
            Err(e) if e == rustix::io::Errno::AGAIN => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e.into()),
        }
    }
}

impl ProbeSwitch {
    /// Runs `check` with the stream's reads in probe mode.
    pub async fn with<F: Future>(&self, check: F) -> F::Output {
        self.0.set(true);
        let out = check.await;
        self.0.set(false);
        out
    }
}

impl AsyncReadRent for ProbeTcp {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        if self.probing.get() {
            return (self.peek(), buf);
        }
        self.tcp.read(buf).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        if self.probing.get() {
            return (self.peek(), buf);
        }
        self.tcp.readv(buf).await
    }
}

impl AsyncWriteRent for ProbeTcp {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        self.tcp.write(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        self.tcp.writev(buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.tcp.shutdown().await
    }
}

// SAFETY: `Split` promises that the read half and the write half may be used at once. Reads and
// writes go to the wrapped `TcpStream`, which is `Split` itself; the only other state, the
// probe flag, is a `Cell` read by reads alone, on the one thread that owns the stream.
unsafe impl Split for ProbeTcp {}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::http::io::BufConn;

    /// An idle stream probes clean and then reads normally; bytes or a close that arrived while
    /// idle are seen by the probe, and the probe consumes nothing.
    #[test]
    fn probe_sees_bytes_and_close_and_consumes_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tcp = TcpStream::connect_addr(addr).await.unwrap();
            let (mut server, _) = listener.accept().unwrap();
            let (io, switch) = ProbeTcp::new(tcp);
            let mut conn = BufConn::new(io);
            let probe = |r: io::Result<usize>| match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => "idle",
                Ok(0) => "closed",
                _ => "bytes",
            };
            assert_eq!(probe(switch.with(conn.fill()).await), "idle");
            server.write_all(b"late").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(probe(switch.with(conn.fill()).await), "bytes");
            assert_eq!(conn.buffered(), b"", "the probe consumed nothing");
            assert_eq!(conn.fill().await.unwrap(), 4);
            assert_eq!(conn.buffered(), b"late");
            drop(server);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(probe(switch.with(conn.fill()).await), "closed");
        });
    }
}
