//! One request/response exchange through a matched service.
//!
//! The request head is parsed in place, checked (Host and absolute-form against the one
//! authority, R1; path normalisation, row 7; framing, R2; substitution surfaces, row 26), then
//! re-serialised for the upstream: hop-by-hop, proxy and `Connection`-named headers dropped, the
//! agent's `Authorization` and injected header names dropped on credentialed services, injected
//! values added last. Bodies stream both ways with the proxy's own framing; echoed secrets are
//! masked in the response (row 25). Redirects are returned as they are (R3). The buffer holding injected values is zeroized after the write.

use std::borrow::Cow;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use zeroize::{Zeroize, Zeroizing};

use super::Shared;
use super::error::{ErrorKind, ProxyError};
use super::upstream::{self, Target};
use crate::http::body::{self, Output, RelayError};
use crate::http::head::{self, Framing, MAX_HEAD, RequestHead};
use crate::http::io::BufConn;
use crate::policy::{Service, ServiceFault, VaultPolicy, check_path};
use crate::requestlog::Row;
use crate::scrub::{Masker, Scrubber};
use crate::spec::Surface;

/// How an exchange ended.
#[derive(Debug)]
pub enum Outcome {
    /// The client connection may carry another request.
    KeepAlive,
    /// Close the client connection (after a response that said so).
    Close,
    /// The upstream accepted a WebSocket upgrade (101): relay frames both ways from here, those
    /// from upstream with these values masked.
    Upgraded(BufConn<upstream::UpIo>, Masker),
}

/// A failure: answer with an error response, or (once response bytes went out) just close.
#[derive(Debug)]
pub enum ExchangeError {
    Respond(ProxyError),
    Abort,
}

impl From<ProxyError> for ExchangeError {
    fn from(e: ProxyError) -> Self {
        Self::Respond(e)
    }
}

impl From<crate::http::HttpError> for ExchangeError {
    fn from(e: crate::http::HttpError) -> Self {
        Self::Respond(e.into())
    }
}

/// What the request line and headers decided, detached from the client's buffer.
struct Prepared<'v> {
    service: &'v Service,
    /// What responses are scrubbed of: every secret of the vault.
    scrub: &'v Masker,
    method: String,
    head: Zeroizing<Vec<u8>>,
    framing: Framing,
    client_close: bool,
    expect_continue: bool,
    /// A WebSocket handshake: `Upgrade: websocket` is forwarded (other upgrades are dropped).
    websocket: bool,
}

/// The `Host` value for an authority: the port only when it is not the scheme's default.
pub fn host_header(t: &Target) -> String {
    if t.port == t.scheme.default_port() {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    }
}

