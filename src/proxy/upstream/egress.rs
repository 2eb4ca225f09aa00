//! The upstream proxy (`upstream_proxy`, or a vault's own in `[vault_upstream_proxy.NAME]`): a
//! corporate HTTP proxy every upstream connection leaves through, with HTTP CONNECT and optional
//! Basic auth, except for the `no_proxy` hosts.
//!
//! The SSRF guard still decides (R4): the proxy's own addresses are vetted like any upstream's
//! (a proxy on a private network needs its CIDR in `network_allow`); a target is vetted by what
//! airlock knows without resolving it (an IP literal, a `--resolve` address, `localhost` as
//! loopback, metadata names as metadata), since the proxy resolves names itself. This module
//! speaks only the CONNECT exchange; TLS with the upstream runs over the tunnel it returns, so
//! the proxy never sees a request or a credential.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use zeroize::{Zeroize, Zeroizing};

use super::Target;
use crate::proxy::error::{ErrorKind, ProxyError};
use crate::secret::Secret;

/// Longest CONNECT response head read from the proxy.
const HEAD_MAX: usize = 8 * 1024;

/// The upstream proxies: the global one and the vaults' own (`None`: that vault goes direct).
#[derive(Debug, Default)]
pub struct Egress {
    pub default: Option<EgressProxy>,
    pub by_vault: HashMap<String, Option<EgressProxy>>,
}

impl Egress {
    /// The proxy `vault`'s connections to `host` leave through, if any.
    pub fn route(&self, vault: &str, host: &str) -> Option<&EgressProxy> {
        let proxy = match self.by_vault.get(vault) {
            Some(own) => own.as_ref(),
            None => self.default.as_ref(),
        };
        proxy.filter(|p| p.applies_to(host))
    }
}

/// A configured upstream proxy.
#[derive(Debug)]
pub struct EgressProxy {
    pub host: String,
    pub port: u16,
    /// `Basic base64(user:password)`, when the proxy needs credentials.
    pub authorization: Option<Secret>,
    /// Lowercase host suffixes (and IPs) reached directly; `*` for all.
    pub no_proxy: Vec<String>,
}

impl EgressProxy {
    /// Whether connections to `host` go through the proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        !self.no_proxy.iter().any(|entry| {
            let suffix = entry.trim_start_matches('.');
            entry == "*"
                || host == suffix
                || host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }

    /// The proxy as a target (for resolving and vetting its address).
    pub fn target(&self) -> Target {
        Target {
            scheme: crate::spec::Scheme::Http,
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// The address airlock vets for a target it does not resolve: its IP literal, loopback for
/// `localhost`, the metadata address for metadata names; `None` for other names.
pub fn vetted_as(host: &str) -> Option<IpAddr> {
    const METADATA: &[&str] = &["metadata", "metadata.google.internal", "instance-data"];
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
        return Some(ip);
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    METADATA
        .iter()
        .any(|m| host == *m || host.strip_suffix(m).is_some_and(|r| r.ends_with('.')))
        .then_some(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)))
}

