//! The vault: an LMDB store of vaults, services, sealed credentials, agents, tokens, proposals,
//! audit records and meta, plus the key hierarchy that seals credentials.
//!
//! - [`store`]: the environment, transactions, format and generation counter.
//! - [`records`]: versioned record types.
//! - [`keys`], [`seal`], [`tokens`]: root key, credential sealing, bearer tokens.
//! - [`ops`]: management writes, each one transaction with an audit record.
//! - [`proposals`]: agents' requests for access, and their approval.
//! - [`setup`]: `init` and `unlock` (the only code that needs the root key).
//!
//! This module must not depend on the data plane's runtime (monoio), so the CLI and the admin
//! process can use it; and nothing here returns a credential's plaintext except
//! [`seal::Opener::open`], which only `unlock`'s caller (the data plane) holds.

pub mod export;
pub mod fleet;
pub mod holds;
pub mod keys;
pub mod membership;
pub mod oauth;
pub mod oauth_store;
pub mod operators;
pub mod ops;
pub mod proposals;
pub mod readers;
pub mod records;
pub mod review;
pub mod seal;
pub mod setup;
pub mod store;
pub mod tokens;

use std::path::PathBuf;

pub use self::records::UnmatchedPolicy;
pub use self::store::{Store, StoreError, StoreOptions};

/// RFC 3339 (UTC, seconds) for a Unix time.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Errors at the vault's boundary, each with a stable code ([`VaultError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error(transparent)]
    Integrity(#[from] seal::OpenError),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    Exists { kind: &'static str, name: String },
    #[error(
        "service {service:?} needs credential {key:?}, which vault {vault:?} does not have (set it first)"
    )]
    MissingCredential {
        vault: String,
        service: String,
        key: String,
    },
    #[error(
        "credential {key:?} is used by service {service:?}; remove or change the service first"
    )]
    InUse { key: String, service: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate authority: {0}")]
    Ca(#[from] certs_cache::CertError),
    #[error("vault {vault:?} already has {max} pending proposals; wait for the operator")]
    TooManyPending { vault: String, max: usize },
    #[error("proposal {0} was already decided")]
    AlreadyDecided(u64),
    #[error("proposal {0} has expired")]
    ProposalExpired(u64),
    #[error("proposal {0} changed since it was shown; review it again")]
    ProposalChanged(u64),
    #[error(
        "proposal {id} would send stored credentials to new hosts ({}); approve with --allow-credential-reuse (CLI), the confirmation box (admin UI) or \"allow_credential_reuse\": true (JSON API) if that is intended",
        warnings.join("; ")
    )]
    CredentialReuse { id: u64, warnings: Vec<String> },
    #[error(
        "proposal {id} would lift request rules ({}); approve with --allow-rule-removal (CLI), the confirmation box (admin UI) or \"allow_rule_removal\": true (JSON API) if that is intended",
        warnings.join("; ")
    )]
    RuleRemoval { id: u64, warnings: Vec<String> },
    #[error(
        "agent {agent:?} already holds {max} live scoped tokens; revoke some or let them expire"
    )]
    TooManyTokens { agent: String, max: usize },
    #[error("host {host:?} is not allowed in a proposal: {reason}")]
    HostNotAllowed { host: String, reason: &'static str },
}

impl VaultError {
    /// The HTTP status the agent API and admin process answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Spec(_)
            | Self::Name(_)
            | Self::Invalid(_)
            | Self::MissingCredential { .. }
            | Self::HostNotAllowed { .. } => 400,
            Self::NotFound { .. } => 404,
            Self::Exists { .. }
            | Self::InUse { .. }
            | Self::AlreadyDecided(_)
            | Self::ProposalChanged(_)
            | Self::CredentialReuse { .. }
            | Self::RuleRemoval { .. } => 409,
            Self::ProposalExpired(_) => 410,
            Self::TooManyPending { .. } | Self::TooManyTokens { .. } => 429,
            Self::Store(StoreError::Fleet(fleet::FleetError::Unavailable(_))) => 503,
            Self::Store(StoreError::Full) => 507,
            _ => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Key(keys::KeyError::WrongKey) => "wrong_key",
            Self::Key(keys::KeyError::NoRootKey { .. }) => "no_root_key",
            Self::Key(keys::KeyError::KdfOutOfBounds(_)) => "vault_header_invalid",
            Self::Key(_) => "key_error",
            Self::Spec(_) | Self::Name(_) | Self::Invalid(_) => "bad_request",
            Self::Integrity(_) => "credential_integrity",
            Self::NotFound { .. } => "not_found",
            Self::Exists { .. } | Self::InUse { .. } => "conflict",
            Self::MissingCredential { .. } => "credential_missing",
            Self::Io { .. } => "storage_io",
            Self::Ca(_) => "ca_error",
            Self::TooManyPending { .. } => "too_many_pending",
            Self::AlreadyDecided(_) => "already_decided",
            Self::ProposalExpired(_) => "proposal_expired",
            Self::ProposalChanged(_) => "proposal_changed",
            Self::CredentialReuse { .. } => "credential_reuse_unconfirmed",
            Self::RuleRemoval { .. } => "rule_removal_unconfirmed",
            Self::HostNotAllowed { .. } => "host_not_allowed",
            Self::TooManyTokens { .. } => "too_many_tokens",
        }
    }
}
