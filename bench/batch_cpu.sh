#!/usr/bin/env bash
# CPU time and context switches per request, HTTP/1.1 keep-alive: keygate (b) with writes
# batched through io_uring, (f) through Linux AIO, (g) not batched, and HAProxy key+limit,
# interleaved round by round. For each wrk run (bench/run.sh's: -t2 -c50, bench.lua, on CPU
# 1), the proxy's utime + stime and context switches (voluntary and not, every thread, from
# /proc) and the upstream nginx's CPU (its workers included) are divided by the requests
# served. Unlike req/s, this holds up on a machine others are using: it counts what each
# process spent, not how much of the CPU it got.
#
#   bench/run.sh serve &                 first: starts every server (BUILD=0 to skip building)
#   bench/batch_cpu.sh                   then this, once `serving` is logged
#
#   DURATION=5s ROUNDS=3                 wrk -d per run, interleaved rounds
#   ORDER="haproxy_auth kg_g_off ..."    the order within a round (default b, f, g, HAProxy)
#
# It starts nothing and stops nothing: it finds the servers by their listening ports.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=bench/work
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
TICK=$(getconf CLK_TCK)
[ -f "$WORK/bench.lua" ] || { echo "run bench/run.sh serve first" >&2; exit 1; }

# The process listening on a port (the master, for HAProxy and nginx).
listener() {
    ss -Hltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}

# CPU ticks of a process (all threads) and of its children (nginx's workers).
ticks() {
    local total=0 p
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        total=$((total + $(awk '{print $14 + $15}' /proc/"$p"/stat)))
    done
    echo "$total"
}

# Context switches of a process and its children, every thread, voluntary and not.
switches() {
    local p
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        cat /proc/"$p"/task/*/status
    done | awk '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print n }'
}

declare -A PORT=([kg_b_io_uring]=8090 [kg_f_aio]=8094 [kg_g_off]=8095 [haproxy_auth]=8085)
read -r -a ORDER <<<"${ORDER:-kg_b_io_uring kg_f_aio kg_g_off haproxy_auth}"
UP=$(listener 8081)
[ -n "$UP" ] || { echo "no upstream on :8081: is bench/run.sh serve running?" >&2; exit 1; }
for id in "${ORDER[@]}"; do
    [ -n "$(listener "${PORT[$id]}")" ] || { echo "nothing listens on :${PORT[$id]} ($id)" >&2; exit 1; }
done

printf '| round | server | req/s | proxy µs/req | switches/req | upstream µs/req |\n|---|---|---:|---:|---:|---:|\n'
for ((r = 1; r <= ROUNDS; r++)); do
    for id in "${ORDER[@]}"; do
        pid=$(listener "${PORT[$id]}")
        t0=$(ticks "$pid"); s0=$(switches "$pid"); u0=$(ticks "$UP")
        out=$(taskset -c 1 wrk -t2 -c50 -d"$DURATION" --timeout 2s -s "$WORK/bench.lua" \
            "http://127.0.0.1:${PORT[$id]}/v1/resource" 2>&1)
        t1=$(ticks "$pid"); s1=$(switches "$pid"); u1=$(ticks "$UP")
        line=$(printf '%s\n' "$out" | grep '^RESULT ' | tail -1)
        n=$(printf '%s\n' "$line" | grep -o 'requests=[0-9]*' | cut -d= -f2)
        rps=$(printf '%s\n' "$line" | grep -o 'rps=[0-9.]*' | cut -d= -f2)
        bad=$(printf '%s\n' "$line" | grep -o 'non2xx3xx=[0-9]*' | cut -d= -f2)
        [ "$bad" = 0 ] || echo "warning: $id answered $bad non-2xx" >&2
        awk -v r="$r" -v id="$id" -v n="$n" -v rps="$rps" -v t="$((t1 - t0))" -v s="$((s1 - s0))" \
            -v u="$((u1 - u0))" -v tick="$TICK" 'BEGIN {
                printf "| %d | %s | %.0f | %.2f | %.3f | %.2f |\n", r, id, rps,
                    t * 1e6 / tick / n, s / n, u * 1e6 / tick / n }'
    done
done
