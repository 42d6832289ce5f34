#!/usr/bin/env python3
"""Load runs for issue 17 (keep-alive race; a slow target). Loopback only, bounded in time.

idle (default): three upstreams close idle keep-alive connections after IDLE seconds without
  announcing it (like app servers with a short keep-alive timeout). A client sends GET and POST
  requests alternately at a fixed rate, with exponential gaps so reuse lands on every phase of
  the upstreams' idle timer, for DURATION seconds. Prints the count of responses by status and
  how many requests an upstream executed twice. With --learning both, runs once with
  learn_idle_timeout = false and once with it on (the default), and prints both.

slow: three upstreams answer at once, except that one of them answers every request after
  --slow-delay seconds while its /health stays fast. WORKERS client threads send GETs in a loop
  (keep-alive, 10 ms apart) for DURATION seconds, once per balancer (and once with peak_ewma and
  --hedge-after), after one run with no slow target. Prints p50/p99/p99.9/max and errors.

Exit 1 if any request failed (idle) or any run had errors (slow).

usage: scripts/idle-race-load.py [path/to/gatewise] [--mode idle|slow] [--rate 40]
       [--duration 30] [--idle 0.2] [--learning on|off|both] [--crossing 0.02]
       [--workers 4] [--slow-delay 3] [--hedge-after 50ms] [--only 0,3] [--access-log PATH]

On loopback an idle close reaches gatewise within microseconds, so the race is rare; --crossing
models the network round trip in which a request and the upstream's close cross on the wire.
"""
import argparse, collections, http.client, http.server, os, random, socket, subprocess, sys, tempfile, threading, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in two writes: without this, Nagle holds the body for the client's
    # delayed ACK (40 ms on Linux), and every request looks 40 ms slow.
    disable_nagle_algorithm = True
    timeout = None  # set per run: idle connections are closed after it
    delay = {}      # port -> seconds every non-health request waits
    crossing = 0.0  # a request arriving this close to the idle timeout crosses the close
    crossed = 0
    def setup(self):
        super().setup(); self.idle_from = time.monotonic()
    executed = collections.Counter()
    lock = threading.Lock()
    def log_message(self, *a): pass
    def _answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n: self.rfile.read(n)
        if Upstream.timeout and Upstream.crossing and time.monotonic() - self.idle_from >= Upstream.timeout - Upstream.crossing:
            # Our idle timer fired as the request was on its way (a network round trip): the
            # connection closes, the request unanswered and not executed.
            with Upstream.lock: Upstream.crossed += 1
            self.close_connection = True
            return
        if self.path != "/health":
            d = Upstream.delay.get(self.server.server_address[1], 0)
            if d: time.sleep(d)
            rid = self.headers.get("x-request-id", "")
            with Upstream.lock: Upstream.executed[rid] += 1
        try:
            self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
        except OSError:
            pass  # gatewise cancelled the attempt (a hedge won, or the client left)
        self.idle_from = time.monotonic()
    do_GET = do_POST = _answer

def upstreams(n):
    ports = []
    for _ in range(n):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        srv.daemon_threads = True
        ports.append(srv.server_address[1])
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    return ports

ACCESS_LOG = "off"

def start_gateway(binary, ports, upstream_extra="", route_extra="", health=False):
    gw_port = free_port()
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    cfg = f"""access_log = "{ACCESS_LOG}"
[admin]
listen = "off"
[[listener]]
name = "public"
listen = "127.0.0.1:{gw_port}"
[[route]]
path_prefix = "/"
upstream = "app"
{route_extra}
[upstream.app]
targets = [{targets}]
slow_start = "0s"
{upstream_extra}
"""
    if health:
        cfg += '[upstream.app.health]\npath = "/health"\ninterval = "500ms"\nrise = 1\n'
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False); f.write(cfg); f.close()
    gw = subprocess.Popen([binary, "run", "--config", f.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=5); c.request("GET", "/warmup")
            if c.getresponse().status == 200: break
        except OSError: pass
        if gw.poll() is not None or time.time() > deadline:
            sys.exit(f"gatewise did not come up with:\n{cfg}")
        time.sleep(0.05)
    return gw, gw_port, f.name

def stop_gateway(gw, cfg_path):
    # SIGTERM drains (drain_delay, 5 s by default); a second one stops at once.
    gw.terminate(); time.sleep(0.2); gw.terminate(); gw.wait(10); os.unlink(cfg_path)

def idle_run(a, learning):
    Upstream.timeout = a.idle
    Upstream.crossing = a.crossing; Upstream.crossed = 0
    Upstream.executed.clear()
    ports = upstreams(3)
    gw, gw_port, cfg = start_gateway(a.gatewise, ports, f"learn_idle_timeout = {learning}")
    try:
        counts = collections.Counter(); sent = 0
        lock = threading.Lock(); threads = []
        def one(method, rid):
            try:
                c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=10)
                body = b"payload" if method == "POST" else None
                c.request(method, "/", body=body, headers={"x-request-id": rid})
                r = c.getresponse(); r.read(); key = f"{method} {r.status}"
                if r.status != 200: key += " " + (r.getheader("proxy-status") or "")
            except OSError as e:
                key = f"{method} transport error {e.__class__.__name__}"
            with lock: counts[key] += 1
        start = time.time(); rng = random.Random(7)
        while time.time() - start < a.duration:
            method = "GET" if sent % 2 == 0 else "POST"
            t = threading.Thread(target=one, args=(method, f"r{sent}")); t.start(); threads.append(t)
            sent += 1
            time.sleep(rng.expovariate(a.rate))
        for t in threads: t.join(15)
        dup = sum(1 for k, v in Upstream.executed.items() if k.startswith("r") and v > 1)
        print(f"learn_idle_timeout = {learning}: sent {sent} requests in {a.duration:.0f}s at ~{a.rate:.0f}/s, upstreams close idle after {a.idle}s")
        for k, v in sorted(counts.items()): print(f"  {k}: {v}")
        print(f"  executed twice: {dup}; requests that crossed an idle close: {Upstream.crossed}")
        failed = sum(v for k, v in counts.items() if not k.endswith(" 200"))
        print(f"  {sent - failed} passed, {failed} failed")
        return failed + dup
    finally:
        stop_gateway(gw, cfg)

