//! The request log: one row per proxied request (time, agent, vault, method, host, path without
//! query, status, bytes, latency, service, error code), never a secret or a query string.
//!
//! Rows go to a separate LMDB environment (`<data-dir>/requests/`), so the high-volume log never
//! touches the vault's generation. Workers hand rows to [`Sink::record_all`] in batches (one
//! channel send per batch, no I/O on the hot path); one writer thread commits them in one batch
//! every [`BATCH_INTERVAL`] and keeps about the newest [`RETENTION`] rows, deleting the oldest
//! first but never a vault's newest [`VAULT_FLOOR`]: another vault's traffic cannot evict them
//! (row 73). While the last batch write failed, [`Sink::healthy`] is false and the data plane
//! refuses requests that would inject a credential (row 60), so injection never goes unrecorded
//! for longer than one batch interval plus the data plane's hand-over delay (50 ms). The writer
//! sleeps and drains the channel, so sending never wakes a thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::Duration;

use lmdb::{
    Cursor, Database, DatabaseFlags, Environment, EnvironmentFlags, RoCursor, Transaction,
    WriteFlags,
};
use serde::{Deserialize, Serialize};

/// Directory of the request-log environment inside the data dir.
pub const DIR: &str = "requests";
/// Rows kept; older ones are deleted by the writer (beyond each vault's floor).
pub const RETENTION: u64 = 200_000;
/// Each vault's newest rows, kept whatever other vaults log. With many vaults the log holds at
/// most the larger of [`RETENTION`] and vaults × this.
pub const VAULT_FLOOR: u64 = 10_000;

/// What the writer keeps: about `total` rows, and each vault's newest `floor` whatever.
#[derive(Clone, Copy, Debug)]
struct Retention {
    total: u64,
    floor: u64,
}

const KEEP: Retention = Retention {
    total: RETENTION,
    floor: VAULT_FLOOR,
};
/// How often the writer commits what workers sent.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Rows kept in memory while writes fail.
const MAX_PENDING: usize = 65_536;

/// One proxied request.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub agent: Option<String>,
    pub vault: String,
    pub method: String,
    pub host: String,
    /// The path without its query.
    pub path: String,
    pub status: u16,
    /// Response body bytes sent to the agent.
    pub bytes: u64,
    pub latency_us: u64,
    pub service: Option<String>,
    pub error: Option<String>,
    /// The request rule that decided it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The agent's address: the connection's, or behind a balancer of `proxy_protocol_from`
    /// the one its PROXY header named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<std::net::IpAddr>,
}

/// Failures opening or reading the request log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("request log {path}: {source}")]
    Lmdb { path: PathBuf, source: lmdb::Error },
    #[error("request log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn open_env(data_dir: &Path) -> Result<(Environment, Database), LogError> {
    let path = data_dir.join(DIR);
    let modes = crate::fsutil::Modes::of(data_dir);
    let io = |source| LogError::Io {
        path: path.clone(),
        source,
    };
    let created = crate::fsutil::ensure_dir(&path, modes.dir).map_err(io)?;
    let err = |source| LogError::Lmdb {
        path: path.clone(),
        source,
    };
    let env = Environment::new()
        .set_flags(EnvironmentFlags::NO_TLS)
        .set_max_dbs(2)
        .set_map_size(512 * 1024 * 1024)
        .open_with_permissions(&path, modes.file)
        .map_err(err)?;
    if created {
        crate::fsutil::set_lmdb_modes(&path, modes.file).map_err(io)?;
    }
    let db = env
        .create_db(Some("requests"), DatabaseFlags::empty())
        .map_err(err)?;
    Ok((env, db))
}

/// The workers' side: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: Sender<Vec<Row>>,
    healthy: Arc<AtomicBool>,
}

impl Sink {
    pub fn record(&self, row: Row) {
        self.record_all(vec![row]);
    }

    /// Hands a batch of rows to the writer: one channel send, however many rows.
    pub fn record_all(&self, rows: Vec<Row>) {
        // The writer only stops with the process; a failed send loses nothing that matters then.
        let _ = self.tx.send(rows);
    }

