//! EchoOrigin: a loopback HTTPS (or plain HTTP) server with its own test CA. It records every
//! request's raw head, body and TLS SNI, and answers by path:
//! - `/sse?n=N&ms=M`: N server-sent events, M ms apart (chunked);
//! - `/ws`: a WebSocket upgrade, then each client frame (under 126 bytes) echoed back;
//! - `/redirect`: 302 to another host;
//! - `/bytes?n=N`: N bytes (Content-Length);
//! - `/chunked?n=N`: N bytes in chunks of 1000;
//! - `/desync`: 200, then 300 ms later an unsolicited second response echoing the request's
//!   `Authorization` (a buggy or hostile upstream); `/desync-now`: both in one write;
//! - `/once-per-conn`: answered on a fresh connection; on a reused one the origin closes without
//!   answering (an upstream that closed the idle connection just as the request was sent);
//! - `/partial`: half a response head, then close;
//! - `/v1/messages`, `/v1/chat/completions` (not streaming): a minimal valid reply;
//! - `/v1/responses`: the OpenAI Responses API, streamed as SSE to a POST, or over a WebSocket
//!   (each `response.create` message answered with the same events as text frames);
//! - echoes of the request's `Authorization` in places a hostile upstream might use:
//!   `/echo-reason` (the status line's reason phrase), `/echo-header-name` (a header name),
//!   `/echo-bare` (the value without its scheme word, as an error body would quote it);
//! - `/echo-body`: the request's body as the response's (an API quoting what it was sent);
//! - `.../store` keeps the request's `x-note`; `/fetch` returns it (a value stored through one
//!   service, read back through another);
//! - `/ws-secret`: a WebSocket upgrade, then a text frame and a message fragmented over two
//!   frames, each quoting the request's `Authorization`, then a close;
//! - `/oauth/token` and `/api/...`: a stand-in OAuth authorization server and the API it guards
//!   ([`OAuthStandIn`]);
//! - anything else: 200 with a JSON echo of the request line and headers.
//!
//! [`Origin::https_idle`] closes connections idle for longer than a given time, as Node and
//! uvicorn servers do after 5 s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub head: String,
    pub body: Vec<u8>,
    pub sni: Option<String>,
    pub conn: usize,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    pub(crate) fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }
}

pub(crate) struct Origin {
    /// Where `/repo.git/...` is served from with `git http-backend`, once set.
    pub git_root: Arc<Mutex<Option<PathBuf>>>,
    /// The stand-in OAuth server's state.
    pub oauth: Arc<Mutex<OAuthStandIn>>,
    pub addr: SocketAddr,
    /// PEM of the CA that signed the origin's certificate.
    pub ca_file: PathBuf,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<AtomicUsize>,
}

/// A test CA (written to `dir/origin-ca.pem`) and a leaf certificate it signed for `hosts`,
/// expired yesterday with `expired`.
pub(crate) fn certificate(
    dir: &std::path::Path,
    hosts: &[&str],
    expired: bool,
) -> (PathBuf, rcgen::Certificate, KeyPair) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "EchoOrigin test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_file = dir.join("origin-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.use_authority_key_identifier_extension = true;
    if expired {
        leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_file, leaf_cert, leaf_key)
}

impl Origin {
    /// An HTTPS origin whose certificate names `hosts`.
    pub(crate) fn https(dir: &std::path::Path, hosts: &[&str]) -> Self {
        Self::https_with(dir, hosts, false)
    }

    /// As [`Origin::https`]; with `expired`, the certificate's validity ended yesterday.
    pub(crate) fn https_with(dir: &std::path::Path, hosts: &[&str], expired: bool) -> Self {
        Self::https_opts(dir, hosts, expired, Duration::from_secs(30))
    }

    /// As [`Origin::https`], closing connections idle for `idle`.
    pub(crate) fn https_idle(dir: &std::path::Path, hosts: &[&str], idle: Duration) -> Self {
        Self::https_opts(dir, hosts, false, idle)
    }

    fn https_opts(dir: &std::path::Path, hosts: &[&str], expired: bool, idle: Duration) -> Self {
        let (ca_file, leaf_cert, leaf_key) = certificate(dir, hosts, expired);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        Self::start(Some(Arc::new(config)), ca_file, idle)
    }

