//! Storage faults: kill -9 during writes (row 53), a full map (row 56), tampered KDF parameters
//! (row 40), and a store written by a newer format.

use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock::vault::StoreError;
use airlock::vault::ops::META_KEYS;
use airlock::vault::records::KeyHeader;

use crate::support::{Env, output};

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

/// Row 54 (I-02): readers killed while holding a read transaction leave stale slots while
/// another process keeps the environment open (with no other user LMDB resets the table
/// itself); the reader check reclaims them.
#[test]
fn row54_stale_reader_slots_reclaimed() {
    use std::io::BufRead;
    let env = Env::init();
    let vault_dir = env.data_dir.join("vault");
    let script = "import lmdb, sys, time\ne = lmdb.open(sys.argv[1], max_dbs=16, readonly=True, lock=True)\nt = e.begin()\nprint('holding', flush=True)\ntime.sleep(60)\n";
    // A long-lived user of the environment (as serve is), without a read transaction.
    let holder_script = "import lmdb, sys, time\ne = lmdb.open(sys.argv[1], max_dbs=16, readonly=True, lock=True)\nprint('open', flush=True)\ntime.sleep(60)\n";
    let mut holder = std::process::Command::new("python3")
        .args(["-c", holder_script])
        .arg(&vault_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open");
    for _ in 0..3 {
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&vault_dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "holding");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let store = airlock::vault::Store::open(&env.data_dir, Default::default()).unwrap();
    assert_eq!(store.reclaimed_readers, 3);
    assert_eq!(
        store.reclaim_readers().unwrap(),
        0,
        "slots were reclaimed once"
    );
    drop(store);
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// Row 55 (I-03): the disk under the vault fills up: a clean `storage_full`, the earlier
/// writes intact, and reads still work.
#[test]
fn row55_disk_full_is_a_clean_error() {
    let mnt = crate::support::Tmpfs::mount("768k");
    let data = mnt.path().join("data");
    let run = |args: &[&str], stdin: Option<&[u8]>| {
        let mut c = crate::support::command(&["--data-dir", data.to_str().unwrap()]);
        c.args(args);
        output(c, stdin)
    };
    run(&["init"], None).ok();
    let value = vec![b'v'; 48 * 1024];
    let mut stored = 0;
    let mut failed = None;
    for i in 0..100 {
        let r = run(&["credential", "set", &format!("K{i}")], Some(&value));
        if r.code != 0 {
            failed = Some(r);
            break;
        }
        stored += 1;
    }
    let r = failed.expect("the 768 KiB disk never filled");
    assert!(r.fails().contains("storage_full"), "{r:?}");
    assert!(stored > 0);
    let list = run(&["credential", "list", "--json"], None).ok();
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), stored, "earlier writes lost");
}

/// Row 59 (I-08): `init` killed at random points (master key, CA files, LMDB): running it
/// again always completes, and the CA file is never empty.
#[test]
fn row59_sigkill_during_init_never_leaves_a_broken_data_dir() {
    let iterations: u32 = std::env::var("AIRLOCK_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let mut rng = Rng::seeded();
    let probe = Env::empty();
    let start = Instant::now();
    probe.run(&["init"]).ok();
    let typical = start.elapsed().as_micros() as u64;
    for _ in 0..iterations {
        let env = Env::empty();
        let mut child = env
            .command(&["init"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(typical)));
        let _ = child.kill();
        let _ = child.wait();
        if let Ok(pem) = std::fs::read_to_string(env.data_dir.join("ca.pem")) {
            assert!(
                pem.starts_with("-----BEGIN CERTIFICATE-----")
                    && pem.trim_end().ends_with("-----END CERTIFICATE-----"),
                "torn CA file: {pem:?}"
            );
        }
        env.run(&["init"]).ok();
        let ca = env.run(&["ca", "export"]).ok();
        assert!(ca.stdout.starts_with("-----BEGIN CERTIFICATE-----"));
        let store = env.store();
        assert_eq!(store.vaults().unwrap()[0].name, "default");
        drop(store);
        airlock::vault::setup::unlock(&env.store(), &env.data_dir, &Default::default())
            .expect("the key opens what init wrapped");
    }
}

/// Row 60: once a request-log batch cannot be written (the disk is full), requests that would
/// inject a credential get 503 `audit_unavailable`; when space returns, the pending rows are
/// written and injection resumes.
#[test]
fn row60_injection_stops_while_the_request_log_cannot_be_written() {
    let mnt = crate::support::Tmpfs::mount("4m");
    let env = Env {
        tmp: tempfile::tempdir().unwrap(),
        data_dir: mnt.path().join("data"),
    };
    env.run(&["init"]).ok();
    env.run_stdin(&["credential", "set", "K"], b"sk-row60-value")
        .ok();
    let origin = crate::support::origin::Origin::https(env.tmp.path(), &["api.row60.test"]);
    env.set_services("services:\n  - name: row60\n    host: api.row60.test\n    auth: {type: bearer, token: K}\n");
    let token = env.agent_token("bot", "default");
    let proxy = crate::support::Proxy::for_origin(
        &env,
        &origin,
        &["api.row60.test"],
        "auto",
        &[],
        true,
        true,
    );
    let curl = |path: &str| {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-sS",
            "-i",
            "--max-time",
            "10",
            "--proxy",
            &proxy.url(&token, "default"),
            "--cacert",
        ])
        .arg(env.data_dir.join("ca.pem"));
        c.arg(format!("https://api.row60.test{path}"));
        output(c, None).stdout
    };
    assert!(curl("/before").contains("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(400));
    // Fill the disk, then make requests until a batch write fails and injection stops.
    let filler = mnt.path().join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "count=1000"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    let start = Instant::now();
    loop {
        let r = curl("/during");
        if r.contains("audit_unavailable") {
            assert!(
                r.starts_with("HTTP/1.1 200 Connection established") && r.contains("HTTP/1.1 503"),
                "{r}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "injection went on with the log unwritable: {}",
            proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(proxy.stderr().contains("request log write failed"));
    std::fs::remove_file(&filler).unwrap();
    let start = Instant::now();
    while !curl("/after").contains("HTTP/1.1 200 OK") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "injection did not resume"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Row 55 (I-03), I/O errors: writes and syncs failing with EIO (libfiu's fiu-run) give a
/// clean `storage_io` error, and what was committed before stays readable.
#[test]
fn row55_io_errors_are_clean_and_lose_nothing() {
    let env = Env::init();
    env.run_stdin(&["credential", "set", "BEFORE"], b"v1").ok();
    let mut c = std::process::Command::new("fiu-run");
    c.args([
        "-x",
        "-c",
        "enable name=posix/io/rw/pwrite,failinfo=5",
        "-c",
        "enable name=posix/io/sync/fdatasync,failinfo=5",
    ]);
    c.arg(crate::support::bin())
        .arg("--data-dir")
        .arg(&env.data_dir)
        .args(["credential", "set", "DURING"]);
    for var in ["AIRLOCK_DATA_DIR", "AIRLOCK_CONFIG"] {
        c.env_remove(var);
    }
    let r = output(c, Some(b"v2"));
    assert!(
        r.fails().contains("storage_io") && r.stderr.contains("Input/output error"),
        "{r:?}"
    );
    let list = env.run(&["credential", "list", "--json"]).ok();
    let keys: Vec<String> = serde_json::from_str::<serde_json::Value>(&list.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["BEFORE"]);
    env.run_stdin(&["credential", "set", "AFTER"], b"v3").ok();
}
