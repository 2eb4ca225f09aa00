//! Proposals: an agent asks for services and credential slots; an operator approves (pasting
//! values) or rejects. Approval applies everything in one transaction and bumps the generation.
//!
//! Validation happens at submission ([`Store::create_proposal`]): at most [`MAX_SERVICES`]
//! services and [`MAX_SLOTS`] slots, every grammar, referenced keys existing or proposed, text
//! capped and free of control characters, at most [`MAX_PENDING`] pending per vault. An
//! agent-supplied value is sealed at once, bound to the credential it will become, so nothing
//! ever needs to open it before the data plane does. Approvals are bound to the proposal's
//! digest and are one-time; a pending proposal expires after [`TTL`].

use std::collections::BTreeSet;

use serde::Deserialize;

use lmdb::Transaction;

use super::ops::{
    apply_services, public_key, put_credential, seal_credential, vault_credential_keys, vault_key,
    vault_services,
};
use super::records::{
    CredentialSlot, ProposalRecord, ProposalStatus, ServiceChange, SlotAction, VaultRecord,
};
use super::review::{Review, review};
use super::store::{Store, Txn};
use super::{VaultError, now};
use crate::names;
use crate::secret::Secret;

pub const MAX_SERVICES: usize = 10;
pub const MAX_SLOTS: usize = 10;
pub const MAX_PENDING: usize = 20;
/// Longest `message` / `user_message`, in characters.
pub const MESSAGE_CAP: usize = 2000;
/// Longest description, obtain URL or instructions, and rejection reason.
pub const FIELD_CAP: usize = 500;
/// How long a proposal stays pending.
pub const TTL: u64 = 7 * 24 * 3600;

/// The body of `POST /v1/proposals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProposal {
    /// Each a [`ServiceChange`] (`{"action": "set", ...spec}` or `{"action": "delete", "name"}`),
    /// or a catalog template: `{"template": "anthropic", "name"?, "credentials"?: [KEY]}`.
    #[serde(default)]
    pub services: Vec<serde_json::Value>,
    #[serde(default)]
    pub credentials: Vec<NewSlot>,
    /// Hosts for the vault's egress allowlist (reached through an opaque tunnel, no credential).
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub user_message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSlot {
    #[serde(default = "default_action")]
    pub action: SlotAction,
    pub key: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub obtain: String,
    #[serde(default)]
    pub obtain_instructions: String,
    /// Optional value the agent already has (e.g. one it generated); sealed at once.
    #[serde(default)]
    pub value: Option<String>,
}

fn default_action() -> SlotAction {
    SlotAction::Set
}

/// A service proposed from the catalog ([`crate::catalog`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FromTemplate {
    #[serde(default)]
    action: Option<String>,
    template: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    credentials: Vec<String>,
}

/// The `i`th proposed service as a change: a template is expanded into its full service, so the
/// proposal stores, and the operator reviews, exactly what would be served.
fn service_change(i: usize, v: serde_json::Value) -> Result<ServiceChange, VaultError> {
    let bad = |e: String| invalid(format!("services[{i}]: {e}"));
    if v.get("template").is_none() {
        return serde_json::from_value(v).map_err(|e| bad(e.to_string()));
    }
    let t: FromTemplate = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
    if t.action.as_deref().is_some_and(|a| a != "set") {
        return Err(bad("a template can only be set".into()));
    }
    crate::catalog::find(&t.template)
        .and_then(|tpl| tpl.service(t.name.as_deref(), &t.credentials))
        .map(ServiceChange::Set)
        .map_err(|e| bad(e.to_string()))
}

fn invalid(m: impl Into<String>) -> VaultError {
    VaultError::Invalid(m.into())
}

/// What an operator confirmed when approving a proposal: that stored credentials may go to new
/// hosts, that request rules may be lifted. Each is needed only when the review finds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confirmed {
    pub credential_reuse: bool,
    pub rule_removal: bool,
}

