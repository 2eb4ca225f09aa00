//! `airlock serve`: settings, start-up and the worker threads.
//!
//! Start-up: resolve settings (flags over the config file over defaults), initialise the data
//! dir if needed, unlock the vault, compile the policy and pre-warm leaves, refuse a port some
//! other process listens on, bind one SO_REUSEPORT listener per worker on the one resolved port,
//! start each worker's monoio runtime (io_uring, or epoll when io_uring is unavailable or
//! `--driver epoll`), then print the `ready ...` line. A watcher thread polls the vault
//! generation every 100 ms and swaps in a recompiled policy. On SIGHUP the config file is read
//! again (see [`Reload`]): the [`Tunables`], agent limits and log level change in place without
//! dropping a connection; settings that need new listeners or threads are named in a warning and
//! wait for a restart; a file that does not parse changes nothing. On SIGTERM or SIGINT, workers
//! take no new requests and in-flight ones get [`SHUTDOWN_GRACE`] to finish before the process
//! exits.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use certs_cache::{Ca, LeafCache};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{
    AdminListen, Cidr, Driver, FileConfig, HumanDuration, ProxyUrl, ResolveRule, VaultProxy,
};
use crate::logging::{LogHandle, LogLevel};
use crate::netguard::Guard;
use crate::policy::Policy;
use crate::proxy::upstream::egress::{Egress, EgressProxy};
use crate::proxy::{Limits, Shared, Tunables, connect};
use crate::vault::keys::KeySources;
use crate::vault::setup::{self, CA_CERT_FILE};
use crate::vault::{Store, StoreOptions, VaultError};

/// Resolved settings for the data plane.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub workers: NonZeroUsize,
    pub driver: Driver,
    pub resolve: Vec<ResolveRule>,
    pub upstream_ca_file: Option<PathBuf>,
    pub guard: Guard,
    /// The corporate proxy upstream connections leave through, its password file and the hosts
    /// reached directly.
    pub upstream_proxy: Option<ProxyUrl>,
    pub upstream_proxy_password_file: Option<PathBuf>,
    pub no_proxy: Vec<String>,
    /// Vaults with an upstream proxy of their own (or none).
    pub vault_upstream_proxy: BTreeMap<String, VaultProxy>,
    pub admin_listen: AdminListen,
    pub metrics_listen: AdminListen,
    pub store: StoreOptions,
    pub limits: Limits,
    /// Start the admin process (`--no-admin` or `admin = false` turn it off).
    pub start_admin: bool,
    pub config_file: Option<PathBuf>,
    /// Base URL for `approval_url`s, when the admin UI is published elsewhere.
    pub admin_url: Option<String>,
    /// Requests per second per agent token (burst twice that); 0 turns it off.
    pub agent_rate: u32,
    /// Requests in flight per agent token; 0 turns it off.
    pub agent_max_in_flight: u32,
    /// Log level (`$AIRLOCK_LOG` still wins); unset is `info`.
    pub log_level: Option<LogLevel>,
    /// Names for the proxy port's own certificate (TLS on the proxy port).
    pub proxy_tls_names: Vec<String>,
    /// An operator's certificate and key for the proxy port instead.
    pub proxy_tls_files: Option<(PathBuf, PathBuf)>,
    /// Client networks allowed to connect; empty: any.
    pub client_networks: Vec<Cidr>,
    /// Fleet mode: the fleet's store (`store_url`), set by the caller from the config file.
    pub fleet: Option<crate::vault::fleet::Fleet>,
    /// Fleet mode: fail credentialed requests closed past this long without the store.
    pub fleet_max_staleness: Option<Duration>,
    /// How long a held request waits for an operator (reloadable).
    pub hold_timeout: Duration,
}

