#!/usr/bin/env bash
# gatewise vs nginx as a reverse proxy: req/s, p99, proxy CPU per request, memory; over plain
# HTTP, over HTTPS (TLS terminated by the proxy, keep-alive), and with a new TLS connection per
# request (handshakes/s and CPU per handshake); and HTTP/2 from the client (h2c and h2 over
# TLS, with h2load), both proxies speaking HTTP/1.1 to the same upstream (nginx cannot speak
# HTTP/2 to upstreams except through grpc_pass).
#
# Both proxies run $WORKERS workers (gatewise `workers`, nginx `worker_processes`) pinned to
# $PROXY_CPU, in front of the same upstream (an nginx answering a small body with `return 200`, so
# it does no file I/O); wrk and the upstream share $LOAD_CPU. Runs alternate gatewise / nginx back to back, $REPEATS times. Loopback only.
# Run by hand, never in CI (it takes about REPEATS * 2 * (DURATION + WARMUP) seconds).
#
# Knobs (environment):
#   DURATION=10s  WARMUP=2s  CONNECTIONS=50  THREADS=1  REPEATS=3
#   CASES="http https handshake"   which cases to run: plain HTTP keep-alive; HTTPS keep-alive;
#                       HTTPS with `Connection: close` (one full handshake per request). Both
#                       proxies use the same ECDSA P-256 certificate and offer TLS 1.2 + 1.3;
#                       wrk (OpenSSL) negotiates TLS 1.3 and resumes no session.
#                       Also: h2c (HTTP/2 prior knowledge, plain) and h2 (HTTP/2 by ALPN over
#                       TLS), run with h2load -c$H2_CLIENTS -m$H2_STREAMS (nghttp2-client); h2load
#                       reports no p99, so the p99 column shows its mean time per request.
#   H2_CLIENTS=10  H2_STREAMS=10   h2load's connections and concurrent streams per connection
#   IDLE_CONNS=1000     idle keep-alive client connections for the memory figure
#   ACCESS_LOG=off      off: both proxies log nothing; on: both append to a file in the temp dir
#   WORKERS=1           workers of both proxies. With WORKERS > 1 the default pinning is none
#                       (PROXY_CPU and LOAD_CPU = every core): on a 2-core machine two workers
#                       need both cores. On a bigger machine pin them apart, e.g. WORKERS=8
#                       PROXY_CPU=0-7 LOAD_CPU=8-15 (and THREADS=4 CONNECTIONS=400 for wrk).
#   WORKER_MODEL=       gatewise's `worker_model` (per_worker, work_stealing; empty: default)
#   PROXY_CPU=1  LOAD_CPU=0
#   GATEWISE=path       a prebuilt binary (default: target/release/gatewise, built if missing)
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
REPEATS=${REPEATS:-3}
IDLE_CONNS=${IDLE_CONNS:-1000}
ACCESS_LOG=${ACCESS_LOG:-off}
CASES=${CASES:-http https handshake}
H2_CLIENTS=${H2_CLIENTS:-10}
H2_STREAMS=${H2_STREAMS:-10}
WORKERS=${WORKERS:-1}
WORKER_MODEL=${WORKER_MODEL:-}
if ((WORKERS > 1)); then
    all_cpus="0-$(($(nproc) - 1))"
    PROXY_CPU=${PROXY_CPU:-$all_cpus}
    LOAD_CPU=${LOAD_CPU:-$all_cpus}
else
    PROXY_CPU=${PROXY_CPU:-1}
    LOAD_CPU=${LOAD_CPU:-0}
fi

root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
GATEWISE=${GATEWISE:-$target_dir/release/gatewise}

# --- tools ------------------------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v openssl >/dev/null || need_apt+=(openssl)
[[ " $CASES " != *" h2"* ]] || command -v h2load >/dev/null || need_apt+=(nghttp2-client)
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]}" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
    $sudo_cmd apt-get install -y "${need_apt[@]}" >&2
fi
if [ ! -x "$GATEWISE" ]; then
    echo "building gatewise (release)" >&2
    (cd "$root" && cargo build --release --bin gatewise) >&2
fi

