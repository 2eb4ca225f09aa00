//! The admin process: the approval flow in a real headless Chromium, and its security checks
//! (security.md rows 46, 48, 49, 50) with curl over TCP and the Unix socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::proxy::Setup;
use crate::support::{Run, output};

pub(crate) const PASSWORD: &str = "correct-horse-battery";

pub(crate) fn with_admin() -> Setup {
    let s = Setup::with("auto", &["--admin-listen", "127.0.0.1:0"], true, true);
    s.env
        .run_stdin(
            &["operator", "add", "alice"],
            format!("{PASSWORD}\n").as_bytes(),
        )
        .ok();
    s
}

pub(crate) fn admin_url(s: &Setup) -> String {
    format!(
        "http://{}",
        s.proxy
            .admin_http
            .as_deref()
            .expect("admin_http in the ready line")
    )
}

/// Posts a proposal through the agent API; returns its JSON.
fn propose(s: &Setup, user_message: &str) -> Value {
    let body = json!({
        "services": [{"action": "set", "name": "other", "host": "other.example.net", "auth": {"type": "bearer", "token": "OTHER_KEY"}}],
        "credentials": [{"key": "OTHER_KEY", "description": "Other API key", "obtain": "https://other.example.net/keys"}],
        "user_message": user_message,
    });
    crate::proposals::api(s, "POST", "/v1/proposals", &s.token, Some(&body)).1
}

/// Waits (up to 5 s) until the admin page at `path` shows `needle`: the admin process reads the
/// request log on its own clock (every 500 ms).
#[track_caller]
fn wait_page(b: &Browser, path: &str, needle: &str) {
    let start = Instant::now();
    loop {
        let (code, page) = b.req("GET", path, &[], &[]);
        assert_eq!(code, 200, "{page}");
        if page.contains(needle) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{page}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Issue 4's acceptance: refused, proposed, approved by an operator in a real browser, served.
#[test]
fn browser_approves_a_proposal_end_to_end() {
    let s = with_admin();
    let refused = s.curl(&["-v", "https://other.example.net/widgets"]);
    assert!(
        refused.stderr.contains("403 no_service: propose access at"),
        "{refused:?}"
    );
    let p = propose(&s, "<script>alert(1)</script> May I list your widgets?");
    let id = p["id"].as_u64().unwrap();
    assert_eq!(
        p["approval_url"],
        format!("{}/proposals/{id}", admin_url(&s))
    );
    let key = "sk-browser-approved-key-77";
    let doomed = s.env.agent_token("doomed", "default");
    let dir = artifacts();
    let mut c = std::process::Command::new("node");
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser"));
    c.args([
        "approve.mjs",
        &admin_url(&s),
        "alice",
        PASSWORD,
        &id.to_string(),
        "OTHER_KEY",
        key,
    ])
    .arg(&dir);
    let r = output(c, None);
    assert_eq!(r.code, 0, "browser run failed: {r:?}");
    assert!(r.stdout.contains("\"ok\":true"));
    let (_, head) = crate::support::connect(
        s.proxy.addr,
        "other.example.net:443",
        Some(&format!("{doomed}:default")),
    );
    assert!(
        head.starts_with("HTTP/1.1 407"),
        "the revoked agent's token: {head}"
    );
    for shot in [
        "1-login",
        "2-proposals",
        "3-proposal",
        "4-approved",
        "5-audit",
        "6-confirm-revoke",
    ] {
        assert!(
            dir.join(format!("{shot}.png")).metadata().unwrap().len() > 1000,
            "{shot}"
        );
    }
    let start = Instant::now();
    loop {
        let r = s.curl(&["https://other.example.net/widgets"]);
        if r.code == 0 && r.stdout.contains("GET /widgets") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the approved service is not served: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.last().header("authorization"), [format!("Bearer {key}")]);
    let audit = s.env.run(&["audit", "list", "--json"]).ok();
    assert!(
        audit.stdout.contains("operator:alice") && audit.stdout.contains("proposal.approve"),
        "{audit:?}"
    );
}

/// A curl session against the admin UI (cookie jar in a temp file).
pub(crate) struct Browser {
    base: String,
    jar: PathBuf,
}

impl Browser {
    pub(crate) fn new(s: &Setup) -> Self {
        Self {
            base: admin_url(s),
            jar: s.env.path("cookies.txt"),
        }
    }

    pub(crate) fn req(
        &self,
        method: &str,
        path: &str,
        form: &[(&str, &str)],
        headers: &[&str],
    ) -> (u16, String) {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "-b",
        ])
        .arg(&self.jar)
        .arg("-c")
        .arg(&self.jar);
        for h in headers {
            c.args(["-H", h]);
        }
        for (k, v) in form {
            c.args(["--data-urlencode", &format!("{k}={v}")]);
        }
        c.arg(format!("{}{path}", self.base));
        let r: Run = output(c, None).ok();
        let (body, code) = r.stdout.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_owned())
    }

    pub(crate) fn origin(&self) -> String {
        format!("Origin: {}", self.base)
    }

    pub(crate) fn csrf(&self, path: &str) -> String {
        let (_, html) = self.req("GET", path, &[], &[]);
        let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
        html[at..].split('"').next().unwrap().to_owned()
    }

    pub(crate) fn login(&self, password: &str) -> u16 {
        let csrf = self.csrf("/login");
        self.req(
            "POST",
            "/login",
            &[("csrf", &csrf), ("name", "alice"), ("password", password)],
            &[&self.origin()],
        )
        .0
    }
}

