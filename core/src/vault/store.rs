//! The LMDB environment: opening, named databases, transactions, format and generation.
//!
//! [`Store::read`] hands out a [`Txn`] over a read transaction; [`Store::write`] hands out one
//! over a write transaction and, when the closure succeeds, bumps the generation counter and
//! commits. A failed closure or commit leaves the store as it was (R12). The environment is opened
//! with `NO_TLS` so several read transactions may live on one thread; callers must never keep a
//! transaction across an `.await`. This module knows bytes and records, not management rules
//! (see `vault::ops`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lmdb::{
    Cursor, Database, DatabaseFlags, Environment, EnvironmentFlags, RoTransaction, RwTransaction,
    Transaction, WriteFlags,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::membership::{FleetError, Marker};
use super::records::{self, AuditRecord, RecordError};

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Directory of the LMDB environment inside the data dir.
pub const ENV_DIR: &str = "vault";
/// Default map size: address space, not disk; LMDB files grow as data is written.
pub const DEFAULT_MAP_SIZE_MIB: u64 = 1024;

const META_FORMAT: &[u8] = b"format";
pub(crate) const META_GENERATION: &[u8] = b"generation";
const META_NEXT_ID: &[u8] = b"next_id";
/// Meta keys that belong to this node and never travel to a fleet (`vault::fleet`).
pub(crate) const NODE_META: &[&[u8]] = &[
    META_GENERATION,
    super::membership::META_FLEET,
    super::membership::META_LOG_KEY,
    super::membership::META_LOG_TAG,
];

/// The named databases, in the order their index is written into a fleet's change log.
pub const DB_NAMES: [&str; 9] = [
    "vaults",
    "services",
    "credentials",
    "agents",
    "tokens",
    "proposals",
    "audit",
    "meta",
    "operators",
];

/// Storage failures, each with a stable code ([`StoreError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "storage_full: the vault's disk or LMDB map is full; nothing was written (free space or raise map_size_mib)"
    )]
    Full,
    #[error("storage_io: LMDB {op}: {source}")]
    Lmdb {
        op: &'static str,
        source: lmdb::Error,
    },
    #[error("storage_io: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not_initialised: no vault at {0} (run `airlock init`)")]
    NotInitialised(PathBuf),
    #[error(
        "newer_format: the vault at {path} has format {found}; this airlock reads format {FORMAT_VERSION}. Upgrade airlock"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("record_corrupt: {db}/{key}: {source}")]
    Corrupt {
        db: &'static str,
        key: String,
        source: RecordError,
    },
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Full => "storage_full",
            Self::Lmdb { .. } | Self::Io { .. } => "storage_io",
            Self::NotInitialised(_) => "not_initialised",
            Self::NewerFormat { .. } => "newer_format",
            Self::Corrupt { .. } => "record_corrupt",
            Self::Fleet(e) => e.code(),
        }
    }
}

fn lmdb_err(op: &'static str) -> impl FnOnce(lmdb::Error) -> StoreError {
    move |source| match source {
        // A full map, or a full disk under it (ENOSPC): nothing was written either way.
        lmdb::Error::MapFull | lmdb::Error::Other(28) => StoreError::Full,
        source => StoreError::Lmdb { op, source },
    }
}

/// Options for opening the environment.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    pub map_size_mib: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            map_size_mib: DEFAULT_MAP_SIZE_MIB,
        }
    }
}

/// The named databases, one per record kind.
#[derive(Clone, Copy, Debug)]
pub struct Dbs {
    pub vaults: Database,
    pub services: Database,
    pub credentials: Database,
    pub agents: Database,
    pub tokens: Database,
    pub proposals: Database,
    pub audit: Database,
    pub meta: Database,
    pub operators: Database,
}

impl Dbs {
    fn all(&self) -> [Database; 9] {
        [
            self.vaults,
            self.services,
            self.credentials,
            self.agents,
            self.tokens,
            self.proposals,
            self.audit,
            self.meta,
            self.operators,
        ]
    }

    /// The database at `index` of [`DB_NAMES`].
    pub fn by_index(&self, index: u8) -> Option<Database> {
        self.all().get(usize::from(index)).copied()
    }

    /// The index in [`DB_NAMES`] of `db`.
    pub fn index_of(&self, db: Database) -> Option<u8> {
        self.all()
            .iter()
            .position(|d| d.dbi() == db.dbi())
            .and_then(|i| u8::try_from(i).ok())
    }
}

