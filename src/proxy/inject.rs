//! Matching and injection (pingora's `upstream_request_filter`): the request is checked against
//! the one authority it may reach (Host and absolute-form, R1, rows 1, 2, 4), its path normalised
//! (row 7) and framed (R2), matched to a service of the vault, and re-serialised for the
//! upstream: hop-by-hop, proxy and `Connection`-named headers dropped, the agent's
//! `Authorization` and the injected header names dropped on credentialed services, placeholders
//! substituted only on the surfaces declared for them (row 26), injected values added last; an
//! `aws-sigv4` service's request loses the agent's signature here and is signed in
//! [`super::pipeline`] once its payload is known. The head it builds holds secrets: it is
//! [`Zeroizing`] and zeroized once written.

use std::borrow::Cow;

use zeroize::Zeroizing;

use super::error::{ErrorKind, ProxyError, no_service};
use super::request::Request;
use super::sigv4;
use super::upstream::Target;
use crate::http::head::{self, Framing};
use crate::policy::{Service, ServiceFault, VaultPolicy, check_path};
use crate::rules::{AmbiguousPath, Verdict};
use crate::scrub::Masker;
use crate::spec::Surface;

/// What the request line and headers decided, detached from the client's buffer.
#[derive(Debug)]
pub(super) struct Prepared<'v> {
    pub(super) service: &'v Service,
    /// What responses are scrubbed of: every secret of the vault.
    pub(super) scrub: &'v Masker,
    pub(super) method: String,
    pub(super) head: Zeroizing<Vec<u8>>,
    pub(super) framing: Framing,
    pub(super) client_close: bool,
    pub(super) expect_continue: bool,
    /// A WebSocket handshake: `Upgrade: websocket` is forwarded (other upgrades are dropped).
    pub(super) websocket: bool,
    /// What the service's rules decided (carried out by the exchange).
    pub(super) verdict: Verdict<'v>,
}

/// The `Host` value for an authority: the port only when it is not the scheme's default.
pub fn host_header(t: &Target) -> String {
    if t.port == t.scheme.default_port() {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    }
}

/// Checks `req` against `target`, matches its service in `vault`, judges it by the service's
/// rules for `agent` and builds the upstream head. `absolute_ok` is set for plain-HTTP proxying,
/// where the target is absolute-form; `api_base` goes into the `no_service` hint.
pub(super) fn prepare<'v>(
    req: &Request,
    target: &Target,
    vault: &'v VaultPolicy,
    agent: Option<&str>,
    absolute_ok: bool,
    api_base: &str,
) -> Result<Prepared<'v>, ProxyError> {
    check_host(req, target)?;
    let (path, query) = path_and_query(req, target, absolute_ok)?;
    check_path(path).map_err(|m| ProxyError::new(ErrorKind::BadPath, m))?;
    let framing = req.framing()?;
    let service = service_for(vault, target, path, api_base)?;
    let verdict = match service.rules.as_deref() {
        None => Verdict::ALLOW,
        Some(rules) => rules.evaluate(agent, req, path, query)?,
    };
    let connection = req.connection();
    let websocket = is_websocket(req, &connection);
    let mut head = request_line(service, req.method(), path, query, target)?;
    let expect_continue = headers(&mut head, req, &connection, service, websocket)?;
    match framing {
        Framing::Length(n) => head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    head.extend_from_slice(b"\r\n");
    Ok(Prepared {
        service,
        scrub: &vault.scrub,
        method: req.method().to_owned(),
        head,
        framing,
        client_close: req.wants_close(),
        expect_continue,
        websocket,
        verdict,
    })
}

impl From<AmbiguousPath> for ProxyError {
    fn from(_: AmbiguousPath) -> Self {
        let m = "the path cannot be matched against the service's rules unambiguously \
                 (an encoded / or \\, an empty segment, or ..;)";
        ProxyError::new(ErrorKind::RulePathAmbiguous, m)
            .hint("send the path as the API documents it")
    }
}

