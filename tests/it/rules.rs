//! Request rules end to end (issue #18): a real serve, a real HTTPS origin, curl as the agent.
//! Allow, deny and limit rules, the per-agent override, query and header conditions, the
//! spellings that must not get around a rule (security rows 96, 97), what the agent is told
//! (discover, error codes, hints), the request log; and held requests approved in headless
//! Chromium, rejected on the CLI, timed out, and rejected by a restart, with the webhook told.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin::{PASSWORD, admin_url, artifacts, webhook_sink};
use crate::proxy::Setup;
use crate::support::{Curl, Proxy, Run, api, output};

const RULED: &str = r#"
services:
  - name: openai
    host: api.openai.com
    auth: {type: bearer, token: OPENAI_KEY}
    rules:
      - {name: no-deletes, methods: [DELETE], path: "/v1/*", action: deny, hint: "archive it instead"}
      - {name: cleanup-may-delete, agents: [cleanup], methods: [DELETE], action: allow}
      - {name: slow-files, methods: [POST], path: "/v1/files", action: limit, per_minute: 3}
      - {name: no-confirmed-dry-runs, query: [dry_run], headers: [x-confirm], action: deny}
      - {name: refunds-need-a-person, methods: [POST], path: "/v1/refunds", action: hold}
"#;

/// curl through the proxy as the holder of `token`: the status, then the headers and body.
fn curl_as(s: &Setup, token: &str, args: &[&str]) -> Run {
    let curl = Curl::new()
        .max_time(60)
        .args(["-i", "--suppress-connect-headers"]);
    s.curl_as(token, curl, args)
}

/// The agent API as the bot agent: a GET, or a POST of `body`; the JSON answer.
fn agent_api(s: &Setup, path: &str, body: Option<Value>) -> Value {
    let method = if body.is_some() { "POST" } else { "GET" };
    let (_, answer) = api::call(s.proxy.addr, method, path, Some(&s.token), body.as_ref());
    answer
}

