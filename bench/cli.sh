#!/usr/bin/env bash
# Single-key CLI commands on a 100,000-key file store: wall time and peak RSS of
# `keys show`, `keys create`, `keys revoke` and `keys list --limit 100` (issue 21.7).
#
#   bench/cli.sh                 build release, make the store, time each command (3 runs each)
#   KEYS=1000000 bench/cli.sh    another store size
#   BUILD=0 bench/cli.sh         reuse target/release/keygate as it is
#   BIN=/path/keygate BUILD=0 bench/cli.sh   time another binary (e.g. an older build)
#   RUNS=5 bench/cli.sh          more runs per command (the median is reported)
#   LIST_ARGS=" " BIN=… bench/cli.sh   a build without `keys list --limit` lists everything
#
# Runs from a clone alone: needs cargo and GNU time (/usr/bin/time; `apt-get install -y time`
# when missing). Scratch files go to bench/work/cli/ (git-ignored). Figures are written to
# bench/work/cli/summary.txt; bench/RESULTS.md has the write-up of a run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
KEYS=${KEYS:-100000}
RUNS=${RUNS:-3}
# How `keys list` is asked for one page (a build before --limit existed: LIST_ARGS=" ").
LIST_ARGS=${LIST_ARGS:---limit 100 --format json}
BUILD=${BUILD:-1}
BIN=${BIN:-$root/target/release/keygate}

if [ ! -x /usr/bin/time ]; then
  apt-get install -y time >/dev/null
fi
if [ "$BUILD" = 1 ]; then
  cargo build --release
fi

work=$root/bench/work/cli
rm -rf "$work"
mkdir -p "$work"
cat >"$work/proxy.toml" <<EOF
[listen]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"

[upstream]
url = "http://127.0.0.1:9"

[store]
kind = "file"
path = "keys.json"

[auth]
unmatched = "allow"
EOF
kg() { "$BIN" -c "$work/proxy.toml" "$@"; }

echo "making $KEYS keys ..."
kg keys create --count "$KEYS" --name "bench key" --scopes "content:read,analytics:read" \
  --owner acme >"$work/created.jsonl" 2>"$work/stderr.txt" || { cat "$work/stderr.txt"; exit 1; }
ls -l "$work/keys.json"
# Ids from the middle of the file: neither the first record nor the last.
show_id=$(sed -n "$((KEYS / 2))p" "$work/created.jsonl" | sed 's/.*"id":"\([^"]*\)".*/\1/')
mapfile -t revoke_ids < <(sed -n "$((KEYS / 3)),$((KEYS / 3 + RUNS - 1))p" "$work/created.jsonl" \
  | sed 's/.*"id":"\([^"]*\)".*/\1/')
rm "$work/created.jsonl" # the secrets

# One timed run: prints "<seconds> <peak RSS in MB>".
timed() {
  /usr/bin/time -v -o "$work/time.txt" "$BIN" -c "$work/proxy.toml" "$@" >/dev/null 2>"$work/stderr.txt" || {
    echo "failed: $*" >&2
    cat "$work/stderr.txt" >&2
    exit 1
  }
  awk -F': ' '
    /Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i] }
    /Maximum resident set size/ { rss = $2 / 1024 }
    END { printf "%.3f %.1f\n", s, rss }' "$work/time.txt"
}

# Median of RUNS runs of one command (each line of input: "<seconds> <MB>").
median() { sort -n | awk '{ t[NR] = $1; m[NR] = $2 } END { i = int((NR + 1) / 2); printf "%6.0f ms  %6.1f MB\n", t[i] * 1000, m[i] }'; }

summary=$work/summary.txt
{
  echo "# $(date -u +%FT%TZ) $KEYS keys, $(stat -c %s "$work/keys.json") bytes, $("$BIN" --version)"
  printf "%-28s" "keys show";            for _ in $(seq "$RUNS"); do timed keys show "$show_id"; done | median
  printf "%-28s" "keys create";          for _ in $(seq "$RUNS"); do timed keys create --name one --scopes content:read --owner acme; done | median
  printf "%-28s" "keys revoke";          for id in "${revoke_ids[@]}"; do timed keys revoke "$id"; done | median
  printf "%-28s" "keys list --limit 100";for _ in $(seq "$RUNS"); do timed keys list $LIST_ARGS; done | median
} | tee "$summary"