/// R1: Host is present once and names the authority (rows 1, 4).
fn check_host(req: &Request, target: &Target) -> Result<(), ProxyError> {
    let bad = |m: &str| ProxyError::new(ErrorKind::BadHost, m.to_owned());
    let host = req.one("host").map_err(|_| bad("duplicate Host header"))?;
    let host = host.ok_or_else(|| bad("missing Host header"))?;
    let host = std::str::from_utf8(host).map_err(|_| bad("Host is not ASCII"))?;
    if !names_target(&host.trim_end_matches('.').to_ascii_lowercase(), target) {
        return Err(ProxyError::new(
            ErrorKind::HostMismatch,
            "the Host header does not match the CONNECT authority",
        ));
    }
    Ok(())
}

/// Whether a lowercase authority names `target` (with its port, or without a default one).
fn names_target(authority: &str, target: &Target) -> bool {
    match authority.strip_prefix(target.host.as_str()) {
        Some("") => target.port == target.scheme.default_port(),
        Some(rest) => rest.strip_prefix(':').is_some_and(|p| {
            !p.starts_with('0')
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse() == Ok(target.port)
        }),
        None => false,
    }
}

/// The path and query of the target; row 2: an absolute-form target names the same authority.
pub(super) fn path_and_query<'r>(
    req: &'r Request,
    target: &Target,
    absolute_ok: bool,
) -> Result<(&'r str, Option<&'r str>), ProxyError> {
    let both = origin_form(req, target, absolute_ok)?;
    Ok(both
        .split_once('?')
        .map_or((both, None), |(p, q)| (p, Some(q))))
}

fn origin_form<'r>(
    req: &'r Request,
    target: &Target,
    absolute_ok: bool,
) -> Result<&'r str, ProxyError> {
    let t = req.target();
    if t.starts_with('/') {
        return Ok(t);
    }
    let Some(rest) = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
    else {
        let m = "unsupported request target";
        return Err(ProxyError::new(ErrorKind::BadRequest, m));
    };
    let (authority, path) = rest
        .find('/')
        .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    if !absolute_ok && !names_target(&authority.to_ascii_lowercase(), target) {
        let m = "the request target names another host";
        return Err(ProxyError::new(ErrorKind::HostMismatch, m));
    }
    Ok(path)
}

/// The service `path` on `target` goes to, if it may be served.
fn service_for<'v>(
    vault: &'v VaultPolicy,
    target: &Target,
    path: &str,
    api_base: &str,
) -> Result<&'v Service, ProxyError> {
    let service = vault
        .find(target.scheme, &target.host, target.port, path)
        .ok_or_else(|| no_service(&target.host, target.port, api_base))?;
    if !service.enabled {
        let m = format!("service {} is disabled", service.name);
        return Err(ProxyError::new(ErrorKind::ServiceDisabled, m));
    }
    if let Some(fault) = service.error {
        let kind = match fault {
            ServiceFault::CredentialMissing => ErrorKind::CredentialMissing,
            ServiceFault::CredentialIntegrity => ErrorKind::CredentialIntegrity,
            ServiceFault::OAuthRefreshFailed => ErrorKind::OAuthRefreshFailed,
        };
        let m = format!("service {} cannot open its credential", service.name);
        return Err(ProxyError::new(kind, m));
    }
    Ok(service)
}

/// A WebSocket handshake: `GET` with `Connection: upgrade` and `Upgrade: websocket`.
fn is_websocket(req: &Request, connection: &[&[u8]]) -> bool {
    req.method() == "GET"
        && connection.iter().any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
        && req.headers().any(|h| {
            h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"websocket")
        })
}

