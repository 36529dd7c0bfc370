#!/usr/bin/python3
"""Checks bitgrad's ONNX exports with the official ONNX Python package (Debian python3-onnx).

  check_onnx.py WORK [--full-grid]

WORK holds what tests/interop/make_case.sh wrote: model-float32.onnx, model-qdq.onnx,
weights.npz (inspect_model --npz of the .bgm: the decoded weights, bitwidths, group scales,
channel scales and biases) and ref/ (interop_tool reference: meta.json, pixels.u8, input.f32).

For the float32 and qdq forms:
  1. onnx.load parses the file (bitgrad writes the protobuf encoding itself) and
     onnx.checker.check_model(model, full_check=True) passes (full_check runs strict shape
     inference too); opset and IR version are those docs/onnx.md states.
  2. Every node is one of the documented mapping's operators.
  3. Weights: float32 form, every Conv / Gemm weight initializer equals the .bgm's decoded weight
     (code * scale * channel scale) exactly. QDQ form, every weight is DequantizeLinear(int8,
     per-channel scale, axis 0): where every group has <= 8 bits the int8 values are the codes
     (within each group's code range) and scale[o] = float32(group scale * channel scale[o]);
     otherwise each value is within half a step of the weight. Biases equal the .bgm's (in the
     QDQ form added by an Add right after the Conv / Gemm).
     --full-grid (the case full, issue #24): the codes are on the full grid, down to
     -2^(k-1), and every output channel of every quantized weight holds that lowest code.
  4. The input contract in the metadata (bitgrad.mean, bitgrad.stddev) turns the 8-bit pixels
     into exactly the float32 input bitgrad's runtime used.
"""
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

FLOAT_OPS = {"Conv", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Relu",
             "Clip", "Add"}
QDQ_OPS = FLOAT_OPS | {"QuantizeLinear", "DequantizeLinear"}
# act_quant (learned activation grids) in every form: [Max, Min,] QuantizeLinear, DequantizeLinear
ACT_OPS = {"Max", "Min", "QuantizeLinear", "DequantizeLinear"}


