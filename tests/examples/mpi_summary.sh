#!/usr/bin/env bash
# fashion_mnist under mpirun -np 2 gives the summary.json of one process: the same accuracies,
# average bits, size, compression and per-group bitwidths (everything but the time). 25 steps
# of a global batch of 64 (5 per epoch, 2/2/1 epochs). Only rank 0 writes: one log row per epoch.
#   mpi_summary.sh FASHION_MNIST_EXE SAMPLE_DATA_DIR WORK_DIR MPIEXEC [MPIEXEC FLAGS...]
set -euo pipefail
exe=$1 data=$2 work=$3
shift 3
rm -rf "$work" && mkdir -p "$work"
args=(--data "$data" --pretrain-epochs 2 --search-epochs 2 --finetune-epochs 1 --batch-size 64
      --max-steps 5 --threads 1 --seed 5)
export OMP_NUM_THREADS=1

"$exe" "${args[@]}" --out "$work/one" > "$work/one.log"
"$@" -n 2 "$exe" "${args[@]}" --out "$work/two" > "$work/two.log"
grep -q "data-parallel on 2 ranks" "$work/two.log" || {
  echo "the run under mpirun -n 2 did not run data-parallel" >&2
  cat "$work/two.log" >&2
  exit 1
}
if ! diff <(grep -v '"seconds"' "$work/one/summary.json") \
          <(grep -v '"seconds"' "$work/two/summary.json"); then
  echo "summary.json differs between 1 process and 2 ranks (above)" >&2
  exit 1
fi
rows=$(wc -l < "$work/two/log.csv")
[ "$rows" -eq 6 ] || { echo "log.csv has $rows lines, expected 6 (one writer)" >&2; exit 1; }
[ -f "$work/two/model.bgm" ] || { echo "no model.bgm from rank 0" >&2; exit 1; }
cmp -s "$work/one/model.bgm" "$work/two/model.bgm" ||
  echo "note: model.bgm differs in its bytes (weights differ in the last bits)"
echo "summary.json equal (1 process, 2 ranks)"