/// An approved proposal's credentials written: each slot set (with the agent's sealed value or
/// the operator's from `values`, sealed now) or deleted. A value for a slot the proposal does
/// not leave empty is refused.
fn apply_credentials(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
    public: &[u8; 32],
    v: &VaultRecord,
    p: &ProposalRecord,
    values: &[(String, Secret)],
) -> Result<(), VaultError> {
    for (key, _) in values {
        if !p
            .credentials
            .iter()
            .any(|s| &s.key == key && s.action == SlotAction::Set && s.sealed.is_none())
        {
            return Err(invalid(format!(
                "proposal {} has no empty slot {key:?}",
                p.id
            )));
        }
    }
    for slot in &p.credentials {
        let rkey = vault_key(v.id, &slot.key);
        match slot.action {
            SlotAction::Delete => {
                t.delete(t.dbs().credentials, &rkey)?;
            }
            SlotAction::Set => {
                let sealed = match (&slot.sealed, values.iter().find(|(k, _)| k == &slot.key)) {
                    (Some(sealed), _) => sealed.clone(),
                    (None, Some((_, value))) => {
                        seal_credential(public, v.id, &slot.key, value.expose())?
                    }
                    (None, None) => {
                        return Err(invalid(format!("a value for {} is required", slot.key)));
                    }
                };
                put_credential(t, v.id, &slot.key, sealed)?;
            }
        }
    }
    Ok(())
}

/// A proposal's services as changes (at most one more than [`MAX_SERVICES`] read, so the count
/// check sees too many without reading them all).
fn service_changes(values: Vec<serde_json::Value>) -> Result<Vec<ServiceChange>, VaultError> {
    values
        .into_iter()
        .take(MAX_SERVICES + 1)
        .enumerate()
        .map(|(i, v)| service_change(i, v))
        .collect()
}

/// A proposal's allowlist hosts, checked: at most [`MAX_SERVICES`], each a valid entry and, as
/// for services (rows 68 and 120), no internal, resolve-anything or shared-hosting host.
fn allowlist(allow: &[String]) -> Result<Vec<String>, VaultError> {
    if allow.len() > MAX_SERVICES {
        return Err(invalid(format!(
            "at most {MAX_SERVICES} allowlist hosts per proposal"
        )));
    }
    allow
        .iter()
        .map(|h| {
            let (entry, pattern) = super::ops::allow_entry(h)?;
            match crate::spec::host::internal(&pattern.host) {
                Some(reason) => Err(VaultError::HostNotAllowed {
                    host: h.clone(),
                    reason,
                }),
                None => Ok(entry),
            }
        })
        .collect()
}

/// A proposal's service changes, checked: each spec valid and not an internal host (row 68),
/// each service named once.
fn check_services(services: &[ServiceChange]) -> Result<(), VaultError> {
    let mut names_seen = BTreeSet::new();
    for change in services {
        let name = match change {
            ServiceChange::Set(spec) => {
                let pattern = spec.validate()?;
                // Review B12: agents cannot propose internal or resolve-anything hosts.
                if let Some(reason) = crate::spec::host::internal(&pattern.host) {
                    return Err(VaultError::HostNotAllowed {
                        host: spec.host.clone(),
                        reason,
                    });
                }
                &spec.name
            }
            ServiceChange::Delete { name } => {
                names::service(name)?;
                name
            }
        };
        if !names_seen.insert(name.clone()) {
            return Err(invalid(format!("service {name:?} appears twice")));
        }
    }
    Ok(())
}

/// One credential slot of a proposal, its text checked and a value the agent supplied sealed
/// at once for vault `vault_id`.
fn credential_slot(
    slot: NewSlot,
    public: &[u8; 32],
    vault_id: u64,
) -> Result<CredentialSlot, VaultError> {
    names::credential_key(&slot.key)?;
    check_text("description", &slot.description, FIELD_CAP)?;
    check_text("obtain_instructions", &slot.obtain_instructions, FIELD_CAP)?;
    check_text("obtain", &slot.obtain, FIELD_CAP)?;
    if !slot.obtain.is_empty()
        && !slot.obtain.starts_with("https://")
        && !slot.obtain.starts_with("http://")
    {
        return Err(invalid("obtain must be an http(s) URL"));
    }
    let sealed = match (&slot.value, slot.action) {
        (Some(_), SlotAction::Delete) => {
            return Err(invalid("a delete slot takes no value"));
        }
        (Some(value), SlotAction::Set) => {
            let value = Secret::new(value.clone().into_bytes());
            Some(seal_credential(
                public,
                vault_id,
                &slot.key,
                value.expose(),
            )?)
        }
        (None, _) => None,
    };
    Ok(CredentialSlot {
        action: slot.action,
        key: slot.key,
        description: slot.description,
        obtain: slot.obtain,
        obtain_instructions: slot.obtain_instructions,
        sealed,
    })
}

