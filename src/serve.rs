//! `airlock serve`: settings, start-up and the worker threads.
//!
//! Start-up: resolve settings (flags over the config file over defaults), initialise the data
//! dir if needed, unlock the vault, compile the policy and pre-warm leaves, refuse a port some
//! other process listens on, bind one SO_REUSEPORT listener per worker on the one resolved port,
//! start each worker's monoio runtime (io_uring, or epoll when io_uring is unavailable or
//! `--driver epoll`), then print the `ready ...` line. A watcher thread polls the vault
//! generation every 100 ms and swaps in a recompiled policy. On SIGHUP the config file is read
//! again (see [`Reload`]): the [`Tunables`](crate::proxy::Tunables), agent limits and log level change in place without
//! dropping a connection; settings that need new listeners or threads are named in a warning and
//! wait for a restart; a file that does not parse changes nothing. On SIGTERM or SIGINT, workers
//! take no new requests and in-flight ones get [`SHUTDOWN_GRACE`] to finish before the process
//! exits.
//!
//! [`run`] reads in that order; the parts are the settings ([`settings`]), the start-up steps
//! ([`startup`]), the workers and their listeners ([`listeners`]) and what happens once it runs
//! ([`supervision`]), each with its own tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certs_cache::LeafCache;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::policy::Policy;
use crate::vault::VaultError;
use crate::vault::keys::KeySources;

mod listeners;
mod settings;
mod startup;
mod supervision;

use listeners::{bind, local_addr, start_workers};
use settings::proxy_tls;
pub use settings::{Reload, ServeArgs, Settings};
use startup::{
    announce, load_ca, open_vault, raise_open_files, shared_state, start_admin, start_threads,
};
use supervision::{notify, serve_until_stopped};

/// Why `serve` could not start. One line each.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{listen}: {source}")]
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} is already in use by another process; pick another --listen")]
    InUse(SocketAddr),
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("upstream proxy: {0}")]
    UpstreamProxy(String),
    #[error(transparent)]
    RequestLog(#[from] crate::requestlog::LogError),
    #[error("certificate authority: {0}")]
    Ca(#[from] certs_cache::CertError),
    #[error("{0}")]
    Fleet(String),
    #[error("starting worker {worker}: {source}")]
    Worker {
        worker: usize,
        source: std::io::Error,
    },
    /// A thread beside the workers (the watcher, the OAuth refresher, the follower) or the
    /// signal handler could not start.
    #[error("starting {what}: {source}")]
    Start {
        what: &'static str,
        source: std::io::Error,
    },
}

fn start_failed(what: &'static str) -> impl FnOnce(std::io::Error) -> ServeError {
    move |source| ServeError::Start { what, source }
}

pub fn run(
    settings: Settings,
    sources: &KeySources,
    actor: &str,
    reload: &Reload,
) -> Result<(), ServeError> {
    crate::secret::harden_process();
    raise_open_files(settings.limits.max_connections);
    let (store, fleet_node, unlocked) = open_vault(&settings, sources, actor)?;
    let (ca_pem, ca) = load_ca(&settings, &unlocked)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Built before anything is started: a bad CA file fails start-up, not the first dial. The
    // admin listener's address is filled in once the admin process is up.
    let mut tunables = settings.tunables(&provider, None)?;
    if settings.guard.allow_private_ranges {
        tracing::warn!(
            "--allow-private-ranges: upstream addresses in private ranges are allowed (metadata stays blocked)"
        );
    }

    let proxy_tls = proxy_tls(&settings, &ca, &provider)?;
    let listeners = bind(settings.listen, settings.workers.get())?;
    let request_metrics = Arc::new(std::sync::Mutex::new(
        crate::metrics::RequestMetrics::default(),
    ));
    let local = local_addr(&listeners, settings.listen)?;
    let policy = Policy::compile(&store, &unlocked.opener, &Policy::default())?;
    let admin = start_admin(&settings, &store);
    let admin_addrs = admin.as_ref().map(|(_, a)| a.clone()).unwrap_or_default();
    tunables.holds.admin_base = settings.approval_base(admin_addrs.http.as_deref());
    let (oauth, oauth_inbox) = crate::renewal::channel();
    let parts = crate::proxy::Parts {
        store,
        opener: unlocked.opener,
        certs: LeafCache::new(ca, provider.clone(), 10_000),
        resolver: Arc::new(crate::proxy::upstream::SystemResolver),
        tunables,
        limits: settings.limits,
        agent_limits: (settings.agent_rate, settings.agent_max_in_flight),
        api_base: format!("http://{local}"),
        ca_pem,
        log: crate::requestlog::start(
            &settings.data_dir,
            crate::metrics::Feed(request_metrics.clone()),
        )?,
        oauth,
        workers: settings.workers.get(),
    };
    let shared = shared_state(&settings, parts, fleet_node, proxy_tls, policy);

    let (handles, driver_name) = start_workers(listeners, &shared, settings.driver)?;
    start_threads(&shared, &settings, oauth_inbox, local)?;
    tracing::info!(
        workers = handles.len(),
        driver = driver_name,
        "data plane listening on {local}"
    );
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(start_failed("the signal handler"))?;
    let published = announce(&settings, &shared, local, request_metrics, &admin_addrs)?;
    notify(b"READY=1");
    serve_until_stopped(
        &mut signals,
        &shared,
        &settings,
        reload,
        &provider,
        &admin_addrs,
    );
    if let Some(path) = published {
        let _ = std::fs::remove_file(path);
    }
    if let Some((admin, _)) = &admin {
        admin.stop();
    }
    drop(handles);
    Ok(())
}

/// The file in the data dir where a running `serve` says where it listens (`airlock run` finds
/// the proxy there); removed when serve exits.
pub const RUNTIME_FILE: &str = "serve.json";

/// Per agent token defaults: 200 requests per second (burst 400) and 64 in flight.
pub const DEFAULT_AGENT_RATE: u32 = 200;
/// How long a held request waits for an operator when nothing says otherwise.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_AGENT_IN_FLIGHT: u32 = 64;

/// How long in-flight requests may take to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
