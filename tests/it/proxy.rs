//! The data plane end to end: real `airlock serve`, a real HTTPS origin through `--resolve`,
//! real clients (curl, Python, raw TLS). Every test checks what the origin received and that the
//! client never saw a credential. Row numbers refer to security.md's bad-input table.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::origin::Origin;
use crate::support::{Curl, Env, Proxy, RawClient, Run, canary, connect, output};

pub(crate) const SERVICES: &str = r#"
services:
  - name: openai
    host: api.openai.com
    auth: {type: bearer, token: OPENAI_KEY}
  - name: anthropic
    host: api.anthropic.com
    auth: {type: api-key, key: ANTHROPIC_KEY, header: x-api-key}
  - name: jira
    host: "*.atlassian.net"
    auth: {type: basic, username: JIRA_USER, password: JIRA_TOKEN}
  - name: acme
    host: api.acme.dev/v2/*
    auth: {type: custom, headers: {X-Tenant: "tenant-{{ ACME_KEY }}"}}
    substitutions:
      - {key: ACME_ACCOUNT, placeholder: __acme_account__, in: [path, query]}
      - {key: ACME_KEY, placeholder: __acme_key__, in: [header]}
  - name: acme-admin
    host: api.acme.dev/v2/admin/*
    auth: {type: bearer, token: ACME_ADMIN}
  - name: open
    host: public.example.org
    auth: {type: passthrough}
  - name: git
    host: git.example.net
    auth: {type: basic, username: GIT_USER, password: GIT_TOKEN}
"#;

pub(crate) const HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "team.atlassian.net",
    "api.acme.dev",
    "public.example.org",
    "other.example.net",
    "git.example.net",
];

/// A vault with the services above, an agent, an origin for every host and a running proxy.
pub(crate) struct Setup {
    pub env: Env,
    pub origin: Origin,
    pub proxy: Proxy,
    pub token: String,
    /// Credential key -> its canary value.
    pub secrets: Vec<(&'static str, String)>,
}

impl Setup {
    pub(crate) fn new(driver: &str) -> Self {
        Self::with(driver, &[], true, true)
    }

    /// `extra` flags for serve; see [`Proxy::for_origin`] for `trusted` and `loopback_allowed`.
    /// Driver `auto` means `$AIRLOCK_TEST_DRIVER` when set (tests/run.sh reruns with `epoll`).
    pub(crate) fn with(
        driver: &str,
        extra: &[&str],
        trusted: bool,
        loopback_allowed: bool,
    ) -> Self {
        Self::build(
            driver,
            extra,
            trusted,
            loopback_allowed,
            Duration::from_secs(30),
        )
    }

    /// As [`Setup::with`] (trusted, loopback allowed), with an origin that closes connections
    /// idle for `idle`.
    pub(crate) fn with_idle_origin(extra: &[&str], idle: Duration) -> Self {
        Self::build("auto", extra, true, true, idle)
    }

    fn build(
        driver: &str,
        extra: &[&str],
        trusted: bool,
        loopback_allowed: bool,
        idle: Duration,
    ) -> Self {
        let chosen = std::env::var("AIRLOCK_TEST_DRIVER")
            .ok()
            .filter(|_| driver == "auto");
        let driver = chosen.as_deref().unwrap_or(driver);
        let env = Env::init();
        let base = canary();
        let secrets: Vec<(&'static str, String)> = [
            "OPENAI_KEY",
            "ANTHROPIC_KEY",
            "JIRA_USER",
            "JIRA_TOKEN",
            "ACME_KEY",
            "ACME_ACCOUNT",
            "ACME_ADMIN",
            "GIT_USER",
            "GIT_TOKEN",
        ]
        .into_iter()
        .map(|k| (k, format!("{base}-{}", k.to_ascii_lowercase())))
        .collect();
        for (k, v) in &secrets {
            env.run_stdin(&["credential", "set", k], v.as_bytes()).ok();
        }
        env.set_services(SERVICES);
        let token = env.agent_token("bot", "default");
        let origin = Origin::https_idle(env.tmp.path(), HOSTS, idle);
        let proxy = Proxy::for_origin(
            &env,
            &origin,
            HOSTS,
            driver,
            extra,
            trusted,
            loopback_allowed,
        );
        Self {
            env,
            origin,
            proxy,
            token,
            secrets,
        }
    }

    /// Waits until the running proxy serves the vault as it is now (its `/healthz` generation
    /// reaches the store's), instead of sleeping for a reload.
    #[track_caller]
    pub(crate) fn settle(&self) {
        crate::support::api::wait_generation(self.proxy.addr, self.env.generation());
    }

    /// The data plane's `/metrics` text (serve must run with `--metrics-listen`).
    pub(crate) fn metrics(&self) -> String {
        let addr = self.proxy.metrics.as_ref().expect("--metrics-listen");
        Curl::direct()
            .arg(format!("http://{addr}/metrics"))
            .run()
            .ok()
            .stdout
    }

    pub(crate) fn secret(&self, key: &str) -> &str {
        &self.secrets.iter().find(|(k, _)| *k == key).unwrap().1
    }

    pub(crate) fn ca(&self) -> std::path::PathBuf {
        self.env.data_dir.join("ca.pem")
    }

    pub(crate) fn curl(&self, args: &[&str]) -> Run {
        self.curl_as(&self.token, Curl::new(), args)
    }

    /// curl through the proxy as the holder of `token`, starting from `curl` (its flags), every
    /// secret of the vault checked absent from what it printed.
    pub(crate) fn curl_as(&self, token: &str, curl: Curl, args: &[&str]) -> Run {
        let url = self.proxy.url(token, "default");
        let run = curl.through(&url, &self.ca()).args(args).run();
        self.assert_no_secret(&run.stdout);
        self.assert_no_secret(&run.stderr);
        run
    }

    pub(crate) fn raw(&self, host: &str) -> RawClient {
        let ca = std::fs::read(self.ca()).unwrap();
        RawClient::open(
            self.proxy.addr,
            host,
            host,
            &format!("{}:default", self.token),
            &ca,
        )
        .unwrap()
    }

    #[track_caller]
    pub(crate) fn assert_no_secret(&self, text: &str) {
        for (k, v) in &self.secrets {
            assert!(!text.contains(v.as_str()), "{k} reached the client: {text}");
        }
    }

    pub(crate) fn last(&self) -> crate::support::origin::Recorded {
        self.origin
            .recorded()
            .last()
            .cloned()
            .expect("the origin received no request")
    }
}

fn injects_every_auth_type(driver: &str) {
    let s = Setup::new(driver);
    // bearer; the agent's own Authorization (a placeholder) is replaced, exactly once (row 20).
    let r = s
        .curl(&[
            "-H",
            "Authorization: Bearer placeholder",
            "-H",
            "authorization: Bearer twice",
            "https://api.openai.com/v1/models",
        ])
        .ok();
    assert!(r.stdout.contains("GET /v1/models HTTP/1.1"), "{r:?}");
    let rec = s.last();
    assert_eq!(
        rec.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    assert_eq!(rec.header("host"), ["api.openai.com"]);
    assert_eq!(
        rec.sni.as_deref(),
        Some("api.openai.com"),
        "row 43: upstream SNI is the CONNECT host"
    );
    assert!(rec.header("proxy-authorization").is_empty());
    // api-key; a client Authorization on a credentialed service is dropped.
    s.curl(&[
        "-H",
        "x-api-key: __anthropic__",
        "-H",
        "Authorization: Bearer sk-placeholder",
        "https://api.anthropic.com/v1/messages",
        "-d",
        "{}",
    ])
    .ok();
    let rec = s.last();
    assert_eq!(rec.header("x-api-key"), [s.secret("ANTHROPIC_KEY")]);
    assert!(rec.header("authorization").is_empty(), "{}", rec.head);
    assert_eq!(rec.body, b"{}");
    // basic on a wildcard host.
    s.curl(&["https://team.atlassian.net/rest/api/2/myself"])
        .ok();
    let pair = format!("{}:{}", s.secret("JIRA_USER"), s.secret("JIRA_TOKEN"));
    assert_eq!(
        s.last().header("authorization"),
        [format!(
            "Basic {}",
            data_encoding::BASE64.encode(pair.as_bytes())
        )]
    );
    // custom header template and substitution in path and query.
    // The origin echoes the request line: row 25, the echo reaches the client masked.
    let echoed = s
        .curl(&["https://api.acme.dev/v2/__acme_account__/items?acct=__acme_account__"])
        .ok();
    let mask = "*".repeat(s.secret("ACME_ACCOUNT").len());
    assert!(
        echoed
            .stdout
            .contains(&format!("GET /v2/{mask}/items?acct={mask} HTTP/1.1")),
        "{echoed:?}"
    );
    let rec = s.last();
    let account = s.secret("ACME_ACCOUNT");
    assert_eq!(
        rec.request_line(),
        format!("GET /v2/{account}/items?acct={account} HTTP/1.1")
    );
    assert_eq!(
        rec.header("x-tenant"),
        [format!("tenant-{}", s.secret("ACME_KEY"))]
    );
    // substitution in a header, where declared.
    s.curl(&[
        "-H",
        "X-Signed: key=__acme_key__;v=1",
        "https://api.acme.dev/v2/h",
    ])
    .ok();
    assert_eq!(
        s.last().header("x-signed"),
        [format!("key={};v=1", s.secret("ACME_KEY"))]
    );
    // priority: the longer path prefix wins.
    s.curl(&["https://api.acme.dev/v2/admin/users"]).ok();
    assert_eq!(
        s.last().header("authorization"),
        [format!("Bearer {}", s.secret("ACME_ADMIN"))]
    );
    // passthrough injects nothing and keeps the client's header.
    s.curl(&[
        "-H",
        "Authorization: Bearer mine",
        "https://public.example.org/",
    ])
    .ok();
    assert_eq!(s.last().header("authorization"), ["Bearer mine"]);
}

#[test]
fn curl_injects_every_auth_type_io_uring() {
    injects_every_auth_type("io-uring");
}

#[test]
fn curl_injects_every_auth_type_epoll() {
    injects_every_auth_type("epoll");
}

/// Flow 1 and row 28: an unmatched host is refused at CONNECT with the proposal hint.
#[test]
fn row28_unmatched_host_gets_403_no_service_at_connect() {
    let s = Setup::new("auto");
    let (mut sock, head) = connect(
        s.proxy.addr,
        "api.unknown-vendor.com:443",
        Some(&format!("{}:default", s.token)),
    );
    let expected = format!(
        "HTTP/1.1 403 no_service: propose access at http://{}/v1/proposals\r\n",
        s.proxy.addr
    );
    assert!(head.starts_with(&expected), "{head}");
    assert!(head.contains("x-airlock-error: no_service\r\n"), "{head}");
    let mut body = String::new();
    let _ = sock.read_to_string(&mut body);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "no_service");
    assert!(v["hint"].as_str().unwrap().contains("/v1/proposals"));
    let r = s.curl(&["https://api.unknown-vendor.com/"]);
    assert_ne!(r.code, 0);
    assert!(s.origin.recorded().is_empty());
}

#[test]
fn proxy_auth_errors_are_407_with_codes() {
    let s = Setup::new("auto");
    let (_, head) = connect(s.proxy.addr, "api.openai.com:443", None);
    assert!(
        head.starts_with("HTTP/1.1 407")
            && head.contains("x-airlock-error: proxy_auth_required")
            && head.contains("proxy-authenticate: Basic"),
        "{head}"
    );
    let bogus = format!("alk_agt_{}:default", "a".repeat(52));
    let (_, head) = connect(s.proxy.addr, "api.openai.com:443", Some(&bogus));
    assert!(head.contains("x-airlock-error: invalid_token"), "{head}");
    let (_, head) = connect(
        s.proxy.addr,
        "api.openai.com:443",
        Some(&format!("{}:nope", s.token)),
    );
    assert!(head.contains("x-airlock-error: vault_mismatch"), "{head}");
    assert!(s.origin.recorded().is_empty());
}

/// Row 52 (H-08): a token revoked while its tunnel is open fails on the next request.
#[test]
fn row52_revoked_token_fails_inside_open_tunnel() {
    let s = Setup::new("auto");
    let mut c = s.raw("api.openai.com");
    let ok = c.send(b"GET /one HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    s.env.run(&["agent", "revoke", "bot"]).ok();
    let refused = c.send(b"GET /two HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(
        refused.starts_with("HTTP/1.1 407") && refused.contains("token_revoked"),
        "{refused}"
    );
    assert_eq!(s.origin.recorded().len(), 1);
    // The refusal inside the tunnel is a request-log row like any other request.
    let row = s.env.log_row("default", |r| r["path"] == "/two");
    assert_eq!(
        (row["status"].as_u64(), row["error"].as_str()),
        (Some(407), Some("token_revoked")),
        "{row}"
    );
}

/// The request log records each request (path without query, status, service, agent) and
/// never a secret (J-01).
#[test]
fn request_log_records_requests_without_secrets() {
    let s = Setup::new("auto");
    s.curl(&[
        "https://api.acme.dev/v2/__acme_account__/items?acct=__acme_account__&q=private-query",
    ])
    .ok();
    s.curl(&["https://api.unknown-vendor.com/"]);
    let rows = s.env.log_rows("default", 2);
    let r = s.env.run(&["logs", "--vault", "default", "--json"]).ok();
    let ok = rows
        .iter()
        .find(|r| r["host"] == "api.acme.dev")
        .expect("logged");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["service"], "acme");
    assert_eq!(ok["agent"], "bot");
    assert_eq!(ok["path"], "/v2/__acme_account__/items");
    let denied = rows
        .iter()
        .find(|r| r["host"] == "api.unknown-vendor.com")
        .expect("denial logged");
    assert_eq!(denied["error"], "no_service");
    assert_eq!(denied["status"], 403);
    assert!(!r.stdout.contains("private-query"));
    s.assert_no_secret(&r.stdout);
    for (path, bytes) in crate::support::files(&s.env.data_dir) {
        for (k, v) in &s.secrets {
            assert!(
                !crate::support::contains(&bytes, v.as_bytes()),
                "{k} found in {}",
                path.display()
            );
        }
    }
    let table = s.env.run(&["logs"]).ok();
    assert!(
        table.stdout.contains("api.acme.dev") && table.stdout.contains("acme"),
        "{table:?}"
    );
}

/// Rows 1, 2 and 4 (A-01, A-02): one authority; the origin receives nothing.
#[test]
fn row1_row2_row4_host_binding() {
    let s = Setup::new("auto");
    for (raw, status, code) in [
        (
            "GET / HTTP/1.1\r\nHost: evil.example.com\r\n\r\n",
            "421",
            "host_mismatch",
        ),
        (
            "GET https://evil.example.com/ HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
            "421",
            "host_mismatch",
        ),
        ("GET / HTTP/1.1\r\n\r\n", "400", "bad_host"),
        (
            "GET / HTTP/1.1\r\nHost: api.openai.com\r\nHost: api.openai.com\r\n\r\n",
            "400",
            "bad_host",
        ),
    ] {
        let resp = s.raw("api.openai.com").send(raw.as_bytes());
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")) && resp.contains(code),
            "{raw:?} -> {resp}"
        );
    }
    let ok = s
        .raw("api.openai.com")
        .send(b"GET https://api.openai.com/abs HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(s.origin.recorded().len(), 1);
}

/// Row 3 (A-03): an SNI that names another host fails the handshake.
#[test]
fn row3_sni_mismatch_fails_handshake() {
    let s = Setup::new("auto");
    let ca = std::fs::read(s.ca()).unwrap();
    let r = RawClient::open(
        s.proxy.addr,
        "api.openai.com",
        "evil.example.com",
        &format!("{}:default", s.token),
        &ca,
    );
    assert!(r.is_err());
    assert!(s.origin.recorded().is_empty());
}

/// Rows 9-14 (B-01..B-06) and 7, 26: refused with a code; the origin receives nothing.
#[test]
fn framing_path_and_substitution_attacks_refused() {
    let s = Setup::new("auto");
    let cases: [(&str, &str, &str); 8] = [
        (
            "api.openai.com",
            "POST / HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "bad_framing",
        ),
        (
            "api.openai.com",
            "POST / HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "bad_framing",
        ),
        (
            "api.openai.com",
            "POST / HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 1,2\r\n\r\n",
            "bad_framing",
        ),
        (
            "api.openai.com",
            "GET / HTTP/1.1\r\nHost: api.openai.com\r\nX: a\r\n b\r\n\r\n",
            "bad_header",
        ),
        (
            "api.openai.com",
            "GET / HTTP/1.1\nHost: api.openai.com\r\n\r\n",
            "bad_header",
        ),
        (
            "api.openai.com",
            "POST / HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
            "bad_framing",
        ),
        (
            "api.acme.dev",
            "GET /v2/../admin/x HTTP/1.1\r\nHost: api.acme.dev\r\n\r\n",
            "bad_path",
        ),
        (
            "api.acme.dev",
            "GET /v2/x HTTP/1.1\r\nHost: api.acme.dev\r\nX-Leak: __acme_account__\r\n\r\n",
            "substitution_field_denied",
        ),
    ];
    for (host, raw, code) in cases {
        let resp = s.raw(host).send(raw.as_bytes());
        assert!(
            resp.contains(&format!("x-airlock-error: {code}")),
            "{raw:?} -> {resp}"
        );
    }
    // The chunked body with a bad size was refused after the head went upstream? It must not:
    // nothing at all reached the origin.
    let seen: Vec<_> = s
        .origin
        .recorded()
        .into_iter()
        .filter(|r| !r.head.starts_with("POST"))
        .collect();
    assert!(seen.is_empty(), "{seen:?}");
}

/// Row 24 (D-01): redirects are returned as they are; one upstream request.
#[test]
fn row24_redirect_returned_unchanged() {
    let s = Setup::new("auto");
    let r = s.curl(&["-i", "https://api.openai.com/redirect"]).ok();
    // curl -i prints the proxy's CONNECT answer first, then the origin's response.
    assert!(r.stdout.contains("\r\n\r\nHTTP/1.1 302 Found\r\n"), "{r:?}");
    assert!(
        r.stdout
            .contains("location: https://elsewhere.example.net/steal")
    );
    assert_eq!(s.origin.recorded().len(), 1);
}

/// WebSocket: the handshake gets the credential injected, then frames flow both ways.
#[test]
fn websocket_upgrade_with_injected_handshake() {
    let s = Setup::new("auto");
    let mut c = s.raw("api.openai.com");
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let head = c.send(format!("GET /ws HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer placeholder\r\n\r\n").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert!(
        head.contains(&crate::support::origin::ws_accept(key)),
        "{head}"
    );
    let rec = s.last();
    assert_eq!(
        rec.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    assert_eq!(rec.header("upgrade"), ["websocket"]);
    for msg in [&b"frame-one"[..], b"frame-two"] {
        // A masked client text frame; the origin echoes it unmasked.
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | msg.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(msg.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        c.tls.write_all(&frame).unwrap();
        c.tls.flush().unwrap();
        let mut buf = vec![0u8; msg.len() + 2];
        c.tls.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..2], &[0x81, msg.len() as u8]);
        assert_eq!(&buf[2..], msg);
    }
}

/// Rows 22-23 (C-04, C-05): `Upgrade: h2c` is dropped, and an upgrade answered without 101
/// stays HTTP (the next bytes are parsed as a request, not piped).
#[test]
fn row22_row23_other_upgrades_and_refused_upgrades_stay_http() {
    let s = Setup::new("auto");
    let mut c = s.raw("api.openai.com");
    let r = c.send(b"GET /h2c HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let rec = s.last();
    assert!(
        rec.header("upgrade").is_empty() && rec.header("http2-settings").is_empty(),
        "{}",
        rec.head
    );
    let r = c.send(b"GET /not-ws HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let next = c.send(b"GET /after HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    assert!(
        next.starts_with("HTTP/1.1 200") && next.contains("GET /after"),
        "{next}"
    );
}

/// Server-sent events reach the client one by one, with the origin's spacing (no batching).
#[test]
fn sse_events_arrive_as_they_are_produced() {
    let s = Setup::new("auto");
    let mut c = s.raw("api.openai.com");
    c.tls
        .write_all(b"GET /sse?n=5&ms=300 HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while arrivals.len() < 5 && start.elapsed() < Duration::from_secs(10) {
        let n = c.tls.read(&mut buf).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        while arrivals.len() < seen.matches("data: event").count() {
            arrivals.push(start.elapsed());
        }
    }
    assert_eq!(arrivals.len(), 5, "{seen}");
    // Five events 300 ms apart: the last arrives at least ~1.2 s after the first.
    let spread = arrivals[4] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(1000),
        "events were batched: {arrivals:?}"
    );
}

/// SIGTERM: the in-flight stream finishes, new requests are not taken, the process exits 0.
#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let mut s = Setup::new("auto");
    let mut c = s.raw("api.openai.com");
    c.tls
        .write_all(b"GET /sse?n=5&ms=300 HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &s.proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("0\r\n\r\n") {
        match c.tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert_eq!(
        seen.matches("data: event").count(),
        5,
        "the stream was cut: {seen}"
    );
    assert_eq!(
        s.proxy.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        s.proxy.stderr()
    );
    assert!(s.proxy.stderr().contains("shutting down"));
}

/// Keep-alive on both legs: two requests in one curl run share one upstream connection.
#[test]
fn keepalive_reuses_the_upstream_connection() {
    let s = Setup::new("auto");
    s.curl(&[
        "https://api.openai.com/a",
        "https://api.openai.com/b",
        "https://api.openai.com/c",
    ])
    .ok();
    let recs = s.origin.recorded();
    assert_eq!(recs.len(), 3);
    assert!(
        recs.iter().all(|r| r.conn == recs[0].conn),
        "{:?}",
        recs.iter().map(|r| r.conn).collect::<Vec<_>>()
    );
    assert_eq!(
        s.origin
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// R5: a service that names `http://` is the only way to inject over plaintext.
#[test]
fn plain_http_service_injects_when_named() {
    let env = Env::init();
    let secret = canary();
    env.run_stdin(&["credential", "set", "METRICS_KEY"], secret.as_bytes())
        .ok();
    env.set_services("services:\n  - name: metrics\n    host: http://metrics.example.internal:8080\n    auth: {type: bearer, token: METRICS_KEY}\n");
    let token = env.agent_token("bot", "default");
    let origin = Origin::http(env.tmp.path());
    let resolve = format!("metrics.example.internal:8080:{}", origin.addr);
    let proxy = Proxy::start(
        &env,
        &["--network-allow", "127.0.0.1/32", "--resolve", &resolve],
    );
    let r = Curl::new()
        .args(["--proxy", &proxy.url(&token, "")])
        .arg("http://metrics.example.internal:8080/m?x=1")
        .run()
        .ok();
    assert!(r.stdout.contains("GET /m?x=1 HTTP/1.1"), "{r:?}");
    assert!(!r.stdout.contains(&secret));
    let rec = origin.recorded().pop().unwrap();
    assert_eq!(rec.header("authorization"), [format!("Bearer {secret}")]);
    assert!(rec.header("proxy-authorization").is_empty());
}

/// 64 MiB down (chunked) and up (chunked) stream through with bounded proxy memory.
#[test]
fn large_bodies_stream_with_bounded_memory() {
    let s = Setup::new("auto");
    let n = 64 * 1024 * 1024;
    let r = s
        .curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("https://api.openai.com/chunked?n={n}"),
        ])
        .ok();
    assert_eq!(r.stdout.trim(), n.to_string());
    let upload = s.env.path("upload.bin");
    std::fs::write(&upload, vec![b'u'; n]).unwrap();
    let r = s
        .curl(&[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", upload.display()),
            "https://api.openai.com/upload",
        ])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["body_len"], n);
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.proxy.pid())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    assert!(
        hwm_kib < 64 * 1024,
        "peak RSS {hwm_kib} KiB: bodies were buffered"
    );
}

/// Leaves for configured hosts are minted at start, said in one line (with the first hosts and
/// the count), not one per host; the first request mints nothing.
#[test]
fn configured_hosts_are_prewarmed() {
    let s = Setup::new("auto");
    let before = s.proxy.stderr();
    let lines: Vec<&str> = before
        .lines()
        .filter(|l| l.contains("pre-warmed leaf certificates"))
        .collect();
    assert_eq!(lines.len(), 1, "{before}");
    assert!(
        lines[0].contains("api.openai.com") && lines[0].contains("count="),
        "{before}"
    );
    s.curl(&["https://api.openai.com/first"]).ok();
    // A negative check: give serve's log a moment to reach the reader.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !s.proxy.stderr().contains("minted a leaf on demand"),
        "{}",
        s.proxy.stderr()
    );
}

/// R5: a TLS-only service is never served over plaintext.
#[test]
fn plaintext_to_a_tls_service_is_refused() {
    let s = Setup::new("auto");
    let r = s.curl(&["-i", "http://api.openai.com/v1/models"]);
    assert!(
        r.stdout.starts_with("HTTP/1.1 403") && r.stdout.contains("plaintext_refused"),
        "{r:?}"
    );
    assert!(s.origin.recorded().is_empty());
}

/// Vault policy `tunnel`: unmatched hosts are spliced opaquely (the origin's own certificate,
/// nothing injected).
#[test]
fn tunnel_policy_splices_without_injection() {
    let s = Setup::new("auto");
    s.env.run(&["vault", "policy", "default", "tunnel"]).ok();
    s.settle();
    let r = Curl::via(&s.proxy.url(&s.token, "default"), &s.origin.ca_file)
        .bearer("mine")
        .arg("https://other.example.net/x")
        .run()
        .ok();
    assert!(r.stdout.contains("GET /x HTTP/1.1"), "{r:?}");
    assert_eq!(s.last().header("authorization"), ["Bearer mine"]);
}

/// Python `requests` and `httpx` through the proxy, trusting airlock's CA.
#[test]
fn python_requests_and_httpx() {
    let s = Setup::new("auto");
    let script = r#"
import json, sys, requests, httpx
proxy, ca = sys.argv[1], sys.argv[2]
r = requests.get("https://api.openai.com/v1/py-requests", proxies={"https": proxy}, verify=ca,
                 headers={"Authorization": "Bearer __placeholder__"})
assert r.status_code == 200, r.status_code
with httpx.Client(proxy=proxy, verify=ca) as c:
    r2 = c.post("https://api.anthropic.com/v1/messages", json={"hello": "world"})
assert r2.status_code == 200, r2.status_code
print(json.dumps([r.json(), r2.json()]))
"#;
    let mut c = std::process::Command::new("python3");
    c.arg("-c")
        .arg(script)
        .arg(s.proxy.url(&s.token, "default"))
        .arg(s.ca());
    let r = output(c, None).ok();
    s.assert_no_secret(&r.stdout);
    let recs = s.origin.recorded();
    let req = recs
        .iter()
        .find(|r| r.request_line().contains("py-requests"))
        .unwrap();
    assert_eq!(
        req.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    let hx = recs
        .iter()
        .find(|r| r.request_line().starts_with("POST /v1/messages"))
        .unwrap();
    assert_eq!(hx.header("x-api-key"), [s.secret("ANTHROPIC_KEY")]);
    let sent: serde_json::Value = serde_json::from_slice(&hx.body).unwrap();
    assert_eq!(sent, serde_json::json!({"hello": "world"}));
}

/// Node's `https` module through an HTTP CONNECT tunnel.
#[test]
fn node_https_through_connect() {
    let s = Setup::new("auto");
    let script = r#"
const http = require('http'), https = require('https'), tls = require('tls'), fs = require('fs');
const [proxyHost, proxyPort, auth, ca] = process.argv.slice(1);
const req = http.request({host: proxyHost, port: +proxyPort, method: 'CONNECT', path: 'api.openai.com:443',
  headers: {'Proxy-Authorization': 'Basic ' + Buffer.from(auth).toString('base64')}});
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) { console.error('CONNECT', res.statusCode); process.exit(1); }
  const r = https.request({host: 'api.openai.com', port: 443, path: '/v1/node', method: 'GET', ca: fs.readFileSync(ca),
    createConnection: () => tls.connect({socket, servername: 'api.openai.com', ca: fs.readFileSync(ca)})}, (resp) => {
    let body = ''; resp.on('data', d => body += d); resp.on('end', () => { console.log(resp.statusCode, body); process.exit(0); });
  });
  r.end();
});
req.end();
"#;
    let mut c = std::process::Command::new("node");
    c.arg("-e")
        .arg(script)
        .arg(s.proxy.addr.ip().to_string())
        .arg(s.proxy.addr.port().to_string())
        .arg(format!("{}:default", s.token))
        .arg(s.ca());
    let r = output(c, None).ok();
    assert!(r.stdout.starts_with("200"), "{r:?}");
    s.assert_no_secret(&r.stdout);
    let rec = s
        .origin
        .recorded()
        .into_iter()
        .find(|r| r.request_line().contains("/v1/node"))
        .unwrap();
    assert_eq!(
        rec.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
}

/// Prometheus metrics on --metrics-listen: the request is counted by vault, service and
/// status class; no path, query or secret appears.
#[test]
fn metrics_count_requests() {
    let s = Setup::with("auto", &["--metrics-listen", "127.0.0.1:0"], true, true);
    s.curl(&["https://api.openai.com/v1/metrics-probe?q=hidden-query"])
        .ok();
    s.curl(&["https://api.unknown-vendor.com/"]);
    // The metrics count a row as the request log's writer takes it, before it is written.
    s.env.log_rows("default", 2);
    let held = s.raw("api.openai.com");
    let text = s.metrics();
    drop(held);
    assert!(text.contains("airlock_requests_total{vault=\"default\",service=\"openai\",class=\"2xx\",error=\"\"} 1"), "{text}");
    assert!(text.contains("error=\"no_service\"} 1"), "{text}");
    assert!(
        text.contains("airlock_request_duration_seconds_count 2"),
        "{text}"
    );
    assert!(text.contains("airlock_leaf_mints_total"), "{text}");
    // Two CONNECTs to a pre-warmed host: two cache hits; one upstream connection, dialled.
    assert!(text.contains("airlock_leaf_cache_hits_total 2"), "{text}");
    assert!(
        text.contains("airlock_upstream_connections_total{reused=\"false\"} 1")
            && text.contains("airlock_upstream_connections_total{reused=\"true\"} 0"),
        "{text}"
    );
    assert!(text.contains("airlock_open_tunnels 1"), "{text}");
    assert!(
        text.contains("airlock_rate_limited_total{limit=\"agent\"} 0"),
        "{text}"
    );
    assert!(!text.contains("metrics-probe") && !text.contains("hidden-query"));
    s.assert_no_secret(&text);
}