/// Checks the request against the tunnel's authority and builds the upstream head.
fn prepare<'v>(
    req: &RequestHead<'_>,
    target: &Target,
    vault: &'v VaultPolicy,
    absolute_ok: bool,
) -> Result<Prepared<'v>, ProxyError> {
    // R1: Host must be present once and name the authority (row 1, 4).
    let host = req
        .one("host")
        .map_err(|_| ProxyError::new(ErrorKind::BadHost, "duplicate Host header"))?;
    let host = host.ok_or_else(|| ProxyError::new(ErrorKind::BadHost, "missing Host header"))?;
    let host = std::str::from_utf8(host)
        .map_err(|_| ProxyError::new(ErrorKind::BadHost, "Host is not ASCII"))?;
    let expected = host_header(target);
    let with_port = format!("{}:{}", target.host, target.port);
    let host_norm = host.trim_end_matches('.').to_ascii_lowercase();
    if host_norm != expected && host_norm != with_port {
        return Err(ProxyError::new(
            ErrorKind::HostMismatch,
            "the Host header does not match the CONNECT authority",
        ));
    }
    // Row 2: an absolute-form target must name the same authority.
    let path_and_query = if req.target.starts_with('/') {
        req.target
    } else if let Some(rest) = req
        .target
        .strip_prefix("https://")
        .or_else(|| req.target.strip_prefix("http://"))
    {
        let (auth, path) = rest
            .find('/')
            .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let auth = auth.to_ascii_lowercase();
        if !absolute_ok && auth != expected && auth != with_port {
            return Err(ProxyError::new(
                ErrorKind::HostMismatch,
                "the request target names another host",
            ));
        }
        path
    } else {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "unsupported request target",
        ));
    };
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    check_path(path).map_err(|m| ProxyError::new(ErrorKind::BadPath, m))?;
    let framing = head::request_framing(req)?;
    let service = vault
        .find(target.scheme, &target.host, target.port, path)
        .ok_or_else(|| super::error::no_service(&target.host, target.port, ""))?;
    if !service.enabled {
        return Err(ProxyError::new(
            ErrorKind::ServiceDisabled,
            format!("service {} is disabled", service.name),
        ));
    }
    if let Some(fault) = service.error {
        let kind = match fault {
            ServiceFault::CredentialMissing => ErrorKind::CredentialMissing,
            ServiceFault::CredentialIntegrity => ErrorKind::CredentialIntegrity,
            ServiceFault::OAuthRefreshFailed => ErrorKind::OAuthRefreshFailed,
        };
        let m = format!("service {} cannot open its credential", service.name);
        return Err(ProxyError::new(kind, m));
    }
    let connection: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .collect();
    let mut out = Zeroizing::new(Vec::with_capacity(512));
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&substitute(service, Surface::Path, path.as_bytes())?);
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(&substitute(service, Surface::Query, q.as_bytes())?);
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(expected.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut expect_continue = false;
    let credentialed = service.drop_authorization;
    let websocket = req.method == "GET"
        && connection.iter().any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
        && req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"websocket")
        });
    if websocket {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    }
    if credentialed {
        // Review B8: an echo must come back in a form the scrubber can read.
        out.extend_from_slice(b"accept-encoding: identity\r\n");
    }
    for h in &req.headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
            continue;
        }
        if credentialed
            && (name.eq_ignore_ascii_case("accept-encoding")
                || name.eq_ignore_ascii_case("sec-websocket-extensions"))
        {
            continue; // compressed bodies and frames would hide an echo from the scrubber
        }
        if name.eq_ignore_ascii_case("host")
            || head::is_hop_by_hop(name, &connection)
            || (service.drop_authorization && name.eq_ignore_ascii_case("authorization"))
            || service
                .inject
                .iter()
                .any(|(n, _)| name.eq_ignore_ascii_case(n))
            || name.len() >= 6 && name[..6].eq_ignore_ascii_case("proxy-")
            || name.contains('_')
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&substitute(service, Surface::Header, h.value)?);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &service.inject {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.expose());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(Prepared {
        service,
        scrub: &vault.scrub,
        method: req.method.to_owned(),
        head: out,
        framing,
        client_close: head::wants_close(req.version, &req.headers),
        expect_continue,
        websocket,
    })
}

/// Parses a request head and builds the upstream head for it (what every exchange does before
/// dialing); returns the upstream head's length. Used by the micro benchmarks.
pub fn upstream_head(
    raw: &[u8],
    target: &Target,
    vault: &VaultPolicy,
) -> Result<usize, ProxyError> {
    let req = head::parse_request(raw)?;
    Ok(prepare(&req, target, vault, false)?.head.len())
}

/// Replaces placeholders allowed on `surface`; a placeholder on a surface not declared for it is
/// refused (row 26). Values go into the path and query percent-encoded.
fn substitute<'a>(
    service: &Service,
    surface: Surface,
    input: &'a [u8],
) -> Result<Cow<'a, [u8]>, ProxyError> {
    let mut out = Cow::Borrowed(input);
    for sub in &service.substitutions {
        let needle = sub.placeholder.as_bytes();
        let Some(first) = memchr::memmem::find(&out, needle) else {
            continue;
        };
        if !sub.surfaces.contains(&surface) {
            let m = format!(
                "placeholder {} is not allowed in the {surface:?}",
                sub.placeholder
            )
            .to_lowercase();
            return Err(ProxyError::new(ErrorKind::SubstitutionFieldDenied, m));
        }
        let value = match surface {
            Surface::Header => &sub.value,
            Surface::Path | Surface::Query => &sub.encoded,
        };
        let mut replaced = Vec::with_capacity(out.len() + value.len());
        let mut rest = &out[..];
        let mut at = Some(first);
        while let Some(k) = at {
            replaced.extend_from_slice(&rest[..k]);
            replaced.extend_from_slice(value.expose());
            rest = &rest[k + needle.len()..];
            at = memchr::memmem::find(rest, needle);
        }
        replaced.extend_from_slice(rest);
        out = Cow::Owned(replaced);
    }
    Ok(out)
}

