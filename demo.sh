#!/usr/bin/env bash
# See pen balance: build it, start two tiny web servers on loopback, put pen in front of them,
# and fetch a page six times. Everything it starts is stopped on exit, by PID.
# Needs: cargo, python3; curl if present (python's urllib otherwise).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

work=$(mktemp -d "${TMPDIR:-/tmp}/pen-demo.XXXXXX")
pids=()

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        # Bounded: pen stops at once when no connection is open; give up after 5 s.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "demo: $*" >&2
    for log in "$work"/*.log; do
        [ -s "$log" ] && { echo "--- $log" >&2; cat "$log" >&2; }
    done
    exit 1
}

command -v python3 >/dev/null || fail "python3 is needed for the demo backends"

echo "== building pen (cargo build --release -p pen)"
cargo build --release -p pen
pen=target/release/pen

# A free loopback port: bind port 0, note what the kernel chose, let it go.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait (at most 10 s) until a socket listens on 127.0.0.1:$1. It looks in /proc/net/tcp rather
# than connecting: a test connection through pen would take a turn of its round robin.
wait_listening() {
    local port=$1 what=$2
    for _ in $(seq 100); do
        if python3 - "$port" <<'PY'
import sys
port = "%04X" % int(sys.argv[1])
with open("/proc/net/tcp") as f:
    next(f)
    listening = any(
        line.split()[1] == "0100007F:" + port and line.split()[3] == "0A" for line in f
    )
sys.exit(0 if listening else 1)
PY
        then
            return 0
        fi
        kill -0 "${pids[-1]}" 2>/dev/null || fail "$what exited"
        sleep 0.1
    done
    fail "$what did not start listening on port $port"
}

backend_ports=()
for n in 1 2; do
    mkdir -p "$work/www$n"
    echo "backend $n" >"$work/www$n/index.html"
    port=$(free_port)
    python3 -m http.server --bind 127.0.0.1 --directory "$work/www$n" "$port" \
        >"$work/backend$n.log" 2>&1 &
    pids+=($!)
    wait_listening "$port" "backend $n"
    backend_ports+=("$port")
    echo "== backend $n: python3 http.server on 127.0.0.1:$port"
done

listen=$(free_port)
# -f: foreground; -r: round robin without client tracking, so that this one client (always
# 127.0.0.1) is spread over both servers instead of being sent back to the same one.
echo "== $pen -f -r 127.0.0.1:$listen 127.0.0.1:${backend_ports[0]} 127.0.0.1:${backend_ports[1]}"
"$pen" -f -r "127.0.0.1:$listen" "127.0.0.1:${backend_ports[0]}" "127.0.0.1:${backend_ports[1]}" \
    2>"$work/pen.log" &
pids+=($!)
wait_listening "$listen" "pen"

fetch() {
    if command -v curl >/dev/null; then
        curl --silent --show-error --max-time 5 "$1"
    else
        python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
    fi
}

echo "== six requests to http://127.0.0.1:$listen/ (round robin starts at server 1, as in pen)"
for i in 1 2 3 4 5 6; do
    reply=$(fetch "http://127.0.0.1:$listen/") || fail "request $i through pen failed"
    echo "request $i: $reply"
done
echo "== done; stopping pen and the backends"
