//! Upstream connections: resolve once, vet every address with the SSRF guard (R4), dial a vetted
//! address, and speak TLS with verification always on (system roots plus `--upstream-ca-file`;
//! SNI is the CONNECT host, R1/row 43). Idle connections wait in a per-worker pool keyed by
//! vault, scheme, host and port, so two vaults never share a connection; a connection is pooled
//! only after a cleanly framed exchange (R2), kept at most [`Limits::pool_idle`], and probed
//! before reuse: anything that arrived while it sat idle (bytes or the upstream's close) means it
//! is dropped, never used ([`probe`]). With `upstream_proxy` set, connections leave through that
//! proxy ([`egress`]).

pub mod egress;
mod probe;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio_rustls::{ClientTlsStream, TlsConnector};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use self::probe::ProbeSwitch;
pub use self::probe::ProbeTcp;
use super::Shared;
use super::error::{ErrorKind, ProxyError};
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

/// What the pool is keyed by: the vault as well as the upstream (review B4: a response that a
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
/// older than [`Limits::pool_idle`], or on which anything arrived while idle, are closed.
pub async fn get(shared: &Shared, vault: &str, key: &PoolKey) -> Result<Upstream, ProxyError> {
    let max_idle = shared.limits().pool_idle;
    while let Some(mut idle) = POOL.with(|p| p.borrow_mut().get_mut(key).and_then(Vec::pop)) {
        if idle.since.elapsed() < max_idle && clean(&mut idle.conn, &idle.probe).await {
            shared.stats.upstream(true);
            return Ok(Upstream {
                conn: idle.conn,
                reused: true,
                probe: idle.probe,
            });
        }
        shared.stats.pool_discarded();
    }
    dial_new(shared, vault, &key.1).await
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
    shared: &Shared,
    vault: &str,
    target: &Target,
) -> Result<Upstream, ProxyError> {
    shared.stats.upstream(false);
    let (io, probe) = dial(shared, vault, target).await?;
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

/// Resolves `target` (through `--resolve` first) and returns the addresses, each vetted.
pub async fn resolve(shared: &Shared, target: &Target) -> Result<Vec<SocketAddr>, ProxyError> {
    let tunables = shared.tunables();
    let addrs: Vec<SocketAddr> = if let Some(rule) = tunables
        .resolve
        .iter()
        .find(|r| r.host == target.host && r.port == target.port)
    {
        vec![rule.addr]
    } else if let Ok(ip) = target.host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, target.port)]
    } else {
        let resolver = shared.resolver.clone();
        let (host, port) = (target.host.clone(), target.port);
        let lookup = monoio::spawn_blocking(move || resolver.lookup(&host, port)).await;
        match lookup {
            Ok(Ok(a)) if !a.is_empty() => a,
            _ => {
                return Err(ProxyError::new(
                    ErrorKind::UpstreamUnreachable,
                    format!("{} does not resolve", target.host),
                ));
            }
        }
    };
    vet(&tunables.guard, &addrs)?;
    Ok(addrs)
}

/// Name resolution for upstreams. One lookup per dial; only the vetted answer is dialled
/// (row 32). Tests substitute scripted answers.
pub trait Resolve: Send + Sync + std::fmt::Debug {
    fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system resolver (getaddrinfo), run on the blocking pool.
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        (host, port).to_socket_addrs().map(Vec::from_iter)
    }
}

/// Row 31: one blocked address blocks the whole answer (no "try the next one").
pub fn vet(guard: &crate::netguard::Guard, addrs: &[SocketAddr]) -> Result<(), ProxyError> {
    for a in addrs {
        guard.check(a.ip()).map_err(|b| {
            ProxyError::new(ErrorKind::DestinationBlocked, b.to_string()).hint(
                "private and metadata addresses are refused; see --allow-private-ranges and --network-allow",
            )
        })?;
    }
    Ok(())
}

