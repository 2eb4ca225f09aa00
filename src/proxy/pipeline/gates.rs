//! Step 2 of the pipeline: what is refused before anything goes upstream, whatever the rules
//! say: framing already known to be bad, a declared body over the cap, a credentialed request
//! the request log could not record, a fleet node too stale to know of a revocation.

use super::Limits;
use crate::http::HttpError;
use crate::http::body;
use crate::http::head::Framing;
use crate::http::io::BufConn;
use crate::proxy::Shared;
use crate::proxy::error::{ErrorKind, ProxyError};
use crate::proxy::inject::Prepared;
use crate::proxy::outcome::ExchangeError;

/// What is refused before anything goes upstream.
pub(super) fn check<C>(
    shared: &Shared,
    limits: &Limits,
    client: &BufConn<C>,
    prepared: &Prepared<'_>,
) -> Result<(), ExchangeError> {
    // Row 82: framing already known to be bad is refused before anything goes upstream.
    if prepared.framing == Framing::Chunked {
        body::check_chunked_prefix(client.buffered())?;
    }
    // Row 16: a declared length over the cap is refused before anything goes upstream.
    if let (Framing::Length(n), Some(cap)) = (prepared.framing, limits.body_cap)
        && n > cap
    {
        return Err(HttpError::BodyTooLarge(cap).into());
    }
    // Row 60: no injection goes unrecorded for longer than one batch interval.
    if prepared.service.credential.credentialed() && !shared.log.healthy() {
        let m = "the request log cannot be written";
        return Err(ProxyError::new(ErrorKind::AuditUnavailable, m).into());
    }
    // Fleet mode: past `fleet_max_staleness` a revocation may not have reached this node.
    if prepared.service.credential.credentialed()
        && shared.fleet.as_ref().is_some_and(|f| f.stale())
    {
        let m =
            "this node has not heard from the fleet's store for longer than fleet_max_staleness";
        return Err(ProxyError::new(ErrorKind::FleetStale, m).into());
    }
    Ok(())
}