/// One mutation of a write transaction, as a fleet's change log carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Index in [`DB_NAMES`].
    pub db: u8,
    pub key: Vec<u8>,
    /// `None`: deleted.
    pub value: Option<Vec<u8>>,
}

/// An open vault store.
#[derive(Debug)]
pub struct Store {
    env: Environment,
    dbs: Dbs,
    path: PathBuf,
    /// Stale reader slots freed when this store was opened (row 54).
    pub reclaimed_readers: usize,
    /// The fleet this node's writes go through, once attached ([`Store::attach_fleet`]).
    fleet: Option<Arc<dyn Replicator>>,
}

/// A fleet's change log, as the store sees it: where a fleet node's writes go instead of
/// straight into LMDB (implemented by `fleet::Fleet`). The store knows the log only through
/// this, so it sits below the fleet.
pub trait Replicator: Send + Sync + std::fmt::Debug {
    /// Runs `f` in an LMDB write transaction that already holds every change of the fleet,
    /// appends what it changes to the log and commits both, or neither. An `f` that fails
    /// returns [`WriteError::Aborted`] and nothing is written.
    fn write(&self, store: &Store, marker: &Marker, f: &mut WriteFn<'_>) -> Result<(), WriteError>;
    /// Applies every change of the log after this node's generation; returns the generation
    /// reached.
    fn catch_up(&self, store: &Store) -> Result<u64, StoreError>;
    /// Holds the fleet-wide lock named `name` until the guard is dropped.
    fn lock_named(&self, name: &str) -> Result<Box<dyn std::any::Any + Send>, StoreError>;
}

/// A write's body as a [`Replicator`] runs it (the store's generic closure, type-erased).
pub type WriteFn<'a> = dyn FnMut(&mut Txn<RwTransaction<'_>>) -> Result<(), WriteError> + Send + 'a;

/// Why a [`Replicator::write`] wrote nothing.
#[derive(Debug)]
pub enum WriteError {
    /// The store or the log failed.
    Store(StoreError),
    /// The write's own body failed; the store keeps its error.
    Aborted,
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl Store {
    /// Opens an initialised store under `data_dir`; never creates one.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        let dir = data_dir.join(ENV_DIR);
        if !dir.join("data.mdb").exists() {
            return Err(StoreError::NotInitialised(data_dir.to_owned()));
        }
        let store = Self::open_env(&dir, opts)?;
        match store.read(|t| t.meta_u64(META_FORMAT))? {
            None => Err(StoreError::NotInitialised(data_dir.to_owned())),
            Some(found) if found > u64::from(FORMAT_VERSION) => Err(StoreError::NewerFormat {
                path: data_dir.to_owned(),
                found: found as u32,
            }),
            Some(_) => Ok(store),
        }
    }

    /// Opens or creates the environment for `init`. The store counts as initialised only once
    /// `init`'s transaction (which writes the format) commits.
    pub fn create(data_dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        let dir = data_dir.join(ENV_DIR);
        let modes = crate::fsutil::Modes::of(data_dir);
        let io = |source| StoreError::Io {
            path: dir.clone(),
            source,
        };
        crate::fsutil::ensure_dir(&dir, modes.dir).map_err(io)?;
        let store = Self::open_env(&dir, opts)?;
        crate::fsutil::set_lmdb_modes(&dir, modes.file).map_err(io)?;
        Ok(store)
    }

    fn open_env(dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        let map_size =
            usize::try_from(opts.map_size_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        let env = Environment::new()
            .set_flags(EnvironmentFlags::NO_TLS)
            .set_max_dbs(16)
            .set_max_readers(512)
            .set_map_size(map_size)
            .open_with_permissions(dir, 0o600)
            .map_err(lmdb_err("open"))?;
        let db = |name: &str| {
            env.create_db(Some(name), DatabaseFlags::empty())
                .map_err(lmdb_err("open database"))
        };
        let [
            vaults,
            services,
            credentials,
            agents,
            tokens,
            proposals,
            audit,
            meta,
            operators,
        ] = DB_NAMES.map(db);
        let dbs = Dbs {
            vaults: vaults?,
            services: services?,
            credentials: credentials?,
            agents: agents?,
            tokens: tokens?,
            proposals: proposals?,
            audit: audit?,
            meta: meta?,
            operators: operators?,
        };
        let reclaimed_readers = super::readers::reclaim(&env).map_err(lmdb_err("reader check"))?;
        Ok(Self {
            env,
            dbs,
            path: dir.to_owned(),
            reclaimed_readers,
            fleet: None,
        })
    }

    /// Frees reader slots left by processes killed mid-read (row 54). Needed while this process
    /// keeps the environment open: LMDB only resets the table when the first user opens it.
    pub fn reclaim_readers(&self) -> Result<usize, StoreError> {
        super::readers::reclaim(&self.env).map_err(lmdb_err("reader check"))
    }

    /// The environment directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a read transaction.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&Txn<RoTransaction<'_>>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let txn = self.env.begin_ro_txn().map_err(lmdb_err("begin read"))?;
        let t = Txn {
            txn,
            dbs: self.dbs,
            log: None,
        };
        f(&t)
    }

