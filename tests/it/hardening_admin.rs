//! Hardening round 2 on the approval side (rows 66 to 72 of tests/SECURITY-TESTS.md): proposals
//! that re-point stored credentials, hostile agent text, internal hosts, the JSON API behind a
//! bridge, login throttling, sessions and the setup link.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::admin::{Browser, PASSWORD, admin_pid, api_socket, with_admin};
use crate::proposals::api;
use crate::proxy::Setup;
use crate::support::output;

/// One request over a fresh TCP connection to the admin listener; (status, whole response).
fn http(addr: &str, req: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A login form's session: (cookie, CSRF token).
fn login_form(addr: &str) -> (String, String) {
    let (code, text) = http(
        addr,
        &format!("GET /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(code, 200, "{text}");
    let cookie = text
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let at = text.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = text[at..].split('"').next().unwrap().to_owned();
    (cookie, csrf)
}

fn post_login(addr: &str, (cookie, csrf): &(String, String), name: &str, password: &str) -> u16 {
    let body = format!("csrf={csrf}&name={name}&password={password}");
    http(
        addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: {cookie}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .0
}

fn propose(s: &Setup, body: Value) -> (u16, Value) {
    api(s, "POST", "/v1/proposals", &s.token, Some(&body))
}

/// Row 66: a proposal that re-points the `openai` service, and its
/// stored OPENAI_KEY, at the agent's host is shown as a replacement with the reuse called out, and
/// is not approved without an explicit confirmation on the CLI, the JSON API or the UI.
#[test]
fn row66_repointing_a_stored_credential_is_shown_and_needs_confirmation() {
    let s = with_admin();
    let (code, p) = propose(
        &s,
        json!({"services": [{"action": "set", "name": "openai", "host": "attacker.example",
                             "auth": {"type": "bearer", "token": "OPENAI_KEY"}}],
               "credentials": [{"key": "ANTHROPIC_KEY", "value": "sk-agent-chosen-value"}],
               "user_message": "Routine refresh of the openai service definition."}),
    );
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_u64().unwrap().to_string();
    let warning = "OPENAI_KEY is already stored and will also be sent to attacker.example";
    // CLI: the diff, the warning, the replaced value.
    let shown = s.env.run(&["proposal", "show", &id]).ok().stdout;
    assert!(shown.contains(&format!("WARNING: {warning}")), "{shown}");
    assert!(
        shown.contains("REPLACES service openai")
            && shown.contains("was: api.openai.com · bearer · Authorization: Bearer <OPENAI_KEY>")
            && shown.contains("now: attacker.example · bearer"),
        "{shown}"
    );
    assert!(
        shown.contains("credential ANTHROPIC_KEY: value supplied by the agent (sealed) (REPLACES the stored value)"),
        "{shown}"
    );
    let refused = s.env.run(&["proposal", "approve", &id]);
    assert!(
        refused.fails().contains("--allow-credential-reuse"),
        "{refused:?}"
    );
    // JSON API: the review names the reuse; approval without the flag is refused.
    let (code, v) = api_socket(&s, "GET", &format!("/api/proposals/{id}"), None, &[]);
    assert_eq!(code, 200);
    assert_eq!(
        v["review"]["credential_reuse"][0]["key"], "OPENAI_KEY",
        "{v}"
    );
    assert_eq!(v["review"]["services"][0]["change"], "replace", "{v}");
    assert_eq!(
        v["review"]["services"][0]["old"]["host"], "api.openai.com",
        "{v}"
    );
    let digest = v["digest"].as_str().unwrap().to_owned();
    let (code, v) = api_socket(
        &s,
        "POST",
        &format!("/api/proposals/{id}/approve"),
        Some(json!({"digest": digest})),
        &[],
    );
    assert_eq!(
        (code, v["error"].as_str()),
        (409, Some("credential_reuse_unconfirmed")),
        "{v}"
    );
    // UI: the warning and a required confirmation box; a post without it is refused.
    let b = Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    let (_, page) = b.req("GET", &format!("/proposals/{id}"), &[], &[]);
    assert!(page.contains(warning), "{page}");
    assert!(page.contains("name=\"allow_credential_reuse\""), "{page}");
    assert!(page.contains("Replaces service"), "{page}");
    let csrf = b.csrf(&format!("/proposals/{id}"));
    let form = [("csrf", csrf.as_str()), ("digest", digest.as_str())];
    let (code, _) = b.req(
        "POST",
        &format!("/proposals/{id}/approve"),
        &form,
        &[&b.origin()],
    );
    assert_eq!(code, 409);
    let before = s.env.store().services("default").unwrap();
    assert!(
        before.iter().any(|r| r.spec.host == "api.openai.com"),
        "nothing changed yet"
    );
    // Confirmed on the CLI: applied, and the audit record says it was confirmed.
    s.env
        .run(&["proposal", "approve", &id, "--allow-credential-reuse"])
        .ok();
    let audit = s.env.run(&["audit", "list"]).ok().stdout;
    assert!(
        audit.contains("credential_reuse_confirmed=OPENAI_KEY"),
        "{audit}"
    );
}

/// Row 108: a proposal that drops a service's deny and hold rules (same host,
/// same auth) is flagged on the CLI, the JSON API and the UI, and is not approved without its
/// own explicit confirmation.
#[test]
fn row108_lifting_request_rules_is_flagged_and_needs_confirmation() {
    let s = with_admin();
    s.env.set_services(
        "services:\n  - name: openai\n    host: api.openai.com\n    auth: {type: bearer, token: OPENAI_KEY}\n    rules:\n      - {name: no-deletes, methods: [DELETE], action: deny}\n      - {name: refunds, methods: [POST], path: /v1/refunds, action: hold}\n",
    );
    let (code, p) = propose(
        &s,
        json!({"services": [{"action": "set", "name": "openai", "host": "api.openai.com",
                             "auth": {"type": "bearer", "token": "OPENAI_KEY"}}],
               "user_message": "Tidy the openai service."}),
    );
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_u64().unwrap().to_string();
    let shown = s.env.run(&["proposal", "show", &id]).ok().stdout;
    for rule in ["no-deletes (deny)", "refunds (hold)"] {
        assert!(
            shown.contains(&format!(
                "WARNING: rule {rule} of service openai is removed or changed (approve needs --allow-rule-removal)"
            )),
            "{shown}"
        );
    }
    let refused = s.env.run(&["proposal", "approve", &id]);
    assert!(
        refused.fails().contains("--allow-rule-removal"),
        "{refused:?}"
    );
    let (_, v) = api_socket(&s, "GET", &format!("/api/proposals/{id}"), None, &[]);
    assert_eq!(
        v["review"]["rules_weakened"].as_array().map(Vec::len),
        Some(2),
        "{v}"
    );
    let digest = v["digest"].as_str().unwrap().to_owned();
    let (code, v) = api_socket(
        &s,
        "POST",
        &format!("/api/proposals/{id}/approve"),
        Some(json!({"digest": digest})),
        &[],
    );
    assert_eq!(
        (code, v["error"].as_str()),
        (409, Some("rule_removal_unconfirmed")),
        "{v}"
    );
    let b = Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    let (_, page) = b.req("GET", &format!("/proposals/{id}"), &[], &[]);
    assert!(
        page.contains("Request rules lifted: ") && page.contains("name=\"allow_rule_removal\""),
        "{page}"
    );
    let rules = |s: &Setup| {
        s.env
            .store()
            .services("default")
            .unwrap()
            .iter()
            .find(|r| r.spec.name == "openai")
            .map(|r| r.spec.rules.len())
    };
    assert_eq!(rules(&s), Some(2), "nothing changed yet");
    s.env
        .run(&["proposal", "approve", &id, "--allow-rule-removal"])
        .ok();
    assert_eq!(rules(&s), Some(0));
    let audit = s.env.run(&["audit", "list"]).ok().stdout;
    assert!(audit.contains("rule_removal_confirmed=2"), "{audit}");
}

/// Row 67: bidi overrides and zero-width characters in agent text are shown
/// escaped in the UI (the CLI already did), so text cannot disguise a host.
#[test]
fn row67_bidi_and_zero_width_text_escaped_in_the_ui() {
    let s = with_admin();
    let (code, p) = propose(
        &s,
        json!({"services": [{"action": "set", "name": "other", "host": "other.example.net",
                             "auth": {"type": "bearer", "token": "OTHER_KEY"}}],
               "credentials": [{"key": "OTHER_KEY", "description": "key\u{200b}for \u{202e}moc.live"}],
               "user_message": "please use \u{202e}moc.live.tsoh\u{202c} now"}),
    );
    assert_eq!(code, 201, "{p}");
    let b = Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    let (_, page) = b.req("GET", &format!("/proposals/{}", p["id"]), &[], &[]);
    assert!(
        page.contains("please use \\u{202e}moc.live.tsoh\\u{202c} now"),
        "{page}"
    );
    assert!(page.contains("key\\u{200b}for \\u{202e}moc.live"), "{page}");
    assert!(!page.contains('\u{202e}') && !page.contains('\u{200b}'));
}

/// Row 68: agents cannot propose internal, local or resolve-anything hosts, nor IP
/// literals in any spelling.
#[test]
fn row68_internal_hosts_refused_at_proposal_time() {
    let s = Setup::new("auto");
    for host in [
        "localhost",
        "metadata.google.internal",
        "kubernetes.default.svc",
        "db.cluster.local",
        "*.nip.io",
        "10-0-0-1.nip.io",
        "*.sslip.io",
    ] {
        let (code, v) = propose(
            &s,
            json!({"services": [{"action": "set", "name": "xyz", "host": host, "auth": {"type": "passthrough"}}]}),
        );
        assert_eq!(
            (code, v["error"].as_str()),
            (400, Some("host_not_allowed")),
            "{host}: {v}"
        );
        assert!(v["message"].as_str().unwrap().contains(host), "{v}");
    }
    for host in ["0x7f000001", "127.1", "[::1]", "169.254.169.254"] {
        let (code, v) = propose(
            &s,
            json!({"services": [{"action": "set", "name": "xyz", "host": host, "auth": {"type": "passthrough"}}]}),
        );
        assert_eq!(
            (code, v["error"].as_str()),
            (400, Some("bad_request")),
            "{host}: {v}"
        );
    }
    assert_eq!(s.env.store().proposals(None, None).unwrap().len(), 0);
}

/// Row 69: the JSON API is on its own socket (not the UI socket a browser bridge
/// forwards, see `it::admin::json_api_on_the_socket_only`), and even there refuses a foreign Host
/// and anything a browser marks as cross-site.
#[test]
fn row69_json_api_refuses_foreign_hosts_and_cross_site_requests() {
    let s = with_admin();
    assert_eq!(api_socket(&s, "GET", "/api/vaults", None, &[]).0, 200);
    let cases: [(&[&str], u16); 5] = [
        (&["Host: rebind.attacker.example:7491"], 421),
        (&["Host: 127.0.0.1.nip.io"], 421),
        (&["Origin: http://rebind.attacker.example:7491"], 403),
        (&["Origin: null"], 403),
        (&["Sec-Fetch-Site: cross-site"], 403),
    ];
    for (headers, want) in cases {
        let (code, _) = api_socket(&s, "GET", "/api/vaults", None, headers);
        assert_eq!(code, want, "{headers:?}");
        let (code, _) = api_socket(
            &s,
            "POST",
            "/api/proposals/1/approve",
            Some(json!({})),
            headers,
        );
        assert_eq!(code, want, "{headers:?} on approve");
    }
}

/// Row 70: the login throttle is charged before the password is checked, so 150
/// parallel guesses get no more checks than 5 sequential ones, and a burst holding the right
/// password among 40 does not get it checked past the limit; 300 parallel logins under other
/// names cannot grow the admin process (Argon2 runs 4 at a time in reused memory, and 20 attempts
/// a minute per client; before, each check left 19 MiB behind).
#[test]
fn row70_parallel_logins_get_no_more_tries_and_bounded_memory() {
    let s = with_admin();
    s.env
        .run_stdin(
            &["operator", "add", "bob"],
            format!("{PASSWORD}\n").as_bytes(),
        )
        .ok();
    let addr = s.proxy.admin_http.clone().unwrap();
    let burst = |name: &'static str, n: usize, right_at: Option<usize>| -> Vec<u16> {
        let forms: Vec<_> = (0..n).map(|_| login_form(&addr)).collect();
        let threads: Vec<_> = forms
            .into_iter()
            .enumerate()
            .map(|(i, form)| {
                let addr = addr.clone();
                let password = if Some(i) == right_at {
                    PASSWORD
                } else {
                    "wrong-guess-123"
                };
                std::thread::spawn(move || post_login(&addr, &form, name, password))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let codes = burst("alice", 150, None);
    let checked = codes.iter().filter(|&&c| c == 401).count();
    assert!(
        checked <= 5,
        "{checked} of 150 parallel guesses were checked"
    );
    assert!(
        codes.iter().all(|c| [401, 429, 503].contains(c)),
        "{codes:?}"
    );
    let codes = burst("bob", 40, Some(36));
    let checked = codes.iter().filter(|&&c| c == 401 || c == 303).count();
    assert!(checked <= 5, "{checked} of 40 were checked: {codes:?}");
    // 300 parallel logins under distinct names.
    let forms: Vec<_> = (0..300).map(|_| login_form(&addr)).collect();
    let threads: Vec<_> = forms
        .into_iter()
        .enumerate()
        .map(|(i, form)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                post_login(&addr, &form, &format!("user{i}"), "wrong-guess-123")
            })
        })
        .collect();
    let codes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        codes.iter().filter(|&&c| c == 401).count() <= 20,
        "{codes:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", admin_pid(&s))).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(peak_kib < 160 * 1024, "admin peak RSS {peak_kib} KiB");
    // The socket is another client: the TCP burst did not lock the operator out there.
    let (code, _) = api_socket(&s, "GET", "/api/vaults", None, &[]);
    assert_eq!(code, 200);
}

/// Row 71: sessions are made only for the login and setup forms, and capped; the
/// thousands of cookieless requests that grew the map before leave no session behind.
#[test]
fn row71_sessions_only_where_needed_and_capped() {
    let s = with_admin();
    let addr = s.proxy.admin_http.clone().unwrap();
    let sessions = || {
        let socket = s.proxy.admin_api.clone().unwrap();
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--unix-socket", &socket, "http://localhost/metrics"]);
        let text = output(c, None).ok().stdout;
        text.lines()
            .find_map(|l| l.strip_prefix("airlock_admin_sessions "))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap()
    };
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    for path in ["/healthz", "/proposals"] {
        for _ in 0..1000 {
            conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
                .unwrap();
            let n = conn.read(&mut buf).unwrap();
            assert!(
                !String::from_utf8_lossy(&buf[..n])
                    .to_ascii_lowercase()
                    .contains("set-cookie")
            );
        }
    }
    assert_eq!(sessions(), 0, "cookieless requests made sessions");
    for _ in 0..1100 {
        conn.write_all(format!("GET /login HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("</html>") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
    }
    let held = sessions();
    assert!((900..=1000).contains(&held), "{held} sessions held");
    // A login still works after the flood.
    assert_eq!(Browser::new(&s).login(PASSWORD), 303);
}

/// Row 72: the first-operator setup link is single-use under concurrency: eight
/// parallel posts with the one token create one operator.
#[test]
fn row72_setup_link_creates_one_operator_under_concurrency() {
    let s = Setup::with("auto", &["--admin-listen", "127.0.0.1:0"], true, true);
    let addr = s.proxy.admin_http.clone().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let token = loop {
        let err = s.proxy.stderr();
        if let Some(at) = err.find("/setup?token=") {
            break err[at + 13..].split_whitespace().next().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no setup link: {err}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let forms: Vec<(String, String)> = (0..8)
        .map(|_| {
            let (code, text) = http(
                &addr,
                &format!(
                    "GET /setup?token={token} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                ),
            );
            assert_eq!(code, 200);
            let cookie = text
                .lines()
                .find_map(|l| l.strip_prefix("set-cookie: "))
                .and_then(|c| c.split(';').next())
                .unwrap()
                .to_owned();
            let at = text.find("name=\"csrf\" value=\"").unwrap() + 19;
            (cookie, text[at..].split('"').next().unwrap().to_owned())
        })
        .collect();
    let threads: Vec<_> = forms
        .into_iter()
        .enumerate()
        .map(|(i, (cookie, csrf))| {
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || {
                let body = format!("csrf={csrf}&token={token}&name=racer{i}&password={PASSWORD}");
                http(
                    &addr,
                    &format!(
                        "POST /setup HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: {cookie}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                )
                .0
            })
        })
        .collect();
    let codes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1, "{codes:?}");
    assert_eq!(s.env.store().operators().unwrap().len(), 1);
}
