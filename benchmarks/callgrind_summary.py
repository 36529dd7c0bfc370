#!/usr/bin/python3
"""Instruction counts of `bench_conv2d --compare --callgrind` run under valgrind (see the top of
benchmarks/bench_conv2d.cpp): reads every callgrind dump in DIR, takes the name each one was
dumped under (layer/pass/variant) and its total instruction count (Ir), and prints a Markdown
table per layer and pass: Ir of im2col, implicit and direct (millions) and the ratio
im2col / implicit (> 1: implicit GEMM runs fewer instructions).

  python3 benchmarks/callgrind_summary.py /tmp/cg
"""
import argparse
import pathlib
import re
import sys


def read_dump(path):
    name, total = None, None
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"desc: Trigger: Client Request: (\S+)", line)
            if m:
                name = m.group(1)
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                total = int(m.group(1))
    return name, total


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=pathlib.Path, help="the folder of callgrind dumps")
    args = parser.parse_args()
    if not args.dir.is_dir():
        parser.error(f"{args.dir}: not a folder of callgrind dumps")
    counts = {}  # (layer, pass) -> {variant: Ir}
    order = []
    for path in sorted(args.dir.iterdir(),
                       key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)]):
        name, total = read_dump(path)
        if name is None or total is None or name.count("/") != 2:
            continue
        layer, pas, variant = name.split("/")
        if (layer, pas) not in counts:
            counts[(layer, pas)] = {}
            order.append((layer, pas))
        counts[(layer, pas)][variant] = total
    print("| layer | pass | im2col MIr | implicit MIr | direct MIr | im2col / implicit |")
    print("|---|---|--:|--:|--:|--:|")
    for key in order:
        c = counts[key]
        fmt = lambda v: f"{c[v] / 1e6:.1f}" if v in c else "-"
        ratio = f"{c['im2col'] / c['implicit']:.2f}" if "im2col" in c and "implicit" in c else "-"
        print(f"| {key[0]} | {key[1]} | {fmt('im2col')} | {fmt('implicit')} | {fmt('direct')} "
              f"| {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
