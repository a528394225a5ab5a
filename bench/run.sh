#!/usr/bin/env bash
# keygate load benchmark against nginx and HAProxy, on one machine. See bench/README.md.
#
#   bench/run.sh                 saturation throughput, scenarios interleaved round by round
#   bench/run.sh latency         fixed-rate latency with oha (MODE=latency works too)
#   bench/run.sh memory          keygate RSS with 10,000 and 1,000,000 keys; `keys create` timing
#   bench/run.sh chart           redraw bench/results.png and results-protocols.png from the last runs
#   bench/run.sh serve           start every server of the throughput run and wait (profiling)
#   bench/run.sh h2              HTTP/2 clients (h2load): h2c and TLS+ALPN h2, 10 and 1 streams
#   bench/run.sh tls             HTTP/1.1 over TLS: wrk keep-alive, and a full handshake per request
#   bench/run.sh scaling         keygate (b): one worker on one core against two workers on two
#   bench/run.sh latency-proto   fixed-rate latency of HTTP/2 and TLS clients (oha): h2c, TLS
#                                HTTP/1.1 keep-alive, TLS h2
#
# Servers run on CPU 0 (one worker each), the load generator on CPU 1. Everything the script
# starts is stopped by PID on exit; it never kills anything by name.
set -euo pipefail

MODE="${1:-${MODE:-throughput}}"
ROUNDS="${ROUNDS:-7}"                  # throughput: interleaved rounds (>= 7 for a stable median)
DURATION="${DURATION:-5s}"             # throughput: wrk -d per run
WARMUP="${WARMUP:-2s}"                 # throughput: one unrecorded run per scenario first
STEAL_MAX="${STEAL_MAX:-2.0}"          # a run is not clean when CPU steal during it exceeds this %
OTHER_MAX="${OTHER_MAX:-5.0}"          # ... or when other processes used more than this % of a CPU
QUIET_WAIT="${QUIET_WAIT:-180}"        # before a run, wait up to this many s for an idle machine
RETRIES="${RETRIES:-2}"                # re-run a scenario in its round this often if it was not clean
LAT_ROUNDS="${LAT_ROUNDS:-3}"          # latency: interleaved rounds of every scenario
LAT_RATE="${LAT_RATE:-5000}"           # latency: oha -q (req/s, total)
LAT_DURATION="${LAT_DURATION:-10s}"    # latency: oha -z
MEM_KEYS="${MEM_KEYS:-1000000}"        # memory: size of the large store
MEM_CREATE_TIMEOUT="${MEM_CREATE_TIMEOUT:-300}"   # memory: seconds allowed for one `keys create`
MEM_SCALING="${MEM_SCALING:-10000 25000 50000 100000}"   # memory: time `keys create --count N`
MEM_CACHED_SECS="${MEM_CACHED_SECS:-180}"   # memory: wrk run that sends every key once
MEM_SYNTH="${MEM_SYNTH:-1}"            # memory: if the CLI cannot make MEM_KEYS, synthesize them
READY_TIMEOUT="${READY_TIMEOUT:-120}"  # seconds to wait for keygate /readyz
BUILD="${BUILD:-1}"                    # 0: skip `cargo build --release`, use the binary there
REV="${REV:-}"                         # e.g. HEAD: benchmark this commit, built in bench/work/
ONLY="${ONLY:-}"                       # throughput: only these scenario ids, e.g. "haproxy_auth kg_b"
SERVER_CPU=0
LOAD_CPU=1
NKEYS=10000          # keys in the benchmarked store (and in the nginx/HAProxy maps)
NLOAD=1000           # of which the load uses this many (wrk_keys.txt)
NINVALID=1000        # well-formed keys from a throw-away store, unknown to the benchmarked one

ROOT="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
BENCH="$ROOT/bench"
PEERS="$BENCH/peers"                   # nginx and HAProxy configs, the project's own
WORK="$BENCH/work"
KG="$ROOT/target/release/keygate"
RESULTS_TSV="$WORK/results.tsv"

KG_PUBLIC=127.0.0.1:8090
KG_ADMIN=127.0.0.1:9190
KG_PLANS_PUBLIC=127.0.0.1:8092      # scenario c: a keygate with a rate-limit plan on every key
KG_PLANS_ADMIN=127.0.0.1:9192
KG_REDIS_PUBLIC=127.0.0.1:8091      # scenario d: a second keygate on the Redis store
KG_REDIS_ADMIN=127.0.0.1:9191
KG_AIO_PUBLIC=127.0.0.1:8094          # scenario f: (b) without io_uring: writes batched through AIO
KG_AIO_ADMIN=127.0.0.1:9194
KG_PLAIN_WRITES_PUBLIC=127.0.0.1:8095   # scenario g: (b) with batched writes off (one call each)
KG_PLAIN_WRITES_ADMIN=127.0.0.1:9195
REDIS=127.0.0.1:6390
UPSTREAM=127.0.0.1:8081

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --------------------------------------------------------------------------------------------
# Processes we started: "name pid" lines. cleanup() stops exactly these, by PID.
# --------------------------------------------------------------------------------------------
STARTED=()

remember() { STARTED+=("$1 $2"); }
forget() { # pid: after stopping it ourselves
    local e keep=()
    for e in "${STARTED[@]}"; do [ "${e##* }" = "$1" ] || keep+=("$e"); done
    STARTED=("${keep[@]}")
}

# Running, and not a zombie waiting to be reaped.
alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

