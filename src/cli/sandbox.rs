//! `airlock run --sandbox`: the agent's only way out is airlock (issue "sandboxed run").
//!
//! The agent runs under bubblewrap (`bwrap`, Debian's `bubblewrap`: what Flatpak and the
//! agents' own Linux sandboxes use; one well-kept setuid-free tool instead of our own namespace
//! and mount code) in a network namespace of its own with only loopback: no route, no DNS server
//! that answers, none of the host's loopback services, no metadata address. The proxy answers
//! inside at `127.0.0.1:PORT` through two relays airlock owns: [`relay_inside`] (the sandbox's
//! first process, `airlock sandbox-relay`) listens there and passes each connection to a Unix
//! socket in the run's private directory, where [`relay_outside`] (a thread of `airlock run`)
//! passes it on to the real proxy. Files: the system read-only, the working directory and the
//! agents' own state directories writable, the run's directory and a fresh `/tmp`; the places
//! credentials usually live, and airlock's data dir and config, hidden unless `--allow-path`
//! names them. Without `bwrap`, or where namespaces are not allowed, `--sandbox` stops with one
//! line; it never runs the agent unsandboxed.
//!
//! This module builds the sandbox and relays bytes; it never sees a request's content and holds
//! no token of its own.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use super::CliError;

/// Where credentials usually live under `$HOME`, hidden from the agent.
const HIDDEN_IN_HOME: &[&str] = &[
    ".ssh",
    ".aws",
    ".config/gcloud",
    ".azure",
    ".kube",
    ".docker/config.json",
    ".netrc",
    ".gnupg",
    ".local/share/keyrings",
    ".password-store",
    ".config/gh",
    ".git-credentials",
];
/// The agents' own state under `$HOME`, kept writable (where it exists) so they work as usual,
/// by the program that keeps it there; the program being run gets its own created when missing.
const AGENT_STATE: &[(&str, &[&str])] = &[
    ("claude", &[".claude", ".claude.json"]),
    ("codex", &[".codex"]),
    (
        "opencode",
        &[
            ".config/opencode",
            ".local/share/opencode",
            ".local/state/opencode",
        ],
    ),
    ("openclaw", &[".openclaw"]),
    ("hermes", &[".hermes"]),
    ("", &[".cache", ".npm"]),
];
/// bubblewrap's program, found on `PATH`.
const BWRAP: &str = "bwrap";
/// The socket inside the run's directory that the two relays meet at.
pub(super) const SOCKET: &str = "proxy.sock";

/// What the sandbox is built from.
#[derive(Debug)]
pub(super) struct Sandbox<'a> {
    /// The run's private directory (CA bundle, the relay socket): visible inside.
    pub run_dir: &'a Path,
    /// The loopback port the proxy answers at inside.
    pub port: u16,
    /// airlock's data dir and config file: hidden.
    pub airlock_paths: Vec<PathBuf>,
    /// `--allow-path`: neither hidden nor made read-only.
    pub allowed: &'a [PathBuf],
}

/// Checks that `bwrap` is on `PATH` and may make the namespaces here, naming the fix when not.
fn check() -> Result<(), CliError> {
    let out = Command::new(BWRAP)
        .args(["--unshare-all", "--ro-bind", "/", "/", "--", "true"])
        .output()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => CliError::Usage(
                "--sandbox needs bubblewrap (bwrap) on PATH: apt-get install bubblewrap; the agent was not started".into(),
            ),
            _ => CliError::Io {
                what: format!("running {BWRAP}"),
                source,
            },
        })?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Err(CliError::Usage(format!(
        "--sandbox cannot make namespaces here ({why}); allow user namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, or the container's seccomp profile) or run as root; the agent was not started"
    )))
}

impl Sandbox<'_> {
    /// The command that runs `program args` in the sandbox, and the line that says how.
    pub(super) fn command(
        &self,
        program: &str,
        args: &[String],
    ) -> Result<(Command, String), CliError> {
        check()?;
        let exe = std::env::current_exe().map_err(|source| CliError::Io {
            what: "airlock's own path".into(),
            source,
        })?;
        let cwd = std::env::current_dir().map_err(|source| CliError::Io {
            what: "the working directory".into(),
            source,
        })?;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut c = Command::new(BWRAP);
        c.args([
            "--unshare-all",
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
        ]);
        c.arg("--tmpfs").arg(std::env::temp_dir());
        let allowed = |p: &Path| self.allowed.iter().any(|a| p.starts_with(a));
        let hide = home
            .iter()
            .flat_map(|h| HIDDEN_IN_HOME.iter().map(move |rel| h.join(rel)))
            .filter(|p| p.exists());
        if let Some(h) = &home {
            make_state_of(program, h);
        }
        let state: Vec<&'static str> = AGENT_STATE
            .iter()
            .flat_map(|(_, paths)| paths.iter().copied())
            .collect();
        let writable = home
            .iter()
            .flat_map(|h| state.iter().map(move |rel| h.join(rel)))
            .filter(|p| p.exists())
            .chain(self.allowed.iter().filter(|p| p.exists()).cloned())
            .chain([cwd.clone(), self.run_dir.to_owned()]);
        for path in writable {
            c.arg("--bind").arg(&path).arg(&path);
        }
        // Hidden last, so a place to hide under a writable one (a data dir in the working
        // directory) is still covered.
        let hidden = hide_paths(
            &mut c,
            hide.chain(self.airlock_paths.iter().cloned()),
            allowed,
        );
        c.arg("--chdir").arg(&cwd);
        c.arg("--").arg(exe).arg("sandbox-relay");
        c.arg("--socket").arg(self.run_dir.join(SOCKET));
        c.arg("--port").arg(self.port.to_string());
        c.arg("--").arg(program).args(args);
        let how = format!(
            "sandboxed with bubblewrap: a network namespace with only loopback (the proxy at 127.0.0.1:{} through airlock's relay), the system read-only, {} writable; hidden: {}",
            self.port,
            cwd.display(),
            if hidden.is_empty() {
                "nothing found to hide".to_owned()
            } else {
                hidden.join(", ")
            }
        );
        Ok((c, how))
    }
}

