//! What an agent gets from airlock for one run, for `airlock run` and `container-relay`: the
//! proxy found ([`proxy_url`]), a scoped token minted for it and checked against that proxy
//! ([`mint`], revoked by [`revoke`]), the CA files in a fresh private directory ([`run_dir`],
//! [`write_bundles`]) and the variables that point the agent at them ([`agent_vars`]).
//!
//! A token is minted from the data dir when there is one, else through the agent API with the
//! agent token in `AIRLOCK_TOKEN` (a small HTTP/1.1 client here, over TLS for an `https://`
//! proxy port). The proxy is found without flags where a `serve` of the same data dir published
//! its address ([`crate::serve::RUNTIME_FILE`]). This module starts no process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use super::{CliError, Ctx};
use crate::secret::Secret;
use crate::vault::setup::{self, CA_CERT_FILE};
use crate::vault::tokens::TokenHash;

/// CA variables pointing at a bundle file: OpenSSL and most runtimes, Python requests (and
/// google-auth through it), curl, git, Deno, the AWS SDKs and CLI (which ignore
/// `SSL_CERT_FILE`), the gcloud CLI, and gRPC (Google's gRPC client libraries).
const BUNDLE_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
    "AWS_CA_BUNDLE",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
];

/// System bundles, first found is combined with airlock's CA.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

const LOOPBACK: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// A scoped token for the run and how to revoke it.
pub(super) struct RunToken {
    pub(super) token: String,
    pub(super) vault: String,
    pub(super) ca_pem: String,
    /// The store, when minted from the data dir.
    pub(super) local: bool,
    /// The names of the vault's credentials.
    pub(super) credential_keys: Vec<String>,
    /// Their values, when this process could open the vault; else why not.
    pub(super) values: Result<Vec<Secret>, String>,
}

/// Mints the run's scoped token (from the data dir, or through the agent API with
/// `AIRLOCK_TOKEN`) and checks that the proxy at `proxy` takes it (revoking it when not).
pub(super) fn mint(
    ctx: &Ctx,
    proxy: &str,
    vault: Option<&str>,
    ttl: std::time::Duration,
    agent: Option<&str>,
) -> Result<RunToken, CliError> {
    let _ = DATA_DIR_CA.set(ctx.data_dir.join(CA_CERT_FILE));
    let agent_token = std::env::var("AIRLOCK_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let token = match (&agent_token, ctx.data_dir.join("vault").exists()) {
        (Some(agent_token), _) => mint_remote(proxy, agent_token, vault, ttl)?,
        (None, true) => mint_local(ctx, vault.unwrap_or("default"), ttl, agent)?,
        (None, false) => {
            return Err(CliError::Usage(format!(
                "no data dir at {} and no AIRLOCK_TOKEN: give an agent token in AIRLOCK_TOKEN (with AIRLOCK_URL)",
                ctx.data_dir.display()
            )));
        }
    };
    if let Err(e) = preflight(proxy, &token) {
        revoke(ctx, proxy, &token);
        return Err(e);
    }
    Ok(token)
}