/// Row 48 (H-03, H-04): cross-site and wrong-Host requests, missing CSRF, framing headers,
/// login throttling; rows 49-50 through the UI.
#[test]
fn row48_row49_row50_admin_request_security() {
    let s = with_admin();
    let b = Browser::new(&s);
    for page in [
        "/",
        "/proposals",
        "/proposals/1",
        "/hosts",
        "/rules",
        "/vaults",
        "/vaults/default",
        "/agents",
        "/requests",
        "/requests/live",
        "/requests.json",
        "/requests.csv",
        "/audit",
    ] {
        // A GET page answers 303 only with the login redirect.
        assert_eq!(b.req("GET", page, &[], &[]).0, 303, "{page} needs a login");
    }
    assert_eq!(b.req("GET", "/login", &[], &["Host: evil.example"]).0, 421);
    assert_eq!(b.login("wrong password!"), 401);
    assert_eq!(b.login(PASSWORD), 303);
    let p = propose(&s, "<img src=x onerror=alert(1)>\u{202e}gnp.exe");
    let id = p["id"].as_u64().unwrap();
    let (code, html) = b.req("GET", &format!("/proposals/{id}"), &[], &[]);
    assert_eq!(code, 200);
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;") && !html.contains("<img src=x"),
        "row 50: not escaped"
    );
    let csrf = b.csrf(&format!("/proposals/{id}"));
    let digest = html
        .split("name=\"digest\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let approve = format!("/proposals/{id}/approve");
    let form = [
        ("csrf", csrf.as_str()),
        ("digest", digest.as_str()),
        ("value:OTHER_KEY", "sk-ui-key-1234"),
    ];
    // Cross-site: another Origin, and no Origin at all.
    assert_eq!(
        b.req("POST", &approve, &form, &["Origin: http://evil.example"])
            .0,
        403
    );
    assert_eq!(b.req("POST", &approve, &form, &[]).0, 403);
    // Same origin but no or wrong CSRF token.
    assert_eq!(
        b.req(
            "POST",
            &approve,
            &[("digest", &digest), ("value:OTHER_KEY", "k")],
            &[&b.origin()]
        )
        .0,
        403
    );
    // A changed digest is 409; the real one applies; a replay is 409.
    assert_eq!(
        b.req(
            "POST",
            &approve,
            &[("csrf", &csrf), ("digest", "00"), ("value:OTHER_KEY", "k")],
            &[&b.origin()]
        )
        .0,
        409
    );
    let (code, html) = b.req("POST", &approve, &form, &[&b.origin()]);
    assert_eq!(code, 200, "{html}");
    assert!(html.contains("Approved") && !html.contains("sk-ui-key-1234"));
    assert_eq!(b.req("POST", &approve, &form, &[&b.origin()]).0, 409);
    // Every page forbids framing.
    let mut c = std::process::Command::new("curl");
    c.args(["-sSI", "--noproxy", "*", &format!("{}/login", b.base)]);
    let headers = output(c, None).ok().stdout.to_ascii_lowercase();
    assert!(
        headers.contains("frame-ancestors 'none'") && headers.contains("x-frame-options: deny"),
        "{headers}"
    );
    assert!(
        headers.contains("samesite=strict") && headers.contains("httponly"),
        "{headers}"
    );
    // Login throttling, per operator name: the wrong password above was the first failure;
    // four more make five, and then even the right password gets 429.
    let other = Browser {
        base: b.base.clone(),
        jar: s.env.path("jar2.txt"),
    };
    for _ in 0..4 {
        assert_eq!(other.login("nope-nope-nope"), 401);
    }
    assert_eq!(other.login(PASSWORD), 429);
}

