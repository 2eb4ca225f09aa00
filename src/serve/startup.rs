//! `serve`'s start-up steps before the workers: the open-files limit, joining a fleet, opening
//! and unlocking the vault, the watcher, follower and OAuth threads, the metrics gauges, and the
//! address published for `airlock run` (`serve.json`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use certs_cache::Ca;

use super::{RUNTIME_FILE, ServeError, Settings, start_failed};
use crate::config::AdminListen;
use crate::proxy::Shared;
use crate::vault::keys::KeySources;
use crate::vault::setup::{self, CA_CERT_FILE};
use crate::vault::{Store, VaultError};

/// Raises the soft limit of open files to the hard one: each client connection and each
/// upstream connection is a descriptor, and `max_connections` (10,000 by default) is more than
/// the common soft limit of 1,024. Says so when even the hard limit is below it.
pub(super) fn raise_open_files(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("could not raise the open-file limit: {e}");
        }
    }
    let have = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let want = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2);
    if have < want {
        tracing::warn!(
            open_files = have,
            max_connections,
            "the open-file limit is below twice max_connections (a client and an upstream connection each); raise LimitNOFILE"
        );
    }
}

/// Fleet mode: attaches the fleet to the store and catches up once before serving (a store that
/// is down is warned about; the node serves what it has). Refuses a `store_url` for a data dir
/// that is not a fleet node, and says so for a node with no `store_url`. Returns the node name.
pub(super) fn join_fleet(
    store: &mut Store,
    settings: &Settings,
) -> Result<Option<String>, ServeError> {
    let marker = store.fleet_marker().map_err(VaultError::from)?;
    match (&settings.fleet, marker) {
        (None, None) => Ok(None),
        (None, Some(m)) => {
            tracing::warn!(
                "this data dir is node {} of fleet {}, but no store_url is set: serving what it has, refusing writes",
                m.node,
                m.fleet_id
            );
            Ok(None)
        }
        (Some(_), None) => Err(ServeError::Fleet(format!(
            "store_url is set but {} is not a node of a fleet: run `airlock fleet init` (the first node) or `airlock fleet join` (the others)",
            settings.data_dir.display()
        ))),
        (Some(fleet), Some(m)) => {
            store.attach_fleet(Arc::new(fleet.clone()));
            match fleet.catch_up(store) {
                Ok(g) => {
                    tracing::info!(node = %m.node, fleet = %m.fleet_id, applied = g, "fleet node caught up")
                }
                Err(e) => tracing::warn!(
                    "the fleet's store is unreachable at start, serving what this node has: {e}"
                ),
            }
            Ok(Some(m.node))
        }
    }
}

/// Starts the data plane and serves until the process ends.
/// Opens (creating it on first start) and unlocks the vault; joins the fleet when configured.
pub(super) fn open_vault(
    settings: &Settings,
    sources: &KeySources,
    actor: &str,
) -> Result<(Store, Option<String>, setup::Unlocked), ServeError> {
    // A fleet node's data dir comes from `fleet join`; a fresh standalone vault would only be in
    // the way of it.
    if settings.fleet.is_some()
        && let Err(crate::vault::StoreError::NotInitialised(_)) =
            Store::open(&settings.data_dir, settings.store)
    {
        return Err(ServeError::Fleet(format!(
            "store_url is set but {} holds no vault: run `airlock fleet join` (or `airlock init` then `airlock fleet init` for a new fleet)",
            settings.data_dir.display()
        )));
    }
    if let setup::InitOutcome::Created { .. } =
        setup::init(&settings.data_dir, sources, settings.store, actor)?
    {
        eprintln!(
            "airlock: initialised a new data dir at {}",
            settings.data_dir.display()
        );
    }
    let mut store = Store::open(&settings.data_dir, settings.store).map_err(VaultError::from)?;
    if store.reclaimed_readers > 0 {
        tracing::warn!(
            slots = store.reclaimed_readers,
            "reclaimed stale LMDB reader slots left by killed processes"
        );
    }
    let (unlocked, root) = setup::unlock_keeping_root(&store, &settings.data_dir, sources)?;
    // A node upgraded from a log without tags takes its log key from the root key, which has
    // just been shown to open this vault.
    crate::vault::fleet::Fleet::keep_key(&store, &root).map_err(VaultError::from)?;
    drop(root);
    let fleet_node = join_fleet(&mut store, settings)?;
    Ok((store, fleet_node, unlocked))
}

