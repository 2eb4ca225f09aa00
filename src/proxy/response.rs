//! The response side of an exchange: reading the upstream's head (interim 1xx skipped, a 101
//! only for a WebSocket handshake, row 23), re-serialising it for the agent with airlock's own
//! framing and every secret of the vault masked (row 25, row 80: the reason phrase and header
//! names are upstream text too), relaying the body through the [`Scrubber`], returning a cleanly
//! framed upstream connection to the pool (R2), and relaying an upgraded connection.

use std::cell::Cell;
use std::io::Write as _;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split, Splitable};

use super::Limits;
use super::error::{ErrorKind, ProxyError};
use super::inject::Prepared;
use super::outcome::{ExchangeError, Outcome};
use super::upstream::{self, PoolKey, UpIo, Upstream};
use crate::http::body::{self, Output};
use crate::http::head::{self, Framing, MAX_HEAD, ResponseHead};
use crate::http::io::{BufConn, pipe};
use crate::http::ws;
use crate::requestlog::Row;
use crate::scrub::{Masker, Scrubber};

/// Bodies up to this size that arrived with their head are written together with it.
pub(super) const COALESCE_MAX: u64 = 16 * 1024;

/// The upstream's answer, once its final head is read.
#[derive(Debug)]
pub(super) enum Head {
    /// A final response: its head for the agent is ready.
    Final(Final),
    /// A 101 to a WebSocket handshake: the head for the agent; the connection becomes a relay.
    Upgrade(Vec<u8>),
    /// A 401 the caller asked not to relay (an OAuth token to renew); nothing was sent on.
    Unauthorized,
}

/// A final response head, re-serialised for the agent.
#[derive(Debug)]
pub(super) struct Final {
    pub(super) status: u16,
    framing: Framing,
    upstream_close: bool,
    client_close: bool,
    out: Vec<u8>,
}

/// Reading the response head failed; `nothing_arrived` when not one byte of a response came.
#[derive(Debug)]
pub(super) struct HeadError {
    pub(super) error: ProxyError,
    pub(super) nothing_arrived: bool,
}

fn protocol_error(m: &str) -> ProxyError {
    ProxyError::new(ErrorKind::UpstreamProtocolError, m.to_owned())
}

/// Reads heads from `conn` until the final one. With `retry_401`, a 401 is not relayed.
pub(super) async fn read_final(
    limits: &Limits,
    conn: &mut BufConn<UpIo>,
    prepared: &Prepared<'_>,
    retry_401: bool,
) -> Result<Head, HeadError> {
    let bad = |error| HeadError {
        error,
        nothing_arrived: false,
    };
    let mut first = true;
    loop {
        let n = read_head(limits.response_timeout, conn)
            .await
            .map_err(|error| HeadError {
                error,
                nothing_arrived: first && conn.buffered().is_empty(),
            })?;
        first = false;
        let resp = head::parse_response(&conn.buffered()[..n])
            .map_err(|e| bad(protocol_error(&e.to_string())))?;
        let (method, scrub) = (prepared.method.as_str(), prepared.scrub);
        let head = match resp.status {
            101 if prepared.websocket && one_value(&resp.headers, "upgrade", b"websocket") => {
                let mut out = response_head(&resp, method, Framing::Empty, scrub);
                out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n");
                Head::Upgrade(out)
            }
            101 => {
                let m = "the upstream switched protocols without an upgrade request";
                return Err(bad(protocol_error(m)));
            }
            100..200 => {
                conn.consume(n);
                continue;
            }
            401 if retry_401 => return Ok(Head::Unauthorized), // the connection closes unread
            status => {
                let framing = head::response_framing(method, &resp)
                    .map_err(|e| bad(protocol_error(&e.to_string())))?;
                let mut out = response_head(&resp, method, framing, scrub);
                if prepared.client_close {
                    out.extend_from_slice(b"connection: close\r\n");
                }
                out.extend_from_slice(b"\r\n");
                Head::Final(Final {
                    status,
                    framing,
                    upstream_close: head::wants_close(resp.version, &resp.headers),
                    client_close: prepared.client_close,
                    out,
                })
            }
        };
        conn.consume(n);
        return Ok(head);
    }
}

