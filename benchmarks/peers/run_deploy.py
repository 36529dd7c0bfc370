#!/usr/bin/python3
"""Inference speed, bitgrad's runtime against PyTorch on this machine (`make bench-deploy`):
for LeNet-5, the VGG-style net and ResNet-20 (--models), batch 1 and 256, 1 and 2 threads, runs alternately, row by
row, for several rounds, each engine in a process of its own:

  bitgrad_int           the packed integer engine (bench_inference --deploy-run FILE int ...)
  bitgrad_float         the runtime's float path  (bench_inference --deploy-run FILE float ...)
  pytorch_fp32          PyTorch FP32, eval, inference_mode      (infer_pytorch.py)
  pytorch_int8_dynamic  PyTorch dynamic int8 of the linear layers (infer_pytorch.py)
  pytorch_int8_static   PyTorch static int8 of the whole net through FX (infer_pytorch.py)
  onnxruntime_fp32      ONNX Runtime (npm onnxruntime-node, CPU) on the float32 ONNX export of
                        the same .bgm (examples/bgm_to_onnx; ort_infer.mjs)
  onnxruntime_qdq       ONNX Runtime on the QDQ (int8 QuantizeLinear/DequantizeLinear) export

The bitgrad models are written once by `bench_inference --deploy-export` (frac_bits frozen at 4
bits, calibrated on random inputs); the PyTorch nets are the same architectures in FP32.
Within a round the engines' order rotates, so a change in load hits them alike. Reports the
medians over rounds: images/s per row and engine, batch-1 latency p50 / p99 (us) and the peak
resident memory (KiB, ru_maxrss of the engine's process) per engine. Prints a Markdown table
and writes the rows as JSON to --out:

  [{"model", "batch", "threads", "ips": {"bitgrad_int": ..., "bitgrad_float": ...,
    "pytorch_fp32": ..., "pytorch_int8_dynamic": ...},
    "p50_us": {...}, "p99_us": {...}, "peak_rss_kb": {...}}, ...]

Threads: OMP_NUM_THREADS=t for every process and torch.set_num_threads(t). Memory (--malloc,
as in run_peers.py): `retain` (the default) keeps freed memory in every engine's process; with
glibc's defaults PyTorch gives its batch-256 activations back to the kernel and faults them in
again on every call (ResNet-20, batch 256, 1 thread: 4x slower in FP32, 2.3x in static int8,
with 3-5x the minor page faults; 2026-12-04).

  make bench-deploy                     (ROUNDS=5 by default)
  /usr/bin/python3 benchmarks/peers/run_deploy.py --bench build/bench/benchmarks/bench_inference
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import run_peers  # noqa: E402
from run_peers import cpu_model, env_for, load_average, wait_quiet, write_results  # noqa: E402

ENGINES = ["bitgrad_int", "bitgrad_float", "pytorch_fp32", "pytorch_int8_dynamic",
           "pytorch_int8_static", "onnxruntime_fp32", "onnxruntime_qdq"]
PYTORCH_ENGINES = {"pytorch_fp32": "fp32", "pytorch_int8_dynamic": "int8_dynamic",
                   "pytorch_int8_static": "int8_static"}
ORT_FORMS = {"onnxruntime_fp32": "float32", "onnxruntime_qdq": "qdq"}
NAMES = {"lenet5": "LeNet-5", "vgg_small": "VGG-style", "resnet20": "ResNet-20"}


def run_engine(a, models_dir, engine, model, batch, threads):
    if engine.startswith("bitgrad"):
        cmd = [a.bench, "--deploy-run", str(models_dir / f"{model}.bgm"),
               "int" if engine == "bitgrad_int" else "float", str(batch), str(threads),
               str(a.min_time)]
    elif engine in ORT_FORMS:
        onnx = models_dir / f"{model}-{ORT_FORMS[engine]}.onnx"
        cmd = [a.node, str(HERE / "ort_infer.mjs"), str(onnx), "--batch", str(batch),
               "--threads", str(threads), "--seconds", str(a.min_time)]
        r = json.loads(subprocess.run(cmd, env=env_for(threads), check=True, capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1])
        # ort_infer.mjs reports milliseconds; the table is in microseconds.
        return dict(r, p50_us=1000 * r["p50_ms"], p99_us=1000 * r["p99_ms"])
    else:
        cmd = [a.python, str(HERE / "infer_pytorch.py"), "--model", model, "--engine",
               PYTORCH_ENGINES[engine], "--batch", str(batch),
               "--threads", str(threads), "--min-time", str(a.min_time)]
    out = subprocess.run(cmd, env=env_for(threads), check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=str(ROOT / "build/bench/benchmarks/bench_inference"))
    ap.add_argument("--python", default="/usr/bin/python3", help="the Python that has torch")
    ap.add_argument("--node", default="node", help="Node.js, for ONNX Runtime (onnxruntime-node)")
    ap.add_argument("--bgm-to-onnx", default=str(ROOT / "build/bench/examples/bgm_to_onnx"),
                    help="examples/bgm_to_onnx, which writes the ONNX Runtime engines' models")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--models", default="lenet5,vgg_small,resnet20")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--quiet", type=float, default=0.25,
                    help="before each row, wait until other processes keep the CPUs at most "
                    "this busy (1 = never wait)")
    ap.add_argument("--max-wait", type=float, default=30.0)
    ap.add_argument("--malloc", choices=["retain", "glibc"], default="retain",
                    help="glibc malloc settings for every engine's process (run_peers.py): "
                    "retain = freed memory stays in the process; glibc = defaults, under which "
                    "PyTorch faults its activations in again on every call at batch 256")
    ap.add_argument("--out", default=str(ROOT / "build/bench/results/deploy.json"))
    a = ap.parse_args()
    run_peers.MALLOC = a.malloc

    engines = [e for e in a.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            ap.error(f"--engines: unknown engine {e}; known: {', '.join(ENGINES)}")
    models_dir = pathlib.Path(a.out).parent / "deploy-models"
    subprocess.run([a.bench, "--deploy-export", str(models_dir)], check=True)
    models = [m for m in a.models.split(",") if m]
    for e in [e for e in engines if e in ORT_FORMS]:
        for m in models:
            subprocess.run([a.bgm_to_onnx, str(models_dir / f"{m}.bgm"), "-o",
                            str(models_dir / f"{m}-{ORT_FORMS[e]}.onnx"), "--form", ORT_FORMS[e]],
                           check=True, capture_output=True)
    rows = [(m, int(b), int(t)) for m in a.models.split(",") if m
            for b in a.batches.split(",") if b for t in a.threads.split(",") if t]
    cpu = cpu_model()
    print(f"CPU: {cpu}; {os.cpu_count()} logical CPUs; load average at start {load_average()}",
          flush=True)
    results = {r: {e: [] for e in engines} for r in rows}
    for rnd in range(a.rounds):
        for i, row in enumerate(rows):
            if a.quiet < 1:
                wait_quiet(a.quiet, a.max_wait)
            shift = (rnd + i) % len(engines)
            for e in engines[shift:] + engines[:shift]:
                results[row][e].append(run_engine(a, models_dir, e, *row))
            print(f"  round {rnd + 1}/{a.rounds} {row}: " +
                  ", ".join(f"{e} {results[row][e][-1]['ips']:.0f}" for e in engines) +
                  f" images/s (load {load_average()})", file=sys.stderr, flush=True)

    def med(runs, key):
        return round(statistics.median(r[key] for r in runs), 1)

    table = []
    for (m, b, t), per in results.items():
        table.append({"model": m, "batch": b, "threads": t,
                      "ips": {e: med(per[e], "ips") for e in engines},
                      "p50_us": {e: med(per[e], "p50_us") for e in engines},
                      "p99_us": {e: med(per[e], "p99_us") for e in engines},
                      "peak_rss_kb": {e: med(per[e], "peak_rss_kb") for e in engines}})

    print(f"\nInference images/s, medians of {a.rounds} rounds ({a.min_time:g} s each, engines "
          f"alternating). CPU: {cpu}; load average at end {load_average()}; malloc "
          f"{run_peers.MALLOC}\n")
    int8_peers = [e for e in ("pytorch_int8_dynamic", "pytorch_int8_static") if e in engines]
    print("| model | batch | threads | " + " | ".join(engines) +
          " | int / pytorch_fp32 | int / best pytorch int8 |")
    print("|---|--:|--:|" + "--:|" * len(engines) + "--:|--:|")
    for r in table:
        ips = r["ips"]
        ratio = (f"{ips['bitgrad_int'] / ips['pytorch_fp32']:.2f}x"
                 if "bitgrad_int" in engines and "pytorch_fp32" in engines else "")
        ratio_int8 = (f"{ips['bitgrad_int'] / max(ips[e] for e in int8_peers):.2f}x"
                      if "bitgrad_int" in engines and int8_peers else "")
        print(f"| {NAMES.get(r['model'], r['model'])} | {r['batch']} | {r['threads']} | " +
              " | ".join(f"{ips[e]:.0f}" for e in engines) + f" | {ratio} | {ratio_int8} |")
    print("\nBatch-1 latency p50 / p99 (us) and peak RSS (MiB) per engine:\n")
    print("| model | threads | " + " | ".join(engines) + " |")
    print("|---|--:|" + "---|" * len(engines))
    for r in table:
        if r["batch"] != 1:
            continue
        print(f"| {NAMES.get(r['model'], r['model'])} | {r['threads']} | " +
              " | ".join(f"{r['p50_us'][e]:.0f} / {r['p99_us'][e]:.0f}, "
                         f"{r['peak_rss_kb'][e] / 1024:.0f} MiB" for e in engines) + " |")

    write_results(a.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