    /// A plain-HTTP origin.
    pub(crate) fn http(dir: &std::path::Path) -> Self {
        Self::start(None, dir.join("none.pem"), Duration::from_secs(30))
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>, ca_file: PathBuf, idle: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let git_root: Arc<Mutex<Option<PathBuf>>> = Arc::new(Mutex::new(None));
        let oauth = Arc::new(Mutex::new(OAuthStandIn::default()));
        let (reqs, conns, git, auth) = (
            requests.clone(),
            connections.clone(),
            git_root.clone(),
            oauth.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let id = conns.fetch_add(1, Ordering::SeqCst);
                let (tls, reqs, git, auth) = (tls.clone(), reqs.clone(), git.clone(), auth.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(idle));
                    match tls {
                        Some(config) => {
                            let conn = rustls::ServerConnection::new(config).unwrap();
                            let mut tls = rustls::StreamOwned::new(conn, stream);
                            // Finish the handshake to learn the SNI.
                            while tls.conn.is_handshaking() {
                                if tls.conn.complete_io(&mut tls.sock).is_err() {
                                    return;
                                }
                            }
                            let sni = tls.conn.server_name().map(str::to_owned);
                            serve(tls, sni, id, &reqs, &git, &auth);
                        }
                        None => serve(stream, None, id, &reqs, &git, &auth),
                    }
                });
            }
        });
        Self {
            git_root,
            oauth,
            addr,
            ca_file,
            requests,
            connections,
        }
    }

    pub(crate) fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// What `/store` kept, for `/fetch`.
static NOTE: Mutex<String> = Mutex::new(String::new());

