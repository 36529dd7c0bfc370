#!/usr/bin/env python3
"""Summarises a clang -ftime-trace JSON: where one translation unit's compile time goes.

Usage: time_trace_summary.py TRACE.json [--top N] [--group REGEX ...] [--trainers]

Prints the front end / back end totals, the N template instantiations with the longest inclusive
time (an instantiation's time includes the ones it triggers), and, per --group pattern, the
time of the outermost instantiations and of the back end's per-function optimisation whose name
matches it (e.g. --group 'train::trainer<' sums what the trainer's members cost). Back-end
names are demangled with c++filt when it is on PATH. --trainers: the outermost instantiations of
each train::trainer type, summed and named by trainer_code_size.py. Issue #18, h18-inst.
"""

import argparse
import json
import re
import shutil
import subprocess
from collections import defaultdict


def demangle(names):
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return dict(zip(names, out))


def outermost(events):
    """The events not nested in another event of the list (same thread)."""
    result = []
    end = -1
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        if e["ts"] >= end:
            result.append(e)
            end = e["ts"] + e["dur"]
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--group", action="append", default=[])
    ap.add_argument("--trainers", action="store_true")
    args = ap.parse_args()

    events = [e for e in json.load(open(args.trace))["traceEvents"] if e.get("ph") == "X"]
    totals = {e["name"][len("Total "):]: e["dur"] / 1e6 for e in events
              if e["name"].startswith("Total ")}
    print(f"== {args.trace}")
    for key in ["ExecuteCompiler", "Frontend", "Source", "PerformPendingInstantiations",
                "InstantiateFunction", "InstantiateClass", "Backend", "OptFunction",
                "OptModule", "CodeGenPasses", "CodeGen Function"]:
        if key in totals:
            print(f"  total {key:28s} {totals[key]:8.2f} s")

    inst = [e for e in events if e["name"] in ("InstantiateFunction", "InstantiateClass")]
    by_detail = defaultdict(float)
    for e in inst:
        by_detail[e["args"]["detail"]] += e["dur"] / 1e6
    print(f"  top {args.top} instantiations (inclusive s, summed over repeats):")
    for detail, secs in sorted(by_detail.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"    {secs:7.2f}  {detail[:160]}")

    opt = [e for e in events if e["name"] == "OptFunction"]
    names = demangle(sorted({e["args"]["detail"] for e in opt}))
    top_inst = outermost(inst)
    for pattern in args.group:
        rx = re.compile(pattern)
        fe = sum(e["dur"] for e in top_inst if rx.search(e["args"]["detail"])) / 1e6
        be = sum(e["dur"] for e in opt if rx.search(names[e["args"]["detail"]])) / 1e6
        n_be = sum(1 for e in opt if rx.search(names[e["args"]["detail"]]))
        print(f"  group {pattern!r}: outermost instantiations {fe:.2f} s, "
              f"OptFunction {be:.2f} s over {n_be} functions")

    if args.trainers:
        from trainer_code_size import TRAINER, short_name, template_id
        by_type = defaultdict(float)
        for e in outermost([e for e in inst if e["args"]["detail"].startswith(TRAINER)]):
            by_type[short_name(template_id(e["args"]["detail"]))] += e["dur"] / 1e6
        print("  trainer types (outermost instantiation events, s):")
        for name, secs in sorted(by_type.items(), key=lambda kv: -kv[1]):
            print(f"    {secs:7.2f}  {name}")


if __name__ == "__main__":
    main()
