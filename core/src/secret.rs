//! Secret bytes: [`Secret`] zeroizes on drop, prints as `Secret(<redacted>)`, and has no
//! `Display` or `Serialize`, so a secret cannot reach a log, an error or a JSON body by accident.
//!
//! This module must not grow a way to format the contents; code that needs the bytes calls
//! [`Secret::expose`] at the one place they are used.

use std::fmt;

use zeroize::Zeroizing;

/// A credential value, a passphrase or key material. Zeroized when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes ownership of `bytes`; they are zeroized when the secret is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes. Call this only where the value is used (sealing, injecting).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a value read from standard input was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StdinValueError {
    #[error("the value is empty")]
    Empty,
    #[error("the value contains a {0} character; only one trailing newline is allowed")]
    ForbiddenChar(&'static str),
}

/// Turns raw standard input into one value, as the CLI documents it: one trailing `\n` or
/// `\r\n` is stripped; any other CR, LF or NUL is refused.
pub fn value_from_stdin(mut raw: Vec<u8>) -> Result<Secret, StdinValueError> {
    if raw.ends_with(b"\r\n") {
        raw.truncate(raw.len() - 2);
    } else if raw.ends_with(b"\n") {
        raw.truncate(raw.len() - 1);
    }
    let raw = Secret::new(raw);
    check_value(raw.expose())?;
    Ok(raw)
}

/// Refuses values that could split a header or a line: CR, LF, NUL (SECURITY-TESTS.md row 19).
pub fn check_value(value: &[u8]) -> Result<(), StdinValueError> {
    if value.is_empty() {
        return Err(StdinValueError::Empty);
    }
    for &b in value {
        match b {
            b'\r' => return Err(StdinValueError::ForbiddenChar("CR")),
            b'\n' => return Err(StdinValueError::ForbiddenChar("LF")),
            0 => return Err(StdinValueError::ForbiddenChar("NUL")),
            _ => {}
        }
    }
    Ok(())
}

/// Row 63: no core dumps (they would hold opened secrets), and not dumpable, which also keeps
/// other processes of this user from ptrace and `/proc/<pid>/mem` and `environ`. Both processes
/// call it first thing: the data plane (opened credentials) and the admin process (pasted values
/// and session tokens; row 84).
pub fn harden_process() {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    if let Err(e) = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    ) {
        tracing::warn!("could not disable core dumps: {e}");
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!("could not mark the process non-dumpable: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new(b"sk-canary".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn stdin_strips_one_line_end_only() {
        assert_eq!(
            value_from_stdin(b"abc\n".to_vec()).unwrap().expose(),
            b"abc"
        );
        assert_eq!(
            value_from_stdin(b"abc\r\n".to_vec()).unwrap().expose(),
            b"abc"
        );
        assert_eq!(value_from_stdin(b"abc".to_vec()).unwrap().expose(), b"abc");
        assert_eq!(
            value_from_stdin(b"abc\n\n".to_vec()).unwrap_err(),
            StdinValueError::ForbiddenChar("LF")
        );
    }

    /// SECURITY-TESTS.md row 19: CR, LF and NUL inside a credential are refused at store time.
    #[test]
    fn row19_control_characters_refused() {
        for bad in [&b"a\rb"[..], b"a\nb", b"a\0b", b"\r"] {
            assert!(value_from_stdin(bad.to_vec()).is_err(), "{bad:?}");
        }
        assert_eq!(
            value_from_stdin(b"\n".to_vec()).unwrap_err(),
            StdinValueError::Empty
        );
    }
}
