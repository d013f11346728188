#!/usr/bin/env bash
# Benchmarks of the log tools, reported and never asserted:
#  1. mergelogs against Debian's C mergelogs on a generated pen log and three web logs of
#     LINES lines each (default 1,000,000): lines per second and peak RSS, best of ROUNDS runs;
#  2. penlogd's sustained rate on loopback: pairs of datagrams (a pen record and its web line)
#     at increasing rates, with the kernel's drop counter for the socket and the lines written.
# Usage: bash tests/bench/logtools.sh   (LINES=N ROUNDS=N RATES="50000 100000" to change;
#        ONLY=mergelogs or ONLY=penlogd runs one half; PENLOGD=/usr/bin/penlogd measures C's)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
LINES=${LINES:-1000000}
ROUNDS=${ROUNDS:-3}
RATES=${RATES:-"50000 100000 200000"}
SECONDS_PER_RATE=${SECONDS_PER_RATE:-5}
ONLY=${ONLY:-}

cargo build --release -q -p mergelogs -p penlogd
cargo build --release -q -p pen-crosstests --examples
bin=target/release
dir=$(mktemp -d)
penlogd_pid=
cleanup() {
    [ -n "$penlogd_pid" ] && kill "$penlogd_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

if [ "$ONLY" != penlogd ]; then
echo "generating 3 x $LINES web log lines and the pen log..."
"$bin/examples/genlogs" "$dir" "$LINES"
web_lines=$(cat "$dir"/access*.log | wc -l)
pen_lines=$(wc -l < "$dir/pen.log")
echo "web log lines: $web_lines, pen log lines: $pen_lines, total bytes: $(cat "$dir"/*.log | wc -c)"

# best elapsed seconds and its peak RSS (KiB) over ROUNDS runs of: mergelogs-binary out-file
measure() {
    local prog=$1 out=$2 best= rss=
    for _ in $(seq "$ROUNDS"); do
        /usr/bin/time -f "%e %M" -o "$dir/time" env TZ=UTC "$prog" -p "$dir/pen.log" \
            10.0.0.1:"$dir/access0.log" 10.0.0.2:"$dir/access1.log" 10.0.0.3:"$dir/access2.log" \
            > "$out" 2> "$dir/stderr" || true
        read -r secs kib < "$dir/time"
        if [ -z "$best" ] || awk "BEGIN{exit !($secs < $best)}"; then best=$secs; rss=$kib; fi
    done
    echo "$best $rss"
}

echo
echo "== mergelogs (best of $ROUNDS)"
read -r c_secs c_rss < <(measure /usr/bin/mergelogs "$dir/c.out")
read -r r_secs r_rss < <(measure "$bin/mergelogs" "$dir/rust.out")
if cmp -s "$dir/rust.out" "$dir/merged.log"; then correct=yes; else correct=NO; fi
awk -v n="$web_lines" -v cs="$c_secs" -v rs="$r_secs" -v cr="$c_rss" -v rr="$r_rss" -v ok="$correct" 'BEGIN {
    printf "C mergelogs:    %7.2f s  %10.0f lines/s  peak RSS %7.1f MiB\n", cs, n / cs, cr / 1024
    printf "Rust mergelogs: %7.2f s  %10.0f lines/s  peak RSS %7.1f MiB  (output as expected: %s)\n", rs, n / rs, rr / 1024, ok
    printf "ratio: %.1fx C lines per second, %.2fx C peak RSS\n", cs / rs, rr / cr
}'
fi
[ "$ONLY" = mergelogs ] && exit 0

echo
echo "== penlogd on loopback"
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", 0)); print(s.getsockname()[1])')
${PENLOGD:-$bin/penlogd} -f -l "$dir/penlogd.out" "$port" 2> "$dir/penlogd.err" &
penlogd_pid=$!
for _ in $(seq 100); do
    grep -qi ":$(printf '%04X' "$port") " /proc/net/udp6 /proc/net/udp 2>/dev/null && break
    sleep 0.05
done
drops() {
    awk -v p=":$(printf '%04X' "$port")" '$2 ~ p"$" {print $NF}' /proc/net/udp6 /proc/net/udp | head -1
}
# penlogd's CPU time so far, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$penlogd_pid/stat"; }
hz=$(getconf CLK_TCK)
written=0
for rate in $RATES; do
    n=$((rate * SECONDS_PER_RATE))
    before_drops=$(drops)
    before_cpu=$(cpu_ticks)
    report=$("$bin/examples/penlogd_load" "$port" "$n" "$rate")
    want=$((written + n))
    for _ in $(seq 200); do
        [ "$(cat "$dir/penlogd.out" 2>/dev/null | wc -l)" -ge "$want" ] && break
        sleep 0.05
    done
    got=$(($(wc -l < "$dir/penlogd.out") - written))
    written=$(wc -l < "$dir/penlogd.out")
    lost=$(($(drops) - before_drops))
    cpu=$(( $(cpu_ticks) - before_cpu ))
    echo "asked $rate lines/s: $report; written $got of $n; kernel drops on the socket: $lost datagrams"
    awk -v n="$n" -v t="$cpu" -v hz="$hz" 'BEGIN {
        if (t > 0) printf "  penlogd CPU: %.2f s for %d lines (2 datagrams each): %.1f us a line, %.0f lines per CPU-second\n", t / hz, n, t / hz / n * 1e6, n / (t / hz)
    }'
done
kill -TERM "$penlogd_pid"; wait "$penlogd_pid" || true; penlogd_pid=
grep "exiting" "$dir/penlogd.err" || true
matched=$(grep -c '^198\.51\.' "$dir/penlogd.out" || true)
echo "lines written with their pen client: $matched of $written"
