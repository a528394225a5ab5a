#!/usr/bin/env bash
# Revocation delay across three sidecars sharing one Redis: creates N keys, makes every
# sidecar cache them, revokes them one by one through the CLI, and reads each sidecar's
# keygate_key_change_propagation_seconds histogram (commit in Redis -> key dropped from that
# sidecar's cache). Also counts Redis commands per proxied request at steady state.
# Usage: bench/revocation.sh [N]   (default 200). Loopback only; stops what it started.
set -euo pipefail
N=${1:-200}
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
WORK=$ROOT/bench/work/revocation
BIN=$ROOT/target/release/keygate
rm -rf "$WORK" && mkdir -p "$WORK"
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
(cd "$ROOT" && cargo build --release --quiet)

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

RPORT=$(port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null &
PIDS+=($!)
UPORT=$(port)
cat >"$WORK/upstream.conf" <<EOC
worker_processes 1; pid $WORK/upstream.pid; error_log $WORK/upstream.err warn; daemon off;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/t1; proxy_temp_path $WORK/t2;
  fastcgi_temp_path $WORK/t3; uwsgi_temp_path $WORK/t4; scgi_temp_path $WORK/t5;
  server { listen 127.0.0.1:$UPORT; location / { return 200 'ok'; } } }
EOC
nginx -c "$WORK/upstream.conf" -p "$WORK" &
PIDS+=($!)
cat >"$WORK/proxy.toml" <<EOC
[listen]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"
[upstream]
url = "http://127.0.0.1:$UPORT"
[store]
kind = "redis"
url = "redis://127.0.0.1:$RPORT"
[auth]
unmatched = "allow"
[log]
access = false
EOC
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN" keys create -c "$WORK/proxy.toml" --name rev --scopes '*' --count "$N" >"$WORK/keys.jsonl"

PUB=(); ADM=()
for i in 1 2 3; do
  "$BIN" serve -c "$WORK/proxy.toml" 2>"$WORK/kg$i.log" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q "keygate listening" "$WORK/kg$i.log" && break; sleep 0.05; done
  line=$(grep "keygate listening" "$WORK/kg$i.log")
  PUB+=("$(echo "$line" | python3 -c 'import json,sys;print(json.load(sys.stdin)["public"])')")
  ADM+=("$(echo "$line" | python3 -c 'import json,sys;print(json.load(sys.stdin)["admin"])')")
done

python3 - "$WORK/keys.jsonl" "${PUB[@]}" <<'EOP'
import json, sys, urllib.request
keys = [json.loads(l)["key"] for l in open(sys.argv[1])]
for pub in sys.argv[2:]:
    for k in keys:
        urllib.request.urlopen(urllib.request.Request(f"http://{pub}/", headers={"x-api-key": k})).read()
EOP

# Steady state: Redis commands per proxied request over a 10 s load on sidecar 1 (the keys
# are cached; the epoch poll and pub/sub are all that should reach Redis).
python3 -c "import json;print('\n'.join(json.loads(l)['key'] for l in open('$WORK/keys.jsonl')))" >"$WORK/wrk_keys.txt"
sed "s#@WORKDIR@#$WORK#" "$ROOT/../shared/bench/bench.lua" >"$WORK/bench.lua"
redis-cli -p "$RPORT" config resetstat >/dev/null
RESULT=$(wrk -t2 -c20 -d10s -s "$WORK/bench.lua" "http://${PUB[0]}/v1/resource" | grep RESULT)
CALLS=$(redis-cli -p "$RPORT" info commandstats | python3 -c '
import sys
print(sum(int(l.split("calls=")[1].split(",")[0]) for l in sys.stdin if l.startswith("cmdstat_")))')
REQS=$(echo "$RESULT" | grep -o 'requests=[0-9]*' | cut -d= -f2)
echo "steady state: $REQS proxied requests, $CALLS Redis commands (all sidecars) -> $(python3 -c "print(f'{$CALLS/$REQS:.6f}')") per request"

python3 - "$WORK/keys.jsonl" "$BIN" "$WORK/proxy.toml" <<'EOP'
import json, subprocess, sys
ids = [json.loads(l)["id"] for l in open(sys.argv[1])]
for i in ids:
    subprocess.run([sys.argv[2], "keys", "revoke", i, "-c", sys.argv[3]], check=True, capture_output=True)
EOP
sleep 2
python3 - "${ADM[@]}" <<'EOP'
import sys, urllib.request
buckets = {}
total = 0
for adm in sys.argv[1:]:
    text = urllib.request.urlopen(f"http://{adm}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith("keygate_key_change_propagation_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = buckets.get(le, 0) + int(float(line.rsplit(" ", 1)[1]))
        if line.startswith("keygate_key_change_propagation_seconds_count"):
            total += int(float(line.rsplit(" ", 1)[1]))
order = sorted(buckets, key=lambda b: float("inf") if b == "+Inf" else float(b))
def q(p):
    for b in order:
        if buckets[b] >= p * total:
            return b
print(f"revocations observed: {total} (3 sidecars); p50 <= {q(0.5)} s, p99 <= {q(0.99)} s, max bucket {order[-1]}")
print("cumulative buckets:", {b: buckets[b] for b in order})
EOP
