//! What the fleet follower ([`crate::follower`]) reports to the rest of the process: when this
//! node last heard from the store, and a change it refuses. Written by the follower (and by an
//! unknown token's catch-up), read by `/healthz`, the metrics and credentialed requests; held in
//! the proxy's shared state. Only atomics on the read path; the problem text behind a mutex that
//! only the follower and `/healthz` take.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// What the follower reports to the rest of the process. Written by the follower (and by an
/// unknown token's catch-up), read by `/healthz`, the metrics and credentialed requests.
#[derive(Debug)]
pub struct FleetState {
    pub node: String,
    /// Unix milliseconds of the last successful exchange with the store (start-up at first).
    last_contact_ms: AtomicU64,
    /// Unix milliseconds of the last catch-up asked for by an unknown token.
    last_asked_ms: AtomicU64,
    /// Past this without contact, credentialed requests fail closed.
    pub max_staleness: Option<Duration>,
    /// Set while the log holds a change this node refuses (read without the lock).
    refusing: AtomicBool,
    /// Why, for `/healthz` and the heartbeat.
    problem: Mutex<Option<String>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl FleetState {
    pub fn new(node: String, max_staleness: Option<Duration>) -> Self {
        Self {
            node,
            // Start-up read the store moments ago: the clock starts now, not at the epoch.
            last_contact_ms: AtomicU64::new(now_ms()),
            last_asked_ms: AtomicU64::new(0),
            max_staleness,
            refusing: AtomicBool::new(false),
            problem: Mutex::new(None),
        }
    }

    /// What stops this node following the log, if anything.
    pub fn problem(&self) -> Option<String> {
        if !self.refusing.load(Ordering::Relaxed) {
            return None;
        }
        self.problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records what stops the following (or that nothing does); logs a change of it once.
    pub(crate) fn set_problem(&self, problem: Option<String>) {
        let mut slot = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        if *slot == problem {
            return;
        }
        match &problem {
            Some(p) => {
                tracing::error!("the fleet's change log is refused, serving what is applied: {p}")
            }
            None => tracing::info!("the fleet's change log verifies again; following it"),
        }
        self.refusing.store(problem.is_some(), Ordering::Relaxed);
        *slot = problem;
    }

    pub(crate) fn contact(&self) {
        self.last_contact_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long ago the store was last heard from.
    pub fn contact_age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_contact_ms.load(Ordering::Relaxed)))
    }

    /// Whether credentialed requests must fail closed (`fleet_max_staleness` passed).
    pub fn stale(&self) -> bool {
        self.max_staleness
            .is_some_and(|max| self.contact_age() > max)
    }

    /// Whether an unknown token may make this node catch up now: at most every 50 ms, so a flood
    /// of made-up tokens costs the store one query per 50 ms (each is still an auth failure).
    pub fn may_ask(&self) -> bool {
        let now = now_ms();
        let last = self.last_asked_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 50
            && self
                .last_asked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