stop_pid() { # name pid signal
    local name=$1 pid=$2 sig=$3 i
    alive "$pid" || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do          # up to 10 s
        alive "$pid" || return 0
        sleep 0.1
    done
    log "$name (pid $pid) still running after SIG$sig; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

stop_started() { # name pid signal: stop one of ours now, and forget it
    stop_pid "$@"
    forget "$2"
}

cleanup() {
    local rc=$? entry name pid sig i
    set +e
    # A second Ctrl-C or TERM while keygates drain must not cut the cleanup short.
    trap '' INT TERM
    # Newest first: the proxies let go of their upstream connections before the upstream stops.
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        entry=${STARTED[i]}
        name=${entry% *}
        pid=${entry##* }
        case $name in
            nginx*) sig=TERM ;;      # fast shutdown; the master stops its worker
            haproxy) sig=USR1 ;;     # soft stop
            redis) sig=TERM ;;       # no persistence configured: exits at once
            *) sig=TERM ;;           # keygate: graceful shutdown
        esac
        stop_pid "$name" "$pid" "$sig"
    done
    STARTED=()
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() { # packages...
    [ $# -gt 0 ] || return 0
    [ "$(id -u)" = 0 ] || die "missing packages ($*) and not root: apt-get install -y $*"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    # Debian starts nginx/haproxy system services on install (nginx would take port 80).
    # Keep that from happening with a temporary policy-rc.d when none exists.
    local policy=/usr/sbin/policy-rc.d ours=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    [ "$ours" = 1 ] && rm -f "$policy"
    return 0
}

ensure_tools() {
    local need=()
    command -v nginx >/dev/null || need+=(nginx)
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v wrk >/dev/null || need+=(wrk)
    command -v gnuplot >/dev/null || need+=(gnuplot-nox)
    command -v curl >/dev/null || need+=(curl)
    command -v jq >/dev/null || need+=(jq)
    command -v python3 >/dev/null || need+=(python3)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v ss >/dev/null || need+=(iproute2)
    command -v redis-server >/dev/null || need+=(redis-server)   # scenario d
    command -v openssl >/dev/null || need+=(openssl)             # the TLS certificate
    command -v h2load >/dev/null || need+=(nghttp2-client)       # h2 and tls modes
    [ "$MODE" != memory ] || [ -x /usr/bin/time ] || need+=(time)
    apt_install "${need[@]}"
}

OHA=""
ensure_oha() {
    OHA="$(command -v oha || true)"
    [ -n "$OHA" ] || { [ -x "$HOME/.cargo/bin/oha" ] && OHA="$HOME/.cargo/bin/oha"; } || true
    if [ -z "$OHA" ]; then
        log "cargo install oha --locked (one-off, several minutes on 2 cores)"
        cargo install oha --locked >"$WORK/logs/oha-install.log" 2>&1 \
            || die "cargo install oha failed; see $WORK/logs/oha-install.log"
        OHA="$HOME/.cargo/bin/oha"
    fi
    log "oha: $("$OHA" --version 2>/dev/null | head -1)"
}

build_keygate() {
    if [ -n "$REV" ]; then
        # A committed revision, built from a `git archive` copy in the scratch folder with its
        # own target dir: the benchmark then names exactly what it measured, whatever state
        # the working tree is in.
        local sha src tree
        sha=$(git -C "$ROOT" rev-parse --verify "$REV^{commit}") || die "REV=$REV is not a commit"
        # Keyed by what the binary is built from, so commits that touch only tests or docs
        # reuse the last build.
        tree=$(git -C "$ROOT" rev-parse "$sha:src" "$sha:Cargo.toml" "$sha:Cargo.lock" | sha1sum | cut -c1-12)
        src="$WORK/build-$tree"
        KG="$src/target/release/keygate"
        if [ ! -x "$KG" ]; then
            log "building $REV (${sha:0:12}) from git archive in $src: cargo build --release"
            rm -rf "$src"
            mkdir -p "$src"
            git -C "$ROOT" archive "$sha" | tar -x -C "$src"
            (cd "$src" && cargo build --release --quiet) || die "cargo build --release of $REV failed"
        fi
        log "source: commit ${sha:0:12} ($(git -C "$ROOT" log -1 --format='%ad %s' --date=format:'%F %H:%M' "$sha")), build $src"
        return 0
    fi
    if [ "$BUILD" = 0 ]; then
        log "BUILD=0: using the existing $KG (built $(date -r "$KG" '+%F %T'))"
    else
        log "cargo build --release"
        (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    fi
    [ -x "$KG" ] || die "$KG not found"
    log "source: $(git -C "$ROOT" rev-parse --short HEAD), $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock | wc -l) changed paths in src/Cargo.* not committed"
}

# --------------------------------------------------------------------------------------------
# Scratch folder, configs, keys
# --------------------------------------------------------------------------------------------
prepare_workdir() {
    mkdir -p "$WORK"/{conf,conf/tls,run,logs,tmp,data}
    rm -f "$WORK"/run/*.pid
    local f
    for f in "$PEERS/upstream-nginx.conf" "$PEERS/nginx.conf" "$PEERS/haproxy.cfg" "$BENCH/bench.lua"; do
        [ -f "$f" ] || die "$f missing"
    done
    for f in upstream-nginx.conf nginx.conf haproxy.cfg; do
        sed "s|@WORKDIR@|$WORK|g" "$PEERS/$f" >"$WORK/conf/$f"
    done
    sed "s|@WORKDIR@|$WORK|g" "$BENCH/bench.lua" >"$WORK/bench.lua"
    # (a) public path: same stream, path /public/resource (the lua script sets the path, the
    # URL's path is ignored by wrk.format).
    sed 's|"/v1/resource"|"/public/resource"|' "$WORK/bench.lua" >"$WORK/bench-public.lua"
    grep -q '"/public/resource"' "$WORK/bench-public.lua" || die "bench-public.lua: path not substituted"
    # (e) invalid keys: same stream, keys read from wrk_keys_invalid.txt.
    sed 's|/wrk_keys.txt"|/wrk_keys_invalid.txt"|' "$WORK/bench.lua" >"$WORK/bench-invalid.lua"
    grep -q 'wrk_keys_invalid.txt' "$WORK/bench-invalid.lua" || die "bench-invalid.lua: keys file not substituted"
    generate_certificate
}

# One self-signed certificate for 127.0.0.1 that nginx, HAProxy and keygate all serve, made
# fresh each run: TLS_KEY=ec (default, ECDSA P-256) or rsa (RSA 2048). HAProxy wants the
# certificate and key in one file.
TLS_KEY="${TLS_KEY:-ec}"
generate_certificate() {
    local dir="$WORK/conf/tls" keyopt
    case $TLS_KEY in
        ec) keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
        rsa) keyopt=(-newkey rsa:2048) ;;
        *) die "TLS_KEY=$TLS_KEY: ec or rsa" ;;
    esac
    openssl req -x509 "${keyopt[@]}" -nodes -days 30 -subj "/CN=127.0.0.1" \
        -addext "subjectAltName=IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" \
        >"$WORK/logs/openssl.log" 2>&1 || die "openssl req failed; see $WORK/logs/openssl.log"
    chmod 600 "$dir/key.pem"
    cat "$dir/cert.pem" "$dir/key.pem" >"$dir/haproxy.pem"
    chmod 600 "$dir/haproxy.pem"
}

write_keygate_conf() { # file public admin store_path
    cat >"$1" <<EOF
# Written by bench/run.sh.
[listen]
public = "$2"
admin = "$3"

[upstream]
url = "http://$UPSTREAM"

[store]
kind = "file"
path = "$4"

[auth]
public_paths = ["/public/**"]
unmatched = "allow"      # no [[route]] rules: any valid key may call any path

[log]
access = false
level = "warn"

# Scenario e sends 1,000 unknown keys from one address, which the credential-stuffing guard
# answers with 429 too_many_invalid_keys after 20 (the default). The guard stays on (its
# counting is part of every refusal's cost) but never blocks: e measures the 401 path.
[guard]
max_invalid = 4000000000
EOF
}

create_keys() { # conf count out.jsonl
    local t0=$SECONDS
    "$KG" keys create -c "$1" --name bench --scopes '*' --env live --count "$2" >"$3" \
        || die "keygate keys create --count $2 failed"
    local n
    n=$(wc -l <"$3")
    [ "$n" = "$2" ] || die "keygate keys create --count $2 printed $n lines"
    log "created $2 keys in $((SECONDS - t0)) s"
}

generate_keys() {
    write_keygate_conf "$WORK/conf/keygate.toml" "$KG_PUBLIC" "$KG_ADMIN" "$WORK/data/keys.json"
    # A second, throw-away store: its keys have valid checksums but the benchmarked store
    # does not know them (scenario e). Its ports are never bound.
    write_keygate_conf "$WORK/conf/keygate-throwaway.toml" 127.0.0.1:18090 127.0.0.1:19190 \
        "$WORK/data/throwaway-keys.json"
    rm -f "$WORK"/data/keys.json* "$WORK"/data/throwaway-keys.json*
    # Scenario c: the same store and keys, every key on a plan with per-second and per-hour
    # limits set like the peers' (evaluated on every request, never binding: 20,000/s).
    sed -e "s|^public = .*|public = \"$KG_PLANS_PUBLIC\"|" -e "s|^admin = .*|admin = \"$KG_PLANS_ADMIN\"|" \
        "$WORK/conf/keygate.toml" >"$WORK/conf/keygate-plans.toml"
    cat >>"$WORK/conf/keygate-plans.toml" <<'EOF2'

[plans.bench]
per_second = 20000
burst = 20000
per_hour = 100000000

[limits]
default_plan = "bench"
EOF2
    # Scenario d: the same settings on the Redis store (its own keys, created once Redis runs).
    sed -e 's|^kind = "file"|kind = "redis"|' -e "s|^path = .*|url = \"redis://$REDIS\"|" \
        -e "s|^public = .*|public = \"$KG_REDIS_PUBLIC\"|" -e "s|^admin = .*|admin = \"$KG_REDIS_ADMIN\"|" \
        "$WORK/conf/keygate.toml" >"$WORK/conf/keygate-redis.toml"

    log "creating $NKEYS keys (one CLI call)"
    create_keys "$WORK/conf/keygate.toml" "$NKEYS" "$WORK/data/keys.jsonl"
    jq -r '.key' "$WORK/data/keys.jsonl" >"$WORK/data/keys.txt"
    awk '{ printf "%s tenant%d\n", $1, NR }' "$WORK/data/keys.txt" >"$WORK/conf/keys.map"
    awk '{ printf "\"%s\" tenant%d;\n", $1, NR }' "$WORK/data/keys.txt" >"$WORK/conf/keys.nginx.map"
    head -n "$NLOAD" "$WORK/data/keys.txt" >"$WORK/wrk_keys.txt"

    log "creating $NINVALID throw-away keys for scenario e"
    create_keys "$WORK/conf/keygate-throwaway.toml" "$NINVALID" "$WORK/data/throwaway-keys.jsonl"
    jq -r '.key' "$WORK/data/throwaway-keys.jsonl" >"$WORK/wrk_keys_invalid.txt"
    if grep -qxFf "$WORK/wrk_keys_invalid.txt" "$WORK/data/keys.txt"; then
        die "a throw-away key is also in the benchmarked store"
    fi
    rm -f "$WORK"/data/*.jsonl   # the secrets are not needed beyond the lists above
}

# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------
port_free() { [ -z "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }

check_ports() {
    local p
    for p in "$@"; do
        port_free "$p" || die "port $p is already in use on this machine (left over from another run?); not touching it"
    done
}

wait_pidfile() { # name file
    local i
    for ((i = 0; i < 100; i++)); do
        [ -s "$2" ] && kill -0 "$(cat "$2")" 2>/dev/null && { remember "$1" "$(cat "$2")"; return 0; }
        sleep 0.1
    done
    die "$1 did not write $2; see $WORK/logs/"
}

start_nginx() { # name conf pidfile
    taskset -c "$SERVER_CPU" nginx -q -p "$WORK" -e "$WORK/logs/$1-startup.err" -c "$2" \
        || die "$1 failed to start; see $WORK/logs/$1-startup.err"
    wait_pidfile "$1" "$3"
}

start_upstream() {
    check_ports 8081
    start_nginx nginx-upstream "$WORK/conf/upstream-nginx.conf" "$WORK/run/upstream.pid"
}

start_peers() {
    check_ports 8082 8083 8084 8085
    check_ports 8184 8484 8185 8485      # the same peers' HTTP/2 and TLS listeners
    start_nginx nginx-proxy "$WORK/conf/nginx.conf" "$WORK/run/proxy-nginx.pid"
    taskset -c "$SERVER_CPU" haproxy -q -D -f "$WORK/conf/haproxy.cfg" \
        >"$WORK/logs/haproxy.out" 2>&1 || die "haproxy failed to start; see $WORK/logs/haproxy.out"
    wait_pidfile haproxy "$WORK/run/haproxy.pid"
}

KG_PID=""
# start_keygate name public admin [VAR=value ...]: extra env, e.g. KEYGATE_STORE__PATH=...
start_keygate() {
    local name=$1 public=$2 admin=$3 i t0
    shift 3
    check_ports "${public##*:}" "${admin##*:}"
    t0=$(date +%s%N)
    env TOKIO_WORKER_THREADS=1 KEYGATE_LISTEN__PUBLIC="$public" KEYGATE_LISTEN__ADMIN="$admin" "$@" \
        taskset -c "${KG_CPUS:-$SERVER_CPU}" "$KG" serve -c "${KG_CONF:-$WORK/conf/keygate.toml}" \
        >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err" &
    KG_PID=$!
    remember "$name" "$KG_PID"
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        kill -0 "$KG_PID" 2>/dev/null || die "$name exited during start; see $WORK/logs/$name.err"
        if curl -fsS -o /dev/null --max-time 1 "http://$admin/readyz" 2>/dev/null; then
            KG_READY_MS=$((($(date +%s%N) - t0) / 1000000))
            log "$name ready (pid $KG_PID, $KG_READY_MS ms); threads: $(thread_summary "$KG_PID")"
            return 0
        fi
        sleep 0.1
    done
    die "$name not ready after ${READY_TIMEOUT}s"
}

# "3 × tokio-runtime-w, 1 × keygate" style summary of a process's threads.
thread_summary() {
    cat /proc/"$1"/task/*/comm 2>/dev/null | sort | uniq -c | awk '{ printf "%s%d×%s", (NR>1?", ":""), $1, $2 }'
}

# rps and p99 of the last results.tsv row for a scenario id
result_fields() {
    awk -F'\t' -v id="$1" '$2 == id { line = $0 } END {
        n = split(line, f, "\t"); out = ""
        for (i = 5; i <= n; i++) if (f[i] ~ /^(rps|p50_us|p99_us|non2xx3xx)=/) out = out " " f[i]
        print substr(out, 2) }' "$RESULTS_TSV"
}

# CPU seconds per thread, e.g. "keygate 0.01s, tokio-rt-worker 41.2s, tokio-rt-worker 0.1s":
# shows that one worker thread did the work (blocking-pool threads carry the same name).
thread_cpu() {
    local t hz
    hz=$(getconf CLK_TCK)
    for t in /proc/"$1"/task/*; do
        sed 's/.*) //' "$t/stat" | awk -v c="$(cat "$t/comm")" -v hz="$hz" '{ printf "%s %.1fs\n", c, ($12 + $13) / hz }'
    done | paste -sd ',' | sed 's/,/, /g'
}

rss_kib() { awk -v f="$2" '$1 == f":" { print $2 }' /proc/"$1"/status; }

# --------------------------------------------------------------------------------------------
# Functional checks: every scenario answers what it should before it is timed
# --------------------------------------------------------------------------------------------
status_of() { # url [key]
    if [ -n "${2:-}" ]; then
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "x-api-key: $2" "$1"
    else
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1"
    fi
}

expect_status() { # what expected url [key]
    local got
    got=$(status_of "$3" "${4:-}")
    if [ "$got" = "$2" ]; then
        log "check ok: $1 -> $got"
    else
        die "check failed: $1 -> $got, expected $2"
    fi
}

functional_checks() {
    local good bad
    good=$(head -1 "$WORK/wrk_keys.txt")
    bad=$(head -1 "$WORK/wrk_keys_invalid.txt")
    expect_status "direct" 200 "http://$UPSTREAM/v1/resource"
    expect_status "nginx key+limit, valid key" 200 "http://127.0.0.1:8084/v1/resource" "$good"
    expect_status "nginx key+limit, unknown key" 401 "http://127.0.0.1:8084/v1/resource" "$bad"
    expect_status "haproxy key+limit, valid key" 200 "http://127.0.0.1:8085/v1/resource" "$good"
    expect_status "haproxy key+limit, unknown key" 401 "http://127.0.0.1:8085/v1/resource" "$bad"
    expect_status "keygate public path, no key" 200 "http://$KG_PUBLIC/public/resource"
    expect_status "keygate valid key" 200 "http://$KG_PUBLIC/v1/resource" "$good"
    expect_status "keygate no key" 401 "http://$KG_PUBLIC/v1/resource"
    expect_status "keygate unknown (well-formed) key" 401 "http://$KG_PUBLIC/v1/resource" "$bad"
    local body
    body=$(curl -s --max-time 5 -H "x-api-key: $bad" "http://$KG_PUBLIC/v1/resource")
    case $body in
        *'"invalid_api_key"'*) log "check ok: unknown key is refused as invalid_api_key" ;;
        *) die "unknown key: unexpected body: $body" ;;
    esac
    # Scenario e must be all 401s: sample 50 of its keys (wrk itself only counts non-2xx/3xx).
    local k n401=0 n=0
    while IFS= read -r k && [ "$n" -lt 50 ]; do
        n=$((n + 1))
        [ "$(status_of "http://$KG_PUBLIC/v1/resource" "$k")" = 401 ] && n401=$((n401 + 1))
    done <"$WORK/wrk_keys_invalid.txt"
    log "check: scenario e sample: $n401 of $n requests answered 401"
    [ "$n401" = "$n" ] || die "scenario e keys are not all refused with 401"
    printf 'e_sample_401\t%s\t%s\n' "$n401" "$n" >"$WORK/checks.tsv"
}

# --------------------------------------------------------------------------------------------
# /proc/stat
# --------------------------------------------------------------------------------------------
# user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
cpu_sample() { awk -v c="${1:-cpu}" '$1 == c { print $2, $3, $4, $5, $6, $7, $8, $9 }' /proc/stat; }

steal_pct() { # "before" "after"
    awk -v a="$1" -v b="$2" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = 0
        for (i = 1; i <= 8; i++) t += y[i] - x[i]
        printf "%.2f", (t > 0 ? 100 * (y[8] - x[8]) / t : 0) }'
}

busy_pct() { # "before" "after": 100 - idle - iowait
    awk -v a="$1" -v b="$2" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = 0
        for (i = 1; i <= 8; i++) t += y[i] - x[i]
        idle = (y[4] - x[4]) + (y[5] - x[5])
        printf "%.1f", (t > 0 ? 100 * (t - idle) / t : 0) }'
}

# CPU jiffies (user+system) of the processes we started and their children (nginx workers).
servers_jiffies() {
    local e list=" "
    for e in ${STARTED[@]+"${STARTED[@]}"}; do list+="${e##* } "; done
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v list="$list" '{
        pid = $1; sub(/.*\) /, "")
        if (index(list, " " pid " ") || index(list, " " $2 " ")) s += $12 + $13
    } END { print s + 0 }'
}

# CPU time of the shell's reaped children (wrk runs as one), in jiffies, into the variable
# named $1. `times` must run in this shell, not in a $(...) subshell, which has its own.
children_jiffies() {
    times >"$WORK/run/times.txt"
    printf -v "$1" '%s' "$(awk -v hz="$(getconf CLK_TCK)" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%d", t * hz + 0.5 }' "$WORK/run/times.txt")"
}

# Busy jiffies of all CPUs (user..softirq, no steal) and elapsed jiffies of one CPU.
all_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
one_cpu_elapsed() { awk '$1 == "cpu" { t = $2+$3+$4+$5+$6+$7+$8+$9 } $1 ~ /^cpu[0-9]+$/ { c++ } END { print int(t / c) }' /proc/stat; }

# Waits (at most QUIET_WAIT s) until the whole machine is idle for one second: someone else's
# compile on a 2-core box takes CPU 0 from the server under test and CPU 1 from wrk.
wait_quiet() {
    local i a b busy
    for ((i = 0; i < QUIET_WAIT; i++)); do
        a=$(cpu_sample cpu)
        sleep 1
        b=$(cpu_sample cpu)
        busy=$(busy_pct "$a" "$b")
        if awk -v b="$busy" 'BEGIN { exit !(b < 5) }'; then
            [ "$i" = 0 ] || log "machine idle again after ${i}s"
            return 0
        fi
        [ "$i" = 0 ] && log "machine busy (${busy}% of 2 CPUs) with nothing of ours running; waiting up to ${QUIET_WAIT}s"
    done
    log "still busy after ${QUIET_WAIT}s; running anyway (the run will be flagged)"
}

# --------------------------------------------------------------------------------------------
# Throughput scenarios: one function each. scenario_<id> runs one timed wrk run.
# A scenario is listed in SCENARIOS only if it can run in this build.
# --------------------------------------------------------------------------------------------
declare -A DESC=(
    [direct]="direct upstream (nginx, :8081)"
    [nginx_plain]="nginx plain proxy (:8082)"
    [nginx_auth]="nginx key map + limit_req (:8084)"
    [haproxy_plain]="HAProxy plain proxy (:8083)"
    [haproxy_auth]="HAProxy key map + stick-table (:8085)"
    [kg_a]="keygate (a) public path, no key check (:8090)"
    [kg_b]="keygate (b) file store, valid keys (:8090)"
    [kg_c]="keygate (c) file store + plan with per-second/per-hour limits (:8092)"
    [kg_d]="keygate (d) Redis store + in-process cache, valid keys (:8091)"
    [kg_e]="keygate (e) unknown well-formed keys -> 401 (:8090)"
    [kg_f]="keygate (f) as (b) without io_uring, as under Docker's default seccomp: writes batched through Linux AIO (:8094)"
    [kg_g]="keygate (g) as (b), batched writes off: one system call per write (:8095)"
)

# Around one load run: steal % (whole machine), CPU-0 busy %, the servers' CPU (% of one core,
# from their own /proc/PID/stat), and CPU used by other processes (% of one core: neither our
# servers nor our load generator; a few % either way when the machine is otherwise idle).
measure_start() {
    M_SJ=$(servers_jiffies); children_jiffies M_CJ; M_AB=$(all_busy); M_EL=$(one_cpu_elapsed)
    M_ALL=$(cpu_sample cpu); M_C0=$(cpu_sample "cpu$SERVER_CPU")
}
measure_end() {
    local sj cj ab el
    sj=$(servers_jiffies); children_jiffies cj; ab=$(all_busy); el=$(one_cpu_elapsed)
    STEAL=$(steal_pct "$M_ALL" "$(cpu_sample cpu)")
    BUSY0=$(busy_pct "$M_C0" "$(cpu_sample "cpu$SERVER_CPU")")
    # shellcheck disable=SC2153  # M_CJ is set by children_jiffies (printf -v)
    read -r SERVERS OTHER < <(awk -v b="$((ab - M_AB))" -v s="$((sj - M_SJ))" -v c="$((cj - M_CJ))" \
        -v e="$((el - M_EL))" 'BEGIN { if (e <= 0) e = 1; printf "%.1f %.1f\n", 100 * s / e, 100 * (b - s - c) / e }')
    CLEAN=$(awk -v s="$STEAL" -v o="$OTHER" -v sm="$STEAL_MAX" -v om="$OTHER_MAX" 'BEGIN { print (s <= sm && o <= om) ? 1 : 0 }')
}

# wrk_run id round port lua duration: appends one row to results.tsv (round 0 = warm-up,
# not written) and sets LAST_CLEAN.
# port may also be a whole URL (https://...).
wrk_run() {
    local id=$1 round=$2 port=$3 lua=$4 dur=$5 out line url
    case $port in
        *://*) url=$port ;;
        *) url="http://127.0.0.1:$port/v1/resource" ;;
    esac
    [ "$round" = 0 ] || wait_quiet
    measure_start
    out=$(timeout 120 taskset -c "$LOAD_CPU" wrk -t2 -c50 -d"$dur" --timeout 2s -s "$lua" \
        "$url" 2>&1) || log "wrk exited non-zero for $id"
    measure_end
    [ "$round" = 0 ] && return 0
    LAST_CLEAN=$CLEAN
    printf '%s\n' "$out" >"$WORK/logs/wrk-r$round-$id.txt"
    line=$(printf '%s\n' "$out" | grep '^RESULT ' | tail -1 || true)
    [ -n "$line" ] || { log "no RESULT line from wrk for $id (see logs/wrk-r$round-$id.txt)"; return 0; }
    record_row "$id" "$round" "$line"
}

# record_row id round "RESULT k=v ...": one results.tsv row and a progress line.
record_row() {
    local id=$1 round=$2 line=$3
    # RESULT k=v ... -> tab-separated values in a fixed column order (see analyze.py)
    printf '%s\t%s\t%s\t%s\t%s\tother=%s\tservers=%s\n' "$round" "$id" "$STEAL" "$BUSY0" \
        "$(printf '%s\n' "$line" | tr ' ' '\n' | grep '=' | paste -sd '\t')" "$OTHER" "$SERVERS" >>"$RESULTS_TSV"
    printf '  %-14s %s  steal=%s%% cpu%s=%s%% other=%s%%\n' "$id" "${line#RESULT }" "$STEAL" "$SERVER_CPU" "$BUSY0" "$OTHER" >&2
}

scenario_direct()        { wrk_run direct "$1" 8081 "$WORK/bench.lua" "$2"; }
scenario_nginx_plain()   { wrk_run nginx_plain "$1" 8082 "$WORK/bench.lua" "$2"; }
scenario_nginx_auth()    { wrk_run nginx_auth "$1" 8084 "$WORK/bench.lua" "$2"; }
scenario_haproxy_plain() { wrk_run haproxy_plain "$1" 8083 "$WORK/bench.lua" "$2"; }
scenario_haproxy_auth()  { wrk_run haproxy_auth "$1" 8085 "$WORK/bench.lua" "$2"; }
scenario_kg_a()          { wrk_run kg_a "$1" "${KG_PUBLIC##*:}" "$WORK/bench-public.lua" "$2"; }
scenario_kg_b()          { wrk_run kg_b "$1" "${KG_PUBLIC##*:}" "$WORK/bench.lua" "$2"; }
scenario_kg_e()          { wrk_run kg_e "$1" "${KG_PUBLIC##*:}" "$WORK/bench-invalid.lua" "$2"; }
scenario_kg_f()          { wrk_run kg_f "$1" "${KG_AIO_PUBLIC##*:}" "$WORK/bench.lua" "$2"; }
scenario_kg_g()          { wrk_run kg_g "$1" "${KG_PLAIN_WRITES_PUBLIC##*:}" "$WORK/bench.lua" "$2"; }

# (c) needs plans and rate limits (issue 5), (d) the Redis store (issue 3). When they exist:
# make *_available succeed, start what they need in start_all (a second keygate with plans
# on another port via KEYGATE_LISTEN__PUBLIC, or redis-server on CPU 0 with
# KEYGATE_STORE__KIND=redis), and point scenario_kg_c / scenario_kg_d at it.
# (c) exists when this keygate accepts [plans] and [limits] (rate limits, issue 5).
scenario_kg_c_available() {
    "$KG" check-config -c "$WORK/conf/keygate-plans.toml" >/dev/null 2>&1
}
scenario_kg_c() { wrk_run kg_c "$1" "${KG_PLANS_PUBLIC##*:}" "$WORK/bench.lua" "$2"; }

start_plans_scenario() {
    KG_CONF="$WORK/conf/keygate-plans.toml" start_keygate keygate-plans "$KG_PLANS_PUBLIC" "$KG_PLANS_ADMIN"
    KG_PLANS_PID=$KG_PID
    local good hdrs
    good=$(head -1 "$WORK/wrk_keys.txt")
    expect_status "keygate with plans, valid key" 200 "http://$KG_PLANS_PUBLIC/v1/resource" "$good"
    hdrs=$(curl -s -o /dev/null -D - --max-time 5 -H "x-api-key: $good" "http://$KG_PLANS_PUBLIC/v1/resource")
    if grep -qi '^x-ratelimit-limit:' <<<"$hdrs"; then
        log "check ok: keygate with plans answers with X-RateLimit-* headers ($(grep -i '^x-ratelimit-limit:' <<<"$hdrs" | tr -d '\r'))"
    else
        die "keygate with plans: no X-RateLimit-Limit header in the response"
    fi
}

# (d) exists when this keygate accepts [store] kind = "redis" (and redis-server is installed).
scenario_kg_d_available() {
    command -v redis-server >/dev/null && "$KG" check-config -c "$WORK/conf/keygate-redis.toml" >/dev/null 2>&1
}
scenario_kg_d() {
    local requests
    redis_calls >"$WORK/tmp/redis-before"
    wrk_run kg_d "$1" "${KG_REDIS_PUBLIC##*:}" "$WORK/bench-redis.lua" "$2"
    [ "$1" = 0 ] && return 0    # the warm-up fills the cache: not steady state
    redis_calls >"$WORK/tmp/redis-after"
    requests=$(grep -o 'requests=[0-9]*' "$WORK/logs/wrk-r$1-kg_d.txt" 2>/dev/null | tail -1 | cut -d= -f2)
    REDIS_REQS=$((REDIS_REQS + ${requests:-0}))
    # "command delta" lines, one per command that ran during the timed run
    awk 'NR == FNR { before[$1] = $2; next } $2 > before[$1] { print $1, $2 - before[$1] }' \
        "$WORK/tmp/redis-before" "$WORK/tmp/redis-after" >>"$WORK/tmp/redis-deltas"
}

# "command calls" lines from INFO commandstats, without the INFO and PING this script sends.
REDIS_REQS=0
redis_calls() {
    redis-cli -h "${REDIS%:*}" -p "${REDIS##*:}" info commandstats 2>/dev/null | tr -d '\r' \
        | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" && $1 != "cmdstat_ping" { print substr($1, 9), $3 }'
}

redis_summary() {
    [ "$REDIS_REQS" -gt 0 ] || return 0
    awk -v r="$REDIS_REQS" '
        { n[$1] += $2; total += $2 }
        END {
            printf "\n### Redis commands per proxied request, scenario (d), timed runs only\n\n"
            printf "%d commands for %d requests = **%.6f** (target <= 0.001)", total, r, total / r
            sep = "; by command: "
            for (c in n) { printf "%s%s %d", sep, c, n[c]; sep = ", " }
            printf "\n"
        }' "$WORK/tmp/redis-deltas" 2>/dev/null || printf '\n(d): no Redis command counts\n'
}

# Redis on CPU 0 like every server, no persistence, fresh each run.
start_redis() {
    check_ports "${REDIS##*:}"
    rm -f "$WORK/tmp/dump.rdb" "$WORK/run/redis.pid"
    taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "${REDIS##*:}" --save '' \
        --appendonly no --daemonize yes --pidfile "$WORK/run/redis.pid" --dir "$WORK/tmp" \
        --logfile "$WORK/logs/redis.log" >/dev/null || die "redis-server failed to start"
    wait_pidfile redis "$WORK/run/redis.pid"
    local i
    for ((i = 0; i < 50; i++)); do
        [ "$(redis-cli -h "${REDIS%:*}" -p "${REDIS##*:}" ping 2>/dev/null)" = PONG ] && break
        sleep 0.1
    done
}

# Scenario d: Redis, 10,000 keys of its own through the CLI, and a keygate on it.
start_redis_scenario() {
    start_redis
    log "creating $NKEYS keys in Redis (one CLI call)"
    create_keys "$WORK/conf/keygate-redis.toml" "$NKEYS" "$WORK/data/redis-keys.jsonl"
    head -n "$NLOAD" "$WORK/data/redis-keys.jsonl" | jq -r '.key' >"$WORK/wrk_keys_redis.txt"
    rm -f "$WORK/data/redis-keys.jsonl"
    sed 's|/wrk_keys.txt"|/wrk_keys_redis.txt"|' "$WORK/bench.lua" >"$WORK/bench-redis.lua"
    KG_CONF="$WORK/conf/keygate-redis.toml" start_keygate keygate-redis "$KG_REDIS_PUBLIC" "$KG_REDIS_ADMIN"
    KG_REDIS_PID=$KG_PID
    expect_status "keygate on Redis, valid key" 200 "http://$KG_REDIS_PUBLIC/v1/resource" "$(head -1 "$WORK/wrk_keys_redis.txt")"
    expect_status "keygate on Redis, unknown key" 401 "http://$KG_REDIS_PUBLIC/v1/resource" "$(head -1 "$WORK/wrk_keys_invalid.txt")"
}

SCENARIOS=()
SKIPPED=()
select_scenarios() {
    local id
    for id in direct nginx_plain nginx_auth haproxy_plain haproxy_auth kg_a kg_b kg_c kg_d kg_e kg_f kg_g; do
        [ -z "$ONLY" ] || [[ " $ONLY " == *" $id "* ]] || continue
        if declare -F "scenario_${id}_available" >/dev/null && ! "scenario_${id}_available"; then
            echo "scenario ${id#kg_}: not available in this build (${DESC[$id]})" >&2
            SKIPPED+=("${id#kg_}")
            continue
        fi
        SCENARIOS+=("$id")
    done
}

# Scenario f: the same keys and config as (b), writes batched through Linux AIO, as where a
# seccomp profile refuses io_uring (`batch_backend = "aio"` skips io_uring the same way).
start_aio_scenario() {
    start_keygate keygate-aio "$KG_AIO_PUBLIC" "$KG_AIO_ADMIN" KEYGATE_SERVER__BATCH_BACKEND=aio
    expect_status "keygate, writes batched through AIO, valid key" 200 "http://$KG_AIO_PUBLIC/v1/resource" "$(head -1 "$WORK/wrk_keys.txt")"
    local metrics
    metrics=$(curl -fsS --max-time 5 "http://$KG_AIO_ADMIN/metrics") || die "scenario f: no /metrics"
    if grep -q '^keygate_write_batching_backend{backend="aio"} 1' <<<"$metrics"; then
        log "check ok: scenario f batches through AIO (keygate_write_batching_backend{backend=\"aio\"} 1)"
    else
        die "scenario f: keygate_write_batching_backend{backend=\"aio\"} is not 1"
    fi
}

# Scenario g: the same keys and config as (b), every write its own system call.
start_plain_writes_scenario() {
    start_keygate keygate-plain-writes "$KG_PLAIN_WRITES_PUBLIC" "$KG_PLAIN_WRITES_ADMIN" \
        KEYGATE_SERVER__BATCH_WRITES=false
    expect_status "keygate, batched writes off, valid key" 200 "http://$KG_PLAIN_WRITES_PUBLIC/v1/resource" "$(head -1 "$WORK/wrk_keys.txt")"
    if curl -fsS --max-time 5 "http://$KG_PLAIN_WRITES_ADMIN/metrics" | grep -q '^keygate_write_batching_enabled 0'; then
        log "check ok: scenario g writes one by one (keygate_write_batching_enabled 0)"
    else
        die "scenario g: keygate_write_batching_enabled is not 0"
    fi
}

KG_REDIS_PID=""
KG_PLANS_PID=""
start_all() {
    start_upstream
    start_peers
    start_keygate keygate "$KG_PUBLIC" "$KG_ADMIN"
    KG_FILE_PID=$KG_PID
    if [[ " ${SCENARIOS[*]} " == *" kg_c "* ]]; then start_plans_scenario; fi
    if [[ " ${SCENARIOS[*]} " == *" kg_d "* ]]; then start_redis_scenario; fi
    if [[ " ${SCENARIOS[*]} " == *" kg_f "* ]]; then start_aio_scenario; fi
    if [[ " ${SCENARIOS[*]} " == *" kg_g "* ]]; then start_plain_writes_scenario; fi
    KG_PID=$KG_FILE_PID
}

# keygate's own counters (cache hits, store calls) after the runs, when it has /metrics.
save_metrics() { # name admin
    curl -fsS --max-time 5 "http://$2/metrics" >"$WORK/logs/$1.metrics" 2>/dev/null || return 0
    grep -v '^#' "$WORK/logs/$1.metrics" | grep -Ei 'cache|store|request' | head -30 | sed "s/^/  $1 metrics: /" >&2 || true
}

# One unrecorded warm-up run of every scenario in SCENARIOS, then ROUNDS rounds of all of
# them in turn (A B C A B C ...), a run that was not clean re-run in its round.
run_rounds() {
    local id r attempt
    log "warm-up: $WARMUP per scenario (not recorded)"
    for id in "${SCENARIOS[@]}"; do "scenario_$id" 0 "$WARMUP"; done
    for ((r = 1; r <= ROUNDS; r++)); do
        log "round $r/$ROUNDS"
        for id in "${SCENARIOS[@]}"; do
            for ((attempt = 0; attempt <= RETRIES; attempt++)); do
                LAST_CLEAN=0
                "scenario_$id" "$r" "$DURATION"
                [ "$LAST_CLEAN" = 1 ] && break
                [ "$attempt" -lt "$RETRIES" ] && log "  $id not clean (steal or other processes); again"
            done
        done
    done
    return 0    # the loop's status is its last test's, not a failure
}

mode_throughput() {
    ensure_tools
    build_keygate
    prepare_workdir
    generate_keys
    select_scenarios
    start_all
    functional_checks
    : >"$RESULTS_TSV"
    : >"$WORK/tmp/redis-deltas"
    run_rounds
    log "keygate after the runs: VmRSS $(rss_kib "$KG_PID" VmRSS) kB, VmHWM $(rss_kib "$KG_PID" VmHWM) kB; CPU per thread: $(thread_cpu "$KG_PID")"
    save_metrics keygate "$KG_ADMIN"
    if [ -n "$KG_PLANS_PID" ]; then
        log "keygate with plans after the runs: VmRSS $(rss_kib "$KG_PLANS_PID" VmRSS) kB; CPU per thread: $(thread_cpu "$KG_PLANS_PID")"
        save_metrics keygate-plans "$KG_PLANS_ADMIN"
    fi
    if [ -n "$KG_REDIS_PID" ]; then
        log "keygate on Redis after the runs: VmRSS $(rss_kib "$KG_REDIS_PID" VmRSS) kB; CPU per thread: $(thread_cpu "$KG_REDIS_PID")"
        save_metrics keygate-redis "$KG_REDIS_ADMIN"
    fi
    grep -v '^#' "$WORK/logs/keygate.err" | head -5 | sed 's/^/  keygate stderr: /' >&2 || true
    { python3 "$BENCH/analyze.py" throughput "$RESULTS_TSV" "$STEAL_MAX" "$WORK" "$OTHER_MAX"; redis_summary; } \
        | tee "$WORK/summary.txt"
    chart
}

# The gnuplot terminal for a png of width x height: cairo where this gnuplot has it.
png_terminal() { # width height font-size
    if gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1; then
        echo "pngcairo size $1,$2 font \",$3\""
    else
        echo "png size $1,$2"
    fi
}

# What every bar panel of both charts shares.
BAR_STYLE='set datafile separator "\t"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.8
set grid ytics
set xtics rotate by -25 left noenhanced
set key off'

chart() {
    local png="$BENCH/results.png" n
    n=$(cut -f1 "$RESULTS_TSV" 2>/dev/null | sort -u | wc -l)
    gnuplot >"$WORK/logs/gnuplot.log" 2>&1 <<EOF || { log "gnuplot failed; see $WORK/logs/gnuplot.log"; return 0; }
set terminal $(png_terminal 1000 700 10)
set output "$png"
$BAR_STYLE
set rmargin 14
set bmargin 6
set multiplot layout 2,1 title "keygate vs nginx / HAProxy ($(date -r "$RESULTS_TSV" +%F), $n rounds, medians of clean runs; servers on CPU 0, wrk on CPU 1)"
set title "throughput (req/s, wrk -t2 -c50)"
stats "$WORK/chart.dat" using 2 nooutput
set yrange [0:STATS_max * 1.15]
plot "$WORK/chart.dat" using 2:xtic(1) linecolor rgb "#4477aa", \
     "" using 0:2:(sprintf("%.0f", \$2)) with labels offset 0,0.7 notitle
set title "p99 latency at saturation (ms)"
stats "$WORK/chart.dat" using (\$3/1000.0) nooutput
set yrange [0:STATS_max * 1.15]
plot "$WORK/chart.dat" using (\$3/1000.0):xtic(1) linecolor rgb "#cc6677", \
     "" using 0:(\$3/1000.0):(sprintf("%.1f", \$3/1000.0)) with labels offset 0,0.7 notitle
unset multiplot
EOF
    log "chart: $png"
}

# bench/results-protocols.png: req/s of every HTTP/2 and TLS scenario, one panel per mode, from
# the last h2 and tls runs (work/chart-h2.dat, work/chart-tls.dat; a mode not run is left out).
chart_protocols() {
    local png="$BENCH/results-protocols.png" mode title n=0 panels=""
    for mode in h2 tls; do
        [ -s "$WORK/chart-$mode.dat" ] || continue
        n=$((n + 1))
        case $mode in
            h2) title="HTTP/2 clients (h2load -c $H2_CONNS, one key): req/s" ;;
            tls) title="HTTP/1.1 over TLS 1.3: req/s with keep-alive, and with a full handshake per request" ;;
        esac
        title+=", $(date -r "$WORK/chart-$mode.dat" +%F)"
        # stats skips points outside the last panel's yrange: reset it first.
        panels+="set title \"$title\"
set autoscale y
stats \"$WORK/chart-$mode.dat\" using 2 nooutput
set yrange [0:STATS_max * 1.2]
plot \"$WORK/chart-$mode.dat\" using 2:xtic(1) linecolor rgb \"#4477aa\", \"\" using 0:2:(sprintf(\"%.0f\", \$2)) with labels offset 0,0.7 notitle
"
    done
    [ "$n" -gt 0 ] || { log "no h2 or tls run to chart"; return 0; }
    gnuplot >"$WORK/logs/gnuplot-protocols.log" 2>&1 <<EOF || { log "gnuplot failed; see $WORK/logs/gnuplot-protocols.log"; return 0; }
set terminal $(png_terminal 1100 $((430 * n)) 9)
set output "$png"
$BAR_STYLE
set datafile missing "nan"
set rmargin 24
set bmargin 9
set multiplot layout $n,1 title "keygate vs nginx / HAProxy, key map + per-key limit (medians of clean runs; servers on CPU 0, load on CPU 1)"
$panels
unset multiplot
EOF
    log "chart: $png"
}

# --------------------------------------------------------------------------------------------
# HTTP/2 (h2load) and TLS (wrk over https, h2load one handshake per request)
# --------------------------------------------------------------------------------------------
# The peers serve these from the same nginx and HAProxy as the throughput mode (other ports,
# same rules; see bench/peers/). keygate serves h2c on its plain listener (it notices the
# HTTP/2 preface) and TLS on a second instance, so the TLS one can stay TLS-only.
KG_ONE_PUBLIC=127.0.0.1:8093     # keygate, plan with a one-key-proof limit, plain (h1 + h2c)
KG_ONE_ADMIN=127.0.0.1:9193
KG_TLS_PUBLIC=127.0.0.1:8493     # the same keygate config plus [tls]
KG_TLS_ADMIN=127.0.0.1:9493
H2_CONNS="${H2_CONNS:-50}"       # h2load -c
H2_LATENCY="${H2_LATENCY:-1}"    # 1: h2load --log-file, for p50/p99 (0: mean and max only)
# haproxyh: HAProxy's key+limit job and the five rate-limit headers keygate sends, which the
# HTTP/2 header encoding pays for (bench/peers/haproxy.cfg); HTTP/2 scenarios only.
declare -A PROTO_PORT=(
    [h2c_nginx]=8184 [h2c_haproxy]=8185 [h2c_haproxyh]=8186 [h2c_kg]="${KG_ONE_PUBLIC##*:}"
    [tls_nginx]=8484 [tls_haproxy]=8485 [tls_haproxyh]=8486 [tls_kg]="${KG_TLS_PUBLIC##*:}"
)

# keygate's side of the peers' job for one-key load: every key on a plan whose limits are
# evaluated on every request and sit far above what one core serves (h2load sends one key).
# Without plans in this build: the plain key check, said so in the log.
write_one_key_confs() {
    sed -e "s|^public = .*|public = \"$KG_ONE_PUBLIC\"|" -e "s|^admin = .*|admin = \"$KG_ONE_ADMIN\"|" \
        "$WORK/conf/keygate.toml" >"$WORK/conf/keygate-one.toml"
    cp "$WORK/conf/keygate-one.toml" "$WORK/tmp/keygate-one-noplans.toml"
    cat >>"$WORK/conf/keygate-one.toml" <<'EOF2'

[plans.one_key]
per_second = 1000000
burst = 1000000
per_hour = 1000000000

[limits]
default_plan = "one_key"
EOF2
    if ! "$KG" check-config -c "$WORK/conf/keygate-one.toml" >"$WORK/logs/check-one.txt" 2>&1; then
        log "this keygate does not take the one-key plan (see logs/check-one.txt): its scenarios run without rate limits"
        cp "$WORK/tmp/keygate-one-noplans.toml" "$WORK/conf/keygate-one.toml"
    fi
    sed -e "s|^public = .*|public = \"$KG_TLS_PUBLIC\"|" -e "s|^admin = .*|admin = \"$KG_TLS_ADMIN\"|" \
        "$WORK/conf/keygate-one.toml" >"$WORK/conf/keygate-tls.toml"
    cat >>"$WORK/conf/keygate-tls.toml" <<EOF2

[tls]
cert = "$WORK/conf/tls/cert.pem"
key = "$WORK/conf/tls/key.pem"
EOF2
    "$KG" check-config -c "$WORK/conf/keygate-tls.toml" >"$WORK/logs/check-tls.txt" 2>&1 \
        || die "keygate does not accept the TLS config; see $WORK/logs/check-tls.txt"
}

start_proto_servers() {
    start_upstream
    start_peers
    write_one_key_confs
    KG_CONF="$WORK/conf/keygate-one.toml" start_keygate keygate-one "$KG_ONE_PUBLIC" "$KG_ONE_ADMIN"
    KG_ONE_PID=$KG_PID
    KG_CONF="$WORK/conf/keygate-tls.toml" start_keygate keygate-tls "$KG_TLS_PUBLIC" "$KG_TLS_ADMIN"
    KG_TLS_PID=$KG_PID
}

# Every HTTP/2 and TLS listener answers a valid key 200 and an unknown one 401, over the
# protocol it is benchmarked with, before anything is timed.
proto_checks() {
    local good bad p name
    good=$(head -1 "$WORK/wrk_keys.txt")
    bad=$(head -1 "$WORK/wrk_keys_invalid.txt")
    for name in nginx haproxy haproxyh kg; do
        p=${PROTO_PORT[h2c_$name]}
        expect_h2 "$name h2c, valid key" 200 "http://127.0.0.1:$p/v1/resource" "$good" --http2-prior-knowledge
        expect_h2 "$name h2c, unknown key" 401 "http://127.0.0.1:$p/v1/resource" "$bad" --http2-prior-knowledge
        p=${PROTO_PORT[tls_$name]}
        expect_h2 "$name TLS h2, valid key" 200 "https://127.0.0.1:$p/v1/resource" "$good" --http2
        expect_h2 "$name TLS h2, unknown key" 401 "https://127.0.0.1:$p/v1/resource" "$bad" --http2
        expect_h2 "$name TLS http/1.1, valid key" 200 "https://127.0.0.1:$p/v1/resource" "$good" --http1.1
    done
    # keygate's side of the job: its plan is evaluated (X-RateLimit-* on the answer).
    local limit
    limit=$(curl -s -o /dev/null -D - --max-time 5 --cacert "$WORK/conf/tls/cert.pem" --http2 \
        -H "x-api-key: $good" "https://127.0.0.1:${PROTO_PORT[tls_kg]}/v1/resource" \
        | tr -d '\r' | grep -i '^x-ratelimit-limit:' || true)
    if [ -n "$limit" ]; then
        log "check ok: keygate (TLS h2) applies its plan: $limit"
    else
        log "keygate (TLS h2) answers without X-RateLimit-Limit: no rate limit in this run (see logs/check-one.txt)"
    fi
    local sent
    sent=$(curl -s -o /dev/null -D - --max-time 5 --http2-prior-knowledge -H "x-api-key: $good" \
        "http://127.0.0.1:${PROTO_PORT[h2c_haproxyh]}/v1/resource" | tr -d '\r' | grep -ci '^\(x-\)\?ratelimit' || true)
    [ "$sent" = 5 ] || die "HAProxy key+limit+headers (h2c) sent $sent rate-limit headers, not 5"
    log "check ok: HAProxy key+limit+headers sends the five rate-limit headers"
}

# expect_h2 what status url key curl-protocol-flag: checks the status and that the protocol
# spoken is the one asked for (curl would fall back to HTTP/1.1 silently).
expect_h2() {
    local got want_version
    got=$(curl -s -o /dev/null -w '%{http_code} %{http_version}' --max-time 5 --cacert "$WORK/conf/tls/cert.pem" \
        "$5" -H "x-api-key: $4" "$3")
    case $5 in --http1.1) want_version=1.1 ;; *) want_version=2 ;; esac
    if [ "$got" = "$2 $want_version" ]; then
        log "check ok: $1 -> $got"
    else
        die "check failed: $1 -> '$got', expected '$2 HTTP $want_version'"
    fi
}

# Whether a server resumes TLS sessions: a first connection saves its session (with TLS 1.3,
# after reading the response, so the tickets have arrived), a second offers it.
resumption_check() { # name port
    local v out s="$WORK/tmp/tls-session" req
    req=$'GET /v1/resource HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'
    for v in -tls1_3 -tls1_2; do
        rm -f "$s"
        printf '%s' "$req" | timeout 10 openssl s_client -connect "127.0.0.1:$2" "$v" -ign_eof \
            -sess_out "$s" >/dev/null 2>&1 || true
        if [ ! -s "$s" ]; then
            out="no session saved"
        else
            out=$(printf '%s' "$req" | timeout 10 openssl s_client -connect "127.0.0.1:$2" "$v" -ign_eof \
                -sess_in "$s" 2>/dev/null | grep -E '^(New|Reused),' | head -1 | cut -d, -f1)
        fi
        printf 'resumption\t%s\t%s\t%s\n' "$1" "${v#-}" "${out:-no answer}" >>"$WORK/tls-checks.tsv"
        log "TLS session resumption, $1 ${v#-}: ${out:-no answer} (Reused = resumed)"
    done
    rm -f "$s"
}

# h2load_run id round url duration h2load-args...: one results.tsv row from h2load's report
# (analyze.py h2load-result turns it into a RESULT line; h2load gives no percentiles).
# duration: an h2load -D value, or n:COUNT for a run of COUNT requests.
h2load_run() {
    local id=$1 round=$2 url=$3 dur=$4 out line
    shift 4
    [ "$round" = 0 ] || wait_quiet
    measure_start
    local amount=(-D "$dur")
    # h2load -D never returns once the server has closed connections under it (1.52: it
    # stops its clients, then waits): runs that end every connection count requests instead.
    case $dur in n:*) amount=(-n "${dur#n:}") ;; esac
    # Per-request times (h2load buffers them; H2_LATENCY=0 leaves them out): the percentiles
    # its report lacks.
    local reqlog="$WORK/tmp/h2load-requests.tsv" logopt=()
    rm -f "$reqlog"
    [ "$H2_LATENCY" = 0 ] || logopt=(--log-file="$reqlog")
    out=$(timeout 120 taskset -c "$LOAD_CPU" h2load -t1 "${amount[@]}" "${logopt[@]}" "$@" "$url" 2>&1) \
        || log "h2load exited non-zero for $id"
    measure_end
    [ "$round" = 0 ] && return 0
    LAST_CLEAN=$CLEAN
    printf '%s\n' "$out" >"$WORK/logs/h2load-r$round-$id.txt"
    line=$(python3 "$BENCH/analyze.py" h2load-result "$WORK/logs/h2load-r$round-$id.txt" "$reqlog" || true)
    rm -f "$reqlog"
    [ -n "$line" ] || { log "no result from h2load for $id (see logs/h2load-r$round-$id.txt)"; return 0; }
    record_row "$id" "$round" "$line"
}

# h2 scenarios: h2_<transport>_m<streams>_<proxy>, one key, H2_CONNS connections.
h2_scenario() { # transport streams proxy round duration
    local url scheme=http flags=()
    [ "$1" = tls ] && { scheme=https; flags=(--npn-list=h2); }
    url="$scheme://127.0.0.1:${PROTO_PORT[${1}_$3]}/v1/resource"
    h2load_run "h2_${1}_m${2}_$3" "$4" "$url" "$5" -c "$H2_CONNS" -m "$2" "${flags[@]}" \
        -H "x-api-key: $ONE_KEY"
}

define_h2_scenarios() {
    local t m p
    for t in h2c tls; do
        for m in 10 1; do
            for p in nginx haproxy haproxyh kg; do
                eval "scenario_h2_${t}_m${m}_$p() { h2_scenario $t $m $p \"\$1\" \"\$2\"; }"
                SCENARIOS+=("h2_${t}_m${m}_$p")
            done
        done
    done
}

# tls scenarios: wrk over https with keep-alive (the throughput mode's stream of 1,000 keys),
# and one full handshake per request: h2load --h1 with `Connection: close`, so every
# response ends its connection and h2load opens a new one. h2load never offers a saved
# session (it does not call SSL_set_session), so each of those handshakes is a full one;
# wrk's OpenSSL client keeps its session across reconnects and is not used for that.
define_tls_scenarios() {
    local p
    for p in nginx haproxy kg; do
        eval "scenario_tls_ka_$p() { wrk_run tls_ka_$p \"\$1\" https://127.0.0.1:${PROTO_PORT[tls_$p]}/v1/resource \"\$WORK/bench.lua\" \"\$2\"; }"
        SCENARIOS+=("tls_ka_$p")
    done
    for p in nginx haproxy kg; do
        eval "scenario_tls_hs_$p() { h2load_run tls_hs_$p \"\$1\" https://127.0.0.1:${PROTO_PORT[tls_$p]}/v1/resource \"\$(hs_count \"\$2\")\" --h1 -c \"\$H2_CONNS\" -m 1 -H 'Connection: close' -H \"x-api-key: \$ONE_KEY\"; }"
        SCENARIOS+=("tls_hs_$p")
    done
}

# A handshake run's request count for a duration: HS_RATE (3,000) handshakes a second, the
# order of what one core serves with P-256, so a run lasts about as long as the others.
HS_RATE="${HS_RATE:-3000}"
hs_count() { # duration like 5s or 2s
    local secs=${1%s}
    [[ $secs =~ ^[0-9]+$ ]] || secs=5
    printf 'n:%d' $((secs * HS_RATE))
}

mode_proto() { # h2 | tls
    ensure_tools
    build_keygate
    prepare_workdir
    generate_keys
    RESULTS_TSV="$WORK/results-$1.tsv"
    : >"$RESULTS_TSV"
    : >"$WORK/tls-checks.tsv"
    ONE_KEY=$(head -1 "$WORK/wrk_keys.txt")
    start_proto_servers
    proto_checks
    log "TLS certificate: $(openssl x509 -in "$WORK/conf/tls/cert.pem" -noout -text | grep -m1 'Public Key Algorithm' | sed 's/^ *//'), $TLS_KEY"
    local p
    for p in nginx haproxy kg; do resumption_check "$p" "${PROTO_PORT[tls_$p]}"; done
    SCENARIOS=()
    case $1 in
        h2) define_h2_scenarios ;;
        tls) define_tls_scenarios ;;
    esac
    run_rounds
    log "keygate (plain/h2c) after the runs: VmRSS $(rss_kib "$KG_ONE_PID" VmRSS) kB; CPU per thread: $(thread_cpu "$KG_ONE_PID")"
    log "keygate (TLS) after the runs: VmRSS $(rss_kib "$KG_TLS_PID" VmRSS) kB; CPU per thread: $(thread_cpu "$KG_TLS_PID")"
    save_metrics keygate-one "$KG_ONE_ADMIN"
    save_metrics keygate-tls "$KG_TLS_ADMIN"
    grep -h -v '^#' "$WORK/logs/keygate-one.err" "$WORK/logs/keygate-tls.err" | head -5 | sed 's/^/  keygate stderr: /' >&2 || true
    CHART_DAT="$WORK/chart-$1.dat" python3 "$BENCH/analyze.py" throughput "$RESULTS_TSV" "$STEAL_MAX" "$WORK" "$OTHER_MAX" \
        | tee "$WORK/summary-$1.txt"
    awk -F'\t' '$1 == "resumption" { printf "- TLS session resumption, %s %s: %s\n", $2, $3, $4 }' "$WORK/tls-checks.tsv" \
        | tee -a "$WORK/summary-$1.txt"
    chart_protocols
}

