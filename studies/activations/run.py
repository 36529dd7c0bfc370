#!/usr/bin/python3
"""Learned weight + activation bitwidths against uniform WxAy at equal BOPs (issue #22).

Runs examples/fashion_mnist once per arm and seed, then writes a markdown section with the
results. Arms, all with activation quantizers after every ReLU (unsigned grid, learned range):

  uniform W4A4, W2A8, W4A8   --policy fixed_bits, weights at a uniform bitwidth (the largest
                             within --target-bits k + 0.5), activations fixed at --act-bits
  learned @ <uniform arm>    --policy frac_bits: weight and activation bitwidths learned in
                             [2, 8] under a BOPs budget equal to that uniform arm's BOPs (read
                             from its summary.json, per seed); the weight size budget is left
                             loose (--target-bits 8); activations start at 6 bits, weights at 7.5
  learned-TAG @ <arm>        the same with extra arguments (--variant TAG='ARGS')

Every arm trains with the same schedule (--pretrain/--search/--finetune epochs), on the full
training set, and is evaluated on the full test set. A run whose summary.json exists is not
run again (the study resumes after an interruption). Python standard library only.

  /usr/bin/python3 studies/activations/run.py --binary build/bench/examples/fashion_mnist \\
      --out runs/act-study --seeds 1 2 3 --jobs 2 --markdown runs/act-study/results.md
"""
import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import time

UNIFORM = [("W4A4", 4, 4), ("W2A8", 2, 8), ("W4A8", 4, 8)]
# Learned arms: the BOPs budget of these uniform arms.
LEARNED_AT = ["W2A8", "W4A4"]
# Student's t, two-sided 95%, by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", required=True, help="the fashion_mnist executable")
    p.add_argument("--out", required=True, help="folder of the runs (one per arm and seed)")
    p.add_argument("--model", default="lenet5", choices=["lenet5", "vgg-small", "resnet20"])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (1 thread each)")
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--search-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=0, help="0 = all 60,000 images")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--learned-at", nargs="+", default=LEARNED_AT, choices=[u[0] for u in UNIFORM],
                   help="the uniform arms whose BOPs the learned arms get as budget")
    p.add_argument("--variant", action="append", default=[], metavar="TAG=ARGS",
                   help="one more learned arm per budget, named learned-TAG, with these extra "
                        "fashion_mnist arguments (e.g. layer='--group layer'); repeatable")
    p.add_argument("--markdown", help="write the results section here (default: print it)")
    return p.parse_args()


def run_dir(args, arm, seed):
    return os.path.join(args.out, f"{args.model}-{arm}-s{seed}")