/// Row 46 (H-01): the socket is 0660 in a 0750 directory, and a connection from another uid is
/// refused even when the file modes would let it through (SO_PEERCRED).
#[test]
fn row46_admin_socket_refuses_other_uids() {
    use std::os::unix::fs::PermissionsExt;
    let s = with_admin();
    let socket = PathBuf::from(s.proxy.admin_socket.as_deref().unwrap());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o660);
    assert_eq!(mode(socket.parent().unwrap()), 0o750);
    let ok = output(curl_socket(&socket, None), None).ok();
    assert_eq!(ok.stdout, "ok");
    let denied = output(curl_socket(&socket, Some(65534)), None);
    assert_ne!(denied.code, 0, "another uid reached the socket: {denied:?}");
    // Open the modes up: the peer-credential check still refuses.
    for p in [s.env.data_dir.as_path(), socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = output(curl_socket(&socket, Some(65534)), None);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(!refused.stdout.contains("ok"));
    // The refusal is logged (the log line may trail the closed connection a little).
    let start = Instant::now();
    while !s
        .proxy
        .stderr()
        .contains("refused an admin socket connection")
    {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{}",
            s.proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn curl_socket(socket: &std::path::Path, uid: Option<u32>) -> std::process::Command {
    let url = "http://localhost/healthz";
    match uid {
        None => {
            let mut c = std::process::Command::new("curl");
            c.args(["-sS", "--unix-socket"]).arg(socket).arg(url);
            c
        }
        Some(uid) => {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--unix-socket",
            ]);
            c.arg(socket).arg(url);
            c
        }
    }
}

/// The admin process dies: the proxy keeps serving, and serve restarts it.
#[test]
fn admin_crash_leaves_the_proxy_serving_and_is_restarted() {
    let s = with_admin();
    let socket = PathBuf::from(s.proxy.admin_socket.as_deref().unwrap());
    let pid = admin_pid(&s);
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    s.curl(&["https://api.openai.com/during-admin-outage"]).ok();
    let start = Instant::now();
    loop {
        let r = output(curl_socket(&socket, None), None);
        if r.code == 0 && r.stdout == "ok" && admin_pid(&s) != pid {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "admin not restarted: {}",
            s.proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        s.proxy.stderr().contains("airlock-admin exited"),
        "{}",
        s.proxy.stderr()
    );
}

pub(crate) fn admin_pid(s: &Setup) -> u32 {
    let dir = s.env.data_dir.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmd.contains("airlock-admin") && cmd.contains(&dir) {
            return pid;
        }
    }
    0
}

/// Management through the UI: credentials (never shown), services from YAML, enable/disable,
/// agents (token shown once) and scoped tokens; every change is audited as the operator.
#[test]
fn management_pages_act_through_the_store() {
    let s = with_admin();
    let b = Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    let o = b.origin();
    let csrf = b.csrf("/vaults");
    let secret = "sk-set-in-the-browser-0099";
    let (code, html) = b.req(
        "POST",
        "/vaults/default/credentials",
        &[("csrf", &csrf), ("key", "UI_KEY"), ("value", secret)],
        &[&o],
    );
    assert_eq!(code, 200);
    assert!(
        html.contains("Sealed credential UI_KEY") && !html.contains(secret),
        "{html}"
    );
    let yaml = "services:\n  - name: ui-svc\n    host: other.example.net\n    auth: {type: bearer, token: UI_KEY}\n";
    let (_, html) = b.req(
        "POST",
        "/vaults/default/services",
        &[("csrf", &csrf), ("yaml", yaml)],
        &[&o],
    );
    assert!(html.contains("1 added"), "{html}");
    let start = Instant::now();
    while s.curl(&["https://other.example.net/ui"]).code != 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        s.last().header("authorization"),
        [format!("Bearer {secret}")]
    );
    // Disabling is destructive: the page says what is lost, and a post without the
    // confirmation changes nothing.
    let (_, page) = b.req("GET", "/vaults", &[], &[]);
    assert!(
        page.contains("<details class=\"confirm\"><summary>disable</summary>")
            && page.contains("requests to other.example.net are refused (service_disabled)"),
        "{page}"
    );
    let (_, html) = b.req(
        "POST",
        "/vaults/default/services/ui-svc/toggle",
        &[("csrf", &csrf)],
        &[&o],
    );
    assert!(
        html.contains("Nothing done: disabling a service needs its confirmation"),
        "{html}"
    );
    assert!(s.curl(&["https://other.example.net/ui"]).code == 0);
    let (_, html) = b.req(
        "POST",
        "/vaults/default/services/ui-svc/toggle",
        &[("csrf", &csrf), ("confirm", "yes")],
        &[&o],
    );
    assert!(html.contains("Service ui-svc disabled"), "{html}");
    s.settle();
    let r = s.curl(&["-i", "https://other.example.net/ui"]);
    assert!(r.stdout.contains("service_disabled"), "{r:?}");
    let (_, html) = b.req(
        "POST",
        "/agents",
        &[("csrf", &csrf), ("name", "ui-bot"), ("vaults", "default")],
        &[&o],
    );
    let token = html
        .split("<code>")
        .nth(1)
        .unwrap()
        .split("</code>")
        .next()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("alk_agt_") && token.len() == 60, "{html}");
    let (_, again) = b.req("GET", "/agents", &[], &[]);
    assert!(!again.contains(&token), "the token was shown twice");
    let (_, html) = b.req("POST", "/agents/ui-bot/rotate", &[("csrf", &csrf)], &[&o]);
    assert!(html.contains("Nothing done: rotating"), "{html}");
    let (_, page) = b.req("GET", "/agents", &[], &[]);
    assert!(
        page.contains("every scoped token it minted stop working now"),
        "{page}"
    );
    let confirmed = [("csrf", csrf.as_str()), ("confirm", "yes")];
    let (_, html) = b.req("POST", "/agents/ui-bot/rotate", &confirmed, &[&o]);
    assert!(html.contains("the old one stopped working"));
    for (path, what) in [
        ("/agents/ui-bot/revoke", "revoking"),
        ("/vaults/default/credentials/UI_KEY/delete", "deleting"),
        ("/vaults/default/services/ui-svc/remove", "removing"),
    ] {
        let (_, html) = b.req("POST", path, &[("csrf", &csrf)], &[&o]);
        assert!(
            html.contains(&format!("Nothing done: {what}")),
            "{path}: {html}"
        );
    }
    let listed = s.env.run(&["credential", "list"]).ok().stdout;
    assert!(listed.contains("UI_KEY"), "{listed}");
    let (_, html) = b.req("POST", "/agents/ui-bot/revoke", &confirmed, &[&o]);
    assert!(html.contains("Revoked agent ui-bot"), "{html}");
    let (_, html) = b.req(
        "POST",
        "/tokens",
        &[("csrf", &csrf), ("vault", "default"), ("ttl", "30m")],
        &[&o],
    );
    assert!(html.contains("alk_tok_"), "{html}");
    assert_eq!(
        b.req(
            "POST",
            "/vaults",
            &[("csrf", "stale"), ("name", "x")],
            &[&o]
        )
        .0,
        403
    );
    let audit = s.env.run(&["audit", "list"]).ok();
    assert!(
        audit.stdout.contains("operator:alice")
            && audit.stdout.contains("credential.set")
            && audit.stdout.contains("agent.rotate"),
        "{audit:?}"
    );
    for (path, bytes) in crate::support::files(&s.env.data_dir) {
        assert!(
            !crate::support::contains(&bytes, secret.as_bytes()),
            "secret in {}",
            path.display()
        );
    }
}

