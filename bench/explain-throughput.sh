#!/usr/bin/env bash
# Measures `gatewise explain` throughput on a generated nginx error log (one core).
#
# Usage: bench/explain-throughput.sh [SIZE_MB]   (default 1024)
# The log goes to /tmp (never the repo) and is reused between runs of the same size. About 60% of
# its lines are upstream failures of every kind the parser knows, the rest ordinary info/notice
# lines, over a few hundred minutes, so detection, classification, tallies and the timeline all
# run. Builds the release binary in $CARGO_TARGET_DIR (or target/).
set -euo pipefail

size_mb=${1:-1024}
repo=$(cd "$(dirname "$0")/.." && pwd)
log=/tmp/gatewise-explain-bench-${size_mb}mb.log
target=${CARGO_TARGET_DIR:-$repo/target}

if [[ ! -f "$log" ]]; then
    echo "generating $log (${size_mb} MB)" >&2
    python3 - "$log" "$size_mb" <<'PY'
import random, sys
path, size = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
rng = random.Random(7)
ups = [f"10.0.{i // 8}.{i % 8 + 10}:8080" for i in range(24)]
tail = ', client: 10.1.2.3, server: shop.example.com, request: "{m} /api/v1/items/{n}?page=2 HTTP/1.1", upstream: "http://{u}/api/v1/items/{n}?page=2", host: "shop.example.com"'
msgs = [
    "connect() failed (111: Connection refused) while connecting to upstream",
    "upstream timed out (110: Connection timed out) while reading response header from upstream",
    "upstream timed out (110: Connection timed out) while connecting to upstream",
    "upstream prematurely closed connection while reading response header from upstream",
    "recv() failed (104: Connection reset by peer) while reading response header from upstream",
    "upstream sent too big header while reading response header from upstream",
    "upstream sent invalid header while reading response header from upstream",
    "no live upstreams while connecting to upstream",
    "SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version number) while SSL handshaking to upstream",
    "upstream prematurely closed connection while reading upstream",
]
other = [
    "client 10.1.2.3 closed keepalive connection",
    'open() "/usr/share/nginx/html/favicon.ico" failed (2: No such file or directory), client: 10.1.2.3, server: shop.example.com, request: "GET /favicon.ico HTTP/1.1", host: "shop.example.com"',
    "client prematurely closed connection while reading client request line, client: 10.1.2.3, server: shop.example.com",
]
# One block of lines per minute, with a placeholder for the timestamp.
block = []
for i in range(4000):
    conn = rng.randrange(1, 10**7)
    if rng.random() < 0.6:
        msg = rng.choice(msgs) + tail.format(m=rng.choice(["GET", "POST"]), n=rng.randrange(10**5), u=rng.choice(ups))
        lvl = "error"
    else:
        msg, lvl = rng.choice(other), "info"
    block.append(f"@@ [{lvl}] 2817#2817: *{conn} {msg}\n")
block = "".join(block)
written, minute = 0, 0
with open(path, "w") as f:
    while written < size:
        h, m = divmod(minute, 60)
        d, h = divmod(h, 24)
        chunk = block.replace("@@", f"2026/11/{21 + d:02d} {h:02d}:{m:02d}:{rng.randrange(60):02d}")
        f.write(chunk)
        written += len(chunk)
        minute += 1
PY
fi

(cd "$repo" && cargo build --release --quiet)
bin="$target/release/gatewise"
bytes=$(stat -c %s "$log")
# Wall time is what a user waits; CPU time (user + sys) is the cost, and steadier on a shared box.
TIMEFORMAT="%R %U %S"
for mode in "--format auto" "--format nginx-error"; do
    for run in 1 2 3; do
        # Exit status 1 means "failures found", which is expected here.
        t=$( { time taskset -c 0 "$bin" explain $mode --json "$log" > /tmp/gatewise-explain-bench.json || [[ $? == 1 ]]; } 2>&1 )
        python3 -c "
b=$bytes; real, user, sys = map(float, '$t'.split())
print(f'$mode run $run: {b/1e6:.0f} MB, wall {real:.2f} s = {b/1e6/real:.0f} MB/s, cpu {user+sys:.2f} s = {b/1e6/(user+sys):.0f} MB/s')"
    done
done
python3 -c "import json; r=json.load(open('/tmp/gatewise-explain-bench.json')); print('lines', r['lines'], 'failures', r['failures'], 'unknown', r['unknown'], 'minutes', len(r['timeline']))"