/// Runs one exchange for the request whose head is the first `head_len` buffered bytes of
/// `client`. `absolute_ok` is set for plain-HTTP proxying, where the target is absolute-form.
///
/// A service injecting an OAuth credential keeps a copy of the head: when its access token has
/// expired, the request waits for the refresher first; when the upstream answers 401 and the body
/// is held, the token is renewed and the request sent once more with the new one (the 401 never
/// reaches the agent). A 401 to a streamed body goes back to the agent and starts a renewal. A
/// token younger than [`crate::policy::MIN_AGE_TO_RENEW_ON_401`] is not renewed on a 401: the 401
/// goes to the agent.
pub async fn exchange<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Shared,
    client: &mut BufConn<C>,
    head_len: usize,
    target: &Target,
    vault: &VaultPolicy,
    absolute_ok: bool,
    row: &mut Row,
) -> Result<Outcome, ExchangeError> {
    let (prepared, raw_head) = {
        let raw = &client.buffered()[..head_len];
        let req = head::parse_request(raw)?;
        row.method = req.method.to_owned();
        row.path = req.target.split('?').next().unwrap_or_default().to_owned();
        let prepared = prepare(&req, target, vault, absolute_ok)?;
        let copy = prepared
            .service
            .oauth
            .is_some()
            .then(|| Zeroizing::new(raw.to_vec()));
        (prepared, copy)
    };
    client.consume(head_len);
    row.service = Some(prepared.service.name.clone());
    // Row 82: framing already known to be bad is refused before anything goes upstream.
    if prepared.framing == Framing::Chunked {
        body::check_chunked_prefix(client.buffered())?;
    }
    // Row 16: a declared length over the cap is refused before anything goes upstream.
    if let (Framing::Length(n), Some(cap)) = (prepared.framing, shared.limits().body_cap)
        && n > cap
    {
        return Err(crate::http::HttpError::BodyTooLarge(cap).into());
    }
    // Row 60: no injection goes unrecorded for longer than one batch interval.
    if !prepared.service.inject.is_empty() && !shared.log.healthy() {
        let e = ProxyError::new(
            ErrorKind::AuditUnavailable,
            "the request log cannot be written",
        );
        return Err(e.into());
    }
    // Fleet mode: past `fleet_max_staleness` a revocation may not have reached this node.
    if prepared.service.drop_authorization && shared.fleet.as_ref().is_some_and(|f| f.stale()) {
        let e = ProxyError::new(
            ErrorKind::FleetStale,
            "this node has not heard from the fleet's store for longer than fleet_max_staleness",
        );
        return Err(e.into());
    }
    let key = (vault.id, target.clone());
    let (Some(oauth), Some(raw_head)) = (prepared.service.oauth.clone(), raw_head) else {
        return send(shared, client, &prepared, &key, row, None, false)
            .await
            .map_err(AttemptError::into_exchange);
    };
    let renewed = |held| Renewed {
        raw_head,
        held,
        target,
        vault: &vault.name,
        absolute_ok,
    };
    let now = crate::vault::now();
    if oauth.stale(now) {
        shared
            .oauth
            .renew(&vault.name, &oauth.key, oauth.version)
            .await?;
        return renewed(None).send(shared, client, row).await;
    }
    let held = hold_if_small(shared, client, &prepared).await?;
    let retry_401 = held.is_some() && oauth.renewable_on_401(now);
    match send(
        shared,
        client,
        &prepared,
        &key,
        row,
        held.as_deref(),
        retry_401,
    )
    .await
    {
        Err(AttemptError::Unauthorized) => {
            shared
                .oauth
                .renew(&vault.name, &oauth.key, oauth.version)
                .await?;
            renewed(held).send(shared, client, row).await
        }
        other => {
            if row.status == 401 && oauth.renewable_on_401(now) {
                shared.oauth.nudge(&vault.name, &oauth.key, oauth.version);
            }
            other.map_err(AttemptError::into_exchange)
        }
    }
}

/// A request of an OAuth service, to be prepared again once its token was renewed.
struct Renewed<'a> {
    raw_head: Zeroizing<Vec<u8>>,
    held: Option<Vec<u8>>,
    target: &'a Target,
    vault: &'a str,
    absolute_ok: bool,
}

