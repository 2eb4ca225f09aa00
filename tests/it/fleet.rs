//! Fleet mode with real parts: a PostgreSQL cluster started here ([`Postgres`]), three
//! `airlock serve` nodes on loopback ports, each with its own data dir, the real CLI on each,
//! curl through each. The scenarios of the fleet issue: approvals, tokens and revocations across
//! nodes, concurrent writers converging, PostgreSQL going away and coming back, a node killed
//! mid-write, a node joining late, and a sweep of the database for secrets.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::proxy::{HOSTS, SERVICES};
use crate::support::origin::Origin;
use crate::support::pg::Postgres;
use crate::support::{Balancer, Curl, Env, Proxy, Run, api, canary};

/// One node: its data dir, config file and running serve.
pub(crate) struct Node {
    pub name: String,
    pub env: Env,
    pub config: PathBuf,
    pub proxy: Option<Proxy>,
    extra: Vec<String>,
}

impl Node {
    /// `airlock --config C ARGS` on this node.
    pub(crate) fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        self.env.run(&all)
    }

    pub(crate) fn run_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        self.env.run_stdin(&all, stdin.as_bytes())
    }

    pub(crate) fn start(&mut self, origin: &Origin) {
        let mut extra: Vec<&str> = vec!["--config", self.config.to_str().unwrap()];
        extra.extend(self.extra.iter().map(String::as_str));
        self.proxy = Some(Proxy::for_origin(
            &self.env, origin, HOSTS, "auto", &extra, true, true,
        ));
    }

    pub(crate) fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("serve running")
    }

    /// `METHOD path` on this node's agent API, with `token` if given: (status, JSON body).
    pub(crate) fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        api::call(self.proxy().addr, method, path, token, body)
    }

    /// curl through this node's proxy to `url` with a placeholder bearer: stdout ends with the
    /// status code.
    pub(crate) fn curl(&self, token: &str, url: &str) -> Run {
        let ca = self.env.data_dir.join("ca.pem");
        curl_via(&self.proxy().url(token, "default"), &ca, url)
    }

    /// Waits until this node reports proposal `id` applied, which means it serves it.
    fn wait_applied(&self, token: &str, id: &str) {
        let end = Instant::now() + Duration::from_secs(5);
        let path = format!("/v1/proposals/{id}");
        loop {
            let (_, status) = self.api("GET", &path, Some(token), None);
            if status["status"] == "applied" {
                return;
            }
            assert!(Instant::now() < end, "never applied: {status}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn applied(&self) -> u64 {
        self.api("GET", "/healthz", None, None).1["fleet"]["applied_seq"]
            .as_u64()
            .unwrap_or(0)
    }

    fn snapshot(&self) -> Vec<airlock::vault::store::Change> {
        self.env.store().snapshot().unwrap()
    }
}

pub(crate) struct FleetSetup {
    pub pg: Postgres,
    _origin_dir: tempfile::TempDir,
    pub origin: Origin,
    pub nodes: Vec<Node>,
    /// The agent `bot`'s token.
    pub token: String,
    /// Credential key -> canary value.
    secrets: Vec<(String, String)>,
}

pub(crate) fn config(env: &Env, pg: &Postgres, extra: &str) -> PathBuf {
    env.write(
        "airlock.toml",
        &format!("store_url = {:?}\n{extra}", pg.url()),
    )
}

impl FleetSetup {
    /// Node `a` is initialised with the usual services and canary credentials, made the fleet's
    /// first node, and `b`, `c` join it with a copy of its root key; all three serve.
    /// `extra_config[i]` is appended to node i's config file.
    pub(crate) fn new(extra_config: [&str; 3], serve_flags: [&[&str]; 3]) -> Self {
        let pg = Postgres::start();
        let base = canary();
        let origin_dir = tempfile::tempdir().unwrap();
        let origin = Origin::https(origin_dir.path(), HOSTS);
        let mut nodes = Vec::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let env = if i == 0 { Env::init() } else { Env::empty() };
            let config = config(&env, &pg, extra_config[i]);
            nodes.push(Node {
                name: name.into(),
                env,
                config,
                proxy: None,
                extra: serve_flags[i].iter().map(|s| s.to_string()).collect(),
            });
        }
        let a = &nodes[0];
        let secrets: Vec<(String, String)> = [
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
        .map(|k| (k.to_owned(), format!("{base}-{}", k.to_ascii_lowercase())))
        .collect();
        // Half the vault before the fleet exists, half through it.
        for (k, v) in &secrets[..4] {
            a.run_stdin(&["credential", "set", k], v).ok();
        }
        a.run(&["fleet", "init", "--node", "a"]).ok();
        for (k, v) in &secrets[4..] {
            a.run_stdin(&["credential", "set", k], v).ok();
        }
        let file = a.env.write("services.yaml", SERVICES);
        a.run(&["service", "set", "-f", file.to_str().unwrap()])
            .ok();
        let token = a
            .run(&["agent", "create", "bot", "--vault", "default"])
            .ok()
            .last_line()
            .to_owned();
        let key = std::fs::read(a.env.data_dir.join("master.key")).unwrap();
        for node in &nodes[1..] {
            std::fs::create_dir_all(&node.env.data_dir).unwrap();
            std::fs::write(node.env.data_dir.join("master.key"), &key).unwrap();
            let r = node.run(&["fleet", "join", "--node", &node.name]).ok();
            assert!(r.stdout.contains("joined fleet"), "{r:?}");
        }
        for node in &mut nodes {
            node.start(&origin);
        }
        Self {
            pg,
            _origin_dir: origin_dir,
            origin,
            nodes,
            token,
            secrets,
        }
    }

    pub(crate) fn secret(&self, key: &str) -> &str {
        &self.secrets.iter().find(|(k, _)| k == key).unwrap().1
    }

    /// Waits until every node applied the same position as node `a`'s store; returns it.
    pub(crate) fn converge(&self) -> u64 {
        let head = self.nodes[0].env.store().generation().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let applied: Vec<u64> = self.nodes.iter().map(Node::applied).collect();
            if applied.iter().all(|&a| a >= head) {
                return head;
            }
            assert!(
                Instant::now() < end,
                "no convergence on {head}: {applied:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last request the origin received carried `value` in `header`.
    fn last_carried(&self, header: &str, value: &str) {
        let last = self.origin.recorded().last().cloned().unwrap();
        assert_eq!(last.header(header), [value], "{}", last.head);
    }
}

/// curl through `proxy` (trusting `ca`) to `url` with a placeholder bearer: stdout ends with
/// the status code.
fn curl_via(proxy: &str, ca: &std::path::Path, url: &str) -> Run {
    Curl::via(proxy, ca)
        .max_time(10)
        .status()
        .bearer("placeholder")
        .arg(url)
        .run()
}

pub(crate) const NO_EXTRA: [&str; 3] = ["", "", ""];
pub(crate) const NO_FLAGS: [&[&str]; 3] = [&[], &[], &[]];

/// Scenario 1: an agent on node b proposes a service; an operator approves it on node a (CLI);
/// node c reports it `applied` only once it serves it, and b and c inject the new credential. A
/// second proposal is approved through node c's admin JSON API and served by a. Also the canary
/// sweep: the database holds no credential, token or root key.
#[test]
fn fleet_approval_on_one_node_is_served_by_all() {
    let f = FleetSetup::new(NO_EXTRA, [&[], &[], &["--admin-listen", "127.0.0.1:0"]]);
    let (a, b, c) = (&f.nodes[0], &f.nodes[1], &f.nodes[2]);
    let r = a.curl(&f.token, "https://api.openai.com/v1/models");
    assert!(r.stdout.ends_with(" 200"), "{r:?}");
    f.last_carried(
        "authorization",
        &format!("Bearer {}", f.secret("OPENAI_KEY")),
    );
    let proposal = json!({
        "services": [{"action": "set", "name": "other", "host": "other.example.net", "auth": {"type": "bearer", "token": "OTHER_KEY"}}],
        "credentials": [{"key": "OTHER_KEY", "description": "Other API key"}],
        "user_message": "need other",
    });
    let (code, p) = b.api("POST", "/v1/proposals", Some(&f.token), Some(&proposal));
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_u64().unwrap().to_string();
    let other = format!("{}-other", canary());
    let r = a.run_stdin(
        &["proposal", "approve", &id, "--credential", "OTHER_KEY"],
        &other,
    );
    assert_eq!(r.code, 0, "{r:?}");
    c.wait_applied(&f.token, &id);
    // Applied on c means served on c, at once.
    let r = c.curl(&f.token, "https://other.example.net/x");
    assert!(r.stdout.ends_with(" 200"), "{r:?}");
    f.last_carried("authorization", &format!("Bearer {other}"));
    let r = b.curl(&f.token, "https://other.example.net/y");
    assert!(r.stdout.ends_with(" 200"), "{r:?}");

    // The admin process of node c approves through the fleet too.
    let second = json!({
        "services": [{"action": "set", "name": "jira2", "host": "team.atlassian.net/v3/*", "auth": {"type": "bearer", "token": "JIRA2_KEY"}}],
        "credentials": [{"key": "JIRA2_KEY", "description": "Jira v3"}],
        "user_message": "need jira v3",
    });
    let (code, p) = b.api("POST", "/v1/proposals", Some(&f.token), Some(&second));
    assert_eq!(code, 201, "{p}");
    let id2 = p["id"].as_u64().unwrap();
    let socket = c
        .proxy()
        .admin_api
        .clone()
        .expect("node c runs its admin process");
    let api = |method: &str, path: &str, body: Option<Value>| {
        crate::admin::api_socket_at(&socket, method, path, body, &[])
    };
    let (_, pending) = api("GET", "/api/proposals?status=pending", None);
    let digest = pending[0]["digest"].as_str().unwrap().to_owned();
    let jira2 = format!("{}-jira2", canary());
    let (code, v) = api(
        "POST",
        &format!("/api/proposals/{id2}/approve"),
        Some(json!({"digest": digest, "values": {"JIRA2_KEY": jira2}})),
    );
    assert_eq!(code, 200, "{v}");
    // Until a applies it, a serves team.atlassian.net with the older jira service: wait for
    // `applied` there, after which the narrower v3 service must win at once.
    a.wait_applied(&f.token, &id2.to_string());
    let r = a.curl(&f.token, "https://team.atlassian.net/v3/issue");
    assert!(r.stdout.ends_with(" 200"), "{r:?}");
    f.last_carried("authorization", &format!("Bearer {jira2}"));

    let dump = f.pg.dump();
    assert!(dump.contains("airlock_changes"), "the dump is of the fleet");
    for (k, v) in &f.secrets {
        assert!(!dump.contains(v.as_str()), "{k} is in the database");
    }
    assert!(!dump.contains(&other) && !dump.contains(&jira2));
    assert!(
        !dump.contains(&f.token),
        "an agent token is in the database"
    );
    let root = std::fs::read(a.env.data_dir.join("master.key")).unwrap();
    let root_text = String::from_utf8_lossy(&root).trim().to_owned();
    assert!(
        !dump.contains(&root_text),
        "the root key is in the database"
    );
}

/// Scenario 2: a scoped token minted through node a's agent API works on node b at once; the
/// agent revoked on node c is refused by a and b within a second.
#[test]
fn fleet_tokens_work_everywhere_at_once_and_revocations_reach_all() {
    let f = FleetSetup::new(NO_EXTRA, NO_FLAGS);
    let (a, b, c) = (&f.nodes[0], &f.nodes[1], &f.nodes[2]);
    // Each node enforces its share of the per-agent limits among the live nodes.
    let end = Instant::now() + Duration::from_secs(5);
    while b.api("GET", "/healthz", None, None).1["fleet"]["live_nodes"] != 3 {
        assert!(Instant::now() < end, "b never saw three live nodes");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, minted) = a.api(
        "POST",
        "/v1/tokens",
        Some(&f.token),
        Some(&json!({"ttl_seconds": 600})),
    );
    assert_eq!(code, 201, "{minted}");
    let scoped = minted["token"].as_str().unwrap().to_owned();
    let r = b.curl(&scoped, "https://api.openai.com/v1/models");
    assert!(
        r.stdout.ends_with(" 200"),
        "a token minted on a works on b at once: {r:?}"
    );
    for node in [a, b] {
        assert!(
            node.curl(&f.token, "https://api.openai.com/v1/m")
                .stdout
                .ends_with(" 200")
        );
    }
    c.run(&["agent", "revoke", "bot"]).ok();
    let revoked = Instant::now();
    for node in [a, b] {
        loop {
            let r = node.curl(&f.token, "https://api.openai.com/v1/m");
            if !r.stdout.ends_with(" 200") {
                break;
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(1),
                "node {} still serves a revoked agent",
                node.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Scenario 3: writers on all three nodes at once (credentials through the CLI, token mints and
/// proposals through the agent API): every acknowledged write is on every node, and the three
/// vaults are identical.
#[test]
fn fleet_concurrent_writers_converge() {
    let f = FleetSetup::new(NO_EXTRA, NO_FLAGS);
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let minted_tokens = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for node in &f.nodes {
            let (acked, acked_tokens, token) = (&acknowledged, &minted_tokens, &f.token);
            s.spawn(move || {
                for i in 0..100 {
                    let key = format!("K_{}_{i}", node.name.to_ascii_uppercase());
                    if node.run_stdin(&["credential", "set", &key], "v").code == 0 {
                        acked.lock().unwrap().push(key);
                    }
                }
            });
            s.spawn(move || {
                for i in 0..100 {
                    let body = json!({"ttl_seconds": 600});
                    let (code, minted) = node.api("POST", "/v1/tokens", Some(token), Some(&body));
                    assert!(code == 201 || code == 429, "{code}");
                    if code == 201 {
                        let t = minted["token"].as_str().unwrap().to_owned();
                        acked_tokens.lock().unwrap().push(t);
                    }
                    if i < 5 {
                        let p = json!({"services": [{"action": "set", "name": format!("s-{}-{i}", node.name), "host": format!("s{i}.{}.example.net", node.name), "auth": {"type": "bearer", "token": "OPENAI_KEY"}}], "user_message": "more"});
                        let (code, body) = node.api("POST", "/v1/proposals", Some(token), Some(&p));
                        assert_eq!(code, 201, "{body}");
                    }
                }
            });
        }
    });
    let head = f.converge();
    let snapshots: Vec<_> = f.nodes.iter().map(Node::snapshot).collect();
    assert!(
        snapshots[0] == snapshots[1] && snapshots[1] == snapshots[2],
        "the vaults differ at {head}"
    );
    let listed = f.nodes[2].env.store().credentials("default").unwrap();
    let acked = acknowledged.into_inner().unwrap();
    assert_eq!(acked.len(), 300, "every write was acknowledged");
    for key in &acked {
        assert!(listed.iter().any(|(k, _)| k == key), "{key} is missing");
    }
    let pending = f.nodes[1]
        .run(&["proposal", "list", "--status", "pending", "--json"])
        .ok();
    assert_eq!(
        serde_json::from_str::<Value>(&pending.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        15
    );
}

/// Scenario 4: PostgreSQL stops. Every node keeps injecting; a write fails with one clear line
/// and changes nothing; the store's silence shows in `/healthz` and the metrics; node c, with
/// `fleet_max_staleness = "2s"`, fails credentialed requests closed and reports 503. PostgreSQL
/// returns: the nodes catch up without a restart.
#[test]
fn fleet_partition_keeps_serving_and_catches_up() {
    let f = FleetSetup::new(
        ["", "", "fleet_max_staleness = \"2s\"\n"],
        [&[], &["--metrics-listen", "127.0.0.1:0"], &[]],
    );
    let (a, b, c) = (&f.nodes[0], &f.nodes[1], &f.nodes[2]);
    let before = a.env.store().generation().unwrap();
    f.pg.stop();
    let stopped = Instant::now();
    for node in &f.nodes {
        let r = node.curl(&f.token, "https://api.openai.com/v1/models");
        assert!(
            r.stdout.ends_with(" 200"),
            "node {} keeps serving: {r:?}",
            node.name
        );
    }
    let r = a.run_stdin(&["credential", "set", "DURING"], "v");
    assert_eq!(r.code, 1, "{r:?}");
    let line = r.stderr.lines().last().unwrap();
    assert!(
        line.starts_with("airlock: store_unavailable: PostgreSQL"),
        "{r:?}"
    );
    assert_eq!(
        a.env.store().generation().unwrap(),
        before,
        "nothing was written"
    );
    std::thread::sleep(Duration::from_millis(3000).saturating_sub(stopped.elapsed()));
    // `fleet status` answers from what the node knows: its name, its change, its serve's
    // last contact with the store.
    let r = a.run(&["fleet", "status"]).ok();
    assert!(
        r.stdout.contains("cannot be reached") && r.stdout.contains(&before.to_string()),
        "{r:?}"
    );
    let r = a.run(&["fleet", "status", "--json"]).ok();
    let offline: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        (&offline["store"], &offline["node"], &offline["serving"]),
        (&json!("unreachable"), &json!("a"), &json!(true)),
        "{offline}"
    );
    assert!(
        offline["store_contact_age_secs"].as_f64().unwrap() > 2.0,
        "{offline}"
    );
    let (code, health) = b.api("GET", "/healthz", None, None);
    assert_eq!(code, 200, "{health}");
    assert!(
        health["fleet"]["store_contact_age_secs"].as_f64().unwrap() > 2.0,
        "{health}"
    );
    let metrics_at = format!("http://{}/metrics", b.proxy().metrics.as_ref().unwrap());
    let metrics = Curl::direct().arg(metrics_at).run().ok().stdout;
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("airlock_fleet_store_contact_age_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(age > 2.0, "{metrics}");
    let (code, health) = c.api("GET", "/healthz", None, None);
    assert_eq!(
        (code, health["status"].as_str()),
        (503, Some("stale")),
        "{health}"
    );
    let r = c.curl(&f.token, "https://api.openai.com/v1/models");
    assert!(
        r.stdout.ends_with(" 503") && r.stdout.contains("fleet_stale"),
        "{r:?}"
    );

    f.pg.restart();
    let end = Instant::now() + Duration::from_secs(10);
    while a.run_stdin(&["credential", "set", "AFTER"], "v").code != 0 {
        assert!(Instant::now() < end, "writes work again");
        std::thread::sleep(Duration::from_millis(200));
    }
    f.converge();
    let (code, _) = c.api("GET", "/healthz", None, None);
    assert_eq!(code, 200);
    assert!(
        c.curl(&f.token, "https://api.openai.com/v1/models")
            .stdout
            .ends_with(" 200")
    );
}

/// Scenario 5: node b is killed (SIGKILL) while node a writes; it restarts and catches up. A node
/// that joins late, with a fresh data dir, the root key and the URL, serves everything.
#[test]
fn fleet_killed_node_and_late_joiner_catch_up() {
    let mut f = FleetSetup::new(NO_EXTRA, NO_FLAGS);
    std::thread::scope(|s| {
        let a = &f.nodes[0];
        let writer = s.spawn(move || {
            for i in 0..60 {
                a.run_stdin(&["credential", "set", &format!("W_{i}")], "v")
                    .ok();
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let pid = f.nodes[1].proxy().pid();
        // SAFETY-free: kill(1) as a process.
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        writer.join().unwrap();
    });
    f.nodes[1].proxy = None;
    let origin = &f.origin;
    f.nodes[1].start(origin);
    let head = f.converge();
    assert_eq!(f.nodes[0].snapshot(), f.nodes[1].snapshot(), "at {head}");

    let late = Env::empty();
    std::fs::create_dir_all(&late.data_dir).unwrap();
    std::fs::copy(
        f.nodes[0].env.data_dir.join("master.key"),
        late.data_dir.join("master.key"),
    )
    .unwrap();
    let config = config(&late, &f.pg, "");
    let mut d = Node {
        name: "d".into(),
        env: late,
        config,
        proxy: None,
        extra: Vec::new(),
    };
    d.run(&["fleet", "join", "--node", "d"]).ok();
    d.start(origin);
    let r = d.curl(&f.token, "https://api.openai.com/v1/models");
    assert!(r.stdout.ends_with(" 200"), "{r:?}");
    f.last_carried(
        "authorization",
        &format!("Bearer {}", f.secret("OPENAI_KEY")),
    );
    assert_eq!(d.snapshot(), f.nodes[0].snapshot());
    let status = f.nodes[2].run(&["fleet", "status", "--json"]).ok();
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c", "d"], "{status}");
}

/// Scenario 6: agents reach the fleet through HAProxy. Node b is killed (SIGKILL); every new
/// tunnel from then on goes to a or c and is served with the credential injected.
#[test]
fn fleet_behind_haproxy_survives_a_killed_node() {
    let mut f = FleetSetup::new(NO_EXTRA, NO_FLAGS);
    let servers: Vec<_> = f
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.proxy().addr))
        .collect();
    let lb = Balancer::start(&servers, "");
    let lb_proxy = format!("http://{}:default@{}", f.token, lb.addr);
    let ca = f.nodes[0].env.data_dir.join("ca.pem");
    let through_lb =
        |path: &str| curl_via(&lb_proxy, &ca, &format!("https://api.openai.com{path}"));
    // Wait for the health checks to see all three up, then use them all.
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..6 {
        let r = through_lb(&format!("/v1/before/{i}"));
        assert!(r.stdout.ends_with(" 200"), "{r:?}");
    }
    let (pid, b_addr) = (f.nodes[1].proxy().pid(), f.nodes[1].proxy().addr);
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    // Once the process is gone (its port refuses connections), every new tunnel is served.
    let end = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(b_addr).is_ok() {
        assert!(Instant::now() < end, "node b still accepts");
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..20 {
        let r = through_lb(&format!("/v1/after/{i}"));
        assert!(
            r.stdout.ends_with(" 200"),
            "request {i} after the kill: {r:?}"
        );
        f.last_carried(
            "authorization",
            &format!("Bearer {}", f.secret("OPENAI_KEY")),
        );
    }
    // Node b is gone for good: `fleet remove` forgets it (refused without --force while its
    // last heartbeat is recent).
    let a = &f.nodes[0];
    let r = a.run(&["fleet", "remove", "b"]);
    assert!(r.code != 0 && r.stderr.contains("stop it first"), "{r:?}");
    a.run(&["fleet", "remove", "b", "--force"]).ok();
    let status = a.run(&["fleet", "status"]).ok().stdout;
    let nodes: Vec<&str> = status
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(nodes, ["a", "c"], "{status}");
    let r = a.run(&["fleet", "remove", "nope"]);
    assert!(
        r.code != 0 && r.stderr.contains("no node \"nope\""),
        "{r:?}"
    );
    f.nodes[1].proxy = None;
    drop(lb);
}

/// OAuth credentials in a fleet: an expired token needed by requests on all three nodes at once
/// is renewed by one node only (a rotated refresh token works once), and every node serves the
/// new access token.
#[test]
fn fleet_renews_an_oauth_token_once() {
    let f = FleetSetup::new(NO_EXTRA, NO_FLAGS);
    let prefix = canary();
    {
        let mut o = f.origin.oauth.lock().unwrap();
        o.prefix.clone_from(&prefix);
        o.refresh_token = format!("{prefix}-rt-0");
        o.delay = Duration::from_millis(300);
    }
    let a = &f.nodes[0];
    a.run_stdin(
        &[
            "credential",
            "oauth",
            "API_OAUTH",
            "--token-endpoint",
            "https://public.example.org/oauth/token",
            "--client-id",
            "fleet-test",
        ],
        &format!("{prefix}-rt-0"),
    )
    .ok();
    let yaml = "services:\n  - name: oauth-api\n    host: other.example.net\n    auth: {type: bearer, token: API_OAUTH}\n";
    let mut services = SERVICES.to_owned();
    services.push_str(&yaml["services:\n".len()..]);
    let file = a.env.write("oauth.yaml", &services);
    a.run(&["service", "set", "-f", file.to_str().unwrap()])
        .ok();
    f.converge();
    let token = f.token.as_str();
    let replies: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = f
            .nodes
            .iter()
            .flat_map(|n| (0..3).map(move |i| (n, i)))
            .map(|(n, i)| {
                s.spawn(move || {
                    n.curl(
                        token,
                        &format!("https://other.example.net/api/{}/{i}", n.name),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &replies {
        assert!(r.stdout.ends_with(" 200"), "{r:?}");
        assert!(!r.stdout.contains(&prefix), "{r:?}");
    }
    let state = f.origin.oauth.lock().unwrap();
    assert_eq!(
        state.grants, 1,
        "one renewal for the whole fleet: {:?}",
        state.requests
    );
    assert!(
        state
            .api_calls
            .iter()
            .all(|(t, _)| *t == format!("{prefix}-at-1")),
        "{:?}",
        state.api_calls
    );
}

/// The ways to get a fleet wrong are refused in one line: `fleet init` while serve runs on the
/// data dir, `fleet join` into a data dir that holds a vault, a second `fleet init` on the same
/// database, a fleet command without `store_url`, and a write on a fleet node whose config lost
/// its `store_url` (it would diverge).
#[test]
fn fleet_mistakes_are_refused() {
    let pg = Postgres::start();
    let a = Env::init();
    let cfg = config(&a, &pg, "");
    let with = |env: &Env, args: &[&str]| {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        env.run(&all)
    };
    let e = a.run(&["fleet", "status"]);
    assert!(e.fails().contains("set store_url"), "{e:?}");
    let serving = Proxy::start(&a, &[]);
    let e = with(&a, &["fleet", "init", "--node", "a"]);
    assert!(e.fails().contains("is running on"), "{e:?}");
    drop(serving);
    std::thread::sleep(Duration::from_millis(200));
    with(&a, &["fleet", "init", "--node", "a"]).ok();
    let other = Env::init();
    let e = with(&other, &["fleet", "join", "--node", "b"]);
    assert!(e.fails().contains("already holds a vault"), "{e:?}");
    let e = with(&other, &["fleet", "init", "--node", "b"]);
    assert!(e.fails().contains("fleet_mismatch"), "{e:?}");
    let e = a.run_stdin(&["credential", "set", "NO_URL"], b"v");
    assert!(e.fails().contains("fleet_unconfigured"), "{e:?}");
    let status: Value =
        serde_json::from_str(&with(&a, &["fleet", "status", "--json"]).ok().stdout).unwrap();
    assert_eq!(status["head_seq"], a.store().generation().unwrap());
    // serve with store_url on an empty data dir does not make a standalone vault there.
    let fresh = Env::empty();
    let fresh_cfg = config(&fresh, &pg, "");
    let cfg_arg = fresh_cfg.to_str().unwrap();
    let e = fresh.run(&[
        "--config",
        cfg_arg,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-admin",
    ]);
    assert!(
        e.fails()
            .contains("holds no vault: run `airlock fleet join`"),
        "{e:?}"
    );
    assert!(!fresh.data_dir.join("vault").exists());
}

/// The store over TCP with TLS and a password, as a production PostgreSQL is reached:
/// `sslmode=require` with the server's certificate verified against `store_ca_file`, the
/// password from `store_password_file`. A certificate from another CA, or a wrong password, is
/// refused (`store_unavailable`) and nothing is written.
#[test]
fn fleet_store_over_tls_with_a_password() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let password = format!("pw-{}", canary());
    let pg = Postgres::start_tls(&leaf.pem(), &leaf_key.serialize_pem(), &password);
    let env = Env::init();
    let ca_file = env.write("pg-ca.pem", &ca_cert.pem());
    let pw_file = env.write("pg-password", &format!("{password}\n"));
    let other_ca = env.write(
        "other-ca.pem",
        &KeyPair::generate()
            .map(|k| CertificateParams::default().self_signed(&k).unwrap().pem())
            .unwrap(),
    );
    let url = format!(
        "postgresql://airlock@127.0.0.1:{}/postgres?sslmode=require",
        pg.tcp_port()
    );
    let write_config = |ca: &std::path::Path, pw: &std::path::Path| {
        env.write(
            "airlock.toml",
            &format!(
                "store_url = {url:?}\nstore_ca_file = {:?}\nstore_password_file = {:?}\n",
                ca.display().to_string(),
                pw.display().to_string()
            ),
        )
    };
    let cfg = env.path("airlock.toml");
    let run = |args: &[&str]| {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        env.run(&all)
    };
    write_config(&other_ca, &pw_file);
    let e = run(&["fleet", "init", "--node", "a"]);
    assert!(e.fails().contains("store_unavailable"), "another CA: {e:?}");
    let wrong_pw = env.write("wrong-password", "not-it\n");
    write_config(&ca_file, &wrong_pw);
    let e = run(&["fleet", "init", "--node", "a"]);
    assert!(
        e.fails().contains("store_unavailable"),
        "a wrong password: {e:?}"
    );
    assert!(!e.stderr.contains("not-it"), "{e:?}");
    assert!(
        env.store().fleet_marker().unwrap().is_none(),
        "nothing was written"
    );
    write_config(&ca_file, &pw_file);
    run(&["fleet", "init", "--node", "a"]).ok();
    run(&["agent", "create", "over-tls", "--vault", "default"]).ok();
    let status: Value =
        serde_json::from_str(&run(&["fleet", "status", "--json"]).ok().stdout).unwrap();
    assert_eq!(status["head_seq"], env.store().generation().unwrap());
}
