//! Management operations on the store. Each public method is one transaction: it validates,
//! writes, appends an audit record naming the actor (never a value) and bumps the generation, or
//! changes nothing at all.
//!
//! This module seals with the public key only; it cannot open credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lmdb::Transaction;

use super::records::{
    AgentRecord, AuditRecord, CredentialRecord, KeyHeader, ServiceRecord, TokenRecord,
    UnmatchedPolicy, VaultRecord,
};
use super::seal::{self, Opener, SealContext};
use super::store::{Store, StoreError, Txn};
use super::tokens::{self, Minted, TokenHash, TokenKind};
use super::{VaultError, now};
use crate::names;
use crate::secret::Secret;
use crate::spec::{self, HostName, HostPattern, PathPattern, Scheme, ServiceSpec};

/// Meta key of the [`KeyHeader`].
pub const META_KEYS: &[u8] = b"keys";
/// Record kind bound into a credential's associated data.
pub const CREDENTIAL_KIND: &str = "credential";
/// Live scoped tokens one agent may hold (row 74: an agent minting in a loop filled the map).
pub const MAX_SCOPED_PER_AGENT: usize = 100;
/// Scoped-token lifetimes accepted by [`Store::mint_token`].
pub const TOKEN_TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(30 * 24 * 3600);

/// Key of a per-vault record: vault id (8 bytes, big endian) then the name.
pub fn vault_key(vault_id: u64, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&vault_id.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

fn name_from_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key.get(8..).unwrap_or_default()).into_owned()
}

pub(crate) fn find_vault<T: Transaction>(
    t: &Txn<T>,
    name: &str,
) -> Result<VaultRecord, VaultError> {
    t.get(t.dbs().vaults, "vaults", name.as_bytes())?
        .ok_or_else(|| VaultError::NotFound {
            kind: "vault",
            name: name.to_owned(),
        })
}

pub(crate) fn vault_services<T: Transaction>(
    t: &Txn<T>,
    vault: &VaultRecord,
) -> Result<Vec<ServiceRecord>, StoreError> {
    Ok(
        t.scan(t.dbs().services, "services", &vault.id.to_be_bytes())?
            .into_iter()
            .map(|(_, r)| r)
            .collect(),
    )
}

/// The keys of the credentials stored in `vault`.
pub(crate) fn vault_credential_keys<T: Transaction>(
    t: &Txn<T>,
    vault: &VaultRecord,
) -> Result<BTreeSet<String>, StoreError> {
    Ok(
        t.scan::<CredentialRecord>(t.dbs().credentials, "credentials", &vault.id.to_be_bytes())?
            .into_iter()
            .map(|(k, _)| name_from_key(&k))
            .collect(),
    )
}

/// Upserts `sets` and removes `deletes` (or, with `replace`, everything not in `sets`) in one
/// transaction: the resulting list must have unique matchers and every credential a written
/// service uses must exist (credentials written earlier in the same transaction count).
pub(crate) fn apply_services(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
    v: &VaultRecord,
    sets: Vec<ServiceSpec>,
    deletes: &[String],
    replace: bool,
) -> Result<ServiceChange, VaultError> {
    let existing: BTreeMap<String, ServiceRecord> = vault_services(t, v)?
        .into_iter()
        .map(|r| (r.spec.name.clone(), r))
        .collect();
    let mut merged: BTreeMap<String, ServiceSpec> = if replace {
        BTreeMap::new()
    } else {
        existing
            .iter()
            .map(|(k, r)| (k.clone(), r.spec.clone()))
            .collect()
    };
    for name in deletes {
        if merged.remove(name).is_none() {
            return Err(VaultError::NotFound {
                kind: "service",
                name: name.clone(),
            });
        }
    }
    for s in &sets {
        merged.insert(s.name.clone(), s.clone());
    }
    let list: Vec<ServiceSpec> = merged.values().cloned().collect();
    spec::check_unique_matchers(&list)?;
    for s in &list {
        for key in s.credential_keys() {
            if t.get_raw(t.dbs().credentials, &vault_key(v.id, key))?
                .is_none()
            {
                return Err(VaultError::MissingCredential {
                    vault: v.name.clone(),
                    service: s.name.clone(),
                    key: key.to_owned(),
                });
            }
        }
    }
    let mut change = ServiceChange::default();
    let at = now();
    for s in sets {
        let created_at = match existing.get(&s.name) {
            Some(old) if old.spec == s => continue,
            Some(old) => {
                change.updated.push(s.name.clone());
                old.created_at
            }
            None => {
                change.added.push(s.name.clone());
                at
            }
        };
        let key = vault_key(v.id, &s.name);
        t.put(
            t.dbs().services,
            &key,
            &ServiceRecord {
                spec: s,
                created_at,
                updated_at: at,
            },
        )?;
    }
    for name in existing.keys().filter(|n| !merged.contains_key(*n)) {
        t.delete(t.dbs().services, &vault_key(v.id, name))?;
        change.removed.push(name.clone());
    }
    Ok(change)
}

