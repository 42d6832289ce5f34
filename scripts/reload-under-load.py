#!/usr/bin/env python3
"""Reloads under load (issue #10): N reloads per second for DURATION seconds at a steady request
rate, with failed requests counted and p99 latency compared before vs during the reloads.

Three upstream threads (HTTP/1.1 keep-alive) sit behind gatewise. Keep-alive client threads send
GET requests at RATE per second in total. For BEFORE seconds nothing changes; then, for DURATION
seconds, the config file is rewritten RELOADS times a second (alternating between targets
{1,2} and {2,3} and adding/removing a route) and gatewise is told with SIGHUP. Prints requests,
failures (anything but 200, or a transport error), reloads applied (from /metrics) and p50/p99
before vs during.

Loopback only, bounded in time (~BEFORE + DURATION + 10 s). Exit 1 if a request failed.

usage: scripts/reload-under-load.py [path/to/gatewise] [--rate 200] [--reloads 5]
                                    [--before 5] [--duration 30]
"""
import argparse, http.client, http.server, os, signal, socket, subprocess, sys, tempfile
import threading, time


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers()
        self.wfile.write(b"ok")


def config(ports, admin, listen, with_extra):
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    extra = ""
    if with_extra:
        extra = ('[[route]]\nname = "extra"\npath_prefix = "/extra"\nupstream = "extra"\n'
                 f'[upstream.extra]\ntargets = ["127.0.0.1:{ports[0]}"]\n')
    return (f'watch_config = false\naccess_log = "off"\ndrain_delay = "0s"\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
            f'[[listener]]\nname = "public"\nlisten = "127.0.0.1:{listen}"\n'
            f'[[route]]\nname = "main"\nupstream = "app"\n'
            f'[upstream.app]\ntargets = [{targets}]\n{extra}')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", nargs="?", default="target/release/gatewise")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--reloads", type=float, default=5)
    ap.add_argument("--before", type=float, default=5)
    ap.add_argument("--duration", type=float, default=30)
    a = ap.parse_args()

    ups = []
    for _ in range(3):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        ups.append(srv.server_address[1])
    admin, listen = free_port(), free_port()
    d = tempfile.mkdtemp(prefix="gatewise-reload-load-")
    path = os.path.join(d, "gatewise.toml")
    open(path, "w").write(config(ups[:2], admin, listen, False))
    gw = subprocess.Popen([a.binary, "run", "--config", path], stderr=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL)
    give_up = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=0.2).close(); break
        except OSError:
            if time.time() > give_up: sys.exit("gatewise did not start")
            time.sleep(0.01)

    results = []  # (start time, latency seconds, ok, detail)
    lock = threading.Lock()
    stop = time.time() + a.before + a.duration
    workers = 8
    gap = workers / a.rate

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
        nxt = time.time()
        while time.time() < stop:
            t0 = time.time()
            try:
                conn.request("GET", "/")
                r = conn.getresponse(); r.read()
                ok, detail = r.status == 200, str(r.status)
            except Exception as e:  # noqa: BLE001 - every failure is a result here
                ok, detail = False, type(e).__name__
                conn.close(); conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
            with lock:
                results.append((t0, time.time() - t0, ok, detail))
            nxt += gap
            time.sleep(max(0, nxt - time.time()))

    threads = [threading.Thread(target=client) for _ in range(workers)]
    t_start = time.time()
    for t in threads: t.start()
    time.sleep(a.before)
    reload_start = time.time()
    n = 0
    while time.time() < stop:
        n += 1
        targets = ups[:2] if n % 2 else ups[1:]
        tmp = path + ".tmp"
        open(tmp, "w").write(config(targets, admin, listen, n % 3 == 0))
        os.rename(tmp, path)
        gw.send_signal(signal.SIGHUP)
        time.sleep(1 / a.reloads)
    for t in threads: t.join()
    metrics = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    metrics.request("GET", "/metrics"); text = metrics.getresponse().read().decode()
    gw.send_signal(signal.SIGTERM); gw.wait(timeout=40)

    def pct(xs, q):
        xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else 0
    before = [r[1] for r in results if r[0] < reload_start]
    during = [r[1] for r in results if r[0] >= reload_start]
    failed = [r for r in results if not r[2]]
    applied = [l for l in text.splitlines() if l.startswith("gatewise_config_reloads_total")]
    print(f"requests: {len(results)} in {time.time() - t_start:.1f}s ({a.rate}/s asked), "
          f"reload signals sent: {n} ({a.reloads}/s for {a.duration}s)")
    print("reloads (metrics): " + ", ".join(applied))
    print(f"failed requests: {len(failed)}" + (f" e.g. {failed[:5]}" if failed else ""))
    print(f"before reloads: p50 {pct(before, .5):.2f} ms, p99 {pct(before, .99):.2f} ms "
          f"({len(before)} requests)")
    print(f"during reloads: p50 {pct(during, .5):.2f} ms, p99 {pct(during, .99):.2f} ms "
          f"({len(during)} requests)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
