#!/usr/bin/env bash
# fashion_mnist --resume under mpirun when only rank 0 sees the run folder, as on two hosts
# without a shared disk: rank 0 runs in folder A, rank 1 in folder B (an MPMD launch, each
# with its own --wdir), --out is the same relative path. Only rank 0 reads the checkpoint
# (and broadcasts it), so the run resumes and finishes; rank 1's folder stays empty. Then
# --resume with no checkpoint anywhere: a non-zero exit naming the problem.
#   mpi_resume_hosts.sh FASHION_MNIST_EXE SAMPLE_DATA_DIR WORK_DIR MPIEXEC [MPIEXEC FLAGS...]
set -euo pipefail
exe=$1 data=$2 work=$3
shift 3
rm -rf "$work" && mkdir -p "$work/A" "$work/B"
args=(--data "$data" --pretrain-epochs 1 --search-epochs 1 --finetune-epochs 1 --batch-size 64
      --max-steps 3 --threads 1 --seed 5 --out run)
export OMP_NUM_THREADS=1

# Two ranks, both in A, stop after the first epoch: A/run/checkpoint.bin.
"$@" -n 2 --wdir "$work/A" "$exe" "${args[@]}" --stop-after 1 > "$work/first.log" 2>&1 || {
  cat "$work/first.log" >&2; echo "the first, stopped run failed" >&2; exit 1; }
[ -f "$work/A/run/checkpoint.bin" ] || { echo "no checkpoint after --stop-after 1" >&2; exit 1; }

# Resume with rank 1 in B, where run/ does not exist.
"$@" -n 1 --wdir "$work/A" "$exe" "${args[@]}" --resume : \
     -n 1 --wdir "$work/B" "$exe" "${args[@]}" --resume > "$work/resume.log" 2>&1 || {
  cat "$work/resume.log" >&2
  echo "--resume failed with rank 1 in a folder without the checkpoint" >&2
  exit 1
}
grep -q "data-parallel on 2 ranks" "$work/resume.log" &&
  grep -q "resumed from" "$work/resume.log" || {
  cat "$work/resume.log" >&2; echo "the run did not resume data-parallel" >&2; exit 1; }
[ -f "$work/A/run/summary.json" ] || { echo "no summary.json in rank 0's folder" >&2; exit 1; }
[ -z "$(ls -A "$work/B")" ] || { echo "rank 1 wrote into its folder:" >&2; ls -R "$work/B" >&2; exit 1; }

# --resume with no checkpoint at all: rank 0 says so, the job ends non-zero.
mkdir -p "$work/C"
if "$@" -n 2 --wdir "$work/C" "$exe" "${args[@]}" --resume > "$work/none.log" 2>&1; then
  echo "--resume without a checkpoint succeeded" >&2; exit 1
fi
grep -q "no checkpoint to continue from" "$work/none.log" || {
  cat "$work/none.log" >&2; echo "no message naming the missing checkpoint" >&2; exit 1; }
echo "resumed with the checkpoint on rank 0's folder only; a missing checkpoint is refused"
