//! Hardening round 2 (rows 64 onwards of tests/SECURITY-TESTS.md): what an adversarial review
//! broke, each with the attack that broke it. The upstream pool first: connections the upstream
//! closed or wrote on while idle, retries, and isolation between vaults.

use std::time::Duration;

use crate::harness::output;
use crate::proxy::Setup;
use crate::proxy_harness::RawClient;

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
    std::thread::sleep(Duration::from_millis(400));
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