/// Checks a credential value (no CR, LF or NUL: row 19) and seals it to the record it will be
/// stored as (vault id, kind, key in the associated data).
pub(crate) fn seal_credential(
    public: &[u8; 32],
    vault_id: u64,
    key: &str,
    value: &[u8],
) -> Result<Vec<u8>, VaultError> {
    crate::secret::check_value(value)
        .map_err(|e| VaultError::Invalid(format!("invalid_credential: {e}")))?;
    Ok(seal::seal(
        public,
        SealContext {
            vault_id,
            kind: CREDENTIAL_KIND,
            name: key,
        },
        value,
    )?)
}

/// Stores sealed bytes as the credential `key`, keeping the creation time of the one it
/// replaces. Returns whether it is new.
pub(crate) fn put_credential(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
    vault_id: u64,
    key: &str,
    sealed: Vec<u8>,
) -> Result<bool, StoreError> {
    let rkey = vault_key(vault_id, key);
    let old: Option<CredentialRecord> = t.get(t.dbs().credentials, "credentials", &rkey)?;
    let at = now();
    let created_at = old.as_ref().map_or(at, |o| o.created_at);
    t.put(
        t.dbs().credentials,
        &rkey,
        &CredentialRecord {
            sealed,
            created_at,
            updated_at: at,
            oauth: None,
        },
    )?;
    Ok(old.is_none())
}

/// An opened credential: the value a service injects (an OAuth credential's access token), the
/// other secrets it holds (refresh token, client secret: masked in responses, never injected),
/// and an OAuth credential's clear settings.
#[derive(Debug)]
pub struct Opened {
    pub value: Secret,
    pub others: Vec<Secret>,
    pub oauth: Option<super::oauth::OAuthMeta>,
}

/// Static credential values opened by one policy compile, for the next to reuse: opening is an
/// X25519 agreement per record (about 0.1 ms), which a vault of 1,000 credentials pays on every
/// write otherwise. Keyed by the SHA-256 of the vault's id, the key and the sealed bytes, so an
/// entry answers only for exactly the record it was opened from; OAuth credentials (whose
/// metadata changes beside the sealed tokens) are not kept.
#[derive(Debug, Default)]
pub struct OpenedCache(std::collections::HashMap<[u8; 32], Secret>);

