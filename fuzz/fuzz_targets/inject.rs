//! Matching and injection: any request head, for one of three targets, against a vault with a
//! bearer service, a path-scoped service with substitutions and an `aws-sigv4` service. Building
//! the upstream head never panics; signing any head that ends as a built one does never panics
//! and keeps it ending in its empty line; substituting in the same bytes as a JSON or a form body
//! never panics, and leaves a body without the placeholder alone.
#![no_main]
use std::sync::OnceLock;

use airlock::credential::{Credential, SigV4Keys};
use airlock::policy::{Service, Substitution, VaultPolicy};
use airlock::proxy::body_substitution::Kind;
use airlock::proxy::upstream::Target;
use airlock::scrub::Masker;
use airlock::secret::Secret;
use airlock::spec::{HostPattern, Scheme, Surface};
use airlock::vault::UnmatchedPolicy;

fn service(name: &str, host: &str) -> Service {
    Service {
        name: name.into(),
        pattern: HostPattern::parse(host).unwrap(),
        enabled: true,
        credential: Credential::Headers {
            headers: vec![("authorization".into(), Secret::new(b"Bearer sk-fuzz".to_vec()))],
            oauth: None,
        },
        substitutions: vec![],
        error: None,
        rules: None,
    }
}

fn keys() -> SigV4Keys {
    SigV4Keys {
        access_key_id: Secret::new(b"AKIDFUZZ".to_vec()),
        secret_access_key: Secret::new(b"fuzz-secret".to_vec()),
        session_token: Some(Secret::new(b"fuzz-token".to_vec())),
        region: "us-east-1".into(),
        service: "s3".into(),
    }
}

/// A path-scoped service whose placeholder may go anywhere, the body included.
fn scoped() -> Service {
    let mut scoped = service("scoped", "http://sub.example.com:8080/v2/*");
    scoped.substitutions.push(Substitution {
        placeholder: "__acct__".into(),
        value: Secret::new(b"acct 1/2".to_vec()),
        encoded: Secret::new(b"acct%201%2F2".to_vec()),
        json: Secret::new(b"acct 1/2".to_vec()),
        surfaces: vec![Surface::Path, Surface::Query, Surface::Header, Surface::Body],
    });
    scoped
}

fn vault() -> &'static VaultPolicy {
    static VAULT: OnceLock<VaultPolicy> = OnceLock::new();
    VAULT.get_or_init(|| {
        let scoped = scoped();
        let mut aws = service("aws", "s3.us-east-1.amazonaws.com");
        aws.credential = Credential::SigV4(Box::new(keys()));
        let services = vec![service("api", "api.example.com"), scoped, aws];
        VaultPolicy::new(1, "default".into(), UnmatchedPolicy::Deny, services, Masker::new(vec![]))
    })
}

libfuzzer_sys::fuzz_target!(|data: (u8, &[u8])| {
    let (pick, raw) = data;
    let target = match pick % 3 {
        0 => Target { scheme: Scheme::Https, host: "api.example.com".into(), port: 443 },
        1 => Target { scheme: Scheme::Http, host: "sub.example.com".into(), port: 8080 },
        _ => Target { scheme: Scheme::Https, host: "s3.us-east-1.amazonaws.com".into(), port: 443 },
    };
    let _ = airlock::proxy::inject::upstream_head(raw, &target, vault());
    let mut head = [raw, b"\r\n\r\n"].concat();
    airlock::proxy::sigv4::sign(&keys(), &mut head, "UNSIGNED-PAYLOAD", 1_700_000_000);
    assert!(head.ends_with(b"\r\n\r\n"));
    static SCOPED: OnceLock<Service> = OnceLock::new();
    let scoped = SCOPED.get_or_init(scoped);
    for kind in [Kind::Json, Kind::Form] {
        let out = airlock::proxy::body_substitution::substitute(scoped, kind, raw);
        if !raw.windows(8).any(|w| w == b"__acct__") {
            assert!(out.is_none());
        }
    }
});