# --------------------------------------------------------------------------------------------
# Fixed-rate latency (oha)
# --------------------------------------------------------------------------------------------
# oha_run tsv round id tag key url oha-args...: one fixed-rate run (re-run up to RETRIES times
# while not clean), one row in tsv, raw JSON in logs/oha-<tag->r<round>-<id>-<attempt>.json.
# -w: requests in flight at the deadline are waited for, not counted as errors.
oha_run() {
    local tsv=$1 r=$2 id=$3 tag=${4:+$4-} key=$5 url=$6 attempt out
    shift 6
    for ((attempt = 0; attempt <= RETRIES; attempt++)); do
        wait_quiet
        out="$WORK/logs/oha-${tag}r$r-$id-$attempt.json"
        measure_start
        timeout 120 taskset -c "$LOAD_CPU" "$OHA" --no-tui -z "$LAT_DURATION" -q "$LAT_RATE" -w \
            --latency-correction --output-format json "$@" -H "x-api-key: $key" \
            "$url" >"$out" 2>"${out%.json}.err" \
            || log "oha exited non-zero for $id (see $out)"
        measure_end
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$id" "$STEAL" "$BUSY0" "$OTHER" "$SERVERS" "$out" >>"$tsv"
        python3 "$BENCH/analyze.py" oha-line "$out" "$id" "$STEAL" "$BUSY0" "$OTHER" "$SERVERS" >&2
        [ "$CLEAN" = 1 ] && break
        if [ "$attempt" -lt "$RETRIES" ]; then log "  $id not clean (steal or other processes); again"; fi
    done
}

