//! Plain-HTTP proxying (an absolute-form `http://` request on the proxy port): authenticated per
//! request, and injection only for `http://` services (R5). A host served only over TLS is
//! refused with `plaintext_refused`, so a credential never goes out in clear text.

use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::authority::parse_authority;
use super::error::{ErrorKind, ProxyError, no_service};
use super::log::{Entry, refuse_unmatched};
use super::outcome::{ExchangeError, Outcome};
use super::peer::Peer;
use super::pipeline::{self, Route};
use super::request::Request;
use super::upstream::Target;
use super::{Shared, auth};
use crate::http::io::BufConn;
use crate::spec::Scheme;

/// Serves one plain-HTTP request.
pub(super) async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    shared: &Arc<Shared>,
    client: &mut BufConn<S>,
    req: &Request,
    peer: &Peer,
) -> Result<Outcome, ExchangeError> {
    let id = auth::authenticate_first(shared, req.one("proxy-authorization")?, None)
        .await
        .map_err(|e| shared.limiters.auth_failures.refuse(peer.addr, e))?;
    let target = target_of(req.target())?;
    let policy = shared.policy();
    let vault = policy
        .vault(&id.vault)
        .ok_or_else(|| ProxyError::new(ErrorKind::VaultMismatch, "the vault no longer exists"))?;
    if !vault.has_host(Scheme::Http, &target.host, target.port) {
        let refused = if vault.has_host(Scheme::Https, &target.host, 443) {
            let m = "this service is only served over TLS";
            ProxyError::new(ErrorKind::PlaintextRefused, m).hint("use https://")
        } else {
            no_service(&target.host, target.port, &shared.api_base)
        };
        let to = (target.host.as_str(), peer.addr);
        return Err(refuse_unmatched(shared, &id, to, req, refused).into());
    }
    let mut entry = Entry::new(&id, &target.host, peer.addr);
    entry.request(req);
    let bucket = shared.limiters.agents.bucket(id.limit_key);
    let _permit = match shared.limiters.agents.admit(&bucket) {
        Ok(permit) => permit,
        Err(e) => {
            let result = Err(e.into());
            entry.finish_refused(shared, &id, &result);
            return result;
        }
    };
    let route = Route {
        target: &target,
        vault,
        agent: id.agent.as_deref(),
        absolute_ok: true,
        peer,
    };
    pipeline::process(shared, client, req, route, entry).await
}

/// The authority of an absolute-form `http://` target (port 80 when it names none).
fn target_of(t: &str) -> Result<Target, ProxyError> {
    let rest = t.strip_prefix("http://").ok_or_else(|| {
        ProxyError::new(ErrorKind::BadRequest, "use CONNECT for https:// targets")
    })?;
    let authority = rest.find('/').map_or(rest, |i| &rest[..i]);
    let (host, port) = if authority.contains(':') {
        parse_authority(authority)?
    } else {
        parse_authority(&format!("{authority}:80"))?
    };
    Ok(Target {
        scheme: Scheme::Http,
        host,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The authority of an absolute-form `http://` target, port 80 by default; an `https://`
    /// target (which must use CONNECT) and a bad authority are refused.
    #[test]
    fn targets_of_absolute_form_requests() {
        let t = target_of("http://Metrics.Example:8080/m?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("metrics.example", 8080));
        assert_eq!(target_of("http://api.example.com").unwrap().port, 80);
        assert_eq!(
            target_of("https://api.example.com/").unwrap_err().code(),
            "bad_request"
        );
        assert_eq!(target_of("/v1/models").unwrap_err().code(), "bad_request");
        assert_eq!(
            target_of("http://a.example:99999/").unwrap_err().code(),
            "bad_authority"
        );
    }
}
