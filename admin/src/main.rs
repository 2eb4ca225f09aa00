//! `airlock-admin`: the admin process. It serves the approval web UI on a Unix socket
//! (`--socket`, checked with SO_PEERCRED) and optionally on a loopback HTTP listener
//! (`--listen`), and the JSON API for automation on a second socket of its own (`--api-socket`,
//! peer-checked the same way), so that a bridge made for a browser (`ssh -L`, `socat`) to the
//! UI socket exposes only pages that need a login (row 69). It shares durable state with the
//! data plane only through the LMDB vault, can seal credentials but never open them (it has no
//! root key), is not dumpable, and exits when the `airlock serve` that started it goes away.

#![deny(unsafe_code)]

mod api;
mod daily;
mod listing;
mod logcache;
mod logs;
mod manage;
mod overview;
mod pages;
mod respond;
mod security;
mod socket;
mod views;
mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use airlock_core::config::{AdminListen, FileConfig};
use airlock_core::vault::{Store, StoreOptions};
use anyhow::Context;
use clap::Parser;

/// airlock-admin: the approval web UI.
#[derive(Debug, Parser)]
#[command(name = "airlock-admin", version)]
struct Args {
    /// Data directory [default: $AIRLOCK_DATA_DIR, the config's data_dir, else ./airlock-data]
    #[arg(long, env = "AIRLOCK_DATA_DIR", value_name = "D")]
    data_dir: Option<PathBuf>,
    /// TOML config file
    #[arg(long, env = "AIRLOCK_CONFIG", value_name = "F")]
    config: Option<PathBuf>,
    /// Unix socket of the web UI [default: <data-dir>/admin/admin.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Unix socket of the JSON API [default: api.sock beside --socket]
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Also listen for HTTP on this loopback address, or `none`
    #[arg(long, value_name = "ADDR|none", default_value = "none")]
    listen: AdminListen,
}

/// What every handler reads.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub sessions: security::Sessions,
    pub data_dir: PathBuf,
    /// The request log, decoded once and kept current ([`logcache`]).
    pub(crate) log: Arc<logcache::LogCache>,
    /// The last vault page's scoped-token counts, by vault, with the store generation and the
    /// time they were counted (a vault page counts again after a write or ten seconds).
    pub(crate) token_counts: manage::TokenCounts,
}

fn main() -> anyhow::Result<()> {
    airlock_core::secret::harden_process();
    let args = Args::parse();
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let log = airlock_core::logging::init(file.log_level);
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./airlock-data"));
    let mut store = Store::open(
        &data_dir,
        StoreOptions {
            map_size_mib: file.map_size_mib.unwrap_or(1024),
        },
    )?;
    if let Some(fleet) = file.fleet("admin")? {
        store.attach_fleet(Arc::new(fleet));
    }
    let socket_path = args
        .socket
        .clone()
        .unwrap_or_else(|| data_dir.join("admin").join("admin.sock"));
    let api_socket = args
        .api_socket
        .clone()
        .unwrap_or_else(|| socket_path.with_file_name("api.sock"));
    let hook = file
        .webhook_url
        .as_deref()
        .map(webhook::Webhook::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let request_log = Arc::new(logcache::LogCache::default());
    request_log.start(data_dir.clone());
    let state = Arc::new(AppState {
        store,
        sessions: security::Sessions::default(),
        data_dir,
        log: request_log,
        token_counts: Default::default(),
    });
    // Blocking work is Argon2 alone; a few threads, reused, keep its 19 MiB buffers in a few
    // malloc arenas instead of one per thread ever started (row 70).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(security::VERIFY_CONCURRENCY)
        .enable_all()
        .build()?;
    let admin_url = file
        .admin_url
        .as_ref()
        .map(|u| u.trim_end_matches('/').to_owned());
    let reload = reload_on_sighup(args.config.clone(), log);
    runtime.block_on(serve(
        state,
        [socket_path, api_socket],
        args.listen,
        hook,
        admin_url,
        reload,
    ))
}

/// SIGHUP (`systemctl reload airlock-admin`): reads the config file again and applies its
/// `log_level`; the other keys this process reads (data_dir, map_size_mib, webhook_url,
/// admin_url) apply at the next start. A file that does not load changes nothing.
async fn reload_on_sighup(config: Option<PathBuf>, log: airlock_core::logging::LogHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch for SIGHUP; reload by restarting");
        return std::future::pending().await;
    };
    while hup.recv().await.is_some() {
        let Some(path) = &config else {
            tracing::warn!("SIGHUP: no config file to reload (started without --config)");
            continue;
        };
        match FileConfig::load(path) {
            Ok(file) => {
                log.set(file.log_level);
                tracing::info!(
                    "reloaded {}: log_level applied; other keys apply after a restart",
                    path.display()
                );
            }
            Err(e) => tracing::error!("reload refused, settings unchanged: {e}"),
        }
    }
    std::future::pending().await
}

async fn serve(
    state: Arc<AppState>,
    [socket_path, api_path]: [PathBuf; 2],
    listen: AdminListen,
    hook: Option<webhook::Webhook>,
    admin_url: Option<String>,
    reload: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let app = app(state.clone());
    let api_app = api::router(state.clone());
    let bind = |path: PathBuf| -> anyhow::Result<(socket::PeerChecked, PathBuf)> {
        let listener =
            socket::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let gid = std::fs::metadata(path.parent().unwrap_or(&path))
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
            .unwrap_or(0);
        Ok((socket::PeerChecked { listener, gid }, path))
    };
    let (unix, socket_path) = bind(socket_path)?;
    // The JSON API is for local automation: on its own peer-checked socket only.
    let (api_unix, api_path) = bind(api_path)?;
    let tcp = match listen {
        AdminListen::Addr(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        AdminListen::None => None,
    };
    let http: Option<SocketAddr> = tcp.as_ref().and_then(|l| l.local_addr().ok());
    println!(
        "ready admin=unix:{} admin_api=unix:{} admin_http={}",
        socket_path.display(),
        api_path.display(),
        http.map_or("none".into(), |a| a.to_string())
    );
    if let Some(hook) = hook {
        let base = admin_url.or_else(|| http.map(|a| format!("http://{a}")));
        std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || webhook::watch(state, hook, base))?;
    }
    let unix_server = axum::serve(
        unix,
        app.clone()
            .into_make_service_with_connect_info::<socket::Peer>(),
    );
    let api_server = axum::serve(
        api_unix,
        api_app.into_make_service_with_connect_info::<socket::Peer>(),
    );
    let tcp_server = async move {
        match tcp {
            Some(tcp) => axum::serve(tcp, app).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = unix_server => r?,
        r = api_server => r?,
        r = tcp_server => r?,
        () = parent_gone() => tracing::info!("airlock serve is gone; exiting"),
        () = reload => {} // never completes
    }
    Ok(())
}

/// Resolves once the process that started us is gone (we were re-parented).
async fn parent_gone() {
    let parent = rustix::process::getppid();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if rustix::process::getppid() != parent {
            return;
        }
    }
}

/// The web app: the pages and the management routes, behind the session guard.
fn app(state: Arc<AppState>) -> axum::Router {
    pages::routes()
        .merge(manage::routes())
        .merge(logs::routes())
        .merge(overview::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::guard,
        ))
        .with_state(state)
}