fn serve<S: Read + Write>(
    stream: S,
    sni: Option<String>,
    conn: usize,
    reqs: &Mutex<Vec<Recorded>>,
    git: &Mutex<Option<PathBuf>>,
    oauth: &Mutex<OAuthStandIn>,
) {
    let mut r = BufReader::new(stream);
    for served in 0.. {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let rec = Recorded {
            head: head.clone(),
            body: Vec::new(),
            sni: sni.clone(),
            conn,
        };
        let mut body = Vec::new();
        if let Some(n) = rec
            .header("content-length")
            .first()
            .and_then(|v| v.parse::<usize>().ok())
        {
            body.resize(n, 0);
            if r.read_exact(&mut body).is_err() {
                return;
            }
        } else if rec
            .header("transfer-encoding")
            .first()
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).is_err() {
                    return;
                }
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let recorded = Recorded { body, ..rec };
        reqs.lock().unwrap().push(recorded.clone());
        let target = recorded
            .request_line()
            .split(' ')
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse::<usize>().ok())
        };
        if let Some(root) = git
            .lock()
            .unwrap()
            .clone()
            .filter(|_| path.starts_with("/repo.git/"))
        {
            let out = git_cgi(&root, &recorded, path, query);
            let w = r.get_mut();
            if w.write_all(&out).is_err() || w.flush().is_err() {
                return;
            }
            continue;
        }
        if path == "/oauth/token" || path.starts_with("/api/") {
            let out = oauth_answer(oauth, path, &recorded);
            let w = r.get_mut();
            if w.write_all(&out).is_err() || w.flush().is_err() {
                return;
            }
            continue;
        }
        if path == "/once-per-conn" && served > 0 {
            return;
        }
        let body_text = String::from_utf8_lossy(&recorded.body).replace(' ', "");
        let streaming = body_text.contains("\"stream\":true");
        if path == "/v1/responses" && rec_is_websocket(&recorded) {
            responses_websocket(&mut r, &recorded);
            return;
        }
        if matches!(
            path,
            "/v1/chat/completions" | "/v1/messages" | "/v1/responses"
        ) && streaming
        {
            let events = match path {
                "/v1/messages" => anthropic_events(),
                "/v1/responses" => responses_events()
                    .into_iter()
                    .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
                    .collect(),
                _ => openai_events(),
            };
            let w = r.get_mut();
            let mut ok = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").is_ok();
            for ev in events {
                std::thread::sleep(Duration::from_millis(20));
                ok &= w
                    .write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
                    .is_ok()
                    && w.flush().is_ok();
            }
            if !ok || w.write_all(b"0\r\n\r\n").is_err() || w.flush().is_err() {
                return;
            }
            continue;
        }
        let auth = recorded.header("authorization").pop().unwrap_or_default();
        if path == "/ws-secret" && rec_is_websocket(&recorded) {
            let mut out = switching(&recorded).into_bytes();
            let half = auth.len() / 2;
            for (fin, op, text) in [
                (true, 1u8, format!("auth={auth}")),
                (false, 1, format!("part={}", &auth[..half])),
                (true, 0, auth[half..].to_owned()),
                (true, 8, String::new()),
            ] {
                out.push(u8::from(fin) << 7 | op);
                out.push(text.len() as u8);
                out.extend_from_slice(text.as_bytes());
            }
            let w = r.get_mut();
            let _ = w.write_all(&out).and_then(|()| w.flush());
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        if path == "/ws" && rec_is_websocket(&recorded) {
            let head = switching(&recorded);
            if r.get_mut().write_all(head.as_bytes()).is_err() || r.get_mut().flush().is_err() {
                return;
            }
            // Echo each (masked, short) client frame back unmasked until the client closes.
            loop {
                let mut h = [0u8; 6];
                if r.read_exact(&mut h).is_err() {
                    return;
                }
                let len = usize::from(h[1] & 0x7f);
                let mut payload = vec![0u8; len];
                if len >= 126 || r.read_exact(&mut payload).is_err() {
                    return;
                }
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= h[2 + i % 4];
                }
                let mut out = vec![h[0], len as u8];
                out.extend_from_slice(&payload);
                let w = r.get_mut();
                if w.write_all(&out).is_err() || w.flush().is_err() {
                    return;
                }
            }
        }
        let w = r.get_mut();
        let ok = match path {
            "/sse" => {
                let n = param("n").unwrap_or(3);
                let ms = param("ms").unwrap_or(100);
                let mut ok = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").is_ok();
                for i in 0..n {
                    std::thread::sleep(Duration::from_millis(ms as u64));
                    let ev = format!("data: event {i} at {}\n\n", now_ms());
                    ok &= w.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes()).is_ok() && w.flush().is_ok();
                }
                ok && w.write_all(b"0\r\n\r\n").is_ok()
            }
            "/hostile/clte" => w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n").is_ok(),
            "/hostile/overlong" => w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloEXTRA-BYTES").is_ok(),
            "/desync" | "/desync-now" => {
                let auth = recorded.header("authorization").pop().unwrap_or_default();
                let late = format!("desync-echo auth={auth}");
                let late = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{late}", late.len());
                let first = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if path == "/desync-now" {
                    w.write_all(format!("{first}{late}").as_bytes()).is_ok()
                } else {
                    let ok = w.write_all(first.as_bytes()).is_ok() && w.flush().is_ok();
                    std::thread::sleep(Duration::from_millis(300));
                    ok && w.write_all(late.as_bytes()).is_ok()
                }
            }
            "/echo-body" => {
                let mut out = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", recorded.body.len()).into_bytes();
                out.extend_from_slice(&recorded.body);
                w.write_all(&out).is_ok()
            }
            "/echo-reason" => w.write_all(format!("HTTP/1.1 401 {auth}\r\ncontent-length: 0\r\n\r\n").as_bytes()).is_ok(),
            "/echo-header-name" => {
                let name = auth.split(' ').next_back().unwrap_or_default();
                w.write_all(format!("HTTP/1.1 200 OK\r\nx-{name}: 1\r\ncontent-length: 0\r\n\r\n").as_bytes()).is_ok()
            }
            "/echo-bare" => {
                let body = format!("invalid credentials {}", auth.split(' ').next_back().unwrap_or_default());
                w.write_all(format!("HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).is_ok()
            }
            p if p.ends_with("/store") => {
                *NOTE.lock().unwrap() = recorded.header("x-note").pop().unwrap_or_default();
                w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").is_ok()
            }
            "/fetch" => {
                let body = format!("note: {}", NOTE.lock().unwrap());
                w.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).is_ok()
            }
            "/partial" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-le");
                let _ = w.flush();
                return;
            }
            "/v1/messages" | "/v1/chat/completions" => {
                let body = if path == "/v1/messages" { anthropic_message() } else { openai_completion() };
                w.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).is_ok()
            }
            "/redirect" => w.write_all(b"HTTP/1.1 302 Found\r\nlocation: https://elsewhere.example.net/steal\r\ncontent-length: 0\r\n\r\n").is_ok(),
            "/bytes" => {
                let n = param("n").unwrap_or(0);
                let body = vec![b'x'; n];
                w.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n").as_bytes()).is_ok() && w.write_all(&body).is_ok()
            }
            "/chunked" => {
                let n = param("n").unwrap_or(0);
                let mut ok = w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_ok();
                let mut left = n;
                while left > 0 && ok {
                    let c = left.min(1000);
                    ok &= w.write_all(format!("{c:x}\r\n{}\r\n", "y".repeat(c)).as_bytes()).is_ok();
                    left -= c;
                }
                ok && w.write_all(b"0\r\n\r\n").is_ok()
            }
            _ => {
                let body = serde_json::json!({
                    "request_line": recorded.request_line(),
                    "body_len": recorded.body.len(),
                    "conn": conn,
                    "accept_encoding": recorded.header("accept-encoding"),
                })
                .to_string();
                w.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).is_ok()
            }
        };
        if !ok || w.flush().is_err() {
            return;
        }
    }
}

