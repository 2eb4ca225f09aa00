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
//! The child never inherits what would open the vault or a key itself (row 83):
//! `AIRLOCK_PASSPHRASE` and `CREDENTIALS_DIRECTORY` are removed, and every variable named after a
//! credential key of the vault is replaced with `placeholder` (what SDKs want anyway); so is
//! every variable whose value holds a credential of the vault, whatever its name (row 106:
//! `openai_api_key`, `MY_OPENAI_API_KEY_2`), when `run` can open the vault (the root key is
//! readable here, as for `serve`); stderr says which, by name only. The bundle files live in a
//! fresh private (0700) directory of a random name.
//!
//! `--sandbox` runs the agent under bubblewrap ([`super::sandbox`]), `--sandbox=container` in a
//! Podman or Docker container ([`super::container`]); in a container the agent inherits nothing
//! of this environment but the run's variables.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use super::child::{exit_code, spawn_and_wait};
use super::session::{RunToken, agent_vars, mint, proxy_url, revoke, run_dir, write_bundles};
use super::{CliError, Ctx};
use crate::secret::Secret;

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
        say_raw!("{}", crate::proxy::agent_api::GUIDE)?;
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

/// Warns when the agent could read the vault's files (it runs as the data dir's owner).
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