def summary_of(folder):
    path = os.path.join(folder, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def cost(summary, name):
    for c in summary.get("costs", []):
        if c["name"] == name:
            return c["value"]
    raise SystemExit(f"summary has no cost '{name}'")


def run_arm(args, arm, seed, extra):
    folder = run_dir(args, arm, seed)
    if summary_of(folder) is not None:
        return folder, 0.0
    cmd = [args.binary, "--data", args.data, "--model", args.model, "--seed", str(seed),
           "--threads", "1", "--pretrain-epochs", str(args.pretrain_epochs),
           "--search-epochs", str(args.search_epochs),
           "--finetune-epochs", str(args.finetune_epochs),
           "--train-limit", str(args.train_limit), "--out", folder, "--overwrite"] + extra
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    start = time.monotonic()
    with open(folder + ".log", "w") as log:
        status = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({status}); see {folder}.log")
    return folder, time.monotonic() - start


def run_all(args, jobs):
    """jobs: list of (arm, seed, extra args); returns nothing, runs them `args.jobs` at a time."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_arm, args, arm, seed, extra) for arm, seed, extra in jobs]
        for f in concurrent.futures.as_completed(futures):
            folder, seconds = f.result()
            if seconds:
                print(f"{folder}: {seconds:.1f} s", flush=True)


def mean_interval(xs):
    """Mean and half-width of the two-sided 95% t interval (nan with one value)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan
    return m, T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def fmt_pm(m, h, scale=100.0, digits=2):
    if math.isnan(h):
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {h * scale:.{digits}f}"


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    uniform_jobs = [(name, seed, ["--policy", "fixed_bits", "--target-bits", str(w + 0.5),
                                  "--act-bits", str(a)])
                    for name, w, a in UNIFORM for seed in args.seeds]
    run_all(args, uniform_jobs)
    variants = [("learned", [])]
    for v in args.variant:
        tag, _, extra = v.partition("=")
        variants.append((f"learned-{tag}", extra.split()))
    learned_jobs, learned_arms = [], []
    for ref in args.learned_at:
        for name, extra in variants:
            learned_arms.append((f"{name}@{ref}", ref))
            for seed in args.seeds:
                budget = cost(summary_of(run_dir(args, ref, seed)), "bops")
                base = {"--policy": "frac_bits", "--act-bits": "6", "--target-bits": "8",
                        "--target-bops": repr(float(budget))}
                for option in extra[::2]:  # a variant's value replaces the default
                    base.pop(option, None)
                learned_jobs.append((f"{name}@{ref}", seed,
                                     [a for kv in base.items() for a in kv] + extra))
    run_all(args, learned_jobs)

    arms = [name for name, _, _ in UNIFORM] + [arm for arm, _ in learned_arms]
    rows = {arm: [summary_of(run_dir(args, arm, s)) for s in args.seeds] for arm in arms}
    lines = [f"Model {args.model}; seeds {' '.join(map(str, args.seeds))}; epochs "
             f"{args.pretrain_epochs}/{args.search_epochs}/{args.finetune_epochs} "
             f"(pretrain/search/finetune); "
             f"{'all' if not args.train_limit else args.train_limit} training images of "
             f"{args.data}, its whole test set; accuracy mean ± 95% t interval over seeds.", "",
             "| arm | test accuracy % | BOPs per image | weight bytes | peak activation bytes "
             "| activation bits (per quantizer, seed " + str(args.seeds[0]) + ") |",
             "|---|--:|--:|--:|--:|---|"]
    for arm in arms:
        s = rows[arm]
        acc = mean_interval([x["quant_accuracy"] for x in s])
        bops = statistics.fmean(cost(x, "bops") for x in s)
        size = statistics.fmean(x["size_bytes"] for x in s)
        act = statistics.fmean(cost(x, "activation_memory") for x in s)
        bits = " ".join("/".join(f"{b:g}" for b in a["group_bits"]) for a in s[0]["activations"])
        lines.append(f"| {arm} | {fmt_pm(*acc)} | {bops:.3g} | {size:,.0f} | {act:,.0f} | {bits} |")
    lines += ["", "Paired by seed (learned minus uniform, percentage points, mean ± 95% t "
              "interval); BOPs ratio = learned / uniform:", "",
              "| learned arm | uniform arm | difference (points) | BOPs ratio |", "|---|---|--:|--:|"]
    for arm, _ in learned_arms:
        learned = rows[arm]
        for name, _, _ in UNIFORM:
            uniform = rows[name]
            diff = mean_interval([a["quant_accuracy"] - b["quant_accuracy"]
                                  for a, b in zip(learned, uniform)])
            ratio = statistics.fmean(cost(a, "bops") / cost(b, "bops")
                                     for a, b in zip(learned, uniform))
            lines.append(f"| {arm} | {name} | {fmt_pm(*diff)} | {ratio:.3f} |")
    lines += ["", "Weight bits per layer (seed " + str(args.seeds[0]) +
              ", mean over groups):", "",
              "| arm | " + " | ".join(l["name"] for l in rows[arms[0]][0]["layers"]) + " |",
              "|---|" + "--:|" * len(rows[arms[0]][0]["layers"])]
    for arm in arms:
        layers = rows[arm][0]["layers"]
        lines.append(f"| {arm} | " + " | ".join(f"{l['bits_mean']:.2f}" for l in layers) + " |")
    text = "\n".join(lines) + "\n"
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
