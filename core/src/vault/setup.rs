//! `init` and `unlock`: the only code that handles the root key.
//!
//! [`init`] creates the data dir (0700), the root key (unless one is supplied), the data plane's
//! X25519 key pair, the CA, the LMDB environment and the vault `default`. Files are written
//! before the store's first commit, which is what marks the store as initialised; running it again
//! only verifies the key. [`unlock`] opens what the root key wraps, for `airlock serve`.

use std::path::{Path, PathBuf};

use super::keys::{self, Found, KdfParams, KeyError, KeySources, MASTER_KEY_FILE, RootKey};
use super::ops::{self, META_KEYS};
use super::records::{KeyHeader, KeyMode, UnmatchedPolicy, VaultRecord};
use super::seal::Opener;
use super::store::{Store, StoreError, StoreOptions};
use super::{VaultError, now};
use crate::fsutil;
use crate::secret::Secret;

/// The CA certificate, readable by anyone (agents need it).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key, wrapped by the root key.
pub const CA_KEY_FILE: &str = "ca-key.wrapped";
/// Name of the vault `init` creates.
pub const DEFAULT_VAULT: &str = "default";

const PURPOSE_X25519: &str = "x25519-secret";
const PURPOSE_CA_KEY: &str = "ca-key";

/// What [`init`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new vault; `key_file` is the root key file written, if one was generated.
    Created {
        mode: KeyMode,
        key_file: Option<PathBuf>,
    },
    /// The vault existed and the key opened it; nothing was changed.
    Existing,
}

