#!/usr/bin/env bash
# Runs every benchmark executable of a build and keeps Google Benchmark's JSON.
#   bash scripts/run-benchmarks.sh BUILD_DIR [extra Google Benchmark flags...]
# Each BUILD_DIR/benchmarks/bench_* writes build/bench/results/<benchmark>.json (relative to the
# repository root); the console output (with each benchmark's own summary) goes to the terminal.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 BUILD_DIR [benchmark flags...]" >&2
  exit 2
fi
build_dir=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
results="$root/build/bench/results"
mkdir -p "$results"

found=0
for exe in "$build_dir"/benchmarks/bench_*; do
  [ -f "$exe" ] && [ -x "$exe" ] || continue
  found=1
  name=$(basename "$exe")
  echo "== $name -> $results/$name.json"
  "$exe" --benchmark_out="$results/$name.json" --benchmark_out_format=json "$@"
done
if [ "$found" -eq 0 ]; then
  echo "$0: no bench_* executables in $build_dir/benchmarks (configure with BITGRAD_BUILD_BENCHMARKS=ON)" >&2
  exit 1
fi
