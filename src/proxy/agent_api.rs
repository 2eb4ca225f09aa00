//! The agent API on the proxy port (origin-form requests), in the wire format the agent guide
//! (`guide.md`) describes:
//! `/healthz`, `/v1/ca.pem`, `/v1/guide` and `/v1/catalog` (the service templates) need no token; `/v1/discover`, `/v1/proposals` and
//! `/v1/tokens` take `Authorization: Bearer <token>` (or `Proxy-Authorization`), with
//! `x-airlock-vault` naming the vault for agents granted several. Bodies are JSON with a
//! Content-Length of at most [`MAX_BODY`]. Nothing here ever returns a credential value.

use std::net::IpAddr;
use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use serde_json::{Value, json};

use super::Shared;
use super::auth::{self, Identity};
use super::error::{ErrorKind, ProxyError};
use super::outcome::{ExchangeError, Outcome};
use super::request::Request;
use crate::http::head::Framing;
use crate::http::io::BufConn;
use crate::spec::RuleSpec;
use crate::vault::now;
use crate::vault::records::{ProposalRecord, ProposalStatus, ServiceChange};
use crate::vault::tokens::TokenKind;

/// Largest request body accepted on the agent API.
pub const MAX_BODY: u64 = 64 * 1024;
/// The agent guide served at `/v1/guide`.
pub const GUIDE: &str = include_str!("guide.md");

/// A parsed agent API request, detached from the read buffer.
struct ApiRequest {
    method: String,
    path: String,
    auth: Option<Vec<u8>>,
    vault_hint: Option<String>,
    close: bool,
    body: Vec<u8>,
}

/// Answers one agent-API request.
pub(super) async fn handle<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Arc<Shared>,
    client: &mut BufConn<C>,
    r: &Request,
    peer: IpAddr,
) -> Result<Outcome, ExchangeError> {
    let auth = r
        .one("authorization")?
        .or(r.one("proxy-authorization")?)
        .map(<[u8]>::to_vec);
    let hint = r
        .one("x-airlock-vault")?
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned);
    let mut req = ApiRequest {
        method: r.method().to_owned(),
        path: r.path().to_owned(),
        auth,
        vault_hint: hint,
        close: r.wants_close(),
        body: Vec::new(),
    };
    req.body = read_body(shared, client, r).await?;
    let close = req.close;
    let (status, content_type, body) = route(shared, req, peer).await?;
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        super::error::reason_phrase(status),
        body.len()
    )
    .into_bytes();
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    client
        .write_all(out)
        .await
        .map_err(|_| ExchangeError::Abort)?;
    client.flush().await.map_err(|_| ExchangeError::Abort)?;
    Ok(Outcome::after(close))
}

/// An agent-API request's body: empty, or a `Content-Length` of at most [`MAX_BODY`] (411 for
/// another framing, 413 over it).
async fn read_body<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Shared,
    client: &mut BufConn<C>,
    r: &Request,
) -> Result<Vec<u8>, ExchangeError> {
    let len = match r.framing()? {
        Framing::Empty => return Ok(Vec::new()),
        Framing::Length(len) if len <= MAX_BODY => len as usize,
        Framing::Length(_) => return Err(crate::http::HttpError::BodyTooLarge(MAX_BODY).into()),
        _ => {
            let m = "send the body with a Content-Length";
            return Err(ProxyError::new(ErrorKind::LengthRequired, m).into());
        }
    };
    while client.buffered().len() < len {
        let read = monoio::time::timeout(shared.limits().header_timeout, client.fill()).await;
        if !matches!(read, Ok(Ok(k)) if k > 0) {
            return Err(ExchangeError::Abort);
        }
    }
    let body = client.buffered()[..len].to_vec();
    client.consume(len);
    Ok(body)
}

