//! The compiled policy: every vault's services, sorted by priority, with their credentials opened
//! and their injected headers prepared. Built once per vault generation ([`Policy::compile`]),
//! shared read-only by all workers behind an `Arc`; never decoded per request.
//!
//! Matching follows product.md's "Host matchers": scheme and port must agree (a portless service
//! is TLS on 443 only, R5), exact host beats wildcard, then the longer literal path. A service
//! whose credentials are missing or fail to open is kept with an error code, so its requests get
//! 502 while other services keep working (row 57). This module does no I/O besides the store read
//! at compile time, and never logs a value.

use std::collections::HashMap;

use crate::rules::Rules;
use crate::scrub::Masker;
use crate::secret::Secret;
use crate::spec::{AuthSpec, HostName, HostPattern, PathPattern, Scheme, Surface, template_keys};
use crate::vault::seal::Opener;
use crate::vault::{Store, UnmatchedPolicy, VaultError};

/// All vaults' compiled services at one generation.
#[derive(Debug, Default)]
pub struct Policy {
    pub generation: u64,
    vaults: HashMap<String, VaultPolicy>,
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
    /// 25; review B7: a value stored through one service and read back through another): each
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
    /// Headers to set, lowercase names; replace any the client sent.
    pub inject: Vec<(String, Secret)>,
    /// Whether the client's own `Authorization` is dropped (every credentialed service).
    pub drop_authorization: bool,
    pub substitutions: Vec<Substitution>,
    /// Set when the service cannot be served.
    pub error: Option<ServiceFault>,
    /// The OAuth credential it injects, if any (the first, when it uses several).
    pub oauth: Option<OAuthUse>,
    /// An `aws-sigv4` service's keys: each request is signed as it leaves (`proxy::sigv4`).
    pub sigv4: Option<Box<SigV4Keys>>,
    /// Its request rules; `None` when every request is allowed.
    pub rules: Option<Box<Rules>>,
}

impl Service {
    /// Whether requests to it carry a credential (the request log must be writable).
    pub fn injects(&self) -> bool {
        !self.inject.is_empty() || self.sigv4.is_some()
    }
}

/// A compiled `aws-sigv4` service's keys and scope.
#[derive(Debug)]
pub struct SigV4Keys {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub region: String,
    pub service: String,
}

/// A token younger than this many seconds is not renewed because an upstream answered 401 (the
/// 401 goes to the agent): an API that refuses for another reason (a missing scope) must not
/// make every request renew the token.
pub const MIN_AGE_TO_RENEW_ON_401: u64 = 5;

/// Which version of an OAuth credential a compiled service holds: a 401 from upstream asks the
/// refresher for a newer one (`crate::oauth`).
#[derive(Clone, Debug)]
pub struct OAuthUse {
    pub key: String,
    pub version: u64,
    /// Unix seconds; 0 when unknown (1 when only a refresh token was imported).
    pub expires_at: u64,
    /// When the token was obtained or imported (Unix seconds).
    pub obtained_at: u64,
}

impl OAuthUse {
    /// Whether a request must wait for a refresh before it can be sent.
    pub fn stale(&self, now: u64) -> bool {
        self.expires_at != 0 && now >= self.expires_at
    }

    /// Whether an upstream 401 may renew this token ([`MIN_AGE_TO_RENEW_ON_401`]).
    pub fn renewable_on_401(&self, now: u64) -> bool {
        now >= self.obtained_at + MIN_AGE_TO_RENEW_ON_401
    }
}

