//! Per-client limits on the proxy: a token bucket and an in-flight cap per agent (429
//! `rate_limited`; an agent's self-minted scoped tokens share its budget, row 77), a limiter
//! of failed authentications per client address (SECURITY-TESTS.md row 51) that refuses further
//! failures but never a request with a valid token, and [`Buckets`], plain token buckets by key
//! for what is limited apart from requests: leaf mints per vault, refused CONNECTs and scoped-token
//! mints per agent; and the open tunnels of each agent and each vault ([`Limiters::open_tunnel`],
//! row 111: one agent's idle tunnels must not take every connection slot).
//!
//! A request in a tunnel takes no lock: its connection found the agent's atomics once
//! ([`AgentLimits::bucket`]); the maps behind mutexes are used once per connection (per request
//! for plain HTTP, which authenticates every request anyway), failure, mint or refusal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{ErrorKind, ProxyError};
use crate::vault::tokens::TokenHash;

/// Leaves minted on demand (wildcard hosts), per vault: a burst, then this many per second
/// (row 39).
pub const MINT_BURST: f64 = 64.0;
pub const MINT_PER_SECOND: f64 = 16.0;
/// CONNECTs refused for want of a service, per agent: a burst, then this many per second; past
/// it 429 with no request-log row (row 73).
pub const REFUSAL_BURST: f64 = 20.0;
pub const REFUSALS_PER_SECOND: f64 = 5.0;
/// `POST /v1/tokens` per agent: a burst, then this many per second (row 74).
pub const TOKEN_MINT_BURST: f64 = 10.0;
pub const TOKEN_MINTS_PER_SECOND: f64 = 1.0;
/// Every limiter of the proxy, each with its own map and refusal count.
#[derive(Debug)]
pub struct Limiters {
    /// Per agent: request rate and in-flight cap.
    pub agents: AgentLimits,
    /// Failed authentications per client address (row 51).
    pub auth_failures: AuthFailures,
    /// On-demand leaf mints (row 39), per vault, so one vault's flood of new hosts does not
    /// refuse another's (row 77).
    pub mints: Buckets<String>,
    /// Refused CONNECTs (`no_service`) per agent: past it, 429 and no request-log row, so one
    /// agent cannot flush the request log (row 73).
    pub refusals: Buckets<TokenHash>,
    /// `POST /v1/tokens` per agent (row 74).
    pub token_mints: Buckets<TokenHash>,
    /// Open tunnels per vault.
    vault_tunnels: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// One open tunnel, counted against its agent and its vault until dropped.
#[derive(Debug)]
pub struct TunnelSlot {
    agent: Arc<AgentBucket>,
    vault: Arc<AtomicUsize>,
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.agent.tunnels.fetch_sub(1, Ordering::Relaxed);
        self.vault.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiters {
    /// The limiters at their defaults, agents at `rate` per second and `in_flight` (0: off).
    pub fn new(rate: u32, in_flight: u32) -> Self {
        Self {
            agents: AgentLimits::new(rate, in_flight),
            auth_failures: AuthFailures::default(),
            mints: Buckets::new(MINT_BURST, MINT_PER_SECOND),
            refusals: Buckets::new(REFUSAL_BURST, REFUSALS_PER_SECOND),
            token_mints: Buckets::new(TOKEN_MINT_BURST, TOKEN_MINTS_PER_SECOND),
            vault_tunnels: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a tunnel of `agent` (its authenticated CONNECT) in `vault`: refused with 429 when
    /// the agent holds `per_agent` already (0: no cap), and with 503 when the vault holds three
    /// quarters of `max_connections`, so the other vaults always find room.
    pub fn open_tunnel(
        &self,
        agent: Arc<AgentBucket>,
        vault: &str,
        per_agent: usize,
        max_connections: usize,
    ) -> Result<TunnelSlot, ProxyError> {
        let counter = {
            let mut map = self.vault_tunnels.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(vault.to_owned()).or_default().clone()
        };
        let before_agent = agent.tunnels.fetch_add(1, Ordering::Relaxed);
        let before_vault = counter.fetch_add(1, Ordering::Relaxed);
        let slot = TunnelSlot {
            agent,
            vault: counter,
        };
        if per_agent > 0 && before_agent >= per_agent {
            self.agents.refused.fetch_add(1, Ordering::Relaxed);
            let m = format!(
                "this agent holds {per_agent} tunnels open already (agent_max_connections); close idle ones"
            );
            return Err(ProxyError::new(ErrorKind::RateLimited, m));
        }
        if before_vault >= max_connections.saturating_mul(3).div_ceil(4) {
            let m = "this vault's agents hold their share of the connections; retry shortly";
            return Err(ProxyError::new(ErrorKind::Overloaded, m));
        }
        Ok(slot)
    }
}

/// Failed authentications per address per window before 429.
pub const AUTH_FAILURES: u32 = 20;
const AUTH_WINDOW: Duration = Duration::from_secs(60);

/// A token bucket in one atomic (GCRA: the time at which the bucket would be full again): `burst`
/// takes at once, then one per `1 / rate` seconds. Taking is one compare-and-swap, no lock.
#[derive(Debug, Default)]
pub struct Cell {
    /// Nanoseconds since the limiter's epoch at which the bucket is full again.
    full_at: AtomicU64,
}

impl Cell {
    /// Takes one token at `now` (nanoseconds since the epoch) if there is one.
    pub(crate) fn try_take(&self, now: u64, burst: f64, rate: f64) -> bool {
        let interval = (1e9 / rate) as u64;
        let window = (burst * 1e9 / rate) as u64;
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(now).saturating_add(interval);
            if next - now > window {
                return false;
            }
            match self.full_at.compare_exchange_weak(
                full_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => full_at = seen,
            }
        }
    }

    /// Whether the bucket is full at `now` (nothing worth keeping).
    fn is_full(&self, now: u64) -> bool {
        self.full_at.load(Ordering::Relaxed) <= now
    }
}

/// Nanoseconds since `epoch`.
fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Token buckets by key: `burst` at once, then `rate` per second, for each key apart. For what
/// happens once per connection or less (leaf mints, refused CONNECTs, token mints): the map is
/// behind a mutex.
#[derive(Debug)]
pub struct Buckets<K> {
    burst: f64,
    rate: f64,
    epoch: Instant,
    map: Mutex<HashMap<K, Cell>>,
    /// Takes refused, for metrics.
    pub refused: AtomicU64,
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    pub fn new(burst: f64, rate: f64) -> Self {
        Self {
            burst,
            rate,
            epoch: Instant::now(),
            map: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// Takes one token from `key`'s bucket if there is one.
    pub fn try_take(&self, key: &K) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = since(self.epoch);
        if map.len() > 100_000 {
            map.retain(|_, c| !c.is_full(now));
        }
        let taken = map
            .entry(key.clone())
            .or_default()
            .try_take(now, self.burst, self.rate);
        if !taken {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }
}

/// Per agent (or per token, for a scoped token that belongs to no agent; see
/// [`crate::proxy::auth::Identity::limit_key`]): `rate` requests per second with a burst of twice
/// that, and at most `max_in_flight` at once. Zero turns a limit off. [`AgentLimits::set`]
/// changes both on a config reload, keeping every bucket and in-flight count.
///
/// A connection looks its agent's [`AgentBucket`] up once ([`AgentLimits::bucket`], the only
/// lock); each request then costs one compare-and-swap and an in-flight count on the agent's
/// own atomics.
#[derive(Debug)]
pub struct AgentLimits {
    rate: AtomicU32,
    max_in_flight: AtomicU32,
    /// Fleet mode: the live nodes sharing the budget; each enforces its share (at least 1).
    share: AtomicU32,
    epoch: Instant,
    map: Mutex<HashMap<TokenHash, Arc<AgentBucket>>>,
    /// Requests refused, for metrics.
    pub refused: AtomicU64,
}

/// One agent's budget, shared by all its connections.
#[derive(Debug, Default)]
pub struct AgentBucket {
    rate: Cell,
    in_flight: AtomicU32,
    /// Tunnels open now ([`Limiters::open_tunnel`]).
    tunnels: AtomicUsize,
}

/// Holds one in-flight slot until dropped.
#[derive(Debug)]
pub struct Permit<'a>(Option<&'a AgentBucket>);

impl AgentLimits {
    pub fn new(rate: u32, max_in_flight: u32) -> Self {
        Self {
            rate: AtomicU32::new(rate),
            max_in_flight: AtomicU32::new(max_in_flight),
            share: AtomicU32::new(1),
            epoch: Instant::now(),
            map: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// Changes the limits for requests admitted from now on.
    pub fn set(&self, rate: u32, max_in_flight: u32) {
        self.rate.store(rate, Ordering::Relaxed);
        self.max_in_flight.store(max_in_flight, Ordering::Relaxed);
    }

    /// Fleet mode: `nodes` live nodes share each agent's budget, so this node enforces the rate
    /// divided by `nodes` and the in-flight cap divided by `nodes`, rounded up. Fleet-wide an
    /// agent gets at most its configured budget; one whose connections all land on one node gets
    /// that node's share.
    pub fn set_share(&self, nodes: u32) {
        self.share.store(nodes.max(1), Ordering::Relaxed);
    }

    /// The live nodes last set by [`AgentLimits::set_share`].
    pub fn share(&self) -> u32 {
        self.share.load(Ordering::Relaxed)
    }

    /// The budget of `key` (an [`crate::proxy::auth::Identity::limit_key`]): looked up once per
    /// connection.
    pub fn bucket(&self, key: TokenHash) -> Arc<AgentBucket> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().clone()
    }

    fn limited(&self) -> ProxyError {
        self.refused.fetch_add(1, Ordering::Relaxed);
        ProxyError::new(
            ErrorKind::RateLimited,
            "too many requests for this agent; retry shortly",
        )
    }

    /// Admits one request against `bucket`, or refuses it with 429.
    pub fn admit<'b>(&self, bucket: &'b AgentBucket) -> Result<Permit<'b>, ProxyError> {
        let share = self.share.load(Ordering::Relaxed).max(1);
        let rate = f64::from(self.rate.load(Ordering::Relaxed)) / f64::from(share);
        let max_in_flight = self.max_in_flight.load(Ordering::Relaxed).div_ceil(share);
        if rate == 0.0 && max_in_flight == 0 {
            return Ok(Permit(None));
        }
        let permit = Permit(Some(bucket));
        let before = bucket.in_flight.fetch_add(1, Ordering::Relaxed);
        if max_in_flight > 0 && before >= max_in_flight {
            return Err(self.limited());
        }
        if rate > 0.0 && !bucket.rate.try_take(since(self.epoch), rate * 2.0, rate) {
            return Err(self.limited());
        }
        Ok(permit)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Failed authentications per client address.
#[derive(Debug, Default)]
pub struct AuthFailures {
    map: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Failures answered 429, for metrics.
    pub refused: AtomicU64,
}

impl AuthFailures {
    /// Records a failure from `ip` and says whether it is past the limit (answer 429).
    pub fn failed(&self, ip: IpAddr) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (_, since)| since.elapsed() < AUTH_WINDOW);
        }
        let e = map.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() > AUTH_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
        e.0 > AUTH_FAILURES
    }

    /// Row 51: records the failure `e` from `ip`; past the limit it is answered 429 instead (a
    /// valid token never comes here, so it is never refused by the limiter).
    pub fn refuse(&self, ip: IpAddr, e: ProxyError) -> ProxyError {
        if self.failed(ip) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            ProxyError::new(
                ErrorKind::RateLimited,
                "too many failed authentications from this address",
            )
        } else {
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_in_flight_cap() {
        let l = AgentLimits::new(1, 2);
        let t = l.bucket(TokenHash([1; 32]));
        let a = l.admit(&t).unwrap();
        let b = l.admit(&t).unwrap();
        assert_eq!(l.admit(&t).unwrap_err().code(), "rate_limited"); // in flight: 2
        drop((a, b));
        assert!(
            l.admit(&l.bucket(TokenHash([2; 32]))).is_ok(),
            "another token has its own bucket"
        );
        assert!(
            Arc::ptr_eq(&t, &l.bucket(TokenHash([1; 32]))),
            "one bucket per agent, whatever the connection"
        );
        let off = AgentLimits::new(0, 0);
        for _ in 0..1000 {
            let _ = off.admit(&t).unwrap();
        }
    }

    /// Fleet mode: with three live nodes each enforces a third of the budget (in flight rounded
    /// up); back to one node, the whole budget.
    /// Row 111: an agent's tunnels are capped, a vault holds at most three quarters of the
    /// connections, and a dropped slot is given back.
    #[test]
    fn tunnels_capped_per_agent_and_vault() {
        let l = Limiters::new(0, 0);
        let (a, b) = (
            Arc::new(AgentBucket::default()),
            Arc::new(AgentBucket::default()),
        );
        let mut held: Vec<_> = (0..2)
            .map(|_| l.open_tunnel(a.clone(), "v1", 2, 8).unwrap())
            .collect();
        let e = l.open_tunnel(a.clone(), "v1", 2, 8).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        held.extend((0..4).map(|_| l.open_tunnel(b.clone(), "v1", 0, 8).unwrap()));
        let e = l.open_tunnel(b.clone(), "v1", 0, 8).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Overloaded, "v1 holds 6 of 8");
        let other = l.open_tunnel(b.clone(), "v2", 0, 8).unwrap();
        held.remove(0);
        l.open_tunnel(a.clone(), "v1", 2, 8).unwrap();
        drop(other);
        assert_eq!(b.tunnels.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn fleet_nodes_share_the_budget() {
        let l = AgentLimits::new(30, 4);
        l.set_share(3);
        let t = l.bucket(TokenHash([3; 32]));
        let held: Vec<_> = (0..2).map(|_| l.admit(&t).unwrap()).collect();
        assert!(l.admit(&t).is_err(), "in flight: 4 / 3 rounded up is 2");
        drop(held);
        let fresh = l.bucket(TokenHash([5; 32]));
        let admitted = (0..100).filter(|_| l.admit(&fresh).is_ok()).count();
        assert_eq!(admitted, 20, "burst: twice a third of 30 per second");
        l.set_share(1);
        let u = l.bucket(TokenHash([4; 32]));
        assert_eq!((0..100).filter(|_| l.admit(&u).is_ok()).count(), 60);
    }

    #[test]
    fn buckets_are_per_key_and_refill() {
        let b = Buckets::new(2.0, 1000.0);
        assert!(b.try_take(&"a") && b.try_take(&"a"));
        assert!(!b.try_take(&"a"), "burst spent");
        assert!(b.try_take(&"b"), "another key has its own bucket");
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.try_take(&"a"), "refilled");
        assert_eq!(b.refused.load(Ordering::Relaxed), 1);
    }

    /// Many threads taking from one bucket at once get exactly its burst.
    #[test]
    fn lock_free_bucket_takes_exactly_the_burst() {
        let l = Arc::new(AgentLimits::new(1, 0));
        let b = l.bucket(TokenHash([6; 32]));
        let taken: usize = (0..8)
            .map(|_| {
                let (l, b) = (l.clone(), b.clone());
                std::thread::spawn(move || (0..50).filter(|_| l.admit(&b).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(taken, 2, "burst: twice 1 per second");
    }

    #[test]
    fn row51_auth_failures_limited_per_address() {
        let f = AuthFailures::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let over = (0..25).filter(|_| f.failed(ip)).count();
        assert_eq!(over, 25 - AUTH_FAILURES as usize);
        assert!(!f.failed("127.0.0.2".parse().unwrap()));
    }
}
