//! Proxy authentication: `Proxy-Authorization: Basic base64(token:vault)` or `Bearer token`
//! (also `Authorization: Bearer` on the agent API). Tokens are checked against the store on every
//! request, by their SHA-256, so a revoked or expired token fails at once, also inside an open
//! tunnel (row 52). The token text is never kept or logged; only its hash is.
//!
//! The checks read the vault only through [`Tokens`] (the store in the product, a table in the
//! unit tests below); only [`authenticate_first`], which may catch up with a fleet, takes the
//! data plane's state.

use super::error::{ErrorKind, ProxyError};
use crate::vault::records::{AgentRecord, TokenRecord};
use crate::vault::tokens::{self, TokenHash, TokenKind};
use crate::vault::{Store, VaultError, now};

/// What the agent checks read of the vault.
pub trait Tokens {
    /// The record of the token whose SHA-256 is `hash`.
    fn token(&self, hash: TokenHash) -> Result<Option<TokenRecord>, VaultError>;
    /// The agent named `name`; `None` when it is gone or cannot be read.
    fn agent(&self, name: &str) -> Option<AgentRecord>;
    /// The id of the newest commit: every revocation moves it ([`Checked`]).
    fn last_commit(&self) -> Option<u64>;
}

impl Tokens for Store {
    fn token(&self, hash: TokenHash) -> Result<Option<TokenRecord>, VaultError> {
        self.token_by_hash(hash)
    }
    fn agent(&self, name: &str) -> Option<AgentRecord> {
        Store::agent(self, name).ok()
    }
    fn last_commit(&self) -> Option<u64> {
        Store::last_commit(self).ok()
    }
}

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
    /// budget, row 77), or the token itself when it belongs to no agent.
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
    store: &impl Tokens,
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
fn unknown_token(store: &impl Tokens, header: Option<&[u8]>) -> bool {
    let Some(Ok((token, _))) = header.map(credentials) else {
        return false;
    };
    let token = crate::secret::Secret::new(token);
    tokens::parse(token.expose()).is_some()
        && matches!(store.token(TokenHash::of(token.expose())), Ok(None))
}

/// Re-checks a connection's token before each request (revocation and expiry).
pub fn recheck(store: &impl Tokens, id: &Identity) -> Result<(), ProxyError> {
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
    pub fn recheck(&mut self, store: &impl Tokens, id: &Identity) -> Result<(), ProxyError> {
        let expired = id.expires_at.is_some_and(|e| e <= now());
        // Read before the check, so a commit that lands during it moves the id again.
        let commit = store.last_commit();
        if expired || commit.is_none() || commit != self.0 {
            self.0 = None;
            recheck(store, id)?;
            self.0 = commit;
        }
        Ok(())
    }
}

