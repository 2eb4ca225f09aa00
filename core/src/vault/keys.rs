//! The root key and what it wraps.
//!
//! The root key (32 bytes) comes from the first source found, in this order:
//! `$CREDENTIALS_DIRECTORY/master-key`, `--master-key-file`, `<data-dir>/master.key`, then a
//! passphrase stretched with Argon2id under parameters stored in the vault (and bounded before use,
//! SECURITY-TESTS.md row 40). It only ever wraps other keys ([`wrap`], [`unwrap`]): the data plane's
//! X25519 secret and the CA key. Credentials are sealed to the X25519 public key (see
//! [`super::seal`]), so sealing never needs the root key.
//!
//! This module must not persist anything itself; the store and `init` decide where bytes go.

use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::secret::Secret;

/// Length of every symmetric key here.
pub const KEY_LEN: usize = 32;
const WRAP_VERSION: u8 = 1;

/// Key-handling failures. None of them carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: a root key file must hold exactly 32 raw bytes or 64 hex digits")]
    BadKeyFile { path: PathBuf },
    #[error("wrong root key or passphrase (the vault's key check failed)")]
    WrongKey,
    #[error(
        "no root key: none of $CREDENTIALS_DIRECTORY/master-key, --master-key-file, \
         {data_dir}/master.key exists, and no passphrase was given (--passphrase-file or \
         AIRLOCK_PASSPHRASE)"
    )]
    NoRootKey { data_dir: PathBuf },
    #[error("vault_header_invalid: stored key-derivation parameters are out of bounds ({0})")]
    KdfOutOfBounds(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error("sealed key material is corrupt or was not made by this vault")]
    Corrupt,
    #[error("the system random number generator failed")]
    Random,
}

/// The 32-byte root key. Zeroized on drop, never printed.
pub struct RootKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

impl RootKey {
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self(Zeroizing::new(random_array()?)))
    }

    /// Parses a key file: 32 raw bytes, or 64 hex digits with an optional trailing newline.
    pub fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<Self, KeyError> {
        let bad = || KeyError::BadKeyFile {
            path: path.to_owned(),
        };
        if bytes.len() == KEY_LEN {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            key.copy_from_slice(bytes);
            return Ok(Self(key));
        }
        let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let decoded = Zeroizing::new(
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(text)
                .map_err(|_| bad())?,
        );
        if decoded.len() != KEY_LEN {
            return Err(bad());
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&decoded);
        Ok(Self(key))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// Argon2id parameters, stored in the vault's meta record for passphrase vaults.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    /// 16 random bytes, hex.
    pub salt: String,
}

impl KdfParams {
    /// Upper bounds checked before any allocation: a tampered record cannot make `serve` or
    /// `init` allocate gigabytes (SECURITY-TESTS.md row 40).
    pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
    pub const MIN_M_COST_KIB: u32 = 8 * 1024;
    pub const MAX_T_COST: u32 = 16;
    pub const MAX_P_COST: u32 = 8;

    pub fn generate() -> Result<Self, KeyError> {
        let salt: [u8; 16] = random_array()?;
        Ok(Self {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
            salt: data_encoding::HEXLOWER.encode(&salt),
        })
    }

    fn checked(&self) -> Result<(argon2::Params, Vec<u8>), KeyError> {
        let bound = |what: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(KeyError::KdfOutOfBounds(format!(
                    "{what}={v}, allowed {lo}..={hi}"
                )))
            }
        };
        bound(
            "m_cost_kib",
            self.m_cost_kib,
            Self::MIN_M_COST_KIB,
            Self::MAX_M_COST_KIB,
        )?;
        bound("t_cost", self.t_cost, 1, Self::MAX_T_COST)?;
        bound("p_cost", self.p_cost, 1, Self::MAX_P_COST)?;
        let salt = data_encoding::HEXLOWER
            .decode(self.salt.as_bytes())
            .ok()
            .filter(|s| (16..=64).contains(&s.len()))
            .ok_or_else(|| KeyError::KdfOutOfBounds("salt is not 16..=64 hex bytes".into()))?;
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| KeyError::KdfOutOfBounds(e.to_string()))?;
        Ok((params, salt))
    }

    /// Derives the root key from a passphrase. Bounds are checked first.
    pub fn derive(&self, passphrase: &Secret) -> Result<RootKey, KeyError> {
        self.derive_in(passphrase, &mut Vec::new())
    }

    /// As [`KdfParams::derive`], with `memory` as Argon2's working memory: resized as needed and
    /// wiped after, so a caller that derives often (password checks) reuses one buffer instead of
    /// allocating 19 MiB each time, which glibc does not hand back (row 70).
    pub fn derive_in(
        &self,
        passphrase: &Secret,
        memory: &mut Vec<argon2::Block>,
    ) -> Result<RootKey, KeyError> {
        let (params, salt) = self.checked()?;
        memory.resize(params.block_count(), argon2::Block::default());
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let done = argon.hash_password_into_with_memory(
            passphrase.expose(),
            &salt,
            key.as_mut(),
            &mut memory[..],
        );
        memory.fill(argon2::Block::default());
        done.map_err(|e| KeyError::Kdf(e.to_string()))?;
        Ok(RootKey(key))
    }
}

