//! `airlock run --sandbox` with the real bubblewrap (Debian's `bubblewrap`; tests/run.sh installs
//! it): what a prompt-injected agent would try to get out another way, each tried from inside
//! with real programs (curl, Python, `env -i`), and the ways through airlock, which work: a
//! service with its credential, a host on the vault's egress allowlist through an opaque
//! tunnel, and a proposal for a host nobody approved.

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use crate::harness::output;
use crate::proxy::Setup;

/// Rows 113-117, 119: inside the sandbox, direct HTTPS (curl `--noproxy '*'`, Python without
/// `HTTPS_PROXY`, a process started with `env -i`), DNS, the host's loopback services and the
/// metadata address, and UDP all fail; a planted `~/.ssh` key and airlock's data dir cannot be
/// read; the working directory is writable; through airlock a service gets its credential; the
/// run's first line says it is sandboxed.
#[test]
fn sandboxed_run_has_no_way_out_but_airlock() {
    let s = Setup::new("auto");
    let home = s.env.path("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "PLANTED-PRIVATE-KEY").unwrap();
    let work = s.env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    // A host-side TCP service on loopback (the admin port, a local PostgreSQL) and a UDP one.
    let host_tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let origin = s.origin.addr;
    // The egress allowlist: a host without a service, tunnelled opaquely.
    s.env
        .run(&["vault", "allow", "default", "other.example.net"])
        .ok();
    std::thread::sleep(Duration::from_millis(300));
    let script = format!(
        r#"
probe() {{ if "$@" >/dev/null 2>&1; then echo "$1-$2: OUT"; else echo "$1-$2: blocked"; fi; }}
curl -sS --max-time 3 --noproxy '*' -k https://{origin}/direct >/dev/null 2>&1 && echo "direct: OUT" || echo "direct: blocked"
python3 -c 'import os,urllib.request,ssl; [os.environ.pop(k,None) for k in ("HTTPS_PROXY","https_proxy","HTTP_PROXY","http_proxy")]; urllib.request.urlopen("https://{origin}/py", timeout=3, context=ssl._create_unverified_context())' >/dev/null 2>&1 && echo "python: OUT" || echo "python: blocked"
env -i /usr/bin/curl -sS --max-time 3 -k https://{origin}/envi >/dev/null 2>&1 && echo "env-i: OUT" || echo "env-i: blocked"
python3 -c 'import socket; socket.getaddrinfo("example.com", 443)' >/dev/null 2>&1 && echo "dns: OUT" || echo "dns: blocked"
python3 -c 'import socket; socket.create_connection(("127.0.0.1", {tcp}), timeout=2)' >/dev/null 2>&1 && echo "host-loopback: OUT" || echo "host-loopback: blocked"
python3 -c 'import socket; socket.create_connection(("169.254.169.254", 80), timeout=2)' >/dev/null 2>&1 && echo "metadata: OUT" || echo "metadata: blocked"
python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"escaped", ("127.0.0.1", {udp}))' >/dev/null 2>&1
cat "$HOME/.ssh/id_ed25519" 2>/dev/null || echo "ssh: hidden"
ls {data}/vault >/dev/null 2>&1 && echo "data-dir: OUT" || echo "data-dir: hidden"
echo written > made-inside && echo "cwd: writable"
curl -sS --max-time 10 -H 'Authorization: Bearer placeholder' https://api.openai.com/v1/models -o /dev/null -w 'through-airlock: %{{http_code}}\n'
curl -sS -k --max-time 10 https://other.example.net/allowed -o /dev/null -w 'allowlisted: %{{http_code}}\n'
curl -sS --max-time 10 https://unlisted.example.com/x -o /dev/null -w 'unlisted: %{{http_connect}}\n' 2>/dev/null
curl -sS -o /dev/null -w 'proposed: %{{http_code}}\n' -H "Authorization: Bearer $AIRLOCK_TOKEN" -H 'content-type: application/json' "$AIRLOCK_URL/v1/proposals" --data-binary '{{"services":[{{"action":"set","name":"unlisted","host":"unlisted.example.com","auth":{{"type":"bearer","token":"UNLISTED_KEY"}}}}],"credentials":[{{"key":"UNLISTED_KEY"}}],"user_message":"from the sandbox"}}'
"#,
        tcp = host_tcp.local_addr().unwrap().port(),
        udp = udp.local_addr().unwrap().port(),
        data = s.env.data_dir.display(),
    );
    let proxy = format!("http://{}", s.proxy.addr);
    let mut c = s.env.command(&[
        "run",
        "--sandbox",
        "--proxy",
        &proxy,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    c.current_dir(&work).env("HOME", &home);
    let r = output(c, None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("airlock: run: sandboxed with bubblewrap")),
        "{}",
        r.stderr
    );
    for line in [
        "direct: blocked",
        "python: blocked",
        "env-i: blocked",
        "dns: blocked",
        "host-loopback: blocked",
        "metadata: blocked",
        "ssh: hidden",
        "data-dir: hidden",
        "cwd: writable",
        "through-airlock: 200",
        "allowlisted: 200",
        "unlisted: 403",
        "proposed: 201",
    ] {
        assert!(r.stdout.contains(line), "{line}: {}", r.stdout);
    }
    assert!(!r.stdout.contains("PLANTED"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(work.join("made-inside")).unwrap(),
        "written\n"
    );
    let mut buf = [0u8; 16];
    assert!(udp.recv_from(&mut buf).is_err(), "a UDP datagram got out");
    let direct: Vec<_> = s
        .origin
        .recorded()
        .into_iter()
        .filter(|q| {
            !q.request_line().starts_with("GET /v1/models")
                && !q.request_line().starts_with("GET /allowed")
        })
        .collect();
    assert!(direct.is_empty(), "reached the origin directly: {direct:?}");
    let models = s
        .origin
        .recorded()
        .into_iter()
        .find(|q| q.request_line().starts_with("GET /v1/models"))
        .unwrap();
    assert_eq!(
        models.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    // The allowlisted tunnel carried no credential, and is a request-log row with its bytes.
    let allowed = s
        .origin
        .recorded()
        .into_iter()
        .find(|q| q.request_line().starts_with("GET /allowed"))
        .unwrap();
    assert!(
        allowed.header("authorization").is_empty(),
        "{}",
        allowed.head
    );
    let start = std::time::Instant::now();
    loop {
        let logs = s
            .env
            .run(&["logs", "--vault", "default", "--json"])
            .ok()
            .stdout;
        let tunnel = logs
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["method"] == "CONNECT" && r["host"] == "other.example.net");
        if let Some(row) = tunnel {
            assert!(row["bytes"].as_u64().unwrap_or(0) > 0, "{row}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no tunnel row: {logs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Row 118: without bubblewrap, `--sandbox` stops with one line and the agent never runs.
#[test]
fn sandbox_without_bubblewrap_refuses_to_run() {
    let s = Setup::new("auto");
    let proxy = format!("http://{}", s.proxy.addr);
    let mut c = s.env.command(&[
        "run",
        "--sandbox",
        "--proxy",
        &proxy,
        "--",
        "/bin/sh",
        "-c",
        "echo the-agent-ran",
    ]);
    c.env("PATH", s.env.path("empty-path"));
    let r = output(c, None);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("--sandbox needs bubblewrap (bwrap)"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("the-agent-ran"), "{}", r.stdout);
}