# --- cleanup: every process started here is remembered and ended on exit -------------------------
work=$(mktemp -d /tmp/gatewise-bench.XXXXXX)
chmod 755 "$work"
source "$(dirname "$0")/lib.sh"
idle_pid=""
cleanup() {
    [ -z "$idle_pid" ] || kill "$idle_pid" 2>/dev/null || true
    stop_pids
}
trap cleanup EXIT INT TERM

# Seven distinct free ports: upstream, gatewise plain + TLS (HTTP/1.1 and HTTP/2 on each),
# nginx plain + TLS, nginx h2c + h2 (nginx 1.22 takes `http2` per listen socket).
ports=()
while ((${#ports[@]} < 7)); do
    p=$(free_port)
    [[ " ${ports[*]} " == *" $p "* ]] || ports+=("$p")
done
up_port=${ports[0]} gw_port=${ports[1]} gw_tls_port=${ports[2]} ng_port=${ports[3]} ng_tls_port=${ports[4]}
ng_h2c_port=${ports[5]} ng_h2_port=${ports[6]}

# One throwaway certificate for both proxies (ECDSA P-256, as most sites serve today).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test,IP:127.0.0.1" \
    -keyout "$work/bench.key" -out "$work/bench.pem" 2>/dev/null

nginx_common="daemon off;
master_process on;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }"

nginx_temp="client_body_temp_path $work/cb; proxy_temp_path $work/px; fastcgi_temp_path $work/fc;
    uwsgi_temp_path $work/uw; scgi_temp_path $work/sc;"

# --- upstream -----------------------------------------------------------------------------------
# keepalive_requests is raised so neither proxy pays for the upstream closing every 1000 requests.
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
taskset -c "$LOAD_CPU" nginx -p "$work" -c "$work/upstream.conf" -e "$work/upstream-error.log" &
pids+=($!)
wait_port "$up_port"

# --- the two proxies ----------------------------------------------------------------------------
if [ "$ACCESS_LOG" = on ]; then
    gw_log="$work/gatewise-access.log"
    ng_log="access_log $work/nginx-access.log;"
else
    gw_log="off"
    ng_log="access_log off;"
fi

gw_model=""
[ -z "$WORKER_MODEL" ] || gw_model="worker_model = \"$WORKER_MODEL\""
cat >"$work/gatewise.toml" <<EOF
workers = $WORKERS
$gw_model
access_log = "$gw_log"

[admin]
listen = "off"

[[listener]]
name = "bench"
listen = "127.0.0.1:$gw_port"

[[listener]]
name = "bench-tls"
listen = "127.0.0.1:$gw_tls_port"
tls = { cert = "$work/bench.pem", key = "$work/bench.key" }

[[route]]
listener = "bench"
path_prefix = "/"
upstream = "bench"

[[route]]
listener = "bench-tls"
path_prefix = "/"
upstream = "bench"

[upstream.bench]
targets = ["127.0.0.1:$up_port"]
EOF

# Best-practice nginx reverse proxy, adding the same X-Forwarded-*, Forwarded and request id gatewise adds.
cat >"$work/proxy.conf" <<EOF
$nginx_common
worker_processes $WORKERS;
pid $work/proxy.pid;
error_log $work/proxy-error.log;
http {
    $ng_log
    $nginx_temp
    keepalive_requests 1000000;
    upstream bench { server 127.0.0.1:$up_port; keepalive 64; }
    # The same TLS settings gatewise uses: TLS 1.2 + 1.3, session tickets and a session cache.
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server {
        listen 127.0.0.1:$ng_port;
        listen 127.0.0.1:$ng_tls_port ssl;
        listen 127.0.0.1:$ng_h2c_port http2;
        listen 127.0.0.1:$ng_h2_port ssl http2;
        ssl_certificate $work/bench.pem;
        ssl_certificate_key $work/bench.key;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header Forwarded "for=\$remote_addr;host=\\"\$host\\";proto=\$scheme";
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF

taskset -c "$PROXY_CPU" "$GATEWISE" run -c "$work/gatewise.toml" >"$work/gatewise.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
taskset -c "$PROXY_CPU" nginx -p "$work" -c "$work/proxy.conf" -e "$work/proxy-error.log" &
ng_pid=$!
pids+=("$ng_pid")
wait_port "$gw_port"
wait_port "$ng_port"
wait_port "$gw_tls_port"
wait_port "$ng_tls_port"
wait_port "$ng_h2c_port"
wait_port "$ng_h2_port"
echo "upstream :$up_port  gatewise :$gw_port/:$gw_tls_port (pid $gw_pid)  nginx :$ng_port/:$ng_tls_port (pid $ng_pid)  access log: $ACCESS_LOG" >&2
for p in "$gw_tls_port" "$ng_tls_port"; do
    echo "TLS on :$p: $(openssl s_client -connect "127.0.0.1:$p" -servername bench.test </dev/null 2>/dev/null | awk '/^New,/ {sub(",", "", $2); print $2, $5; exit}')" >&2
done

# A proxy's process tree: the pid and its direct children (nginx master + workers).
tree() { echo "$1" $(pgrep -P "$1" || true); }

# utime+stime of a process tree, in clock ticks.
cpu_ticks() {
    local total=0 p
    for p in $(tree "$1"); do
        # Fields after the ")" of comm: utime and stime are the 12th and 13th.
        total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}

# Proportional set size of a process tree in KiB (PSS, so pages the nginx master and worker
# share are not counted twice).
pss_kib() {
    local total=0 p
    for p in $(tree "$1"); do
        total=$((total + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")))
    done
    echo "$total"
}

# wrk's latency with unit → milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }

hz=$(getconf CLK_TCK)
declare -A sum_rps sum_p99 sum_cpu
results="$work/results.txt"
: >"$results"

run_one() { # case name pid url round [extra wrk args...]
    local kase=$1 name=$2 pid=$3 url=$4 round=$5 out before after
    shift 5
    taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$@" "$url" >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url")
    after=$(cpu_ticks "$pid")
    local reqs rps p99 bad cpu_us
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    bad=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
    cpu_us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
    printf "%-9s %-9s run %d: %10s req/s  p99 %8s ms  cpu/req %7s us  %s\n" "$kase" "$name" "$round" "$rps" "$p99" "$cpu_us" "$bad"
    echo "$kase $name $rps $p99 $cpu_us" >>"$results"
}

run_h2() { # case name pid url round
    local kase=$1 name=$2 pid=$3 url=$4 round=$5 out before after
    taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "${WARMUP%s}" "$url" >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "${DURATION%s}" "$url")
    after=$(cpu_ticks "$pid")
    local reqs rps mean bad cpu_us
    reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
    rps=$(awk '/^finished in/ {print $4}' <<<"$out")
    mean=$(to_ms "$(awk '/^time for request:/ {print $6}' <<<"$out")")
    bad=$(awk '/^requests:/ && ($10 + $12 + $14) > 0 {printf "failed %s errored %s timeout %s", $10, $12, $14}' <<<"$out")
    # "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
    bad="$bad$(awk '/^status codes:/ && ($5 + $7 + $9) > 0 {printf " 3xx %s 4xx %s 5xx %s", $5, $7, $9}' <<<"$out")"
    if [ -z "$reqs" ] || [ "$reqs" = 0 ]; then
        echo "$kase $name: h2load finished no request:" >&2
        echo "$out" >&2
        exit 1
    fi
    cpu_us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
    printf "%-9s %-9s run %d: %10s req/s  mean %7s ms  cpu/req %7s us  %s\n" "$kase" "$name" "$round" "$rps" "$mean" "$cpu_us" "$bad"
    echo "$kase $name $rps $mean $cpu_us" >>"$results"
}

echo "== throughput: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP), $WORKERS worker(s) per proxy${WORKER_MODEL:+ (gatewise $WORKER_MODEL)}, proxy on cpu $PROXY_CPU, wrk+upstream on cpu $LOAD_CPU, access log $ACCESS_LOG"
for kase in $CASES; do
    case $kase in
        http) gw_url="http://127.0.0.1:$gw_port/" ng_url="http://127.0.0.1:$ng_port/" extra=() ;;
        https) gw_url="https://127.0.0.1:$gw_tls_port/" ng_url="https://127.0.0.1:$ng_tls_port/" extra=() ;;
        # One request per connection: every request pays a full TLS handshake (wrk resumes no
        # session), so req/s is handshakes/s and cpu/req is CPU per handshake (+ one request).
        handshake) gw_url="https://127.0.0.1:$gw_tls_port/" ng_url="https://127.0.0.1:$ng_tls_port/" extra=(-H "Connection: close") ;;
        h2c) gw_url="http://127.0.0.1:$gw_port/" ng_url="http://127.0.0.1:$ng_h2c_port/" ;;
        h2) gw_url="https://127.0.0.1:$gw_tls_port/" ng_url="https://127.0.0.1:$ng_h2_port/" ;;
        *) echo "unknown case $kase (expected http, https, handshake, h2c, h2)" >&2; exit 2 ;;
    esac
    for round in $(seq "$REPEATS"); do
        case $kase in
            h2c | h2)
                run_h2 "$kase" gatewise "$gw_pid" "$gw_url" "$round"
                run_h2 "$kase" nginx "$ng_pid" "$ng_url" "$round"
                ;;
            *)
                run_one "$kase" gatewise "$gw_pid" "$gw_url" "$round" "${extra[@]}"
                run_one "$kase" nginx "$ng_pid" "$ng_url" "$round" "${extra[@]}"
                ;;
        esac
    done