/// `serve` flags, each overriding the config file.
#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Proxy listen address [default: 127.0.0.1:7480]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Worker threads [default: one per core]
    #[arg(long, value_name = "N")]
    pub workers: Option<NonZeroUsize>,
    /// I/O driver [default: auto]
    #[arg(long, value_enum)]
    pub driver: Option<Driver>,
    /// Do not start the admin process
    #[arg(long)]
    pub no_admin: bool,
    /// Admin HTTP listener, or `none` [default: 127.0.0.1:7481]
    #[arg(long, value_name = "ADDR|none")]
    pub admin_listen: Option<AdminListen>,
    /// Send connections for HOST:PORT to ADDR (the name is still verified)
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<ResolveRule>,
    /// Extra upstream CA certificates (PEM), added to the system roots
    #[arg(long, value_name = "F")]
    pub upstream_ca_file: Option<PathBuf>,
    /// DANGEROUS: allow upstream addresses in private ranges (metadata stays blocked)
    #[arg(long)]
    pub allow_private_ranges: bool,
    /// Allow upstream addresses in this CIDR even when private
    #[arg(long, value_name = "CIDR")]
    pub network_allow: Vec<Cidr>,
    /// Reach upstreams through this HTTP proxy (CONNECT): http://[USER@]HOST:PORT [default: direct]
    #[arg(long, value_name = "URL")]
    pub upstream_proxy: Option<ProxyUrl>,
    /// File holding the upstream proxy's password (Basic auth with the URL's user)
    #[arg(long, value_name = "F")]
    pub upstream_proxy_password_file: Option<PathBuf>,
    /// Reach HOST (and its subdomains; an IP; `*` for all) directly, not through the upstream proxy (repeatable)
    #[arg(long, value_name = "HOST")]
    pub no_proxy: Vec<String>,
    /// Serve the proxy port over TLS with a certificate from airlock's CA for NAME (repeat for
    /// more names; DNS names or IP addresses)
    #[arg(long, value_name = "NAME")]
    pub proxy_tls_name: Vec<String>,
    /// Accept proxy connections only from this CIDR (repeatable) [default: any]
    #[arg(long, value_name = "CIDR")]
    pub client_network: Vec<Cidr>,
    /// Prometheus metrics listener, or `none` [default: none]
    #[arg(long, value_name = "ADDR|none")]
    pub metrics_listen: Option<AdminListen>,
    /// Longest time to receive a request head once started [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub header_timeout: Option<HumanDuration>,
    /// Longest idle wait between requests and between body reads [default: 120s]
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<HumanDuration>,
    /// Longest an upstream connection idles in the pool and is still reused; 0s = never reuse [default: 3s]
    #[arg(long, value_name = "DURATION")]
    pub upstream_idle_timeout: Option<HumanDuration>,
    /// How long a request held by a hold rule waits for an operator [default: 120s]
    #[arg(long, value_name = "DURATION")]
    pub hold_timeout: Option<HumanDuration>,
    /// Largest request body in bytes [default: no cap]
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Most client connections at once; more get 503 overloaded [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<NonZeroUsize>,
    /// Most tunnels one agent holds open at once; more get 429 rate_limited; 0 = no cap [default: 1000]
    #[arg(long, value_name = "N")]
    pub agent_max_connections: Option<usize>,
    /// Requests per second per agent token, burst twice that; 0 = unlimited [default: 200]
    #[arg(long, value_name = "N")]
    pub agent_requests_per_second: Option<u32>,
    /// Requests in flight per agent token; 0 = unlimited [default: 64]
    #[arg(long, value_name = "N")]
    pub agent_max_in_flight: Option<u32>,
    /// Root key file (32 raw bytes or 64 hex digits)
    #[arg(long, value_name = "F")]
    pub master_key_file: Option<PathBuf>,
    /// Passphrase file for a passphrase vault
    #[arg(long, value_name = "F")]
    pub passphrase_file: Option<PathBuf>,
    /// Log level [default: info; $AIRLOCK_LOG overrides]
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
}