    /// False while the last batch write failed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// A sink whose rows go nowhere (tests of other parts).
    pub fn discard() -> Self {
        let (tx, _) = channel();
        Self {
            tx,
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// Told about every row the writer takes, and about rows it drops (the metrics listen).
pub trait Observe: Send + 'static {
    fn row(&mut self, row: &Row);
    fn dropped(&mut self, rows: u64);
}

/// Opens the log and starts its writer thread.
pub fn start(data_dir: &Path, metrics: impl Observe) -> Result<Sink, LogError> {
    let (env, db) = open_env(data_dir)?;
    let (tx, rx) = channel();
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    std::thread::Builder::new()
        .name("airlock-request-log".into())
        .spawn(move || writer(env, db, rx, flag, metrics))
        .map_err(|source| LogError::Io {
            path: data_dir.join(DIR),
            source,
        })?;
    Ok(Sink { tx, healthy })
}

fn writer(
    env: Environment,
    db: Database,
    rx: Receiver<Vec<Row>>,
    healthy: Arc<AtomicBool>,
    mut metrics: impl Observe,
) {
    let mut next = last_seq(&env, db).map_or(1, |s| s + 1);
    let mut counts = count_by_vault(&env, db);
    let mut batch = Vec::new();
    loop {
        // Sleep, then drain: senders never wake this thread (a wake-up per request would cost
        // every request a futex call and a context switch).
        std::thread::sleep(BATCH_INTERVAL);
        loop {
            match rx.try_recv() {
                Ok(rows) => {
                    rows.iter().for_each(|row| metrics.row(row));
                    batch.extend(rows);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = write_batch(&env, db, next, &batch, &counts, KEEP);
                    return;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        match write_batch(&env, db, next, &batch, &counts, KEEP) {
            Ok(after) => {
                counts = after;
                next += batch.len() as u64;
                batch.clear();
                healthy.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                // Keep the newest rows and retry next interval; refuse injection meanwhile.
                healthy.store(false, Ordering::Relaxed);
                tracing::error!(
                    "request log write failed: {e}; injecting requests are refused until it recovers"
                );
                let excess = batch.len().saturating_sub(MAX_PENDING);
                batch.drain(..excess);
                metrics.dropped(excess as u64);
            }
        }
    }
}

/// Just the vault of a stored row.
#[derive(Deserialize)]
struct VaultOf {
    vault: String,
}

/// Rows per vault, counted once when the writer starts.
fn count_by_vault(env: &Environment, db: Database) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    let Ok(txn) = env.begin_ro_txn() else {
        return counts;
    };
    let Ok(mut cursor) = txn.open_ro_cursor(db) else {
        return counts;
    };
    for (_, v) in cursor.iter_start().map_while(Result::ok) {
        if let Ok(r) = serde_json::from_slice::<VaultOf>(v) {
            *counts.entry(r.vault).or_default() += 1;
        }
    }
    counts
}

/// Appends `rows` from sequence `first`, then deletes the oldest rows while more than
/// `keep.total` are kept, skipping those of vaults down to `keep.floor`. Returns the row counts
/// per vault after the commit (`counts` are those before).
fn write_batch(
    env: &Environment,
    db: Database,
    first: u64,
    rows: &[Row],
    counts: &HashMap<String, u64>,
    keep: Retention,
) -> Result<HashMap<String, u64>, lmdb::Error> {
    let mut counts = counts.clone();
    let mut txn = env.begin_rw_txn()?;
    for (i, row) in rows.iter().enumerate() {
        let value = serde_json::to_vec(row).unwrap_or_default();
        txn.put(
            db,
            &(first + i as u64).to_be_bytes(),
            &value,
            WriteFlags::APPEND,
        )?;
        *counts.entry(row.vault.clone()).or_default() += 1;
    }
    let mut total: u64 = counts.values().sum();
    if total > keep.total {
        let mut evict = Vec::new();
        {
            let mut cursor = txn.open_ro_cursor(db)?;
            for (k, v) in cursor.iter_start().map_while(Result::ok) {
                if total <= keep.total {
                    break;
                }
                let vault = serde_json::from_slice::<VaultOf>(v).map_or(String::new(), |r| r.vault);
                let n = counts.entry(vault).or_default();
                if *n > keep.floor {
                    *n -= 1;
                    total -= 1;
                    evict.push(k.to_vec());
                }
            }
        }
        for k in evict {
            txn.del(db, &k, None)?;
        }
    }
    txn.commit()?;
    Ok(counts)
}

fn last_seq(env: &Environment, db: Database) -> Option<u64> {
    let txn = env.begin_ro_txn().ok()?;
    let cursor = txn.open_ro_cursor(db).ok()?;
    let (k, _) = cursor.get(None, None, MDB_LAST).ok()?;
    k.and_then(seq_of)
}

/// LMDB's `MDB_LAST` cursor op (position at the last key), as lmdb-rkv-sys defines it.
const MDB_LAST: u32 = 6;
/// LMDB's `MDB_FIRST` cursor op.
const MDB_FIRST: u32 = 0;
/// LMDB's `MDB_PREV` cursor op (the key before the cursor's).
const MDB_PREV: u32 = 12;

/// What the request-log views filter on; every part optional, all must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub vault: Option<String>,
    pub service: Option<String>,
    pub agent: Option<String>,
    /// The status class: 2 for 2xx ... 5 for 5xx; 0 for requests that got no status (aborted).
    pub class: Option<u16>,
    pub error: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<u64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: Option<u64>,
    /// One status exactly (`class` is the coarser choice).
    pub status: Option<u16>,
}

impl Filter {
    pub fn admits(&self, r: &Row) -> bool {
        let is = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        is(&self.vault, Some(&r.vault))
            && is(&self.service, r.service.as_deref())
            && is(&self.agent, r.agent.as_deref())
            && is(&self.error, r.error.as_deref())
            && self.class.is_none_or(|c| r.status / 100 == c)
            && self.status.is_none_or(|s| r.status == s)
            && self.since_ms.is_none_or(|t| r.at_ms >= t)
            && self.until_ms.is_none_or(|t| r.at_ms < t)
    }
}

/// The newest rows `filter` admits, newest first, at most `limit` of them (0: no limit). Reads
/// from the end of the log backwards and stops at `limit`, or a minute before `filter.since_ms`
/// (rows are appended in about time order: one batch mixes the rows of several workers).
pub fn newest(data_dir: &Path, filter: &Filter, limit: usize) -> Result<Vec<(u64, Row)>, LogError> {
    with_cursor(data_dir, Vec::new(), |cursor, err| {
        let mut out = Vec::new();
        let mut op = MDB_LAST;
        while limit == 0 || out.len() < limit {
            let (k, v) = match cursor.get(None, None, op) {
                Ok(kv) => kv,
                Err(lmdb::Error::NotFound) => break,
                Err(e) => return Err(err(e)),
            };
            op = MDB_PREV;
            let Some((seq, row)) = k.and_then(|k| decode(k, v)) else {
                continue;
            };
            if filter
                .since_ms
                .is_some_and(|t| row.at_ms.saturating_add(60_000) < t)
            {
                break;
            }
            if filter.admits(&row) {
                out.push((seq, row));
            }
        }
        Ok(out)
    })
}

/// Runs `f` on a read cursor over the log in `data_dir`, with the error mapping for its path;
/// `empty` when there is no log yet.
fn with_cursor<T>(
    data_dir: &Path,
    empty: T,
    f: impl FnOnce(&mut RoCursor<'_>, &dyn Fn(lmdb::Error) -> LogError) -> Result<T, LogError>,
) -> Result<T, LogError> {
    let path = data_dir.join(DIR);
    if !path.join("data.mdb").exists() {
        return Ok(empty);
    }
    let (env, db) = open_env(data_dir)?;
    let err = |source| LogError::Lmdb {
        path: path.clone(),
        source,
    };
    let txn = env.begin_ro_txn().map_err(err)?;
    let mut cursor = txn.open_ro_cursor(db).map_err(err)?;
    f(&mut cursor, &err)
}

/// A stored row and its sequence number; `None` for a key or value that does not decode.
fn decode(k: &[u8], v: &[u8]) -> Option<(u64, Row)> {
    Some((seq_of(k)?, serde_json::from_slice(v).ok()?))
}

/// The sequence number a key holds (8 bytes, big-endian).
fn seq_of(k: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(k).map(u64::from_be_bytes).ok()
}

/// The oldest sequence number the log holds (rows below it were deleted by retention).
pub fn first_seq(data_dir: &Path) -> Result<Option<u64>, LogError> {
    with_cursor(data_dir, None, |cursor, _| {
        Ok(match cursor.get(None, None, MDB_FIRST) {
            Ok((k, _)) => k.and_then(seq_of),
            Err(_) => None,
        })
    })
}

/// A host an agent tried and was refused for want of a service (`no_service`, or
/// `plaintext_refused` for plain HTTP to a TLS-only service), from the request log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostTried {
    pub vault: String,
    pub host: String,
    pub tries: u64,
    /// Unix time in milliseconds of the latest try.
    pub last_ms: u64,
    /// Who tried, sorted.
    pub agents: Vec<String>,
}

/// The refused hosts in `rows`, per vault, most recently tried first.
pub fn hosts_tried(rows: &[(u64, Row)]) -> Vec<HostTried> {
    let mut by: HashMap<(&str, &str), HostTried> = HashMap::new();
    for (_, r) in rows {
        if !matches!(r.error.as_deref(), Some("no_service" | "plaintext_refused")) {
            continue;
        }
        let t = by
            .entry((r.vault.as_str(), r.host.as_str()))
            .or_insert_with(|| HostTried {
                vault: r.vault.clone(),
                host: r.host.clone(),
                tries: 0,
                last_ms: 0,
                agents: Vec::new(),
            });
        t.tries += 1;
        t.last_ms = t.last_ms.max(r.at_ms);
        if let Some(a) = &r.agent
            && !t.agents.contains(a)
        {
            t.agents.push(a.clone());
        }
    }
    let mut out: Vec<HostTried> = by.into_values().collect();
    for t in &mut out {
        t.agents.sort();
    }
    out.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then_with(|| a.host.cmp(&b.host)));
    out
}

/// Rows with a sequence number above `after`, optionally for one vault, oldest first.
pub fn read(data_dir: &Path, vault: Option<&str>, after: u64) -> Result<Vec<(u64, Row)>, LogError> {
    with_cursor(data_dir, Vec::new(), |cursor, err| {
        let mut out = Vec::new();
        for item in cursor.iter_from((after + 1).to_be_bytes()) {
            let (k, v) = item.map_err(err)?;
            let Some((seq, row)) = decode(k, v) else {
                continue;
            };
            if vault.is_none_or(|name| row.vault == name) {
                out.push((seq, row));
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review B6 (row 73): a flood of one vault's rows never evicts another vault's newest
    /// rows below its floor; the flooding vault's oldest go first.
    #[test]
    fn hosts_tried_groups_refusals_per_vault_and_host() {
        let row = |vault: &str, host: &str, at_ms: u64, agent: &str, error: Option<&str>| {
            let r = Row {
                at_ms,
                vault: vault.into(),
                host: host.into(),
                agent: Some(agent.into()),
                error: error.map(str::to_owned),
                ..Row::default()
            };
            (at_ms, r)
        };
        let rows = [
            row("v", "a.example", 1, "bot", Some("no_service")),
            row("v", "a.example", 5, "bot2", Some("no_service")),
            row("v", "b.example", 3, "bot", Some("plaintext_refused")),
            row("w", "a.example", 2, "bot", Some("no_service")),
            row("v", "api.ok", 9, "bot", None),
            row("v", "c.example", 9, "bot", Some("upstream_timeout")),
        ];
        let got = hosts_tried(&rows);
        let brief: Vec<_> = got
            .iter()
            .map(|t| (t.vault.as_str(), t.host.as_str(), t.tries, t.last_ms))
            .collect();
        assert_eq!(
            brief,
            [
                ("v", "a.example", 2, 5),
                ("v", "b.example", 1, 3),
                ("w", "a.example", 1, 2)
            ]
        );
        assert_eq!(got[0].agents, ["bot", "bot2"]);
    }

    #[test]
    fn row73_retention_keeps_each_vaults_floor() {
        let dir = tempfile::tempdir().unwrap();
        let (env, db) = open_env(dir.path()).unwrap();
        let keep = Retention {
            total: 50,
            floor: 10,
        };
        let row = |vault: &str, path: &str| Row {
            vault: vault.into(),
            path: path.into(),
            ..Row::default()
        };
        let quiet: Vec<Row> = (0..15).map(|i| row("quiet", &format!("/q{i}"))).collect();
        let mut counts = write_batch(&env, db, 1, &quiet, &HashMap::new(), keep).unwrap();
        let mut next = 16;
        for _ in 0..10 {
            let flood: Vec<Row> = (0..40).map(|i| row("loud", &format!("/l{i}"))).collect();
            counts = write_batch(&env, db, next, &flood, &counts, keep).unwrap();
            next += 40;
        }
        drop(env);
        let all = read(dir.path(), None, 0).unwrap();
        let quiet_left: Vec<_> = all.iter().filter(|(_, r)| r.vault == "quiet").collect();
        assert_eq!(quiet_left.len(), 10, "the quiet vault keeps its floor");
        assert_eq!(quiet_left.last().unwrap().1.path, "/q14", "its newest rows");
        assert_eq!(all.len(), 50);
        assert_eq!(counts["loud"], 40);
        let (env, db) = open_env(dir.path()).unwrap();
        assert_eq!(
            count_by_vault(&env, db)["quiet"],
            10,
            "counted again on restart"
        );
    }
}
