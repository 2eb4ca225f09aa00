//! The load harness: airlock against direct, side by side, in one run (its figures and method:
//! docs/src/performance.md).
//!
//! `cargo bench --bench load -- [--duration SECS] [--connections N] [--rate REQ_PER_S]
//! [--workers N] [--driver auto|io-uring|epoll] [--idle N] [--bulk-mib N] [--sse-events N]
//! [--sse-ms MS] [--fleet N] [--rules N] [--rounds N] [--binary PATH] [--no-peer] [--quick]`
//!
//! It starts a loopback HTTPS upstream with its own CA and `airlock serve` (the real binary, or
//! `--binary` for an A/B) with a vault whose service points at that upstream through `--resolve`,
//! then runs each scenario straight at the upstream and through airlock, `--rounds` times (3; the
//! order alternating), and reports the median and range of each figure: keep-alive closed loop with
//! airlock's CPU per request (user and kernel), the generator's and upstream's own CPU per request
//! on each route and the TCP segments sent per request, and the same loop through airlock's opaque
//! tunnel (a second vault, `open`, has no service and tunnels unmatched hosts: airlock only moves
//! bytes, the floor any interception is built on); a new tunnel per request; bulk download and
//! upload; then, paired (both routes at the same moment, "added" taken per pair, never as a
//! difference of two percentiles), a fixed-rate open loop (through the interception and through the
//! opaque tunnel) and SSE; idle tunnels for memory; and the start-up cost of `airlock run
//! --sandbox` over `airlock run` (`-- true`, alternated; not measured without bubblewrap). When `mitmdump` is installed (`pip install
//! mitmproxy`) the same keep-alive and download run through mitmproxy doing the same injection, and
//! the table shows airlock ÷ it. With `--fleet N` it also starts a PostgreSQL cluster and a
//! two-node fleet ([`fleet`]): the time from a write acknowledged on one node to its being served
//! on the other, over N writes, and keep-alive throughput through a fleet node beside the single
//! node's. With `--rules N` a second airlock serves the same service with N request rules (none of
//! which the load meets, so every one is checked), and each round's keep-alive loop runs through
//! both, alternating: the cost of rules as a ratio. It prints a table and, last, one line of JSON
//! with every figure. No timing is asserted anywhere.

// A benchmark tool: any setup failure should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
// The tests' PostgreSQL cluster (only its start and URL are used here).
#[path = "../../tests/it/support/pg.rs"]
#[allow(dead_code)]
mod pg;
mod upstream;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use client::Route;

struct Opts {
    duration: Duration,
    connections: usize,
    rate: u64,
    workers: usize,
    driver: String,
    idle: usize,
    bulk_mib: usize,
    sse_events: usize,
    sse_ms: u64,
    /// Writes timed across a two-node fleet; 0: no fleet run.
    fleet: usize,
    /// Rounds of every scenario, direct and airlock alternating; figures are medians.
    rounds: usize,
    /// The `airlock` binary (another build, for an A/B).
    binary: std::path::PathBuf,
    /// Whether to run mitmproxy as the peer when it is installed.
    peer: bool,
    /// Request rules on the service of a second airlock; 0: no such run.
    rules: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        duration: Duration::from_secs(5),
        connections: 16,
        rate: 2000,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        driver: "auto".into(),
        idle: 2000,
        bulk_mib: 64,
        sse_events: 50,
        sse_ms: 20,
        fleet: 0,
        rounds: 3,
        binary: env!("CARGO_BIN_EXE_airlock").into(),
        peer: true,
        rules: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let next = || args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--duration" => o.duration = Duration::from_secs_f64(next().parse().unwrap_or(5.0)),
            "--connections" => o.connections = next().parse().unwrap_or(16),
            "--rate" => o.rate = next().parse().unwrap_or(2000),
            "--workers" => o.workers = next().parse().unwrap_or(o.workers),
            "--driver" => o.driver = next(),
            "--idle" => o.idle = next().parse().unwrap_or(2000),
            "--bulk-mib" => o.bulk_mib = next().parse().unwrap_or(64),
            "--sse-events" => o.sse_events = next().parse().unwrap_or(50),
            "--sse-ms" => o.sse_ms = next().parse().unwrap_or(20),
            "--fleet" => o.fleet = next().parse().unwrap_or(100),
            "--rules" => o.rules = next().parse().unwrap_or(100),
            "--rounds" => o.rounds = next().parse().unwrap_or(3).max(1),
            "--binary" => o.binary = next().into(),
            "--no-peer" => {
                o.peer = false;
                i -= 1;
            }
            "--quick" => {
                (
                    o.duration,
                    o.connections,
                    o.rate,
                    o.idle,
                    o.bulk_mib,
                    o.sse_events,
                    o.sse_ms,
                    o.rounds,
                ) = (Duration::from_millis(300), 2, 200, 20, 1, 5, 5, 1);
                i -= 1;
            }
            _ => i -= 1, // `--bench` and unknown flags take no value
        }
        i += 2;
    }
    o
}

/// A running `airlock serve`.
struct Airlock {
    child: Child,
    proxy: std::net::SocketAddr,
    driver: String,
}

impl Drop for Airlock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn airlock(args: &[&str], dir: &std::path::Path, stdin: Option<&[u8]>) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airlock"));
    c.arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("airlock");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "airlock {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `airlock run -- true` and `airlock run SANDBOX -- true` (`sandbox` the flags) against the
