//! `serve` once it runs: waits for signals (SIGHUP re-reads the config and applies what can
//! change in place, SIGTERM and SIGINT drain the workers within the grace period) and tells
//! systemd where it stands (`sd_notify`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use signal_hook::consts::SIGHUP;
use signal_hook::iterator::Signals;

use super::{Reload, SHUTDOWN_GRACE, Settings};
use crate::config::FileConfig;
use crate::proxy::Shared;

/// Serves until SIGTERM or SIGINT, re-reading the config on SIGHUP; then takes no new requests
/// and waits (at most [`SHUTDOWN_GRACE`]) for those in flight.
pub(super) fn serve_until_stopped(
    signals: &mut Signals,
    shared: &Shared,
    settings: &Settings,
    reload: &Reload,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    admin_addrs: &crate::supervise::AdminAddrs,
) {
    if let Some(signal) = signals.forever().find(|&signal| {
        if signal != SIGHUP {
            return true;
        }
        notify(b"RELOADING=1");
        reload_config(
            shared,
            settings,
            reload,
            provider,
            admin_addrs.http.as_deref(),
        );
        notify(b"READY=1");
        false
    }) {
        tracing::info!(
            signal,
            "shutting down: no new requests; waiting for in-flight ones"
        );
    }
    shared.shutdown.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    while shared.stats.totals().in_flight > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the workers hand over their last rows and the request-log writer commit them.
    std::thread::sleep(
        crate::proxy::LOG_FLUSH_INTERVAL
            + crate::requestlog::BATCH_INTERVAL
            + Duration::from_millis(50),
    );
}

/// SIGHUP: reads the config file again and applies what can change in place; names what
/// differs from `started` but needs a restart. A file that does not load changes nothing.
pub(super) fn reload_config(
    shared: &Shared,
    started: &Settings,
    reload: &Reload,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    admin_http: Option<&str>,
) {
    let Some(path) = &started.config_file else {
        tracing::warn!("SIGHUP: no config file to reload (serve was started without --config)");
        return;
    };
    // The data dir never changes in place (and --data-dir may have overridden the file).
    let new = FileConfig::load(path)
        .map_err(|e| e.to_string())
        .map(|file| Settings::resolve(started.data_dir.clone(), &file, &reload.args))
        .and_then(|new| {
            let tunables = new
                .tunables(provider, admin_http)
                .map_err(|e| e.to_string())?;
            Ok((new, tunables))
        });
    let (new, tunables) = match new {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("reload refused, settings unchanged: {e}");
            return;
        }
    };
    shared.set_tunables(tunables, new.limits);
    shared
        .limiters
        .agents
        .set(new.agent_rate, new.agent_max_in_flight);
    reload.log.set(new.log_level);
    let pending = started.restart_only_changes(&new);
    if pending.is_empty() {
        tracing::info!("reloaded {}", path.display());
    } else {
        tracing::warn!(
            "reloaded {}; these changes apply after a restart: {}",
            path.display(),
            pending.join(", ")
        );
    }
}

/// Tells systemd (`Type=notify`) about the service state (`READY=1`, `RELOADING=1`) on
/// `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).
pub(super) fn notify(state: &[u8]) {
    if let Some(target) = std::env::var_os("NOTIFY_SOCKET") {
        notify_to(&target.to_string_lossy(), state);
    }
}

/// Sends `state` to systemd's socket `target` (a path, or `@` and an abstract name).
fn notify_to(target: &str, state: &[u8]) {
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let addr = match target.strip_prefix('@') {
        Some(name) => {
            <UnixAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes())
        }
        None => UnixAddr::from_pathname(target),
    };
    let sent = UnixDatagram::unbound().and_then(|s| addr.and_then(|a| s.send_to_addr(state, &a)));
    if let Err(e) = sent {
        tracing::warn!("notifying systemd at {target} failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// The notification reaches a socket named by path and one with an abstract name.
    #[test]
    fn notifies_systemd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let by_path = UnixDatagram::bind(&path).unwrap();
        notify_to(&path.to_string_lossy(), b"READY=1");
        let mut buf = [0u8; 32];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let name = format!("airlock-test-{}", std::process::id());
        let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_ = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), b"STOPPING=1");
        let n = abstract_.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