class Failure(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise Failure(message)


def attribute(node, name):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def check_weights(model, form, npz, full_grid=False):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layers = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        layers += 1
        name = node.name
        weight = npz[name + ".weight"]
        if node.op_type == "Gemm":
            expect(attribute(node, "transB") == 1, f"{name}: Gemm without transB = 1")
        # The bias: Conv / Gemm's third input (float32 form) or an Add right after (QDQ forms).
        bias = None
        if len(node.input) > 2:
            bias = inits[node.input[2]]
        else:
            users = consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add":
                other = [i for i in users[0].input if i != node.output[0]]
                if len(other) == 1 and other[0] in inits:
                    bias = inits[other[0]]
        if name + ".bias" in npz:
            expect(bias is not None, f"{name}: the .bgm has a bias, the ONNX graph none")
            expect(np.array_equal(bias.reshape(-1), npz[name + ".bias"]),
                   f"{name}: bias differs from the .bgm's")
            expect(form != "float32" or len(node.input) == 3, f"{name}: float32 bias not in node")
        else:
            expect(bias is None, f"{name}: a bias the .bgm does not have")
        if form == "float32":
            w = inits.get(node.input[1])
            expect(w is not None, f"{name}: weight is not an initializer in the float32 form")
            expect(w.dtype == np.float32, f"{name}: weight dtype {w.dtype}")
            expect(np.array_equal(w, weight),
                   f"{name}: float32 weight differs from the .bgm's decoded weight "
                   f"(max diff {np.abs(w - weight).max()})")
            continue
        dq = producers.get(node.input[1])
        expect(dq is not None and dq.op_type == "DequantizeLinear",
               f"{name}: weight does not come from DequantizeLinear")
        expect(attribute(dq, "axis") == 0, f"{name}: weight DequantizeLinear axis is not 0")
        q, scale, zero = (inits[i] for i in dq.input)
        out = weight.shape[0]
        expect(q.dtype == np.int8 and zero.dtype == np.int8, f"{name}: weights not int8")
        expect(scale.shape == (out,) and zero.shape == (out,),
               f"{name}: scale / zero point not per output channel: {scale.shape}")
        expect(not zero.any(), f"{name}: non-zero weight zero point")
        expect(q.shape == weight.shape, f"{name}: quantized weight shape {q.shape}")
        per = q.reshape(out, -1).astype(np.float64)
        deq = per * scale.astype(np.float64)[:, None]
        flat = weight.reshape(out, -1).astype(np.float64)
        bits = npz.get(name + ".bits")
        if bits is not None and bits.max() <= 8:
            groups = len(bits)
            cs = npz.get(name + ".channel_scale", np.ones(out, np.float32))
            gscale = npz[name + ".scale"]
            # The group size is not in the .npz: any size giving this many groups may match.
            sizes = [g for g in range(1, out + 1) if math.ceil(out / g) == groups]
            match = None
            for g in sizes:
                want = (gscale[np.arange(out) // g] * cs).astype(np.float32)
                if np.array_equal(want, scale):
                    match = g
                    break
            expect(match is not None,
                   f"{name}: scale[o] is not float32(group scale * channel scale[o])")
            limit = np.array([1 if k == 1 else 2 ** (k - 1) - 1 for k in bits])
            lowest = np.array([-1 if k == 1 else -(2 ** (k - 1)) if full_grid else
                               -(2 ** (k - 1) - 1) for k in bits])
            lim = limit[np.arange(out) // match][:, None]
            low = lowest[np.arange(out) // match][:, None]
            expect(((per <= lim) & (per >= low)).all(), f"{name}: a code outside its group's range")
            if full_grid:
                expect((per.min(axis=1) == low[:, 0]).all(),
                       f"{name}: a channel without its lowest code -2^(k-1): "
                       f"{per.min(axis=1)} vs {low[:, 0]}")
            expect(np.allclose(deq, flat, rtol=2e-6, atol=0),
                   f"{name}: code * scale differs from the .bgm's weight "
                   f"(max diff {np.abs(deq - flat).max()})")
        else:
            step = scale.astype(np.float64)[:, None]
            expect((np.abs(deq - flat) <= step * 0.5 * (1 + 1e-5)).all(),
                   f"{name}: requantized weight more than half a step from the .bgm's")
    expect(layers > 0, "no Conv / Gemm nodes")
    return layers


def check_contract(model, ref):
    meta = {p.key: p.value for p in model.metadata_props}
    mean = json.loads(meta["bitgrad.mean"])
    stddev = json.loads(meta["bitgrad.stddev"])
    info = json.load(open(os.path.join(ref, "meta.json")))
    shape = info["input_shape"]
    channels = shape[0]
    pixels = np.fromfile(os.path.join(ref, "pixels.u8"), dtype=np.uint8)
    pixels = pixels.reshape(info["images"], channels, -1).astype(np.float64)
    mean = np.array(mean if mean else [0.0], np.float64)
    stddev = np.array(stddev if stddev else [1.0], np.float64)
    mean = np.broadcast_to(mean, (channels,))[None, :, None]
    stddev = np.broadcast_to(stddev, (channels,))[None, :, None]
    x = ((pixels / 255.0 - mean) / stddev).astype(np.float32).reshape(-1)
    bitgrad = np.fromfile(os.path.join(ref, "input.f32"), dtype=np.float32)
    expect(np.array_equal(x, bitgrad),
           "the metadata's normalisation does not reproduce bitgrad's input "
           f"(max diff {np.abs(x - bitgrad).max()})")
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    expect(dims == ["batch"] + shape, f"input shape {dims}, expected ['batch'] + {shape}")
    out = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    expect(out[0] == "batch", f"output shape {out}")


def main():
    work = sys.argv[1]
    full_grid = "--full-grid" in sys.argv[2:]
    npz = dict(np.load(os.path.join(work, "weights.npz")))
    for form in ("float32", "qdq"):
        path = os.path.join(work, f"model-{form}.onnx")
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        opsets = [(o.domain, o.version) for o in model.opset_import]
        expect(opsets == [("", 13)], f"{form}: opset_import {opsets}, expected [('', 13)]")
        expect(model.ir_version == 7, f"{form}: IR version {model.ir_version}, expected 7")
        ops = {n.op_type for n in model.graph.node}
        allowed = (FLOAT_OPS if form == "float32" else QDQ_OPS) | ACT_OPS
        expect(ops <= allowed, f"{form}: unexpected operators {sorted(ops - allowed)}")
        meta = {p.key: p.value for p in model.metadata_props}
        expect(meta.get("bitgrad.form") == form, f"{form}: metadata bitgrad.form {meta}")
        layers = check_weights(model, form, npz, full_grid)
        check_contract(model, os.path.join(work, "ref"))
        print(f"{path}: onnx {onnx.__version__} check_model(full_check=True) passed; "
              f"{len(model.graph.node)} nodes ({', '.join(sorted(ops))}); {layers} weight layers "
              f"match the .bgm; input contract reproduces bitgrad's input; "
              f"{os.path.getsize(path)} bytes")


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"check_onnx.py: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
