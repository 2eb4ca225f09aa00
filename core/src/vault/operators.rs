//! Operators: the people who approve proposals in the admin UI. Passwords are stretched with
//! Argon2id under per-operator parameters (bounded before use, like the vault's) and compared
//! in constant time; only the derived hash is stored.
//!
//! The setup token lets the first operator be created in the browser: `serve` mints it while no
//! operator exists, and only its SHA-256 is kept (in `meta`).

use serde::{Deserialize, Serialize};

use super::keys::{KdfParams, random_array};
use super::store::{Store, Txn};
use super::tokens::{self, TokenHash, TokenKind};
use super::{VaultError, now};
use crate::names;
use crate::secret::Secret;

const META_SETUP: &[u8] = b"setup_token";
/// Passwords shorter than this are refused.
pub const MIN_PASSWORD: usize = 10;

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct OperatorRecord {
    pub name: String,
    pub kdf: KdfParams,
    /// Argon2id output, hex.
    pub hash: String,
    pub created_at: u64,
}

#[derive(Debug, Deserialize, Serialize)]
struct SetupRecord {
    hash: String,
    expires_at: u64,
}

thread_local! {
    /// Argon2's working memory, one buffer per thread that checks passwords (the admin process
    /// runs them on a few reused threads), wiped after each use.
    static ARGON_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn derive(kdf: &KdfParams, password: &Secret) -> Result<super::keys::RootKey, VaultError> {
    Ok(ARGON_MEMORY.with(|m| kdf.derive_in(password, &mut m.borrow_mut()))?)
}

fn hash_password(password: &Secret) -> Result<(KdfParams, String), VaultError> {
    if password.len() < MIN_PASSWORD {
        return Err(VaultError::Invalid(format!(
            "the password must have at least {MIN_PASSWORD} characters"
        )));
    }
    let salt: [u8; 16] = random_array()?;
    // OWASP's Argon2id baseline: 19 MiB, 2 passes, 1 lane.
    let kdf = KdfParams {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
        salt: data_encoding::HEXLOWER.encode(&salt),
    };
    let key = derive(&kdf, password)?;
    Ok((kdf, data_encoding::HEXLOWER.encode(key.as_bytes())))
}

impl Store {
    pub fn add_operator(
        &self,
        actor: &str,
        name: &str,
        password: &Secret,
    ) -> Result<(), VaultError> {
        self.insert_operator(actor, name, password, |_| Ok(()))
    }

    /// Hashes the password (outside the write lock), then in one write transaction runs `check`
    /// and adds the operator. Consumes the setup token if there is one.
    fn insert_operator(
        &self,
        actor: &str,
        name: &str,
        password: &Secret,
        check: impl FnOnce(&Txn<lmdb::RwTransaction<'_>>) -> Result<(), VaultError> + Send,
    ) -> Result<(), VaultError> {
        names::agent(name).map_err(|e| {
            VaultError::Invalid(e.to_string().replace("agent name", "operator name"))
        })?;
        let (kdf, hash) = hash_password(password)?;
        self.write(|t| {
            check(t)?;
            if t.get_raw(t.dbs().operators, name.as_bytes())?.is_some() {
                return Err(VaultError::Exists {
                    kind: "operator",
                    name: name.to_owned(),
                });
            }
            let record = OperatorRecord {
                name: name.to_owned(),
                kdf,
                hash,
                created_at: now(),
            };
            t.put(t.dbs().operators, name.as_bytes(), &record)?;
            t.delete(t.dbs().meta, META_SETUP)?;
            t.audit(actor, "operator.add", &format!("operator {name}"), "")
                .map_err(VaultError::from)
        })
    }

    pub fn operators(&self) -> Result<Vec<OperatorRecord>, VaultError> {
        Ok(self
            .read(|t| t.scan(t.dbs().operators, "operators", b""))?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    pub fn remove_operator(&self, actor: &str, name: &str) -> Result<(), VaultError> {
        self.write(|t| {
            if !t.delete(t.dbs().operators, name.as_bytes())? {
                return Err(VaultError::NotFound {
                    kind: "operator",
                    name: name.to_owned(),
                });
            }
            t.audit(actor, "operator.remove", &format!("operator {name}"), "")
                .map_err(VaultError::from)
        })
    }

    pub fn set_operator_password(
        &self,
        actor: &str,
        name: &str,
        password: &Secret,
    ) -> Result<(), VaultError> {
        let (kdf, hash) = hash_password(password)?;
        self.write(|t| {
            let mut r: OperatorRecord = t
                .get(t.dbs().operators, "operators", name.as_bytes())?
                .ok_or_else(|| VaultError::NotFound {
                    kind: "operator",
                    name: name.to_owned(),
                })?;
            r.kdf = kdf;
            r.hash = hash;
            t.put(t.dbs().operators, name.as_bytes(), &r)?;
            t.audit(actor, "operator.passwd", &format!("operator {name}"), "")
                .map_err(VaultError::from)
        })
    }

    /// Whether `password` is `name`'s. Unknown names cost the same work as known ones.
    pub fn verify_operator(&self, name: &str, password: &Secret) -> Result<bool, VaultError> {
        let record: Option<OperatorRecord> =
            self.read(|t| t.get(t.dbs().operators, "operators", name.as_bytes()))?;
        let (kdf, expected) = match &record {
            Some(r) => (
                r.kdf.clone(),
                data_encoding::HEXLOWER
                    .decode(r.hash.as_bytes())
                    .unwrap_or_default(),
            ),
            None => (
                KdfParams {
                    m_cost_kib: 19 * 1024,
                    t_cost: 2,
                    p_cost: 1,
                    salt: "00".repeat(16),
                },
                vec![0; 32],
            ),
        };
        let got = derive(&kdf, password)?;
        let same: bool = subtle::ConstantTimeEq::ct_eq(&got.as_bytes()[..], &expected[..]).into();
        Ok(same && record.is_some())
    }

    /// A one-time token for creating the first operator in the browser (only while there is
    /// none). Returns None when an operator exists.
    pub fn mint_setup_token(&self) -> Result<Option<Secret>, VaultError> {
        if !self.operators()?.is_empty() {
            return Ok(None);
        }
        let minted = tokens::mint(TokenKind::Approval)?;
        let record = SetupRecord {
            hash: minted.hash.to_hex(),
            expires_at: now() + 24 * 3600,
        };
        self.write(|t| {
            t.put(t.dbs().meta, META_SETUP, &record)
                .map_err(VaultError::from)
        })?;
        Ok(Some(minted.token))
    }

    /// Creates the first operator with the setup token (then the token is gone). The token and
    /// the empty operator table are checked inside the transaction that adds the operator, so
    /// parallel uses of one link create one operator (row 72).
    pub fn setup_first_operator(
        &self,
        token: &str,
        name: &str,
        password: &Secret,
    ) -> Result<(), VaultError> {
        // Checked once before the password is hashed (a wrong link costs no Argon2), and again
        // in the transaction that adds the operator.
        self.read(|t| Ok(setup_usable(t, token)))??;
        self.insert_operator(&format!("setup:{name}"), name, password, |t| {
            setup_usable(t, token)
        })
    }
}

/// Whether the setup link with `token` may still create an operator: the token matches and has
/// not expired, and no operator exists yet.
fn setup_usable<T: lmdb::Transaction>(t: &Txn<T>, token: &str) -> Result<(), VaultError> {
    let record: Option<SetupRecord> = t.get(t.dbs().meta, "meta", META_SETUP)?;
    let valid = record.is_some_and(|r| {
        r.expires_at > now()
            && TokenHash::from_hex(&r.hash) == Some(TokenHash::of(token.as_bytes()))
    });
    let none_yet = t
        .scan::<OperatorRecord>(t.dbs().operators, "operators", b"")?
        .is_empty();
    if valid && none_yet {
        Ok(())
    } else {
        Err(VaultError::Invalid(
            "the setup link is invalid or was used".into(),
        ))
    }
}
