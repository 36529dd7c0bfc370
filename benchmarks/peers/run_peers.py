#!/usr/bin/python3
"""Training speed, bitgrad against PyTorch on this machine: runs benchmarks/bench_train.cpp and
benchmarks/peers/train_pytorch.py alternately, row by row, for several rounds, and prints the
medians (images/s of each, and the median of the per-round ratios bitgrad / PyTorch) as a
Markdown table. Writes the same rows as JSON (one object per row: model, quantized, batch,
threads, bitgrad_ips, pytorch_ips, ratio) to --out.

Within a round every row runs both programs back to back (which one goes first alternates), so
a change in machine load affects both sides of a ratio alike. Threads: OMP_NUM_THREADS=t for
both programs, and torch.set_num_threads(t).

Memory (--malloc): with glibc's default settings PyTorch's training step returns its large
activation buffers to the kernel and faults them in again on the next step; how often depends
on glibc's dynamic mmap threshold and differs from process to process, so PyTorch's ResNet-20
rate varied 2.5x between identical runs (183-473 images/s on 1 thread, 115k-293k minor page
faults per run; issue #23). `retain` (the default) sets glibc's malloc tunables for both
programs so freed memory stays in the process (MALLOC_MMAP_THRESHOLD_ at its 32 MiB maximum,
no trimming, 256 MiB top pad): the rate PyTorch reaches in its good runs, every run. `glibc`
measures both with the defaults. Each run's minor page faults are printed beside its rate.

  make bench-peers
  python3 benchmarks/peers/run_peers.py --bench build/bench/benchmarks/bench_train --rounds 5
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# (model, quantized, batch): the rows of the table, each at every thread count.
ROWS = [
    ("lenet5", False, 64),
    ("lenet5", True, 64),
    ("lenet5", False, 256),
    ("lenet5", True, 256),
    ("vgg_small", True, 128),
    ("resnet20", False, 128),
    ("resnet20", True, 128),
]

NAMES = {"lenet5": "LeNet-5", "vgg_small": "VGG-small", "resnet20": "ResNet-20"}


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average():
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def cpu_busy(seconds=0.5):
    """Busy fraction of all CPUs over `seconds` (from /proc/stat); None where unavailable."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    try:
        i0, t0 = sample()
        time.sleep(seconds)
        i1, t1 = sample()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(limit, max_wait):
    """Waits (at most max_wait s) until the other processes keep the CPUs < limit busy."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy is not None and busy > limit and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


WAIT_POLICY = None  # --omp-wait-policy, for both sides
MALLOC = "retain"  # --malloc, for both sides

# glibc malloc tunables that keep freed memory in the process (mallopt(3): M_MMAP_THRESHOLD's
# maximum on 64-bit is 32 MiB; a trim threshold above any heap size never trims).
RETAIN_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
              "MALLOC_TOP_PAD_": str(256 << 20)}


def env_for(threads):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    if WAIT_POLICY:
        env["OMP_WAIT_POLICY"] = WAIT_POLICY
    if MALLOC == "retain":
        env.update(RETAIN_ENV)
    return env


FAULTS = []  # minor page faults of each finished child run, in order


def run_child(cmd, threads):
    """Runs cmd with env_for(threads); returns its stdout, and appends its minor page faults."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    out = subprocess.run(cmd, env=env_for(threads), check=True, capture_output=True,
                         text=True).stdout
    FAULTS.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before)
    return out


def run_bitgrad(bench, model, quantized, batch, threads, min_time):
    name = f"train/{model}/{'quant' if quantized else 'fp32'}/{batch}"
    out = run_child([bench, f"--benchmark_filter=^{name}(/|$)", f"--benchmark_min_time={min_time}",
                     "--benchmark_format=json"], threads)
    rows = json.loads(out)["benchmarks"]
    if len(rows) != 1:
        raise RuntimeError(f"{bench}: expected one result for {name}, got {len(rows)}")
    return float(rows[0]["items_per_second"])


def run_pytorch(python, model, quantized, batch, threads, min_time):
    cmd = [python, str(HERE / "train_pytorch.py"), "--model", model, "--batch", str(batch),
           "--threads", str(threads), "--min-time", str(min_time)]
    if quantized:
        cmd.append("--quant")
    out = run_child(cmd, threads)
    return float(json.loads(out.strip().splitlines()[-1])["ips"])


