#!/usr/bin/python3
"""Training speed of two builds of bench_train side by side (a change against the commit before
it): for each row and thread count, runs the old and the new executable in turn (the order flips
every round), and prints a Markdown table of the median images/s of each and the median of the
per-round ratios new / old.

  python3 benchmarks/compare_builds.py --old /tmp/old/build/bench/benchmarks/bench_train \\
      --new build/bench/benchmarks/bench_train --rows train/vgg_small/quant/128 --threads 1,2

With --cpu the rates are images per second of CPU time (for 1 thread on a shared machine; only
with --threads 1: Google Benchmark's cpu_time counts the main thread alone).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def images_per_second(binary, row, threads, min_time, cpu=False):
    """Images per second of wall time, or with cpu per second of the process's CPU time (Google
    Benchmark's cpu_time: on a loaded machine a 1-thread run's share of a core drops out)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([binary, f"--benchmark_filter=^{row}(/|$)",
                          f"--benchmark_min_time={min_time}", "--benchmark_format=json"],
                         env=env, capture_output=True, text=True, check=True).stdout
    results = json.loads(out)["benchmarks"]
    if len(results) != 1:
        raise RuntimeError(f"{binary}: expected one result for {row}, got {len(results)}")
    r = results[0]
    rate = float(r["items_per_second"])  # per wall second: bench_train's rows UseRealTime()
    return rate * float(r["real_time"]) / float(r["cpu_time"]) if cpu else rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="bench_train of the build before")
    ap.add_argument("--new", required=True, help="bench_train of the build after")
    ap.add_argument("--rows", required=True, help="comma-separated benchmark names")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of steps per run")
    ap.add_argument("--show-rounds", action="store_true",
                    help="add a column with each round's new / old, in the order run")
    ap.add_argument("--cpu", action="store_true",
                    help="images per CPU second (1 thread on a shared machine), not per wall second")
    a = ap.parse_args()
    threads = [int(x) for x in a.threads.split(",") if x]
    if a.cpu and threads != [1]:
        ap.error(f"--cpu needs --threads 1 (cpu_time counts the main thread only), got {a.threads}")
    unit = "img/CPU s" if a.cpu else "img/s"
    rounds_head, rounds_rule = (" per round |", "---|") if a.show_rounds else ("", "")
    print(f"| row | threads | old {unit} | new {unit} | new / old (median of rounds) |"
          f"{rounds_head}")
    print(f"|---|--:|--:|--:|--:|{rounds_rule}")
    for t in threads:
        for row in [r for r in a.rows.split(",") if r]:
            old, new, ratios = [], [], []
            for k in range(a.rounds):
                order = [(a.old, old), (a.new, new)] if k % 2 == 0 else [(a.new, new), (a.old, old)]
                for binary, results in order:
                    results.append(images_per_second(binary, row, t, a.min_time, a.cpu))
                ratios.append(new[-1] / old[-1])
            print(f"| {row} | {t} | {statistics.median(old):.0f} | {statistics.median(new):.0f} "
                  f"| {statistics.median(ratios):.2f} |"
                  + (f" {' '.join(f'{r:.2f}' for r in ratios)} |" if a.show_rounds else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