/// Creates a vault in `data_dir`, or verifies the key of an existing one.
pub fn init(
    data_dir: &Path,
    sources: &KeySources,
    opts: StoreOptions,
    actor: &str,
) -> Result<InitOutcome, VaultError> {
    // Anyone could swap files in a world-writable data dir (the CA, the wrapped keys).
    fsutil::refuse_world_writable(data_dir).map_err(|source| VaultError::Io {
        path: data_dir.to_owned(),
        source,
    })?;
    match Store::open(data_dir, opts) {
        Ok(store) => {
            unlock(&store, data_dir, sources)?;
            return Ok(InitOutcome::Existing);
        }
        Err(StoreError::NotInitialised(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| VaultError::Io { path, source }
    };
    // A new data dir is private; one made beforehand (packaging's 2770) keeps its mode.
    fsutil::ensure_dir(data_dir, 0o700).map_err(io(data_dir))?;

    let NewRoot {
        root,
        mode,
        kdf,
        key_file,
    } = new_root(data_dir, sources)?;

    let opener = Opener::generate()?;
    let wrapped_secret = keys::wrap(&root, PURPOSE_X25519, opener.secret_bytes().as_ref())?;
    let ca_name = format!(
        "airlock CA {}",
        data_encoding::HEXLOWER.encode(&keys::random_array::<4>()?)
    );
    let ca = certs_cache::generate_ca(&ca_name)?;
    let wrapped_ca = keys::wrap(&root, PURPOSE_CA_KEY, &ca.key_pkcs8_der)?;
    let cert_path = data_dir.join(CA_CERT_FILE);
    fsutil::write_atomic(&cert_path, ca.cert_pem.as_bytes(), 0o644).map_err(io(&cert_path))?;
    let key_path = data_dir.join(CA_KEY_FILE);
    fsutil::write_atomic(&key_path, &wrapped_ca, 0o600).map_err(io(&key_path))?;

    let header = KeyHeader {
        mode: mode.clone(),
        kdf,
        public_key: data_encoding::HEXLOWER.encode(&opener.public_key()),
        wrapped_secret,
        ca_name,
    };
    let store = Store::create(data_dir, opts)?;
    store.write(|t| {
        t.put_format()?;
        t.put(t.dbs().meta, META_KEYS, &header)?;
        let id = t.next_id()?;
        let vault = VaultRecord {
            id,
            name: DEFAULT_VAULT.into(),
            policy: UnmatchedPolicy::Deny,
            created_at: now(),
            allow: Vec::new(),
        };
        t.put(t.dbs().vaults, DEFAULT_VAULT.as_bytes(), &vault)?;
        t.audit(
            actor,
            "init",
            &format!("data dir {}", data_dir.display()),
            &format!("key_mode={mode:?}").to_lowercase(),
        )
    })?;
    Ok(InitOutcome::Created { mode, key_file })
}

/// A new data dir's root key, how it is given, and the key file `init` made, if any.
struct NewRoot {
    root: RootKey,
    mode: KeyMode,
    kdf: Option<KdfParams>,
    key_file: Option<PathBuf>,
}

/// A new data dir's root key: the key file or passphrase `sources` name, else a key generated
/// into a new key file.
fn new_root(data_dir: &Path, sources: &KeySources) -> Result<NewRoot, VaultError> {
    let (root, mode, kdf, key_file) = match sources.find(data_dir)? {
        Some(Found::Key { key, .. }) => (key, KeyMode::File, None, None),
        Some(Found::Passphrase(p)) => {
            let params = KdfParams::generate()?;
            (params.derive(&p)?, KeyMode::Passphrase, Some(params), None)
        }
        None => {
            let key = RootKey::generate()?;
            let path = data_dir.join(MASTER_KEY_FILE);
            fsutil::write_atomic(&path, key.as_bytes(), 0o600).map_err(|source| {
                VaultError::Io {
                    path: path.clone(),
                    source,
                }
            })?;
            (key, KeyMode::File, None, Some(path))
        }
    };
    Ok(NewRoot {
        root,
        mode,
        kdf,
        key_file,
    })
}

/// What the root key unlocks: the credential opener and the CA key.
#[derive(Debug)]
pub struct Unlocked {
    pub opener: Opener,
    pub ca_key_pkcs8_der: Secret,
    pub ca_name: String,
}

/// Finds the root key, checks it against the vault, and opens what it wraps.
pub fn unlock(
    store: &Store,
    data_dir: &Path,
    sources: &KeySources,
) -> Result<Unlocked, VaultError> {
    unlock_keeping_root(store, data_dir, sources).map(|(unlocked, _)| unlocked)
}

/// As [`unlock`], also handing back the root key (a fleet node derives its log key from it).
pub fn unlock_keeping_root(
    store: &Store,
    data_dir: &Path,
    sources: &KeySources,
) -> Result<(Unlocked, RootKey), VaultError> {
    let (root, opener) = checked_root(store, data_dir, sources)?;
    let key_path = data_dir.join(CA_KEY_FILE);
    let wrapped = std::fs::read(&key_path).map_err(|source| VaultError::Io {
        path: key_path,
        source,
    })?;
    let ca_key_pkcs8_der = keys::unwrap(&root, PURPOSE_CA_KEY, &wrapped)?;
    let header = store.key_header()?;
    let unlocked = Unlocked {
        opener,
        ca_key_pkcs8_der,
        ca_name: header.ca_name,
    };
    Ok((unlocked, root))
}

/// Finds the root key and checks that it opens the vault (the X25519 secret it wraps matches
/// the vault's public key): what fleet commands need to derive the fleet's log key.
pub fn root_key(
    store: &Store,
    data_dir: &Path,
    sources: &KeySources,
) -> Result<RootKey, VaultError> {
    checked_root(store, data_dir, sources).map(|(root, _)| root)
}

/// Whether `wrapped` (a CA key as `init` wrapped it) opens under `root`: a joining node's check
/// of the root key before it writes anything.
pub fn opens_ca_key(root: &RootKey, wrapped: &[u8]) -> bool {
    keys::unwrap(root, PURPOSE_CA_KEY, wrapped).is_ok()
}

fn checked_root(
    store: &Store,
    data_dir: &Path,
    sources: &KeySources,
) -> Result<(RootKey, Opener), VaultError> {
    let header = store.key_header()?;
    let root = found_root(sources, data_dir, &header)?;
    let secret = keys::unwrap(&root, PURPOSE_X25519, &header.wrapped_secret)?;
    let bytes: [u8; 32] = secret.expose().try_into().map_err(|_| KeyError::Corrupt)?;
    let opener = Opener::from_secret_bytes(bytes);
    if opener.public_key() != ops::public_key(&header)? {
        return Err(KeyError::Corrupt.into());
    }
    Ok((root, opener))
}

/// The root key from the first source found; a passphrase is stretched with the parameters
/// `header` names. Not yet checked against anything.
pub fn found_root(
    sources: &KeySources,
    data_dir: &Path,
    header: &KeyHeader,
) -> Result<RootKey, KeyError> {
    Ok(match sources.find(data_dir)? {
        Some(Found::Key { key, .. }) => key,
        Some(Found::Passphrase(p)) => match &header.kdf {
            Some(params) => params.derive(&p)?,
            None => {
                return Err(KeyError::NoRootKey {
                    data_dir: data_dir.to_owned(),
                });
            }
        },
        None => {
            return Err(KeyError::NoRootKey {
                data_dir: data_dir.to_owned(),
            });
        }
    })
}