impl Renewed<'_> {
    /// Sends the request with the token the current policy holds (no second renewal).
    async fn send<C: AsyncReadRent + AsyncWriteRent>(
        self,
        shared: &Shared,
        client: &mut BufConn<C>,
        row: &mut Row,
    ) -> Result<Outcome, ExchangeError> {
        let policy = shared.policy();
        let vault = policy.vault(self.vault).ok_or_else(|| {
            ProxyError::new(ErrorKind::VaultMismatch, "the vault no longer exists")
        })?;
        let req = head::parse_request(&self.raw_head)?;
        let prepared = prepare(&req, self.target, vault, self.absolute_ok)?;
        let key = (vault.id, self.target.clone());
        send(
            shared,
            client,
            &prepared,
            &key,
            row,
            self.held.as_deref(),
            false,
        )
        .await
        .map_err(AttemptError::into_exchange)
    }
}

/// Sends the request on a pooled or new connection. A pooled connection may fail under the
/// request (the upstream closed it as it was sent): a request whose body is held whole is sent
/// again, once, on a fresh connection, provided no response byte arrived. A body that must stream
/// cannot be sent twice. `held` is the body when the caller already read it.
async fn send<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Shared,
    client: &mut BufConn<C>,
    prepared: &Prepared<'_>,
    key: &upstream::PoolKey,
    row: &mut Row,
    held: Option<&[u8]>,
    retry_401: bool,
) -> Result<Outcome, AttemptError> {
    let up = upstream::get(shared, key).await?;
    if !up.reused {
        return attempt(shared, client, up, prepared, key, row, held, retry_401).await;
    }
    let read_here = match held {
        Some(_) => None,
        None => hold_if_small(shared, client, prepared).await?,
    };
    let held = held.or(read_here.as_deref());
    match attempt(shared, client, up, prepared, key, row, held, retry_401).await {
        Err(AttemptError::BeforeResponse(_)) if held.is_some() => {
            shared.counters.retried();
            let up = upstream::dial_new(shared, &key.1).await?;
            attempt(shared, client, up, prepared, key, row, held, retry_401).await
        }
        other => other,
    }
}

/// The whole body when it is empty or a `Content-Length` of at most [`RETRY_BODY_MAX`] (so the
/// request can be sent twice); `None` for a body that must stream.
async fn hold_if_small<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Shared,
    client: &mut BufConn<C>,
    prepared: &Prepared<'_>,
) -> Result<Option<Vec<u8>>, ExchangeError> {
    Ok(match prepared.framing {
        Framing::Empty => Some(Vec::new()),
        Framing::Length(n) if n <= RETRY_BODY_MAX => {
            Some(hold_body(shared, client, prepared, n).await?)
        }
        _ => None,
    })
}

/// Request bodies up to this size are read whole before they go out on a reused upstream
/// connection, so the request can be sent again if that connection turns out to be dead.
pub const RETRY_BODY_MAX: u64 = 1024 * 1024;

/// Reads a `Content-Length` body of `n` bytes from the client (answering `Expect: 100-continue`
/// first, since the client waits for it).
async fn hold_body<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Shared,
    client: &mut BufConn<C>,
    prepared: &Prepared<'_>,
    n: u64,
) -> Result<Vec<u8>, ExchangeError> {
    let n = usize::try_from(n).map_err(|_| ExchangeError::Abort)?;
    if prepared.expect_continue && client.buffered().len() < n {
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
            .await
            .map_err(|_| ExchangeError::Abort)?;
        client.flush().await.map_err(|_| ExchangeError::Abort)?;
    }
    let idle = shared.limits().idle_timeout;
    while client.buffered().len() < n {
        match monoio::time::timeout(idle, client.fill()).await {
            Ok(Ok(k)) if k > 0 => {}
            _ => return Err(ExchangeError::Abort),
        }
    }
    let body = client.buffered()[..n].to_vec();
    client.consume(n);
    Ok(body)
}

/// How an attempt failed: before any response byte arrived (the request may be sent again when
/// its body is held), with a 401 that was not relayed (an OAuth service's token to renew), or
/// after the response started.
#[derive(Debug)]
enum AttemptError {
    BeforeResponse(ProxyError),
    Unauthorized,
    After(ExchangeError),
}

impl AttemptError {
    fn into_exchange(self) -> ExchangeError {
        match self {
            Self::BeforeResponse(e) => ExchangeError::Respond(e),
            Self::Unauthorized => ExchangeError::Respond(ProxyError::new(
                ErrorKind::OAuthRefreshFailed,
                "the upstream refused the renewed OAuth token",
            )),
            Self::After(e) => e,
        }
    }
}

impl From<ExchangeError> for AttemptError {
    fn from(e: ExchangeError) -> Self {
        Self::After(e)
    }
}

