//! The request log's side of the proxy: one [`Entry`] per authenticated request, opened when the
//! request is admitted, filled in by the exchange (service, status, bytes) and written when it
//! ends; and [`refuse_unmatched`], which records a request to a host without a service under the
//! agent's refusal budget.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::Shared;
use super::auth::Identity;
use super::error::{ErrorKind, ProxyError};
use super::outcome::{ExchangeError, Outcome};
use super::request::Request;
use crate::requestlog::Row;

/// A request-log row being filled in.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) row: Row,
    started: Instant,
}

impl Entry {
    /// A row for an authenticated request to `host`.
    pub(super) fn new(id: &Identity, host: &str) -> Self {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let row = Row {
            at_ms,
            agent: id.who.clone(),
            vault: id.vault.clone(),
            host: host.to_owned(),
            ..Row::default()
        };
        Self {
            row,
            started: Instant::now(),
        }
    }

    /// Names the request's method and path (without the query).
    pub(super) fn request(&mut self, req: &Request) {
        self.row.method = req.method().to_owned();
        self.row.path = req.path().to_owned();
    }

    /// Completes the row with the outcome and hands it to the request log.
    pub(super) fn finish(mut self, shared: &Shared, result: &Result<Outcome, ExchangeError>) {
        self.row.latency_us = self.started.elapsed().as_micros() as u64;
        match result {
            Err(ExchangeError::Respond(e)) => {
                self.row.status = e.status();
                self.row.error = Some(e.code().to_owned());
            }
            Err(ExchangeError::Abort) => self.row.error = Some("aborted".to_owned()),
            Ok(_) => {}
        }
        shared.log.record(self.row);
    }
}

/// A request to a host the vault has no service for: `refused` is answered and recorded in the
/// request log; past the agent's refusal budget the answer is 429 and no row is written (review
/// B6: one agent must not flush the log of every vault with refused CONNECTs).
pub(super) fn refuse_unmatched(
    shared: &Shared,
    id: &Identity,
    host: &str,
    req: &Request,
    refused: ProxyError,
) -> ProxyError {
    if !shared.limiters.refusals.try_take(&id.limit_key) {
        return ProxyError::new(
            ErrorKind::RateLimited,
            "too many requests to hosts without a service; propose access instead",
        )
        .hint(format!("{}/v1/proposals", shared.api_base));
    }
    let mut entry = Entry::new(id, host);
    entry.row.method = req.method().to_owned();
    entry.finish(shared, &Err(ExchangeError::Respond(refused.clone())));
    refused
}
