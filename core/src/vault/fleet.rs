//! Fleet mode: several nodes, one vault, through PostgreSQL (design in docs/src/fleet.md, "Running a
//! fleet").
//!
//! PostgreSQL holds an ordered log of vault changes (`airlock_changes`: each row a batch of
//! `(database, key, value | delete)` as one LMDB write transaction recorded it), the fleet's
//! identity and the files every node needs (`airlock_fleet`: the CA certificate and the CA key as
//! wrapped by the root key), and a heartbeat per node (`airlock_nodes`). Each node keeps its own
//! LMDB vault as the state the data plane reads; its generation is the sequence number of the
//! last change it applied, the same number on every node.
//!
//! Every write on a fleet node ([`Fleet::write`]) takes a fleet-wide advisory lock in a
//! PostgreSQL transaction, applies any changes this node has not seen, runs the operation in one
//! LMDB write transaction while recording what it changes, appends the batch, notifies, commits
//! PostgreSQL and then LMDB. PostgreSQL failing means nothing is written anywhere; LMDB failing
//! after PostgreSQL committed is repaired by the next catch-up (applying a change is idempotent).
//! Followers ([`Fleet::catch_up`]) apply new changes in order. PostgreSQL never holds a
//! plaintext secret or anything that opens one: credentials are sealed to the vault's key, whose
//! secret half (like the CA key) is wrapped by the root key, which travels out of band.
//!
//! Nor can PostgreSQL write access alone change a vault (rows 101 and 102): every row carries an
//! HMAC-SHA256 tag ([`LogKey`], derived from the root key for this fleet) over its sequence
//! number, its node, the previous row's tag and its batch, so a row cannot be forged, altered,
//! reordered, dropped or replayed without a node noticing. A node keeps the log key and the tag of
//! the last row it applied in its own meta (never replicated); it applies a row only when the tag
//! verifies against that position, and otherwise applies nothing of it ([`FleetError::Rejected`])
//! and goes on serving what it has. The chain starts at a checkpoint row (a whole snapshot that
//! replaces the vault's content): `fleet init` writes the first, `fleet upgrade` one for a log
//! written before rows were authenticated (untagged rows before it are skipped). The key is
//! stored only after the root key was shown to open the vault, so a node with the wrong root key
//! can neither join nor write.
//!
//! This module does blocking I/O (the `postgres` client); callers keep it off worker threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ring::{hkdf, hmac};
use serde::Serialize;
use zeroize::Zeroizing;

use super::keys::{KeySources, RootKey};
pub use super::membership::{FleetError, META_FLEET, META_LOG_KEY, META_LOG_TAG, Marker};
use super::records::KeyHeader;
use super::store::{
    Change, DB_NAMES, META_GENERATION, Replicator, Store, StoreError, Txn, WriteError, WriteFn,
};
use crate::secret::Secret;

/// A row's tag.
type Tag = [u8; 32];
/// The "previous tag" of a checkpoint, where a chain starts.
const GENESIS: Tag = [0; 32];
/// A batch's first byte: changes to apply, or a checkpoint that replaces the vault's content.
const BATCH_CHANGES: u8 = 1;
const BATCH_CHECKPOINT: u8 = 2;
/// The advisory lock every fleet write holds (`airlock` in ASCII).
const LOCK_KEY: i64 = 0x0061_6972_6c6f_636b;
/// The channel writers notify and followers listen on.
pub const CHANNEL: &str = "airlock_changes";
/// How long a connection attempt or a statement may take.
const TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS airlock_fleet (
    id integer PRIMARY KEY CHECK (id = 1),
    fleet_id text NOT NULL,
    ca_pem text NOT NULL,
    ca_key_wrapped bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS airlock_changes (
    seq bigint PRIMARY KEY,
    node text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    batch bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS airlock_nodes (
    name text PRIMARY KEY,
    listen text NOT NULL,
    applied_seq bigint NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    version text NOT NULL
);
ALTER TABLE airlock_changes ADD COLUMN IF NOT EXISTS tag bytea;
ALTER TABLE airlock_nodes ADD COLUMN IF NOT EXISTS problem text;";

/// What a node of a fleet written before rows carried tags is told.
const UPGRADE: &str = "the fleet's change log is not authenticated yet (written by an older airlock): run `airlock fleet upgrade` once on a node with the root key";

impl From<postgres::Error> for FleetError {
    fn from(e: postgres::Error) -> Self {
        // The driver's message names the cause (connection refused, SQL error) and never a
        // password.
        let mut text = e.to_string();
        if let Some(db) = e.as_db_error() {
            // A schema from before tags: the `tag` column is missing.
            if *db.code() == postgres::error::SqlState::UNDEFINED_COLUMN {
                return Self::UpgradeNeeded(UPGRADE.into());
            }
            text = format!("{}: {}", db.code().code(), db.message());
        }
        Self::Unavailable(text)
    }
}

/// The key that authenticates a fleet's change log: HKDF-SHA256 of the root key, salted with the
/// fleet's id. Whoever holds it can append rows every node applies, so it lives only in a node's
/// own meta, written once the root key was shown to open the vault. Never printed.
pub struct LogKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogKey(<redacted>)")
    }
}

