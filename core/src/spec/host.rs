//! The host matcher grammar: `[http://]host[:port][/path[*]]`.
//!
//! [`HostPattern::parse`] turns a service's `host:` string into a canonical pattern or an error
//! that says what is wrong. Hosts are lowercase ASCII (IDNs must be given in punycode), a leading
//! `*.` matches exactly one label, and bare `*`, wildcard public suffixes and IP literals are
//! refused. This module parses and orders patterns; matching requests is the data plane's job.

use std::fmt;

/// Scheme a service is reached over. Plain HTTP only when the service says `http://` (R5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Https,
    Http,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Self::Https => 443,
            Self::Http => 80,
        }
    }
}

/// The host part: one exact name, or `*.suffix` matching exactly one extra label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostName {
    Exact(String),
    /// The suffix without the `*.`.
    Wildcard(String),
}

impl HostName {
    /// Whether this names `host` (lowercase, no trailing dot): itself, or for `*.x.com` one
    /// label under `x.com`.
    pub fn covers(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|l| l.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// The optional path part.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathPattern {
    Any,
    /// `/api/*`: paths starting with `/api/` (stored with the trailing slash).
    Prefix(String),
    /// A path without `*`: that path only.
    Exact(String),
}

/// A parsed, canonical host matcher.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPattern {
    pub scheme: Scheme,
    pub host: HostName,
    pub port: u16,
    pub path: PathPattern,
}

/// Why a host matcher was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("host {input:?}: {reason}")]
pub struct HostError {
    pub input: String,
    pub reason: String,
}