impl Settings {
    pub fn resolve(data_dir: PathBuf, file: &FileConfig, args: &ServeArgs) -> Self {
        let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
        let mut resolve = file.resolve.clone();
        resolve.extend(args.resolve.iter().cloned());
        let mut allow = file.network_allow.clone();
        allow.extend(args.network_allow.iter().copied());
        let admin_default = AdminListen::Addr(SocketAddr::from(([127, 0, 0, 1], 7481)));
        Self {
            data_dir,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7480))),
            workers: args.workers.or(file.workers).unwrap_or(cores),
            driver: args.driver.or(file.driver).unwrap_or_default(),
            resolve,
            upstream_ca_file: args
                .upstream_ca_file
                .clone()
                .or(file.upstream_ca_file.clone()),
            guard: Guard {
                allow_private_ranges: args.allow_private_ranges
                    || file.allow_private_ranges.unwrap_or(false),
                allow,
            },
            upstream_proxy: args.upstream_proxy.clone().or(file.upstream_proxy.clone()),
            upstream_proxy_password_file: args
                .upstream_proxy_password_file
                .clone()
                .or(file.upstream_proxy_password_file.clone()),
            no_proxy: if args.no_proxy.is_empty() {
                file.no_proxy.clone()
            } else {
                args.no_proxy.clone()
            },
            vault_upstream_proxy: file.vault_upstream_proxy.clone(),
            admin_listen: if args.no_admin || file.admin == Some(false) {
                AdminListen::None
            } else {
                args.admin_listen
                    .or(file.admin_listen)
                    .unwrap_or(admin_default)
            },
            metrics_listen: args
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or(AdminListen::None),
            store: StoreOptions {
                map_size_mib: file
                    .map_size_mib
                    .unwrap_or(crate::vault::store::DEFAULT_MAP_SIZE_MIB),
            },
            limits: limits(file, args),
            start_admin: !args.no_admin && file.admin != Some(false),
            config_file: None,
            agent_rate: args
                .agent_requests_per_second
                .or(file.agent_requests_per_second)
                .unwrap_or(DEFAULT_AGENT_RATE),
            agent_max_in_flight: args
                .agent_max_in_flight
                .or(file.agent_max_in_flight)
                .unwrap_or(DEFAULT_AGENT_IN_FLIGHT),
            admin_url: file
                .admin_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            log_level: args.log_level.or(file.log_level),
            proxy_tls_names: if args.proxy_tls_name.is_empty() {
                file.proxy_tls_names.clone()
            } else {
                args.proxy_tls_name.clone()
            },
            proxy_tls_files: file.proxy_tls_cert.clone().zip(file.proxy_tls_key.clone()),
            client_networks: if args.client_network.is_empty() {
                file.client_networks.clone()
            } else {
                args.client_network.clone()
            },
            fleet: None,
            fleet_max_staleness: file.fleet_max_staleness.map(|d| d.0),
            hold_timeout: args
                .hold_timeout
                .or(file.hold_timeout)
                .map_or(DEFAULT_HOLD_TIMEOUT, |d| d.0),
        }
    }

    /// The reloadable part, with `admin_http` (the admin listener bound at start) as the fallback
    /// base of approval links.
    fn tunables(
        &self,
        provider: &Arc<rustls::crypto::CryptoProvider>,
        admin_http: Option<&str>,
    ) -> Result<Tunables, ServeError> {
        let upstream_tls = crate::proxy::upstream::client_config(
            provider.clone(),
            self.upstream_ca_file.as_deref(),
        )
        .map_err(ServeError::Tls)?;
        Ok(Tunables {
            guard: self.guard.clone(),
            resolve: self.resolve.clone(),
            upstream_tls: Arc::new(upstream_tls),
            egress: self.egress()?,
            admin_base: self.approval_base(admin_http),
            hold_timeout: self.hold_timeout,
        })
    }

    /// The upstream proxies, global and per vault, their passwords read from their files (again
    /// on each reload).
    fn egress(&self) -> Result<Egress, ServeError> {
        let default = self.upstream_proxy.as_ref().map(|url| {
            egress_proxy(
                url,
                self.upstream_proxy_password_file.as_deref(),
                &self.no_proxy,
            )
        });
        let mut by_vault = HashMap::new();
        for (vault, own) in &self.vault_upstream_proxy {
            let proxy = own
                .url
                .as_ref()
                .map(|url| egress_proxy(url, own.password_file.as_deref(), &own.no_proxy));
            by_vault.insert(vault.clone(), proxy.transpose()?);
        }
        Ok(Egress {
            default: default.transpose()?,
            by_vault,
        })
    }

    /// Where approval links point: `admin_url`, else the admin listener bound at start.
    fn approval_base(&self, admin_http: Option<&str>) -> Option<String> {
        self.admin_url
            .clone()
            .or_else(|| admin_http.map(|h| format!("http://{h}")))
    }

    /// The settings that differ from `new` and only apply after a restart.
    fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        check("listen", self.listen != new.listen);
        check("workers", self.workers != new.workers);
        check("driver", self.driver != new.driver);
        check("admin", self.start_admin != new.start_admin);
        check("admin_listen", self.admin_listen != new.admin_listen);
        check("metrics_listen", self.metrics_listen != new.metrics_listen);
        check(
            "proxy_tls_names",
            self.proxy_tls_names != new.proxy_tls_names,
        );
        check(
            "proxy_tls_cert",
            self.proxy_tls_files != new.proxy_tls_files,
        );
        check(
            "client_networks",
            self.client_networks != new.client_networks,
        );
        check(
            "fleet_max_staleness",
            self.fleet_max_staleness != new.fleet_max_staleness,
        );
        check(
            "map_size_mib",
            self.store.map_size_mib != new.store.map_size_mib,
        );
        changed
    }
}

/// What SIGHUP needs: the flags (they keep overriding the file) and the logger.
#[derive(Debug)]
pub struct Reload {
    pub args: ServeArgs,
    pub log: LogHandle,
}

/// Timeouts and caps: flag, else config file, else [`Limits::default`].
fn limits(file: &FileConfig, args: &ServeArgs) -> Limits {
    let d = Limits::default();
    let pick = |flag: Option<HumanDuration>, file: Option<HumanDuration>, default| {
        flag.or(file).map_or(default, |h| h.0)
    };
    Limits {
        header_timeout: pick(args.header_timeout, file.header_timeout, d.header_timeout),
        idle_timeout: pick(args.idle_timeout, file.idle_timeout, d.idle_timeout),
        pool_idle: pick(
            args.upstream_idle_timeout,
            file.upstream_idle_timeout,
            d.pool_idle,
        ),
        body_cap: args.max_body_bytes.or(file.max_body_bytes),
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .map_or(d.max_connections, NonZeroUsize::get),
        agent_max_connections: args
            .agent_max_connections
            .or(file.agent_max_connections)
            .unwrap_or(d.agent_max_connections),
        ..d
    }
}