/// A Slack-compatible webhook receiver on 127.0.0.1: its address and the bodies it received.
pub(crate) fn webhook_sink() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::{Read, Write};
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for mut conn in hook.incoming().flatten() {
            let mut buf = vec![0u8; 65536];
            let mut req = Vec::new();
            while let Ok(n) = conn.read(&mut buf) {
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        sink.lock().unwrap().push(body.to_owned());
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
        }
    });
    (hook_addr, got)
}

/// The webhook: one Slack-compatible message per new proposal, with the approval link and no
/// secret (an agent-supplied value stays sealed).
#[test]
fn webhook_notifies_new_proposals_without_secrets() {
    let (hook_addr, got) = webhook_sink();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("airlock.toml");
    std::fs::write(&cfg, format!("webhook_url = \"http://{hook_addr}/hook\"\nadmin_url = \"https://airlock.example.com/\"\n")).unwrap();
    let s = Setup::with(
        "auto",
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().unwrap(),
        ],
        true,
        true,
    );
    let value = "agent-supplied-webhook-canary-5150";
    let body = json!({
        "services": [{"action": "set", "name": "other", "host": "other.example.net", "auth": {"type": "bearer", "token": "OTHER_KEY"}}],
        "credentials": [{"key": "OTHER_KEY", "value": value}],
        "user_message": "Need the Other API",
    });
    let (_, p) = crate::proposals::api(&s, "POST", "/v1/proposals", &s.token, Some(&body));
    let start = Instant::now();
    while got.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no webhook: {}",
            s.proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let msgs = got.lock().unwrap().clone();
    assert_eq!(msgs.len(), 1);
    let v: Value = serde_json::from_str(&msgs[0]).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("other.example.net")
            && text.contains("OTHER_KEY")
            && text.contains("Need the Other API"),
        "{text}"
    );
    assert_eq!(
        p["approval_url"],
        format!("https://airlock.example.com/proposals/{}", p["id"])
    );
    assert!(text.contains(p["approval_url"].as_str().unwrap()), "{text}");
    assert!(!msgs[0].contains(value));
}

/// curl on the admin API socket: (status, JSON).
pub(crate) fn api_socket(
    s: &Setup,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[&str],
) -> (u16, Value) {
    api_socket_at(
        s.proxy.admin_api.as_deref().unwrap(),
        method,
        path,
        body,
        headers,
    )
}