done

echo "== summary (mean of $REPEATS runs per case)"
awk '
    { k = $1 " " $2; n[k]++; rps[k] += $3; p99[k] += $4; cpu[k] += $5; if (!($1 in seen)) { seen[$1] = 1; order[++m] = $1 } }
    END {
        for (i = 1; i <= m; i++) {
            c = order[i]; g = c " gatewise"; x = c " nginx"
            rps[g] /= n[g]; p99[g] /= n[g]; cpu[g] /= n[g]; rps[x] /= n[x]; p99[x] /= n[x]; cpu[x] /= n[x]
            printf "%-9s %-9s %10.0f req/s  p99 %7.3f ms  cpu/req %7.2f us\n", c, "gatewise", rps[g], p99[g], cpu[g]
            printf "%-9s %-9s %10.0f req/s  p99 %7.3f ms  cpu/req %7.2f us\n", c, "nginx", rps[x], p99[x], cpu[x]
            printf "%-9s ratio gatewise/nginx: req/s %.2fx  p99 %.2fx  cpu/req %.2fx\n", c, rps[g] / rps[x], p99[g] / p99[x], cpu[g] / cpu[x]
        }
    }' "$results"

echo "== memory (PSS of the proxy's process tree; $IDLE_CONNS idle keep-alive client connections)"
memory() { # name pid port
    local name=$1 pid=$2 port=$3 base loaded line
    base=$(pss_kib "$pid")
    coproc IDLE { python3 "$root/bench/idle-clients.py" "$port" "$IDLE_CONNS" 2>&1; }
    # Remembered only while it runs, so cleanup never signals a recycled pid.
    idle_pid=$IDLE_PID
    read -r -t 60 line <&"${IDLE[0]}" || line="timeout"
    if [ "$line" != open ]; then
        echo "$name: idle client failed: $line" >&2
        kill "$idle_pid" 2>/dev/null || true
        wait "$idle_pid" 2>/dev/null || true
        idle_pid=""
        return
    fi
    sleep 1 # gatewise frees an idle connection's buffers 100 ms after its response (server/idle.rs)
    loaded=$(pss_kib "$pid")
    echo done >&"${IDLE[1]}"
    wait "$idle_pid" 2>/dev/null || true
    idle_pid=""
    awk -v n="$name" -v b="$base" -v l="$loaded" -v c="$IDLE_CONNS" \
        'BEGIN { printf "%-9s PSS after load %6d KiB, with %d idle conns %6d KiB  => %.2f KiB per idle connection\n", n, b, c, l, (l - b) / c }'
}
memory gatewise "$gw_pid" "$gw_port"
memory nginx "$ng_pid" "$ng_port"
