//! Operating a running data plane (issue 8): SIGHUP re-reads the config file without dropping
//! connections, refuses a file that does not parse, and names changes that need a restart.

use std::time::{Duration, Instant};

use crate::proxy::Setup;

fn post(len: usize) -> Vec<u8> {
    let mut req =
        format!("POST /reload HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes();
    req.resize(req.len() + len, b'x');
    req
}

fn hup(s: &Setup) {
    let pid = s.proxy.pid().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends SIGHUP and waits until stderr shows `marker` for the `n`th time.
fn hup_and_wait(s: &Setup, marker: &str, n: usize) -> String {
    hup(s);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let err = s.proxy.stderr();
        if err.matches(marker).count() >= n {
            return err;
        }
        assert!(Instant::now() < end, "no {marker:?} after SIGHUP: {err}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A reload changes the body cap for the next request on a connection opened before it (the
/// connection survives) and changes the log level; a file that does not parse and keys that need
/// a restart leave the running settings as they were.
#[test]
fn sighup_reloads_config_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(&config, "max_body_bytes = 1000\nlog_level = \"info\"\n").unwrap();
    let s = Setup::with("auto", &["--config", config.to_str().unwrap()], true, true);
    let mut kept = s.raw("api.openai.com");
    let r = kept.send(&post(100));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    std::fs::write(&config, "max_body_bytes = 10\n").unwrap();
    hup_and_wait(&s, "reloaded", 1);
    let r = kept.send(&post(100));
    assert!(
        r.starts_with("HTTP/1.1 413") && r.contains("body_too_large"),
        "the open connection should see the new cap: {r}"
    );
    // (a 413 before the body is read closes that connection; new ones from here on)
    let r = s.raw("api.openai.com").send(&post(5));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // A file that does not parse: refused with its line, the running settings stay.
    std::fs::write(&config, "max_body_bytes = 10000\nlisten = 7\n").unwrap();
    let err = hup_and_wait(&s, "reload refused", 1);
    assert!(err.contains("line 2"), "{err}");
    let r = s.raw("api.openai.com").send(&post(100));
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");

    // Restart-only keys are named (listen and workers would be too, but the test's flags
    // override those); the reloadable ones in the same file apply.
    std::fs::write(
        &config,
        "metrics_listen = \"127.0.0.1:0\"\nmap_size_mib = 2048\nmax_body_bytes = 1000\nlog_level = \"warn\"\n",
    )
    .unwrap();
    let err = hup_and_wait(&s, "apply after a restart", 1);
    assert!(err.contains("metrics_listen, map_size_mib"), "{err}");
    let r = s.raw("api.openai.com").send(&post(100));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // At warn, the info line of a clean reload is no longer written.
    let infos = s.proxy.stderr().matches("INFO").count();
    std::fs::write(&config, "max_body_bytes = 10\nlog_level = \"warn\"\n").unwrap();
    hup(&s);
    let end = Instant::now() + Duration::from_secs(10);
    while !s
        .raw("api.openai.com")
        .send(&post(100))
        .starts_with("HTTP/1.1 413")
    {
        assert!(Instant::now() < end, "the last reload never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.proxy.stderr().matches("INFO").count(), infos);
}

/// Under systemd (`$JOURNAL_STREAM` set) each line starts with its syslog priority and carries
/// no timestamp (journald stamps it); the config's `log_level` applies.
#[test]
fn journald_lines_carry_priority_prefixes() {
    use std::io::BufRead;
    let env = crate::support::Env::init();
    let config = env.write("airlock.toml", "log_level = \"info\"\n");
    let mut c = env.command(&[
        "--config",
        config.to_str().unwrap(),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-admin",
        "--workers",
        "1",
    ]);
    c.env("JOURNAL_STREAM", "8:12345")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("data plane listening")))
        .unwrap()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("<6>"), "{line}");
    assert!(
        !line.contains("Z ") && !line.contains("\x1b["),
        "no timestamp or colour: {line:?}"
    );
}
