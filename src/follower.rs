//! The fleet follower of `serve` (fleet mode, `vault::fleet`): one thread that keeps this node's
//! LMDB vault in step with the fleet's change log and the workers' policy in step with the vault.
//!
//! It `LISTEN`s on the fleet's channel, so a change committed on any node is applied here as soon
//! as it is announced, and polls every second as a fallback; after each catch-up it recompiles
//! the policy at once (the 100 ms generation watcher stays as a second fallback), records a
//! heartbeat with its applied position, and sets the per-agent limits to this node's share of
//! the live nodes (`AgentLimits::set_share`). When PostgreSQL is unreachable it keeps retrying every
//! second while the workers go on serving what was applied last (and the agent limits keep the
//! last share of live nodes they had); [`FleetState`] says how long
//! ago the store was last heard from, for `/healthz`, the metrics and `fleet_max_staleness`.
//! A change that does not verify (`FleetError::Rejected`: forged, altered, reordered, replayed,
//! or after a deleted row) or a log that needs `fleet upgrade` stops the following, not the
//! serving: nothing of it is applied, the node says so once in its log, in `/healthz`
//! (`degraded`), the metrics (`airlock_fleet_log_rejected`) and its heartbeat (`fleet status`),
//! and checks again every second, so it resumes on its own once the log is repaired.
//! Nothing here runs on a worker thread.

use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use crate::fleet_state::FleetState;
use crate::proxy::Shared;
use crate::vault::StoreError;
use crate::vault::fleet::{CHANNEL, Fleet};

/// How long the follower waits for a notification before polling.
const POLL: Duration = Duration::from_secs(1);

/// Starts the follower thread.
pub fn start(shared: Arc<Shared>, fleet: Fleet) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("airlock-fleet".into())
        .spawn(move || run(&shared, &fleet))
        .map(drop)
}

fn run(shared: &Shared, fleet: &Fleet) {
    let Some(state) = shared.fleet.as_ref() else {
        return;
    };
    let mut warned = false;
    loop {
        let e = follow(shared, fleet, state, &mut warned);
        if !warned {
            tracing::warn!("the fleet's store is unreachable, serving what is applied: {e}");
            warned = true;
        }
        std::thread::sleep(POLL);
    }
}

/// Follows the log until the connection fails; returns why. `warned`: the last failure was
/// logged, so a working connection is worth a line too.
fn follow(shared: &Shared, fleet: &Fleet, state: &FleetState, warned: &mut bool) -> String {
    let mut client = match fleet.connect() {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    if std::mem::take(warned) {
        tracing::info!("the fleet's store is reachable again; catching up");
    }
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
        return e.to_string();
    }
    loop {
        let applied = match Fleet::catch_up_with(&mut client, &shared.store) {
            Ok(a) => {
                state.set_problem(None);
                a
            }
            Err(StoreError::Fleet(e)) if e.is_log_problem() => {
                state.set_problem(Some(e.to_string()));
                match shared.store.generation() {
                    Ok(g) => g,
                    Err(e) => return e.to_string(),
                }
            }
            Err(e) => return e.to_string(),
        };
        let problem = state.problem();
        if let Err(e) = fleet.heartbeat(&mut client, &state.node, applied, problem.as_deref()) {
            return e.to_string();
        }
        // Per-agent limits hold fleet-wide: each node enforces its share among live nodes.
        match Fleet::live_nodes(&mut client) {
            Ok(n) => shared.limiters.agents.set_share(n),
            Err(e) => return e.to_string(),
        }
        state.contact();
        if let Err(e) = shared.refresh() {
            tracing::warn!("reloading the vault failed: {e}");
        }
        let mut notifications = client.notifications();
        if let Err(e) = notifications.timeout_iter(POLL).next() {
            return e.to_string();
        }
        // Several announcements are one catch-up.
        while let Ok(Some(_)) = notifications.iter().next() {}
    }
}
