#!/usr/bin/env python3
"""Code size of an object file by train::trainer type (issue #18, h18-inst).

Usage: trainer_code_size.py OBJECT.o ...

Sums the sizes of the code symbols (nm types T, t, W) of each object, and of those that are
members of a train::trainer<...> (or name one in their template arguments, e.g. lambdas in its
members), grouped by that trainer type, and says for which types trainer::run() was emitted.
Types are named by their networks (lenet5, resnet20, ...) and weight quantizer.
"""

import argparse
import os
import subprocess
import sys

TRAINER = "bitgrad::train::trainer<"


def template_id(text):
    """`name<...>` up to the angle bracket that closes the first one."""
    depth = 0
    for i, c in enumerate(text):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
            if depth == 0:
                return text[:i + 1]
    return text


def short_name(trainer):
    scalar = "double" if ("conv2d<double" in trainer or "linear<double" in trainer) else "float"
    quant = [q for q in ("frac_bits", "step_bits", "noise_bits", "fixed_bits") if q in trainer]
    if "residual" in trainer:
        model = "resnet20"
    elif "input_probe" in trainer:
        model = "test_train input_probe net"
    elif "activation_quant" in trainer:
        model = "lenet5 + activation quantizers"
    elif trainer.count("max_pool_op") >= 2 and "global_avg_pool" not in trainer:
        model = "lenet5"
    elif "batch_norm" in trainer:
        model = "conv + batch-norm net"
    else:
        model = "small net"
    return f"{model} <{scalar}> {'/'.join(quant)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("objects", nargs="+", metavar="OBJECT.o")
    args = parser.parse_args()
    for obj in args.objects:
        if not os.path.isfile(obj):
            sys.exit(f"trainer_code_size.py: {obj}: no such file")
        nm = subprocess.run(["nm", "-C", "-S", obj], capture_output=True, text=True)
        if nm.returncode != 0:
            sys.exit(f"trainer_code_size.py: nm failed on {obj}: {nm.stderr.strip()}")
        lines = nm.stdout.splitlines()
        total = 0
        by_type = {}
        run_emitted = set()
        for line in lines:
            fields = line.split(None, 3)
            if len(fields) < 4 or len(fields[1]) != 16 or fields[2] not in "TtWw":
                continue
            size = int(fields[1], 16)
            total += size
            at = fields[3].find(TRAINER)
            if at < 0:
                continue
            trainer = template_id(fields[3][at:])
            name = short_name(trainer)
            by_type[name] = by_type.get(name, 0) + size
            if fields[3][at:].startswith(trainer + "::run()"):
                run_emitted.add(name)
        print(f"== {obj}: code {total / 1e6:.2f} MB")
        for name, size in sorted(by_type.items(), key=lambda kv: -kv[1]):
            print(f"  {size / 1e3:8.1f} KB  {name}  run() {'emitted' if name in run_emitted else '-'}")


if __name__ == "__main__":
    main()
