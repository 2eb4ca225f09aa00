//! The upstream exchange for a matched request: the gates before anything goes upstream (bad
//! chunked framing, row 82; a declared body over the cap, row 16; an unwritable request log,
//! row 60; a stale fleet node), then the request sent on a pooled or new connection, its body
//! streamed with the proxy's own framing, and the response handed to [`super::response`]. The
//! head holding injected values is zeroized after the write.
//!
//! An `aws-sigv4` service's request is signed here, once its payload hash is known
//! ([`super::sigv4`]): a body the signature covers is read whole first.
//!
//! A service injecting an OAuth credential waits for the refresher when its access token has
//! expired; when the upstream answers 401 and the body is held, the token is renewed and the
//! request sent once more with the new one (the 401 never reaches the agent). A 401 to a streamed
//! body goes back to the agent and starts a renewal. A token younger than
//! [`crate::credential::MIN_AGE_TO_RENEW_ON_401`] is not renewed on a 401: the 401 goes to the agent.

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use zeroize::{Zeroize, Zeroizing};

use std::sync::Arc;

use super::body_substitution;
use super::error::{ErrorKind, ProxyError};
use super::hold;
use super::inject::{self, Prepared};
use super::outcome::{ExchangeError, Outcome};
use super::peer::Peer;
use super::request::Request;
use super::response::{self, COALESCE_MAX, Head};
use super::sigv4::{self, Payload};
use super::upstream::{self, PoolKey, Target, Upstream};
use super::{Limits, Shared};
use crate::credential::{OAuthUse, SigV4Keys};
use crate::http::HttpError;
use crate::http::body::{self, RelayError, WHOLE_BODY_MAX};
use crate::http::head::Framing;
use crate::http::io::BufConn;
use crate::policy::{Service, VaultPolicy};
use crate::requestlog::Row;
use crate::rules::{Rule, Verdict};
use crate::spec::RuleAction;

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

/// Runs one exchange for `req`, which arrived on `client`.
pub(super) async fn exchange<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Arc<Shared>,
    client: &mut BufConn<C>,
    req: &Request,
    route: Route<'_>,
    row: &mut Row,
) -> Result<Outcome, ExchangeError> {
    let Route {
        target,
        vault,
        agent,
        absolute_ok,
        ..
    } = route;
    let prepared = inject::prepare(req, target, vault, agent, absolute_ok, &shared.api_base)?;
    row.service = Some(prepared.service.name.clone());
    row.rule = prepared.verdict.name().map(str::to_owned);
    let limits = shared.limits();
    gates(shared, &limits, client, &prepared)?;
    let oauth = prepared.service.credential.oauth().cloned();
    let verdict = prepared.verdict;
    let prepared_service = prepared.service;
    let mut call = Call {
        shared,
        limits,
        client,
        prepared,
        vault: &vault.name,
        key: (vault.id, target.clone()),
        row,
        retry_401: false,
        early: None,
        body_kind: body_kind(req, prepared_service),
    };
    let verdict = call.judge_body(verdict, req, route).await?;
    call.row.rule = verdict.name().map(str::to_owned);
    call.apply(verdict, req, route).await?;
    call.hold_for_substitution().await?;
    let Some(oauth) = oauth else {
        let held = match call.prepared.service.credential.sigv4() {
            Some(keys) => call.sign(keys, req).await?,
            None => None,
        };
        let sent = call.send(held.as_deref()).await;
        return sent.map_err(AttemptError::into_exchange);
    };
    let again = Again {
        req,
        target,
        vault: &vault.name,
        absolute_ok,
    };
    call.with_oauth(oauth, again).await
}

