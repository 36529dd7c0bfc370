#!/usr/bin/env bash
# studies/activations/run.py end to end on the committed Fashion-MNIST sample (issue #22): the
# uniform arms keep their W/A bits, each learned arm gets its uniform arm's BOPs as budget (per
# seed), --variant adds an arm with its own arguments, --learned-at picks the budgets, and a
# second call reuses the runs (resume) and writes the same tables.
#
#   act_study.sh WORK_DIR SAMPLE_DIR FASHION_MNIST
set -euo pipefail
work=$1 data=$2 fm=$3
python=/usr/bin/python3
study=$(dirname "$0")/../../studies/activations/run.py
rm -rf "$work" && mkdir -p "$work"
export OMP_WAIT_POLICY=PASSIVE
args=(--binary "$fm" --data "$data" --out "$work/runs" --seeds 1 --pretrain-epochs 1
      --search-epochs 1 --finetune-epochs 1 --train-limit 256 --learned-at W2A8
      --variant "layer=--group layer")
"$python" "$study" "${args[@]}" --markdown "$work/first.md" > "$work/first.log" 2>&1 ||
  { cat "$work/first.log" >&2; exit 1; }
"$python" - "$work" <<'PY'
import json, os, sys
runs = os.path.join(sys.argv[1], "runs")
def summary(arm):
    with open(os.path.join(runs, f"lenet5-{arm}-s1", "summary.json")) as f:
        return json.load(f)
def cost(s, name):
    return next(c for c in s["costs"] if c["name"] == name)
for arm, w, a in [("W4A4", 4, 4), ("W2A8", 2, 8), ("W4A8", 4, 8)]:
    s = summary(arm)
    assert all(l["bits_mean"] == w for l in s["layers"]), (arm, s["layers"])
    assert all(q["group_bits"] == [a] for q in s["activations"]), (arm, s["activations"])
budget = cost(summary("W2A8"), "bops")["value"]
for arm in ["learned@W2A8", "learned-layer@W2A8"]:
    c = cost(summary(arm), "bops")
    assert c["target"] == budget and c["value"] <= budget, (arm, c, budget)
assert all(l["groups"] == 1 for l in summary("learned-layer@W2A8")["layers"])
assert any(l["groups"] > 1 for l in summary("learned@W2A8")["layers"])
assert not os.path.exists(os.path.join(runs, "lenet5-learned@W4A4-s1")), "--learned-at ignored"
PY
# The second call runs nothing (every summary.json exists) and writes the same tables.
"$python" "$study" "${args[@]}" --markdown "$work/second.md" > "$work/second.log" 2>&1
if grep -q ": [0-9.]* s$" "$work/second.log"; then echo "FAIL: the second call ran arms again" >&2; exit 1; fi
diff "$work/first.md" "$work/second.md"
grep -q "^| learned-layer@W2A8 | W2A8 |" "$work/first.md" || { echo "FAIL: no paired row" >&2; exit 1; }