fn status(run: &Run) -> u16 {
    run.stdout
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The `x-airlock-error` code of a response printed by `curl -i`.
fn code(run: &Run) -> String {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix("x-airlock-error: "))
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn origin_count(s: &Setup) -> usize {
    s.origin.recorded().len()
}

/// Waits until the proxy serves the rules just set (the watcher polls every 100 ms).
fn wait_for_rules(s: &Setup) {
    let start = Instant::now();
    loop {
        let r = s.curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            "https://api.openai.com/v1/x",
        ]);
        if r.stdout == "403" {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "rules not applied: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rules_allow_deny_limit_and_per_agent_override() {
    let s = Setup::new("auto");
    s.env.set_services(RULED);
    wait_for_rules(&s);
    let cleanup = s.env.agent_token("cleanup", "default");
    let before = origin_count(&s);

    // Deny: 403 with the rule, the hint, and nothing upstream.
    let r = curl_as(
        &s,
        &s.token,
        &["-X", "DELETE", "https://api.openai.com/v1/files/f1"],
    );
    assert_eq!(
        (status(&r), code(&r).as_str()),
        (403, "rule_denied"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("no-deletes") && r.stdout.contains("archive it instead"),
        "{r:?}"
    );
    // Rows 96, 97: other spellings of the same request meet the same rule, or are refused.
    for args in [
        &["-X", "delete", "https://api.openai.com/v1/files/f1"][..],
        &["-X", "DELETE", "https://api.openai.com/v1/%66iles/f1"],
        &["-X", "DELETE", "https://api.openai.com/v1/files;x=1/f1"],
        &[
            "-X",
            "POST",
            "-H",
            "X-HTTP-Method-Override: DELETE",
            "https://api.openai.com/v1/files/f1",
        ],
        &[
            "-X",
            "GET",
            "https://api.openai.com/v1/files/f1?_method=DELETE",
        ],
    ] {
        let r = curl_as(&s, &s.token, args);
        assert_eq!(
            (status(&r), code(&r).as_str()),
            (403, "rule_denied"),
            "{args:?}: {r:?}"
        );
    }
    for path in ["/v1%2Ffiles/f1", "/v1/..;/v1/files/f1"] {
        let r = curl_as(
            &s,
            &s.token,
            &[
                "--path-as-is",
                "-X",
                "DELETE",
                &format!("https://api.openai.com{path}"),
            ],
        );
        assert_eq!(
            (status(&r), code(&r).as_str()),
            (400, "rule_path_ambiguous"),
            "{path}: {r:?}"
        );
    }
    // Row 100: a fragment would let an upstream that splits it off (Python's
    // urlsplit, Node's URL) act on a path the rules never saw: refused before any rule.
    for (method, target, url) in [
        (
            "DELETE",
            "/v1/files/f1#",
            "https://api.openai.com/v1/files/f1",
        ),
        ("POST", "/v1/refunds#", "https://api.openai.com/v1/refunds"),
        ("POST", "/v1/files#3", "https://api.openai.com/v1/files"),
    ] {
        let r = curl_as(
            &s,
            &s.token,
            &["-X", method, "-d", "x", "--request-target", target, url],
        );
        assert_eq!(
            (status(&r), code(&r).as_str()),
            (400, "bad_request"),
            "{target}: {r:?}"
        );
    }
    // Row 105: a `_method` in a form or JSON body is judged like the query's; a
    // body that cannot be read first is ambiguous. Row 104: `_` for `-` in a
    // header name, `;` between query pairs.
    let url = "https://api.openai.com/v1/files/f1";
    for (args, expect) in [
        (
            &["-X", "POST", "-d", "_method=DELETE", url][..],
            (403, "rule_denied"),
        ),
        (
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"a":1,"_method":"DELETE"}"#,
                url,
            ],
            (403, "rule_denied"),
        ),
        (
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-H",
                "transfer-encoding: chunked",
                "-d",
                r#"{"_method":"DELETE"}"#,
                url,
            ],
            (400, "rule_method_ambiguous"),
        ),
        (
            &[
                "-H",
                "X_Confirm: yes",
                "https://api.openai.com/v1/runs?dry_run=1",
            ],
            (403, "rule_denied"),
        ),
        (
            &[
                "-H",
                "X-Confirm: yes",
                "https://api.openai.com/v1/runs?a=1;dry_run=1",
            ],
            (403, "rule_denied"),
        ),
    ] {
        let r = curl_as(&s, &s.token, args);
        assert_eq!((status(&r), code(&r).as_str()), expect, "{args:?}: {r:?}");
    }
    assert_eq!(
        origin_count(&s),
        before,
        "a refused request reached the upstream"
    );
    // A body read to look for `_method` goes upstream whole.
    let json = r#"{"model":"m","input":"hello"}"#;
    let r = curl_as(
        &s,
        &s.token,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            json,
            "https://api.openai.com/v1/runs",
        ],
    );
    assert_eq!(status(&r), 200, "{r:?}");
    assert_eq!(s.last().body, json.as_bytes());

    // The per-agent override: the cleanup agent may delete, with the credential injected.
    let r = curl_as(
        &s,
        &cleanup,
        &["-X", "DELETE", "https://api.openai.com/v1/files/f1"],
    );
    assert_eq!(status(&r), 200, "{r:?}");
    let last = s.last();
    assert!(
        last.request_line().starts_with("DELETE /v1/files/f1 "),
        "{}",
        last.head
    );
    assert_eq!(
        last.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );

    // Limit: a burst of per_minute, then 429.
    let posts: Vec<u16> = (0..4)
        .map(|_| {
            status(&curl_as(
                &s,
                &s.token,
                &["-X", "POST", "-d", "x", "https://api.openai.com/v1/files"],
            ))
        })
        .collect();
    assert_eq!(posts, [200, 200, 200, 429]);
    let r = curl_as(
        &s,
        &s.token,
        &["-X", "POST", "-d", "x", "https://api.openai.com/v1/files"],
    );
    assert_eq!(code(&r), "rule_limited", "{r:?}");

    // Query and header conditions: both must be present.
    let q = "https://api.openai.com/v1/runs?dry_run=1";
    assert_eq!(
        status(&curl_as(&s, &s.token, &["-H", "X-Confirm: yes", q])),
        403
    );
    assert_eq!(status(&curl_as(&s, &s.token, &[q])), 200);
    assert_eq!(
        status(&curl_as(
            &s,
            &s.token,
            &["-H", "X-Confirm: yes", "https://api.openai.com/v1/runs"]
        )),
        200
    );
    // No rule: the default, allow.
    assert_eq!(
        status(&curl_as(
            &s,
            &s.token,
            &["https://api.openai.com/v1/models"]
        )),
        200
    );

    // The agent is told which rules apply to it (not the cleanup agent's own).
    let d = agent_api(&s, "/v1/discover", None);
    let openai = d["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "openai")
        .unwrap();
    let names: Vec<&str> = openai["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "no-deletes",
            "slow-files",
            "no-confirmed-dry-runs",
            "refunds-need-a-person"
        ]
    );
    assert_eq!(openai["rules_default"], "allow");
    assert_eq!(openai["rules"][0]["hint"], "archive it instead");

    // The request log names the rule of every decided request (rows reach it in the order the
    // requests ended: the last one's row means every earlier one is there).
    s.env.log_row("default", |r| r["path"] == "/v1/models");
    let rows: Vec<Value> = s
        .env
        .run(&["logs", "--vault", "default", "--json"])
        .ok()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let with = |rule: &str, error: Option<&str>| {
        rows.iter()
            .filter(|r| r["rule"] == rule && r["error"].as_str() == error)
            .count()
    };
    assert!(with("no-deletes", Some("rule_denied")) >= 6, "{rows:?}");
    assert_eq!(with("cleanup-may-delete", None), 1);
    assert_eq!(with("slow-files", Some("rule_limited")), 2);
    assert_eq!(with("slow-files", None), 3);
}