fn resolve_vault(
    store: &impl Tokens,
    hash: TokenHash,
    requested: &str,
    missing: ErrorKind,
) -> Result<(String, TokenRecord), ProxyError> {
    let internal =
        |_| ProxyError::new(ErrorKind::StorageUnavailable, "the vault could not be read");
    let record = store
        .token(hash)
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
                .ok_or_else(|| ProxyError::new(missing, "the agent no longer exists"))?;
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

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;

    /// The vault as a table: tokens by hash, agents by name, a commit counter.
    #[derive(Default)]
    struct Table {
        tokens: RefCell<HashMap<TokenHash, TokenRecord>>,
        agents: RefCell<HashMap<String, AgentRecord>>,
        commit: Cell<u64>,
        reads: Cell<u32>,
    }

    impl Tokens for Table {
        fn token(&self, hash: TokenHash) -> Result<Option<TokenRecord>, VaultError> {
            self.reads.set(self.reads.get() + 1);
            Ok(self.tokens.borrow().get(&hash).cloned())
        }
        fn agent(&self, name: &str) -> Option<AgentRecord> {
            self.agents.borrow().get(name).cloned()
        }
        fn last_commit(&self) -> Option<u64> {
            Some(self.commit.get())
        }
    }

    impl Table {
        /// Mints a token of `kind` into the table; its `Proxy-Authorization` value for `vault`.
        fn mint(&self, kind: TokenKind, agent: Option<&str>, vault: Option<&str>) -> String {
            let minted = tokens::mint(kind).unwrap();
            let record = TokenRecord {
                kind,
                agent: agent.map(str::to_owned),
                vault: vault.map(str::to_owned),
                created_at: 0,
                expires_at: None,
                label: Some("airlock run".into()),
            };
            self.tokens.borrow_mut().insert(minted.hash, record);
            let text = std::str::from_utf8(minted.token.expose()).unwrap();
            format!("Bearer {text}")
        }

        fn agent_with(&self, name: &str, vaults: &[&str]) {
            let record = AgentRecord {
                name: name.into(),
                vaults: vaults.iter().map(|v| (*v).to_owned()).collect(),
                token_hash: String::new(),
                created_at: 0,
                rotated_at: None,
                revoked_at: None,
            };
            self.agents.borrow_mut().insert(name.into(), record);
        }
    }

    fn code(r: Result<Identity, ProxyError>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|e| e.code())
    }

    fn basic(token_header: &str, vault: &str) -> String {
        let token = token_header.strip_prefix("Bearer ").unwrap();
        let pair = format!("{token}:{vault}");
        format!("Basic {}", data_encoding::BASE64.encode(pair.as_bytes()))
    }

    /// An agent token names the agent's first vault by default, another granted vault when asked,
    /// and is refused for a vault it was not granted, once the agent is revoked, and when the agent
    /// is gone. Scoped tokens keep to their vault; approval tokens never proxy; a string that is no
    /// airlock token is refused before any lookup.
    #[test]
    fn tokens_are_checked_against_what_the_vault_says() {
        let t = Table::default();
        t.agent_with("ci", &["default", "infra"]);
        let agent = t.mint(TokenKind::Agent, Some("ci"), None);
        let id = authenticate(&t, Some(agent.as_bytes()), None).unwrap();
        assert_eq!(
            (id.vault.as_str(), id.who.as_deref()),
            ("default", Some("ci"))
        );
        assert_eq!(
            id.limit_key,
            TokenHash::of(b"agent:ci"),
            "shared by its tokens"
        );
        let infra = authenticate(&t, Some(basic(&agent, "infra").as_bytes()), None);
        assert_eq!(infra.unwrap().vault, "infra");
        let hinted = authenticate(&t, Some(agent.as_bytes()), Some("infra"));
        assert_eq!(hinted.unwrap().vault, "infra");
        let other = authenticate(&t, Some(basic(&agent, "prod").as_bytes()), None);
        assert_eq!(code(other), "vault_mismatch");

        let scoped = t.mint(TokenKind::Scoped, None, Some("infra"));
        let id = authenticate(&t, Some(scoped.as_bytes()), None).unwrap();
        assert_eq!(
            (id.vault.as_str(), id.who.as_deref()),
            ("infra", Some("airlock run"))
        );
        let elsewhere = authenticate(&t, Some(basic(&scoped, "default").as_bytes()), None);
        assert_eq!(code(elsewhere), "vault_mismatch");

        let approval = t.mint(TokenKind::Approval, None, None);
        assert_eq!(
            code(authenticate(&t, Some(approval.as_bytes()), None)),
            "invalid_token"
        );
        let reads = t.reads.get();
        let junk = authenticate(&t, Some(b"Bearer sk-not-airlock"), None);
        assert_eq!((code(junk), t.reads.get()), ("invalid_token", reads));
        assert_eq!(code(authenticate(&t, None, None)), "proxy_auth_required");
        let scheme = authenticate(&t, Some(b"Digest abc"), None);
        assert_eq!(code(scheme), "proxy_auth_required");

        t.agents.borrow_mut().get_mut("ci").unwrap().revoked_at = Some(1);
        assert_eq!(
            code(authenticate(&t, Some(agent.as_bytes()), None)),
            "token_revoked"
        );
        t.agents.borrow_mut().clear();
        assert_eq!(
            code(authenticate(&t, Some(agent.as_bytes()), None)),
            "invalid_token"
        );
    }

    /// Row 52's memo: an unchanged store answers without reading the token again; any commit,
    /// or the token's expiry passing, makes the next request check in full, and an expiry or a
    /// revocation is seen there (`token_revoked`, not the first request's `invalid_token`).
    #[test]
    fn rechecks_read_the_vault_only_after_a_commit_or_expiry() {
        let t = Table::default();
        let scoped = t.mint(TokenKind::Scoped, None, Some("default"));
        let mut id = authenticate(&t, Some(scoped.as_bytes()), None).unwrap();
        let mut checked = Checked::default();
        checked.recheck(&t, &id).unwrap();
        let reads = t.reads.get();
        checked.recheck(&t, &id).unwrap();
        assert_eq!(t.reads.get(), reads, "nothing committed: no read");
        t.commit.set(1);
        checked.recheck(&t, &id).unwrap();
        assert_eq!(t.reads.get(), reads + 1, "a commit: read again");
        // The token expires with no commit: the memo does not hide it.
        let past = Some(now() - 1);
        id.expires_at = past;
        t.tokens
            .borrow_mut()
            .values_mut()
            .for_each(|r| r.expires_at = past);
        let expired = checked.recheck(&t, &id).map(|()| id.clone());
        assert_eq!(code(expired), "token_expired");
        id.expires_at = None;
        t.tokens.borrow_mut().clear();
        t.commit.set(2);
        let revoked = checked.recheck(&t, &id).map(|()| id.clone());
        assert_eq!(code(revoked), "token_revoked");
    }
}
