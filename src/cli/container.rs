//! Agents in containers whose only way out is airlock: `airlock run --sandbox=container` (one
//! agent, one container) and `airlock container-relay` (for orchestrators such as NanoClaw that
//! start agent containers themselves).
//!
//! A container started with `--network none` (Podman, Debian's package, or Docker where present)
//! has only loopback: no route, no DNS, none of the host's services. airlock's relay runs inside
//! (`airlock sandbox-relay`, the same one as the bubblewrap sandbox's) and passes each connection
//! to `127.0.0.1:PORT` to a Unix socket in the run's directory, mounted in; the other half is a
//! thread of this process on the host ([`super::sandbox::relay_from`]). The relay runs from the
//! host's own files, mounted read-only under `/.airlock`: airlock's binary, its dynamic loader
//! and the libraries the loader resolves for it, so the image needs nothing of airlock's and may
//! be built on another C library or release. Of the host the container sees only the run's
//! directory (the CA files, the socket), and with `run` the working directory and the
//! `--allow-path`s. Images are never pulled (`--pull never`): build or pull them first.
//!
//! `container-relay` keeps one relay container running; an agent container joins its network
//! namespace (`--network container:NAME`, loopback only) and gets the proxy variables with a
//! scoped token (in an `--env-file`) and the CA files: the settings it prints, what OneCLI's
//! `applyContainerConfig` gives NanoClaw. Stopped (SIGINT, SIGTERM), it stops the relay container and revokes the token.
//!
//! This module builds engine command lines and starts the relay; it never sees a request.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use super::child::exit_code;
use super::sandbox::SOCKET;
use super::session::{self, RunToken};
use super::{CliError, Ctx};

/// Where the relay's files are mounted inside.
const RELAY_DIR: &str = "/.airlock";
/// Where `container-relay` mounts the CA files in agent containers.
const CA_DIR: &str = "/etc/airlock";
/// The agent containers' variables, in the relay's directory (`--env-file`).
const ENV_FILE: &str = "agent.env";

/// Lets the container's user, whoever the image runs as, reach the run's directory (by its
/// random name: `0711`), read the CA files in it (`0644`) and connect to the relay socket:
/// nothing more than reaching the proxy port on this host, which that user could anyway.
fn open_to_container_users(run_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(run_dir, PermissionsExt::from_mode(0o711));
    let _ = std::fs::set_permissions(run_dir.join(SOCKET), PermissionsExt::from_mode(0o666));
}

/// The container engine: `flag`, else `podman`, else `docker`, whichever answers.
pub(super) fn engine(flag: Option<&str>) -> Result<String, CliError> {
    let answers = |e: &str| {
        Command::new(e)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let found = match flag {
        Some(e) => answers(e).then(|| e.to_owned()),
        None => ["podman", "docker"]
            .into_iter()
            .find(|e| answers(e))
            .map(str::to_owned),
    };
    found.ok_or_else(|| {
        CliError::Usage(format!(
            "--sandbox=container needs {} (apt-get install podman); the agent was not started",
            flag.unwrap_or("Podman or Docker")
        ))
    })
}

/// The host files the relay runs from inside a container, and the command that starts it there.
struct RelayFiles {
    /// (host path, path inside), all mounted read-only.
    mounts: Vec<(PathBuf, String)>,
    /// The relay's program and its first arguments, before `sandbox-relay`.
    entry: Vec<String>,
}

impl RelayFiles {
    /// airlock's binary and, when it is dynamically linked, the loader this process was started
    /// by (found in `/proc/self/maps`) and the libraries that loader resolves for the binary
    /// (`LOADER --list`), each under its soname.
    fn find() -> Result<Self, CliError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| CliError::Io { what, source }
        };
        let exe = std::env::current_exe().map_err(io("airlock's own path"))?;
        let binary = format!("{RELAY_DIR}/airlock");
        let maps = std::fs::read_to_string("/proc/self/maps").map_err(io("/proc/self/maps"))?;
        let loader = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| {
                Path::new(p)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("ld-"))
            })
            .map(PathBuf::from);
        let Some(loader) = loader else {
            return Ok(Self {
                mounts: vec![(exe, binary.clone())],
                entry: vec![binary],
            });
        };
        let listed = Command::new(&loader)
            .arg("--list")
            .arg(&exe)
            .output()
            .map_err(io("listing airlock's libraries"))?;
        let mut mounts = vec![
            (exe, binary.clone()),
            (loader, format!("{RELAY_DIR}/ld.so")),
        ];
        // Lines like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`.
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            let Some((name, rest)) = line.trim().split_once(" => ") else {
                continue;
            };
            let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            else {
                continue;
            };
            if !name.contains('/') {
                mounts.push((path.into(), format!("{RELAY_DIR}/lib/{name}")));
            }
        }
        Ok(Self {
            mounts,
            entry: vec![
                format!("{RELAY_DIR}/ld.so"),
                "--library-path".into(),
                format!("{RELAY_DIR}/lib"),
                binary,
            ],
        })
    }
}

