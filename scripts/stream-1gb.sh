#!/usr/bin/env bash
# Streams 1 GiB through gatewise in each direction, checks the SHA-256 at both ends, and reports
# gatewise's peak RSS. Loopback only; every process it starts is stopped on exit.
#   usage: scripts/stream-1gb.sh [path/to/gatewise]   (default: target/release/gatewise)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/gatewise}
[ -x "$bin" ] || cargo build --release
size_mb=${SIZE_MB:-1024}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port); gw_port=$(free_port)

head -c "$((size_mb * 1024 * 1024))" /dev/urandom > "$work/blob"
want=$(sha256sum "$work/blob" | cut -d' ' -f1)

# Upstream: GET streams the blob; POST hashes the body as it arrives and answers the digest.
cat > "$work/up.py" <<PY
import hashlib, http.server, os, sys
BLOB = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", str(os.path.getsize(BLOB)))
        self.end_headers()
        with open(BLOB, "rb") as f:
            while chunk := f.read(1 << 20):
                self.wfile.write(chunk)
    def do_POST(self):
        left = int(self.headers["content-length"]); h = hashlib.sha256()
        while left:
            chunk = self.rfile.read(min(left, 1 << 20)); h.update(chunk); left -= len(chunk)
        body = h.hexdigest().encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$work/up.py" "$up_port" "$work/blob" & pids+=($!)
"$bin" run --listen "127.0.0.1:$gw_port" --to "127.0.0.1:$up_port" --admin off >/dev/null 2>"$work/gw.err" & gw=$!; pids+=($gw)
until curl -s -o /dev/null "http://127.0.0.1:$gw_port/" 2>/dev/null; do sleep 0.1; done

peak=0
sample() { while kill -0 "$gw" 2>/dev/null; do r=$(awk '/VmRSS/{print $2}' /proc/$gw/status); [ "$r" -gt "$peak" ] && peak=$r && echo "$peak" > "$work/peak"; sleep 0.1; done; }
sample & pids+=($!)

t0=$(date +%s.%N)
got_down=$(curl -s "http://127.0.0.1:$gw_port/blob" | sha256sum | cut -d' ' -f1)
t1=$(date +%s.%N)
got_up=$(curl -s -X POST -T "$work/blob" "http://127.0.0.1:$gw_port/sink")
t2=$(date +%s.%N)
peak_kb=$(cat "$work/peak")

tail -3 "$work/gw.err" >&2
echo "download: $( [ "$got_down" = "$want" ] && echo ok || echo MISMATCH ) in $(echo "$t1 - $t0" | bc) s"
echo "upload:   $( [ "$got_up" = "$want" ] && echo ok || echo MISMATCH ) in $(echo "$t2 - $t1" | bc) s"
echo "gatewise peak RSS: $((peak_kb / 1024)) MiB"
[ "$got_down" = "$want" ] && [ "$got_up" = "$want" ]
