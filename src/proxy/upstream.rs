//! Upstream connections: resolve once, vet every address with the SSRF guard (R4), dial a vetted
//! address, and speak TLS with verification always on (system roots plus `--upstream-ca-file`;
//! SNI is the CONNECT host, R1/row 43). Idle connections wait in a per-worker pool keyed by
//! vault, scheme, host and port, so two vaults never share a connection; a connection is pooled
//! only after a cleanly framed exchange (R2), kept at most [`Limits::pool_idle`], and probed
//! before reuse: anything that arrived while it sat idle (bytes or the upstream's close) means it
//! is dropped, never used ([`probe`]). With `upstream_proxy` set, connections leave through that
//! proxy ([`egress`]).

mod dialer;
pub mod egress;
mod probe;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio_rustls::ClientTlsStream;

pub use self::dialer::{
    CONNECT_TIMEOUT, DialSettings, Dialer, Resolve, SystemResolver, client_config, vet,
};
use self::probe::ProbeSwitch;
pub use self::probe::ProbeTcp;
use super::error::ProxyError;
use super::stats::Stats;
use crate::http::io::BufConn;
use crate::spec::Scheme;

/// Most idle connections kept per upstream per vault per worker.
const POOL_PER_HOST: usize = 16;

/// A TLS or plaintext upstream stream.
#[derive(Debug)]
pub enum UpIo {
    Tls(Box<ClientTlsStream<ProbeTcp>>),
    Plain(ProbeTcp),
}

