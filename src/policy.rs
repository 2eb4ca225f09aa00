//! The compiled policy: every vault's services, sorted by priority, with their credentials opened
//! and their injected headers prepared. Built once per vault generation ([`Policy::compile`]),
//! shared read-only by all workers behind an `Arc`; never decoded per request.
//!
//! Matching follows the host-matcher grammar (`spec::host`): scheme and port must agree (a
//! portless service is TLS on 443 only, R5), exact host beats wildcard, then the longer literal path. A service
//! whose credentials are missing or fail to open is kept with an error code, so its requests get
//! 502 while other services keep working (row 57). This module does no I/O besides the store read
//! at compile time, and never logs a value.

use std::collections::HashMap;

use crate::credential::{Credential, OAuthUse};
use crate::rules::Rules;
use crate::scrub::Masker;
use crate::secret::Secret;
use crate::spec::{HostName, HostPattern, PathPattern, Scheme, ServiceSpec, Surface};
use crate::vault::ops::OpenedCache;
use crate::vault::seal::Opener;
use crate::vault::{Store, UnmatchedPolicy, VaultError};

/// All vaults' compiled services at one generation.
#[derive(Debug, Default)]
pub struct Policy {
    pub generation: u64,
    vaults: HashMap<String, VaultPolicy>,
    /// The static credentials this compile opened, for the next compile to reuse.
    opened: OpenedCache,
}

#[derive(Debug)]
pub struct VaultPolicy {
    pub id: u64,
    pub name: String,
    pub unmatched: UnmatchedPolicy,
    /// Most specific first.
    services: Vec<Service>,
    /// Indices into `services` by host: exact names, and wildcard suffixes (`*.x.com` under
    /// `x.com`). Each list keeps the priority order, so lookups do not scan the whole vault.
    by_host: HashMap<String, Vec<usize>>,
    by_suffix: HashMap<String, Vec<usize>>,
    /// Values masked in every response of this vault, whichever service it came through (row
    /// 25; row 80: a value stored through one service and read back through another): each
    /// opened credential, each injected header value, and that value without its scheme word
    /// (the bare base64 of Basic auth), and the percent-encoded form of path and query
    /// substitutions.
    pub scrub: Masker,
    /// The egress allowlist: hosts tunnelled opaquely whatever `unmatched` says.
    allow: Vec<HostPattern>,
}

/// Why a service cannot be served (answered 502 with the matching code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceFault {
    /// A credential it injects is missing or cannot be opened.
    CredentialMissing,
    /// A credential's record failed its integrity check.
    CredentialIntegrity,
    /// Its OAuth access token expired and the token endpoint refused to renew it.
    OAuthRefreshFailed,
}

/// One compiled service.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub pattern: HostPattern,
    pub enabled: bool,
    /// How it authenticates upstream (headers, SigV4, OAuth renewal): one thing, asked by the
    /// request path at each step.
    pub credential: Credential,
    pub substitutions: Vec<Substitution>,
    /// Set when the service cannot be served.
    pub error: Option<ServiceFault>,
    /// Its request rules; `None` when every request is allowed.
    pub rules: Option<Box<Rules>>,
}

#[derive(Debug)]
pub struct Substitution {
    pub placeholder: String,
    /// What replaces the placeholder in a header.
    pub value: Secret,
    /// What replaces it in the path or query, and in a form body: percent-encoded (row 81),
    /// so the request and any reflection of it are predictable.
    pub encoded: Secret,
    /// What replaces it in a JSON body: the inside of a JSON string.
    pub json: Secret,
    pub surfaces: Vec<Surface>,
}

impl Substitution {
    /// `spec`'s placeholder with the credential's `value` in the form each surface takes.
    fn new(spec: &crate::spec::Substitution, value: Secret) -> Self {
        Self {
            placeholder: spec.placeholder.clone(),
            encoded: Secret::new(percent_encode(value.expose())),
            json: Secret::new(json_escape(value.expose())),
            value,
            surfaces: spec.surfaces.clone(),
        }
    }
}

