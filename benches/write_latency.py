"""Write-to-served latency with 1,000 services: time from `credential set` returning to serve's
/healthz reporting the new generation, 12 writes, median and range. Everything runs on loopback in
a temp dir. Usage: python3 benches/write_latency.py target/release/airlock
(alternate two builds for an A/B: the figure is a ratio's worth on a shared machine)."""
import http.client, json, os, subprocess, sys, tempfile, time

bin_ = sys.argv[1]
d = tempfile.mkdtemp()
data = os.path.join(d, "data")
a = [bin_, "--data-dir", data]
run = lambda *args, inp=None: subprocess.run(a + list(args), input=inp, capture_output=True, check=True)
run("init")
lines = ["services:"]
for i in range(1, 1001):
    run("credential", "set", f"KEY_{i}", inp=f"v-{i}-0123456789abcdef".encode())
    lines.append(f"  - {{name: svc{i}, host: svc{i}.example.com, auth: {{type: bearer, token: KEY_{i}}}}}")
open(os.path.join(d, "s.yaml"), "w").write("\n".join(lines) + "\n")
run("service", "set", "-f", os.path.join(d, "s.yaml"))
serve = subprocess.Popen(a + ["serve", "--listen", "127.0.0.1:0", "--workers", "2", "--no-admin"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
line = serve.stdout.readline()
addr = line.split()[1].split("=")[1]
host, port = addr.rsplit(":", 1)
def gen():
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    c.request("GET", "/healthz")
    g = json.loads(c.getresponse().read())["generation"]
    c.close()
    return g
time.sleep(1)
out = []
for n in range(12):
    g0 = gen()
    run("credential", "set", "KEY_7", inp=f"new-{n}-0123456789".encode())
    t0 = time.perf_counter()
    while gen() <= g0:
        time.sleep(0.001)
    out.append((time.perf_counter() - t0) * 1000)
serve.terminate()
out.sort()
print(json.dumps({"write_served_ms_median": round(out[len(out)//2], 1), "min": round(out[0], 1), "max": round(out[-1], 1)}))
