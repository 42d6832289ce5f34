#!/usr/bin/env bash
# Captures real nginx and HAProxy logs of upstream failures for `gatewise explain` tests.
#
# Starts misbehaving upstreams (scripts/explain-upstreams.py), nginx and HAProxy on loopback with
# OS-chosen ports and short timeouts, drives requests with curl, and copies the logs to
# tests/fixtures/explain/. The fixtures are committed, so CI never runs this.
# Needs: nginx (nginx-light), haproxy, python3, curl.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/tests/fixtures/explain"
work=$(mktemp -d /tmp/explain-capture.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -f "$work/nginx.pid" ]]; then kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

command -v nginx >/dev/null && command -v haproxy >/dev/null || {
    echo "installing nginx-light haproxy" >&2
    apt-get install -y nginx-light haproxy >/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

python3 "$repo/scripts/explain-upstreams.py" > "$work/ports.json" &
pids+=($!)
for _ in $(seq 50); do [[ -s "$work/ports.json" ]] && break; sleep 0.1; done
port() { python3 -c "import json,sys; print(json.load(open('$work/ports.json'))['$1'])"; }
ok=$(port ok); ok2=$(port ok2); hang=$(port hang); close=$(port close); reset=$(port reset)
big=$(port bigheader); invalid=$(port invalid); midbody=$(port midbody); backlog=$(port backlog)
dead=$(port dead); dead2=$(port dead2); eager=$(port eager)

# ---- nginx ----
ngx=$(free_port)
mkdir -p "$work/tmp"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log info;
events { worker_connections 256; }
http {
    client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
    uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
    log_format upstreams '\$remote_addr - \$remote_user [\$time_local] "\$request" \$status \$body_bytes_sent '
                         '"\$http_referer" "\$http_user_agent" \$upstream_addr \$upstream_status \$upstream_response_time';
    access_log $work/nginx-access.log upstreams;
    proxy_connect_timeout 1s; proxy_read_timeout 1s; proxy_send_timeout 1s;
    proxy_buffer_size 4k; proxy_buffering off;
    # Both servers fail once and are marked down for 60 s: later requests find no live upstream.
    upstream nolive { server 127.0.0.1:$dead max_fails=1 fail_timeout=60s; server 127.0.0.1:$dead2 max_fails=1 fail_timeout=60s; }
    upstream retried { server 127.0.0.1:$dead max_fails=0; server 127.0.0.1:$ok2 max_fails=0; }
    upstream resolve { server 127.0.0.1:$ok; }
    server {
        listen 127.0.0.1:$ngx;
        location /ok { proxy_pass http://127.0.0.1:$ok; }
        location /refused { proxy_pass http://127.0.0.1:$dead; }
        location /hang { proxy_pass http://127.0.0.1:$hang; }
        location /close { proxy_pass http://127.0.0.1:$close; }
        location /reset { proxy_pass http://127.0.0.1:$reset; }
        location /bigheader { proxy_pass http://127.0.0.1:$big; }
        location /invalid { proxy_pass http://127.0.0.1:$invalid; }
        location /midbody { proxy_pass http://127.0.0.1:$midbody; }
        location /backlog { proxy_pass http://127.0.0.1:$backlog; }
        location /tls { proxy_pass https://127.0.0.1:$eager; }
        location /nolive { proxy_pass http://nolive; }
        location /retried { proxy_pass http://retried; }
        location /dns { resolver 127.0.0.1:$dead valid=1s; resolver_timeout 1s; set \$u "nowhere.invalid"; proxy_pass http://\$u:80; }
    }
}
CONF
nginx -p "$work" -c "$work/nginx.conf" -g 'daemon off;' 2>>"$work/nginx-error.log" &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$ngx/ok" && break; sleep 0.1; done

get() { curl -s -o /dev/null -m 5 -A explain-capture "$1" || true; }
for path in ok refused refused hang close reset bigheader invalid midbody backlog \
            tls nolive nolive nolive retried retried retried retried dns ok; do
    get "http://127.0.0.1:$ngx/$path"
done

# ---- HAProxy ----
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
    timeout queue 1s
    retries 2
frontend web
    bind 127.0.0.1:$hap
    use_backend refused if { path_beg /refused }
    use_backend hang if { path_beg /hang }
    use_backend close if { path_beg /close }
    use_backend bigheader if { path_beg /bigheader }
    use_backend invalid if { path_beg /invalid }
    use_backend midbody if { path_beg /midbody }
    use_backend backlog if { path_beg /backlog }
    use_backend nosrv if { path_beg /nosrv }
    use_backend queue if { path_beg /queue }
    use_backend retried if { path_beg /retried }
    default_backend ok
backend ok
    server ok1 127.0.0.1:$ok
backend refused
    server dead1 127.0.0.1:$dead
backend hang
    server hang1 127.0.0.1:$hang
backend close
    server close1 127.0.0.1:$close
backend bigheader
    server big1 127.0.0.1:$big
backend invalid
    server invalid1 127.0.0.1:$invalid
backend midbody
    server mid1 127.0.0.1:$midbody
backend backlog
    server backlog1 127.0.0.1:$backlog
backend nosrv
    server off1 127.0.0.1:$ok disabled
backend queue
    timeout queue 300ms
    server q1 127.0.0.1:$hang maxconn 1
backend retried
    option redispatch 1
    balance roundrobin
    server dead2 127.0.0.1:$dead
    server ok2 127.0.0.1:$ok2
CONF
haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>"$work/haproxy.stderr" &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$hap/ok" && break; sleep 0.1; done
for path in ok refused hang close bigheader invalid midbody backlog nosrv retried retried retried retried; do
    get "http://127.0.0.1:$hap/$path"
done
# Two at once on a maxconn-1 server that never answers: the second waits in the queue and times out.
get "http://127.0.0.1:$hap/queue" &
first=$!
get "http://127.0.0.1:$hap/queue"
wait "$first"

mkdir -p "$out"
kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
sleep 0.5
cp "$work/nginx-error.log" "$out/nginx-error.log"
cp "$work/nginx-access.log" "$out/nginx-access.log"
cp "$work/haproxy.log" "$out/haproxy.log"
wc -l "$out"/*.log
