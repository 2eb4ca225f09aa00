//! What approving a proposal would change, as a diff against the vault as it is (row 66):
//! services added, replaced (old → new) or removed; credential slots that replace a stored
//! value; and, most important, each stored credential that would be sent to a host it is not sent
//! to today ([`Reuse`]). An approval that re-points a stored credential needs an explicit
//! confirmation, which [`super::Store::approve_proposal`] enforces for every caller (CLI, admin
//! UI, JSON API). So does one that lifts request rules (row 108): a `deny`, `hold` or `limit`
//! rule gone or changed, a stricter `rules_default` relaxed, a ruled service removed, or an
//! `allow` rule added to a service that restricts ([`Review::weakened`]).
//!
//! This module computes and renders the diff; it reads nothing itself and never sees a value.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::records::{ProposalRecord, ServiceChange, SlotAction};
use crate::spec::{RuleAction, ServiceSpec};

/// One service change, against the vault's current services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceDiff {
    Add(ServiceSpec),
    Replace {
        old: Box<ServiceSpec>,
        new: Box<ServiceSpec>,
    },
    /// Set to exactly what is there already.
    Same(ServiceSpec),
    Remove(ServiceSpec),
    /// A removal of a service the vault does not have.
    RemoveMissing(String),
}

/// One credential slot of the proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotDiff {
    pub key: String,
    pub action: SlotAction,
    /// The agent supplied the value (sealed at submission).
    pub supplied_by_agent: bool,
    /// A value is stored under this key today: setting it replaces that value.
    pub replaces_stored: bool,
}

/// A credential stored today, kept as it is by the proposal, that would be sent to new hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reuse {
    pub key: String,
    pub new_hosts: Vec<String>,
}

/// The whole diff of one proposal.
#[derive(Clone, Debug, Default)]
pub struct Review {
    pub services: Vec<ServiceDiff>,
    pub credentials: Vec<SlotDiff>,
    pub reuse: Vec<Reuse>,
    /// What the proposal would lift of the services' request rules, one sentence each.
    pub weakened: Vec<String>,
    /// Hosts the proposal adds to the vault's egress allowlist (opaque tunnels, no credential).
    pub allow: Vec<String>,
}

/// Hosts each credential key is sent to by `services` (every service that uses the key, enabled
/// or not: enabling one later is not a proposal's business).
fn hosts_by_key<'a>(
    services: impl Iterator<Item = &'a ServiceSpec>,
) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut map: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in services {
        for key in s.credential_keys() {
            map.entry(key).or_default().insert(s.host.as_str());
        }
    }
    map
}

/// Compares proposal `p` with the vault's `current` services and `stored` credential keys.
pub fn review(current: &[ServiceSpec], stored: &BTreeSet<String>, p: &ProposalRecord) -> Review {
    let by_name: BTreeMap<&str, &ServiceSpec> =
        current.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut after: BTreeMap<&str, &ServiceSpec> = by_name.clone();
    let services: Vec<ServiceDiff> = p
        .services
        .iter()
        .map(|change| match change {
            ServiceChange::Set(new) => {
                after.insert(new.name.as_str(), new);
                match by_name.get(new.name.as_str()) {
                    None => ServiceDiff::Add(new.clone()),
                    Some(old) if *old == new => ServiceDiff::Same(new.clone()),
                    Some(old) => ServiceDiff::Replace {
                        old: Box::new((*old).clone()),
                        new: Box::new(new.clone()),
                    },
                }
            }
            ServiceChange::Delete { name } => {
                after.remove(name.as_str());
                match by_name.get(name.as_str()) {
                    Some(old) => ServiceDiff::Remove((*old).clone()),
                    None => ServiceDiff::RemoveMissing(name.clone()),
                }
            }
        })
        .collect();
    let credentials: Vec<SlotDiff> = p
        .credentials
        .iter()
        .map(|c| SlotDiff {
            key: c.key.clone(),
            action: c.action,
            supplied_by_agent: c.sealed.is_some(),
            replaces_stored: c.action == SlotAction::Set && stored.contains(&c.key),
        })
        .collect();
    let now = hosts_by_key(current.iter());
    let later = hosts_by_key(after.values().copied());
    let reuse = later
        .iter()
        .filter(|(key, _)| stored.contains(**key))
        .filter(|(key, _)| !p.credentials.iter().any(|c| c.key == **key))
        .filter_map(|(key, hosts)| {
            let before = now.get(key);
            let new_hosts: Vec<String> = hosts
                .iter()
                .filter(|h| before.is_none_or(|b| !b.contains(*h)))
                .map(|h| (*h).to_owned())
                .collect();
            (!new_hosts.is_empty()).then(|| Reuse {
                key: (*key).to_owned(),
                new_hosts,
            })
        })
        .collect();
    let weakened = services
        .iter()
        .flat_map(|d| weakenings(d, p.agent.as_deref()))
        .collect();
    Review {
        services,
        credentials,
        reuse,
        weakened,
        allow: p.allow.clone(),
    }
}

