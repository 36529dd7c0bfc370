#!/bin/bash
# A rank killed mid-epoch (SIGKILL) during data-parallel training, then the run resumed on one
# rank. Usage: dist_trainer_kill.sh <work dir> <probe> <mpiexec and its flags...>
#   1. mpiexec -n 2 probe: once rank 0 has written the first checkpoint (end of epoch 1) and
#      0.5 s more have passed (mid-epoch 2 at 30 ms per step), SIGKILL rank 1 (by its pid).
#   2. The job must end with a non-zero exit and a message naming the killed process within
#      30 s.
#   3. The checkpoint is intact: the probe resumes from it on one rank and finishes.
set -u
work=$1; probe=$2; shift 2
rm -rf "$work"; mkdir -p "$work"
out=$work/run
fail() { echo "FAIL: $*"; exit 1; }

"$@" -n 2 "$probe" "$out" new 30 >"$work/stdout" 2>"$work/stderr" &
job=$!
for _ in $(seq 600); do
  [ -f "$out/checkpoint.bin" ] && [ -f "$out.rank1.pid" ] && break
  sleep 0.1
done
[ -f "$out/checkpoint.bin" ] || { kill "$job"; fail "no checkpoint after 60 s"; }
sleep 0.5
cp "$out/checkpoint.bin" "$work/checkpoint.before"
kill -9 "$(cat "$out.rank1.pid")" || fail "could not kill rank 1"
killed=$(date +%s)
for _ in $(seq 300); do
  kill -0 "$job" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$job" 2>/dev/null; then
  kill "$job"
  fail "the job was still running 30 s after rank 1 was killed"
fi
wait "$job"; rc=$?
echo "job exit $rc after $(( $(date +%s) - killed )) s"; cat "$work/stderr"
[ "$rc" -ne 0 ] || fail "the job exited 0 after a rank was killed"
grep -qiE "signal 9|killed" "$work/stderr" || fail "no message naming the killed rank on stderr"
grep -q finished "$work/stdout" && fail "the killed job claims to have finished"
# The last checkpoint is the one of the last finished epoch (rank 0 writes atomically).
cmp -s "$out/checkpoint.bin" "$work/checkpoint.before" || \
  echo "note: a later epoch's checkpoint was written before the kill took effect"

"$@" -n 1 "$probe" "$out" resume 0 >"$work/resume.stdout" 2>"$work/resume.stderr"
rc=$?
cat "$work/resume.stdout" "$work/resume.stderr"
[ "$rc" -eq 0 ] || fail "resuming on one rank exited $rc"
grep -q "resumed from" "$work/resume.stdout" || fail "the run did not resume from the checkpoint"
grep -q finished "$work/resume.stdout" || fail "the resumed run did not finish"
[ -f "$out/summary.json" ] || fail "no summary.json after the resumed run"
echo PASS