/// The threads beside the workers: the OAuth refresher, the fleet follower, and the watcher
/// that recompiles the policy when the vault's generation moves.
pub(super) fn start_threads(
    shared: &Arc<Shared>,
    settings: &Settings,
    oauth_inbox: crate::renewal::Inbox,
    local: SocketAddr,
) -> Result<(), ServeError> {
    crate::oauth::start(shared.clone(), oauth_inbox)
        .map_err(start_failed("the OAuth refresher"))?;
    if let Some(mut fleet) = settings.fleet.clone() {
        fleet.set_listen(local.to_string());
        crate::follower::start(shared.clone(), fleet).map_err(start_failed("the follower"))?;
    }
    let watcher = shared.clone();
    std::thread::Builder::new()
        .name("airlock-watcher".into())
        .spawn(move || {
            let mut trimmer = crate::memory::Trimmer::default();
            for tick in 1u64.. {
                std::thread::sleep(WATCH_EVERY);
                if let Err(e) = watcher.refresh() {
                    tracing::warn!("reloading the vault failed: {e}");
                }
                // Every second: after a burst of connections, memory goes back (row 112).
                if tick % TICKS_PER_SECOND == 0 {
                    trimmer.observe(watcher.stats.connections.load(Ordering::Relaxed));
                }
                // Every 10 s: free reader slots of CLI processes killed mid-read (row 54).
                if tick % (10 * TICKS_PER_SECOND) == 0
                    && let Ok(n) = watcher.store.reclaim_readers()
                    && n > 0
                {
                    tracing::warn!(
                        slots = n,
                        "reclaimed stale LMDB reader slots left by killed processes"
                    );
                }
            }
        })
        .map_err(start_failed("the watcher"))?;
    Ok(())
}

/// How often the watcher looks for a write to the vault: a read of its generation (one LMDB read
/// transaction, microseconds), so a write is served within this plus one policy compile (about
/// 11 ms at 1,000 services).
const WATCH_EVERY: Duration = Duration::from_millis(20);
const TICKS_PER_SECOND: u64 = 1000 / WATCH_EVERY.as_millis() as u64;

/// What the metrics endpoint reads from the data plane at each scrape.
pub(super) fn gauges(shared: &Arc<Shared>) -> impl Fn() -> crate::metrics::Gauges + Send + 'static {
    let s = shared.clone();
    move || {
        let t = s.stats.totals();
        crate::metrics::Gauges {
            connections: s.stats.connections.load(Ordering::Relaxed) as u64,
            in_flight: t.in_flight,
            tunnels: t.tunnels,
            upstream_dialled: t.upstream_dialled,
            upstream_reused: t.upstream_reused,
            pool_discarded: t.pool_discarded,
            retried: t.retried,
            refused_network: t.refused_network,
            refused_proxy_header: t.refused_proxy_header,
            leaf_mints: s.certs.mints(),
            leaf_hits: s.certs.hits(),
            limited_agent: s.limiters.agents.refused.load(Ordering::Relaxed),
            limited_auth: s.limiters.auth_failures.refused.load(Ordering::Relaxed),
            limited_mint: s.limiters.mints.refused.load(Ordering::Relaxed),
            limited_refusals: s.limiters.refusals.refused.load(Ordering::Relaxed),
            limited_token_mints: s.limiters.token_mints.refused.load(Ordering::Relaxed),
            fleet: s.fleet.as_ref().map(|f| crate::metrics::FleetGauges {
                applied: s.policy().generation,
                contact_age: f.contact_age().as_secs_f64(),
                log_rejected: f.problem().is_some(),
            }),
        }
    }
}

/// Writes [`RUNTIME_FILE`]; its path, or `None` (with a warning) when it cannot be written.
pub(super) fn publish(data_dir: &std::path::Path, proxy: SocketAddr, tls: bool) -> Option<PathBuf> {
    let path = data_dir.join(RUNTIME_FILE);
    let scheme = if tls { "https" } else { "http" };
    let text = serde_json::json!({"proxy": proxy.to_string(), "scheme": scheme, "pid": std::process::id()});
    match crate::fsutil::write_atomic(&path, text.to_string().as_bytes(), 0o644) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(
                "cannot write {}: {e}; `airlock run` will not find this proxy by itself",
                path.display()
            );
            None
        }
    }
}