impl OpenedCache {
    /// How many values it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn cache_key(vault_id: u64, key: &str, sealed: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&vault_id.to_be_bytes());
    ctx.update(&(key.len() as u64).to_be_bytes());
    ctx.update(key.as_bytes());
    ctx.update(sealed);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What [`Store::set_services`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServiceChange {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
}

/// A listed agent: its record, without the token hash.
#[derive(Debug)]
pub struct AgentInfo {
    pub name: String,
    pub vaults: Vec<String>,
    pub created_at: u64,
    pub revoked: bool,
}

impl Store {
    pub fn key_header(&self) -> Result<KeyHeader, VaultError> {
        self.read(|t| t.get(t.dbs().meta, "meta", META_KEYS))?
            .ok_or_else(|| {
                VaultError::Invalid("vault_header_invalid: the key header is missing".into())
            })
    }

    pub fn vault(&self, name: &str) -> Result<VaultRecord, VaultError> {
        self.read(|t| Ok(find_vault(t, name)))?
    }

    pub fn vaults(&self) -> Result<Vec<VaultRecord>, VaultError> {
        Ok(self
            .read(|t| t.scan(t.dbs().vaults, "vaults", b""))?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub fn create_vault(&self, actor: &str, name: &str) -> Result<VaultRecord, VaultError> {
        names::vault(name)?;
        self.write(|t| {
            if t.get_raw(t.dbs().vaults, name.as_bytes())?.is_some() {
                return Err(VaultError::Exists {
                    kind: "vault",
                    name: name.to_owned(),
                });
            }
            let record = VaultRecord {
                id: t.next_id()?,
                name: name.to_owned(),
                policy: UnmatchedPolicy::Deny,
                created_at: now(),
                allow: Vec::new(),
            };
            t.put(t.dbs().vaults, name.as_bytes(), &record)?;
            t.audit(actor, "vault.create", &format!("vault {name}"), "")?;
            Ok(record)
        })
    }

    pub fn set_policy(
        &self,
        actor: &str,
        name: &str,
        policy: UnmatchedPolicy,
    ) -> Result<(), VaultError> {
        self.write(|t| {
            let mut v = find_vault(t, name)?;
            v.policy = policy;
            t.put(t.dbs().vaults, name.as_bytes(), &v)?;
            t.audit(
                actor,
                "vault.policy",
                &format!("vault {name}"),
                &format!("policy={policy:?}").to_lowercase(),
            )?;
            Ok(())
        })
    }

    /// Adds `add` to vault `name`'s egress allowlist and removes `remove`; returns the list.
    /// Entries are hosts or `*.` wildcards with an optional port, never a path; agents' rules
    /// about internal hosts do not apply (the operator writes these).
    pub fn set_allowlist(
        &self,
        actor: &str,
        name: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, VaultError> {
        let add: Vec<String> = add
            .iter()
            .map(|h| allow_entry(h).map(|(entry, _)| entry))
            .collect::<Result<_, _>>()?;
        self.write(|t| {
            let mut v = find_vault(t, name)?;
            v.allow
                .retain(|h| !remove.iter().any(|r| r.eq_ignore_ascii_case(h)));
            for h in add {
                if !v.allow.contains(&h) {
                    v.allow.push(h);
                }
            }
            t.put(t.dbs().vaults, name.as_bytes(), &v)?;
            t.audit(
                actor,
                "vault.allow",
                &format!("vault {name}"),
                &format!("allow={}", v.allow.join(",")),
            )?;
            Ok(v.allow)
        })
    }

    /// The hosts `vault`'s services name (`HostName::covers` says whether one serves a host).
    pub fn service_hosts(&self, vault: &str) -> Result<Vec<HostName>, VaultError> {
        Ok(self
            .services(vault)?
            .into_iter()
            .filter_map(|s| HostPattern::parse(&s.spec.host).ok())
            .map(|p| p.host)
            .collect())
    }

    pub fn services(&self, vault: &str) -> Result<Vec<ServiceRecord>, VaultError> {
        self.read(|t| Ok(find_vault(t, vault).and_then(|v| Ok(vault_services(t, &v)?))))?
    }

    /// Upserts `specs` by name; with `replace`, they become the vault's whole list. Every spec is
    /// validated, the resulting list must have unique matchers, and every referenced credential
    /// must exist.
    pub fn set_services(
        &self,
        actor: &str,
        vault: &str,
        specs: Vec<ServiceSpec>,
        replace: bool,
    ) -> Result<ServiceChange, VaultError> {
        for s in &specs {
            s.validate()?;
        }
        self.write(|t| {
            let v = find_vault(t, vault)?;
            let change = apply_services(t, &v, specs, &[], replace)?;
            let detail = format!(
                "added={:?} updated={:?} removed={:?}",
                change.added, change.updated, change.removed
            );
            t.audit(actor, "service.set", &format!("vault {vault}"), &detail)?;
            Ok(change)
        })
    }

    pub fn remove_service(&self, actor: &str, vault: &str, name: &str) -> Result<(), VaultError> {
        self.write(|t| {
            let v = find_vault(t, vault)?;
            if !t.delete(t.dbs().services, &vault_key(v.id, name))? {
                return Err(VaultError::NotFound {
                    kind: "service",
                    name: name.to_owned(),
                });
            }
            t.audit(
                actor,
                "service.remove",
                &format!("service {vault}/{name}"),
                "",
            )
            .map_err(VaultError::from)
        })
    }

    /// Seals `value` to the vault's public key and stores it. Returns whether it was new.
    pub fn set_credential(
        &self,
        actor: &str,
        vault: &str,
        key: &str,
        value: &Secret,
    ) -> Result<bool, VaultError> {
        names::credential_key(key)?;
        let public = public_key(&self.key_header()?)?;
        self.write(|t| {
            let v = find_vault(t, vault)?;
            let sealed = seal_credential(&public, v.id, key, value.expose())?;
            let new = put_credential(t, v.id, key, sealed)?;
            let action = if new {
                "credential.set"
            } else {
                "credential.replace"
            };
            t.audit(actor, action, &format!("credential {vault}/{key}"), "")?;
            Ok(new)
        })
    }

    /// Credential names and dates (never values).
    pub fn credentials(&self, vault: &str) -> Result<Vec<(String, CredentialRecord)>, VaultError> {
        self.read(|t| {
            Ok(find_vault(t, vault).and_then(|v| {
                Ok(t.scan::<CredentialRecord>(
                    t.dbs().credentials,
                    "credentials",
                    &v.id.to_be_bytes(),
                )?
                .into_iter()
                .map(|(k, r)| (name_from_key(&k), r))
                .collect())
            }))
        })?
    }

    pub fn delete_credential(&self, actor: &str, vault: &str, key: &str) -> Result<(), VaultError> {
        // Deleting frees space: allowed into the headroom, so a full store can be emptied (row 76).
        self.write_reserved(|t| {
            let v = find_vault(t, vault)?;
            if let Some(s) = vault_services(t, &v)?
                .into_iter()
                .find(|s| s.spec.credential_keys().contains(key))
            {
                return Err(VaultError::InUse {
                    key: key.to_owned(),
                    service: s.spec.name,
                });
            }
            if !t.delete(t.dbs().credentials, &vault_key(v.id, key))? {
                return Err(VaultError::NotFound {
                    kind: "credential",
                    name: key.to_owned(),
                });
            }
            t.audit(
                actor,
                "credential.delete",
                &format!("credential {vault}/{key}"),
                "",
            )
            .map_err(VaultError::from)
        })
    }

    /// A credential's record and its vault's id.
    pub(crate) fn credential_record(
        &self,
        vault: &str,
        key: &str,
    ) -> Result<(u64, CredentialRecord), VaultError> {
        self.read(|t| {
            Ok(find_vault(t, vault).and_then(|v| {
                let r: Option<CredentialRecord> =
                    t.get(t.dbs().credentials, "credentials", &vault_key(v.id, key))?;
                r.map(|r| (v.id, r)).ok_or_else(|| VaultError::NotFound {
                    kind: "credential",
                    name: key.to_owned(),
                })
            }))
        })?
    }

    /// Opens one credential for injection. Needs the data plane's [`Opener`].
    pub fn open_credential(
        &self,
        opener: &Opener,
        vault: &str,
        key: &str,
    ) -> Result<Opened, VaultError> {
        if let Some((meta, tokens)) = self.open_oauth(opener, vault, key)? {
            return Ok(Opened {
                value: tokens.access.clone(),
                others: tokens
                    .secrets()
                    .filter(|s| *s != &tokens.access)
                    .cloned()
                    .collect(),
                oauth: Some(meta),
            });
        }
        let (vault_id, record) = self.credential_record(vault, key)?;
        let value = opener.open(
            SealContext {
                vault_id,
                kind: CREDENTIAL_KIND,
                name: key,
            },
            &record.sealed,
        )?;
        Ok(Opened {
            value,
            others: Vec::new(),
            oauth: None,
        })
    }

    /// As [`Store::open_credential`], reusing `previous` for a static credential whose record is
    /// unchanged, and noting what it opened in `next` (see [`OpenedCache`]).
    pub fn open_credential_cached(
        &self,
        opener: &Opener,
        (vault, key): (&str, &str),
        previous: &OpenedCache,
        next: &mut OpenedCache,
    ) -> Result<Opened, VaultError> {
        let (vault_id, record) = self.credential_record(vault, key)?;
        if record.oauth.is_some() {
            return self.open_credential(opener, vault, key);
        }
        let id = cache_key(vault_id, key, &record.sealed);
        let value = match previous.0.get(&id) {
            Some(value) => value.clone(),
            None => opener.open(
                SealContext {
                    vault_id,
                    kind: CREDENTIAL_KIND,
                    name: key,
                },
                &record.sealed,
            )?,
        };
        next.0.insert(id, value.clone());
        Ok(Opened {
            value,
            others: Vec::new(),
            oauth: None,
        })
    }

    pub fn create_agent(
        &self,
        actor: &str,
        name: &str,
        vaults: &[String],
    ) -> Result<Minted, VaultError> {
        names::agent(name)?;
        if vaults.is_empty() {
            return Err(VaultError::Invalid(
                "an agent needs at least one --vault".into(),
            ));
        }
        let minted = tokens::mint(TokenKind::Agent)?;
        self.write(|t| {
            if t.get_raw(t.dbs().agents, name.as_bytes())?.is_some() {
                return Err(VaultError::Exists {
                    kind: "agent",
                    name: name.to_owned(),
                });
            }
            let mut granted: Vec<String> = Vec::new();
            for v in vaults {
                find_vault(t, v)?;
                if !granted.contains(v) {
                    granted.push(v.clone());
                }
            }
            let record = AgentRecord {
                name: name.to_owned(),
                vaults: granted.clone(),
                token_hash: minted.hash.to_hex(),
                created_at: now(),
                rotated_at: None,
                revoked_at: None,
            };
            t.put(t.dbs().agents, name.as_bytes(), &record)?;
            put_agent_token(t, name, minted.hash)?;
            t.audit(
                actor,
                "agent.create",
                &format!("agent {name}"),
                &format!("vaults={granted:?}"),
            )?;
            Ok(())
        })?;
        Ok(minted)
    }

    pub fn agents(&self) -> Result<Vec<AgentInfo>, VaultError> {
        let records = self.read(|t| t.scan::<AgentRecord>(t.dbs().agents, "agents", b""))?;
        Ok(records
            .into_iter()
            .map(|(_, a)| AgentInfo {
                name: a.name,
                vaults: a.vaults,
                created_at: a.created_at,
                revoked: a.revoked_at.is_some(),
            })
            .collect())
    }

    /// Revokes the agent's token and every scoped token minted for it. Works on a full store
    /// (it may use the headroom).
    pub fn revoke_agent(&self, actor: &str, name: &str) -> Result<(), VaultError> {
        self.write_reserved(|t| {
            let mut a = find_agent(t, name)?;
            if a.revoked_at.is_some() {
                return Err(VaultError::Invalid(format!(
                    "agent {name:?} is already revoked"
                )));
            }
            delete_agent_tokens(t, name)?;
            a.revoked_at = Some(now());
            t.put(t.dbs().agents, name.as_bytes(), &a)?;
            t.audit(actor, "agent.revoke", &format!("agent {name}"), "")
                .map_err(VaultError::from)
        })
    }

    /// Replaces the agent's token; the old one, and every scoped token minted with it, stop
    /// working at once (row 75: rotating after a leak must cut off what the leak minted).
    /// Works on a full store.
    pub fn rotate_agent(&self, actor: &str, name: &str) -> Result<Minted, VaultError> {
        let minted = tokens::mint(TokenKind::Agent)?;
        self.write_reserved(|t| {
            let mut a = find_agent(t, name)?;
            if a.revoked_at.is_some() {
                return Err(VaultError::Invalid(format!(
                    "agent {name:?} is revoked; create a new agent"
                )));
            }
            delete_agent_tokens(t, name)?;
            a.token_hash = minted.hash.to_hex();
            a.rotated_at = Some(now());
            t.put(t.dbs().agents, name.as_bytes(), &a)?;
            put_agent_token(t, name, minted.hash)?;
            t.audit(actor, "agent.rotate", &format!("agent {name}"), "")
                .map_err(VaultError::from)
        })?;
        Ok(minted)
    }

    /// Mints a scoped token bound to `vault`, on behalf of `agent` (at most
    /// [`MAX_SCOPED_PER_AGENT`] live ones each) or, with none, labelled with `actor` for the
    /// request log. Expired tokens are purged in the same transaction.
    pub fn mint_token(
        &self,
        actor: &str,
        vault: &str,
        ttl: Duration,
        agent: Option<&str>,
    ) -> Result<(Minted, u64), VaultError> {
        if !TOKEN_TTL_RANGE.contains(&ttl) {
            return Err(VaultError::Invalid(
                "--ttl must be between 1m and 30d".into(),
            ));
        }
        let minted = tokens::mint(TokenKind::Scoped)?;
        let expires_at = now() + ttl.as_secs();
        self.write(|t| {
            find_vault(t, vault)?;
            if let Some(a) = agent {
                let rec = find_agent(t, a)?;
                if !rec.vaults.iter().any(|v| v == vault) {
                    return Err(VaultError::Invalid(format!(
                        "agent {a:?} is not granted vault {vault:?}"
                    )));
                }
            }
            let live = purge_expired_tokens(t)?;
            if let Some(a) = agent {
                let held = live
                    .iter()
                    .filter(|r| r.agent.as_deref() == Some(a))
                    .count();
                if held >= MAX_SCOPED_PER_AGENT {
                    return Err(VaultError::TooManyTokens {
                        agent: a.to_owned(),
                        max: MAX_SCOPED_PER_AGENT,
                    });
                }
            }
            let record = TokenRecord {
                kind: TokenKind::Scoped,
                agent: agent.map(str::to_owned),
                vault: Some(vault.to_owned()),
                created_at: now(),
                expires_at: Some(expires_at),
                label: agent.is_none().then(|| actor.to_owned()),
            };
            t.put(t.dbs().tokens, &minted.hash.0, &record)?;
            t.audit(
                actor,
                "token.mint",
                &format!("vault {vault}"),
                &format!("ttl={}s", ttl.as_secs()),
            )?;
            Ok(())
        })?;
        Ok((minted, expires_at))
    }

    /// Looks a presented token up by its hash. Expiry is the caller's check.
    pub fn token(&self, token: &[u8]) -> Result<Option<TokenRecord>, VaultError> {
        self.token_by_hash(TokenHash::of(token))
    }

    pub fn token_by_hash(&self, hash: TokenHash) -> Result<Option<TokenRecord>, VaultError> {
        Ok(self.read(|t| t.get(t.dbs().tokens, "tokens", &hash.0))?)
    }

    /// Revokes one scoped token (`DELETE /v1/tokens/self`). Works on a full store.
    pub fn revoke_token(&self, actor: &str, hash: TokenHash) -> Result<(), VaultError> {
        self.write_reserved(|t| {
            let rec: Option<TokenRecord> = t.get(t.dbs().tokens, "tokens", &hash.0)?;
            match rec {
                Some(r) if r.kind == TokenKind::Scoped => {
                    t.delete(t.dbs().tokens, &hash.0)?;
                    let vault = r.vault.unwrap_or_default();
                    t.audit(actor, "token.revoke", &format!("vault {vault}"), "")
                        .map_err(VaultError::from)
                }
                _ => Err(VaultError::Invalid(
                    "only scoped tokens can be revoked this way".into(),
                )),
            }
        })
    }

    pub fn agent(&self, name: &str) -> Result<AgentRecord, VaultError> {
        self.read(|t| Ok(find_agent(t, name)))?
    }

    /// The live scoped tokens of `vault`, counted by who holds them: the agent, or for a token of
    /// no agent, who minted it (`-` when unknown). Counts only: no page lists every token.
    pub fn scoped_token_counts(&self, vault: &str) -> Result<BTreeMap<String, u64>, VaultError> {
        let at = now();
        let all = self.read(|t| t.scan::<TokenRecord>(t.dbs().tokens, "tokens", b""))?;
        let mut out = BTreeMap::new();
        for (_, r) in all {
            if r.kind == TokenKind::Scoped
                && r.vault.as_deref() == Some(vault)
                && r.expires_at.is_none_or(|e| e > at)
            {
                let who = r.agent.or(r.label).unwrap_or_else(|| "-".to_owned());
                *out.entry(who).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// The newest `limit` audit records, oldest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, VaultError> {
        let all = self.read(|t| t.scan::<AuditRecord>(t.dbs().audit, "audit", b""))?;
        let skip = all.len().saturating_sub(limit);
        Ok(all.into_iter().skip(skip).map(|(_, r)| r).collect())
    }
}

/// The vault's X25519 public key from its header.
pub fn public_key(header: &KeyHeader) -> Result<[u8; 32], VaultError> {
    data_encoding::HEXLOWER
        .decode(header.public_key.as_bytes())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            VaultError::Invalid("vault_header_invalid: the public key is malformed".into())
        })
}

fn find_agent<T: Transaction>(t: &Txn<T>, name: &str) -> Result<AgentRecord, VaultError> {
    t.get(t.dbs().agents, "agents", name.as_bytes())?
        .ok_or_else(|| VaultError::NotFound {
            kind: "agent",
            name: name.to_owned(),
        })
}

fn put_agent_token(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
    agent: &str,
    hash: TokenHash,
) -> Result<(), StoreError> {
    let record = TokenRecord {
        kind: TokenKind::Agent,
        agent: Some(agent.to_owned()),
        vault: None,
        created_at: now(),
        expires_at: None,
        label: None,
    };
    t.put(t.dbs().tokens, &hash.0, &record)
}

fn delete_agent_tokens(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
    agent: &str,
) -> Result<(), StoreError> {
    let all = t.scan::<TokenRecord>(t.dbs().tokens, "tokens", b"")?;
    for (k, r) in all {
        if r.agent.as_deref() == Some(agent) {
            t.delete(t.dbs().tokens, &k)?;
        }
    }
    Ok(())
}

/// Deletes every expired token; returns the live scoped ones.
fn purge_expired_tokens(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
) -> Result<Vec<TokenRecord>, StoreError> {
    let at = now();
    let mut live = Vec::new();
    for (k, r) in t.scan::<TokenRecord>(t.dbs().tokens, "tokens", b"")? {
        if r.expires_at.is_some_and(|e| e <= at) {
            t.delete(t.dbs().tokens, &k)?;
        } else if r.kind == TokenKind::Scoped {
            live.push(r);
        }
    }
    Ok(live)
}

/// An egress allowlist entry, checked and lower-cased, and its parsed host: a host or `*.`
/// wildcard with an optional port, no scheme, no path.
pub(super) fn allow_entry(entry: &str) -> Result<(String, HostPattern), VaultError> {
    let pattern = HostPattern::parse(entry).map_err(|e| VaultError::Invalid(e.to_string()))?;
    if pattern.path != PathPattern::Any || pattern.scheme != Scheme::Https || entry.contains("://")
    {
        return Err(VaultError::Invalid(format!(
            "allowlist entry {entry:?}: a host or *.host with an optional :port, no scheme or path"
        )));
    }
    Ok((entry.to_ascii_lowercase(), pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> Store {
        super::super::setup::init(dir, &Default::default(), Default::default(), "test").unwrap();
        Store::open(dir, Default::default()).unwrap()
    }

    /// The egress allowlist takes hosts, wildcards and ports, never a scheme or a path; removal
    /// is by entry, and each change is audited.
    #[test]
    fn allowlist_entries_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let add = |h: &str| store.set_allowlist("t", "default", &[h.to_owned()], &[]);
        for bad in [
            "https://pypi.org",
            "http://pypi.org",
            "pypi.org/simple",
            "*.com",
            "a b",
        ] {
            assert_eq!(add(bad).unwrap_err().code(), "bad_request", "{bad}");
        }
        add("PyPI.org").unwrap();
        add("*.cdn-example.com").unwrap();
        let list = add("registry.example:8443").unwrap();
        assert_eq!(
            list,
            ["pypi.org", "*.cdn-example.com", "registry.example:8443"]
        );
        let list = store
            .set_allowlist("t", "default", &[], &["pypi.org".to_owned()])
            .unwrap();
        assert_eq!(list, ["*.cdn-example.com", "registry.example:8443"]);
        assert!(
            store
                .audit_log(10)
                .unwrap()
                .iter()
                .any(|r| r.action == "vault.allow")
        );
    }

    /// Row 74: expired tokens are purged by the next mint, and only live ones count against
    /// an agent's cap.
    #[test]
    fn row74_expired_tokens_purged_on_mint() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.create_agent("t", "bot", &["default".into()]).unwrap();
        let expired = TokenHash([7; 32]);
        store
            .write(|t| {
                let record = TokenRecord {
                    kind: TokenKind::Scoped,
                    agent: Some("bot".into()),
                    vault: Some("default".into()),
                    created_at: 0,
                    expires_at: Some(1),
                    label: None,
                };
                t.put(t.dbs().tokens, &expired.0, &record)
                    .map_err(VaultError::from)
            })
            .unwrap();
        assert!(store.token_by_hash(expired).unwrap().is_some());
        let hour = Duration::from_secs(3600);
        for _ in 0..MAX_SCOPED_PER_AGENT {
            store.mint_token("t", "default", hour, Some("bot")).unwrap();
        }
        assert!(store.token_by_hash(expired).unwrap().is_none(), "purged");
        let over = store
            .mint_token("t", "default", hour, Some("bot"))
            .unwrap_err();
        assert_eq!(over.code(), "too_many_tokens");
        let (_, _) = store.mint_token("t", "default", hour, None).unwrap();
    }
}
