#!/usr/bin/env bash
# Builds the libFuzzer targets (preset "fuzz": clang++-14, ASan + UBSan) and fuzzes each one for
# SECONDS (default 60) on a copy of its seed corpus, so the committed corpus never changes.
# libFuzzer runs on one thread, so the targets run FUZZ_PARALLEL at a time (default: JOBS, else
# 2); SECONDS stays the time per target, and the wall time is about
# ceil(targets / FUZZ_PARALLEL) x SECONDS.
#
#   scripts/run-fuzzers.sh [SECONDS] [TARGET...]      e.g. scripts/run-fuzzers.sh 20 idx
#   FUZZ_PARALLEL=1 scripts/run-fuzzers.sh            one target after another
#
# Work directories: build/fuzz/work/<target>/{corpus,crashes,log.txt}. Exits non-zero if any
# target crashes, leaks, times out or runs out of memory, printing where the input is. To make
# a crash a regression test: fix it, then copy the input to tests/fuzz/regressions/<target>/
# (ctest's fuzz_replay.<target> replays it in every normal build).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]] || [[ $seconds -eq 0 ]]; then
  echo "usage: $0 [SECONDS] [TARGET...]" >&2
  exit 2
fi

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "${JOBS:-2}"

build=build/fuzz
if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  targets=()
  for src in tests/fuzz/fuzz_*.cpp; do
    name=$(basename "$src" .cpp)
    targets+=("${name#fuzz_}")
  done
fi

parallel=${FUZZ_PARALLEL:-${JOBS:-2}}
if ! [[ $parallel =~ ^[0-9]+$ ]] || [[ $parallel -eq 0 ]]; then
  echo "run-fuzzers: FUZZ_PARALLEL must be a positive integer, not '$parallel'" >&2
  exit 2
fi

for target in "${targets[@]}"; do
  exe=$build/tests/fuzz/fuzz_$target
  if [[ ! -x $exe ]]; then
    echo "run-fuzzers: no executable $exe" >&2
    exit 1
  fi
done

# fuzz_one TARGET: fuzzes one target in build/fuzz/work/TARGET; its output goes to log.txt and
# libFuzzer's exit status to exit_status (read back once every target has finished).
fuzz_one() {
  local target=$1 status=0
  local exe=$build/tests/fuzz/fuzz_$target work=$build/work/$target
  # -artifact_prefix: crash-*, leak-*, timeout-*, oom-* inputs land in $work/crashes/.
  "$exe" "$work/corpus" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$work/crashes/" >"$work/log.txt" 2>&1 || status=$?
  echo "$status" >"$work/exit_status"
}

# Stop the fuzzers still running if this script is interrupted.
trap 'jobs -p | xargs -r kill 2>/dev/null; exit 130' INT TERM
for target in "${targets[@]}"; do
  work=$build/work/$target
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/crashes"
  for seeds in tests/fuzz/corpus/$target tests/fuzz/regressions/$target; do
    if [[ -d $seeds ]]; then cp -r "$seeds"/. "$work/corpus/"; fi
  done
  # Wait for a free slot (statuses are read from the files the jobs write, not from wait).
  while [[ $(jobs -pr | wc -l) -ge $parallel ]]; do wait -n || true; done
  echo "== fuzz_$target for ${seconds}s ($(find "$work/corpus" -type f | wc -l) seeds), started $(date -u +%H:%M:%S)"
  fuzz_one "$target" &
done
wait || true

failed=()
for target in "${targets[@]}"; do
  exe=$build/tests/fuzz/fuzz_$target
  work=$build/work/$target
  status=$(cat "$work/exit_status" 2>/dev/null || echo "missing")
  echo "== fuzz_$target: exit $status"
  grep -E '^stat::(number_of_executed_units|new_units_added)|^Done' "$work/log.txt" || true
  if [[ $status != 0 ]] || [[ -n $(ls -A "$work/crashes") ]]; then
    echo "!! fuzz_$target failed (exit $status); log: $work/log.txt" >&2
    grep -E 'ERROR: |SUMMARY: |runtime error|Test unit written' "$work/log.txt" | head -20 >&2 || true
    for input in "$work"/crashes/*; do
      [[ -e $input ]] && echo "!! crashing input: $input   (reproduce: $exe $input)" >&2
    done
    failed+=("$target")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "run-fuzzers: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "run-fuzzers: ${#targets[@]} targets, ${seconds}s each, $parallel at a time, no crash"
