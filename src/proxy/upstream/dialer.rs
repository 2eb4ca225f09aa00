//! The dialer: everything that turns a [`Target`] into a connection, and nothing else. It owns
//! name resolution (one lookup per dial, row 32), the SSRF guard every address passes (R4, row
//! 31), `--resolve`, the corporate proxies ([`super::egress`]), the upstream TLS config
//! (verification always on, SNI the target's host: R1, row 43) and the connect timeout. The
//! settings are swapped whole on a config reload; a dial reads them once.
//!
//! The pool ([`super::get`]), the opaque tunnel and the OAuth refresher take a `&Dialer`, not
//! the data plane's whole state: none of them reads the vault, the CA or the limits of requests.
//! It must not pool, count or log: those are its callers'.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;
use rustls::{CertificateError, ClientConfig};
use rustls_pki_types::ServerName;

use super::egress::{self, Egress};
use super::probe::{ProbeSwitch, ProbeTcp};
use super::{Target, UpIo};
use crate::config::ResolveRule;
use crate::netguard::Guard;
use crate::proxy::error::{ErrorKind, ProxyError};
use crate::spec::Scheme;

/// How long a TCP connect, a corporate proxy's CONNECT or an upstream TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a dial reads, replaced whole when the config file is reloaded.
#[derive(Debug)]
pub struct DialSettings {
    pub guard: Guard,
    pub resolve: Vec<ResolveRule>,
    pub upstream_tls: Arc<ClientConfig>,
    /// The corporate proxies upstream connections leave through, global and per vault.
    pub egress: Egress,
    pub connect_timeout: Duration,
}

/// Dials upstreams; see the module doc.
#[derive(Debug)]
pub struct Dialer {
    resolver: Arc<dyn Resolve>,
    settings: RwLock<Arc<DialSettings>>,
}

impl Dialer {
    pub fn new(resolver: Arc<dyn Resolve>, settings: DialSettings) -> Self {
        Self {
            resolver,
            settings: RwLock::new(Arc::new(settings)),
        }
    }

    /// The current settings (a cheap `Arc` clone; once per dial, never per request).
    pub fn settings(&self) -> Arc<DialSettings> {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swaps in settings re-read from the config file; dials under way keep the old ones.
    pub fn set(&self, settings: DialSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
    }

    /// Resolves `target` (through `--resolve` first) and returns the addresses, each vetted.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, ProxyError> {
        self.resolve_with(&self.settings(), target).await
    }

    /// [`Dialer::resolve`] with the settings one dial read once.
    async fn resolve_with(
        &self,
        settings: &DialSettings,
        target: &Target,
    ) -> Result<Vec<SocketAddr>, ProxyError> {
        let addrs: Vec<SocketAddr> = if let Some(rule) = settings.rule(target) {
            vec![rule.addr]
        } else if let Ok(ip) = target.host.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, target.port)]
        } else {
            let resolver = self.resolver.clone();
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
        vet(&settings.guard, &addrs)?;
        Ok(addrs)
    }

    /// Connects `vault`'s request to `target` (the opaque tunnel's dial, and the first half of
    /// every upstream's): directly, to the first vetted address that answers in time, or through
    /// the upstream proxy configured for the vault and host ([`egress`]).
    pub async fn connect_tcp(&self, vault: &str, target: &Target) -> Result<TcpStream, ProxyError> {
        self.connect_with(&self.settings(), vault, target).await
    }

    /// [`Dialer::connect_tcp`] with the settings one dial read once.
    async fn connect_with(
        &self,
        settings: &DialSettings,
        vault: &str,
        target: &Target,
    ) -> Result<TcpStream, ProxyError> {
        let timeout = settings.connect_timeout;
        let Some(proxy) = settings.egress.route(vault, &target.host) else {
            let addrs = self.resolve_with(settings, target).await?;
            let what = format!("{}:{}", target.host, target.port);
            return dial_first(&addrs, &what, timeout).await;
        };
        // The proxy resolves names: vet what airlock knows of the target without resolving it.
        let authority = match settings.rule(target) {
            Some(r) => {
                vet(&settings.guard, &[r.addr])?;
                r.addr.to_string()
            }
            None => {
                if let Some(ip) = egress::vetted_as(&target.host) {
                    vet(&settings.guard, &[SocketAddr::new(ip, target.port)])?;
                }
                egress::authority(&target.host, target.port)
            }
        };
        let at = proxy.target();
        let what = format!("the upstream proxy {}:{}", at.host, at.port);
        let tcp = dial_first(&self.resolve_with(settings, &at).await?, &what, timeout).await?;
        egress::connect(tcp, proxy, &authority, timeout).await
    }

    /// Connects to `target` and, for `https`, completes a verified TLS handshake with it; the
    /// whole dial reads one copy of the settings (a reload meanwhile applies to the next).
    pub(super) async fn dial(
        &self,
        vault: &str,
        target: &Target,
    ) -> Result<(UpIo, ProbeSwitch), ProxyError> {
        let settings = self.settings();
        let tcp = self.connect_with(&settings, vault, target).await?;
        let _ = tcp.set_nodelay(true);
        let (tcp, probe) = ProbeTcp::new(tcp);
        if target.scheme == Scheme::Http {
            return Ok((UpIo::Plain(tcp), probe));
        }
        let name = ServerName::try_from(target.host.clone()).map_err(|_| {
            ProxyError::new(
                ErrorKind::BadHost,
                "the host is not a valid TLS server name",
            )
        })?;
        let connector = TlsConnector::from(settings.upstream_tls.clone());
        let tls = monoio::time::timeout(settings.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| {
                ProxyError::new(
                    ErrorKind::UpstreamTimeout,
                    "the upstream TLS handshake timed out",
                )
            })?
            .map_err(|e| tls_failure(&target.host, e))?;
        Ok((UpIo::Tls(Box::new(tls)), probe))
    }
}

