#!/usr/bin/python3
"""Inference speed of LeNet-5, the small VGG-style net and ResNet-20 in PyTorch, the peer of
bitgrad's runtime in `make bench-deploy` (benchmarks/peers/run_deploy.py): the same networks as
train_pytorch.py (FP32, random weights), eval mode under torch.inference_mode().

Engines:
  fp32          the network as is
  int8_dynamic  torch.ao.quantization.quantize_dynamic of the nn.Linear layers to qint8 (the
                convolutions stay FP32: dynamic quantization has no conv)
  int8_static   FX graph-mode post-training static quantization (prepare_fx / convert_fx) of the
                whole network: int8 weights per channel, quint8 activations, conv + batch norm +
                ReLU and add + ReLU fused by FX; calibrated on 8 batches of 32 random-normal
                images; quantized backend onednn when this PyTorch has it, else qnnpack (Debian's
                1.13 build has no fbgemm)

Input: random normal (batch, 1, 28, 28). 3 warm-up calls, then timed calls until --min-time
seconds have passed. Prints one JSON line: {"engine", "batch", "threads", "calls", "ips",
"p50_us", "p99_us", "peak_rss_kb"} (p50 / p99 over the timed calls; peak RSS of this process,
ru_maxrss).

  OMP_NUM_THREADS=1 /usr/bin/python3 benchmarks/peers/infer_pytorch.py --model lenet5 --batch 1
"""
import argparse
import json
import pathlib
import resource
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_pytorch import ResNet20, lenet5, vgg_small  # noqa: E402  (the same networks)

MODELS = {"lenet5": lenet5, "vgg_small": vgg_small, "resnet20": ResNet20}


def quantize_static_fx(net):
    """Post-training static int8 through FX, the way PyTorch 1.13's documentation does it."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engines = torch.backends.quantized.supported_engines
    backend = next(e for e in ("x86", "fbgemm", "onednn", "qnnpack") if e in engines)
    torch.backends.quantized.engine = backend
    prepared = prepare_fx(net, get_default_qconfig_mapping(backend),
                          example_inputs=(torch.randn(1, 1, 28, 28),))
    with torch.inference_mode():
        for _ in range(8):
            prepared(torch.randn(32, 1, 28, 28))
    return convert_fx(prepared)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    ap.add_argument("--engine", choices=["fp32", "int8_dynamic", "int8_static"], default="fp32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=1.0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    net = MODELS[a.model](False).eval()
    if a.engine == "int8_dynamic":
        net = torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
    elif a.engine == "int8_static":
        net = quantize_static_fx(net)
    x = torch.randn(a.batch, 1, 28, 28)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        start = time.perf_counter()
        while time.perf_counter() - start < a.min_time or len(times) < 5:
            t0 = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - t0) * 1e6)
    s = sorted(times)
    pct = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    print(json.dumps({"engine": a.engine, "model": a.model, "batch": a.batch,
                      "threads": a.threads, "calls": len(times),
                      "ips": round(a.batch * len(times) / (sum(times) * 1e-6), 1),
                      "p50_us": round(pct(0.5), 1), "p99_us": round(pct(0.99), 1),
                      "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
