//! `serve`'s settings: the flags ([`ServeArgs`]) over the config file over the defaults,
//! resolved once at start ([`Settings::resolve`]) and again on SIGHUP ([`Reload`]), with the
//! limits, the upstream proxy and the proxy port's TLS derived from them. Reads files named in
//! the config (a password file, certificates); starts nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use certs_cache::Ca;

use super::{DEFAULT_AGENT_IN_FLIGHT, DEFAULT_AGENT_RATE, DEFAULT_HOLD_TIMEOUT, ServeError};
use crate::config::{
    AdminListen, Cidr, Driver, FileConfig, HumanDuration, ProxyUrl, ResolveRule, VaultProxy,
};
use crate::logging::{LogHandle, LogLevel};
use crate::netguard::Guard;
use crate::proxy::upstream::egress::{Egress, EgressProxy};
use crate::proxy::upstream::{CONNECT_TIMEOUT, DialSettings};
use crate::proxy::{Holds, Limits, Tunables};
use crate::vault::StoreOptions;

/// The admin UI's listener when neither flag nor file names one.
const ADMIN_LISTEN: AdminListen = AdminListen::Addr(SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    7481,
));

/// A list setting: the flags' when any is given (they replace the file's), else the file's.
fn listed<T: Clone>(flags: &[T], file: &[T]) -> Vec<T> {
    if flags.is_empty() { file } else { flags }.to_vec()
}

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
    /// Balancers that send a PROXY protocol v2 header first.
    pub proxy_protocol_from: Vec<Cidr>,
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
    /// Read a PROXY protocol v2 header (the agent's address) on connections from this balancer
    /// CIDR, and refuse those without one (repeatable) [default: none]
    #[arg(long, value_name = "CIDR")]
    pub proxy_protocol_from: Vec<Cidr>,
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
            no_proxy: listed(&args.no_proxy, &file.no_proxy),
            vault_upstream_proxy: file.vault_upstream_proxy.clone(),
            admin_listen: if args.no_admin || file.admin == Some(false) {
                AdminListen::None
            } else {
                args.admin_listen
                    .or(file.admin_listen)
                    .unwrap_or(ADMIN_LISTEN)
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
            proxy_tls_names: listed(&args.proxy_tls_name, &file.proxy_tls_names),
            proxy_tls_files: file.proxy_tls_cert.clone().zip(file.proxy_tls_key.clone()),
            client_networks: listed(&args.client_network, &file.client_networks),
            proxy_protocol_from: listed(&args.proxy_protocol_from, &file.proxy_protocol_from),
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
    pub(super) fn tunables(
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
            dial: DialSettings {
                guard: self.guard.clone(),
                resolve: self.resolve.clone(),
                upstream_tls: Arc::new(upstream_tls),
                egress: self.egress()?,
                connect_timeout: CONNECT_TIMEOUT,
            },
            holds: Holds {
                admin_base: self.approval_base(admin_http),
                timeout: self.hold_timeout,
            },
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
    pub(super) fn approval_base(&self, admin_http: Option<&str>) -> Option<String> {
        self.admin_url
            .clone()
            .or_else(|| admin_http.map(|h| format!("http://{h}")))
    }

    /// The settings that differ from `new` and only apply after a restart.
    pub(super) fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
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
            "proxy_protocol_from",
            self.proxy_protocol_from != new.proxy_protocol_from,
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
pub(super) fn limits(file: &FileConfig, args: &ServeArgs) -> Limits {
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

/// One upstream proxy: `url`, Basic auth with its user and the password in `password_file`, and
/// the `no_proxy` entries normalised.
pub(super) fn egress_proxy(
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
pub(super) fn proxy_tls(
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn settings(flags: &[&str], toml: &str) -> Settings {
        let args = Flags::parse_from(std::iter::once("serve").chain(flags.iter().copied())).serve;
        let file = FileConfig::parse(std::path::Path::new("test.toml"), toml).unwrap();
        Settings::resolve(PathBuf::from("/data"), &file, &args)
    }

    /// Flags over the config file over the defaults, and a reload names what needs a restart.
    #[test]
    fn flags_over_file_over_defaults() {
        let defaults = settings(&[], "");
        assert_eq!(defaults.agent_rate, DEFAULT_AGENT_RATE);
        assert_eq!(defaults.agent_max_in_flight, DEFAULT_AGENT_IN_FLIGHT);
        let from_file = settings(&[], "workers = 3\nagent_requests_per_second = 7\n");
        assert_eq!((from_file.workers.get(), from_file.agent_rate), (3, 7));
        let flagged = settings(
            &["--workers", "2", "--agent-requests-per-second", "9"],
            "workers = 3\nagent_requests_per_second = 7\n",
        );
        assert_eq!((flagged.workers.get(), flagged.agent_rate), (2, 9));
        assert_eq!(from_file.restart_only_changes(&flagged), ["workers"]);
        assert!(from_file.restart_only_changes(&from_file).is_empty());
    }
}
