#!/usr/bin/env bash
# One end-to-end test per command-line option of the examples and of the Pareto study
# (issue #17): each case runs the program on the committed Fashion-MNIST sample with a few steps
# per epoch and checks that the option changes what it says it changes, and that its bad values
# stop the program with a message in the user's terms.
#
#   cli_options.sh CASE WORK_DIR SAMPLE_DIR FASHION_MNIST DEPLOY INSPECT_MODEL [OTHER]
#
# OTHER is the program of the cases named after it: pareto for pareto_*, quickstart, bgm_to_onnx.
# A program a case does not run may be given as "-".
#
# The deploy_* and inspect_* cases read the model written by the make_model case (a CTest
# fixture). JSON and CSV are read with Debian's /usr/bin/python3 (standard library only).
set -euo pipefail
case_name=$1 work=$2 data=$3 fm=$4 deploy=$5 inspect=$6 other=${7:--}
pareto=$other quickstart=$other bgm_to_onnx=$other
model_dir=$(dirname "$work")/make_model
mkdir -p "$work"
export OMP_WAIT_POLICY=PASSIVE
python=/usr/bin/python3

fail() {
  echo "FAIL ($case_name): $*" >&2
  exit 1
}

# A few steps of every phase, one thread; an option given to run/rejects replaces its default
# here (CLI11 refuses an option given twice).
defaults=(--data "$data" --threads 1 --pretrain-epochs 1 --search-epochs 1 --finetune-epochs 1
          --max-steps 2)
with_defaults() {
  args=()
  local i
  for ((i = 0; i < ${#defaults[@]}; i += 2)); do
    local option=${defaults[$i]} given=0 a
    for a in "$@"; do [ "$a" = "$option" ] && given=1; done
    [ $given -eq 1 ] || args+=("$option" "${defaults[$((i + 1))]}")
  done
  args+=("$@")
}

# run NAME ARGS...: fashion_mnist into $work/NAME (log in $work/NAME.log); must succeed.
run() {
  local name=$1
  shift
  rm -rf "${work:?}/$name"
  mkdir -p "$(dirname "$work/$name")"
  with_defaults --out "$work/$name" "$@"
  if ! timeout 300 "$fm" "${args[@]}" > "$work/$name.log" 2>&1; then
    cat "$work/$name.log" >&2
    fail "fashion_mnist $* failed"
  fi
}

# expect_error MESSAGE PROGRAM ARGS...: non-zero exit (not a timeout: the value must be refused
# before any work) and MESSAGE in the output.
expect_error() {
  local message=$1 program=$2
  shift 2
  local status=0
  timeout 30 "$program" "$@" > "$work/error.log" 2>&1 || status=$?
  [ $status -ne 124 ] || fail "$(basename "$program") $* was accepted (still running after 30 s)"
  [ $status -ne 0 ] || fail "$(basename "$program") $* was accepted"
  grep -qF -- "$message" "$work/error.log" || {
    cat "$work/error.log" >&2
    fail "$(basename "$program") $*: expected the message '$message'"
  }
}
# rejects MESSAGE ARGS...: fashion_mnist with the defaults refuses ARGS.
rejects() {
  local message=$1
  shift
  rm -rf "$work/rejected"
  local a out=(--out "$work/rejected")
  for a in "$@"; do [ "$a" != --out ] || out=(); done
  with_defaults "${out[@]}" "$@"
  expect_error "$message" "$fm" "${args[@]}"
}

# value DIR EXPRESSION: a Python expression over s (summary.json of run DIR), L (its layers by
# name), E (the layers in order) and log (log.csv rows as dicts).
value() {
  "$python" - "$1" "$2" << 'EOF'
import csv, json, math, sys
d, expression = sys.argv[1], sys.argv[2]
try:
    s = json.load(open(d + "/summary.json"))
except FileNotFoundError:
    s = {"layers": []}
E = s["layers"]
L = {l["name"]: l for l in E}
log = list(csv.DictReader(open(d + "/log.csv"))) if __import__("os").path.exists(d + "/log.csv") else []
print(eval(expression))
EOF
}
# check DIR EXPRESSION: EXPRESSION is true for run DIR.
check() {
  local got
  got=$(value "$1" "$2")
  [ "$got" = True ] || fail "expected $2 for $(basename "$1") ($(value "$1" "[(l['name'], l['groups'], l['group_bits']) for l in E]" | cut -c1-400))"
}
# phase_rows DIR PHASE: that phase's rows of log.csv without the timings.
phase_rows() { grep "^$2," "$1/log.csv" | cut -d, -f1-8; }
same_phase() { [ "$(phase_rows "$1" "$3")" = "$(phase_rows "$2" "$3")" ] || fail "$3 rows of $(basename "$1") and $(basename "$2") differ"; }
other_phase() { [ "$(phase_rows "$1" "$3")" != "$(phase_rows "$2" "$3")" ] || fail "$3 rows of $(basename "$1") and $(basename "$2") are the same"; }
printed() { grep -qF -- "$2" "$work/$1.log" || { cat "$work/$1.log" >&2; fail "$1: expected '$2' in the output"; }; }
# sigint_after_checkpoint LOG CKPT: runs the study ("${args[@]}") in the background into LOG,
# sends it SIGINT once CKPT exists (or after 5 minutes), and checks its exit status is 130.
sigint_after_checkpoint() {
  local log=$1 ckpt=$2 pid status=0 i
  "$pareto" "${args[@]}" > "$log" 2>&1 &
  pid=$!
  for i in $(seq 1 6000); do
    [ -e "$ckpt" ] && break
    sleep 0.05
  done
  kill -INT "$pid"
  wait "$pid" || status=$?
  [ $status = 130 ] || { cat "$log" >&2; fail "$log: exit status $status after SIGINT, expected 130"; }
}

# The Pareto study (studies/pareto): `study NAME ARGS...` runs it into $work/NAME (log in
# $work/NAME.log; files already there stay, for --resume) with study_options, which ARGS may
# replace: LeNet-5, 1 seed, 1 epoch per phase on 64 images in 2 batches, 2 bits, the uniform and
# the frac_bits per-channel arm, no sensitivity (about a second a study).
study_options=(--seeds 1 --pretrain-epochs 1 --search-epochs 1 --finetune-epochs 1 --sizes 2
               --policies frac_bits --groups channel --sensitivity 0 --train-limit 64
               --batch-size 32 --threads 1)
with_study_defaults() {
  local defaults=("${study_options[@]}")
  with_defaults "$@"
  args=(--data "$data" "${args[@]}")
}
study() {
  local name=$1
  shift
  with_study_defaults --out "$work/$name" "$@"
  if ! timeout 300 "$pareto" "${args[@]}" > "$work/$name.log" 2>&1; then
    cat "$work/$name.log" >&2
    fail "pareto $* failed"
  fi
}
# results / layers NAME EXPRESSION: EXPRESSION over R (the rows of results.csv) or Y (those of
# layers.csv) of study NAME is true. arms NAME LIST: the arms of its results.csv, in order.
table_check() {
  local got
  got=$("$python" -c 'import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(eval(sys.argv[3], {sys.argv[2]: rows}))' "$work/$1/$2" "$3" "$4")
  [ "$got" = True ] || fail "expected $4 for study $1"
}
results() { table_check "$1" results.csv R "$2"; }
layers() { table_check "$1" layers.csv Y "$2"; }
arms() { results "$1" "[r['arm'] for r in R] == $2"; }
# same_tables A B: studies A and B have the same results.csv (but the seconds, the last column)
# and layers.csv.
same_tables() {
  diff <(rev "$work/$1/results.csv" | cut -d, -f2- | rev) <(rev "$work/$2/results.csv" | cut -d, -f2- | rev) ||
    fail "results.csv of $1 and $2 differ"
  cmp "$work/$1/layers.csv" "$work/$2/layers.csv" || fail "layers.csv of $1 and $2 differ"
}

lenet=(conv1 conv2 fc1 fc2 fc3)

case $case_name in
make_model)
  # The model the deploy_* and inspect_* cases read: groups of 4 channels.
  run model --group 4 --seed 3
  check "$work/model" "L['conv1']['groups'] == 2"
  [ -s "$work/model/model.bgm" ] || fail "no model.bgm"
  ;;

data)
  run sample
  printed sample "1200 train / 400 test images from $data"
  check "$work/sample" "0 < s['quant_accuracy'] <= 1"
  rejects "$work/missing/train-images-idx3-ubyte.gz" --data "$work/missing"
  ;;

model)
  run lenet
  check "$work/lenet" "[l['name'] for l in E] == ['conv1', 'conv2', 'fc1', 'fc2', 'fc3']"
  # The README's example, on the sample and one step.
  run vgg --model vgg-small --policy step_bits --target-bits 2.5 --train-limit 64 \
    --pretrain-epochs 0 --search-epochs 0 --finetune-epochs 0
  check "$work/vgg" "s['model'] == 'vgg-small' and s['average_bits'] <= 2.5"
  check "$work/vgg" "[l['name'] for l in E] == ['conv1', 'conv2', 'conv3', 'conv4', 'fc1', 'fc2']"
  check "$work/vgg" "[l['groups'] for l in E] == [32, 32, 64, 64, 256, 10]"
  rejects "--model: resnet not in {lenet5,vgg-small,resnet20}" --model resnet
  ;;

resnet20)
  # --model resnet20 (issue #24): nn::resnet20 with 1 input channel trains a few steps of every
  # phase, prints its layer table, exports model.bgm, and the float runtime gives the trainer's
  # quantized accuracy on the same test images. The sample's first 100 test images (every
  # evaluation of a ResNet-20 on the 400 takes seconds).
  small="$work/small-data"
  mkdir -p "$small"
  "$python" - "$data" "$small" << 'EOF'
import gzip, os, struct, sys
src, dst = sys.argv[1], sys.argv[2]
for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]:
    if not os.path.exists(os.path.join(dst, name)):
        os.symlink(os.path.join(src, name), os.path.join(dst, name))
