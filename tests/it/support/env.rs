//! Runs the real `airlock` binary against a private data dir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A data dir in a temp dir plus helpers to run commands against it.
pub(crate) struct Env {
    pub tmp: tempfile::TempDir,
    pub data_dir: PathBuf,
}

/// What one command did.
#[derive(Debug)]
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }

    /// Asserts failure with exactly one line of reason on stderr, and returns that line.
    #[track_caller]
    pub(crate) fn fails(&self) -> &str {
        assert_ne!(self.code, 0, "command unexpectedly succeeded: {self:?}");
        let lines: Vec<_> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:?}");
        assert!(lines[0].starts_with("airlock: "), "{self:?}");
        lines[0]
    }

    pub(crate) fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_airlock")
}

/// A `Command` for airlock with a clean environment (no inherited AIRLOCK_* variables).
pub(crate) fn command(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    for var in [
        "AIRLOCK_DATA_DIR",
        "AIRLOCK_CONFIG",
        "AIRLOCK_PASSPHRASE",
        "CREDENTIALS_DIRECTORY",
    ] {
        c.env_remove(var);
    }
    c
}

pub(crate) fn output(mut c: Command, stdin: Option<&[u8]>) -> Run {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn airlock");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        // A command that refuses before reading its input closes the pipe first.
        if let Err(e) = pipe.write_all(input) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

impl Env {
    /// A temp dir with no data dir in it yet.
    pub(crate) fn empty() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        Self { tmp, data_dir }
    }

    /// A temp dir with `airlock init` done.
    pub(crate) fn init() -> Self {
        let env = Self::empty();
        env.run(&["init"]).ok();
        env
    }

    /// `airlock --data-dir D ARGS` (the global flag first, so it never lands after a `--`).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = command(&[]);
        c.arg("--data-dir").arg(&self.data_dir).args(args);
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Run {
        output(self.command(args), None)
    }

    pub(crate) fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        output(self.command(args), Some(stdin))
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    /// `service set -f` with `yaml` (through a file in the temp dir).
    pub(crate) fn set_services(&self, yaml: &str) {
        let file = self.write("services.yaml", yaml);
        self.run(&["service", "set", "-f", file.to_str().expect("utf-8 path")])
            .ok();
    }

    /// Creates agent `name` with default vault `vault`; its token.
    pub(crate) fn agent_token(&self, name: &str, vault: &str) -> String {
        self.run(&["agent", "create", name, "--vault", vault])
            .ok()
            .last_line()
            .to_owned()
    }

    pub(crate) fn store(&self) -> airlock::vault::Store {
        airlock::vault::Store::open(&self.data_dir, Default::default()).expect("open store")
    }

    /// Waits (up to 5 s) for a request-log row of `vault` that `wanted` accepts, and returns it
    /// (rows reach the log in batches).
    #[track_caller]
    pub(crate) fn log_row(
        &self,
        vault: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = std::time::Instant::now();
        loop {
            let logs = self.run(&["logs", "--vault", vault, "--json"]).ok().stdout;
            let row = logs
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|r| wanted(r));
            if let Some(row) = row {
                return row;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "no such row in the request log: {logs}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Waits (up to 5 s) until the request log of `vault` holds at least `n` rows, and returns
    /// them, newest first.
    #[track_caller]
    pub(crate) fn log_rows(&self, vault: &str, n: usize) -> Vec<serde_json::Value> {
        let start = std::time::Instant::now();
        loop {
            let args = ["logs", "--vault", vault, "--json", "--limit", "0"];
            let logs = self.run(&args).ok().stdout;
            let rows: Vec<serde_json::Value> = logs
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if rows.len() >= n {
                return rows;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "fewer than {n} rows in the request log: {logs}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.store().generation().expect("generation")
    }
}

/// Every file under `dir` with the SHA-256 of its bytes, for before/after comparisons. LMDB's
/// `lock.mdb` (the reader table, rewritten by every open, holding no data) is left out.
pub(crate) fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    files(dir)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("lock.mdb"))
        .map(|(p, bytes)| {
            (
                p,
                data_encoding::HEXLOWER
                    .encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()),
            )
        })
        .collect()
}

/// Every file under `dir` with its bytes (LMDB files included).
pub(crate) fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                // Regular files only (the admin socket lives in the data dir too).
                let bytes = std::fs::read(&path).expect("read");
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

/// The HTTP status codes curl reports for `args` (direct, never through a proxy), one after
/// another when `args` names several URLs.
pub(crate) fn http_codes(args: &[&str]) -> String {
    let codes = super::Curl::direct().args(["-o", "/dev/null", "-w", "%{http_code}"]);
    codes.args(args).run().ok().stdout
}

/// Whether `needle` occurs anywhere in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A per-run random canary value (security.md J-01).
pub(crate) fn canary() -> String {
    let n: u128 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos());
    format!("sk-canary-{:x}{:x}", n, std::process::id())
}

/// A small tmpfs mounted on a temp dir (disk-full tests; needs root), unmounted on drop.
pub(crate) struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting a tmpfs failed (the test needs root)"
        );
        Self { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// `airlock serve` running as nobody (uid 65534), from copies of both binaries in a fresh 0755
/// directory, over a data dir made by `init`; `env` is set for both. Killed on drop.
pub(crate) struct ServeAsNobody {
    pub child: std::process::Child,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServeAsNobody {
    pub(crate) fn start(serve_args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let data = dir.path().join("data");
        let mut init = command(&["--data-dir", data.to_str().expect("utf-8"), "init"]);
        init.envs(env.iter().copied());
        output(init, None).ok();
        let copy = dir.path().join("airlock");
        std::fs::copy(bin(), &copy).expect("copy airlock");
        let admin = Path::new(bin()).with_file_name("airlock-admin");
        std::fs::copy(admin, dir.path().join("airlock-admin")).expect("copy airlock-admin");
        let chown = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&data)
            .status()
            .expect("chown");
        assert!(chown.success());
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&copy)
            .args(["--data-dir", data.to_str().expect("utf-8"), "serve"])
            .args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .args(serve_args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().expect("spawn serve");
        let mut ready = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready)
            .expect("ready line");
        assert!(ready.starts_with("ready "), "{ready}");
        Self {
            child,
            data,
            _dir: dir,
        }
    }
}

impl Drop for ServeAsNobody {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
