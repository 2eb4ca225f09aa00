//! The store's side of OAuth credentials ([`super::oauth`] has the record and import formats):
//! storing an imported credential, listing the ones the refresher keeps fresh, opening one, and
//! recording a refresh's outcome, each bound to the vault and key like any credential. It does
//! no network I/O.

use super::oauth::{
    Endpoint, FailureCode, Import, OAuthMeta, OAuthTokens, RefreshFailure, Settings,
};
use super::ops::{CREDENTIAL_KIND, public_key, vault_key};
use super::records::CredentialRecord;
use super::seal::{self, Opener, SealContext};
use super::{Store, VaultError, now};
use crate::names;
use crate::secret::check_value;

/// One stored OAuth credential, as the refresher sees it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub vault: String,
    pub key: String,
    pub meta: OAuthMeta,
}

/// What [`Store::finish_refresh`] records.
#[derive(Debug)]
pub enum Refreshed {
    Tokens {
        tokens: OAuthTokens,
        expires_at: u64,
    },
    Failed {
        code: FailureCode,
        detail: String,
    },
}

fn context(vault_id: u64, key: &str) -> SealContext<'_> {
    SealContext {
        vault_id,
        kind: CREDENTIAL_KIND,
        name: key,
    }
}

impl Store {
    /// Stores an OAuth credential (replacing whatever `key` held). Returns whether it was new.
    pub fn set_oauth_credential(
        &self,
        actor: &str,
        vault: &str,
        key: &str,
        settings: &Settings,
        import: &Import,
    ) -> Result<bool, VaultError> {
        names::credential_key(key)?;
        Endpoint::parse(&settings.token_endpoint).map_err(VaultError::Invalid)?;
        for (what, v) in [
            ("client id", Some(settings.client_id.as_str())),
            ("scope", settings.scope.as_deref()),
            ("key id", settings.key_id.as_deref()),
        ] {
            if let Some(v) = v {
                check_value(v.as_bytes())
                    .map_err(|e| VaultError::Invalid(format!("{what}: {e}")))?;
            }
        }
        let public = public_key(&self.key_header()?)?;
        self.write(|t| {
            let v = super::ops::find_vault(t, vault)?;
            let rkey = vault_key(v.id, key);
            let old: Option<CredentialRecord> = t.get(t.dbs().credentials, "credentials", &rkey)?;
            let sealed = seal::seal(&public, context(v.id, key), import.tokens.encode().expose())?;
            let at = now();
            let version = old
                .as_ref()
                .and_then(|o| o.oauth.as_ref())
                .map_or(1, |m| m.version + 1);
            let record = CredentialRecord {
                sealed,
                created_at: old.as_ref().map_or(at, |o| o.created_at),
                updated_at: at,
                oauth: Some(OAuthMeta {
                    token_endpoint: settings.token_endpoint.clone(),
                    client_id: settings.client_id.clone(),
                    scope: settings.scope.clone(),
                    request: settings.request,
                    key_id: settings.key_id.clone(),
                    // Only a refresh token: expired, so the first request waits for a refresh.
                    expires_at: if import.tokens.access.is_empty() {
                        1
                    } else {
                        import.expires_at
                    },
                    obtained_at: at,
                    version,
                    failure: None,
                }),
            };
            t.put(t.dbs().credentials, &rkey, &record)?;
            let action = if old.is_none() {
                "credential.oauth.set"
            } else {
                "credential.oauth.replace"
            };
            t.audit(
                actor,
                action,
                &format!("credential {vault}/{key}"),
                &format!("token endpoint {}", settings.token_endpoint),
            )?;
            Ok(old.is_none())
        })
    }

