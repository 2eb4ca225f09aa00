//! A vault as code: what `airlock vault export` writes, so a vault can be kept in git. Its
//! services (with their rules), what it does with other hosts, its egress allowlist and the
//! agents it is granted to; never a secret: credentials appear only as the key names services
//! use, agents without their tokens. This module builds the file from the store and reads it
//! back; it writes nothing.

use serde::{Deserialize, Serialize};

use super::records::UnmatchedPolicy;
use super::{Store, VaultError};
use crate::spec::{ServiceSpec, SpecError};

/// The file: `vault`, `unmatched`, `allow`, `services`, `agents`.
#[derive(Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VaultFile {
    pub vault: String,
    pub unmatched: UnmatchedPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Agents granted the vault, by name (tokens are never exported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
}

impl VaultFile {
    /// Vault `name` as the store has it now.
    pub fn of(store: &Store, name: &str) -> Result<Self, VaultError> {
        let v = store.vault(name)?;
        let services = store.services(name)?.into_iter().map(|r| r.spec).collect();
        let mut agents: Vec<String> = store
            .agents()?
            .into_iter()
            .filter(|a| !a.revoked && a.vaults.iter().any(|g| g == name))
            .map(|a| a.name)
            .collect();
        agents.sort();
        Ok(Self {
            vault: v.name,
            unmatched: v.policy,
            allow: v.allow,
            services,
            agents,
        })
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    /// Reads a file written by [`VaultFile::to_yaml`] (or by hand), every service validated.
    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        let file: Self =
            serde_saphyr::from_str(text).map_err(|e| SpecError::Yaml(e.to_string()))?;
        for s in &file.services {
            s.validate()?;
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::vault::setup;

    /// The export names what a vault serves and to whom, reads back to the same thing, and holds
    /// no secret: not a credential's value, not an agent's token.
    #[test]
    fn a_vault_exports_without_secrets_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        setup::init(dir, &Default::default(), Default::default(), "test").unwrap();
        let store = Store::open(dir, Default::default()).unwrap();
        let value = Secret::new(b"sk-export-canary-0123456789".to_vec());
        store
            .set_credential("t", "default", "OPENAI_KEY", &value)
            .unwrap();
        let yaml = "services:\n  - name: openai\n    host: api.openai.com\n    auth: {type: bearer, token: OPENAI_KEY}\n    rules:\n      - {name: no-deletes, methods: [DELETE], action: deny}\n";
        let specs = crate::spec::ServiceFile::from_yaml(yaml).unwrap().services;
        store.set_services("t", "default", specs, false).unwrap();
        store
            .set_allowlist("t", "default", &["pypi.org".into()], &[])
            .unwrap();
        let minted = store
            .create_agent("t", "ci-bot", &["default".into()])
            .unwrap();
        let file = VaultFile::of(&store, "default").unwrap();
        let text = file.to_yaml();
        assert!(
            text.contains("no-deletes") && text.contains("pypi.org") && text.contains("ci-bot"),
            "{text}"
        );
        assert!(
            text.contains("OPENAI_KEY"),
            "the key name, as services use it: {text}"
        );
        assert!(!text.contains("sk-export-canary"), "{text}");
        assert!(
            !text.contains(std::str::from_utf8(minted.token.expose()).unwrap()),
            "{text}"
        );
        assert_eq!(VaultFile::from_yaml(&text).unwrap(), file);
        let bad = text.replace("name: openai", "name: O");
        assert!(
            VaultFile::from_yaml(&bad).is_err(),
            "services are validated"
        );
    }
}
