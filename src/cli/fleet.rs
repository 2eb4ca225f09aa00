//! `airlock fleet init|join|status|remove|upgrade`: making data dirs nodes of a fleet
//! (`vault::fleet`), showing where each node stands (from what this node knows when the store
//! is down), forgetting a node gone for good, and authenticating a log an older airlock wrote. Each command
//! that writes the log checks the root key against the vault (or, joining, against the fleet)
//! before anything is written.

use serde_json::json;

use super::output;
use super::{CliError, Ctx, FleetCmd, RootKeyArgs};
use crate::vault::fleet::{Fleet, FleetError, LogKey};
use crate::vault::keys::KeySources;
use crate::vault::setup::{self, CA_CERT_FILE, CA_KEY_FILE};
use crate::vault::{Store, StoreError, VaultError};

pub(super) fn run(ctx: &Ctx, cmd: FleetCmd) -> Result<(), CliError> {
    let fleet = ctx.file.fleet("cli")?.ok_or_else(|| {
        CliError::Usage(
            "fleet commands need the fleet's store: set store_url in the config or $AIRLOCK_STORE_URL".into(),
        )
    })?;
    match cmd {
        FleetCmd::Init { node, key } => {
            let node = node_name(node)?;
            // A write by a running serve between the snapshot and the marker would be lost.
            if let Some(pid) = serving_pid(&ctx.data_dir) {
                return Err(CliError::Usage(format!(
                    "`airlock serve` (pid {pid}) is running on {}; stop it, run `fleet init`, then start it with store_url set",
                    ctx.data_dir.display()
                )));
            }
            let store = Store::open(&ctx.data_dir, ctx.store_options())?;
            let root = setup::root_key(&store, &ctx.data_dir, &sources(ctx, key)?)?;
            let marker = fleet.init(&store, &ctx.data_dir, &node, &root)?;
            say!(
                "created fleet {} with this data dir as node {node} at change {}",
                marker.fleet_id,
                store.generation()?
            )?;
        }
        FleetCmd::Join { node, key } => {
            let node = node_name(node)?;
            let (fleet_id, reached) = join(ctx, &fleet, &node, &sources(ctx, key)?)?;
            say!("joined fleet {fleet_id} as node {node} at change {reached}")?;
        }
        FleetCmd::Upgrade { key } => {
            let store = Store::open(&ctx.data_dir, ctx.store_options())?;
            let root = setup::root_key(&store, &ctx.data_dir, &sources(ctx, key)?)?;
            match fleet.upgrade(&store, &root)? {
                Some(seq) => say!(
                    "the fleet's change log is authenticated from change {seq} on (a checkpoint of this node's vault); every node follows it once it runs this version"
                )?,
                None => say!(
                    "the fleet's change log is already authenticated; this node holds its key and is at change {}",
                    store.generation()?
                )?,
            }
        }
        FleetCmd::Status { json } => status(ctx, &fleet, json)?,
        FleetCmd::Remove { node, force } => {
            let age = fleet
                .remove_node(&node, REMOVE_ALIVE, force)
                .map_err(StoreError::from)?;
            say!("removed node {node} (last heartbeat {age:.1}s ago)")?;
        }
    }
    Ok(())
}

/// A node heard from this recently is running: `fleet remove` refuses it without `--force`.
const REMOVE_ALIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// `fleet status`: the fleet's head and each node's position, heartbeat and version, and what
/// stops a node following, if anything; with the store unreachable, [`offline`].
fn status(ctx: &Ctx, fleet: &Fleet, json: bool) -> Result<(), CliError> {
    let status = match fleet.status() {
        Ok(status) => status,
        Err(FleetError::Unavailable(why)) => return offline(ctx, &why, json),
        Err(e) => return Err(StoreError::from(e).into()),
    };
    if json {
        output::json(&json!(status))?;
    } else {
        say!("fleet {} at change {}", status.fleet_id, status.head_seq)?;
        let rows: Vec<_> = status
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.listen.clone(),
                    n.applied_seq.to_string(),
                    n.lag.to_string(),
                    format!("{:.1}s ago", n.heartbeat_age_secs),
                    n.version.clone(),
                ]
            })
            .collect();
        output::table(
            &["NODE", "LISTEN", "APPLIED", "LAG", "HEARTBEAT", "VERSION"],
            &rows,
        );
        for n in &status.nodes {
            if let Some(problem) = &n.problem {
                say!(
                    "node {} stopped following the log: {}",
                    n.name,
                    crate::text::inert(problem)
                )?;
            }
        }
    }
    Ok(())
}