impl LogKey {
    pub fn derive(root: &RootKey, fleet_id: &str) -> Self {
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let mut key = Zeroizing::new([0u8; 32]);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, fleet_id.as_bytes()).extract(root.as_bytes());
        // Expanding 32 bytes from SHA-256 cannot fail (the limit is 255 blocks).
        if let Ok(okm) = prk.expand(&[b"airlock/fleet-log/v1".as_slice()], Len32) {
            let _ = okm.fill(key.as_mut());
        }
        Self(key)
    }

    /// The key this node stored, if any.
    fn stored<T: lmdb::Transaction>(t: &Txn<T>) -> Result<Option<Self>, StoreError> {
        Ok(t.get_raw(t.dbs().meta, META_LOG_KEY)?
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(|b| Self(Zeroizing::new(b))))
    }

    /// The tag of a row: its sequence number, node, the previous row's tag and its batch.
    fn tag(&self, seq: u64, node: &str, prev: &Tag, batch: &[u8]) -> Tag {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.0.as_ref());
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(b"airlock/fleet-change/v1\0");
        ctx.update(&seq.to_be_bytes());
        ctx.update(&u64::try_from(node.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(node.as_bytes());
        ctx.update(prev);
        ctx.update(batch);
        let mut out = GENESIS;
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether `row` carries the tag this key gives it after `prev` (constant time).
    fn verifies(&self, row: &Row, prev: &Tag) -> bool {
        let expected = self.tag(row.seq, &row.node, prev, &row.batch);
        row.tag
            .as_deref()
            .is_some_and(|t| subtle::ConstantTimeEq::ct_eq(t, &expected[..]).into())
    }
}

/// One row of the change log.
#[derive(Debug)]
struct Row {
    seq: u64,
    node: String,
    batch: Vec<u8>,
    /// `None` in a log written before rows were authenticated.
    tag: Option<Vec<u8>>,
}

impl Row {
    fn from_pg(r: &postgres::Row) -> Self {
        Self {
            seq: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
            node: r.get(1),
            batch: r.get(2),
            tag: r.get(3),
        }
    }
}

/// How to reach the fleet's PostgreSQL.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `postgresql://user@host:port/db?sslmode=require` (libpq URL or key=value form). A password
    /// in it works but belongs in `password` instead.
    pub url: String,
    pub password: Option<Secret>,
    /// Extra CA file to verify PostgreSQL's certificate with (system roots otherwise).
    pub ca_file: Option<PathBuf>,
    /// This node's proxy address, shown by `fleet status`.
    pub listen: String,
}

/// A fleet connection: settings plus one cached client for writes.
#[derive(Clone, Debug)]
pub struct Fleet {
    settings: Arc<Settings>,
    client: Arc<Mutex<Option<ClientBox>>>,
}

/// A `postgres::Client` (which is not `Debug`). It owns a small tokio runtime, which must not be
/// dropped inside another runtime (the admin process's): it is dropped on a thread of its own.
struct ClientBox(Option<postgres::Client>);

impl ClientBox {
    fn new(client: postgres::Client) -> Self {
        Self(Some(client))
    }
}

impl Drop for ClientBox {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

impl std::fmt::Debug for ClientBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("postgres::Client")
    }
}

/// How the store reaches the log (see [`Replicator`]).
impl Replicator for Fleet {
    fn write(&self, store: &Store, marker: &Marker, f: &mut WriteFn<'_>) -> Result<(), WriteError> {
        Fleet::write(self, store, marker, |t| f(t))
    }

    fn catch_up(&self, store: &Store) -> Result<u64, StoreError> {
        Fleet::catch_up(self, store)
    }

    fn lock_named(&self, name: &str) -> Result<Box<dyn std::any::Any + Send>, StoreError> {
        Ok(Box::new(Fleet::lock_named(self, name)?))
    }
}

/// A held [`Fleet::lock_named`]; the lock goes with the connection when dropped.
#[derive(Debug)]
pub struct NamedLock {
    _session: ClientBox,
}

/// One node as `fleet status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub listen: String,
    pub applied_seq: u64,
    pub lag: u64,
    pub heartbeat_age_secs: f64,
    pub version: String,
    /// What stops the node following the log (a row that does not verify), as it reported.
    pub problem: Option<String>,
}

