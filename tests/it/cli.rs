//! The CLI end to end: init, vaults, services, credentials, agents, tokens, config, CA.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Env, canary, command, contains, files, output, snapshot};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_creates_private_dir_and_key_and_is_idempotent() {
    let env = Env::init();
    assert_eq!(mode(&env.data_dir), 0o700);
    assert_eq!(mode(&env.data_dir.join("master.key")), 0o600);
    assert_eq!(
        std::fs::metadata(env.data_dir.join("master.key"))
            .unwrap()
            .len(),
        32
    );
    assert_eq!(mode(&env.data_dir.join("ca-key.wrapped")), 0o600);
    assert_eq!(mode(&env.data_dir.join("vault")), 0o700);
    assert_eq!(mode(&env.data_dir.join("vault/data.mdb")), 0o600);
    let before = snapshot(&env.data_dir);
    let again = env.run(&["init"]).ok();
    assert!(again.stdout.contains("already initialised"), "{again:?}");
    assert_eq!(
        before,
        snapshot(&env.data_dir),
        "a second init changed files"
    );
    let vaults = env.run(&["vault", "list", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&vaults.stdout).unwrap();
    assert_eq!(v[0]["name"], "default");
    assert_eq!(v[0]["policy"], "deny");
}

/// security.md row 58: a wrong passphrase is refused in one line and nothing is written.
#[test]
fn row58_passphrase_vault_has_no_key_file_and_refuses_wrong_passphrase() {
    let env = Env::empty();
    let good = env.write("pass", "correct horse battery staple\n");
    let bad = env.write("wrong", "not the passphrase\n");
    env.run(&["init", "--passphrase-file", good.to_str().unwrap()])
        .ok();
    assert!(!env.data_dir.join("master.key").exists());
    let before = snapshot(&env.data_dir);
    let r = env.run(&["init", "--passphrase-file", bad.to_str().unwrap()]);
    assert!(r.fails().contains("wrong root key or passphrase"), "{r:?}");
    assert_eq!(
        before,
        snapshot(&env.data_dir),
        "a refused init wrote something"
    );
    env.run(&["init", "--passphrase-file", good.to_str().unwrap()])
        .ok();
    let mut c = env.command(&["init"]);
    c.env("AIRLOCK_PASSPHRASE", "correct horse battery staple");
    output(c, None).ok();
    let r = env.run(&["init"]);
    assert!(r.fails().contains("no root key"), "{r:?}");
}