/// Why `serve` could not start. One line each.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{listen}: {source}")]
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} is already in use by another process; pick another --listen")]
    InUse(SocketAddr),
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("upstream proxy: {0}")]
    UpstreamProxy(String),
    #[error(transparent)]
    RequestLog(#[from] crate::requestlog::LogError),
    #[error("certificate authority: {0}")]
    Ca(#[from] certs_cache::CertError),
    #[error("{0}")]
    Fleet(String),
    #[error("starting worker {worker}: {source}")]
    Worker {
        worker: usize,
        source: std::io::Error,
    },
    /// A thread beside the workers (the watcher, the OAuth refresher, the follower) or the
    /// signal handler could not start.
    #[error("starting {what}: {source}")]
    Start {
        what: &'static str,
        source: std::io::Error,
    },
}

fn start_failed(what: &'static str) -> impl FnOnce(std::io::Error) -> ServeError {
    move |source| ServeError::Start { what, source }
}

/// One upstream proxy: `url`, Basic auth with its user and the password in `password_file`, and
/// the `no_proxy` entries normalised.
fn egress_proxy(
    url: &ProxyUrl,
    password_file: Option<&std::path::Path>,
    no_proxy: &[String],
) -> Result<EgressProxy, ServeError> {
    let authorization = match (&url.user, password_file) {
        (Some(user), Some(file)) => {
            let password = crate::secret::Secret::new(
                std::fs::read(file)
                    .map_err(|e| ServeError::UpstreamProxy(format!("{}: {e}", file.display())))?,
            );
            let mut pair = zeroize::Zeroizing::new(format!("{user}:").into_bytes());
            pair.extend_from_slice(password.expose().trim_ascii_end());
            let encoded = zeroize::Zeroizing::new(data_encoding::BASE64.encode(&pair));
            Some(crate::secret::Secret::new(
                format!("Basic {}", encoded.as_str()).into_bytes(),
            ))
        }
        (None, Some(_)) => {
            let m = format!(
                "a password file is set but {}:{} names no user",
                url.host, url.port
            );
            return Err(ServeError::UpstreamProxy(m));
        }
        (_, None) => None,
    };
    Ok(EgressProxy {
        host: url.host.clone(),
        port: url.port,
        authorization,
        no_proxy: no_proxy
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
    })
}

/// The proxy port's TLS config, when it speaks TLS: a leaf from airlock's CA for
/// `proxy_tls_names`, or the operator's certificate and key files.
fn proxy_tls(
    settings: &Settings,
    ca: &Ca,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Option<Arc<rustls::ServerConfig>>, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let bad =
        |what: &str, e: &dyn std::fmt::Display| ServeError::Tls(format!("proxy TLS: {what}: {e}"));
    let (chain, key) = match (
        &settings.proxy_tls_files,
        settings.proxy_tls_names.as_slice(),
    ) {
        (None, []) => return Ok(None),
        (Some((cert, key)), _) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(&cert.display().to_string(), &e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| bad(&key.display().to_string(), &e))?;
            (chain, key)
        }
        (None, names) => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let leaf = ca.mint_leaf_for(&names).map_err(|e| bad("minting", &e))?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_pkcs8_der.to_vec()));
            (vec![CertificateDer::from(leaf.cert_der)], key)
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad("certificate", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// Raises the soft limit of open files to the hard one: each client connection and each
/// upstream connection is a descriptor, and `max_connections` (10,000 by default) is more than
/// the common soft limit of 1,024. Says so when even the hard limit is below it.
fn raise_open_files(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("could not raise the open-file limit: {e}");
        }
    }
    let have = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let want = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2);
    if have < want {
        tracing::warn!(
            open_files = have,
            max_connections,
            "the open-file limit is below twice max_connections (a client and an upstream connection each); raise LimitNOFILE"
        );
    }
}

