//! One request's way through airlock once it is admitted (authenticated, within the agent's
//! limits, its vault known), read top to bottom in [`steps`] as pingora's `process_request` is:
//!
//! 1. **prepare** ([`super::inject`]): the authority and path checks, the service, the upstream
//!    head with the credential's headers and substitutions;
//! 2. **gates** ([`gates`]): what is refused before anything goes upstream;
//! 3. **verdict** ([`verdict`]): the service's rules, and a hold waiting for an operator;
//! 4. **credential** ([`credential`]): what the credential needs around the send: a body read for
//!    substitution, a SigV4 signature, an OAuth token renewed before sending or after a 401;
//! 5. **send** ([`send`]): a pooled or new upstream connection, the head and body written, one
//!    retry on a fresh connection when a pooled one fails before any response byte;
//! 6. **relay** ([`super::response`]): the response, scrubbed of every secret of the vault;
//! 7. **log** ([`process`]): the request-log row, written whichever step the request left at.
//!
//! [`Call`] is what the steps share: the prepared request, the client connection, the row being
//! filled in and a body read early. Its head holds injected values and is zeroized once written.
//! Nothing here decides how a connection is accepted or authenticated: that is the caller's
//! ([`super::intercept`], [`super::plain`]).

mod credential;
mod gates;
mod send;
mod verdict;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use std::sync::Arc;

use super::body_substitution;
use super::inject::{self, Prepared};
use super::log::Entry;
use super::outcome::{ExchangeError, Outcome};
use super::peer::Peer;
use super::request::Request;
use super::upstream::{PoolKey, Target};
use super::{Limits, Shared};
use crate::http::body::WHOLE_BODY_MAX;
use crate::http::head::Framing;
use crate::http::io::BufConn;
use crate::policy::{Service, VaultPolicy};
use crate::requestlog::Row;

/// Where a request goes and for whom.
#[derive(Clone, Copy, Debug)]
pub(super) struct Route<'a> {
    pub(super) target: &'a Target,
    pub(super) vault: &'a VaultPolicy,
    /// The agent the token belongs to (the service's per-agent rules).
    pub(super) agent: Option<&'a str>,
    /// Plain-HTTP proxying, where the target is absolute-form.
    pub(super) absolute_ok: bool,
    /// The agent's end of the connection (a held request stops waiting when it hangs up).
    pub(super) peer: &'a Peer,
}

/// Runs `req`, which arrived on `client`, through the steps and writes its request-log row
/// `entry`, whichever way the request ends: every exit of [`steps`] comes back here.
pub(super) async fn process<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Arc<Shared>,
    client: &mut BufConn<C>,
    req: &Request,
    route: Route<'_>,
    mut entry: Entry,
) -> Result<Outcome, ExchangeError> {
    let result = steps(shared, client, req, route, &mut entry.row).await;
    entry.finish(&shared.log, &result);
    result
}

/// The steps, in order (see the module doc); a refusal at any of them is an early return.
async fn steps<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Arc<Shared>,
    client: &mut BufConn<C>,
    req: &Request,
    route: Route<'_>,
    row: &mut Row,
) -> Result<Outcome, ExchangeError> {
    let prepared = prepare(shared, req, route)?;
    row.service = Some(prepared.service.name.clone());
    row.rule = prepared.verdict.name().map(str::to_owned);
    let limits = shared.limits();
    gates::check(&**shared, &limits, client.buffered(), &prepared)?;
    let mut call = Call::new(shared, limits, client, prepared, route, req, row);
    call.verdict().await?;
    call.credential().await
}

/// Step 1: [`inject::prepare`] for `route`.
fn prepare<'v>(
    shared: &Shared,
    req: &Request,
    route: Route<'v>,
) -> Result<Prepared<'v>, ExchangeError> {
    let Route {
        target,
        vault,
        agent,
        absolute_ok,
        ..
    } = route;
    Ok(inject::prepare(
        req,
        target,
        vault,
        agent,
        absolute_ok,
        &shared.api_base,
    )?)
}

/// One prepared request on its way upstream.
pub(super) struct Call<'a, C> {
    shared: &'a Arc<Shared>,
    /// The timeouts and caps, read once for the request.
    limits: Limits,
    client: &'a mut BufConn<C>,
    prepared: Prepared<'a>,
    req: &'a Request,
    route: Route<'a>,
    /// The pool key: the vault's id and the target.
    key: PoolKey,
    row: &'a mut Row,
    /// A 401 is not relayed: the caller renews the OAuth token and sends the request again.
    retry_401: bool,
    /// The body, when a hold read it before anything else could ([`Call::apply`]).
    early: Option<Vec<u8>>,
    /// The service substitutes in bodies, and this body is of a kind it reads.
    body_kind: Option<body_substitution::Kind>,
}

impl<'a, C: AsyncReadRent + AsyncWriteRent> Call<'a, C> {
    fn new(
        shared: &'a Arc<Shared>,
        limits: Limits,
        client: &'a mut BufConn<C>,
        prepared: Prepared<'a>,
        route: Route<'a>,
        req: &'a Request,
        row: &'a mut Row,
    ) -> Self {
        let body_kind = body_kind(req, prepared.service);
        Self {
            shared,
            limits,
            client,
            prepared,
            req,
            route,
            key: (route.vault.id, route.target.clone()),
            row,
            retry_401: false,
            early: None,
            body_kind,
        }
    }

    /// The whole body when it is empty or a `Content-Length` of at most [`WHOLE_BODY_MAX`] (so
    /// the request can be sent twice); `None` for a body that must stream.
    async fn hold_if_small(&mut self) -> Result<Option<Vec<u8>>, ExchangeError> {
        if let Some(body) = self.early.take() {
            return Ok(Some(body));
        }
        Ok(match self.prepared.framing {
            Framing::Empty => Some(Vec::new()),
            Framing::Length(n) if n <= WHOLE_BODY_MAX => Some(self.hold_body(n).await?),
            _ => None,
        })
    }

    /// Reads a `Content-Length` body of `n` bytes from the client (answering `Expect:
    /// 100-continue` first, since the client waits for it).
    async fn hold_body(&mut self, n: u64) -> Result<Vec<u8>, ExchangeError> {
        if let Some(body) = self.early.take() {
            return Ok(body);
        }
        let n = usize::try_from(n).map_err(|_| ExchangeError::Abort)?;
        if self.prepared.expect_continue && self.client.buffered().len() < n {
            self.continue_100().await?;
        }
        let idle = self.limits.idle_timeout;
        while self.client.buffered().len() < n {
            match monoio::time::timeout(idle, self.client.fill()).await {
                Ok(Ok(k)) if k > 0 => {}
                _ => return Err(ExchangeError::Abort),
            }
        }
        let body = self.client.buffered()[..n].to_vec();
        self.client.consume(n);
        Ok(body)
    }

    async fn continue_100(&mut self) -> Result<(), ExchangeError> {
        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        let abort = |_| ExchangeError::Abort;
        self.client.write_all(CONTINUE).await.map_err(abort)?;
        self.client.flush().await.map_err(abort)
    }
}

/// How `req`'s body is read for `service`'s body substitutions, if it declares any.
fn body_kind(req: &Request, service: &Service) -> Option<body_substitution::Kind> {
    body_substitution::declared(service).next()?;
    let header = |name| req.one(name).ok().flatten();
    body_substitution::Kind::of(header("content-type"), header("content-encoding"))
}