/// `raw` as the inside of a JSON string (RFC 8259): `"`, `\` and control characters escaped,
/// every other byte as it is.
pub fn json_escape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for &b in raw {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
pub fn percent_encode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for &b in raw {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

impl Policy {
    /// Reads every vault and service and opens the credentials they use. `previous` is the
    /// policy being replaced: `limit` rules keep their buckets.
    pub fn compile(store: &Store, opener: &Opener, previous: &Policy) -> Result<Self, VaultError> {
        let generation = store.generation()?;
        let mut vaults = HashMap::new();
        let mut opening = Opening {
            store,
            opener,
            previous: &previous.opened,
            next: OpenedCache::default(),
        };
        for v in store.vaults()? {
            let mut services = Vec::new();
            let mut scrub = Vec::new();
            for record in store.services(&v.name)? {
                let before = previous
                    .vault(&v.name)
                    .and_then(|p| p.services.iter().find(|s| s.name == record.spec.name))
                    .and_then(|s| s.rules.as_deref());
                let compiled =
                    compile_service(&mut opening, &v.name, &record.spec, before, &mut scrub);
                services.extend(compiled);
            }
            vaults.insert(
                v.name.clone(),
                VaultPolicy::new(v.id, v.name, v.policy, services, Masker::new(scrub))
                    .allowing(&v.allow),
            );
        }
        Ok(Self {
            generation,
            vaults,
            opened: opening.next,
        })
    }

    pub fn vault(&self, name: &str) -> Option<&VaultPolicy> {
        self.vaults.get(name)
    }

    /// Every exact (non-wildcard) TLS host, for pre-warming leaves.
    pub fn tls_hosts(&self) -> impl Iterator<Item = &str> {
        self.vaults
            .values()
            .flat_map(|v| v.services.iter())
            .filter_map(|s| match (&s.pattern.host, s.pattern.scheme) {
                (HostName::Exact(h), Scheme::Https) => Some(h.as_str()),
                _ => None,
            })
    }
}

/// One service of `vault` compiled: its credentials opened (each value, and every form the
/// service sends it in, added to `scrub`), its rules compiled keeping `before`'s buckets. `None`
/// for a host that no longer parses.
fn compile_service(
    opening: &mut Opening<'_>,
    vault: &str,
    spec: &ServiceSpec,
    before: Option<&Rules>,
    scrub: &mut Vec<Secret>,
) -> Option<Service> {
    let pattern = HostPattern::parse(&spec.host).ok()?;
    let mut keys = Keys {
        opening,
        vault,
        scrub,
        error: None,
        oauth: None,
    };
    let mut open = |key: &str| keys.open(key);
    let credential = Credential::compile(&spec.auth, spec.aws_scope(), &mut open);
    let substitutions: Vec<Substitution> = spec
        .substitutions
        .iter()
        .map(|s| Substitution::new(s, open(&s.key)))
        .collect();
    // An aws-sigv4 service without a region or service: nothing to sign with, so its requests
    // are refused (502), still as a credentialed service.
    let credential = credential
        .unwrap_or_else(|| {
            keys.error = Some(ServiceFault::CredentialMissing);
            Credential::Headers {
                headers: Vec::new(),
                oauth: None,
            }
        })
        .with_oauth(keys.oauth);
    keys.scrub.extend(credential.scrub_values());
    keys.scrub.extend(
        substitutions
            .iter()
            .flat_map(|s| [s.encoded.clone(), s.json.clone()]),
    );
    Some(Service {
        name: spec.name.clone(),
        pattern,
        enabled: spec.enabled,
        credential,
        substitutions,
        error: keys.error,
        rules: Rules::compile(&spec.rules, spec.rules_default(), before),
    })
}

/// Opens a service's credentials, noting what responses are masked of, the OAuth credential
/// among them and why the service cannot be served.
/// What a compile opens credentials with: the store, the vault's opener, the previous compile's
/// opened values and this compile's.
struct Opening<'a> {
    store: &'a Store,
    opener: &'a Opener,
    previous: &'a OpenedCache,
    next: OpenedCache,
}

struct Keys<'a, 'o> {
    opening: &'a mut Opening<'o>,
    vault: &'a str,
    scrub: &'a mut Vec<Secret>,
    error: Option<ServiceFault>,
    oauth: Option<OAuthUse>,
}

impl Keys<'_, '_> {
    /// The credential `key`'s value; an empty one (and the fault noted) when it cannot be opened.
    fn open(&mut self, key: &str) -> Secret {
        let o = &mut *self.opening;
        let opened =
            o.store
                .open_credential_cached(o.opener, (self.vault, key), o.previous, &mut o.next);
        match opened {
            Ok(opened) => {
                self.scrub.push(opened.value.clone());
                self.scrub.extend(opened.others);
                if let Some(meta) = opened.oauth {
                    if meta.retry_at().is_none() && meta.expired(crate::vault::now()) {
                        self.error = Some(ServiceFault::OAuthRefreshFailed);
                    }
                    self.oauth.get_or_insert(OAuthUse {
                        key: key.to_owned(),
                        version: meta.version,
                        expires_at: meta.expires_at,
                        obtained_at: meta.obtained_at,
                    });
                }
                opened.value
            }
            Err(e) => {
                self.error = Some(if matches!(e, VaultError::Integrity(_)) {
                    ServiceFault::CredentialIntegrity
                } else {
                    ServiceFault::CredentialMissing
                });
                Secret::default()
            }
        }
    }
}

impl VaultPolicy {
    /// Orders `services` by priority and indexes them by host.
    pub fn new(
        id: u64,
        name: String,
        unmatched: UnmatchedPolicy,
        mut services: Vec<Service>,
        scrub: Masker,
    ) -> Self {
        services.sort_by_key(|s| std::cmp::Reverse(s.pattern.specificity()));
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_suffix: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            match &s.pattern.host {
                HostName::Exact(h) => by_host.entry(h.clone()).or_default().push(i),
                HostName::Wildcard(suffix) => by_suffix.entry(suffix.clone()).or_default().push(i),
            }
        }
        Self {
            id,
            name,
            unmatched,
            services,
            by_host,
            by_suffix,
            scrub,
            allow: Vec::new(),
        }
    }

    /// With the egress allowlist `entries` (entries that do not parse are skipped; the store
    /// checked them when they were written).
    #[must_use]
    pub fn allowing(mut self, entries: &[String]) -> Self {
        self.allow = entries
            .iter()
            .filter_map(|e| HostPattern::parse(e).ok())
            .collect();
        self
    }

    /// Whether the egress allowlist lets `host:port` through an opaque tunnel.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.allow
            .iter()
            .any(|p| p.port == port && p.host.covers(host))
    }

    /// Services that could match `host`, most specific first: exact-host services, then
    /// wildcard services for its parent domain (exact always beats wildcard).
    fn candidates<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a Service> + 'a {
        let exact = self.by_host.get(host);
        // `*.x.com` covers exactly one label more than `x.com`.
        let wild = host.split_once('.').and_then(|(label, parent)| {
            (!label.is_empty())
                .then(|| self.by_suffix.get(parent))
                .flatten()
        });
        exact
            .into_iter()
            .chain(wild)
            .flatten()
            .map(|&i| &self.services[i])
    }

    /// Whether any service (enabled or not) is for this scheme, host and port; decides
    /// intercept versus unmatched at CONNECT.
    pub fn has_host(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        self.candidates(host)
            .any(|s| s.pattern.scheme == scheme && s.pattern.port == port)
    }

    /// The most specific service for a request. `path` is the normalised path without query.
    pub fn find(&self, scheme: Scheme, host: &str, port: u16, path: &str) -> Option<&Service> {
        self.candidates(host).find(|s| {
            s.pattern.scheme == scheme
                && s.pattern.port == port
                && match &s.pattern.path {
                    PathPattern::Any => true,
                    PathPattern::Prefix(p) => path.starts_with(p.as_str()),
                    PathPattern::Exact(p) => path == p,
                }
        })
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }
}