/// Hides each of `paths` that exists and is not `allowed` (a directory under an empty tmpfs, a
/// file under `/dev/null`); returns what was hidden.
fn hide_paths(
    c: &mut Command,
    paths: impl Iterator<Item = PathBuf>,
    allowed: impl Fn(&Path) -> bool,
) -> Vec<String> {
    let mut hidden = Vec::new();
    for path in paths {
        if allowed(&path) || !path.exists() {
            continue;
        }
        let path = path.canonicalize().unwrap_or(path);
        if path.is_dir() {
            c.arg("--tmpfs").arg(&path);
        } else {
            c.arg("--ro-bind").arg("/dev/null").arg(&path);
        }
        hidden.push(path.display().to_string());
    }
    hidden
}

/// Creates the state directories of the agent `program` names (by its file name) under `home`
/// when missing, so the agent can keep its state with the rest of `$HOME` read-only.
fn make_state_of(program: &str, home: &Path) {
    let name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (agent, paths) in AGENT_STATE {
        if agent.is_empty() || *agent != name {
            continue;
        }
        for rel in *paths {
            let path = home.join(rel);
            if path.exists() {
                continue;
            }
            // A name with an extension is a file (`.claude.json`), the others directories.
            let _ = if rel.ends_with(".json") {
                std::fs::write(&path, "{}")
            } else {
                std::fs::create_dir_all(&path)
            };
        }
    }
}

/// Copies both ways between `a` and `b` until either side closes.
fn splice<A, B>(a: A, b: B)
where
    A: io::Read + io::Write + Send + 'static + TryCloneStream,
    B: io::Read + io::Write + Send + 'static + TryCloneStream,
{
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone_stream(), b.try_clone_stream()) else {
        return;
    };
    let (mut a, mut b) = (a, b);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut a, &mut b2);
        b2.shut_write();
    });
    let _ = io::copy(&mut b, &mut a2);
    a2.shut_write();
    let _ = up.join();
}

/// A stream that can be cloned and half-closed.
trait TryCloneStream: Sized {
    fn try_clone_stream(&self) -> io::Result<Self>;
    fn shut_write(&self);
}

impl TryCloneStream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shut_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl TryCloneStream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shut_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Starts the outside relay for a sandbox in `run_dir` towards the plain-HTTP proxy `proxy`
/// (a URL); returns the port the proxy answers at inside (the same as outside, else 7480).
pub(super) fn relay_from(run_dir: &Path, proxy: &str) -> Result<u16, CliError> {
    let (scheme, outside) = super::session::split_url(proxy);
    if scheme != "http" {
        return Err(CliError::Usage(
            "--sandbox relays a plain http:// proxy port (give --proxy http://...)".into(),
        ));
    }
    let port = outside
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(7480);
    relay_outside(run_dir, outside.to_owned())?;
    Ok(port)
}

/// Outside: accepts on the run's socket and passes each connection to the proxy at `proxy`
/// (`host:port`), on a thread per connection, for as long as the run lasts.
fn relay_outside(run_dir: &Path, proxy: String) -> Result<(), CliError> {
    let path = run_dir.join(SOCKET);
    let listener = UnixListener::bind(&path).map_err(|source| CliError::Io {
        what: path.display().to_string(),
        source,
    })?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let proxy = proxy.clone();
            std::thread::spawn(move || {
                if let Ok(up) = TcpStream::connect(&proxy) {
                    let _ = up.set_nodelay(true);
                    splice(conn, up);
                }
            });
        }
    });
    Ok(())
}

/// Inside (`airlock sandbox-relay`, the sandbox's first process): listens on `127.0.0.1:port`,
/// passes each connection to `socket`, runs `command` and exits with its code. With no command
/// (the relay container of `container-relay`) it prints `ready` once listening and relays until
/// it is stopped.
pub(super) fn relay_inside(
    socket: &Path,
    port: u16,
    command: &[String],
) -> Result<ExitCode, CliError> {
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|source| CliError::Io {
        what: format!("127.0.0.1:{port} inside the sandbox"),
        source,
    })?;
    let socket = socket.to_owned();
    let relay = move || {
        for conn in listener.incoming().flatten() {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                if let Ok(out) = UnixStream::connect(&socket) {
                    splice(conn, out);
                }
            });
        }
    };
    let Some((program, args)) = command.split_first() else {
        say!("ready")?;
        let _ = io::Write::flush(&mut io::stdout());
        relay();
        return Ok(ExitCode::SUCCESS);
    };
    std::thread::spawn(relay);
    // Signals are passed on: as a container's first process nothing else would.
    let status = super::child::spawn_and_wait(Command::new(program).args(args), program)?;
    Ok(ExitCode::from(super::child::exit_code(status)))
}