/// Every credential the proposed services use is proposed or already in the vault.
fn check_keys_given(
    vault: &str,
    services: &[ServiceChange],
    slots: &[CredentialSlot],
    existing: &BTreeSet<String>,
) -> Result<(), VaultError> {
    let proposed: BTreeSet<&str> = slots
        .iter()
        .filter(|s| s.action == SlotAction::Set)
        .map(|s| s.key.as_str())
        .collect();
    for change in services {
        if let ServiceChange::Set(spec) = change {
            for key in spec.credential_keys() {
                if !proposed.contains(key) && !existing.contains(key) {
                    return Err(VaultError::MissingCredential {
                        vault: vault.to_owned(),
                        service: spec.name.clone(),
                        key: key.to_owned(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Text an agent wrote: capped, and no control characters but newline and tab (row 50).
fn check_text(field: &str, text: &str, cap: usize) -> Result<(), VaultError> {
    if text.chars().count() > cap {
        return Err(invalid(format!("{field} is longer than {cap} characters")));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(invalid(format!("{field} contains control characters")));
    }
    Ok(())
}

pub(super) fn digest(
    vault: &str,
    services: &[ServiceChange],
    slots: &[CredentialSlot],
    allow: &[String],
    message: &str,
    user_message: &str,
) -> String {
    let mut content = serde_json::json!({
        "vault": vault, "services": services, "credentials": slots,
        "message": message, "user_message": user_message,
    });
    // Only when present, so proposals without one keep the digest they always had.
    if !allow.is_empty() {
        content["allow"] = serde_json::json!(allow);
    }
    let d = ring::digest::digest(&ring::digest::SHA256, content.to_string().as_bytes());
    data_encoding::HEXLOWER.encode(d.as_ref())
}

impl Store {
    /// Validates and stores a proposal from `agent` for `vault`.
    pub fn create_proposal(
        &self,
        vault: &str,
        agent: Option<&str>,
        new: NewProposal,
    ) -> Result<ProposalRecord, VaultError> {
        let services = service_changes(new.services)?;
        if services.is_empty() && new.credentials.is_empty() && new.allow.is_empty() {
            return Err(invalid(
                "a proposal needs at least one service, credential or allowlist host",
            ));
        }
        let allow = allowlist(&new.allow)?;
        if services.len() > MAX_SERVICES || new.credentials.len() > MAX_SLOTS {
            return Err(invalid(format!(
                "at most {MAX_SERVICES} services and {MAX_SLOTS} credentials per proposal"
            )));
        }
        check_text("message", &new.message, MESSAGE_CAP)?;
        check_text("user_message", &new.user_message, MESSAGE_CAP)?;
        check_services(&services)?;
        let public = public_key(&self.key_header()?)?;
        let v = self.vault(vault)?;
        let mut keys_seen = BTreeSet::new();
        let mut slots = Vec::with_capacity(new.credentials.len());
        for slot in new.credentials {
            if !keys_seen.insert(slot.key.clone()) {
                return Err(invalid(format!("credential {:?} appears twice", slot.key)));
            }
            slots.push(credential_slot(slot, &public, v.id)?);
        }
        let existing = self.credentials(vault)?.into_iter().map(|(k, _)| k);
        check_keys_given(vault, &services, &slots, &existing.collect())?;
        let digest = digest(
            vault,
            &services,
            &slots,
            &allow,
            &new.message,
            &new.user_message,
        );
        self.write(|t| {
            let at = now();
            if pending(t, vault, false, at)? >= MAX_PENDING {
                return Err(VaultError::TooManyPending {
                    vault: vault.to_owned(),
                    max: MAX_PENDING,
                });
            }
            let record = ProposalRecord {
                id: t.next_id()?,
                vault: vault.to_owned(),
                agent: agent.map(str::to_owned),
                status: ProposalStatus::Pending,
                services,
                credentials: slots,
                allow,
                message: new.message,
                user_message: new.user_message,
                digest,
                created_at: at,
                expires_at: at + TTL,
                decided_at: None,
                decided_by: None,
                reason: None,
                applied_generation: None,
                held: None,
            };
            t.put(t.dbs().proposals, &record.id.to_be_bytes(), &record)?;
            let who = agent.map_or_else(|| "agent".to_owned(), |a| format!("agent:{a}"));
            t.audit(
                &who,
                "proposal.create",
                &format!("proposal {}", record.id),
                &format!("vault={vault}"),
            )?;
            Ok(record)
        })
    }

    pub fn proposal(&self, id: u64) -> Result<ProposalRecord, VaultError> {
        self.read(|t| t.get(t.dbs().proposals, "proposals", &id.to_be_bytes()))?
            .ok_or_else(|| VaultError::NotFound {
                kind: "proposal",
                name: id.to_string(),
            })
    }

    /// Proposals, newest first, filtered by vault and status (as of now).
    pub fn proposals(
        &self,
        vault: Option<&str>,
        status: Option<ProposalStatus>,
    ) -> Result<Vec<ProposalRecord>, VaultError> {
        let at = now();
        let mut all: Vec<ProposalRecord> = self
            .read(|t| t.scan::<ProposalRecord>(t.dbs().proposals, "proposals", b""))?
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| {
                vault.is_none_or(|v| p.vault == v) && status.is_none_or(|s| p.status_at(at) == s)
            })
            .collect();
        all.reverse();
        Ok(all)
    }

    /// What approving `p` would change in its vault as it is now.
    pub fn review_proposal(&self, p: &ProposalRecord) -> Result<Review, VaultError> {
        self.read(|t| Ok(review_in(t, p)))?
    }

    /// Applies a pending proposal: `values` fill the slots the agent left empty (every such
    /// slot must be given). With `digest`, the proposal must still have that content. A proposal
    /// that would send a stored credential to a new host is refused unless
    /// confirmed (the operator's explicit confirmation; row 66), and so is one that lifts
    /// request rules (row 108).
    pub fn approve_proposal(
        &self,
        actor: &str,
        id: u64,
        digest: Option<&str>,
        values: Vec<(String, Secret)>,
        confirmed: Confirmed,
    ) -> Result<ProposalRecord, VaultError> {
        let public = public_key(&self.key_header()?)?;
        self.write(|t| {
            let mut p = decidable(
                t.get(t.dbs().proposals, "proposals", &id.to_be_bytes())?,
                id,
                digest,
            )?;
            let review = review_in(t, &p)?;
            if !review.reuse.is_empty() && !confirmed.credential_reuse {
                return Err(VaultError::CredentialReuse {
                    id,
                    warnings: review.reuse_warnings(),
                });
            }
            if !review.weakened.is_empty() && !confirmed.rule_removal {
                return Err(VaultError::RuleRemoval {
                    id,
                    warnings: review.weakened.clone(),
                });
            }
            let v: VaultRecord = t
                .get(t.dbs().vaults, "vaults", p.vault.as_bytes())?
                .ok_or_else(|| VaultError::NotFound {
                    kind: "vault",
                    name: p.vault.clone(),
                })?;
            apply_credentials(t, &public, &v, &p, &values)?;
            let at = now();
            let (mut sets, mut deletes) = (Vec::new(), Vec::new());
            for change in &p.services {
                match change {
                    ServiceChange::Set(spec) => sets.push(spec.clone()),
                    ServiceChange::Delete { name } => deletes.push(name.clone()),
                }
            }
            apply_services(t, &v, sets, &deletes, false)?;
            if !p.allow.is_empty() {
                let mut v = v;
                for h in &p.allow {
                    if !v.allow.contains(h) {
                        v.allow.push(h.clone());
                    }
                }
                t.put(t.dbs().vaults, p.vault.as_bytes(), &v)?;
            }
            p.status = ProposalStatus::Applied;
            p.decided_at = Some(at);
            p.decided_by = Some(actor.to_owned());
            p.applied_generation = Some(t.meta_u64(b"generation")?.unwrap_or(0) + 1);
            t.put(t.dbs().proposals, &id.to_be_bytes(), &p)?;
            let reused = if review.reuse.is_empty() {
                String::new()
            } else {
                let keys: Vec<&str> = review.reuse.iter().map(|r| r.key.as_str()).collect();
                format!(" credential_reuse_confirmed={}", keys.join(","))
            };
            let reused = if review.weakened.is_empty() {
                reused
            } else {
                format!("{reused} rule_removal_confirmed={}", review.weakened.len())
            };
            t.audit(
                actor,
                "proposal.approve",
                &format!("proposal {id}"),
                &format!("vault={}{reused}", p.vault),
            )?;
            Ok(p)
        })
    }

    pub fn reject_proposal(
        &self,
        actor: &str,
        id: u64,
        reason: &str,
        digest: Option<&str>,
    ) -> Result<ProposalRecord, VaultError> {
        check_text("reason", reason, FIELD_CAP)?;
        self.write(|t| {
            let mut p = decidable(
                t.get(t.dbs().proposals, "proposals", &id.to_be_bytes())?,
                id,
                digest,
            )?;
            p.status = ProposalStatus::Rejected;
            p.decided_at = Some(now());
            p.decided_by = Some(actor.to_owned());
            p.reason = (!reason.is_empty()).then(|| reason.to_owned());
            t.put(t.dbs().proposals, &id.to_be_bytes(), &p)?;
            t.audit(
                actor,
                "proposal.reject",
                &format!("proposal {id}"),
                &format!("vault={}", p.vault),
            )?;
            Ok(p)
        })
    }
}

/// The proposal's diff against its vault, read in `t`. A vault that is gone has no services
/// and no credentials.
fn review_in<T: Transaction>(t: &Txn<T>, p: &ProposalRecord) -> Result<Review, VaultError> {
    let Some(v) = t.get::<VaultRecord>(t.dbs().vaults, "vaults", p.vault.as_bytes())? else {
        return Ok(review(&[], &BTreeSet::new(), p));
    };
    let current: Vec<_> = vault_services(t, &v)?.into_iter().map(|r| r.spec).collect();
    let mut r = review(&current, &vault_credential_keys(t, &v)?, p);
    r.allow.retain(|h| !v.allow.contains(h));
    Ok(r)
}

/// The full review form of a proposal (CLI `show --json`, the admin JSON API): everything the
/// operator needs, whether each slot's value was supplied (never the value), and for a pending
/// proposal the diff against the vault as it is ([`Review`]).
pub fn review_json(store: &Store, p: &ProposalRecord) -> Result<serde_json::Value, VaultError> {
    let pending = p.status_at(now()) == ProposalStatus::Pending;
    let diff = if pending {
        store.review_proposal(p)?.to_json()
    } else {
        serde_json::Value::Null
    };
    Ok(serde_json::json!({
        "review": diff,
        "id": p.id, "status": p.status_at(now()), "vault": p.vault, "agent": p.agent,
        "services": p.services,
        "credentials": p.credentials.iter().map(|c| serde_json::json!({
            "action": c.action, "key": c.key, "description": c.description, "obtain": c.obtain,
            "obtain_instructions": c.obtain_instructions, "value_supplied": c.sealed.is_some(),
        })).collect::<Vec<_>>(),
        "message": p.message, "user_message": p.user_message, "digest": p.digest,
        "created_at": super::rfc3339(p.created_at), "expires_at": super::rfc3339(p.expires_at),
        "decided_by": p.decided_by, "reason": p.reason, "held": p.held,
    }))
}

/// A proposal that can still be decided (row 49): pending, not expired, unchanged.
/// How many proposals of `vault` are pending at `at`: held requests (`held`) or the others.
pub(super) fn pending<T: Transaction>(
    t: &Txn<T>,
    vault: &str,
    held: bool,
    at: u64,
) -> Result<usize, VaultError> {
    Ok(
        t.scan::<ProposalRecord>(t.dbs().proposals, "proposals", b"")?
            .iter()
            .filter(|(_, p)| {
                p.vault == vault
                    && p.held.is_some() == held
                    && p.status_at(at) == ProposalStatus::Pending
            })
            .count(),
    )
}

pub(super) fn decidable(
    p: Option<ProposalRecord>,
    id: u64,
    digest: Option<&str>,
) -> Result<ProposalRecord, VaultError> {
    let p = p.ok_or_else(|| VaultError::NotFound {
        kind: "proposal",
        name: id.to_string(),
    })?;
    match p.status_at(now()) {
        ProposalStatus::Pending => {}
        ProposalStatus::Expired => return Err(VaultError::ProposalExpired(id)),
        _ => return Err(VaultError::AlreadyDecided(id)),
    }
    if digest.is_some_and(|d| d != p.digest) {
        return Err(VaultError::ProposalChanged(id));
    }
    Ok(p)
}