/// Asks the proxy on `tcp` for a tunnel to `authority` (`host:port`, or a `--resolve` address)
/// and returns the stream once the proxy answered 2xx.
pub async fn connect(
    mut tcp: TcpStream,
    proxy: &EgressProxy,
    authority: &str,
    timeout: std::time::Duration,
) -> Result<TcpStream, ProxyError> {
    let unreachable = |e: io::Error| {
        ProxyError::new(
            ErrorKind::UpstreamUnreachable,
            format!("the upstream proxy {}:{}: {e}", proxy.host, proxy.port),
        )
    };
    let mut request = Zeroizing::new(
        format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n").into_bytes(),
    );
    if let Some(auth) = &proxy.authorization {
        request.extend_from_slice(b"proxy-authorization: ");
        request.extend_from_slice(auth.expose());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let exchange = async {
        let (res, mut buf) = tcp.write_all(std::mem::take(&mut *request)).await;
        buf.zeroize();
        res?;
        read_head(&mut tcp).await
    };
    let head = match monoio::time::timeout(timeout, exchange).await {
        Ok(head) => head.map_err(unreachable)?,
        Err(_) => {
            let m = format!(
                "the upstream proxy {}:{} did not answer CONNECT in time",
                proxy.host, proxy.port
            );
            return Err(ProxyError::new(ErrorKind::UpstreamTimeout, m));
        }
    };
    answered(&head, proxy).map(|()| tcp)
}

/// Whether the upstream proxy's answer `head` to CONNECT opens the tunnel; why not otherwise.
fn answered(head: &[u8], proxy: &EgressProxy) -> Result<(), ProxyError> {
    let refused = |m: String| ProxyError::new(ErrorKind::UpstreamProxyRefused, m);
    match status(head) {
        Some(200..=299) if head.ends_with(b"\r\n\r\n") => Ok(()),
        Some(200..=299) => Err(refused(
            "the upstream proxy sent bytes after its CONNECT answer".into(),
        )),
        // 407 is the standard answer; tinyproxy, among others, answers CONNECT with 401.
        Some(401 | 407) => Err(ProxyError::new(
            ErrorKind::UpstreamProxyAuth,
            format!(
                "the upstream proxy {}:{} refused airlock's credentials",
                proxy.host, proxy.port
            ),
        )
        .hint("check the user in upstream_proxy and upstream_proxy_password_file")),
        // The authority may be a `--resolve` address, which is not the agent's to see (review
        // #97): the agent knows which host it asked for.
        Some(code) => Err(refused(format!(
            "the upstream proxy refused the tunnel with {code}"
        ))),
        None => Err(refused(
            "the upstream proxy's answer to CONNECT is not HTTP".into(),
        )),
    }
}

/// Reads until a response head's empty line (with whatever came after it: a refusal's body; a
/// tunnel's answer must have nothing after it, since the upstream waits for airlock to speak).
async fn read_head(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    loop {
        let (res, buf) = tcp.read(Vec::with_capacity(1024)).await;
        let n = res?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during CONNECT",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if memchr::memmem::find(&head, b"\r\n\r\n").is_some() {
            return Ok(head);
        }
        if head.len() > HEAD_MAX {
            return Err(io::Error::other("the CONNECT response head is too long"));
        }
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

/// `host:port` for a CONNECT line, IPv6 in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(no_proxy: &[&str]) -> EgressProxy {
        EgressProxy {
            host: "proxy".into(),
            port: 3128,
            authorization: None,
            no_proxy: no_proxy.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn no_proxy_matches_hosts_and_subdomains() {
        let p = proxy(&["corp.example", ".internal.example", "10.1.2.3"]);
        assert!(!p.applies_to("corp.example"));
        assert!(!p.applies_to("git.corp.example"));
        assert!(!p.applies_to("a.internal.example"));
        assert!(!p.applies_to("10.1.2.3"));
        assert!(p.applies_to("notcorp.example"));
        assert!(p.applies_to("api.openai.com"));
        assert!(!proxy(&["*"]).applies_to("api.openai.com"));
    }

    #[test]
    fn vaults_may_have_their_own_proxy_or_none() {
        let egress = Egress {
            default: Some(proxy(&[])),
            by_vault: [
                ("direct".to_owned(), None),
                ("own".to_owned(), Some(proxy(&["skip.example"]))),
            ]
            .into(),
        };
        assert!(egress.route("default", "a.example").is_some());
        assert!(egress.route("direct", "a.example").is_none());
        assert!(egress.route("own", "a.example").is_some());
        assert!(egress.route("own", "skip.example").is_none());
        assert!(Egress::default().route("default", "a.example").is_none());
    }

    #[test]
    fn targets_vetted_without_resolving() {
        assert_eq!(vetted_as("127.0.0.2"), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(vetted_as("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(vetted_as("x.localhost"), Some(Ipv4Addr::LOCALHOST.into()));
        assert_eq!(
            vetted_as("metadata.google.internal"),
            Some(Ipv4Addr::new(169, 254, 169, 254).into())
        );
        assert_eq!(vetted_as("api.openai.com"), None);
    }

    /// Row 107: a refusal by the upstream proxy does not show the agent the address
    /// airlock asked it for (a `--resolve` address, say).
    #[test]
    fn row107_a_refused_tunnel_does_not_name_the_address_asked_for() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let e = rt.block_on(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let timeout = std::time::Duration::from_secs(5);
            connect(tcp, &proxy(&[]), "10.9.8.7:40717", timeout)
                .await
                .err()
                .unwrap()
        });
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("CONNECT 10.9.8.7:40717 ")
        );
        assert_eq!(e.kind(), ErrorKind::UpstreamProxyRefused);
        let m = e.message();
        assert!(!m.contains("10.9.8.7") && m.contains("403"), "{m}");
    }

    #[test]
    fn statuses_and_authorities() {
        assert_eq!(
            status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            status(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n"),
            Some(407)
        );
        assert_eq!(status(b"SSH-2.0\r\n\r\n"), None);
        assert_eq!(authority("::1", 443), "[::1]:443");
        assert_eq!(authority("a.example", 443), "a.example:443");
    }
}
