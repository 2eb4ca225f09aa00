//! Benchmark clients: what agents do. A connection is either direct (TCP + TLS to the upstream)
//! or through airlock (TCP, `CONNECT` with `Proxy-Authorization`, TLS verified against
//! airlock's CA). Requests are HTTP/1.1 with keep-alive; responses are read by Content-Length or
//! chunked framing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use crate::upstream::HOST;

/// How to reach the upstream.
#[derive(Clone)]
pub(crate) enum Route {
    Direct {
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    },
    Airlock {
        proxy: SocketAddr,
        auth: String,
        tls: Arc<rustls::ClientConfig>,
    },
}

pub(crate) type Conn = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

pub(crate) fn tls_config(ca_der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca_der.to_vec()))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Opens a connection with TLS done.
pub(crate) fn open(route: &Route) -> std::io::Result<Conn> {
    let (sock, tls) = match route {
        Route::Direct { addr, tls } => (TcpStream::connect(addr)?, tls.clone()),
        Route::Airlock { proxy, auth, tls } => {
            let mut s = TcpStream::connect(proxy)?;
            let b64 = data_encoding::BASE64.encode(auth.as_bytes());
            write!(
                s,
                "CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nProxy-Authorization: Basic {b64}\r\n\r\n"
            )?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b)? == 0 {
                    return Err(std::io::Error::other("proxy closed"));
                }
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&head).into_owned(),
                ));
            }
            (s, tls.clone())
        }
    };
    sock.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from(HOST).expect("name");
    let conn = rustls::ClientConnection::new(tls, name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(BufReader::with_capacity(64 * 1024, stream))
}

/// Sends one request and reads the whole response; returns the body length.
pub(crate) fn request(
    c: &mut Conn,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<usize> {
    let w = c.get_mut();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer placeholder\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if body.len() < 64 * 1024 {
        let mut all = head.into_bytes();
        all.extend_from_slice(body);
        w.write_all(&all)?;
    } else {
        w.write_all(head.as_bytes())?;
        for chunk in body.chunks(256 * 1024) {
            w.write_all(chunk)?;
        }
    }
    w.flush()?;
    read_response(c, |_| {})
}

/// Reads a response, calling `on_data` with each piece of body as it arrives.
pub(crate) fn read_response(
    c: &mut Conn,
    mut on_data: impl FnMut(&[u8]),
) -> std::io::Result<usize> {
    let mut line = String::new();
    c.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 2") {
        return Err(std::io::Error::other(format!("status line {line:?}")));
    }
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if c.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("eof in head"));
        }
        if line == "\r\n" {
            break;
        }
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        } else if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    if chunked {
        loop {
            line.clear();
            c.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            if n == 0 {
                line.clear();
                c.read_line(&mut line)?;
                return Ok(total);
            }
            let mut left = n;
            while left > 0 {
                let k = left.min(buf.len());
                c.read_exact(&mut buf[..k])?;
                on_data(&buf[..k]);
                left -= k;
            }
            total += n;
            c.read_exact(&mut buf[..2])?;
        }
    }
    let mut left = length;
    while left > 0 {
        let k = left.min(buf.len());
        c.read_exact(&mut buf[..k])?;
        on_data(&buf[..k]);
        left -= k;
    }
    Ok(length)
}

/// `GET /healthz` on a proxy port (plain HTTP, one connection per call), as JSON.
pub(crate) fn health(proxy: SocketAddr) -> serde_json::Value {
    let Ok(mut s) = TcpStream::connect(proxy) else {
        return serde_json::Value::Null;
    };
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: airlock\r\nConnection: close\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(serde_json::Value::Null)
}