/// curl on the admin API socket at `socket`: (status, JSON).
pub(crate) fn api_socket_at(
    socket: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[&str],
) -> (u16, Value) {
    let mut c = std::process::Command::new("curl");
    c.args([
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        "--unix-socket",
        socket,
    ]);
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some(b) = body {
        c.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            &b.to_string(),
        ]);
    }
    c.arg(format!("http://localhost{path}"));
    let r = output(c, None).ok();
    let (body, code) = r.stdout.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The JSON API answers on its own Unix socket only (not the UI socket, not TCP); approvals there
/// are bound to the digest too and audited with the caller's uid.
#[test]
fn json_api_on_the_socket_only() {
    let s = with_admin();
    let socket = s.proxy.admin_api.clone().unwrap();
    let p = propose(&s, "via the API");
    let id = p["id"].as_u64().unwrap();
    let api =
        |method: &str, path: &str, body: Option<Value>| api_socket(&s, method, path, body, &[]);
    let (code, list) = api("GET", "/api/proposals?status=pending", None);
    assert_eq!(code, 200);
    let digest = list[0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["credentials"][0]["key"], "OTHER_KEY");
    let (code, v) = api(
        "POST",
        &format!("/api/proposals/{id}/approve"),
        Some(json!({"digest": "bad", "values": {"OTHER_KEY": "k"}})),
    );
    assert_eq!((code, v["error"].as_str()), (409, Some("proposal_changed")));
    let (code, v) = api(
        "POST",
        &format!("/api/proposals/{id}/approve"),
        Some(json!({"digest": digest, "values": {"OTHER_KEY": "sk-api-approved"}})),
    );
    assert_eq!((code, v["status"].as_str()), (200, Some("applied")), "{v}");
    // The decision is audited with the peer's uid, as SO_PEERCRED reports it.
    let uid = rustix::process::getuid().as_raw();
    assert_eq!(v["decided_by"], format!("admin-socket uid={uid}"), "{v}");
    // The admin process's own metrics, on its socket.
    let mut c = std::process::Command::new("curl");
    c.args(["-sS", "--unix-socket", &socket, "http://localhost/metrics"]);
    let text = output(c, None).ok().stdout;
    assert!(
        text.contains("airlock_admin_proposals{status=\"applied\"} 1")
            && text.contains("airlock_admin_proposals{status=\"pending\"} 0")
            && text.contains("airlock_admin_sessions "),
        "{text}"
    );
    assert_eq!(
        crate::support::http_codes(&[
            &format!("{}/api/proposals", admin_url(&s)),
            &format!("{}/metrics", admin_url(&s)),
        ]),
        "404404",
        "the JSON API and metrics must not be on the TCP listener"
    );
    // Row 69: nor on the UI socket, the one a browser bridge (ssh -L, socat) forwards.
    let ui = s.proxy.admin_socket.clone().unwrap();
    for path in ["/api/proposals", "/metrics"] {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
            &ui,
        ]);
        c.arg(format!("http://localhost{path}"));
        assert_eq!(
            output(c, None).ok().stdout,
            "404",
            "{path} on the UI socket"
        );
    }
}

