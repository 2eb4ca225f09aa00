//! The admin process as `airlock serve`'s supervised child: found beside the `airlock`
//! executable (then on `PATH`), started with the data dir, socket and HTTP listener, restarted
//! with backoff when it exits, and stopped with the data plane. The data plane never depends on
//! it: if the binary is missing, `serve` says so and keeps serving.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::AdminListen;

/// Where the admin process listens, from its ready line.
#[derive(Clone, Debug, Default)]
pub struct AdminAddrs {
    pub socket: Option<PathBuf>,
    /// The JSON API's socket (never bridged for browsers).
    pub api_socket: Option<PathBuf>,
    pub http: Option<String>,
}

/// The running admin child (shared with the supervisor thread).
#[derive(Debug, Default)]
pub struct Admin {
    child: Arc<Mutex<Option<Child>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

fn binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()?
        .with_file_name("airlock-admin");
    if beside.is_file() {
        return Some(beside);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("airlock-admin"))
        .find(|p| p.is_file())
}

fn spawn(bin: &Path, args: &[String]) -> std::io::Result<(Child, AdminAddrs)> {
    // The admin process holds no key (row 84): nothing that opens the vault is passed on.
    let mut child = Command::new(bin)
        .args(args)
        .env_remove("AIRLOCK_PASSPHRASE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut addrs = AdminAddrs::default();
    for word in line.split_whitespace() {
        if let Some(p) = word.strip_prefix("admin=unix:") {
            addrs.socket = Some(PathBuf::from(p));
        } else if let Some(p) = word.strip_prefix("admin_api=unix:") {
            addrs.api_socket = Some(PathBuf::from(p));
        } else if let Some(h) = word.strip_prefix("admin_http=") {
            addrs.http = (h != "none").then(|| h.to_owned());
        }
    }
    if addrs.socket.is_none() {
        let _ = child.kill();
        return Err(std::io::Error::other(format!(
            "airlock-admin did not start: {line:?}"
        )));
    }
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    Ok((child, addrs))
}

impl Admin {
    /// Starts the admin process and its supervisor. `None` (with a warning) when the binary is
    /// missing or does not start; the data plane runs on.
    pub fn start(
        data_dir: &Path,
        config: Option<&Path>,
        listen: AdminListen,
    ) -> Option<(Self, AdminAddrs)> {
        let Some(bin) = binary() else {
            tracing::warn!(
                "airlock-admin was not found next to airlock or on PATH; serving without the admin UI"
            );
            return None;
        };
        let mut args = vec![
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen".to_owned(),
            listen.to_string(),
        ];
        if let Some(c) = config {
            args.extend(["--config".to_owned(), c.display().to_string()]);
        }
        let (child, addrs) = match spawn(&bin, &args) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("starting airlock-admin failed: {e}; serving without the admin UI");
                return None;
            }
        };
        let admin = Self::default();
        *admin.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        // Restarts keep the address the first start resolved (port 0 stays the same port).
        if let Some(h) = &addrs.http {
            let i = args
                .iter()
                .position(|a| a == "--listen")
                .map_or(args.len(), |i| i + 1);
            if let Some(slot) = args.get_mut(i) {
                slot.clone_from(h);
            }
        }
        let (slot, stopping) = (admin.child.clone(), admin.stopping.clone());
        std::thread::Builder::new()
            .name("airlock-admin-supervisor".into())
            .spawn(move || supervise(&bin, &args, &slot, &stopping))
            .ok()?;
        Some((admin, addrs))
    }

    /// Stops the admin process for good.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(mut c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn supervise(
    bin: &Path,
    args: &[String],
    slot: &Mutex<Option<Child>>,
    stopping: &std::sync::atomic::AtomicBool,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => continue,
                Some(Ok(Some(status))) => tracing::warn!(
                    "airlock-admin exited ({status}); restarting in {}s",
                    backoff.as_secs()
                ),
                Some(Err(e)) => tracing::warn!("airlock-admin: {e}"),
                None => return,
            }
            *guard = None;
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        std::thread::sleep(backoff);
        if stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match spawn(bin, args) {
            Ok((child, _)) => *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(child),
            Err(e) => tracing::warn!("restarting airlock-admin failed: {e}"),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
