//! The load harness (performance.md): airlock against direct, side by side, in one run.
//!
//! `cargo bench --bench load -- [--duration SECS] [--connections N] [--rate REQ_PER_S]
//! [--workers N] [--driver auto|io-uring|epoll] [--idle N] [--bulk-mib N] [--sse-events N]
//! [--sse-ms MS] [--fleet N] [--quick]`
//!
//! It starts a loopback HTTPS upstream with its own CA and `airlock serve` (the real binary) with
//! a vault whose service points at that upstream through `--resolve`, then runs each scenario
//! straight at the upstream and through airlock: keep-alive closed loop, fixed-rate open loop,
//! a new tunnel per request, SSE, bulk download and upload, and idle tunnels for memory. With
//! `--fleet N` it also starts a PostgreSQL cluster and a two-node fleet ([`fleet`]): the time
//! from a write acknowledged on one node to its being served on the other, over N writes, and
//! keep-alive throughput through a fleet node beside the single node's. It prints a table and,
//! last, one line of JSON with every figure. No timing is asserted anywhere.

// A benchmark tool: any setup failure should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
// The tests' PostgreSQL cluster (only its start and URL are used here).
#[path = "../../tests/it/pg.rs"]
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
            "--quick" => {
                (
                    o.duration,
                    o.connections,
                    o.rate,
                    o.idle,
                    o.bulk_mib,
                    o.sse_events,
                    o.sse_ms,
                ) = (Duration::from_millis(300), 2, 200, 20, 1, 5, 5);
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

/// The DER of the CA of the data dir in `dir`.
fn ca_der(dir: &std::path::Path) -> Vec<u8> {
    let ca = std::fs::read_to_string(dir.join("data/ca.pem")).expect("ca");
    rustls_pki_types::pem::PemObject::from_pem_slice(ca.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
        .expect("ca der")
}

/// A vault with the bench service and agent in `dir`; the agent's token.
fn setup_vault(dir: &std::path::Path) -> String {
    airlock(&["init"], dir, None);
    airlock(
        &["credential", "set", "BENCH_KEY"],
        dir,
        Some(b"sk-bench-secret-value"),
    );
    let yaml = dir.join("services.yaml");
    std::fs::write(&yaml, format!("services:\n  - name: bench\n    host: {}\n    auth: {{type: bearer, token: BENCH_KEY}}\n", upstream::HOST)).expect("yaml");
    airlock(
        &["service", "set", "-f", yaml.to_str().expect("path")],
        dir,
        None,
    );
    airlock(
        &["agent", "create", "bench", "--vault", "default"],
        dir,
        None,
    )
    .lines()
    .last()
    .unwrap_or_default()
    .to_owned()
}

/// `airlock serve` on `dir` against the upstream, with `extra` global flags (a config file).
fn serve(o: &Opts, dir: &std::path::Path, up: &upstream::Upstream, extra: &[&str]) -> Airlock {
    let resolve = format!("{}:443:{}", upstream::HOST, up.addr);
    let workers = o.workers.to_string();
    let mut c = Command::new(env!("CARGO_BIN_EXE_airlock"));
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

fn start_airlock(o: &Opts, dir: &std::path::Path, up: &upstream::Upstream) -> (Airlock, String) {
    let token = setup_vault(dir);
    (serve(o, dir, up, &[]), token)
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
    let token = setup_vault(a.path());
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

/// Open loop: requests scheduled at a fixed total rate; latency counts from the scheduled time.
fn open_loop(route: &Route, o: &Opts) -> Histogram<u64> {
    let per_conn = (o.rate as f64 / o.connections as f64).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let threads: Vec<_> = (0..o.connections)
        .map(|i| {
            let route = route.clone();
            let duration = o.duration;
            std::thread::spawn(move || {
                let mut h = hist();
                let mut c = client::open(&route).expect("open");
                let start = Instant::now() + interval.mul_f64(i as f64 / 16.0);
                let mut k = 0u32;
                loop {
                    let at = start + interval * k;
                    if at > start + duration {
                        return h;
                    }
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    client::request(&mut c, "GET", "/small", b"").expect("request");
                    let _ = h.record(at.elapsed().as_micros() as u64);
                    k += 1;
                }
            })
        })
        .collect();
    let mut all = hist();
    for t in threads {
        all.add(t.join().expect("thread")).expect("add");
    }
    all
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

/// SSE: time to first byte, and each event's delay from the upstream's send time.
fn sse(route: &Route, o: &Opts) -> (u64, Histogram<u64>) {
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
    let mut delays = hist();
    client::read_response(&mut c, |piece| {
        ttfb.get_or_insert(t.elapsed().as_micros() as u64);
        let text = String::from_utf8_lossy(piece);
        for sent in text
            .split("data: ")
            .skip(1)
            .filter_map(|e| e.trim().parse::<u64>().ok())
        {
            let _ = delays.record(upstream::now_us().saturating_sub(sent).max(1));
        }
    })
    .expect("sse");
    (ttfb.unwrap_or(0), delays)
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

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    if file == "stat" {
        // utime + stime, fields 14 and 15, in clock ticks (USER_HZ is 100 on Linux).
        let after = text.rsplit(')').next().unwrap_or_default();
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        return (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10_000;
    }
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let o = opts();
    let dir = tempfile::tempdir().expect("tempdir");
    let up = upstream::start(dir.path());
    let (al, token) = start_airlock(&o, dir.path(), &up);
    let direct = Route::Direct {
        addr: up.addr,
        tls: client::tls_config(&up.ca_der),
    };
    let ca_der = ca_der(dir.path());
    let through = Route::Airlock {
        proxy: al.proxy,
        auth: format!("{token}:default"),
        tls: client::tls_config(&ca_der),
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
        "machine: {cores} cores, {cpu_model}; airlock workers {}, driver {}",
        o.workers, al.driver
    );
    println!("generator, upstream and airlock share the cores (no pinning)");

    let (rps_d, h_d, _) = closed_loop(&direct, &o);
    let cpu0 = proc_field(pid, "stat", "");
    let (rps_a, h_a, n_a) = closed_loop(&through, &o);
    let cpu_per_req = (proc_field(pid, "stat", "") - cpu0) as f64 / n_a.max(1) as f64;
    let ol_d = open_loop(&direct, &o);
    let ol_a = open_loop(&through, &o);
    let (tps_d, th_d) = tunnels(&direct, &o);
    let (tps_a, th_a) = tunnels(&through, &o);
    let (ttfb_d, ev_d) = sse(&direct, &o);
    let (ttfb_a, ev_a) = sse(&through, &o);
    let (down_d, upl_d) = bulk(&direct, &o);
    let (down_a, upl_a) = bulk(&through, &o);
    let rss0 = proc_field(pid, "status", "VmRSS:");
    let idle: Vec<_> = (0..o.idle)
        .map(|_| client::open(&through).expect("idle tunnel"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = proc_field(pid, "status", "VmRSS:");
    let per_tunnel = (rss1.saturating_sub(rss0)) as f64 / o.idle.max(1) as f64;
    drop(idle);

    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    println!("\n{:<44} {:>14} {:>14}", "scenario", "direct", "airlock");
    println!(
        "{:<44} {:>14.0} {:>14.0}",
        format!("keep-alive closed loop, {} conns: req/s", o.connections),
        rps_d,
        rps_a
    );
    for (name, p) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        println!(
            "{:<44} {:>14} {:>14}",
            format!("  latency {name} (µs)"),
            q(&h_d, p),
            q(&h_a, p)
        );
    }
    println!(
        "{:<44} {:>14} {:>14}",
        format!("open loop {} req/s: p50 (µs)", o.rate),
        q(&ol_d, 0.5),
        q(&ol_a, 0.5)
    );
    println!(
        "{:<44} {:>14} {:>14}",
        "  p99 (µs)",
        q(&ol_d, 0.99),
        q(&ol_a, 0.99)
    );
    println!(
        "{:<44} {:>14.0} {:>14.0}",
        "new tunnel per request: tunnels/s", tps_d, tps_a
    );
    println!(
        "{:<44} {:>14} {:>14}",
        "  p50 / p99 (µs)",
        format!("{}/{}", q(&th_d, 0.5), q(&th_d, 0.99)),
        format!("{}/{}", q(&th_a, 0.5), q(&th_a, 0.99))
    );
    println!(
        "{:<44} {:>14} {:>14}",
        format!("SSE {} events: time to first byte (µs)", o.sse_events),
        ttfb_d,
        ttfb_a
    );
    println!(
        "{:<44} {:>14} {:>14}",
        "  event delay p50 / p99 (µs)",
        format!("{}/{}", q(&ev_d, 0.5), q(&ev_d, 0.99)),
        format!("{}/{}", q(&ev_a, 0.5), q(&ev_a, 0.99))
    );
    println!(
        "{:<44} {:>14.0} {:>14.0}",
        format!("bulk {} MiB download (MB/s)", o.bulk_mib),
        down_d,
        down_a
    );
    println!(
        "{:<44} {:>14.0} {:>14.0}",
        format!("bulk {} MiB upload (MB/s)", o.bulk_mib),
        upl_d,
        upl_a
    );
    println!(
        "{:<44} {:>14} {:>14.1}",
        format!("idle intercepted tunnels ({}): KiB each", o.idle),
        "-",
        per_tunnel
    );
    println!(
        "{:<44} {:>14} {:>14.1}",
        "airlock CPU per request (µs, closed loop)", "-", cpu_per_req
    );
    let json = serde_json::json!({
        "cores": cores,
        "cpu": cpu_model,
        "driver": al.driver,
        "workers": o.workers,
        "connections": o.connections,
        "keepalive_rps_direct": rps_d.round(),
        "keepalive_rps_airlock": rps_a.round(),
        "keepalive_ratio": (rps_a / rps_d * 1000.0).round() / 1000.0,
        "keepalive_p99_us_airlock": q(&h_a, 0.99),
        "open_loop_rate": o.rate,
        "added_p50_us": q(&ol_a, 0.5) as i64 - q(&ol_d, 0.5) as i64,
        "added_p99_us": q(&ol_a, 0.99) as i64 - q(&ol_d, 0.99) as i64,
        "tunnels_per_s_direct": tps_d.round(),
        "tunnels_per_s_airlock": tps_a.round(),
        "sse_added_ttfb_us": ttfb_a as i64 - ttfb_d as i64,
        "sse_added_event_p99_us": q(&ev_a, 0.99) as i64 - q(&ev_d, 0.99) as i64,
        "sse_event_p99_us_airlock": q(&ev_a, 0.99),
        "bulk_mb_s_direct": down_d.round(),
        "bulk_mb_s_airlock": down_a.round(),
        "bulk_upload_mb_s_direct": upl_d.round(),
        "bulk_upload_mb_s_airlock": upl_a.round(),
        "idle_tunnel_rss_kib": (per_tunnel * 10.0).round() / 10.0,
        "airlock_cpu_us_per_req": (cpu_per_req * 10.0).round() / 10.0,
    });
    let mut json = json;
    if o.fleet > 0 {
        let (rps_fleet, prop) = fleet(&o, &up);
        println!(
            "{:<44} {:>14.0} {:>14.0}",
            "fleet: keep-alive req/s, one node vs fleet node", rps_a, rps_fleet
        );
        println!(
            "{:<44} {:>14} {:>14}",
            format!("fleet: write on a to served on b, {} writes", o.fleet),
            "p50 (µs)",
            "p99 (µs)"
        );
        println!("{:<44} {:>14} {:>14}", "", q(&prop, 0.5), q(&prop, 0.99));
        json["fleet_keepalive_rps_node"] = rps_fleet.round().into();
        json["fleet_keepalive_ratio_to_single"] =
            ((rps_fleet / rps_a * 1000.0).round() / 1000.0).into();
        json["fleet_propagation_p50_us"] = q(&prop, 0.5).into();
        json["fleet_propagation_p99_us"] = q(&prop, 0.99).into();
        json["fleet_writes"] = o.fleet.into();
    }
    println!("{json}");
}
