//! The data plane. A connection moves through named steps, each in its own file (drawn in
//! `src/proxy/LIFECYCLE.md`):
//!
//! - [`connect`]: accept, the connection cap, the first head; CONNECT decided before any TLS;
//! - [`client`]: reading heads, the one request loop, airlock's own replies;
//! - [`request`]: the head, parsed once, that every later step reads;
//! - [`intercept`]: the leaf, the TLS accept and the tunnel's requests;
//! - [`tunnel`]: the opaque tunnel for unmatched hosts, when the vault allows it;
//! - [`plain`]: plain-HTTP proxying; [`agent_api`]: origin-form requests;
//! - [`peer`]: the agent's end of a connection: its address, and whether it hung up;
//! - [`proxy_protocol`]: the agent's address from a balancer's PROXY protocol v2 header;
//! - [`inject`]: the authority and path checks, the service match and the upstream head;
//! - [`pipeline`]: one admitted request, step by step (prepare, gates, verdict, credential, send,
//!   relay, log), each step a file of `pipeline/`;
//! - [`hold`]: a request a `hold` rule stopped, waiting for an operator;
//! - [`sigv4`]: AWS Signature Version 4 for `aws-sigv4` services, applied by [`pipeline`];
//! - [`response`]: the response head and body, masked; upgraded relays;
//! - [`log`]: the request-log entry of each request;
//! - [`upstream`] (dialing and the pool), [`auth`], [`limits`], [`stats`], [`error`] and
//!   [`outcome`] serve them.
//!
//! [`Shared`] is what every worker reads: the store (token checks), the compiled [`Policy`]
//! (swapped whole when the vault generation changes, read per request through a per-thread copy,
//! [`PolicyCell`]), the leaf cache, and the [`Tunables`] (swapped whole on a config reload; the
//! per-request limits as atomics). Nothing here blocks a worker thread on a lock held across an
//! `.await`.

pub mod agent_api;
pub mod auth;
pub mod authority;
pub mod body_substitution;
mod client;
pub mod connect;
pub mod error;
pub mod hold;
pub mod inject;
mod intercept;
pub mod limits;
mod log;
mod pipeline;
pub(crate) use log::FLUSH_INTERVAL as LOG_FLUSH_INTERVAL;
pub mod outcome;
mod peer;
mod plain;
pub mod proxy_protocol;
pub mod request;
mod response;
pub mod sigv4;
pub mod stats;
mod tunnel;
pub mod upstream;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use certs_cache::LeafCache;

use crate::policy::Policy;
use crate::vault::Store;
use crate::vault::seal::Opener;

pub use self::upstream::{Limits, LiveLimits};

/// State shared by all workers.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub opener: Opener,
    pub certs: LeafCache,
    pub policy: PolicyCell,
    /// Resolution, the SSRF guard, egress and upstream TLS: what every dial reads.
    pub dialer: upstream::Dialer,
    /// Where approval links point and how long holds wait ([`Shared::holds`], per hold).
    pub holds: RwLock<Arc<Holds>>,
    /// The timeouts and caps, read per request without a lock ([`Shared::limits`]).
    pub live_limits: LiveLimits,
    /// `http://127.0.0.1:7480`: where agents reach the agent API (for hints).
    pub api_base: String,
    pub ca_pem: String,
    pub log: crate::requestlog::Sink,
    /// Set on SIGTERM/SIGINT: finish in-flight requests, take no new ones.
    pub shutdown: AtomicBool,
    /// The per-agent budgets and the limiters of mints, refusals and failed authentications.
    pub limiters: limits::Limiters,
    /// Counted where it happens, per worker; summed by the metrics endpoint.
    pub stats: stats::Stats,
    /// Asks the OAuth refresher thread for renewed access tokens.
    pub oauth: crate::renewal::Refresher,
    /// Fleet mode: this node and how fresh its copy of the vault is.
    pub fleet: Option<crate::fleet_state::FleetState>,
    /// When the proxy port speaks TLS: its server config (`proxy_tls_names` or `proxy_tls_cert`).
    pub proxy_tls: Option<Arc<rustls::ServerConfig>>,
    /// Client addresses allowed to connect (`client_networks`); empty: any.
    pub client_networks: Vec<crate::config::Cidr>,
    /// Balancers whose connections start with a PROXY protocol v2 header
    /// (`proxy_protocol_from`; [`proxy_protocol`]).
    pub proxy_protocol_from: Vec<crate::config::Cidr>,
    /// Who holds requests here (`NODE/PID-STARTED`; NODE is the fleet node, or `local`): a
    /// restart rejects the held requests of this node's earlier runs ([`hold`]).
    pub hold_node: String,
}