/// Where `serve`, `init` and friends may find the root key. Built by the CLI from flags and
/// environment; consulted in that order by [`KeySources::find`].
#[derive(Debug, Default)]
pub struct KeySources {
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=master-key:...`).
    pub credentials_directory: Option<PathBuf>,
    /// `--master-key-file`.
    pub master_key_file: Option<PathBuf>,
    /// `--passphrase-file`, else `$AIRLOCK_PASSPHRASE`, else a terminal prompt.
    pub passphrase: Option<Secret>,
}

/// The root key material that was found, before it is checked against the vault.
#[derive(Debug)]
pub enum Found {
    Key { key: RootKey, from: PathBuf },
    Passphrase(Secret),
}

impl KeySources {
    /// Returns the first source that exists: systemd credential, `--master-key-file`,
    /// `<data-dir>/master.key`, passphrase.
    pub fn find(&self, data_dir: &Path) -> Result<Option<Found>, KeyError> {
        // (path, must exist): a named --master-key-file must exist; the others are optional.
        let files = [
            self.credentials_directory
                .as_ref()
                .map(|d| (d.join("master-key"), false)),
            self.master_key_file.clone().map(|p| (p, true)),
            Some((data_dir.join(MASTER_KEY_FILE), false)),
        ];
        for (path, required) in files.into_iter().flatten() {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let bytes = Zeroizing::new(bytes);
                    let key = RootKey::from_file_bytes(&path, &bytes)?;
                    return Ok(Some(Found::Key { key, from: path }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
                Err(source) => return Err(KeyError::Io { path, source }),
            }
        }
        Ok(self.passphrase.clone().map(Found::Passphrase))
    }
}

/// File name of the generated root key inside the data dir.
pub const MASTER_KEY_FILE: &str = "master.key";

/// Wraps `plaintext` under the root key for one `purpose` (bound as associated data):
/// `[version][nonce][ciphertext+tag]`.
pub fn wrap(root: &RootKey, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
    let key = wrap_key(root, purpose)?;
    let nonce: [u8; NONCE_LEN] = random_array()?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
    out.push(WRAP_VERSION);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(purpose.as_bytes()),
        &mut body,
    )
    .map_err(|_| KeyError::Corrupt)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens what [`wrap`] made. A wrong root key gives [`KeyError::WrongKey`].
pub fn unwrap(root: &RootKey, purpose: &str, wrapped: &[u8]) -> Result<Secret, KeyError> {
    let (&version, rest) = wrapped.split_first().ok_or(KeyError::Corrupt)?;
    if version != WRAP_VERSION || rest.len() < NONCE_LEN + 16 {
        return Err(KeyError::Corrupt);
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Corrupt)?;
    let key = wrap_key(root, purpose)?;
    let mut body = Zeroizing::new(body.to_vec());
    let plain = key
        .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut body)
        .map_err(|_| KeyError::WrongKey)?;
    Ok(Secret::new(plain.to_vec()))
}

fn wrap_key(root: &RootKey, purpose: &str) -> Result<LessSafeKey, KeyError> {
    let info = [b"airlock/wrap/v1/".as_slice(), purpose.as_bytes()];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(root.as_bytes());
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| KeyError::Corrupt)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Fills an array from the system CSPRNG (ring).
pub fn random_array<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| KeyError::Random)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip_and_purpose_binding() {
        let root = RootKey::generate().unwrap();
        let w = wrap(&root, "x25519", b"secret").unwrap();
        assert_eq!(unwrap(&root, "x25519", &w).unwrap().expose(), b"secret");
        assert!(matches!(
            unwrap(&root, "ca-key", &w),
            Err(KeyError::WrongKey)
        ));
        let other = RootKey::generate().unwrap();
        assert!(matches!(
            unwrap(&other, "x25519", &w),
            Err(KeyError::WrongKey)
        ));
        assert!(matches!(
            unwrap(&root, "x25519", &w[..10]),
            Err(KeyError::Corrupt)
        ));
    }

    #[test]
    fn key_file_formats() {
        let p = Path::new("k");
        assert!(RootKey::from_file_bytes(p, &[7u8; 32]).is_ok());
        let hex = format!("{}\n", "ab".repeat(32));
        assert_eq!(
            RootKey::from_file_bytes(p, hex.as_bytes())
                .unwrap()
                .as_bytes(),
            &[0xab; 32]
        );
        assert!(RootKey::from_file_bytes(p, b"short").is_err());
    }

    /// SECURITY-TESTS.md row 40: tampered KDF parameters are refused before Argon2 allocates.
    #[test]
    fn row40_kdf_bounds_checked_before_allocation() {
        let mut p = KdfParams::generate().unwrap();
        p.m_cost_kib = u32::MAX;
        let err = p.derive(&Secret::new(b"pw".to_vec())).unwrap_err();
        assert!(err.to_string().starts_with("vault_header_invalid"), "{err}");
        let mut p = KdfParams::generate().unwrap();
        p.salt = "zz".into();
        assert!(matches!(
            p.derive(&Secret::new(b"pw".to_vec())),
            Err(KeyError::KdfOutOfBounds(_))
        ));
    }
}
