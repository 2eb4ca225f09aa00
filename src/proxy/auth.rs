//! Proxy authentication: `Proxy-Authorization: Basic base64(token:vault)` or `Bearer token`
//! (also `Authorization: Bearer` on the agent API). Tokens are checked against the store on every
//! request, by their SHA-256, so a revoked or expired token fails at once, also inside an open
//! tunnel (row 52). The token text is never kept or logged; only its hash is.

use super::error::{ErrorKind, ProxyError};
use crate::vault::records::TokenRecord;
use crate::vault::tokens::{self, TokenHash, TokenKind};
use crate::vault::{Store, now};

/// Who is making requests on a connection.
#[derive(Clone, Debug)]
pub struct Identity {
    pub token: TokenHash,
    pub agent: Option<String>,
    pub vault: String,
    pub expires_at: Option<u64>,
    pub kind: TokenKind,
    /// Who the request log names: the agent, or for a scoped token of no agent, who minted it.
    pub who: Option<String>,
    /// What the per-agent limits are keyed by: the agent (so scoped tokens it minted share its
    /// budget, review B11), or the token itself when it belongs to no agent.
    pub limit_key: TokenHash,
}

fn required(message: &str) -> ProxyError {
    ProxyError::new(ErrorKind::ProxyAuthRequired, message).hint(
        "set HTTPS_PROXY=http://<token>:<vault>@host:port, or run the agent with `airlock run`",
    )
}

/// Parses an authorization header value into (token, requested vault).
fn credentials(value: &[u8]) -> Result<(Vec<u8>, String), ProxyError> {
    let text = std::str::from_utf8(value).map_err(|_| required("malformed Proxy-Authorization"))?;
    let (scheme, rest) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| required("malformed Proxy-Authorization"))?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok((rest.trim().as_bytes().to_vec(), String::new()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(required("use Basic or Bearer proxy authentication"));
    }
    let decoded = data_encoding::BASE64
        .decode(rest.trim().as_bytes())
        .map_err(|_| required("malformed Basic credentials"))?;
    let decoded = crate::secret::Secret::new(decoded);
    let text = std::str::from_utf8(decoded.expose())
        .map_err(|_| required("malformed Basic credentials"))?;
    let (token, vault) = text.split_once(':').unwrap_or((text, ""));
    Ok((token.as_bytes().to_vec(), vault.to_owned()))
}

/// Authenticates the first request of a connection. `vault_hint` (`x-airlock-vault` on the
/// agent API) names the vault when the header does not.
pub fn authenticate(
    store: &Store,
    header: Option<&[u8]>,
    vault_hint: Option<&str>,
) -> Result<Identity, ProxyError> {
    let value = header.ok_or_else(|| required("proxy authentication is required"))?;
    let (token, mut requested) = credentials(value)?;
    if requested.is_empty() {
        requested = vault_hint.unwrap_or_default().to_owned();
    }
    let token = crate::secret::Secret::new(token);
    if tokens::parse(token.expose()).is_none() {
        return Err(ProxyError::new(
            ErrorKind::InvalidToken,
            "the token is not an airlock token",
        ));
    }
    let hash = TokenHash::of(token.expose());
    let (vault, record) = resolve_vault(store, hash, &requested, ErrorKind::InvalidToken)?;
    let limit_key = record
        .agent
        .as_ref()
        .map_or(hash, |a| TokenHash::of(format!("agent:{a}").as_bytes()));
    Ok(Identity {
        token: hash,
        who: record.agent.clone().or(record.label),
        agent: record.agent,
        vault,
        expires_at: record.expires_at,
        kind: record.kind,
        limit_key,
    })
}

