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

source scripts/lib/job-slots.sh
slots_init "${FUZZ_PARALLEL:-${JOBS:-2}}" FUZZ_PARALLEL

for target in "${targets[@]}"; do
  exe=$build/tests/fuzz/fuzz_$target
  if [[ ! -x $exe ]]; then
    echo "run-fuzzers: no executable $exe" >&2
    exit 1
  fi
done

for target in "${targets[@]}"; do
  work=$build/work/$target
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/crashes"
  for seeds in tests/fuzz/corpus/$target tests/fuzz/regressions/$target; do
    if [[ -d $seeds ]]; then cp -r "$seeds"/. "$work/corpus/"; fi
  done
  echo "== fuzz_$target for ${seconds}s ($(find "$work/corpus" -type f | wc -l) seeds)"
  # -artifact_prefix: crash-*, leak-*, timeout-*, oom-* inputs land in $work/crashes/.
  slot_start "$work/log.txt" "$build/tests/fuzz/fuzz_$target" "$work/corpus" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$work/crashes/"
done
slots_wait

failed=()
for target in "${targets[@]}"; do
  exe=$build/tests/fuzz/fuzz_$target
  work=$build/work/$target
  status=$(slot_status "$work/log.txt")
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
echo "run-fuzzers: ${#targets[@]} targets, ${seconds}s each, $slots at a time, no crash"