def write_results(path, rows):
    """Writes rows as indented JSON to path (creating its folder) and says so."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=str(ROOT / "build/bench/benchmarks/bench_train"),
                    help="the bench_train executable")
    ap.add_argument("--python", default=sys.executable, help="the Python that has torch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="seconds of timed steps per measurement (each side)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--only", default="", help="run only rows whose model/quant/batch "
                    "name contains this, e.g. lenet5/quant")
    ap.add_argument("--quiet", type=float, default=0.25,
                    help="before each pair, wait until other processes keep the CPUs at most "
                    "this busy (fraction of all CPUs; 1 = never wait)")
    ap.add_argument("--max-wait", type=float, default=30.0,
                    help="seconds to wait for --quiet at most, then measure anyway")
    ap.add_argument("--omp-wait-policy", choices=["active", "passive"], default=None,
                    help="OMP_WAIT_POLICY for both sides (both use libgomp). passive keeps "
                    "2-thread runs sane on a machine shared with other work, where spinning "
                    "threads wait for a core; default: the environment's (libgomp spins)")
    ap.add_argument("--malloc", choices=["retain", "glibc"], default="retain",
                    help="glibc malloc settings for both programs: retain = freed memory stays "
                    "in the process (steady rates; see the top of this file), glibc = defaults")
    ap.add_argument("--out", default=str(ROOT / "build/bench/results/peers.json"))
    a = ap.parse_args()

    global WAIT_POLICY, MALLOC
    WAIT_POLICY = a.omp_wait_policy
    MALLOC = a.malloc
    threads = [int(t) for t in a.threads.split(",") if t]
    rows = [(m, q, b, t) for t in threads for (m, q, b) in ROWS
            if a.only in f"{m}/{'quant' if q else 'fp32'}/{b}"]
    cpu = cpu_model()
    print(f"CPU: {cpu}; {os.cpu_count()} logical CPUs; load average at start {load_average()}",
          flush=True)
    results = {r: ([], []) for r in rows}  # row -> (bitgrad ips per round, pytorch ips per round)
    for rnd in range(a.rounds):
        for i, (m, q, b, t) in enumerate(rows):
            busy = wait_quiet(a.quiet, a.max_wait) if a.quiet < 1 else None
            bitgrad_first = (rnd + i) % 2 == 0
            faults = [0, 0]
            for side in ((0, 1) if bitgrad_first else (1, 0)):
                if side == 0:
                    ips = run_bitgrad(a.bench, m, q, b, t, a.min_time)
                else:
                    ips = run_pytorch(a.python, m, q, b, t, a.min_time)
                results[(m, q, b, t)][side].append(ips)
                faults[side] = FAULTS[-1]
            bg, pt = results[(m, q, b, t)]
            print(f"  round {rnd + 1}/{a.rounds} {m} {'quant' if q else 'fp32'} batch {b} "
                  f"threads {t}: bitgrad {bg[-1]:.0f}, pytorch {pt[-1]:.0f} images/s; minor "
                  f"page faults bitgrad {faults[0] // 1000}k, pytorch {faults[1] // 1000}k "
                  f"(CPUs busy before: {'?' if busy is None else f'{100 * busy:.0f}%'}, "
                  f"load {load_average()})", file=sys.stderr, flush=True)

    table = []
    for (m, q, b, t), (bg, pt) in results.items():
        ratios = [x / y for x, y in zip(bg, pt)]
        table.append({"model": m, "quantized": q, "batch": b, "threads": t,
                      "bitgrad_ips": round(statistics.median(bg), 1),
                      "pytorch_ips": round(statistics.median(pt), 1),
                      "ratio": round(statistics.median(ratios), 3), "malloc": MALLOC})

    print(f"\nTraining images/s, medians of {a.rounds} alternating rounds "
          f"({a.min_time:g} s of timed steps each); ratio = median of per-round bitgrad/PyTorch.")
    print(f"CPU: {cpu}; load average at end {load_average()}; OMP_WAIT_POLICY "
          f"{WAIT_POLICY or os.environ.get('OMP_WAIT_POLICY', '(unset)')}; malloc {MALLOC}\n")
    print("| model | weights | batch | threads | bitgrad img/s | PyTorch img/s | bitgrad / PyTorch |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for r in table:
        print(f"| {NAMES[r['model']]} "
              f"| {'frac_bits' if r['quantized'] else 'FP32'} | {r['batch']} | {r['threads']} "
              f"| {r['bitgrad_ips']:.0f} | {r['pytorch_ips']:.0f} | {r['ratio']:.2f}x |")

    write_results(a.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