    /// Runs `f` in a write transaction; on success bumps the generation and commits. `E` lets
    /// callers use their own error type (it must absorb [`StoreError`]). Refused with
    /// `storage_full` when the map is down to its headroom ([`Store::write_reserved`]).
    pub fn write<R: Send, E: From<StoreError> + Send>(
        &self,
        f: impl FnOnce(&mut Txn<RwTransaction<'_>>) -> Result<R, E> + Send,
    ) -> Result<R, E> {
        if !self.above_headroom()? {
            return Err(StoreError::Full.into());
        }
        self.write_reserved(f)
    }

    /// As [`Store::write`], allowed into the headroom: for the small writes that must work on a
    /// full store, revoking an agent or a token (row 76: a full store must not keep a leaked
    /// token working). On a fleet node the write goes through the fleet's log
    /// ([`Replicator::write`]); a node of a fleet with no connection configured refuses
    /// to write (`fleet_unconfigured`) rather than diverge.
    pub fn write_reserved<R: Send, E: From<StoreError> + Send>(
        &self,
        f: impl FnOnce(&mut Txn<RwTransaction<'_>>) -> Result<R, E> + Send,
    ) -> Result<R, E> {
        let Some(marker) = self.fleet_marker()? else {
            let mut t = self.begin_write()?;
            let out = f(&mut t)?;
            let generation = t.meta_u64(META_GENERATION)?.unwrap_or(0) + 1;
            t.put_meta_u64(META_GENERATION, generation)?;
            t.commit()?;
            return Ok(out);
        };
        let fleet = self
            .fleet
            .as_ref()
            .ok_or_else(|| StoreError::from(FleetError::Unconfigured(marker.fleet_id.clone())))?;
        // `f`'s result, or its error, kept here while the fleet runs it type-erased.
        let mut out: Option<Result<R, E>> = None;
        let mut once = Some(f);
        let mut erased = |t: &mut Txn<RwTransaction<'_>>| {
            let f = once.take().ok_or(WriteError::Aborted)?;
            let result = f(t);
            let failed = result.is_err();
            out = Some(result);
            if failed {
                Err(WriteError::Aborted)
            } else {
                Ok(())
            }
        };
        // The PostgreSQL client runs its own runtime, which must not start inside another
        // (the admin process's tokio): the write runs on a thread of its own.
        let written = std::thread::scope(|scope| {
            scope
                .spawn(|| fleet.write(self, &marker, &mut erased))
                .join()
                .unwrap_or_else(|_| {
                    Err(WriteError::Store(StoreError::from(
                        FleetError::Unavailable("the write thread failed".into()),
                    )))
                })
        });
        match (written, out) {
            (Ok(()), Some(Ok(r))) => Ok(r),
            (_, Some(Err(e))) => Err(e),
            (Err(WriteError::Store(e)), _) => Err(e.into()),
            (Ok(()) | Err(WriteError::Aborted), _) => Err(StoreError::from(
                FleetError::Unavailable("the write did not run".into()),
            )
            .into()),
        }
    }

    /// A write transaction; the caller commits it with [`Txn::commit`].
    pub(crate) fn begin_write(&self) -> Result<Txn<RwTransaction<'_>>, StoreError> {
        let txn = self.env.begin_rw_txn().map_err(lmdb_err("begin write"))?;
        Ok(Txn {
            txn,
            dbs: self.dbs,
            log: None,
        })
    }

    /// Makes this store's writes go through `fleet` when the data dir belongs to one.
    pub fn attach_fleet(&mut self, fleet: Arc<dyn Replicator>) {
        self.fleet = Some(fleet);
    }

    /// The attached fleet connection, if any.
    pub fn fleet(&self) -> Option<&dyn Replicator> {
        self.fleet.as_deref()
    }

    /// Which fleet this data dir belongs to, if any.
    pub fn fleet_marker(&self) -> Result<Option<Marker>, StoreError> {
        self.read(|t| t.get(t.dbs().meta, "meta", super::membership::META_FLEET))
    }

