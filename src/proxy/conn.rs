//! One client connection from accept to close.
//!
//! The first head decides: `CONNECT` (authenticate, then intercept, tunnel or deny before any
//! TLS), absolute-form `http://` (plain proxying, authenticated per request), or origin-form (the
//! agent API). Inside an intercepted tunnel every request is re-authorised (row 52) and matched on
//! its own (row 17). Errors are answered with a stable code and the connection is closed after
//! any parse error.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, PrefixedReadIo, Split, Splitable,
};
use monoio::net::TcpStream;
use monoio_rustls::TlsAcceptor;

use super::auth::{self, Identity};
use super::error::{ErrorKind, ProxyError, no_service};
use super::forward::{self, ExchangeError, Outcome};
use super::upstream::{self, Target, UpIo};
use super::{Shared, agent_api};
use crate::http::head::{self, MAX_HEAD};
use crate::http::io::{BufConn, pipe};
use crate::http::ws;
use crate::requestlog::Row;
use crate::scrub::Masker;
use crate::spec::Scheme;
use crate::vault::UnmatchedPolicy;

/// Admits an accepted connection under the connection cap (row 37): over it, the new connection
/// gets 503 `overloaded` and open ones are unaffected.
pub async fn accepted(shared: Arc<Shared>, tcp: TcpStream) {
    let open = shared
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if open >= shared.limits().max_connections {
        let mut conn = BufConn::new(tcp);
        let e = ProxyError::new(ErrorKind::Overloaded, "too many connections; retry shortly");
        reply_and_close(&mut conn, &e).await;
    } else {
        serve(shared.clone(), tcp).await;
    }
    shared
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

/// Serves one accepted TCP connection: refused at once when `client_networks` does not hold its
/// address; through TLS first when the proxy port speaks TLS (`proxy_tls_names` or
/// `proxy_tls_cert`), so a token sent to it never crosses a network in clear text.
pub async fn serve(shared: Arc<Shared>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let peer = tcp
        .peer_addr()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    if !shared.client_networks.is_empty()
        && !shared.client_networks.iter().any(|n| n.contains(peer))
    {
        return;
    }
    let Some(tls) = shared.proxy_tls.clone() else {
        return serve_io(shared, tcp, peer).await;
    };
    let accepted = monoio::time::timeout(
        shared.limits().header_timeout,
        TlsAcceptor::from(tls).accept(tcp),
    )
    .await;
    if let Ok(Ok(io)) = accepted {
        serve_io(shared, io, peer).await;
    }
}

/// The requests of one client connection, plain or TLS.
async fn serve_io<S: Split + AsyncReadRent + AsyncWriteRent + 'static>(
    shared: Arc<Shared>,
    io: S,
    peer: std::net::IpAddr,
) {
    let mut client = BufConn::new(io);
    loop {
        let n = match read_head(&shared, &mut client, shared.limits().idle_timeout).await {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => return reply_and_close(&mut client, &e).await,
        };
        if shared.shutting_down() {
            return;
        }
        let (method, target) = match head::parse_request(&client.buffered()[..n]) {
            Ok(req) => (req.method.to_owned(), req.target.to_owned()),
            Err(e) => return reply_and_close(&mut client, &e.into()).await,
        };
        if method == "CONNECT" {
            return connect(shared, client, n, &target, peer).await;
        }
        let in_flight = super::InFlight::new(&shared);
        let result = if target.starts_with("http://") || target.starts_with("https://") {
            plain(&shared, &mut client, n, &target, peer).await
        } else {
            agent_api::handle(&shared, &mut client, n, peer).await
        };
        drop(in_flight);
        match result {
            Ok(Outcome::KeepAlive) => continue,
            Ok(Outcome::Upgraded(up, secrets)) => return upgraded(client, up, &secrets).await,
            Ok(Outcome::Close) | Err(ExchangeError::Abort) => return,
            Err(ExchangeError::Respond(e)) => return reply_and_close(&mut client, &e).await,
        }
    }
}

/// Waits for a complete head: `Ok(None)` on a clean close or a timeout (slowloris, row 35).
pub async fn read_head<S: AsyncReadRent>(
    shared: &Shared,
    conn: &mut BufConn<S>,
    idle: Duration,
) -> Result<Option<usize>, ProxyError> {
    let started = std::time::Instant::now();
    loop {
        if let Some(n) = head::find_end(conn.buffered()) {
            if n > MAX_HEAD {
                return Err(crate::http::HttpError::HeadersTooLarge(MAX_HEAD).into());
            }
            return Ok(Some(n));
        }
        if conn.buffered().len() > MAX_HEAD {
            return Err(crate::http::HttpError::HeadersTooLarge(MAX_HEAD).into());
        }
        let limit = if conn.buffered().is_empty() {
            idle
        } else {
            shared.limits().header_timeout
        };
        let left = limit.saturating_sub(started.elapsed());
        match monoio::time::timeout(left, conn.fill()).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok(None),
            Ok(Ok(_)) => {}
        }
    }
}