impl From<ProxyError> for AttemptError {
    fn from(e: ProxyError) -> Self {
        Self::After(ExchangeError::Respond(e))
    }
}

/// Bodies up to this size that arrived with their head are written together with it.
const COALESCE_MAX: u64 = 16 * 1024;

/// Writes a head that may hold injected values, then zeroizes the buffer.
async fn write_secret<S: AsyncWriteRent>(
    conn: &mut BufConn<S>,
    mut head: Zeroizing<Vec<u8>>,
) -> std::io::Result<()> {
    let (res, mut buf) = conn.io.write_all(std::mem::take(&mut *head)).await;
    buf.zeroize();
    res.map(|_| ())
}

/// Sends the request on `up` and relays the response. `held` is the whole body when it was
/// read before the attempt (see [`hold_body`]). With `retry_401`, a 401 is not relayed: the
/// caller renews the OAuth token and sends the request again.
#[allow(clippy::too_many_arguments)]
async fn attempt<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Shared,
    client: &mut BufConn<C>,
    mut up: upstream::Upstream,
    prepared: &Prepared<'_>,
    key: &upstream::PoolKey,
    row: &mut Row,
    held: Option<&[u8]>,
    retry_401: bool,
) -> Result<Outcome, AttemptError> {
    let Prepared {
        service: _,
        scrub,
        method,
        head,
        framing,
        client_close,
        expect_continue,
        websocket,
    } = prepared;
    let (mut framing, client_close) = (*framing, *client_close);
    let mut first = head.clone();
    if let Some(body) = held {
        first.extend_from_slice(body);
        framing = Framing::Empty;
    } else if let Framing::Length(n) = framing
        && n <= COALESCE_MAX
        && n as usize <= client.buffered().len()
    {
        // A small body that arrived with the head goes upstream in the same write.
        first.extend_from_slice(&client.buffered()[..n as usize]);
        client.consume(n as usize);
        framing = Framing::Empty;
    }
    let unreachable = |what: &str, e: std::io::Error| {
        ProxyError::new(ErrorKind::UpstreamUnreachable, format!("{what}: {e}"))
    };
    write_secret(&mut up.conn, first)
        .await
        .map_err(|e| AttemptError::BeforeResponse(unreachable("writing to the upstream", e)))?;
    if *expect_continue && framing != Framing::Empty {
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
            .await
            .map_err(|_| ExchangeError::Abort)?;
        client.flush().await.map_err(|_| ExchangeError::Abort)?;
    }
    let limits = shared.limits();
    let opts = body::Opts {
        output: body::output_for(framing),
        cap: limits.body_cap,
        read_timeout: limits.idle_timeout,
    };
    match body::relay(client, &mut up.conn, framing, opts, None).await {
        Ok(_) => {}
        Err(RelayError::Framing(e)) => return Err(ExchangeError::Respond(e.into()).into()),
        Err(RelayError::Write(e)) => return Err(unreachable("sending the body", e).into()),
        Err(RelayError::Read(_) | RelayError::Truncated) => return Err(ExchangeError::Abort.into()),
    }
    up.conn
        .flush()
        .await
        .map_err(|e| AttemptError::BeforeResponse(unreachable("flushing", e)))?;

    // Read the response head, skipping interim 1xx responses.
    let upstream_error = |m: &str| ProxyError::new(ErrorKind::UpstreamProtocolError, m.to_owned());
    let mut first_head = true;
    let (head_len, resp_framing, upstream_close, out_head, status) = loop {
        let n = match read_response_head(shared, &mut up.conn).await {
            Ok(n) => n,
            Err(e)
                if first_head
                    && up.conn.buffered().is_empty()
                    && e.kind().retry_on_fresh_connection() =>
            {
                return Err(AttemptError::BeforeResponse(e));
            }
            Err(e) => return Err(e.into()),
        };
        first_head = false;
        let resp = head::parse_response(&up.conn.buffered()[..n])
            .map_err(|e| upstream_error(&e.to_string()))?;
        if resp.status == 101 && *websocket && one_value(&resp.headers, "upgrade", b"websocket") {
            // Row 23: only a real 101 to a WebSocket handshake turns the connection into a pipe.
            let mut out = response_head(&resp, method, Framing::Empty, false, scrub);
            out.truncate(out.len() - 2);
            out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n");
            drop(resp);
            up.conn.consume(n);
            row.status = 101;
            client
                .write_all(out)
                .await
                .map_err(|_| ExchangeError::Abort)?;
            client.flush().await.map_err(|_| ExchangeError::Abort)?;
            return Ok(Outcome::Upgraded(up.conn, (*scrub).clone()));
        }
        if resp.status == 101 {
            return Err(upstream_error(
                "the upstream switched protocols without an upgrade request",
            )
            .into());
        }
        if (100..200).contains(&resp.status) {
            drop(resp);
            up.conn.consume(n);
            continue;
        }
        if resp.status == 401 && retry_401 {
            return Err(AttemptError::Unauthorized); // the connection closes unread
        }
        let f =
            head::response_framing(method, &resp).map_err(|e| upstream_error(&e.to_string()))?;
        break (
            n,
            f,
            head::wants_close(resp.version, &resp.headers),
            response_head(&resp, method, f, client_close, scrub),
            resp.status,
        );
    };
    up.conn.consume(head_len);
    row.status = status;
    // A small body already read with the head goes out with it: one write, one TLS record.
    if let Framing::Length(n) = resp_framing
        && n <= COALESCE_MAX
        && n as usize <= up.conn.buffered().len()
    {
        let n = n as usize;
        let mut out = out_head;
        let start = out.len();
        out.extend_from_slice(&up.conn.buffered()[..n]);
        scrub.mask(&mut out[start..]);
        up.conn.consume(n);
        client
            .write_all(out)
            .await
            .map_err(|_| ExchangeError::Abort)?;
        client.flush().await.map_err(|_| ExchangeError::Abort)?;
        row.bytes = n as u64;
        if !upstream_close {
            upstream::put(key, up, limits.pool_idle);
        }
        return Ok(if client_close {
            Outcome::Close
        } else {
            Outcome::KeepAlive
        });
    }
    client
        .write_all(out_head)
        .await
        .map_err(|_| ExchangeError::Abort)?;
    let mut scrubber = Scrubber::new(scrub);
    let scrub = scrubber.is_active().then_some(&mut scrubber);
    let opts = body::Opts {
        output: body::output_for(resp_framing),
        cap: None,
        read_timeout: shared.limits().response_timeout,
    };
    let relayed = body::relay(&mut up.conn, client, resp_framing, opts, scrub).await;
    match relayed {
        Ok(bytes) => {
            row.bytes = bytes;
            if resp_framing != Framing::Close && !upstream_close {
                upstream::put(key, up, limits.pool_idle);
            }
            Ok(if client_close {
                Outcome::Close
            } else {
                Outcome::KeepAlive
            })
        }
        Err(_) => Err(ExchangeError::Abort.into()),
    }
}

