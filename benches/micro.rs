//! Micro benchmarks of the per-request hot pieces (criterion): head parse, matching over 1,000
//! services, building the upstream head with injection, scrubbing a 16 KiB response chunk of
//! a vault's 24 secrets, leaf minting, opening a credential, looking up a token, and judging a
//! request by 100 request rules. `cargo bench --bench micro`; CI runs it with `-- --test` (once each).

// A benchmark: setup failures should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use airlock::policy::Policy;
use airlock::proxy::upstream::Target;
use airlock::secret::Secret;
use airlock::spec::{AuthSpec, Scheme, ServiceSpec};
use airlock::vault::keys::KeySources;
use airlock::vault::setup;
use airlock::vault::tokens::TokenHash;
use airlock::vault::{Store, StoreOptions};
use criterion::{Criterion, criterion_group, criterion_main};

const HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nUser-Agent: OpenAI/Python 1.54.0\r\nAccept: application/json\r\nContent-Type: application/json\r\nAuthorization: Bearer placeholder\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.0\r\nContent-Length: 120\r\n\r\n";

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let actor = "bench";
    setup::init(
        dir.path(),
        &KeySources::default(),
        StoreOptions::default(),
        actor,
    )
    .unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store
        .set_credential(
            actor,
            "default",
            "OPENAI_KEY",
            &Secret::new(b"sk-bench-0123456789abcdef".to_vec()),
        )
        .unwrap();
    let mut specs: Vec<ServiceSpec> = (0..999)
        .map(|i| ServiceSpec {
            name: format!("svc-{i:04}"),
            host: format!("api{i}.vendor{}.com", i % 37),
            auth: AuthSpec::Bearer {
                token: "OPENAI_KEY".into(),
            },
            substitutions: vec![],
            enabled: true,
            rules: vec![],
            rules_default: None,
        })
        .collect();
    specs.push(ServiceSpec {
        name: "openai".into(),
        host: "api.openai.com".into(),
        auth: AuthSpec::Bearer {
            token: "OPENAI_KEY".into(),
        },
        substitutions: vec![],
        enabled: true,
        rules: vec![],
        rules_default: None,
    });
    store.set_services(actor, "default", specs, false).unwrap();
    let token = store
        .create_agent(actor, "bench", &["default".to_owned()])
        .unwrap();
    let unlocked = setup::unlock(&store, dir.path(), &KeySources::default()).unwrap();
    let policy = Policy::compile(&store, &unlocked.opener, &Policy::default()).unwrap();
    let vault = policy.vault("default").unwrap();
    store.create_vault(actor, "ruled").unwrap();
    store
        .set_credential(
            actor,
            "ruled",
            "OPENAI_KEY",
            &Secret::new(b"sk-bench-ruled".to_vec()),
        )
        .unwrap();
    let ruled_specs = airlock::spec::ServiceFile::from_yaml(&hundred_rules_yaml())
        .unwrap()
        .services;
    store
        .set_services(actor, "ruled", ruled_specs, false)
        .unwrap();
    let ruled_policy = Policy::compile(&store, &unlocked.opener, &Policy::default()).unwrap();
    let ruled_vault = ruled_policy.vault("ruled").unwrap();
    let target = Target {
        scheme: Scheme::Https,
        host: "api.openai.com".into(),
        port: 443,
    };

    c.bench_function("head_parse", |b| {
        b.iter(|| {
            airlock::http::head::parse_request(black_box(HEAD))
                .unwrap()
                .headers
                .len()
        })
    });
    c.bench_function("match_1000_services", |b| {
        b.iter(|| {
            vault
                .find(
                    Scheme::Https,
                    black_box("api.openai.com"),
                    443,
                    "/v1/chat/completions",
                )
                .is_some()
        })
    });
    c.bench_function("match_1000_services_miss", |b| {
        b.iter(|| {
            vault
                .find(
                    Scheme::Https,
                    black_box("api.unknown-vendor.com"),
                    443,
                    "/v1",
                )
                .is_none()
        })
    });
    c.bench_function("inject_and_rebuild_head", |b| {
        b.iter(|| airlock::proxy::inject::upstream_head(black_box(HEAD), &target, vault).unwrap())
    });
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let ca = certs_cache::Ca::load(
        &unlocked.ca_name,
        &ca_pem,
        unlocked.ca_key_pkcs8_der.expose(),
    )
    .unwrap();
    c.bench_function("leaf_mint", |b| {
        b.iter(|| {
            ca.mint_leaf(black_box("api.openai.com"))
                .unwrap()
                .cert_der
                .len()
        })
    });
    c.bench_function("credential_open", |b| {
        b.iter(|| {
            store
                .open_credential(&unlocked.opener, "default", black_box("OPENAI_KEY"))
                .unwrap()
                .value
                .len()
        })
    });
    let hash = TokenHash::of(token.token.expose());
    c.bench_function("token_lookup", |b| {
        b.iter(|| store.token_by_hash(black_box(hash)).unwrap().is_some())
    });
    // Scrubbing: one 16 KiB chunk of JSON-like text against 24 secrets (a vault with a dozen
    // credentials, each value and injected header value), the way every response is read.
    let masker = airlock::scrub::Masker::new(
        (0..24)
            .map(|i| Secret::new(format!("sk-live-{i:02}-0123456789abcdefghij").into_bytes()))
            .collect(),
    );
    let chunk: Vec<u8> =
        br#"{"id":"msg_01","type":"message","content":[{"type":"text","text":"Hello, world. "}]}"#
            .iter()
            .copied()
            .cycle()
            .take(16 * 1024)
            .collect();
    c.bench_function("scrub_16k_24_secrets", |b| {
        b.iter(|| {
            let mut s = airlock::scrub::Scrubber::new(&masker);
            black_box(s.push(black_box(&chunk)));
        })
    });
    // Request rules: 100 rules (path globs, methods, query and header conditions) that the
    // request meets none of, so every one is checked; then the same request against no rules.
    let rules = hundred_rules();
    let req = airlock::proxy::request::Request::parse(HEAD.to_vec()).unwrap();
    c.bench_function("rules_100_evaluate", |b| {
        b.iter(|| {
            rules
                .evaluate(Some("bench"), black_box(&req), "/v1/chat/completions", None)
                .unwrap()
                .action
        })
    });
    c.bench_function("inject_and_rebuild_head_100_rules", |b| {
        b.iter(|| {
            airlock::proxy::inject::upstream_head(black_box(HEAD), &target, ruled_vault).unwrap()
        })
    });
    c.bench_function("vault_generation_read", |b| {
        b.iter(|| store.generation().unwrap())
    });
}