/// Fleet mode: attaches the fleet to the store and catches up once before serving (a store that
/// is down is warned about; the node serves what it has). Refuses a `store_url` for a data dir
/// that is not a fleet node, and says so for a node with no `store_url`. Returns the node name.
fn join_fleet(store: &mut Store, settings: &Settings) -> Result<Option<String>, ServeError> {
    let marker = store.fleet_marker().map_err(VaultError::from)?;
    match (&settings.fleet, marker) {
        (None, None) => Ok(None),
        (None, Some(m)) => {
            tracing::warn!(
                "this data dir is node {} of fleet {}, but no store_url is set: serving what it has, refusing writes",
                m.node,
                m.fleet_id
            );
            Ok(None)
        }
        (Some(_), None) => Err(ServeError::Fleet(format!(
            "store_url is set but {} is not a node of a fleet: run `airlock fleet init` (the first node) or `airlock fleet join` (the others)",
            settings.data_dir.display()
        ))),
        (Some(fleet), Some(m)) => {
            store.attach_fleet(Arc::new(fleet.clone()));
            match fleet.catch_up(store) {
                Ok(g) => {
                    tracing::info!(node = %m.node, fleet = %m.fleet_id, applied = g, "fleet node caught up")
                }
                Err(e) => tracing::warn!(
                    "the fleet's store is unreachable at start, serving what this node has: {e}"
                ),
            }
            Ok(Some(m.node))
        }
    }
}

/// Starts the data plane and serves until the process ends.
/// Opens (creating it on first start) and unlocks the vault; joins the fleet when configured.
fn open_vault(
    settings: &Settings,
    sources: &KeySources,
    actor: &str,
) -> Result<(Store, Option<String>, setup::Unlocked), ServeError> {
    // A fleet node's data dir comes from `fleet join`; a fresh standalone vault would only be in
    // the way of it.
    if settings.fleet.is_some()
        && let Err(crate::vault::StoreError::NotInitialised(_)) =
            Store::open(&settings.data_dir, settings.store)
    {
        return Err(ServeError::Fleet(format!(
            "store_url is set but {} holds no vault: run `airlock fleet join` (or `airlock init` then `airlock fleet init` for a new fleet)",
            settings.data_dir.display()
        )));
    }
    if let setup::InitOutcome::Created { .. } =
        setup::init(&settings.data_dir, sources, settings.store, actor)?
    {
        eprintln!(
            "airlock: initialised a new data dir at {}",
            settings.data_dir.display()
        );
    }
    let mut store = Store::open(&settings.data_dir, settings.store).map_err(VaultError::from)?;
    if store.reclaimed_readers > 0 {
        tracing::warn!(
            slots = store.reclaimed_readers,
            "reclaimed stale LMDB reader slots left by killed processes"
        );
    }
    let (unlocked, root) = setup::unlock_keeping_root(&store, &settings.data_dir, sources)?;
    // A node upgraded from a log without tags takes its log key from the root key, which has
    // just been shown to open this vault.
    crate::vault::fleet::Fleet::keep_key(&store, &root).map_err(VaultError::from)?;
    drop(root);
    let fleet_node = join_fleet(&mut store, settings)?;
    Ok((store, fleet_node, unlocked))
}

