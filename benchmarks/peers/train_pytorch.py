#!/usr/bin/python3
"""Training throughput of LeNet-5, the small VGG-style net and ResNet-20 in PyTorch, the peer of
benchmarks/bench_train.cpp: same networks, same synthetic data, same optimizer, same quantizer.

Written the way a PyTorch user would write it: nn.Module layers, F.cross_entropy, torch.optim.Adam
with two parameter groups, and the frac_bits quantizer (Differentiable Fine-grained Quantization,
bitgrad's quant/frac_bits.hpp) as a custom autograd.Function applied to each layer's weight.

  frac_bits, per output channel g with a learnable real bitwidth b_g in [b_min, b_max]:
    k_lo = floor(b), k_hi = k_lo + 1, f = b - k_lo
    Q_b(w) = (1 - f) Q_klo(w) + f Q_khi(w),  Q_k(w) = s_k clamp(round(w / s_k), -L_k, L_k)
    L_k = 2^(k-1) - 1, s_k = max|w_g| / L_k (max-abs scale, treated as a constant)
    dL/dw = dL/dQ ((1-f) [|w/s_lo| <= L_lo] + f [|w/s_hi| <= L_hi])   (straight-through)
    dL/db = sum_g dL/dQ (Q_khi - Q_klo)
  (b_min = 2, so the 1-bit sign grid of bitgrad never occurs here.)
  Size penalty (hinge): P = lambda max(0, S / S* - 1), S = sum_g n_g b_g + 40 groups,
  S* = 3 bits * weights, lambda = 5; after each Adam step the bitwidths are clamped to range.

Data: 8 preloaded batches of random (N, 1, 28, 28) images, normal(0, 1), labels in [0, 10),
cycled. 3 warm-up steps, then timed steps until --min-time seconds have passed.
Prints one JSON line: {"model", "quantized", "batch", "threads", "steps", "seconds", "ips"}.

  OMP_NUM_THREADS=2 python3 benchmarks/peers/train_pytorch.py --model lenet5 --quant --batch 64
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

B_MIN, B_MAX, B_INIT = 2.0, 8.0, 7.5  # frac_bits defaults: b_init = b_max - 0.5
SCALE_FLOOR = 1e-12  # bitgrad's scale_floor<float>: a zero group keeps a finite step
GROUP_OVERHEAD_BITS = 40.0


class FracBitsQuant(torch.autograd.Function):
    """Fake-quantizes w (C_out, ...) per output channel with real bitwidths `bits` (C_out,)."""

    @staticmethod
    def forward(ctx, w, bits):
        wf = w.reshape(w.shape[0], -1)
        k_lo = torch.floor(bits)
        f = (bits - k_lo).unsqueeze(1)
        lim_lo = (torch.pow(2.0, k_lo - 1) - 1).unsqueeze(1)
        lim_hi = (torch.pow(2.0, k_lo) - 1).unsqueeze(1)
        max_abs = wf.abs().amax(dim=1, keepdim=True)
        s_lo = (max_abs / lim_lo).clamp_min(SCALE_FLOOR)
        s_hi = (max_abs / lim_hi).clamp_min(SCALE_FLOOR)
        r_lo = wf / s_lo
        r_hi = wf / s_hi
        q_lo = torch.maximum(torch.minimum(torch.round(r_lo), lim_lo), -lim_lo) * s_lo
        q_hi = torch.maximum(torch.minimum(torch.round(r_hi), lim_hi), -lim_hi) * s_hi
        diff = q_hi - q_lo
        pass_w = (1 - f) * (r_lo.abs() <= lim_lo) + f * (r_hi.abs() <= lim_hi)
        ctx.save_for_backward(pass_w, diff)
        ctx.shape = w.shape
        return (q_lo + f * diff).reshape(w.shape)

    @staticmethod
    def backward(ctx, grad_q):
        pass_w, diff = ctx.saved_tensors
        g = grad_q.reshape(pass_w.shape)
        return (g * pass_w).reshape(ctx.shape), (g * diff).sum(dim=1)


class FracBits(nn.Module):
    """The quantizer of one layer: one learnable bitwidth per output channel."""

    def __init__(self, channels, per_channel):
        super().__init__()
        self.bits = nn.Parameter(torch.full((channels,), B_INIT))
        self.per_channel = per_channel

    def forward(self, w):
        return FracBitsQuant.apply(w, self.bits)

    def size_bits(self):
        return self.per_channel * self.bits.sum() + GROUP_OVERHEAD_BITS * self.bits.numel()


class QConv2d(nn.Conv2d):
    def __init__(self, cin, cout, k, stride=1, padding=0, bias=True):
        super().__init__(cin, cout, k, stride=stride, padding=padding, bias=bias)
        self.quant = FracBits(cout, cin * k * k)

    def forward(self, x):
        return self._conv_forward(x, self.quant(self.weight), self.bias)


class QLinear(nn.Linear):
    def __init__(self, fin, fout):
        super().__init__(fin, fout)
        self.quant = FracBits(fout, fin)

    def forward(self, x):
        return F.linear(x, self.quant(self.weight), self.bias)


def lenet5(quantized):
    conv = QConv2d if quantized else nn.Conv2d
    fc = QLinear if quantized else nn.Linear
    return nn.Sequential(
        conv(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        conv(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        fc(256, 120), nn.ReLU(), fc(120, 84), nn.ReLU(), fc(84, 10))


def vgg_small(quantized, w=32, hidden=256):
    conv = QConv2d if quantized else nn.Conv2d
    fc = QLinear if quantized else nn.Linear
    return nn.Sequential(
        conv(1, w, 3, padding=1), nn.ReLU(), conv(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        conv(w, 2 * w, 3, padding=1), nn.ReLU(), conv(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        fc(2 * w * 7 * 7, hidden), nn.ReLU(), fc(hidden, 10))


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut projects (1x1 conv with
    the block's stride + bn) when the shape changes, as bitgrad's nn::resnet20."""

    def __init__(self, conv, cin, cout, stride):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 (He et al. 2016, the CIFAR variant) on 1-channel 28x28 inputs, width 16."""

    def __init__(self, quantized, in_channels=1, w=16, classes=10):
        super().__init__()
        conv = QConv2d if quantized else nn.Conv2d
        fc = QLinear if quantized else nn.Linear
        self.conv1 = conv(in_channels, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        layers = []
        cin = w
        for cout, stride in ((w, 1), (2 * w, 2), (4 * w, 2)):
            for i in range(3):
                layers.append(BasicBlock(conv, cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = fc(4 * w, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


MODELS = {"lenet5": lenet5, "vgg_small": vgg_small, "resnet20": ResNet20}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    ap.add_argument("--quant", action="store_true", help="learned bitwidths (frac_bits)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed steps")
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    net = MODELS[a.model](a.quant)
    net.train()
    quants = [m for m in net.modules() if isinstance(m, FracBits)]
    bits = [q.bits for q in quants]
    bit_ids = {id(p) for p in bits}
    others = [p for p in net.parameters() if id(p) not in bit_ids]
    groups = [{"params": others, "lr": 1e-3, "weight_decay": 0.0}]
    if bits:
        groups.append({"params": bits, "lr": 0.05, "weight_decay": 0.0})
    opt = torch.optim.Adam(groups)
    weights = sum(q.bits.numel() * q.per_channel for q in quants)
    target_bits, lam = 3.0 * weights, 5.0

    gen = torch.Generator().manual_seed(12345)
    data = [(torch.randn(a.batch, 1, 28, 28, generator=gen),
             torch.randint(0, 10, (a.batch,), generator=gen)) for _ in range(8)]

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        if quants:
            size = sum(q.size_bits() for q in quants)
            loss = loss + lam * F.relu(size / target_bits - 1)
        loss.backward()
        opt.step()
        if quants:
            with torch.no_grad():
                for b in bits:
                    b.clamp_(B_MIN, B_MAX)
        return loss

    i = 0
    for _ in range(a.warmup):
        step(*data[i % len(data)])
        i += 1
    steps = 0
    t0 = time.perf_counter()
    while True:
        step(*data[i % len(data)])
        i += 1
        steps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= a.min_time and steps >= 2:
            break
    print(json.dumps({"model": a.model, "quantized": a.quant, "batch": a.batch,
                      "threads": torch.get_num_threads(), "steps": steps, "seconds": elapsed,
                      "ips": steps * a.batch / elapsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