#[test]
fn malformed_rules_are_refused_with_their_line() {
    let s = crate::support::Env::init();
    for (rule, want) in [
        ("{name: slow, action: limit}", "per_minute"),
        (
            "{name: no-deletes, methods: [DELETE], path: \"/v1/**\", action: deny}",
            "**",
        ),
        ("{name: no-deletes, action: deny, colour: red}", "colour"),
        (
            "{name: held, action: hold, per_minute: 3}",
            "only a limit rule",
        ),
    ] {
        let yaml = format!(
            "services:\n  - name: openai\n    host: api.openai.com\n    auth: {{type: bearer, token: K}}\n    rules:\n      - {{name: fine, action: allow}}\n      - {rule}\n"
        );
        let file = s.write("bad.yaml", &yaml);
        let r = s.run(&["service", "set", "-f", file.to_str().unwrap()]);
        let e = r.fails();
        assert!(e.contains(want) && e.contains("line 7"), "{rule}: {e}");
    }
    let dup = "services:\n  - name: openai\n    host: api.openai.com\n    auth: {type: bearer, token: K}\n    rules:\n      - {name: same, action: allow}\n      - {name: same, action: deny}\n";
    let file = s.write("dup.yaml", dup);
    let e = s
        .run(&["service", "set", "-f", file.to_str().unwrap()])
        .fails()
        .to_owned();
    assert!(e.contains("\"same\" appears twice"), "{e}");
}

/// A POST held by a rule, sent from a thread: its curl output once answered.
fn held_post(s: &Setup, path: &'static str, body: &'static str) -> std::thread::JoinHandle<Run> {
    let c = held_post_command(s, path, body);
    std::thread::spawn(move || output(c, None))
}