/// The chat completion "Hello from the origin", not streamed.
fn openai_completion() -> String {
    r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the origin"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#.to_owned()
}

/// The message "Hello from the origin", not streamed.
fn anthropic_message() -> String {
    r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hello from the origin"}],"model":"claude-test","stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":4}}"#.to_owned()
}

/// The response "Hello from the origin" as OpenAI Responses API stream events (name, JSON).
fn responses_events() -> Vec<(&'static str, String)> {
    let message = |status: &str, text: &str| {
        serde_json::json!({"id": "msg_1", "type": "message", "status": status, "role": "assistant",
            "content": if text.is_empty() { serde_json::json!([]) } else {
                serde_json::json!([{"type": "output_text", "text": text, "annotations": []}]) }})
    };
    let response = |status: &str, output: serde_json::Value| {
        serde_json::json!({"id": "resp_1", "object": "response", "created_at": 1, "status": status,
            "model": "gpt-test", "output": output,
            "usage": {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 7}})
    };
    let part = serde_json::json!({"type": "output_text", "text": "", "annotations": []});
    let done = message("completed", "Hello from the origin");
    vec![
        ("response.created", serde_json::json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress", serde_json::json!([]))})),
        ("response.output_item.added", serde_json::json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": message("in_progress", "")})),
        ("response.content_part.added", serde_json::json!({"type": "response.content_part.added", "sequence_number": 2, "item_id": "msg_1", "output_index": 0, "content_index": 0, "part": part})),
        ("response.output_text.delta", serde_json::json!({"type": "response.output_text.delta", "sequence_number": 3, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hello"})),
        ("response.output_text.delta", serde_json::json!({"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": " from the origin"})),
        ("response.output_text.done", serde_json::json!({"type": "response.output_text.done", "sequence_number": 5, "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": "Hello from the origin"})),
        ("response.output_item.done", serde_json::json!({"type": "response.output_item.done", "sequence_number": 6, "output_index": 0, "item": done.clone()})),
        ("response.completed", serde_json::json!({"type": "response.completed", "sequence_number": 7, "response": response("completed", serde_json::json!([done]))})),
    ]
    .into_iter()
    .map(|(name, v)| (name, v.to_string()))
    .collect()
}

/// The Responses API over a WebSocket (what Codex uses first): after the upgrade, each
/// `response.create` message from the client is answered with the stream's events, one text
/// frame each. Client frames are masked and may be long.
fn responses_websocket<S: Read + Write>(r: &mut BufReader<S>, rec: &Recorded) {
    let head = switching(rec);
    if r.get_mut().write_all(head.as_bytes()).is_err() || r.get_mut().flush().is_err() {
        return;
    }
    loop {
        let mut h = [0u8; 2];
        if r.read_exact(&mut h).is_err() {
            return;
        }
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                if r.read_exact(&mut b).is_err() {
                    return;
                }
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                if r.read_exact(&mut b).is_err() {
                    return;
                }
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut mask = [0u8; 4];
        if h[1] & 0x80 != 0 && r.read_exact(&mut mask).is_err() {
            return;
        }
        let mut payload = vec![0u8; len as usize];
        if r.read_exact(&mut payload).is_err() {
            return;
        }
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        match h[0] & 0x0f {
            8 => return,
            9 => {
                let mut pong = vec![0x8a, payload.len() as u8];
                pong.extend_from_slice(&payload);
                let _ = r.get_mut().write_all(&pong);
                continue;
            }
            1 if String::from_utf8_lossy(&payload).contains("response.create") => {}
            _ => continue,
        }
        for (_, event) in responses_events() {
            let mut frame = vec![0x81];
            match event.len() {
                n if n < 126 => frame.push(n as u8),
                n => {
                    frame.push(126);
                    frame.extend_from_slice(&(n as u16).to_be_bytes());
                }
            }
            frame.extend_from_slice(event.as_bytes());
            if r.get_mut().write_all(&frame).is_err() || r.get_mut().flush().is_err() {
                return;
            }
        }
    }
}

/// The streamed chat completion "Hello from the origin" in OpenAI's SSE format.
fn openai_events() -> Vec<String> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    vec![
        chunk("{\"role\":\"assistant\",\"content\":\"Hello\"}", "null"),
        chunk("{\"content\":\" from the origin\"}", "null"),
        chunk("{}", "\"stop\""),
        "data: [DONE]\n\n".to_owned(),
    ]
}

/// The streamed message "Hello from the origin" in Anthropic's SSE format.
fn anthropic_events() -> Vec<String> {
    let ev = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
    vec![
        ev(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-test","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}"#,
        ),
        ev(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        ev(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        ),
        ev(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" from the origin"}}"#,
        ),
        ev(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        ev(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":4}}"#,
        ),
        ev("message_stop", r#"{"type":"message_stop"}"#),
    ]
}

/// Runs `git http-backend` (CGI) for a smart-HTTP request; returns the whole HTTP response.
/// A stand-in OAuth authorization server (`POST /oauth/token`, the refresh-token grant, form or
/// JSON) and the API it guards (`/api/...`: 200 to the current access token before it expires,
/// else 401). Each grant issues `PREFIX-at-N` and `PREFIX-rt-N` (the refresh token rotates);
/// every access token issued stays valid for `lifetime` from its grant, as real providers keep an
/// old token working after a refresh, until [`OAuthStandIn::revoke_all`].
#[derive(Debug)]
pub(crate) struct OAuthStandIn {
    pub prefix: String,
    pub refresh_token: String,
    /// The newest access token.
    pub access_token: String,
    /// Each live access token and when it expires.
    pub valid: std::collections::HashMap<String, std::time::Instant>,
    /// `expires_in` of each grant, in seconds.
    pub lifetime: u64,
    /// Grants issued so far.
    pub grants: usize,
    /// Each grant request's content type and body.
    pub requests: Vec<(String, String)>,
    /// Answer every grant `400 invalid_grant`.
    pub reject: bool,
    /// Wait this long before answering a grant.
    pub delay: Duration,
    /// The bearer token of each `/api/` request, and whether it was accepted.
    pub api_calls: Vec<(String, bool)>,
}

impl Default for OAuthStandIn {
    fn default() -> Self {
        Self {
            prefix: "oauth".into(),
            refresh_token: "rt-0".into(),
            access_token: "at-0".into(),
            valid: std::collections::HashMap::new(),
            lifetime: 3600,
            grants: 0,
            requests: Vec::new(),
            reject: false,
            delay: Duration::ZERO,
            api_calls: Vec::new(),
        }
    }
}

impl OAuthStandIn {
    /// Makes `token` valid for `lifetime` from now (the token imported before any grant).
    pub(crate) fn issue(&mut self, token: &str) {
        let until = std::time::Instant::now() + Duration::from_secs(self.lifetime);
        self.valid.insert(token.to_owned(), until);
        self.access_token = token.to_owned();
    }

    /// Revokes every access token issued so far (the API answers 401 to them).
    pub(crate) fn revoke_all(&mut self) {
        self.valid.clear();
    }
}

fn oauth_answer(state: &Mutex<OAuthStandIn>, path: &str, rec: &Recorded) -> Vec<u8> {
    let reply = |status: &str, body: String| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    if path.starts_with("/api/") {
        let token = rec
            .header("authorization")
            .pop()
            .unwrap_or_default()
            .trim_start_matches("Bearer ")
            .to_owned();
        let mut s = state.lock().unwrap();
        let ok = s
            .valid
            .get(&token)
            .is_some_and(|until| std::time::Instant::now() < *until);
        s.api_calls.push((token, ok));
        return if ok {
            reply(
                "200 OK",
                format!(r#"{{"ok":true,"body_len":{}}}"#, rec.body.len()),
            )
        } else {
            reply("401 Unauthorized", r#"{"error":"invalid_token"}"#.into())
        };
    }
    let content_type = rec.header("content-type").pop().unwrap_or_default();
    let body = String::from_utf8_lossy(&rec.body).into_owned();
    let field = |name: &str| -> Option<String> {
        if content_type.starts_with("application/json") {
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v[name].as_str().map(str::to_owned)
        } else {
            body.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(|v| v.replace("%2D", "-"))
        }
    };
    let delay = state.lock().unwrap().delay;
    std::thread::sleep(delay);
    let mut s = state.lock().unwrap();
    s.requests.push((content_type.clone(), body.clone()));
    if s.reject
        || field("grant_type").as_deref() != Some("refresh_token")
        || field("refresh_token").as_deref() != Some(s.refresh_token.as_str())
    {
        return reply(
            "400 Bad Request",
            r#"{"error":"invalid_grant","error_description":"the refresh token is not valid"}"#
                .into(),
        );
    }
    s.grants += 1;
    s.access_token = format!("{}-at-{}", s.prefix, s.grants);
    s.refresh_token = format!("{}-rt-{}", s.prefix, s.grants);
    let (token, until) = (
        s.access_token.clone(),
        std::time::Instant::now() + Duration::from_secs(s.lifetime),
    );
    s.valid.insert(token, until);
    reply(
        "200 OK",
        format!(
            r#"{{"access_token":"{}","token_type":"Bearer","expires_in":{},"refresh_token":"{}"}}"#,
            s.access_token, s.lifetime, s.refresh_token
        ),
    )
}

fn git_cgi(root: &std::path::Path, rec: &Recorded, path: &str, query: &str) -> Vec<u8> {
    use std::process::{Command, Stdio};
    let method = rec
        .request_line()
        .split(' ')
        .next()
        .unwrap_or("GET")
        .to_owned();
    let header = |n: &str| rec.header(n).pop().unwrap_or_default();
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &method)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", rec.body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&rec.body).unwrap();
    let out = child.wait_with_output().unwrap().stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)))
        .unwrap();
    let (head, body) = (
        String::from_utf8_lossy(&out[..split.0]).to_string(),
        &out[split.0 + split.1..],
    );
    let mut status = "200 OK".to_owned();
    let mut resp = Vec::new();
    let mut headers = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((n, v)) if n.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
            Some((n, v)) => headers.push_str(&format!("{n}: {}\r\n", v.trim())),
            None => {}
        }
    }
    resp.extend_from_slice(
        format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    resp.extend_from_slice(body);
    resp
}

/// The 101 answering the WebSocket handshake `rec`.
fn switching(rec: &Recorded) -> String {
    let key = rec.header("sec-websocket-key").pop().unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ws_accept(&key)
    )
}

fn rec_is_websocket(r: &Recorded) -> bool {
    r.header("upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("websocket"))
}

/// RFC 6455 Sec-WebSocket-Accept for a key.
pub(crate) fn ws_accept(key: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    data_encoding::BASE64.encode(d.as_ref())
}

pub(crate) fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