pub fn run(
    settings: Settings,
    sources: &KeySources,
    actor: &str,
    reload: &Reload,
) -> Result<(), ServeError> {
    crate::secret::harden_process();
    raise_open_files(settings.limits.max_connections);
    let (store, fleet_node, unlocked) = open_vault(&settings, sources, actor)?;
    let ca_path = settings.data_dir.join(CA_CERT_FILE);
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| VaultError::Io {
        path: ca_path,
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = Ca::load(
        &unlocked.ca_name,
        &ca_pem,
        unlocked.ca_key_pkcs8_der.expose(),
    )?;
    // Built before anything is started: a bad CA file fails start-up, not the first dial. The
    // admin listener's address is filled in once the admin process is up.
    let mut tunables = settings.tunables(&provider, None)?;
    if settings.guard.allow_private_ranges {
        tracing::warn!(
            "--allow-private-ranges: upstream addresses in private ranges are allowed (metadata stays blocked)"
        );
    }

    let proxy_tls = proxy_tls(&settings, &ca, &provider)?;
    let listeners = bind(settings.listen, settings.workers.get())?;
    let request_metrics = Arc::new(std::sync::Mutex::new(
        crate::metrics::RequestMetrics::default(),
    ));
    let local = listeners[0]
        .local_addr()
        .map_err(|source| ServeError::Bind {
            listen: settings.listen,
            source,
        })?;
    let policy = Policy::compile(&store, &unlocked.opener, &Policy::default())?;
    let admin = if settings.start_admin {
        crate::supervise::Admin::start(
            &settings.data_dir,
            settings.config_file.as_deref(),
            settings.admin_listen,
        )
    } else {
        None
    };
    let admin_addrs = admin.as_ref().map(|(_, a)| a.clone()).unwrap_or_default();
    if let Some(http) = &admin_addrs.http
        && let Ok(Some(token)) = store.mint_setup_token()
    {
        eprintln!(
            "airlock: no operator yet; create the first one at http://{http}/setup?token={} (or run `airlock operator add NAME`)",
            String::from_utf8_lossy(token.expose())
        );
    }
    tunables.admin_base = settings.approval_base(admin_addrs.http.as_deref());
    let (oauth, oauth_inbox) = crate::renewal::channel();
    let parts = crate::proxy::Parts {
        store,
        opener: unlocked.opener,
        certs: LeafCache::new(ca, provider.clone(), 10_000),
        resolver: Arc::new(crate::proxy::upstream::SystemResolver),
        tunables,
        limits: settings.limits,
        agent_limits: (settings.agent_rate, settings.agent_max_in_flight),
        api_base: format!("http://{local}"),
        ca_pem,
        log: crate::requestlog::start(
            &settings.data_dir,
            crate::metrics::Feed(request_metrics.clone()),
        )?,
        oauth,
        workers: settings.workers.get(),
    };
    let shared = Arc::new(Shared {
        hold_node: crate::proxy::hold::node_id(fleet_node.as_deref().unwrap_or("local")),
        fleet: fleet_node
            .map(|node| crate::fleet_state::FleetState::new(node, settings.fleet_max_staleness)),
        proxy_tls,
        client_networks: settings.client_networks.clone(),
        ..Shared::new(parts)
    });
    shared.prewarm(&policy);
    shared.policy.store(policy);
    crate::proxy::hold::reject_stale(&shared);

    let (handles, driver_name) = start_workers(listeners, &shared, settings.driver)?;
    start_threads(&shared, &settings, oauth_inbox, local)?;
    tracing::info!(
        workers = handles.len(),
        driver = driver_name,
        "data plane listening on {local}"
    );
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(start_failed("the signal handler"))?;
    let metrics_addr = match settings.metrics_listen {
        AdminListen::Addr(addr) => crate::metrics::serve(addr, request_metrics, gauges(&shared))
            .map_err(|source| ServeError::Bind {
                listen: addr,
                source,
            })?
            .to_string(),
        AdminListen::None => "none".to_owned(),
    };
    let admin_socket = admin_addrs
        .socket
        .as_ref()
        .map_or("none".to_owned(), |p| format!("unix:{}", p.display()));
    let admin_api = admin_addrs
        .api_socket
        .as_ref()
        .map_or("none".to_owned(), |p| format!("unix:{}", p.display()));
    let admin_http = admin_addrs.http.as_deref().unwrap_or("none");
    // Published before the ready line, so whoever waits for "ready" finds it.
    let published = publish(&settings.data_dir, local, shared.proxy_tls.is_some());
    println!(
        "ready proxy={local} admin={admin_socket} admin_api={admin_api} admin_http={admin_http} metrics={metrics_addr}"
    );
    notify(b"READY=1");
    serve_until_stopped(
        &mut signals,
        &shared,
        &settings,
        reload,
        &provider,
        &admin_addrs,
    );
    if let Some(path) = published {
        let _ = std::fs::remove_file(path);
    }
    if let Some((admin, _)) = &admin {
        admin.stop();
    }
    drop(handles);
    Ok(())
}

/// Starts one worker thread per listener and waits until each is accepting; returns their
/// handles and the I/O driver they run.
fn start_workers(
    listeners: Vec<StdListener>,
    shared: &Arc<Shared>,
    driver: Driver,
) -> Result<(Vec<std::thread::JoinHandle<()>>, &'static str), ServeError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("airlock-worker-{i}"))
            .spawn(move || worker(i, driver, listener, shared, ready))
            .map_err(|source| ServeError::Worker { worker: i, source })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut driver_name = "";
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok(Ok(name)) => driver_name = name,
            Ok(Err((worker, source))) => return Err(ServeError::Worker { worker, source }),
            Err(_) => {
                return Err(ServeError::Worker {
                    worker: 0,
                    source: std::io::Error::other("a worker exited during start-up"),
                });
            }
        }
    }
    Ok((handles, driver_name))
}

/// The threads beside the workers: the OAuth refresher, the fleet follower, and the watcher
/// that recompiles the policy when the vault's generation moves.
fn start_threads(
    shared: &Arc<Shared>,
    settings: &Settings,
    oauth_inbox: crate::renewal::Inbox,
    local: SocketAddr,
) -> Result<(), ServeError> {
    crate::oauth::start(shared.clone(), oauth_inbox)
        .map_err(start_failed("the OAuth refresher"))?;
    if let Some(mut fleet) = settings.fleet.clone() {
        fleet.set_listen(local.to_string());
        crate::follower::start(shared.clone(), fleet).map_err(start_failed("the follower"))?;
    }
    let watcher = shared.clone();
    std::thread::Builder::new()
        .name("airlock-watcher".into())
        .spawn(move || {
            let mut trimmer = crate::memory::Trimmer::default();
            for tick in 1u64.. {
                std::thread::sleep(Duration::from_millis(100));
                if let Err(e) = watcher.refresh() {
                    tracing::warn!("reloading the vault failed: {e}");
                }
                // Every second: after a burst of connections, memory goes back (review #106).
                if tick % 10 == 0 {
                    trimmer.observe(watcher.stats.connections.load(Ordering::Relaxed));
                }
                // Every 10 s: free reader slots of CLI processes killed mid-read (row 54).
                if tick % 100 == 0
                    && let Ok(n) = watcher.store.reclaim_readers()
                    && n > 0
                {
                    tracing::warn!(
                        slots = n,
                        "reclaimed stale LMDB reader slots left by killed processes"
                    );
                }
            }
        })
        .map_err(start_failed("the watcher"))?;
    Ok(())
}