/// What `fleet status` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub fleet_id: String,
    pub head_seq: u64,
    pub nodes: Vec<NodeStatus>,
}

impl Fleet {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
            client: Arc::new(Mutex::new(None)),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Sets the proxy address this node reports (known once serve has bound it).
    pub fn set_listen(&mut self, listen: String) {
        Arc::make_mut(&mut self.settings).listen = listen;
    }

    /// A new client (the follower keeps its own for `LISTEN`).
    pub fn connect(&self) -> Result<postgres::Client, FleetError> {
        let mut config: postgres::Config = self
            .settings
            .url
            .parse()
            .map_err(|e: postgres::Error| FleetError::Unavailable(format!("store_url: {e}")))?;
        if let Some(p) = &self.settings.password {
            config.password(p.expose());
        }
        config.connect_timeout(TIMEOUT);
        config.application_name("airlock");
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            crate::tls::ring_client_config(self.settings.ca_file.as_deref().as_slice())
                .map_err(FleetError::Unavailable)?,
        );
        let mut client = config.connect(tls)?;
        client.batch_execute(&format!("SET statement_timeout = {}", TIMEOUT.as_millis()))?;
        Ok(client)
    }

    /// The cached client, connected first when there is none or it closed.
    fn cached<'s>(
        &self,
        slot: &'s mut Option<ClientBox>,
    ) -> Result<&'s mut postgres::Client, FleetError> {
        let open = slot.as_ref().and_then(|c| c.0.as_ref());
        if open.is_none_or(postgres::Client::is_closed) {
            *slot = Some(ClientBox::new(self.connect()?));
        }
        slot.as_mut()
            .and_then(|c| c.0.as_mut())
            .ok_or_else(|| FleetError::Unavailable("no connection".into()))
    }

    /// Runs `f` with the cached client; a failed call drops the client so the next one
    /// reconnects.
    fn with_client<R>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, FleetError>,
    ) -> Result<R, FleetError> {
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(self.cached(&mut slot)?);
        if matches!(out, Err(FleetError::Unavailable(_))) {
            *slot = None;
        }
        out
    }

    /// One fleet write: see the module doc. `f` runs in an LMDB write transaction that already
    /// holds every change of the fleet; what it changes is appended to the log.
    pub fn write<R, E: From<StoreError>>(
        &self,
        store: &Store,
        marker: &Marker,
        f: impl FnOnce(&mut Txn<lmdb::RwTransaction<'_>>) -> Result<R, E>,
    ) -> Result<R, E> {
        let fleet_err = |e: FleetError| E::from(StoreError::from(e));
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        let client = self.cached(&mut slot).map_err(fleet_err)?;
        let result = write_locked(client, store, marker, f);
        if let Err(Failed::Fleet(FleetError::Unavailable(_))) = &result {
            *slot = None;
        }
        result.map_err(|e| match e {
            Failed::Fleet(e) => fleet_err(e),
            Failed::Op(e) => e,
        })
    }

    /// Applies every change after this node's generation, in order, in one LMDB transaction.
    /// Returns the generation reached.
    pub fn catch_up(&self, store: &Store) -> Result<u64, StoreError> {
        let after = store.generation()?;
        let (head, rows) = self.with_client(|c| log_after(c, after))?;
        apply_rows(store, head, &rows)
    }

    /// As [`Fleet::catch_up`] with a caller's client (the follower's).
    pub fn catch_up_with(client: &mut postgres::Client, store: &Store) -> Result<u64, StoreError> {
        let (head, rows) = log_after(client, store.generation()?)?;
        apply_rows(store, head, &rows)
    }

    /// Holds the fleet-wide lock named `name` until the returned guard is dropped (a session
    /// advisory lock on a connection of its own), waiting up to 30 s for another node to let
    /// go. Used so that one node at a time renews an OAuth credential.
    pub fn lock_named(&self, name: &str) -> Result<NamedLock, FleetError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest.as_ref()[..8]);
        let key = i64::from_be_bytes(key);
        let mut client = self.connect()?;
        client.batch_execute("SET statement_timeout = 30000")?;
        client.execute("SELECT pg_advisory_lock($1)", &[&key])?;
        Ok(NamedLock {
            _session: ClientBox::new(client),
        })
    }

    /// Records this node's heartbeat, applied position and what stops it following, if anything.
    pub fn heartbeat(
        &self,
        client: &mut postgres::Client,
        node: &str,
        applied: u64,
        problem: Option<&str>,
    ) -> Result<(), FleetError> {
        client.execute(
            "INSERT INTO airlock_nodes (name, listen, applied_seq, heartbeat_at, version, problem)
             VALUES ($1, $2, $3, now(), $4, $5)
             ON CONFLICT (name) DO UPDATE SET listen = $2, applied_seq = $3,
                 heartbeat_at = now(), version = $4, problem = $5",
            &[
                &node,
                &self.settings.listen,
                &seq_i64(applied),
                &env!("CARGO_PKG_VERSION"),
                &problem,
            ],
        )?;
        Ok(())
    }

    /// `fleet remove`: forgets node `name` (its heartbeat row; the change log is the fleet's).
    /// A node heard from in the last `alive` is refused unless `force`: it is still running and
    /// would be back with its next heartbeat. Returns the seconds since its last heartbeat.
    pub fn remove_node(&self, name: &str, alive: Duration, force: bool) -> Result<f64, FleetError> {
        self.with_client(|c| {
            let age: f64 = c
                .query_opt(
                    "SELECT extract(epoch FROM now() - heartbeat_at)::float8 FROM airlock_nodes WHERE name = $1",
                    &[&name],
                )?
                .map(|r| r.get(0))
                .ok_or_else(|| FleetError::Mismatch(format!("the fleet has no node {name:?}")))?;
            if age < alive.as_secs_f64() && !force {
                return Err(FleetError::Mismatch(format!(
                    "node {name} sent a heartbeat {age:.1}s ago: it is running (stop it first, or --force)"
                )));
            }
            c.execute("DELETE FROM airlock_nodes WHERE name = $1", &[&name])?;
            Ok(age)
        })
    }

    /// How many nodes sent a heartbeat in the last 10 seconds (at least 1: this one).
    pub fn live_nodes(client: &mut postgres::Client) -> Result<u32, FleetError> {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM airlock_nodes WHERE heartbeat_at > now() - interval '10 seconds'",
                &[],
            )?
            .get(0);
        Ok(u32::try_from(n).unwrap_or(1).max(1))
    }

    /// The fleet's nodes and positions.
    pub fn status(&self) -> Result<Status, FleetError> {
        self.with_client(|c| {
            let fleet_id: String = c
                .query_opt("SELECT fleet_id FROM airlock_fleet", &[])?
                .map(|r| r.get(0))
                .ok_or_else(|| {
                    FleetError::Mismatch(
                        "no fleet in this database (run `airlock fleet init`)".into(),
                    )
                })?;
            let head = head_seq(c)?;
            let nodes = c
                .query(
                    "SELECT name, listen, applied_seq,
                            extract(epoch FROM now() - heartbeat_at)::float8, version, problem
                     FROM airlock_nodes ORDER BY name",
                    &[],
                )?
                .into_iter()
                .map(|r| {
                    let applied = u64::try_from(r.get::<_, i64>(2)).unwrap_or(0);
                    NodeStatus {
                        name: r.get(0),
                        listen: r.get(1),
                        applied_seq: applied,
                        lag: head.saturating_sub(applied),
                        heartbeat_age_secs: r.get(3),
                        version: r.get(4),
                        problem: r.get(5),
                    }
                })
                .collect();
            Ok(Status {
                fleet_id,
                head_seq: head,
                nodes,
            })
        })
    }

    /// `fleet init`: creates the schema and makes this data dir's vault the fleet's first entry,
    /// a checkpoint tagged with the log key derived from `root` (which the caller checked opens
    /// the vault). Refused when the database already holds a fleet.
    pub fn init(
        &self,
        store: &Store,
        data_dir: &Path,
        node: &str,
        root: &RootKey,
    ) -> Result<Marker, StoreError> {
        if let Some(m) = store.fleet_marker()? {
            return Err(FleetError::Mismatch(format!(
                "this data dir is already node {} of fleet {}",
                m.node, m.fleet_id
            ))
            .into());
        }
        let read = |name: &str| {
            let path = data_dir.join(name);
            std::fs::read(&path).map_err(|source| StoreError::Io { path, source })
        };
        let ca_pem = String::from_utf8_lossy(&read(super::setup::CA_CERT_FILE)?).into_owned();
        let ca_key = read(super::setup::CA_KEY_FILE)?;
        let snapshot = store.snapshot()?;
        let seq = store.generation()?.max(1);
        let marker = Marker {
            fleet_id: data_encoding::HEXLOWER.encode(
                &super::keys::random_array::<8>()
                    .map_err(|e| FleetError::Corrupt(e.to_string()))?,
            ),
            node: node.to_owned(),
        };
        let key = LogKey::derive(root, &marker.fleet_id);
        let tag = self.with_client(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(SCHEMA)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
            if let Some(row) = tx.query_opt("SELECT fleet_id FROM airlock_fleet", &[])? {
                let id: String = row.get(0);
                return Err(FleetError::Mismatch(format!(
                    "this database already holds fleet {id}; join it with `airlock fleet join` on a fresh data dir"
                )));
            }
            tx.execute(
                "INSERT INTO airlock_fleet (id, fleet_id, ca_pem, ca_key_wrapped) VALUES (1, $1, $2, $3)",
                &[&marker.fleet_id, &ca_pem, &ca_key],
            )?;
            let tag = append(&mut tx, &key, seq, node, &GENESIS, BATCH_CHECKPOINT, &snapshot)?;
            tx.commit()?;
            Ok(tag)
        })?;
        let mut t = store.begin_write()?;
        mark(&mut t, &marker, &key)?;
        advance(&mut t, seq, Some(&tag))?;
        t.commit()?;
        Ok(marker)
    }

    /// The CA files a joining node writes before creating its store.
    pub fn ca_files(&self) -> Result<(String, String, Vec<u8>), FleetError> {
        self.with_client(|c| {
            let row = c
                .query_opt(
                    "SELECT fleet_id, ca_pem, ca_key_wrapped FROM airlock_fleet",
                    &[],
                )?
                .ok_or_else(|| {
                    FleetError::Mismatch(
                        "no fleet in this database (run `airlock fleet init`)".into(),
                    )
                })?;
            Ok((row.get(0), row.get(1), row.get(2)))
        })
    }

    /// Before `fleet join` writes anything: the root key from `sources`, checked against the
    /// fleet. It must open the CA key the fleet holds and give the log key that verifies the
    /// log's first checkpoint ([`FleetError::KeyMismatch`] otherwise); a passphrase is stretched
    /// with the parameters that checkpoint names. A log with no checkpoint (written by an older
    /// airlock) gives [`FleetError::UpgradeNeeded`].
    pub fn join_key(
        &self,
        sources: &KeySources,
        data_dir: &Path,
        fleet_id: &str,
        ca_key_wrapped: &[u8],
    ) -> Result<LogKey, super::VaultError> {
        let first = self
            .with_client(|c| {
                Ok(c.query_opt(
                    "SELECT seq, node, batch, tag FROM airlock_changes WHERE tag IS NOT NULL
                 ORDER BY seq LIMIT 1",
                    &[],
                )?
                .map(|r| Row::from_pg(&r)))
            })
            .map_err(StoreError::from)?;
        let first =
            first.ok_or_else(|| StoreError::from(FleetError::UpgradeNeeded(UPGRADE.into())))?;
        let header = decode(&first.batch)
            .and_then(|(_, changes)| {
                let meta = DB_NAMES.iter().position(|n| *n == "meta")?;
                changes
                    .into_iter()
                    .find(|c| usize::from(c.db) == meta && c.key == super::ops::META_KEYS)
            })
            .and_then(|c| super::records::decode::<KeyHeader>(&c.value?).ok())
            .ok_or_else(|| {
                StoreError::from(FleetError::Corrupt(format!(
                    "change {} holds no vault key header",
                    first.seq
                )))
            })?;
        let mismatch =
            |why: String| super::VaultError::from(StoreError::from(FleetError::KeyMismatch(why)));
        let root = super::setup::found_root(sources, data_dir, &header)?;
        if !super::setup::opens_ca_key(&root, ca_key_wrapped) {
            return Err(mismatch("it does not open the fleet's CA key".into()));
        }
        let key = LogKey::derive(&root, fleet_id);
        if !key.verifies(&first, &GENESIS) {
            return Err(mismatch(format!(
                "the fleet's first checkpoint, change {}, does not verify under it",
                first.seq
            )));
        }
        Ok(key)
    }

    /// `fleet join`, after [`Fleet::join_key`], the files written and an empty store created:
    /// applies the log from its checkpoint and marks the store as node `node`.
    pub fn join(
        &self,
        store: &Store,
        fleet_id: &str,
        node: &str,
        key: &LogKey,
    ) -> Result<u64, StoreError> {
        let marker = Marker {
            fleet_id: fleet_id.to_owned(),
            node: node.to_owned(),
        };
        let mut t = store.begin_write()?;
        mark(&mut t, &marker, key)?;
        t.commit()?;
        self.catch_up(store)
    }

    /// Stores the log key of this node's fleet, derived from `root` (which the caller checked
    /// opens the vault), when the node has none yet: a node upgraded from a log without tags.
    pub fn keep_key(store: &Store, root: &RootKey) -> Result<(), StoreError> {
        let Some(marker) = store.fleet_marker()? else {
            return Ok(());
        };
        if store.read(|t| Ok(LogKey::stored(t)?.is_some()))? {
            return Ok(());
        }
        let mut t = store.begin_write()?;
        mark(&mut t, &marker, &LogKey::derive(root, &marker.fleet_id))?;
        t.commit()
    }

    /// `fleet upgrade`: authenticates a log written by an older airlock. Adds the tag column,
    /// applies what this node has not seen (trusted as before, this once), then appends a
    /// checkpoint of the result from which every node follows a verified chain. On a log that
    /// already has one, only catches this node up. Returns the checkpoint's sequence number, if
    /// this call wrote it.
    pub fn upgrade(&self, store: &Store, root: &RootKey) -> Result<Option<u64>, StoreError> {
        let marker = store
            .fleet_marker()?
            .ok_or_else(|| FleetError::Mismatch("this data dir is not a node of a fleet".into()))?;
        Self::keep_key(store, root)?;
        let key = LogKey::derive(root, &marker.fleet_id);
        let written = self.with_client(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(SCHEMA)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
            let tagged: i64 = tx
                .query_one(
                    "SELECT count(*) FROM airlock_changes WHERE tag IS NOT NULL",
                    &[],
                )?
                .get(0);
            if tagged > 0 {
                tx.commit()?;
                return Ok(None);
            }
            let head = head_seq(&mut tx)?;
            let rows = pending(&mut tx, store.generation().map_err(fleet_of)?)?;
            let mut t = store.begin_write().map_err(fleet_of)?;
            for row in &rows {
                let (_, changes) = decode(&row.batch).ok_or_else(|| {
                    FleetError::Corrupt(format!("change {} does not decode", row.seq))
                })?;
                t.apply(&changes).map_err(fleet_of)?;
            }
            let seq = head + 1;
            let snapshot = t.snapshot().map_err(fleet_of)?;
            let tag = append(
                &mut tx,
                &key,
                seq,
                &marker.node,
                &GENESIS,
                BATCH_CHECKPOINT,
                &snapshot,
            )?;
            advance(&mut t, seq, Some(&tag)).map_err(fleet_of)?;
            tx.commit()?;
            t.commit().map_err(fleet_of)?;
            Ok(Some(seq))
        })?;
        if written.is_none() {
            self.catch_up(store)?;
        }
        Ok(written)
    }
}

