//! The fleet's change log under someone who can write to PostgreSQL but holds no root key
//! (rows 101-103 of tests/SECURITY-TESTS.md): rows forged, replayed, altered, reordered or deleted with
//! SQL are refused by every node, reported, and nothing of them is served; a node given the
//! wrong root key cannot join or write; a log written by the previous format keeps serving and
//! is authenticated by `fleet upgrade`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fleet::{FleetSetup, NO_EXTRA, Node, config};
use crate::support::pg::Postgres;
use crate::support::{Curl, Env, Run, output};

/// Waits until `node`'s `/healthz` satisfies `pred`; returns the body.
fn wait_health(node: &Node, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = node.api("GET", "/healthz", None, None);
        if pred(&body) {
            return body;
        }
        assert!(
            Instant::now() < end,
            "node {}: never {what}: {body}",
            node.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn problem(body: &Value) -> &str {
    body["fleet"]["problem"].as_str().unwrap_or("")
}

/// The status code curl ends its output with.
fn ends_with_code(r: &Run, code: &str) -> bool {
    r.stdout.ends_with(&format!(" {code}"))
}

/// A CLI write refused with `code` (a warning about reading the node's own copy may come first).
#[track_caller]
fn refused(r: &Run, code: &str) {
    assert_ne!(r.code, 0, "{r:?}");
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("airlock: ") && last.contains(code),
        "{r:?}"
    );
}

/// The agent API with `token`: refused unless the token is known to the node.
fn discover(node: &Node, token: &str) -> u16 {
    node.api("GET", "/v1/discover", Some(token), None).0
}

/// Rows 101, 102: an agent created, its row captured, the agent revoked; then the captured row
/// replayed (same tag), the same batch under a made-up tag, and an untagged row, each appended
/// with SQL. Every node refuses each (the revoked agent's token stays refused everywhere, nothing
/// is applied), says so in `/healthz`, the metrics and `fleet status`, and refuses writes; once
/// the operator deletes the forged row, every node follows again.
#[test]
fn fleet_rows_written_without_the_root_key_are_refused_by_every_node() {
    let f = FleetSetup::new(NO_EXTRA, [&["--metrics-listen", "127.0.0.1:0"], &[], &[]]);
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    let mallory = a
        .run(&["agent", "create", "mallory", "--vault", "default"])
        .ok()
        .last_line()
        .to_owned();
    let created = a.env.store().generation().unwrap();
    a.run(&["agent", "revoke", "mallory"]).ok();
    let head = f.converge();
    for node in &f.nodes {
        assert_eq!(discover(node, &mallory), 401, "node {}", node.name);
    }
    let next = head + 1;
    let attempts = [
        (
            "replayed",
            format!(
                "INSERT INTO airlock_changes (seq, node, batch, tag) \
                 SELECT {next}, node, batch, tag FROM airlock_changes WHERE seq = {created}"
            ),
        ),
        (
            "forged tag",
            format!(
                "INSERT INTO airlock_changes (seq, node, batch, tag) \
                 SELECT {next}, 'a', batch, decode(repeat('ab', 32), 'hex') FROM airlock_changes WHERE seq = {created}"
            ),
        ),
        (
            "untagged",
            format!(
                "INSERT INTO airlock_changes (seq, node, batch) \
                 SELECT {next}, 'a', batch FROM airlock_changes WHERE seq = {created}"
            ),
        ),
    ];
    for (what, insert) in attempts {
        f.pg.sql(&format!("{insert}; NOTIFY airlock_changes, '{next}'"));
        for node in &f.nodes {
            let health = wait_health(node, "degraded", |h| h["status"] == "degraded");
            assert!(
                problem(&health).contains("fleet_log_rejected")
                    && problem(&health).contains(&format!("change {next}")),
                "{what}: {health}"
            );
            assert_eq!(health["fleet"]["applied_seq"], head, "{what}: {health}");
            assert_eq!(discover(node, &mallory), 401, "{what}: node {}", node.name);
            // It serves what it had.
            let r = node.curl(&f.token, "https://api.openai.com/v1/models");
            assert!(
                ends_with_code(&r, "200"),
                "{what}: node {}: {r:?}",
                node.name
            );
        }
        refused(
            &b.run_stdin(&["credential", "set", "AFTER_FORGERY"], "v"),
            "fleet_log_rejected",
        );
        let metrics = a.proxy().metrics.clone().unwrap();
        let metrics_at = format!("http://{metrics}/metrics");
        let m = Curl::direct().arg(metrics_at).run().ok().stdout;
        assert!(m.contains("airlock_fleet_log_rejected 1"), "{what}: {m}");
        // Each node's heartbeat (every second) carries what it refuses to `fleet status`.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let text = a.run(&["fleet", "status"]).ok().stdout;
            if text
                .matches("stopped following the log: fleet_log_rejected")
                .count()
                == 3
            {
                break;
            }
            assert!(Instant::now() < end, "{what}: {text}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // The operator removes the row; every node follows again.
        f.pg.sql(&format!("DELETE FROM airlock_changes WHERE seq = {next}"));
        for node in &f.nodes {
            wait_health(node, "ok again", |h| h["status"] == "ok");
        }
    }
    let m = a.proxy().metrics.clone().unwrap();
    assert!(
        Curl::direct()
            .arg(format!("http://{m}/metrics"))
            .run()
            .ok()
            .stdout
            .contains("airlock_fleet_log_rejected 0")
    );
    b.run_stdin(&["credential", "set", "AFTER_REPAIR"], "v")
        .ok();
    f.converge();
    for node in &f.nodes {
        let has = node
            .run(&["credential", "list", "--json"])
            .ok()
            .stdout
            .contains("AFTER_REPAIR");
        assert!(has, "node {}", node.name);
    }
}

/// A one-node fleet made with the CLI alone, with a few writes in its log.
fn small_fleet(pg: &Postgres) -> (Env, std::path::PathBuf) {
    let a = Env::init();
    let cfg = config(&a, pg, "");
    let run = |args: &[&str]| {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        a.run(&all).ok();
    };
    run(&["fleet", "init", "--node", "a"]);
    for agent in ["one", "two", "three"] {
        run(&["agent", "create", agent, "--vault", "default"]);
    }
    (a, cfg)
}

/// `fleet join` of a fresh data dir holding `root` (the fleet's own, unless given): the run, and
/// whether the data dir holds anything afterwards.
fn join(pg: &Postgres, root: &[u8]) -> (Run, bool) {
    let d = Env::empty();
    std::fs::create_dir_all(&d.data_dir).unwrap();
    std::fs::write(d.data_dir.join("master.key"), root).unwrap();
    let cfg = config(&d, pg, "");
    let r = d.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "fleet",
        "join",
        "--node",
        "d",
    ]);
    let left: Vec<_> = std::fs::read_dir(&d.data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "master.key")
        .collect();
    (r, !left.is_empty())
}