/// Whether a service restricts anything with its rules.
fn restricts(s: &ServiceSpec) -> bool {
    s.rules_default() != RuleAction::Allow || s.rules.iter().any(|r| r.action != RuleAction::Allow)
}

/// What one service change lifts of the rules there are today.
fn weakenings(d: &ServiceDiff, agent: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    match d {
        ServiceDiff::Remove(old) if restricts(old) => {
            let names: Vec<&str> = old
                .rules
                .iter()
                .filter(|r| r.action != RuleAction::Allow)
                .map(|r| r.name.as_str())
                .collect();
            out.push(format!(
                "removing service {} drops its request rules ({})",
                old.name,
                if names.is_empty() {
                    format!("rules_default {}", old.rules_default().as_str())
                } else {
                    names.join(", ")
                }
            ));
        }
        ServiceDiff::Replace { old, new } if restricts(old) => {
            for r in old.rules.iter().filter(|r| r.action != RuleAction::Allow) {
                if !new.rules.contains(r) {
                    out.push(format!(
                        "rule {} ({}) of service {} is removed or changed",
                        r.name,
                        r.action.as_str(),
                        old.name
                    ));
                }
            }
            if new.rules_default().strictness() < old.rules_default().strictness() {
                out.push(format!(
                    "service {}'s rules_default goes from {} to {}",
                    old.name,
                    old.rules_default().as_str(),
                    new.rules_default().as_str()
                ));
            }
            for r in new.rules.iter().filter(|r| r.action == RuleAction::Allow) {
                if old.rules.contains(r) {
                    continue;
                }
                let whom = if r.agents.is_empty() {
                    "every agent".to_owned()
                } else if agent.is_some_and(|a| r.agents.iter().any(|x| x == a)) {
                    format!("{} (the proposing agent)", r.agents.join(", "))
                } else {
                    r.agents.join(", ")
                };
                out.push(format!(
                    "rule {} of service {} is a new allow for {whom}",
                    r.name, new.name
                ));
            }
        }
        _ => {}
    }
    out
}

impl Review {
    /// The sentence an operator must see for each reused credential.
    pub fn reuse_warnings(&self) -> Vec<String> {
        self.reuse
            .iter()
            .map(|r| {
                format!(
                    "{} is already stored and will also be sent to {}",
                    r.key,
                    r.new_hosts.join(", ")
                )
            })
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|d| match d {
                ServiceDiff::Add(new) => json!({"change": "add", "new": spec_json(new)}),
                ServiceDiff::Replace { old, new } => {
                    json!({"change": "replace", "old": spec_json(old), "new": spec_json(new)})
                }
                ServiceDiff::Same(s) => json!({"change": "unchanged", "new": spec_json(s)}),
                ServiceDiff::Remove(old) => json!({"change": "remove", "old": spec_json(old)}),
                ServiceDiff::RemoveMissing(name) => {
                    json!({"change": "remove", "name": name, "missing": true})
                }
            })
            .collect();
        let credentials: Vec<Value> = self
            .credentials
            .iter()
            .map(|c| {
                json!({"key": c.key, "action": c.action, "supplied_by_agent": c.supplied_by_agent,
                       "replaces_stored": c.replaces_stored})
            })
            .collect();
        let reuse: Vec<Value> = self
            .reuse
            .iter()
            .map(|r| json!({"key": r.key, "new_hosts": r.new_hosts}))
            .collect();
        json!({"services": services, "credentials": credentials, "credential_reuse": reuse,
               "rules_weakened": self.weakened, "allow": self.allow,
               "warnings": self.reuse_warnings()})
    }
}

