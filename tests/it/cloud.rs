//! Cloud providers and corporate networks: `aws-sigv4` services driven by the real AWS SDK for
//! Python against a stand-in AWS endpoint that checks signatures with botocore's signer
//! (`tests/cloud/aws_standin.py`), Google service accounts against a stand-in token endpoint
//! that checks grants with google-auth (`tests/cloud/google_standin.py`), and `upstream_proxy`
//! through a real forward proxy (tinyproxy).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::proxy::Setup;
use crate::support::{Curl, Env, Proxy, Run, canary, output};

/// A test CA and a leaf for `hosts`, as PEM files in `dir`: (ca, cert, key).
fn test_pki(dir: &Path, hosts: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "stand-in cloud CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (
        dir.join("cloud-ca.pem"),
        dir.join("cloud-cert.pem"),
        dir.join("cloud-key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf_cert.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

/// A Python helper server from `tests/cloud`, killed on drop.
struct Helper {
    child: Child,
    port: u16,
}

impl Helper {
    /// Starts `script` with `args` and `env`, and waits for it to write its port to `port_file`.
    fn start(script: &str, args: &[&Path], port_file: &Path, env: &[(&str, &str)]) -> Self {
        let mut c = Command::new("python3");
        c.arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/cloud")
                .join(script),
        );
        c.args(args).envs(env.iter().copied()).stdin(Stdio::null());
        let mut child = c.spawn().expect("python3");
        let end = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(port_file) {
                break p.trim().parse().unwrap();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{script} exited: {status}");
            }
            assert!(Instant::now() < end, "{script} did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, port }
    }
}

impl Helper {
    /// `airlock serve` for `env` with this stand-in answering for `hosts` (`--resolve`, its CA
    /// trusted, loopback allowed), plus `extra` flags.
    fn serve_in_front(&self, env: &Env, ca: &Path, hosts: &[&str], extra: &[&str]) -> Proxy {
        let mut args = vec![
            "--network-allow".to_owned(),
            "127.0.0.1/32".into(),
            "--upstream-ca-file".into(),
            ca.display().to_string(),
        ];
        for h in hosts {
            args.extend([
                "--resolve".into(),
                format!("{h}:443:127.0.0.1:{}", self.port),
            ]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start(env, &refs)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const AWS_HOSTS: [&str; 2] = [
    "s3.us-west-2.amazonaws.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
];

const AWS_SERVICES: &str = r#"
services:
  - name: aws-s3
    host: s3.us-west-2.amazonaws.com
    auth: {type: aws-sigv4, access_key_id: AWS_KEY_ID, secret_access_key: AWS_SECRET, session_token: AWS_TOKEN}
  - name: bedrock
    host: bedrock-runtime.us-east-1.amazonaws.com
    auth: {type: aws-sigv4, access_key_id: AWS_KEY_ID, secret_access_key: AWS_SECRET, session_token: AWS_TOKEN}
"#;

/// The stand-in AWS endpoint, airlock in front of it, and the vault's AWS keys.
struct Aws {
    env: Env,
    proxy: Proxy,
    /// Kept for its lifetime: the stand-in stops when the test ends.
    _standin: Helper,
    log: PathBuf,
    secrets: Vec<(&'static str, String)>,
}

impl Aws {
    fn new() -> Self {
        let env = Env::init();
        let base = canary();
        let secrets = vec![
            (
                "AWS_KEY_ID",
                format!("AKIA{}", base.to_uppercase().replace('-', "")),
            ),
            ("AWS_SECRET", format!("{base}-aws-secret/+key")),
            ("AWS_TOKEN", format!("{base}-aws-session-token")),
        ];
        for (k, v) in &secrets {
            env.run_stdin(&["credential", "set", k], v.as_bytes()).ok();
        }
        env.set_services(AWS_SERVICES);
        let dir = env.tmp.path();
        let (ca, cert, key) = test_pki(dir, &AWS_HOSTS);
        let (port_file, log) = (dir.join("aws.port"), dir.join("aws.log"));
        let standin = Helper::start(
            "aws_standin.py",
            &[&cert, &key, &port_file, &log],
            &port_file,
            &[
                ("STANDIN_KEY_ID", &secrets[0].1),
                ("STANDIN_SECRET", &secrets[1].1),
                ("STANDIN_TOKEN", &secrets[2].1),
            ],
        );
        let proxy = standin.serve_in_front(&env, &ca, &AWS_HOSTS, &[]);
        Self {
            env,
            proxy,
            _standin: standin,
            log,
            secrets,
        }
    }

    /// `airlock run` of `cmd` with dummy AWS keys and none of this process's AWS settings.
    fn run(&self, cmd: &[&str]) -> Run {
        let proxy = format!("http://{}", self.proxy.addr);
        let mut args = vec!["run", "--proxy", proxy.as_str(), "--"];
        args.extend_from_slice(cmd);
        let mut c = self.env.command(&args);
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") || k.ends_with("_PROXY") || k.ends_with("_proxy") {
                c.env_remove(k);
            }
        }
        c.env("AWS_ACCESS_KEY_ID", "AKIDDUMMYAGENTKEY")
            .env("AWS_SECRET_ACCESS_KEY", "dummy-agent-secret")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        output(c, None)
    }

    /// The stand-in's verdicts, one per request it received.
    fn verdicts(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[track_caller]
    fn assert_no_secret(&self, text: &str) {
        for (k, v) in &self.secrets {
            assert!(!text.contains(v.as_str()), "{k} reached the agent: {text}");
        }
    }
}

/// boto3 with dummy keys through `airlock run` (which sets AWS_CA_BUNDLE): S3 put/get of a small
/// object and of one over the signing buffer (9 MiB), a Bedrock invoke, a Bedrock event stream
/// whose first event arrives before the stand-in sends the rest, and a client that signs
/// nothing. Every request the stand-in received carries a signature botocore's signer recomputes
/// with the vault's keys; the agent's output and environment hold none of them.
#[test]
fn boto3_s3_and_bedrock_are_signed_by_airlock() {
    let aws = Aws::new();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cloud/aws_agent.py");
    let r = aws.run(&["python3", script.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}\nstand-in: {:?}", aws.verdicts());
    for line in [
        "s3 ok",
        "bedrock invoke ok",
        "bedrock stream ok",
        "unsigned client ok",
    ] {
        assert!(r.stdout.contains(line), "{line}: {r:?}");
    }
    assert!(r.stdout.contains("AWS_CA_BUNDLE"), "{r:?}");
    aws.assert_no_secret(&r.stdout);
    aws.assert_no_secret(&r.stderr);
    let verdicts = aws.verdicts();
    assert!(verdicts.len() >= 7, "{verdicts:?}");
    for v in &verdicts {
        assert_eq!(v["verified"], true, "{v}");
    }
    // The 9 MiB S3 body went as the SDK declared it (unsigned, over TLS); Bedrock bodies hashed.
    let payloads: Vec<&str> = verdicts
        .iter()
        .filter_map(|v| v["payload"].as_str())
        .collect();
    assert!(
        payloads.iter().any(|p| p.len() == 64),
        "no hashed payload: {payloads:?}"
    );
}

/// A vault secret that does not match what AWS holds: the stand-in refuses the signature and
/// the SDK reports AWS's error code. A Bedrock body airlock cannot hash (over 8 MiB) is refused
/// before anything goes upstream with `sigv4_body_too_large`; an SDK's chunk-signed stream with
/// `sigv4_streaming_signed`.
#[test]
fn sigv4_refusals_are_clear() {
    let aws = Aws::new();
    let big = aws.env.tmp.path().join("big.json");
    std::fs::write(&big, vec![b'x'; 9 * 1024 * 1024]).unwrap();
    let before = aws.verdicts().len();
    let url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/invoke";
    let r = aws.run(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--data-binary",
        &format!("@{}", big.display()),
        url,
    ]);
    assert!(r.stdout.contains("\r\n\r\nHTTP/1.1 413 "), "{r:?}");
    assert!(
        r.stdout.contains("x-airlock-error: sigv4_body_too_large"),
        "{r:?}"
    );
    let r = aws.run(&[
        "curl",
        "-sS",
        "-D",
        "-",
        "-H",
        "x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "-X",
        "PUT",
        "--data-binary",
        "abc",
        "https://s3.us-west-2.amazonaws.com/agent-bucket/k",
    ]);
    assert!(r.stdout.contains("\r\n\r\nHTTP/1.1 400 "), "{r:?}");
    assert!(
        r.stdout.contains("x-airlock-error: sigv4_streaming_signed"),
        "{r:?}"
    );
    assert_eq!(
        aws.verdicts().len(),
        before,
        "a refused request reached AWS"
    );

    aws.env
        .run_stdin(&["credential", "set", "AWS_SECRET"], b"not-what-aws-holds")
        .ok();
    let script = "import boto3, botocore\nc = boto3.client('bedrock-runtime', region_name='us-east-1')\ntry:\n    c.invoke_model(modelId='m', body=b'{}')\nexcept botocore.exceptions.ClientError as e:\n    print('code', e.response['Error']['Code'], e.response['ResponseMetadata']['HTTPStatusCode'])\n";
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let r = aws.run(&["python3", "-c", script]);
        if r.stdout.contains("code InvalidSignatureException 403") {
            break;
        }
        assert!(Instant::now() < end, "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = aws.verdicts().pop().unwrap();
    assert_eq!(last["reason"], "signature mismatch", "{last}");
}

/// Debian's tinyproxy as the corporate egress proxy, on 127.0.0.2 (so the SSRF guard can tell
/// it from the origin on 127.0.0.1), with Basic auth when `user` is set; killed on drop.
struct Tinyproxy {
    child: Child,
    port: u16,
}

impl Tinyproxy {
    fn start(dir: &Path, user: Option<(&str, &str)>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let auth = user
            .map(|(u, p)| format!("BasicAuth {u} {p}\n"))
            .unwrap_or_default();
        let conf = dir.join(format!("tinyproxy-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.2\nTimeout 30\nMaxClients 50\nAllow 127.0.0.0/8\nDisableViaHeader Yes\nLogLevel Connect\n{auth}"
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (tests/run.sh installs it)");
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.2", port)).is_err() {
            assert!(Instant::now() < end, "tinyproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self, user: Option<&str>) -> String {
        let user = user.map(|u| format!("{u}@")).unwrap_or_default();
        format!("http://{user}127.0.0.2:{}", self.port)
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `upstream_proxy`: every upstream connection leaves through a real forward proxy (tinyproxy),
/// which carries only the TLS tunnel; without it the request fails, and `no_proxy` hosts go
/// direct.
#[test]
fn upstream_proxy_carries_every_upstream_connection() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tinyproxy::start(dir.path(), None);
    let url = tiny.url(None);
    let extra = [
        "--network-allow",
        "127.0.0.2/32",
        "--upstream-proxy",
        &url,
        "--no-proxy",
        "api.anthropic.com",
    ];
    let s = Setup::with("auto", &extra, true, true);
    let r = s.curl(&[
        "-H",
        "Authorization: Bearer placeholder",
        "https://api.openai.com/v1/through-proxy",
    ]);
    assert!(r.stdout.contains("GET /v1/through-proxy"), "{r:?}");
    assert_eq!(
        s.last().header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    drop(tiny);
    // Nothing goes around the proxy: with it gone, the same request fails (the pooled
    // connection is dropped first, so a fresh dial is needed).
    std::thread::sleep(Duration::from_secs(4));
    let r = s.curl(&["-sS", "-D", "-", "https://api.openai.com/v1/no-proxy-left"]);
    assert!(
        r.stdout.contains("x-airlock-error: upstream_unreachable"),
        "{r:?}"
    );
    assert!(r.stdout.contains("the upstream proxy 127.0.0.2"), "{r:?}");
    // ... but a no_proxy host is reached directly.
    let r = s.curl(&["https://api.anthropic.com/v1/direct"]);
    assert!(r.stdout.contains("GET /v1/direct"), "{r:?}");
}

/// A proxy that wants Basic auth: the right password (from the password file) opens the tunnel;
/// a wrong one gives `upstream_proxy_auth`. The proxy's own address is vetted by the SSRF guard:
/// not allowed, `destination_blocked`. The password reaches no answer, no log line (at trace
/// level) and not the upstream.
#[test]
fn upstream_proxy_auth_and_guard() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tinyproxy::start(dir.path(), Some(("alice", "corp-pass-7")));
    let url = tiny.url(Some("alice"));
    let good = dir.path().join("good");
    std::fs::write(&good, "corp-pass-7\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "wrong").unwrap();
    for (file, allow, expect) in [
        (&good, "127.0.0.2/32", "GET /v1/auth-proxy"),
        (&bad, "127.0.0.2/32", "x-airlock-error: upstream_proxy_auth"),
        (
            &good,
            "127.0.0.3/32",
            "x-airlock-error: destination_blocked",
        ),
    ] {
        let file = file.to_str().unwrap();
        let extra = [
            "--network-allow",
            allow,
            "--upstream-proxy",
            &url,
            "--upstream-proxy-password-file",
            file,
            "--log-level",
            "trace",
        ];
        let s = Setup::with("auto", &extra, true, true);
        let r = s.curl(&["-sS", "-D", "-", "https://api.openai.com/v1/auth-proxy"]);
        assert!(r.stdout.contains(expect), "{expect}: {r:?}");
        // The proxy's password is in no answer and no log line, plain or as Basic auth.
        let basic = data_encoding::BASE64.encode(b"alice:corp-pass-7");
        let upstream: String = s.origin.recorded().iter().map(|q| q.head.clone()).collect();
        for text in [&r.stdout, &s.proxy.stderr(), &upstream] {
            assert!(
                !text.contains("corp-pass-7") && !text.contains(&basic),
                "{text}"
            );
        }
    }
}

const GOOGLE_HOSTS: [&str; 3] = [
    "oauth2.googleapis.com",
    "us-central1-aiplatform.googleapis.com",
    "europe-west4-aiplatform.googleapis.com",
];

/// A service-account key file (a fresh 2048-bit RSA key from openssl) for `email`, with the
/// account's certificate beside it: (key file, certificate file, private key PEM).
fn service_account(dir: &Path, name: &str, email: &str) -> (PathBuf, PathBuf, String) {
    let key = dir.join(format!("{name}-key.pem"));
    let cert = dir.join(format!("{name}-cert.pem"));
    let openssl = |args: &[&str]| {
        let mut c = Command::new("openssl");
        c.args(args);
        output(c, None).ok()
    };
    let key_s = key.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key_s,
    ]);
    let cert_s = cert.to_str().unwrap();
    openssl(&[
        "req", "-x509", "-new", "-key", key_s, "-subj", "/CN=sa", "-days", "2", "-out", cert_s,
    ]);
    let pem = std::fs::read_to_string(&key).unwrap();
    let file = dir.join(format!("{name}.json"));
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "agents",
        "private_key_id": "kid-1",
        "private_key": pem,
        "client_email": email,
        "client_id": "1234",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    std::fs::write(&file, json.to_string()).unwrap();
    (file, cert, pem)
}

/// A Google service account: its key file imported as a credential, airlock mints access tokens
/// with a JWT grant the stand-in token endpoint verifies with google-auth (signature, key id,
/// audience, issuer, scope), 16 concurrent first requests share one grant, the token is renewed
/// before it expires, a key the endpoint does not know gives `oauth_refresh_failed`, and a token
/// endpoint at a metadata address is refused by the SSRF guard. Neither the key nor a minted
/// token reaches the agent.
#[test]
fn google_service_account_tokens_are_minted_and_renewed() {
    let env = Env::init();
    let dir = env.tmp.path();
    let email = "agent@agents.iam.gserviceaccount.com";
    let (good, sa_cert, good_pem) = service_account(dir, "good", email);
    let (bad, _, bad_pem) = service_account(dir, "bad", email);
    for (key, file) in [("GCP_SA", &good), ("GCP_OTHER", &bad)] {
        let r = env.run(&["credential", "oauth", key, "--from", file.to_str().unwrap()]);
        assert!(
            r.stdout
                .contains("token endpoint https://oauth2.googleapis.com/token"),
            "{r:?}"
        );
    }
    // A token endpoint at a metadata address (here through --resolve): the SSRF guard refuses it.
    let ssrf = "https://metadata.google.internal/token";
    let file = good.to_str().unwrap();
    env.run(&[
        "credential",
        "oauth",
        "GCP_SSRF",
        "--from",
        file,
        "--token-endpoint",
        ssrf,
    ])
    .ok();
    env.set_services(
        r#"
services:
  - name: vertex
    host: us-central1-aiplatform.googleapis.com
    auth: {type: bearer, token: GCP_SA}
  - name: vertex-eu
    host: europe-west4-aiplatform.googleapis.com
    auth: {type: bearer, token: GCP_OTHER}
  - name: vertex-asia
    host: asia-east1-aiplatform.googleapis.com
    auth: {type: bearer, token: GCP_SSRF}
"#,
    );
    let token = env.agent_token("bot", "default");
    let (ca, cert, key) = test_pki(dir, &GOOGLE_HOSTS);
    let (port_file, log) = (dir.join("google.port"), dir.join("google.log"));
    let standin = Helper::start(
        "google_standin.py",
        &[&cert, &key, &port_file, &log],
        &port_file,
        &[
            ("STANDIN_SA_CERT", sa_cert.to_str().unwrap()),
            ("STANDIN_KID", "kid-1"),
            ("STANDIN_CLIENT_EMAIL", email),
            ("STANDIN_TTL", "6"),
        ],
    );
    let metadata = ["--resolve", "metadata.google.internal:443:169.254.169.254"];
    let proxy = standin.serve_in_front(&env, &ca, &GOOGLE_HOSTS, &metadata);
    let proxy_url = proxy.url(&token, "default");
    let agent_ca = env.data_dir.join("ca.pem");
    let curl = |url: &str| {
        let c = Curl::via(&proxy_url, &agent_ca).max_time(20).status();
        let r = c.bearer("placeholder").arg(url).run();
        for secret in [&good_pem, &bad_pem] {
            let body = secret.lines().nth(1).unwrap();
            assert!(!r.stdout.contains(body), "a private key reached the agent");
        }
        assert!(
            !r.stdout.contains("ya29."),
            "a minted token reached the agent: {r:?}"
        );
        r
    };
    // The stand-in's grants, good or refused (serve renews GCP_OTHER too, on its own).
    let grants = |ok: bool| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "grant" && v["ok"] == ok)
            .count()
    };
    let url = "https://us-central1-aiplatform.googleapis.com/v1/projects/agents/locations/us-central1/publishers/google/models/gemini:predict";
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16).map(|_| s.spawn(|| curl(url))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &runs {
        assert!(
            r.stdout.ends_with(" 200") && r.stdout.contains("minted ok"),
            "{r:?}"
        );
    }
    assert_eq!(grants(true), 1, "16 first requests, one grant");
    // Tokens live 6 s: renewed ahead of expiry, so a request after 7 s still succeeds.
    std::thread::sleep(Duration::from_secs(7));
    let r = curl(url);
    assert!(r.stdout.ends_with(" 200"), "{r:?}");
    assert!(grants(true) >= 2, "not renewed");
    // A key the endpoint does not know: the grant is refused, the request gets a clear code.
    let r = curl("https://europe-west4-aiplatform.googleapis.com/v1/x");
    assert!(
        r.stdout.ends_with(" 502") && r.stdout.contains("oauth_refresh_failed"),
        "{r:?}"
    );
    assert!(grants(false) >= 1, "the unknown key was never refused");
    let r = curl("https://asia-east1-aiplatform.googleapis.com/v1/x");
    assert!(
        r.stdout.ends_with(" 502") && r.stdout.contains("oauth_refresh_failed"),
        "{r:?}"
    );
    let list = env.run(&["credential", "list"]).ok();
    assert!(list.stdout.contains("failing (rejected)"), "{list:?}");
    let ssrf = list
        .stdout
        .lines()
        .find(|l| l.contains("GCP_SSRF"))
        .unwrap();
    assert!(ssrf.contains("destination_blocked"), "{list:?}");
}

/// `[vault_upstream_proxy.NAME]`: a vault's own proxy replaces the global one (which here leads
/// nowhere), and a vault table without `url` goes direct; both apply on a config reload.
#[test]
fn a_vault_may_have_its_own_upstream_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tinyproxy::start(dir.path(), None);
    let dead = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let config = dir.path().join("airlock.toml");
    let own = format!(
        "[vault_upstream_proxy.default]\nurl = {:?}\n",
        tiny.url(None)
    );
    std::fs::write(&config, &own).unwrap();
    let cfg = config.to_str().unwrap();
    let extra = [
        "--config",
        cfg,
        "--network-allow",
        "127.0.0.2/32",
        "--upstream-proxy",
        &dead_url,
    ];
    let s = Setup::with("auto", &extra, true, true);
    let r = s.curl(&["-sS", "-D", "-", "https://api.openai.com/v1/own-proxy"]);
    assert!(r.stdout.contains("GET /v1/own-proxy"), "{r:?}");
    drop(tiny);
    std::thread::sleep(Duration::from_secs(4)); // the pooled connection expires
    let r = s.curl(&["-sS", "-D", "-", "https://api.openai.com/v1/own-proxy-gone"]);
    assert!(r.stdout.contains("upstream_unreachable"), "{r:?}");
    // The vault goes direct after a reload, though the global proxy still leads nowhere.
    std::fs::write(&config, "[vault_upstream_proxy.default]\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &s.proxy.pid().to_string()])
        .status()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let r = s.curl(&["-sS", "-D", "-", "https://api.openai.com/v1/direct-vault"]);
        if r.stdout.contains("GET /v1/direct-vault") {
            break;
        }
        assert!(Instant::now() < end, "{r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
