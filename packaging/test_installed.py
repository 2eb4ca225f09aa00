#!/usr/bin/env python3
"""The installed .deb, checked and run the way its systemd units run it (issue 8).

Runs as root inside a clean Debian root where `dpkg -i airlock_*.deb` has just happened
(packaging/test-deb.sh makes that root with debootstrap). There is no systemd as PID 1 here, so
`start_unit` does what systemd would do from the unit file: the User, Group and
SupplementaryGroups, UMask, LimitNOFILE and LimitMEMLOCK, the State/Runtime/Cache directories
with their modes, LoadCredential into $CREDENTIALS_DIRECTORY, a $NOTIFY_SOCKET for
Type=notify, ExecStartPre, ExecStart and ExecReload. The namespace options (ProtectSystem and
friends) need systemd itself; `systemd-analyze verify` and `systemd-analyze security` check
those lines.

Then it walks the manual's Deployment chapter (docs/src/deployment.md): an operator (a member of airlock and
airlock-operators) adds an agent, the agent is refused, proposes a service, the operator
approves it with the key through the admin socket's JSON API, and the agent's next request gets
the key injected; the metrics count that request; a reload keeps it served; an online backup
is taken. Then remove keeps the data, reinstall keeps the key and the vault, purge deletes both
after saying so, and the Deployment chapter's restore on a fresh install brings the old agent token, CA
and credential back.

Usage: test_installed.py /path/to/airlock_*.deb
"""

import grp
import hashlib
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEB = sys.argv[1]
CONFIG = "/etc/airlock/airlock.toml"
UNITS = "/lib/systemd/system"
HOST = "api.example.test"
BACKUP = "/root/airlock-backup"
SECRET = "sk-test-" + hashlib.sha256(os.urandom(16)).hexdigest()[:24]
checks = 0


def check(ok, what):
    global checks
    if not ok:
        raise AssertionError(what)
    checks += 1
    print(f"ok  {what}")