# Fixed-rate latency of HTTP/2 and TLS clients: the h2 and tls modes' servers, each proxy at
# LAT_RATE with oha (the same client, rate and coordinated-omission correction as `latency`):
# h2c with 10 streams per connection, HTTP/1.1 over TLS with keep-alive, h2 over TLS with 10
# streams per connection; the direct upstream (HTTP/1.1) once a round, whose CPU the proxies'
# CPU per request is net of (every proxy's upstream traffic is that same HTTP/1.1).
mode_latency_proto() {
    ensure_tools
    build_keygate
    prepare_workdir
    ensure_oha
    generate_keys
    ONE_KEY=$(head -1 "$WORK/wrk_keys.txt")
    start_proto_servers
    proto_checks
    local tsv="$WORK/latency-proto.tsv" r id p g url
    local -a ids=(direct) args
    for g in h2_h2c_m10 tls_ka h2_tls_m10; do
        for p in nginx haproxy kg; do ids+=("${g}_$p"); done
    done
    : >"$tsv"
    for ((r = 1; r <= LAT_ROUNDS; r++)); do
        log "latency-proto round $r/$LAT_ROUNDS: oha -z $LAT_DURATION -q $LAT_RATE --latency-correction"
        for id in "${ids[@]}"; do
            p=${id##*_}
            case $id in
                direct) url="http://127.0.0.1:8081/v1/resource"; args=(-c 50) ;;
                h2_h2c_m10_*) url="http://127.0.0.1:${PROTO_PORT[h2c_$p]}/v1/resource"; args=(--http2 -c 50 -p 10) ;;
                tls_ka_*) url="https://127.0.0.1:${PROTO_PORT[tls_$p]}/v1/resource"; args=(--insecure -c 50) ;;
                h2_tls_m10_*) url="https://127.0.0.1:${PROTO_PORT[tls_$p]}/v1/resource"; args=(--http2 --insecure -c 50 -p 10) ;;
            esac
            oha_run "$tsv" "$r" "$id" proto "$ONE_KEY" "$url" "${args[@]}"
        done
    done
    python3 "$BENCH/analyze.py" latency "$tsv" "$STEAL_MAX" "$WORK" "$OTHER_MAX" | tee "$WORK/latency-proto-summary.txt"
}

