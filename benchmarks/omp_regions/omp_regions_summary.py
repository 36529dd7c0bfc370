#!/usr/bin/python3
"""Summary of omp_regions.c's output (see the top of omp_regions.c): one Markdown row per parallel
region, named after the function it was outlined from (nm -C of the binary), per training step:
calls, wall ms, the busiest and the idlest thread's CPU ms, their difference (imbalance), and the
calling thread's CPU ms between the previous join and the fork (serial code before the region);
then the totals.

  python3 benchmarks/omp_regions/omp_regions_summary.py /tmp/regions.txt \\
      build/bench/benchmarks/bench_train --steps 4
"""
import argparse
import bisect
import re
import subprocess


def symbols(binary):
    out = subprocess.run(["nm", "-C", binary], capture_output=True, text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] and parts[1] in "tTwW":
            syms.append((int(parts[0], 16), parts[2]))
    syms.sort()
    return [a for a, _ in syms], [n for _, n in syms]


def short(name):
    name = name.replace("bitgrad::", "").replace("detail::", "")
    m = re.match(r"void parallel_(?:chunks|phases)<(.*)", name)
    inner = m.group(1) if m else name
    return re.sub(r"\(.*", "", inner)[:90]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("regions", help="omp_regions.c's output")
    ap.add_argument("binary", help="the program it ran (for the region names)")
    ap.add_argument("--steps", type=float, default=1, help="training steps the run made")
    a = ap.parse_args()
    addrs, names = symbols(a.binary)
    rows = []
    for line in open(a.regions):
        if line.startswith("#") or not line.strip():
            continue
        off, _, calls, wall, busiest, idlest, serial = line.split()
        i = bisect.bisect_right(addrs, int(off, 16)) - 1
        rows.append((float(busiest), short(names[i]) if i >= 0 else off, int(calls), float(wall),
                     float(idlest), float(serial)))
    rows.sort(reverse=True)
    k = 1000 / a.steps
    print("| region (outlined in) | calls / step | wall ms | busiest thread CPU ms | idlest thread CPU ms"
          " | busiest - idlest | serial CPU ms before |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for busiest, name, calls, wall, idlest, serial in rows:
        print(f"| `{name}` | {calls / a.steps:.1f} | {wall * k:.1f} | {busiest * k:.2f} | "
              f"{idlest * k:.2f} | {(busiest - idlest) * k:.2f} | {serial * k:.2f} |")
    print(f"| **all regions** | {sum(r[2] for r in rows) / a.steps:.1f} | {sum(r[3] for r in rows) * k:.1f}"
          f" | {sum(r[0] for r in rows) * k:.2f} | {sum(r[4] for r in rows) * k:.2f} | "
          f"{sum(r[0] - r[4] for r in rows) * k:.2f} | {sum(r[5] for r in rows) * k:.2f} |")


if __name__ == "__main__":
    main()
