#!/usr/bin/env bash
# Builds one ONNX test case: a .bgm model, its three ONNX forms, its decoded weights (.npz)
# and bitgrad's runtime outputs, for check_onnx.py and run_ort.mjs.
#   make_case.sh CASE SAMPLE_DIR WORK FASHION_MNIST BGM_TO_ONNX INSPECT_MODEL INTEROP_TOOL
# CASE lenet5: LeNet-5 trained briefly on the sample with examples/fashion_mnist; inputs: the
#              sample's 1600 images (train then test).
# CASE zoo:    interop_tool's model with every operation a .bgm can hold; 512 random images.
# CASE act:    interop_tool's model with learned activation grids (act_quant); 512 random images.
# CASE full:   interop_tool's model with full-grid weights, every channel at its lowest code
#              -2^(k-1) (2, 3, 4 and 8 bits); 512 random images.
set -euo pipefail
case_name=$1 sample=$2 work=$3 fashion_mnist=$4 bgm_to_onnx=$5 inspect_model=$6 tool=$7
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1
if [ "$case_name" = lenet5 ]; then
  "$fashion_mnist" --data "$sample" --pretrain-epochs 3 --search-epochs 2 \
    --finetune-epochs 1 --threads 1 --seed 3 --out "$work/train" > "$work/train.log"
  cp "$work/train/model.bgm" "$work/model.bgm"
  "$tool" reference "$work/model.bgm" "$work/ref" --data "$sample"
else
  "$tool" "$case_name" "$work/model.bgm"
  "$tool" reference "$work/model.bgm" "$work/ref" --random 512 --seed 7
fi
for form in float32 qdq qdq-int4; do
  "$bgm_to_onnx" "$work/model.bgm" -o "$work/model-$form.onnx" --form "$form"
done
"$inspect_model" "$work/model.bgm" --npz "$work/weights.npz" > "$work/inspect.txt"