/// Sends the final head and body to the agent, masked, and pools the upstream connection when
/// the exchange was cleanly framed.
pub(super) async fn relay<C: AsyncReadRent + AsyncWriteRent>(
    limits: &Limits,
    client: &mut BufConn<C>,
    mut up: Upstream,
    key: &PoolKey,
    f: Final,
    scrub: &Masker,
    row: &mut Row,
) -> Result<Outcome, ExchangeError> {
    let mut out = f.out;
    let small = match f.framing {
        Framing::Length(n) if n <= COALESCE_MAX && n as usize <= up.conn.buffered().len() => {
            Some(n as usize)
        }
        _ => None,
    };
    let abort = |_| ExchangeError::Abort;
    if let Some(n) = small {
        // A small body already read with the head goes out with it: one write, one TLS record.
        let start = out.len();
        out.extend_from_slice(&up.conn.buffered()[..n]);
        scrub.mask(&mut out[start..]);
        up.conn.consume(n);
        client.write_all(out).await.map_err(abort)?;
        client.flush().await.map_err(abort)?;
        row.bytes = n as u64;
    } else {
        client.write_all(out).await.map_err(abort)?;
        let mut scrubber = Scrubber::new(scrub);
        let scrubber = scrubber.is_active().then_some(&mut scrubber);
        let opts = body::Opts {
            output: body::output_for(f.framing),
            cap: None,
            read_timeout: limits.response_timeout,
        };
        row.bytes = body::relay(&mut up.conn, client, f.framing, opts, scrubber)
            .await
            .map_err(|_| ExchangeError::Abort)?;
    }
    if f.framing != Framing::Close && !f.upstream_close {
        upstream::put(key, up, limits.pool_idle);
    }
    Ok(Outcome::after(f.client_close))
}

/// Whether `name` appears and its value is `value` (case-insensitive).
fn one_value(headers: &[httparse::Header<'_>], name: &str, value: &[u8]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(name) && h.value.trim_ascii().eq_ignore_ascii_case(value)
    })
}

/// Waits for a complete response head; returns its length.
async fn read_head(timeout: Duration, conn: &mut BufConn<UpIo>) -> Result<usize, ProxyError> {
    loop {
        if let Some(n) = head::find_end(conn.buffered()) {
            return Ok(n);
        }
        if conn.buffered().len() > MAX_HEAD {
            return Err(protocol_error("the upstream response head is too large"));
        }
        match monoio::time::timeout(timeout, conn.fill()).await {
            Err(_) => {
                let m = "the upstream did not answer in time";
                return Err(ProxyError::new(ErrorKind::UpstreamTimeout, m));
            }
            Ok(Ok(0)) => return Err(protocol_error("the upstream closed before answering")),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let m = format!("reading the response: {e}");
                return Err(ProxyError::new(ErrorKind::UpstreamUnreachable, m));
            }
        }
    }
}

