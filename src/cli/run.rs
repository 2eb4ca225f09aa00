//! `airlock run [--vault V] [--ttl D] [--print-guide] -- CMD ARGS`: starts an agent with its
//! traffic going through airlock.
//!
//! A scoped token is minted for the run (from the data dir, or through the agent API when only
//! `AIRLOCK_URL` and `AIRLOCK_TOKEN` are given) and revoked when the command exits. The proxy is
//! found without flags where a `serve` of the same data dir published its address
//! ([`crate::serve::RUNTIME_FILE`]); before the command starts, the proxy must answer and take
//! the token, else `run` fails in one line. The child gets
//! the proxy variables, a CA bundle it can read (combined with the bundle it already trusted, or
//! the system bundle, so hosts tunnelled without interception still verify; also in
//! `CODEX_CA_CERTIFICATE`), `NO_PROXY`
//! extended with the loopback names, and the agent API in `AIRLOCK_URL`. Only the child's
//! environment changes; airlock never touches the system trust store. Signals are forwarded and
//! the exit code is passed through.
//!
//! The child never inherits what would open the vault or a key itself (review B5):
//! `AIRLOCK_PASSPHRASE` and `CREDENTIALS_DIRECTORY` are removed, and every variable named after a
//! credential key of the vault is replaced with `placeholder` (what SDKs want anyway); so is
//! every variable whose value holds a credential of the vault, whatever its name (review #109:
//! `openai_api_key`, `MY_OPENAI_API_KEY_2`), when `run` can open the vault (the root key is
//! readable here, as for `serve`); stderr says which, by name only. The bundle files live in a
//! fresh private (0700) directory of a random name.
//!
//! `--sandbox` runs the agent under bubblewrap ([`super::sandbox`]), `--sandbox=container` in a
//! Podman or Docker container ([`super::container`]); in a container the agent inherits nothing
//! of this environment but the run's variables.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

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

/// `airlock run` arguments.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Vault for the run [default: the token's or `default`]
    #[arg(long)]
    pub vault: Option<String>,
    /// Lifetime of the scoped token
    #[arg(long, default_value = "8h", value_parser = crate::config::parse_duration)]
    pub ttl: std::time::Duration,
    /// Mint the run's token for this agent (it must be granted the vault): its limits apply and
    /// the request log names it [default: a token of no agent, logged as who ran it]
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Proxy address, http:// or https:// (a proxy port that speaks TLS, verified with the system
    /// roots, this data dir's CA and $AIRLOCK_CA_FILE) [default: $AIRLOCK_URL, else where a serve
    /// of this data dir listens, else the config's listen, else 127.0.0.1:7480]
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Print the agent guide (for an agent's instructions) and exit
    #[arg(long)]
    pub print_guide: bool,
    /// Run the agent in a sandbox whose only way out is airlock: `--sandbox` (bubblewrap on this
    /// host: a network namespace with only loopback, the system read-only, the working directory
    /// writable, credential files hidden) or `--sandbox=container` (a Podman or Docker container
    /// of --image with no network but airlock)
    #[arg(
        long,
        value_name = "KIND",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "bwrap"
    )]
    pub sandbox: Option<SandboxKind>,
    /// With --sandbox: a path to leave visible and writable (repeatable)
    #[arg(long, value_name = "PATH", requires = "sandbox")]
    pub allow_path: Vec<PathBuf>,
    /// With --sandbox=container: the image to run the agent in (never pulled: build or pull it
    /// first)
    #[arg(long, value_name = "IMAGE", requires = "sandbox")]
    pub image: Option<String>,
    /// With --sandbox=container: the container engine [default: podman, else docker]
    #[arg(long, value_name = "PROGRAM", requires = "sandbox")]
    pub engine: Option<String>,
    /// The command to run
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// How `--sandbox` keeps the agent in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxKind {
    /// bubblewrap namespaces on this host, with the host's programs
    Bwrap,
    /// a Podman (or Docker) container of --image
    Container,
}