/// `fleet status` while the fleet's store cannot be reached: what this node knows. Its fleet
/// and name, the change it applied (its vault's generation), and, when `serve` runs on this
/// data dir, that serve's own view (`/healthz`): how long since it last reached the store.
fn offline(ctx: &Ctx, why: &str, json: bool) -> Result<(), CliError> {
    let store = Store::open(&ctx.data_dir, ctx.store_options())?;
    let marker = store.fleet_marker()?;
    let applied = store.generation()?;
    let serve = super::session::local_health(ctx);
    let contact = serve
        .as_ref()
        .and_then(|h| h["fleet"]["store_contact_age_secs"].as_f64());
    if json {
        return output::json(&json!({
            "store": "unreachable",
            "error": why,
            "fleet_id": marker.as_ref().map(|m| m.fleet_id.clone()),
            "node": marker.as_ref().map(|m| m.node.clone()),
            "applied_seq": applied,
            "serving": serve.is_some(),
            "store_contact_age_secs": contact,
        }));
    }
    say!("the fleet's store cannot be reached ({why}); what this node knows:")?;
    let (fleet_id, node) = marker.map_or(("-".into(), "-".into()), |m| (m.fleet_id, m.node));
    let contact = match (&serve, contact) {
        (None, _) => "serve not running".to_owned(),
        (Some(_), Some(age)) => format!("{age:.1}s ago"),
        (Some(_), None) => "-".to_owned(),
    };
    output::table(
        &["FLEET", "NODE", "APPLIED", "STORE CONTACT"],
        &[vec![fleet_id, node, applied.to_string(), contact]],
    );
    Ok(())
}

fn sources(ctx: &Ctx, key: RootKeyArgs) -> Result<KeySources, CliError> {
    ctx.key_sources(key.master_key_file, key.passphrase_file)
}

/// Checks the root key against the fleet, then writes the fleet's CA files into a fresh data
/// dir, creates its store and applies the log.
fn join(
    ctx: &Ctx,
    fleet: &Fleet,
    node: &str,
    sources: &KeySources,
) -> Result<(String, u64), CliError> {
    match Store::open(&ctx.data_dir, ctx.store_options()) {
        Err(StoreError::NotInitialised(_)) => {}
        Ok(_) => {
            return Err(CliError::Usage(format!(
                "{} already holds a vault; join with a fresh data dir (or `airlock fleet init` to start a fleet from it)",
                ctx.data_dir.display()
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let (fleet_id, ca_pem, ca_key) = fleet.ca_files().map_err(StoreError::from)?;
    let log_key: LogKey = fleet.join_key(sources, &ctx.data_dir, &fleet_id, &ca_key)?;
    let io = |path: std::path::PathBuf| move |source| VaultError::Io { path, source };
    crate::fsutil::ensure_dir(&ctx.data_dir, 0o700).map_err(io(ctx.data_dir.clone()))?;
    let cert = ctx.data_dir.join(CA_CERT_FILE);
    let key = ctx.data_dir.join(CA_KEY_FILE);
    let written = (|| {
        crate::fsutil::write_atomic(&cert, ca_pem.as_bytes(), 0o644).map_err(io(cert.clone()))?;
        crate::fsutil::write_atomic(&key, &ca_key, 0o600).map_err(io(key.clone()))?;
        let store = Store::create(&ctx.data_dir, ctx.store_options())?;
        Ok::<_, CliError>(fleet.join(&store, &fleet_id, node, &log_key)?)
    })();
    if written.is_err() {
        // A log that does not verify (or a failed write) leaves no half-made node behind.
        for file in [&cert, &key] {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir_all(ctx.data_dir.join(crate::vault::store::ENV_DIR));
    }
    Ok((fleet_id, written?))
}

/// The pid of a `serve` running on `data_dir` (from its runtime file), if one is alive.
fn serving_pid(data_dir: &std::path::Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join(crate::serve::RUNTIME_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = u32::try_from(v["pid"].as_u64()?).ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

/// `--node`, else the host name.
fn node_name(given: Option<String>) -> Result<String, CliError> {
    let name = match given {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .map_err(|source| CliError::Io {
                what: "the host name (give --node)".into(),
                source,
            })?,
    };
    crate::names::agent(&name)
        .map_err(|e| CliError::Usage(e.to_string().replace("agent name", "node name")))?;
    Ok(name)
}