/// proxy at `proxy`, taken in turn `runs` times each: the median wall time of each in ms, with
/// the range of the sandbox's extra cost; `None` where that sandbox cannot start (no bubblewrap;
/// for containers no Podman or no test image).
fn sandbox_startup(
    dir: &std::path::Path,
    proxy: std::net::SocketAddr,
    runs: usize,
    sandbox: &[&str],
) -> Option<(f64, f64, (f64, f64, f64))> {
    let url = format!("http://{proxy}");
    // The Podman settings this host needs (tests/container-image.sh).
    let conf =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/podman/containers.conf");
    let time = |flags: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_airlock"));
        c.arg("--data-dir")
            .arg(dir.join("data"))
            .args(["run", "--proxy", &url])
            .args(flags);
        if conf.exists() {
            c.env("CONTAINERS_CONF", &conf);
        }
        c.args(["--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let start = Instant::now();
        let ok = c.status().is_ok_and(|s| s.success());
        ok.then(|| start.elapsed().as_secs_f64() * 1000.0)
    };
    time(sandbox)?;
    let (mut plain, mut boxed, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (p, b) = (time(&[])?, time(sandbox)?);
        plain.push(p);
        boxed.push(b);
        extra.push(b - p);
    }
    Some((spread(plain).0, spread(boxed).0, spread(extra)))
}

/// The DER of the CA of the data dir in `dir`.
fn ca_der(dir: &std::path::Path) -> Vec<u8> {
    let ca = std::fs::read_to_string(dir.join("data/ca.pem")).expect("ca");
    rustls_pki_types::pem::PemObject::from_pem_slice(ca.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
        .expect("ca der")
}

/// `n` request rules that a `GET` of the load never meets: methods and paths, inner globs,
/// query keys, and rules for other agents with header conditions.
fn rules_yaml(n: usize) -> String {
    let mut y = String::from("    rules:\n");
    for i in 0..n {
        y.push_str(&match i % 4 {
            0 => format!("      - {{name: deny-{i}, methods: [DELETE], path: \"/v1/things-{i}/*\", action: deny}}\n"),
            1 => format!("      - {{name: hold-{i}, methods: [POST], path: \"/v1/charges/*/refund-{i}\", action: hold}}\n"),
            2 => format!("      - {{name: query-{i}, query: [key-{i}], action: deny}}\n"),
            _ => format!("      - {{name: agent-{i}, agents: [other-{i}], headers: [x-h-{i}], action: limit, per_minute: 10}}\n"),
        });
    }
    y
}

/// A vault with the bench service (with `rules` request rules) and agent in `dir`, and a vault
/// `open` with no service whose unmatched hosts are tunnelled, with an agent of its own; the two
/// agents' tokens.
fn setup_vault(dir: &std::path::Path, rules: usize) -> (String, String) {
    airlock(&["init"], dir, None);
    airlock(
        &["credential", "set", "BENCH_KEY"],
        dir,
        Some(b"sk-bench-secret-value"),
    );
    let yaml = dir.join("services.yaml");
    let rules = if rules > 0 {
        rules_yaml(rules)
    } else {
        String::new()
    };
    std::fs::write(&yaml, format!("services:\n  - name: bench\n    host: {}\n    auth: {{type: bearer, token: BENCH_KEY}}\n{rules}", upstream::HOST)).expect("yaml");
    airlock(
        &["service", "set", "-f", yaml.to_str().expect("path")],
        dir,
        None,
    );
    airlock(&["vault", "create", "open"], dir, None);
    airlock(&["vault", "policy", "open", "tunnel"], dir, None);
    let token = |name: &str, vault: &str| {
        airlock(&["agent", "create", name, "--vault", vault], dir, None)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    };
    (token("bench", "default"), token("opaque", "open"))
}

/// `airlock serve` on `dir` against the upstream, with `extra` global flags (a config file).
fn serve(o: &Opts, dir: &std::path::Path, up: &upstream::Upstream, extra: &[&str]) -> Airlock {
    let resolve = format!("{}:443:{}", upstream::HOST, up.addr);
    let workers = o.workers.to_string();
    let mut c = Command::new(&o.binary);
    c.arg("--data-dir").arg(dir.join("data")).args(extra);
    // One token drives the whole load: the per-agent limits are off here.
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-admin",
        "--workers",
        &workers,
        "--driver",
        &o.driver,
        "--resolve",
        &resolve,
        "--network-allow",
        "127.0.0.1/32",
    ]);
    c.args([
        "--agent-requests-per-second",
        "0",
        "--agent-max-in-flight",
        "0",
    ]);
    c.arg("--upstream-ca-file")
        .arg(&up.ca_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("serve");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let driver = Arc::new(Mutex::new(String::new()));
    let d = driver.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("driver=").nth(1) {
                *d.lock().expect("lock") = rest.trim_matches('"').to_owned();
            }
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");
    let proxy = line
        .strip_prefix("ready proxy=")
        .and_then(|r| r.split_whitespace().next())
        .expect("ready line")
        .parse()
        .expect("addr");
    std::thread::sleep(Duration::from_millis(100));
    let driver = driver.lock().expect("lock").clone();
    Airlock {
        child,
        proxy,
        driver,
    }
}

fn start_airlock(
    o: &Opts,
    dir: &std::path::Path,
    up: &upstream::Upstream,
    rules: usize,
) -> (Airlock, (String, String)) {
    let tokens = setup_vault(dir, rules);
    (serve(o, dir, up, &[]), tokens)
}

/// The fleet figures: a PostgreSQL cluster, node a made the fleet's first node and node b joined
/// to it, both serving. Returns (keep-alive req/s through node b, propagation histogram in µs:
/// from a credential write acknowledged by the CLI on a to node b reporting that change applied).
fn fleet(o: &Opts, up: &upstream::Upstream) -> (f64, Histogram<u64>) {
    let pg = pg::Postgres::start();
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let config = |dir: &std::path::Path| {
        let path = dir.join("airlock.toml");
        std::fs::write(&path, format!("store_url = {:?}\n", pg.url())).expect("config");
        path.to_str().expect("path").to_owned()
    };
    let (cfg_a, cfg_b) = (config(a.path()), config(b.path()));
    let (token, _) = setup_vault(a.path(), 0);
    airlock(
        &["--config", &cfg_a, "fleet", "init", "--node", "a"],
        a.path(),
        None,
    );
    std::fs::create_dir_all(b.path().join("data")).expect("data dir");
    std::fs::copy(
        a.path().join("data/master.key"),
        b.path().join("data/master.key"),
    )
    .expect("root key");
    airlock(
        &["--config", &cfg_b, "fleet", "join", "--node", "b"],
        b.path(),
        None,
    );
    let _node_a = serve(o, a.path(), up, &["--config", &cfg_a]);
    let node_b = serve(o, b.path(), up, &["--config", &cfg_b]);
    let through_b = Route::Airlock {
        proxy: node_b.proxy,
        auth: format!("{token}:default"),
        tls: client::tls_config(&ca_der(a.path())),
    };
    let (rps, _, _) = closed_loop(&through_b, o);
    let store_a = airlock::vault::Store::open(&a.path().join("data"), Default::default())
        .expect("node a's store");
    let mut h = hist();
    for i in 0..o.fleet {
        airlock(
            &[
                "--config",
                &cfg_a,
                "credential",
                "set",
                &format!("FLEET_{i}"),
            ],
            a.path(),
            Some(b"v"),
        );
        let acknowledged = Instant::now();
        let target = store_a.generation().expect("generation");
        loop {
            let health = client::health(node_b.proxy);
            if health["fleet"]["applied_seq"].as_u64().unwrap_or(0) >= target {
                break;
            }
            assert!(
                acknowledged.elapsed() < Duration::from_secs(10),
                "node b is stuck"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = h.record(acknowledged.elapsed().as_micros() as u64);
    }
    (rps, h)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

/// Closed loop: C connections, each sending the next request when the last one finished.
fn closed_loop(route: &Route, o: &Opts) -> (f64, Histogram<u64>, u64) {
    let deadline = Instant::now() + o.duration;
    let threads: Vec<_> = (0..o.connections)
        .map(|_| {
            let route = route.clone();
            std::thread::spawn(move || {
                let mut h = hist();
                let mut c = client::open(&route).expect("open");
                while Instant::now() < deadline {
                    let t = Instant::now();
                    client::request(&mut c, "GET", "/small", b"").expect("request");
                    let _ = h.record(t.elapsed().as_micros() as u64);
                }
                h
            })
        })
        .collect();
    let start = Instant::now();
    let mut all = hist();
    for t in threads {
        all.add(t.join().expect("thread")).expect("add");
    }
    let n = all.len();
    (n as f64 / start.elapsed().as_secs_f64(), all, n)
}

/// Paired open loop: each connection holds one direct and one airlock connection and, at a fixed
/// total rate, sends one request on each back to back (the order alternating). Returns each
/// route's service times and, per pair, airlock's minus direct's: "added" is read from pairs
/// taken at the same moment, never from two independent runs.
fn paired_open_loop(
    direct: &Route,
    through: &Route,
    o: &Opts,
) -> (Histogram<u64>, Histogram<u64>, Vec<i64>) {
    let per_conn = (o.rate as f64 / o.connections as f64).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let threads: Vec<_> = (0..o.connections)
        .map(|i| {
            let (direct, through) = (direct.clone(), through.clone());
            let duration = o.duration;
            std::thread::spawn(move || {
                let (mut hd, mut ha, mut added) = (hist(), hist(), Vec::new());
                let mut d = client::open(&direct).expect("open");
                let mut a = client::open(&through).expect("open");
                let start = Instant::now() + interval.mul_f64(i as f64 / 16.0);
                let mut k = 0u32;
                loop {
                    let at = start + interval * k;
                    if at > start + duration {
                        return (hd, ha, added);
                    }
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let time = |c: &mut client::Conn| {
                        let t = Instant::now();
                        client::request(c, "GET", "/small", b"").expect("request");
                        t.elapsed().as_micros() as i64
                    };
                    let (td, ta) = if k.is_multiple_of(2) {
                        let td = time(&mut d);
                        (td, time(&mut a))
                    } else {
                        let ta = time(&mut a);
                        (time(&mut d), ta)
                    };
                    let _ = hd.record(td.max(1) as u64);
                    let _ = ha.record(ta.max(1) as u64);
                    added.push(ta - td);
                    k += 1;
                }
            })
        })
        .collect();
    let (mut hd, mut ha, mut added) = (hist(), hist(), Vec::new());
    for t in threads {
        let (d, a, x) = t.join().expect("thread");
        hd.add(d).expect("add");
        ha.add(a).expect("add");
        added.extend(x);
    }
    (hd, ha, added)
}

/// A new connection (and tunnel) per request.
fn tunnels(route: &Route, o: &Opts) -> (f64, Histogram<u64>) {
    let deadline = Instant::now() + o.duration;
    let threads: Vec<_> = (0..o.connections.min(4))
        .map(|_| {
            let route = route.clone();
            std::thread::spawn(move || {
                let mut h = hist();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut c = client::open(&route).expect("open");
                    client::request(&mut c, "GET", "/small", b"").expect("request");
                    let _ = h.record(t.elapsed().as_micros() as u64);
                }
                h
            })
        })
        .collect();
    let start = Instant::now();
    let mut all = hist();
    for t in threads {
        all.add(t.join().expect("thread")).expect("add");
    }
    (all.len() as f64 / start.elapsed().as_secs_f64(), all)
}

/// SSE: time to first byte, and each event's delay from the upstream's send time, by event.
fn sse(route: &Route, o: &Opts) -> (u64, Vec<u64>) {
    let mut c = client::open(route).expect("open");
    let w = c.get_mut();
    let t = Instant::now();
    write!(
        w,
        "GET /sse?n={}&ms={} HTTP/1.1\r\nHost: {}\r\n\r\n",
        o.sse_events,
        o.sse_ms,
        upstream::HOST
    )
    .expect("write");
    w.flush().expect("flush");
    let mut ttfb = None;
    let mut delays = Vec::new();
    client::read_response(&mut c, |piece| {
        ttfb.get_or_insert(t.elapsed().as_micros() as u64);
        let text = String::from_utf8_lossy(piece);
        for sent in text
            .split("data: ")
            .skip(1)
            .filter_map(|e| e.trim().parse::<u64>().ok())
        {
            delays.push(upstream::now_us().saturating_sub(sent).max(1));
        }
    })
    .expect("sse");
    (ttfb.unwrap_or(0), delays)
}

/// SSE direct and through airlock at once: per event, the delay through airlock minus the
/// direct one (paired by event); and both times to first byte.
fn paired_sse(direct: &Route, through: &Route, o: &Opts) -> (i64, Vec<i64>) {
    std::thread::scope(|s| {
        let d = s.spawn(|| sse(direct, o));
        let a = sse(through, o);
        let d = d.join().expect("sse");
        let added =
            a.1.iter()
                .zip(&d.1)
                .map(|(a, d)| *a as i64 - *d as i64)
                .collect();
        (a.0 as i64 - d.0 as i64, added)
    })
}

/// Bulk download and upload, MB/s.
fn bulk(route: &Route, o: &Opts) -> (f64, f64) {
    let bytes = o.bulk_mib << 20;
    let mut c = client::open(route).expect("open");
    let t = Instant::now();
    let got = client::request(&mut c, "GET", &format!("/big?n={bytes}"), b"").expect("download");
    assert_eq!(got, bytes);
    let down = bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    let body = vec![b'u'; bytes];
    let t = Instant::now();
    client::request(&mut c, "POST", "/upload", &body).expect("upload");
    let up = bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    (down, up)
}

/// A `KEY: N kB` field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A process's (`pid`, or `self`) user and kernel CPU so far, in µs: utime and stime, fields 14
/// and 15 of `/proc/PID/stat`, in clock ticks (USER_HZ is 100 on Linux).
fn cpu_split(pid: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit(')').next().unwrap_or_default();
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| f.get(i).copied().unwrap_or(0) * 10_000;
    (field(11), field(12))
}

/// The machine's (busy, idle) time so far across all cores, in clock ticks (`/proc/stat`).
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (f.iter().sum::<u64>() - idle, idle)
}

/// TCP segments the machine has sent (`OutSegs` of `/proc/net/snmp`).
fn tcp_out_segs() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().unwrap_or_default(),
        tcp.next().unwrap_or_default(),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Where the CPU went during one keep-alive closed loop, per request (µs) and as the machine's
/// idle share: what the run costs beside airlock's own figure.
#[derive(Clone, Copy, Debug, Default)]
struct Spent {
    /// This process's CPU (the generator and the upstream) per request.
    harness_us: f64,
    /// airlock's user and kernel CPU per request (0 on the direct route).
    airlock_user_us: f64,
    airlock_kernel_us: f64,
    /// The share of the machine's cores left idle.
    idle: f64,
    /// TCP segments sent on the machine (all of them loopback here) per request.
    segments: f64,
}

/// Runs the closed loop on `route`, accounting the CPU of this process and of `pid`.
fn closed_loop_spent(route: &Route, o: &Opts, pid: Option<u32>) -> (f64, Spent) {
    let airlock = || pid.map_or((0, 0), |p| cpu_split(&p.to_string()));
    let (me0, al0, m0, s0) = (
        cpu_split("self"),
        airlock(),
        machine_ticks(),
        tcp_out_segs(),
    );
    let (rps, _, n) = closed_loop(route, o);
    let (me1, al1, m1, s1) = (
        cpu_split("self"),
        airlock(),
        machine_ticks(),
        tcp_out_segs(),
    );
    // Counters read as 0 when a file could not be read: never a negative difference.
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n.max(1) as f64;
    let (busy, idle) = (m1.0.saturating_sub(m0.0), m1.1.saturating_sub(m0.1));
    let spent = Spent {
        harness_us: per(me0.0 + me0.1, me1.0 + me1.1),
        airlock_user_us: per(al0.0, al1.0),
        airlock_kernel_us: per(al0.1, al1.1),
        idle: idle as f64 / (busy + idle).max(1) as f64,
        segments: per(s0, s1),
    };
    (rps, spent)
}

/// One round's figures: each scenario once straight at the upstream and once through airlock
/// (and through mitmproxy when it runs).
#[derive(Clone, Debug, Default)]
struct Round {
    ka_direct: f64,
    ka_airlock: f64,
    spent_direct: Spent,
    spent_airlock: Spent,
    /// Keep-alive through airlock's opaque tunnel (no TLS or HTTP in airlock).
    ka_opaque: f64,
    spent_opaque: Spent,
    tunnels_direct: f64,
    tunnels_airlock: f64,
    down_direct: f64,
    down_airlock: f64,
    up_direct: f64,
    up_airlock: f64,
    ka_peer: Option<f64>,
    down_peer: Option<f64>,
    /// Keep-alive req/s through the airlock whose service has `--rules` rules.
    ka_rules: Option<f64>,
}

/// The routes a round runs: straight at the upstream, through airlock's interception and its
/// opaque tunnel, and, when they run, through mitmproxy and the airlock with request rules.
struct Routes<'a> {
    direct: &'a Route,
    through: &'a Route,
    opaque: &'a Route,
    peer: Option<&'a Route>,
    ruled: Option<&'a Route>,
}

/// Round `i`; odd rounds go through airlock first, so neither route always runs on a machine
/// warmed (or tired) by the other. `pid` is airlock's.
fn round(i: usize, o: &Opts, routes: &Routes<'_>, pid: u32) -> Round {
    let Routes {
        direct,
        through,
        opaque,
        peer,
        ruled,
    } = *routes;
    let mut r = Round::default();
    let airlock_first = !i.is_multiple_of(2);
    let run_airlock = |r: &mut Round| {
        let ruled_first = ruled.filter(|_| airlock_first);
        r.ka_rules = ruled_first.map(|route| closed_loop(route, o).0);
        (r.ka_airlock, r.spent_airlock) = closed_loop_spent(through, o, Some(pid));
        (r.ka_opaque, r.spent_opaque) = closed_loop_spent(opaque, o, Some(pid));
        if ruled_first.is_none() {
            r.ka_rules = ruled.map(|route| closed_loop(route, o).0);
        }
        (r.tunnels_airlock, _) = tunnels(through, o);
        (r.down_airlock, r.up_airlock) = bulk(through, o);
    };
    if airlock_first {
        run_airlock(&mut r);
    }
    (r.ka_direct, r.spent_direct) = closed_loop_spent(direct, o, None);
    (r.tunnels_direct, _) = tunnels(direct, o);
    (r.down_direct, r.up_direct) = bulk(direct, o);
    if !airlock_first {
        run_airlock(&mut r);
    }
    if let Some(peer) = peer {
        r.ka_peer = Some(closed_loop(peer, o).0);
        r.down_peer = Some(bulk(peer, o).0);
    }
    r
}

/// airlock's CPU per keep-alive request, user and kernel.
fn cpu_us(r: &Round) -> f64 {
    r.spent_airlock.airlock_user_us + r.spent_airlock.airlock_kernel_us
}

/// Median, smallest and largest.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let median = match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    (
        median,
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}