/// A scoped token for the run and how to revoke it.
pub(super) struct RunToken {
    token: String,
    vault: String,
    pub(super) ca_pem: String,
    /// The store, when minted from the data dir.
    local: bool,
    /// The names of the vault's credentials.
    credential_keys: Vec<String>,
    /// Their values, when this process could open the vault; else why not.
    values: Result<Vec<Secret>, String>,
}

/// Variables the agent never inherits.
const WITHHELD: &[&str] = &["AIRLOCK_PASSPHRASE", "CREDENTIALS_DIRECTORY"];

/// Shortest credential value looked for inside a longer variable (shorter ones would match by
/// chance); a variable equal to a credential is withheld whatever its length.
const MIN_CONTAINED: usize = 8;

/// Withholds from `child` what it must not inherit (see the module docs); returns the names
/// removed and the names replaced with `placeholder`.
fn withhold(
    child: &mut Command,
    credential_keys: &[String],
    values: &[Secret],
) -> (Vec<String>, Vec<String>) {
    let set = |name: &str| std::env::var_os(name).is_some();
    let mut removed = Vec::new();
    for name in WITHHELD.iter().filter(|n| set(n)) {
        child.env_remove(name);
        removed.push((*name).to_owned());
    }
    let mut replaced = Vec::new();
    for key in credential_keys.iter().filter(|k| set(k)) {
        child.env(key, "placeholder");
        replaced.push(key.clone());
    }
    for (name, value) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if replaced.contains(&name) || WITHHELD.contains(&name.as_str()) {
            continue;
        }
        if holds_a_value(value.as_encoded_bytes(), values) {
            child.env(&name, "placeholder");
            replaced.push(name);
        }
    }
    (removed, replaced)
}

/// [`withhold`], saying on stderr what was withheld (by name).
fn withhold_and_say(child: &mut Command, token: &RunToken) {
    let values = token.values.as_deref().unwrap_or_else(|why| {
        if token.local {
            eprintln!(
                "airlock: run: variables were compared with the vault's credentials by name only ({why})"
            );
        }
        &[]
    });
    let (removed, replaced) = withhold(child, &token.credential_keys, values);
    if !removed.is_empty() {
        eprintln!(
            "airlock: run: not passed to the agent: {}",
            removed.join(", ")
        );
    }
    if !replaced.is_empty() {
        eprintln!(
            "airlock: run: set to placeholder for the agent (named after or holding credentials of vault {}): {}",
            token.vault,
            replaced.join(", ")
        );
    }
}

fn no_command() -> CliError {
    CliError::Usage("give the command to run after --, e.g. airlock run -- claude".into())
}

/// Whether `value` is one of `secrets`, or holds one of at least [`MIN_CONTAINED`] bytes.
fn holds_a_value(value: &[u8], secrets: &[Secret]) -> bool {
    secrets.iter().map(Secret::expose).any(|s| {
        !s.is_empty()
            && (value == s
                || (s.len() >= MIN_CONTAINED && memchr::memmem::find(value, s).is_some()))
    })
}