/// Answers with an error and closes. The close lingers: what the client is still sending is
/// read and dropped for a moment, because closing with unread data makes the kernel send a
/// reset that can destroy the response before the client reads it (a 431 to a client still
/// writing its oversized head, say).
async fn reply_and_close<S: AsyncReadRent + AsyncWriteRent>(conn: &mut BufConn<S>, e: &ProxyError) {
    const LINGER: Duration = Duration::from_millis(500);
    const DRAIN: usize = 1024 * 1024;
    let _ = conn.write_all(e.response(true)).await;
    let _ = conn.flush().await;
    let _ = conn.io.shutdown().await;
    let until = std::time::Instant::now() + LINGER;
    let mut drained = conn.buffered().len();
    conn.consume(drained);
    while drained < DRAIN {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match monoio::time::timeout(left, conn.fill()).await {
            Ok(Ok(n)) if n > 0 => {
                drained += n;
                let all = conn.buffered().len();
                conn.consume(all);
            }
            _ => return,
        }
    }
}

/// Parses a CONNECT authority strictly: `host:port`, a DNS name or IP literal, port 1-65535
/// without sign (row 5). Returns the lowercase host without a trailing dot.
pub fn parse_authority(authority: &str) -> Result<(String, u16), ProxyError> {
    let bad = |m: &str| ProxyError::new(ErrorKind::BadAuthority, m.to_owned());
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("the CONNECT target must be host:port"))?;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the port must be 1-65535"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| bad("the port must be 1-65535"))?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad("invalid IPv6 literal"))?;
        return Ok((ip.to_string(), port));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok((host, port));
    }
    crate::spec::host::check_dns_name(&host).map_err(|e| bad(&e))?;
    Ok((host, port))
}

async fn connect<S: Split + AsyncReadRent + AsyncWriteRent + 'static>(
    shared: Arc<Shared>,
    mut client: BufConn<S>,
    n: usize,
    target: &str,
    peer: std::net::IpAddr,
) {
    let auth_header = match head::parse_request(&client.buffered()[..n])
        .and_then(|r| r.one("proxy-authorization"))
    {
        Ok(h) => h.map(<[u8]>::to_vec),
        Err(e) => return reply_and_close(&mut client, &e.into()).await,
    };
    client.consume(n);
    // Row 5: a bad authority is refused before any lookup.
    let (host, port) = match parse_authority(target) {
        Ok(a) => a,
        Err(e) => return reply_and_close(&mut client, &e).await,
    };
    let id = match auth::authenticate_first(&shared, auth_header.as_deref(), None).await {
        Ok(id) => id,
        Err(e) => return reply_and_close(&mut client, &shared.auth_failures.refuse(peer, e)).await,
    };
    let policy = shared.policy();
    let Some(vault) = policy.vault(&id.vault) else {
        return reply_and_close(
            &mut client,
            &ProxyError::new(ErrorKind::VaultMismatch, "the vault no longer exists"),
        )
        .await;
    };
    let target = Target {
        scheme: Scheme::Https,
        host,
        port,
    };
    if vault.has_host(Scheme::Https, &target.host, port) {
        drop(policy);
        return intercept(shared, client, target, id).await;
    }
    match vault.unmatched {
        // Row 28: denied at CONNECT, before any TLS or DNS.
        UnmatchedPolicy::Deny => {
            let refused = no_service(&target.host, port, &shared.api_base);
            let refused = refuse_unmatched(&shared, &id, &target.host, "CONNECT", refused);
            reply_and_close(&mut client, &refused).await
        }
        UnmatchedPolicy::Tunnel => {
            drop(policy);
            tunnel(shared, client, target, id).await;
        }
    }
}