mode_latency() {
    ensure_tools
    build_keygate
    prepare_workdir
    ensure_oha
    generate_keys
    # nginx/HAProxy key+limit, keygate b (and c when this build has rate limits), direct
    local lat_ids=(nginx_auth haproxy_auth kg_b)
    scenario_kg_c_available && { SCENARIOS=(kg_c); lat_ids+=(kg_c); }
    lat_ids+=(direct)
    start_all
    functional_checks
    local key tsv="$WORK/latency.tsv" r id
    key=$(head -1 "$WORK/wrk_keys.txt")
    : >"$tsv"
    declare -A LPORT=([nginx_auth]=8084 [haproxy_auth]=8085 [kg_b]="${KG_PUBLIC##*:}"
        [kg_c]="${KG_PLANS_PUBLIC##*:}" [direct]=8081)
    for ((r = 1; r <= LAT_ROUNDS; r++)); do
        log "latency round $r/$LAT_ROUNDS: oha -z $LAT_DURATION -c 50 -q $LAT_RATE --latency-correction"
        for id in "${lat_ids[@]}"; do
            oha_run "$tsv" "$r" "$id" "" "$key" "http://127.0.0.1:${LPORT[$id]}/v1/resource" -c 50
        done
    done
    python3 "$BENCH/analyze.py" latency "$tsv" "$STEAL_MAX" "$WORK" "$OTHER_MAX" | tee "$WORK/latency-summary.txt"
}

# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------
mode_memory() {
    ensure_tools
    build_keygate
    prepare_workdir
    generate_keys
    start_upstream
    local out="$WORK/memory.txt"
    : >"$out"
    note() { printf '%s\n' "$*" | tee -a "$out" >&2; }

    start_keygate keygate "$KG_PUBLIC" "$KG_ADMIN"
    sleep 2
    note "store_keys=$NKEYS file_bytes=$(stat -c %s "$WORK/data/keys.json") ready_ms=$KG_READY_MS idle_VmRSS_kB=$(rss_kib "$KG_PID" VmRSS) VmHWM_kB=$(rss_kib "$KG_PID" VmHWM)"
    wrk_run kg_b mem 8090 "$WORK/bench.lua" 5s 2>/dev/null
    note "store_keys=$NKEYS after_5s_load_VmRSS_kB=$(rss_kib "$KG_PID" VmRSS) VmHWM_kB=$(rss_kib "$KG_PID" VmHWM) $(result_fields kg_b) other=$OTHER"
    stop_started keygate "$KG_PID" TERM

    # How long `keys create --count N` takes as N grows (fresh store each time).
    local n t0 rc scale_conf="$WORK/conf/keygate-scale.toml"
    write_keygate_conf "$scale_conf" 127.0.0.1:18091 127.0.0.1:19191 "$WORK/data/scale-keys.json"
    for n in $MEM_SCALING; do
        rm -f "$WORK"/data/scale-keys.json*
        t0=$(date +%s%N)
        rc=0
        timeout "$MEM_CREATE_TIMEOUT" "$KG" keys create -c "$scale_conf" --name bench --scopes '*' \
            --count "$n" >/dev/null 2>"$WORK/logs/create-scale.err" || rc=$?
        note "create_scaling count=$n exit=$rc seconds=$(awk -v d="$(($(date +%s%N) - t0))" 'BEGIN { printf "%.1f", d / 1e9 }') file_bytes=$(stat -c %s "$WORK/data/scale-keys.json" 2>/dev/null || echo 0)"
        [ "$rc" = 0 ] || break
    done
    rm -f "$WORK"/data/scale-keys.json*

    local big="$WORK/data/keys-big.json" avail need_kb synthetic=0
    rm -f "$big" "$big".*
    avail=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
    need_kb=$((MEM_KEYS * 2))            # ~0.4 kB per key in the file + the printed keys, x2 margin
    if [ "$avail" -lt "$need_kb" ]; then
        note "store_keys=$MEM_KEYS skipped: $avail kB free on $WORK, want $need_kb kB"
        return 0
    fi
    log "creating $MEM_KEYS keys (one CLI call, at most ${MEM_CREATE_TIMEOUT}s)"
    rc=0
    KEYGATE_STORE__PATH="$big" timeout "$MEM_CREATE_TIMEOUT" /usr/bin/time -f '%e s elapsed, %M kB max RSS' \
        -o "$WORK/logs/create-big.time" \
        "$KG" keys create -c "$WORK/conf/keygate.toml" --name bench --scopes '*' --env live \
        --count "$MEM_KEYS" >"$WORK/data/keys-big.jsonl" 2>"$WORK/logs/create-big.err" || rc=$?
    if [ "$rc" = 0 ]; then
        note "store_keys=$MEM_KEYS create: $(grep elapsed "$WORK/logs/create-big.time") file_bytes=$(stat -c %s "$big") printed_bytes=$(stat -c %s "$WORK/data/keys-big.jsonl")"
        head -n "$NLOAD" "$WORK/data/keys-big.jsonl" | jq -r '.key' >"$WORK/wrk_keys_big.txt"
    else
        note "store_keys=$MEM_KEYS create via the CLI failed: exit $rc (124 = not done after ${MEM_CREATE_TIMEOUT}s) $(tail -2 "$WORK/logs/create-big.err" | tr '\n' ' ')"
        rm -f "$big" "$big".*
        [ "$MEM_SYNTH" = 1 ] || { rm -f "$WORK/data/keys-big.jsonl"; return 0; }
        # Fallback, labelled as such: the 10,000 CLI-made records plus copies of one of them
        # with random hashes and ids, so the proxy holds MEM_KEYS records of the real shape
        # (no secret exists for the copies; the load uses the real keys).
        python3 - "$WORK/data/keys.json" "$big" "$MEM_KEYS" <<'PY'
import copy, json, secrets, string, sys
src, dst, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
doc = json.load(open(src))
real = doc["keys"]
alphabet = string.ascii_letters + string.digits
template = real[0]
for _ in range(total - len(real)):
    e = copy.deepcopy(template)
    e["hash"] = secrets.token_hex(32)
    e["record"]["id"] = "key_" + "".join(secrets.choice(alphabet) for _ in range(20))
    real.append(e)
with open(dst, "w") as f:
    json.dump(doc, f, indent=2)
PY
        chmod 600 "$big"
        synthetic=1
        cp "$WORK/wrk_keys.txt" "$WORK/wrk_keys_big.txt"
        note "store_keys=$MEM_KEYS SYNTHETIC store: 10000 CLI-made records + $((MEM_KEYS - NKEYS)) copies with random hashes and ids; file_bytes=$(stat -c %s "$big")"
    fi
    rm -f "$WORK/data/keys-big.jsonl"
    sed 's|/wrk_keys.txt"|/wrk_keys_big.txt"|' "$WORK/bench.lua" >"$WORK/bench-big.lua"

    start_keygate keygate-big "$KG_PUBLIC" "$KG_ADMIN" KEYGATE_STORE__PATH="$big"
    sleep 2
    note "store_keys=$MEM_KEYS synthetic=$synthetic ready_ms=$KG_READY_MS idle_VmRSS_kB=$(rss_kib "$KG_PID" VmRSS) VmHWM_kB=$(rss_kib "$KG_PID" VmHWM)"
    expect_status "keygate (big store) valid key" 200 "http://$KG_PUBLIC/v1/resource" "$(head -1 "$WORK/wrk_keys_big.txt")"
    wrk_run kg_b_big mem 8090 "$WORK/bench-big.lua" 5s 2>/dev/null
    note "store_keys=$MEM_KEYS synthetic=$synthetic after_5s_load_VmRSS_kB=$(rss_kib "$KG_PID" VmRSS) VmHWM_kB=$(rss_kib "$KG_PID" VmHWM) $(result_fields kg_b_big) other=$OTHER"
    stop_started keygate-big "$KG_PID" TERM
    rm -f "$big" "$big".*
    mem_cached
}

