#!/usr/bin/python3
"""Trains LeNet-5 in FP32 with PyTorch and saves its weights as an .npz that bitgrad loads by
parameter name (train/npz_import.hpp), e.g. to start learning bitwidths from it:

    /usr/bin/python3 examples/pytorch_lenet5.py --data /usr/share/datasets/fashion-mnist \\
        --epochs 10 --out runs/torch/lenet5.npz
    build/release/examples/fashion_mnist --init runs/torch/lenet5.npz --out runs/from-torch

Needs Debian's python3-torch and python3-numpy (scripts/install-bench-deps.sh); run it with
/usr/bin/python3, not a pyenv python3 earlier in PATH.

The network is bitgrad's nn::lenet5 layer for layer, with the same names: conv1 (1->6, 5x5),
relu, max pool 2, conv2 (6->16, 5x5), relu, max pool 2, flatten, fc1 (256->120), relu,
fc2 (120->84), relu, fc3 (84->10). Inputs are normalised as bitgrad's trainer does:
x = (pixel / 255 - 0.2860) / 0.3530, computed in float64 and rounded to float32.

Names and layouts in the .npz: PyTorch's state_dict keys are bitgrad's parameter names for
conv and linear layers (<layer>.weight, <layer>.bias) and the tensors are used as they are:
nn.Conv2d.weight (out, in/groups, kh, kw) and nn.Linear.weight (out, in) are bitgrad's layouts.
For batch norm (not in LeNet-5, handled for other networks) PyTorch's weight / bias become
bitgrad's gamma / beta, running_mean / running_var keep their names, num_batches_tracked is
dropped. Every array is saved as float32.

--logits FILE also writes the trained network's logits (float32, eval mode) on the sample's
images, training images first, then test images, for tests/interop/pytorch_init.sh.
"""
import argparse
import gzip
import json
import os

import numpy as np
import torch
import torch.nn as nn

MEAN, STDDEV = 0.2860, 0.3530


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def load(folder, split):
    images = read_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"))
    x = ((images.astype(np.float64) / 255.0 - MEAN) / STDDEV).astype(np.float32)
    return torch.from_numpy(x[:, None, :, :].copy()), torch.from_numpy(labels.astype(np.int64))


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(256, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def bitgrad_arrays(model):
    """The state_dict under bitgrad's parameter names (see the top of this file)."""
    batch_norms = {name for name, m in model.named_modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    out = {}
    for key, value in model.state_dict().items():
        layer, _, what = key.rpartition(".")
        if layer in batch_norms:
            if what == "num_batches_tracked":
                continue
            what = {"weight": "gamma", "bias": "beta"}.get(what, what)
        out[f"{layer}.{what}"] = value.detach().cpu().numpy().astype(np.float32)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help=".npz to write")
    p.add_argument("--logits", help="also write the logits on train + test images (float32)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "t10k")
    model = LeNet5()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for at in range(0, len(order), args.batch_size):
            idx = order[at:at + args.batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        test_logits = model(x_test)
        accuracy = (test_logits.argmax(1) == y_test).double().mean().item()
        if args.logits:
            os.makedirs(os.path.dirname(os.path.abspath(args.logits)), exist_ok=True)
            both = torch.cat([model(x_train), test_logits]).numpy().astype(np.float32)
            both.tofile(args.logits)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, **bitgrad_arrays(model))
    print(json.dumps({"test_accuracy": accuracy, "epochs": args.epochs, "out": args.out}))


if __name__ == "__main__":
    main()
