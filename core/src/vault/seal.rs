//! Credential sealing: anyone with the vault's X25519 public key can seal ([`seal`]); only the
//! holder of the secret key, unwrapped by the root key in the data plane, can open ([`Opener`]).
//!
//! Format v1: `[1][ephemeral public key: 32][nonce: 12][AES-256-GCM ciphertext + tag]`. The AES
//! key is HKDF-SHA256(salt = ephemeral || recipient public key, ikm = X25519 shared secret). The
//! associated data binds format version, vault id, record kind and key name (R7), so sealed bytes
//! moved to another record fail to open.
//!
//! This module must not log, store or return plaintext other than through [`Opener::open`].

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::keys::{KeyError, random_array};
use crate::secret::Secret;

pub const SEAL_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 32 + NONCE_LEN;
const TAG_LEN: usize = 16;

/// Which record a sealed value belongs to; every field goes into the associated data.
#[derive(Clone, Copy, Debug)]
pub struct SealContext<'a> {
    pub vault_id: u64,
    pub kind: &'a str,
    pub name: &'a str,
}

impl SealContext<'_> {
    fn aad(&self, version: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(32 + self.kind.len() + self.name.len());
        aad.extend_from_slice(b"airlock-seal");
        aad.push(version);
        aad.extend_from_slice(&self.vault_id.to_be_bytes());
        for part in [self.kind, self.name] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// Why a sealed value did not open. Stable code: `credential_integrity`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("credential_integrity: sealed value has unknown format version {0}")]
    UnknownVersion(u8),
    #[error("credential_integrity: sealed value is truncated")]
    Truncated,
    #[error("credential_integrity: sealed value failed authentication (tampered or moved)")]
    Authentication,
}

/// Seals `plaintext` to `recipient` (the vault's public key).
pub fn seal(
    recipient: &[u8; 32],
    ctx: SealContext<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let ephemeral = StaticSecret::from(random_array::<32>()?);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(KeyError::Corrupt);
    }
    let key = derive(shared.as_bytes(), ephemeral_public.as_bytes(), recipient)?;
    let nonce: [u8; NONCE_LEN] = random_array()?;
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(ctx.aad(SEAL_VERSION)),
        &mut body,
    )
    .map_err(|_| KeyError::Corrupt)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(ephemeral_public.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

/// The data plane's X25519 secret key; opens sealed credentials.
pub struct Opener {
    secret: StaticSecret,
    public: [u8; 32],
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Opener(<redacted>)")
    }
}

impl Opener {
    /// A fresh key pair (at `init`).
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self::from_secret_bytes(random_array::<32>()?))
    }

    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let secret = StaticSecret::from(*bytes);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The secret key bytes, for wrapping under the root key.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// Opens a sealed value made for `ctx`.
    pub fn open(&self, ctx: SealContext<'_>, sealed: &[u8]) -> Result<Secret, OpenError> {
        let (&version, _) = sealed.split_first().ok_or(OpenError::Truncated)?;
        if version != SEAL_VERSION {
            return Err(OpenError::UnknownVersion(version));
        }
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&sealed[1..33]);
        let nonce = Nonce::try_assume_unique_for_key(&sealed[33..HEADER_LEN])
            .map_err(|_| OpenError::Truncated)?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(ephemeral));
        if !shared.was_contributory() {
            return Err(OpenError::Authentication);
        }
        let key = derive(shared.as_bytes(), &ephemeral, &self.public)
            .map_err(|_| OpenError::Authentication)?;
        let mut body = Zeroizing::new(sealed[HEADER_LEN..].to_vec());
        let plain = key
            .open_in_place(nonce, Aad::from(ctx.aad(version)), &mut body)
            .map_err(|_| OpenError::Authentication)?;
        Ok(Secret::new(plain.to_vec()))
    }
}

fn derive(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<LessSafeKey, KeyError> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(shared);
    let okm = prk
        .expand(&[b"airlock/seal/v1"], &AES_256_GCM)
        .map_err(|_| KeyError::Corrupt)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(name: &str) -> SealContext<'_> {
        SealContext {
            vault_id: 1,
            kind: "credential",
            name,
        }
    }

    #[test]
    fn seal_with_public_key_only_open_with_secret() {
        let opener = Opener::generate().unwrap();
        let sealed = seal(&opener.public_key(), ctx("A"), b"sk-canary").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"sk-canary"));
        assert_eq!(
            opener.open(ctx("A"), &sealed).unwrap().expose(),
            b"sk-canary"
        );
    }

    /// SECURITY-TESTS.md row 57 / I-05: moved, flipped, truncated and re-versioned values fail cleanly.
    #[test]
    fn row57_tampering_fails_with_integrity_error() {
        let opener = Opener::generate().unwrap();
        let sealed = seal(&opener.public_key(), ctx("A"), b"value").unwrap();
        assert_eq!(
            opener.open(ctx("B"), &sealed),
            Err(OpenError::Authentication)
        );
        let other_vault = SealContext {
            vault_id: 2,
            ..ctx("A")
        };
        assert_eq!(
            opener.open(other_vault, &sealed),
            Err(OpenError::Authentication)
        );
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert!(
                opener.open(ctx("A"), &flipped).is_err(),
                "bit flip at {i} accepted"
            );
        }
        for len in 0..sealed.len() {
            assert!(opener.open(ctx("A"), &sealed[..len]).is_err());
        }
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert_eq!(
            opener.open(ctx("A"), &v2),
            Err(OpenError::UnknownVersion(2))
        );
        let stranger = Opener::generate().unwrap();
        assert_eq!(
            stranger.open(ctx("A"), &sealed),
            Err(OpenError::Authentication)
        );
    }
}