impl HostPattern {
    pub fn parse(input: &str) -> Result<Self, HostError> {
        let err = |reason: &str| HostError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let lower = input.to_ascii_lowercase();
        let (scheme, rest) = if let Some(r) = lower.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = lower.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if lower.contains("://") {
            return Err(err("only http:// and https:// schemes are allowed"));
        } else {
            (Scheme::Https, lower.as_str())
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&input[input.len() - rest.len() + i..])),
            None => (rest, None),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                parse_port(p).ok_or_else(|| err("port must be 1-65535, digits only"))?,
            ),
            None => (authority, scheme.default_port()),
        };
        let host = parse_host(host).map_err(|r| err(&r))?;
        let path = match path {
            None => PathPattern::Any,
            Some(p) => parse_path(p).map_err(|r| err(&r))?,
        };
        Ok(Self {
            scheme,
            host,
            port,
            path,
        })
    }

    /// Ordering key for "more specific first": exact host before wildcard, then the longer
    /// literal path prefix. Greater is more specific.
    pub fn specificity(&self) -> (bool, usize, bool) {
        let exact_host = matches!(self.host, HostName::Exact(_));
        match &self.path {
            PathPattern::Any => (exact_host, 0, false),
            PathPattern::Prefix(p) => (exact_host, p.len(), false),
            PathPattern::Exact(p) => (exact_host, p.len(), true),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scheme == Scheme::Http {
            f.write_str("http://")?;
        }
        match &self.host {
            HostName::Exact(h) => f.write_str(h)?,
            HostName::Wildcard(s) => write!(f, "*.{s}")?,
        }
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        match &self.path {
            PathPattern::Any => Ok(()),
            PathPattern::Prefix(p) => write!(f, "{p}*"),
            PathPattern::Exact(p) => f.write_str(p),
        }
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

fn parse_host(host: &str) -> Result<HostName, String> {
    if host == "*" {
        return Err("a bare * would match every host".into());
    }
    if !host.is_ascii() {
        return Err("non-ASCII host: give the punycode form (xn--...)".into());
    }
    if host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("IP literals are not allowed; name the host".into());
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    check_dns_name(name)?;
    if wildcard {
        if !name.contains('.') || psl::suffix_str(name) == Some(name) {
            return Err(format!("*.{name} would match a whole public suffix"));
        }
        Ok(HostName::Wildcard(name.to_owned()))
    } else {
        Ok(HostName::Exact(name.to_owned()))
    }
}

/// Names under which agents may not propose a service (row 68): internal names, names only
/// a local resolver answers, and public DNS services that resolve a name to any address it
/// spells (`10-0-0-1.nip.io`). Operators can still configure such a host themselves.
const INTERNAL_SUFFIXES: &[&str] = &[
    "localhost",
    "localdomain",
    "local",
    "internal",
    "intranet",
    "corp",
    "home",
    "lan",
    "home.arpa",
    "in-addr.arpa",
    "ip6.arpa",
    "svc",
    "cluster.local",
    "nip.io",
    "sslip.io",
    "xip.io",
    "traefik.me",
    "localtest.me",
    "lvh.me",
    "vcap.me",
    "lacolhost.com",
];

/// Hosting where anyone can get a subdomain, missing from the Public Suffix List (row 120):
/// an agent's wildcard over one (`*.run.app`) would match hosts anyone can create. Operators can
/// still configure such a wildcard themselves; an exact name under one is fine.
const SHARED_HOSTING: &[&str] = &[
    "amazonaws.com",
    "appspot.com",
    "azurewebsites.net",
    "cloudfront.net",
    "fly.dev",
    "glitch.me",
    "ngrok.io",
    "ngrok-free.app",
    "onrender.com",
    "pages.dev",
    "repl.co",
    "run.app",
    "trycloudflare.com",
    "vercel.app",
    "web.app",
    "workers.dev",
];

/// Why an agent may not propose `host`, if it may not: a single-label name, a name under an
/// internal suffix, a wildcard-DNS service, or a wildcard over shared hosting.
pub fn internal(host: &HostName) -> Option<&'static str> {
    let name = match host {
        HostName::Exact(h) | HostName::Wildcard(h) => h.as_str(),
    };
    if !name.contains('.') && !matches!(host, HostName::Wildcard(_)) {
        return Some("single-label names resolve inside the local network");
    }
    if matches!(host, HostName::Wildcard(_))
        && SHARED_HOSTING
            .iter()
            .any(|s| name == *s || name.strip_suffix(s).is_some_and(|p| p.ends_with('.')))
    {
        return Some(
            "a wildcard over shared hosting (*.run.app, *.amazonaws.com, ...) would match names anyone can create; propose the exact host",
        );
    }
    INTERNAL_SUFFIXES
        .iter()
        .any(|s| name == *s || name.strip_suffix(s).is_some_and(|p| p.ends_with('.')))
        .then_some("internal, local or resolve-anything names (localhost, *.internal, *.svc, *.nip.io, ...) are refused")
}

/// A lowercase LDH DNS name: labels of 1-63 `[a-z0-9-]` not starting or ending with `-`,
/// at most 253 bytes, and a last label that is not a number (all digits, or `0x` and hex digits:
/// resolvers read such names as IP addresses, `0x7f000001` being 127.0.0.1).
pub fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("host name must be 1-253 characters".into());
    }
    if name.contains('*') {
        return Err("* is only allowed as the whole first label (*.example.com)".into());
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "invalid label {label:?} (letters, digits and inner hyphens only)"
            ));
        }
    }
    let numeric = |l: &str| {
        l.bytes().all(|b| b.is_ascii_digit())
            || l.strip_prefix("0x")
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if name.rsplit('.').next().is_some_and(numeric) {
        return Err("IP literals are not allowed; name the host".into());
    }
    Ok(())
}

