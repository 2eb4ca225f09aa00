//! A throwaway PostgreSQL cluster for the fleet tests: Debian's server binaries, `initdb` in a
//! temp dir, run as `nobody` (PostgreSQL refuses root), reached over a Unix socket in that dir
//! (no TCP port to collide with), trust authentication for the role `airlock`. Stopped (fast,
//! `-m immediate`) on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) struct Postgres {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    /// Set by [`Postgres::start_tls`]: TCP on this loopback port, TLS and passwords required.
    tcp_port: Option<u16>,
}

/// The directory of Debian's PostgreSQL server binaries (`/usr/lib/postgresql/<v>/bin`).
fn server_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server (Debian package postgresql; tests/run.sh installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("no /usr/lib/postgresql/*/bin/pg_ctl")
}

/// `cmd` run as nobody.
fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(program);
    c
}

impl Postgres {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let pg = Self {
            dir,
            bin: server_bin(),
            tcp_port: None,
        };
        let out = as_nobody(&pg.bin.join("initdb"))
            .arg("-D")
            .arg(pg.data())
            .args(["-U", "airlock", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        pg.ctl("start");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// As [`Postgres::start`], also listening on a loopback TCP port that takes only TLS (with
    /// `cert_pem`/`key_pem`) and SCRAM passwords; the role `airlock` gets `password`.
    pub(crate) fn start_tls(cert_pem: &str, key_pem: &str, password: &str) -> Self {
        let mut pg = Self::start();
        pg.ctl("stop");
        let data = pg.data();
        let nobody = |path: &Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        std::fs::write(data.join("server.crt"), cert_pem).unwrap();
        nobody(&data.join("server.crt"), 0o644);
        std::fs::write(data.join("server.key"), key_pem).unwrap();
        nobody(&data.join("server.key"), 0o600);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        // A port the kernel picked, handed to PostgreSQL (it cannot report one it chose).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        pg.tcp_port = Some(port);
        pg.ctl("start");
        let out = as_nobody(&pg.bin.join("psql"))
            .args(["-h"])
            .arg(pg.dir.path())
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "airlock",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!("ALTER ROLE airlock PASSWORD '{password}'"))
            .output()
            .unwrap();
        assert!(out.status.success(), "psql: {out:?}");
        pg
    }

    /// The TCP port of a cluster started with [`Postgres::start_tls`].
    pub(crate) fn tcp_port(&self) -> u16 {
        self.tcp_port.expect("started with start_tls")
    }

    fn ctl(&self, action: &str) {
        let socket_opts = match self.tcp_port {
            None => format!(
                "-k {} -c listen_addresses='' -c fsync=off",
                self.dir.path().display()
            ),
            Some(port) => format!(
                "-k {} -c listen_addresses=127.0.0.1 -p {port} -c ssl=on -c fsync=off",
                self.dir.path().display()
            ),
        };
        let mut c = as_nobody(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.data()).args(["-w", "-m", "immediate"]);
        if action == "start" {
            c.args(["-o", &socket_opts, "-l"])
                .arg(self.dir.path().join("log"));
        }
        let out = c.arg(action).output().unwrap();
        assert!(out.status.success(), "pg_ctl {action}: {out:?}");
    }

    pub(crate) fn stop(&self) {
        self.ctl("stop");
    }

    pub(crate) fn restart(&self) {
        self.ctl("start");
    }

    /// The `store_url` of this cluster (its Unix socket).
    pub(crate) fn url(&self) -> String {
        format!(
            "host={} port={} user=airlock dbname=postgres",
            self.dir.path().display(),
            self.tcp_port.unwrap_or(5432)
        )
    }

    /// Runs `sql` with psql as someone who can write to the database but holds no root key (the
    /// attacker of rows 101 and 102); returns the unaligned output.
    pub(crate) fn sql(&self, sql: &str) -> String {
        let out = as_nobody(&self.bin.join("psql"))
            .args(["-h"])
            .arg(self.dir.path())
            .args(["-p", &self.tcp_port.unwrap_or(5432).to_string()])
            .args([
                "-U",
                "airlock",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `pg_dump` of the whole database, for the canary sweep.
    pub(crate) fn dump(&self) -> String {
        let out = as_nobody(&self.bin.join("pg_dump"))
            .args(["-h"])
            .arg(self.dir.path())
            .args(["-U", "airlock", "postgres"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_dump: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_nobody(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
