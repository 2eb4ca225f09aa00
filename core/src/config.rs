//! The TOML config file and the typed values it holds.
//!
//! [`FileConfig`] mirrors every `airlock serve` flag (plus storage settings) with
//! `deny_unknown_fields`; its fields are typed ([`ResolveRule`], [`Cidr`], [`AdminListen`], ...),
//! so a bad value is reported by toml with its key and line. Lookup order: `--config`, else
//! `$AIRLOCK_CONFIG`, else none. Flags override the file; merging happens where the flags are
//! parsed. This module does no I/O beyond reading the named file.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Exit code for a bad config file (EX_CONFIG).
pub const EX_CONFIG: u8 = 78;

/// The config file. Every field is optional; unset means the flag or built-in default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory (vault, CA, keys). Default `./airlock-data`.
    pub data_dir: Option<PathBuf>,
    /// Proxy listen address. Default `127.0.0.1:7480`.
    pub listen: Option<SocketAddr>,
    /// Worker threads. Default: one per core.
    pub workers: Option<NonZeroUsize>,
    /// I/O driver: `auto`, `io-uring` or `epoll`.
    pub driver: Option<Driver>,
    /// Start the admin process (`false` is `--no-admin`).
    pub admin: Option<bool>,
    /// Admin HTTP listener: an address, or `none`.
    pub admin_listen: Option<AdminListen>,
    /// `HOST:PORT:ADDR` overrides for upstream connections.
    #[serde(default)]
    pub resolve: Vec<ResolveRule>,
    /// Extra PEM file of upstream CAs, added to the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Allow upstream addresses in private ranges (metadata addresses stay blocked).
    pub allow_private_ranges: Option<bool>,
    /// CIDRs allowed as upstream addresses even when private.
    #[serde(default)]
    pub network_allow: Vec<Cidr>,
    /// Reach upstreams through this HTTP proxy with CONNECT: `http://[USER@]HOST:PORT` (a
    /// corporate egress proxy). Default: direct.
    pub upstream_proxy: Option<ProxyUrl>,
    /// File holding the upstream proxy's password (Basic auth with the URL's user).
    pub upstream_proxy_password_file: Option<PathBuf>,
    /// Hosts reached directly, not through `upstream_proxy`: `example.com` (it and its
    /// subdomains), `.example.com` (the same), an IP address, or `*` (every host).
    #[serde(default)]
    pub no_proxy: Vec<String>,
    /// Per-vault upstream proxies, replacing the global one for that vault's connections:
    /// `[vault_upstream_proxy.NAME]` with `url` (none: direct), `password_file`, `no_proxy`.
    #[serde(default)]
    pub vault_upstream_proxy: std::collections::BTreeMap<String, VaultProxy>,
    /// Prometheus metrics listener: an address, or `none`.
    pub metrics_listen: Option<AdminListen>,
    /// LMDB map size in MiB (address space; the file grows as needed). Default 1024.
    pub map_size_mib: Option<u64>,
    /// Longest time to receive a request head once it has started (slowloris). Default 30s.
    pub header_timeout: Option<HumanDuration>,
    /// Longest idle wait between requests on a connection, and between body reads. Default 120s.
    pub idle_timeout: Option<HumanDuration>,
    /// Longest an upstream connection may sit idle in the pool and still be reused (`0s`: never
    /// reuse). Default 3s, under the 5 s keep-alive of common servers.
    pub upstream_idle_timeout: Option<HumanDuration>,
    /// How long a request held by a `hold` rule waits for an operator. Default 120s.
    pub hold_timeout: Option<HumanDuration>,
    /// Largest request body accepted, in bytes. Default: no cap (bodies stream).
    pub max_body_bytes: Option<u64>,
    /// Most client connections open at once per process; more get 503 `overloaded`. Default 10000.
    pub max_connections: Option<NonZeroUsize>,
    /// Most tunnels one agent holds open at once; more get 429 `rate_limited`; 0 = no cap.
    /// Default 1000.
    pub agent_max_connections: Option<usize>,
    /// Slack-compatible webhook the admin process notifies of new proposals (https, or http to
    /// loopback). The message holds hosts, key names and the approval link; never a secret.
    pub webhook_url: Option<String>,
    /// Public base URL of the admin UI for `approval_url` (e.g. behind a reverse proxy).
    /// Default: the admin HTTP listener.
    pub admin_url: Option<String>,
    /// Requests per second per agent token (burst twice that); 0 = unlimited. Default 200.
    pub agent_requests_per_second: Option<u32>,
    /// Requests in flight per agent token; 0 = unlimited. Default 64.
    pub agent_max_in_flight: Option<u32>,
    /// Log level: error, warn, info, debug or trace (`$AIRLOCK_LOG` wins). Default info.
    pub log_level: Option<crate::logging::LogLevel>,
    /// Serve the proxy port over TLS (`HTTPS_PROXY=https://...`) with a certificate from airlock's
    /// CA naming these hosts (DNS names or IP addresses), so agents on other machines never send
    /// their token in clear text. Default: plain HTTP.
    #[serde(default)]
    pub proxy_tls_names: Vec<String>,
    /// Serve the proxy port over TLS with this PEM certificate chain instead (with
    /// `proxy_tls_key`).
    pub proxy_tls_cert: Option<PathBuf>,
    /// The PEM private key of `proxy_tls_cert`.
    pub proxy_tls_key: Option<PathBuf>,
    /// Client networks (CIDRs) allowed to connect to the proxy port; others are closed at once.
    /// Default: any.
    #[serde(default)]
    pub client_networks: Vec<Cidr>,
    /// Balancers (CIDRs) whose connections to the proxy port start with a PROXY protocol v2
    /// header naming the agent's address (HAProxy's `send-proxy-v2`); a connection from one
    /// without a valid header is refused. Default: none (no header is read from anyone).
    #[serde(default)]
    pub proxy_protocol_from: Vec<Cidr>,
    /// Fleet mode: the PostgreSQL URL of the fleet's store, e.g.
    /// `postgresql://airlock@db.example:5432/airlock?sslmode=require` (`$AIRLOCK_STORE_URL`
    /// wins). Unset: this node stands alone.
    pub store_url: Option<String>,
    /// File holding the PostgreSQL password (`$AIRLOCK_STORE_PASSWORD_FILE` wins). Default: the
    /// systemd credential `store-password`, if any.
    pub store_password_file: Option<PathBuf>,
    /// Extra PEM CA file to verify PostgreSQL's certificate with (system roots otherwise).
    pub store_ca_file: Option<PathBuf>,
    /// Fleet mode: once this node has not heard from the store for this long, credentialed
    /// requests fail closed (503 `fleet_stale`). Default: never.
    pub fleet_max_staleness: Option<HumanDuration>,
}

