//! Accepting a client connection and its first request: the connection cap (row 37),
//! `client_networks`, the TLS proxy port, then the first head decides. `CONNECT` authenticates
//! and is intercepted, tunnelled or denied before any TLS ([`connect`]); absolute-form `http://`
//! is plain proxying ([`super::plain`]); origin-form is the agent API ([`super::agent_api`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio_rustls::TlsAcceptor;

use super::auth::Identity;
use super::authority::parse_authority;
use super::client::{self, Between, Next, reply_and_close};
use super::error::{ErrorKind, ProxyError, no_service};
use super::log::refuse_unmatched;
use super::peer::Peer;
use super::request::Request;
use super::stats::Refused;
use super::upstream::Target;
use super::{Shared, agent_api, auth, intercept, plain, proxy_protocol, tunnel};
use crate::http::io::BufConn;
use crate::spec::Scheme;
use crate::vault::UnmatchedPolicy;

/// Admits an accepted connection under the connection cap (row 37): over it, the new connection
/// gets 503 `overloaded` and open ones are unaffected.
pub async fn accepted(shared: Arc<Shared>, tcp: TcpStream) {
    let open = shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    if open >= shared.limits().max_connections {
        let mut conn = BufConn::new(tcp);
        let e = ProxyError::new(ErrorKind::Overloaded, "too many connections; retry shortly");
        reply_and_close(&mut conn, &e).await;
    } else {
        serve(shared.clone(), tcp).await;
    }
    shared.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Serves one accepted TCP connection: from a balancer of `proxy_protocol_from`, its PROXY
/// header read first (the agent's address); refused at once when `client_networks` does not
/// hold the address; through TLS first when the proxy port speaks TLS (`proxy_tls_names` or
/// `proxy_tls_cert`), so a token sent to it never crosses a network in clear text.
async fn serve(shared: Arc<Shared>, mut tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut peer = Peer::of(&tcp);
    if shared
        .proxy_protocol_from
        .iter()
        .any(|n| n.contains(peer.addr))
    {
        let wait = shared
            .limits()
            .header_timeout
            .min(client::FIRST_REQUEST_WAIT);
        match proxy_protocol::read_source(&mut tcp, wait).await {
            Ok(Some(agent)) => peer.addr = agent,
            Ok(None) => {}
            Err(e) => return refuse(&shared, Refused::ProxyHeader, &peer, &e.to_string()),
        }
    }
    if !shared.client_networks.is_empty()
        && !shared.client_networks.iter().any(|n| n.contains(peer.addr))
    {
        return refuse(&shared, Refused::Network, &peer, "not in client_networks");
    }
    let Some(tls) = shared.proxy_tls.clone() else {
        return serve_io(shared, tcp, &peer).await;
    };
    let acceptor = TlsAcceptor::from(tls);
    let accepted = Box::pin(monoio::time::timeout(
        shared.limits().header_timeout,
        acceptor.accept(tcp),
    ))
    .await;
    if let Ok(Ok(io)) = accepted {
        // Boxed: TLS in TLS makes this the largest state of all, and a connection's task is
        // sized for its largest state; plain connections should not pay for it.
        Box::pin(serve_io(shared, io, &peer)).await;
    }
}

/// A connection closed at once: counted, and told to the operator (at most once every 10 s per
/// reason and worker, with how many went untold).
fn refuse(shared: &Shared, why: Refused, peer: &Peer, detail: &str) {
    shared.stats.refused(why);
    let key = match why {
        Refused::Network => "refused_client_networks",
        Refused::ProxyHeader => "refused_proxy_protocol",
    };
    if let Some(suppressed) = client::may_warn(key) {
        tracing::warn!(client = %peer.addr, suppressed, "refused a connection: {detail}");
    }
}

/// The requests of one client connection, plain or TLS, until one is a CONNECT.
async fn serve_io<S: Split + AsyncReadRent + AsyncWriteRent + 'static>(
    shared: Arc<Shared>,
    io: S,
    peer: &Peer,
) {
    let s = &shared;
    let handed = client::requests(s, BufConn::new(io), Between::Short, async |client, raw| {
        let req = match Request::parse(raw) {
            Ok(req) => req,
            Err(e) => return Next::Done(Err(ProxyError::from(e).into())),
        };
        if req.method() == "CONNECT" {
            return Next::HandOff(req);
        }
        let absolute = req.target().starts_with("http://") || req.target().starts_with("https://");
        Next::Done(if absolute {
            plain::serve(s, client, &req, peer).await
        } else {
            agent_api::handle(s, client, &req, peer.addr).await
        })
    })
    .await;
    if let Some((client, req)) = handed {
        connect(shared, client, req, peer).await;
    }
}