/// What [`Shared::new`] needs; everything else starts empty or at its default.
#[derive(Debug)]
pub struct Parts {
    pub store: Store,
    pub opener: Opener,
    pub certs: LeafCache,
    pub resolver: Arc<dyn upstream::Resolve>,
    pub tunables: Tunables,
    pub limits: Limits,
    /// Per agent: requests per second and in flight (0: off).
    pub agent_limits: (u32, u32),
    pub api_base: String,
    pub ca_pem: String,
    pub log: crate::requestlog::Sink,
    pub oauth: crate::renewal::Refresher,
    /// Worker threads: each counts on its own line ([`stats::Stats`]).
    pub workers: usize,
}

impl Shared {
    /// The state for `parts`, with an empty policy (stored by the caller), the limiters at
    /// their defaults, no fleet, plain TCP and any client address (set those fields after).
    pub fn new(p: Parts) -> Self {
        let (rate, in_flight) = p.agent_limits;
        Self {
            store: p.store,
            opener: p.opener,
            certs: p.certs,
            policy: PolicyCell::new(Policy::default()),
            dialer: upstream::Dialer::new(p.resolver, p.tunables.dial),
            holds: RwLock::new(Arc::new(p.tunables.holds)),
            live_limits: LiveLimits::new(p.limits),
            api_base: p.api_base,
            ca_pem: p.ca_pem,
            log: p.log,
            shutdown: AtomicBool::new(false),
            limiters: limits::Limiters::new(rate, in_flight),
            stats: stats::Stats::new(p.workers),
            oauth: p.oauth,
            fleet: None,
            proxy_tls: None,
            client_networks: Vec::new(),
            proxy_protocol_from: Vec::new(),
            hold_node: hold::node_id("local"),
        }
    }
}

/// The compiled policy, swapped whole when the vault generation changes, and read once per
/// request without a lock or a shared atomic write: each thread keeps its own copy, tagged with
/// the epoch it was read at, and re-reads the lock only when the epoch moved. Epochs are unique
/// across cells, so a copy never outlives the cell it came from. A request may see the previous
/// policy for the instant a swap takes; never a mix of two.
#[derive(Debug)]
pub struct PolicyCell {
    lock: RwLock<Arc<Policy>>,
    epoch: AtomicU64,
}

static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static POLICY_COPY: RefCell<Option<(u64, PolicyRef)>> = const { RefCell::new(None) };
}

/// A thread's handle on a policy: cloning it touches no memory another thread writes (an `Arc`
/// clone would bump a count every worker shares).
#[derive(Clone, Debug)]
pub struct PolicyRef(
    #[allow(
        clippy::redundant_allocation,
        reason = "the Rc is per thread, the Arc is shared"
    )]
    Rc<Arc<Policy>>,
);

impl std::ops::Deref for PolicyRef {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        &self.0
    }
}

impl PolicyCell {
    pub fn new(policy: Policy) -> Self {
        Self {
            lock: RwLock::new(Arc::new(policy)),
            epoch: AtomicU64::new(NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)),
        }
    }

    pub fn store(&self, policy: Policy) {
        *self.lock.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
        self.epoch.store(
            NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            Ordering::Release,
        );
    }

    pub fn load(&self) -> PolicyRef {
        let epoch = self.epoch.load(Ordering::Acquire);
        POLICY_COPY.with(|copy| {
            let mut copy = copy.borrow_mut();
            if let Some((e, p)) = &*copy
                && *e == epoch
            {
                return p.clone();
            }
            let p = PolicyRef(Rc::new(
                self.lock
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            ));
            *copy = Some((epoch, p.clone()));
            p
        })
    }
}

/// The settings that SIGHUP re-reads from the config file and swaps in whole (with the
/// [`Limits`], kept apart as atomics). Open connections keep working; each new request, dial and
/// connection reads the current values.
#[derive(Debug)]
pub struct Tunables {
    pub dial: upstream::DialSettings,
    pub holds: Holds,
}

