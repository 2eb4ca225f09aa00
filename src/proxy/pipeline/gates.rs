//! Step 2 of the pipeline: what is refused before anything goes upstream, whatever the rules
//! say: framing already known to be bad, a declared body over the cap, a credentialed request
//! the request log could not record, a fleet node too stale to know of a revocation.

use super::Limits;
use crate::http::HttpError;
use crate::http::body;
use crate::http::head::Framing;
use crate::proxy::Shared;
use crate::proxy::error::{ErrorKind, ProxyError};
use crate::proxy::inject::Prepared;
use crate::proxy::outcome::ExchangeError;

/// What the gates read of the data plane besides the request: the data plane's state in the
/// product, a stub in the tests below. Asked only for credentialed requests.
pub(super) trait Health {
    /// Whether the request log's last batch write succeeded (row 60).
    fn log_writable(&self) -> bool;
    /// Fleet mode: whether this node went longer than `fleet_max_staleness` without the store.
    fn fleet_stale(&self) -> bool;
}

impl Health for Shared {
    fn log_writable(&self) -> bool {
        self.log.healthy()
    }
    fn fleet_stale(&self) -> bool {
        self.fleet.as_ref().is_some_and(|f| f.stale())
    }
}

/// What is refused before anything goes upstream; `buffered` is what the client sent after the
/// head so far.
pub(super) fn check(
    health: &impl Health,
    limits: &Limits,
    buffered: &[u8],
    prepared: &Prepared<'_>,
) -> Result<(), ExchangeError> {
    // Row 82: framing already known to be bad is refused before anything goes upstream.
    if prepared.framing == Framing::Chunked {
        body::check_chunked_prefix(buffered)?;
    }
    // Row 16: a declared length over the cap is refused before anything goes upstream.
    if let (Framing::Length(n), Some(cap)) = (prepared.framing, limits.body_cap)
        && n > cap
    {
        return Err(HttpError::BodyTooLarge(cap).into());
    }
    if !prepared.service.credential.credentialed() {
        return Ok(());
    }
    // Row 60: no injection goes unrecorded for longer than one batch interval.
    if !health.log_writable() {
        let m = "the request log cannot be written";
        return Err(ProxyError::new(ErrorKind::AuditUnavailable, m).into());
    }
    // Fleet mode: past `fleet_max_staleness` a revocation may not have reached this node.
    if health.fleet_stale() {
        let m =
            "this node has not heard from the fleet's store for longer than fleet_max_staleness";
        return Err(ProxyError::new(ErrorKind::FleetStale, m).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::proxy::inject::tests::{prepared_for, vault};

    #[derive(Default)]
    struct Stub {
        unwritable: bool,
        stale: bool,
        asked: Cell<u32>,
    }

    impl Health for Stub {
        fn log_writable(&self) -> bool {
            self.asked.set(self.asked.get() + 1);
            !self.unwritable
        }
        fn fleet_stale(&self) -> bool {
            self.stale
        }
    }

    fn code(r: Result<(), ExchangeError>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(ExchangeError::Respond(e)) => e.code(),
            Err(ExchangeError::Abort) => "abort",
        }
    }

    /// Rows 82, 16 and 60 and a stale fleet node, each refused before anything goes upstream;
    /// the log and the fleet are asked about credentialed requests only.
    #[test]
    fn gates_refuse_what_must_not_go_upstream() {
        let vault = vault();
        let limits = Limits {
            body_cap: Some(10),
            ..Limits::default()
        };
        let fine = Stub::default();
        let head = |extra: &str| format!("POST /v1 HTTP/1.1\r\nHost: {{}}\r\n{extra}\r\n");
        let api = prepared_for(&vault, &head("Content-Length: 4\r\n"), "api.example.com");
        assert_eq!(code(check(&fine, &limits, b"", &api)), "ok");
        let big = prepared_for(&vault, &head("Content-Length: 11\r\n"), "api.example.com");
        assert_eq!(code(check(&fine, &limits, b"", &big)), "body_too_large");
        let chunked = head("Transfer-Encoding: chunked\r\n");
        let chunked = prepared_for(&vault, &chunked, "api.example.com");
        assert_eq!(
            code(check(&fine, &limits, b"zz\r\n", &chunked)),
            "bad_framing"
        );
        assert_eq!(
            code(check(&fine, &limits, b"4\r\nabcd\r\n", &chunked)),
            "ok"
        );
        let unwritable = Stub {
            unwritable: true,
            ..Stub::default()
        };
        assert_eq!(
            code(check(&unwritable, &limits, b"", &api)),
            "audit_unavailable"
        );
        let stale = Stub {
            stale: true,
            ..Stub::default()
        };
        assert_eq!(code(check(&stale, &limits, b"", &api)), "fleet_stale");
        // A service that injects nothing is not held up by the log or the fleet.
        let plain = prepared_for(&vault, &head(""), "open.example.com");
        assert_eq!(code(check(&unwritable, &limits, b"", &plain)), "ok");
        assert_eq!(
            unwritable.asked.get(),
            1,
            "asked once, for the credentialed request"
        );
    }
}
