//! Fleet mode: several nodes, one vault, through PostgreSQL (design in the README, "Running a
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
//! This module does blocking I/O (the `postgres` client); callers keep it off worker threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::{Change, META_GENERATION, Store, StoreError, Txn};
use crate::secret::Secret;

/// Node-local meta key: which fleet this data dir belongs to, and as which node.
pub const META_FLEET: &[u8] = b"fleet";
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
);";

/// Fleet failures, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("store_unavailable: PostgreSQL: {0}; nothing was written")]
    Unavailable(String),
    #[error(
        "fleet_unconfigured: this data dir is node of fleet {0}; set store_url (or $AIRLOCK_STORE_URL) so writes go through the fleet"
    )]
    Unconfigured(String),
    #[error("fleet_mismatch: {0}")]
    Mismatch(String),
    #[error("fleet_log_corrupt: {0}")]
    Corrupt(String),
}

impl FleetError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "store_unavailable",
            Self::Unconfigured(_) => "fleet_unconfigured",
            Self::Mismatch(_) => "fleet_mismatch",
            Self::Corrupt(_) => "fleet_log_corrupt",
        }
    }
}

impl From<postgres::Error> for FleetError {
    fn from(e: postgres::Error) -> Self {
        // The driver's message names the cause (connection refused, SQL error) and never a
        // password.
        let mut text = e.to_string();
        if let Some(db) = e.as_db_error() {
            text = format!("{}: {}", db.code().code(), db.message());
        }
        Self::Unavailable(text)
    }
}

/// This node's membership, stored in its own meta ([`META_FLEET`]).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Marker {
    pub fleet_id: String,
    pub node: String,
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
        let rows = self.with_client(|c| pending(c, after))?;
        apply_rows(store, &rows)
    }

    /// As [`Fleet::catch_up`] with a caller's client (the follower's).
    pub fn catch_up_with(client: &mut postgres::Client, store: &Store) -> Result<u64, StoreError> {
        let rows = pending(client, store.generation()?)?;
        apply_rows(store, &rows)
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

    /// Records this node's heartbeat and applied position.
    pub fn heartbeat(
        &self,
        client: &mut postgres::Client,
        node: &str,
        applied: u64,
    ) -> Result<(), FleetError> {
        client.execute(
            "INSERT INTO airlock_nodes (name, listen, applied_seq, heartbeat_at, version)
             VALUES ($1, $2, $3, now(), $4)
             ON CONFLICT (name) DO UPDATE SET listen = $2, applied_seq = $3,
                 heartbeat_at = now(), version = $4",
            &[
                &node,
                &self.settings.listen,
                &seq_i64(applied),
                &env!("CARGO_PKG_VERSION"),
            ],
        )?;
        Ok(())
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
                            extract(epoch FROM now() - heartbeat_at)::float8, version
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

    /// `fleet init`: creates the schema and makes this data dir's vault the fleet's first entry.
    /// Refused when the database already holds a fleet.
    pub fn init(&self, store: &Store, data_dir: &Path, node: &str) -> Result<Marker, StoreError> {
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
        self.with_client(|c| {
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
            tx.execute(
                "INSERT INTO airlock_changes (seq, node, batch) VALUES ($1, $2, $3)",
                &[&seq_i64(seq), &node, &encode(&snapshot)],
            )?;
            tx.commit()?;
            Ok(())
        })?;
        mark(store, &marker, Some(seq))?;
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

    /// `fleet join`, after the files are written and an empty store created: applies the whole
    /// log and marks the store as node `node`.
    pub fn join(&self, store: &Store, fleet_id: &str, node: &str) -> Result<u64, StoreError> {
        let reached = self.catch_up(store)?;
        let marker = Marker {
            fleet_id: fleet_id.to_owned(),
            node: node.to_owned(),
        };
        mark(store, &marker, None)?;
        Ok(reached)
    }
}

/// Writes the node-local marker (and the generation, at `fleet init`).
fn mark(store: &Store, marker: &Marker, generation: Option<u64>) -> Result<(), StoreError> {
    let mut t = store.begin_write()?;
    t.put(t.dbs().meta, META_FLEET, marker)?;
    if let Some(g) = generation {
        t.put_meta_u64(META_GENERATION, g)?;
    }
    t.commit()
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
    let rows = pending(&mut tx, store.generation().map_err(op)?)?;
    let head = head_seq(&mut tx)?;
    let mut t = store.begin_write().map_err(op)?;
    apply_in(&mut t, &rows).map_err(op)?;
    t.log = Some(Vec::new());
    let out = f(&mut t).map_err(Failed::Op)?;
    let changes = t.log.take().unwrap_or_default();
    if changes.is_empty() {
        t.commit().map_err(op)?;
        tx.commit()?;
        return Ok(out);
    }
    let seq = head + 1;
    tx.execute(
        "INSERT INTO airlock_changes (seq, node, batch) VALUES ($1, $2, $3)",
        &[&seq_i64(seq), &marker.node, &encode(&changes)],
    )?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])?;
    t.put_meta_u64(META_GENERATION, seq).map_err(op)?;
    tx.commit()?;
    // Committed in the fleet: a failure here is repaired by the next catch-up.
    t.commit().map_err(op)?;
    Ok(out)
}

