#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time; exits non-zero at the first
# crash or failed property (its input is then in fuzz/artifacts/<target>/).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      default: 60 s, every target
#   FUZZ_PARALLEL=2 fuzz/run.sh 30                    two targets at a time
#
# What the targets find on the way goes to a scratch corpus, never into the committed seeds
# (fuzz/corpus/<target>/seed-*). Needs the nightly toolchain; installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[ $# -gt 0 ] && shift
parallel=${FUZZ_PARALLEL:-1}

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# No sanitizer: the code fuzzed here has no `unsafe` (ASan would double the cost of every run
# for nothing); overflow checks and debug assertions stay on. Sixteen codegen units: the
# build, not the runs, is most of a short session's time.
flags=(-s none --codegen-units 16)
cargo +nightly fuzz build "${flags[@]}"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

run() {
  local target=$1 log="$scratch/$1.log"
  mkdir -p "$scratch/$target"
  if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    grep -a -v -E '^#[0-9]+ ' "$log" | tail -n 60
    echo "fuzz: $target FAILED (input saved under fuzz/artifacts/$target/)"
    touch "$scratch/$target.failed"
    return 1
  fi
  local runs
  runs=$(grep -a 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "fuzz: $target: ${runs:-?} runs in ${seconds}s, no failure"
}

failed=0
pids=()
for target in "${targets[@]}"; do
  run "$target" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$parallel" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
failures=$(find "$scratch" -name '*.failed' | wc -l)
echo "fuzz: $(( ${#targets[@]} - failures )) passed, $failures failed"
exit "$failed"
