//! The request log: one row per proxied request (time, agent, vault, method, host, path without
//! query, status, bytes, latency, service, error code), never a secret or a query string.
//!
//! Rows go to a separate LMDB environment (`<data-dir>/requests/`), so the high-volume log never
//! touches the vault's generation. Workers hand rows to [`Sink::record`] (a channel send, no I/O on
//! the hot path); one writer thread commits them in one batch every 250 ms and keeps
//! the newest [`RETENTION`] rows. While the last batch write failed, [`Sink::healthy`] is false
//! and the data plane refuses requests that would inject a credential (row 60), so injection never
//! goes unrecorded for longer than one batch interval. The writer sleeps and drains the channel,
//! so sending a row never wakes a thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::Duration;

use lmdb::{
    Cursor, Database, DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags,
};
use serde::{Deserialize, Serialize};

/// Directory of the request-log environment inside the data dir.
pub const DIR: &str = "requests";
/// Rows kept; older ones are deleted by the writer.
pub const RETENTION: u64 = 200_000;
/// How often the writer commits what workers sent.
const BATCH_INTERVAL: Duration = Duration::from_millis(250);
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
    tx: Sender<Row>,
    healthy: Arc<AtomicBool>,
}

impl Sink {
    pub fn record(&self, row: Row) {
        // The writer only stops with the process; a failed send loses nothing that matters then.
        let _ = self.tx.send(row);
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

/// Opens the log and starts its writer thread.
pub fn start(
    data_dir: &Path,
    metrics: Arc<std::sync::Mutex<crate::metrics::RequestMetrics>>,
) -> Result<Sink, LogError> {
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
    rx: Receiver<Row>,
    healthy: Arc<AtomicBool>,
    metrics: Arc<std::sync::Mutex<crate::metrics::RequestMetrics>>,
) {
    let mut next = last_seq(&env, db).map_or(1, |s| s + 1);
    let mut batch = Vec::new();
    loop {
        // Sleep, then drain: senders never wake this thread (a wake-up per request would cost
        // every request a futex call and a context switch).
        std::thread::sleep(BATCH_INTERVAL);
        let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match rx.try_recv() {
                Ok(row) => {
                    m.observe(&row);
                    batch.push(row);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = write_batch(&env, db, next, &batch);
                    return;
                }
            }
        }
        drop(m);
        if batch.is_empty() {
            continue;
        }
        match write_batch(&env, db, next, &batch) {
            Ok(()) => {
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
                metrics
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .dropped_log_rows += excess as u64;
            }
        }
    }
}

fn write_batch(
    env: &Environment,
    db: Database,
    first: u64,
    rows: &[Row],
) -> Result<(), lmdb::Error> {
    let mut txn = env.begin_rw_txn()?;
    for (i, row) in rows.iter().enumerate() {
        let value = serde_json::to_vec(row).unwrap_or_default();
        txn.put(
            db,
            &(first + i as u64).to_be_bytes(),
            &value,
            WriteFlags::APPEND,
        )?;
    }
    let newest = first + rows.len() as u64 - 1;
    if newest > RETENTION {
        let cutoff = newest - RETENTION;
        let old: Vec<Vec<u8>> = {
            let mut cursor = txn.open_ro_cursor(db)?;
            cursor
                .iter_start()
                .map_while(Result::ok)
                .take_while(|(k, _)| {
                    <[u8; 8]>::try_from(*k)
                        .map(u64::from_be_bytes)
                        .is_ok_and(|s| s <= cutoff)
                })
                .map(|(k, _)| k.to_vec())
                .collect()
        };
        for k in old {
            txn.del(db, &k, None)?;
        }
    }
    txn.commit()
}

fn last_seq(env: &Environment, db: Database) -> Option<u64> {
    let txn = env.begin_ro_txn().ok()?;
    let cursor = txn.open_ro_cursor(db).ok()?;
    let (k, _) = cursor.get(None, None, MDB_LAST).ok()?;
    k.and_then(|k| <[u8; 8]>::try_from(k).ok())
        .map(u64::from_be_bytes)
}

/// LMDB's `MDB_LAST` cursor op (position at the last key), as lmdb-rkv-sys defines it.
const MDB_LAST: u32 = 6;

/// Rows with a sequence number above `after`, optionally for one vault, oldest first.
pub fn read(data_dir: &Path, vault: Option<&str>, after: u64) -> Result<Vec<(u64, Row)>, LogError> {
    let path = data_dir.join(DIR);
    if !path.join("data.mdb").exists() {
        return Ok(Vec::new());
    }
    let (env, db) = open_env(data_dir)?;
    let err = |source| LogError::Lmdb {
        path: path.clone(),
        source,
    };
    let txn = env.begin_ro_txn().map_err(err)?;
    let mut cursor = txn.open_ro_cursor(db).map_err(err)?;
    let mut out = Vec::new();
    for item in cursor.iter_from((after + 1).to_be_bytes()) {
        let (k, v) = item.map_err(err)?;
        let Ok(seq) = <[u8; 8]>::try_from(k).map(u64::from_be_bytes) else {
            continue;
        };
        let Ok(row) = serde_json::from_slice::<Row>(v) else {
            continue;
        };
        if vault.is_none_or(|name| row.vault == name) {
            out.push((seq, row));
        }
    }
    Ok(out)
}