/// `-v SOURCE:TARGET[:ro]`, refusing a path the engine would split at its `:`.
fn volume(c: &mut Command, source: &Path, target: &str, read_only: bool) -> Result<(), CliError> {
    let source = source.display().to_string();
    if source.contains(':') || target.contains(':') {
        return Err(CliError::Usage(format!(
            "a path with ':' cannot be mounted into a container: {source}"
        )));
    }
    let ro = if read_only { ":ro" } else { "" };
    c.arg("-v").arg(format!("{source}:{target}{ro}"));
    Ok(())
}

/// `ENGINE run --rm --pull never --network none` with `extra`, the relay's files and the run's
/// directory mounted, and the relay as the entry point (the image and its arguments follow).
fn relay_container(
    engine: &str,
    run_dir: &Path,
    extra: &[String],
) -> Result<(Command, RelayFiles), CliError> {
    let relay = RelayFiles::find()?;
    let mut c = Command::new(engine);
    c.args(["run", "--rm", "--pull", "never", "--network", "none"]);
    c.args(extra);
    for (source, target) in &relay.mounts {
        volume(&mut c, source, target, true)?;
    }
    volume(&mut c, run_dir, &run_dir.display().to_string(), false)?;
    c.arg("--entrypoint").arg(&relay.entry[0]);
    Ok((c, relay))
}

/// What `run --sandbox=container` is built from.
#[derive(Debug)]
pub(super) struct Container<'a> {
    /// `podman` or `docker`.
    pub engine: &'a str,
    pub image: &'a str,
    /// The run's private directory (CA bundle, the relay socket): mounted at the same path.
    pub run_dir: &'a Path,
    /// The loopback port the proxy answers at inside.
    pub port: u16,
    /// `--allow-path`: mounted read-write at the same path.
    pub allowed: &'a [PathBuf],
}

impl Container<'_> {
    /// The command that runs `program args` in a container of the image with `vars` (and
    /// nothing else of this environment), and the line that says how.
    pub(super) fn command(
        &self,
        program: &str,
        args: &[String],
        vars: &[(String, String)],
    ) -> Result<(Command, String), CliError> {
        let cwd = std::env::current_dir().map_err(|source| CliError::Io {
            what: "the working directory".into(),
            source,
        })?;
        let mut extra = vec!["-i".to_owned()];
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            extra.push("-t".into());
        }
        open_to_container_users(self.run_dir);
        let (mut c, relay) = relay_container(self.engine, self.run_dir, &extra)?;
        for path in std::iter::once(&cwd).chain(self.allowed) {
            volume(&mut c, path, &path.display().to_string(), false)?;
        }
        c.arg("-w").arg(&cwd);
        // By name only: the values (the token) come from this process's environment, never a
        // command line another user could read.
        for (name, value) in vars {
            c.arg("-e").arg(name).env(name, value);
        }
        c.arg(self.image).args(&relay.entry[1..]);
        c.arg("sandbox-relay")
            .arg("--socket")
            .arg(self.run_dir.join(SOCKET))
            .arg("--port")
            .arg(self.port.to_string());
        c.arg("--").arg(program).args(args);
        let how = format!(
            "sandboxed in a {} container of {}: no network but loopback (the proxy at 127.0.0.1:{} through airlock's relay); of this host only {} (writable) and the run's directory",
            self.engine,
            self.image,
            self.port,
            std::iter::once(&cwd)
                .chain(self.allowed)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok((c, how))
    }
}

