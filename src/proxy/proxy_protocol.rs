//! PROXY protocol v2 on the proxy port, for airlock behind a TCP balancer (HAProxy's
//! `send-proxy-v2`): a connection from a balancer named in `proxy_protocol_from` starts with a
//! binary header naming the agent's address, and that address is the one `client_networks`,
//! the failed-authentication limiter and the request log see. The header is read before
//! anything else, TLS on a TLS proxy port included, with exact reads, so no byte after it is
//! consumed here.
//!
//! Trust goes by the connection's own address only: a header is read from the balancers listed
//! and from nobody else (anyone could write one), and a listed balancer's connection without a
//! valid header is refused, never served under the balancer's address. A `LOCAL` header (the
//! balancer's own health check) keeps the balancer's address. Parsing is the `ppp` crate's.

use std::net::IpAddr;
use std::time::Duration;

use monoio::io::AsyncReadRentExt;
use monoio::net::TcpStream;
use ppp::v2::{Addresses, Command, Header};

/// The fixed part: the 12-byte signature, version and command, family and protocol, length.
const FIXED: usize = 16;
/// The v2 signature (the protocol's specification, section 2.2).
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest header read (addresses and TLVs); HAProxy sends far less.
const MAX_HEADER: usize = 1024;

/// Why a balancer's connection was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before its PROXY header ended")]
    Closed,
    #[error("a PROXY header of {0} bytes is longer than {MAX_HEADER}")]
    TooLong(usize),
    #[error("not a PROXY protocol v2 header: {0}")]
    Invalid(String),
}

/// Reads the PROXY header that starts `tcp`, within `wait`: the agent's address, or `None` for
/// a `LOCAL` header or one naming no internet address (keep the connection's own).
pub(super) async fn read_source(
    tcp: &mut TcpStream,
    wait: Duration,
) -> Result<Option<IpAddr>, HeaderError> {
    let read = async {
        let (got, fixed) = tcp.read_exact(vec![0u8; FIXED]).await;
        got.map_err(|_| HeaderError::Closed)?;
        let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        // The signature is checked before anything more is read.
        if fixed[..SIGNATURE.len()] != SIGNATURE {
            return Err(HeaderError::Invalid("no v2 signature".to_owned()));
        }
        if FIXED + length > MAX_HEADER {
            return Err(HeaderError::TooLong(FIXED + length));
        }
        let (got, rest) = tcp.read_exact(vec![0u8; length]).await;
        got.map_err(|_| HeaderError::Closed)?;
        Ok([fixed, rest].concat())
    };
    let whole = monoio::time::timeout(wait, read)
        .await
        .map_err(|_| HeaderError::Timeout(wait))??;
    source_of(&whole)
}

/// The agent's address in a whole header (see [`read_source`]).
pub fn source_of(header: &[u8]) -> Result<Option<IpAddr>, HeaderError> {
    let h = Header::try_from(header).map_err(|e| HeaderError::Invalid(e.to_string()))?;
    if h.command == Command::Local {
        return Ok(None);
    }
    Ok(match h.addresses {
        Addresses::IPv4(a) => Some(IpAddr::V4(a.source_address)),
        Addresses::IPv6(a) => Some(IpAddr::V6(a.source_address)),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::SocketAddr;

    use monoio::io::AsyncReadRent;
    use ppp::v2::{Builder, Protocol, Version};

    use super::*;

    fn header(command: Command, from: &str, to: &str) -> Vec<u8> {
        let from: SocketAddr = from.parse().unwrap();
        let to: SocketAddr = to.parse().unwrap();
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (from, to))
            .build()
            .unwrap()
    }

    /// What `read_source` makes of `sent` (then what follows it, unread), within 300 ms.
    fn read(sent: Vec<u8>) -> (Result<Option<IpAddr>, HeaderError>, Vec<u8>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(&sent).unwrap();
            // Open well past the reader's wait, so a timeout is a timeout, not the close.
            std::thread::sleep(Duration::from_millis(900));
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let got = rt.block_on(async {
            let mut tcp = TcpStream::from_std(accepted).unwrap();
            let source = read_source(&mut tcp, Duration::from_millis(300)).await;
            let (n, mut after) = tcp.read(vec![0u8; 64]).await;
            after.truncate(n.unwrap_or(0));
            (source, after)
        });
        client.join().unwrap();
        got
    }

    /// The agent's address from PROXY (IPv4 and IPv6), none from LOCAL; the bytes after the
    /// header are left for the request loop (or TLS).
    #[test]
    fn headers_name_the_agent_and_leave_what_follows() {
        let mut sent = header(Command::Proxy, "192.0.2.7:40000", "10.0.0.1:8080");
        sent.extend_from_slice(b"CONNECT");
        let (source, after) = read(sent);
        assert_eq!(source, Ok(Some("192.0.2.7".parse().unwrap())));
        assert_eq!(after, b"CONNECT");
        let six = header(Command::Proxy, "[2001:db8::7]:40000", "[2001:db8::1]:8080");
        assert_eq!(read(six).0, Ok(Some("2001:db8::7".parse().unwrap())));
        let local = header(Command::Local, "10.0.0.2:1", "10.0.0.1:8080");
        assert_eq!(read(local).0, Ok(None));
    }

    /// A balancer that sends a request instead, a header that never ends, one claiming a huge
    /// length or the v1 text form: each is refused.
    #[test]
    fn anything_but_a_whole_v2_header_is_refused() {
        let request = b"CONNECT api.example.com:443 HTTP/1.1\r\n\r\n".to_vec();
        assert!(matches!(read(request).0, Err(HeaderError::Invalid(_))));
        let mut short = header(Command::Proxy, "192.0.2.7:1", "10.0.0.1:2");
        short.truncate(20);
        assert_eq!(
            read(short).0,
            Err(HeaderError::Timeout(Duration::from_millis(300)))
        );
        let mut huge = header(Command::Proxy, "192.0.2.7:1", "10.0.0.1:2");
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            read(huge).0,
            Err(HeaderError::TooLong(FIXED + usize::from(u16::MAX)))
        );
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\n".to_vec();
        assert!(matches!(read(v1).0, Err(HeaderError::Invalid(_))));
    }
}
