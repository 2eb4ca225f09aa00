//! Proposals end to end through the real proxy and CLI: an agent is refused, proposes, the
//! operator approves with the key on stdin, and the agent's retry succeeds with it injected.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::proxy::Setup;
use crate::support::{Curl, contains, files};

/// Calls the agent API on the proxy port as the holder of `token`: (status, JSON body or Null).
pub(crate) fn api(
    s: &Setup,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    crate::support::api::call(s.proxy.addr, method, path, Some(token), body)
}

fn other_service_proposal() -> Value {
    json!({
        "services": [{"action": "set", "name": "other", "host": "other.example.net",
                      "auth": {"type": "bearer", "token": "OTHER_KEY"}}],
        "credentials": [{"action": "set", "key": "OTHER_KEY", "description": "Other API key",
                         "obtain": "https://other.example.net/keys", "obtain_instructions": "Settings > Keys"}],
        "message": "needed to list widgets",
        "user_message": "May I use the Other API to list your widgets?"
    })
}

fn wait_applied(s: &Setup, id: u64) {
    let start = Instant::now();
    loop {
        let (code, v) = api(s, "GET", &format!("/v1/proposals/{id}"), &s.token, None);
        assert_eq!(code, 200);
        if v["status"] == "applied" {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not applied: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Flows 2 and 3: refused, proposed, approved on the CLI, then served with the key injected.
#[test]
fn proposal_flow_from_refusal_to_injected_request() {
    let s = Setup::new("auto");
    let refused = s.curl(&["https://other.example.net/widgets"]);
    assert_ne!(refused.code, 0);
    let (code, v) = api(
        &s,
        "POST",
        "/v1/proposals",
        &s.token,
        Some(&other_service_proposal()),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"], "pending");
    assert_eq!(v["vault"], "default");
    let id = v["id"].as_u64().unwrap();
    assert_eq!(v["approve_with"], format!("airlock proposal approve {id}"));
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    let (code, v) = api(&s, "GET", &format!("/v1/proposals/{id}"), &s.token, None);
    assert_eq!((code, v["status"].as_str()), (200, Some("pending")));
    let shown = s.env.run(&["proposal", "show", &id.to_string()]).ok();
    assert!(
        shown.stdout.contains("other.example.net")
            && shown.stdout.contains("--credential OTHER_KEY"),
        "{shown:?}"
    );
    assert!(shown.stdout.contains("May I use the Other API"));
    let listed = s
        .env
        .run(&["proposal", "list", "--status", "pending", "--json"])
        .ok();
    assert!(
        listed.stdout.contains(&format!("\"id\":{id}")),
        "{listed:?}"
    );
    let key = "sk-other-canary-value-1234";
    s.env
        .run_stdin(
            &[
                "proposal",
                "approve",
                &id.to_string(),
                "--credential",
                "OTHER_KEY",
            ],
            format!("{key}\n").as_bytes(),
        )
        .ok();
    wait_applied(&s, id);
    let r = s.curl(&["https://other.example.net/widgets"]).ok();
    assert!(r.stdout.contains("GET /widgets HTTP/1.1"), "{r:?}");
    assert!(!r.stdout.contains(key));
    assert_eq!(s.last().header("authorization"), [format!("Bearer {key}")]);
    // Row 49: an approval is one-time.
    let again = s.env.run_stdin(
        &[
            "proposal",
            "approve",
            &id.to_string(),
            "--credential",
            "OTHER_KEY",
        ],
        b"x\n",
    );
    assert!(again.fails().contains("already decided"), "{again:?}");
    let audit = s.env.run(&["audit", "list", "--json"]).ok();
    assert!(
        audit.stdout.contains("proposal.approve") && audit.stdout.contains("proposal.create"),
        "{audit:?}"
    );
    for (path, bytes) in files(&s.env.data_dir) {
        assert!(
            !contains(&bytes, key.as_bytes()),
            "key found in {}",
            path.display()
        );
    }
}

/// Discovery lists names and hosts, never values.
#[test]
fn discover_lists_services_and_credential_names_only() {
    let s = Setup::new("auto");
    let (code, v) = api(&s, "GET", "/v1/discover", &s.token, None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["vault"], "default");
    let hosts: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["host"].as_str().unwrap())
        .collect();
    assert!(hosts.contains(&"api.openai.com"), "{v}");
    assert!(
        v["credentials"]
            .as_array()
            .unwrap()
            .contains(&json!("OPENAI_KEY"))
    );
    s.assert_no_secret(&v.to_string());
    let (code, v) = api(&s, "GET", "/v1/discover", "alk_agt_bogus", None);
    assert_eq!(
        (code, v["error"].as_str()),
        (401, Some("invalid_token")),
        "{v}"
    );
    let guide = s
        .curl(&[
            "--noproxy",
            "*",
            &format!("http://{}/v1/guide", s.proxy.addr),
        ])
        .ok();
    assert!(guide.stdout.contains("/v1/proposals"));
}

/// Validation: caps, grammars, referenced keys, control characters, pending limit.
#[test]
fn invalid_proposals_refused_with_codes() {
    let s = Setup::new("auto");
    let many: Vec<Value> = (0..11).map(|i| json!({"action": "set", "name": format!("svc-{i}"), "host": format!("h{i}.example.com"), "auth": {"type": "passthrough"}})).collect();
    let cases = [
        (json!({"services": many}), 400, "bad_request"),
        (
            json!({"services": [], "credentials": []}),
            400,
            "bad_request",
        ),
        (
            json!({"services": [{"action": "set", "name": "x1x", "host": "*.com", "auth": {"type": "passthrough"}}]}),
            400,
            "bad_request",
        ),
        (
            json!({"services": [{"action": "set", "name": "x1x", "host": "a.example.com", "auth": {"type": "bearer", "token": "NOPE"}}]}),
            400,
            "credential_missing",
        ),
        (
            json!({"surprise": 1, "credentials": [{"key": "K"}]}),
            400,
            "bad_request",
        ),
        (
            json!({"credentials": [{"key": "K"}], "user_message": "hi\u{1b}[2J"}),
            400,
            "bad_request",
        ),
        (
            json!({"credentials": [{"key": "K"}], "user_message": "x".repeat(2001)}),
            400,
            "bad_request",
        ),
        (
            json!({"credentials": [{"key": "K", "value": "a\nb"}]}),
            400,
            "bad_request",
        ),
    ];
    for (body, status, code) in cases {
        let (got, v) = api(&s, "POST", "/v1/proposals", &s.token, Some(&body));
        assert_eq!(
            (got, v["error"].as_str()),
            (status, Some(code)),
            "{body} -> {v}"
        );
    }
    // Row 50: bidi text is accepted as data, and shown inert.
    let (code, v) = api(
        &s,
        "POST",
        "/v1/proposals",
        &s.token,
        Some(&json!({"credentials": [{"key": "K1"}], "user_message": "approve\u{202e}fdp.exe"})),
    );
    assert_eq!(code, 201, "{v}");
    let shown = s.env.run(&["proposal", "show", &v["id"].to_string()]).ok();
    assert!(
        shown.stdout.contains("approve\\u{202e}fdp.exe"),
        "{shown:?}"
    );
    for i in 2..=20 {
        let (code, v) = api(
            &s,
            "POST",
            "/v1/proposals",
            &s.token,
            Some(&json!({"credentials": [{"key": format!("K{i}")}]})),
        );
        assert_eq!(code, 201, "{i}: {v}");
    }
    let (code, v) = api(
        &s,
        "POST",
        "/v1/proposals",
        &s.token,
        Some(&json!({"credentials": [{"key": "K21"}]})),
    );
    assert_eq!(
        (code, v["error"].as_str()),
        (429, Some("too_many_pending")),
        "{v}"
    );
}

/// Row 49 (H-05): replay, changed content and expiry; proposals of another vault are invisible.
#[test]
fn row49_replay_change_and_expiry() {
    use airlock::vault::StoreError;
    use airlock::vault::records::ProposalRecord;
    let s = Setup::new("auto");
    let (_, v) = api(
        &s,
        "POST",
        "/v1/proposals",
        &s.token,
        Some(&other_service_proposal()),
    );
    let id = v["id"].as_u64().unwrap();
    let wrong = s.env.run_stdin(
        &[
            "proposal",
            "approve",
            &id.to_string(),
            "--credential",
            "OTHER_KEY",
            "--digest",
            "00ff",
        ],
        b"k\n",
    );
    assert!(wrong.fails().contains("changed"), "{wrong:?}");
    let missing = s.env.run(&["proposal", "approve", &id.to_string()]);
    assert!(missing.fails().contains("OTHER_KEY"), "{missing:?}");
    s.env
        .run(&[
            "proposal",
            "reject",
            &id.to_string(),
            "--reason",
            "not today",
        ])
        .ok();
    let (_, v) = api(&s, "GET", &format!("/v1/proposals/{id}"), &s.token, None);
    assert_eq!(
        (v["status"].as_str(), v["reason"].as_str()),
        (Some("rejected"), Some("not today"))
    );
    let replay = s.env.run_stdin(
        &[
            "proposal",
            "approve",
            &id.to_string(),
            "--credential",
            "OTHER_KEY",
        ],
        b"k\n",
    );
    assert!(replay.fails().contains("already decided"));
    // Expiry.
    let (_, v) = api(
        &s,
        "POST",
        "/v1/proposals",
        &s.token,
        Some(&other_service_proposal()),
    );
    let id2 = v["id"].as_u64().unwrap();
    let store = s.env.store();
    let mut rec: ProposalRecord = store
        .read(|t| t.get(t.dbs().proposals, "proposals", &id2.to_be_bytes()))
        .unwrap()
        .unwrap();
    rec.expires_at = airlock::vault::now() - 1;
    store
        .write::<_, StoreError>(|t| t.put(t.dbs().proposals, &id2.to_be_bytes(), &rec))
        .unwrap();
    drop(store);
    let (_, v) = api(&s, "GET", &format!("/v1/proposals/{id2}"), &s.token, None);
    assert_eq!(v["status"], "expired");
    let late = s.env.run_stdin(
        &[
            "proposal",
            "approve",
            &id2.to_string(),
            "--credential",
            "OTHER_KEY",
        ],
        b"k\n",
    );
    assert!(late.fails().contains("expired"));
    // Another vault's agent cannot see these proposals.
    s.env.run(&["vault", "create", "second"]).ok();
    let other = s.env.agent_token("other-bot", "second");
    let (code, _) = api(&s, "GET", &format!("/v1/proposals/{id}"), &other, None);
    assert_eq!(code, 404);
}

/// A value the agent supplies is sealed at once and never stored in clear.
#[test]
fn agent_supplied_value_is_sealed_at_once() {
    let s = Setup::new("auto");
    let value = "agent-generated-webhook-secret-42";
    let mut body = other_service_proposal();
    body["credentials"][0]["value"] = json!(value);
    let (code, v) = api(&s, "POST", "/v1/proposals", &s.token, Some(&body));
    assert_eq!(code, 201, "{v}");
    assert!(!v.to_string().contains(value));
    for (path, bytes) in files(&s.env.data_dir) {
        assert!(
            !contains(&bytes, value.as_bytes()),
            "value stored in clear in {}",
            path.display()
        );
    }
    let id = v["id"].as_u64().unwrap();
    let shown = s.env.run(&["proposal", "show", &id.to_string()]).ok();
    assert!(shown.stdout.contains("value supplied by the agent") && !shown.stdout.contains(value));
    s.env.run(&["proposal", "approve", &id.to_string()]).ok();
    wait_applied(&s, id);
    s.curl(&["https://other.example.net/w"]).ok();
    assert_eq!(
        s.last().header("authorization"),
        [format!("Bearer {value}")]
    );
}

/// `POST /v1/tokens` mints a scoped token for the agent's vault; `DELETE /v1/tokens/self`
/// revokes it at once.
#[test]
fn scoped_tokens_through_the_agent_api() {
    let s = Setup::new("auto");
    let (code, v) = api(
        &s,
        "POST",
        "/v1/tokens",
        &s.token,
        Some(&json!({"ttl_seconds": 600})),
    );
    assert_eq!(code, 201, "{v}");
    let scoped = v["token"].as_str().unwrap().to_owned();
    assert!(scoped.starts_with("alk_tok_"));
    let (_, head) = crate::support::connect(
        s.proxy.addr,
        "api.openai.com:443",
        Some(&format!("{scoped}:")),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (code, v) = api(&s, "POST", "/v1/tokens", &scoped, None);
    assert_eq!(code, 403, "a scoped token minted another: {v}");
    let (code, _) = api(&s, "DELETE", "/v1/tokens/self", &scoped, None);
    assert_eq!(code, 204);
    let (_, head) = crate::support::connect(
        s.proxy.addr,
        "api.openai.com:443",
        Some(&format!("{scoped}:")),
    );
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
}

/// The service catalog: listed to agents at `/v1/catalog`, used in a proposal by name (expanded
/// into the full service the operator reviews), and by `airlock service add --template`.
#[test]
fn catalog_templates_in_proposals_and_on_the_cli() {
    let s = Setup::new("auto");
    let (code, list) = api(&s, "GET", "/v1/catalog", "none", None);
    assert_eq!(code, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["template"].as_str().unwrap())
        .collect();
    for want in ["anthropic", "openai", "github", "stripe", "datadog", "npm"] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    let stripe = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["template"] == "stripe")
        .unwrap();
    assert_eq!(stripe["host"], "api.stripe.com");
    assert_eq!(stripe["credentials"], json!(["STRIPE_SECRET_KEY"]));
    // A proposal by template: stored, and reviewed, as the full service.
    let (code, p) = api(
        &s,
        "POST",
        "/v1/proposals",
        &s.token,
        Some(&json!({"services": [{"template": "stripe"}],
                     "credentials": [{"key": "STRIPE_SECRET_KEY"}]})),
    );
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_u64().unwrap().to_string();
    let shown = s.env.run(&["proposal", "show", &id]).ok().stdout;
    assert!(
        shown.contains("adds service stripe: api.stripe.com · bearer · Authorization: Bearer <STRIPE_SECRET_KEY>"),
        "{shown}"
    );
    let (code, v) = api(
        &s,
        "POST",
        "/v1/proposals",
        &s.token,
        Some(&json!({"services": [{"template": "no-such-provider"}]})),
    );
    assert_eq!(
        (code, v["error"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    // The CLI: add from the catalog with a chosen key (replacing the vault's own anthropic).
    let added = s
        .env
        .run(&[
            "service",
            "add",
            "--template",
            "anthropic",
            "--credential",
            "ANTHROPIC_KEY",
        ])
        .ok()
        .stdout;
    assert!(
        added.contains(
            "service anthropic: api.anthropic.com · api-key · x-api-key: <ANTHROPIC_KEY>"
        ),
        "{added}"
    );
    let wrong = s.env.run(&[
        "service",
        "add",
        "--template",
        "datadog",
        "--credential",
        "ONE",
    ]);
    assert!(
        wrong.fails().contains("takes 2 credential key(s)"),
        "{wrong:?}"
    );
    let table = s.env.run(&["service", "catalog"]).ok().stdout;
    assert!(
        table.contains("THE SDK SENDS") && table.contains("x-goog-api-key"),
        "{table}"
    );
}

/// Row 120: an agent asks for egress allowlist hosts (a registry it needs no credential for):
/// internal and shared-hosting wildcards are refused at once; the review shows the hosts on the
/// CLI and the JSON API; once approved the host is reached through an opaque tunnel (the
/// origin's own certificate, nothing injected).
#[test]
fn agents_propose_egress_allowlist_hosts() {
    let s = Setup::new("auto");
    let url = "https://other.example.net/registry";
    let curl = |extra: &[&str]| {
        Curl::new()
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_connect}"])
            .args(["--proxy", &s.proxy.url(&s.token, "default")])
            .args(extra)
            .arg(url)
            .run()
    };
    assert_eq!(curl(&["-k"]).stdout, "000 403", "not allowed yet");
    for bad in ["localhost", "*.run.app", "https://pypi.org/simple"] {
        let (code, v) = api(
            &s,
            "POST",
            "/v1/proposals",
            &s.token,
            Some(&json!({"allow": [bad], "user_message": "need it"})),
        );
        assert_eq!(code, 400, "{bad}: {v}");
    }
    let (code, p) = api(
        &s,
        "POST",
        "/v1/proposals",
        &s.token,
        Some(&json!({"allow": ["other.example.net"], "user_message": "the package registry"})),
    );
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_u64().unwrap().to_string();
    let shown = s.env.run(&["proposal", "show", &id]).ok().stdout;
    assert!(
        shown.contains("adds other.example.net to vault default's egress allowlist"),
        "{shown}"
    );
    let json_review: Value =
        serde_json::from_str(&s.env.run(&["proposal", "show", &id, "--json"]).ok().stdout).unwrap();
    assert_eq!(json_review["review"]["allow"], json!(["other.example.net"]));
    s.env.run(&["proposal", "approve", &id]).ok();
    let vaults = s.env.run(&["vault", "list", "--json"]).ok().stdout;
    assert!(
        vaults.contains("\"allow\":[\"other.example.net\"]"),
        "{vaults}"
    );
    let ca = s.origin.ca_file.to_str().unwrap().to_owned();
    let start = Instant::now();
    loop {
        let r = curl(&["--cacert", &ca]);
        if r.stdout == "200 200" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = s
        .origin
        .recorded()
        .into_iter()
        .rfind(|q| q.request_line().starts_with("GET /registry"))
        .unwrap();
    assert!(last.header("authorization").is_empty(), "{}", last.head);
}
