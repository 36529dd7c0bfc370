#!/usr/bin/env bash
# fashion_mnist --init W.npz: starts from the given FP32 weights, skips pretraining, then learns
# bitwidths from that start.
#   init_from_npz.sh bitgrad SAMPLE WORK FASHION_MNIST INTEROP_TOOL REPO
#       W.npz from a short bitgrad training (interop_tool train-fp32, saved with save_npz)
#   init_from_npz.sh pytorch SAMPLE WORK FASHION_MNIST INTEROP_TOOL REPO
#       W.npz from PyTorch (examples/pytorch_lenet5.py); first checks that bitgrad with the
#       loaded weights gives PyTorch's logits on the sample (max difference <= 1e-4).
#       Exits 77 (ctest: skipped) when Debian's python3-torch is not installed.
set -euo pipefail
mode=$1 sample=$2 work=$3 fashion_mnist=$4 tool=$5 repo=$6
python=/usr/bin/python3
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1
fail() { echo "FAILED: $*" >&2; exit 1; }
json() { "$python" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

if [ "$mode" = pytorch ]; then
  if ! "$python" -c 'import torch, numpy' 2>/dev/null; then
    echo "SKIP: Debian's python3-torch is not installed (scripts/install-bench-deps.sh installs it)"
    exit 77
  fi
  "$python" "$repo/examples/pytorch_lenet5.py" --data "$sample" --epochs 3 --seed 2 \
    --out "$work/weights.npz" --logits "$work/torch_logits.f32" | tail -n 1 > "$work/trained.json"
  "$tool" npz-logits "$work/weights.npz" --data "$sample" --compare "$work/torch_logits.f32" \
    --tolerance 1e-4
else
  "$tool" train-fp32 --data "$sample" --epochs 3 --seed 2 --out "$work/weights.npz" \
    > "$work/trained.json"
fi
trained=$(json "$work/trained.json" test_accuracy)

"$fashion_mnist" --data "$sample" --init "$work/weights.npz" --search-epochs 1 \
  --finetune-epochs 1 --threads 1 --out "$work/run" > "$work/run.log"
grep -q "FP32 weights from $work/weights.npz (pretraining skipped)" "$work/run.log" ||
  fail "no 'pretraining skipped' line in $work/run.log"
! grep -q '^pretrain,' "$work/run/log.csv" || fail "pretraining epochs were run"
grep -q '^search,' "$work/run/log.csv" || fail "no bitwidth search after --init"
[ -s "$work/run/model.bgm" ] || fail "no model.bgm"
fp32=$(json "$work/run/summary.json" fp32_accuracy)
bits=$(json "$work/run/summary.json" average_bits)
echo "trained FP32 test accuracy $trained; fashion_mnist --init reports FP32 $fp32, then learns" \
     "$bits bits per weight on average"
"$python" - "$mode" "$trained" "$fp32" "$bits" <<'PY'
import sys
mode, trained, fp32, bits = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
# Same library and evaluation: identical. PyTorch: its test accuracy within one image of 400
# (a near-tie may fall either way between the two frameworks' float sums).
tolerance = 0.0 if mode == "bitgrad" else 1.0 / 400 + 1e-12
if abs(trained - fp32) > tolerance:
    sys.exit(f"FAILED: FP32 accuracy after --init {fp32} is not the loaded weights' {trained}")
if fp32 < 0.3:
    sys.exit(f"FAILED: FP32 accuracy {fp32} is that of an untrained network")
if not bits < 8:
    sys.exit(f"FAILED: average bits {bits}: no bitwidths learned")
PY

# Bad input: a missing file and an .npz whose names do not fit are refused, naming the problem.
if "$fashion_mnist" --data "$sample" --init "$work/missing.npz" --out "$work/bad" \
     > "$work/bad.log" 2>&1; then fail "--init of a missing file succeeded"; fi
grep -q "missing.npz" "$work/bad.log" || fail "the error does not name the missing file"
if "$fashion_mnist" --data "$sample" --model vgg-small --init "$work/weights.npz" \
     --out "$work/bad" > "$work/bad.log" 2>&1; then fail "--init of LeNet-5 weights into vgg-small"; fi
grep -q "no array 'conv3.weight'\|has shape" "$work/bad.log" ||
  { cat "$work/bad.log" >&2; fail "the error does not name the array"; }
echo "ok"
