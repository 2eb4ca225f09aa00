//! `airlock run --sandbox` with the real bubblewrap (Debian's `bubblewrap`; tests/run.sh installs
//! it): what a prompt-injected agent would try to get out another way, each tried from inside
//! with real programs (curl, Python, `env -i`), and the ways through airlock, which work: a
//! service with its credential, a host on the vault's egress allowlist through an opaque
//! tunnel, and a proposal for a host nobody approved.

use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::proxy::Setup;
use crate::support::output;

/// What a prompt-injected agent tries from inside, one line each, and the ways through airlock:
/// a bash script for any image (curl, bash's `/dev/tcp` and `/dev/udp`, getent); `extra` lines
/// are added (Python, where the sandbox has it).
struct Probes<'a> {
    s: &'a Setup,
    home: std::path::PathBuf,
    work: std::path::PathBuf,
    host_tcp: TcpListener,
    udp: UdpSocket,
}

impl<'a> Probes<'a> {
    /// A planted `~/.ssh` key under `home`, a working directory, a host-side TCP service on
    /// loopback (the admin port, a local PostgreSQL) and a UDP one; the vault allowlists
    /// `other.example.net` (a host without a service, tunnelled opaquely).
    fn new(s: &'a Setup) -> Self {
        let home = s.env.path("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join(".ssh/id_ed25519"), "PLANTED-PRIVATE-KEY").unwrap();
        let work = s.env.path("work");
        std::fs::create_dir_all(&work).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.env
            .run(&["vault", "allow", "default", "other.example.net"])
            .ok();
        s.settle();
        Self {
            s,
            home,
            work,
            host_tcp: TcpListener::bind("127.0.0.1:0").unwrap(),
            udp,
        }
    }

    fn script(&self, extra: &str) -> String {
        format!(
            r#"
curl -sS --max-time 3 --noproxy '*' -k https://{origin}/direct >/dev/null 2>&1 && echo "direct: OUT" || echo "direct: blocked"
env -i /usr/bin/curl -sS --max-time 3 -k https://{origin}/envi >/dev/null 2>&1 && echo "env-i: OUT" || echo "env-i: blocked"
getent hosts example.com >/dev/null 2>&1 && echo "dns: OUT" || echo "dns: blocked"
timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{tcp}' >/dev/null 2>&1 && echo "host-loopback: OUT" || echo "host-loopback: blocked"
timeout 3 bash -c 'exec 3<>/dev/tcp/169.254.169.254/80' >/dev/null 2>&1 && echo "metadata: OUT" || echo "metadata: blocked"
bash -c 'echo escaped > /dev/udp/127.0.0.1/{udp}' >/dev/null 2>&1
cat {home}/.ssh/id_ed25519 2>/dev/null || echo "ssh: hidden"
ls {data}/vault >/dev/null 2>&1 && echo "data-dir: OUT" || echo "data-dir: hidden"
echo written > made-inside && echo "cwd: writable"
curl -sS --max-time 10 -H 'Authorization: Bearer placeholder' https://api.openai.com/v1/models -o /dev/null -w 'through-airlock: %{{http_code}}\n'
curl -sS -k --max-time 10 https://other.example.net/allowed -o /dev/null -w 'allowlisted: %{{http_code}}\n'
curl -sS --max-time 10 https://unlisted.example.com/x -o /dev/null -w 'unlisted: %{{http_connect}}\n' 2>/dev/null
curl -sS -o /dev/null -w 'proposed: %{{http_code}}\n' -H "Authorization: Bearer $AIRLOCK_TOKEN" -H 'content-type: application/json' "$AIRLOCK_URL/v1/proposals" --data-binary '{{"services":[{{"action":"set","name":"unlisted","host":"unlisted.example.com","auth":{{"type":"bearer","token":"UNLISTED_KEY"}}}}],"credentials":[{{"key":"UNLISTED_KEY"}}],"user_message":"from the sandbox"}}'
{extra}
"#,
            origin = self.s.origin.addr,
            tcp = self.host_tcp.local_addr().unwrap().port(),
            udp = self.udp.local_addr().unwrap().port(),
            home = self.home.display(),
            data = self.s.env.data_dir.display(),
        )
    }

    /// Runs the `airlock run` command `c` in the working directory with `HOME` set, and checks
    /// that its first line says how it is sandboxed (starts with `first`).
    #[track_caller]
    fn run(&self, mut c: Command, first: &str) -> crate::support::Run {
        c.current_dir(&self.work).env("HOME", &self.home);
        let r = output(c, None);
        assert!(
            r.stderr
                .lines()
                .next()
                .is_some_and(|l| l.starts_with(first)),
            "{}",
            r.stderr
        );
        r
    }

    /// Every escape failed, every way through airlock worked, and nothing reached the origin
    /// but through airlock (with the credential, or tunnelled with none and logged).
    #[track_caller]
    fn check(&self, r: &crate::support::Run, extra: &[&str]) {
        let s = self.s;
        assert_eq!(r.code, 0, "{r:?}");
        for line in [
            "direct: blocked",
            "env-i: blocked",
            "dns: blocked",
            "host-loopback: blocked",
            "metadata: blocked",
            "ssh: hidden",
            "data-dir: hidden",
            "cwd: writable",
            "through-airlock: 200",
            "allowlisted: 200",
            "unlisted: 403",
            "proposed: 201",
        ]
        .iter()
        .chain(extra)
        {
            assert!(r.stdout.contains(line), "{line}: {}", r.stdout);
        }
        assert!(!r.stdout.contains("PLANTED"), "{}", r.stdout);
        assert_eq!(
            std::fs::read_to_string(self.work.join("made-inside")).unwrap(),
            "written\n"
        );
        let mut buf = [0u8; 16];
        assert!(
            self.udp.recv_from(&mut buf).is_err(),
            "a UDP datagram got out"
        );
        let recorded = s.origin.recorded();
        let direct: Vec<_> = recorded
            .iter()
            .filter(|q| {
                !q.request_line().starts_with("GET /v1/models")
                    && !q.request_line().starts_with("GET /allowed")
            })
            .collect();
        assert!(direct.is_empty(), "reached the origin directly: {direct:?}");
        let models = recorded
            .iter()
            .find(|q| q.request_line().starts_with("GET /v1/models"))
            .unwrap();
        assert_eq!(
            models.header("authorization"),
            [format!("Bearer {}", s.secret("OPENAI_KEY"))]
        );
        // The allowlisted tunnel carried no credential, and is a request-log row with its bytes.
        let allowed = recorded
            .iter()
            .find(|q| q.request_line().starts_with("GET /allowed"))
            .unwrap();
        assert!(
            allowed.header("authorization").is_empty(),
            "{}",
            allowed.head
        );
        let row = s.env.log_row("default", |r| {
            r["method"] == "CONNECT" && r["host"] == "other.example.net"
        });
        assert!(row["bytes"].as_u64().unwrap_or(0) > 0, "{row}");
    }
}

/// Rows 113-117, 119: inside the sandbox, direct HTTPS (curl `--noproxy '*'`, Python without
/// `HTTPS_PROXY`, a process started with `env -i`), DNS, the host's loopback services and the
/// metadata address, and UDP all fail; a planted `~/.ssh` key and airlock's data dir cannot be
/// read; the working directory is writable; through airlock a service gets its credential; the
/// run's first line says it is sandboxed.
#[test]
fn sandboxed_run_has_no_way_out_but_airlock() {
    let s = Setup::new("auto");
    let p = Probes::new(&s);
    let python = format!(
        r#"python3 -c 'import os,urllib.request,ssl; [os.environ.pop(k,None) for k in ("HTTPS_PROXY","https_proxy","HTTP_PROXY","http_proxy")]; urllib.request.urlopen("https://{}/py", timeout=3, context=ssl._create_unverified_context())' >/dev/null 2>&1 && echo "python: OUT" || echo "python: blocked""#,
        s.origin.addr
    );
    let proxy = format!("http://{}", s.proxy.addr);
    let script = p.script(&python);
    let c = s.env.command(&[
        "run",
        "--sandbox",
        "--proxy",
        &proxy,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let r = p.run(c, "airlock: run: sandboxed with bubblewrap");
    p.check(&r, &["python: blocked"]);
}

/// The container tests' image (tests/container-image.sh builds it offline; tests/run.sh runs
/// that) and the engine settings this host needs, for a command that runs podman.
fn with_podman(c: &mut Command) -> String {
    let image = std::env::var("AIRLOCK_TEST_IMAGE")
        .unwrap_or_else(|_| "localhost/airlock-test:bookworm".into());
    let conf =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/podman/containers.conf");
    let mut exists = Command::new("podman");
    if conf.exists() {
        c.env("CONTAINERS_CONF", &conf);
        exists.env("CONTAINERS_CONF", &conf);
    }
    let found = exists
        .args(["image", "exists", &image])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "no image {image} for the container tests: run tests/container-image.sh (tests/run.sh does)"
    );
    image
}

/// Rows 121-122: `run --sandbox=container` puts the agent in a Podman container with no network
/// but airlock's relay: the same escapes fail as under bubblewrap (the host's files are not
/// there at all), the same ways through airlock work, and the first line says how.
#[test]
fn container_run_has_no_way_out_but_airlock() {
    let s = Setup::new("auto");
    let p = Probes::new(&s);
    let proxy = format!("http://{}", s.proxy.addr);
    let script = p.script("");
    let mut c = s.env.command(&[]);
    let image = with_podman(&mut c);
    c.args([
        "run",
        "--sandbox=container",
        "--image",
        &image,
        "--proxy",
        &proxy,
        "--",
        "bash",
        "-c",
        &script,
    ]);
    let r = p.run(c, "airlock: run: sandboxed in a podman container");
    p.check(&r, &[]);
}

/// Row 123: `container-relay` keeps a relay container and prints what an orchestrator gives the
/// agent containers it starts; a container started with those settings (and nothing else of
/// airlock's) reaches a service through airlock with its credential and nothing directly; when
/// the relay stops, its container is gone and the token it printed is revoked.
#[test]
fn container_relay_gives_orchestrated_containers_only_airlock() {
    let s = Setup::new("auto");
    let proxy = format!("http://{}", s.proxy.addr);
    let name = format!("airlock-relay-test-{}", std::process::id());
    let out = s.env.path("relay.args");
    let mut c = s.env.command(&[]);
    let image = with_podman(&mut c);
    c.args([
        "container-relay",
        "--image",
        &image,
        "--proxy",
        &proxy,
        "--name",
        &name,
    ])
    .arg("--out")
    .arg(&out)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut relay = c.spawn().unwrap();
    let start = std::time::Instant::now();
    while !out.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30) && relay.try_wait().unwrap().is_none(),
            "container-relay printed no settings"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let settings: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        settings.iter().any(|a| *a == format!("container:{name}")),
        "{settings:?}"
    );
    // The variables come in a file: the token is on no command line.
    assert!(
        !settings.iter().any(|a| a.contains("AIRLOCK_TOKEN")),
        "{settings:?}"
    );
    let env_file = &settings[settings.iter().position(|a| a == "--env-file").unwrap() + 1];
    let token = std::fs::read_to_string(env_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("AIRLOCK_TOKEN=").map(str::to_owned))
        .unwrap();
    let script = format!(
        r#"
curl -sS --max-time 10 -H 'Authorization: Bearer placeholder' https://api.openai.com/v1/models -o /dev/null -w 'through-airlock: %{{http_code}}
'
curl -sS --max-time 3 --noproxy '*' -k https://{origin}/direct >/dev/null 2>&1 && echo "direct: OUT" || echo "direct: blocked"
getent hosts example.com >/dev/null 2>&1 && echo "dns: OUT" || echo "dns: blocked"
"#,
        origin = s.origin.addr
    );
    let mut agent = Command::new("podman");
    with_podman(&mut agent);
    agent
        .args(["run", "--rm", "--pull", "never"])
        .args(&settings)
        .args([&image, "bash", "-c", &script]);
    let r = output(agent, None);
    assert_eq!(r.code, 0, "{r:?}");
    for line in ["through-airlock: 200", "direct: blocked", "dns: blocked"] {
        assert!(r.stdout.contains(line), "{line}: {}", r.stdout);
    }
    let models = s
        .origin
        .recorded()
        .into_iter()
        .find(|q| q.request_line().starts_with("GET /v1/models"))
        .unwrap();
    assert_eq!(
        models.header("authorization"),
        [format!("Bearer {}", s.secret("OPENAI_KEY"))]
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(relay.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = relay.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut relay.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    let mut exists = Command::new("podman");
    with_podman(&mut exists);
    let gone = exists
        .args(["container", "exists", &name])
        .status()
        .unwrap();
    assert!(!gone.success(), "the relay container {name} is still there");
    // The printed token no longer opens the proxy.
    let r = output(
        {
            let mut c = Command::new("curl");
            c.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"))
                .arg(format!("http://{}/v1/discover", s.proxy.addr));
            c
        },
        None,
    );
    assert_eq!(r.stdout, "401", "{r:?}");
}

/// Row 118: without bubblewrap (or, for `--sandbox=container`, without Podman or Docker, or
/// without `--image`), `--sandbox` stops with one line naming the fix and the agent never runs.
#[test]
fn sandbox_without_its_tool_refuses_to_run() {
    let s = Setup::new("auto");
    let proxy = format!("http://{}", s.proxy.addr);
    for (sandbox, image, expected) in [
        ("--sandbox", None, "--sandbox needs bubblewrap (bwrap)"),
        (
            "--sandbox=container",
            Some("localhost/airlock-test:bookworm"),
            "--sandbox=container needs Podman or Docker (apt-get install podman)",
        ),
    ] {
        let mut c = s.env.command(&["run", sandbox, "--proxy", &proxy]);
        if let Some(image) = image {
            c.args(["--image", image]);
        }
        c.args(["--", "/bin/sh", "-c", "echo the-agent-ran"]);
        c.env("PATH", s.env.path("empty-path"));
        let r = output(c, None);
        assert!(r.fails().contains(expected), "{}", r.stderr);
        assert!(!r.stdout.contains("the-agent-ran"), "{}", r.stdout);
    }
    let r = s.env.run(&[
        "run",
        "--sandbox=container",
        "--proxy",
        &proxy,
        "--",
        "/bin/sh",
        "-c",
        "echo the-agent-ran",
    ]);
    assert!(
        r.fails()
            .contains("--sandbox=container needs --image IMAGE"),
        "{}",
        r.stderr
    );
}