/// Hosts tried: the hosts an agent was refused for want of a service, with counts, on the CLI
/// (`logs --hosts`) and in the UI, where each comes with a service form filled in for it; saving
/// that form serves the host.
#[test]
fn hosts_tried_on_the_cli_and_in_the_ui() {
    let s = with_admin();
    for host in [
        "api.newvendor.example",
        "api.newvendor.example",
        "other.example.net",
    ] {
        let (_, head) = crate::support::connect(
            s.proxy.addr,
            &format!("{host}:443"),
            Some(&format!("{}:default", s.token)),
        );
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        std::thread::sleep(Duration::from_millis(20)); // distinct times, for the order below
    }
    s.env.log_rows("default", 3);
    let json = s
        .env
        .run(&["logs", "--vault", "default", "--hosts", "--json"])
        .ok()
        .stdout;
    let tried: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let brief: Vec<_> = tried
        .iter()
        .map(|t| (t["host"].as_str().unwrap(), t["tries"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        brief,
        [("other.example.net", 1), ("api.newvendor.example", 2)],
        "{json}"
    );
    assert_eq!(tried[1]["agents"], json!(["bot"]));
    let table = s
        .env
        .run(&["logs", "--vault", "default", "--hosts"])
        .ok()
        .stdout;
    assert!(
        table.contains("api.newvendor.example") && table.contains("airlock service set"),
        "{table}"
    );
    // The UI lists them, each with a draft service; saving the draft serves the host.
    let b = Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    wait_page(&b, "/hosts", "host: other.example.net");
    let csrf = b.csrf("/hosts");
    let yaml = "services:\n  - name: other\n    host: other.example.net\n    auth: {type: bearer, token: OPENAI_KEY}\n";
    let (code, _) = b.req(
        "POST",
        "/vaults/default/services",
        &[("csrf", &csrf), ("yaml", yaml)],
        &[&b.origin()],
    );
    assert_eq!(code, 200);
    s.settle();
    let (_, head) = crate::support::connect(
        s.proxy.addr,
        "other.example.net:443",
        Some(&format!("{}:default", s.token)),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Served now: neither the CLI nor the UI lists it any more.
    let hosts = s.env.run(&["logs", "--hosts", "--json"]).ok().stdout;
    assert!(!hosts.contains("other.example.net") && hosts.contains("api.newvendor.example"));
    let (_, page) = b.req("GET", "/hosts", &[], &[]);
    assert!(!page.contains("host: other.example.net"), "{page}");
    // A host the catalog knows is drafted from its template (its key name, not KEY).
    let (_, head) = crate::support::connect(
        s.proxy.addr,
        "api.mistral.ai:443",
        Some(&format!("{}:default", s.token)),
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    s.env.log_row("default", |r| r["host"] == "api.mistral.ai");
    let table = s.env.run(&["logs", "--hosts"]).ok().stdout;
    assert!(
        table.contains("To serve api.mistral.ai") && table.contains("MISTRAL_API_KEY"),
        "{table}"
    );
    wait_page(&b, "/hosts", "MISTRAL_API_KEY");
}

/// The vaults page offers the service catalog: a template, a name and the credential keys add
/// the full service.
#[test]
fn services_from_the_catalog_in_the_ui() {
    let s = with_admin();
    let b = Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    let (_, page) = b.req("GET", "/vaults", &[], &[]);
    assert!(page.contains("<option value=\"github\">"), "{page}");
    let csrf = b.csrf("/vaults");
    let form = [
        ("csrf", csrf.as_str()),
        ("template", "github"),
        ("name", ""),
        ("credentials", "OPENAI_KEY"),
    ];
    let (code, page) = b.req(
        "POST",
        "/vaults/default/services/template",
        &form,
        &[&b.origin()],
    );
    assert_eq!(code, 200);
    assert!(page.contains("service github: api.github.com"), "{page}");
    let services = s.env.store().services("default").unwrap();
    let gh = services.iter().find(|r| r.spec.name == "github").unwrap();
    assert_eq!(
        gh.spec.describe(),
        "api.github.com · bearer · Authorization: Bearer <OPENAI_KEY>"
    );
}

/// An OAuth token pair imported in the UI: a Claude Code login file needs no endpoint or client
/// id; the page lists the credential as OAuth with its expiry and never shows a token; a bad file
/// is one clear message and stores nothing.
#[test]
fn oauth_credentials_imported_in_the_ui() {
    let s = with_admin();
    let b = Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    let csrf = b.csrf("/vaults");
    let file = r#"{"claudeAiOauth":{"accessToken":"sk-ui-access-0042","refreshToken":"sk-ui-refresh-0042","expiresAt":4102444800000}}"#;
    let form = |key: &'static str, tokens: &'static str| {
        [
            ("csrf", csrf.clone()),
            ("key", key.to_owned()),
            ("tokens", tokens.to_owned()),
            ("token_endpoint", String::new()),
            ("client_id", String::new()),
            ("request", String::new()),
        ]
    };
    let post = |fields: &[(&str, String)]| {
        let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        b.req(
            "POST",
            "/vaults/default/credentials/oauth",
            &refs,
            &[&b.origin()],
        )
    };
    let (code, page) = post(&form("CLAUDE_OAUTH", file));
    assert_eq!(code, 200);
    assert!(
        page.contains("Stored OAuth credential CLAUDE_OAUTH"),
        "{page}"
    );
    assert!(
        page.contains("OAuth: ok, expires 2100-01-01T00:00:00Z"),
        "{page}"
    );
    assert!(!page.contains("sk-ui-access-0042") && !page.contains("sk-ui-refresh-0042"));
    let (_, page) = post(&form("BAD_OAUTH", r#"{"access_token":"a"}"#));
    assert!(page.contains("no refresh token"), "{page}");
    let creds = s.env.store().credentials("default").unwrap();
    let oauth: Vec<_> = creds.iter().filter(|(_, r)| r.oauth.is_some()).collect();
    assert_eq!(oauth.len(), 1);
    let meta = oauth[0].1.oauth.as_ref().unwrap();
    assert_eq!(
        meta.token_endpoint,
        "https://platform.claude.com/v1/oauth/token"
    );
    let audit = s.env.run(&["audit", "list", "--json"]).ok().stdout;
    assert!(audit.contains("credential.oauth.set"), "{audit}");
}

/// Issue #17's log views in Chromium: filters, pages by cursor, export, the audit filter, no
/// wrapped heading or sideways scroll, and live mode (tests/browser/logs.mjs).
#[test]
fn request_log_filters_pages_exports_and_follows_live() {
    let s = with_admin();
    // 110 requests on one connection, then three refused for want of a service.
    let urls: Vec<String> = (0..110)
        .map(|i| format!("https://api.openai.com/v1/p{i}"))
        .collect();
    let mut args = vec!["-sS", "-o", "/dev/null"];
    args.extend(urls.iter().map(String::as_str));
    assert_eq!(s.curl(&args).code, 0);
    for _ in 0..3 {
        s.curl(&["https://other.example.net/x"]);
    }
    s.env.log_rows("default", 113);
    let b = Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    wait_page(&b, "/requests", "other.example.net");
    let dir = artifacts();
    let mut c = std::process::Command::new("node");
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser"));
    c.args([
        "logs.mjs",
        &admin_url(&s),
        "alice",
        PASSWORD,
        &s.proxy.url(&s.token, "default"),
    ])
    .arg(s.ca())
    .arg(&dir);
    let r = output(c, None);
    assert_eq!(r.code, 0, "browser run failed: {r:?}");
    assert!(r.stdout.contains("\"ok\":true"), "{r:?}");
    eprintln!("browser: {}", r.stdout.trim());
    for shot in [
        "logs-filtered",
        "logs-requests-desktop",
        "logs-requests-phone",
        "logs-live",
    ] {
        assert!(
            dir.join(format!("{shot}.png")).metadata().unwrap().len() > 1000,
            "{shot}"
        );
    }
}

struct Quiet;
impl airlock::requestlog::Observe for Quiet {
    fn row(&mut self, _: &airlock::requestlog::Row) {}
    fn dropped(&mut self, _: u64) {}
}

/// Issue #17: with 1,000 services, 10,000 agents, 20,000 scoped tokens and 200,000 request-log
/// rows, every page answers within 200 ms (median of three) and is under 200 KiB
/// (tests/browser/pages.mjs); agents, services and credentials come a page at a time, in natural
/// order (agent-2 before agent-10), searchable.
#[test]
fn pages_stay_small_and_fast_with_a_large_vault_and_log() {
    use airlock::vault::records::TokenRecord;
    use airlock::vault::tokens::{TokenHash, TokenKind};
    let s = with_admin();
    let store = s.env.store();
    let now = airlock::vault::now();
    store
        .write(|t| {
            for i in 0..20_000u32 {
                let record = TokenRecord {
                    kind: TokenKind::Scoped,
                    agent: Some(if i % 2 == 0 { "bot" } else { "cleanup" }.to_owned()),
                    vault: Some("default".into()),
                    created_at: now,
                    expires_at: Some(now + 86_400),
                    label: None,
                };
                let hash = TokenHash::of(format!("bulk-token-{i}").as_bytes());
                t.put(t.dbs().tokens, &hash.0, &record)?;
            }
            for i in 1..=60u64 {
                let yaml = format!(
                    "services:\n  - {{name: p{i}-svc, host: host-{i}.example.com, auth: {{type: passthrough}}}}\n"
                );
                let spec = airlock::spec::ServiceFile::from_yaml(&yaml).unwrap().services;
                let record = airlock::vault::records::ProposalRecord {
                    id: 1_000 + i,
                    vault: "default".into(),
                    agent: Some(format!("agent-{i}")),
                    status: airlock::vault::records::ProposalStatus::Pending,
                    services: spec
                        .into_iter()
                        .map(airlock::vault::records::ServiceChange::Set)
                        .collect(),
                    credentials: vec![],
                    allow: vec![],
                    message: String::new(),
                    user_message: format!("proposal {i}"),
                    digest: String::new(),
                    created_at: now,
                    expires_at: now + 86_400,
                    decided_at: None,
                    decided_by: None,
                    reason: None,
                    applied_generation: None,
                    held: None,
                };
                t.put(t.dbs().proposals, &(1_000 + i).to_be_bytes(), &record)?;
            }
            for i in 1..=10_000u32 {
                let name = format!("agent-{i}");
                let record = airlock::vault::records::AgentRecord {
                    name: name.clone(),
                    vaults: vec!["default".into()],
                    token_hash: TokenHash::of(name.as_bytes()).to_hex(),
                    created_at: now,
                    rotated_at: None,
                    revoked_at: None,
                };
                t.put(t.dbs().agents, name.as_bytes(), &record)?;
            }
            Ok::<_, airlock::vault::VaultError>(())
        })
        .unwrap();
    let yaml: String = (1..=1000)
        .map(|i| {
            format!(
                "  - {{name: svc-{i}, host: svc-{i}.example.com, auth: {{type: passthrough}}}}\n"
            )
        })
        .collect();
    let file = airlock::spec::ServiceFile::from_yaml(&format!("services:\n{yaml}")).unwrap();
    store
        .set_services("test", "default", file.services, false)
        .unwrap();
    let sink = airlock::requestlog::start(&s.env.data_dir, Quiet).unwrap();
    let now_ms = now * 1000;
    for i in 0..200_000u64 {
        sink.record(airlock::requestlog::Row {
            at_ms: now_ms - (200_000 - i) * 400,
            agent: Some(["bot", "cleanup", "ci"][(i % 3) as usize].into()),
            vault: "default".into(),
            method: "POST".into(),
            host: "api.openai.com".into(),
            path: format!("/v1/items/{}", i % 1000),
            status: [200, 200, 200, 201, 403, 429, 502][(i % 7) as usize],
            bytes: 512,
            latency_us: 800 + (i % 5000),
            service: Some(["openai", "anthropic"][(i % 2) as usize].into()),
            error: [
                None,
                None,
                None,
                None,
                Some("rule_denied"),
                Some("rule_limited"),
                Some("upstream_unreachable"),
            ][(i % 7) as usize]
                .map(str::to_owned),
            rule: (i % 7 == 4).then(|| "no-deletes".to_owned()),
            client: None,
        });
    }
    let start = Instant::now();
    while airlock::requestlog::read(&s.env.data_dir, None, 199_990)
        .unwrap()
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the rows were not written"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The admin process's copy has every row once bot's requests of the day are all counted
    // (every third row is bot's, all within the day).
    let b = Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    wait_page(&b, "/agents?q=bot", "<td>66667</td>");
    // Natural order, a page at a time, and the search.
    let (_, first) = b.req("GET", "/agents", &[], &[]);
    let at = |name: &str| {
        first
            .find(&format!("<td>{name}</td>"))
            .unwrap_or(usize::MAX)
    };
    assert!(
        at("agent-1") < at("agent-2") && at("agent-2") < at("agent-10"),
        "natural order"
    );
    assert_eq!(at("agent-100"), usize::MAX, "one page only");
    assert!(first.contains("10001 agents; 50 shown"), "{first}");
    let next = first
        .split("rel=\"next\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let (_, second) = b.req("GET", &next, &[], &[]);
    assert!(
        second.contains("<td>agent-51</td>") && !second.contains("<td>agent-50</td>"),
        "{next}"
    );
    let (_, found) = b.req("GET", "/agents?q=AGENT-9999", &[], &[]);
    assert!(
        found.contains("<td>agent-9999</td>") && found.contains("1 shown"),
        "{found}"
    );
    let (_, listed) = b.req("GET", "/proposals", &[], &[]);
    assert!(
        listed.contains(">1060<")
            && !listed.contains(">1010<")
            && listed.contains("Older proposals"),
        "newest first, one page: {listed}"
    );
    let (_, older) = b.req("GET", "/proposals?before=1011", &[], &[]);
    assert!(
        older.contains(">1010<") && older.contains(">1001<") && !older.contains("Older proposals")
    );
    let (_, found) = b.req("GET", "/proposals?q=host-7.example", &[], &[]);
    assert!(
        found.contains("host-7.example.com") && !found.contains("host-8.example.com"),
        "{found}"
    );
    let (_, vault) = b.req("GET", "/vaults/default", &[], &[]);
    let at = |name: &str| {
        vault
            .find(&format!("<td>{name}</td>"))
            .unwrap_or(usize::MAX)
    };
    assert!(
        at("svc-2") < at("svc-10") && at("svc-100") == usize::MAX,
        "natural, one page"
    );
    assert!(
        vault.contains("services; 50 shown") && vault.contains("More services"),
        "{vault}"
    );
    let (_, found) = b.req("GET", "/vaults/default?sq=svc-999.example", &[], &[]);
    assert!(
        found.contains("<td>svc-999</td>") && found.contains("services; 1 shown"),
        "{found}"
    );
    let mut c = std::process::Command::new("node");
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser"));
    c.args(["pages.mjs", &admin_url(&s), "alice", PASSWORD, "200", "200"]);
    let r = output(c, None);
    eprintln!("pages: {}", r.stdout.trim());
    assert_eq!(r.code, 0, "browser run failed: {r:?}");
    // What the admin process's copy of the log costs (reported, not asserted).
    let serve = s.proxy.pid().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.contains("(airlock-admin)") && stat.split(' ').nth(3) == Some(serve.as_str()) {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let rss = status.lines().find(|l| l.starts_with("VmRSS"));
            eprintln!("admin with 200,000 rows: {}", rss.unwrap_or("VmRSS: ?"));
        }
    }
}