for name, header in [("t10k-images-idx3-ubyte.gz", 16), ("t10k-labels-idx1-ubyte.gz", 8)]:
    raw = gzip.open(os.path.join(src, name)).read()
    dims = list(struct.unpack(">%dI" % (header // 4 - 1), raw[4:header]))
    per_item = (len(raw) - header) // dims[0]
    dims[0] = 100
    with gzip.open(os.path.join(dst, name), "wb") as f:
        f.write(raw[:4] + struct.pack(">%dI" % len(dims), *dims) + raw[header:header + 100 * per_item])
EOF
  run r20 --data "$small" --model resnet20 --train-limit 64 --batch-size 16
  printed r20 "resnet20: frac_bits in [2, 8] bits, from 7.5, group 1; conv1 and fc quantized like the others"
  grep -Eq "^layer2\.0\.conv1 +frac_bits +4608 +32 " "$work/r20.log" ||
    { cat "$work/r20.log" >&2; fail "the layer table has no layer2.0.conv1 row (4608 weights, 32 groups)"; }
  check "$work/r20" "s['model'] == 'resnet20' and len(E) == 22"
  check "$work/r20" "E[0]['name'] == 'conv1' and E[-1]['name'] == 'fc' and L['layer2.0.shortcut.conv']['params'] == 512"
  # The quantized weights of ResNet-20 on one input channel: conv1 16*9, 18 3x3 convs, the two
  # 1x1 projections, fc 64*10 (nn::resnet20's 272,186 parameters less 1,568 batch-norm and 10
  # bias values).
  check "$work/r20" "sum(l['params'] for l in E) == 270608"
  [ -s "$work/r20/model.bgm" ] || fail "no model.bgm"
  "$deploy" "$work/r20/model.bgm" --data "$small" --engine float > "$work/r20-deploy.log"
  trained=$(grep -o "^quantized accuracy *[0-9.]*%" "$work/r20.log" | grep -o "[0-9.]*%")
  deployed=$(grep -o "^float32  : accuracy [0-9.]*%" "$work/r20-deploy.log" | grep -o "[0-9.]*%")
  [ -n "$trained" ] && [ "$trained" = "$deployed" ] ||
    fail "the float runtime gives ${deployed:-nothing} on the exported resnet20, the trainer ${trained:-nothing}"
  # Uniform W4A4 (fixed_bits, activation quantizers after its 19 ReLUs): the BOPs the trainer
  # reports are the hand count of tests/unit/test_act_models.cpp at the chosen weight bits
  # (stem MACs x 8-bit image, the other convs x 4-bit activations, fc x the float average pool).
  run r20u --data "$small" --model resnet20 --policy fixed_bits --target-bits 4.5 --act-bits 4 --train-limit 64 \
    --batch-size 16 --pretrain-epochs 0 --search-epochs 0 --finetune-epochs 0
  check "$work/r20u" "len(s['activations']) == 19 and all(a['group_bits'] == [4] for a in s['activations'])"
  check "$work/r20u" "s['costs'][1]['value'] == E[0]['bits_mean'] * (112896 * 8 + 30908416 * 4 + 640 * 32)"
  check "$work/r20u" "s['costs'][2]['value'] == 50176 / 8"
  # A BOPs budget is honoured on the residual network (learned weight and activation bits).
  run r20b --data "$small" --model resnet20 --act-bits 6 --target-bops 2e8 --train-limit 64 --batch-size 16 \
    --pretrain-epochs 0 --finetune-epochs 0
  check "$work/r20b" "s['costs'][1]['target'] == 2e8 and s['costs'][1]['value'] <= 2e8 and s['costs'][1]['met']"
  printed r20b "budget 2e+08 BOPs, met"
  # Stopped after its first search epoch (--stop-after 2) and resumed, ResNet-20 ends where the
  # uninterrupted run ends, evaluations and exported model included: the checkpoint keeps the
  # batch norms' running statistics (format version 4; before, the resumed run went on from
  # mean 0, variance 1, and its accuracies and folded model.bgm differed).
  r20resume=(--data "$small" --model resnet20 --train-limit 64 --batch-size 16 --search-epochs 2)
  run r20straight "${r20resume[@]}"
  run r20resumed "${r20resume[@]}" --stop-after 2
  check "$work/r20resumed" "[r['phase'] for r in log] == ['pretrain', 'search']"
  with_defaults --out "$work/r20resumed" "${r20resume[@]}" --resume
  timeout 300 "$fm" "${args[@]}" > "$work/r20resumed-2.log" 2>&1 ||
    { cat "$work/r20resumed-2.log" >&2; fail "--resume of a resnet20 run failed"; }
  printed r20resumed-2 "resumed from $work/r20resumed/checkpoint.bin at search epoch 1"
  ! grep -q "holds no batch norm running statistics" "$work/r20resumed-2.log" ||
    fail "the resnet20 checkpoint has no batch norm statistics"
  diff <(grep -v '"seconds"' "$work/r20straight/summary.json") \
    <(grep -v '"seconds"' "$work/r20resumed/summary.json") || fail "the resumed resnet20 run differs"
  cmp "$work/r20straight/model.bgm" "$work/r20resumed/model.bgm" ||
    fail "the resumed resnet20 run's model.bgm differs"
  rejects "--policy: --model resnet20 is built with frac_bits and fixed_bits only, got step_bits" \
    --model resnet20 --policy step_bits
  rejects "--policy: --model resnet20 is built with frac_bits and fixed_bits only, got noise_bits" \
    --model resnet20 --policy noise_bits
  ;;

policy)
  for p in frac_bits step_bits noise_bits; do
    run "$p" --policy "$p"
    check "$work/$p" "[l['policy'] for l in E] == ['$p'] * 5"
  done
  # fixed_bits: one uniform bitwidth, the largest whose stored size fits --target-bits (3 by
  # default: 3 bits plus 40 bits per channel exceed it, so 2).
  run fixed --policy fixed_bits
  printed fixed "fixed_bits at 2 bits on the symmetric grid (the largest uniform bitwidth within the size target)"
  check "$work/fixed" "all(l['policy'] == 'fixed_bits' and set(l['group_bits']) == {2} for l in E)"
  run fixed4 --policy fixed_bits --target-bits 4.3
  check "$work/fixed4" "all(set(l['group_bits']) == {4} for l in E)"
  rejects "--policy: uniform not in" --policy uniform
  rejects "--b-min: has no effect with --policy fixed_bits" --policy fixed_bits --b-min 3
  rejects "--lambda: has no effect with --policy fixed_bits" --policy fixed_bits --lambda 1
  ;;

grid)
  # fixed_bits on the full grid (issue #24): at 2 bits the codes {-2, -1, 0, 1} instead of the
  # ternary {-1, 0, 1}; same stored size; the model file says version 3 and flags every
  # quantized tensor; the symmetric run is unchanged (version 1). Same seed: the same FP32
  # pretraining, then different quantized rows.
  run sym --policy fixed_bits --seed 3
  run full --policy fixed_bits --seed 3 --grid full
  printed full "fixed_bits at 2 bits on the full grid"
  printed full "initial step lsq"
  check "$work/full" "all(set(l['group_bits']) == {2} for l in E)"
  same_phase "$work/sym" "$work/full" pretrain
  other_phase "$work/sym" "$work/full" search
  [ "$(value "$work/sym" "s['size_bytes']")" = "$(value "$work/full" "s['size_bytes']")" ] ||
    fail "the full grid changed the stored size"
  versions=$("$python" - "$work/sym/model.bgm" "$work/full/model.bgm" << 'EOF2'
import struct, sys
print(" ".join(str(struct.unpack_from("<I", open(f, "rb").read(), 8)[0]) for f in sys.argv[1:]))
EOF2
)
  [ "$versions" = "1 3" ] || fail "model versions (symmetric, full): expected '1 3', got '$versions'"
  rejects "--grid: chooses the uniform grid of --policy fixed_bits" --policy frac_bits --grid full
  rejects "--grid: chooses the uniform grid of --policy fixed_bits" --grid symmetric
  rejects "--grid: wide not in {symmetric,full}" --policy fixed_bits --grid wide
  # --step-init mse: the step with the smallest squared error on the grid; the same pretraining.
  run mse --policy fixed_bits --seed 3 --grid full --step-init mse
  printed mse "fixed_bits at 2 bits on the full grid"
  printed mse "initial step mse"
  same_phase "$work/full" "$work/mse" pretrain
  other_phase "$work/full" "$work/mse" search # another initial step, another training
  rejects "--step-init: chooses the initial step of --policy fixed_bits" --step-init mse
  rejects "--step-init: best not in {lsq,mse}" --policy fixed_bits --step-init best
  ;;

group)
  run g4 --group 4
  check "$work/g4" "[l['groups'] for l in E] == [2, 4, 30, 21, 3]"
  run layer --group layer
  check "$work/layer" "[l['groups'] for l in E] == [1] * 5"
  run channel --group channel
  check "$work/channel" "[l['groups'] for l in E] == [6, 16, 120, 84, 10]"
  rejects "--group: expected a whole number >= 1 (channels per group), 'channel' or 'layer', got -3" --group -3
  rejects "--group: expected a whole number >= 1" --group 0
  rejects "--group: expected a whole number >= 1" --group 2x
  rejects "conv1: frac_bits: expected group_size <= channels (6)" --group 7
  ;;

target_bits)
  # The target counts stored bits (codes + 40 bits per group); the codes end below it.
  # 2.25: just above the smallest model --b-min 2 allows (2.214 with 40 bits per channel).
  for target in 2.4 2.25 4; do
    run "t$target" --target-bits "$target"
    check "$work/t$target" "s['average_bits'] <= $target"
    stored=$(sed -n 's/^stored bits *\([0-9.]*\) per weight.*/\1/p' "$work/t$target.log")
    [ -n "$stored" ] || fail "no 'stored bits' line"
    "$python" -c "import sys; sys.exit(not $stored <= $target)" ||
      fail "--target-bits $target: $stored stored bits per weight"
    grep -q "froze bitwidths within budget" "$work/t$target.log" || fail "no freeze line"
    ! grep -q "target unreachable" "$work/t$target.log" || fail "target $target unreachable"
  done
  check "$work/t4" "s['average_bits'] > 3.5" # a larger target gives a larger model
  check "$work/t2.25" "s['average_bits'] < 2.05"
  for bad in nan inf -1 0 17 abc; do
    rejects "--target-bits: expected a finite number in (0, 16], got $bad" --target-bits "$bad"
  done
  rejects "--target-bits: the smallest model the bitwidth bounds allow" --target-bits 1.5
  ;;

b_init)
  # Issue #24: the learned bitwidths start at --b-init (default --b-max - 0.5 = 7.5): the
  # pretraining is the same, the search starts (and, with 2 steps, stays) near it.
  run base --target-bits 4
  run changed --target-bits 4 --b-init 3
  same_phase "$work/base" "$work/changed" pretrain
  other_phase "$work/base" "$work/changed" search
  check "$work/changed" "float([r for r in log if r['phase'] == 'search'][0]['average_bits']) < 3.5"
  check "$work/base" "float([r for r in log if r['phase'] == 'search'][0]['average_bits']) > 6.5"
  printed changed "in [2, 8] bits, from 3"
  rejects "--b-init: expected a value in [--b-min, --b-max] = [2, 8], got 9" --b-init 9
  rejects "--b-init: expected a value in [--b-min, --b-max] = [3, 8], got 2.5" --b-min 3 \
    --b-init 2.5
  rejects "--b-init: expected a finite number in [1, 16], got nan" --b-init nan
  rejects "--b-init: has no effect with --policy fixed_bits" --policy fixed_bits --b-init 3
  ;;

budget_anneal | penalty_warmup)
  # Issue #24: the search's penalty schedule. With the target annealed over the whole search
  # (or the penalty weight warming up), the size after the first search epoch stays well above
  # where the plain penalty drives it; the frozen model meets --target-bits all the same.
  option=--${case_name//_/-}
  common=(--target-bits 2.5 --search-epochs 4 --max-steps 8 --bits-lr 0.5)
  run base "${common[@]}"
  run changed "${common[@]}" "$option" 1
  same_phase "$work/base" "$work/changed" pretrain
  other_phase "$work/base" "$work/changed" search
  first_search="float([r for r in log if r['phase'] == 'search'][0]['average_bits'])"
  base_bits=$(value "$work/base" "$first_search")
  # The anneal holds the size up by bits; the warm-up only by a tenth of a bit (Adam normalises
  # the bitwidth steps, so a smaller lambda hardly slows them while the penalty dominates).
  margin=$([ "$case_name" = budget_anneal ] && echo 1 || echo 0.05)
  check "$work/changed" "$first_search > $base_bits + $margin"
  for d in base changed; do
    stored=$(sed -n 's/^stored bits *\([0-9.]*\) per weight.*/\1/p' "$work/$d.log")
    "$python" -c "import sys; sys.exit(not $stored <= 2.5)" ||
      fail "$d: $stored stored bits per weight above the target 2.5"
  done
  [ "$case_name" != budget_anneal ] || printed changed "search: size target annealed from"
  for bad in nan -0.1 1.5; do
    rejects "$option: expected a finite number in [0, 1], got $bad" "$option" "$bad"
  done
  rejects "$option: has no effect with --policy fixed_bits" --policy fixed_bits "$option" 0.5
  ;;

b_bounds)
  # Every layer's groups, the first and the last included, within [b-min, b-max].
  run b35 --b-min 3 --b-max 5 --target-bits 8
  check "$work/b35" "all(3 <= b <= 5 for l in E for b in l['group_bits'])"
  check "$work/b35" "L['conv1']['bits_max'] == 5 and L['fc3']['bits_max'] == 5"
  run b23 --b-min 2 --b-max 3 --target-bits 8
  check "$work/b23" "all(2 <= b <= 3 for l in E for b in l['group_bits'])"
  check "$work/b23" "max(l['bits_max'] for l in E) == 3"
  rejects "--b-min: expected at most --b-max (4), got 6" --b-min 6 --b-max 4
  rejects "--b-min: expected a finite number in [1, 16], got 0" --b-min 0
  rejects "--b-min: expected a finite number in [1, 16], got nan" --b-min nan
  rejects "--b-max: expected a finite number in [1, 16], got 17" --b-max 17
  rejects "--b-min: step_bits needs at least 2" --policy step_bits --b-min 1
  ;;