/// What is refused before anything goes upstream.
fn gates<C>(
    shared: &Shared,
    limits: &Limits,
    client: &BufConn<C>,
    prepared: &Prepared<'_>,
) -> Result<(), ExchangeError> {
    // Row 82: framing already known to be bad is refused before anything goes upstream.
    if prepared.framing == Framing::Chunked {
        body::check_chunked_prefix(client.buffered())?;
    }
    // Row 16: a declared length over the cap is refused before anything goes upstream.
    if let (Framing::Length(n), Some(cap)) = (prepared.framing, limits.body_cap)
        && n > cap
    {
        return Err(HttpError::BodyTooLarge(cap).into());
    }
    // Row 60: no injection goes unrecorded for longer than one batch interval.
    if prepared.service.credential.credentialed() && !shared.log.healthy() {
        let m = "the request log cannot be written";
        return Err(ProxyError::new(ErrorKind::AuditUnavailable, m).into());
    }
    // Fleet mode: past `fleet_max_staleness` a revocation may not have reached this node.
    if prepared.service.credential.credentialed()
        && shared.fleet.as_ref().is_some_and(|f| f.stale())
    {
        let m =
            "this node has not heard from the fleet's store for longer than fleet_max_staleness";
        return Err(ProxyError::new(ErrorKind::FleetStale, m).into());
    }
    Ok(())
}

/// A request of an OAuth service, to be prepared again once its token was renewed.
#[derive(Debug)]
struct Again<'a> {
    req: &'a Request,
    target: &'a Target,
    vault: &'a str,
    absolute_ok: bool,
}

impl Again<'_> {
    /// Sends the request with the token the current policy holds (no second renewal).
    async fn send<C: AsyncReadRent + AsyncWriteRent>(
        self,
        shared: &Arc<Shared>,
        client: &mut BufConn<C>,
        row: &mut Row,
        held: Option<Vec<u8>>,
    ) -> Result<Outcome, ExchangeError> {
        let policy = shared.policy();
        let vault = policy.vault(self.vault).ok_or_else(|| {
            ProxyError::new(ErrorKind::VaultMismatch, "the vault no longer exists")
        })?;
        let api_base = &shared.api_base;
        // Judged by the rules already: this is the same request, sent once more.
        let prepared = inject::prepare(
            self.req,
            self.target,
            vault,
            None,
            self.absolute_ok,
            api_base,
        )?;
        let body_kind = body_kind(self.req, prepared.service);
        let mut call = Call {
            shared,
            limits: shared.limits(),
            client,
            prepared,
            vault: self.vault,
            key: (vault.id, self.target.clone()),
            row,
            retry_401: false,
            early: None,
            body_kind,
        };
        let sent = call.send(held.as_deref()).await;
        sent.map_err(AttemptError::into_exchange)
    }
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