async fn intercept<S: Split + AsyncReadRent + AsyncWriteRent + 'static>(
    shared: Arc<Shared>,
    mut client: BufConn<S>,
    target: Target,
    id: Identity,
) {
    if !shared.certs.contains(&target.host) && !shared.mint_limiter.try_take(&id.vault) {
        let e = ProxyError::new(ErrorKind::RateLimited, "too many new hosts; retry shortly");
        return reply_and_close(&mut client, &e).await;
    }
    let mints = shared.certs.mints();
    let config = match shared.certs.server_config(&target.host) {
        Ok(c) => {
            if shared.certs.mints() != mints {
                tracing::info!(host = %target.host, "minted a leaf on demand");
            }
            c
        }
        Err(e) => {
            tracing::warn!(host = %target.host, "leaf minting failed: {e}");
            return reply_and_close(
                &mut client,
                &ProxyError::new(ErrorKind::Overloaded, "no certificate for this host"),
            )
            .await;
        }
    };
    if !established(&mut client).await {
        return;
    }
    let _open = shared.counters.tunnel();
    let (tcp, early) = client.into_parts();
    let io = PrefixedReadIo::new(tcp, Cursor::new(early));
    let tls = match monoio::time::timeout(
        shared.limits().header_timeout,
        TlsAcceptor::from(config).accept(io),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        _ => return, // includes an SNI that names another host (row 3)
    };
    let mut conn = BufConn::new(tls);
    let mut checked = auth::Checked::default();
    loop {
        let n = match read_head(&shared, &mut conn, shared.limits().idle_timeout).await {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => return reply_and_close(&mut conn, &e).await,
        };
        if shared.shutting_down() {
            return;
        }
        let _in_flight = super::InFlight::new(&shared);
        // Row 52: the token is checked again for every request inside the tunnel.
        if let Err(e) = checked.recheck(&shared.store, &id) {
            return reply_and_close(&mut conn, &e).await;
        }
        let policy = shared.policy();
        let Some(vault) = policy.vault(&id.vault) else {
            return;
        };
        let permit = match shared.agent_limits.admit(id.limit_key) {
            Ok(p) => p,
            Err(e) => return reply_and_close(&mut conn, &e).await,
        };
        let (mut row, started) = (new_row(&id, &target.host), std::time::Instant::now());
        let result =
            forward::exchange(&shared, &mut conn, n, &target, vault, false, &mut row).await;
        drop(permit);
        record(&shared, row, started, &result);
        match result {
            Ok(Outcome::KeepAlive) => {}
            Ok(Outcome::Upgraded(up, secrets)) => {
                drop(_in_flight);
                return upgraded(conn, up, &secrets).await;
            }
            Ok(Outcome::Close) | Err(ExchangeError::Abort) => return,
            Err(ExchangeError::Respond(mut e)) => {
                if e.kind() == ErrorKind::NoService {
                    e = no_service(&target.host, target.port, &shared.api_base);
                }
                return reply_and_close(&mut conn, &e).await;
            }
        }
    }
}

/// Plain-HTTP proxying: authenticated per request; injection only for `http://` services (R5).
async fn plain<S: AsyncReadRent + AsyncWriteRent>(
    shared: &Arc<Shared>,
    client: &mut BufConn<S>,
    n: usize,
    target: &str,
    peer: std::net::IpAddr,
) -> Result<Outcome, ExchangeError> {
    let auth_header = head::parse_request(&client.buffered()[..n])?
        .one("proxy-authorization")?
        .map(<[u8]>::to_vec);
    let id = auth::authenticate_first(shared, auth_header.as_deref(), None)
        .await
        .map_err(|e| shared.auth_failures.refuse(peer, e))?;
    let rest = target.strip_prefix("http://").ok_or_else(|| {
        ProxyError::new(ErrorKind::BadRequest, "use CONNECT for https:// targets")
    })?;
    let authority = rest.find('/').map_or(rest, |i| &rest[..i]);
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let (host, port) = parse_authority(&authority)?;
    let target = Target {
        scheme: Scheme::Http,
        host,
        port,
    };
    let policy = shared.policy();
    let vault = policy
        .vault(&id.vault)
        .ok_or_else(|| ProxyError::new(ErrorKind::VaultMismatch, "the vault no longer exists"))?;
    if !vault.has_host(Scheme::Http, &target.host, port) {
        let refused = if vault.has_host(Scheme::Https, &target.host, 443) {
            ProxyError::new(
                ErrorKind::PlaintextRefused,
                "this service is only served over TLS",
            )
            .hint("use https://")
        } else {
            no_service(&target.host, port, &shared.api_base)
        };
        let method = head::parse_request(&client.buffered()[..n])?
            .method
            .to_owned();
        return Err(refuse_unmatched(shared, &id, &target.host, &method, refused).into());
    }
    let _permit = shared.agent_limits.admit(id.limit_key)?;
    let (mut row, started) = (new_row(&id, &target.host), std::time::Instant::now());
    let result = forward::exchange(shared, client, n, &target, vault, true, &mut row).await;
    record(shared, row, started, &result);
    result
}