/// The request line and `Host`, placeholders substituted in the path and query.
fn request_line(
    service: &Service,
    method: &str,
    path: &str,
    query: Option<&str>,
    target: &Target,
) -> Result<Zeroizing<Vec<u8>>, ProxyError> {
    let mut out = Zeroizing::new(Vec::with_capacity(512));
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&substitute(service, Surface::Path, path.as_bytes())?);
    // A presigned URL's signature is the agent's: airlock signs in headers instead.
    let query = match query {
        Some(q) if service.credential.sigv4().is_some() => {
            Some(Cow::Owned(sigv4::strip_presign(q)))
        }
        q => q.map(Cow::Borrowed),
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push(b'?');
        out.extend_from_slice(&substitute(service, Surface::Query, q.as_bytes())?);
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host_header(target).as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// Appends the headers the upstream gets, injected values last; returns whether the client
/// sent `Expect: 100-continue` (answered by the proxy, never forwarded).
fn headers(
    out: &mut Vec<u8>,
    req: &Request,
    connection: &[&[u8]],
    service: &Service,
    websocket: bool,
) -> Result<bool, ProxyError> {
    let credentialed = service.credential.credentialed();
    if websocket {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    }
    if credentialed {
        // Review B8: an echo must come back in a form the scrubber can read.
        out.extend_from_slice(b"accept-encoding: identity\r\n");
    }
    let mut expect_continue = false;
    for h in req.headers() {
        let name = h.name;
        if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
            continue;
        }
        let dropped = name.eq_ignore_ascii_case("host")
            || head::is_hop_by_hop(name, connection)
            || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
            || name.contains('_')
            // compressed bodies and frames would hide an echo from the scrubber
            || (credentialed
                && (name.eq_ignore_ascii_case("accept-encoding")
                    || name.eq_ignore_ascii_case("sec-websocket-extensions")
                    || name.eq_ignore_ascii_case("authorization")))
            || service.credential.replaces(name);
        if dropped {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&substitute(service, Surface::Header, h.value)?);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in service.credential.headers() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.expose());
        out.extend_from_slice(b"\r\n");
    }
    Ok(expect_continue)
}

/// Parses a request head and builds the upstream head for it (what every exchange does before
/// dialing); returns the upstream head's length. Used by the micro benchmarks and the fuzzer.
pub fn upstream_head(
    raw: &[u8],
    target: &Target,
    vault: &VaultPolicy,
) -> Result<usize, ProxyError> {
    let req = Request::parse(raw.to_vec())?;
    Ok(prepare(&req, target, vault, None, false, "")?.head.len())
}