def pct(sorted_lat, q):
    return sorted_lat[min(len(sorted_lat) - 1, max(0, int(len(sorted_lat) * q + 0.999999) - 1))]

def slow_run(a, label, ports, upstream_extra, route_extra="", slow_port=None):
    Upstream.delay.clear()
    gw, gw_port, cfg = start_gateway(a.gatewise, ports, upstream_extra, route_extra, health=True)
    try:
        # Warm: every target answers fast and is measured; then one target turns slow.
        c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
        for _ in range(30):
            c.request("GET", "/"); c.getresponse().read()
        c.close()
        if slow_port: Upstream.delay[slow_port] = a.slow_delay
        lat = []; errors = collections.Counter(); lock = threading.Lock()
        end = time.time() + a.duration
        def worker():
            c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
            while time.time() < end:
                t0 = time.perf_counter()
                try:
                    c.request("GET", "/"); r = c.getresponse(); r.read(); status = r.status
                except OSError as e:
                    status = e.__class__.__name__; c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    if status != 200: errors[status] += 1
                time.sleep(0.01)
        ts = [threading.Thread(target=worker) for _ in range(a.workers)]
        for t in ts: t.start()
        for t in ts: t.join()
        lat.sort()
        ms = lambda s: f"{s * 1000:8.1f} ms"
        print(f"  {label:<34} n={len(lat):5}  p50 {ms(pct(lat, .5))}  p99 {ms(pct(lat, .99))}  "
              f"p99.9 {ms(pct(lat, .999))}  max {ms(lat[-1])}  >=1s {sum(1 for x in lat if x >= 1):3}  errors {dict(errors) or 0}")
        return sum(errors.values())
    finally:
        stop_gateway(gw, cfg)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gatewise", nargs="?", default="target/release/gatewise")
    ap.add_argument("--mode", choices=["idle", "slow"], default="idle")
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--idle", type=float, default=1.0)
    ap.add_argument("--learning", choices=["on", "off", "both"], default="on")
    ap.add_argument("--crossing", type=float, default=0.0,
                    help="idle mode: seconds before the idle timeout in which a request crosses the close (models a network round trip; loopback alone has ~0)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--slow-delay", type=float, default=3.0)
    ap.add_argument("--hedge-after", default="50ms")
    ap.add_argument("--only", help="slow mode: comma-separated run numbers (0 = no slow target)")
    ap.add_argument("--access-log", default="off", help="access_log destination for gatewise")
    a = ap.parse_args()
    global ACCESS_LOG; ACCESS_LOG = a.access_log
    bad = 0
    if a.mode == "idle":
        runs = {"on": ["true"], "off": ["false"], "both": ["false", "true"]}[a.learning]
        for learning in runs: bad += idle_run(a, learning)
    else:
        Upstream.timeout = None
        ports = upstreams(3)
        print(f"{a.workers} workers, GET every 10 ms each, {a.duration:.0f}s per run; one of three targets answers after {a.slow_delay}s (health fast)")
        only = a.only.split(",") if a.only else None
        runs = [("no slow target, peak_ewma", 'balance = "peak_ewma"', "", None)]
        for balance in ["round_robin", "least_request", "peak_ewma"]:
            runs.append((f"slow target, {balance}", f'balance = "{balance}"', "", ports[0]))
        for balance in ["round_robin", "peak_ewma"]:
            runs.append((f"slow target, {balance}, hedge {a.hedge_after}", f'balance = "{balance}"', f'hedge_after = "{a.hedge_after}"', ports[0]))
        for i, (label, up, route, slow) in enumerate(runs):
            if only is None or str(i) in only:
                bad += slow_run(a, label, ports, up, route, slow)
    sys.exit(1 if bad else 0)

if __name__ == "__main__":
    main()