/// A store failure inside a fleet transaction, carried as a fleet error.
fn fleet_of(e: StoreError) -> FleetError {
    match e {
        StoreError::Fleet(f) => f,
        other => FleetError::Corrupt(other.to_string()),
    }
}

/// Writes the node-local marker and log key.
fn mark(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
    marker: &Marker,
    key: &LogKey,
) -> Result<(), StoreError> {
    t.put(t.dbs().meta, META_FLEET, marker)?;
    t.put_raw(t.dbs().meta, META_LOG_KEY, key.0.as_ref())
}

/// A failed fleet write: the fleet's doing, or the operation's own error.
enum Failed<E> {
    Fleet(FleetError),
    Op(E),
}

impl<E> From<postgres::Error> for Failed<E> {
    fn from(e: postgres::Error) -> Self {
        Self::Fleet(e.into())
    }
}

impl<E> From<FleetError> for Failed<E> {
    fn from(e: FleetError) -> Self {
        Self::Fleet(e)
    }
}

fn write_locked<R, E: From<StoreError>>(
    client: &mut postgres::Client,
    store: &Store,
    marker: &Marker,
    f: impl FnOnce(&mut Txn<lmdb::RwTransaction<'_>>) -> Result<R, E>,
) -> Result<R, Failed<E>> {
    let op = |e: StoreError| Failed::Op(E::from(e));
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
    let fleet_id: Option<String> = tx
        .query_opt("SELECT fleet_id FROM airlock_fleet", &[])?
        .map(|r| r.get(0));
    if fleet_id.as_deref() != Some(marker.fleet_id.as_str()) {
        return Err(Failed::Fleet(FleetError::Mismatch(format!(
            "this node belongs to fleet {}, the database holds {}",
            marker.fleet_id,
            fleet_id.as_deref().unwrap_or("no fleet")
        ))));
    }
    let (head, rows) = log_after(&mut tx, store.generation().map_err(op)?)?;
    let mut t = store.begin_write().map_err(op)?;
    let (key, reached) = apply_in(&mut t, head, &rows).map_err(op)?;
    // Every row up to the head verified and applied: the new row follows the last one's tag.
    let prev = match t.get_raw(t.dbs().meta, META_LOG_TAG).map_err(op)? {
        Some(p) if reached == head => Tag::try_from(p).ok(),
        _ => None,
    };
    let prev = prev.ok_or_else(|| FleetError::UpgradeNeeded(UPGRADE.into()))?;
    t.log = Some(Vec::new());
    let out = f(&mut t).map_err(Failed::Op)?;
    let changes = t.log.take().unwrap_or_default();
    if changes.is_empty() {
        t.commit().map_err(op)?;
        tx.commit()?;
        return Ok(out);
    }
    let seq = head + 1;
    let tag = append(
        &mut tx,
        &key,
        seq,
        &marker.node,
        &prev,
        BATCH_CHANGES,
        &changes,
    )?;
    advance(&mut t, seq, Some(&tag)).map_err(op)?;
    tx.commit()?;
    // Committed in the fleet: a failure here is repaired by the next catch-up.
    t.commit().map_err(op)?;
    Ok(out)
}

/// Appends row `seq`: `changes` as a batch of `kind`, tagged after `prev`, announced to the
/// followers (they see it once the transaction commits). Returns its tag.
fn append(
    tx: &mut impl postgres::GenericClient,
    key: &LogKey,
    seq: u64,
    node: &str,
    prev: &Tag,
    kind: u8,
    changes: &[Change],
) -> Result<Tag, FleetError> {
    let batch = encode(kind, changes);
    let tag = key.tag(seq, node, prev, &batch);
    tx.execute(
        "INSERT INTO airlock_changes (seq, node, batch, tag) VALUES ($1, $2, $3, $4)",
        &[&seq_i64(seq), &node, &batch, &&tag[..]],
    )?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])?;
    Ok(tag)
}

