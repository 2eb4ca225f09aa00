//! [`Peer`]: the agent's end of one client connection, its address and whether it is still
//! there. A request that waits long (one an operator is asked about, [`super::hold`]) asks
//! [`Peer::gone`] while it waits, so that an approval never sends a request whose agent has
//! already hung up.
//!
//! The question is answered without reading: the connection's bytes belong to its TLS layer and
//! request loop, and a read abandoned halfway would lose them. A `poll` that does not wait
//! reports the peer's close (`POLLRDHUP`, `POLLHUP`) or a failed connection (`POLLERR`);
//! bytes waiting to be read (a pipelined request) are not a close. A client that shuts down only
//! its sending side after a request (allowed, but no agent's HTTP/1.1 client does it) counts as
//! gone.
//!
//! It uses `unsafe` once, with its SAFETY note: to borrow the socket's fd for that poll. A
//! [`Peer`] is made from the connection's `TcpStream` by the task that owns the stream, lent
//! down that task's calls and never stored elsewhere, so the fd is open whenever it is polled.

#![allow(unsafe_code)]

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use monoio::net::TcpStream;
use rustix::event::{PollFd, PollFlags, Timespec};

/// A client connection's far end. Deliberately neither `Copy` nor `Clone`: it is lent by
/// reference from the task owning the stream it was made from.
#[derive(Debug)]
pub(super) struct Peer {
    /// The agent's address (`client_networks`, the failed-auth limiter).
    pub(super) addr: IpAddr,
    fd: RawFd,
}

impl Peer {
    /// The peer of `tcp`; the unspecified address when the socket cannot say.
    pub(super) fn of(tcp: &TcpStream) -> Self {
        Self {
            addr: tcp
                .peer_addr()
                .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip()),
            fd: tcp.as_raw_fd(),
        }
    }

    /// Whether the agent closed its side of the connection or the connection failed. Does not
    /// wait and reads nothing.
    pub(super) fn gone(&self) -> bool {
        // SAFETY: `self.fd` is the fd of the `TcpStream` this Peer was made from. The task that
        // owns that stream made the Peer and only lends it to the calls it awaits, so the
        // stream, and with it the fd, is open for the whole of this call; the BorrowedFd does
        // not outlive it.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let mut fds = [PollFd::new(&fd, PollFlags::RDHUP)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&now)) {
            Ok(0) => false,
            Ok(_) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A connected peer is not gone, also with bytes waiting unread; after it closes, or resets
    /// the connection, it is.
    #[test]
    fn gone_sees_a_close_and_a_reset_but_not_waiting_bytes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async move {
            for reset in [false, true] {
                let client = std::net::TcpStream::connect(addr).unwrap();
                let (server, _) = listener.accept().unwrap();
                let server = TcpStream::from_std(server).unwrap();
                let peer = Peer::of(&server);
                assert_eq!(peer.addr, IpAddr::from([127, 0, 0, 1]));
                assert!(!peer.gone(), "a connected peer");
                (&client).write_all(b"GET / HTTP/1.1\r\n").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
                assert!(!peer.gone(), "bytes waiting are not a close");
                if reset {
                    // Linger 0: close sends a reset instead of a FIN.
                    socket2::SockRef::from(&client)
                        .set_linger(Some(std::time::Duration::ZERO))
                        .unwrap();
                }
                drop(client);
                std::thread::sleep(std::time::Duration::from_millis(20));
                assert!(peer.gone(), "closed (reset: {reset})");
                drop(server);
            }
        });
    }
}