/// Rows 101, 103: a row altered, two rows swapped, a row deleted: a joining node refuses the
/// log and leaves nothing behind; the node that applied a deleted last row refuses to write; a
/// node given the wrong root key cannot join and writes nothing anywhere. Each repaired, the
/// join works.
#[test]
fn fleet_rows_altered_reordered_or_deleted_are_detected_and_a_wrong_key_cannot_join() {
    let pg = Postgres::start();
    let (a, cfg) = small_fleet(&pg);
    let root = std::fs::read(a.data_dir.join("master.key")).unwrap();
    let head: u64 = pg
        .sql("SELECT max(seq) FROM airlock_changes")
        .parse()
        .unwrap();
    let mid = head - 1;
    let tampers = [
        (
            "altered",
            format!("UPDATE airlock_changes SET batch = batch || '\\x00'::bytea WHERE seq = {mid}"),
            format!(
                "UPDATE airlock_changes SET batch = substring(batch FROM 1 FOR length(batch) - 1) WHERE seq = {mid}"
            ),
        ),
        (
            "reordered",
            format!(
                "UPDATE airlock_changes SET seq = -1 WHERE seq = {mid}; \
                 UPDATE airlock_changes SET seq = {mid} WHERE seq = {head}; \
                 UPDATE airlock_changes SET seq = {head} WHERE seq = -1"
            ),
            format!(
                "UPDATE airlock_changes SET seq = -1 WHERE seq = {mid}; \
                 UPDATE airlock_changes SET seq = {mid} WHERE seq = {head}; \
                 UPDATE airlock_changes SET seq = {head} WHERE seq = -1"
            ),
        ),
        (
            "deleted",
            format!(
                "CREATE TABLE saved AS SELECT * FROM airlock_changes WHERE seq = {mid}; \
                 DELETE FROM airlock_changes WHERE seq = {mid}"
            ),
            "INSERT INTO airlock_changes SELECT * FROM saved; DROP TABLE saved".to_owned(),
        ),
    ];
    for (what, tamper, repair) in &tampers {
        pg.sql(tamper);
        let (r, left) = join(&pg, &root);
        assert!(r.fails().contains("fleet_log_rejected"), "{what}: {r:?}");
        assert!(!left, "{what}: a refused join left files behind");
        pg.sql(repair);
    }
    // The last row deleted: node a, which applied it, refuses to write on a shortened log.
    pg.sql(&format!(
        "CREATE TABLE saved AS SELECT * FROM airlock_changes WHERE seq = {head}; \
         DELETE FROM airlock_changes WHERE seq = {head}"
    ));
    let e = a.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "agent",
        "create",
        "four",
        "--vault",
        "default",
    ]);
    refused(&e, "rows were deleted");
    pg.sql("INSERT INTO airlock_changes SELECT * FROM saved; DROP TABLE saved");

    // Review #111: a random root key cannot join, and writes nothing.
    let rows = pg.sql("SELECT count(*) FROM airlock_changes");
    let (r, left) = join(&pg, &[7u8; 32]);
    assert!(r.fails().contains("fleet_key_mismatch"), "{r:?}");
    assert!(!left, "a wrong-key join left files behind");
    assert_eq!(pg.sql("SELECT count(*) FROM airlock_changes"), rows);

    let (r, left) = join(&pg, &root);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        left && r.stdout.contains(&format!("at change {head}")),
        "{r:?}"
    );
}

