#!/usr/bin/env python3
"""Keep-alive race load run (issue: absorb upstream failures).

Three upstreams close idle keep-alive connections after IDLE seconds (like app servers with a
short keep-alive timeout, without announcing it). gatewise sits in front with its default pool.
A client sends GET and POST requests alternately at a fixed rate, with exponential gaps so reuse
lands on every phase of the upstreams' idle timer, for DURATION seconds. Prints the count of
responses by status; exit 1 if any request failed. Loopback only, bounded in time.

usage: scripts/idle-race-load.py [path/to/gatewise] [--rate 40] [--duration 30] [--idle 1.0]
"""
import argparse, collections, http.client, http.server, random, socket, subprocess, sys, threading, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = None  # set per server below: idle connections are closed after it
    executed = collections.Counter()
    lock = threading.Lock()
    def log_message(self, *a): pass
    def _answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n: self.rfile.read(n)
        rid = self.headers.get("x-request-id", "")
        with Upstream.lock: Upstream.executed[rid] += 1
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    do_GET = do_POST = _answer

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gatewise", nargs="?", default="target/release/gatewise")
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--idle", type=float, default=1.0)
    a = ap.parse_args()
    Upstream.timeout = a.idle
    ports = []
    for _ in range(3):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        ports.append(srv.server_address[1])
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    gw_port = free_port()
    args = [a.gatewise, "run", "--listen", f"127.0.0.1:{gw_port}", "--admin", "off"]
    for p in ports: args += ["--to", f"127.0.0.1:{p}"]
    gw = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=5); c.request("GET", "/warmup")
                if c.getresponse().status == 200: break
            except OSError: pass
            if time.time() > deadline: sys.exit("gatewise did not come up")
            time.sleep(0.05)
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
        print(f"sent {sent} requests in {a.duration:.0f}s at ~{a.rate:.0f}/s, upstreams close idle after {a.idle}s")
        for k, v in sorted(counts.items()): print(f"  {k}: {v}")
        print(f"  executed twice: {dup}")
        failed = sum(v for k, v in counts.items() if not k.endswith(" 200"))
        print(f"{sent - failed} passed, {failed} failed")
        sys.exit(1 if failed or dup else 0)
    finally:
        # SIGTERM drains (drain_delay, 5 s by default); a second one stops at once.
        gw.terminate(); time.sleep(0.2); gw.terminate(); gw.wait(10)

if __name__ == "__main__":
    main()