/// The value at quantile `q` of signed samples.
fn quantile(v: &mut [i64], q: f64) -> i64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0)
}

/// `median [min–max]`, rounded to `digits`.
fn show((m, lo, hi): (f64, f64, f64), digits: usize) -> String {
    format!("{m:.digits$} [{lo:.digits$}–{hi:.digits$}]")
}

/// mitmproxy doing the same injection, when `mitmdump` is on the PATH (`pip install mitmproxy`):
/// an addon sends the bench host to the loopback upstream and sets the same bearer header.
struct Peer {
    child: Child,
    route: Route,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mitmproxy(dir: &std::path::Path, up: &upstream::Upstream) -> Option<Peer> {
    let found = Command::new("mitmdump")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("mitmproxy: not installed (pip install mitmproxy), no peer row");
        return None;
    }
    let conf = dir.join("mitmproxy");
    std::fs::create_dir_all(&conf).expect("confdir");
    let addon = dir.join("inject.py");
    std::fs::write(
        &addon,
        format!(
            "class Inject:\n    def server_connect(self, data):\n        data.server.address = ('127.0.0.1', {})\n    def request(self, flow):\n        flow.request.headers['authorization'] = 'Bearer sk-bench-secret-value'\naddons = [Inject()]\n",
            up.addr.port()
        ),
    )
    .expect("addon");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new("mitmdump")
        .args([
            "-q",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            &port.to_string(),
        ])
        .args(["--set", &format!("confdir={}", conf.display())])
        .args([
            "--set",
            &format!("ssl_verify_upstream_trusted_ca={}", up.ca_file.display()),
        ])
        .args([
            "--set",
            "flow_detail=0",
            "--set",
            "stream_large_bodies=1m",
            "-s",
        ])
        .arg(&addon)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mitmdump");
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let ca = conf.join("mitmproxy-ca-cert.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(ca.exists() && std::net::TcpStream::connect(proxy).is_ok()) {
        assert!(Instant::now() < deadline, "mitmdump did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pem = std::fs::read(&ca).expect("mitmproxy ca");
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
        .expect("ca der");
    let route = Route::Airlock {
        proxy,
        auth: "peer:default".into(),
        tls: client::tls_config(&der),
    };
    Some(Peer { child, route })
}

fn main() {
    let o = opts();
    let dir = tempfile::tempdir().expect("tempdir");
    let up = upstream::start(dir.path());
    let (al, (token, opaque_token)) = start_airlock(&o, dir.path(), &up, 0);
    let ruled_dir = tempfile::tempdir().expect("tempdir");
    let ruled = (o.rules > 0).then(|| {
        let (al, (token, _)) = start_airlock(&o, ruled_dir.path(), &up, o.rules);
        let route = Route::Airlock {
            proxy: al.proxy,
            auth: format!("{token}:default"),
            tls: client::tls_config(&ca_der(ruled_dir.path())),
        };
        (al, route)
    });
    let direct = Route::Direct {
        addr: up.addr,
        tls: client::tls_config(&up.ca_der),
    };
    let through = Route::Airlock {
        proxy: al.proxy,
        auth: format!("{token}:default"),
        tls: client::tls_config(&ca_der(dir.path())),
    };
    // The same airlock splicing bytes for a vault without the service: TLS is end to end.
    let opaque = Route::Airlock {
        proxy: al.proxy,
        auth: format!("{opaque_token}:open"),
        tls: client::tls_config(&up.ca_der),
    };
    let peer = if o.peer {
        mitmproxy(dir.path(), &up)
    } else {
        None
    };
    let pid = al.child.id();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {cores} cores, {cpu_model}; airlock {} workers, driver {}; {} rounds",
        o.workers, al.driver, o.rounds
    );
    println!("generator, upstream and airlock share the cores (no pinning)");

    let routes = Routes {
        direct: &direct,
        through: &through,
        opaque: &opaque,
        peer: peer.as_ref().map(|p| &p.route),
        ruled: ruled.as_ref().map(|(_, route)| route),
    };
    let mut rounds = Vec::new();
    let (mut ol_d, mut ol_a, mut added) = (hist(), hist(), Vec::new());
    let mut added_opaque = Vec::new();
    let (mut sse_ttfb, mut sse_added) = (Vec::new(), Vec::new());
    for i in 0..o.rounds {
        rounds.push(round(i, &o, &routes, pid));
        let (d, a, x) = paired_open_loop(&direct, &through, &o);
        ol_d.add(d).expect("add");
        ol_a.add(a).expect("add");
        added.extend(x);
        added_opaque.extend(paired_open_loop(&direct, &opaque, &o).2);
        let (ttfb, events) = paired_sse(&direct, &through, &o);
        sse_ttfb.push(ttfb as f64);
        sse_added.extend(events);
        eprintln!("round {} of {} done", i + 1, o.rounds);
    }
    let rss0 = status_kib(pid, "VmRSS:");
    let idle: Vec<_> = (0..o.idle)
        .map(|_| client::open(&through).expect("idle tunnel"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = status_kib(pid, "VmRSS:");
    let per_tunnel = (rss1.saturating_sub(rss0)) as f64 / o.idle.max(1) as f64;
    drop(idle);

    let of = |f: fn(&Round) -> f64| spread(rounds.iter().map(f).collect());
    let ratio = |a: fn(&Round) -> f64, b: fn(&Round) -> f64| {
        spread(rounds.iter().map(|r| a(r) / b(r)).collect())
    };
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    // The medians of airlock's user and kernel CPU per request in one kind of loop.
    let user_kernel = |spent: fn(&Round) -> &Spent| {
        let median = |f: fn(&Spent) -> f64| spread(rounds.iter().map(|r| f(spent(r))).collect()).0;
        format!(
            "{:.1} / {:.1}",
            median(|s| s.airlock_user_us),
            median(|s| s.airlock_kernel_us)
        )
    };
    let (added_p50, added_p99) = (quantile(&mut added, 0.5), quantile(&mut added, 0.99));
    let (opaque_p50, opaque_p99) = (
        quantile(&mut added_opaque, 0.5),
        quantile(&mut added_opaque, 0.99),
    );
    let (sse_p50, sse_p99) = (
        quantile(&mut sse_added, 0.5),
        quantile(&mut sse_added, 0.99),
    );
    let row = |name: String, d: String, a: String| println!("{name:<46} {d:>24} {a:>24}");
    println!("\nmedian [range] over {} rounds", o.rounds);
    row("scenario".into(), "direct".into(), "airlock".into());
    row(
        format!("keep-alive closed loop, {} conns: req/s", o.connections),
        show(of(|r| r.ka_direct), 0),
        show(of(|r| r.ka_airlock), 0),
    );
    row(
        "  airlock ÷ direct".into(),
        "".into(),
        show(ratio(|r| r.ka_airlock, |r| r.ka_direct), 3),
    );
    row(
        "  airlock CPU per request (µs)".into(),
        "-".into(),
        show(of(cpu_us), 1),
    );
    row(
        "    of it user / kernel (µs)".into(),
        "-".into(),
        user_kernel(|r| &r.spent_airlock),
    );
    row(
        "  generator + upstream CPU per request (µs)".into(),
        show(of(|r| r.spent_direct.harness_us), 1),
        show(of(|r| r.spent_airlock.harness_us), 1),
    );
    row(
        "  TCP segments sent per request".into(),
        show(of(|r| r.spent_direct.segments), 1),
        show(of(|r| r.spent_airlock.segments), 1),
    );
    row(
        "  cores idle during the loop (%)".into(),
        show(of(|r| r.spent_direct.idle * 100.0), 0),
        show(of(|r| r.spent_airlock.idle * 100.0), 0),
    );
    row(
        "keep-alive through the opaque tunnel: req/s".into(),
        "-".into(),
        show(of(|r| r.ka_opaque), 0),
    );
    row(
        "  opaque ÷ direct".into(),
        "".into(),
        show(ratio(|r| r.ka_opaque, |r| r.ka_direct), 3),
    );
    row(
        "  airlock CPU per request, user / kernel (µs)".into(),
        "-".into(),
        user_kernel(|r| &r.spent_opaque),
    );
    row(
        "  generator + upstream CPU per request (µs)".into(),
        "-".into(),
        show(of(|r| r.spent_opaque.harness_us), 1),
    );
    row(
        format!("open loop {} req/s, paired: p50 / p99 (µs)", o.rate),
        format!("{}/{}", q(&ol_d, 0.5), q(&ol_d, 0.99)),
        format!("{}/{}", q(&ol_a, 0.5), q(&ol_a, 0.99)),
    );
    row(
        "  added by airlock, per pair: p50 / p99 (µs)".into(),
        "".into(),
        format!("{added_p50}/{added_p99}"),
    );
    row(
        "  added by the opaque tunnel: p50 / p99 (µs)".into(),
        "".into(),
        format!("{opaque_p50}/{opaque_p99}"),
    );
    row(
        "new tunnel per request: tunnels/s".into(),
        show(of(|r| r.tunnels_direct), 0),
        show(of(|r| r.tunnels_airlock), 0),
    );
    row(
        format!("SSE {} events: added time to first byte (µs)", o.sse_events),
        "".into(),
        show(spread(sse_ttfb.clone()), 0),
    );
    row(
        "  added event delay, per event: p50 / p99 (µs)".into(),
        "".into(),
        format!("{sse_p50}/{sse_p99}"),
    );
    row(
        format!("bulk {} MiB download (MB/s)", o.bulk_mib),
        show(of(|r| r.down_direct), 0),
        show(of(|r| r.down_airlock), 0),
    );
    row(
        "  airlock ÷ direct".into(),
        "".into(),
        show(ratio(|r| r.down_airlock, |r| r.down_direct), 3),
    );
    row(
        format!("bulk {} MiB upload (MB/s)", o.bulk_mib),
        show(of(|r| r.up_direct), 0),
        show(of(|r| r.up_airlock), 0),
    );
    row(
        format!("idle intercepted tunnels ({}): KiB each", o.idle),
        "-".into(),
        format!("{per_tunnel:.1}"),
    );
    let runs = if o.rounds > 1 { 20 } else { 5 };
    let startup = sandbox_startup(dir.path(), al.proxy, runs, &["--sandbox"]);
    let container = sandbox_startup(
        dir.path(),
        al.proxy,
        runs,
        &[
            "--sandbox=container",
            "--image",
            "localhost/airlock-test:bookworm",
        ],
    );
    for (flag, measured, without) in [
        ("--sandbox", startup, "no bubblewrap"),
        (
            "--sandbox=container",
            container,
            "no Podman or no test image: tests/container-image.sh",
        ),
    ] {
        match measured {
            Some((plain, boxed, extra)) => row(
                format!("`airlock run -- true`: plain / {flag} (ms)"),
                format!("{plain:.1}"),
                format!("{boxed:.1} (+{})", show(extra, 1)),
            ),
            None => row(
                format!("`airlock run {flag}`: not measured ({without})"),
                "-".into(),
                "-".into(),
            ),
        }
    }
    let mut json = serde_json::json!({
        "cores": cores,
        "cpu": cpu_model,
        "driver": al.driver,
        "workers": o.workers,
        "connections": o.connections,
        "rounds": o.rounds,
        "keepalive_rps_direct": of(|r| r.ka_direct).0.round(),
        "keepalive_rps_airlock": of(|r| r.ka_airlock).0.round(),
        "keepalive_ratio": ratio(|r| r.ka_airlock, |r| r.ka_direct).0,
        "keepalive_ratio_range": [ratio(|r| r.ka_airlock, |r| r.ka_direct).1, ratio(|r| r.ka_airlock, |r| r.ka_direct).2],
        "airlock_cpu_us_per_req": of(cpu_us).0,
        "airlock_user_us_per_req": of(|r| r.spent_airlock.airlock_user_us).0,
        "airlock_kernel_us_per_req": of(|r| r.spent_airlock.airlock_kernel_us).0,
        "harness_cpu_us_per_req_direct": of(|r| r.spent_direct.harness_us).0,
        "harness_cpu_us_per_req_airlock": of(|r| r.spent_airlock.harness_us).0,
        "idle_share_direct": of(|r| r.spent_direct.idle).0,
        "tcp_segments_per_req_direct": of(|r| r.spent_direct.segments).0,
        "tcp_segments_per_req_airlock": of(|r| r.spent_airlock.segments).0,
        "idle_share_airlock": of(|r| r.spent_airlock.idle).0,
        "keepalive_rps_opaque": of(|r| r.ka_opaque).0.round(),
        "keepalive_opaque_ratio": ratio(|r| r.ka_opaque, |r| r.ka_direct).0,
        "opaque_user_us_per_req": of(|r| r.spent_opaque.airlock_user_us).0,
        "opaque_kernel_us_per_req": of(|r| r.spent_opaque.airlock_kernel_us).0,
        "harness_cpu_us_per_req_opaque": of(|r| r.spent_opaque.harness_us).0,
        "open_loop_rate": o.rate,
        "added_p50_us": added_p50,
        "added_p99_us": added_p99,
        "opaque_added_p50_us": opaque_p50,
        "opaque_added_p99_us": opaque_p99,
        "tunnels_per_s_direct": of(|r| r.tunnels_direct).0.round(),
        "tunnels_per_s_airlock": of(|r| r.tunnels_airlock).0.round(),
        "sse_added_ttfb_us": spread(sse_ttfb).0,
        "sse_added_event_p50_us": sse_p50,
        "sse_added_event_p99_us": sse_p99,
        "bulk_mb_s_direct": of(|r| r.down_direct).0.round(),
        "bulk_mb_s_airlock": of(|r| r.down_airlock).0.round(),
        "bulk_ratio": ratio(|r| r.down_airlock, |r| r.down_direct).0,
        "bulk_upload_mb_s_direct": of(|r| r.up_direct).0.round(),
        "bulk_upload_mb_s_airlock": of(|r| r.up_airlock).0.round(),
        "idle_tunnel_rss_kib": (per_tunnel * 10.0).round() / 10.0,
    });
    json["run_ms"] = serde_json::json!(startup.map(|s| s.0));
    json["run_sandbox_ms"] = serde_json::json!(startup.map(|s| s.1));
    json["run_sandbox_extra_ms"] = serde_json::json!(startup.map(|s| s.2.0));
    json["run_container_ms"] = serde_json::json!(container.map(|s| s.1));
    json["run_container_extra_ms"] = serde_json::json!(container.map(|s| s.2.0));
    if peer.is_some() {
        let ka = ratio(|r| r.ka_airlock, |r| r.ka_peer.unwrap_or(f64::NAN));
        let down = ratio(|r| r.down_airlock, |r| r.down_peer.unwrap_or(f64::NAN));
        row(
            "mitmproxy, same injection: keep-alive req/s".into(),
            show(spread(rounds.iter().filter_map(|r| r.ka_peer).collect()), 0),
            format!("airlock ÷ it {}", show(ka, 1)),
        );
        row(
            "  bulk download (MB/s)".into(),
            show(
                spread(rounds.iter().filter_map(|r| r.down_peer).collect()),
                0,
            ),
            format!("airlock ÷ it {}", show(down, 1)),
        );
        json["peer_keepalive_ratio"] = ka.0.into();
        json["peer_bulk_ratio"] = down.0.into();
    }
    if ruled.is_some() {
        let with = ratio(|r| r.ka_rules.unwrap_or(f64::NAN), |r| r.ka_airlock);
        row(
            format!("keep-alive with {} request rules: req/s", o.rules),
            "-".into(),
            show(
                spread(rounds.iter().filter_map(|r| r.ka_rules).collect()),
                0,
            ),
        );
        row(
            "  ÷ the same without rules".into(),
            "".into(),
            show(with, 3),
        );
        json["rules"] = o.rules.into();
        json["keepalive_rps_rules"] = spread(rounds.iter().filter_map(|r| r.ka_rules).collect())
            .0
            .round()
            .into();
        json["keepalive_rules_ratio"] = with.0.into();
        json["keepalive_rules_ratio_range"] = serde_json::json!([with.1, with.2]);
    }
    if o.fleet > 0 {
        let (rps_fleet, prop) = fleet(&o, &up);
        let rps_a = of(|r| r.ka_airlock).0;
        row(
            "fleet: keep-alive req/s, one node vs fleet node".into(),
            format!("{rps_a:.0}"),
            format!("{rps_fleet:.0}"),
        );
        row(
            format!(
                "fleet: write on a to served on b, {} writes: p50 / p99 (µs)",
                o.fleet
            ),
            "".into(),
            format!("{}/{}", q(&prop, 0.5), q(&prop, 0.99)),
        );
        json["fleet_keepalive_rps_node"] = rps_fleet.round().into();
        json["fleet_keepalive_ratio_to_single"] =
            ((rps_fleet / rps_a * 1000.0).round() / 1000.0).into();
        json["fleet_propagation_p50_us"] = q(&prop, 0.5).into();
        json["fleet_propagation_p99_us"] = q(&prop, 0.99).into();
        json["fleet_writes"] = o.fleet.into();
    }
    println!("{json}");
}