/// Replaces placeholders allowed on `surface`; a placeholder on a surface not declared for it is
/// refused (row 26). Values go into the path and query percent-encoded.
fn substitute<'a>(
    service: &Service,
    surface: Surface,
    input: &'a [u8],
) -> Result<Cow<'a, [u8]>, ProxyError> {
    let mut out = Cow::Borrowed(input);
    for sub in &service.substitutions {
        let needle = sub.placeholder.as_bytes();
        let Some(first) = memchr::memmem::find(&out, needle) else {
            continue;
        };
        if !sub.surfaces.contains(&surface) {
            let m = format!(
                "placeholder {} is not allowed in the {surface:?}",
                sub.placeholder
            )
            .to_lowercase();
            return Err(ProxyError::new(ErrorKind::SubstitutionFieldDenied, m));
        }
        let value = match surface {
            Surface::Header => &sub.value,
            // Bodies are substituted by `body_substitution`, never through here.
            Surface::Path | Surface::Query | Surface::Body => &sub.encoded,
        };
        let mut replaced = Vec::with_capacity(out.len() + value.len());
        let mut rest = &out[..];
        let mut at = Some(first);
        while let Some(k) = at {
            replaced.extend_from_slice(&rest[..k]);
            replaced.extend_from_slice(value.expose());
            rest = &rest[k + needle.len()..];
            at = memchr::memmem::find(rest, needle);
        }
        replaced.extend_from_slice(rest);
        out = Cow::Owned(replaced);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::credential::Credential;
    use crate::secret::Secret;
    use crate::spec::{HostPattern, Scheme};
    use crate::vault::UnmatchedPolicy;

    /// The injected value, which responses are scrubbed of.
    pub(crate) const KEY: &str = "Bearer sk-injected-0123";

    fn service(name: &str, host: &str, enabled: bool) -> Service {
        Service {
            name: name.into(),
            pattern: HostPattern::parse(host).unwrap(),
            enabled,
            credential: Credential::Headers {
                headers: vec![("authorization".into(), Secret::new(KEY.as_bytes().to_vec()))],
                oauth: None,
            },
            substitutions: vec![],
            error: None,
            rules: None,
        }
    }

    /// A vault with a bearer service, a disabled one, one whose credential cannot be opened and
    /// one that injects nothing (`open.example.com`): built in memory, no store.
    pub(crate) fn vault() -> VaultPolicy {
        let mut broken = service("broken", "broken.example.com", true);
        broken.error = Some(ServiceFault::CredentialIntegrity);
        let mut open = service("open", "open.example.com", true);
        open.credential = Credential::Passthrough;
        let services = vec![
            service("api", "api.example.com", true),
            service("off", "off.example.com", false),
            broken,
            open,
        ];
        let scrub = Masker::new(vec![Secret::new(KEY.as_bytes().to_vec())]);
        VaultPolicy::new(1, "default".into(), UnmatchedPolicy::Deny, services, scrub)
    }

    fn target(host: &str) -> Target {
        Target {
            scheme: Scheme::Https,
            host: host.into(),
            port: 443,
        }
    }

    /// `head` (its `{}` the host) prepared for `host` in `vault`, for the later steps' tests.
    pub(in crate::proxy) fn prepared_for<'v>(
        vault: &'v VaultPolicy,
        head: &str,
        host: &str,
    ) -> Prepared<'v> {
        let req = Request::parse(head.replace("{}", host).into_bytes()).unwrap();
        prepare(&req, &target(host), vault, None, false, "http://api").unwrap()
    }

    fn prepared(head: &str, host: &str) -> Result<String, &'static str> {
        let vault = vault();
        let req = Request::parse(head.as_bytes().to_vec()).map_err(|_| "unparsed")?;
        let p = prepare(&req, &target(host), &vault, None, false, "http://api")
            .map_err(|e| e.code())?;
        Ok(String::from_utf8(p.head.to_vec()).unwrap())
    }

    /// The upstream head: the agent's own `Authorization`, the proxy's credentials, hop-by-hop
    /// and `Connection`-named headers are gone; the service's value is added once.
    #[test]
    fn the_upstream_head_carries_the_credential_and_nothing_of_the_hop() {
        let head = prepared(
            "POST /v1/x?q=1 HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer agent-own\r\n\
             Proxy-Authorization: Basic c2VjcmV0\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\n",
            "api.example.com",
        )
        .unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("POST /v1/x?q=1 HTTP/1.1\r\n"), "{head}");
        assert_eq!(head.matches(KEY).count(), 1, "{head}");
        for gone in ["agent-own", "proxy-authorization", "x-hop", "keep-alive"] {
            assert!(!lower.contains(gone), "{gone} in {head}");
        }
        assert!(lower.contains("x-kept: yes") && lower.contains("content-length: 2"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    /// Rows 1, 2, 4 and 7 at this step: a Host or absolute-form target naming another authority,
    /// a missing or doubled Host, a path that climbs out; and a host with no usable service.
    #[test]
    fn requests_that_may_not_go_are_refused_with_their_codes() {
        let refused = |head: &str, host: &str| prepared(head, host).unwrap_err();
        let get = |host_lines: &str| format!("GET /v1 HTTP/1.1\r\n{host_lines}\r\n");
        let api = "api.example.com";
        assert_eq!(
            refused(&get("Host: evil.example\r\n"), api),
            "host_mismatch"
        );
        assert_eq!(refused(&get(""), api), "bad_host");
        let twice = get("Host: api.example.com\r\nHost: api.example.com\r\n");
        assert_eq!(refused(&twice, api), "bad_host");
        let absolute = "GET https://evil.example/v1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n";
        assert_eq!(refused(absolute, api), "host_mismatch");
        let climbs = "GET /v1/../../admin HTTP/1.1\r\nHost: api.example.com\r\n\r\n";
        assert_eq!(refused(climbs, api), "bad_path");
        let on = |host: &str| refused(&get(&format!("Host: {host}\r\n")), host);
        assert_eq!(on("unknown.example.com"), "no_service");
        assert_eq!(on("off.example.com"), "service_disabled");
        assert_eq!(on("broken.example.com"), "credential_integrity");
        let with_port = get("Host: api.example.com:443\r\n");
        assert!(
            prepared(&with_port, api).is_ok(),
            "the default port may be named"
        );
    }
}
