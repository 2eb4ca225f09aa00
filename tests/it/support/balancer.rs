//! HAProxy in front of airlock, as `docs/src/fleet.md` configures it: `mode tcp`, health checks
//! on `/healthz` that a busy host does not fail (one a second, three misses before a server is
//! down, two seconds each), redispatch on a failed connect. Killed on drop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub(crate) struct Balancer {
    child: std::process::Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Balancer {
    /// HAProxy balancing over `servers` (name, address); `server_options` go on each `server`
    /// line (`send-proxy-v2`, `check-ssl ...`).
    pub(crate) fn start(servers: &[(String, SocketAddr)], server_options: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A port the kernel picked, handed to HAProxy (it cannot report one it chose itself).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let servers: String = servers
            .iter()
            .map(|(name, at)| format!("    server {name} {at} check {server_options}\n"))
            .collect();
        let cfg = format!(
            "global\n    maxconn 256\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    timeout check 2s\n    retries 2\n    option redispatch\n    default-server inter 1s fall 3 rise 2\n\
             frontend agents\n    bind {addr}\n    default_backend airlock\n\
             backend airlock\n    balance roundrobin\n    option httpchk GET /healthz\n    http-check expect status 200\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy; tests/run.sh installs it)");
        let end = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < end, "haproxy did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