/// Whether `name` appears and its value is `value` (case-insensitive).
fn one_value(headers: &[httparse::Header<'_>], name: &str, value: &[u8]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(name) && h.value.trim_ascii().eq_ignore_ascii_case(value)
    })
}

async fn read_response_head<S: AsyncReadRent>(
    shared: &Shared,
    conn: &mut BufConn<S>,
) -> Result<usize, ProxyError> {
    loop {
        if let Some(n) = head::find_end(conn.buffered()) {
            return Ok(n);
        }
        if conn.buffered().len() > MAX_HEAD {
            return Err(ProxyError::new(
                ErrorKind::UpstreamProtocolError,
                "the upstream response head is too large",
            ));
        }
        match monoio::time::timeout(shared.limits().response_timeout, conn.fill()).await {
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorKind::UpstreamTimeout,
                    "the upstream did not answer in time",
                ));
            }
            Ok(Ok(0)) => {
                return Err(ProxyError::new(
                    ErrorKind::UpstreamProtocolError,
                    "the upstream closed before answering",
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(ProxyError::new(
                    ErrorKind::UpstreamUnreachable,
                    format!("reading the response: {e}"),
                ));
            }
        }
    }
}

/// The response head for the agent: the upstream's status and end-to-end headers with the
/// proxy's own framing.
fn response_head(
    resp: &head::ResponseHead<'_>,
    method: &str,
    framing: Framing,
    close: bool,
    scrub: &Masker,
) -> Vec<u8> {
    let connection: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .collect();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", resp.status, resp.reason).as_bytes());
    // Review B7: the reason phrase and header names are upstream text too.
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
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes())
        }
        (Framing::Empty, _)
            if !keep_length && resp.status != 204 && !(100..200).contains(&resp.status) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        (_, Output::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