/// Records this node's position: the generation and, on the chain, the last row's tag.
fn advance(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
    seq: u64,
    tag: Option<&Tag>,
) -> Result<(), StoreError> {
    t.put_meta_u64(META_GENERATION, seq)?;
    match tag {
        Some(tag) => t.put_raw(t.dbs().meta, META_LOG_TAG, tag),
        None => Ok(()),
    }
}

fn head_seq(c: &mut impl postgres::GenericClient) -> Result<u64, FleetError> {
    let head: i64 = c
        .query_one("SELECT coalesce(max(seq), 0) FROM airlock_changes", &[])?
        .get(0);
    Ok(u64::try_from(head).unwrap_or(0))
}

/// The log's last sequence number and the rows after `after`.
fn log_after(
    c: &mut impl postgres::GenericClient,
    after: u64,
) -> Result<(u64, Vec<Row>), FleetError> {
    Ok((head_seq(c)?, pending(c, after)?))
}

fn pending(c: &mut impl postgres::GenericClient, after: u64) -> Result<Vec<Row>, FleetError> {
    Ok(c.query(
        "SELECT seq, node, batch, tag FROM airlock_changes WHERE seq > $1 ORDER BY seq",
        &[&seq_i64(after)],
    )?
    .iter()
    .map(Row::from_pg)
    .collect())
}

