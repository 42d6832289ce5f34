#!/usr/bin/env bash
# Memory per idle keep-alive client connection: gatewise vs nginx as reverse proxies.
#
# For each count in $COUNTS, each proxy is started fresh (one worker) in front of the same
# upstream (an nginx answering `return 200`), warmed with a few requests, measured, then given
# that many client connections that each made one request and stay open, idle; measured again.
# Reports the RSS and PSS delta of the proxy's process tree per connection. Loopback only; run
# by hand, never in CI (about a minute; one release build if target/release/gatewise is missing).
#
# Knobs (environment):
#   COUNTS="1000 10000"   idle connection counts, one fresh proxy each
#   GATEWISE=path         a prebuilt binary (default: target/release/gatewise, built if missing)
#   IDLE_REQUEST=post     each idle connection made a POST with a body (gatewise keeps hyper for
#                         it) instead of a GET (held without hyper): see bench/idle-clients.py
set -euo pipefail

COUNTS=${COUNTS:-"1000 10000"}
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
GATEWISE=${GATEWISE:-$target_dir/release/gatewise}

# Every idle connection is a file descriptor in the client and in the proxy: raise the limit as
# far as this machine allows (a container's hard limit may be lower than 65536).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
if ((${#need_apt[@]})); then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
    $sudo_cmd apt-get install -y "${need_apt[@]}" >&2
fi
if [ ! -x "$GATEWISE" ]; then
    echo "building gatewise (release)" >&2
    (cd "$root" && cargo build --release --bin gatewise) >&2
fi

work=$(mktemp -d /tmp/gatewise-idle.XXXXXX)
chmod 755 "$work"
source "$(dirname "$0")/lib.sh"
trap stop_pids EXIT INT TERM

nginx_common="daemon off;
master_process on;
worker_rlimit_nofile $nofile;
events { worker_connections 32768; }"
nginx_temp="client_body_temp_path $work/cb; proxy_temp_path $work/px; fastcgi_temp_path $work/fc;
    uwsgi_temp_path $work/uw; scgi_temp_path $work/sc;"

up_port=$(free_port)
cat >"$work/upstream.conf" <<EOF
$nginx_common
worker_processes 1;
pid $work/upstream.pid;
error_log $work/upstream-error.log;
http {
    access_log off;
    $nginx_temp
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$up_port reuseport;
        location / { default_type text/plain; return 200 "hello from upstream\n"; }
    }
}
EOF
nginx -p "$work" -c "$work/upstream.conf" -e "$work/upstream-error.log" &
pids+=($!)
wait_port "$up_port"

tree() { echo "$1" $(pgrep -P "$1" || true); }
# Sum of a /proc/PID/<file> field (KiB) over a process tree.
field_kib() { # pid file field
    local total=0 p
    for p in $(tree "$1"); do
        total=$((total + $(awk -v f="$3:" '$1 == f {print $2}' "/proc/$p/$2")))
    done
    echo "$total"
}

start_gatewise() { # port
    # A 10-minute header_read_timeout: it also closes idle keep-alive connections, and the
    # idle ones are what is measured.
    cat >"$work/gatewise.toml" <<EOF
workers = 1
access_log = "off"
[admin]
listen = "off"
[[listener]]
name = "bench"
listen = "127.0.0.1:$1"
header_read_timeout = "10m"
[[route]]
path_prefix = "/"
upstream = "bench"
[upstream.bench]
targets = ["127.0.0.1:$up_port"]
EOF
    "$GATEWISE" run -c "$work/gatewise.toml" >"$work/gatewise.log" 2>&1 </dev/null &
    echo $!
}

start_nginx() { # port
    cat >"$work/proxy.conf" <<EOF
$nginx_common
worker_processes 1;
pid $work/proxy.pid;
error_log $work/proxy-error.log;
http {
    access_log off;
    $nginx_temp
    keepalive_timeout 10m;
    keepalive_requests 1000000;
    upstream bench { server 127.0.0.1:$up_port; keepalive 64; }
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    nginx -p "$work" -c "$work/proxy.conf" -e "$work/proxy-error.log" >"$work/proxy.out" 2>&1 </dev/null &
    echo $!
}

# Opens `n` idle connections to `port` and waits until they are all open; the client's pid is
# in $idle_pid and its stdin is fd ${IDLE[1]}.
measure() { # name n
    local name=$1 n=$2 port pid base_rss base_pss rss pss line
    port=$(free_port)
    pid=$("start_$name" "$port")
    pids+=("$pid")
    wait_port "$port"
    python3 "$root/bench/idle-clients.py" "$port" 20 </dev/null >/dev/null 2>&1 || true # warm: pool, first allocations
    base_rss=$(field_kib "$pid" status VmRSS)
    base_pss=$(field_kib "$pid" smaps_rollup Pss)
    coproc IDLE { python3 "$root/bench/idle-clients.py" "$port" "$n" 2>&1; }
    local idle_pid=$IDLE_PID
    read -r -t 120 line <&"${IDLE[0]}" || line="timeout"
    if [ "$line" = open ]; then
        # gatewise puts an idle connection's hyper state down 100 ms after its last response
        # (src/server/h1.rs, GRACE): measure once the last ones opened are idle too.
        sleep 1
        rss=$(field_kib "$pid" status VmRSS)
        pss=$(field_kib "$pid" smaps_rollup Pss)
        awk -v name="$name" -v n="$n" -v br="$base_rss" -v r="$rss" -v bp="$base_pss" -v p="$pss" 'BEGIN {
            printf "%-9s %6d idle: RSS %7d -> %7d KiB (%.2f KiB/conn)  PSS %7d -> %7d KiB (%.2f KiB/conn)\n",
                name, n, br, r, (r - br) / n, bp, p, (p - bp) / n }'
    else
        echo "$name: idle client failed: $line" >&2
    fi
    echo done >&"${IDLE[1]}" || true
    wait "$idle_pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

echo "== memory per idle keep-alive client connection (after one request each; fresh proxy per count)"
for n in $COUNTS; do
    measure gatewise "$n"
    measure nginx "$n"
done