/// A CONNECT: the authority is checked (row 5) and the token authenticated before anything
/// else; then a host with a service is intercepted, and any other host is denied at once
/// (row 28: before any TLS or DNS) or tunnelled, as the vault says.
async fn connect<S: Split + AsyncReadRent + AsyncWriteRent + 'static>(
    shared: Arc<Shared>,
    mut client: BufConn<S>,
    req: Request,
    peer: &Peer,
) {
    let (id, target) = match authenticated(&shared, &req, peer).await {
        Ok(it) => it,
        Err(e) => return reply_and_close(&mut client, &e).await,
    };
    let limits = shared.limits();
    let bucket = shared.limiters.agents.bucket(id.limit_key);
    let _slot = match shared.limiters.open_tunnel(
        bucket.clone(),
        &id.vault,
        limits.agent_max_connections,
        limits.max_connections,
    ) {
        Ok(slot) => slot,
        Err(e) => return reply_and_close(&mut client, &e).await,
    };
    match unmatched(&shared, &id, &target) {
        Err(e) => reply_and_close(&mut client, &e).await,
        Ok(None) => intercept::serve(shared, client, target, id, bucket, peer).await,
        Ok(Some(UnmatchedPolicy::Tunnel)) => {
            tunnel::serve(shared, client, target, id, peer.addr).await
        }
        Ok(Some(UnmatchedPolicy::Deny)) => {
            let refused = no_service(&target.host, target.port, &shared.api_base);
            let to = (target.host.as_str(), peer.addr);
            let refused = refuse_unmatched(&shared, &id, to, &req, refused);
            reply_and_close(&mut client, &refused).await
        }
    }
}

/// The CONNECT's authority (row 5) and its token, checked in that order; failed
/// authentications count against the client's address (row 51).
async fn authenticated(
    shared: &Arc<Shared>,
    req: &Request,
    peer: &Peer,
) -> Result<(Identity, Target), ProxyError> {
    let auth_header = req.one("proxy-authorization")?;
    let (host, port) = parse_authority(req.target())?;
    let id = auth::authenticate_first(shared, auth_header, None)
        .await
        .map_err(|e| shared.limiters.auth_failures.refuse(peer.addr, e))?;
    let target = Target {
        scheme: Scheme::Https,
        host,
        port,
    };
    Ok((id, target))
}

/// What the vault does with the CONNECT's host: `None` to intercept it (a service has it),
/// else tunnel it (allowlisted, or the vault tunnels unmatched hosts) or deny it.
fn unmatched(
    shared: &Shared,
    id: &Identity,
    target: &Target,
) -> Result<Option<UnmatchedPolicy>, ProxyError> {
    let policy = shared.policy();
    let vault = policy
        .vault(&id.vault)
        .ok_or_else(|| ProxyError::new(ErrorKind::VaultMismatch, "the vault no longer exists"))?;
    Ok(
        if vault.has_host(Scheme::Https, &target.host, target.port) {
            None
        } else if vault.allows(&target.host, target.port) {
            Some(UnmatchedPolicy::Tunnel)
        } else {
            Some(vault.unmatched)
        },
    )
}