edge_bits)
  run e8 --edge-bits 8 --b-max 4 --target-bits 6
  check "$work/e8" "set(L['conv1']['group_bits'] + L['fc3']['group_bits']) == {8}"
  check "$work/e8" "all(b <= 4 for n in ['conv2', 'fc1', 'fc2'] for b in L[n]['group_bits'])"
  printed e8 "conv1 and fc3 pinned at 8 bits"
  run fixed --policy fixed_bits --edge-bits 8
  check "$work/fixed" "set(L['conv1']['group_bits'] + L['fc3']['group_bits']) == {8}"
  check "$work/fixed" "set(L['fc1']['group_bits']) == {2}"
  for bad in 0 17 2.5 -1; do
    rejects "--edge-bits: expected a whole number in [1, 16], got $bad" --edge-bits "$bad"
  done
  rejects "--edge-bits: step_bits needs at least 2" --policy step_bits --edge-bits 1
  rejects "edge layers at --edge-bits" --edge-bits 16 --target-bits 2.3
  ;;

edge_group)
  run e --group 4 --edge-group layer
  check "$work/e" "[l['groups'] for l in E] == [1, 4, 30, 21, 1]"
  run c --group layer --edge-group channel
  check "$work/c" "[l['groups'] for l in E] == [6, 1, 1, 1, 10]"
  rejects "--edge-group: expected a whole number >= 1" --edge-group 0
  rejects "conv1: frac_bits: expected group_size <= channels (6)" --edge-group 8
  ;;

epochs)
  run e213 --pretrain-epochs 2 --search-epochs 1 --finetune-epochs 3
  check "$work/e213" "[r['phase'] for r in log] == ['pretrain'] * 2 + ['search'] + ['finetune'] * 3"
  run e020 --pretrain-epochs 0 --search-epochs 2 --finetune-epochs 0
  check "$work/e020" "[r['phase'] for r in log] == ['search'] * 2"
  for option in --pretrain-epochs --search-epochs --finetune-epochs; do
    rejects "$option: expected a whole number >= 0, got -1" "$option" -1
    rejects "$option: expected a whole number >= 0, got 1.5" "$option" 1.5
  done
  ;;

lr | search_lr | finetune_lr)
  # Each learning rate changes its own phase and none before it.
  option=--${case_name//_/-}
  run base
  run changed "$option" 0.02
  case $case_name in
  lr) other_phase "$work/base" "$work/changed" pretrain ;;
  search_lr)
    same_phase "$work/base" "$work/changed" pretrain
    other_phase "$work/base" "$work/changed" search
    ;;
  finetune_lr)
    same_phase "$work/base" "$work/changed" pretrain
    same_phase "$work/base" "$work/changed" search
    other_phase "$work/base" "$work/changed" finetune
    ;;
  esac
  for bad in nan inf 0 -1e-3; do
    rejects "$option: expected a finite number > 0, got $bad" "$option" "$bad"
  done
  ;;

bits_lr | lambda | bits_moment)
  # Options of the bitwidth search: the pretraining is the same, the search is not.
  option=--${case_name//_/-}
  run base
  case $case_name in
  bits_lr) run changed --bits-lr 0.5 ;;
  lambda) run changed --lambda 0 ;;
  bits_moment) run changed --bits-moment group ;;
  esac
  same_phase "$work/base" "$work/changed" pretrain
  other_phase "$work/base" "$work/changed" search
  case $case_name in
  bits_lr | lambda)
    for bad in nan inf -1; do
      rejects "$option: expected a finite number" "$option" "$bad"
    done
    ;;
  bits_moment) rejects "--bits-moment: channel not in" --bits-moment channel ;;
  esac
  [ "$case_name" != bits_lr ] || rejects "--bits-lr: expected a finite number > 0, got 0" --bits-lr 0
  rejects "$option: has no effect with --policy fixed_bits" --policy fixed_bits "$option" \
    "$([ "$case_name" = bits_moment ] && echo layer || echo 1)"
  ;;

batch_size)
  run b32 --batch-size 32 --train-limit 320 --max-steps 0
  printed b32 "10 steps per epoch of batch size 32"
  run b64 --batch-size 64 --train-limit 320 --max-steps 0
  printed b64 "5 steps per epoch of batch size 64"
  other_phase "$work/b32" "$work/b64" pretrain
  rejects "--batch-size: expected a whole number >= 1, got 0" --batch-size 0
  rejects "--batch-size: expected a whole number >= 1, got -1" --batch-size -1
  rejects "--batch-size: expected at most the 1200 training images, got 5000" --batch-size 5000
  ;;

seed)
  run a --seed 7
  run b --seed 7
  run c --seed 8
  diff <(grep -v '"seconds"' "$work/a/summary.json") <(grep -v '"seconds"' "$work/b/summary.json") ||
    fail "the same seed gave different summaries"
  cmp "$work/a/model.bgm" "$work/b/model.bgm" || fail "the same seed gave different model files"
  other_phase "$work/a" "$work/c" pretrain
  check "$work/c" "s['settings']['seed'] == '8'"
  rejects "--seed: expected a whole number >= 0, got -1" --seed -1
  rejects "--seed: expected a whole number >= 0, got 1e3" --seed 1e3
  ;;

threads)
  run t1 --threads 1
  printed t1 "; 1 thread,"
  check "$work/t1" "s['settings']['threads'] == '1'"
  most=$(nproc)
  if [ "$most" -ge 2 ]; then
    run t2 --threads 2
    printed t2 "; 2 threads,"
    check "$work/t2" "s['settings']['threads'] == '2'"
  fi
  for bad in -5 1000 1.5; do
    rejects "--threads: expected a whole number in [0, " --threads "$bad"
  done
  rejects "= the hardware threads of this machine), got 1000" --threads 1000
  ;;

train_limit)
  run l100 --train-limit 100 --max-steps 0
  printed l100 "100 train / 400 test images"
  printed l100 "2 steps per epoch of batch size 64"
  run all --train-limit 0 --max-steps 0 --pretrain-epochs 0 --search-epochs 0 --finetune-epochs 0
  printed all "1200 train / 400 test images"
  rejects "--train-limit: expected a whole number >= 0, got -1" --train-limit -1
  rejects "--train-limit: expected at most the 1200 training images in $data, got 5000" \
    --train-limit 5000
  ;;

max_steps)
  run m3 --max-steps 3
  printed m3 "3 steps per epoch of batch size 64"
  run m0 --max-steps 0 --train-limit 640 --pretrain-epochs 1 --search-epochs 0 --finetune-epochs 0
  printed m0 "10 steps per epoch of batch size 64"
  run m2 --max-steps 2
  other_phase "$work/m2" "$work/m3" pretrain
  rejects "--max-steps: expected a whole number >= 0, got -1" --max-steps -1
  ;;

stop_after)
  run stopped --stop-after 1
  check "$work/stopped" "[r['phase'] for r in log] == ['pretrain']"
  [ -f "$work/stopped/checkpoint.bin" ] || fail "no checkpoint after --stop-after"
  [ ! -f "$work/stopped/summary.json" ] || fail "summary.json written by a stopped run"
  [ ! -f "$work/stopped/model.bgm" ] || fail "model.bgm written by a stopped run"
  run two --stop-after 2
  check "$work/two" "[r['phase'] for r in log] == ['pretrain', 'search']"
  rejects "--stop-after: expected a whole number >= 0, got -1" --stop-after -1
  ;;

sensitivity)
  run s2 --sensitivity 2
  check "$work/s2" "all(len(l['group_sensitivity']) == l['groups'] for l in E)"
  printed s2 "sensitivity conv1: "
  run s0 --sensitivity 0
  check "$work/s0" "all(len(l['group_sensitivity']) == 0 for l in E)"
  ! grep -q "^sensitivity " "$work/s0.log" || fail "--sensitivity 0 measured sensitivities"
  rejects "--sensitivity: expected a whole number >= 0, got -1" --sensitivity -1
  rejects "--sensitivity: expected at most 13 (the batches of 32 in the 400 test images), got 14" \
    --sensitivity 14
  ;;

out)
  run nested/run
  for f in report.html log.csv summary.json checkpoint.bin model.bgm; do
    [ -s "$work/nested/run/$f" ] || fail "--out: no $f"
  done
  printed nested/run "wrote $work/nested/run/{report.html"
  rejects "--out: expected a folder, got an empty name" --out ""
  ;;

resume)
  run straight
  run resumed --stop-after 2
  check "$work/resumed" "len(log) == 2"
  with_defaults --out "$work/resumed" --resume
  timeout 300 "$fm" "${args[@]}" > "$work/resumed-2.log" 2>&1 || fail "--resume failed"
  grep -q "resumed from $work/resumed/checkpoint.bin at search epoch 1" "$work/resumed-2.log" ||
    fail "--resume did not continue from the checkpoint"
  check "$work/resumed" "[r['phase'] for r in log] == ['pretrain', 'search', 'finetune']"
  diff <(grep -v '"seconds"' "$work/straight/summary.json") \
    <(grep -v '"seconds"' "$work/resumed/summary.json") || fail "the resumed run differs"
  mkdir -p "$work/empty"
  rejects "--resume: no checkpoint to continue from in $work/empty" --out "$work/empty" --resume
  ;;

act_bits)
  # Activation quantizers after the four ReLUs: costs reported, the model file stores their grid
  # (format version 2); without the option neither.
  run act --act-bits 6
  run plain
  check "$work/act" "[c['name'] for c in s['costs']] == ['size', 'bops', 'activation_memory']"
  # relu1_quant's 6 x 24 x 24 values at the learned bits (6 +- one rounding step)
  check "$work/act" "abs(s['costs'][2]['value'] - 3456 * 6 / 8) <= 3456 / 8"
  check "$work/act" "all(r['bops'] != '' for r in log if r['phase'] != 'pretrain')"
  check "$work/plain" "'costs' not in s and 'bops' not in log[0]"
  check "$work/act" "open(d + '/model.bgm', 'rb').read()[8] == 2"
  check "$work/plain" "open(d + '/model.bgm', 'rb').read()[8] == 1"
  printed act "peak activations"
  # The int engine runs it on the learned grids (<= 8 bits): conv1's input is calibrated, the
  # other layers read the act_quant codes; its accuracy equals its reference twin's.
  "$deploy" "$work/act/model.bgm" --data "$data" --engine int > "$work/deploy-int.log"
  "$deploy" "$work/act/model.bgm" --data "$data" --engine reference > "$work/deploy-ref.log"
  printed deploy-int "activations: conv1 8 bits (calibrated), conv2 "
  grep -Eq "fc1 [1-8] bits \(relu2_quant\), fc2 [1-8] bits \(relu3_quant\), fc3 [1-8] bits \(relu4_quant\)$" \
    "$work/deploy-int.log" || { cat "$work/deploy-int.log" >&2; fail "deploy --engine int: act grids not used"; }
  [ "$(grep -o "accuracy [0-9.]*%" "$work/deploy-int.log")" = \
    "$(grep -o "accuracy [0-9.]*%" "$work/deploy-ref.log")" ] || fail "int and reference differ"
  # Each activation quantizer in the summary: the four after the ReLUs, frozen at whole bits.
  check "$work/act" "[a['name'] for a in s['activations']] == ['relu1_quant', 'relu2_quant', 'relu3_quant', 'relu4_quant']"
  check "$work/act" "all(b == int(b) and 2 <= b <= 8 for a in s['activations'] for b in a['group_bits'])"
  check "$work/plain" "'activations' not in s"
  # fixed_bits: uniform weights and activations, the activation bits stay at --act-bits.
  run uniform --policy fixed_bits --target-bits 4.5 --act-bits 3
  check "$work/uniform" "all(a['group_bits'] == [3] for a in s['activations'])"
  check "$work/uniform" "s['costs'][2]['value'] == 3456 * 3 / 8"
  check "$work/uniform" "s['settings']['activation quantizers'] == 'after every ReLU, fixed at 3 bits'"
  rejects "--act-bits: activation quantizers are learned with --policy frac_bits, or fixed with --policy fixed_bits, got --policy step_bits" \
    --policy step_bits --act-bits 4
  rejects "--act-bits: expected a whole number of bits with --policy fixed_bits" \
    --policy fixed_bits --act-bits 4.5
  rejects "--act-bits: expected a value in [--b-min, --b-max] = [2, 8], got 9" --act-bits 9
  rejects "--act-bits: expected a finite number in [1, 16], got 0" --act-bits 0
  ;;