/// The curl command of [`held_post`].
fn held_post_command(s: &Setup, path: &str, body: &str) -> std::process::Command {
    let (url, ca) = (s.proxy.url(&s.token, "default"), s.ca());
    let mut c = std::process::Command::new("curl");
    let quiet = "--suppress-connect-headers";
    c.args([
        "-sS",
        "-i",
        quiet,
        "--max-time",
        "90",
        "--proxy",
        &url,
        "--cacert",
    ])
    .arg(ca)
    .args([
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
    ])
    .arg(format!("https://api.openai.com{path}"));
    c
}

/// Waits for a held request with `status` that is not in `already`; its proposal id.
fn wait_held(s: &Setup, status: &str, already: &[u64]) -> u64 {
    let start = Instant::now();
    loop {
        let out = s
            .env
            .run(&["proposal", "list", "--status", status, "--json"])
            .ok()
            .stdout;
        let list: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
        if let Some(id) = list
            .iter()
            .filter(|p| !p["held"].is_null())
            .filter_map(|p| p["id"].as_u64())
            .find(|id| !already.contains(id))
        {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no {status} held request: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn held_requests_wait_for_an_operator() {
    let (hook_addr, hooks) = webhook_sink();
    let cfg = tempfile::tempdir().unwrap();
    let cfg_file = cfg.path().join("airlock.toml");
    std::fs::write(
        &cfg_file,
        format!("webhook_url = \"http://{hook_addr}/hook\"\nhold_timeout = \"60s\"\n"),
    )
    .unwrap();
    let s = Setup::with(
        "auto",
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
            cfg_file.to_str().unwrap(),
        ],
        true,
        true,
    );
    s.env
        .run_stdin(
            &["operator", "add", "alice"],
            format!("{PASSWORD}\n").as_bytes(),
        )
        .ok();
    s.env.set_services(RULED);
    wait_for_rules(&s);
    let before = origin_count(&s);

    // Approved in the browser: forwarded whole, with the credential.
    let body = r#"{"charge":"ch_1","amount":500,"api_key":"not-for-the-operator"}"#;
    let waiting = held_post(&s, "/v1/refunds?expand=charge", body);
    let id = wait_held(&s, "pending", &[]);
    let shown = s
        .env
        .run(&["proposal", "show", &id.to_string()])
        .ok()
        .stdout;
    assert!(
        shown.contains("POST api.openai.com/v1/refunds")
            && shown.contains("rule refunds-need-a-person of service openai"),
        "{shown}"
    );
    assert!(
        shown.contains("query keys: expand")
            && shown.contains("[REDACTED BY AIRLOCK]")
            && !shown.contains("not-for-the-operator"),
        "{shown}"
    );
    assert_eq!(origin_count(&s), before, "a held request went upstream");
    let dir = artifacts();
    let mut c = std::process::Command::new("node");
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser"));
    c.args([
        "hold.mjs",
        &admin_url(&s),
        "alice",
        PASSWORD,
        &id.to_string(),
    ])
    .arg(&dir);
    let r = output(c, None);
    assert_eq!(r.code, 0, "browser run failed: {r:?}");
    let answered = waiting.join().unwrap();
    assert_eq!(status(&answered), 200, "{answered:?}");
    let last = s.last();
    assert!(
        last.request_line()
            .starts_with("POST /v1/refunds?expand=charge "),
        "{}",
        last.head
    );
    assert_eq!(last.body, body.as_bytes());
    assert_eq!(
        last.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    assert!(dir.join("hold-proposal.png").metadata().unwrap().len() > 1000);

    // Rejected on the CLI: the agent gets the reason, the upstream nothing.
    let count = origin_count(&s);
    let waiting = held_post(&s, "/v1/refunds", r#"{"charge":"ch_2"}"#);
    let id2 = wait_held(&s, "pending", &[id]);
    s.env
        .run(&[
            "proposal",
            "reject",
            &id2.to_string(),
            "--reason",
            "not this one",
        ])
        .ok();
    let answered = waiting.join().unwrap();
    assert_eq!(
        (status(&answered), code(&answered).as_str()),
        (403, "hold_rejected"),
        "{answered:?}"
    );
    assert!(answered.stdout.contains("not this one"), "{answered:?}");
    assert_eq!(origin_count(&s), count);

    // The webhook announced both, with the request and no value.
    let start = Instant::now();
    while hooks.lock().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "webhook: {:?}",
            hooks.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let msgs = hooks.lock().unwrap().clone();
    assert!(
        msgs.iter()
            .all(|m| m.contains("POST api.openai.com/v1/refunds")
                && m.contains("refunds-need-a-person")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .all(|m| !m.contains("not-for-the-operator") && !m.contains(s.secret("OPENAI_KEY")))
    );

    // A body over the hold buffer, or chunked, is refused before anyone is asked.
    let r = curl_as(
        &s,
        &s.token,
        &[
            "-H",
            "transfer-encoding: chunked",
            "-d",
            "x",
            "https://api.openai.com/v1/refunds",
        ],
    );
    assert_eq!(
        (status(&r), code(&r).as_str()),
        (413, "hold_body_too_large"),
        "{r:?}"
    );
}

#[test]
fn held_requests_time_out_and_do_not_outlive_their_agent_or_a_restart() {
    let mut s = Setup::with("auto", &["--hold-timeout", "2s"], true, true);
    s.env.set_services(RULED);
    wait_for_rules(&s);
    let count = origin_count(&s);
    let started = Instant::now();
    let r = curl_as(
        &s,
        &s.token,
        &["-d", "{}", "https://api.openai.com/v1/refunds"],
    );
    assert_eq!(
        (status(&r), code(&r).as_str()),
        (403, "hold_timed_out"),
        "{r:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "answered before the timeout"
    );
    wait_held(&s, "expired", &[]);

    // The agent hangs up while its request waits: withdrawn, and an approval cannot send it.
    restart(&mut s, &["--hold-timeout", "60s"]);
    let mut agent = held_post_command(&s, "/v1/refunds", "{}")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gone = wait_held(&s, "pending", &[]);
    agent.kill().unwrap();
    agent.wait().unwrap();
    let show = || -> Value {
        let out = s
            .env
            .run(&["proposal", "show", &gone.to_string(), "--json"]);
        serde_json::from_str(&out.ok().stdout).unwrap()
    };
    let start = Instant::now();
    while show()["status"] != "rejected" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not withdrawn: {}",
            show()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = show();
    assert_eq!(p["decided_by"], "airlock", "{p}");
    assert!(
        p["reason"].as_str().unwrap().contains("disconnected"),
        "{p}"
    );
    let approve = s.env.run(&["proposal", "approve", &gone.to_string()]);
    assert_ne!(approve.code, 0, "approved a withdrawn request: {approve:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(origin_count(&s), count, "a withdrawn request went upstream");

    // Held when serve stops: the next start rejects it and says why.
    let waiting = held_post(&s, "/v1/refunds", "{}");
    let held = wait_held(&s, "pending", &[]);
    restart(&mut s, &[]);
    let cut = waiting.join().unwrap();
    assert_ne!(status(&cut), 200, "{cut:?}");
    let p: Value = serde_json::from_str(
        &s.env
            .run(&["proposal", "show", &held.to_string(), "--json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(p["status"], "rejected", "{p}");
    assert!(p["reason"].as_str().unwrap().contains("restarted"), "{p}");
    assert_eq!(origin_count(&s), count, "a held request went upstream");
}

/// Stops serve and starts it again on the same data dir with `extra` flags.
fn restart(s: &mut Setup, extra: &[&str]) {
    let killed = std::process::Command::new("kill")
        .arg(s.proxy.pid().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    s.proxy.wait_exit(Duration::from_secs(10));
    s.proxy = Proxy::for_origin(
        &s.env,
        &s.origin,
        crate::proxy::HOSTS,
        "auto",
        extra,
        true,
        true,
    );
}

/// Proposals may carry rules: the review shows them (added, or beside the old service when
/// they change), a malformed rule is refused at submission, and once approved they are served.
#[test]
fn proposals_carry_rules_and_the_review_shows_them() {
    let s = Setup::new("auto");
    let propose = |body: Value| agent_api(&s, "/v1/proposals", Some(body));
    let service = |rules: Value| {
        serde_json::json!({"services": [{"action": "set", "name": "openai", "host": "api.openai.com",
            "auth": {"type": "bearer", "token": "OPENAI_KEY"}, "rules": rules}]})
    };
    let bad = propose(service(
        serde_json::json!([{"name": "x1x", "action": "limit"}]),
    ));
    assert_eq!(bad["error"], "bad_request", "{bad}");
    assert!(
        bad["message"].as_str().unwrap().contains("per_minute"),
        "{bad}"
    );

    let p = propose(service(serde_json::json!([
        {"name": "no-deletes", "methods": ["delete"], "path": "/v1/*", "action": "deny"}
    ])));
    let id = p["id"].as_u64().unwrap().to_string();
    let shown = s.env.run(&["proposal", "show", &id]).ok().stdout;
    assert!(shown.contains("REPLACES service openai"), "{shown}");
    assert!(
        shown.contains("rules: no-deletes: deny DELETE /v1/* · otherwise allow"),
        "{shown}"
    );
    s.env.run(&["proposal", "approve", &id]).ok();
    wait_for_rules(&s);

    let p = propose(service(serde_json::json!([])));
    let id = p["id"].as_u64().unwrap().to_string();
    let shown = s.env.run(&["proposal", "show", &id]).ok().stdout;
    let was = shown
        .lines()
        .find(|l| l.contains("was:"))
        .unwrap_or_default();
    let now = shown
        .lines()
        .find(|l| l.contains("now:"))
        .unwrap_or_default();
    assert!(
        was.contains("no-deletes") && !now.contains("rules"),
        "{shown}"
    );
}

/// Rows 109, 110: what a held request shows the operator. A path and query
/// key the agent chose with a bidi override are shown escaped by `proposal show` (and a request
/// path by `airlock logs`); a field named to look secret is named loudly; a compressed body is
/// refused before anyone is asked, and nothing goes upstream.
#[test]
fn held_request_reviews_show_what_the_agent_chose() {
    let s = crate::admin::with_admin();
    s.env.set_services(
        "services:\n  - name: openai\n    host: api.openai.com\n    auth: {type: bearer, token: OPENAI_KEY}\n    rules:\n      - {name: no-deletes, methods: [DELETE], action: deny}\n      - {name: posts-need-a-person, methods: [POST], action: hold}\n",
    );
    wait_for_rules(&s);
    let before = origin_count(&s);
    let r = curl_as(
        &s,
        &s.token,
        &[
            "-H",
            "content-encoding: gzip",
            "-H",
            "content-type: application/json",
            "--data-binary",
            "\u{1f}\u{8b}not-really-gzip",
            "https://api.openai.com/v1/pay",
        ],
    );
    assert_eq!(
        (status(&r), code(&r).as_str()),
        (415, "hold_body_encoded"),
        "{r:?}"
    );
    let mut agent = {
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--max-time", "30", "--proxy"])
            .arg(s.proxy.url(&s.token, "default"))
            .arg("--cacert")
            .arg(s.ca())
            .args([
                "-H",
                "content-type: application/json",
                "--data-binary",
                r#"{"amount":100,"destination_card":"acct_ATTACKER"}"#,
                "--request-target",
                "/pay/\u{202e}moc.live/x?\u{202e}yek=1",
                "https://api.openai.com/pay",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let id = wait_held(&s, "pending", &[]).to_string();
    let shown = s.env.run(&["proposal", "show", &id]).ok().stdout;
    assert!(
        !shown.contains('\u{202e}'),
        "raw bidi in the review: {shown}"
    );
    assert!(
        shown.contains("/pay/\\u{202e}moc.live/x") && shown.contains("query keys: \\u{202e}yek"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "REDACTED by airlock (names look secret; values not shown): destination_card"
        ) && !shown.contains("acct_ATTACKER"),
        "{shown}"
    );
    // The admin UI's card of the held request: the same, escaped.
    let b = crate::admin::Browser::new(&s);
    assert_eq!(b.login(PASSWORD), 303);
    let (_, page) = b.req("GET", &format!("/proposals/{id}"), &[], &[]);
    assert!(!page.contains('\u{202e}'), "raw bidi on the page");
    assert!(
        page.contains("/pay/\\u{202e}moc.live/x") && page.contains("\\u{202e}yek"),
        "{page}"
    );
    s.env
        .run(&["proposal", "reject", &id, "--reason", "no"])
        .ok();
    agent.wait().unwrap();
    assert_eq!(
        origin_count(&s),
        before,
        "a held or refused request went upstream"
    );
    // A request the rules let through, with the same path: `airlock logs` escapes it.
    let r = curl_as(
        &s,
        &s.token,
        &[
            "--request-target",
            "/\u{202e}log",
            "https://api.openai.com/x",
        ],
    );
    assert_eq!(status(&r), 200, "{r:?}");
    let start = Instant::now();
    loop {
        let logs = s.env.run(&["logs", "--vault", "default"]).ok().stdout;
        assert!(!logs.contains('\u{202e}'), "{logs}");
        if logs.contains("/\\u{202e}log") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The framework-like origin (`tests/origins/framework.py`), killed on drop.
struct FrameworkOrigin {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl FrameworkOrigin {
    fn start(env: &crate::support::Env) -> (Self, std::path::PathBuf) {
        use std::io::BufRead;
        let (ca, cert, key) =
            crate::support::origin::certificate(env.tmp.path(), &["api.openai.com"], false);
        let cert_file = env.write("framework-cert.pem", &cert.pem());
        let key_file = env.write("framework-key.pem", &key.serialize_pem());
        let log = env.path("framework.log");
        let mut child = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/origins/framework.py"
            ))
            .args([&cert_file, &key_file, &log])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the framework origin's port");
        (Self { child, port, log }, ca)
    }

    /// What the origin acted on, one reading per request it received.
    fn readings(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for FrameworkOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rows 100, 104, 105: every bypass spelling of the review is sent to an
/// origin that reads requests as Python and Node frameworks do (fragment dropped, `_method` in
/// body or query, WSGI header names, `;` and indexed query keys). Whatever reaches it, it never
/// acts on a request the rules deny or hold, and a limited one no more often than the limit.
#[test]
fn rule_bypasses_meet_an_origin_that_reads_like_a_framework() {
    let env = crate::support::Env::init();
    env.run_stdin(&["credential", "set", "OPENAI_KEY"], b"sk-framework-test")
        .ok();
    env.set_services(RULED);
    let token = env.agent_token("bot", "default");
    let (origin, origin_ca) = FrameworkOrigin::start(&env);
    let resolve = format!("api.openai.com:443:127.0.0.1:{}", origin.port);
    let ca = origin_ca.to_str().unwrap();
    let proxy = Proxy::start(
        &env,
        &[
            "--upstream-ca-file",
            ca,
            "--network-allow",
            "127.0.0.1/32",
            "--resolve",
            &resolve,
        ],
    );
    let send = |args: &[&str]| {
        let mut c = std::process::Command::new("curl");
        // -g: `[0]` in a URL is sent as written, not a curl glob.
        c.args([
            "-sS",
            "-g",
            "-i",
            "--suppress-connect-headers",
            "--max-time",
            "10",
            "--proxy",
        ])
        .arg(proxy.url(&token, "default"))
        .arg("--cacert")
        .arg(env.data_dir.join("ca.pem"))
        .args(args);
        let run = output(c, None);
        // Each attempt gets an HTTP answer: refused by airlock, or the origin's.
        assert!(run.stdout.starts_with("HTTP/1.1 "), "{args:?}: {run:?}");
        run
    };
    let base = "https://api.openai.com";
    let url = |p: &str| format!("{base}{p}");
    let (refunds, files, file, runs) = (
        url("/v1/refunds"),
        url("/v1/files"),
        url("/v1/files/f1"),
        url("/v1/runs"),
    );
    let json = "content-type: application/json";
    let (get_override, dry) = (
        format!("{file}?_method=DELETE"),
        format!("{runs}?dry_run=1"),
    );
    let (dry_semicolon, dry_indexed, dry_encoded) = (
        format!("{runs}?a=1;dry_run=1"),
        format!("{runs}?dry_run[0]=1"),
        format!("{runs}?dry%5Frun=1"),
    );
    let attempts: Vec<Vec<&str>> = vec![
        vec![
            "-X",
            "POST",
            "-d",
            "{}",
            "--request-target",
            "/v1/refunds#",
            &refunds,
        ],
        vec![
            "-X",
            "POST",
            "-d",
            "{}",
            "--request-target",
            "/v1/refunds#x",
            &refunds,
        ],
        vec!["-X", "DELETE", "--request-target", "/v1/files/f1#", &file],
        vec!["-X", "POST", "-d", "_method=DELETE", &file],
        vec!["-X", "POST", "-d", "a=1;_method=DELETE", &file],
        vec!["-X", "POST", "-d", "%5Fmethod=DELETE", &file],
        vec![
            "-X",
            "POST",
            "-H",
            json,
            "-d",
            r#"{"_method":"DELETE"}"#,
            &file,
        ],
        vec![
            "-X",
            "POST",
            "-H",
            json,
            "-d",
            r#"{"\u005fmethod":"DELETE"}"#,
            &file,
        ],
        vec!["-X", "GET", &get_override],
        vec!["-X", "POST", "-H", "X-HTTP-Method-Override: DELETE", &file],
        vec!["-X", "POST", "-H", "X_HTTP_Method_Override: DELETE", &file],
        vec!["-H", "X_Confirm: yes", &dry],
        vec!["-H", "X-Confirm: yes", &dry_semicolon],
        vec!["-H", "X-Confirm: yes", &dry_indexed],
        vec!["-H", "x-confirm: yes", &dry_encoded],
    ];
    for args in &attempts {
        send(args);
    }
    for i in 0..6 {
        let target = format!("/v1/files#{i}");
        send(&["-X", "POST", "-d", "x", "--request-target", &target, &files]);
    }
    let r = send(&[&url("/v1/models")]);
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{r:?}");
    let readings = origin.readings();
    assert!(
        readings
            .iter()
            .any(|r| r["method"] == "GET" && r["path"] == "/v1/models"),
        "the origin logs what it reads: {readings:?}"
    );
    let has = |r: &Value, field: &str, v: &str| r[field].as_array().unwrap().iter().any(|x| x == v);
    for r in &readings {
        let (method, path) = (r["method"].as_str().unwrap(), r["path"].as_str().unwrap());
        assert!(
            !(method == "DELETE" && path.starts_with("/v1/")),
            "denied, yet acted on: {r}"
        );
        assert!(
            !(method == "POST" && path == "/v1/refunds"),
            "held, yet acted on: {r}"
        );
        assert!(
            !(has(r, "query_keys", "dry_run") && has(r, "headers", "X_CONFIRM")),
            "denied by its query and header, yet acted on: {r}"
        );
    }
    let posts = readings
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/v1/files")
        .count();
    assert!(posts <= 3, "a limit of 3 a minute, acted on {posts} times");
}
