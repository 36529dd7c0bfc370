#!/usr/bin/env python3
"""Predicted data-parallel scaling efficiency (docs/distributed.md, issue 21).

Model, per training step, with p ranks each computing b images:
    compute   t_c(b) = b * t_img                  (t_img: measured seconds per image, one rank)
    all-reduce t_ar(p) = 2 (p - 1) / p * S / BW + 2 (p - 1) * alpha      (ring all-reduce)
    efficiency E = t_c / (t_c + t_ar)             (no overlap of the all-reduce with compute)
S: bytes all-reduced per step (the gradient of every parameter, float32); BW: link bandwidth in
bytes/s; alpha: the latency of one message. E >= 0.8 needs t_c >= 4 t_ar, i.e. a per-rank batch
    b_80 = ceil(4 t_ar / t_img)      and a global batch p * b_80.

    python3 benchmarks/mpi/scaling_model.py --per-rank-batch 32 \\
        --model lenet5:178648:36.4e-6 --model vgg_small:3484368:1.1e-3 ...
(--model name:bytes:seconds_per_image). Prints Markdown tables.
"""
import argparse
import math


def allreduce_seconds(p, size_bytes, bandwidth_bytes_per_s, alpha_s):
    return 2 * (p - 1) / p * size_bytes / bandwidth_bytes_per_s + 2 * (p - 1) * alpha_s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="name:bytes:seconds_per_image")
    ap.add_argument("--ranks", default="8,64,512")
    ap.add_argument("--links-gbit", default="10,100", help="link bandwidths in Gb/s")
    ap.add_argument("--latency-us", default="5,20", help="per-message latencies alpha in microseconds")
    ap.add_argument("--per-rank-batch", type=int, default=32)
    args = ap.parse_args()
    models = []
    for m in args.model:
        name, size, t = m.split(":")
        models.append((name, int(size), float(t)))
    ranks = [int(x) for x in args.ranks.split(",")]
    links = [float(x) for x in args.links_gbit.split(",")]
    latencies = [float(x) for x in args.latency_us.split(",")]

    cases = [(g, a) for g in links for a in latencies]
    head = " | ".join(f"{g:g} Gb/s, {a:g} us" for g, a in cases)
    rule = "|".join(["---"] * 3 + ["--:"] * len(cases))

    print(f"Efficiency at {args.per_rank_batch} images per rank (t_ar in ms in brackets):\n")
    print(f"| model | ranks | compute ms | {head} |")
    print(f"|{rule}|")
    for name, size, t_img in models:
        t_c = args.per_rank_batch * t_img
        for p in ranks:
            cells = []
            for g, a in cases:
                t_ar = allreduce_seconds(p, size, g * 1e9 / 8, a * 1e-6)
                cells.append(f"{100 * t_c / (t_c + t_ar):.0f} % ({1e3 * t_ar:.2f})")
            print(f"| {name} | {p} | {1e3 * t_c:.2f} | " + " | ".join(cells) + " |")

    print("\nPer-rank batch b_80 (global batch p x b_80 in brackets) for >= 80 % efficiency:\n")
    print(f"| model | ranks | {head} |")
    print(f"|{'|'.join(['---'] * 2 + ['--:'] * len(cases))}|")
    for name, size, t_img in models:
        for p in ranks:
            cells = []
            for g, a in cases:
                t_ar = allreduce_seconds(p, size, g * 1e9 / 8, a * 1e-6)
                b = max(1, math.ceil(4 * t_ar / t_img))
                cells.append(f"{b} ({p * b})")
            print(f"| {name} | {p} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
