# shellcheck shell=bash
# Runs independent jobs N at a time: CI's fuzz targets (scripts/run-fuzzers.sh) and qemu runs
# (scripts/test-aarch64.sh) are single-threaded, so on 2 cores two run side by side. Source it:
#
#   slots_init N KNOB         N jobs at a time; exits 2 naming KNOB unless N is a positive integer;
#                             INT / TERM then stop the jobs still running
#   slot_start LOG CMD...     waits for a free slot, then runs CMD in the background, its output
#                             in LOG, its exit status in LOG.status, its wall seconds in
#                             LOG.seconds and its processes' user / sys CPU in LOG.cpu
#   slots_wait                waits for every job
#   slot_status LOG           the job's exit status, "missing" if it wrote none
#
# Statuses are read from the files the jobs write, never from `wait`, so `set -e` cannot lose
# one. tests/scripts/job_slots.sh checks the limit, the statuses, the logs and the CPU times.

slots_init() {
  if ! [[ $1 =~ ^[0-9]+$ ]] || [[ $1 -eq 0 ]]; then
    echo "$(basename "$0"): $2 must be a positive integer, not '$1'" >&2
    exit 2
  fi
  slots=$1
  trap 'jobs -p | xargs -r kill 2>/dev/null; exit 130' INT TERM
}

slot_start() {
  local log=$1
  shift
  while [[ $(jobs -pr | wc -l) -ge $slots ]]; do wait -n || true; done
  (
    start=$(date +%s)
    status=0
    "$@" >"$log" 2>&1 || status=$?
    echo "$status" >"$log.status"
    echo $(($(date +%s) - start)) >"$log.seconds"
    # times' 2nd line: the job's processes' user and sys CPU (into a file: a pipe or $(...) would
    # run times in a fresh process, whose children's times are zero).
    times >"$log.cpu"
    tail -n 1 "$log.cpu" >"$log.cpu.last" && mv "$log.cpu.last" "$log.cpu"
  ) &
}

slots_wait() {
  wait || true
}

slot_status() {
  cat "$1.status" 2>/dev/null || echo missing
}