    /// Every replicated record, as changes (a fleet's first entry).
    pub fn snapshot(&self) -> Result<Vec<Change>, StoreError> {
        self.read(|t| t.snapshot())
    }

    /// Whether more pages are free (past the last page ever used, or on the free list) than the
    /// headroom only [`Store::write_reserved`] may use: a sixteenth of the map, at most 1 MiB.
    fn above_headroom(&self) -> Result<bool, StoreError> {
        let info = self.env.info().map_err(lmdb_err("info"))?;
        let page = self.env.stat().map_err(lmdb_err("stat"))?.page_size() as usize;
        let free_listed = self.env.freelist().map_err(lmdb_err("freelist"))?;
        let total = info.map_size() / page.max(1);
        let used = (info.last_pgno() + 1).saturating_sub(free_listed);
        let headroom = (total / 16).min((1024 * 1024) / page.max(1));
        Ok(total.saturating_sub(used) >= headroom)
    }

    /// The id of the last write committed to the store by any process: it moves with every
    /// commit, so an unchanged id means nothing was written since it was read. Read from the
    /// map's meta pages without a transaction (no reader slot, no lock, no write), so a worker
    /// can ask per request.
    pub fn last_commit(&self) -> Result<u64, StoreError> {
        let info = self.env.info().map_err(lmdb_err("env info"))?;
        Ok(info.last_txnid() as u64)
    }

    /// The current generation (bumped by every write).
    pub fn generation(&self) -> Result<u64, StoreError> {
        self.read(|t| t.meta_u64(META_GENERATION))
            .map(|g| g.unwrap_or(0))
    }
}

/// A transaction with typed access to the named databases.
#[derive(Debug)]
pub struct Txn<T> {
    txn: T,
    dbs: Dbs,
    /// The replicated mutations so far, when a fleet write records them.
    pub(crate) log: Option<Vec<Change>>,
}

impl<T: Transaction> Txn<T> {
    pub fn dbs(&self) -> Dbs {
        self.dbs
    }

    /// Raw bytes at `key`, if any.
    pub fn get_raw(&self, db: Database, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        match self.txn.get(db, &key) {
            Ok(v) => Ok(Some(v)),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(lmdb_err("get")(e)),
        }
    }

    /// The decoded record at `key`, if any.
    pub fn get<R: DeserializeOwned>(
        &self,
        db: Database,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<R>, StoreError> {
        match self.get_raw(db, key)? {
            None => Ok(None),
            Some(bytes) => records::decode(bytes)
                .map(Some)
                .map_err(|source| corrupt(name, key, source)),
        }
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan<R: DeserializeOwned>(
        &self,
        db: Database,
        name: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, R)>, StoreError> {
        let mut cursor = self.txn.open_ro_cursor(db).map_err(lmdb_err("cursor"))?;
        let mut out = Vec::new();
        let iter = if prefix.is_empty() {
            cursor.iter_start()
        } else {
            cursor.iter_from(prefix)
        };
        for item in iter {
            let (k, v) = item.map_err(lmdb_err("iterate"))?;
            if !k.starts_with(prefix) {
                break;
            }
            let r = records::decode(v).map_err(|source| corrupt(name, k, source))?;
            out.push((k.to_vec(), r));
        }
        Ok(out)
    }

    /// Every replicated record in this transaction's view, as changes (a fleet checkpoint).
    pub fn snapshot(&self) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::new();
        for (index, db) in self.dbs.all().into_iter().enumerate() {
            let mut cursor = self.txn.open_ro_cursor(db).map_err(lmdb_err("cursor"))?;
            for item in cursor.iter_start() {
                let (k, v) = item.map_err(lmdb_err("iterate"))?;
                if db.dbi() == self.dbs.meta.dbi() && NODE_META.contains(&k) {
                    continue;
                }
                out.push(Change {
                    db: index as u8,
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                });
            }
        }
        Ok(out)
    }

    pub fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        Ok(self
            .get_raw(self.dbs.meta, key)?
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes))
    }
}