type Reply = (u16, &'static str, Vec<u8>);

fn json_reply(status: u16, v: Value) -> Result<Reply, ProxyError> {
    Ok((status, "application/json", v.to_string().into_bytes()))
}

/// Answers `req`: the endpoints that need no token at once; the others after authentication,
/// writes (proposals, token mints, revocations: durable commits, and PostgreSQL round trips in
/// fleet mode) on the blocking pool, never on the worker.
async fn route(shared: &Arc<Shared>, req: ApiRequest, peer: IpAddr) -> Result<Reply, ProxyError> {
    if let Some(reply) = public(shared, &req) {
        return reply;
    }
    // Row 51: the agent API's bearer checks count towards the same per-address limit.
    let id = authenticate(shared, &req)
        .await
        .map_err(|e| shared.limiters.auth_failures.refuse(peer, e))?;
    if req.method == "GET" {
        return authed(shared, &id, &req);
    }
    let s = shared.clone();
    monoio::spawn_blocking(move || authed(&s, &id, &req))
        .await
        .unwrap_or_else(|_| {
            Err(ProxyError::new(
                ErrorKind::Overloaded,
                "the write did not run",
            ))
        })
}

fn public(shared: &Shared, req: &ApiRequest) -> Option<Result<Reply, ProxyError>> {
    Some(match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz") => health(shared),
        ("GET", "/v1/ca.pem") => Ok((
            200,
            "application/x-pem-file",
            shared.ca_pem.as_bytes().to_vec(),
        )),
        ("GET", "/v1/guide") => Ok((
            200,
            "text/markdown; charset=utf-8",
            GUIDE.as_bytes().to_vec(),
        )),
        ("GET", "/v1/catalog") => {
            let entries: Vec<_> = crate::catalog::TEMPLATES
                .iter()
                .map(|t| t.describe())
                .collect();
            json_reply(200, json!(entries))
        }
        _ => return None,
    })
}

/// `{"status": "ok", "generation": N}` (the vault generation the workers' policy was compiled
/// from: a change is served once it reaches the store's); in fleet mode also the node, its
/// applied position and how long ago it last heard from the store, and 503 `stale` once `fleet_max_staleness` passed (a balancer's
/// health check then sends agents elsewhere). A node that refuses a change of the log answers
/// 200 `degraded` with the reason: it still serves what it had, and a forged row that every
/// node refuses must not take the whole fleet out of the balancer.
fn health(shared: &Shared) -> Result<Reply, ProxyError> {
    let generation = shared.policy().generation;
    let Some(fleet) = &shared.fleet else {
        return json_reply(200, json!({"status": "ok", "generation": generation}));
    };
    let stale = fleet.stale();
    let problem = fleet.problem();
    let status = match (stale, &problem) {
        (true, _) => "stale",
        (false, Some(_)) => "degraded",
        (false, None) => "ok",
    };
    json_reply(
        if stale { 503 } else { 200 },
        json!({
            "status": status,
            "generation": generation,
            "fleet": {
                "node": fleet.node,
                "applied_seq": generation,
                "store_contact_age_secs": fleet.contact_age().as_secs_f64(),
                "live_nodes": shared.limiters.agents.share(),
                "problem": problem,
            },
        }),
    )
}

fn authed(shared: &Shared, id: &Identity, req: &ApiRequest) -> Result<Reply, ProxyError> {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/discover") => discover(shared, id),
        ("POST", "/v1/proposals") => propose(shared, id, &req.body),
        ("GET", p) if p.starts_with("/v1/proposals/") => {
            proposal_status(shared, id, &p["/v1/proposals/".len()..])
        }
        ("POST", "/v1/tokens") => mint(shared, id, &req.body),
        ("DELETE", "/v1/tokens/self") => {
            shared
                .store
                .revoke_token(&actor(id), id.token)
                .map_err(ProxyError::from)?;
            Ok((204, "application/json", Vec::new()))
        }
        (m, p) => Err(ProxyError::new(
            ErrorKind::NotFound,
            format!("no agent API endpoint {m} {p}"),
        )
        .hint("see GET /v1/guide")),
    }
}

async fn authenticate(shared: &Arc<Shared>, req: &ApiRequest) -> Result<Identity, ProxyError> {
    let hint = req.vault_hint.as_deref();
    let checked = auth::authenticate_first(shared, req.auth.as_deref(), hint).await;
    checked.map_err(ProxyError::as_api_auth)
}

fn actor(id: &Identity) -> String {
    id.agent
        .as_ref()
        .map_or_else(|| "agent".to_owned(), |a| format!("agent:{a}"))
}

