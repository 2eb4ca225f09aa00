//! Stored record types and their versioned encoding: `[RECORD_VERSION][JSON]`.
//!
//! Every value in the vault's LMDB databases is one of these records (meta counters excepted).
//! Decoding checks the version byte first, so a record written by a newer airlock is reported,
//! not misread. Credential records hold only sealed bytes. This module has no I/O.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::keys::KdfParams;
use super::tokens::TokenKind;
use crate::spec::ServiceSpec;

/// Version byte in front of every record.
pub const RECORD_VERSION: u8 = 1;

/// A record that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record has version {0}, this airlock reads version {RECORD_VERSION}")]
    Version(u8),
    #[error("record is empty")]
    Empty,
    #[error("record does not decode: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // Serialising these plain structs into a Vec cannot fail: no maps with non-string keys,
    // no custom serialisers that error.
    if serde_json::to_writer(&mut out, record).is_err() {
        out.truncate(1);
    }
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&RECORD_VERSION, json)) => Ok(serde_json::from_slice(json)?),
        Some((&v, _)) => Err(RecordError::Version(v)),
    }
}

/// What the data plane does with a host no service matches.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedPolicy {
    /// 403 `no_service` at CONNECT (the default).
    #[default]
    Deny,
    /// Splice bytes opaquely after the SSRF check; never inject.
    Tunnel,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct VaultRecord {
    pub id: u64,
    pub name: String,
    pub policy: UnmatchedPolicy,
    pub created_at: u64,
    /// The egress allowlist: hosts (`host`, `*.host`, with `:port` when not 443) reached through
    /// an opaque tunnel with no credential, whatever `policy` says of other hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ServiceRecord {
    pub spec: ServiceSpec,
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CredentialRecord {
    /// The sealed value (see `vault::seal`), base64.
    #[serde(with = "base64_bytes")]
    pub sealed: Vec<u8>,
    pub created_at: u64,
    pub updated_at: u64,
    /// Set for an OAuth credential (the sealed value then holds its tokens; `vault::oauth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<super::oauth::OAuthMeta>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AgentRecord {
    pub name: String,
    /// Granted vaults in grant order; the first is the default for Bearer auth.
    pub vaults: Vec<String>,
    /// SHA-256 of the current agent token, hex.
    pub token_hash: String,
    pub created_at: u64,
    pub rotated_at: Option<u64>,
    pub revoked_at: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenRecord {
    pub kind: TokenKind,
    pub agent: Option<String>,
    /// Scoped tokens are bound to one vault.
    pub vault: Option<String>,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    /// Who minted a scoped token that belongs to no agent (`airlock run`, the admin UI), for the
    /// request log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AuditRecord {
    pub id: u64,
    pub at: u64,
    /// Who: `cli uid=1000(alice)`, `operator:alice`, ...
    pub actor: String,
    /// What: `vault.create`, `credential.set`, ...
    pub action: String,
    /// On what: `vault default`, `credential default/STRIPE_KEY`, ...
    pub target: String,
    /// Extra facts, never a value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Where a proposal stands. `expired` is derived from `expires_at` when read.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProposalStatus {
    Pending,
    Applied,
    Rejected,
    Expired,
}

/// A proposed change to one service.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ServiceChange {
    Set(ServiceSpec),
    Delete { name: String },
}

/// A credential slot: what the operator is asked to paste (or what the agent supplied).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSlot {
    #[serde(default = "set_action")]
    pub action: SlotAction,
    pub key: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub obtain: String,
    #[serde(default)]
    pub obtain_instructions: String,
    /// An agent-supplied value, sealed at submission as the final credential (never stored
    /// in clear); base64 of the sealed bytes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_base64_bytes"
    )]
    pub sealed: Option<Vec<u8>>,
}

