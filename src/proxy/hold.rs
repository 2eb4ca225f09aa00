//! The hold step: a request a `hold` rule stopped (its body already read, at most
//! [`WHOLE_BODY_MAX`](crate::http::body::WHOLE_BODY_MAX)) is stored as a held-request proposal off the worker thread, then waits while
//! an operator is asked (admin UI, CLI, webhook). Approved: the exchange forwards it with the
//! credential; rejected or past `hold_timeout`: `403 hold_rejected` / `403 hold_timed_out`, and
//! nothing goes upstream. An agent that hangs up while its request waits withdraws it: the proposal
//! is rejected with the reason, and an approval cannot send it. The wait reads the proposal's
//! status from LMDB (a read, no lock) every [`POLL`]; it holds no state another request touches.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use super::error::{ErrorKind, ProxyError};
use super::inject::Prepared;
use super::outcome::ExchangeError;
use super::peer::Peer;
use super::request::Request;
use super::upstream::Target;
use crate::text::inert;
use crate::vault::records::{HeldRequest, ProposalStatus};
use crate::vault::{Store, VaultError};

/// How often a held request looks for the operator's answer.
const POLL: Duration = Duration::from_millis(200);
/// How long past its expiry a held request still looks for an approval (a fleet's approval
/// may take a moment to reach this node).
const GRACE_SECS: u64 = 1;
/// The reason a held request whose agent hung up is rejected with.
const WITHDRAWN: &str = "the agent disconnected; the request was not sent";

/// This run's name for its held requests.
pub fn node_id(node: &str) -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{node}/{}-{started}", std::process::id())
}

/// Rejects the held requests of this node's earlier runs: their agents are gone.
pub fn reject_stale(shared: &Shared) {
    let prefix = shared.hold_node.split('/').next().unwrap_or_default();
    match shared
        .store
        .reject_held(&format!("{prefix}/"), &shared.hold_node)
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, "rejected requests held before this start"),
        Err(e) => tracing::warn!("rejecting requests held before this start failed: {e}"),
    }
}

/// What the operator is shown of a request to be held: never a header or query value.
pub(super) fn describe(
    req: &Request,
    target: &Target,
    prepared: &Prepared<'_>,
    body: &[u8],
    shared: &Shared,
) -> HeldRequest {
    let t = req.target();
    // An absolute-form target (plain HTTP) is cut to its path.
    let path_and_query = match t.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => t,
    };
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, ""), |(p, q)| (p, q));
    let content_type = req
        .headers()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .unwrap_or_default();
    let mut header_names: Vec<String> = req
        .headers()
        .map(|h| h.name.to_ascii_lowercase())
        .filter(|n| n != "proxy-authorization")
        .collect();
    header_names.dedup();
    let mut preview = crate::vault::holds::preview(body, &content_type).into_bytes();
    // The agent holds no secret, but a response may have echoed one into its context.
    prepared.scrub.mask(&mut preview);
    HeldRequest {
        service: prepared.service.name.clone(),
        rule: prepared.verdict.name().map(str::to_owned),
        method: req.method().to_owned(),
        host: super::inject::host_header(target),
        // The agent chose these: shown decoded, as the upstream reads them, and inert (bidi and
        // control characters escaped; row 110).
        path: inert(path),
        query_keys: query
            .split(['&', ';'])
            .filter_map(|p| p.split('=').next())
            .filter(|k| !k.is_empty())
            .map(|k| inert(&crate::rules::decode_component(k)))
            .collect(),
        header_names,
        body_bytes: body.len() as u64,
        body_preview: String::from_utf8_lossy(&preview).into_owned(),
        node: shared.hold_node.clone(),
    }
}

/// Asks for `held` and waits for the answer: `Ok` once approved. When the agent hangs up
/// (`peer`) first, the request is withdrawn (rejected on airlock's behalf, so the operator sees
/// why) and nothing is sent, whatever the answer.
pub(super) async fn wait(
    shared: &Arc<Shared>,
    vault: &str,
    agent: Option<&str>,
    held: HeldRequest,
    peer: &Peer,
) -> Result<(), ExchangeError> {
    let ttl = shared.holds().timeout.as_secs().max(1);
    let (v, a) = (vault.to_owned(), agent.map(str::to_owned));
    let created = off_worker(shared, move |store| {
        store.create_hold(&v, a.as_deref(), held, ttl)
    })
    .await;
    let record = created.map_err(|e| match e {
        VaultError::TooManyPending { max, .. } => ProxyError::new(
            ErrorKind::TooManyHolds,
            format!("{max} requests of this vault already wait for an operator"),
        ),
        e => ProxyError::new(
            ErrorKind::StorageUnavailable,
            format!("holding the request: {e}"),
        ),
    })?;
    let id = record.id;
    tracing::info!(id, vault, "a request waits for an operator");
    let asked = shared
        .approval_url(id)
        .unwrap_or_else(|| format!("proposal {id}"));
    loop {
        monoio::time::sleep(POLL).await;
        if peer.gone() {
            withdraw(shared, id).await;
            return Err(ExchangeError::Abort);
        }
        let p = shared.store.proposal(id).map_err(|e| {
            ProxyError::new(
                ErrorKind::StorageUnavailable,
                format!("reading the hold: {e}"),
            )
        })?;
        match p.status {
            ProposalStatus::Applied => return Ok(()),
            ProposalStatus::Rejected => {
                let why = p.reason.map(|r| format!(": {r}")).unwrap_or_default();
                let m = format!("an operator rejected this request ({asked}){why}");
                return Err(ProxyError::new(ErrorKind::HoldRejected, m).into());
            }
            _ if crate::vault::now() >= p.expires_at + GRACE_SECS => {
                let m = format!("no operator answered within {ttl} s ({asked})");
                return Err(ProxyError::new(ErrorKind::HoldTimedOut, m)
                    .hint("ask the user to approve it, then send the request again")
                    .into());
            }
            _ => {}
        }
    }
}

/// Rejects held request `id` on airlock's behalf: its agent hung up while it waited. An answer
/// that came first (the operator's) stands; the request is not sent either way.
async fn withdraw(shared: &Arc<Shared>, id: u64) {
    let done = off_worker(shared, move |store| {
        store.reject_proposal("airlock", id, WITHDRAWN, None)
    })
    .await;
    match done {
        Ok(_) => tracing::info!(id, "the agent hung up; its held request is withdrawn"),
        Err(e) => tracing::info!(id, "the agent hung up; its held request was not sent ({e})"),
    }
}

/// Runs a store write on the blocking pool, not on the worker (a durable commit).
async fn off_worker<T: Send + 'static>(
    shared: &Arc<Shared>,
    write: impl FnOnce(&Store) -> Result<T, VaultError> + Send + 'static,
) -> Result<T, VaultError> {
    let s = shared.clone();
    monoio::spawn_blocking(move || write(&s.store))
        .await
        .unwrap_or_else(|_| Err(VaultError::Invalid("the write did not run".into())))
}