# RSS with MEM_KEYS keys held in the cache: a Redis store with MEM_KEYS keys, each sent once
# (a miss, one store read, then cached), the rest of the run repeating keys already cached.
mem_cached() {
    command -v redis-server >/dev/null || { note "cached_keys: skipped, no redis-server"; return 0; }
    start_redis
    log "creating $MEM_KEYS keys in Redis (one CLI call)"
    create_keys "$WORK/conf/keygate-redis.toml" "$MEM_KEYS" "$WORK/data/redis-big.jsonl"
    jq -r '.key' "$WORK/data/redis-big.jsonl" >"$WORK/wrk_keys_all.txt"
    rm -f "$WORK/data/redis-big.jsonl"
    cat >"$WORK/each-once.lua" <<LUA
-- Each wrk thread sends its half of the keys once, in order, then repeats its last one.
local keys = {}
for line in io.lines("$WORK/wrk_keys_all.txt") do keys[#keys + 1] = line end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  local per = math.floor(#keys / 2)
  first = (id - 1) * per + 1
  last = id == 2 and #keys or first + per - 1
  i = first
end
function request()
  local k = keys[i]
  if i < last then i = i + 1 end
  return wrk.format("GET", "/v1/resource", { ["x-api-key"] = k })
end
LUA
    KG_CONF="$WORK/conf/keygate-redis.toml" start_keygate keygate-cached "$KG_REDIS_PUBLIC" "$KG_REDIS_ADMIN" \
        KEYGATE_CACHE__CAPACITY=$((MEM_KEYS + MEM_KEYS / 10))
    sleep 1
    local idle misses after
    idle=$(rss_kib "$KG_PID" VmRSS)
    log "sending each of $MEM_KEYS keys once (${MEM_CACHED_SECS}s)"
    timeout $((MEM_CACHED_SECS + 60)) taskset -c "$LOAD_CPU" wrk -t2 -c20 -d"${MEM_CACHED_SECS}s" \
        -s "$WORK/each-once.lua" "http://$KG_REDIS_PUBLIC" >"$WORK/logs/wrk-cached.out" 2>&1 || true
    misses=$(curl -fsS --max-time 5 "http://$KG_REDIS_ADMIN/metrics" \
        | awk '/^keygate_key_cache_lookups_total[{]result="miss"[}]/ { print $2 }')
    after=$(rss_kib "$KG_PID" VmRSS)
    note "cached_keys=${misses:-?} (store reads; goal $MEM_KEYS) idle_VmRSS_kB=$idle VmRSS_kB=$after VmHWM_kB=$(rss_kib "$KG_PID" VmHWM) bytes_per_key=$(awk -v a="$after" -v b="$idle" -v n="${misses:-1}" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }') $(grep -E 'requests in|Non-2xx' "$WORK/logs/wrk-cached.out" | tr -s ' ' | tr '\n' ' ')"
    stop_started keygate-cached "$KG_PID" TERM
    stop_started redis "$(cat "$WORK/run/redis.pid")" TERM
    rm -f "$WORK/wrk_keys_all.txt"
}

# --------------------------------------------------------------------------------------------
# Scaling (issue 23): keygate (b) with one worker on one core, as every other mode runs it,
# against two workers on both cores, rounds interleaved. Layout 1: keygate and its upstream on
# CPU 0, wrk on CPU 1. Layout 2: keygate (two workers), an upstream with two workers and wrk
# all on CPUs 0-1, sharing them as the scheduler likes. req/s alone would mostly say how the
# two cores were split, so every run also records the CPU each of the three used per request
# (from /proc, the processes' own counters): keygate's µs per request at one and at two
# workers is its per-core efficiency, and the generator's share says how much of layout 2's
# machine went to making the load rather than serving it. Layout 3 (`two_procs`): what one
# process per core (sharding, e.g. behind SO_REUSEPORT) would give: two one-worker keygates,
# one pinned to each CPU, the two-worker upstream, and two wrk (one thread, 25 connections
# each) side by side on CPUs 0-1, one per keygate. Its keygate µs per request against layout
# 1's says how much of layout 2's loss is the shared runtime and how much the machine (two
# cores that share caches and memory bandwidth, under a hypervisor). Layout 4 (`two_pinned`):
# layout 2 with each of the two workers' threads pinned to its own CPU (the two busiest
# threads after the warm-up, by `taskset -p`), since layout 3 pins its processes and layout 2
# lets its threads float: the difference between 2 and 4 is the OS moving threads, between 4
# and 3 what sharing one process costs. Layouts 5 and 6 (`two_sharded`, `two_sharded_pinned`):
# one keygate with `[server] sharded = true` and two workers (each its own event loop and
# SO_REUSEPORT listener), its threads floating and then pinned one per CPU like layout 4,
# loaded as layout 3 is (two wrk of one thread and 25 connections each, here both to its one
# port), so that against layout 3 only the process boundary differs: the built-in form of it.
# --------------------------------------------------------------------------------------------
KG_TWO_PUBLIC=127.0.0.1:8096
KG_TWO_ADMIN=127.0.0.1:9196
UPSTREAM_TWO_PORT=8087
KG_PROC_A_PUBLIC=127.0.0.1:8097
KG_PROC_A_ADMIN=127.0.0.1:9197
KG_PROC_B_PUBLIC=127.0.0.1:8098
KG_PROC_B_ADMIN=127.0.0.1:9198
KG_PINNED_PUBLIC=127.0.0.1:8099
KG_PINNED_ADMIN=127.0.0.1:9199
KG_SHARDED_PUBLIC=127.0.0.1:8100
KG_SHARDED_ADMIN=127.0.0.1:9200
KG_SHARDED_PINNED_PUBLIC=127.0.0.1:8101
KG_SHARDED_PINNED_ADMIN=127.0.0.1:9201

# Pins the two busiest threads of a process (a two-worker keygate's workers, after some load)
# to CPU 0 and CPU 1, one each.
pin_busiest_two() { # pid
    local tid cpu=0
    for tid in $(for t in /proc/"$1"/task/*; do
        awk '{ print $14 + $15, $1 }' "$t/stat"
    done | sort -rn | head -2 | awk '{ print $2 }'); do
        taskset -p -c "$cpu" "$tid" >/dev/null
        cpu=$((cpu + 1))
    done
}

# CPU jiffies (user+system) of the given PIDs and of their child processes (nginx workers).
pids_jiffies() {
    local list=" $* "
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v list="$list" '{
        pid = $1; sub(/.*\) /, "")
        if (index(list, " " pid " ") || index(list, " " $2 " ")) s += $12 + $13
    } END { print s + 0 }'
}

# scale_run id round ports wrk_cpus "kg_pids" upstream_pid: one timed run and a row of CPU µs
# per request for keygate, its upstream and wrk. One port: one wrk (two threads, 50
# connections); two ports ("8097 8098"): one wrk per port (one thread, 25 connections each),
# side by side, their requests added up and the worse p99 kept.
scale_run() {
    local id=$1 round=$2 ports=$3 cpus=$4 kg=$5 up=$6 line k0 k1 u0 u1 c0 c1 t0 t1 hz port i=0
    local -a wrk_args=(-t2 -c50) outs=() pids=()
    [ "${ports// /}" = "$ports" ] || wrk_args=(-t1 -c25)
    wait_quiet
    hz=$(getconf CLK_TCK)
    # shellcheck disable=SC2086 # kg: one PID or several
    k0=$(pids_jiffies $kg); u0=$(pids_jiffies "$up"); children_jiffies c0; t0=$(date +%s%N)
    for port in $ports; do
        outs+=("$WORK/logs/wrk-scaling-r$round-$id-$i.txt")
        timeout 120 taskset -c "$cpus" wrk "${wrk_args[@]}" -d"$DURATION" --timeout 2s -s "$WORK/bench.lua" \
            "http://127.0.0.1:$port/v1/resource" >"${outs[-1]}" 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    # Only the wrk runs: the servers are this shell's children too.
    for i in "${pids[@]}"; do wait "$i" || log "wrk exited non-zero for $id"; done
    # shellcheck disable=SC2086
    t1=$(date +%s%N); k1=$(pids_jiffies $kg); u1=$(pids_jiffies "$up"); children_jiffies c1
    line=$(grep -h '^RESULT ' "${outs[@]}" | awk '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += (kv[1] == "p99_us" ? 0 : kv[2])
            if (kv[1] == "p99_us" && kv[2] > p99) p99 = kv[2] }
        n++ } END { if (n) printf "RESULT rps=%s requests=%s p99_us=%s non2xx3xx=%s\n",
            v["rps"], v["requests"], p99 + 0, v["non2xx3xx"] + 0 }')
    [ -n "$line" ] || { log "no RESULT line from wrk for $id"; return 0; }
    awk -v id="$id" -v r="$round" -v line="$line" -v hz="$hz" -v k="$((k1 - k0))" -v u="$((u1 - u0))" \
        -v w="$((c1 - c0))" -v ns="$((t1 - t0))" 'BEGIN {
        n = split(line, f, " ")
        for (i = 2; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
        q = v["requests"]; if (q < 1) q = 1
        us = 1e6 / hz / q; secs = ns / 1e9
        printf "%s\t%s\trps=%.0f\tp99_us=%d\tnon2xx3xx=%d\tkeygate_us=%.2f\tupstream_us=%.2f\twrk_us=%.2f\tkeygate_cores=%.2f\tupstream_cores=%.2f\twrk_cores=%.2f\n",
            r, id, v["rps"], v["p99_us"], v["non2xx3xx"], k * us, u * us, w * us,
            k / hz / secs, u / hz / secs, w / hz / secs
    }' | tee -a "$WORK/scaling.tsv" | sed 's/^/  /' >&2
}

mode_scaling() {
    ensure_tools
    build_keygate
    prepare_workdir
    generate_keys
    SCENARIOS=(kg_b)
    start_upstream
    local up1 up2 kg1 kg2 r
    up1=$(cat "$WORK/run/upstream.pid")
    check_ports "$UPSTREAM_TWO_PORT"
    sed -e 's/^worker_processes 1;/worker_processes 2;/' -e "s|/run/upstream.pid|/run/upstream-two.pid|" \
        -e "s|127.0.0.1:8081|127.0.0.1:$UPSTREAM_TWO_PORT|" "$WORK/conf/upstream-nginx.conf" \
        >"$WORK/conf/upstream-nginx-two.conf"
    SERVER_CPU=0,1 start_nginx nginx-upstream-two "$WORK/conf/upstream-nginx-two.conf" "$WORK/run/upstream-two.pid"
    up2=$(cat "$WORK/run/upstream-two.pid")
    start_keygate keygate "$KG_PUBLIC" "$KG_ADMIN"
    kg1=$KG_PID
    KG_CPUS=0,1 start_keygate keygate-two "$KG_TWO_PUBLIC" "$KG_TWO_ADMIN" \
        KEYGATE_SERVER__WORKERS=2 KEYGATE_UPSTREAM__URL="http://127.0.0.1:$UPSTREAM_TWO_PORT"
    kg2=$KG_PID
    expect_status "keygate, one worker, valid key" 200 "http://$KG_PUBLIC/v1/resource" "$(head -1 "$WORK/wrk_keys.txt")"
    expect_status "keygate, two workers, valid key" 200 "http://$KG_TWO_PUBLIC/v1/resource" "$(head -1 "$WORK/wrk_keys.txt")"
    log "keygate-two threads: $(thread_summary "$kg2")"
    local kga kgb procs
    KG_CPUS=0 start_keygate keygate-proc-a "$KG_PROC_A_PUBLIC" "$KG_PROC_A_ADMIN" \
        KEYGATE_UPSTREAM__URL="http://127.0.0.1:$UPSTREAM_TWO_PORT"
    kga=$KG_PID
    KG_CPUS=1 start_keygate keygate-proc-b "$KG_PROC_B_PUBLIC" "$KG_PROC_B_ADMIN" \
        KEYGATE_UPSTREAM__URL="http://127.0.0.1:$UPSTREAM_TWO_PORT"
    kgb=$KG_PID
    procs="${KG_PROC_A_PUBLIC##*:} ${KG_PROC_B_PUBLIC##*:}"
    local kgp
    KG_CPUS=0,1 start_keygate keygate-two-pinned "$KG_PINNED_PUBLIC" "$KG_PINNED_ADMIN" \
        KEYGATE_SERVER__WORKERS=2 KEYGATE_UPSTREAM__URL="http://127.0.0.1:$UPSTREAM_TWO_PORT"
    kgp=$KG_PID
    local kgs kgsp
    KG_CPUS=0,1 start_keygate keygate-sharded "$KG_SHARDED_PUBLIC" "$KG_SHARDED_ADMIN" \
        KEYGATE_SERVER__WORKERS=2 KEYGATE_SERVER__SHARDED=true \
        KEYGATE_UPSTREAM__URL="http://127.0.0.1:$UPSTREAM_TWO_PORT"
    kgs=$KG_PID
    KG_CPUS=0,1 start_keygate keygate-sharded-pinned "$KG_SHARDED_PINNED_PUBLIC" "$KG_SHARDED_PINNED_ADMIN" \
        KEYGATE_SERVER__WORKERS=2 KEYGATE_SERVER__SHARDED=true \
        KEYGATE_UPSTREAM__URL="http://127.0.0.1:$UPSTREAM_TWO_PORT"
    kgsp=$KG_PID
    local sharded="${KG_SHARDED_PUBLIC##*:} ${KG_SHARDED_PUBLIC##*:}"
    local sharded_pinned="${KG_SHARDED_PINNED_PUBLIC##*:} ${KG_SHARDED_PINNED_PUBLIC##*:}"
    expect_status "keygate, two shards, valid key" 200 "http://$KG_SHARDED_PUBLIC/v1/resource" "$(head -1 "$WORK/wrk_keys.txt")"
    : >"$WORK/scaling.tsv"
    log "warm-up: $WARMUP per layout (not recorded)"
    DURATION=$WARMUP scale_run one_core 0 "${KG_PUBLIC##*:}" "$LOAD_CPU" "$kg1" "$up1" 2>/dev/null
    DURATION=$WARMUP scale_run two_cores 0 "${KG_TWO_PUBLIC##*:}" 0,1 "$kg2" "$up2" 2>/dev/null
    DURATION=$WARMUP scale_run two_procs 0 "$procs" 0,1 "$kga $kgb" "$up2" 2>/dev/null
    DURATION=$WARMUP scale_run two_pinned 0 "${KG_PINNED_PUBLIC##*:}" 0,1 "$kgp" "$up2" 2>/dev/null
    DURATION=$WARMUP scale_run two_sharded 0 "$sharded" 0,1 "$kgs" "$up2" 2>/dev/null
    DURATION=$WARMUP scale_run two_sharded_pinned 0 "$sharded_pinned" 0,1 "$kgsp" "$up2" 2>/dev/null
    pin_busiest_two "$kgp"
    pin_busiest_two "$kgsp"
    local pinned
    for pinned in "$kgp" "$kgsp"; do
        log "pid $pinned threads, CPU list: $(for t in /proc/"$pinned"/task/*; do
            printf '%s:%s ' "$(cat "$t/comm")" "$(taskset -p -c "${t##*/}" | awk '{ print $NF }')"; done)"
    done
    : >"$WORK/scaling.tsv"
    for ((r = 1; r <= ROUNDS; r++)); do
        log "round $r/$ROUNDS"
        scale_run one_core "$r" "${KG_PUBLIC##*:}" "$LOAD_CPU" "$kg1" "$up1"
        scale_run two_cores "$r" "${KG_TWO_PUBLIC##*:}" 0,1 "$kg2" "$up2"
        scale_run two_procs "$r" "$procs" 0,1 "$kga $kgb" "$up2"
        scale_run two_pinned "$r" "${KG_PINNED_PUBLIC##*:}" 0,1 "$kgp" "$up2"
        scale_run two_sharded "$r" "$sharded" 0,1 "$kgs" "$up2"
        scale_run two_sharded_pinned "$r" "$sharded_pinned" 0,1 "$kgsp" "$up2"
    done
    log "keygate-sharded connections per shard: $(curl -fsS "http://$KG_SHARDED_ADMIN/metrics" |
        awk '/^keygate_connections_accepted_total/ { printf "%s ", $0 }')"
    log "keygate-two CPU per thread: $(thread_cpu "$kg2")"
    python3 "$BENCH/analyze.py" scaling "$WORK/scaling.tsv" | tee "$WORK/summary-scaling.txt"
}