/// One prepared request on its way upstream.
struct Call<'a, C> {
    shared: &'a Arc<Shared>,
    /// The timeouts and caps, read once for the request.
    limits: Limits,
    client: &'a mut BufConn<C>,
    prepared: Prepared<'a>,
    /// The vault's name (its upstream proxy) and the pool key (its id and the target).
    vault: &'a str,
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
    /// Review W1: Rails, Laravel and Symfony act on a `_method` field of a form or JSON body.
    /// When one could make the verdict stricter (the service's rules name a method that would),
    /// the body is read (a `Content-Length` of at most [`WHOLE_BODY_MAX`], kept for
    /// sending) and each `_method` in it judged like the query's; a body that cannot be read
    /// first or parsed as its framework would is refused (`rule_method_ambiguous`).
    async fn judge_body(
        &mut self,
        verdict: Verdict<'a>,
        req: &Request,
        route: Route<'_>,
    ) -> Result<Verdict<'a>, ExchangeError> {
        let service = self.prepared.service;
        let Some(rules) = service.rules.as_deref() else {
            return Ok(verdict);
        };
        if self.prepared.framing == Framing::Empty {
            return Ok(verdict);
        }
        let Some(content_type) = req.one("content-type").ok().flatten() else {
            return Ok(verdict);
        };
        let (path, query) = inject::path_and_query(req, route.target, route.absolute_ok)?;
        if !rules.body_method_matters(route.agent, req, path, query, verdict) {
            return Ok(verdict);
        }
        let ambiguous = |why: &str| {
            let m = format!(
                "service {}'s rules judge methods, and this body may name another (`_method`): {why}",
                service.name
            );
            ProxyError::new(ErrorKind::RuleMethodAmbiguous, m)
                .hint("send the method itself, with a Content-Length body")
        };
        let body = match self.prepared.framing {
            Framing::Length(n) if n <= WHOLE_BODY_MAX => self.hold_body(n).await?,
            // A hold needs the body in hand too, and refuses it with its own error.
            _ if verdict.action == RuleAction::Hold => return Ok(verdict),
            _ => {
                let why = format!(
                    "a body that is not Content-Length of at most {} bytes cannot be read first",
                    WHOLE_BODY_MAX
                );
                return Err(ambiguous(&why).into());
            }
        };
        let methods = crate::rules::body_methods(content_type, &body)
            .map_err(|_| ambiguous("a multipart body that mentions it is not parsed"))?;
        self.early = Some(body);
        if methods.is_empty() {
            return Ok(verdict);
        }
        let verdict = rules
            .evaluate_with(route.agent, req, path, query, &methods)
            .map_err(ProxyError::from)?;
        Ok(verdict)
    }

    /// Carries out the rules' verdict: a denial or a spent limit refuses the request; a hold
    /// reads its body and waits for an operator ([`hold`]).
    async fn apply(
        &mut self,
        verdict: Verdict<'_>,
        req: &Request,
        route: Route<'_>,
    ) -> Result<(), ExchangeError> {
        let passes = match verdict.action {
            RuleAction::Allow => true,
            RuleAction::Limit => verdict.rule.is_none_or(Rule::take),
            RuleAction::Deny | RuleAction::Hold => false,
        };
        if passes {
            return Ok(());
        }
        // Only a refusal or a hold says what decided it.
        let by = decided_by(&verdict, &self.prepared.service.name);
        let refused = |kind, message: String| {
            let hint = rule_hint(&verdict, &self.shared.api_base);
            Err(ProxyError::new(kind, message).hint(hint).into())
        };
        match verdict.action {
            RuleAction::Hold => self.hold(&by, req, route).await,
            RuleAction::Limit => {
                let m = format!("{by} allows no more requests like this one for now");
                refused(ErrorKind::RuleLimited, m)
            }
            // (`Allow` passed above.)
            RuleAction::Deny | RuleAction::Allow => {
                let m = format!("{by} refuses {} {}", req.method(), req.path());
                refused(ErrorKind::RuleDenied, m)
            }
        }
    }

    /// A held request (`by` says which rule held it): its body read whole, then it waits for
    /// an operator. The operator approves what they can read (review #83): no
    /// `Content-Encoding`, a `Content-Length` body of at most [`WHOLE_BODY_MAX`].
    async fn hold(
        &mut self,
        by: &str,
        req: &Request,
        route: Route<'_>,
    ) -> Result<(), ExchangeError> {
        let encoded = req
            .one("content-encoding")
            .ok()
            .flatten()
            .is_some_and(|v| !v.trim_ascii().eq_ignore_ascii_case(b"identity"));
        if encoded {
            let m = format!(
                "{by} holds this request for an operator, who must be able to read its body: send it without Content-Encoding"
            );
            return Err(ProxyError::new(ErrorKind::HoldBodyEncoded, m).into());
        }
        let body = match self.prepared.framing {
            Framing::Empty => Vec::new(),
            Framing::Length(n) if n <= WHOLE_BODY_MAX => self.hold_body(n).await?,
            _ => {
                let m = format!(
                    "{by} holds this request for an operator, which needs a Content-Length body of at most {WHOLE_BODY_MAX} bytes"
                );
                return Err(ProxyError::new(ErrorKind::HoldBodyTooLarge, m).into());
            }
        };
        let held = hold::describe(req, route.target, &self.prepared, &body, self.shared);
        hold::wait(self.shared, self.vault, route.agent, held, route.peer).await?;
        self.early = Some(body);
        Ok(())
    }

    /// The OAuth branch of [`exchange`]: renew first when the token expired; renew and send
    /// again after a 401 when the body is held.
    async fn with_oauth(
        mut self,
        oauth: OAuthUse,
        again: Again<'_>,
    ) -> Result<Outcome, ExchangeError> {
        let (shared, now) = (self.shared, crate::vault::now());
        let renew = || shared.oauth.renew(again.vault, &oauth.key, oauth.version);
        if oauth.stale(now) {
            renew().await?;
            let early = self.early.take();
            return again.send(shared, self.client, self.row, early).await;
        }
        let held = self.hold_if_small().await?;
        self.retry_401 = held.is_some() && oauth.renewable_on_401(now);
        match self.send(held.as_deref()).await {
            Err(AttemptError::Unauthorized) => {
                renew().await?;
                again.send(shared, self.client, self.row, held).await
            }
            other => {
                if self.row.status == 401 && oauth.renewable_on_401(now) {
                    shared.oauth.nudge(again.vault, &oauth.key, oauth.version);
                }
                other.map_err(AttemptError::into_exchange)
            }
        }
    }

    /// Sends the request on a pooled or new connection. A pooled connection may fail under the
    /// request (the upstream closed it as it was sent): a request whose body is held whole is
    /// sent again, once, on a fresh connection, provided no response byte arrived. A body that
    /// must stream cannot be sent twice. `held` is the body when the caller already read it.
    async fn send(&mut self, held: Option<&[u8]>) -> Result<Outcome, AttemptError> {
        let early = self.early.take();
        let held = held.or(early.as_deref());
        // The credential goes into the body here, so a resend after renewal carries the new one.
        let substituted = match (self.body_kind, held) {
            (Some(kind), Some(body)) => {
                body_substitution::substitute(self.prepared.service, kind, body)
            }
            _ => None,
        };
        if let Some(body) = &substituted {
            body_substitution::set_length(&mut self.prepared.head, body.len());
        }
        let held = substituted.as_deref().map(Vec::as_slice).or(held);
        let (dialer, stats) = (&self.shared.dialer, &self.shared.stats);
        let up = upstream::get(dialer, stats, self.vault, &self.key, self.limits.pool_idle).await?;
        if !up.reused {
            return self.attempt(up, held).await;
        }
        let read_here = match held {
            Some(_) => None,
            None => self.hold_if_small().await?,
        };
        let held = held.or(read_here.as_deref());
        match self.attempt(up, held).await {
            Err(AttemptError::BeforeResponse(_)) if held.is_some() => {
                stats.retried();
                stats.upstream(false);
                let up = upstream::dial_new(dialer, self.vault, &self.key.1).await?;
                self.attempt(up, held).await
            }
            other => other,
        }
    }

    /// Signs an `aws-sigv4` request, reading its body first when the signature covers it;
    /// returns the body so read.
    async fn sign(
        &mut self,
        keys: &SigV4Keys,
        req: &Request,
    ) -> Result<Option<Vec<u8>>, ExchangeError> {
        let declared = req.one("x-amz-content-sha256").ok().flatten();
        let (hash, held) = match sigv4::payload(keys, self.prepared.framing, declared)? {
            Payload::Hash => {
                let body = match self.prepared.framing {
                    Framing::Length(n) => self.hold_body(n).await?,
                    _ => Vec::new(),
                };
                (sigv4::hash(&body), Some(body))
            }
            Payload::Declared(d) => (d.to_owned(), None),
        };
        sigv4::sign(keys, &mut self.prepared.head, &hash, crate::vault::now());
        Ok(held)
    }

    /// Reads the body first when the service substitutes in it ([`body_substitution`]); a body
    /// it cannot hold is refused, never sent with its placeholders.
    async fn hold_for_substitution(&mut self) -> Result<(), ExchangeError> {
        let service = self.prepared.service;
        if self.early.is_some() || body_substitution::declared(service).next().is_none() {
            return Ok(());
        }
        match self.prepared.framing {
            Framing::Empty => {}
            Framing::Length(n) if n <= WHOLE_BODY_MAX => {
                let body = self.hold_body(n).await?;
                self.early = Some(body);
            }
            _ => return Err(body_substitution::too_large(&service.name).into()),
        }
        Ok(())
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

    /// Sends the request on `up` and relays the response. `held` is the whole body when it was
    /// read before the attempt (see [`Call::hold_body`]).
    async fn attempt(
        &mut self,
        mut up: Upstream,
        held: Option<&[u8]>,
    ) -> Result<Outcome, AttemptError> {
        self.send_request(&mut up, held).await?;
        let read = response::read_final(&self.limits, &mut up.conn, &self.prepared, self.retry_401);
        let head = match read.await {
            Ok(head) => head,
            Err(e) if e.nothing_arrived && e.error.kind().retry_on_fresh_connection() => {
                return Err(AttemptError::BeforeResponse(e.error));
            }
            Err(e) => return Err(e.error.into()),
        };
        let f = match head {
            Head::Final(f) => f,
            Head::Unauthorized => return Err(AttemptError::Unauthorized),
            Head::Upgrade(out) => {
                self.row.status = 101;
                let abort = |_| ExchangeError::Abort;
                self.client.write_all(out).await.map_err(abort)?;
                self.client.flush().await.map_err(abort)?;
                return Ok(Outcome::Upgraded(up.conn, self.prepared.scrub.clone()));
            }
        };
        self.row.status = f.status;
        let (limits, scrub) = (&self.limits, self.prepared.scrub);
        Ok(response::relay(limits, self.client, up, &self.key, f, scrub, self.row).await?)
    }

    /// Writes the head (then zeroizes it) and the body: held, small enough to go in the head's
    /// write, or streamed from the client.
    async fn send_request(
        &mut self,
        up: &mut Upstream,
        held: Option<&[u8]>,
    ) -> Result<(), AttemptError> {
        let unreachable = |what: &str, e: std::io::Error| {
            ProxyError::new(ErrorKind::UpstreamUnreachable, format!("{what}: {e}"))
        };
        let mut framing = self.prepared.framing;
        let mut first = self.prepared.head.clone();
        if let Some(body) = held {
            first.extend_from_slice(body);
            framing = Framing::Empty;
        } else if let Framing::Length(n) = framing
            && n <= COALESCE_MAX
            && n as usize <= self.client.buffered().len()
        {
            // A small body that arrived with the head goes upstream in the same write.
            first.extend_from_slice(&self.client.buffered()[..n as usize]);
            self.client.consume(n as usize);
            framing = Framing::Empty;
        }
        write_secret(&mut up.conn, first)
            .await
            .map_err(|e| AttemptError::BeforeResponse(unreachable("writing to the upstream", e)))?;
        if self.prepared.expect_continue && framing != Framing::Empty {
            self.continue_100().await?;
        }
        let opts = body::Opts {
            output: body::output_for(framing),
            cap: self.limits.body_cap,
            read_timeout: self.limits.idle_timeout,
        };
        match body::relay(self.client, &mut up.conn, framing, opts, None).await {
            Ok(_) => {}
            Err(RelayError::Framing(e)) => return Err(ProxyError::from(e).into()),
            Err(RelayError::Write(e)) => return Err(unreachable("sending the body", e).into()),
            Err(RelayError::Read(_) | RelayError::Truncated) => {
                return Err(ExchangeError::Abort.into());
            }
        }
        up.conn
            .flush()
            .await
            .map_err(|e| AttemptError::BeforeResponse(unreachable("flushing", e)))
    }
}