/// Connects `vault`'s request to `target` (the opaque tunnel's dial, and the first half of every
/// upstream's): directly, to the first vetted address that answers in time, or through the
/// upstream proxy configured for the vault and host ([`egress`]).
pub async fn connect_tcp(
    shared: &Shared,
    vault: &str,
    target: &Target,
) -> Result<TcpStream, ProxyError> {
    let tunables = shared.tunables();
    let Some(proxy) = tunables.egress.route(vault, &target.host) else {
        let addrs = resolve(shared, target).await?;
        let what = format!("{}:{}", target.host, target.port);
        return dial_first(shared, &addrs, &what).await;
    };
    // The proxy resolves names: vet what airlock knows of the target without resolving it.
    let rule = tunables
        .resolve
        .iter()
        .find(|r| r.host == target.host && r.port == target.port);
    let authority = match rule {
        Some(r) => {
            vet(&tunables.guard, &[r.addr])?;
            r.addr.to_string()
        }
        None => {
            if let Some(ip) = egress::vetted_as(&target.host) {
                vet(&tunables.guard, &[SocketAddr::new(ip, target.port)])?;
            }
            egress::authority(&target.host, target.port)
        }
    };
    let at = proxy.target();
    let what = format!("the upstream proxy {}:{}", at.host, at.port);
    let tcp = dial_first(shared, &resolve(shared, &at).await?, &what).await?;
    egress::connect(tcp, proxy, &authority, shared.limits().connect_timeout).await
}