fn set_action() -> SlotAction {
    SlotAction::Set
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotAction {
    Set,
    Delete,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ProposalRecord {
    pub id: u64,
    pub vault: String,
    pub agent: Option<String>,
    pub status: ProposalStatus,
    pub services: Vec<ServiceChange>,
    pub credentials: Vec<CredentialSlot>,
    /// Hosts for the vault's egress allowlist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    pub message: String,
    pub user_message: String,
    /// SHA-256 (hex) of the content an approval is bound to.
    pub digest: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub decided_at: Option<u64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    /// The vault generation that carries the applied change.
    pub applied_generation: Option<u64>,
    /// A request held by a `hold` rule: approving the proposal lets it go upstream
    /// ([`super::holds`]); such a proposal changes no service or credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldRequest>,
}

/// What an operator sees of a held request: never a header value, a query value or a whole body.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub struct HeldRequest {
    pub service: String,
    /// The rule that held it; `None`: the service's `rules_default: hold`.
    pub rule: Option<String>,
    pub method: String,
    /// The authority, with its port when not the scheme's default.
    pub host: String,
    /// Without the query.
    pub path: String,
    pub query_keys: Vec<String>,
    pub header_names: Vec<String>,
    pub body_bytes: u64,
    /// The start of the body with the values of secret-looking fields redacted.
    pub body_preview: String,
    /// The serve process waiting on it (its start time and pid): a restarted serve rejects
    /// what it held.
    pub node: String,
}

impl HeldRequest {
    /// `POST api.stripe.com/v1/refunds, held by rule R of service S`.
    pub fn summary(&self) -> String {
        format!(
            "{} {}{}, held by {}",
            self.method,
            self.host,
            crate::text::inert(&self.path),
            self.by()
        )
    }

    /// What held it: `rule R of service S`, or the service's default.
    fn by(&self) -> String {
        self.rule.as_deref().map_or_else(
            || format!("service {}'s rules_default", self.service),
            |r| format!("rule {r} of service {}", self.service),
        )
    }

    /// The request for a reviewer, one fact per line, the agent's text made inert (bidi and
    /// control characters escaped, also in records an older airlock stored; row 110).
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        let inert = crate::text::inert;
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                inert(&v.join(", "))
            }
        };
        vec![
            (
                "request",
                format!("{} {}{}", self.method, self.host, inert(&self.path)),
            ),
            ("held by", self.by()),
            ("query keys", list(&self.query_keys)),
            ("headers", list(&self.header_names)),
            ("body", format!("{} bytes", self.body_bytes)),
        ]
    }
}

impl ProposalRecord {
    /// The hosts (or, for removals, the service names) a proposal touches.
    pub fn hosts(&self) -> Vec<&str> {
        if let Some(h) = &self.held {
            return vec![h.host.as_str()];
        }
        self.services
            .iter()
            .map(|c| match c {
                ServiceChange::Set(s) => s.host.as_str(),
                ServiceChange::Delete { name } => name.as_str(),
            })
            .chain(self.allow.iter().map(String::as_str))
            .collect()
    }
    /// The status as of `now` (pending proposals past their expiry read as expired).
    pub fn status_at(&self, now: u64) -> ProposalStatus {
        if self.status == ProposalStatus::Pending && self.expires_at <= now {
            ProposalStatus::Expired
        } else {
            self.status
        }
    }
}

/// How the root key is obtained for this vault.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// 32 bytes from a key file or systemd credential.
    File,
    /// Argon2id over a passphrase with the stored parameters.
    Passphrase,
}

/// The vault's key header, stored in `meta`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct KeyHeader {
    pub mode: KeyMode,
    pub kdf: Option<KdfParams>,
    /// X25519 public key that credentials are sealed to, hex.
    pub public_key: String,
    /// X25519 secret key wrapped by the root key, base64.
    #[serde(with = "base64_bytes")]
    pub wrapped_secret: Vec<u8>,
    /// The CA's subject common name (the CA is rebuilt from it and its key).
    pub ca_name: String,
}

mod opt_base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&data_encoding::BASE64.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        text.map(|t| {
            data_encoding::BASE64
                .decode(t.as_bytes())
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

mod base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&data_encoding::BASE64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        data_encoding::BASE64
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_byte_is_checked() {
        let r = VaultRecord {
            id: 1,
            name: "a".into(),
            policy: UnmatchedPolicy::Deny,
            created_at: 0,
            allow: Vec::new(),
        };
        let bytes = encode(&r);
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<VaultRecord>(&bytes).unwrap().name, "a");
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert!(matches!(
            decode::<VaultRecord>(&newer),
            Err(RecordError::Version(9))
        ));
        assert!(matches!(
            decode::<VaultRecord>(&[]),
            Err(RecordError::Empty)
        ));
        assert!(decode::<VaultRecord>(&bytes[..5]).is_err());
    }
}