/// As [`authenticate`], for the first request of a connection. In fleet mode a token this node
/// does not know makes it catch up with the fleet first (off the worker, at most every 50 ms:
/// [`super::Shared::fleet_catch_up`]), so a token minted on another node a moment ago works here.
pub async fn authenticate_first(
    shared: &std::sync::Arc<super::Shared>,
    header: Option<&[u8]>,
    vault_hint: Option<&str>,
) -> Result<Identity, ProxyError> {
    let first = authenticate(&shared.store, header, vault_hint);
    if first.is_ok() || shared.fleet.is_none() || !unknown_token(&shared.store, header) {
        return first;
    }
    let s = shared.clone();
    match monoio::spawn_blocking(move || s.fleet_catch_up()).await {
        Ok(true) => authenticate(&shared.store, header, vault_hint),
        _ => first,
    }
}

/// Whether `header` carries a well-formed airlock token this node has no record of.
fn unknown_token(store: &Store, header: Option<&[u8]>) -> bool {
    let Some(Ok((token, _))) = header.map(credentials) else {
        return false;
    };
    let token = crate::secret::Secret::new(token);
    tokens::parse(token.expose()).is_some()
        && matches!(store.token_by_hash(TokenHash::of(token.expose())), Ok(None))
}

/// Re-checks a connection's token before each request (revocation and expiry).
pub fn recheck(store: &Store, id: &Identity) -> Result<(), ProxyError> {
    resolve_vault(store, id.token, &id.vault, ErrorKind::TokenRevoked).map(|_| ())
}

/// Per-connection memo of the last successful check: a full re-check runs only when anything
/// was committed to the store since (every revocation is a commit) or the token's expiry passed,
/// so revocation is still seen on the very next request. An unchanged store answers from its
/// meta page ([`Store::last_commit`]): no read transaction, so no lock and no shared write per
/// request.
#[derive(Debug, Default)]
pub struct Checked(Option<u64>);

impl Checked {
    pub fn recheck(&mut self, store: &Store, id: &Identity) -> Result<(), ProxyError> {
        let expired = id.expires_at.is_some_and(|e| e <= now());
        // Read before the check, so a commit that lands during it moves the id again.
        let commit = store.last_commit().ok();
        if expired || commit.is_none() || commit != self.0 {
            self.0 = None;
            recheck(store, id)?;
            self.0 = commit;
        }
        Ok(())
    }
}

fn resolve_vault(
    store: &Store,
    hash: TokenHash,
    requested: &str,
    missing: ErrorKind,
) -> Result<(String, TokenRecord), ProxyError> {
    let internal =
        |_| ProxyError::new(ErrorKind::StorageUnavailable, "the vault could not be read");
    let record = store
        .token_by_hash(hash)
        .map_err(internal)?
        .ok_or_else(|| ProxyError::new(missing, "the token is unknown or was revoked"))?;
    if record.expires_at.is_some_and(|e| e <= now()) {
        return Err(ProxyError::new(
            ErrorKind::TokenExpired,
            "the token has expired; mint a new one",
        ));
    }
    let vault = match record.kind {
        TokenKind::Scoped => {
            let vault = record.vault.clone().unwrap_or_default();
            if !requested.is_empty() && requested != vault {
                let m = format!("this token is bound to vault {vault:?}");
                return Err(ProxyError::new(ErrorKind::VaultMismatch, m));
            }
            vault
        }
        TokenKind::Agent => {
            let name = record.agent.clone().unwrap_or_default();
            let agent = store
                .agent(&name)
                .map_err(|_| ProxyError::new(missing, "the agent no longer exists"))?;
            if agent.revoked_at.is_some() {
                return Err(ProxyError::new(
                    ErrorKind::TokenRevoked,
                    "the agent was revoked",
                ));
            }
            match requested {
                "" => agent.vaults.first().cloned().ok_or_else(|| {
                    ProxyError::new(ErrorKind::VaultMismatch, "the agent has no vault")
                })?,
                v if agent.vaults.iter().any(|g| g == v) => v.to_owned(),
                v => {
                    let m = format!("the agent is not granted vault {v:?}");
                    return Err(ProxyError::new(ErrorKind::VaultMismatch, m));
                }
            }
        }
        TokenKind::Approval => {
            let m = "approval tokens cannot be used for proxying";
            return Err(ProxyError::new(ErrorKind::InvalidToken, m));
        }
    };
    Ok((vault, record))
}