fn parse_path(path: &str) -> Result<PathPattern, String> {
    let (literal, prefix) = match path.strip_suffix('*') {
        Some(p) if p.ends_with('/') => (p, true),
        Some(_) => return Err("* is only allowed as a whole last path segment (/api/*)".into()),
        None => (path, false),
    };
    if literal.contains('*') {
        return Err("* is only allowed once, at the end of the path".into());
    }
    if literal.contains("//") {
        return Err("empty path segments (//) are not allowed".into());
    }
    for seg in literal.split('/') {
        if seg == "." || seg == ".." {
            return Err("dot segments (. and ..) are not allowed".into());
        }
    }
    let bytes = literal.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            if hex.is_none() {
                return Err("% must start a two-digit escape".into());
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-._~!$&'()+,;=:@/".contains(&b)) {
            return Err(format!(
                "character {:?} is not allowed in a path",
                b as char
            ));
        }
        i += 1;
    }
    Ok(match (prefix, literal) {
        (true, "/") => PathPattern::Any,
        (true, p) => PathPattern::Prefix(p.to_owned()),
        (false, p) => PathPattern::Exact(p.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn accepted_forms_and_canonical_display() {
        let cases = [
            ("api.stripe.com", "api.stripe.com", Scheme::Https, 443),
            ("API.Stripe.com", "api.stripe.com", Scheme::Https, 443),
            (
                "api.stripe.com:8443",
                "api.stripe.com:8443",
                Scheme::Https,
                8443,
            ),
            (
                "http://metrics.example.internal:8080",
                "http://metrics.example.internal:8080",
                Scheme::Http,
                8080,
            ),
            (
                "http://host.example",
                "http://host.example",
                Scheme::Http,
                80,
            ),
            ("https://api.x.com:443", "api.x.com", Scheme::Https, 443),
            ("*.atlassian.net", "*.atlassian.net", Scheme::Https, 443),
            (
                "api.acme.internal:8443/v2/*",
                "api.acme.internal:8443/v2/*",
                Scheme::Https,
                8443,
            ),
            ("slack.com/api/*", "slack.com/api/*", Scheme::Https, 443),
            (
                "x.example.com/exact/path",
                "x.example.com/exact/path",
                Scheme::Https,
                443,
            ),
        ];
        for (input, canon, scheme, port) in cases {
            let pat = p(input);
            assert_eq!(pat.to_string(), canon, "{input}");
            assert_eq!((pat.scheme, pat.port), (scheme, port), "{input}");
        }
        assert_eq!(p("a.example.com/*").path, PathPattern::Any);
        assert_eq!(
            p("a.example.com/v2/*").path,
            PathPattern::Prefix("/v2/".into())
        );
    }

    #[test]
    fn row68_internal_and_resolve_anything_hosts() {
        let refused = |h: &str| internal(&HostPattern::parse(h).unwrap().host);
        for bad in [
            "localhost",
            "intranet",
            "a.localhost",
            "metadata.google.internal",
            "kubernetes.default.svc",
            "db.cluster.local",
            "printer.local",
            "*.nip.io",
            "1-2-3-4.nip.io",
            "*.sslip.io",
            "app.localtest.me",
            "*.run.app",
            "*.glitch.me",
            "*.amazonaws.com",
        ] {
            assert!(refused(bad).is_some(), "{bad} was allowed");
        }
        for good in [
            "api.openai.com",
            "*.atlassian.net",
            "my-api.run.app",
            "bedrock-runtime.us-east-1.amazonaws.com",
            "nip.io.example.com",
            "svc.example.com",
        ] {
            assert_eq!(refused(good), None, "{good}");
        }
    }

    #[test]
    fn refused_forms() {
        for bad in [
            "*",
            "*.com",
            "*.co.uk",
            "*.github.io",
            "a.*.com",
            "**.x.com",
            "127.0.0.1",
            "[::1]",
            "127.1",
            "2130706433",
            "0x7f000001",
            "10.0.0.0x1",
            "api.x.com:0",
            "api.x.com:65536",
            "api.x.com:+443",
            "api.x.com:",
            "ftp://x.com",
            "-a.x.com",
            "a_b.x.com",
            "bücher.de",
            "x.com/a/../b",
            "x.com/a//b",
            "x.com/a*",
            "x.com/*/b",
            "x.com/a b",
            "x.com/%zz",
            "",
            "a..b.com",
            "x.com/a?b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let e = HostPattern::parse("*.com").unwrap_err();
        assert_eq!(
            e.to_string(),
            "host \"*.com\": *.com would match a whole public suffix"
        );
    }

    #[test]
    fn specificity_orders_exact_then_longer_prefix() {
        let exact = p("api.github.com").specificity();
        let wild = p("*.github.com").specificity();
        assert!(exact > wild);
        assert!(p("x.com/api/v2/*").specificity() > p("x.com/api/*").specificity());
    }
}
