//! Per-client limits on the proxy: a token bucket and an in-flight cap per agent (429
//! `rate_limited`; an agent's self-minted scoped tokens share its budget, review B11), a limiter
//! of failed authentications per client address (security.md row 51) that refuses further
//! failures but never a request with a valid token, and [`Buckets`], plain token buckets by key
//! for what is limited apart from requests: leaf mints per vault, refused CONNECTs and scoped-token
//! mints per agent.
//!
//! All are small maps behind a mutex taken once per request (or per failure, mint or refusal);
//! with the defaults turned off (rate 0, cap 0) the per-agent path takes no lock at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::{ErrorKind, ProxyError};
use crate::vault::tokens::TokenHash;

/// Failed authentications per address per window before 429.
pub const AUTH_FAILURES: u32 = 20;
const AUTH_WINDOW: Duration = Duration::from_secs(60);

/// Token buckets by key: `burst` at once, then `rate` per second, for each key apart.
#[derive(Debug)]
pub struct Buckets<K> {
    burst: f64,
    rate: f64,
    map: Mutex<HashMap<K, (f64, Instant)>>,
    /// Takes refused, for metrics.
    pub refused: AtomicU64,
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    pub fn new(burst: f64, rate: f64) -> Self {
        Self {
            burst,
            rate,
            map: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// Takes one token from `key`'s bucket if there is one.
    pub fn try_take(&self, key: &K) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() > 100_000 {
            // Buckets full again hold nothing worth keeping.
            let (burst, rate) = (self.burst, self.rate);
            map.retain(|_, (t, last)| *t + now.duration_since(*last).as_secs_f64() * rate < burst);
        }
        let (tokens, last) = map.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Per agent (or per token, for a scoped token that belongs to no agent; see
/// [`crate::proxy::auth::Identity::limit_key`]): `rate` requests per second with a burst of twice
/// that, and at most `max_in_flight` at once. Zero turns a limit off. [`AgentLimits::set`] changes both on a
/// config reload, keeping every bucket and in-flight count.
#[derive(Debug)]
pub struct AgentLimits {
    rate: AtomicU32,
    max_in_flight: AtomicU32,
    /// Fleet mode: the live nodes sharing the budget; each enforces its share (at least 1).
    share: AtomicU32,
    map: Mutex<HashMap<TokenHash, Bucket>>,
    /// Requests refused, for metrics.
    pub refused: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    in_flight: u32,
}

/// Holds one in-flight slot until dropped.
#[derive(Debug)]
pub struct Permit<'a> {
    limits: &'a AgentLimits,
    token: Option<TokenHash>,
}

impl AgentLimits {
    pub fn new(rate: u32, max_in_flight: u32) -> Self {
        Self {
            rate: AtomicU32::new(rate),
            max_in_flight: AtomicU32::new(max_in_flight),
            share: AtomicU32::new(1),
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

    fn limited(&self) -> ProxyError {
        self.refused.fetch_add(1, Ordering::Relaxed);
        ProxyError::new(
            ErrorKind::RateLimited,
            "too many requests for this agent; retry shortly",
        )
    }

    /// Admits one request for `token`, or refuses it with 429.
    pub fn admit(&self, token: TokenHash) -> Result<Permit<'_>, ProxyError> {
        let share = self.share.load(Ordering::Relaxed).max(1);
        let rate = f64::from(self.rate.load(Ordering::Relaxed)) / f64::from(share);
        let max_in_flight = self.max_in_flight.load(Ordering::Relaxed).div_ceil(share);
        if rate == 0.0 && max_in_flight == 0 {
            return Ok(Permit {
                limits: self,
                token: None,
            });
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let burst = rate * 2.0;
        let b = map.entry(token).or_insert(Bucket {
            tokens: burst,
            last: now,
            in_flight: 0,
        });
        if rate > 0.0 {
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
            b.last = now;
            if b.tokens < 1.0 {
                return Err(self.limited());
            }
        }
        if max_in_flight > 0 && b.in_flight >= max_in_flight {
            return Err(self.limited());
        }
        if rate > 0.0 {
            b.tokens -= 1.0;
        }
        b.in_flight += 1;
        Ok(Permit {
            limits: self,
            token: Some(token),
        })
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.token {
            let mut map = self.limits.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = map.get_mut(&t) {
                b.in_flight = b.in_flight.saturating_sub(1);
            }
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
        let t = TokenHash([1; 32]);
        let a = l.admit(t).unwrap();
        let b = l.admit(t).unwrap();
        assert_eq!(l.admit(t).unwrap_err().code(), "rate_limited"); // in flight: 2
        drop((a, b));
        assert!(
            l.admit(TokenHash([2; 32])).is_ok(),
            "another token has its own bucket"
        );
        let off = AgentLimits::new(0, 0);
        for _ in 0..1000 {
            let _ = off.admit(t).unwrap();
        }
    }

    /// Fleet mode: with three live nodes each enforces a third of the budget (in flight rounded
    /// up); back to one node, the whole budget.
    #[test]
    fn fleet_nodes_share_the_budget() {
        let l = AgentLimits::new(30, 4);
        l.set_share(3);
        let t = TokenHash([3; 32]);
        let held: Vec<_> = (0..2).map(|_| l.admit(t).unwrap()).collect();
        assert!(l.admit(t).is_err(), "in flight: 4 / 3 rounded up is 2");
        drop(held);
        let fresh = TokenHash([5; 32]);
        let admitted = (0..100).filter(|_| l.admit(fresh).is_ok()).count();
        assert_eq!(admitted, 20, "burst: twice a third of 30 per second");
        l.set_share(1);
        let u = TokenHash([4; 32]);
        assert_eq!((0..100).filter(|_| l.admit(u).is_ok()).count(), 60);
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

    #[test]
    fn row51_auth_failures_limited_per_address() {
        let f = AuthFailures::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let over = (0..25).filter(|_| f.failed(ip)).count();
        assert_eq!(over, 25 - AUTH_FAILURES as usize);
        assert!(!f.failed("127.0.0.2".parse().unwrap()));
    }
}