target_bops)
  # A BOPs budget lowers the reported BOPs to within it (the same run without it: far above).
  run free --act-bits 6
  run tight --act-bits 6 --target-bops 3e6
  check "$work/free" "s['costs'][1]['value'] > 6e6 and s['costs'][1]['target'] is None"
  check "$work/tight" "s['costs'][1]['value'] <= 3e6 and s['costs'][1]['met']"
  check "$work/tight" "s['costs'][1]['target'] == 3000000"
  printed tight "froze bitwidths within budgets"
  printed tight "budget 3e+06 BOPs, met"
  rejects "--target-bops: expected a finite number > 0, got 0" --target-bops 0
  ;;

target_activation_kb)
  # A peak activation memory budget: relu1_quant (3456 values per image) brought within 1.2 KB.
  run free --act-bits 6
  run tight --act-bits 6 --target-activation-kb 1.2
  check "$work/free" "s['costs'][2]['value'] > 2000"
  check "$work/tight" "s['costs'][2]['value'] <= 1200 and s['costs'][2]['met']"
  check "$work/tight" "float(log[-1]['activation_bytes']) <= 1200"
  rejects "--target-activation-kb: expected a finite number > 0, got -1" --target-activation-kb -1
  ;;

help)
  "$fm" --help > "$work/help.txt"
  for option in --data --model --policy --group --target-bits --b-min --b-max --edge-bits \
    --edge-group --pretrain-epochs --search-epochs --finetune-epochs --lr --search-lr --bits-lr \
    --bits-moment --finetune-lr --lambda --batch-size --seed --threads --train-limit --max-steps \
    --stop-after --sensitivity --out --resume --act-bits --target-bops --target-activation-kb; do
    grep -q -- "$option" "$work/help.txt" || fail "--help does not list $option"
  done
  grep -q "stored bits per weight" "$work/help.txt" || fail "--help: --target-bits unit"
  ;;

deploy_model)
  "$deploy" "$model_dir/model/model.bgm" --data "$data" > "$work/deploy.log"
  grep -q "^float32  : accuracy [0-9.]*%" "$work/deploy.log" || fail "no float32 accuracy"
  expect_error "$work/none.bgm" "$deploy" "$work/none.bgm" --data "$data"
  head -c 100 "$model_dir/model/model.bgm" > "$work/cut.bgm"
  expect_error "deploy: " "$deploy" "$work/cut.bgm" --data "$data"
  ;;

deploy_data)
  "$deploy" "$model_dir/model/model.bgm" --data "$data" > "$work/deploy.log"
  grep -q "accuracy" "$work/deploy.log" || fail "no accuracy"
  expect_error "$work/missing/t10k-images-idx3-ubyte.gz" "$deploy" "$model_dir/model/model.bgm" \
    --data "$work/missing"
  ;;

deploy_batch)
  # The batch size changes how the images are run, not what comes out.
  for b in 7 400; do
    "$deploy" "$model_dir/model/model.bgm" --data "$data" --batch $b > "$work/b$b.log"
    grep -q "(batch $b," "$work/b$b.log" || fail "--batch $b not used"
  done
  [ "$(grep -o 'accuracy [0-9.]*%' "$work/b7.log")" = "$(grep -o 'accuracy [0-9.]*%' "$work/b400.log")" ] ||
    fail "--batch changed the accuracy"
  for bad in 0 -1 abc 2.5; do
    expect_error "--batch: expected a whole number >= 1, got $bad" "$deploy" \
      "$model_dir/model/model.bgm" --data "$data" --batch "$bad"
  done
  ! grep -q "1.79" "$work/error.log" || fail "1.79e308 in the message"
  ;;

deploy_engine)
  # Each engine prints its accuracy; the int engine and its reference twin compute the same
  # integers, so they give the same accuracy; the int engine runs on every path of this CPU.
  for e in int float reference; do
    "$deploy" "$model_dir/model/model.bgm" --data "$data" --engine $e --batch 50 > "$work/$e.log"
  done
  grep -q "^int      : accuracy [0-9.]*%.*(batch 50, packed " "$work/int.log" || fail "--engine int"
  grep -q "^weights  : [0-9]* bytes resident, file payload [0-9]* bytes" "$work/int.log" ||
    fail "--engine int: no resident weight bytes"
  grep -q "^float32  : accuracy [0-9.]*%" "$work/float.log" || fail "--engine float"
  grep -q "^reference: accuracy [0-9.]*%" "$work/reference.log" || fail "--engine reference"
  ! grep -q "^float32" "$work/int.log" || fail "--engine int ran the float path too"
  acc() { grep -o "accuracy [0-9.]*%" "$1"; }
  [ "$(acc "$work/int.log")" = "$(acc "$work/reference.log")" ] ||
    fail "int and reference engines disagree: $(acc "$work/int.log") vs $(acc "$work/reference.log")"
  # The whole-set agreement (default: all engines) and every instruction set.
  "$deploy" "$model_dir/model/model.bgm" --data "$data" > "$work/all.log"
  grep -q "^int      : top-1 agreement with float [0-9.]*%" "$work/all.log" || fail "no agreement"
  for isa in $("$deploy" --help | grep -o "isa TEXT:{[a-z0-9_,]*}" | sed 's/.*{//; s/}//; s/,/ /g'); do
    "$deploy" "$model_dir/model/model.bgm" --data "$data" --engine int --isa "$isa" > "$work/isa-$isa.log"
    grep -q "packed $isa)" "$work/isa-$isa.log" || fail "--isa $isa not used"
    [ "$(acc "$work/isa-$isa.log")" = "$(acc "$work/reference.log")" ] || fail "--isa $isa differs"
  done
  expect_error "--engine: " "$deploy" "$model_dir/model/model.bgm" --data "$data" --engine fast
  ;;

inspect_model)
  "$inspect" "$model_dir/model/model.bgm" > "$work/inspect.log"
  # The model was trained with --group 4: 2 groups in conv1 (6 channels), 3 in fc3 (10).
  # groups: the column after the weight shape (e.g. 6x1x5x5).
  groups_of() {
    awk -v layer="$1" '$2 == layer {
      for (i = 3; i < NF; ++i) if ($i ~ /^[0-9]+(x[0-9]+)+$/) { print $(i + 1); exit } }' \
      "$work/inspect.log"
  }
  [ "$(groups_of conv1)" = 2 ] || fail "conv1 does not show 2 groups"
  [ "$(groups_of fc3)" = 3 ] || fail "fc3 does not show 3 groups"
  expect_error "$work/none.bgm" "$inspect" "$work/none.bgm"
  ;;

inspect_npz)
  "$inspect" "$model_dir/model/model.bgm" --npz "$work/w.npz" > "$work/inspect.log"
  grep -q "wrote $work/w.npz" "$work/inspect.log" || fail "no 'wrote' line"
  "$python" - "$work/w.npz" << 'EOF' || fail "--npz: unexpected archive"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert any(n.startswith("conv1") for n in names), names
assert any(n.startswith("fc3") for n in names), names
EOF
  rm -f "$work/plain.npz"
  "$inspect" "$model_dir/model/model.bgm" > /dev/null
  [ ! -e "$work/plain.npz" ] || fail "an npz without --npz"
  expect_error "inspect_model: " "$inspect" "$model_dir/model/model.bgm" --npz "$work/no/such/dir/w.npz"
  ;;