impl AsyncReadRent for UpIo {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            Self::Tls(s) => s.read(buf).await,
            Self::Plain(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            Self::Tls(s) => s.readv(buf).await,
            Self::Plain(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpIo {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            Self::Tls(s) => s.write(buf).await,
            Self::Plain(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            Self::Tls(s) => s.writev(buf).await,
            Self::Plain(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tls(s) => s.flush().await,
            Self::Plain(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Self::Tls(s) => s.shutdown().await,
            Self::Plain(s) => s.shutdown().await,
        }
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

/// An upstream connection and whether it came from the pool.
#[derive(Debug)]
pub struct Upstream {
    pub conn: BufConn<UpIo>,
    pub reused: bool,
    probe: ProbeSwitch,
}

/// What the pool is keyed by: the vault as well as the upstream (row 65: a response that a
/// buggy upstream sent late must not reach another vault's agent).
pub type PoolKey = (u64, Target);

#[derive(Debug)]
struct Idle {
    conn: BufConn<UpIo>,
    probe: ProbeSwitch,
    since: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<PoolKey, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// Takes an idle pooled connection that is still clean, or dials a new one. Pooled connections
/// idle for `max_idle` ([`Limits::pool_idle`]) or longer, or on which anything arrived while
/// idle, are closed (and counted in `stats`, like the connection taken).
pub async fn get(
    dialer: &Dialer,
    stats: &Stats,
    vault: &str,
    key: &PoolKey,
    max_idle: Duration,
) -> Result<Upstream, ProxyError> {
    while let Some(mut idle) = POOL.with(|p| p.borrow_mut().get_mut(key).and_then(Vec::pop)) {
        if idle.since.elapsed() < max_idle && clean(&mut idle.conn, &idle.probe).await {
            stats.upstream(true);
            return Ok(Upstream {
                conn: idle.conn,
                reused: true,
                probe: idle.probe,
            });
        }
        stats.pool_discarded();
    }
    stats.upstream(false);
    dial_new(dialer, vault, &key.1).await
}

/// Whether nothing arrived on an idle connection: no bytes (an unsolicited response, a TLS
/// alert) and no close. Completes without waiting.
async fn clean(conn: &mut BufConn<UpIo>, probe: &ProbeSwitch) -> bool {
    if !conn.buffered().is_empty() {
        return false;
    }
    let seen = probe.with(conn.fill()).await;
    matches!(seen, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Dials a new connection, bypassing the pool.
pub async fn dial_new(
    dialer: &Dialer,
    vault: &str,
    target: &Target,
) -> Result<Upstream, ProxyError> {
    let (io, probe) = dialer.dial(vault, target).await?;
    Ok(Upstream {
        conn: BufConn::new(io),
        reused: false,
        probe,
    })
}

/// Returns a connection after a clean exchange; connections idle for `max_idle` or longer are
/// closed on the way (they would never be reused, and would take the places of fresh ones).
pub fn put(key: &PoolKey, up: Upstream, max_idle: Duration) {
    if !up.conn.buffered().is_empty() {
        return; // unexpected bytes: never reuse (R2)
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.entry(key.clone()).or_default();
        list.retain(|i| i.since.elapsed() < max_idle);
        if list.len() < POOL_PER_HOST && !max_idle.is_zero() {
            list.push(Idle {
                conn: up.conn,
                probe: up.probe,
                since: Instant::now(),
            });
        }
    });
}

/// Timeouts and caps for the data plane.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub response_timeout: Duration,
    pub body_cap: Option<u64>,
    /// Most client connections open at once per process; more get 503 `overloaded` (row 37).
    pub max_connections: usize,
    /// Most tunnels one agent holds open at once (counted once its CONNECT authenticates); more
    /// get 429 `rate_limited`. Zero: no cap. Each vault holds at most three quarters of
    /// `max_connections`, so one vault's agents cannot take every slot (row 111).
    pub agent_max_connections: usize,
    /// Longest an upstream connection may sit idle in the pool and still be reused; zero turns
    /// reuse off. Well under the 5 s keep-alive of Node and uvicorn servers, so the upstream
    /// rarely closes a connection just as it is reused.
    pub pool_idle: Duration,
}

/// [`Limits`] as relaxed atomics: read on every request without writing a shared cache line
/// (a lock's reader count would), replaced whole on a config reload.
#[derive(Debug)]
pub struct LiveLimits {
    header_timeout_ns: AtomicU64,
    idle_timeout_ns: AtomicU64,
    response_timeout_ns: AtomicU64,
    /// `u64::MAX` for no cap.
    body_cap: AtomicU64,
    max_connections: AtomicU64,
    agent_max_connections: AtomicU64,
    pool_idle_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl LiveLimits {
    pub fn new(l: Limits) -> Self {
        let live = Self {
            header_timeout_ns: AtomicU64::new(0),
            idle_timeout_ns: AtomicU64::new(0),
            response_timeout_ns: AtomicU64::new(0),
            body_cap: AtomicU64::new(0),
            max_connections: AtomicU64::new(0),
            agent_max_connections: AtomicU64::new(0),
            pool_idle_ns: AtomicU64::new(0),
        };
        live.store(l);
        live
    }

    pub fn store(&self, l: Limits) {
        let o = Ordering::Relaxed;
        self.header_timeout_ns.store(nanos(l.header_timeout), o);
        self.idle_timeout_ns.store(nanos(l.idle_timeout), o);
        self.response_timeout_ns.store(nanos(l.response_timeout), o);
        self.body_cap.store(l.body_cap.unwrap_or(u64::MAX), o);
        self.max_connections
            .store(l.max_connections.try_into().unwrap_or(u64::MAX), o);
        self.agent_max_connections
            .store(l.agent_max_connections.try_into().unwrap_or(u64::MAX), o);
        self.pool_idle_ns.store(nanos(l.pool_idle), o);
    }

    pub fn load(&self) -> Limits {
        let o = Ordering::Relaxed;
        let d = |a: &AtomicU64| Duration::from_nanos(a.load(o));
        Limits {
            header_timeout: d(&self.header_timeout_ns),
            idle_timeout: d(&self.idle_timeout_ns),
            response_timeout: d(&self.response_timeout_ns),
            body_cap: Some(self.body_cap.load(o)).filter(|&c| c != u64::MAX),
            max_connections: usize::try_from(self.max_connections.load(o)).unwrap_or(usize::MAX),
            agent_max_connections: usize::try_from(self.agent_max_connections.load(o))
                .unwrap_or(usize::MAX),
            pool_idle: d(&self.pool_idle_ns),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            response_timeout: Duration::from_secs(300),
            body_cap: None,
            max_connections: 10_000,
            agent_max_connections: 1_000,
            pool_idle: Duration::from_secs(3),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::netguard::Guard;

    #[test]
    fn live_limits_round_trip() {
        let l = Limits {
            header_timeout: Duration::from_millis(1500),
            body_cap: Some(10),
            max_connections: 7,
            ..Limits::default()
        };
        let live = LiveLimits::new(l);
        let got = live.load();
        assert_eq!(
            (got.header_timeout, got.body_cap, got.max_connections),
            (l.header_timeout, Some(10), 7)
        );
        live.store(Limits::default());
        assert_eq!(live.load().body_cap, None);
        assert_eq!(live.load().idle_timeout, Limits::default().idle_timeout);
    }

    /// A connection put back after a clean exchange is reused; one on which the upstream wrote
    /// while it sat idle, or that sat longer than `max_idle`, is closed and a new one dialled.
    /// Only a dialer is needed: no vault, no CA.
    #[test]
    fn the_pool_reuses_only_clean_fresh_connections() {
        use std::io::Write;
        let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = origin.local_addr().unwrap().port();
        let dialer = Dialer::new(
            Arc::new(SystemResolver),
            dialer::tests::settings(Guard {
                allow_private_ranges: false,
                allow: vec!["127.0.0.1/32".parse().unwrap()],
            }),
        );
        let stats = Stats::new(1);
        let key: PoolKey = (
            7,
            Target {
                scheme: Scheme::Http,
                host: "127.0.0.1".into(),
                port,
            },
        );
        let idle = Duration::from_secs(60);
        let counts = |s: &Stats| {
            let t = s.totals();
            (t.upstream_dialled, t.upstream_reused, t.pool_discarded)
        };
        dialer::tests::block_on(async {
            let first = get(&dialer, &stats, "default", &key, idle).await.unwrap();
            let (mut accepted, _) = origin.accept().unwrap();
            put(&key, first, idle);
            let again = get(&dialer, &stats, "default", &key, idle).await.unwrap();
            assert!(again.reused);
            assert_eq!(counts(&stats), (1, 1, 0));
            put(&key, again, idle);
            // The upstream speaks while the connection is idle: never reused.
            accepted.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
            monoio::time::sleep(Duration::from_millis(50)).await;
            let fresh = get(&dialer, &stats, "default", &key, idle).await.unwrap();
            assert!(!fresh.reused);
            assert_eq!(counts(&stats), (2, 1, 1));
            // Idle longer than allowed: closed on the way out, not reused.
            put(&key, fresh, idle);
            let late = get(&dialer, &stats, "default", &key, Duration::ZERO).await;
            assert!(!late.unwrap().reused);
            assert_eq!(counts(&stats), (3, 1, 2));
        });
    }
}
