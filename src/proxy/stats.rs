//! Counters the data plane bumps where things happen (requests in flight, open tunnels, upstream
//! connections dialled or reused, pooled connections discarded, retries), kept per worker: each
//! worker thread writes only its own cache line, with relaxed atomics, and the metrics endpoint
//! sums the lines at scrape time. Threads that are not workers (the OAuth refresher, tests) share
//! one extra line. Open client connections are one shared count: the cap needs the total, and it
//! moves once per connection, not per request.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

thread_local! {
    /// This thread's line: 0 for threads that are not workers, worker `i` has `i + 1`.
    static LINE: Cell<usize> = const { Cell::new(0) };
}

/// One worker's counters, alone on its cache line (128 bytes: two lines on CPUs that fetch
/// adjacent pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line {
    in_flight: AtomicI64,
    tunnels: AtomicI64,
    dialled: AtomicU64,
    reused: AtomicU64,
    discarded: AtomicU64,
    retried: AtomicU64,
    refused_network: AtomicU64,
    refused_proxy_header: AtomicU64,
}

/// The data plane's counters.
#[derive(Debug)]
pub struct Stats {
    lines: Box<[Line]>,
    /// Client connections open now (the cap is `max_connections`, row 37).
    pub(crate) connections: AtomicUsize,
}

/// The summed counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub in_flight: u64,
    pub tunnels: u64,
    pub upstream_dialled: u64,
    pub upstream_reused: u64,
    pub pool_discarded: u64,
    pub retried: u64,
    /// Connections closed at once: from outside `client_networks`, or from a balancer of
    /// `proxy_protocol_from` without a valid PROXY header.
    pub refused_network: u64,
    pub refused_proxy_header: u64,
}

impl Stats {
    /// Counters for `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        Self {
            lines: (0..=workers).map(|_| Line::default()).collect(),
            connections: AtomicUsize::new(0),
        }
    }

    /// Called once on worker thread `i` before it serves anything.
    pub fn enter_worker(i: usize) {
        LINE.set(i + 1);
    }

    fn line(&self) -> &Line {
        let i = LINE.get();
        self.lines.get(i).unwrap_or(&self.lines[0])
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight(&self) -> Open<'_> {
        Open::new(&self.line().in_flight)
    }

    /// Counts a CONNECT tunnel as open until the guard drops.
    pub fn tunnel(&self) -> Open<'_> {
        Open::new(&self.line().tunnels)
    }

    pub fn upstream(&self, reused: bool) {
        let line = self.line();
        let c = if reused { &line.reused } else { &line.dialled };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pool_discarded(&self) {
        self.line().discarded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.line().retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection refused before its first byte was served.
    pub fn refused(&self, why: Refused) {
        let line = self.line();
        let c = match why {
            Refused::Network => &line.refused_network,
            Refused::ProxyHeader => &line.refused_proxy_header,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Every line summed (a gauge line may be negative alone: a guard can drop on another
    /// thread than the one that counted it; the sum is right).
    pub fn totals(&self) -> Totals {
        let sum = |f: fn(&Line) -> i64| self.lines.iter().map(f).sum::<i64>().max(0) as u64;
        let count = |f: fn(&Line) -> u64| self.lines.iter().map(f).sum::<u64>();
        Totals {
            in_flight: sum(|l| l.in_flight.load(Ordering::Relaxed)),
            tunnels: sum(|l| l.tunnels.load(Ordering::Relaxed)),
            upstream_dialled: count(|l| l.dialled.load(Ordering::Relaxed)),
            upstream_reused: count(|l| l.reused.load(Ordering::Relaxed)),
            pool_discarded: count(|l| l.discarded.load(Ordering::Relaxed)),
            retried: count(|l| l.retried.load(Ordering::Relaxed)),
            refused_network: count(|l| l.refused_network.load(Ordering::Relaxed)),
            refused_proxy_header: count(|l| l.refused_proxy_header.load(Ordering::Relaxed)),
        }
    }
}

/// Why a connection was refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its address is outside `client_networks`.
    Network,
    /// A balancer of `proxy_protocol_from` sent no valid PROXY protocol v2 header.
    ProxyHeader,
}

/// Holds one count of a gauge until dropped.
#[derive(Debug)]
pub struct Open<'a>(&'a AtomicI64);

impl<'a> Open<'a> {
    fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each worker counts on its own line; the totals add them up.
    #[test]
    fn per_worker_lines_sum() {
        let stats = std::sync::Arc::new(Stats::new(2));
        let held = stats.in_flight();
        let s = stats.clone();
        std::thread::spawn(move || {
            Stats::enter_worker(1);
            s.upstream(true);
            s.upstream(false);
            let _t = s.tunnel();
            assert_eq!(s.totals().tunnels, 1);
        })
        .join()
        .unwrap();
        let t = stats.totals();
        assert_eq!((t.in_flight, t.tunnels), (1, 0));
        assert_eq!((t.upstream_dialled, t.upstream_reused), (1, 1));
        drop(held);
        assert_eq!(stats.totals().in_flight, 0);
    }
}
