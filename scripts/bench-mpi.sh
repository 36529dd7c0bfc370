#!/usr/bin/env bash
# Data-parallel training on this machine (issue 21): 1 process x 2 threads against 2 processes
# x 1 thread at the same global batch, for LeNet-5, the VGG-style net and ResNet-20 (frac_bits),
# with the all-reduce time per step and the overlap of the all-reduce with backward. Runs the
# configurations in alternation, round after round, so that a change of load hits all alike.
#   bash scripts/bench-mpi.sh [BUILD_DIR]        (default build/bench; ROUNDS=n, default 3)
# Needs BUILD_DIR/benchmarks/mpi/bench_dist (cmake --build --preset bench --target bench_dist).
# Writes every measurement as a JSON line to build/bench/results/mpi.jsonl and prints a table
# of the medians over the rounds.
set -euo pipefail

build_dir=${1:-build/bench}
rounds=${ROUNDS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
exe="$build_dir/benchmarks/mpi/bench_dist"
[ -x "$exe" ] || { echo "$0: $exe not found (cmake --build --preset bench --target bench_dist)" >&2; exit 1; }
results="$root/build/bench/results"
mkdir -p "$results"
out="$results/mpi.jsonl"
: > "$out"

# --bind-to none: Open MPI binds each rank of a 1- or 2-rank job to one core by default, which
# would put both threads of the 1 x 2 run on a single core. OMP_WAIT_POLICY=PASSIVE: spinning
# OpenMP threads on a shared machine lose whole time slices when a peer thread is descheduled.
mpirun_flags=(--bind-to none)
if mpirun --version 2>&1 | grep -q "Open MPI\|OpenRTE"; then
  mpirun_flags+=(--oversubscribe)
  [ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
fi

# model batch steps-per-round rounds
configs=("lenet5 64 5 20" "lenet5 256 2 20" "vgg_small 128 1 12" "resnet20 128 1 8")
for ((round = 1; round <= rounds; ++round)); do
  for config in "${configs[@]}"; do
    read -r model batch steps inner <<< "$config"
    echo "round $round: $model batch $batch" >&2
    for bucket_kb in 1024 64; do
      OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE mpirun -np 2 "${mpirun_flags[@]}" "$exe" \
        --model "$model" --batch "$batch" --steps "$steps" --rounds "$inner" --bucket-kb "$bucket_kb" >> "$out"
    done
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE mpirun -np 1 "${mpirun_flags[@]}" "$exe" \
      --model "$model" --batch "$batch" --steps "$steps" --rounds "$inner" >> "$out"
  done
done

/usr/bin/env python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
groups = {}
for r in rows:
    groups.setdefault((r["model"], r["batch"], r["ranks"], r["threads"], r["bucket_kb"]), []).append(r)
print("| model | global batch | ranks x threads | bucket KiB | buckets | bytes/step "
      "| local ms | reduce ms | overlap ms | overlap - reduce ms (q1, median, q3) | all-reduce ms | images/s (reduce) |")
print("|---|--:|---|--:|--:|--:|--:|--:|--:|---|--:|--:|")
for key in sorted(groups):
    g = groups[key]
    med = lambda k: statistics.median(x[k] for x in g)
    model, batch, ranks, threads, kb = key
    d = [statistics.median(x["overlap_minus_reduce_ms"][i] for x in g) for i in range(3)]
    print(f"| {model} | {batch} | {ranks} x {threads} | {kb} | {g[0]['buckets']} "
          f"| {g[0]['bytes']} | {med('local_ms'):.2f} | {med('reduce_ms'):.2f} | {med('overlap_ms'):.2f} "
          f"| {d[0]:+.2f}, {d[1]:+.2f}, {d[2]:+.2f} | {med('allreduce_ms'):.3f} | {med('reduce_images_per_s'):.0f} |")
PY