fn spec_json(s: &ServiceSpec) -> Value {
    json!({"name": s.name, "host": s.host, "auth": s.auth, "substitutions": s.substitutions,
           "enabled": s.enabled, "summary": s.describe()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::records::{CredentialSlot, ProposalStatus};

    fn spec(yaml: &str) -> ServiceSpec {
        crate::spec::ServiceFile::from_yaml(&format!("services:\n  - {yaml}\n"))
            .unwrap()
            .services
            .remove(0)
    }

    fn proposal(services: Vec<ServiceChange>, slots: &[(&str, bool)]) -> ProposalRecord {
        ProposalRecord {
            id: 1,
            vault: "default".into(),
            agent: None,
            status: ProposalStatus::Pending,
            services,
            allow: Vec::new(),
            credentials: slots
                .iter()
                .map(|(k, supplied)| CredentialSlot {
                    action: SlotAction::Set,
                    key: (*k).into(),
                    description: String::new(),
                    obtain: String::new(),
                    obtain_instructions: String::new(),
                    sealed: supplied.then(|| "sealed".into()),
                })
                .collect(),
            message: String::new(),
            user_message: String::new(),
            digest: String::new(),
            created_at: 0,
            expires_at: u64::MAX,
            decided_at: None,
            decided_by: None,
            reason: None,
            applied_generation: None,
            held: None,
        }
    }

    /// Review B1: re-pointing a service, or a new service over a stored key (also through a
    /// substitution), is a reuse; a new key, or a replaced value, is not.
    #[test]
    fn row66_reuse_of_stored_credentials_is_found() {
        let api = spec("{name: api, host: api.example.com, auth: {type: bearer, token: API_KEY}}");
        let stored: BTreeSet<String> = ["API_KEY".to_owned(), "OTHER".to_owned()].into();
        let current = vec![api.clone()];
        let repoint =
            spec("{name: api, host: attacker.example, auth: {type: bearer, token: API_KEY}}");
        let r = review(
            &current,
            &stored,
            &proposal(vec![ServiceChange::Set(repoint.clone())], &[]),
        );
        assert_eq!(
            r.services,
            vec![ServiceDiff::Replace {
                old: Box::new(api.clone()),
                new: Box::new(repoint)
            }]
        );
        assert_eq!(
            r.reuse_warnings(),
            ["API_KEY is already stored and will also be sent to attacker.example"]
        );
        let sneaky = spec(
            "{name: notes, host: notes.example, auth: {type: bearer, token: NOTES_KEY}, substitutions: [{key: OTHER, placeholder: __o__, in: [query]}]}",
        );
        let r = review(
            &current,
            &stored,
            &proposal(vec![ServiceChange::Set(sneaky)], &[("NOTES_KEY", false)]),
        );
        assert_eq!(r.reuse.len(), 1);
        assert_eq!(r.reuse[0].key, "OTHER");
        assert_eq!(r.reuse[0].new_hosts, ["notes.example"]);
        // The agent supplies a new value for the stored key: a replacement, not a reuse.
        let fresh =
            spec("{name: api, host: attacker.example, auth: {type: bearer, token: API_KEY}}");
        let r = review(
            &current,
            &stored,
            &proposal(vec![ServiceChange::Set(fresh)], &[("API_KEY", true)]),
        );
        assert!(r.reuse.is_empty());
        assert!(r.credentials[0].replaces_stored && r.credentials[0].supplied_by_agent);
        // The same service again changes nothing.
        let r = review(
            &current,
            &stored,
            &proposal(vec![ServiceChange::Set(api.clone())], &[]),
        );
        assert_eq!(r.services, vec![ServiceDiff::Same(api)]);
        assert!(r.reuse.is_empty());
    }

    /// Row 108: a proposal that lifts request rules says so, one line for each
    /// thing lifted; one that keeps or tightens them says nothing.
    #[test]
    fn row108_rules_lifted_by_a_proposal_are_found() {
        let ruled = spec(
            "{name: rul, host: rul.example.com, auth: {type: bearer, token: K}, rules: [{name: no-deletes, methods: [DELETE], action: deny}, {name: refunds, methods: [POST], path: /v1/refunds, action: hold}], rules_default: hold}",
        );
        let bare = spec("{name: rul, host: rul.example.com, auth: {type: bearer, token: K}}");
        let stored: BTreeSet<String> = ["K".to_owned()].into();
        let current = vec![ruled.clone()];
        let mut p = proposal(vec![ServiceChange::Set(bare)], &[]);
        p.agent = Some("bot".into());
        let r = review(&current, &stored, &p);
        assert_eq!(
            r.weakened,
            [
                "rule no-deletes (deny) of service rul is removed or changed",
                "rule refunds (hold) of service rul is removed or changed",
                "service rul's rules_default goes from hold to allow",
            ]
        );
        let r = review(
            &current,
            &stored,
            &proposal(vec![ServiceChange::Delete { name: "rul".into() }], &[]),
        );
        assert_eq!(
            r.weakened,
            ["removing service rul drops its request rules (no-deletes, refunds)"]
        );
        let opened = spec(
            "{name: rul, host: rul.example.com, auth: {type: bearer, token: K}, rules: [{name: bot-may, agents: [bot], action: allow}, {name: no-deletes, methods: [DELETE], action: deny}, {name: refunds, methods: [POST], path: /v1/refunds, action: hold}], rules_default: hold}",
        );
        p.services = vec![ServiceChange::Set(opened)];
        let r = review(&current, &stored, &p);
        assert_eq!(
            r.weakened,
            ["rule bot-may of service rul is a new allow for bot (the proposing agent)"]
        );
        let tighter = spec(
            "{name: rul, host: rul.example.com, auth: {type: bearer, token: K}, rules: [{name: no-deletes, methods: [DELETE], action: deny}, {name: refunds, methods: [POST], path: /v1/refunds, action: hold}, {name: no-puts, methods: [PUT], action: deny}], rules_default: deny}",
        );
        p.services = vec![ServiceChange::Set(tighter)];
        assert!(review(&current, &stored, &p).weakened.is_empty());
    }
}