/// What the metrics endpoint reads from the data plane at each scrape.
fn gauges(shared: &Arc<Shared>) -> impl Fn() -> crate::metrics::Gauges + Send + 'static {
    let s = shared.clone();
    move || {
        let t = s.stats.totals();
        crate::metrics::Gauges {
            connections: s.stats.connections.load(Ordering::Relaxed) as u64,
            in_flight: t.in_flight,
            tunnels: t.tunnels,
            upstream_dialled: t.upstream_dialled,
            upstream_reused: t.upstream_reused,
            pool_discarded: t.pool_discarded,
            retried: t.retried,
            leaf_mints: s.certs.mints(),
            leaf_hits: s.certs.hits(),
            limited_agent: s.limiters.agents.refused.load(Ordering::Relaxed),
            limited_auth: s.limiters.auth_failures.refused.load(Ordering::Relaxed),
            limited_mint: s.limiters.mints.refused.load(Ordering::Relaxed),
            limited_refusals: s.limiters.refusals.refused.load(Ordering::Relaxed),
            limited_token_mints: s.limiters.token_mints.refused.load(Ordering::Relaxed),
            fleet: s.fleet.as_ref().map(|f| crate::metrics::FleetGauges {
                applied: s.policy().generation,
                contact_age: f.contact_age().as_secs_f64(),
                log_rejected: f.problem().is_some(),
            }),
        }
    }
}

/// Serves until SIGTERM or SIGINT, re-reading the config on SIGHUP; then takes no new requests
/// and waits (at most [`SHUTDOWN_GRACE`]) for those in flight.
fn serve_until_stopped(
    signals: &mut Signals,
    shared: &Shared,
    settings: &Settings,
    reload: &Reload,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    admin_addrs: &crate::supervise::AdminAddrs,
) {
    if let Some(signal) = signals.forever().find(|&signal| {
        if signal != SIGHUP {
            return true;
        }
        notify(b"RELOADING=1");
        reload_config(
            shared,
            settings,
            reload,
            provider,
            admin_addrs.http.as_deref(),
        );
        notify(b"READY=1");
        false
    }) {
        tracing::info!(
            signal,
            "shutting down: no new requests; waiting for in-flight ones"
        );
    }
    shared.shutdown.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    while shared.stats.totals().in_flight > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the workers hand over their last rows and the request-log writer commit them.
    std::thread::sleep(
        crate::proxy::LOG_FLUSH_INTERVAL
            + crate::requestlog::BATCH_INTERVAL
            + Duration::from_millis(50),
    );
}

/// The file in the data dir where a running `serve` says where it listens (`airlock run` finds
/// the proxy there); removed when serve exits.
pub const RUNTIME_FILE: &str = "serve.json";

/// Writes [`RUNTIME_FILE`]; its path, or `None` (with a warning) when it cannot be written.
fn publish(data_dir: &std::path::Path, proxy: SocketAddr, tls: bool) -> Option<PathBuf> {
    let path = data_dir.join(RUNTIME_FILE);
    let scheme = if tls { "https" } else { "http" };
    let text = serde_json::json!({"proxy": proxy.to_string(), "scheme": scheme, "pid": std::process::id()});
    match crate::fsutil::write_atomic(&path, text.to_string().as_bytes(), 0o644) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(
                "cannot write {}: {e}; `airlock run` will not find this proxy by itself",
                path.display()
            );
            None
        }
    }
}

/// Per agent token defaults: 200 requests per second (burst 400) and 64 in flight.
pub const DEFAULT_AGENT_RATE: u32 = 200;
/// How long a held request waits for an operator when nothing says otherwise.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_AGENT_IN_FLIGHT: u32 = 64;