/// `airlock container-relay` arguments.
#[derive(clap::Args, Debug)]
pub struct ContainerRelayArgs {
    /// An image to run the relay container from (any: the relay runs from airlock's own files;
    /// never pulled)
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// Name of the relay container; agent containers join its network
    #[arg(long, default_value = "airlock-relay")]
    pub name: String,
    /// Vault for the agents [default: the token's or `default`]
    #[arg(long)]
    pub vault: Option<String>,
    /// Mint the token for this agent (it must be granted the vault) [default: a token of no agent]
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Lifetime of the scoped token the agent containers get (revoked when the relay stops)
    #[arg(long, default_value = "24h", value_parser = crate::config::parse_duration)]
    pub ttl: std::time::Duration,
    /// Proxy address, plain http:// [default: as for `airlock run`]
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Container engine [default: podman, else docker]
    #[arg(long, value_name = "PROGRAM")]
    pub engine: Option<String>,
    /// Print the settings as one JSON object (network, env, mounts, args) instead of one
    /// argument per line
    #[arg(long)]
    pub json: bool,
    /// Also write the settings to FILE (mode 0600), for an orchestrator to read
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// The settings an agent container gets: joined to the relay's network, the CA files mounted
/// at [`CA_DIR`], the variables (also written to [`ENV_FILE`] for `--env-file`).
fn agent_settings(
    name: &str,
    port: u16,
    token: &RunToken,
    dir: &Path,
) -> Result<serde_json::Value, CliError> {
    let ca_dir = Path::new(CA_DIR);
    let vars = session::agent_vars(
        &format!("http://127.0.0.1:{port}"),
        token,
        &ca_dir.join(session::BUNDLE),
        &ca_dir.join(session::CA_ONLY),
    )?;
    let network = format!("container:{name}");
    let mounts: Vec<(String, String)> = [session::BUNDLE, session::CA_ONLY]
        .iter()
        .map(|f| {
            let at = |d: &Path| d.join(f).display().to_string();
            (at(dir), at(ca_dir))
        })
        .collect();
    // The variables (the token among them) go in a file of their own, never on the engine's
    // command line where another user could read them.
    let env_file = dir.join(ENV_FILE);
    let lines: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    crate::fsutil::write_atomic(&env_file, lines.as_bytes(), 0o600).map_err(|source| {
        CliError::Io {
            what: env_file.display().to_string(),
            source,
        }
    })?;
    let mut args = vec!["--network".to_owned(), network.clone()];
    for (source, target) in &mounts {
        args.extend(["-v".into(), format!("{source}:{target}:ro")]);
    }
    args.extend(["--env-file".into(), env_file.display().to_string()]);
    let mounts: Vec<serde_json::Value> = mounts
        .iter()
        .map(|(source, target)| {
            serde_json::json!({"source": source, "target": target, "readonly": true})
        })
        .collect();
    let env: serde_json::Map<String, serde_json::Value> = vars
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    Ok(serde_json::json!({"network": network, "env": env, "mounts": mounts, "args": args}))
}

/// `airlock container-relay`: see the module docs.
pub(super) fn relay(ctx: &Ctx, args: ContainerRelayArgs) -> Result<ExitCode, CliError> {
    let engine = engine(args.engine.as_deref())?;
    let proxy = session::proxy_url(ctx, args.proxy.as_deref())?;
    let token = session::mint(
        ctx,
        &proxy,
        args.vault.as_deref(),
        args.ttl,
        args.agent.as_deref(),
    )?;
    let dir = session::run_dir()?;
    let result = serve_relay(&engine, &args, &proxy, &token, &dir);
    session::revoke(ctx, &proxy, &token);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Starts the relay container, prints the agents' settings and waits for a signal or for the
/// container to end.
fn serve_relay(
    engine: &str,
    args: &ContainerRelayArgs,
    proxy: &str,
    token: &RunToken,
    dir: &Path,
) -> Result<ExitCode, CliError> {
    session::write_bundles(dir, &token.ca_pem)?;
    let port = super::sandbox::relay_from(dir, proxy)?;
    open_to_container_users(dir);
    // A stopped relay container of this name left behind (its removal fails while agents use
    // its network); a running one is not touched, and the start below fails on the name.
    let _ = Command::new(engine)
        .args(["rm", &args.name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let extra = [
        "--name".to_owned(),
        args.name.clone(),
        "--stop-signal".into(),
        "KILL".into(),
    ];
    let (mut c, relay) = relay_container(engine, dir, &extra)?;
    c.arg(&args.image).args(&relay.entry[1..]);
    c.arg("sandbox-relay")
        .arg("--socket")
        .arg(dir.join(SOCKET))
        .arg("--port")
        .arg(port.to_string());
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| CliError::Io {
            what: format!("starting {engine}"),
            source,
        })?;
    let mut ready = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut ready);
    }
    if ready.trim() != "ready" {
        let status = child.wait().ok().map_or(1, exit_code);
        return Err(CliError::Usage(format!(
            "the relay container {} did not start ({engine} exited with {status}; see above)",
            args.name
        )));
    }
    let settings = agent_settings(&args.name, port, token, dir)?;
    let text = if args.json {
        format!("{settings}\n")
    } else {
        let lines: Vec<&str> = settings["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        format!("{}\n", lines.join("\n"))
    };
    if let Some(path) = &args.out {
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|source| {
            CliError::Io {
                what: path.display().to_string(),
                source,
            }
        })?;
    }
    let mut stdout = std::io::stdout();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    eprintln!(
        "airlock: container-relay: {} relays 127.0.0.1:{port} to the proxy for containers started with --network container:{}; stop with Ctrl-C",
        args.name, args.name
    );
    wait_or_stop(engine, &args.name, &mut child)
}

/// Waits for the relay container; on SIGINT, SIGTERM or SIGHUP stops it first.
fn wait_or_stop(
    engine: &str,
    name: &str,
    child: &mut std::process::Child,
) -> Result<ExitCode, CliError> {
    let mut signals = super::child::stop_signals()?;
    let handle = signals.handle();
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (engine2, name2, stopped2) = (engine.to_owned(), name.to_owned(), stopped.clone());
    let stopper = std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            stopped2.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = Command::new(&engine2)
                .args(["stop", &name2])
                .stdout(Stdio::null())
                .status();
        }
    });
    let status = child.wait().map_err(|source| CliError::Io {
        what: format!("waiting for {engine}"),
        source,
    })?;
    handle.close();
    let _ = stopper.join();
    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(ExitCode::SUCCESS);
    }
    Err(CliError::Usage(format!(
        "the relay container {name} stopped ({engine} exited with {})",
        exit_code(status)
    )))
}