/// Opaque tunnel for unmatched hosts when the vault allows it: vetted address, no TLS
/// interception, never any injection; closed within a second of the token's revocation.
async fn tunnel<S: Split + AsyncReadRent + AsyncWriteRent>(
    shared: Arc<Shared>,
    mut client: BufConn<S>,
    target: Target,
    id: Identity,
) {
    let addrs = match upstream::resolve(&shared, &target).await {
        Ok(a) => a,
        Err(e) => return reply_and_close(&mut client, &e).await,
    };
    let mut up = None;
    for addr in addrs {
        if let Ok(Ok(s)) = monoio::time::timeout(
            shared.limits().connect_timeout,
            TcpStream::connect_addr(addr),
        )
        .await
        {
            up = Some(s);
            break;
        }
    }
    let Some(up) = up else {
        return reply_and_close(
            &mut client,
            &ProxyError::new(ErrorKind::UpstreamUnreachable, "could not connect"),
        )
        .await;
    };
    if !established(&mut client).await {
        return;
    }
    let _open = shared.counters.tunnel();
    let store = &shared.store;
    let revoked = async {
        loop {
            monoio::time::sleep(Duration::from_millis(500)).await;
            if auth::recheck(store, &id).is_err() {
                return;
            }
        }
    };
    monoio::select! {
        _ = pipe(client, BufConn::new(up)) => {},
        _ = revoked => {},
    }
}

/// Answers a CONNECT with 200; false when the client is gone.
async fn established<S: AsyncWriteRent>(client: &mut BufConn<S>) -> bool {
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec())
        .await
        .is_ok()
}

/// Relays an upgraded (WebSocket) connection: what the agent sends goes up as it is; frames
/// from upstream come down with `secrets` masked ([`ws::relay_scrubbed`]).
async fn upgraded<C: Split + AsyncReadRent + AsyncWriteRent>(
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
        return pipe(client, BufConn::with_buffered(up, early)).await;
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

/// A request to a host the vault has no service for: `refused` is answered and recorded in the
/// request log; past the agent's refusal budget the answer is 429 and no row is written (review
/// B6: one agent must not flush the log of every vault with refused CONNECTs).
fn refuse_unmatched(
    shared: &Shared,
    id: &Identity,
    host: &str,
    method: &str,
    refused: ProxyError,
) -> ProxyError {
    if !shared.refusals.try_take(&id.limit_key) {
        return ProxyError::new(
            ErrorKind::RateLimited,
            "too many requests to hosts without a service; propose access instead",
        )
        .hint(format!("{}/v1/proposals", shared.api_base));
    }
    let mut row = new_row(id, host);
    row.method = method.to_owned();
    let denied = Err(ExchangeError::Respond(refused.clone()));
    record(shared, row, std::time::Instant::now(), &denied);
    refused
}

/// A request-log row for an authenticated request to `host`.
fn new_row(id: &Identity, host: &str) -> Row {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Row {
        at_ms,
        agent: id.who.clone(),
        vault: id.vault.clone(),
        host: host.to_owned(),
        ..Row::default()
    }
}

/// Completes a row with the outcome and hands it to the request log.
fn record(
    shared: &Shared,
    mut row: Row,
    started: std::time::Instant,
    result: &Result<Outcome, ExchangeError>,
) {
    row.latency_us = started.elapsed().as_micros() as u64;
    match result {
        Err(ExchangeError::Respond(e)) => {
            row.status = e.status();
            row.error = Some(e.code().to_owned());
        }
        Err(ExchangeError::Abort) => row.error = Some("aborted".to_owned()),
        Ok(_) => {}
    }
    shared.log.record(row);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// security.md row 5.
    #[test]
    fn row5_bad_authorities_refused() {
        for bad in [
            "api.x.com",
            "api.x.com:0",
            "api.x.com:65536",
            "api.x.com:+443",
            "user@api.x.com:443",
            "api.x.com#:443",
            "api\\x.com:443",
            "api%2ex.com:443",
            "api x.com:443",
            ":443",
            "[::1:443",
        ] {
            assert_eq!(
                parse_authority(bad).unwrap_err().code(),
                "bad_authority",
                "{bad}"
            );
        }
        assert_eq!(
            parse_authority("API.X.com.:443").unwrap(),
            ("api.x.com".into(), 443)
        );
        assert_eq!(parse_authority("[::1]:8443").unwrap(), ("::1".into(), 8443));
        assert_eq!(
            parse_authority("10.0.0.1:443").unwrap(),
            ("10.0.0.1".into(), 443)
        );
    }
}
