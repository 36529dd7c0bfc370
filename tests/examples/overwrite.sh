#!/usr/bin/env bash
# A new run never destroys the run already in its --out folder before it has results of its own
# (issue #17): without --resume or --overwrite the folder is refused; with --overwrite a run that
# fails before its first result leaves the old run intact, and one that trains replaces it.
#   overwrite.sh FASHION_MNIST_EXE SAMPLE_DATA_DIR WORK_DIR
set -euo pipefail
exe=$1 data=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
out=$work/run
args=(--data "$data" --out "$out" --pretrain-epochs 1 --search-epochs 1 --finetune-epochs 1
      --max-steps 3 --batch-size 32 --threads 1)
export OMP_NUM_THREADS=1
fail() { echo "overwrite.sh: $*" >&2; exit 1; }

"$exe" "${args[@]}" --seed 1 > "$work/first.log"
[ -f "$out/model.bgm" ] || fail "the first run wrote no model.bgm"
cp -r "$out" "$work/first"
same_as_first() {
  for f in log.csv summary.json model.bgm checkpoint.bin report.html; do
    cmp -s "$out/$f" "$work/first/$f" || fail "$1: $f changed"
  done
}

# Without --resume or --overwrite: refused, naming both options; nothing touched.
if "$exe" "${args[@]}" --seed 2 > "$work/refused.log" 2>&1; then fail "a second run was not refused"; fi
grep -q -- "--resume" "$work/refused.log" || fail "the refusal does not name --resume"
grep -q -- "--overwrite" "$work/refused.log" || fail "the refusal does not name --overwrite"
same_as_first "after the refused run"

# --overwrite, but the run diverges before its first result: the old run stays.
if "$exe" "${args[@]}" --seed 2 --overwrite --lr 1e30 > "$work/diverged.log" 2>&1; then
  fail "the --lr 1e30 run did not fail"
fi
grep -q "is not finite" "$work/diverged.log" || fail "the diverged run did not say why"
grep -q "the run already in $out is untouched" "$work/diverged.log" || fail "no word on the old run"
same_as_first "after the diverged run"

# --overwrite with a run that trains: every file is the new run's.
"$exe" "${args[@]}" --seed 2 --overwrite > "$work/second.log"
cmp -s "$out/model.bgm" "$work/first/model.bgm" && fail "model.bgm is still the first run's"
cmp -s "$out/log.csv" "$work/first/log.csv" && fail "log.csv is still the first run's"
grep -q '"seed", *"2"\|"seed": *"2"' "$out/summary.json" || fail "summary.json is not the new run's"
echo "overwrite: refused without a flag, kept on failure, replaced on success"
