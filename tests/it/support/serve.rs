//! A running `airlock serve` ([`Proxy`]) and a raw-bytes client ([`RawClient`]) that speaks
//! CONNECT and TLS itself, so malformed requests reach the proxy exactly as written.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::Env;
use crate::support::origin::Origin;

/// `airlock serve` as a child process; killed on drop.
pub(crate) struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
    /// From the ready line: the admin socket and HTTP address, when the admin process runs.
    pub admin_socket: Option<String>,
    /// The admin JSON API's socket.
    pub admin_api: Option<String>,
    pub admin_http: Option<String>,
    pub metrics: Option<String>,
}

impl Proxy {
    /// Starts serve on 127.0.0.1:0 with 2 workers and `extra` flags; waits for `ready`.
    pub(crate) fn start(env: &Env, extra: &[&str]) -> Self {
        let mut c = env.command(&["serve", "--listen", "127.0.0.1:0", "--workers", "2"]);
        if !extra.contains(&"--admin-listen") {
            c.arg("--no-admin");
        }
        c.args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = c.spawn().expect("spawn serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let Some(rest) = line.strip_prefix("ready proxy=") else {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "serve did not print ready: {line:?}; stderr: {}",
                stderr.lock().unwrap()
            );
        };
        let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
        assert!(
            line.contains(" admin=") && line.contains(" admin_http=") && line.contains(" metrics="),
            "{line}"
        );
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .filter(|v| *v != "none")
                .map(str::to_owned)
        };
        let (admin_socket, admin_api, admin_http, metrics) = (
            field("admin=unix:"),
            field("admin_api=unix:"),
            field("admin_http="),
            field("metrics="),
        );
        std::thread::spawn(move || for _ in out.lines() {});
        Self {
            child,
            addr,
            stderr,
            admin_socket,
            admin_api,
            admin_http,
            metrics,
        }
    }

    /// Serve with an origin standing in for `hosts` through `--resolve`. `trusted`: the origin's
    /// CA is given as `--upstream-ca-file`; `loopback_allowed`: `--network-allow 127.0.0.1/32`.
    pub(crate) fn for_origin(
        env: &Env,
        origin: &Origin,
        hosts: &[&str],
        driver: &str,
        extra: &[&str],
        trusted: bool,
        loopback_allowed: bool,
    ) -> Self {
        let mut args: Vec<String> = vec!["--driver".into(), driver.into()];
        args.extend(extra.iter().map(|a| a.to_string()));
        if loopback_allowed {
            args.extend(["--network-allow".into(), "127.0.0.1/32".into()]);
        }
        if trusted {
            args.extend([
                "--upstream-ca-file".into(),
                origin.ca_file.display().to_string(),
            ]);
        }
        for h in hosts {
            args.extend(["--resolve".into(), format!("{h}:443:{}", origin.addr)]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(env, &refs)
    }

    pub(crate) fn url(&self, token: &str, vault: &str) -> String {
        format!("http://{token}:{vault}@{}", self.addr)
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit; its exit code, if it did.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a CONNECT and returns the socket and the proxy's response head.
pub(crate) fn connect(
    proxy: SocketAddr,
    authority: &str,
    auth: Option<&str>,
) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(a) = auth {
        req.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            data_encoding::BASE64.encode(a.as_bytes())
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    (s, head)
}

fn read_head<R: Read>(r: &mut R) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match r.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A TLS client inside a CONNECT tunnel that writes raw bytes.
pub(crate) struct RawClient {
    pub tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl RawClient {
    /// CONNECTs to `host:443` and does TLS with `sni`, trusting the CA in `ca_pem`.
    pub(crate) fn open(
        proxy: SocketAddr,
        host: &str,
        sni: &str,
        auth: &str,
        ca_pem: &[u8],
    ) -> Result<Self, String> {
        let (sock, head) = connect(proxy, &format!("{host}:443"), Some(auth));
        if !head.starts_with("HTTP/1.1 200") {
            return Err(head);
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(Self { tls })
    }

    /// Writes `raw` and reads one response (head plus a Content-Length body).
    pub(crate) fn send(&mut self, raw: &[u8]) -> String {
        self.tls.write_all(raw).unwrap();
        self.tls.flush().unwrap();
        self.response()
    }

    pub(crate) fn response(&mut self) -> String {
        let head = read_head(&mut self.tls);
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        let _ = self.tls.read_exact(&mut body);
        head + &String::from_utf8_lossy(&body)
    }
}

use rustls_pki_types::pem::PemObject;