fn apply_rows(store: &Store, head: u64, rows: &[Row]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        // Nothing to apply: the position is checked under a read transaction (a follower polls
        // every second and must not take the write lock for nothing).
        return store.read(|t| position(t, head).map(|(_, generation, _)| generation));
    }
    let mut t = store.begin_write()?;
    let (_, reached) = apply_in(&mut t, head, rows)?;
    t.commit()?;
    Ok(reached)
}

/// This node's place on the chain: its log key, generation and last tag. A log that ends before
/// what the node applied (`head`) lost rows.
fn position<T: lmdb::Transaction>(
    t: &Txn<T>,
    head: u64,
) -> Result<(LogKey, u64, Option<Tag>), StoreError> {
    let key = LogKey::stored(t)?.ok_or_else(|| {
        FleetError::UpgradeNeeded(
            "this node has no key for the fleet's change log: start `airlock serve` with the root key once, or run `airlock fleet upgrade`".into(),
        )
    })?;
    let generation = t.meta_u64(META_GENERATION)?.unwrap_or(0);
    let prev = t
        .get_raw(t.dbs().meta, META_LOG_TAG)?
        .and_then(|p| Tag::try_from(p).ok());
    if prev.is_some() && head < generation {
        return Err(FleetError::Rejected(format!(
            "the change log ends at change {head}, but this node applied change {generation}: rows were deleted"
        ))
        .into());
    }
    Ok((key, generation, prev))
}