impl Txn<RwTransaction<'_>> {
    pub fn put<R: Serialize>(
        &mut self,
        db: Database,
        key: &[u8],
        record: &R,
    ) -> Result<(), StoreError> {
        self.put_raw(db, key, &records::encode(record))
    }

    pub fn put_raw(&mut self, db: Database, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.record(db, key, Some(value));
        self.txn
            .put(db, &key, &value, WriteFlags::empty())
            .map_err(lmdb_err("put"))
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&mut self, db: Database, key: &[u8]) -> Result<bool, StoreError> {
        self.record(db, key, None);
        match self.txn.del(db, &key, None) {
            Ok(()) => Ok(true),
            Err(lmdb::Error::NotFound) => Ok(false),
            Err(e) => Err(lmdb_err("delete")(e)),
        }
    }

    fn record(&mut self, db: Database, key: &[u8], value: Option<&[u8]>) {
        let local = db.dbi() == self.dbs.meta.dbi() && NODE_META.contains(&key);
        if let (Some(log), Some(index), false) = (self.log.as_mut(), self.dbs.index_of(db), local) {
            log.push(Change {
                db: index,
                key: key.to_vec(),
                value: value.map(<[u8]>::to_vec),
            });
        }
    }

    /// Applies changes from a fleet's log, unrecorded.
    pub(crate) fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        for c in changes {
            let db = self.dbs.by_index(c.db).ok_or_else(|| {
                StoreError::from(FleetError::Corrupt(format!("unknown database {}", c.db)))
            })?;
            match &c.value {
                Some(v) => self
                    .txn
                    .put(db, &c.key, v, WriteFlags::empty())
                    .map_err(lmdb_err("put"))?,
                None => match self.txn.del(db, &c.key, None) {
                    Ok(()) | Err(lmdb::Error::NotFound) => {}
                    Err(e) => return Err(lmdb_err("delete")(e)),
                },
            }
        }
        Ok(())
    }

    /// Deletes every replicated record (all but [`NODE_META`]), unrecorded: a fleet checkpoint
    /// replaces the vault's whole content.
    pub(crate) fn clear_replicated(&mut self) -> Result<(), StoreError> {
        for db in self.dbs.all() {
            let keys: Vec<Vec<u8>> = {
                let mut cursor = self.txn.open_ro_cursor(db).map_err(lmdb_err("cursor"))?;
                cursor
                    .iter_start()
                    .map(|item| item.map(|(k, _)| k.to_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(lmdb_err("iterate"))?
            };
            for k in keys {
                if db.dbi() == self.dbs.meta.dbi() && NODE_META.contains(&k.as_slice()) {
                    continue;
                }
                self.txn.del(db, &k, None).map_err(lmdb_err("delete"))?;
            }
        }
        Ok(())
    }

    /// Commits the transaction.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().map_err(lmdb_err("commit"))
    }

    pub fn put_meta_u64(&mut self, key: &[u8], value: u64) -> Result<(), StoreError> {
        self.put_raw(self.dbs.meta, key, &value.to_be_bytes())
    }

    /// Marks the store as initialised with this build's format.
    pub(crate) fn put_format(&mut self) -> Result<(), StoreError> {
        self.put_meta_u64(META_FORMAT, u64::from(FORMAT_VERSION))
    }

    /// A fresh id from the store-wide counter (vault ids, audit ids, proposal ids).
    pub fn next_id(&mut self) -> Result<u64, StoreError> {
        let id = self.meta_u64(META_NEXT_ID)?.unwrap_or(0) + 1;
        self.put_meta_u64(META_NEXT_ID, id)?;
        Ok(id)
    }

    /// Appends an audit record in this transaction. `detail` must never hold a value.
    pub fn audit(
        &mut self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let id = self.next_id()?;
        let record = AuditRecord {
            id,
            at: super::now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.to_owned(),
        };
        self.put(self.dbs.audit, &id.to_be_bytes(), &record)
    }
}

fn corrupt(db: &'static str, key: &[u8], source: RecordError) -> StoreError {
    StoreError::Corrupt {
        db,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data plane's per-request token re-check trusts an unchanged `last_commit`: it must
    /// move with every commit (of this or another handle on the same files) and with nothing else.
    #[test]
    fn last_commit_moves_with_every_write_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path(), StoreOptions::default()).unwrap();
        store
            .write::<_, StoreError>(|t| t.put_meta_u64(META_FORMAT, u64::from(FORMAT_VERSION)))
            .unwrap();
        let other = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let first = store.last_commit().unwrap();
        store.generation().unwrap();
        assert_eq!(
            store.last_commit().unwrap(),
            first,
            "a read commits nothing"
        );
        other
            .write::<_, StoreError>(|t| t.put_meta_u64(b"test", 1))
            .unwrap();
        let second = store.last_commit().unwrap();
        assert!(second > first, "{first} -> {second}");
        assert_eq!(other.last_commit().unwrap(), second);
    }
}
