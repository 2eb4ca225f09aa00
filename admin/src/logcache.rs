//! The request log as the admin pages read it: every row the log holds, decoded once and kept in
//! memory, oldest first. A thread adds the rows the data plane's writer committed since it last
//! looked (by sequence number) every [`REFRESH`] and drops the rows the writer's retention
//! deleted, so a page filters and counts in memory instead of decoding up to 200,000 rows per
//! view, and summarises the last day for the overview ([`crate::daily`]) when rows arrived (at
//! most every 2 s, at least every minute). Pages hold the lock only while they read. This module
//! never writes the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use airlock_core::requestlog::{self, Row};

use crate::daily::{self, Day};

/// How often new rows are read.
const REFRESH: Duration = Duration::from_millis(500);

/// The rows, oldest first, and the newest sequence number read.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub(crate) rows: Vec<(u64, Row)>,
    last: u64,
    /// Rows arrived since the overview's summary was made.
    unsummarised: bool,
}

/// The overview's summary is computed again at most this often while rows arrive, and at least
/// this often while none do (its buckets move with the clock).
const SUMMARY_MIN: Duration = Duration::from_secs(2);
const SUMMARY_MAX: Duration = Duration::from_secs(60);

/// Shared by the pages and the refresher.
#[derive(Debug, Default)]
pub(crate) struct LogCache {
    inner: Mutex<Rows>,
    /// The last day summarised for the overview, and when.
    day: Mutex<Option<(Instant, Arc<Day>)>>,
}

impl LogCache {
    /// The rows as of the last refresh.
    pub(crate) fn rows(&self) -> MutexGuard<'_, Rows> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads what was added since the last look and forgets what retention deleted.
    pub(crate) fn refresh(&self, data_dir: &std::path::Path) {
        let last = self.rows().last;
        let Ok(new) = requestlog::read(data_dir, None, last) else {
            return;
        };
        let first = requestlog::first_seq(data_dir).ok().flatten();
        let mut r = self.rows();
        r.unsummarised |= !new.is_empty();
        if let Some((seq, _)) = new.last() {
            r.last = *seq;
        }
        r.rows.extend(new);
        if let Some(first) = first {
            let gone = r.rows.partition_point(|(s, _)| *s < first);
            r.rows.drain(..gone);
        }
        let age = self.day_slot().as_ref().map(|(at, _)| at.elapsed());
        if age.is_none_or(|a| a >= SUMMARY_MAX || (r.unsummarised && a >= SUMMARY_MIN)) {
            let now_ms = airlock_core::vault::now() * 1000;
            let day = daily::summarise(r.since(now_ms.saturating_sub(daily::DAY_MS)), now_ms);
            r.unsummarised = false;
            drop(r);
            *self.day_slot() = Some((Instant::now(), Arc::new(day)));
        }
    }

    fn day_slot(&self) -> MutexGuard<'_, Option<(Instant, Arc<Day>)>> {
        self.day.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The overview's summary of the last day, once the refresher made one.
    pub(crate) fn day(&self) -> Option<Arc<Day>> {
        self.day_slot().as_ref().map(|(_, d)| d.clone())
    }

    /// Starts the refresher thread (its first pass reads the whole log).
    pub(crate) fn start(self: &Arc<Self>, data_dir: PathBuf) {
        let cache = self.clone();
        let spawned = std::thread::Builder::new()
            .name("request-log-cache".into())
            .spawn(move || {
                loop {
                    cache.refresh(&data_dir);
                    std::thread::sleep(REFRESH);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("the request-log cache did not start: {e}");
        }
    }
}

impl Rows {
    /// Rows with a sequence number below `before` that `keep` admits, newest first, at most
    /// `limit`, and the cursor of the next page.
    pub(crate) fn page(
        &self,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&Row) -> bool,
    ) -> (Vec<&(u64, Row)>, Option<u64>) {
        let end = before.map_or(self.rows.len(), |b| {
            self.rows.partition_point(|(s, _)| *s < b)
        });
        let mut out = Vec::new();
        for item in self.rows[..end].iter().rev() {
            if keep(&item.1) {
                if out.len() == limit {
                    let older = out.last().map(|(s, _): &&(u64, Row)| *s);
                    return (out, older);
                }
                out.push(item);
            }
        }
        (out, None)
    }

    /// The rows at or after `since_ms`, oldest first (rows are in about time order: the search
    /// allows a minute of disorder, callers filter exactly).
    pub(crate) fn since(&self, since_ms: u64) -> &[(u64, Row)] {
        let floor = since_ms.saturating_sub(60_000);
        let start = self.rows.partition_point(|(_, r)| r.at_ms < floor);
        &self.rows[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_by_cursor_newest_first() {
        let rows = Rows {
            rows: (1..=25)
                .map(|i| {
                    let row = Row {
                        at_ms: i * 1000,
                        status: if i % 5 == 0 { 403 } else { 200 },
                        ..Row::default()
                    };
                    (i, row)
                })
                .collect(),
            last: 25,
            unsummarised: false,
        };
        let (first, older) = rows.page(None, 10, |_| true);
        assert_eq!(
            first.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (16..=25).rev().collect::<Vec<_>>()
        );
        assert_eq!(older, Some(16));
        let (second, _) = rows.page(older, 10, |_| true);
        assert_eq!(second.first().map(|(s, _)| *s), Some(15));
        let (refused, none) = rows.page(None, 10, |r| r.status == 403);
        assert_eq!((refused.len(), none), (5, None));
        assert_eq!(
            rows.since(20_000 + 60_000).first().map(|(s, _)| *s),
            Some(20)
        );
    }
}