/// A failed upstream handshake as the agent and the operator read it: its reason named (an
/// issuer airlock does not trust, a certificate for another name, an expired one, an alert from
/// the upstream), not monoio-rustls's bare "io error".
fn tls_failure(host: &str, e: monoio_rustls::TlsError) -> ProxyError {
    let rustls_error = match &e {
        monoio_rustls::TlsError::Rustls(r) => Some(r.clone()),
        monoio_rustls::TlsError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned(),
    };
    let why = match (&rustls_error, &e) {
        (Some(r), _) => tls_reason(host, r),
        (None, monoio_rustls::TlsError::Io(io)) => {
            format!("the connection failed during the handshake ({io})")
        }
        (None, other) => other.to_string(),
    };
    let m = format!("TLS with {host}: {why}");
    let e = ProxyError::new(ErrorKind::UpstreamTlsError, m);
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => e.hint(
            "an upstream with a private CA needs it in --upstream-ca-file (upstream_ca_file)",
        ),
        _ => e,
    }
}

/// What went wrong, in words, for the reasons operators meet.
fn tls_reason(host: &str, e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "unknown issuer: its certificate is not signed by a CA airlock trusts".to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("name mismatch: its certificate does not name {host}")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "expired: its certificate is past its validity".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not yet valid: its certificate starts later (or this clock is behind)".to_owned()
            }
            CertificateError::Revoked => "revoked: its certificate was revoked".to_owned(),
            other => format!("invalid certificate ({other:?})"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!("handshake alert from the upstream ({alert:?})")
        }
        rustls::Error::PeerIncompatible(why) => format!("incompatible TLS ({why:?})"),
        other => other.to_string(),
    }
}

impl DialSettings {
    /// The `--resolve` rule for `target`, if any.
    fn rule(&self, target: &Target) -> Option<&ResolveRule> {
        self.resolve
            .iter()
            .find(|r| r.host == target.host && r.port == target.port)
    }
}

/// Connects to the first of `addrs` (already vetted) that answers within `timeout`; `what`
/// names the destination in the error.
async fn dial_first(
    addrs: &[SocketAddr],
    what: &str,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let mut last = None;
    for &addr in addrs {
        match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("no address"));
    Err(ProxyError::new(
        ErrorKind::UpstreamUnreachable,
        format!("connecting to {what}: {e}"),
    ))
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
pub fn vet(guard: &Guard, addrs: &[SocketAddr]) -> Result<(), ProxyError> {
    for a in addrs {
        guard.check(a.ip()).map_err(|b| {
            ProxyError::new(ErrorKind::DestinationBlocked, b.to_string()).hint(
                "private and metadata addresses are refused; see --allow-private-ranges and --network-allow",
            )
        })?;
    }
    Ok(())
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

#[cfg(test)]
pub(super) mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

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

    /// Settings with `guard`, system roots, no `--resolve`, no corporate proxy.
    pub(in crate::proxy::upstream) fn settings(guard: Guard) -> DialSettings {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        DialSettings {
            guard,
            resolve: vec![],
            upstream_tls: Arc::new(client_config(provider, None).unwrap()),
            egress: Egress::default(),
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    fn loopback_only() -> Guard {
        Guard {
            allow_private_ranges: false,
            allow: vec!["127.0.0.1/32".parse().unwrap()],
        }
    }

    pub(in crate::proxy::upstream) fn block_on<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .with_blocking_strategy(monoio::blocking::BlockingStrategy::ExecuteLocal)
            .build()
            .unwrap()
            .block_on(f)
    }

    fn target(scheme: Scheme, host: &str, port: u16) -> Target {
        Target {
            scheme,
            host: host.into(),
            port,
        }
    }

    /// SECURITY-TESTS.md row 32 (E-03): DNS rebinding. Each dial looks the name up once and
    /// connects only to the address it vetted; a later answer pointing elsewhere is refused with
    /// no connection made to it.
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
        let dialer = Dialer::new(resolver.clone(), settings(loopback_only()));
        let target = target(Scheme::Http, "rebind.example", port);
        let (first, second) = block_on(async {
            (
                dialer.dial("default", &target).await.map(|_| ()),
                dialer.dial("default", &target).await.map(|_| ()),
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

    /// SECURITY-TESTS.md row 31 (E-02): a DNS answer mixing public and private addresses is
    /// refused.
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

    /// `--resolve` answers before the resolver and is vetted like a lookup; a reload swaps the
    /// settings for the next dial.
    #[test]
    fn resolve_rules_are_vetted_and_reloads_apply_to_the_next_dial() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let resolver = Arc::new(FakeResolver::default());
        let mut with_rule = settings(loopback_only());
        with_rule.resolve = vec![ResolveRule {
            host: "api.example".into(),
            port,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }];
        let dialer = Dialer::new(resolver.clone(), with_rule);
        let api = target(Scheme::Http, "api.example", port);
        block_on(async {
            assert_eq!(dialer.resolve(&api).await.unwrap().len(), 1);
            assert_eq!(resolver.lookups.load(Ordering::SeqCst), 0);
            dialer.set(settings(Guard::default()));
            // The rule is gone and the resolver has no answer.
            let gone = dialer.resolve(&api).await.unwrap_err();
            assert_eq!(gone.code(), "upstream_unreachable");
            let literal = target(Scheme::Http, "127.0.0.1", port);
            let blocked = dialer.resolve(&literal).await.unwrap_err();
            assert_eq!(blocked.code(), "destination_blocked");
        });
    }
}