/// 100 rules none of which [`HEAD`] meets: 25 each of method-and-path, inner globs, query and
/// header conditions, and rules for another agent.
fn hundred_rules_yaml() -> String {
    let mut y = String::from(
        "services:\n  - name: ruled\n    host: api.openai.com\n    auth: {type: bearer, token: OPENAI_KEY}\n    rules:\n",
    );
    for i in 0..25 {
        y.push_str(&format!(
            "      - {{name: deny-{i}, methods: [DELETE], path: \"/v1/things-{i}/*\", action: deny}}\n"
        ));
        y.push_str(&format!(
            "      - {{name: hold-{i}, methods: [POST], path: \"/v1/charges/*/refund-{i}\", action: hold}}\n"
        ));
        y.push_str(&format!(
            "      - {{name: query-{i}, query: [key-{i}], action: deny}}\n"
        ));
        y.push_str(&format!(
            "      - {{name: agent-{i}, agents: [other-{i}], headers: [x-h-{i}], action: limit, per_minute: 10}}\n"
        ));
    }
    y
}

fn hundred_rules() -> Box<airlock::rules::Rules> {
    let spec = airlock::spec::ServiceFile::from_yaml(&hundred_rules_yaml())
        .unwrap()
        .services
        .remove(0);
    airlock::rules::Rules::compile(&spec.rules, spec.rules_default(), None).unwrap()
}

criterion_group!(micro, benches);
criterion_main!(micro);