fn discover(shared: &Shared, id: &Identity) -> Result<Reply, ProxyError> {
    let services: Vec<Value> = shared
        .store
        .services(&id.vault)
        .map_err(ProxyError::from)?
        .into_iter()
        .filter(|s| s.spec.enabled)
        .map(|s| {
            let mut entry =
                json!({"name": s.spec.name, "host": s.spec.host, "auth": s.spec.auth_type()});
            // The rules that apply to this agent, so a well-behaved agent does not try.
            let mine = |r: &&RuleSpec| {
                r.agents.is_empty() || id.agent.as_ref().is_some_and(|a| r.agents.contains(a))
            };
            let rules: Vec<&RuleSpec> = s.spec.rules.iter().filter(mine).collect();
            if !rules.is_empty() || s.spec.rules_default.is_some() {
                entry["rules"] = json!(rules);
                entry["rules_default"] = json!(s.spec.rules_default());
            }
            entry
        })
        .collect();
    let credentials: Vec<String> = shared
        .store
        .credentials(&id.vault)
        .map_err(ProxyError::from)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    json_reply(
        200,
        json!({"vault": id.vault, "services": services, "credentials": credentials}),
    )
}

fn propose(shared: &Shared, id: &Identity, body: &[u8]) -> Result<Reply, ProxyError> {
    let new = serde_json::from_slice(body)
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest, format!("proposal: {e}")))?;
    let p = shared
        .store
        .create_proposal(&id.vault, id.agent.as_deref(), new)
        .map_err(ProxyError::from)?;
    json_reply(201, proposal_json(shared, &p))
}

fn proposal_status(shared: &Shared, id: &Identity, raw: &str) -> Result<Reply, ProxyError> {
    let not_found = || {
        ProxyError::new(
            ErrorKind::NotFound,
            format!("no proposal {raw} in this vault"),
        )
    };
    let pid: u64 = raw.parse().map_err(|_| not_found())?;
    let p = shared.store.proposal(pid).map_err(|_| not_found())?;
    if p.vault != id.vault {
        return Err(not_found());
    }
    json_reply(200, proposal_json(shared, &p))
}

/// The wire form of a proposal. `applied` is reported only once this process serves the change.
fn proposal_json(shared: &Shared, p: &ProposalRecord) -> Value {
    let mut status = p.status_at(now());
    if status == ProposalStatus::Applied
        && p.applied_generation
            .is_some_and(|g| g > shared.policy().generation)
    {
        status = ProposalStatus::Pending;
    }
    let services: Vec<Value> = p
        .services
        .iter()
        .map(|c| match c {
            ServiceChange::Set(s) => json!({"action": "set", "name": s.name, "host": s.host}),
            ServiceChange::Delete { name } => json!({"action": "delete", "name": name}),
        })
        .collect();
    let credentials: Vec<&str> = p.credentials.iter().map(|c| c.key.as_str()).collect();
    json!({
        "id": p.id,
        "status": status,
        "vault": p.vault,
        "reason": p.reason,
        "services": services,
        "credentials": credentials,
        "created_at": crate::vault::rfc3339(p.created_at),
        "expires_at": crate::vault::rfc3339(p.expires_at),
        "approval_url": shared.approval_url(p.id),
        "approve_with": format!("airlock proposal approve {}", p.id),
    })
}

fn mint(shared: &Shared, id: &Identity, body: &[u8]) -> Result<Reply, ProxyError> {
    if id.kind != TokenKind::Agent {
        return Err(ProxyError::new(
            ErrorKind::Forbidden,
            "only an agent token can mint scoped tokens",
        ));
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Mint {
        #[serde(default = "hour")]
        ttl_seconds: u64,
    }
    fn hour() -> u64 {
        3600
    }
    let m: Mint = if body.is_empty() {
        Mint { ttl_seconds: 3600 }
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?
    };
    if !shared.limiters.token_mints.try_take(&id.limit_key) {
        return Err(ProxyError::new(
            ErrorKind::RateLimited,
            "too many token mints for this agent; retry shortly",
        ));
    }
    let ttl = std::time::Duration::from_secs(m.ttl_seconds);
    let (minted, expires_at) = shared
        .store
        .mint_token(&actor(id), &id.vault, ttl, id.agent.as_deref())
        .map_err(ProxyError::from)?;
    let token = String::from_utf8_lossy(minted.token.expose()).into_owned();
    json_reply(
        201,
        json!({"token": token, "vault": id.vault, "expires_at": crate::vault::rfc3339(expires_at)}),
    )
}