fn head_seq(c: &mut impl postgres::GenericClient) -> Result<u64, FleetError> {
    let head: i64 = c
        .query_one("SELECT coalesce(max(seq), 0) FROM airlock_changes", &[])?
        .get(0);
    Ok(u64::try_from(head).unwrap_or(0))
}

fn pending(
    c: &mut impl postgres::GenericClient,
    after: u64,
) -> Result<Vec<(u64, Vec<u8>)>, FleetError> {
    Ok(c.query(
        "SELECT seq, batch FROM airlock_changes WHERE seq > $1 ORDER BY seq",
        &[&seq_i64(after)],
    )?
    .into_iter()
    .map(|r| (u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), r.get(1)))
    .collect())
}

fn apply_rows(store: &Store, rows: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return store.generation();
    }
    let mut t = store.begin_write()?;
    let reached = apply_in(&mut t, rows)?;
    t.commit()?;
    Ok(reached)
}

/// Applies the rows this transaction has not seen, each setting the generation to its seq.
fn apply_in(
    t: &mut Txn<lmdb::RwTransaction<'_>>,
    rows: &[(u64, Vec<u8>)],
) -> Result<u64, StoreError> {
    let mut generation = t.meta_u64(META_GENERATION)?.unwrap_or(0);
    for (seq, batch) in rows {
        if *seq <= generation {
            continue;
        }
        let changes = decode(batch)
            .ok_or_else(|| FleetError::Corrupt(format!("change {seq} does not decode")))?;
        t.apply(&changes)?;
        generation = *seq;
        t.put_meta_u64(META_GENERATION, generation)?;
    }
    Ok(generation)
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// `[1][for each: db u8, key len u32, key, tag u8 (0 delete, 1 put), value len u32, value]`.
pub fn encode(changes: &[Change]) -> Vec<u8> {
    let mut out = vec![1u8];
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

pub fn decode(mut raw: &[u8]) -> Option<Vec<Change>> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (raw.get(..n)?, raw.get(n..)?);
        *raw = rest;
        Some(head)
    }
    fn len(raw: &mut &[u8]) -> Option<usize> {
        let b = take(raw, 4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?) as usize)
    }
    if take(&mut raw, 1)? != [1] {
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
    Some(out)
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
        assert_eq!(decode(&encode(&changes)), Some(changes.clone()));
        let raw = encode(&changes);
        for cut in 1..raw.len() {
            let d = decode(&raw[..cut]);
            assert!(
                d.is_none() || d.as_ref().is_some_and(|d| d.len() < 2),
                "{cut}"
            );
        }
        assert!(decode(&[2]).is_none());
        assert!(decode(&[]).is_none());
    }
}