/// Row 103: a fleet whose log was written by the previous format (no tags, no key on the
/// nodes) keeps serving after the upgrade of its binaries, says `fleet_upgrade_needed`, and
/// follows a verified chain after one `fleet upgrade`.
#[test]
fn fleet_log_from_the_previous_format_keeps_serving_and_upgrades() {
    let mut f = FleetSetup::new(NO_EXTRA, crate::fleet::NO_FLAGS);
    f.converge();
    for node in &mut f.nodes {
        node.proxy = None;
    }
    std::thread::sleep(Duration::from_millis(200));
    // What the previous format left: untagged rows of kind 1, no tag column, no key on a node.
    f.pg.sql(
        "UPDATE airlock_changes SET batch = set_byte(batch, 0, 1); \
         ALTER TABLE airlock_changes DROP COLUMN tag; ALTER TABLE airlock_nodes DROP COLUMN problem",
    );
    for node in &f.nodes {
        forget_log_key(&node.env);
    }
    let FleetSetup { nodes, origin, .. } = &mut f;
    for node in nodes.iter_mut() {
        node.start(origin);
    }
    let (a, b, c) = (&f.nodes[0], &f.nodes[1], &f.nodes[2]);
    for node in [a, b, c] {
        let health = wait_health(node, "degraded", |h| h["status"] == "degraded");
        assert!(
            problem(&health).contains("fleet_upgrade_needed"),
            "{health}"
        );
        let r = node.curl(&f.token, "https://api.openai.com/v1/models");
        assert!(
            ends_with_code(&r, "200"),
            "node {} keeps serving: {r:?}",
            node.name
        );
    }
    refused(
        &b.run_stdin(&["credential", "set", "BEFORE_UPGRADE"], "v"),
        "fleet_upgrade_needed",
    );
    let r = a.run(&["fleet", "upgrade"]).ok();
    assert!(r.stdout.contains("authenticated from change"), "{r:?}");
    for node in [a, b, c] {
        wait_health(node, "following again", |h| h["status"] == "ok");
    }
    let r = b.run(&["fleet", "upgrade"]).ok();
    assert!(r.stdout.contains("already authenticated"), "{r:?}");
    b.run_stdin(&["credential", "set", "AFTER_UPGRADE"], "v")
        .ok();
    let head: u64 =
        f.pg.sql("SELECT max(seq) FROM airlock_changes")
            .parse()
            .unwrap();
    for node in [a, b, c] {
        wait_health(node, "at the head", |h| h["fleet"]["applied_seq"] == head);
    }
    assert_eq!(
        f.pg.sql("SELECT count(*) FROM airlock_changes WHERE tag IS NULL AND seq > (SELECT min(seq) FROM airlock_changes WHERE tag IS NOT NULL)"),
        "0"
    );
}

/// Removes the node-local log key and chain position, as a node of the previous format had
/// neither.
fn forget_log_key(env: &Env) {
    let script = "import lmdb, sys\n\
        e = lmdb.open(sys.argv[1], max_dbs=16, map_size=1 << 30)\n\
        db = e.open_db(b'meta')\n\
        with e.begin(write=True) as t:\n\
        \x20   assert t.delete(b'fleet_log_key', db=db)\n\
        \x20   t.delete(b'fleet_log_tag', db=db)\n";
    let mut c = std::process::Command::new("python3");
    c.args(["-c", script]).arg(env.data_dir.join("vault"));
    output(c, None).ok();
}