/// The status line and end-to-end headers of `resp` for the agent, with the proxy's own
/// framing, masked; the caller adds its own headers and the blank line.
fn response_head(
    resp: &ResponseHead<'_>,
    method: &str,
    framing: Framing,
    scrub: &Masker,
) -> Vec<u8> {
    let connection: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .collect();
    let mut out = Vec::with_capacity(512);
    // Writing to a `Vec` cannot fail (and leaves no `String` behind to free).
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    scrub.mask(&mut out);
    let keep_length = method == "HEAD" || resp.status == 304;
    for h in &resp.headers {
        let is_length = h.name.eq_ignore_ascii_case("content-length");
        if (is_length && keep_length)
            || (!head::is_hop_by_hop(h.name, &connection) && !h.name.contains('_'))
        {
            let start = out.len();
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            scrub.mask(&mut out[start..]);
            out.extend_from_slice(b"\r\n");
        }
    }
    match (framing, body::output_for(framing)) {
        (Framing::Length(n), _) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        (Framing::Empty, _)
            if !keep_length && resp.status != 204 && !(100..200).contains(&resp.status) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        (_, Output::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out
}

/// Relays an upgraded (WebSocket) connection: what the agent sends goes up as it is; frames
/// from upstream come down with `secrets` masked ([`ws::relay_scrubbed`]).
pub(super) async fn upgraded<C: Split + AsyncReadRent + AsyncWriteRent>(
    client: BufConn<C>,
    up: BufConn<UpIo>,
    secrets: &Masker,
) {
    let (io, early) = up.into_parts();
    match io {
        UpIo::Tls(tls) => relay_upgraded(client, *tls, early, secrets).await,
        UpIo::Plain(tcp) => relay_upgraded(client, tcp, early, secrets).await,
    }
}

async fn relay_upgraded<C, U>(client: BufConn<C>, up: U, early: Vec<u8>, secrets: &Masker)
where
    C: Split + AsyncReadRent + AsyncWriteRent,
    U: Split + AsyncReadRent + AsyncWriteRent,
{
    if secrets.is_empty() {
        return pipe(client, BufConn::with_buffered(up, early), &Cell::new(0)).await;
    }
    let (c_io, c_early) = client.into_parts();
    let (mut c_read, mut c_write) = c_io.into_split();
    let (u_read, mut u_write) = up.into_split();
    if !c_early.is_empty() && u_write.write_all(c_early).await.0.is_err() {
        return;
    }
    monoio::select! {
        _ = monoio::io::copy(&mut c_read, &mut u_write) => {},
        _ = ws::relay_scrubbed(u_read, &mut c_write, early, secrets) => {},
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::proxy::inject::tests::{KEY, prepared_for, vault};

    /// What `read_final` makes of `reply` (sent by the upstream, which then closes) for a GET on
    /// a credentialed service: the head for the agent, or the error's code and whether no byte
    /// of a response had arrived.
    fn final_head(
        reply: &'static [u8],
        retry_401: bool,
    ) -> Result<(u16, String), (&'static str, bool)> {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = upstream.local_addr().unwrap();
        let serve = std::thread::spawn(move || {
            let (mut c, _) = upstream.accept().unwrap();
            c.write_all(reply).unwrap();
        });
        let vault = vault();
        let get = "GET /v1 HTTP/1.1\r\nHost: {}\r\n\r\n";
        let prepared = prepared_for(&vault, get, "api.example.com");
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let tcp = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
            let (tcp, _probe) = upstream::ProbeTcp::new(tcp);
            let mut conn = BufConn::new(UpIo::Plain(tcp));
            read_final(&Limits::default(), &mut conn, &prepared, retry_401).await
        });
        serve.join().unwrap();
        match got {
            Ok(Head::Final(f)) => Ok((f.status, String::from_utf8(f.out).unwrap())),
            Ok(Head::Upgrade(_)) => Err(("upgrade", false)),
            Ok(Head::Unauthorized) => Err(("unauthorized", false)),
            Err(e) => Err((e.error.code(), e.nothing_arrived)),
        }
    }

    /// Interim 1xx heads are skipped; the final head is rebuilt with airlock's framing, the
    /// upstream's hop-by-hop headers dropped, and the vault's secrets masked in the reason phrase,
    /// header names and values (rows 25, 80).
    #[test]
    fn the_final_head_is_rebuilt_and_masked() {
        let reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Bearer sk-injected-0123\r\n\
Content-Length: 2\r\nKeep-Alive: timeout=5\r\nX-Echo: Bearer sk-injected-0123\r\n\r\nok";
        let (status, head) = final_head(reply, false).unwrap();
        assert_eq!(status, 200);
        assert!(!head.contains(KEY), "{head}");
        assert_eq!(head.matches(&"*".repeat(KEY.len())).count(), 2, "{head}");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 2"),
            "{head}"
        );
        assert!(!head.to_ascii_lowercase().contains("keep-alive"), "{head}");
    }

    /// Row 23: a 101 answers only a WebSocket handshake; a 401 is held back when the caller
    /// renews an OAuth token; an upstream that closes before a byte says so (the request may go
    /// again on a fresh connection), one that sends garbage does not.
    #[test]
    fn unexpected_heads_are_refused_and_401_held_for_renewal() {
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n";
        assert_eq!(
            final_head(switched, false),
            Err(("upstream_protocol_error", false))
        );
        let unauthorized = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(final_head(unauthorized, true), Err(("unauthorized", false)));
        assert_eq!(final_head(unauthorized, false).map(|(s, _)| s), Ok(401));
        let closed = final_head(b"", false).unwrap_err();
        assert!(closed.1, "nothing arrived: {closed:?}");
        let garbage = final_head(b"SSH-2.0-OpenSSH\r\n\r\n", false).unwrap_err();
        assert_eq!(garbage, ("upstream_protocol_error", false));
    }
}
