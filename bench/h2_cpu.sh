#!/usr/bin/env bash
# CPU time per request over HTTP/2 (h2c, prior knowledge; over TLS with TLS=1, and HTTP/1.1
# keep-alive over TLS with H1=1): keygate and HAProxy key+limit (also with the five rate-limit
# headers keygate sends, which HAProxy's key+limit frontend does not send; and nginx
# key+limit) each serve a fixed number of h2load requests, and the CPU time the proxy process
# used for them (utime + stime from /proc, its children's for nginx) is divided by the count.
# Unlike a req/s figure, this holds up on a machine others are using: it counts what the proxy
# spent, not how much of the CPU it got.
#
#   bench/run.sh h2                      first: writes the configs and keys in bench/work/
#   bench/h2_cpu.sh [keygate-binary...]  default target/release/keygate
#
#   N=200000 C=50 M=10 ROUNDS=3          requests per run, h2load -c, -m, rounds (interleaved)
#   TLS=1                                over TLS (ALPN h2), the peers' TLS listeners
#   H1=1                                 HTTP/1.1 keep-alive instead (h2load --h1; -m 1 is
#                                        one request at a time per connection)
#   HS=1                                 a full TLS handshake per request: HTTP/1.1 over TLS
#                                        with `Connection: close` (h2load never resumes a
#                                        session); implies TLS=1 H1=1 M=1, N defaults to 20000
#
# Servers on CPU 0 (keygate with one worker thread), h2load on CPU 1, as in bench/run.sh.
# Everything started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=bench/work
HS=${HS:-0}
if [ "$HS" = 1 ]; then TLS=1 H1=1 M=1 N=${N:-20000}; fi
N=${N:-200000}
C=${C:-50}
M=${M:-10}
ROUNDS=${ROUNDS:-3}
TLS=${TLS:-0}
H1=${H1:-0}
if [ "$TLS" = 1 ]; then
    SCHEME=https KG_CONF=keygate-tls.toml PEER_PORT=300
else
    SCHEME=http KG_CONF=keygate-one.toml PEER_PORT=0
fi
H2LOAD_PROTO=()
[ "$H1" = 1 ] && H2LOAD_PROTO=(--h1)
[ "$HS" = 1 ] && H2LOAD_PROTO+=(-H "Connection: close")
[ "$TLS" = 1 ] && [ "$H1" = 0 ] && H2LOAD_PROTO=(--npn-list=h2)
[ "$TLS" = 0 ] && [ "$H1" = 1 ] && { echo "H1=1 needs TLS=1 (the peers' plain h2 ports speak only HTTP/2)" >&2; exit 1; }
[ $# -gt 0 ] || set -- target/release/keygate
[ -f "$WORK/conf/keygate-one.toml" ] || { echo "run bench/run.sh h2 first" >&2; exit 1; }
KEY=$(head -1 "$WORK/wrk_keys.txt")
TICK=$(getconf CLK_TCK)

pids=()
cleanup() {
    local p i
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # Gone before we return, so a run right after this one finds its ports free.
    for p in "${pids[@]}"; do
        for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
}
trap cleanup EXIT

pidfile_pid() { # file
    local i
    for ((i = 0; i < 50; i++)); do [ -s "$1" ] && { cat "$1"; return; }; sleep 0.1; done
    echo "no pid in $1" >&2
    exit 1
}

# CPU ticks of a process and its children (nginx's workers), as "user system".
ticks() {
    local user=0 system=0 p u s
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        read -r u s < <(awk '{print $14, $15}' /proc/"$p"/stat)
        user=$((user + u))
        system=$((system + s))
    done
    echo "$user $system"
}

rm -f "$WORK"/run/{upstream,proxy-nginx,haproxy}.pid
W="$PWD/$WORK"
taskset -c 0 nginx -q -p "$W" -e "$W/logs/h2cpu-upstream.err" -c "$W/conf/upstream-nginx.conf"
UP=$(pidfile_pid "$WORK/run/upstream.pid")
pids+=("$UP")
taskset -c 0 nginx -q -p "$W" -e "$W/logs/h2cpu-nginx.err" -c "$W/conf/nginx.conf"
NG=$(pidfile_pid "$WORK/run/proxy-nginx.pid")
pids+=("$NG")
taskset -c 0 haproxy -q -D -f "$WORK/conf/haproxy.cfg"
HA=$(pidfile_pid "$WORK/run/haproxy.pid")
pids+=("$HA")

declare -A KG_PID KG_PORT
i=0
for bin in "$@"; do
    port=$((8600 + i))
    TOKIO_WORKER_THREADS=1 KEYGATE_LISTEN__PUBLIC="127.0.0.1:$port" KEYGATE_LISTEN__ADMIN="127.0.0.1:$((9600 + i))" \
        taskset -c 0 "$bin" serve -c "$WORK/conf/$KG_CONF" >/dev/null 2>"$WORK/logs/h2cpu-$i.err" &
    KG_PID[$bin]=$!
    KG_PORT[$bin]=$port
    pids+=("$!")
    for ((t = 0; t < 100; t++)); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$((9600 + i))/readyz" 2>/dev/null && break
        sleep 0.1
    done
    i=$((i + 1))
done

# one name pid port: µs of CPU per request (and of it, in the kernel), and req/s, for one
# h2load run.
one() {
    local before after out rps
    before=$(ticks "$2")
    out=$(taskset -c 1 h2load -t1 -n "$N" -c "$C" -m "$M" "${H2LOAD_PROTO[@]}" -H "x-api-key: $KEY" \
        "$SCHEME://127.0.0.1:$3/v1/resource" 2>&1)
    after=$(ticks "$2")
    grep -q "succeeded, 0 failed" <<<"$(grep '^requests:' <<<"$out" | sed 's/[0-9]* errored, //')" ||
        { echo "$1: not every request succeeded:" >&2; grep -E '^(requests|status codes):' <<<"$out" >&2; }
    rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' <<<"$out")
    awk -v n="$N" -v before="$before" -v after="$after" -v tick="$TICK" -v name="$1" -v rps="$rps" \
        'BEGIN { split(before, b, " "); split(after, a, " ");
                 u = (a[1] - b[1]) * 1e6 / tick / n; s = (a[2] - b[2]) * 1e6 / tick / n;
                 printf "%-40s %7.2f us CPU/request (%5.2f in the kernel)  %9s req/s\n", name, u + s, s, rps }'
}

what="h2c"
[ "$TLS" = 1 ] && what="TLS, HTTP/2"
[ "$H1" = 1 ] && what="TLS, HTTP/1.1 keep-alive"
[ "$HS" = 1 ] && what="TLS, HTTP/1.1, a full handshake per request"
echo "$what, $C connections x $M streams, $N requests per run, $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
    one "haproxy key+limit" "$HA" $((8185 + PEER_PORT))
    one "haproxy key+limit, limit headers" "$HA" $((8186 + PEER_PORT))
    one "nginx key+limit" "$NG" $((8184 + PEER_PORT))
    for bin in "$@"; do
        one "keygate $bin" "${KG_PID[$bin]}" "${KG_PORT[$bin]}"
    done
done
