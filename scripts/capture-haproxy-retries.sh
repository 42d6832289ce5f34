#!/usr/bin/env bash
# Captures a real HAProxy log of retries and redispatches for `gatewise explain`'s client counts
# (tests/fixtures/explain/haproxy-retries.log). Like capture-explain-fixtures.sh: HAProxy from
# Debian on loopback, in front of scripts/explain-upstreams.py, driven by curl. The fixture is
# committed, so CI never runs this. Needs: haproxy, python3, curl.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/tests/fixtures/explain"
work=$(mktemp -d /tmp/haproxy-retries.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
command -v haproxy >/dev/null || apt-get install -y haproxy >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
python3 "$repo/scripts/explain-upstreams.py" > "$work/ports.json" &
pids+=($!)
for _ in $(seq 50); do [[ -s "$work/ports.json" ]] && break; sleep 0.1; done
port() { python3 -c "import json; print(json.load(open('$work/ports.json'))['$1'])"; }
ok=$(port ok); ok2=$(port ok2); dead=$(port dead); dead2=$(port dead2); hang=$(port hang)
close=$(port close)

hap=$(free_port)
cat > "$work/haproxy.cfg" <<CONF
global
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 5s
    timeout server 1s
    retries 3
frontend web
    bind 127.0.0.1:$hap
    use_backend mixed if { path_beg /mixed }
    use_backend alldead if { path_beg /alldead }
    use_backend noredispatch if { path_beg /noredispatch }
    use_backend slow if { path_beg /slow }
    default_backend ok
backend ok
    server ok1 127.0.0.1:$ok
# Two dead servers and two live ones: requests that land on a dead one are redispatched (+N).
backend mixed
    option redispatch 1
    balance roundrobin
    server d1 127.0.0.1:$dead
    server a1 127.0.0.1:$ok
    server d2 127.0.0.1:$dead2
    server a2 127.0.0.1:$ok2
# Every server dead: retried and redispatched, then 503 SC for the client.
backend alldead
    option redispatch 1
    server d1 127.0.0.1:$dead
    server d2 127.0.0.1:$dead2
# Retries on the same dead server without redispatch: 503 after 3 retries.
backend noredispatch
    server d1 127.0.0.1:$dead
# A live server that answers too slowly (504 sH) or closes (502 SH).
backend slow
    balance roundrobin
    server h1 127.0.0.1:$hang
    server c1 127.0.0.1:$close
CONF
haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>"$work/haproxy.stderr" &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$hap/ok" && break; sleep 0.1; done
get() { curl -s -o /dev/null -m 5 -A explain-capture "$1" || true; }
for _ in 1 2 3 4 5 6 7 8; do get "http://127.0.0.1:$hap/mixed"; done
for _ in 1 2 3; do get "http://127.0.0.1:$hap/alldead"; done
for _ in 1 2; do get "http://127.0.0.1:$hap/noredispatch"; done
for _ in 1 2 3 4; do get "http://127.0.0.1:$hap/slow"; done
get "http://127.0.0.1:$hap/ok"
sleep 0.5
mkdir -p "$out"
cp "$work/haproxy.log" "$out/haproxy-retries.log"
wc -l "$out/haproxy-retries.log"