/// Applies the rows this transaction has not seen, in order, each only once its tag verifies
/// against the last one applied (the chain starting at a checkpoint); each sets the generation
/// and the chain's position. `head` is the log's last sequence number: a log that ends before
/// what this node applied lost rows. Returns the node's log key and the generation reached.
fn apply_in(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
    head: u64,
    rows: &[Row],
) -> Result<(LogKey, u64), StoreError> {
    let (key, mut generation, mut prev) = position(t, head)?;
    for row in rows {
        if row.seq <= generation {
            continue;
        }
        // Rows of a log written before tags, up to its checkpoint, are skipped: the checkpoint
        // holds their result. Once on the chain, an untagged row is refused like a forged one.
        if prev.is_none() && row.tag.is_none() {
            continue;
        }
        let after = prev.unwrap_or(GENESIS);
        // Verified before anything of it is decoded.
        let (kind, changes) = Some(row)
            .filter(|row| key.verifies(row, &after))
            .and_then(|row| decode(&row.batch))
            .filter(|(kind, _)| prev.is_some() || *kind == BATCH_CHECKPOINT)
            .ok_or_else(|| {
                FleetError::Rejected(format!(
                    "change {} (from node {:?}) does not verify under this fleet's key after change {generation}: it was written without the root key, or altered, reordered, replayed, or follows a deleted row",
                    row.seq,
                    crate::text::inert(&row.node),
                ))
            })?;
        if kind == BATCH_CHECKPOINT {
            t.clear_replicated()?;
        }
        t.apply(&changes)?;
        generation = row.seq;
        prev = row.tag.as_deref().and_then(|t| Tag::try_from(t).ok());
        advance(t, generation, prev.as_ref())?;
    }
    Ok((key, generation))
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// `[kind][for each: db u8, key len u32, key, tag u8 (0 delete, 1 put), value len u32, value]`;
/// `kind` is [`BATCH_CHANGES`] or [`BATCH_CHECKPOINT`].
fn encode(kind: u8, changes: &[Change]) -> Vec<u8> {
    let mut out = vec![kind];
    for c in changes {
        out.push(c.db);
        out.extend_from_slice(&(c.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&c.key);
        match &c.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// The kind and changes of a batch [`encode`] made; `None` for anything else.
fn decode(mut raw: &[u8]) -> Option<(u8, Vec<Change>)> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (raw.get(..n)?, raw.get(n..)?);
        *raw = rest;
        Some(head)
    }
    fn len(raw: &mut &[u8]) -> Option<usize> {
        let b = take(raw, 4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?) as usize)
    }
    let kind = take(&mut raw, 1)?[0];
    if kind != BATCH_CHANGES && kind != BATCH_CHECKPOINT {
        return None;
    }
    let mut out = Vec::new();
    while !raw.is_empty() {
        let db = take(&mut raw, 1)?[0];
        let n = len(&mut raw)?;
        let key = take(&mut raw, n)?.to_vec();
        let value = match take(&mut raw, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut raw)?;
                Some(take(&mut raw, n)?.to_vec())
            }
            _ => return None,
        };
        out.push(Change { db, key, value });
    }
    Some((kind, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_reject_garbage() {
        let changes = vec![
            Change {
                db: 2,
                key: b"k".to_vec(),
                value: Some(b"v".to_vec()),
            },
            Change {
                db: 7,
                key: Vec::new(),
                value: None,
            },
        ];
        let raw = encode(BATCH_CHANGES, &changes);
        assert_eq!(decode(&raw), Some((BATCH_CHANGES, changes.clone())));
        for cut in 1..raw.len() {
            let d = decode(&raw[..cut]);
            assert!(
                d.is_none() || d.as_ref().is_some_and(|d| d.1.len() < 2),
                "{cut}"
            );
        }
        assert!(decode(&[3]).is_none());
        assert!(decode(&[]).is_none());
    }

    /// Row 101: a tag binds the sequence number, the node, the previous tag and the batch, under
    /// a key that differs by root key and by fleet.
    #[test]
    fn row101_tags_bind_position_node_chain_and_content() {
        let root = RootKey::generate().unwrap();
        let key = LogKey::derive(&root, "f1");
        let batch = encode(BATCH_CHANGES, &[]);
        let prev = [7u8; 32];
        let row = |seq: u64, node: &str, batch: &[u8], tag: Tag| Row {
            seq,
            node: node.into(),
            batch: batch.to_vec(),
            tag: Some(tag.to_vec()),
        };
        let tag = key.tag(5, "a", &prev, &batch);
        assert!(key.verifies(&row(5, "a", &batch, tag), &prev));
        assert!(!key.verifies(&row(6, "a", &batch, tag), &prev), "moved");
        assert!(
            !key.verifies(&row(5, "b", &batch, tag), &prev),
            "other node"
        );
        assert!(
            !key.verifies(&row(5, "a", &batch, tag), &GENESIS),
            "other chain"
        );
        let altered = encode(BATCH_CHECKPOINT, &[]);
        assert!(!key.verifies(&row(5, "a", &altered, tag), &prev), "altered");
        let mut untagged = row(5, "a", &batch, tag);
        untagged.tag = None;
        assert!(!key.verifies(&untagged, &prev));
        let other_root = LogKey::derive(&RootKey::generate().unwrap(), "f1");
        assert!(!other_root.verifies(&row(5, "a", &batch, tag), &prev));
        let other_fleet = LogKey::derive(&root, "f2");
        assert!(!other_fleet.verifies(&row(5, "a", &batch, tag), &prev));
        assert_eq!(format!("{key:?}"), "LogKey(<redacted>)");
    }
}
