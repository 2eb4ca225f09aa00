//! security.md's bad-input rows that concern the data plane and are not covered in `proxy.rs`:
//! each test names its row. See `tests/SECURITY-TESTS.md` for the whole map.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::proxy::{SERVICES, Setup};
use crate::support::origin::Origin;
use crate::support::{Env, Proxy, RawClient, connect, output};

fn auth(s: &Setup) -> String {
    format!("{}:default", s.token)
}

/// Row 6: hosts are ASCII; a non-ASCII CONNECT host is refused before any lookup, and the
/// punycode form is what services name.
#[test]
fn row6_non_ascii_connect_host_refused() {
    let s = Setup::new("auto");
    let (_, head) = connect(s.proxy.addr, "bücher.example:443", Some(&auth(&s)));
    assert!(
        head.starts_with("HTTP/1.1 400") && head.contains("bad_authority"),
        "{head}"
    );
}

/// Row 8 (A-07, D-05): a portless service is TLS on 443 only; another port is unmatched.
#[test]
fn row8_portless_service_not_served_on_other_ports() {
    let s = Setup::new("auto");
    for port in [80, 8443] {
        let (_, head) = connect(
            s.proxy.addr,
            &format!("api.openai.com:{port}"),
            Some(&auth(&s)),
        );
        assert!(
            head.starts_with("HTTP/1.1 403") && head.contains("no_service"),
            "{port}: {head}"
        );
    }
    assert!(s.origin.recorded().is_empty());
}

/// Row 15 (B-06): trailers are dropped; the next request on the connection is intact.
#[test]
fn row15_trailers_dropped() {
    let s = Setup::new("auto");
    let mut c = s.raw("api.openai.com");
    let r = c.send(b"POST /t HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nAuthorization: Bearer trailer\r\nContent-Length: 99\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("\"body_len\":3"),
        "{r}"
    );
    let r = c.send(b"GET /next HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(r.contains("GET /next HTTP/1.1"), "{r}");
    let recs = s.origin.recorded();
    assert_eq!(recs.len(), 2);
    assert!(!recs.iter().any(|r| r.head.contains("trailer")));
}