/// Connects to the first of `addrs` (already vetted) that answers in time; `what` names the
/// destination in the error.
async fn dial_first(
    shared: &Shared,
    addrs: &[SocketAddr],
    what: &str,
) -> Result<TcpStream, ProxyError> {
    let unreachable = |e: io::Error| {
        ProxyError::new(
            ErrorKind::UpstreamUnreachable,
            format!("connecting to {what}: {e}"),
        )
    };
    let mut last = None;
    for &addr in addrs {
        match monoio::time::timeout(
            shared.limits().connect_timeout,
            TcpStream::connect_addr(addr),
        )
        .await
        {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
    Err(unreachable(
        last.unwrap_or_else(|| io::Error::other("no address")),
    ))
}

async fn dial(
    shared: &Shared,
    vault: &str,
    target: &Target,
) -> Result<(UpIo, ProbeSwitch), ProxyError> {
    let tcp = connect_tcp(shared, vault, target).await?;
    let _ = tcp.set_nodelay(true);
    let (tcp, probe) = ProbeTcp::new(tcp);
    match target.scheme {
        Scheme::Http => Ok((UpIo::Plain(tcp), probe)),
        Scheme::Https => {
            let name = ServerName::try_from(target.host.clone()).map_err(|_| {
                ProxyError::new(
                    ErrorKind::BadHost,
                    "the host is not a valid TLS server name",
                )
            })?;
            let connector = TlsConnector::from(shared.tunables().upstream_tls.clone());
            let tls = monoio::time::timeout(
                shared.limits().connect_timeout,
                connector.connect(name, tcp),
            )
            .await
            .map_err(|_| {
                ProxyError::new(
                    ErrorKind::UpstreamTimeout,
                    "the upstream TLS handshake timed out",
                )
            })?
            .map_err(|e| {
                ProxyError::new(
                    ErrorKind::UpstreamTlsError,
                    format!("TLS with {}: {e}", target.host),
                )
            })?;
            Ok((UpIo::Tls(Box::new(tls)), probe))
        }
    }
}

/// The upstream TLS client config: system roots plus an optional extra CA file, ring only,
/// HTTP/1.1 ALPN. Verification has no off switch.
pub fn client_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    extra_ca: Option<&std::path::Path>,
) -> Result<ClientConfig, String> {
    let mut config = crate::tls::client_config(provider, extra_ca.as_slice())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Timeouts and caps for the data plane.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub body_cap: Option<u64>,
    /// Most client connections open at once per process; more get 503 `overloaded` (row 37).
    pub max_connections: usize,
    /// Most tunnels one agent holds open at once (counted once its CONNECT authenticates); more
    /// get 429 `rate_limited`. Zero: no cap. Each vault holds at most three quarters of
    /// `max_connections`, so one vault's agents cannot take every slot (review #106).
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
    connect_timeout_ns: AtomicU64,
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
            connect_timeout_ns: AtomicU64::new(0),
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
        self.connect_timeout_ns.store(nanos(l.connect_timeout), o);
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
            connect_timeout: d(&self.connect_timeout_ns),
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
            connect_timeout: Duration::from_secs(10),
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
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::netguard::Guard;

    /// Scripted DNS answers, counting lookups.
    #[derive(Debug, Default)]
    struct FakeResolver {
        answers: Mutex<VecDeque<Vec<SocketAddr>>>,
        lookups: AtomicUsize,
    }

    impl Resolve for FakeResolver {
        fn lookup(&self, _: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Ok(self.answers.lock().unwrap().pop_front().unwrap_or_default())
        }
    }

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

    /// A data-plane `Shared` over a fresh vault, with `resolver` and `guard`.
    fn shared(dir: &std::path::Path, resolver: Arc<dyn Resolve>, guard: Guard) -> Shared {
        use crate::vault::{Store, setup};
        setup::init(dir, &Default::default(), Default::default(), "test").unwrap();
        let store = Store::open(dir, Default::default()).unwrap();
        let unlocked = setup::unlock(&store, dir, &Default::default()).unwrap();
        let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = certs_cache::Ca::load(
            &unlocked.ca_name,
            &ca_pem,
            unlocked.ca_key_pkcs8_der.expose(),
        )
        .unwrap();
        Shared::new(super::super::Parts {
            store,
            opener: unlocked.opener,
            certs: certs_cache::LeafCache::new(ca, provider.clone(), 4),
            resolver,
            tunables: super::super::Tunables {
                guard,
                resolve: vec![],
                upstream_tls: Arc::new(client_config(provider, None).unwrap()),
                egress: Default::default(),
                admin_base: None,
                hold_timeout: Duration::from_secs(1),
            },
            limits: Limits {
                max_connections: 4,
                ..Limits::default()
            },
            agent_limits: (0, 0),
            api_base: String::new(),
            ca_pem,
            log: crate::requestlog::Sink::discard(),
            oauth: crate::renewal::channel().0,
            workers: 1,
        })
    }

    /// SECURITY-TESTS.md row 32 (E-03): DNS rebinding. Each dial looks the name up once and connects
    /// only to the address it vetted; a later answer pointing elsewhere is refused with no
    /// connection made to it.
    #[test]
    fn row32_one_lookup_per_dial_and_only_vetted_addresses_dialled() {
        let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = allowed.local_addr().unwrap().port();
        let other = std::net::TcpListener::bind(("127.0.0.2", port)).unwrap();
        other.set_nonblocking(true).unwrap();
        let resolver = Arc::new(FakeResolver::default());
        resolver.answers.lock().unwrap().extend([
            vec![SocketAddr::from(([127, 0, 0, 1], port))],
            vec![SocketAddr::from(([127, 0, 0, 2], port))],
        ]);
        let guard = Guard {
            allow_private_ranges: false,
            allow: vec!["127.0.0.1/32".parse().unwrap()],
        };
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), resolver.clone(), guard);
        let target = Target {
            scheme: Scheme::Http,
            host: "rebind.example".into(),
            port,
        };
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .with_blocking_strategy(monoio::blocking::BlockingStrategy::ExecuteLocal)
            .build()
            .unwrap();
        let (first, second) = rt.block_on(async {
            (
                dial_new(&shared, "default", &target).await.map(|_| ()),
                dial_new(&shared, "default", &target).await.map(|_| ()),
            )
        });
        assert!(first.is_ok(), "{first:?}");
        assert_eq!(second.unwrap_err().code(), "destination_blocked");
        assert_eq!(
            resolver.lookups.load(Ordering::SeqCst),
            2,
            "one lookup per dial"
        );
        allowed.set_nonblocking(true).unwrap();
        assert!(allowed.accept().is_ok(), "the vetted address was dialled");
        assert!(other.accept().is_err(), "the rebound address was dialled");
    }

    /// SECURITY-TESTS.md row 31 (E-02): a DNS answer mixing public and private addresses is refused.
    #[test]
    fn row31_mixed_answers_refused() {
        let g = Guard::default();
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.5:443".parse().unwrap();
        assert!(vet(&g, &[public]).is_ok());
        assert_eq!(
            vet(&g, &[public, private]).unwrap_err().code(),
            "destination_blocked"
        );
        assert_eq!(
            vet(&g, &["[::ffff:169.254.169.254]:80".parse().unwrap()])
                .unwrap_err()
                .code(),
            "destination_blocked"
        );
    }
}