/// A duration written like `30s`, `2m` or `1h` in the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Self)
    }
}

/// A config file that could not be read or parsed. The message names the key and line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_owned(),
            };
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })
    }

    /// The fleet connection, when `store_url` (or `$AIRLOCK_STORE_URL`) is set. `listen` is the
    /// proxy address this node reports.
    pub fn fleet(&self, listen: &str) -> Result<Option<crate::vault::fleet::Fleet>, ConfigError> {
        let env = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        let Some(url) = env("AIRLOCK_STORE_URL")
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| self.store_url.clone())
        else {
            return Ok(None);
        };
        let password_file = env("AIRLOCK_STORE_PASSWORD_FILE")
            .map(PathBuf::from)
            .or_else(|| self.store_password_file.clone())
            .or_else(|| {
                env("CREDENTIALS_DIRECTORY")
                    .map(|d| PathBuf::from(d).join("store-password"))
                    .filter(|p| p.exists())
            });
        let password = match password_file {
            Some(path) => {
                let raw = std::fs::read(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let value =
                    crate::secret::value_from_stdin(raw).map_err(|e| ConfigError::Parse {
                        path,
                        message: e.to_string(),
                    })?;
                Some(value)
            }
            None => None,
        };
        Ok(Some(crate::vault::fleet::Fleet::new(
            crate::vault::fleet::Settings {
                url,
                password,
                ca_file: self.store_ca_file.clone(),
                listen: listen.to_owned(),
            },
        )))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }
}

/// Which io backend the workers use.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    IoUring,
    Epoll,
}

/// An optional listener: an address or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminListen {
    None,
    Addr(SocketAddr),
}

impl FromStr for AdminListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Self::None);
        }
        s.parse()
            .map(Self::Addr)
            .map_err(|_| format!("{s:?} is not an address (IP:PORT) or `none`"))
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// `--resolve HOST:PORT:ADDR`: connections for HOST:PORT go to ADDR (an IP, or IP:PORT with
/// IPv6 in brackets). The upstream certificate is still verified for HOST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveRule {
    pub host: String,
    pub port: u16,
    pub addr: SocketAddr,
}

impl FromStr for ResolveRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("{s:?} is not HOST:PORT:ADDR (e.g. api.example.com:443:127.0.0.1:8443)");
        let mut parts = s.splitn(3, ':');
        let (host, port, addr) = match (parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(p), Some(a)) => (h, p, a),
            _ => return Err(bad()),
        };
        let host = host.to_ascii_lowercase();
        crate::spec::host::check_dns_name(&host).map_err(|e| format!("{s:?}: {e}"))?;
        let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?;
        let addr = match addr.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                let ip = addr.trim_start_matches('[').trim_end_matches(']');
                SocketAddr::new(ip.parse::<IpAddr>().map_err(|_| bad())?, port)
            }
        };
        Ok(Self { host, port, addr })
    }
}