/// Row 16 (B-08): over the body cap, a declared length gets 413 before anything goes upstream;
/// a chunked body that passes the cap mid-stream aborts both connections.
#[test]
fn row16_body_cap() {
    let s = Setup::with("auto", &["--max-body-bytes", "1000"], true, true);
    let body = "x".repeat(2000);
    let r = s.raw("api.openai.com").send(
        format!("POST /cl HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 2000\r\n\r\n{body}")
            .as_bytes(),
    );
    assert!(
        r.starts_with("HTTP/1.1 413") && r.contains("body_too_large"),
        "{r}"
    );
    assert!(s.origin.recorded().is_empty());
    let mut c = s.raw("api.openai.com");
    c.tls.write_all(format!("POST /chunked HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").as_bytes()).unwrap();
    let r = c.response();
    assert!(!r.starts_with("HTTP/1.1 200"), "{r}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !s.origin
            .recorded()
            .iter()
            .any(|r| r.head.contains("/smuggled") || r.body.len() == 2000)
    );
    let ok = s
        .raw("api.openai.com")
        .send(b"POST /small HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 3\r\n\r\nabc");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// Row 17 (B-07): pipelined requests are each authorised and injected.
#[test]
fn row17_pipelined_requests_each_injected() {
    let s = Setup::new("auto");
    let mut c = s.raw("api.openai.com");
    c.tls.write_all(b"GET /p1 HTTP/1.1\r\nHost: api.openai.com\r\n\r\nGET /p2 HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer mine\r\n\r\n").unwrap();
    let (a, b) = (c.response(), c.response());
    assert!(a.contains("GET /p1") && b.contains("GET /p2"), "{a}\n{b}");
    let want = format!("Bearer {}", s.secret("OPENAI_KEY"));
    for r in s.origin.recorded() {
        assert_eq!(
            r.header("authorization"),
            std::slice::from_ref(&want),
            "{}",
            r.head
        );
    }
}

/// Row 18 (B-11): an upstream response with CL and TE is a 502; an over-long body never leaks
/// into the next exchange (the connection is not reused).
#[test]
fn row18_hostile_upstream_framing() {
    let s = Setup::new("auto");
    let r = s
        .raw("api.openai.com")
        .send(b"GET /hostile/clte HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 502") && r.contains("upstream_protocol_error"),
        "{r}"
    );
    let mut c = s.raw("api.openai.com");
    let r = c.send(b"GET /hostile/overlong HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("hello"), "{r}");
    let r = c.send(b"GET /after HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("GET /after") && !r.contains("EXTRA"),
        "{r}"
    );
    let recs = s.origin.recorded();
    let over = recs
        .iter()
        .find(|r| r.request_line().contains("overlong"))
        .unwrap();
    let after = recs
        .iter()
        .find(|r| r.request_line().contains("/after"))
        .unwrap();
    assert_ne!(
        over.conn, after.conn,
        "a connection with leftover bytes was reused"
    );
}

/// Row 27 (D-06): a request smuggled inside a CL+TE body is never executed.
#[test]
fn row27_smuggled_request_never_reaches_origin() {
    let s = Setup::new("auto");
    let smuggle = "GET /capture?c=CANARY HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";
    let raw = format!(
        "POST / HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggle}"
    );
    let r = s.raw("api.openai.com").send(raw.as_bytes());
    assert!(r.contains("bad_framing"), "{r}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !s.origin
            .recorded()
            .iter()
            .any(|r| r.head.contains("capture"))
    );
}

/// Rows 29-30 and 33 (E-01, E-04): loopback, mapped and unspecified destinations are refused
/// with `destination_blocked` and no connection; odd numeric spellings are not host names.
#[test]
fn row29_row30_row33_blocked_destinations() {
    let s = Setup::with("auto", &["--allow-private-ranges"], true, false);
    s.env.run(&["vault", "policy", "default", "tunnel"]).ok();
    s.settle();
    for target in [
        "169.254.169.254:443",
        "[::ffff:169.254.169.254]:443",
        "[::ffff:a9fe:a9fe]:80",
    ] {
        let (_, head) = connect(s.proxy.addr, target, Some(&auth(&s)));
        assert!(
            head.starts_with("HTTP/1.1 403") && head.contains("destination_blocked"),
            "{target}: {head}"
        );
    }
    for target in ["127.1:443", "2130706433:443", "0:443"] {
        let (_, head) = connect(s.proxy.addr, target, Some(&auth(&s)));
        assert!(
            head.starts_with("HTTP/1.1 400") && head.contains("bad_authority"),
            "{target}: {head}"
        );
    }
    let strict = Setup::with("auto", &[], true, false);
    strict
        .env
        .run(&["vault", "policy", "default", "tunnel"])
        .ok();
    strict.settle();
    for target in [
        "127.0.0.1:443",
        "[::1]:443",
        "[::]:443",
        "[::ffff:127.0.0.1]:443",
        "10.1.2.3:443",
    ] {
        let (_, head) = connect(strict.proxy.addr, target, Some(&auth(&strict)));
        assert!(
            head.starts_with("HTTP/1.1 403") && head.contains("destination_blocked"),
            "{target}: {head}"
        );
    }
    // A service whose name resolves (through --resolve) to loopback is blocked without an allow.
    let r = strict.curl(&["-i", "https://api.openai.com/"]);
    assert!(r.stdout.contains("destination_blocked"), "{r:?}");
    assert_eq!(
        strict
            .origin
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Row 35 (F-01): a slow head is cut at the header timeout; other clients are unaffected.
#[test]
fn row35_slowloris_cut_at_header_timeout() {
    let s = Setup::with("auto", &["--header-timeout", "1s"], true, true);
    let mut slow = TcpStream::connect(s.proxy.addr).unwrap();
    slow.write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: a")
        .unwrap();
    let start = Instant::now();
    s.curl(&["https://api.openai.com/meanwhile"]).ok();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the slow connection got an answer instead of a close");
    assert!(start.elapsed() < Duration::from_secs(4));
}

/// Row 36 (F-02): a stalled request body is cut by the idle timeout.
#[test]
fn row36_stalled_body_cut() {
    let s = Setup::with("auto", &["--idle-timeout", "1s"], true, true);
    let mut c = s.raw("api.openai.com");
    c.tls
        .write_all(b"POST /stall HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    c.tls.flush().unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let _ = c.tls.read(&mut buf);
    assert!(start.elapsed() < Duration::from_secs(5), "not cut");
    assert!(!s.origin.recorded().iter().any(|r| r.body.len() == 10));
}

/// Row 37 (F-03): past the connection cap new connections get 503 `overloaded` (and the operator
/// a warning, not one per connection); an open tunnel keeps working, and new connections work
/// again once others close.
#[test]
fn row37_connection_cap() {
    let s = Setup::with("auto", &["--max-connections", "3"], true, true);
    let mut tunnel = s.raw("api.openai.com");
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(s.proxy.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..6 {
        let (_, head) = connect(s.proxy.addr, "api.openai.com:443", Some(&auth(&s)));
        assert!(
            head.starts_with("HTTP/1.1 503") && head.contains("overloaded"),
            "{head}"
        );
    }
    // airlock is to blame: the operator hears of it in the service's log, once per worker
    // (not once per refused connection).
    let warned = s.proxy.stderr();
    let lines = warned
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("code=\"overloaded\""))
        .count();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!((1..=workers).contains(&lines), "{lines} lines:\n{warned}");
    let r = tunnel.send(b"GET /still-open HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    let (_, head) = connect(s.proxy.addr, "api.openai.com:443", Some(&auth(&s)));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Row 38 (F-04): a 64 KiB header or 200 headers get 431.
#[test]
fn row38_oversized_heads_get_431() {
    let s = Setup::new("auto");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: api.openai.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let mut c = s.raw("api.openai.com");
    c.tls.write_all(big.as_bytes()).unwrap();
    let r = c.response();
    assert!(
        r.starts_with("HTTP/1.1 431") && r.contains("headers_too_large"),
        "{r}"
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: api.openai.com\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = s.raw("api.openai.com").send(many.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    assert!(s.origin.recorded().is_empty());
}

/// Row 39 (F-05): minting leaves for many distinct hosts (wildcard service) is rate limited.
#[test]
fn row39_mint_flood_rate_limited() {
    let s = Setup::new("auto");
    let mut limited = 0;
    for i in 0..120 {
        let (_, head) = connect(
            s.proxy.addr,
            &format!("t{i}.atlassian.net:443"),
            Some(&auth(&s)),
        );
        if head.contains("rate_limited") {
            assert!(
                head.starts_with("HTTP/1.1 429") && head.contains("retry-after"),
                "{head}"
            );
            limited += 1;
        } else {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
    }
    assert!(limited > 0, "120 distinct hosts were all minted");
    // Configured (pre-warmed) hosts are never limited.
    let (_, head) = connect(s.proxy.addr, "api.openai.com:443", Some(&auth(&s)));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Row 42 (G-03): upstream certificates that do not verify give 502 `upstream_tls_error` and
/// no credential is sent: untrusted CA, wrong name, expired, or signed by airlock's own CA. The
/// answer and the operator's log name the reason (not a bare "io error").
#[test]
fn row42_upstream_certificate_failures() {
    // Untrusted: the origin's CA is not given to airlock.
    let s = Setup::with("auto", &[], false, true);
    let r = s
        .raw("api.openai.com")
        .send(b"GET / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 502") && r.contains("upstream_tls_error"),
        "{r}"
    );
    assert!(
        r.contains("unknown issuer") && r.contains("--upstream-ca-file"),
        "{r}"
    );
    tls_failure_logged(&s.proxy, "unknown issuer");
    assert!(s.origin.recorded().is_empty());
    // Signed by airlock's own MITM CA: still not trusted upstream.
    let s2 = Setup::new("auto");
    let own_ca = s2.env.data_dir.join("ca.pem");
    let env = Env::init();
    let (origin, proxy, token) = custom_origin(
        &env,
        false,
        &[("--upstream-ca-file", own_ca.to_str().unwrap())],
        &["api.openai.com"],
    );
    let r = raw_get(&env, &proxy, &token);
    assert!(
        r.contains("upstream_tls_error") && r.contains("unknown issuer"),
        "{r}"
    );
    assert!(origin.recorded().is_empty());
    // Wrong name: the origin's certificate is for another host.
    let env = Env::init();
    let (origin, proxy, token) = custom_origin(&env, false, &[], &["not-openai.example.com"]);
    let r = raw_get(&env, &proxy, &token);
    let named = "name mismatch: its certificate does not name api.openai.com";
    assert!(r.contains("upstream_tls_error") && r.contains(named), "{r}");
    tls_failure_logged(&proxy, named);
    assert!(origin.recorded().is_empty());
    // Expired.
    let env = Env::init();
    let (origin, proxy, token) = custom_origin(&env, true, &[], &["api.openai.com"]);
    let r = raw_get(&env, &proxy, &token);
    assert!(
        r.contains("upstream_tls_error") && r.contains("expired"),
        "{r}"
    );
    tls_failure_logged(&proxy, "expired");
    assert!(origin.recorded().is_empty());
}

/// Waits (up to 5 s) for serve's log to name a failed upstream handshake with `reason`.
#[track_caller]
fn tls_failure_logged(proxy: &Proxy, reason: &str) {
    let start = Instant::now();
    while !proxy
        .stderr()
        .lines()
        .any(|l| l.contains("upstream_tls_error") && l.contains(reason))
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no log line names {reason:?}: {}",
            proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An origin for api.openai.com with its own certificate options, and a proxy for it. Unless
/// `extra` names another, the origin's CA is trusted.
fn custom_origin(
    env: &Env,
    expired: bool,
    extra: &[(&str, &str)],
    cert_hosts: &[&str],
) -> (Origin, Proxy, String) {
    env.run_stdin(
        &["credential", "set", "OPENAI_KEY"],
        b"sk-must-not-leak-000",
    )
    .ok();
    env.set_services(SERVICES.split("  - name: anthropic").next().unwrap());
    let token = env.agent_token("bot", "default");
    let origin = Origin::https_with(env.tmp.path(), cert_hosts, expired);
    let mut args: Vec<String> = vec![
        "--network-allow".into(),
        "127.0.0.1/32".into(),
        "--resolve".into(),
        format!("api.openai.com:443:{}", origin.addr),
    ];
    if extra.is_empty() {
        args.extend([
            "--upstream-ca-file".into(),
            origin.ca_file.display().to_string(),
        ]);
    }
    for (k, v) in extra {
        args.extend([k.to_string(), v.to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start(env, &refs);
    (origin, proxy, token)
}

fn raw_get(env: &Env, proxy: &Proxy, token: &str) -> String {
    let ca = std::fs::read(env.data_dir.join("ca.pem")).unwrap();
    let mut c = RawClient::open(
        proxy.addr,
        "api.openai.com",
        "api.openai.com",
        &format!("{token}:default"),
        &ca,
    )
    .unwrap();
    c.send(b"GET / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
}

/// Policy `tunnel`: a revoked token closes the opaque tunnel within a second.
#[test]
fn tunnel_closes_within_a_second_of_revocation() {
    let s = Setup::new("auto");
    s.env.run(&["vault", "policy", "default", "tunnel"]).ok();
    s.settle();
    let (mut sock, head) = connect(s.proxy.addr, "other.example.net:443", Some(&auth(&s)));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.env.run(&["agent", "revoke", "bot"]).ok();
    let start = Instant::now();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 16];
    let n = sock.read(&mut buf).unwrap_or(99);
    assert_eq!(n, 0, "the tunnel was not closed");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

/// `serve` refuses a port another process listens on.
#[test]
fn serve_refuses_a_port_in_use() {
    let env = Env::init();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let r = output(
        env.command(&["serve", "--listen", &port, "--no-admin"]),
        None,
    );
    assert!(r.fails().contains("already in use"), "{r:?}");
}

/// Scoped tokens: bound to their vault, and refused once expired (407 `token_expired`).
#[test]
fn scoped_tokens_expire_and_stay_in_their_vault() {
    use airlock::vault::StoreError;
    use airlock::vault::tokens::TokenHash;
    let s = Setup::new("auto");
    s.env.run(&["vault", "create", "other"]).ok();
    let scoped = s
        .env
        .run(&["token", "mint", "--vault", "default", "--ttl", "5m"])
        .ok()
        .last_line()
        .to_owned();
    let (_, head) = connect(
        s.proxy.addr,
        "api.openai.com:443",
        Some(&format!("{scoped}:")),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, head) = connect(
        s.proxy.addr,
        "api.openai.com:443",
        Some(&format!("{scoped}:other")),
    );
    assert!(head.contains("vault_mismatch"), "{head}");
    let store = s.env.store();
    let hash = TokenHash::of(scoped.as_bytes());
    let mut rec = store.token_by_hash(hash).unwrap().unwrap();
    rec.expires_at = Some(airlock::vault::now() - 1);
    store
        .write::<_, StoreError>(|t| t.put(t.dbs().tokens, &hash.0, &rec))
        .unwrap();
    let (_, head) = connect(
        s.proxy.addr,
        "api.openai.com:443",
        Some(&format!("{scoped}:")),
    );
    assert!(
        head.starts_with("HTTP/1.1 407") && head.contains("token_expired"),
        "{head}"
    );
}

/// Row 21 (C-03): `Connection: Authorization, Host` cannot remove the injected header or Host.
#[test]
fn row21_connection_cannot_strip_injected_headers() {
    let s = Setup::new("auto");
    let r = s.raw("api.openai.com").send(b"GET /c HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Authorization, Host\r\nAuthorization: Bearer mine\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let rec = s.last();
    assert_eq!(
        rec.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    assert_eq!(rec.header("host"), ["api.openai.com"]);
}

/// Row 51 (H-07): failed authentications from one address turn into 429 past the limit; a
/// request with a valid token from the same address still goes through.
#[test]
fn row51_auth_failures_limited_but_valid_tokens_pass() {
    let s = Setup::with("auto", &["--metrics-listen", "127.0.0.1:0"], true, true);
    let bogus = format!("alk_agt_{}:default", "b".repeat(52));
    let mut limited = 0;
    for _ in 0..30 {
        let (_, head) = connect(s.proxy.addr, "api.openai.com:443", Some(&bogus));
        if head.starts_with("HTTP/1.1 429") {
            assert!(
                head.contains("retry-after") && head.contains("rate_limited"),
                "{head}"
            );
            limited += 1;
        } else {
            assert!(head.starts_with("HTTP/1.1 407"), "{head}");
        }
    }
    assert_eq!(limited, 10, "the first 20 failures are 407, the rest 429");
    let text = s.metrics();
    assert!(
        text.contains("airlock_rate_limited_total{limit=\"auth_failures\"} 10"),
        "{text}"
    );
    let (_, head) = connect(s.proxy.addr, "api.openai.com:443", Some(&auth(&s)));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "a valid token was refused: {head}"
    );
}

/// Row 51 on the agent API: bearer failures count towards the same per-address limit, and a
/// valid token still gets its answer.
#[test]
fn row51_agent_api_auth_failures_limited() {
    let s = Setup::new("auto");
    let status = |token: &str| {
        crate::support::http_codes(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("http://{}/v1/discover", s.proxy.addr),
        ])
    };
    let bogus = format!("alk_agt_{}", "c".repeat(52));
    let codes: Vec<String> = (0..25).map(|_| status(&bogus)).collect();
    assert!(codes[..20].iter().all(|c| c == "401"), "{codes:?}");
    assert!(codes[20..].iter().all(|c| c == "429"), "{codes:?}");
    assert_eq!(status(&s.token), "200", "a valid token was refused");
}

/// Per agent token: a request rate with a burst (429 `rate_limited` past it).
#[test]
fn per_agent_rate_limit() {
    let s = Setup::with(
        "auto",
        &[
            "--agent-requests-per-second",
            "2",
            "--agent-max-in-flight",
            "0",
        ],
        true,
        true,
    );
    let mut c = s.raw("api.openai.com");
    let mut answers = Vec::new();
    for i in 0..6 {
        let r = c.send(format!("GET /r{i} HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").as_bytes());
        let limited = r.starts_with("HTTP/1.1 429");
        answers.push(r);
        if limited {
            break;
        }
    }
    let last = answers.last().unwrap();
    assert!(
        last.starts_with("HTTP/1.1 429")
            && last.contains("rate_limited")
            && last.contains("retry-after"),
        "{answers:?}"
    );
    assert_eq!(answers.len(), 5, "a burst of 4, then 429: {answers:?}");
}

/// Row 41 (G-01): TLS 1.0 and 1.1 ClientHellos are refused by the MITM listener; TLS 1.2
/// and 1.3 work.
#[test]
fn row41_old_tls_versions_refused() {
    let s = Setup::new("auto");
    let s_client = |version: &str| {
        let mut c = std::process::Command::new("openssl");
        c.args([
            "s_client",
            "-proxy",
            &s.proxy.addr.to_string(),
            "-proxy_user",
            &s.token,
            "-proxy_pass",
            "pass:default",
        ]);
        c.args([
            "-connect",
            "api.openai.com:443",
            "-servername",
            "api.openai.com",
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ]);
        c.arg("-CAfile").arg(s.ca());
        output(c, Some(b"Q\n"))
    };
    for old in ["-tls1", "-tls1_1"] {
        let r = s_client(old);
        assert_ne!(r.code, 0, "{old} was accepted: {r:?}");
        assert!(
            r.stdout.contains("no peer certificate available")
                && r.stdout.contains("Cipher is (NONE)"),
            "{old}: {r:?}"
        );
        // rustls answers an old ClientHello with a handshake_failure alert (40).
        assert!(r.stderr.contains("alert handshake failure"), "{old}: {r:?}");
    }
    for ok in ["-tls1_2", "-tls1_3"] {
        let r = s_client(ok);
        assert_eq!(r.code, 0, "{ok}: {r:?}");
        assert!(
            r.stdout.contains("subject=CN = api.openai.com")
                && r.stdout.contains("Verify return code: 0 (ok)"),
            "{ok}: {r:?}"
        );
    }
}

/// Row 63 (J-04): `serve` is not dumpable (so other processes of its user cannot ptrace it or
/// read /proc/<pid>/mem, which the kernel then hands to root) and writes no core file.
#[test]
fn row63_serve_is_not_dumpable() {
    use std::os::unix::fs::MetadataExt;
    let serve = crate::support::ServeAsNobody::start(&["--no-admin"], &[]);
    // setpriv execs airlock, so the child's pid is serve's.
    let pid = serve.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{status}"
    );
    let mem_owner = std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    drop(serve);
    assert_eq!(
        mem_owner, 0,
        "/proc/<pid>/mem still belongs to the service user: the process is dumpable"
    );
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().nth(4) == Some("0") && core.split_whitespace().nth(5) == Some("0"),
        "{core}"
    );
}

/// Row 62 (J-02): an upstream that cannot be reached, for a URL whose query holds a
/// substituted secret: neither the query nor the secret appears in the response, the proxy's
/// log or the request log.
#[test]
fn row62_upstream_errors_leak_no_query_or_secret() {
    let env = Env::init();
    let secret = "sk-query-secret-6262";
    env.run_stdin(&["credential", "set", "Q_KEY"], secret.as_bytes())
        .ok();
    let yaml = "services:\n  - name: closed\n    host: api.closed.test\n    auth: {type: bearer, token: Q_KEY}\n    substitutions:\n      - {key: Q_KEY, placeholder: __q_key__, in: [query]}\n";
    env.set_services(yaml);
    let token = env.agent_token("bot", "default");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(
        &env,
        &[
            "--network-allow",
            "127.0.0.1/32",
            "--resolve",
            &format!("api.closed.test:443:{closed}"),
        ],
    );
    let mut c = std::process::Command::new("curl");
    c.args([
        "-sS",
        "-i",
        "--max-time",
        "20",
        "--proxy",
        &proxy.url(&token, "default"),
        "--cacert",
    ])
    .arg(env.data_dir.join("ca.pem"));
    c.arg("https://api.closed.test/v1/items?key=__q_key__&note=private-note-text");
    let r = output(c, None);
    assert!(r.stdout.contains("upstream_unreachable"), "{r:?}");
    env.log_row("default", |r| r["error"] == "upstream_unreachable");
    let logs = env.run(&["logs", "--json"]).ok();
    assert!(
        logs.stdout.contains("upstream_unreachable") && logs.stdout.contains("\"/v1/items\""),
        "{logs:?}"
    );
    for text in [&r.stdout, &r.stderr, &proxy.stderr(), &logs.stdout] {
        assert!(
            !text.contains(secret) && !text.contains("private-note-text"),
            "leaked: {text}"
        );
    }
}

/// Row 111: one agent cannot take every connection slot. Its tunnels are capped
/// (counted once its CONNECT authenticates, 429 past it), a vault's agents hold at most three
/// quarters of `max_connections` (503 past it), so an agent of another vault still gets in; a
/// tunnel that sends no request is closed soon; closed tunnels give their slots back.
#[test]
fn row111_one_agent_cannot_take_every_connection_slot() {
    let s = Setup::with(
        "auto",
        &[
            "--max-connections",
            "40",
            "--agent-max-connections",
            "20",
            "--header-timeout",
            "2s",
        ],
        true,
        true,
    );
    s.env.run(&["vault", "create", "v2"]).ok();
    let other = s.env.agent_token("other", "v2");
    let second = s.env.agent_token("second", "default");
    let ca = std::fs::read(s.ca()).unwrap();
    // An agent of another vault gets in (its vault has no service: 403, not 429 or 503).
    let other_gets_in = || {
        let auth = format!("{other}:v2");
        let (_, head) = connect(s.proxy.addr, "api.openai.com:443", Some(&auth));
        head.starts_with("HTTP/1.1 403") && head.contains("no_service")
    };
    let start = Instant::now();
    while !other_gets_in() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "vault v2 never served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let open = |token: &str, vault: &str| {
        RawClient::open(
            s.proxy.addr,
            "api.openai.com",
            "api.openai.com",
            &format!("{token}:{vault}"),
            &ca,
        )
    };
    let mut held: Vec<RawClient> = (0..20)
        .map(|_| open(&s.token, "default").unwrap())
        .collect();
    let refused = open(&s.token, "default").err().unwrap_or_default();
    assert!(
        refused.starts_with("HTTP/1.1 429") && refused.contains("rate_limited"),
        "{refused}"
    );
    // Another agent of the same vault: up to the vault's share (30 of 40), then 503.
    let mut second_held = Vec::new();
    let refused = loop {
        match open(&second, "default") {
            Ok(c) => second_held.push(c),
            Err(head) => break head,
        }
        assert!(
            second_held.len() <= 10,
            "the vault's share was not enforced"
        );
    };
    assert_eq!(second_held.len(), 10);
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("overloaded"),
        "{refused}"
    );
    // An agent of another vault still gets in (its vault has no service: 403, not 429 or 503).
    assert!(other_gets_in(), "another vault's agent was refused");
    // The held tunnels work; closing some gives their slots back.
    let r = held[0].send(b"GET /v1/still-works HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    held.truncate(10);
    second_held.clear();
    let mut idle = open(&s.token, "default").unwrap();
    // A tunnel that sends no request is closed once the first-request wait (here the 2 s
    // header timeout) passes.
    let start = Instant::now();
    idle.tls
        .sock
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = idle.tls.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the idle tunnel got bytes");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    // So is a keep-alive connection no CONNECT authenticated (here the agent API's), after its
    // request: it cannot hold a connection slot for the whole idle timeout.
    let mut api = TcpStream::connect(s.proxy.addr).unwrap();
    api.write_all(b"GET /healthz HTTP/1.1\r\nHost: airlock\r\n\r\n")
        .unwrap();
    api.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    api.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

/// The serve process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Row 112: memory returns after a burst. 10,000 tunnels (CONNECT, TLS, one
/// request each) opened and held at once, then closed: the resident memory of serve goes back
/// to within twice what it was before.
#[test]
fn row112_memory_returns_after_ten_thousand_tunnels() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    const TUNNELS: usize = 10_000;
    const THREADS: usize = 8;
    let mut nofile = getrlimit(Resource::Nofile);
    nofile.current = nofile.maximum;
    setrlimit(Resource::Nofile, nofile).unwrap();
    let s = Setup::with(
        "auto",
        &[
            "--max-connections",
            "14000",
            "--agent-max-connections",
            "0",
            "--agent-requests-per-second",
            "0",
        ],
        true,
        true,
    );
    let ca = std::fs::read(s.ca()).unwrap();
    let pid = s.proxy.pid();
    // Warm up: the first connections size the workers' pools once.
    for _ in 0..20 {
        let mut c = s.raw("api.openai.com");
        let r = c.send(b"GET /warm HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let before = rss_kib(pid);
    let auth = format!("{}:default", s.token);
    let started = Instant::now();
    let held: Vec<Vec<RawClient>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    (0..TUNNELS / THREADS)
                        .map(|_| {
                            let mut c = RawClient::open(
                                s.proxy.addr,
                                "api.openai.com",
                                "api.openai.com",
                                &auth,
                                &ca,
                            )
                            .unwrap();
                            let r = c.send(b"GET /t HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
                            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
                            c
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let peak = rss_kib(pid);
    let opened = held.iter().map(Vec::len).sum::<usize>();
    eprintln!(
        "{opened} tunnels in {:?}: serve RSS {before} KiB before, {peak} KiB at the peak",
        started.elapsed()
    );
    assert_eq!(opened, TUNNELS);
    drop(held);
    let start = Instant::now();
    loop {
        let now = rss_kib(pid);
        if now <= before * 2 {
            eprintln!("after closing: {now} KiB in {:?}", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "RSS stayed at {now} KiB (before {before} KiB, peak {peak} KiB)"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