#[test]
fn master_key_file_and_systemd_credential_sources() {
    let env = Env::empty();
    let key = env.write("key.hex", &format!("{}\n", "5a".repeat(32)));
    env.run(&["init", "--master-key-file", key.to_str().unwrap()])
        .ok();
    assert!(!env.data_dir.join("master.key").exists());
    // The same key as a systemd credential opens the vault.
    let creds = env.path("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("master-key"), [0x5a; 32]).unwrap();
    let mut c = env.command(&["init"]);
    c.env("CREDENTIALS_DIRECTORY", &creds);
    assert!(output(c, None).ok().stdout.contains("already initialised"));
    // A different credential is refused.
    std::fs::write(creds.join("master-key"), [0x11; 32]).unwrap();
    let mut c = env.command(&["init"]);
    c.env("CREDENTIALS_DIRECTORY", &creds);
    assert!(output(c, None).fails().contains("wrong root key"));
    let r = env.run(&["init", "--master-key-file", "/nonexistent/key"]);
    assert!(r.fails().contains("/nonexistent/key"));
}

const SERVICES: &str = r#"
services:
  - name: openai
    host: api.openai.com
    auth: {type: bearer, token: OPENAI_KEY}
  - name: acme
    host: api.acme.internal:8443/v2/*
    auth: {type: custom, headers: {X-Api-Key: "{{ OPENAI_KEY }}"}}
    substitutions:
      - {key: OPENAI_KEY, placeholder: __acme_account__, in: [path, query]}
"#;

#[test]
fn services_and_credentials_flow_with_canary_nowhere() {
    let env = Env::init();
    env.run(&["vault", "create", "demo"]).ok();
    let canary = canary();
    let set = env
        .run_stdin(
            &["credential", "set", "--vault", "demo", "OPENAI_KEY"],
            format!("{canary}\n").as_bytes(),
        )
        .ok();
    let file = env.write("services.yaml", SERVICES);
    let mut outputs = vec![set];
    outputs.push(
        env.run(&[
            "service",
            "set",
            "--vault",
            "demo",
            "-f",
            file.to_str().unwrap(),
        ])
        .ok(),
    );
    assert!(outputs.last().unwrap().stdout.contains("2 added"));
    outputs.push(
        env.run(&[
            "service",
            "set",
            "--vault",
            "demo",
            "-f",
            file.to_str().unwrap(),
        ])
        .ok(),
    );
    assert!(
        outputs
            .last()
            .unwrap()
            .stdout
            .contains("0 added, 0 updated")
    );
    outputs.push(env.run(&["service", "list", "--vault", "demo"]).ok());
    outputs.push(
        env.run(&["service", "list", "--vault", "demo", "--json"])
            .ok(),
    );
    let list: serde_json::Value = serde_json::from_str(&outputs.last().unwrap().stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["name"], "acme");
    outputs.push(
        env.run(&["credential", "list", "--vault", "demo", "--json"])
            .ok(),
    );
    let creds: serde_json::Value = serde_json::from_str(&outputs.last().unwrap().stdout).unwrap();
    assert_eq!(creds[0]["key"], "OPENAI_KEY");
    outputs.push(env.run(&["audit", "list", "--json"]).ok());
    let audit = &outputs.last().unwrap().stdout;
    assert!(
        audit.contains("credential.set") && audit.contains("service.set"),
        "{audit}"
    );
    assert!(audit.contains("cli uid="), "{audit}");
    // Replacing the list removes what is not in the file.
    let one = env.write("one.yaml", "services:\n  - name: openai\n    host: api.openai.com\n    auth: {type: bearer, token: OPENAI_KEY}\n");
    outputs.push(
        env.run(&[
            "service",
            "set",
            "--vault",
            "demo",
            "-f",
            one.to_str().unwrap(),
            "--replace",
        ])
        .ok(),
    );
    assert!(outputs.last().unwrap().stdout.contains("1 removed"));
    // The credential is in use, so it cannot be deleted; after removing the service it can.
    let r = env.run(&["credential", "delete", "--vault", "demo", "OPENAI_KEY"]);
    assert!(r.fails().contains("used by service \"openai\""));
    outputs.push(r);
    outputs.push(
        env.run(&["service", "remove", "--vault", "demo", "openai"])
            .ok(),
    );
    outputs.push(env.run(&["credential", "set", "--vault", "demo", "OTHER"]));
    // Issue 2: the canary is nowhere under the data dir and in no command's output.
    for (path, bytes) in files(&env.data_dir) {
        assert!(
            !contains(&bytes, canary.as_bytes()),
            "canary found in {}",
            path.display()
        );
    }
    for o in &outputs {
        assert!(
            !o.stdout.contains(&canary) && !o.stderr.contains(&canary),
            "canary in output {o:?}"
        );
    }
}

#[test]
fn agents_and_tokens() {
    let env = Env::init();
    let created = env
        .run(&["agent", "create", "bot", "--vault", "default"])
        .ok();
    let token = created.last_line().to_owned();
    assert!(
        token.starts_with("alk_agt_") && token.len() == 8 + 52,
        "{token}"
    );
    let store = env.store();
    let rec = store
        .token(token.as_bytes())
        .unwrap()
        .expect("token stored by hash");
    assert_eq!(rec.agent.as_deref(), Some("bot"));
    // The token text is stored nowhere, only its hash.
    for (path, bytes) in files(&env.data_dir) {
        assert!(
            !contains(&bytes, token.as_bytes()),
            "token found in {}",
            path.display()
        );
    }
    drop(store);
    let rotated = env
        .run(&["agent", "rotate", "bot"])
        .ok()
        .last_line()
        .to_owned();
    assert_ne!(rotated, token);
    assert!(
        env.store().token(token.as_bytes()).unwrap().is_none(),
        "old token still valid"
    );
    let scoped = env
        .run(&[
            "token", "mint", "--vault", "default", "--ttl", "30m", "--agent", "bot",
        ])
        .ok();
    let scoped = scoped.last_line().to_owned();
    assert!(scoped.starts_with("alk_tok_"));
    let rec = env.store().token(scoped.as_bytes()).unwrap().unwrap();
    assert_eq!(rec.vault.as_deref(), Some("default"));
    let ttl = rec.expires_at.unwrap() - rec.created_at;
    assert!((1790..=1810).contains(&ttl), "{ttl}");
    env.run(&["agent", "revoke", "bot"]).ok();
    assert!(env.store().token(rotated.as_bytes()).unwrap().is_none());
    assert!(
        env.store().token(scoped.as_bytes()).unwrap().is_none(),
        "scoped token survived revoke"
    );
    let list = env.run(&["agent", "list", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v[0]["revoked"], true);
}

/// Issue 2: every bad-input path exits non-zero with one line naming the problem and leaves the
/// store as it was (the generation counter did not move).
#[test]
fn bad_inputs_fail_in_one_line_and_change_nothing() {
    let env = Env::init();
    env.run_stdin(&["credential", "set", "K"], b"v").ok();
    let bad_yaml = [
        (
            "unknown field",
            "services:\n  - name: abc\n    host: a.example.com\n    auth: {type: bearer, token: K}\n    colour: red\n",
            "colour",
        ),
        (
            "bad host",
            "services:\n  - name: abc\n    host: \"*.com\"\n    auth: {type: bearer, token: K}\n",
            "host",
        ),
        (
            "missing credential",
            "services:\n  - name: abc\n    host: a.example.com\n    auth: {type: bearer, token: NOPE}\n",
            "NOPE",
        ),
        (
            "bad key",
            "services:\n  - name: abc\n    host: a.example.com\n    auth: {type: bearer, token: lower}\n",
            "auth.token",
        ),
        (
            "bad name",
            "services:\n  - name: A\n    host: a.example.com\n    auth: {type: bearer, token: K}\n",
            "name",
        ),
        (
            "duplicate matcher",
            "services:\n  - name: abc\n    host: a.example.com\n    auth: {type: bearer, token: K}\n  - name: abd\n    host: A.example.com:443\n    auth: {type: bearer, token: K}\n",
            "both match",
        ),
        ("not yaml", "services: [", "service file"),
    ];
    let gen0 = env.generation();
    for (what, yaml, needle) in bad_yaml {
        let f = env.write("bad.yaml", yaml);
        let r = env.run(&["service", "set", "-f", f.to_str().unwrap()]);
        assert!(r.fails().contains(needle), "{what}: {r:?}");
    }
    // (arguments, stdin, what the one-line error must mention)
    type Case<'a> = (&'a [&'a str], Option<&'a [u8]>, &'a str);
    let cases: &[Case] = &[
        (&["vault", "create", "Bad_Name"], None, "invalid vault name"),
        (&["vault", "create", "default"], None, "already exists"),
        (&["vault", "policy", "nope", "tunnel"], None, "not found"),
        (
            &["credential", "set", "lower"],
            Some(b"v"),
            "invalid credential key",
        ),
        (&["credential", "set", "K2"], Some(b"a\nb"), "LF"),
        (&["credential", "set", "K2"], Some(b"a\0b"), "NUL"),
        (&["credential", "set", "K2"], Some(b""), "empty"),
        (
            &["credential", "set", "--vault", "nope", "K2"],
            Some(b"v"),
            "not found",
        ),
        (&["credential", "delete", "NOPE"], None, "not found"),
        (&["service", "remove", "nope"], None, "not found"),
        (
            &["agent", "create", "bot", "--vault", "nope"],
            None,
            "not found",
        ),
        (
            &["agent", "create", "Bot", "--vault", "default"],
            None,
            "invalid agent name",
        ),
        (&["agent", "revoke", "nope"], None, "not found"),
        (&["token", "mint", "--ttl", "5s"], None, "--ttl"),
        (&["token", "mint", "--vault", "nope"], None, "not found"),
    ];
    for (args, stdin, needle) in cases {
        let r = match stdin {
            Some(s) => env.run_stdin(args, s),
            None => env.run(args),
        };
        assert!(r.fails().contains(needle), "{args:?}: {r:?}");
    }
    assert_eq!(
        env.generation(),
        gen0,
        "a refused command wrote to the store"
    );
    // Commands on a data dir that was never initialised say so.
    let empty = Env::empty();
    let r = empty.run(&["vault", "list"]);
    assert!(r.fails().contains("airlock init"), "{r:?}");
    assert!(
        !empty.data_dir.exists(),
        "a refused command created the data dir"
    );
}

#[test]
fn config_check_names_key_and_line_and_exits_78() {
    let env = Env::empty();
    let good = env.write(
        "good.toml",
        "listen = \"127.0.0.1:0\"\nnetwork_allow = [\"127.0.0.1/32\"]\n",
    );
    let r = output(command(&["config", "check", good.to_str().unwrap()]), None).ok();
    assert!(r.stdout.contains("ok"));
    let bad = env.write("bad.toml", "listen = \"127.0.0.1:0\"\n\nworkers = 0\n");
    let r = output(command(&["config", "check", bad.to_str().unwrap()]), None);
    assert_eq!(r.code, 78);
    assert!(r.fails().contains("line 3"), "{r:?}");
    let unknown = env.write("unknown.toml", "lisen = \"127.0.0.1:0\"\n");
    let r = output(
        command(&["config", "check", unknown.to_str().unwrap()]),
        None,
    );
    assert_eq!(r.code, 78);
    assert!(r.fails().contains("lisen"));
    let mut c = command(&["config", "check"]);
    c.env("AIRLOCK_CONFIG", &unknown);
    assert_eq!(output(c, None).code, 78);
    // The config file's data_dir is used by other commands.
    let cfg = env.write(
        "dd.toml",
        &format!("data_dir = {:?}\n", env.data_dir.to_str().unwrap()),
    );
    output(command(&["init", "--config", cfg.to_str().unwrap()]), None).ok();
    assert!(env.data_dir.join("master.key").exists());
}

#[test]
fn ca_export_prints_the_ca() {
    let env = Env::init();
    let r = env.run(&["ca", "export"]).ok();
    assert!(r.stdout.starts_with("-----BEGIN CERTIFICATE-----"), "{r:?}");
    assert_eq!(
        r.stdout,
        std::fs::read_to_string(env.data_dir.join("ca.pem")).unwrap()
    );
}

/// The packaged default config passes `config check` (issue 8), and `serve` notifies systemd
/// (`Type=notify`) once its listeners are up.
#[test]
fn packaged_config_checks_and_serve_notifies_readiness() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/airlock.toml");
    let r = output(command(&["config", "check", cfg]), None).ok();
    assert!(r.stdout.contains("ok"), "{r:?}");
    let env = Env::init();
    let notify = env.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut c = env.command(&["serve", "--listen", "127.0.0.1:0", "--no-admin"]);
    c.env("NOTIFY_SOCKET", &notify)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(&buf[..n], b"READY=1");
}

/// `airlock logs`: newest first, `--limit`, and each filter (`--agent`, `--service`, `--status`
/// as a status or a class, `--error`, `--since` and `--until` as RFC 3339 or an age) keeps only
/// what it names; a bad time or status is a usage error naming the forms it takes.
#[test]
fn logs_filter_newest_first() {
    let s = crate::proxy::Setup::new("auto");
    let other = s.env.agent_token("other-bot", "default");
    // Each row waited for before the next request, so the log's order is the requests' (rows
    // of different workers may otherwise reach it a batch apart).
    for path in ["/v1/a", "/v1/b", "/v1/c"] {
        s.curl(&[&format!("https://api.openai.com{path}")]).ok();
        s.env.log_row("default", |r| r["path"] == path);
    }
    s.curl_as(
        &other,
        crate::support::Curl::new(),
        &["https://api.openai.com/v1/other"],
    )
    .ok();
    s.env.log_row("default", |r| r["path"] == "/v1/other");
    s.curl(&["https://api.unknown-vendor.com/"]);
    s.env.log_rows("default", 5);
    let logs = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["logs", "--json"];
        all.extend_from_slice(args);
        let out = s.env.run(&all).ok().stdout;
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let paths = |rows: &[serde_json::Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["path"].as_str().unwrap().to_owned())
            .collect()
    };
    // Newest first, in the order rows were logged (a row is logged when its request ends); the
    // refused CONNECT has no path.
    let all = logs(&[]);
    assert_eq!(paths(&all), ["", "/v1/other", "/v1/c", "/v1/b", "/v1/a"]);
    assert_eq!(paths(&logs(&["--limit", "2"])), ["", "/v1/other"]);
    assert_eq!(paths(&logs(&["--agent", "other-bot"])), ["/v1/other"]);
    assert_eq!(logs(&["--agent", "bot", "--service", "openai"]).len(), 3);
    assert_eq!(paths(&logs(&["--status", "4xx"])), [""]);
    assert_eq!(paths(&logs(&["--error", "no_service"])), [""]);
    assert_eq!(logs(&["--status", "200"]).len(), 4);
    assert_eq!(logs(&["--status", "2xx", "--since", "1h"]).len(), 4);
    assert!(logs(&["--until", "2000-01-01T00:00:00Z"]).is_empty());
    assert!(logs(&["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let newest = all[0]["at_ms"].as_u64().unwrap();
    let until = airlock::vault::rfc3339(newest / 1000);
    assert!(
        logs(&["--until", &until]).len() < 5,
        "--until {until} excludes the newest"
    );
    for bad in [&["--since", "yesterday-ish"][..], &["--status", "6xx"]] {
        let mut args = vec!["logs"];
        args.extend_from_slice(bad);
        let r = s.env.run(&args);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stderr.contains(bad[1]), "{r:?}");
    }
    // The table names the columns and prints the newest row first.
    let table = s.env.run(&["logs", "--limit", "1"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("TIME") && lines[1].contains("no_service"),
        "{table}"
    );
}

/// No command panics when its reader went away: run with stdout a pipe whose other end is
/// closed (what `airlock logs | head -1` leaves once head exits), each ends with status 0 and
/// nothing on stderr.
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let s = crate::proxy::Setup::new("auto");
    s.curl(&["https://api.unknown-vendor.com/"]);
    s.env.log_rows("default", 1);
    for args in [
        &["logs"][..],
        &["logs", "--json"],
        &["logs", "--hosts"],
        &["service", "list"],
        &["agent", "list"],
        &["vault", "list"],
        &["ca", "export"],
        &["credential", "list", "--json"],
        &["vault", "export"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut c = s.env.command(args);
        c.stdin(std::process::Stdio::null()).stdout(writer);
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            (out.status.code(), &*stderr),
            (Some(0), ""),
            "airlock {args:?}"
        );
    }
    // And through a shell, as an operator types it.
    let cmd = format!(
        "set -o pipefail; {} --data-dir {} logs --json | head -1",
        crate::support::bin(),
        s.env.data_dir.display()
    );
    let mut sh = std::process::Command::new("bash");
    sh.args(["-c", &cmd]);
    let r = output(sh, None);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    assert!(r.stdout.contains("no_service"), "{r:?}");
}

/// `airlock vault export`: the vault's services with their rules, policy, allowlist and granted
/// agents as YAML, and no secret (neither a credential's value nor an agent's token).
#[test]
fn vault_export_is_yaml_without_secrets() {
    let env = Env::init();
    let value = canary();
    env.run_stdin(&["credential", "set", "OPENAI_KEY"], value.as_bytes())
        .ok();
    env.set_services(
        "services:\n  - name: openai\n    host: api.openai.com\n    auth: {type: bearer, token: OPENAI_KEY}\n    rules:\n      - {name: no-deletes, methods: [DELETE], action: deny}\n",
    );
    env.run(&["vault", "allow", "default", "pypi.org"]).ok();
    let token = env.agent_token("ci-bot", "default");
    let r = env.run(&["vault", "export", "default"]).ok();
    for expected in [
        "vault: default",
        "unmatched: deny",
        "pypi.org",
        "no-deletes",
        "OPENAI_KEY",
        "ci-bot",
    ] {
        assert!(r.stdout.contains(expected), "{expected}: {}", r.stdout);
    }
    assert!(
        !r.stdout.contains(&value) && !r.stdout.contains(&token),
        "{}",
        r.stdout
    );
    let missing = env.run(&["vault", "export", "nope"]);
    assert_eq!(missing.code, 1, "{missing:?}");
}