pub(super) fn run(ctx: &Ctx, args: RunArgs) -> Result<std::process::ExitCode, CliError> {
    if args.print_guide {
        print!("{}", crate::proxy::agent_api::GUIDE);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if args.command.is_empty() {
        return Err(no_command());
    }
    let proxy = proxy_url(ctx, args.proxy.as_deref())?;
    let engine = match args.sandbox {
        Some(SandboxKind::Container) => Some(super::container::engine(args.engine.as_deref())?),
        _ => None,
    };
    let token = mint(
        ctx,
        &proxy,
        args.vault.as_deref(),
        args.ttl,
        args.agent.as_deref(),
    )?;
    // In the sandbox the data dir is hidden from the agent.
    if token.local && args.sandbox.is_none() {
        warn_same_user(&ctx.data_dir);
    }
    let dir = run_dir()?;
    let status = start(ctx, &args, &proxy, &token, &dir, engine.as_deref());
    revoke(ctx, &proxy, &token);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(std::process::ExitCode::from(exit_code(status?)))
}

/// Starts the agent (sandboxed as `args` say) with the run's variables and waits for it.
fn start(
    ctx: &Ctx,
    args: &RunArgs,
    proxy: &str,
    token: &RunToken,
    dir: &Path,
    engine: Option<&str>,
) -> Result<ExitStatus, CliError> {
    let (program, program_args) = args.command.split_first().ok_or_else(no_command)?;
    let (bundle, ca_only) = write_bundles(dir, &token.ca_pem)?;
    let port = match args.sandbox {
        Some(_) => Some(super::sandbox::relay_from(dir, proxy)?),
        None => None,
    };
    let inside = port.map_or_else(|| proxy.to_owned(), |p| format!("http://127.0.0.1:{p}"));
    let vars = agent_vars(&inside, token, &bundle, &ca_only)?;
    let mut child = match args.sandbox {
        None => {
            let mut child = Command::new(program);
            child.args(program_args);
            child
        }
        Some(kind) => {
            let (child, how) = match kind {
                SandboxKind::Bwrap => super::sandbox::Sandbox {
                    run_dir: dir,
                    port: port.unwrap_or_default(),
                    airlock_paths: [Some(ctx.data_dir.clone()), ctx.config_path.clone()]
                        .into_iter()
                        .flatten()
                        .map(|p| std::path::absolute(&p).unwrap_or(p))
                        .collect(),
                    allowed: &args.allow_path,
                }
                .command(program, program_args)?,
                SandboxKind::Container => super::container::Container {
                    engine: engine.unwrap_or("podman"),
                    image: args.image.as_deref().ok_or_else(|| {
                        CliError::Usage(
                            "--sandbox=container needs --image IMAGE (the agent's image)".into(),
                        )
                    })?,
                    run_dir: dir,
                    port: port.unwrap_or_default(),
                    allowed: &args.allow_path,
                }
                .command(program, program_args, &vars)?,
            };
            eprintln!("airlock: run: {how}");
            child
        }
    };
    // A container inherits nothing of this environment, only `vars`.
    if args.sandbox != Some(SandboxKind::Container) {
        withhold_and_say(&mut child, token);
    }
    child.envs(vars.iter().map(|(k, v)| (k, v)));
    spawn_and_wait(&mut child, program)
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
/// one that already exists, which another user could have made; review B12).
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

/// product.md's deployment model: warn when the agent could read the vault files.
fn warn_same_user(data_dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(data_dir).map(|m| m.uid()).ok();
    if owner == Some(rustix::process::getuid().as_raw()) {
        eprintln!(
            "airlock: warning: the agent runs as the user who owns {}; it could read the vault's files. For real isolation run agents as another user or in a sandbox.",
            data_dir.display()
        );
    }
}

/// Runs the child, forwarding SIGINT, SIGTERM and SIGHUP to it.
pub(super) fn spawn_and_wait(cmd: &mut Command, program: &str) -> Result<ExitStatus, CliError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut child = cmd.spawn().map_err(|source| CliError::Io {
        what: format!("starting {program}"),
        source,
    })?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|source| {
            CliError::Io {
                what: "signals".into(),
                source,
            }
        })?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let signal = match sig {
                SIGINT => rustix::process::Signal::INT,
                SIGHUP => rustix::process::Signal::HUP,
                _ => rustix::process::Signal::TERM,
            };
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    });
    let status = child.wait().map_err(|source| CliError::Io {
        what: format!("waiting for {program}"),
        source,
    });
    handle.close();
    status
}

/// The child's exit code, or 128 + the signal that ended it (as shells report it).
pub(super) fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        _ => 1,
    }
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
