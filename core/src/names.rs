//! Name grammars: vault and agent names, service names and credential keys.
//!
//! Each check returns a [`NameError`] that names the kind of name and the rule it broke, so the
//! CLI can print it as is. This module only validates; it does not normalise.

/// A name that does not follow its grammar.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} {name:?}: {rule}")]
pub struct NameError {
    pub kind: &'static str,
    pub name: String,
    pub rule: &'static str,
}

fn check(
    kind: &'static str,
    name: &str,
    rule: &'static str,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
    len: std::ops::RangeInclusive<usize>,
) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let ok = len.contains(&bytes.len())
        && bytes.first().is_some_and(|&b| first(b))
        && bytes[1..].iter().all(|&b| rest(b));
    if ok {
        Ok(())
    } else {
        Err(NameError {
            kind,
            name: name.to_owned(),
            rule,
        })
    }
}

fn lower_digit(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn lower_digit_dash(b: u8) -> bool {
    lower_digit(b) || b == b'-'
}

/// Vault names: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn vault(name: &str) -> Result<(), NameError> {
    check(
        "vault name",
        name,
        "must match [a-z0-9][a-z0-9-]{0,62}",
        lower_digit,
        lower_digit_dash,
        1..=63,
    )
}

/// Agent and operator names share the vault grammar.
pub fn agent(name: &str) -> Result<(), NameError> {
    check(
        "agent name",
        name,
        "must match [a-z0-9][a-z0-9-]{0,62}",
        lower_digit,
        lower_digit_dash,
        1..=63,
    )
}

/// Service names: `[a-z0-9][a-z0-9-]{2,63}`.
pub fn service(name: &str) -> Result<(), NameError> {
    check(
        "service name",
        name,
        "must match [a-z0-9][a-z0-9-]{2,63}",
        lower_digit,
        lower_digit_dash,
        3..=64,
    )
}

/// Credential keys: `[A-Z][A-Z0-9_]{0,63}`.
pub fn credential_key(name: &str) -> Result<(), NameError> {
    check(
        "credential key",
        name,
        "must match [A-Z][A-Z0-9_]{0,63}",
        |b| b.is_ascii_uppercase(),
        |b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_',
        1..=64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_grammar() {
        for ok in ["default", "a", "demo-2", &"a".repeat(63)] {
            assert!(vault(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "Demo", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(vault(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_grammar() {
        assert!(service("abc").is_ok());
        assert!(service("ab").is_err());
        assert!(service(&"a".repeat(64)).is_ok());
        assert!(service(&"a".repeat(65)).is_err());
    }

    #[test]
    fn credential_key_grammar() {
        for ok in ["A", "STRIPE_KEY", "K9_"] {
            assert!(credential_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_A", "9A", "a", "A-B", &format!("A{}", "B".repeat(64))] {
            assert!(credential_key(bad).is_err(), "{bad}");
        }
        let e = credential_key("bad").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid credential key \"bad\": must match [A-Z][A-Z0-9_]{0,63}"
        );
    }
}
