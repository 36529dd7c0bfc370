#!/usr/bin/env bash
# SIGINT during training, then --resume, ends exactly where an uninterrupted run ends.
#   interrupt_resume.sh FASHION_MNIST_EXE SAMPLE_DATA_DIR WORK_DIR
set -euo pipefail
exe=$1 data=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
args=(--data "$data" --pretrain-epochs 30 --search-epochs 3 --finetune-epochs 2 --batch-size 64
      --threads 1 --seed 5)
export OMP_NUM_THREADS=1

"$exe" "${args[@]}" --out "$work/straight" > "$work/straight.log"

"$exe" "${args[@]}" --out "$work/resumed" > "$work/interrupted.log" &
pid=$!
# Wait for a few epochs in the log, then interrupt mid-run.
for _ in $(seq 1 600); do
  rows=0
  [ -f "$work/resumed/log.csv" ] && rows=$(wc -l < "$work/resumed/log.csv")
  [ "$rows" -ge 4 ] && break
  sleep 0.05
done
kill -INT "$pid"
status=0
wait "$pid" || status=$?
if [ "$status" -ne 130 ]; then
  echo "expected exit status 130 after SIGINT, got $status" >&2
  cat "$work/interrupted.log" >&2
  exit 1
fi
grep -q "interrupted at\|interrupted after" "$work/interrupted.log" || {
  echo "no 'interrupted' message" >&2; cat "$work/interrupted.log" >&2; exit 1; }
[ -f "$work/resumed/checkpoint.bin" ] || { echo "no checkpoint after SIGINT" >&2; exit 1; }
[ ! -f "$work/resumed/summary.json" ] || { echo "summary written by an interrupted run" >&2; exit 1; }

"$exe" "${args[@]}" --out "$work/resumed" --resume > "$work/resumed.log"

# Everything but the timings must be identical.
strip() { grep -v '"seconds"' "$1"; }
if ! diff <(strip "$work/straight/summary.json") <(strip "$work/resumed/summary.json"); then
  echo "resumed run differs from the uninterrupted one" >&2
  exit 1
fi
cmp "$work/straight/model.bgm" "$work/resumed/model.bgm"
echo "interrupt + resume: identical summary and model file"