/// Writes a head that may hold injected values, then zeroizes the buffer.
/// What decided a verdict, for its refusal's message: a rule, or the service's `rules_default`.
fn decided_by(verdict: &Verdict<'_>, service: &str) -> String {
    verdict.name().map_or_else(
        || format!("service {service}'s rules_default"),
        |r| format!("rule {r} of service {service}"),
    )
}

/// The hint of a refusal by the rules: the rule's own, else where the rules are listed.
fn rule_hint(verdict: &Verdict<'_>, api_base: &str) -> String {
    verdict
        .rule
        .map(|r| r.spec.hint.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("the rules are listed at {api_base}/v1/discover"))
}

/// How `req`'s body is read for `service`'s body substitutions, if it declares any.
fn body_kind(req: &Request, service: &Service) -> Option<body_substitution::Kind> {
    body_substitution::declared(service).next()?;
    let header = |name| req.one(name).ok().flatten();
    body_substitution::Kind::of(header("content-type"), header("content-encoding"))
}

async fn write_secret<S: AsyncWriteRent>(
    conn: &mut BufConn<S>,
    mut head: Zeroizing<Vec<u8>>,
) -> std::io::Result<()> {
    let (res, mut buf) = conn.io.write_all(std::mem::take(&mut *head)).await;
    buf.zeroize();
    res.map(|_| ())
}
