# Shared by the bench scripts (sourced): process cleanup, free ports, waiting for a port.
# The caller sets `work` (its temp dir, removed on exit) and appends the pids it starts to `pids`.

pids=()

# Stops every process in `pids`: SIGTERM, up to 5 s each, then SIGKILL; removes $work.
stop_pids() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (at most $2 s, default 10) until 127.0.0.1:$1 accepts connections; on timeout shows the
# tail of the logs in $work and exits.
wait_port() {
    local deadline=$((SECONDS + ${2:-10}))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "port $1 did not open; logs in $work:" >&2
            tail -n 20 "$work"/*.log >&2 || true
            exit 1
        fi
        sleep 0.05
    done
}