#[derive(Debug)]
pub struct Substitution {
    pub placeholder: String,
    /// What replaces the placeholder in a header.
    pub value: Secret,
    /// What replaces it in the path or query, and in a form body: percent-encoded (review B8),
    /// so the request and any reflection of it are predictable.
    pub encoded: Secret,
    /// What replaces it in a JSON body: the inside of a JSON string.
    pub json: Secret,
    pub surfaces: Vec<Surface>,
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
        for v in store.vaults()? {
            let mut services = Vec::new();
            let mut scrub = Vec::new();
            for record in store.services(&v.name)? {
                let spec = record.spec;
                let Ok(pattern) = HostPattern::parse(&spec.host) else {
                    continue;
                };
                let mut error = None;
                let mut oauth = None;
                let mut open = |key: &str| match store.open_credential(opener, &v.name, key) {
                    Ok(opened) => {
                        scrub.push(opened.value.clone());
                        scrub.extend(opened.others);
                        if let Some(meta) = opened.oauth {
                            if meta.retry_at().is_none() && meta.expired(crate::vault::now()) {
                                error = Some(ServiceFault::OAuthRefreshFailed);
                            }
                            oauth.get_or_insert(OAuthUse {
                                key: key.to_owned(),
                                version: meta.version,
                                expires_at: meta.expires_at,
                                obtained_at: meta.obtained_at,
                            });
                        }
                        opened.value
                    }
                    Err(e) => {
                        error = Some(if matches!(e, VaultError::Integrity(_)) {
                            ServiceFault::CredentialIntegrity
                        } else {
                            ServiceFault::CredentialMissing
                        });
                        Secret::default()
                    }
                };
                let inject = injected_headers(&spec.auth, &mut open);
                let sigv4 = sigv4_keys(&spec, &mut open);
                let substitutions: Vec<Substitution> = spec
                    .substitutions
                    .iter()
                    .map(|s| {
                        let value = open(&s.key);
                        Substitution {
                            placeholder: s.placeholder.clone(),
                            encoded: Secret::new(percent_encode(value.expose())),
                            json: Secret::new(json_escape(value.expose())),
                            value,
                            surfaces: s.surfaces.clone(),
                        }
                    })
                    .collect();
                if sigv4.is_none() && matches!(spec.auth, AuthSpec::AwsSigv4 { .. }) {
                    error = Some(ServiceFault::CredentialMissing); // no region or service
                }
                for (_, value) in &inject {
                    scrub.push(value.clone());
                    if let Some(at) = memchr::memchr(b' ', value.expose()) {
                        scrub.push(Secret::new(value.expose()[at + 1..].to_vec()));
                    }
                }
                scrub.extend(
                    substitutions
                        .iter()
                        .flat_map(|s| [s.encoded.clone(), s.json.clone()]),
                );
                let before = previous
                    .vault(&v.name)
                    .and_then(|p| p.services.iter().find(|s| s.name == spec.name))
                    .and_then(|s| s.rules.as_deref());
                let rules = Rules::compile(&spec.rules, spec.rules_default(), before);
                services.push(Service {
                    name: spec.name.clone(),
                    pattern,
                    enabled: spec.enabled,
                    drop_authorization: !matches!(spec.auth, AuthSpec::Passthrough),
                    inject,
                    substitutions,
                    error,
                    oauth,
                    sigv4,
                    rules,
                });
            }
            vaults.insert(
                v.name.clone(),
                VaultPolicy::new(v.id, v.name, v.policy, services, Masker::new(scrub))
                    .allowing(&v.allow),
            );
        }
        Ok(Self { generation, vaults })
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

fn injected_headers(
    auth: &AuthSpec,
    open: &mut impl FnMut(&str) -> Secret,
) -> Vec<(String, Secret)> {
    let join = |parts: &[&[u8]]| Secret::new(parts.concat());
    match auth {
        AuthSpec::Bearer { token } => vec![(
            "authorization".into(),
            join(&[b"Bearer ", open(token).expose()]),
        )],
        AuthSpec::Basic { username, password } => {
            let user = open(username);
            let pass = open(password);
            let pair = join(&[user.expose(), b":", pass.expose()]);
            let encoded = data_encoding::BASE64.encode(pair.expose());
            vec![(
                "authorization".into(),
                Secret::new(format!("Basic {encoded}").into_bytes()),
            )]
        }
        AuthSpec::ApiKey {
            key,
            header,
            prefix,
        } => {
            vec![(
                header.to_ascii_lowercase(),
                join(&[prefix.as_bytes(), open(key).expose()]),
            )]
        }
        AuthSpec::Custom { headers } => headers
            .iter()
            .map(|(name, template)| (name.to_ascii_lowercase(), expand(template, open)))
            .collect(),
        AuthSpec::AwsSigv4 { .. } | AuthSpec::Passthrough => Vec::new(),
    }
}

/// An `aws-sigv4` service's opened keys and its scope.
fn sigv4_keys(
    spec: &crate::spec::ServiceSpec,
    open: &mut impl FnMut(&str) -> Secret,
) -> Option<Box<SigV4Keys>> {
    let AuthSpec::AwsSigv4 {
        access_key_id,
        secret_access_key,
        session_token,
        ..
    } = &spec.auth
    else {
        return None;
    };
    let (region, service) = spec.aws_scope()?;
    Some(Box::new(SigV4Keys {
        access_key_id: open(access_key_id),
        secret_access_key: open(secret_access_key),
        session_token: session_token.as_deref().map(&mut *open),
        region,
        service,
    }))
}

/// Replaces each `{{ KEY }}` in a validated template with the opened credential.
fn expand(template: &str, open: &mut impl FnMut(&str) -> Secret) -> Secret {
    let keys = template_keys(template).unwrap_or_default();
    let mut out = Vec::with_capacity(template.len() + 64);
    let mut rest = template;
    for key in keys {
        let (Some(start), Some(end)) = (rest.find("{{"), rest.find("}}")) else {
            break;
        };
        out.extend_from_slice(&rest.as_bytes()[..start]);
        out.extend_from_slice(open(key).expose());
        rest = &rest[end + 2..];
    }
    out.extend_from_slice(rest.as_bytes());
    Secret::new(out)
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
        self.allow.iter().any(|p| {
            p.port == port
                && match &p.host {
                    HostName::Exact(h) => h == host,
                    HostName::Wildcard(suffix) => host
                        .strip_suffix(suffix.as_str())
                        .and_then(|l| l.strip_suffix('.'))
                        .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                }
        })
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
            inject: vec![],
            drop_authorization: true,
            substitutions: vec![],
            error: None,
            oauth: None,
            sigv4: None,
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

    /// security.md row 7.
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

    #[test]
    fn expand_templates() {
        let mut open = |k: &str| Secret::new(format!("<{k}>").into_bytes());
        assert_eq!(
            expand("Token {{ A }}-{{B}}!", &mut open).expose(),
            b"Token <A>-<B>!"
        );
    }
}
