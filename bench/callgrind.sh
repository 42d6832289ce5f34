#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a load-independent measure
# (it does not move with other work on the machine, unlike req/s or CPU time), for deciding
# whether a change to the request path pays.
#
# gatewise runs under callgrind with instrumentation off; after a warm-up, instrumentation is
# switched on, exactly $REQUESTS requests are sent with h2load (HTTP/1.1, keep-alive,
# $CONNECTIONS connections opened for the measured run), and the counts are dumped. Everything
# gatewise executes in that window counts: every thread (workers, access-log writer), its own
# code, libc, and (not measured by callgrind) nothing of the kernel. The upstream is an nginx
# answering `return 200` as in bench/vs-nginx.sh.
#
# Knobs (environment):
#   REQUESTS=20000  CONNECTIONS=10  WARMUP_REQUESTS=2000
#   ACCESS_LOG=off|on   on: gatewise logs every request to a file in the temp dir
#   WORKERS=1           gatewise's `workers`
#   WORKER_MODEL=       gatewise's `worker_model` (empty: the default)
#   GATEWISE=path       the binary (default: target/release/gatewise; build it first)
#   OUT=dir             keep the callgrind output there (default: a temp dir, removed)
#   TOP=25              functions listed (self cost) from callgrind_annotate
set -euo pipefail

REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-10}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-2000}
ACCESS_LOG=${ACCESS_LOG:-off}
WORKERS=${WORKERS:-1}
WORKER_MODEL=${WORKER_MODEL:-}
TOP=${TOP:-25}

root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
GATEWISE=${GATEWISE:-$target_dir/release/gatewise}
for tool in valgrind callgrind_control callgrind_annotate h2load nginx; do
    command -v "$tool" >/dev/null || {
        echo "needs $tool (Debian: valgrind, nghttp2-client, nginx-light)" >&2
        exit 2
    }
done
[ -x "$GATEWISE" ] || {
    echo "no binary at $GATEWISE: cargo build --release first" >&2
    exit 2
}

work=$(mktemp -d /tmp/gatewise-callgrind.XXXXXX)
out=${OUT:-$work}
mkdir -p "$out"
source "$(dirname "$0")/lib.sh"
trap stop_pids EXIT INT TERM

up_port=$(free_port)
gw_port=$(free_port)
while [ "$gw_port" = "$up_port" ]; do gw_port=$(free_port); done

cat >"$work/upstream.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $work/upstream.pid;
error_log $work/upstream-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/cb; proxy_temp_path $work/px; fastcgi_temp_path $work/fc;
    uwsgi_temp_path $work/uw; scgi_temp_path $work/sc;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$up_port;
        location / { default_type text/plain; return 200 "hello from upstream\n"; }
    }
}
EOF
nginx -p "$work" -c "$work/upstream.conf" -e "$work/upstream-error.log" &
pids+=($!)
wait_port "$up_port"

if [ "$ACCESS_LOG" = on ]; then gw_log="$work/access.log"; else gw_log="off"; fi
{
    echo "workers = $WORKERS"
    [ -z "$WORKER_MODEL" ] || echo "worker_model = \"$WORKER_MODEL\""
    cat <<EOF
access_log = "$gw_log"

[admin]
listen = "off"

[[listener]]
name = "bench"
listen = "127.0.0.1:$gw_port"

[[route]]
listener = "bench"
path_prefix = "/"
upstream = "bench"

[upstream.bench]
targets = ["127.0.0.1:$up_port"]
EOF
} >"$work/gatewise.toml"

# glibc copies large blocks with `rep movsb`, which callgrind counts as one instruction per byte
# (the CPU moves 32-64 bytes a cycle): the vector loop it uses for smaller copies is counted
# like any other code, so large copies weigh what they cost.
GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=2147483647 \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out" \
    "$GATEWISE" run -c "$work/gatewise.toml" >"$work/gatewise.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
wait_port "$gw_port" 120

url="http://127.0.0.1:$gw_port/"
h2load --h1 -n "$WARMUP_REQUESTS" -c "$CONNECTIONS" "$url" >/dev/null
callgrind_control -i on "$gw_pid" >/dev/null
result=$(h2load --h1 -n "$REQUESTS" -c "$CONNECTIONS" "$url")
callgrind_control -d "$gw_pid" >/dev/null
callgrind_control -i off "$gw_pid" >/dev/null
ok=$(awk '/^status codes:/ {print $3}' <<<"$result")
if [ "$ok" != "$REQUESTS" ]; then
    echo "expected $REQUESTS 2xx responses:" >&2
    echo "$result" >&2
    exit 1
fi

# The dump made on request (callgrind.out.1 or so); the final one at exit is not waited for.
dump=$(ls -t "$out"/callgrind.out.* | head -n 1)
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
awk -v t="$total" -v n="$REQUESTS" -v alog="$ACCESS_LOG" -v w="$WORKERS" -v m="${WORKER_MODEL:-default}" \
    'BEGIN { printf "instructions per request: %.0f  (%d requests, %d instructions; access log %s, workers %s, model %s)\n", t / n, n, t, alog, w, m }'
callgrind_annotate --threshold=100 "$dump" 2>/dev/null | awk -v top="$TOP" -v t="$total" '
    /^-+$/ { sep++ ; next }
    sep >= 4 && $1 ~ /^[0-9,]+$/ && printed < top {
        ir = $1; gsub(",", "", ir)
        $1 = ""; sub(/^ +\([^)]*\) +/, "")
        gsub(/\/root\/.cargo\/registry\/src\/[^\/]+\/|\/rustc\/[0-9a-f]+\/library\/|\[[^]]*\]$/, "")
        printf "%6.2f%%  %6.0f/req  %s\n", 100 * ir / t, ir / '"$REQUESTS"', substr($0, 1, 150)
        printed++
    }'
[ -z "${OUT:-}" ] || echo "callgrind output kept in $dump (callgrind_annotate --inclusive=yes $dump)"