def run(cmd, user=None, input=None, ok=True):
    """Runs `cmd` (a list), as `user` with that user's groups when given."""
    kw = {}
    if user:
        pw = pwd.getpwnam(user)
        kw = dict(user=pw.pw_uid, group=pw.pw_gid,
                  extra_groups=os.getgrouplist(user, pw.pw_gid), umask=0o022)
    r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60, **kw)
    if ok and r.returncode != 0:
        raise AssertionError(f"{cmd} as {user or 'root'}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def mode_owner(path):
    st = os.stat(path)
    return (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name)


def unit(name):
    """The unit file as {key: [values]} of its [Service] section (keys may repeat)."""
    section, keys = None, {}
    with open(os.path.join(UNITS, name)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]":
                k, _, v = line.partition("=")
                keys.setdefault(k, []).append(v)
    return keys


def one(u, key, default=None):
    return u.get(key, [default])[-1]


class Service:
    """A unit's main process started as systemd would start it (killed when this script ends)."""

    running = []

    def __init__(self, name, extra_args=()):
        self.name = name
        u = unit(name)
        self.unit = u
        user, group = one(u, "User"), one(u, "Group")
        uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
        groups = [grp.getgrnam(g).gr_gid for g in one(u, "SupplementaryGroups", "").split()]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        for key, base in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run"),
                          ("CacheDirectory", "/var/cache")):
            for d in one(u, key, "").split():
                path = os.path.join(base, d)
                os.makedirs(path, exist_ok=True)
                os.chown(path, uid, gid)
                os.chmod(path, int(one(u, key + "Mode", "0755"), 8))
        creds = f"/run/credentials/{name}"
        for spec in u.get("LoadCredential", []):
            os.makedirs(creds, mode=0o500, exist_ok=True)
            cred, _, src = spec.partition(":")
            shutil.copyfile(src, os.path.join(creds, cred))
            os.chmod(os.path.join(creds, cred), 0o400)
            os.chown(os.path.join(creds, cred), uid, gid)
            os.chown(creds, uid, gid)
            env["CREDENTIALS_DIRECTORY"] = creds
        self.notify_path = None
        if one(u, "Type") == "notify":
            self.notify_path = tempfile.mktemp(prefix="notify-", dir="/run")
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(self.notify_path)
            os.chmod(self.notify_path, 0o777)
            env["NOTIFY_SOCKET"] = self.notify_path
        # LimitNOFILE/LimitMEMLOCK through prlimit(1) and the user switch (with
        # NoNewPrivileges) through setpriv(1), both from util-linux, as root before the exec.
        # Without CAP_SYS_RESOURCE (as in some sandboxes) a limit stops at this machine's hard
        # limit, which is said rather than hidden.
        wrapper = ["prlimit"]
        inf = resource.RLIM_INFINITY
        for opt, key, r, default in (("--nofile", "LimitNOFILE", resource.RLIMIT_NOFILE, "1024"),
                                     ("--memlock", "LimitMEMLOCK", resource.RLIMIT_MEMLOCK, "8388608")):
            want = one(u, key, default)
            want = inf if want == "infinity" else int(want)
            hard = resource.getrlimit(r)[1]
            if hard != inf and (want == inf or want > hard):
                print(f"note {name}: {key} stops at this machine's hard limit {hard}")
                want = hard
            v = "unlimited" if want == inf else str(want)
            wrapper.append(f"{opt}={v}:{v}")
        wrapper += ["--", "setpriv", f"--reuid={uid}", f"--regid={gid}",
                    f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"]
        if one(u, "NoNewPrivileges") == "yes":
            wrapper.append("--no-new-privs")
        wrapper.append("--")
        self.wrapper = wrapper
        self.spawn = dict(umask=int(one(u, "UMask", "0022"), 8), env=env)
        for pre in u.get("ExecStartPre", []):
            r = subprocess.run(wrapper + pre.split(), capture_output=True, text=True, timeout=30,
                               **self.spawn)
            check(r.returncode == 0, f"{name}: ExecStartPre {pre} ({r.stderr.strip()})")
        cmd = one(u, "ExecStart").split() + list(extra_args)
        self.proc = subprocess.Popen(wrapper + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, **self.spawn)
        Service.running.append(self.proc)
        self.stderr = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def log(self):
        return "".join(self.stderr)

    def ready_line(self):
        line = self.proc.stdout.readline()
        check(line.startswith("ready "), f"{self.name} printed its ready line: {line!r} {self.log()}")
        return dict(w.split("=", 1) for w in line.split()[1:])

    def notified(self, what, timeout=10):
        self.notify.settimeout(timeout)
        msg = self.notify.recv(4096).decode()
        return what in msg.split("\n")

    def reload(self):
        for cmd in self.unit.get("ExecReload", []):
            cmd = cmd.replace("$MAINPID", str(self.proc.pid))
            r = subprocess.run(self.wrapper + cmd.split(), capture_output=True, text=True,
                               timeout=30, **self.spawn)
            check(r.returncode == 0, f"{self.name}: ExecReload {cmd} ({r.stderr.strip()})")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def wait_for(pred, what, timeout=10):
    """Polls `pred` until it returns True (a check) or `timeout` passes (a failure showing what
    it returned last)."""
    end = time.time() + timeout
    while (last := pred()) is not True:
        if time.time() > end:
            raise AssertionError(f"timed out: {what}; last: {last}")
        time.sleep(0.05)
    check(True, what)


def origin():
    """A TLS origin for api.example.test on 127.0.0.1:0 that answers with the SHA-256 of the
    Authorization header it got (an echo of the header itself would be masked by airlock)."""
    d = tempfile.mkdtemp()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2",
         "-subj", "/CN=install test CA"],
        ["req", *ec, "-keyout", f"{d}/key.pem", "-out", f"{d}/leaf.csr", "-subj", f"/CN={HOST}"],
        ["x509", "-req", "-in", f"{d}/leaf.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
         "-CAcreateserial", "-out", f"{d}/cert.pem", "-days", "2",
         "-extfile", "/dev/stdin"],
    ):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True,
                       input=f"subjectAltName=DNS:{HOST}\nbasicConstraints=CA:FALSE\n".encode())

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            auth = self.headers.get("Authorization", "").encode()
            body = json.dumps({"authorization_sha256": hashlib.sha256(auth).hexdigest(),
                               "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{d}/cert.pem", f"{d}/key.pem")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # The data plane runs as airlock: the extra upstream CA must be readable by it.
    shutil.copyfile(f"{d}/ca.pem", "/etc/airlock/test-upstream-ca.pem")
    os.chmod("/etc/airlock/test-upstream-ca.pem", 0o644)
    return server.server_address[1]


def curl(args, user=None):
    r = run(["curl", "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"] + args, user=user,
            ok=False)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body, r.stderr


def installed_layout():
    for user, group, also in (("airlock", "airlock", []),
                              ("airlock-admin", "airlock-operators", ["airlock"])):
        pw = pwd.getpwnam(user)
        check(grp.getgrgid(pw.pw_gid).gr_name == group, f"user {user} has primary group {group}")
        check(pw.pw_shell.endswith("nologin"), f"user {user} cannot log in")
        for g in also:
            check(user in grp.getgrnam(g).gr_mem, f"{user} is in group {g}")
    check(mode_owner("/etc/airlock/master.key") == (0o600, "root", "root"),
          "root key /etc/airlock/master.key is 0600 root:root")
    check(os.path.getsize("/etc/airlock/master.key") == 32, "root key is 32 bytes")
    check(mode_owner("/var/lib/airlock") == (0o2770, "airlock", "airlock"),
          "/var/lib/airlock is 2770 airlock:airlock")
    for f in ("data.mdb", "lock.mdb"):
        check(mode_owner(f"/var/lib/airlock/vault/{f}") == (0o660, "airlock", "airlock"),
              f"vault/{f} is 0660 airlock:airlock (shared with the admin process)")
    check(mode_owner("/var/lib/airlock/ca-key.wrapped")[0] == 0o600, "wrapped CA key is 0600")
    check(not os.path.exists("/var/lib/airlock/master.key"), "no root key in the data dir")
    conffiles = open("/var/lib/dpkg/info/airlock.conffiles").read().split()
    check(conffiles == [CONFIG], f"{CONFIG} is the package's conffile")
    r = run(["airlock", "config", "check", CONFIG])
    check(r.stdout.strip() == f"{CONFIG}: ok", "airlock config check accepts the packaged config")
    r = run(["systemd-analyze", "verify", f"{UNITS}/airlock.service", f"{UNITS}/airlock-admin.service"])
    check(r.stdout + r.stderr == "", f"systemd-analyze verify is silent on both units: {r.stderr}")
    for name in ("airlock.service", "airlock-admin.service"):
        r = run(["systemd-analyze", "security", "--offline=yes", f"{UNITS}/{name}"])
        level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
        check(level and float(level.group(1)) < 5.0, f"{name}: exposure {level and level.group(1)} < 5")
        check(os.path.islink(f"/etc/systemd/system/multi-user.target.wants/{name}"), f"{name} is enabled")


def walkthrough():
    port = origin()
    run(["useradd", "--create-home", "-G", "airlock,airlock-operators", "olivia"])
    run(["useradd", "--create-home", "mallory"])
    airlock = data_plane(port)
    ready = airlock.ready_line()
    check(airlock.notified("READY=1"), "airlock.service sent READY=1 to $NOTIFY_SOCKET")
    proxy, metrics = ready["proxy"], ready["metrics"]
    admin = Service("airlock-admin.service")
    sock = "/run/airlock-admin/admin.sock"
    api_sock = "/run/airlock-admin/api.sock"
    wait_for(lambda: os.path.exists(sock) and os.path.exists(api_sock), f"admin sockets {sock}, {api_sock}")
    check(mode_owner("/run/airlock-admin")[0] == 0o750, "admin socket directory is 0750")
    for s in (sock, api_sock):
        check(mode_owner(s)[0:3:2] == (0o660, "airlock-operators"),
              f"{s} is 0660, group airlock-operators")

    # The operator (groups airlock and airlock-operators) sets up an agent with the CLI.
    cli = ["airlock", "--config", CONFIG]
    token = run(cli + ["agent", "create", "bot", "--vault", "default"], user="olivia").stdout.split()[-1]
    shutil.copyfile("/var/lib/airlock/ca.pem", "/tmp/airlock-ca.pem")
    via = ["--proxy", f"http://{token}:default@{proxy}", "--cacert", "/tmp/airlock-ca.pem"]
    code, _, err = curl(via + [f"https://{HOST}/v1/models"])
    check(code == 0 and "403" in err, f"no service yet: CONNECT refused with 403 ({err.strip()})")

    # The agent proposes; the operator approves through the admin socket with the key.
    proposal = {"services": [{"action": "set", "name": "example", "host": HOST,
                              "auth": {"type": "bearer", "token": "EXAMPLE_KEY"}}],
                "credentials": [{"action": "set", "key": "EXAMPLE_KEY", "description": "Example key"}],
                "message": "needed for the install test"}
    code, body, _ = curl(["--noproxy", "*", "-H", f"Authorization: Bearer {token}", "-H",
                          "content-type: application/json", "--data-binary", json.dumps(proposal),
                          f"http://{proxy}/v1/proposals"])
    check(code == 201, f"proposal created: {body}")
    pid = json.loads(body)["id"]
    admin_api = ["--unix-socket", api_sock, "-H", "Host: localhost"]
    code, body, _ = curl(admin_api + ["http://localhost/api/proposals?status=pending"], user="olivia")
    check(code == 200 and any(p["id"] == pid for p in json.loads(body)),
          "an operator lists the pending proposal on the admin API socket")
    code, _, _ = curl(["--unix-socket", sock, "http://localhost/api/proposals"], user="olivia")
    check(code == 404, "the JSON API is not on the UI socket (the one a browser bridge forwards)")
    code, _, err = curl(admin_api + ["http://localhost/api/proposals"], user="mallory")
    check(code == 0 and ("Permission denied" in err or "Couldn't connect" in err),
          f"a user outside airlock-operators cannot reach the socket ({err.strip()})")
    code, body, _ = curl(["--unix-socket", sock, "-H", "Host: localhost", "http://localhost/proposals"],
                         user="olivia")
    check(code in (200, 303), f"the admin UI answers on the socket ({code})")
    code, body, _ = curl(admin_api + ["-H", "content-type: application/json", "--data-binary",
                                      json.dumps({"values": {"EXAMPLE_KEY": SECRET}}),
                                      f"http://localhost/api/proposals/{pid}/approve"], user="olivia")
    check(code == 200, f"approved on the admin socket: {body}")
    olivia = pwd.getpwnam("olivia").pw_uid
    check(json.loads(body)["decided_by"] == f"admin-socket uid={olivia}",
          "the approval is audited with the operator's uid")
    code, text, _ = curl(admin_api + ["http://localhost/metrics"], user="olivia")
    check(code == 200 and 'airlock_admin_proposals{status="applied"} 1' in text,
          "the admin process serves its own metrics on its socket")

    wait_for(lambda: served(proxy, token), "the agent's next request reaches the origin with the key injected")

    # Metrics: that request is counted (the request-log writer batches, so poll).
    def counted():
        _, text, _ = curl(["--noproxy", "*", f"http://{metrics}/metrics"])
        counted = re.search(
            r'airlock_requests_total\{vault="default",service="example",class="2xx",error=""\} [1-9]', text)
        return (bool(counted) and SECRET not in text) or text
    wait_for(counted, "the data plane's metrics count the injected request, without the secret")

    # Reload the way `systemctl reload airlock` does; connections and settings survive.
    airlock.reload()
    check(airlock.notified("RELOADING=1") and airlock.notified("READY=1"),
          "reload sends RELOADING=1 then READY=1")
    wait_for(lambda: f"reloaded {CONFIG}" in airlock.log(), "reloaded in the log")
    admin.reload()
    wait_for(lambda: f"reloaded {CONFIG}: log_level applied" in admin.log(),
             "the admin process reloads on SIGHUP too")
    code, _, _ = curl(admin_api + ["http://localhost/api/vaults"], user="olivia")
    check(code == 200, "the admin socket still answers after its reload")
    check(served(proxy, token) is True, "still served after the reload")
    check(SECRET not in airlock.log() + admin.log(), "the secret is in no log line")

    # The Deployment chapter's online backup: mdb_copy of the vault, the CA files, the key kept apart.
    os.makedirs(f"{BACKUP}/vault")
    run(["mdb_copy", "/var/lib/airlock/vault", f"{BACKUP}/vault"])
    for f in ("/var/lib/airlock/ca.pem", "/var/lib/airlock/ca-key.wrapped", "/etc/airlock/master.key"):
        shutil.copy2(f, BACKUP)
    check(os.path.getsize(f"{BACKUP}/vault/data.mdb") > 0, "online backup with mdb_copy")
    check(airlock.stop() == 0 and admin.stop() in (0, -signal.SIGTERM), "both services stop on SIGTERM")
    return port, token


def served(proxy, token):
    """True when the agent's request through `proxy` reaches the origin with the key injected;
    else what it got."""
    c, b, e = curl(["--proxy", f"http://{token}:default@{proxy}", "--cacert", "/tmp/airlock-ca.pem",
                    "-H", "Authorization: Bearer placeholder", f"https://{HOST}/v1/models"])
    want = hashlib.sha256(f"Bearer {SECRET}".encode()).hexdigest()
    return (c == 200 and json.loads(b)["authorization_sha256"] == want) or (c, b, e)


def data_plane(port):
    return Service("airlock.service", [
        "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--workers", "2",
        "--resolve", f"{HOST}:443:127.0.0.1:{port}", "--network-allow", "127.0.0.1/32",
        "--upstream-ca-file", "/etc/airlock/test-upstream-ca.pem"])


def restore(port, token):
    """A fresh install, then the Deployment chapter's restore: the agent's token, the key and the CA from
    the backup work again."""
    run(["dpkg", "-i", DEB])
    shutil.copyfile(f"{BACKUP}/vault/data.mdb", "/var/lib/airlock/vault/data.mdb")
    shutil.copy2(f"{BACKUP}/ca.pem", "/var/lib/airlock/")
    shutil.copy2(f"{BACKUP}/ca-key.wrapped", "/var/lib/airlock/")
    shutil.copy2(f"{BACKUP}/master.key", "/etc/airlock/master.key")
    os.chmod("/etc/airlock/master.key", 0o600)
    run(["chown", "-R", "airlock:airlock", "/var/lib/airlock"])
    os.chmod("/var/lib/airlock/vault/data.mdb", 0o660)
    airlock = data_plane(port)
    proxy = airlock.ready_line()["proxy"]
    wait_for(lambda: served(proxy, token), "after a restore, the old token's request gets the key injected")
    check(airlock.stop() == 0, "the restored data plane stops on SIGTERM")


def remove_reinstall_purge():
    key = open("/etc/airlock/master.key", "rb").read()
    r = run(["dpkg", "-r", "airlock"])
    check("kept /var/lib/airlock" in r.stdout, "remove says the data is kept")
    check(os.path.exists("/var/lib/airlock/vault/data.mdb") and os.path.exists("/etc/airlock/master.key"),
          "remove keeps the vault and the root key")
    run(["dpkg", "-i", DEB])
    check(open("/etc/airlock/master.key", "rb").read() == key, "reinstall keeps the root key")
    r = run(["airlock", "--config", CONFIG, "credential", "list", "--vault", "default"], user="olivia")
    check("EXAMPLE_KEY" in r.stdout, "reinstall keeps the vault (the approved credential is there)")
    r = run(["dpkg", "-P", "airlock"])
    check("purge: deleting /var/lib/airlock" in r.stdout, "purge says what it deletes")
    check(not os.path.exists("/var/lib/airlock") and not os.path.exists("/etc/airlock/master.key"),
          "purge deletes the vault and the root key")


installed_layout()
try:
    port, token = walkthrough()
    remove_reinstall_purge()
    restore(port, token)
finally:
    for p in Service.running:
        p.kill()
print(f"packaged install: {checks} checks passed")