/// A vault's own upstream proxy (`[vault_upstream_proxy.NAME]`); without `url` the vault's
/// connections go direct.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultProxy {
    pub url: Option<ProxyUrl>,
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

/// `upstream_proxy`: an `http://` proxy URL with an optional user and no password (the
/// password is read from a file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
}

impl FromStr for ProxyUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("{s:?} {why} (e.g. http://proxy.corp.example:3128)");
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| bad("is not an http:// proxy URL"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(bad("has a path"));
        }
        let (user, authority) = match rest.rsplit_once('@') {
            Some((u, _)) if u.contains(':') => {
                return Err(bad(
                    "holds a password: put it in upstream_proxy_password_file",
                ));
            }
            Some((u, a)) if !u.is_empty() => (Some(u.to_owned()), a),
            Some(_) => return Err(bad("has an empty user")),
            None => (None, rest),
        };
        let (host, port) = authority
            .rsplit_once(':')
            .filter(|(h, _)| !h.ends_with(':') || h.starts_with('['))
            .ok_or_else(|| bad("names no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("names no valid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_err() {
            crate::spec::host::check_dns_name(&host.to_ascii_lowercase())
                .map_err(|e| bad(&e.to_string()))?;
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            user,
        })
    }
}

/// An IP network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8 or 127.0.0.1/32)");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|&p| p <= max).ok_or_else(bad)?;
        Ok(Self { addr, prefix })
    }
}

/// Deserialises any `FromStr` type from a TOML string, keeping toml's span for errors.
macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(AdminListen, ResolveRule, Cidr, HumanDuration, ProxyUrl);

/// Parses a duration such as `90s`, `15m`, `1h` or `7d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 1h or 30m ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        let p: ProxyUrl = "http://alice@proxy.corp.example:3128".parse().unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user.as_deref()),
            ("proxy.corp.example", 3128, Some("alice"))
        );
        let p: ProxyUrl = "http://[::1]:8080/".parse().unwrap();
        assert_eq!((p.host.as_str(), p.port, p.user), ("::1", 8080, None));
        for (bad, why) in [
            ("https://p:1", "http://"),
            ("http://a:secret@p:1", "upstream_proxy_password_file"),
            ("http://p", "port"),
            ("http://p:0", "port"),
            ("http://p:1/x", "path"),
            ("http://bad_name:1", "invalid label"),
        ] {
            let e = bad.parse::<ProxyUrl>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
data_dir = "/var/lib/airlock"
listen = "127.0.0.1:7480"
workers = 2
driver = "epoll"
admin = true
admin_listen = "none"
resolve = ["api.example.com:443:127.0.0.1:8443", "b.example.com:443:[::1]"]
upstream_ca_file = "/etc/airlock/upstream.pem"
allow_private_ranges = false
network_allow = ["127.0.0.1/32", "fd00::/8"]
metrics_listen = "127.0.0.1:9090"
map_size_mib = 64
header_timeout = "10s"
idle_timeout = "2m"
max_body_bytes = 1048576
max_connections = 500
"#;
        let c = FileConfig::parse(Path::new("t.toml"), text).unwrap();
        assert_eq!(c.driver, Some(Driver::Epoll));
        assert_eq!(
            c.idle_timeout,
            Some(HumanDuration(std::time::Duration::from_secs(120)))
        );
        assert_eq!(c.admin_listen, Some(AdminListen::None));
        assert_eq!(c.resolve[0].addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.resolve[1].addr, "[::1]:443".parse().unwrap());
        assert!(c.network_allow[0].contains("127.0.0.1".parse().unwrap()));
        assert!(!c.network_allow[0].contains("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = FileConfig::parse(
            Path::new("t.toml"),
            "listen = \"127.0.0.1:1\"\ncolour = 1\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 2") && msg.contains("colour"), "{msg}");
        let e = FileConfig::parse(
            Path::new("t.toml"),
            "\n\nnetwork_allow = [\"10.0.0.0/33\"]\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("line 3") && msg.contains("10.0.0.0/33"),
            "{msg}"
        );
    }

    #[test]
    fn resolve_rule_forms() {
        let r: ResolveRule = "API.example.com:443:10.0.0.1".parse().unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.addr),
            ("api.example.com", 443, "10.0.0.1:443".parse().unwrap())
        );
        for bad in ["x", "h:0:1.2.3.4", "h:443:nothost", "bad_host:443:1.2.3.4"] {
            assert!(bad.parse::<ResolveRule>().is_err(), "{bad}");
        }
    }
}