# Everything the throughput run starts, left running until this script is stopped: to point
# strace, valgrind or wrk at one scenario by hand (bench/README.md, "Other tools").
mode_serve() {
    ensure_tools
    build_keygate
    prepare_workdir
    generate_keys
    select_scenarios
    start_all
    functional_checks
    # The h2 and tls modes' keygates too (the peers' HTTP/2 and TLS listeners are already up).
    write_one_key_confs
    KG_CONF="$WORK/conf/keygate-one.toml" start_keygate keygate-one "$KG_ONE_PUBLIC" "$KG_ONE_ADMIN"
    KG_CONF="$WORK/conf/keygate-tls.toml" start_keygate keygate-tls "$KG_TLS_PUBLIC" "$KG_TLS_ADMIN"
    log "h2c: keygate $KG_ONE_PUBLIC, nginx :8184, HAProxy :8185; TLS (h2, http/1.1): keygate $KG_TLS_PUBLIC, nginx :8484, HAProxy :8485"
    log "serving; stop with Ctrl-C or kill $$. Load: wrk -s $WORK/bench.lua http://$KG_PLANS_PUBLIC/v1/resource"
    local e
    for e in "${STARTED[@]}"; do log "  ${e% *}: pid ${e##* }"; done
    # `wait` returns on a signal where a foreground sleep would not; cleanup stops the sleeper.
    sleep infinity &
    remember sleeper $!
    wait $!
}

case $MODE in
    throughput | "") mode_throughput ;;
    serve) mode_serve ;;
    latency) mode_latency ;;
    latency-proto) mode_latency_proto ;;
    memory) RESULTS_TSV="$WORK/results.tsv.mem"; mkdir -p "$WORK"; : >"$RESULTS_TSV"; mode_memory ;;
    h2 | tls) mode_proto "$MODE" ;;
    scaling) mode_scaling ;;
    chart) chart; chart_protocols ;;   # redraw the charts from work/chart*.dat
    -h | --help | help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown mode '$MODE' (throughput | h2 | tls | scaling | latency | latency-proto | memory | serve | chart)" ;;
esac