    /// Every OAuth credential of every vault.
    pub fn oauth_credentials(&self) -> Result<Vec<Entry>, VaultError> {
        let mut out = Vec::new();
        for v in self.vaults()? {
            for (key, record) in self.credentials(&v.name)? {
                if let Some(meta) = record.oauth {
                    out.push(Entry {
                        vault: v.name.clone(),
                        key,
                        meta,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Opens an OAuth credential's tokens. `None` when `key` is not an OAuth credential.
    pub fn open_oauth(
        &self,
        opener: &Opener,
        vault: &str,
        key: &str,
    ) -> Result<Option<(OAuthMeta, OAuthTokens)>, VaultError> {
        let (vault_id, record) = self.credential_record(vault, key)?;
        let Some(meta) = record.oauth else {
            return Ok(None);
        };
        let raw = opener.open(context(vault_id, key), &record.sealed)?;
        let tokens = OAuthTokens::decode(raw.expose()).ok_or_else(|| {
            VaultError::Invalid(format!("credential {key}: the sealed tokens do not decode"))
        })?;
        Ok(Some((meta, tokens)))
    }

    /// Records a refresh of the tokens at `version`. Returns false, changing nothing, when the
    /// credential changed meanwhile (an operator imported new tokens, or it was deleted): the
    /// newer value wins.
    pub fn finish_refresh(
        &self,
        vault: &str,
        key: &str,
        version: u64,
        outcome: Refreshed,
    ) -> Result<bool, VaultError> {
        let public = public_key(&self.key_header()?)?;
        // A refresh must land on a full store too, or the service stops with the old token.
        self.write_reserved(|t| {
            let v = super::ops::find_vault(t, vault)?;
            let rkey = vault_key(v.id, key);
            let Some(mut record) =
                t.get::<CredentialRecord>(t.dbs().credentials, "credentials", &rkey)?
            else {
                return Ok(false);
            };
            let Some(meta) = record.oauth.as_mut().filter(|m| m.version == version) else {
                return Ok(false);
            };
            let at = now();
            match outcome {
                Refreshed::Tokens { tokens, expires_at } => {
                    record.sealed =
                        seal::seal(&public, context(v.id, key), tokens.encode().expose())?;
                    meta.expires_at = expires_at;
                    meta.obtained_at = at;
                    meta.version += 1;
                    meta.failure = None;
                    record.updated_at = at;
                }
                Refreshed::Failed { code, detail } => {
                    let attempts = meta.failure.as_ref().map_or(0, |f| f.attempts) + 1;
                    meta.failure = Some(RefreshFailure {
                        code,
                        detail,
                        at,
                        attempts,
                    });
                }
            }
            t.put(t.dbs().credentials, &rkey, &record)?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::oauth::RequestFormat;
    use super::*;
    use crate::secret::Secret;

    /// Row 87: a refresh that finishes after an operator imported a new pair is discarded; one
    /// at the current version replaces the tokens, bumps the version and clears a failure.
    #[test]
    fn row87_refresh_lands_only_on_the_version_it_started_from() {
        let dir = tempfile::tempdir().unwrap();
        super::super::setup::init(dir.path(), &Default::default(), Default::default(), "t")
            .unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let opener = super::super::setup::unlock(&store, dir.path(), &Default::default())
            .unwrap()
            .opener;
        let settings = Settings {
            token_endpoint: "https://auth.example.com/token".into(),
            client_id: "c".into(),
            scope: None,
            request: RequestFormat::Form,
            key_id: None,
        };
        let import = |refresh: &str| Import::parse(refresh.as_bytes()).unwrap();
        assert!(
            store
                .set_oauth_credential("t", "default", "K", &settings, &import("rt-a"))
                .unwrap()
        );
        let failed = Refreshed::Failed {
            code: FailureCode::Unavailable,
            detail: "HTTP 503".into(),
        };
        assert!(store.finish_refresh("default", "K", 1, failed).unwrap());
        let (meta, _) = store.open_oauth(&opener, "default", "K").unwrap().unwrap();
        assert_eq!(meta.failure.as_ref().map(|f| f.attempts), Some(1));
        assert_eq!(meta.version, 1, "a failure changes no token");
        assert!(
            !store
                .set_oauth_credential("t", "default", "K", &settings, &import("rt-b"))
                .unwrap()
        );
        let late = Refreshed::Tokens {
            tokens: OAuthTokens {
                access: Secret::new(b"at-late".to_vec()),
                refresh: Secret::new(b"rt-late".to_vec()),
                client_secret: None,
            },
            expires_at: 5000,
        };
        assert!(!store.finish_refresh("default", "K", 1, late).unwrap());
        let (meta, tokens) = store.open_oauth(&opener, "default", "K").unwrap().unwrap();
        assert_eq!((meta.version, tokens.refresh.expose()), (2, &b"rt-b"[..]));
        assert!(meta.failure.is_none() && meta.expires_at == 1);
        let fresh = Refreshed::Tokens {
            tokens: OAuthTokens {
                access: Secret::new(b"at-1".to_vec()),
                refresh: Secret::new(b"rt-1".to_vec()),
                client_secret: None,
            },
            expires_at: 5000,
        };
        assert!(store.finish_refresh("default", "K", 2, fresh).unwrap());
        let opened = store.open_credential(&opener, "default", "K").unwrap();
        assert_eq!(opened.value.expose(), b"at-1");
        assert_eq!(
            opened.others.len(),
            1,
            "the refresh token is masked, never injected"
        );
        assert_eq!(
            opened.oauth.map(|m| (m.version, m.expires_at)),
            Some((3, 5000))
        );
    }
}
