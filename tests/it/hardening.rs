//! Hardening round 2 (rows 64 onwards of tests/SECURITY-TESTS.md): what an adversarial review
//! broke, each with the attack that broke it. The upstream pool first: connections the upstream
//! closed or wrote on while idle, retries, and isolation between vaults.

use std::io::{Read, Write};
use std::time::Duration;

use crate::proxy::Setup;
use crate::support::{RawClient, output};

/// The metrics counter `name` (a line `name N`).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// Row 64: an upstream that closes idle connections after 2 s, as real API servers do. The
/// official anthropic and openai SDKs with retries off: sixteen parallel calls, a 3 s pause, then
/// sixteen more with 1 KiB and 64 KiB JSON bodies. Every call succeeds: the pool probes a
/// connection before reuse and drops the closed ones. Reuse is allowed for 30 s here, so the probe
/// (not the idle expiry) is what saves the second round.
#[test]
fn row64_sdk_calls_survive_an_upstream_that_closes_idle_connections() {
    let s = Setup::with_idle_origin(
        &[
            "--upstream-idle-timeout",
            "30s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(2),
    );
    let script = r#"
import time, anthropic, openai
from concurrent.futures import ThreadPoolExecutor
# The proxy and CA come from HTTPS_PROXY and SSL_CERT_FILE, as with `airlock run`.
a = anthropic.Anthropic(api_key="placeholder", max_retries=0)
o = openai.OpenAI(api_key="placeholder", max_retries=0)
def call(i, size):
    text = "x" * size
    if i % 2:
        r = a.messages.create(model="claude-test", max_tokens=16, messages=[{"role": "user", "content": text}])
        return r.content[0].text
    r = o.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": text}])
    return r.choices[0].message.content
with ThreadPoolExecutor(16) as ex:
    first = list(ex.map(lambda i: call(i, 100), range(16)))
time.sleep(3)
with ThreadPoolExecutor(16) as ex:
    second = list(ex.map(lambda i: call(i, 1024 if i < 8 else 65536), range(16)))
replies = first + second
assert all(t == "Hello from the origin" for t in replies), replies
print("calls ok:", len(replies))
"#;
    let mut c = std::process::Command::new("python3");
    c.arg("-c")
        .arg(script)
        .env("HTTPS_PROXY", s.proxy.url(&s.token, "default"))
        .env("SSL_CERT_FILE", s.ca())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let r = output(c, None).ok();
    assert!(r.stdout.contains("calls ok: 32"), "{r:?}");
    s.assert_no_secret(&r.stdout);
    let recs = s.origin.recorded();
    let big = recs
        .iter()
        .filter(|r| r.body.len() > 65536 && r.request_line().starts_with("POST /v1/"))
        .count();
    assert!(big >= 8, "the 64 KiB bodies arrived whole: {big}");
    for r in recs
        .iter()
        .filter(|r| r.request_line().contains("/v1/messages"))
    {
        assert_eq!(r.header("x-api-key"), [s.secret("ANTHROPIC_KEY")]);
    }
    let m = s.metrics();
    assert!(
        counter(&m, "airlock_upstream_pool_discarded_total") > 0,
        "the probe found closed connections: {m}"
    );
}

/// Row 64: a request on a reused connection that the upstream closes without answering is sent
/// again on a fresh connection when its body is held (here 64 KiB with a Content-Length); a
/// streamed (chunked) body is not, and nothing is ever retried once a response byte arrived.
#[test]
fn row64_retry_once_on_a_fresh_connection_only_before_any_response_byte() {
    let s = Setup::with("auto", &["--metrics-listen", "127.0.0.1:0"], true, true);
    let count = |path: &str| {
        s.origin
            .recorded()
            .iter()
            .filter(|r| r.request_line().contains(path))
            .count()
    };
    let mut c = s.raw("api.openai.com");
    let first = c.send(b"GET /once-per-conn HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let body = "b".repeat(64 * 1024);
    let held = c.send(
        format!(
            "POST /once-per-conn?held HTTP/1.1\r\nHost: api.openai.com\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert!(held.starts_with("HTTP/1.1 200"), "{held}");
    let sent: Vec<_> = s
        .origin
        .recorded()
        .into_iter()
        .filter(|r| r.request_line().contains("?held"))
        .collect();
    assert_eq!(sent.len(), 2, "sent on the dead connection, then once more");
    assert!(sent.iter().all(|r| r.body == body.as_bytes()));
    assert_ne!(sent[0].conn, sent[1].conn);
    // A chunked body streams: it cannot be sent twice, so the failure is the answer.
    let streamed = c.send(
        b"POST /once-per-conn?streamed HTTP/1.1\r\nHost: api.openai.com\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(streamed.starts_with("HTTP/1.1 502"), "{streamed}");
    assert_eq!(count("?streamed"), 1);
    // Half a response head arrived: never retried.
    let mut c = s.raw("api.openai.com");
    let warm = c.send(b"GET /warm HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(warm.starts_with("HTTP/1.1 200"), "{warm}");
    let partial = c.send(b"GET /partial HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(partial.starts_with("HTTP/1.1 502"), "{partial}");
    assert_eq!(count("/partial"), 1, "never retried after a response byte");
    assert_eq!(
        counter(&s.metrics(), "airlock_upstream_retries_total"),
        1,
        "only the held body was retried"
    );
}

/// Row 65: an upstream that writes an unsolicited second response after a complete one (late,
/// or in the same write). No agent ever receives it: not the next agent of the same vault, and
/// never an agent of another vault whose service shares the host (the pool is keyed by vault,
/// and a connection on which anything arrived while idle is dropped).
#[test]
fn row65_unsolicited_upstream_responses_reach_no_agent() {
    let s = Setup::with("auto", &["--metrics-listen", "127.0.0.1:0"], true, true);
    s.env.run(&["vault", "create", "v2"]).ok();
    s.env
        .run_stdin(
            &["credential", "set", "V2KEY", "--vault", "v2"],
            b"v2-secret-0123456789",
        )
        .ok();
    let file = s.env.write(
        "v2.yaml",
        "services:\n  - name: openai\n    host: api.openai.com\n    auth: {type: bearer, token: V2KEY}\n",
    );
    s.env
        .run(&[
            "service",
            "set",
            "--vault",
            "v2",
            "-f",
            file.to_str().unwrap(),
        ])
        .ok();
    let token2 = s.env.agent_token("bot2", "v2");
    s.settle();
    let ca = std::fs::read(s.ca()).unwrap();
    let tunnel = |token: &str, vault: &str| {
        RawClient::open(
            s.proxy.addr,
            "api.openai.com",
            "api.openai.com",
            &format!("{token}:{vault}"),
            &ca,
        )
        .unwrap()
    };
    let get = |c: &mut RawClient, path: &str| {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").as_bytes())
    };
    let check = |next: String, who: &str| {
        assert!(
            next.starts_with("HTTP/1.1 200") && next.contains("GET /check HTTP/1.1"),
            "{who}: {next}"
        );
        assert!(!next.contains("desync-echo"), "{who}: {next}");
    };
    for round in 0..8 {
        let path = if round % 2 == 0 {
            "/desync"
        } else {
            "/desync-now"
        };
        // The same tunnel (so the same worker and its pool) for v2's next request; a fresh
        // tunnel, on either worker, for the other vault's agent.
        let mut t2 = tunnel(&token2, "v2");
        let first = get(&mut t2, path);
        assert!(first.ends_with("ok"), "{first}");
        std::thread::sleep(Duration::from_millis(500));
        check(get(&mut t2, "/check"), &format!("round {round}, v2"));
        let other = get(&mut tunnel(&s.token, "default"), "/check");
        check(other, &format!("round {round}, default"));
    }
    assert!(
        counter(&s.metrics(), "airlock_upstream_pool_discarded_total") > 0,
        "the late responses were seen by the probe"
    );
}

// One agent must not hurt other agents or vaults.

/// A second agent `name` in vault `vault`, with a service on `host` (a wildcard pattern allowed)
/// using a credential of its own; returns the agent's token.
fn second_vault(s: &Setup, vault: &str, name: &str, host: &str) -> String {
    s.env.run(&["vault", "create", vault]).ok();
    s.env
        .run_stdin(
            &["credential", "set", "V2KEY", "--vault", vault],
            b"v2-secret-0123456789",
        )
        .ok();
    let file = s.env.write(
        &format!("{vault}.yaml"),
        &format!("services:\n  - name: svc\n    host: \"{host}\"\n    auth: {{type: bearer, token: V2KEY}}\n"),
    );
    s.env
        .run(&[
            "service",
            "set",
            "--vault",
            vault,
            "-f",
            file.to_str().unwrap(),
        ])
        .ok();
    let token = s.env.agent_token(name, vault);
    s.settle();
    token
}

/// `airlock logs --vault default --json`.
fn logs_json(s: &Setup) -> String {
    s.env
        .run(&["logs", "--vault", "default", "--json"])
        .ok()
        .stdout
}

fn connect_status(s: &Setup, authority: &str, token: &str, vault: &str) -> String {
    let (_, head) =
        crate::support::connect(s.proxy.addr, authority, Some(&format!("{token}:{vault}")));
    head.split(' ').nth(1).unwrap_or_default().to_owned()
}

/// Row 73: refused CONNECTs are limited per agent (20, then 5 a second), and past
/// that answered 429 without a request-log row, so an agent cannot flush the log (each vault's
/// newest rows are kept whatever: `requestlog::tests::row73_retention_keeps_each_vaults_floor`).
/// Another agent keeps its own budget.
#[test]
fn row73_refused_connects_limited_per_agent_and_unlogged_past_it() {
    let s = Setup::new("auto");
    let other = s.env.agent_token("other-bot", "default");
    let codes: Vec<String> = (0..60)
        .map(|i| connect_status(&s, &format!("nope{i}.invalid:443"), &s.token, "default"))
        .collect();
    let refused = codes.iter().filter(|c| *c == "403").count();
    let limited = codes.iter().filter(|c| *c == "429").count();
    assert_eq!(refused + limited, 60, "{codes:?}");
    // A burst of 20, plus 5 a second for as long as the loop takes.
    assert!(
        (20..=40).contains(&refused),
        "{refused} refusals before the limit: {codes:?}"
    );
    assert_eq!(
        connect_status(&s, "nope.invalid:443", &other, "default"),
        "403"
    );
    // The last refusal's row in the log means every earlier one is there.
    s.env.log_row("default", |r| r["host"] == "nope.invalid");
    let logs = logs_json(&s);
    let rows = logs.lines().filter(|l| l.contains(".invalid")).count();
    assert_eq!(
        rows,
        refused + 1,
        "one row per answered refusal, none for the 429s"
    );
}

/// Row 74: `POST /v1/tokens` is rate limited per agent (a burst of 10, then one a
/// second) and an agent holds at most 100 live scoped tokens; expired tokens are purged
/// (`vault::ops::tests::row74_expired_tokens_purged_on_mint`). The store can no longer be filled
/// by one agent's mints.
#[test]
fn row74_token_mints_rate_limited_and_capped() {
    let s = Setup::new("auto");
    let mint = || crate::proposals::api(&s, "POST", "/v1/tokens", &s.token, None);
    let codes: Vec<u16> = (0..14).map(|_| mint().0).collect();
    assert_eq!(&codes[..10], &[201; 10], "{codes:?}");
    assert!(codes[10..].contains(&429), "{codes:?}");
    let (code, v) = mint();
    assert_eq!(
        (code, v["error"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    let store = s.env.store();
    let held = codes.iter().filter(|&&c| c == 201).count();
    for _ in held..100 {
        store
            .mint_token("test", "default", Duration::from_secs(3600), Some("bot"))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(1100));
    let (code, v) = mint();
    assert_eq!(
        (code, v["error"].as_str()),
        (429, Some("too_many_tokens")),
        "{v}"
    );
    // Another agent's mints are its own.
    let other = s.env.agent_token("other-bot", "default");
    let (code, _) = crate::proposals::api(&s, "POST", "/v1/tokens", &other, None);
    assert_eq!(code, 201);
}

/// Row 75: rotating an agent ends the scoped tokens minted with its old token, as
/// revoking does.
#[test]
fn row75_rotation_ends_minted_scoped_tokens() {
    let s = Setup::new("auto");
    let (code, v) = crate::proposals::api(&s, "POST", "/v1/tokens", &s.token, None);
    assert_eq!(code, 201, "{v}");
    let scoped = v["token"].as_str().unwrap().to_owned();
    assert_eq!(
        connect_status(&s, "api.openai.com:443", &scoped, "default"),
        "200"
    );
    s.env.run(&["agent", "rotate", "bot"]).ok();
    assert_eq!(
        connect_status(&s, "api.openai.com:443", &scoped, "default"),
        "407"
    );
    assert_eq!(
        connect_status(&s, "api.openai.com:443", &s.token, "default"),
        "407"
    );
}

/// Row 76: revocation works on a full store. Ordinary writes stop short of the
/// end of the map (a headroom of a sixteenth of it, at most 1 MiB); revoking, rotating and
/// deleting credentials may use it.
#[test]
fn row76_revocation_works_on_a_full_store() {
    let env = crate::support::Env::empty();
    let cfg = env.write("small.toml", "map_size_mib = 2\n");
    let cfg = cfg.to_str().unwrap();
    env.run(&["init", "--config", cfg]).ok();
    let token = env
        .run(&[
            "--config", cfg, "agent", "create", "bot", "--vault", "default",
        ])
        .ok()
        .last_line()
        .to_owned();
    env.run(&[
        "--config", cfg, "agent", "create", "other", "--vault", "default",
    ])
    .ok();
    let value = vec![b'x'; 60 * 1024];
    let full = (0..100).find(|i| {
        let r = env.run_stdin(
            &["--config", cfg, "credential", "set", &format!("K{i}")],
            &value,
        );
        r.code != 0 && r.fails().contains("storage_full")
    });
    assert!(full.is_some(), "the 2 MiB map never filled");
    let small = env.run_stdin(&["--config", cfg, "credential", "set", "SMALL"], b"v");
    assert!(small.fails().contains("storage_full"), "{small:?}");
    env.run(&["--config", cfg, "agent", "revoke", "bot"]).ok();
    env.run(&["--config", cfg, "agent", "rotate", "other"]).ok();
    let store = airlock::vault::Store::open(
        &env.data_dir,
        airlock::vault::StoreOptions { map_size_mib: 2 },
    )
    .unwrap();
    assert!(
        store.token(token.as_bytes()).unwrap().is_none(),
        "the revoked token is gone"
    );
    drop(store);
    // Review #66: deleting credentials frees space, so it may use the headroom too; afterwards
    // ordinary writes work again.
    for i in 0..full.unwrap() {
        env.run(&["--config", cfg, "credential", "delete", &format!("K{i}")])
            .ok();
    }
    env.run_stdin(&["--config", cfg, "credential", "set", "SMALL"], b"v")
        .ok();
}

/// Row 77: the per-agent rate limit is per agent: scoped tokens the agent minted
/// share its budget instead of each getting their own.
#[test]
fn row77_rate_limits_shared_by_an_agents_scoped_tokens() {
    let s = Setup::with(
        "auto",
        &[
            "--agent-requests-per-second",
            "5",
            "--agent-max-in-flight",
            "0",
        ],
        true,
        true,
    );
    let mut tokens = vec![s.token.clone()];
    for _ in 0..3 {
        let (_, v) = crate::proposals::api(&s, "POST", "/v1/tokens", &s.token, None);
        tokens.push(v["token"].as_str().unwrap().to_owned());
    }
    let ca = std::fs::read(s.ca()).unwrap();
    let started = std::time::Instant::now();
    let threads: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let (addr, ca) = (s.proxy.addr, ca.clone());
            std::thread::spawn(move || {
                let mut ok = 0;
                while started.elapsed() < Duration::from_secs(1) {
                    let auth = format!("{token}:default");
                    let mut c =
                        RawClient::open(addr, "api.openai.com", "api.openai.com", &auth, &ca)
                            .unwrap();
                    loop {
                        let r = c.send(b"GET /budget HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
                        if !r.starts_with("HTTP/1.1 200") {
                            break;
                        }
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // One budget: a burst of 10 plus 5 a second (per-token budgets would allow four times that).
    assert!((5..=20).contains(&ok), "{ok} requests served in a second");
}

/// Row 78: the leaf-mint limiter is per vault: one vault's flood of new wildcard
/// hosts does not refuse another vault's first new host.
#[test]
fn row78_leaf_mint_limit_per_vault() {
    let s = Setup::new("auto");
    let token2 = second_vault(&s, "v2", "bot2", "*.v2wild.example");
    let codes: Vec<String> = (0..90)
        .map(|i| connect_status(&s, &format!("f{i}.atlassian.net:443"), &s.token, "default"))
        .collect();
    assert!(codes.iter().any(|c| c == "429"), "{codes:?}");
    for i in 0..3 {
        let host = format!("n{i}.v2wild.example:443");
        assert_eq!(connect_status(&s, &host, &token2, "v2"), "200", "{host}");
    }
}

/// Row 79: request-log rows of scoped tokens name who they belong to: the agent
/// that minted one, or for a token of no agent (`airlock run`, `token mint`) the operator who
/// minted it.
#[test]
fn row79_rows_of_scoped_tokens_name_their_agent() {
    let s = Setup::new("auto");
    let (_, v) = crate::proposals::api(&s, "POST", "/v1/tokens", &s.token, None);
    let by_agent = v["token"].as_str().unwrap().to_owned();
    let by_cli = s
        .env
        .run(&["token", "mint", "--vault", "default"])
        .ok()
        .last_line()
        .to_owned();
    for (token, path) in [(&by_agent, "/by-agent"), (&by_cli, "/by-cli")] {
        let auth = format!("{token}:default");
        let ca = std::fs::read(s.ca()).unwrap();
        let mut c =
            RawClient::open(s.proxy.addr, "api.openai.com", "api.openai.com", &auth, &ca).unwrap();
        let r = c.send(format!("GET {path} HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").as_bytes());
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    s.env.log_row("default", |r| r["path"] == "/by-cli");
    let logs = logs_json(&s);
    let agent_of = |path: &str| -> serde_json::Value {
        let line = logs.lines().find(|l| l.contains(path)).unwrap();
        serde_json::from_str::<serde_json::Value>(line).unwrap()["agent"].clone()
    };
    assert_eq!(agent_of("/by-agent"), "bot", "{logs}");
    let cli = agent_of("/by-cli");
    assert!(
        cli.as_str().is_some_and(|a| a.starts_with("cli uid=")),
        "{logs}"
    );
}

// Echoed secrets the scrubber used to miss (rows 80 and 81).

/// Row 80: an upstream quoting the injected credential in the status line's reason phrase, in a
/// header name, without its scheme word (the bare base64 of Basic auth), through another
/// service of the vault than the one that stored it, or in WebSocket frames (whole and
/// fragmented): the agent sees a mask every time. Credentialed requests go upstream with
/// `accept-encoding: identity` and no WebSocket extension, so no echo comes back compressed.
#[test]
fn row80_echoes_masked_wherever_an_upstream_puts_them() {
    let s = Setup::new("auto");
    // A key with no underscore, so that the header name quoting it is not dropped as such.
    let key = format!("sk-live-{}", &crate::support::canary()[10..]);
    s.env
        .run_stdin(&["credential", "set", "OPENAI_KEY"], key.as_bytes())
        .ok();
    s.settle();
    let get = |host: &str, path: &str, extra: &str| {
        let r = s
            .raw(host)
            .send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").as_bytes());
        s.assert_no_secret(&r);
        assert!(!r.contains(&key), "{r}");
        r
    };
    let bearer = format!("Bearer {key}");
    let stars = |t: &str| "*".repeat(t.len());
    let r = get("api.openai.com", "/echo-reason", "");
    assert!(
        r.starts_with(&format!("HTTP/1.1 401 {}\r\n", stars(&bearer))),
        "{r}"
    );
    let r = get("api.openai.com", "/echo-header-name", "");
    assert!(r.contains(&format!("x-{}: 1", stars(&key))), "{r}");
    let pair = format!("{}:{}", s.secret("JIRA_USER"), s.secret("JIRA_TOKEN"));
    let b64 = data_encoding::BASE64.encode(pair.as_bytes());
    let r = get("team.atlassian.net", "/echo-bare", "");
    assert!(!r.contains(&b64) && r.contains(&stars(&b64)), "{r}");
    // The agent asks for gzip; the upstream is asked for identity.
    let r = get(
        "api.openai.com",
        "/encoding",
        "Accept-Encoding: gzip, br\r\n",
    );
    assert!(r.contains(r#""accept_encoding":["identity"]"#), "{r}");
    // Stored through acme (header substitution), read back through the passthrough service.
    let r = get("api.acme.dev", "/v2/store", "X-Note: __acme_key__\r\n");
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    let r = get("public.example.org", "/fetch", "");
    assert!(
        r.ends_with(&format!("note: {}", stars(s.secret("ACME_KEY")))),
        "{r}"
    );
    // WebSocket frames from upstream.
    let mut c = s.raw("api.openai.com");
    let upgrade = "GET /ws-secret HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
    c.tls.write_all(upgrade.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = c.tls.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    s.assert_no_secret(&text);
    assert!(!text.contains(&key), "{text}");
    let frames = &got[text.find("\r\n\r\n").unwrap() + 4..];
    let payloads: Vec<u8> = frames
        .iter()
        .copied()
        .filter(|b| b.is_ascii_graphic() || *b == b' ')
        .collect();
    let payloads = String::from_utf8_lossy(&payloads);
    assert!(
        payloads.contains(&format!("auth={}", stars(&bearer))),
        "{payloads}"
    );
    assert_eq!(payloads.matches(&stars(&bearer)).count(), 2, "{payloads}");
    let up = s.origin.recorded();
    let ws = up
        .iter()
        .find(|r| r.request_line().contains("/ws-secret"))
        .unwrap();
    assert!(
        ws.header("sec-websocket-extensions").is_empty(),
        "{}",
        ws.head
    );
}

/// Row 81: substituted values go into the path and query percent-encoded, so an
/// upstream that decodes the query reflects exactly the stored value (masked), and one that
/// echoes the request line reflects the encoded form (masked too).
#[test]
fn row81_path_and_query_substitutions_are_percent_encoded() {
    let s = Setup::new("auto");
    let value = "acct+Qx7/zz=9 x";
    s.env
        .run_stdin(&["credential", "set", "ACME_ACCOUNT"], value.as_bytes())
        .ok();
    s.settle();
    let r = s.raw("api.acme.dev").send(
        b"GET /v2/__acme_account__/items?acct=__acme_account__ HTTP/1.1\r\nHost: api.acme.dev\r\n\r\n",
    );
    let encoded = "acct%2BQx7%2Fzz%3D9%20x";
    assert_eq!(
        s.last().request_line(),
        format!("GET /v2/{encoded}/items?acct={encoded} HTTP/1.1")
    );
    assert!(!r.contains(encoded) && !r.contains(value), "{r}");
    assert!(r.contains(&"*".repeat(encoded.len())), "{r}");
}

/// Row 82: a chunked request whose first chunk-size line (or any framing in the bytes already
/// read) is bad is refused with 400 `bad_framing` before its head goes upstream; the upstream
/// sees nothing.
#[test]
fn row82_framing_known_bad_refused_before_anything_leaves() {
    let s = Setup::new("auto");
    for body in [
        "ffffffffffffffffff\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "zz\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5\r\nhello\r\n5x\r\n",
    ] {
        let r = s.raw("api.openai.com").send(
            format!("POST /framing HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
                .as_bytes(),
        );
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("bad_framing"),
            "{body:?}: {r}"
        );
    }
    assert!(s.origin.recorded().is_empty(), "the upstream saw a head");
}

// `airlock run` and the admin process's environment (rows 83 and 84).

/// Row 83: `airlock run` never hands the agent `AIRLOCK_PASSPHRASE`, `CREDENTIALS_DIRECTORY` or
/// a variable named after a credential of the vault (those become `placeholder`), says so on
/// stderr, and keeps its files in a fresh 0700 directory. Minting locally and through the agent
/// API alike.
#[test]
fn row83_airlock_run_withholds_secrets_from_the_agent() {
    let s = Setup::new("auto");
    let script = r#"env; stat -c 'dir-mode=%a' "$(dirname "$SSL_CERT_FILE")""#;
    let leaked = [
        ("AIRLOCK_PASSPHRASE", "pp-SECRET-passphrase"),
        ("CREDENTIALS_DIRECTORY", "/run/credentials/airlock.service"),
        ("OPENAI_KEY", "sk-live-real-openai-key"),
        ("ANTHROPIC_KEY", "sk-ant-real-key"),
        ("UNRELATED", "kept-as-is"),
    ];
    let proxy = format!("http://{}", s.proxy.addr);
    let local = {
        let mut c = s
            .env
            .command(&["run", "--proxy", &proxy, "--", "sh", "-c", script]);
        c.envs(leaked);
        output(c, None).ok()
    };
    let remote = {
        let mut c = crate::support::command(&[
            "--data-dir",
            "/nonexistent",
            "run",
            "--",
            "sh",
            "-c",
            script,
        ]);
        c.envs(leaked)
            .env("AIRLOCK_URL", &proxy)
            .env("AIRLOCK_TOKEN", &s.token);
        output(c, None).ok()
    };
    for r in [local, remote] {
        for (_, value) in &leaked[..4] {
            assert!(
                !r.stdout.contains(value),
                "{value} reached the agent: {}",
                r.stdout
            );
        }
        assert!(!r.stdout.contains("CREDENTIALS_DIRECTORY="), "{}", r.stdout);
        assert!(
            r.stdout.contains("OPENAI_KEY=placeholder\n")
                && r.stdout.contains("ANTHROPIC_KEY=placeholder\n")
                && r.stdout.contains("UNRELATED=kept-as-is\n"),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("dir-mode=700"), "{}", r.stdout);
        assert!(
            r.stderr
                .contains("not passed to the agent: AIRLOCK_PASSPHRASE, CREDENTIALS_DIRECTORY")
                && r.stderr.contains("ANTHROPIC_KEY, OPENAI_KEY"),
            "{}",
            r.stderr
        );
    }
}

/// Row 106: a variable holding a credential of the vault under another name
/// (lower case, a prefix, a suffix, inside a longer value) is withheld too, when `run` can open
/// the vault; a value that is no credential is kept, and stderr names, never shows, what went.
#[test]
fn row106_airlock_run_withholds_credentials_by_value() {
    let s = Setup::new("auto");
    let openai = s.secret("OPENAI_KEY").to_owned();
    let near_misses = [
        ("openai_api_key", openai.clone()),
        ("MY_OPENAI_API_KEY_2", openai.clone()),
        ("AUTH_HEADER", format!("Bearer {openai}")),
        ("UNRELATED", "kept-as-is".to_owned()),
    ];
    let proxy = format!("http://{}", s.proxy.addr);
    let mut c = s.env.command(&["run", "--proxy", &proxy, "--", "env"]);
    c.envs(near_misses.iter().map(|(k, v)| (k, v)));
    let r = output(c, None).ok();
    assert!(
        !r.stdout.contains(&openai),
        "a credential reached the agent: {}",
        r.stdout
    );
    for name in ["openai_api_key", "MY_OPENAI_API_KEY_2", "AUTH_HEADER"] {
        assert!(
            r.stdout.contains(&format!("{name}=placeholder\n")),
            "{name}: {}",
            r.stdout
        );
        assert!(r.stderr.contains(name), "{}", r.stderr);
    }
    assert!(r.stdout.contains("UNRELATED=kept-as-is\n"), "{}", r.stdout);
    assert!(!r.stderr.contains(&openai), "{}", r.stderr);
}

/// Row 84: `serve` does not pass the passphrase (or systemd's credentials directory) to
/// `airlock-admin`, and the admin process is not dumpable (its /proc files go to root, so no
/// other process of its user reads its memory or environment).
#[test]
fn row84_admin_process_has_no_passphrase_and_is_not_dumpable() {
    use std::os::unix::fs::MetadataExt;
    let phrase = "a-passphrase-for-row-84";
    let serve = crate::support::ServeAsNobody::start(
        &["--admin-listen", "127.0.0.1:0"],
        &[
            ("AIRLOCK_PASSPHRASE", phrase),
            ("CREDENTIALS_DIRECTORY", "/nonexistent-credentials"),
        ],
    );
    assert!(
        !serve.data.join("master.key").exists(),
        "a passphrase vault has no key file"
    );
    let data = serve.data.to_str().unwrap().to_owned();
    let admin = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("airlock-admin") && cmd.contains(&data)
        })
        .expect("airlock-admin is running");
    let environ = std::fs::read(format!("/proc/{admin}/environ")).unwrap_or_default();
    let environ = String::from_utf8_lossy(&environ);
    let mem_owner = std::fs::metadata(format!("/proc/{admin}/mem"))
        .unwrap()
        .uid();
    assert!(!environ.contains(phrase), "the admin got the passphrase");
    assert!(!environ.contains("AIRLOCK_PASSPHRASE") && !environ.contains("CREDENTIALS_DIRECTORY"));
    assert_eq!(mem_owner, 0, "the admin process is dumpable");
}
