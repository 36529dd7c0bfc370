#!/usr/bin/env bash
# shellcheck disable=SC1090 # the library is an argument
# scripts/lib/job-slots.sh, which runs CI's fuzz targets and qemu runs N at a time
# (FUZZ_PARALLEL, AARCH64_PARALLEL): at most N jobs run at once and N do run together, every
# job's exit status, output and CPU land in its files (a failing job among passing ones included),
# and a bad N ends the script with status 2 naming the knob.
#   bash tests/scripts/job_slots.sh scripts/lib/job-slots.sh
set -euo pipefail
lib=$(realpath "$1")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# job NAME SECONDS STATUS: notes its start and end (ns) in $dir/spans, prints NAME, sleeps, exits.
job() {
  local begin
  begin=$(date +%s%N)
  echo "output of $1"
  awk 'BEGIN { for (i = 0; i < 2e6; ++i) s += i }' # some CPU in a child, for LOG.cpu
  sleep "$2"
  echo "$begin $(date +%s%N)" >>"$dir/spans"
  return "$3"
}

# most_at_once: the largest number of spans in $dir/spans that overlap at one instant.
most_at_once() {
  awk '{ print $1, 1; print $2, -1 }' "$dir/spans" | sort -k1,1n -k2,2n |
    awk '{ n += $2; if (n > m) m = n } END { print m + 0 }'
}

for n in 1 2 3; do
  rm -f "$dir/spans"
  (
    source "$lib"
    slots_init "$n" TEST_PARALLEL
    for i in 1 2 3 4 5; do
      slot_start "$dir/job$i.log" job "job$i" 1 $((i == 3 ? 7 : 0))
    done
    slots_wait
  )
  most=$(most_at_once)
  want=$((n < 5 ? n : 5))
  [[ $most -eq $want ]] || fail "slots $n: $most jobs ran at once, expected $want"
  source "$lib"
  for i in 1 2 3 4 5; do
    status=$(slot_status "$dir/job$i.log")
    expected=$((i == 3 ? 7 : 0))
    [[ $status == "$expected" ]] || fail "slots $n: job$i status '$status', expected $expected"
    grep -qx "output of job$i" "$dir/job$i.log" || fail "slots $n: job$i's output not in its log"
    [[ -s $dir/job$i.log.seconds ]] || fail "slots $n: job$i's wall seconds missing"
    # LOG.cpu is times' line for the children, "0m0.123s 0m0.004s": awk's CPU is not zero.
    cpu=$(cat "$dir/job$i.log.cpu")
    if ! [[ $cpu =~ ^[0-9]+m[0-9.]+s\ [0-9]+m[0-9.]+s$ ]] || [[ $cpu == "0m0.000s 0m0.000s" ]]; then
      fail "slots $n: job$i's CPU '$cpu' is not its processes' time"
    fi
  done
done

[[ $(source "$lib" && slot_status "$dir/never-started.log") == missing ]] ||
  fail "a job that never ran does not read as missing"

for bad in 0 -1 two ""; do
  status=0
  message=$( (source "$lib" && slots_init "$bad" TEST_PARALLEL) 2>&1) || status=$?
  [[ $status -eq 2 ]] || fail "slots_init '$bad' exited $status, expected 2"
  [[ $message == *"TEST_PARALLEL must be a positive integer"* ]] ||
    fail "slots_init '$bad' said: $message"
done

if [[ $failures -gt 0 ]]; then
  echo "job_slots: $failures failures" >&2
  exit 1
fi
echo "job_slots: limits 1, 2, 3 held with 5 jobs, statuses, logs and bad values checked"
