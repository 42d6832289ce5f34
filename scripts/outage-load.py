#!/usr/bin/env python3
"""Total outage under load (issue #12: outage hold, fast recovery).

Three upstream processes sit behind gatewise (default health checks: HTTP every 2 s, rise 2,
fall 2; default outage_hold 10 s). A client sends GET and POST requests alternately at a fixed
rate, each on its own connection. After WARM seconds every upstream is SIGKILLed (a crash: the
port refuses, open connections die), and OUTAGE seconds later all of them start again on the
same ports. The load goes on for AFTER seconds more. Prints:

- responses by status (errors are anything but 200, with gatewise's Proxy-Status);
- held requests (access-log lines with held_ms > 0), the longest hold, and how many of the
  held were served;
- recovery time: from the first upstream listening again to the first 200 a client received
  after that;
- gatewise's hold counters from /metrics.

Loopback only, bounded in time (~WARM + OUTAGE + AFTER + 15 s). Exit 1 if a request failed
that was not in flight on a killed upstream (the access log says whether its bytes were sent).

`--outage-hold 0s` turns the hold off, for comparison (fast 503s and 502s during the outage).

usage: scripts/outage-load.py [path/to/gatewise] [--rate 100] [--warm 3] [--outage 3] [--after 3]
                              [--outage-hold 10s]
"""
import argparse, collections, http.client, http.server, json, os, signal, socket, subprocess
import sys, tempfile, threading, time


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


class App(http.server.BaseHTTPRequestHandler):
    """One upstream: 200 on every path (its /health included)."""
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n: self.rfile.read(n)
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    do_GET = do_POST = _answer


def serve(port):
    """`--serve PORT`: run one upstream in this process until killed."""
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    http.server.ThreadingHTTPServer(("127.0.0.1", port), App).serve_forever()


def start_upstream(port):
    p = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    give_up = time.time() + 5
    while time.time() < give_up:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return p
        except OSError:
            time.sleep(0.002)
    sys.exit(f"upstream on {port} did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gatewise", nargs="?", default="target/release/gatewise")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--warm", type=float, default=3.0)
    ap.add_argument("--outage", type=float, default=3.0)
    ap.add_argument("--after", type=float, default=3.0)
    ap.add_argument("--outage-hold", default="10s")
    ap.add_argument("--serve", type=int)
    a = ap.parse_args()
    if a.serve:
        return serve(a.serve)

    ports = [free_port() for _ in range(3)]
    apps = [start_upstream(p) for p in ports]
    gw_port, admin_port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="gatewise-outage-")
    log_path = os.path.join(tmp, "access.log")
    conf = os.path.join(tmp, "gatewise.toml")
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    with open(conf, "w") as f:
        f.write(f'''access_log = "{log_path}"
[admin]
listen = "127.0.0.1:{admin_port}"
[[listener]]
name = "public"
listen = "127.0.0.1:{gw_port}"
[[route]]
upstream = "app"
[upstream.app]
targets = [{targets}]
outage_hold = "{a.outage_hold}"
[upstream.app.health]
path = "/health"
''')
    gw = subprocess.Popen([a.gatewise, "run", "--config", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        give_up = time.time() + 10
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2); c.request("GET", "/ready")
                if c.getresponse().status == 200: break
            except OSError: pass
            if time.time() > give_up: sys.exit("gatewise did not become ready")
            time.sleep(0.05)

        results = []  # (method, rid, status, proxy_status, started, ended)
        lock = threading.Lock(); threads = []
        def one(method, rid):
            started = time.time()
            try:
                c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=20)
                c.request(method, "/", body=b"payload" if method == "POST" else None, headers={"x-request-id": rid})
                r = c.getresponse(); r.read(); status, ps = r.status, r.getheader("proxy-status")
            except OSError as e:
                status, ps = 0, f"transport error {e.__class__.__name__}"
            with lock: results.append((method, rid, status, ps, started, time.time()))

        start = time.time(); sent = 0; killed_at = up_at = None
        total = a.warm + a.outage + a.after
        while time.time() - start < total:
            now = time.time() - start
            if killed_at is None and now >= a.warm:
                for p in apps: p.send_signal(signal.SIGKILL)
                for p in apps: p.wait()
                killed_at = time.time()
            if up_at is None and now >= a.warm + a.outage:
                apps = [start_upstream(ports[0])]
                up_at = time.time()  # the first upstream listening again
                apps += [start_upstream(p) for p in ports[1:]]
                all_up_at = time.time()
            method = "GET" if sent % 2 == 0 else "POST"
            t = threading.Thread(target=one, args=(method, f"r{sent}")); t.start(); threads.append(t)
            sent += 1
            time.sleep(max(0.0, start + sent / a.rate - time.time()))
        for t in threads: t.join(30)
        time.sleep(0.3)  # the access-log writer flushes within ~20 ms

        lines = {}
        with open(log_path) as f:
            for l in f:
                j = json.loads(l)
                if j["request_id"].startswith("r"): lines[j["request_id"]] = j
        counts = collections.Counter()
        unexplained = []
        for method, rid, status, ps, _, _ in results:
            key = f"{method} {status}" + ("" if status == 200 else f" {ps}")
            counts[key] += 1
            if status != 200:
                line = lines.get(rid, {})
                if not any(at.get("request_sent") for at in line.get("attempts", [])):
                    unexplained.append(rid)
        held = [j for j in lines.values() if j.get("held_ms", 0) > 0]
        held_ok = sum(1 for j in held if j["status"] == 200)
        max_held = max((j["held_ms"] for j in held), default=0)
        after = [end for (_, _, s, _, _, end) in results if s == 200 and end >= up_at]
        first_ok = (min(after) - up_at) * 1000 if after else float("nan")
        metrics = ""
        try:
            c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2); c.request("GET", "/metrics")
            metrics = c.getresponse().read().decode()
        except OSError: pass
        hold_lines = [l for l in metrics.splitlines() if l.startswith(("gatewise_held_requests_total", "gatewise_hold_rejections_total"))]

        print(f"outage_hold = {a.outage_hold}: sent {sent} requests at {a.rate:.0f}/s (GET/POST alternating); every upstream killed "
              f"{a.warm:.1f}s in (SIGKILL); the first listened again {up_at - killed_at:.2f}s later, "
              f"the last {all_up_at - killed_at:.2f}s later (same ports)")
        for k, v in sorted(counts.items()): print(f"  {k}: {v}")
        errors = sum(v for k, v in counts.items() if not k.endswith(" 200"))
        print(f"  errors: {errors} ({len(unexplained)} not in flight on a killed upstream)")
        print(f"  held: {len(held)} requests, {held_ok} of them served; longest hold {max_held} ms")
        print(f"  recovery: first 200 to a client {first_ok:.0f} ms after the first upstream listened again")
        for l in hold_lines: print(f"  {l}")
        return 1 if unexplained else 0
    finally:
        gw.terminate()
        try: gw.wait(10)
        except subprocess.TimeoutExpired: gw.kill()
        for p in apps:
            if p.poll() is None: p.kill()


if __name__ == "__main__":
    sys.exit(main())
