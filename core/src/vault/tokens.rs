//! Bearer tokens: `alk_agt_` (agent), `alk_tok_` (scoped), `alk_appr_` (approval) followed by 52
//! lowercase base32 characters carrying 256 random bits. Safe in URL userinfo.
//!
//! Tokens are shown once and stored only as SHA-256 ([`TokenHash`]). This module mints, parses
//! and hashes; it does not decide whether a token is valid (the store's records do).

use ring::digest;

use super::keys::{KeyError, random_array};
use crate::secret::Secret;

/// The kinds of token, by prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Agent,
    Scoped,
    Approval,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Agent => "alk_agt_",
            Self::Scoped => "alk_tok_",
            Self::Approval => "alk_appr_",
        }
    }
}

const BODY_LEN: usize = 52;

/// A freshly minted token: the secret text to show once, and the hash to store.
#[derive(Debug)]
pub struct Minted {
    pub token: Secret,
    pub hash: TokenHash,
}

/// SHA-256 of the whole token text; the only form the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, token);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    pub fn to_hex(self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let v = data_encoding::HEXLOWER.decode(s.as_bytes()).ok()?;
        v.try_into().ok().map(Self)
    }
}

/// Mints a token of `kind`.
pub fn mint(kind: TokenKind) -> Result<Minted, KeyError> {
    let raw: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(random_array()?);
    let mut text = String::with_capacity(kind.prefix().len() + BODY_LEN);
    text.push_str(kind.prefix());
    text.push_str(
        &data_encoding::BASE32_NOPAD
            .encode(raw.as_ref())
            .to_ascii_lowercase(),
    );
    let token = Secret::new(text.into_bytes());
    let hash = TokenHash::of(token.expose());
    Ok(Minted { token, hash })
}

/// Checks the shape of a presented token and returns its kind. Says nothing about validity.
pub fn parse(token: &[u8]) -> Option<TokenKind> {
    [TokenKind::Agent, TokenKind::Scoped, TokenKind::Approval]
        .into_iter()
        .find(|k| {
            token
                .strip_prefix(k.prefix().as_bytes())
                .is_some_and(|body| {
                    body.len() == BODY_LEN
                        && body
                            .iter()
                            .all(|&b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_have_the_contract_shape() {
        for kind in [TokenKind::Agent, TokenKind::Scoped, TokenKind::Approval] {
            let m = mint(kind).unwrap();
            let text = std::str::from_utf8(m.token.expose()).unwrap();
            assert!(text.starts_with(kind.prefix()));
            assert_eq!(text.len(), kind.prefix().len() + 52);
            assert_eq!(parse(m.token.expose()), Some(kind));
            assert_eq!(m.hash, TokenHash::of(text.as_bytes()));
        }
        assert_ne!(
            mint(TokenKind::Agent).unwrap().hash,
            mint(TokenKind::Agent).unwrap().hash
        );
    }

    #[test]
    fn parse_rejects_malformed() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"alk_agt_short"), None);
        assert_eq!(
            parse(format!("alk_agt_{}", "A".repeat(52)).as_bytes()),
            None
        );
        assert_eq!(
            parse(format!("alk_xxx_{}", "a".repeat(52)).as_bytes()),
            None
        );
    }
}