pareto_resume)
  # --resume keeps the runs already in results.csv and runs only the missing arms: a study grown
  # from 1 to 2 seeds, and one whose last arm is missing, end with the same tables as the study
  # run in one go (1 thread: the runs are deterministic); without --resume every arm runs again.
  study full --seeds 2
  study part --seeds 1
  study part --seeds 2 --resume
  printed part "resuming: 2 runs already in"
  ! grep -q "lenet5 seed 1: FP32 pretrained" "$work/part.log" || fail "--resume pretrained seed 1 again"
  printed part "[2/2] lenet5 seed 2 k=2 frac_bits/channel"
  same_tables full part
  head -n -1 "$work/part/results.csv" > "$work/results.csv"
  mv "$work/results.csv" "$work/part/results.csv"
  grep -v "^lenet5,2,frac_bits/channel,2," "$work/part/layers.csv" > "$work/layers.csv"
  mv "$work/layers.csv" "$work/part/layers.csv"
  # Seed 2 has arms in results.csv: its saved FP32 network (fp32.npz with its key fp32.json) is
  # loaded, not pretrained again, and the tables are those of the study run in one go.
  drop_last_arm() {
    head -n -1 "$work/part/results.csv" > "$work/results.csv"
    mv "$work/results.csv" "$work/part/results.csv"
    grep -v "^lenet5,2,frac_bits/channel,2," "$work/part/layers.csv" > "$work/layers.csv"
    mv "$work/layers.csv" "$work/part/layers.csv"
  }
  study part --seeds 2 --resume
  printed part "resuming: 3 runs already in"
  printed part "lenet5 seed 2: FP32 network of the earlier pretraining ($work/part/runs/lenet5/seed2/fp32.npz)"
  ! grep -q "FP32 pretrained" "$work/part.log" || fail "--resume pretrained seed 2 again"
  printed part "[1/1] lenet5 seed 2 k=2 frac_bits/channel"
  same_tables full part
  # Rows outside the grid run now (seed 1's, under --first-seed 2) are not counted as done: the
  # progress counts the one missing run ("[1/0]" and a negative ETA before).
  drop_last_arm
  study part --seeds 1 --first-seed 2 --resume
  printed part "resuming: 3 runs already in"
  printed part "[1/1] lenet5 seed 2 k=2 frac_bits/channel"
  printed part "ETA 0:00"
  same_tables full part
  # A key that is not JSON, or one of other settings (here the pretraining epochs): pretrained again.
  drop_last_arm
  echo "{" > "$work/part/runs/lenet5/seed2/fp32.json"
  study part --seeds 2 --resume
  printed part "pretraining again: $work/part/runs/lenet5/seed2/fp32.json is not JSON"
  printed part "lenet5 seed 2: FP32 pretrained 1 epochs"
  same_tables full part
  drop_last_arm
  study part --seeds 2 --resume --pretrain-epochs 2
  printed part "pretraining again: $work/part/runs/lenet5/seed2/fp32.json is {"
  printed part '"pretrain_epochs":1'
  printed part '"pretrain_epochs":2'
  printed part "lenet5 seed 2: FP32 pretrained 2 epochs"
  study part --seeds 2
  printed part "[4/4] lenet5 seed 2 k=2 frac_bits/channel"
  ! grep -q "resuming" "$work/part.log" || fail "a study without --resume kept earlier runs"
  same_tables full part
  # --resume of a complete study runs no arm and still rewrites aggregate.csv, results.md and the
  # plots from results.csv, the same files as before.
  mkdir -p "$work/kept"
  cp "$work/part/aggregate.csv" "$work/part/results.md" "$work/kept/"
  rm "$work/part/aggregate.csv" "$work/part/results.md" "$work/part"/*.svg
  study part --seeds 2 --resume
  printed part "resuming: 4 runs already in"
  ! grep -q "lenet5 seed [12] k=" "$work/part.log" || fail "--resume ran an arm of a complete study"
  cmp "$work/part/aggregate.csv" "$work/kept/aggregate.csv" || fail "--resume: aggregate.csv differs"
  cmp "$work/part/results.md" "$work/kept/results.md" || fail "--resume: results.md differs"
  grep -q "frac_bits" "$work/part/results.md" || fail "--resume: results.md has no arm rows"
  [ -s "$work/part/pareto-lenet5.svg" ] || fail "--resume: the plots were not rewritten"
  ;;

pareto_from_csv | pareto_check_only)
  # Both train nothing (the data folder given does not exist): --from-csv rebuilds the tables,
  # results.md and the plots from results.csv and layers.csv, taking the models and sizes from
  # the rows; --check-only reads an earlier study back and fails when a run is missing.
  study a
  mkdir -p "$work/kept"
  cp "$work/a/aggregate.csv" "$work/a/results.md" "$work/kept/"
  no_data=("$pareto" --data "$work/no-such-folder" --out "$work/a")
  if [ "$case_name" = pareto_from_csv ]; then
    rm "$work/a/aggregate.csv" "$work/a/results.md" "$work/a"/*.svg
    "${no_data[@]}" --from-csv --models vgg-small --sizes 3 > "$work/rebuilt.log" 2>&1 ||
      { cat "$work/rebuilt.log" >&2; fail "--from-csv failed"; }
    printed rebuilt "from 2 rows of results.csv"
    cmp "$work/a/aggregate.csv" "$work/kept/aggregate.csv" || fail "--from-csv: aggregate.csv differs"
    cmp "$work/a/results.md" "$work/kept/results.md" || fail "--from-csv: results.md differs"
    [ -s "$work/a/pareto-lenet5.svg" ] && [ -s "$work/a/bits-lenet5-2bit.svg" ] ||
      fail "--from-csv: the plots were not rebuilt"
  else
    "${no_data[@]}" --check-only "${study_options[@]}" > "$work/checked.log" 2>&1 ||
      { cat "$work/checked.log" >&2; fail "--check-only failed on a whole study"; }
    printed checked "check passed: 2 runs and 2 arms"
    expect_error "check failed: " "${no_data[@]}" --check-only "${study_options[@]}" --sizes 2,3
    head -n -1 "$work/a/results.csv" > "$work/results.csv"
    mv "$work/results.csv" "$work/a/results.csv"
    expect_error "check failed: " "${no_data[@]}" --check-only "${study_options[@]}"
  fi
  ;;

pareto_fractional)
  # --sizes 1.5,2 (issue #24): at 1.5 only the mixed arm runs, under the budget of 1.5 code bits
  # per weight (halfway between the 1-bit and the 2-bit uniform per-channel models), and ends
  # above the 1-bit model; every mixed arm is paired with the uniform arm at 2 bits, the smallest
  # whole size point >= its own. --resume, --from-csv and --check-only work on such a study.
  study f --sizes 1.5,2 --seeds 2 --check
  printed f "1 models x 2 seeds x 2 sizes (3 arms) = 6 runs"
  printed f "check passed: 6 runs and 3 arms"
  printed f "[1/6] lenet5 seed 1 k=1.5 frac_bits/channel"
  arms f "['frac_bits/channel', 'uniform/channel', 'frac_bits/channel'] * 2"
  results f "[r['size_bits'] for r in R] == ['1.5', '2', '2'] * 2"
  [ -d "$work/f/runs/lenet5/seed1/1.5bit/frac_bits-channel" ] || fail "no runs/lenet5/seed1/1.5bit"
  # S_1 from a 1-bit study (its uniform arm: the sign grid); n, the quantized weights, from layers.csv
  study one --sizes 1
  s1=$("$python" -c 'import csv, sys; print(next(csv.DictReader(open(sys.argv[1])))["budget_bytes"])' "$work/one/results.csv")
  n=$("$python" -c 'import csv, sys; print(sum(int(r["params"]) for r in csv.DictReader(open(sys.argv[1])) if r["arm"] == "uniform/channel" and r["seed"] == "1"))' "$work/f/layers.csv")
  results one "float(R[0]['weight_bytes']) == $s1 and R[0]['code_bits'] == '1'"
  results f "all(float(r['budget_bytes']) == $s1 + 0.5 * $n / 8 for r in R if r['size_bits'] == '1.5')"
  results f "all(float(r['budget_bytes']) == $s1 + $n / 8 for r in R if r['size_bits'] == '2')"
  results f "all($s1 < float(r['weight_bytes']) <= float(r['budget_bytes']) for r in R if r['size_bits'] == '1.5')"
  table_check f aggregate.csv A "[(a['size_bits'], a['arm'], a['reference_uniform_size_bits'], a['reference_uniform_arm']) for a in A] == [('1.5', 'frac_bits/channel', '2', 'uniform/channel'), ('2', 'uniform/channel', '2', 'uniform/channel'), ('2', 'frac_bits/channel', '2', 'uniform/channel')]"
  # The paired differences recomputed from results.csv: mean and 95% t interval (df 1: 12.706).
  "$python" - "$work/f" << 'PY' || fail "the paired differences of study f"
import csv, math, statistics, sys
R = list(csv.DictReader(open(sys.argv[1] + "/results.csv")))
A = {(a["size_bits"], a["arm"]): a for a in csv.DictReader(open(sys.argv[1] + "/aggregate.csv"))}
for k in ("1.5", "2"):
    d = [float(m["accuracy"]) - float(u["accuracy"]) for m in R for u in R
         if m["size_bits"] == k and m["policy"] == "frac_bits" and u["size_bits"] == "2"
         and u["arm"] == "uniform/channel" and u["seed"] == m["seed"]]
    assert len(d) == 2, d
    a, h = A[(k, "frac_bits/channel")], 12.706 * statistics.stdev(d) / math.sqrt(2)
    for column, want in (("delta_vs_uniform_mean", statistics.fmean(d)),
                         ("delta_vs_uniform_ci95_low", statistics.fmean(d) - h),
                         ("delta_vs_uniform_ci95_high", statistics.fmean(d) + h)):
        assert math.isclose(float(a[column]), want, abs_tol=1e-12), (k, column, a[column], want)
PY
  grep -q "^| 1.5 | frac_bits/channel | [0-9]* | uniform/channel at 2 | [0-9]* | 2 | " "$work/f/results.md" ||
    fail "results.md: no paired row of frac_bits/channel at 1.5 against uniform/channel at 2"
  [ -s "$work/f/bits-lenet5-1.5bit.svg" ] || fail "no bits-lenet5-1.5bit.svg"
  # The size-vs-error table (issue #24), recomputed from results.csv and layers.csv: FP32 first at
  # 4 bytes per quantized weight, then the uniform arms, then the learned ones, each by size
  # point; error = 100 - accuracy, the mean over seeds and each seed's.
  "$python" - "$work/f" << 'PY' || fail "the size-vs-error table of study f"
import csv, statistics, sys
d = sys.argv[1]
R = list(csv.DictReader(open(d + "/results.csv")))
n = sum(int(r["params"]) for r in csv.DictReader(open(d + "/layers.csv"))
        if r["arm"] == "uniform/channel" and r["seed"] == "1")
md = open(d + "/results.md").read().split("\n")
start = md.index("| arm | k | granularity | weight KB | test error % | seeds |")
rows = [line.split(" | ") for line in md[start + 2:] if line.startswith("| ")]
rows = rows[:1 + len({(r["size_bits"], r["arm"]) for r in R})]
def err(rows, column):
    xs = [float(r[column]) for r in sorted(rows, key=lambda r: int(r["seed"]))]
    return "%.2f" % (100 - 100 * statistics.fmean(xs)) + " (" + ", ".join("%.2f" % (100 - 100 * x) for x in xs) + ")"
fp32 = [r for r in R if r["arm"] == "uniform/channel"]
assert rows[0] == ["| FP32", "32", "-", "%.2f" % (4 * n / 1000), err(fp32, "fp32_accuracy"), "2 |"], rows[0]
want = []
for k, arm in dict.fromkeys((r["size_bits"], r["arm"]) for r in R):
    mine = [r for r in R if (r["size_bits"], r["arm"]) == (k, arm)]
    kb = statistics.fmean(float(r["weight_bytes"]) for r in mine) / 1000
    policy, group = mine[0]["policy"], mine[0]["group"]
    name = "uniform" if policy == "fixed_bits" else policy
    want.append((policy != "fixed_bits", float(k), ["| " + name, k, group, "%.2f" % kb, err(mine, "accuracy"), "2 |"]))
want.sort(key=lambda w: w[:2])
assert rows[1:] == [w[2] for w in want], (rows[1:], want)
PY
  # --resume: one seed, then the second; then again with seed 2's 1.5-bit arm missing.
  study part --sizes 1.5,2 --seeds 1
  study part --sizes 1.5,2 --seeds 2 --resume
  printed part "resuming: 3 runs already in"
  printed part "[3/3] lenet5 seed 2 k=2 frac_bits/channel"
  same_tables f part
  grep -v "^lenet5,1.5,frac_bits/channel,frac_bits,channel,2," "$work/part/results.csv" > "$work/results.csv"
  mv "$work/results.csv" "$work/part/results.csv"
  study part --sizes 1.5,2 --seeds 2 --resume
  printed part "[1/1] lenet5 seed 2 k=1.5 frac_bits/channel"
  without_seconds() { rev "$1" | cut -d, -f2- | rev | sort; } # rows in the order they ran
  diff <(without_seconds "$work/f/results.csv") <(without_seconds "$work/part/results.csv") ||
    fail "--resume of a fractional study: results.csv differs"
  # --from-csv rebuilds the same tables and plots.
  mkdir -p "$work/kept"
  cp "$work/f/aggregate.csv" "$work/f/results.md" "$work/kept/"
  rm "$work/f/aggregate.csv" "$work/f/results.md" "$work/f"/*.svg
  "$pareto" --data "$work/no-such-folder" --out "$work/f" --from-csv > "$work/rebuilt.log" 2>&1 ||
    { cat "$work/rebuilt.log" >&2; fail "--from-csv failed"; }
  printed rebuilt "from 6 rows of results.csv"
  cmp "$work/f/aggregate.csv" "$work/kept/aggregate.csv" || fail "--from-csv: aggregate.csv differs"
  cmp "$work/f/results.md" "$work/kept/results.md" || fail "--from-csv: results.md differs"
  [ -s "$work/f/bits-lenet5-1.5bit.svg" ] || fail "--from-csv: no bits-lenet5-1.5bit.svg"
  # --check-only passes on it, and fails without the paired row of the 1.5-bit arm.
  with_study_defaults --out "$work/f" --check-only --sizes 1.5,2 --seeds 2
  "$pareto" "${args[@]}" > "$work/checked.log" 2>&1 ||
    { cat "$work/checked.log" >&2; fail "--check-only failed on a fractional study"; }
  printed checked "check passed: 6 runs and 3 arms"
  grep -v "^| 1.5 | frac_bits/channel | [0-9]* | uniform/channel at 2 |" "$work/kept/results.md" > "$work/f/results.md"
  expect_error "check failed: results.md: no paired row for frac_bits/channel at 1.5 bits against uniform/channel at 2" \
    "$pareto" "${args[@]}"
  ;;

pareto_interrupt)
  # --resume continues an arm interrupted inside (SIGINT, as a session's end does) from its
  # checkpoint when arm.json beside it holds the arm's settings: the finished rows equal those of
  # the study run in one go, the arm's train.log goes on; under other settings (--lambda 0) the
  # arm starts over and the study says why. 6 search epochs of 1,200 images in batches of 32:
  # SIGINT once the frac_bits arm wrote its first checkpoint (after its first epoch) lands inside
  # the arm, most often inside an epoch (the trainer stops after the current step).
  long=(--search-epochs 6 --finetune-epochs 1 --train-limit 1200)
  mixed="runs/lenet5/seed1/2bit/frac_bits-channel"
  interrupted() { # interrupted NAME ARGS...: the study into $work/NAME, SIGINT inside its mixed arm
    local name=$1
    shift
    rm -rf "${work:?}/$name"
    with_study_defaults --out "$work/$name" "$@"
    sigint_after_checkpoint "$work/$name.log" "$work/$name/$mixed/checkpoint.bin"
    printed "$name" "lenet5 seed 1 k=2 frac_bits/channel: interrupted; --resume continues it from $work/$name/$mixed/checkpoint.bin"
    printed "$name" "interrupted: 1 runs written to"
    [ -s "$work/$name/$mixed/arm.json" ] || fail "$name: no arm.json beside the checkpoint"
  }
  study full "${long[@]}"
  interrupted part "${long[@]}"
  cp "$work/part/$mixed/train.log" "$work/first-part.log"
  grep "^interrupted " "$work/first-part.log" # where: inside an epoch ("at ... step") or after one
  first_seconds=$("$python" -c 'import csv, sys; print(list(csv.DictReader(open(sys.argv[1])))[-1]["seconds"])' \
    "$work/part/$mixed/log.csv")
  study part "${long[@]}" --resume
  printed part "resuming: 1 runs already in"
  printed part "lenet5 seed 1 k=2 frac_bits/channel: resuming from $work/part/$mixed/checkpoint.bin"
  printed part "[1/1] lenet5 seed 1 k=2 frac_bits/channel"
  same_tables full part
  [ ! -e "$work/part/$mixed/checkpoint.bin" ] || fail "the finished arm's checkpoint stayed"
  # train.log: the first part's lines, then the trainer's "resumed from" and the rest.
  cmp -n "$(stat -c %s "$work/first-part.log")" "$work/first-part.log" "$work/part/$mixed/train.log" ||
    fail "the resumed arm's train.log does not begin with the interrupted part's"
  grep -q "resumed from $work/part/$mixed/checkpoint.bin at search epoch" "$work/part/$mixed/train.log" ||
    fail "the resumed arm's train.log does not say where it resumed"
  # Its seconds count the interrupted part's (log.csv's elapsed seconds at its last epoch) too.
  results part "float(R[1]['seconds']) > $first_seconds"
  # Other settings: the arm starts over from the FP32 start, not from the stale checkpoint; its
  # rows are those of an unbroken study with --lambda 0 (the uniform arm does not use lambda).
  study lambda0 "${long[@]}" --lambda 0
  interrupted stale "${long[@]}"
  study stale "${long[@]}" --resume --lambda 0
  printed stale "lenet5 seed 1 k=2 frac_bits/channel: starting over, not from $work/stale/$mixed/checkpoint.bin: made with other settings: lambda 5.0, now 0.0"
  ! grep -q "resumed from" "$work/stale/$mixed/train.log" || fail "--lambda 0 resumed the stale checkpoint"
  same_tables lambda0 stale
  grep -q '"lambda": 0.0' "$work/stale/$mixed/arm.json" || fail "arm.json does not hold the new key"
  # No arm.json (a checkpoint of an older study program): start over, saying so.
  interrupted bare "${long[@]}"
  rm "$work/bare/$mixed/arm.json"
  study bare "${long[@]}" --resume
  printed bare "lenet5 seed 1 k=2 frac_bits/channel: starting over, not from $work/bare/$mixed/checkpoint.bin: no arm.json beside it"
  same_tables full bare
  # Without --resume an interrupted arm's checkpoint is not used either.
  interrupted fresh "${long[@]}"
  study fresh "${long[@]}"
  ! grep -q "resum" "$work/fresh.log" || fail "a study without --resume resumed"
  same_tables full fresh
  ;;

pareto_parts)
  # A study cut off anywhere resumes without redoing finished work. (1) The seed's FP32
  # pretraining checkpoints into runs/<model>/seed<s>/pretrain/ (its key in arm.json there):
  # SIGINT inside it, then --resume, continues it and the study ends as an unbroken one.
  # (2) An arm's checkpoint stays until its row is in results.csv: a study killed (SIGKILL, as a
  # session's end may) during an arm's sensitivity diagnostics resumes from the checkpoint at the
  # end of fine-tuning, runs only the diagnostics, and ends as the unbroken study.
  pre=(--pretrain-epochs 8 --train-limit 1200)
  pretrain="runs/lenet5/seed1/pretrain"
  study prefull "${pre[@]}"
  [ ! -e "$work/prefull/$pretrain/checkpoint.bin" ] || fail "the finished pretraining's checkpoint stayed"
  rm -rf "${work:?}/prepart"
  with_study_defaults --out "$work/prepart" "${pre[@]}"
  sigint_after_checkpoint "$work/prepart1.log" "$work/prepart/$pretrain/checkpoint.bin"
  printed prepart1 "lenet5 seed 1 FP32 pretraining: interrupted; --resume continues it from $work/prepart/$pretrain/checkpoint.bin"
  [ ! -e "$work/prepart/runs/lenet5/seed1/fp32.npz" ] || fail "an interrupted pretraining saved fp32.npz"
  study prepart "${pre[@]}" --resume
  printed prepart "lenet5 seed 1 FP32 pretraining: resuming from $work/prepart/$pretrain/checkpoint.bin"
  grep -q "resumed from $work/prepart/$pretrain/checkpoint.bin at pretrain epoch" "$work/prepart/runs/lenet5/seed1/pretrain.log" ||
    fail "pretrain.log does not say where the pretraining resumed"
  same_tables prefull prepart
  [ ! -e "$work/prepart/$pretrain/checkpoint.bin" ] || fail "the resumed pretraining's checkpoint stayed"
  # (2) The uniform arm runs first; the trainer's diagnostics take ~1.2 s after its last
  # fine-tuning epoch here (12 batches of the sample's 400 test images), the split-half ones
  # ~0.02 s: the kill comes 0.3 s after that epoch's line, once its checkpoint is written.
  diag=(--sensitivity 16 --train-limit 600)
  uniform="runs/lenet5/seed1/2bit/fixed_bits-channel"
  study diagfull "${diag[@]}"
  rm -rf "${work:?}/diagpart"
  with_study_defaults --out "$work/diagpart" "${diag[@]}"
  "$pareto" "${args[@]}" > "$work/diagpart-1.log" 2>&1 &
  pid=$!
  for i in $(seq 1 6000); do
    grep -q "^finetune  epoch 1/1" "$work/diagpart/$uniform/train.log" 2> /dev/null && break
    sleep 0.02
  done
  sleep 0.3
  { kill -KILL "$pid" && wait "$pid"; } 2> /dev/null || true
  [ -e "$work/diagpart/$uniform/checkpoint.bin" ] || fail "no checkpoint after the uniform arm's training"
  ! grep -q "uniform/channel" "$work/diagpart/results.csv" 2> /dev/null ||
    fail "the diagnostics ended before the kill (raise --sensitivity): nothing to resume"
  lines=$(grep -c "^finetune  epoch" "$work/diagpart/$uniform/train.log")
  study diagpart "${diag[@]}" --resume
  printed diagpart "lenet5 seed 1 k=2 uniform/channel: resuming from $work/diagpart/$uniform/checkpoint.bin"
  [ "$(grep -c "^finetune  epoch" "$work/diagpart/$uniform/train.log")" = "$lines" ] ||
    fail "the resumed arm trained again after its last fine-tuning epoch"
  same_tables diagfull diagpart
  [ ! -e "$work/diagpart/$uniform/checkpoint.bin" ] || fail "the finished arm's checkpoint stayed"
  ;;

pareto_uniform_sizes)
  # --uniform-sizes 1,3 beside --sizes 2: at 1 and 3 bits only the uniform arm runs (after the
  # points of --sizes), at 2 every arm; a k in both lists runs every arm once; fractional k are
  # refused. --check, --check-only, --resume and --from-csv work on such a study.
  study u --uniform-sizes 1,3 --check
  printed u "1 models x 1 seeds x 3 sizes (4 arms) = 4 runs"
  printed u "check passed: 4 runs and 4 arms"
  arms u "['uniform/channel', 'frac_bits/channel', 'uniform/channel', 'uniform/channel']"
  results u "[r['size_bits'] for r in R] == ['2', '2', '1', '3'] and [r['code_bits'] for r in R if r['policy'] == 'fixed_bits'] == ['2', '1', '3']"
  [ ! -e "$work/u/runs/lenet5/seed1/1bit/frac_bits-channel" ] && [ -d "$work/u/runs/lenet5/seed1/1bit/fixed_bits-channel" ] ||
    fail "--uniform-sizes 1: expected the uniform arm only under runs/lenet5/seed1/1bit"
  grep -q "^| uniform | 1 | channel | " "$work/u/results.md" && grep -q "^| uniform | 3 | channel | " "$work/u/results.md" ||
    fail "results.md: no uniform rows at 1 and 3 bits in the size-vs-error table"
  study both --uniform-sizes 2
  printed both "1 models x 1 seeds x 1 sizes x 2 arms = 2 runs"
  diff <(rev "$work/both/results.csv" | cut -d, -f2- | rev) <(head -n 3 "$work/u/results.csv" | rev | cut -d, -f2- | rev) ||
    fail "--uniform-sizes 2 beside --sizes 2 changed the study"
  expect_error "--uniform-sizes: expected whole bits per weight (the uniform arm has no fractional bitwidth), got 1.5" \
    "$pareto" --data "$data" --out "$work/rejected" --uniform-sizes 1.5
  expect_error "--uniform-sizes: expected a number of bits per weight in (0, 16]" \
    "$pareto" --data "$data" --out "$work/rejected" --uniform-sizes 0
  # --resume: the study of --sizes 2, then grown by --uniform-sizes 1,3: only the two uniform arms run.
  study part
  study part --uniform-sizes 1,3 --resume
  printed part "resuming: 2 runs already in"
  printed part "[1/2] lenet5 seed 1 k=1 uniform/channel"
  printed part "[2/2] lenet5 seed 1 k=3 uniform/channel"
  same_tables u part
  cmp "$work/u/results.md" "$work/part/results.md" || fail "--resume: results.md differs"
  # --check-only with the same options; without --uniform-sizes it finds 2 rows too many.
  with_study_defaults --out "$work/u" --check-only --uniform-sizes 1,3
  "$pareto" "${args[@]}" > "$work/checked.log" 2>&1 ||
    { cat "$work/checked.log" >&2; fail "--check-only failed on a study with --uniform-sizes"; }
  printed checked "check passed: 4 runs and 4 arms"
  with_study_defaults --out "$work/u" --check-only
  expect_error "check failed: results.csv: 2 rows expected, 4 found" "$pareto" "${args[@]}"
  # --from-csv rebuilds the same tables (the size points from the rows).
  mkdir -p "$work/kept"
  cp "$work/u/aggregate.csv" "$work/u/results.md" "$work/kept/"
  rm "$work/u/aggregate.csv" "$work/u/results.md"
  "$pareto" --data "$work/no-such-folder" --out "$work/u" --from-csv > "$work/rebuilt.log" 2>&1 ||
    { cat "$work/rebuilt.log" >&2; fail "--from-csv failed"; }
  cmp "$work/u/aggregate.csv" "$work/kept/aggregate.csv" || fail "--from-csv: aggregate.csv differs"
  cmp "$work/u/results.md" "$work/kept/results.md" || fail "--from-csv: results.md differs"
  ;;

pareto_size_table)
  # results.md's size-vs-error table (issue #24), from a results.csv and layers.csv written here
  # (--from-csv, nothing trained): FP32 at 4 bytes per quantized weight (100 + 300 = 400 of them:
  # 1.60 KB) with each seed's FP32 error, then the uniform arms by k, then the learned arms by k;
  # weight KB the mean weight_bytes / 1000, error 100 - accuracy: the mean and each seed's.
  mkdir -p "$work/t"
  {
    echo "model,size_bits,arm,policy,group,seed,fp32_accuracy,accuracy,budget_bytes,weight_bytes,total_bytes,code_bits,stored_bits,max_spread,layers_spread_ge2,mean_rank_correlation,layers_rank_correlation_positive,mean_rank_correlation_uniform_sensitivity,seconds"
    echo "lenet5,2,uniform/channel,fixed_bits,channel,1,0.91,0.88,150,150,200,2,3,0,0,,0,,1"
    echo "lenet5,1.5,frac_bits/layer,frac_bits,layer,1,0.91,0.86,125,124.5,174.5,1.5,2.49,0,0,,0,,1"
    echo "lenet5,1,uniform/channel,fixed_bits,channel,1,0.91,0.8,100,100,150,1,2,0,0,,0,,1"
    echo "lenet5,2,frac_bits/channel,frac_bits,channel,1,0.91,0.895,150,149,199,1.9,2.98,2,1,,0,,1"
    echo "lenet5,2,uniform/channel,fixed_bits,channel,2,0.93,0.9,150,150,200,2,3,0,0,,0,,1"
    echo "lenet5,1.5,frac_bits/layer,frac_bits,layer,2,0.93,0.87,125,123.5,173.5,1.5,2.47,0,0,,0,,1"
    echo "lenet5,1,uniform/channel,fixed_bits,channel,2,0.93,0.825,100,100,150,1,2,0,0,,0,,1"
    echo "lenet5,2,frac_bits/channel,frac_bits,channel,2,0.93,0.9,150,147,197,1.9,2.94,2,1,,0,,1"
  } > "$work/t/results.csv"
  {
    echo "model,size_bits,arm,seed,layer,params,groups,bits_min,bits_mean,bits_max,bytes,bits_spread,rank_correlation,rank_correlation_uniform_sensitivity,sensitivity_split_half_rho,group_bits,group_sensitivity"
    echo "lenet5,2,uniform/channel,1,conv1,100,4,2,2,2,45,0,,,,2 2 2 2,"
    echo "lenet5,2,uniform/channel,1,fc1,300,10,2,2,2,125,0,,,,2 2 2 2 2 2 2 2 2 2,"
  } > "$work/t/layers.csv"
  "$pareto" --data "$work/no-such-folder" --out "$work/t" --from-csv > "$work/t.log" 2>&1 ||
    { cat "$work/t.log" >&2; fail "--from-csv failed"; }
  printed t "from 8 rows of results.csv"
  printf '%s\n' \
    "| arm | k | granularity | weight KB | test error % | seeds |" \
    "|---|---:|---|---:|---:|---:|" \
    "| FP32 | 32 | - | 1.60 | 8.00 (9.00, 7.00) | 2 |" \
    "| uniform | 1 | channel | 0.10 | 18.75 (20.00, 17.50) | 2 |" \
    "| uniform | 2 | channel | 0.15 | 11.00 (12.00, 10.00) | 2 |" \
    "| frac_bits | 1.5 | layer | 0.12 | 13.50 (14.00, 13.00) | 2 |" \
    "| frac_bits | 2 | channel | 0.15 | 10.25 (10.50, 10.00) | 2 |" \
    "" > "$work/want.md"
  sed -n '/^| arm | k | granularity | weight KB | test error % | seeds |$/,/^$/p' "$work/t/results.md" > "$work/got.md"
  diff "$work/want.md" "$work/got.md" || fail "results.md: the size-vs-error table differs"
  # Without layers.csv the quantized weights come from weight_bytes * 8 / stored_bits (150 B at
  # 3 bits per weight: 400 weights), the same FP32 row.
  rm "$work/t/layers.csv"
  "$pareto" --data "$work/no-such-folder" --out "$work/t" --from-csv > "$work/t.log" 2>&1 ||
    { cat "$work/t.log" >&2; fail "--from-csv without layers.csv failed"; }
  grep -qxF "| FP32 | 32 | - | 1.60 | 8.00 (9.00, 7.00) | 2 |" "$work/t/results.md" ||
    fail "results.md without layers.csv: FP32 row"
  ;;

pareto_old_files)
  # The ResNet-20 grid's rows in docs/results/pareto-resnet20 (written by the study before arm
  # checkpoints and --uniform-sizes) still load: --from-csv writes them back byte for byte and
  # puts them in the size-vs-error table; --resume keeps the row and runs only the missing arm
  # (a uniform-only 1-bit point, on 64 images; about 25 s a ResNet-20 arm on a loaded machine).
  old=$(cd "$(dirname "$0")/../.." && pwd)/docs/results/pareto-resnet20
  rm -rf "$work/r" "$work/r1" "$work/r2" && mkdir -p "$work/r" "$work/r1" "$work/r2"
  cp "$old/results.csv" "$old/layers.csv" "$work/r/"
  # The first committed row alone (seed 1, frac_bits per layer): its results.csv line and its
  # layers.csv lines; the grid's later rows would change its tables and which arms are missing.
  head -n 2 "$old/results.csv" > "$work/r1/results.csv"
  awk -F, 'NR == 1 || ($3 == "frac_bits/layer" && $4 == 1)' "$old/layers.csv" > "$work/r1/layers.csv"
  cp "$work/r1/results.csv" "$work/r1/layers.csv" "$work/r2/"
  for d in r r1; do
    "$pareto" --data "$work/no-such-folder" --out "$work/$d" --from-csv > "$work/$d.log" 2>&1 ||
      { cat "$work/$d.log" >&2; fail "--from-csv on the committed ResNet-20 rows ($d) failed"; }
  done
  cmp "$old/results.csv" "$work/r/results.csv" || fail "results.csv not written back as it was"
  cmp "$old/layers.csv" "$work/r/layers.csv" || fail "layers.csv not written back as it was"
  grep -qxF "| FP32 | 32 | - | 1082.43 | 7.07 | 1 |" "$work/r1/results.md" || fail "results.md: FP32 row"
  grep -qxF "| frac_bits | 1.5 | layer | 54.70 | 7.62 | 1 |" "$work/r1/results.md" ||
    fail "results.md: the 1.5-bit row"
  with_study_defaults --out "$work/r2" --models resnet20 --sizes 1.5 --groups layer --b-min 1 \
    --uniform-sizes 1 --resume
  timeout 600 "$pareto" "${args[@]}" > "$work/r2.log" 2>&1 ||
    { cat "$work/r2.log" >&2; fail "--resume on the committed rows failed"; }
  printed r2 "resuming: 1 runs already in"
  printed r2 "[1/1] resnet20 seed 1 k=1 uniform/channel"
  [ "$(head -n 2 "$work/r2/results.csv")" = "$(head -n 2 "$old/results.csv")" ] ||
    fail "--resume changed the committed row"
  arms r2 "['frac_bits/layer', 'uniform/channel']"
  # ResNet-20 has batch norms, whose running statistics the checkpoint keeps (format version 4):
  # the arm run again (its row dropped), interrupted (SIGINT) once it wrote its first checkpoint
  # (after its search epoch, so SIGINT lands in its fine-tuning), resumes from the checkpoint and
  # ends as the unbroken arm did. A checkpoint of an older bitgrad (version 3: the same bytes
  # without the statistics) makes the arm start over, saying why, and end as before too.
  cp "$work/r2/results.csv" "$work/r2-results.csv"
  cp "$work/r2/layers.csv" "$work/r2-layers-full.csv"
  uniform1="$work/r2/runs/resnet20/seed1/1bit/fixed_bits-channel"
  cp "$uniform1/arm.json" "$work/r2-arm.json"
  same_as_unbroken() { # same_as_unbroken WHAT: results.csv but seconds, layers.csv, arm.json
    diff <(rev "$work/r2-results.csv" | cut -d, -f2- | rev) <(rev "$work/r2/results.csv" | cut -d, -f2- | rev) ||
      fail "the ResNet-20 arm $1 ended elsewhere"
    cmp "$work/r2-layers-full.csv" "$work/r2/layers.csv" || fail "layers.csv of the arm $1 differs"
    cmp "$work/r2-arm.json" "$uniform1/arm.json" || fail "arm.json of the same settings changed"
  }
  interrupt_uniform() { # its row dropped, the study (args) in the background, SIGINT after the
    # arm's first checkpoint
    head -n 2 "$work/r2-results.csv" > "$work/r2/results.csv"
    grep -v "^resnet20,1,uniform/channel," "$work/r2-layers-full.csv" > "$work/r2/layers.csv"
    sigint_after_checkpoint "$work/r2i.log" "$uniform1/checkpoint.bin"
    printed r2i "resnet20 seed 1 k=1 uniform/channel: interrupted; --resume continues it from $uniform1/checkpoint.bin"
    grep "^interrupted " "$uniform1/train.log" # where: inside an epoch ("at ... step") or after one
  }
  interrupt_uniform
  timeout 600 "$pareto" "${args[@]}" > "$work/r2.log" 2>&1 ||
    { cat "$work/r2.log" >&2; fail "--resume of a ResNet-20 arm failed"; }
  printed r2 "resnet20 seed 1 k=1 uniform/channel: resuming from $uniform1/checkpoint.bin"
  grep -q "resumed from $uniform1/checkpoint.bin at" "$uniform1/train.log" ||
    fail "the resumed ResNet-20 arm's train.log does not say where it resumed"
  ! grep -q "holds no batch norm running statistics" "$uniform1/train.log" ||
    fail "the ResNet-20 arm's checkpoint has no batch norm statistics"
  same_as_unbroken "resumed"
  # The same checkpoint as an older bitgrad wrote it: version 3, without the batch norm block
  # before the CRC (u32 count, then per batch norm: string name, u64 channels C, C means, C
  # variances as f32).
  interrupt_uniform
  "$python" - "$uniform1/checkpoint.bin" << 'EOF'
import struct, sys, zlib
path = sys.argv[1]
b = bytearray(open(path, "rb").read())
assert struct.unpack_from("<I", b, 8)[0] == 4
end = len(b) - 4
def block_ends_at_crc(start):
    count, p = struct.unpack_from("<I", b, start)[0], start + 4
    if not 0 < count < 1000:
        return False
    for _ in range(count):
        name = struct.unpack_from("<Q", b, p)[0]
        if name > 256 or p + 8 + name + 8 > end:
            return False
        p += 8 + name
        channels = struct.unpack_from("<Q", b, p)[0]
        p += 8 + 2 * 4 * channels
        if p > end:
            return False
    return p == end
start = next(s for s in range(end - 4, 15, -1) if block_ends_at_crc(s))
del b[start:end]
b[8:12] = struct.pack("<I", 3)
b[-4:] = struct.pack("<I", zlib.crc32(bytes(b[:-4])) & 0xffffffff)
open(path, "wb").write(b)
EOF
  timeout 600 "$pareto" "${args[@]}" > "$work/r2.log" 2>&1 ||
    { cat "$work/r2.log" >&2; fail "--resume of a ResNet-20 arm failed"; }
  printed r2 "resnet20 seed 1 k=1 uniform/channel: starting over, not from $uniform1/checkpoint.bin: a checkpoint of bitgrad before checkpoint format version 4 does not keep the batch norms' running statistics"
  same_as_unbroken "started over"
  ;;

pareto_quick)
  # --quick: 1 seed, 3/2/1 epochs, per-layer and per-channel mixed arms; explicit options win.
  quick=("$pareto" --data "$data" --quick --sizes 2 --policies frac_bits --sensitivity 0
         --train-limit 64 --batch-size 32 --threads 1)
  "${quick[@]}" --out "$work/q" > "$work/q.log" 2>&1 || { cat "$work/q.log" >&2; fail "--quick failed"; }
  printed q "1 models x 1 seeds x 1 sizes x 3 arms = 3 runs; epochs pretrain/search/finetune 3/2/1"
  arms q "['uniform/channel', 'frac_bits/layer', 'frac_bits/channel']"
  "${quick[@]}" --out "$work/q2" --search-epochs 1 --groups 4 --seeds 2 > "$work/q2.log" 2>&1 ||
    { cat "$work/q2.log" >&2; fail "--quick with explicit options failed"; }
  printed q2 "1 models x 2 seeds x 1 sizes x 2 arms = 4 runs; epochs pretrain/search/finetune 3/1/1"
  arms q2 "['uniform/channel', 'frac_bits/4'] * 2"
  ;;

pareto_seeds)
  # --seeds N --first-seed S: seeds S..S+N-1, each pretrained once; a seed gives the same runs
  # whichever study it is part of.
  study s --seeds 2 --first-seed 5
  results s "[r['seed'] for r in R] == ['5', '5', '6', '6']"
  printed s "lenet5 seed 5: FP32 pretrained"
  [ -d "$work/s/runs/lenet5/seed6" ] || fail "no runs/lenet5/seed6"
  study t --first-seed 6
  results t "[r['seed'] for r in R] == ['6', '6']"
  without_seconds() { tail -n 2 "$1" | rev | cut -d, -f2- | rev; }
  diff <(without_seconds "$work/s/results.csv") <(without_seconds "$work/t/results.csv") ||
    fail "seed 6 gave other runs in a study of seeds 5 and 6 than alone"
  ;;

pareto_search)
  # The bitwidth search's options change the mixed arm's search and leave the uniform arm alone.
  study base
  first_search="float([r for r in log if r['phase'] == 'search'][0]['average_bits'])"
  mixed=runs/lenet5/seed1/2bit/frac_bits-channel uniform=runs/lenet5/seed1/2bit/fixed_bits-channel
  base_bits=$(value "$work/base/$mixed" "$first_search")
  for option in "--lambda 0" "--bits-lr 0.5" "--bits-moment group" "--b-init 4" "--b-max 5"; do
    name=${option// /}
    # shellcheck disable=SC2086 # two words: the option and its value
    study "$name" $option
    same_phase "$work/base/$uniform" "$work/$name/$uniform" search
    other_phase "$work/base/$mixed" "$work/$name/$mixed" search
    case $option in
    "--lambda 0") check "$work/$name/$mixed" "$first_search > $base_bits" ;; # no size penalty
    "--bits-lr 0.5") check "$work/$name/$mixed" "$first_search < $base_bits - 0.5" ;;
    "--b-init 4") check "$work/$name/$mixed" "$first_search < 4" ;;
    "--b-max 5")
      check "$work/$name/$mixed" "$first_search < 5 and all(b <= 5 for l in E for b in l['group_bits'])"
      ;;
    esac
  done
  # --b-min: at 3 bits with --b-max 4 some groups of the mixed arm end at 2 bits, none with
  # --b-min 3; at 2 bits every group at 3 is over the budget, and the study says so.
  mixed3=runs/lenet5/seed1/3bit/frac_bits-channel
  study b24 --sizes 3 --train-limit 320 --bits-lr 0.5 --b-max 4
  check "$work/b24/$mixed3" "min(b for l in E for b in l['group_bits']) == 2"
  study b34 --sizes 3 --train-limit 320 --bits-lr 0.5 --b-max 4 --b-min 3
  check "$work/b34/$mixed3" "all(3 <= b <= 4 for l in E for b in l['group_bits'])"
  # --b-min 3 at 2 bits: refused before the pretraining, naming the arm and both sizes.
  rm -rf "$work/b3"
  with_study_defaults --out "$work/b3" --b-min 3
  expect_error "lenet5 at size point 2: the budget (12227.5 B of weights) is below the smallest frac_bits/channel model (" \
    "$pareto" "${args[@]}"
  printed error "every group at b_min = 3.0 bits plus 40 bits per group): raise the size point or lower --b-min"
  [ ! -e "$work/b3/runs/lenet5/seed1/pretrain.log" ] || fail "--b-min 3 at 2 bits: pretrained first"
  ;;

pareto_arms)
  # --uniform-groups: one uniform arm per granularity, a coarser one smaller by the scales it
  # does not store; --sensitivity: the per-group sensitivities in layers.csv; --train-limit and
  # --batch-size: the images and steps of every run; --model is --models.
  study u --uniform-groups layer,channel --sensitivity 2
  arms u "['uniform/layer', 'uniform/channel', 'frac_bits/channel']"
  results u "float(R[0]['weight_bytes']) < float(R[1]['weight_bytes']) and R[0]['code_bits'] == R[1]['code_bits'] == '2'"
  layers u "all(len(r['group_sensitivity'].split()) == int(r['groups']) for r in Y)"
  study s0
  layers s0 "all(r['group_sensitivity'] == '' for r in Y)"
  printed s0 "64 train / 400 test images"
  study b64 --batch-size 64 --train-limit 128 --bits-lr 0.5
  study b32 --batch-size 32 --train-limit 128 --bits-lr 0.5
  printed b64 "128 train / 400 test images"
  first_search="float([r for r in log if r['phase'] == 'search'][0]['average_bits'])"
  mixed=runs/lenet5/seed1/2bit/frac_bits-channel
  b32_bits=$(value "$work/b32/$mixed" "$first_search")
  check "$work/b64/$mixed" "$first_search > $b32_bits + 0.25" # 2 bitwidth steps, not 4
  study m --model lenet5
  results m "{r['model'] for r in R} == {'lenet5'}"
  # --uniform-grids (issue #24): the full-grid uniform arm beside the symmetric reference, its own
  # arm name and run folder, the same stored size.
  study g --uniform-grids symmetric,full
  arms g "['uniform/channel', 'uniform-full/channel', 'frac_bits/channel']"
  results g "R[0]['weight_bytes'] == R[1]['weight_bytes'] and R[1]['policy'] == 'fixed_bits'"
  [ -d "$work/g/runs/lenet5/seed1/2bit/fixed_bits-full-channel" ] ||
    fail "--uniform-grids full: no run folder fixed_bits-full-channel"
  printed g "uniform-full arms: initial step lsq (--full-grid-init)"
  # --full-grid-init mse: said at the start and kept in the full arm's key (arm.json).
  study gm --uniform-grids symmetric,full --full-grid-init mse
  printed gm "uniform-full arms: initial step mse (--full-grid-init)"
  grep -q '"full_grid_init": "mse"' "$work/gm/runs/lenet5/seed1/2bit/fixed_bits-full-channel/arm.json" ||
    fail "--full-grid-init mse: not in the full arm's arm.json"
  full_arm=runs/lenet5/seed1/2bit/fixed_bits-full-channel
  other_phase "$work/g/$full_arm" "$work/gm/$full_arm" search # the full arm trains otherwise
  same_phase "$work/g/runs/lenet5/seed1/2bit/fixed_bits-channel" \
    "$work/gm/runs/lenet5/seed1/2bit/fixed_bits-channel" search # the symmetric arm does not
  expect_error "--uniform-grids: the symmetric grid is the reference" \
    "$pareto" --data "$data" --out "$work/pareto" --uniform-grids full
  expect_error "--policies: --models resnet20 is built with the frac_bits arms" \
    "$pareto" --data "$data" --out "$work/pareto" --model resnet20 --policies step_bits
  ;;

quickstart)
  # The hand-written training loop: --steps sets the steps (a line every 100), --data the files;
  # a missing file is an error that names it, not an abort.
  q() { timeout 300 "$quickstart" --data "$data" "$@"; }
  q --steps 100 > "$work/s100.log" 2>&1 || { cat "$work/s100.log" >&2; fail "quickstart --steps 100 failed"; }
  [ "$(grep -c '^step ' "$work/s100.log")" = 1 ] && printed s100 "step  100  loss " ||
    fail "--steps 100: expected one progress line"
  bits=$(sed -n 's/^test accuracy [0-9.]*% at \([0-9.]*\) stored bits per weight; model size .*/\1/p' "$work/s100.log")
  "$python" -c "import sys; sys.exit(not 0 < $bits <= 3)" || fail "--steps 100: $bits stored bits, target 3"
  q --steps 1 > "$work/s1.log" 2>&1 || { cat "$work/s1.log" >&2; fail "quickstart --steps 1 failed"; }
  ! grep -q '^step ' "$work/s1.log" || fail "--steps 1 printed a progress line"
  printed s1 "test accuracy "
  cmp -s "$work/s1.log" "$work/s100.log" && fail "--steps 1 and 100 printed the same"
  expect_error "--steps: expected a whole number >= 1, got -1" "$quickstart" --data "$data" --steps -1
  expect_error "--steps: expected a whole number >= 1, got 0" "$quickstart" --data "$data" --steps 0
  status=0
  "$quickstart" --data "$work/none" --steps 1 > "$work/error.log" 2>&1 || status=$?
  [ $status = 1 ] || fail "--data of a missing folder: exit status $status, expected 1"
  printed error "quickstart: cannot open $work/none/train-images-idx3-ubyte.gz for reading"
  ;;