/// Rejects paths whose meaning changes under normalisation: dot segments (also `%2e`-encoded)
/// and empty segments. What is matched is exactly what is forwarded (row 7).
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("the path must start with /");
    }
    for seg in path.split('/').skip(1) {
        let lower = seg.to_ascii_lowercase().replace("%2e", ".");
        if lower == "." || lower == ".." {
            return Err("dot segments are not allowed");
        }
    }
    if path.contains("//") {
        return Err("empty path segments are not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row 119: the egress allowlist matches its hosts and ports, a wildcard one label only.
    #[test]
    fn allowlist_matches_hosts_ports_and_one_label() {
        let v = VaultPolicy::new(
            1,
            "v".into(),
            UnmatchedPolicy::Deny,
            vec![],
            Masker::new(vec![]),
        )
        .allowing(&[
            "pypi.org".into(),
            "*.cdn-example.com".into(),
            "registry.example:8443".into(),
        ]);
        assert!(v.allows("pypi.org", 443));
        assert!(!v.allows("pypi.org", 80));
        assert!(!v.allows("evilpypi.org", 443));
        assert!(v.allows("raw.cdn-example.com", 443));
        assert!(!v.allows("a.b.cdn-example.com", 443));
        assert!(!v.allows("cdn-example.com", 443));
        assert!(v.allows("registry.example", 8443));
        assert!(!v.allows("registry.example", 443));
    }

    fn service(name: &str, host: &str) -> Service {
        Service {
            name: name.into(),
            pattern: HostPattern::parse(host).unwrap(),
            enabled: true,
            credential: Credential::Headers {
                headers: vec![],
                oauth: None,
            },
            substitutions: vec![],
            error: None,
            rules: None,
        }
    }

    fn vault() -> VaultPolicy {
        let services = vec![
            service("wild", "*.github.com"),
            service("api", "api.github.com"),
            service("v2", "api.github.com/v2/*"),
            service("plain", "http://api.github.com"),
        ];
        VaultPolicy::new(
            1,
            "v".into(),
            UnmatchedPolicy::Deny,
            services,
            Masker::default(),
        )
    }

    #[test]
    fn wildcard_matches_one_label() {
        let v = vault();
        let find = |host: &str| {
            v.find(Scheme::Https, host, 443, "/")
                .map(|s| s.name.as_str())
        };
        assert_eq!(find("uploads.github.com"), Some("wild"));
        assert_eq!(find("github.com"), None);
        assert_eq!(find("a.b.github.com"), None);
        assert_eq!(find("evilgithub.com"), None);
        assert_eq!(find(".github.com"), None);
    }

    #[test]
    fn priority_exact_then_longer_path_then_scheme_and_port() {
        let v = vault();
        assert_eq!(
            v.find(Scheme::Https, "api.github.com", 443, "/v2/repos")
                .unwrap()
                .name,
            "v2"
        );
        assert_eq!(
            v.find(Scheme::Https, "api.github.com", 443, "/v1/repos")
                .unwrap()
                .name,
            "api"
        );
        assert_eq!(
            v.find(Scheme::Http, "api.github.com", 80, "/x")
                .unwrap()
                .name,
            "plain"
        );
        assert!(v.find(Scheme::Https, "api.github.com", 8443, "/").is_none());
        assert!(v.has_host(Scheme::Https, "x.github.com", 443));
        assert!(!v.has_host(Scheme::Http, "x.github.com", 80));
    }

    /// SECURITY-TESTS.md row 7.
    #[test]
    fn row7_dot_segments_refused() {
        for bad in [
            "/v2/../admin",
            "/v2/%2e%2e/admin",
            "/v2/%2E./x",
            "/./x",
            "//x",
            "x",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        assert!(check_path("/v2/a%2Fb/c").is_ok());
        assert!(check_path("/").is_ok());
    }

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(percent_encode(b"sk-live_Qx7.~"), b"sk-live_Qx7.~");
        assert_eq!(percent_encode(b"a+b/c d%"), b"a%2Bb%2Fc%20d%25");
    }
}

#[cfg(test)]
mod compile_tests {
    use super::*;
    use crate::secret::Secret;
    use crate::vault::{Store, setup};

    fn header(p: &Policy, service: &str) -> Option<Vec<u8>> {
        let s = p
            .vault("default")
            .unwrap()
            .services
            .iter()
            .find(|s| s.name == service && s.error.is_none())?;
        match &s.credential {
            Credential::Headers { headers, .. } => Some(headers[0].1.expose().to_vec()),
            _ => None,
        }
    }

    /// A recompile reuses the values it opened before only for records that did not change: a
    /// replaced credential is served with its new value at once, and the cache keeps only what
    /// the policy uses (a deleted credential's value goes with it).
    #[test]
    fn recompiles_reuse_opened_credentials_only_while_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        setup::init(dir, &Default::default(), Default::default(), "test").unwrap();
        let store = Store::open(dir, Default::default()).unwrap();
        let opener = setup::unlock(&store, dir, &Default::default())
            .unwrap()
            .opener;
        let mut yaml = String::from("services:\n");
        for i in 0..3 {
            let v = Secret::new(format!("sk-value-{i}-0123456789").into_bytes());
            store
                .set_credential("t", "default", &format!("KEY_{i}"), &v)
                .unwrap();
            yaml.push_str(&format!(
                "  - {{name: svc{i}, host: svc{i}.example.com, auth: {{type: bearer, token: KEY_{i}}}}}\n"
            ));
        }
        let file = crate::spec::ServiceFile::from_yaml(&yaml).unwrap();
        store
            .set_services("t", "default", file.services, false)
            .unwrap();
        let first = Policy::compile(&store, &opener, &Policy::default()).unwrap();
        assert_eq!(
            header(&first, "svc1").unwrap(),
            b"Bearer sk-value-1-0123456789"
        );
        let new = Secret::new(b"sk-replaced-1-0123456789".to_vec());
        store.set_credential("t", "default", "KEY_1", &new).unwrap();
        store.remove_service("t", "default", "svc2").unwrap();
        store.delete_credential("t", "default", "KEY_2").unwrap();
        let second = Policy::compile(&store, &opener, &first).unwrap();
        assert_eq!(
            header(&second, "svc0").unwrap(),
            b"Bearer sk-value-0-0123456789"
        );
        assert_eq!(
            header(&second, "svc1").unwrap(),
            b"Bearer sk-replaced-1-0123456789"
        );
        assert_eq!(second.vault("default").unwrap().services.len(), 2);
        assert_eq!(second.opened.len(), 2, "only what the policy uses");
    }
}
