//! The benchmark's upstream: a loopback HTTPS server with its own CA, one thread per
//! connection, keep-alive. Paths: `/small` (64-byte body), `/big?n=N` (N bytes), `/sse?n=N&ms=M`
//! (N events M ms apart, each carrying its send time in µs), `POST /upload` (counts the body).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub(crate) const HOST: &str = "api.bench.test";

pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    pub ca_der: Vec<u8>,
}

pub(crate) fn start(dir: &Path) -> Upstream {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench upstream CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(vec![HOST.to_owned()]).expect("params");
    leaf.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("cert"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                serve(rustls::StreamOwned::new(conn, stream));
            });
        }
    });
    Upstream {
        addr,
        ca_file,
        ca_der: ca_cert.der().to_vec(),
    }
}

fn serve<S: Read + Write>(stream: S) {
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let small = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n{}",
        "x".repeat(64)
    );
    let big = vec![b'b'; 1 << 20];
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut left = length;
        let mut sink = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(sink.len());
            if r.read_exact(&mut sink[..n]).is_err() {
                return;
            }
            left -= n;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse::<usize>().ok())
        };
        let w = r.get_mut();
        let ok = match path {
            "/big" => {
                let mut n = param("n").unwrap_or(0);
                let mut ok = w
                    .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n").as_bytes())
                    .is_ok();
                while n > 0 && ok {
                    let c = n.min(big.len());
                    ok = w.write_all(&big[..c]).is_ok();
                    n -= c;
                }
                ok
            }
            "/sse" => {
                let n = param("n").unwrap_or(10);
                let ms = param("ms").unwrap_or(10) as u64;
                let mut ok = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").is_ok() && w.flush().is_ok();
                for _ in 0..n {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    let ev = format!("data: {}\n\n", now_us());
                    ok &= w
                        .write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
                        .is_ok()
                        && w.flush().is_ok();
                }
                ok && w.write_all(b"0\r\n\r\n").is_ok()
            }
            "/upload" => {
                let body = format!("{{\"received\":{length}}}");
                w.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .is_ok()
            }
            _ => w.write_all(small.as_bytes()).is_ok(),
        };
        if !ok || w.flush().is_err() {
            return;
        }
    }
}

/// Microseconds since the Unix epoch (both ends of the SSE measurement run on this machine).
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
