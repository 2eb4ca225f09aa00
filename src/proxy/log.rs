//! The request log's side of the proxy: one [`Entry`] per authenticated request, opened when the
//! request is admitted, filled in by the exchange (service, status, bytes) and written when it
//! ends; and [`refuse_unmatched`], which records a request to a host without a service under the
//! agent's refusal budget.
//!
//! Finished rows wait in their worker's own buffer and go to the request log's writer
//! [`FLUSH_ROWS`] at a time, or [`FLUSH_INTERVAL`] after the first of them: one channel send per
//! batch, so a request writes no cache line another thread shares.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Shared;
use super::auth::Identity;
use super::error::{ErrorKind, ProxyError};
use super::outcome::{ExchangeError, Outcome};
use super::request::Request;
use crate::requestlog::{Row, Sink};

/// Rows a worker gathers before handing them over at once.
const FLUSH_ROWS: usize = 64;
/// Longest a finished row waits in its worker before it is handed over.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

thread_local! {
    /// This worker's finished rows not yet handed to the writer. A process has one request
    /// log, so the rows need not remember which sink they are for.
    static PENDING: RefCell<Vec<Row>> = const { RefCell::new(Vec::new()) };
}

/// Queues `row` on this worker: a full batch is handed over now; the first row of a batch
/// starts a timer that hands over whatever is queued when it fires.
fn record(log: &Sink, row: Row) {
    let (first, full) = PENDING.with_borrow_mut(|rows| {
        rows.push(row);
        let full = (rows.len() >= FLUSH_ROWS).then(|| std::mem::take(rows));
        (rows.len() == 1, full)
    });
    if let Some(rows) = full {
        log.record_all(rows);
    }
    if first {
        let log = log.clone();
        monoio::spawn(async move {
            monoio::time::sleep(FLUSH_INTERVAL).await;
            let rows = PENDING.with_borrow_mut(std::mem::take);
            if !rows.is_empty() {
                log.record_all(rows);
            }
        });
    }
}

/// A request-log row being filled in.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) row: Row,
    started: Instant,
}

impl Entry {
    /// A row for an authenticated request to `host` from the agent at `client`.
    pub(super) fn new(id: &Identity, host: &str, client: IpAddr) -> Self {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let row = Row {
            at_ms,
            agent: id.who.clone(),
            vault: id.vault.clone(),
            host: host.to_owned(),
            client: Some(client),
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
    /// As [`Entry::finish`], for a request refused before its exchange (a revoked token, the
    /// agent's limits): recorded within the agent's refusal budget, so a loop of refused
    /// requests cannot flush the log (row 73).
    pub(super) fn finish_refused(
        self,
        shared: &Shared,
        id: &Identity,
        result: &Result<Outcome, ExchangeError>,
    ) {
        if shared.limiters.refusals.try_take(&id.limit_key) {
            self.finish(&shared.log, result);
        }
    }

    pub(super) fn finish(mut self, log: &Sink, result: &Result<Outcome, ExchangeError>) {
        self.row.latency_us = self.started.elapsed().as_micros() as u64;
        match result {
            Err(ExchangeError::Respond(e)) => {
                self.row.status = e.status();
                self.row.error = Some(e.code().to_owned());
            }
            Err(ExchangeError::Abort) => self.row.error = Some("aborted".to_owned()),
            Ok(_) => {}
        }
        record(log, self.row);
    }
}

/// A request to a host the vault has no service for: `refused` is answered and recorded in the
/// request log; past the agent's refusal budget the answer is 429 and no row is written (review
/// B6: one agent must not flush the log of every vault with refused CONNECTs).
pub(super) fn refuse_unmatched(
    shared: &Shared,
    id: &Identity,
    (host, client): (&str, IpAddr),
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
    let mut entry = Entry::new(id, host, client);
    entry.row.method = req.method().to_owned();
    entry.finish(&shared.log, &Err(ExchangeError::Respond(refused.clone())));
    refused
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::requestlog::{self, Observe};

    /// Counts the rows the request log's writer takes.
    struct Count(Arc<AtomicU64>);

    impl Observe for Count {
        fn row(&mut self, _: &Row) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn dropped(&mut self, _: u64) {}
    }

    #[test]
    fn rows_reach_the_writer_in_full_batches_and_after_the_flush_interval() {
        let dir = tempfile::tempdir().unwrap();
        let taken = Arc::new(AtomicU64::new(0));
        let sink = requestlog::start(dir.path(), Count(taken.clone())).unwrap();
        let wait = requestlog::BATCH_INTERVAL + FLUSH_INTERVAL;
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let row = |i| Row {
                vault: "default".into(),
                path: format!("/{i}"),
                ..Row::default()
            };
            for i in 0..FLUSH_ROWS + 3 {
                record(&sink, row(i));
            }
            // The full batch went at once; the three after it wait in this worker.
            assert_eq!(PENDING.with_borrow(Vec::len), 3);
            monoio::time::sleep(wait).await;
            monoio::time::sleep(wait).await;
            assert_eq!(PENDING.with_borrow(Vec::len), 0);
        });
        assert_eq!(taken.load(Ordering::Relaxed), FLUSH_ROWS as u64 + 3);
    }
}
