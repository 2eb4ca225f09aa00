//! Storage faults: kill -9 during writes (row 53), a full map (row 56), tampered KDF parameters
//! (row 40), and a store written by a newer format.

use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock::vault::StoreError;
use airlock::vault::ops::META_KEYS;
use airlock::vault::records::KeyHeader;

use crate::harness::{Env, output};

/// A small xorshift generator: the test needs spread-out delays, not cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        eprintln!("crash test seed {t}");
        Self(t | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// security.md row 53 (I-01): SIGKILL a writer at random points. The vault reopens, every
/// acknowledged write is present, and no partial record exists (each vault has its audit record,
/// written in the same transaction). Iterations: `AIRLOCK_CRASH_ITERATIONS`, default 40.
#[test]
fn row53_sigkill_during_writes_keeps_acknowledged_commits() {
    let iterations: u32 = std::env::var("AIRLOCK_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let env = Env::init();
    let start = Instant::now();
    env.run(&["vault", "create", "warmup"]).ok();
    let typical = start.elapsed().as_micros() as u64;
    let mut rng = Rng::seeded();
    let mut acknowledged = Vec::new();
    let mut killed = 0;
    for i in 0..iterations {
        let name = format!("v{i}");
        let mut child = env
            .command(&["vault", "create", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(typical + typical / 4)));
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "vault create {name} failed");
                acknowledged.push(name);
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
            }
        }
    }
    eprintln!("{} acknowledged, {killed} killed", acknowledged.len());
    let store = env.store();
    let vaults: Vec<String> = store
        .vaults()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    for name in &acknowledged {
        assert!(vaults.contains(name), "acknowledged vault {name} lost");
    }
    let audit = store.audit_log(usize::MAX).unwrap();
    for name in vaults.iter().filter(|n| n.starts_with('v')) {
        let target = format!("vault {name}");
        assert_eq!(
            audit
                .iter()
                .filter(|r| r.action == "vault.create" && r.target == target)
                .count(),
            1,
            "{name}"
        );
    }
    for r in audit.iter().filter(|r| r.action == "vault.create") {
        let name = r.target.trim_start_matches("vault ");
        assert!(
            vaults.iter().any(|v| v == name),
            "audit names a vault that does not exist: {name}"
        );
    }
    // The store still takes writes.
    env.run(&["vault", "create", "after"]).ok();
}

/// security.md row 56 (I-04): a full LMDB map is a clean `storage_full` error; nothing is
/// written and reads keep working.
#[test]
fn row56_map_full_is_a_clean_error() {
    let env = Env::empty();
    let cfg = env.write("small.toml", "map_size_mib = 1\n");
    let cfg = cfg.to_str().unwrap();
    env.run(&["init", "--config", cfg]).ok();
    let value = vec![b'x'; 60 * 1024];
    let mut stored = 0;
    let mut full = None;
    for i in 0..200 {
        let gen_before = env.generation();
        let r = env.run_stdin(
            &["--config", cfg, "credential", "set", &format!("K{i}")],
            &value,
        );
        if r.code == 0 {
            stored += 1;
            continue;
        }
        assert!(r.fails().contains("storage_full"), "{r:?}");
        assert_eq!(
            env.generation(),
            gen_before,
            "a failed write moved the generation"
        );
        full = Some(i);
        break;
    }
    assert!(full.is_some(), "the 1 MiB map never filled");
    assert!(stored > 0);
    let list = env
        .run(&["--config", cfg, "credential", "list", "--json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), stored);
}

/// security.md row 40 (F-07): tampered KDF parameters are refused with `vault_header_invalid`
/// before Argon2 allocates (a 4 TiB m_cost would otherwise be attempted).
#[test]
fn row40_tampered_kdf_parameters_refused() {
    let env = Env::empty();
    let pass = env.write("pass", "passphrase\n");
    env.run(&["init", "--passphrase-file", pass.to_str().unwrap()])
        .ok();
    let store = env.store();
    let mut header: KeyHeader = store
        .read(|t| t.get(t.dbs().meta, "meta", META_KEYS))
        .unwrap()
        .unwrap();
    header.kdf.as_mut().unwrap().m_cost_kib = u32::MAX;
    store
        .write::<_, StoreError>(|t| t.put(t.dbs().meta, META_KEYS, &header))
        .unwrap();
    drop(store);
    let r = env.run(&["init", "--passphrase-file", pass.to_str().unwrap()]);
    assert!(r.fails().contains("vault_header_invalid"), "{r:?}");
}

#[test]
fn newer_format_is_refused_with_a_clear_message() {
    let env = Env::init();
    let store = env.store();
    store
        .write::<_, StoreError>(|t| t.put_meta_u64(b"format", 99))
        .unwrap();
    drop(store);
    let r = output(env.command(&["vault", "list"]), None);
    let line = r.fails();
    assert!(
        line.contains("format 99") && line.contains("Upgrade airlock"),
        "{line}"
    );
}
