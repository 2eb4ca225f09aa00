//! Interception of a CONNECT to a host with a service: a leaf for the host (cached, or minted
//! under the vault's mint budget, row 39), `200 Connection established`, the TLS accept (an SNI
//! naming another host is refused, row 3), then the tunnel's requests. Every request is
//! re-authorised (row 52), admitted under the agent's limits, matched on its own (row 17) and
//! recorded in the request log.

use std::io::Cursor;
use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRent, PrefixedReadIo, Split};
use monoio_rustls::TlsAcceptor;

use super::Shared;
use super::auth::{Checked, Identity};
use super::client::{self, Between, Next, established, reply_and_close};
use super::error::{ErrorKind, ProxyError};
use super::limits::AgentBucket;
use super::log::Entry;
use super::outcome::{ExchangeError, Outcome};
use super::peer::Peer;
use super::pipeline::{self, Route};
use super::request::Request;
use super::upstream::Target;
use crate::http::io::BufConn;

/// Intercepts the tunnel to `target` and serves its requests.
pub(super) async fn serve<S: Split + AsyncReadRent + AsyncWriteRent + 'static>(
    shared: Arc<Shared>,
    mut client: BufConn<S>,
    target: Target,
    id: Identity,
    bucket: Arc<AgentBucket>,
    peer: &Peer,
) {
    let Some(config) = leaf(&shared, &mut client, &target, &id).await else {
        return;
    };
    if !established(&mut client).await {
        return;
    }
    let _open = shared.stats.tunnel();
    let (tcp, early) = client.into_parts();
    let io = PrefixedReadIo::new(tcp, Cursor::new(early));
    let acceptor = TlsAcceptor::from(config);
    // Boxed, like the exchange: the handshake's state is needed once, not for the tunnel's life.
    let accept = Box::pin(monoio::time::timeout(
        shared.limits().header_timeout,
        acceptor.accept(io),
    ));
    let Ok(Ok(tls)) = accept.await else {
        return; // includes an SNI that names another host (row 3)
    };
    let mut tunnel = Tunnel {
        shared: &shared,
        target: &target,
        bucket,
        id: &id,
        peer,
        checked: Checked::default(),
    };
    client::requests(
        &shared,
        BufConn::new(tls),
        Between::Idle,
        async |conn, raw| Next::Done(tunnel.request(conn, raw).await),
    )
    .await;
}

/// The TLS server config for the host: cached, or minted if the vault's budget allows.
async fn leaf<S: AsyncReadRent + AsyncWriteRent>(
    shared: &Shared,
    client: &mut BufConn<S>,
    target: &Target,
    id: &Identity,
) -> Option<Arc<rustls::ServerConfig>> {
    if !shared.certs.contains(&target.host) && !shared.limiters.mints.try_take(&id.vault) {
        let e = ProxyError::new(ErrorKind::RateLimited, "too many new hosts; retry shortly");
        reply_and_close(client, &e).await;
        return None;
    }
    match shared.certs.server_config(&target.host) {
        Ok(leaf) => {
            if leaf.minted {
                tracing::info!(host = %target.host, "minted a leaf on demand");
            }
            Some(leaf.config)
        }
        Err(e) => {
            tracing::warn!(host = %target.host, "leaf minting failed: {e}");
            let e = ProxyError::new(ErrorKind::Overloaded, "no certificate for this host");
            reply_and_close(client, &e).await;
            None
        }
    }
}

/// What every request of one intercepted tunnel shares.
struct Tunnel<'a> {
    shared: &'a Arc<Shared>,
    target: &'a Target,
    id: &'a Identity,
    peer: &'a Peer,
    /// The agent's limits, looked up once for the tunnel.
    bucket: Arc<AgentBucket>,
    checked: Checked,
}

impl Tunnel<'_> {
    /// One request inside the tunnel: re-authorised (row 52) and admitted under the agent's
    /// limits, then exchanged; every request is a request-log row, refusals at the gate included
    /// (within the agent's refusal budget, so a refused loop cannot flush the log, row 73).
    async fn request<S: AsyncReadRent + AsyncWriteRent>(
        &mut self,
        conn: &mut BufConn<S>,
        raw: Vec<u8>,
    ) -> Result<Outcome, ExchangeError> {
        let shared = self.shared;
        let mut entry = Entry::new(self.id, &self.target.host, self.peer.addr);
        let req = match Request::parse(raw) {
            Ok(req) => req,
            Err(e) => {
                let result = Err(e.into());
                entry.finish(&shared.log, &result);
                return result;
            }
        };
        entry.request(&req);
        let policy = shared.policy();
        let admitted = self
            .checked
            .recheck(&shared.store, self.id)
            .and_then(|()| shared.limiters.agents.admit(&self.bucket));
        let (permit, vault) = match (admitted, policy.vault(&self.id.vault)) {
            (Ok(permit), Some(vault)) => (permit, vault),
            (refused, _) => {
                let result = Err(refused.err().map_or(ExchangeError::Abort, Into::into));
                entry.finish_refused(shared, self.id, &result);
                return result;
            }
        };
        let route = Route {
            target: self.target,
            vault,
            agent: self.id.agent.as_deref(),
            absolute_ok: false,
            peer: self.peer,
        };
        let result = pipeline::process(shared, conn, &req, route, entry).await;
        drop(permit);
        result
    }
}