onnx_graph_name)
  # bgm_to_onnx --graph-name names the ONNX graph (default "bitgrad").
  "$bgm_to_onnx" "$model_dir/model/model.bgm" -o "$work/default.onnx" > /dev/null
  "$bgm_to_onnx" "$model_dir/model/model.bgm" -o "$work/named.onnx" --graph-name fashion_lenet > /dev/null
  names=$("$python" -c 'import onnx, sys; print(*(onnx.load(f).graph.name for f in sys.argv[1:]))' \
    "$work/default.onnx" "$work/named.onnx")
  [ "$names" = "bitgrad fashion_lenet" ] || fail "graph names: got '$names', expected 'bitgrad fashion_lenet'"
  ;;

pareto_bad_values)
  # pareto's numeric options: refused before any training.
  p=("$pareto" --data "$data" --out "$work/pareto" --seeds 1 --pretrain-epochs 1 --search-epochs 1
     --finetune-epochs 1 --sizes 2 --policies frac_bits --groups channel --sensitivity 0)
  expect_error "--threads: expected a whole number in [0, " "${p[@]}" --threads 1000
  expect_error "--threads: expected a whole number in [0, " "${p[@]}" --threads -5
  expect_error "--train-limit: expected a whole number >= 0, got -1" "${p[@]}" --train-limit -1
  expect_error "--first-seed: expected a whole number >= 0, got -2" "${p[@]}" --first-seed -2
  expect_error "--bits-lr: expected a finite number > 0, got nan" "${p[@]}" --bits-lr nan
  expect_error "--lambda: expected a finite number >= 0, got inf" "${p[@]}" --lambda inf
  expect_error "--b-min: expected at most --b-max (3), got 5" "${p[@]}" --b-min 5 --b-max 3
  expect_error "--b-init: expected a bitwidth in [--b-min, --b-max] = [1, 8], got 9" "${p[@]}" \
    --b-init 9
  expect_error "--batch-size: expected a whole number >= 1, got 0" "${p[@]}" --batch-size 0
  for size in 0 -1 16.5 two 1.5x nan inf 0x2; do
    expect_error "--sizes: expected a number of bits per weight in (0, 16], whole (2) or fractional (1.5), got $size" \
      "$pareto" --data "$data" --out "$work/pareto" --sizes "2,$size"
  done
  expect_error "--sizes: step_bits (bitwidths >= 2) cannot fit a size point below 2 bits, got 1.5" \
    "$pareto" --data "$data" --out "$work/pareto" --sizes 1.5,2
  # A size point whose budget no arm's smallest model fits (every group at b_min = 1 bit and
  # 40 bits of overhead per group) is refused before the FP32 pretraining, not after it.
  rm -rf "$work/pareto"
  expect_error "pareto: lenet5 at size point 0.5: the budget (" "${p[@]}" --sizes 0.5
  grep -qF "B of weights) is below the smallest frac_bits/channel model (" "$work/error.log" ||
    fail "--sizes 0.5: the message names neither the budget nor the smallest model"
  [ ! -e "$work/pareto/runs/lenet5/seed1/pretrain.log" ] || fail "--sizes 0.5: pretrained first"
  expect_error "--seeds: expected a whole number >= 1, got 0" \
    "$pareto" --data "$data" --out "$work/pareto" --seeds 0
  expect_error "--pretrain-epochs: expected a whole number >= 0, got -1" \
    "$pareto" --data "$data" --out "$work/pareto" --pretrain-epochs -1
  expect_error "--groups: expected a whole number >= 1 (channels per group), 'channel' or 'layer', got -3" \
    "$pareto" --data "$data" --out "$work/pareto" --groups -3
  expect_error "--policies: --models resnet20 is built with the frac_bits arms (and the uniform fixed_bits arm) only, got step_bits" \
    "$pareto" --data "$data" --out "$work/pareto" --models resnet20
  expect_error "--uniform-groups: expected a whole number >= 1" \
    "$pareto" --data "$data" --out "$work/pareto" --uniform-groups 0
  ;;

*) fail "unknown case" ;;
esac
echo "$case_name: ok"