/// The variables the agent gets: the proxy `inside` (as the agent reaches it) with the token,
/// `NO_PROXY` extended, the CA `bundle` (airlock's CA with the roots already trusted) and
/// `ca_only`, and the agent API; paths as the agent sees them.
pub(super) fn agent_vars(
    inside: &str,
    token: &RunToken,
    bundle: &Path,
    ca_only: &Path,
) -> Result<Vec<(String, String)>, CliError> {
    let (host_port, proxy_with_auth) = proxy_parts(inside, &token.token, &token.vault)?;
    let no_proxy = extended_no_proxy(
        std::env::var("NO_PROXY")
            .ok()
            .or_else(|| std::env::var("no_proxy").ok()),
    );
    let bundle = bundle.display().to_string();
    let mut vars: Vec<(&str, String)> = ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"]
        .into_iter()
        .map(|v| (v, proxy_with_auth.clone()))
        .collect();
    vars.extend([
        ("NO_PROXY", no_proxy.clone()),
        ("no_proxy", no_proxy),
        ("NODE_USE_ENV_PROXY", "1".into()),
    ]);
    vars.extend(BUNDLE_VARS.iter().map(|v| (*v, bundle.clone())));
    vars.extend([
        ("NODE_EXTRA_CA_CERTS", ca_only.display().to_string()),
        // Codex reads its roots from here and ignores NODE_EXTRA_CA_CERTS.
        ("CODEX_CA_CERTIFICATE", bundle),
        ("AIRLOCK_URL", host_port),
        ("AIRLOCK_TOKEN", token.token.clone()),
        ("AIRLOCK_VAULT", token.vault.clone()),
    ]);
    Ok(vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// The proxy: `--proxy`, else `$AIRLOCK_URL`, else where a `serve` on this data dir says it
/// listens, else the config's `listen`, else 127.0.0.1:7480.
pub(super) fn proxy_url(ctx: &Ctx, flag: Option<&str>) -> Result<String, CliError> {
    let url = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("AIRLOCK_URL").ok().filter(|u| !u.is_empty()))
        .or_else(|| published(&ctx.data_dir))
        .unwrap_or_else(|| {
            format!(
                "http://{}",
                ctx.file
                    .listen
                    .map_or("127.0.0.1:7480".into(), |l| l.to_string())
            )
        });
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(CliError::Usage(format!(
            "the proxy URL must be http://host:port or https://host:port, not {url:?}"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `("https", "host:port")` from a proxy URL.
pub(super) fn split_url(url: &str) -> (&'static str, &str) {
    match url.strip_prefix("https://") {
        Some(rest) => ("https", rest),
        None => ("http", url.trim_start_matches("http://")),
    }
}

/// The address a running `serve` published in `data_dir`.
fn published(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(crate::serve::RUNTIME_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let scheme = if v["scheme"] == "https" {
        "https"
    } else {
        "http"
    };
    v["proxy"].as_str().map(|p| format!("{scheme}://{p}"))
}

/// Before the agent starts: the proxy answers and takes the run's token (a serve of another
/// data dir would not); one clear line otherwise.
fn preflight(proxy: &str, token: &RunToken) -> Result<(), CliError> {
    let headers = [
        format!("Authorization: Bearer {}", token.token),
        format!("x-airlock-vault: {}", token.vault),
    ];
    match http(proxy, "GET", "/v1/discover", &headers, "") {
        Ok((200, _)) => Ok(()),
        Ok((status, _)) => Err(CliError::Usage(format!(
            "the proxy at {proxy} does not take the run's token ({status}): is it serving another data dir? Give --proxy or AIRLOCK_URL"
        ))),
        Err(e) => Err(CliError::Usage(format!(
            "no airlock proxy answers at {proxy} ({e}): start `airlock serve`, or give --proxy or AIRLOCK_URL"
        ))),
    }
}

/// `scheme://host:port` and `scheme://token:vault@host:port`.
fn proxy_parts(proxy: &str, token: &str, vault: &str) -> Result<(String, String), CliError> {
    let (scheme, host_port) = split_url(proxy);
    if host_port.is_empty() || host_port.contains('/') || host_port.contains('@') {
        return Err(CliError::Usage(format!("bad proxy URL {proxy:?}")));
    }
    Ok((
        format!("{scheme}://{host_port}"),
        format!("{scheme}://{token}:{vault}@{host_port}"),
    ))
}

fn mint_local(
    ctx: &Ctx,
    vault: &str,
    ttl: std::time::Duration,
    agent: Option<&str>,
) -> Result<RunToken, CliError> {
    let store = ctx.open_store()?;
    let (minted, _) = store.mint_token(&ctx.actor, vault, ttl, agent)?;
    let ca_path = ctx.data_dir.join(CA_CERT_FILE);
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| CliError::Io {
        what: ca_path.display().to_string(),
        source,
    })?;
    let credential_keys: Vec<String> = store
        .credentials(vault)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let sources = ctx.key_sources(None, None)?;
    let values = setup::unlock(&store, &ctx.data_dir, &sources)
        .map(|unlocked| {
            credential_keys
                .iter()
                .filter_map(|k| store.open_credential(&unlocked.opener, vault, k).ok())
                .flat_map(|opened| std::iter::once(opened.value).chain(opened.others))
                .collect()
        })
        .map_err(|e| e.to_string());
    Ok(RunToken {
        token: String::from_utf8_lossy(minted.token.expose()).into_owned(),
        vault: vault.to_owned(),
        ca_pem,
        local: true,
        credential_keys,
        values,
    })
}

fn mint_remote(
    proxy: &str,
    agent_token: &str,
    vault: Option<&str>,
    ttl: std::time::Duration,
) -> Result<RunToken, CliError> {
    let mut headers = vec![format!("Authorization: Bearer {agent_token}")];
    if let Some(v) = vault {
        headers.push(format!("x-airlock-vault: {v}"));
    }
    let body = serde_json::json!({"ttl_seconds": ttl.as_secs()}).to_string();
    let (status, reply) = http(proxy, "POST", "/v1/tokens", &headers, &body)?;
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
    if status != 201 {
        return Err(CliError::Usage(format!(
            "minting a scoped token at {proxy}: {status} {}",
            v["message"].as_str().unwrap_or(&reply)
        )));
    }
    let (status, ca_pem) = http(proxy, "GET", "/v1/ca.pem", &[], "")?;
    if status != 200 {
        return Err(CliError::Usage(format!(
            "fetching the CA from {proxy}: status {status}"
        )));
    }
    // The vault's credential names, to keep variables named after them from the agent.
    let (status, discovered) = http(proxy, "GET", "/v1/discover", &headers, "")?;
    let discovered: serde_json::Value = serde_json::from_str(&discovered).unwrap_or_default();
    if status != 200 {
        return Err(CliError::Usage(format!(
            "reading the vault's credential names at {proxy}: status {status}"
        )));
    }
    let credential_keys = discovered["credentials"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(RunToken {
        token: v["token"].as_str().unwrap_or_default().to_owned(),
        vault: v["vault"].as_str().unwrap_or_default().to_owned(),
        ca_pem,
        local: false,
        credential_keys,
        values: Err("the vault is not opened by a remote run".into()),
    })
}

pub(super) fn revoke(ctx: &Ctx, proxy: &str, token: &RunToken) {
    let result = if token.local {
        ctx.open_store()
            .and_then(|s| Ok(s.revoke_token(&ctx.actor, TokenHash::of(token.token.as_bytes()))?))
    } else {
        http(
            proxy,
            "DELETE",
            "/v1/tokens/self",
            &[format!("Authorization: Bearer {}", token.token)],
            "",
        )
        .map(|_| ())
    };
    if let Err(e) = result {
        eprintln!(
            "airlock: warning: could not revoke the run's token ({e}); it expires on its own"
        );
    }
}

/// The `/healthz` of the `serve` running on this data dir (found through its runtime file), if
/// one answers.
pub(super) fn local_health(ctx: &Ctx) -> Option<serde_json::Value> {
    let runtime = ctx.data_dir.join(crate::serve::RUNTIME_FILE);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runtime).ok()?).ok()?;
    let base = format!("{}://{}", v["scheme"].as_str()?, v["proxy"].as_str()?);
    let _ = DATA_DIR_CA.set(ctx.data_dir.join(CA_CERT_FILE));
    let (status, body) = http(&base, "GET", "/healthz", &[], "").ok()?;
    (status != 0)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// A minimal HTTP/1.1 exchange with the agent API on the proxy port (over TLS for https://).
fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
) -> Result<(u16, String), CliError> {
    let (scheme, host) = split_url(base);
    let io = |source| CliError::Io {
        what: format!("airlock at {base}"),
        source,
    };
    let tcp = TcpStream::connect(host).map_err(io)?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(io)?;
    let mut s: Box<dyn ReadWrite> = if scheme == "https" {
        Box::new(tls_to(host, tcp).map_err(io)?)
    } else {
        Box::new(tcp)
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    // A peer that closes without TLS's close_notify ends the response all the same.
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(io(e)),
    }
    let raw = String::from_utf8_lossy(&raw);
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, rest.to_owned()))
}

trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

/// This run's data dir's CA certificate (set once by [`run`]).
static DATA_DIR_CA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// TLS to a proxy port that speaks it, verified with the system roots, the data dir's CA (when
/// the CLI runs beside it) and `$AIRLOCK_CA_FILE` (an agent elsewhere).
fn tls_to(
    host_port: &str,
    tcp: TcpStream,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    // The CA files that exist: an agent elsewhere has no data dir.
    let files: Vec<PathBuf> = [
        std::env::var_os("AIRLOCK_CA_FILE").map(PathBuf::from),
        DATA_DIR_CA.get().cloned(),
    ]
    .into_iter()
    .flatten()
    .filter(|f| f.exists())
    .collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let config = crate::tls::ring_client_config(&refs).map_err(std::io::Error::other)?;
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name =
        rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// The user's NO_PROXY, extended (not replaced) with the loopback names.
pub(super) fn extended_no_proxy(existing: Option<String>) -> String {
    let mut entries: Vec<String> = existing
        .unwrap_or_default()
        .split(',')
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    for l in LOOPBACK {
        if !entries.iter().any(|e| e == l) {
            entries.push((*l).to_owned());
        }
    }
    entries.join(",")
}

/// A new private directory for the run's files: a random name, created 0700 by this call (never
/// one that already exists, which another user could have made; row 83).
pub(super) fn run_dir() -> Result<PathBuf, CliError> {
    use std::os::unix::fs::DirBuilderExt;
    let mut last = None;
    for _ in 0..8 {
        let mut random = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| CliError::Usage("no randomness for the run's directory".into()))?;
        let name = format!("airlock-run-{}", data_encoding::HEXLOWER.encode(&random));
        let dir = std::env::temp_dir().join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some((dir, e)),
        }
    }
    let (dir, source) =
        last.unwrap_or_else(|| (std::env::temp_dir(), std::io::ErrorKind::Other.into()));
    Err(CliError::Io {
        what: dir.display().to_string(),
        source,
    })
}

/// Writes into `dir` the agent's two CA files: airlock's CA plus the bundle the child would
/// otherwise have trusted (`ca-bundle.pem`), and airlock's CA alone ([`CA_ONLY`]).
pub(super) fn write_bundles(dir: &Path, ca_pem: &str) -> Result<(PathBuf, PathBuf), CliError> {
    let ca_only = dir.join(CA_ONLY);
    crate::fsutil::write_atomic(&ca_only, ca_pem.as_bytes(), 0o644).map_err(|source| {
        CliError::Io {
            what: ca_only.display().to_string(),
            source,
        }
    })?;
    Ok((write_bundle(dir, ca_pem)?, ca_only))
}

/// airlock's CA alone, for `NODE_EXTRA_CA_CERTS` (Node adds it to its own roots).
pub(super) const CA_ONLY: &str = "airlock-ca.pem";

/// airlock's CA plus the roots the agent trusted before.
pub(super) const BUNDLE: &str = "ca-bundle.pem";

/// airlock's CA plus the bundle the child would otherwise have trusted.
fn write_bundle(dir: &Path, ca_pem: &str) -> Result<PathBuf, CliError> {
    let existing = BUNDLE_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|p| Path::new(p).is_file()))
        .or_else(|| {
            SYSTEM_BUNDLES
                .iter()
                .find(|p| Path::new(p).is_file())
                .map(|p| (*p).to_owned())
        });
    let mut bundle = String::new();
    if let Some(path) = existing {
        bundle.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        if !bundle.ends_with('\n') {
            bundle.push('\n');
        }
    }
    bundle.push_str(ca_pem);
    let path = dir.join(BUNDLE);
    crate::fsutil::write_atomic(&path, bundle.as_bytes(), 0o644).map_err(|source| {
        CliError::Io {
            what: path.display().to_string(),
            source,
        }
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_is_extended_not_replaced() {
        assert_eq!(extended_no_proxy(None), "localhost,127.0.0.1,::1");
        assert_eq!(
            extended_no_proxy(Some("internal.example, localhost".into())),
            "internal.example,localhost,127.0.0.1,::1"
        );
    }
}