/// What approvals and holds read.
#[derive(Debug)]
pub struct Holds {
    /// `http://host:port` of the admin UI, for `approval_url`s (none when it has no HTTP listener).
    pub admin_base: Option<String>,
    /// How long a held request waits for an operator.
    pub timeout: std::time::Duration,
}

impl Shared {
    /// Where an operator approves proposal `id`.
    pub fn approval_url(&self, id: u64) -> Option<String> {
        self.holds()
            .admin_base
            .as_ref()
            .map(|b| format!("{b}/proposals/{id}"))
    }

    /// The current approval settings (a cheap `Arc` clone).
    pub fn holds(&self) -> Arc<Holds> {
        self.holds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current timeouts and caps.
    pub fn limits(&self) -> Limits {
        self.live_limits.load()
    }

    /// Swaps in settings re-read from the config file.
    pub fn set_tunables(&self, tunables: Tunables, limits: Limits) {
        self.live_limits.store(limits);
        self.dialer.set(tunables.dial);
        *self.holds.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tunables.holds);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// The current compiled policy (this thread's copy; see [`PolicyCell`]).
    pub fn policy(&self) -> PolicyRef {
        self.policy.load()
    }

    /// Fleet mode, for a token this node does not know: applies what the fleet has (a token
    /// minted on another node a moment ago), at most every 50 ms. Blocking: call it off the
    /// workers. Returns whether anything new was applied.
    pub fn fleet_catch_up(&self) -> bool {
        let (Some(state), Some(fleet)) = (&self.fleet, self.store.fleet()) else {
            return false;
        };
        if !state.may_ask() {
            return false;
        }
        let before = self.store.generation().ok();
        let after = fleet.catch_up(&self.store).ok();
        if after.is_some() && after != before {
            let _ = self.refresh();
            return true;
        }
        false
    }

    /// Recompiles the policy if the vault changed, pre-warming leaves for new hosts first.
    pub fn refresh(&self) -> Result<bool, crate::vault::VaultError> {
        let generation = self.store.generation()?;
        if generation == self.policy().generation {
            return Ok(false);
        }
        let policy = Policy::compile(&self.store, &self.opener, &self.policy())?;
        self.prewarm(&policy);
        self.policy.store(policy);
        Ok(true)
    }

    /// Mints leaves for every configured exact host not cached yet, and says so in one line
    /// (with the first few hosts), not one per certificate: a vault of a thousand services
    /// starts with one line. A failure is a line of its own.
    pub fn prewarm(&self, policy: &Policy) {
        const NAMED: usize = 5;
        let mut minted: Vec<&str> = Vec::new();
        for host in policy.tls_hosts() {
            if !self.certs.contains(host) {
                match self.certs.server_config(host) {
                    Ok(_) => minted.push(host),
                    Err(e) => tracing::warn!(host, "pre-warming a leaf failed: {e}"),
                }
            }
        }
        if minted.is_empty() {
            return;
        }
        let more = minted.len().saturating_sub(NAMED);
        let mut hosts = minted[..minted.len().min(NAMED)].join(", ");
        if more > 0 {
            hosts.push_str(&format!(" and {more} more"));
        }
        tracing::info!(
            count = minted.len(),
            "pre-warmed leaf certificates: {hosts}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(generation: u64) -> Policy {
        let mut p = Policy::default();
        p.generation = generation;
        p
    }

    /// A swap is seen by the next load on every thread; two cells never share a thread's copy.
    #[test]
    fn policy_cell_swaps_and_cells_stay_apart() {
        let a = Arc::new(PolicyCell::new(at(1)));
        let b = PolicyCell::new(at(7));
        assert_eq!(a.load().generation, 1);
        assert_eq!(b.load().generation, 7);
        assert_eq!(a.load().generation, 1);
        let held = a.load();
        a.store(at(2));
        assert_eq!(a.load().generation, 2);
        assert_eq!(
            held.generation, 1,
            "a request keeps the policy it started with"
        );
        let other = a.clone();
        let seen = std::thread::spawn(move || {
            let first = other.load().generation;
            other.store(at(3));
            (first, other.load().generation)
        })
        .join()
        .unwrap();
        assert_eq!(seen, (2, 3));
        assert_eq!(a.load().generation, 3);
        assert_eq!(b.load().generation, 7);
    }
}