/// The CA's certificate (PEM, as agents get it) and the CA that signs the leaves.
pub(super) fn load_ca(
    settings: &Settings,
    unlocked: &setup::Unlocked,
) -> Result<(String, Ca), ServeError> {
    let ca_path = settings.data_dir.join(CA_CERT_FILE);
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| VaultError::Io {
        path: ca_path,
        source,
    })?;
    let ca = Ca::load(
        &unlocked.ca_name,
        &ca_pem,
        unlocked.ca_key_pkcs8_der.expose(),
    )?;
    Ok((ca_pem, ca))
}

/// The admin process, when `serve` starts it; while no operator exists, a one-time link for
/// creating the first one is printed.
pub(super) fn start_admin(
    settings: &Settings,
    store: &Store,
) -> Option<(crate::supervise::Admin, crate::supervise::AdminAddrs)> {
    if !settings.start_admin {
        return None;
    }
    let admin = crate::supervise::Admin::start(
        &settings.data_dir,
        settings.config_file.as_deref(),
        settings.admin_listen,
    );
    if let Some(http) = admin.as_ref().and_then(|(_, a)| a.http.as_deref())
        && let Ok(Some(token)) = store.mint_setup_token()
    {
        eprintln!(
            "airlock: no operator yet; create the first one at http://{http}/setup?token={} (or run `airlock operator add NAME`)",
            String::from_utf8_lossy(token.expose())
        );
    }
    admin
}

/// Starts the metrics listener, publishes the proxy's address for `airlock run` and prints the
/// `ready ...` line; returns the published file, removed at exit.
pub(super) fn announce(
    settings: &Settings,
    shared: &Arc<Shared>,
    local: SocketAddr,
    request_metrics: Arc<std::sync::Mutex<crate::metrics::RequestMetrics>>,
    admin_addrs: &crate::supervise::AdminAddrs,
) -> Result<Option<PathBuf>, ServeError> {
    let metrics_addr = match settings.metrics_listen {
        AdminListen::Addr(addr) => crate::metrics::serve(addr, request_metrics, gauges(shared))
            .map_err(|source| ServeError::Bind {
                listen: addr,
                source,
            })?
            .to_string(),
        AdminListen::None => "none".to_owned(),
    };
    let admin_socket = admin_addrs
        .socket
        .as_ref()
        .map_or("none".to_owned(), |p| format!("unix:{}", p.display()));
    let admin_api = admin_addrs
        .api_socket
        .as_ref()
        .map_or("none".to_owned(), |p| format!("unix:{}", p.display()));
    let admin_http = admin_addrs.http.as_deref().unwrap_or("none");
    // Published before the ready line, so whoever waits for "ready" finds it.
    let published = publish(&settings.data_dir, local, shared.proxy_tls.is_some());
    // Not println!: a closed stdout must not panic the service.
    let _ = writeln!(
        std::io::stdout(),
        "ready proxy={local} admin={admin_socket} admin_api={admin_api} admin_http={admin_http} metrics={metrics_addr}"
    );
    Ok(published)
}

/// The workers' shared state from `parts`: this node's fleet state, the proxy port's TLS and
/// client networks, the leaves of `policy`'s hosts pre-warmed, the policy in place, and the
/// held requests of earlier runs of this node rejected.
pub(super) fn shared_state(
    settings: &Settings,
    parts: crate::proxy::Parts,
    fleet_node: Option<String>,
    proxy_tls: Option<Arc<rustls::ServerConfig>>,
    policy: crate::policy::Policy,
) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        hold_node: crate::proxy::hold::node_id(fleet_node.as_deref().unwrap_or("local")),
        fleet: fleet_node
            .map(|node| crate::fleet_state::FleetState::new(node, settings.fleet_max_staleness)),
        proxy_tls,
        client_networks: settings.client_networks.clone(),
        proxy_protocol_from: settings.proxy_protocol_from.clone(),
        ..Shared::new(parts)
    });
    shared.prewarm(&policy);
    shared.policy.store(policy);
    crate::proxy::hold::reject_stale(&shared);
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve.json` says where the proxy listens and how, for `airlock run` to find.
    #[test]
    fn publishes_the_proxy_address() {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 7480));
        let path = publish(dir.path(), addr, true).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            (v["proxy"].as_str(), v["scheme"].as_str()),
            (Some("127.0.0.1:7480"), Some("https"))
        );
        assert_eq!(v["pid"].as_u64(), Some(u64::from(std::process::id())));
        assert!(publish(&dir.path().join("missing"), addr, false).is_none());
    }
}