/// How long in-flight requests may take to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// SIGHUP: reads the config file again and applies what can change in place; names what
/// differs from `started` but needs a restart. A file that does not load changes nothing.
fn reload_config(
    shared: &Shared,
    started: &Settings,
    reload: &Reload,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    admin_http: Option<&str>,
) {
    let Some(path) = &started.config_file else {
        tracing::warn!("SIGHUP: no config file to reload (serve was started without --config)");
        return;
    };
    // The data dir never changes in place (and --data-dir may have overridden the file).
    let new = FileConfig::load(path)
        .map_err(|e| e.to_string())
        .map(|file| Settings::resolve(started.data_dir.clone(), &file, &reload.args))
        .and_then(|new| {
            let tunables = new
                .tunables(provider, admin_http)
                .map_err(|e| e.to_string())?;
            Ok((new, tunables))
        });
    let (new, tunables) = match new {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("reload refused, settings unchanged: {e}");
            return;
        }
    };
    shared.set_tunables(tunables, new.limits);
    shared
        .limiters
        .agents
        .set(new.agent_rate, new.agent_max_in_flight);
    reload.log.set(new.log_level);
    let pending = started.restart_only_changes(&new);
    if pending.is_empty() {
        tracing::info!("reloaded {}", path.display());
    } else {
        tracing::warn!(
            "reloaded {}; these changes apply after a restart: {}",
            path.display(),
            pending.join(", ")
        );
    }
}

/// Tells systemd (`Type=notify`) about the service state (`READY=1`, `RELOADING=1`) on
/// `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).
fn notify(state: &[u8]) {
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => {
            <UnixAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes())
        }
        None => UnixAddr::from_pathname(&target),
    };
    let sent = UnixDatagram::unbound().and_then(|s| addr.and_then(|a| s.send_to_addr(state, &a)));
    if let Err(e) = sent {
        tracing::warn!("notifying systemd at {target} failed: {e}");
    }
}

/// Binds `workers` SO_REUSEPORT listeners on one port, after checking that no other process
/// holds it (a plain bind would otherwise silently share traffic with it).
fn bind(listen: SocketAddr, workers: usize) -> Result<Vec<StdListener>, ServeError> {
    let err = |source| ServeError::Bind { listen, source };
    let probe = StdListener::bind(listen).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::InUse(listen)
        } else {
            err(e)
        }
    })?;
    let addr = probe.local_addr().map_err(err)?;
    drop(probe);
    (0..workers)
        .map(|_| {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
            socket.set_reuse_port(true).map_err(err)?;
            socket.set_reuse_address(true).map_err(err)?;
            socket.set_nonblocking(true).map_err(err)?;
            socket.bind(&addr.into()).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    ServeError::InUse(addr)
                } else {
                    err(e)
                }
            })?;
            socket.listen(1024).map_err(err)?;
            Ok(socket.into())
        })
        .collect()
}

type Ready = mpsc::Sender<Result<&'static str, (usize, std::io::Error)>>;

fn worker(i: usize, driver: Driver, listener: StdListener, shared: Arc<Shared>, ready: Ready) {
    crate::proxy::stats::Stats::enter_worker(i);
    let use_uring = match driver {
        Driver::IoUring => true,
        Driver::Epoll => false,
        Driver::Auto => monoio::utils::detect_uring(),
    };
    let fut = accept_loop(
        i,
        listener,
        shared,
        ready.clone(),
        if use_uring { "io-uring" } else { "epoll" },
    );
    let built = if use_uring {
        uring_runtime().map(|mut rt| rt.block_on(fut))
    } else {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .attach_thread_pool(blocking_pool())
            .build()
            .map(|mut rt| rt.block_on(fut))
    };
    if let Err(e) = built {
        let _ = ready.send(Err((i, e)));
    }
}

/// The threads a worker hands blocking work to (LMDB commits, name lookups, Argon2).
fn blocking_pool() -> Box<monoio::blocking::DefaultThreadPool> {
    Box::new(monoio::blocking::DefaultThreadPool::new(2))
}

/// A worker's io_uring runtime. Its ring belongs to one thread, and is set up so: only this
/// thread submits (`SINGLE_ISSUER`), and completions are run when the worker next enters the
/// kernel to wait for them (`DEFER_TASKRUN`, with `COOP_TASKRUN`) instead of interrupting it
/// with an inter-processor interrupt each. In the load harness this raised keep-alive
/// throughput and cut the added p99 (docs/src/performance.md). A kernel without those flags
/// (before 6.1) gets a plain ring.
fn uring_runtime()
-> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let build = |ring: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(ring)
            .enable_timer()
            .attach_thread_pool(blocking_pool())
            .build()
    };
    let mut tuned = io_uring::IoUring::builder();
    tuned
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    match build(tuned) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            build(io_uring::IoUring::builder())
        }
        built => built,
    }
}

async fn accept_loop(
    i: usize,
    listener: StdListener,
    shared: Arc<Shared>,
    ready: Ready,
    driver: &'static str,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err((i, e)));
            return;
        }
    };
    let _ = ready.send(Ok(driver));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                monoio::spawn(connect::accepted(shared.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(worker = i, "accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
