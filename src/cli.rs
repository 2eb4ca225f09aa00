//! The `airlock` command line: argument definitions ([`Cli`]) and dispatch ([`main`]).
//!
//! Each command group lives in its own module and returns [`CliError`]; [`main`] prints one line
//! `airlock: <reason>` on failure and picks the exit code (78 for config errors, 2 for usage, 1
//! otherwise). Commands that print a token print it alone on the last line of stdout. Nothing here
//! reads a credential back. Output goes through [`say!`]: a closed pipe ends a command quietly.

/// `println!` for the CLI (see [`output::say`]).
macro_rules! say {
    () => {
        $crate::cli::output::say(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cli::output::say(format_args!($($arg)*), true)
    };
}

/// `print!` for the CLI (see [`output::say`]).
macro_rules! say_raw {
    ($($arg:tt)*) => {
        $crate::cli::output::say(format_args!($($arg)*), false)
    };
}

mod agent;
mod child;
mod container;
mod ctx;
mod fleet;
mod init;
mod logs;
mod operator;
mod output;
mod proposal;
mod run;
mod sandbox;
mod service;
mod session;
mod vault;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use self::ctx::Ctx;
pub use self::output::rfc3339;
use crate::config::{ConfigError, EX_CONFIG, FileConfig};
use crate::vault::{UnmatchedPolicy, VaultError};

/// airlock: a credential-brokering proxy for AI agents.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Clone, Debug, Default)]
pub struct GlobalArgs {
    /// Data directory [default: $AIRLOCK_DATA_DIR, the config's data_dir, else ./airlock-data]
    #[arg(long, global = true, env = "AIRLOCK_DATA_DIR", value_name = "D")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file [default: $AIRLOCK_CONFIG, else none]
    #[arg(long, global = true, env = "AIRLOCK_CONFIG", value_name = "F")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data dir, root key, CA and the vault `default` (idempotent)
    Init(InitArgs),
    /// Run the proxy (initialises the data dir on first run)
    Serve(Box<crate::serve::ServeArgs>),
    /// Manage vaults
    #[command(subcommand)]
    Vault(VaultCmd),
    /// Manage a vault's services
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Manage sealed credentials (values are write-only)
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Manage agents and their long-lived tokens
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Mint scoped tokens
    #[command(subcommand)]
    Token(TokenCmd),
    /// The certificate authority agents must trust
    #[command(subcommand)]
    Ca(CaCmd),
    /// Check a config file
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Run an agent with its traffic through airlock (scoped token, proxy and CA variables)
    Run(run::RunArgs),
    /// For orchestrators that start agent containers (NanoClaw): keep a relay container whose
    /// network is only airlock, and print what each agent container gets (network, proxy
    /// variables with a scoped token, CA files)
    ContainerRelay(container::ContainerRelayArgs),
    /// Inside `run --sandbox`: relay 127.0.0.1:PORT to the run's socket and run the command
    #[command(hide = true)]
    SandboxRelay {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Manage the operators who log in to the admin UI (password on stdin or a prompt)
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Review agents' proposals: list, show, approve (values on stdin), reject
    #[command(subcommand)]
    Proposal(ProposalCmd),
    /// Show the audit log of management writes
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Fleet mode: several nodes sharing one vault through PostgreSQL (needs store_url)
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Show the request log of a vault, newest first (never secrets or query strings)
    Logs(logs::LogsArgs),
}

#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// Create the fleet's tables and move this data dir's vault into the fleet (the first node).
    /// The root key comes as for `serve`: the fleet's change log is authenticated with a key
    /// derived from it
    Init {
        /// This node's name [default: the host name]
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        key: RootKeyArgs,
    },
    /// Make a fresh data dir a node of the fleet: it copies the vault and the CA from the store.
    /// The root key comes as for `serve` (master.key in the data dir, a file, or a passphrase);
    /// a key that does not open the fleet's vault is refused before anything is written
    Join {
        /// This node's name [default: the host name]
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        key: RootKeyArgs,
    },
    /// The fleet's nodes: applied position, lag behind the log, last heartbeat, and any node
    /// that stopped following because a change did not verify. With the store unreachable,
    /// what this node knows: its fleet, its applied change, and its serve's last store contact
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Forget a node that is gone for good (its heartbeat row; writes and the log are the
    /// fleet's). A node heard from in the last 30 s is refused: stop it first
    Remove {
        node: String,
        /// Remove it even though it sent a heartbeat in the last 30 s
        #[arg(long)]
        force: bool,
    },
    /// Once, after every node runs this version: authenticate a change log written by an older
    /// airlock (this node's vault becomes the checkpoint every node follows from). On the other
    /// nodes, `serve` picks the key up from the root key at start
    Upgrade {
        #[command(flatten)]
        key: RootKeyArgs,
    },
}

/// Where a fleet command finds the root key, besides `$CREDENTIALS_DIRECTORY/master-key`,
/// `<data-dir>/master.key` and `$AIRLOCK_PASSPHRASE`.
#[derive(Args, Debug)]
pub struct RootKeyArgs {
    /// Use the 32-byte root key in this file (raw or 64 hex digits)
    #[arg(long, value_name = "F")]
    pub master_key_file: Option<PathBuf>,
    /// Read the passphrase from this file
    #[arg(long, value_name = "F", conflicts_with = "master_key_file")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Derive the root key from the passphrase in this file (Argon2id); no master.key is written
    #[arg(long, value_name = "F", conflicts_with = "master_key_file")]
    pub passphrase_file: Option<PathBuf>,
    /// Use the 32-byte root key in this file (raw or 64 hex digits)
    #[arg(long, value_name = "F")]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum VaultCmd {
    /// Create a vault
    Create { name: String },
    /// List vaults
    List {
        #[arg(long)]
        json: bool,
    },
    /// Set what happens to hosts no service matches
    Policy {
        name: String,
        policy: UnmatchedPolicy,
    },
    /// Add hosts to the vault's egress allowlist: reached through an opaque tunnel with no
    /// credential (package registries, git hosts, docs), whatever the policy says of others
    Allow {
        name: String,
        /// `host`, `*.host`, with `:port` when not 443
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Remove hosts from the vault's egress allowlist
    Disallow {
        name: String,
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Print the vault as YAML to keep in git: its services and rules, what it does with other
    /// hosts, its allowlist and the agents granted it. Never a secret: credentials appear as the
    /// key names services use, agents without tokens
    Export {
        #[arg(default_value = "default")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Upsert the services of a YAML file by name
    Set {
        #[arg(long, default_value = "default")]
        vault: String,
        /// The service file (`-` for stdin)
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Make the file the vault's whole list (services not in it are removed)
        #[arg(long)]
        replace: bool,
    },
    /// List a vault's services
    List {
        #[arg(long, default_value = "default")]
        vault: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a service
    Remove {
        #[arg(long, default_value = "default")]
        vault: String,
        name: String,
    },
    /// Add a service from the built-in catalog (its credential must be set first)
    Add {
        #[arg(long, default_value = "default")]
        vault: String,
        /// The catalog template (`airlock service catalog` lists them)
        #[arg(long, value_name = "NAME")]
        template: String,
        /// The service's name [default: the template's]
        #[arg(long)]
        name: Option<String>,
        /// Credential key(s) to use, in the template's order [default: the template's]
        #[arg(long = "credential", value_name = "KEY")]
        credentials: Vec<String>,
    },
    /// List the built-in catalog of service templates
    Catalog {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCmd {
    /// Seal a credential; the value is read from stdin (one trailing newline is stripped)
    Set {
        #[arg(long, default_value = "default")]
        vault: String,
        key: String,
    },
    /// List credential names and dates (never values)
    List {
        #[arg(long, default_value = "default")]
        vault: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a credential no service uses
    Delete {
        #[arg(long, default_value = "default")]
        vault: String,
        key: String,
    },
    /// Import an OAuth token pair; `serve` keeps its access token fresh with the refresh token.
    /// Reads a token file from stdin (or --from): an OAuth token response, Claude Code's
    /// ~/.claude/.credentials.json, Codex's ~/.codex/auth.json, a bare refresh token, or a Google
    /// service-account key file (access tokens minted with its key, RFC 7523)
    Oauth {
        #[arg(long, default_value = "default")]
        vault: String,
        key: String,
        /// https:// URL of the token endpoint [default: the agent's own, for a recognised file]
        #[arg(long, value_name = "URL")]
        token_endpoint: Option<String>,
        /// The OAuth client id [default: the agent's own, for a recognised file]
        #[arg(long, value_name = "ID")]
        client_id: Option<String>,
        /// Scope to ask for on refresh [default: none sent; cloud-platform for a service account]
        #[arg(long)]
        scope: Option<String>,
        /// How the refresh request's body is encoded [default: form, or the agent's own]
        #[arg(long, value_enum)]
        request: Option<crate::vault::oauth::RequestFormat>,
        /// Read the token file from FILE instead of stdin
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Read a client secret from FILE (confidential clients; sent as client_secret)
        #[arg(long, value_name = "FILE")]
        client_secret_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Create an agent granted one or more vaults; prints its token once
    Create {
        name: String,
        #[arg(long = "vault", required = true, value_name = "V")]
        vaults: Vec<String>,
    },
    /// List agents
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent's token and its scoped tokens
    Revoke { name: String },
    /// Replace an agent's token (ending its scoped tokens); prints the new token once
    Rotate { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Mint a short-lived token bound to one vault; prints it once
    Mint {
        #[arg(long, default_value = "default")]
        vault: String,
        /// Lifetime, e.g. 30m, 1h, 7d (1m to 30d)
        #[arg(long, default_value = "1h", value_parser = crate::config::parse_duration)]
        ttl: std::time::Duration,
        /// Mint on behalf of this agent (it must be granted the vault)
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProposalCmd {
    /// List proposals, newest first
    List {
        #[arg(long)]
        vault: Option<String>,
        #[arg(long)]
        status: Option<crate::vault::records::ProposalStatus>,
        #[arg(long)]
        json: bool,
    },
    /// Show what a proposal asks for and why
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Apply a proposal; values for --credential keys are read from stdin, one per line, in order
    Approve {
        id: u64,
        #[arg(long = "credential", value_name = "KEY")]
        credentials: Vec<String>,
        /// Refuse if the proposal's content no longer has this digest (from `show`)
        #[arg(long)]
        digest: Option<String>,
        /// Confirm that credentials already stored may be sent to the new hosts `show` lists
        #[arg(long)]
        allow_credential_reuse: bool,
        /// Confirm that the request rules `show` lists as lifted may go
        #[arg(long)]
        allow_rule_removal: bool,
    },
    /// Reject a proposal
    Reject {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        digest: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Add an operator
    Add { name: String },
    /// List operators
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an operator
    Remove { name: String },
    /// Change an operator's password
    Passwd { name: String },
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Print the CA certificate (PEM)
    Export,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a config file (exit 78 naming the bad key and line)
    Check { file: Option<PathBuf> },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List the newest audit records
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

/// A command's failure: printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// Writing the command's output failed ([`output::say`]).
    #[error("writing to stdout: {0}")]
    Stdout(std::io::Error),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
}

impl CliError {
    /// Whether this is stdout's reader having gone away (`airlock logs | head -1`): the command
    /// had nothing more to do for anyone, so it ends with 0 and says nothing.
    pub fn is_closed_stdout(&self) -> bool {
        matches!(self, Self::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => EX_CONFIG,
            Self::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl From<crate::vault::StoreError> for CliError {
    fn from(e: crate::vault::StoreError) -> Self {
        Self::Vault(e.into())
    }
}

/// Parses the arguments, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) if e.is_closed_stdout() => ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("airlock: {line}");
            ExitCode::from(e.exit_code())
        }
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    if let Command::Run(args) = cli.command {
        let ctx = Ctx::new(&cli.global)?;
        return run::run(&ctx, args);
    }
    if let Command::ContainerRelay(args) = cli.command {
        let ctx = Ctx::new(&cli.global)?;
        return container::relay(&ctx, args);
    }
    if let Command::SandboxRelay {
        socket,
        port,
        command,
    } = &cli.command
    {
        return sandbox::relay_inside(socket, *port, command);
    }
    dispatch(cli).map(|()| ExitCode::SUCCESS)
}

fn dispatch(cli: Cli) -> Result<(), CliError> {
    if let Command::Config(ConfigCmd::Check { file }) = &cli.command {
        let path = file.clone().or(cli.global.config.clone()).ok_or_else(|| {
            CliError::Usage("config check needs a FILE (or --config / $AIRLOCK_CONFIG)".into())
        })?;
        FileConfig::load(&path)?;
        say!("{}: ok", path.display())?;
        return Ok(());
    }
    let ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Command::Init(args) => init::run(&ctx, args),
        Command::Serve(args) => init::serve(&ctx, args),
        Command::Vault(cmd) => vault::run(&ctx, cmd),
        Command::Service(cmd) => service::run(&ctx, cmd),
        Command::Credential(cmd) => service::credential(&ctx, cmd),
        Command::Agent(cmd) => agent::run(&ctx, cmd),
        Command::Token(cmd) => agent::token(&ctx, cmd),
        Command::Ca(CaCmd::Export) => init::ca_export(&ctx),
        Command::Audit(cmd) => vault::audit(&ctx, cmd),
        Command::Fleet(cmd) => fleet::run(&ctx, cmd),
        Command::Proposal(cmd) => proposal::run(&ctx, cmd),
        Command::Operator(cmd) => operator::run(&ctx, cmd),
        Command::Logs(args) => {
            if args.hosts {
                logs::hosts(&ctx, &args.vault, args.json)
            } else {
                logs::run(&ctx, &args)
            }
        }
        Command::Config(_)
        | Command::Run(_)
        | Command::ContainerRelay(_)
        | Command::SandboxRelay { .. } => Ok(()),
    }
}
